"""
Counters the proxy keeps about itself, and their exposition through
prometheus_client for the admin endpoint's /metrics.

Sessions, transfers, the pool and the health checker report to
L{ProxyMetrics} through L{ftpproxy.events.IProxyEvents}; the numbers are plain
dictionaries, so counting costs a dictionary update and takes no lock.

Nothing is rendered here: at scrape time L{ProxyCollector} turns a counters
object and the pool's current backends into prometheus_client metric
families (L{metricFamilies}), and prometheus_client writes the text. The
families are a function of one counters object, so counters from several
places (worker processes, one day) can be summed into one L{ProxyMetrics}
and exposed the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from zope.interface import implementer

from ftpproxy.events import CLOSE_REASONS, REFUSAL_REASONS, IProxyEvents
from ftpproxy.ops.clients import ClientReport

TRANSFER_RESULTS = ("completed", "aborted", "failed")
DIRECTIONS = ("download", "upload")
HEALTH_CHECK_RESULTS = ("ok", "failed")


@implementer(IProxyEvents)
class ProxyMetrics:
    """
    What happened since start, keyed by backend name where it applies.

    @ivar sessionsTotal: sessions that got each backend (it greeted).
    @ivar sessionsActive: of those, the ones still running.
    @ivar bytesTotal: data bytes moved, by (backend, direction).
    @ivar transfersTotal: finished transfers, by (backend, result) where
        result is one of L{TRANSFER_RESULTS}.
    @ivar tlsHandshakes: finished TLS handshakes, by (side, version).
    @ivar backendConnectFailures: failed session connects to each backend.
    @ivar backendUp: the last health verdict reported for each backend.
    @ivar healthCheckSeconds: how long the last health check of each
        backend took.
    @ivar healthChecks: health checks run, by (backend, "ok" or "failed").
    @ivar clientsClosed: sessions the proxy closed for the client's doing,
        by reason (L{ftpproxy.events.CLOSE_REASONS}).
    @ivar clientsRefused: connections refused before a session, by reason
        (L{ftpproxy.events.REFUSAL_REASONS}).
    @ivar clientHandshakes: TLS handshakes with clients, by (connection,
        outcome) where connection is "control" or "data".
    @ivar clients: the TLS handshakes with clients, by client fingerprint
        (what the admin endpoint's /clients serves).
    """

    def __init__(self) -> None:
        self.sessionsTotal: Counter[str] = Counter()
        self.sessionsActive: Counter[str] = Counter()
        self.bytesTotal: Counter[tuple[str, str]] = Counter()
        self.transfersTotal: Counter[tuple[str, str]] = Counter()
        self.tlsHandshakes: Counter[tuple[str, str]] = Counter()
        self.backendConnectFailures: Counter[str] = Counter()
        self.backendUp: dict[str, bool] = {}
        self.healthCheckSeconds: dict[str, float] = {}
        self.healthChecks: Counter[tuple[str, str]] = Counter()
        self.clientsClosed: Counter[str] = Counter()
        self.clientsRefused: Counter[str] = Counter()
        self.clientHandshakes: Counter[tuple[str, str]] = Counter()
        self.clients = ClientReport()

    def sessionStarted(self, backend: str) -> None:
        self.sessionsTotal[backend] += 1
        self.sessionsActive[backend] += 1

    def sessionEnded(self, backend: str) -> None:
        self.sessionsActive[backend] -= 1

    def transferFinished(
        self, backend: str, verb: str, direction: str, code: int, size: int, seconds: float
    ) -> None:
        self.bytesTotal[(backend, direction)] += size
        self.transfersTotal[(backend, transferResult(code))] += 1

    def tlsHandshake(self, side: str, version: str) -> None:
        self.tlsHandshakes[(side, version)] += 1

    def clientHandshake(self, fields: Mapping[str, Any]) -> None:
        outcome = handshakeResult(str(fields.get("outcome")))
        self.clientHandshakes[(str(fields.get("connection")), outcome)] += 1
        self.clients.add(fields)

    def backendConnectFailed(self, backend: str) -> None:
        self.backendConnectFailures[backend] += 1

    def backendState(self, name: str, up: bool) -> None:
        self.backendUp[name] = bool(up)

    def healthCheck(self, name: str, seconds: float, ok: bool) -> None:
        self.healthCheckSeconds[name] = float(seconds)
        self.healthChecks[(name, "ok" if ok else "failed")] += 1

    def clientClosed(self, reason: str) -> None:
        self.clientsClosed[reason] += 1

    def clientRefused(self, reason: str) -> None:
        self.clientsRefused[reason] += 1


#: What a client TLS handshake came to, for the metrics' labels.
HANDSHAKE_RESULTS = ("ok", "alert_sent", "alert_received", "refused", "closed")


def handshakeResult(outcome: str) -> str:
    """
    The label of a handshake's outcome (L{ftpproxy.tls.handshakes}): one of
    L{HANDSHAKE_RESULTS}.
    """
    if outcome == "ok":
        return "ok"
    if outcome.startswith("alert sent"):
        return "alert_sent"
    if outcome.startswith("alert received"):
        return "alert_received"
    if outcome.startswith("refused"):
        return "refused"
    return "closed"


def transferResult(code: int) -> str:
    """
    A transfer's outcome by its final reply: completed, aborted or failed.
    """
    if 200 <= code < 300:
        return "completed"
    if code in (426, 425):
        return "aborted"
    return "failed"


# -- exposition ---------------------------------------------------------------


class BackendLike(Protocol):
    """
    What the exposition reads of a backend: its C{name}; whether it is up
    comes from its C{healthy} if it has one, else from its C{state} ("down"
    or anything else) if it has one.
    """

    name: str


def backendsUp(counters: ProxyMetrics, backends: Iterable[BackendLike]) -> dict[str, bool]:
    """
    Up or down for every backend that has a verdict: a backend's own
    C{healthy} is the truth; the health reports in C{counters} stand in for
    it, and a backend's C{state} stands in for both. Draining is up.
    """
    fromState: dict[str, bool] = {}
    fromPool: dict[str, bool] = {}
    for backend in backends:
        healthy = getattr(backend, "healthy", None)
        if healthy is not None:
            fromPool[backend.name] = bool(healthy)
        else:
            state = getattr(backend, "state", "up")
            fromState[backend.name] = str(getattr(state, "value", state)) != "down"
    return {**fromState, **counters.backendUp, **fromPool}


def _perBackend(counts: Mapping[str, float], names: Iterable[str]) -> dict[tuple, float]:
    """
    C{counts} by backend, with a zero for every known backend that has none
    yet, so that rate() sees the series from the start.
    """
    found: dict[tuple, float] = {(name,): value for name, value in counts.items()}
    for name in names:
        found.setdefault((name,), 0)
    return found


def _perBackendAnd(
    counts: Mapping[tuple[str, str], float], names: Iterable[str], seconds: Iterable[str]
) -> dict[tuple, float]:
    found: dict[tuple, float] = dict(counts)
    for name in names:
        for second in seconds:
            found.setdefault((name, second), 0)
    return found


def _everyReason(counts: Mapping[str, float], reasons: Iterable[str]) -> dict[tuple, float]:
    """
    C{counts} by reason, with a zero for every reason that has none yet.
    """
    found: dict[tuple, float] = {(reason,): value for reason, value in counts.items()}
    for reason in reasons:
        found.setdefault((reason,), 0)
    return found


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: tuple[str, ...],
    samples: Mapping[tuple, float],
) -> Metric:
    """
    One metric family with C{samples} (label values to value), sorted by
    their labels so that two scrapes differ only in values.
    """
    family = kind(name, documentation, labels=labels)
    for labelValues in sorted(samples, key=lambda values: tuple(map(str, values))):
        family.add_metric([str(v) for v in labelValues], samples[labelValues])
    return family


def metricFamilies(counters: ProxyMetrics, backends: Iterable[BackendLike] = ()) -> list[Metric]:
    """
    Every metric family of C{counters}, in a fixed order.

    C{backends} are the pool's current backends: each gets zero-valued
    series before its first session, and its up/down value from
    L{backendsUp}.
    """
    backends = list(backends)
    names = [backend.name for backend in backends]
    up = backendsUp(counters, backends)
    return [
        _family(
            CounterMetricFamily,
            "ftpproxy_sessions_total",
            "Client sessions routed to each backend since start.",
            ("backend",),
            _perBackend(counters.sessionsTotal, names),
        ),
        _family(
            GaugeMetricFamily,
            "ftpproxy_sessions_active",
            "Client sessions currently routed to each backend.",
            ("backend",),
            _perBackend(counters.sessionsActive, names),
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_bytes_total",
            "Data bytes carried per backend; download is backend to client.",
            ("backend", "direction"),
            _perBackendAnd(counters.bytesTotal, names, DIRECTIONS),
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_transfers_total",
            "Data transfers per backend by outcome (2xx completed, 425/426 aborted, else failed).",
            ("backend", "result"),
            _perBackendAnd(counters.transfersTotal, names, TRANSFER_RESULTS),
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_tls_handshakes_total",
            "Completed TLS handshakes by side (client or backend) and protocol version.",
            ("side", "version"),
            counters.tlsHandshakes,
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_client_tls_handshakes_total",
            "TLS handshakes with clients by connection (control or data) and result (ok, "
            "alert_sent, alert_received, refused: a data connection that had to resume and did "
            "not, closed: the client left during the handshake).",
            ("connection", "result"),
            counters.clientHandshakes,
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_backend_connect_failures_total",
            "Failed or timed-out control connections to each backend.",
            ("backend",),
            _perBackend(counters.backendConnectFailures, names),
        ),
        _family(
            GaugeMetricFamily,
            "ftpproxy_backend_up",
            "1 if the backend is considered healthy, else 0.",
            ("backend",),
            {(name,): 1 if isUp else 0 for name, isUp in up.items()},
        ),
        _family(
            GaugeMetricFamily,
            "ftpproxy_health_check_seconds",
            "Duration of the last health check of each backend.",
            ("backend",),
            {(name,): value for name, value in counters.healthCheckSeconds.items()},
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_health_checks_total",
            "Health checks run against each backend, by result (ok or failed).",
            ("backend", "result"),
            counters.healthChecks,
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_clients_closed_total",
            "Client sessions the proxy closed because of the client, by reason "
            "(invalid-commands: a flood of refused lines; login-timeout).",
            ("reason",),
            _everyReason(counters.clientsClosed, CLOSE_REASONS),
        ),
        _family(
            CounterMetricFamily,
            "ftpproxy_clients_refused_total",
            "Client connections refused with 421 before a session started, by the limit "
            "that refused them.",
            ("reason",),
            _everyReason(counters.clientsRefused, REFUSAL_REASONS),
        ),
    ]


class ProxyCollector(Collector):
    """
    A prometheus_client collector over the proxy's own counters: the
    families are made from C{counters} and C{backends()} at each scrape.

    @ivar counters: the L{ProxyMetrics} read at each scrape.
    """

    def __init__(
        self, counters: ProxyMetrics, backends: Callable[[], Iterable[BackendLike]] = tuple
    ) -> None:
        self.counters = counters
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        return iter(metricFamilies(self.counters, self._backends()))

    def describe(self) -> Iterator[Metric]:
        """
        The families without samples: lets a registry refuse a second
        collector that would write the same names.
        """
        return iter(metricFamilies(ProxyMetrics()))


def metricsRegistry(
    counters: ProxyMetrics, backends: Callable[[], Iterable[BackendLike]] = tuple
) -> CollectorRegistry:
    """
    A registry of its own (never prometheus_client's global one) holding a
    L{ProxyCollector} for C{counters} and C{backends()}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(counters, backends))
    return registry
