"""
Counters the proxy keeps about itself, and their Prometheus exposition for
the admin endpoint's /metrics.

Sessions, transfers and the health checker report here through a small set
of calls; the numbers are plain dictionaries so that reading them costs
nothing on the data path. Rendering happens only when someone scrapes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import attrs

# The media type of the text format rendered by prometheusText().
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TRANSFER_RESULTS = ("completed", "aborted", "failed")
DIRECTIONS = ("download", "upload")


class ProxyMetrics:
    """
    What happened since start: sessions, transfers, bytes, TLS handshakes,
    backend failures, health checks. Keyed by backend name where it applies.
    """

    def __init__(self) -> None:
        self.sessionsTotal: Counter[str] = Counter()
        self.sessionsActive: Counter[str] = Counter()
        self.bytesTotal: Counter[tuple[str, str]] = Counter()
        self.transfersTotal: Counter[tuple[str, str]] = Counter()
        self.tlsHandshakes: Counter[tuple[str, str]] = Counter()
        self.backendConnectFailures: Counter[str] = Counter()
        # Set by the health checker; a backend it never reported on is
        # judged by the pool's state instead (see prometheusText).
        self.backendUp: dict[str, bool] = {}
        self.healthCheckSeconds: dict[str, float] = {}
        self.healthChecks: Counter[tuple[str, str]] = Counter()

    def sessionStarted(self, backend: str) -> None:
        self.sessionsTotal[backend] += 1
        self.sessionsActive[backend] += 1

    def sessionEnded(self, backend: str) -> None:
        self.sessionsActive[backend] -= 1

    def transferFinished(
        self, backend: str, verb: str, direction: str, code: int, size: int, seconds: float
    ) -> None:
        """
        A transfer ended with reply C{code} after moving C{size} bytes in
        C{direction} ("download": backend to client, "upload": the other way).
        """
        self.bytesTotal[(backend, direction)] += size
        self.transfersTotal[(backend, transferResult(code))] += 1

    def tlsHandshake(self, side: str, version: str) -> None:
        """
        A TLS handshake finished on the C{side} ("client" or "backend") legs.
        """
        self.tlsHandshakes[(side, version)] += 1

    def backendConnectFailed(self, backend: str) -> None:
        self.backendConnectFailures[backend] += 1

    def backendState(self, name: str, up: bool) -> None:
        """
        The health checker's verdict on backend C{name} changed (or was
        first made).
        """
        self.backendUp[name] = bool(up)

    def healthCheck(self, name: str, seconds: float, ok: bool) -> None:
        """
        One health check of backend C{name} took C{seconds} and passed or
        failed; the latency of the last one is kept.
        """
        self.healthCheckSeconds[name] = float(seconds)
        self.healthChecks[(name, "ok" if ok else "failed")] += 1


def transferResult(code: int) -> str:
    """
    A transfer's outcome by its final reply: completed, aborted or failed.
    """
    if 200 <= code < 300:
        return "completed"
    if code in (426, 425):
        return "aborted"
    return "failed"


# -- Prometheus text exposition, format 0.0.4 ---------------------------------


class _BackendLike(Protocol):
    name: str


@attrs.frozen
class _Family:
    """
    One metric family: its name, type, help text and how to get its samples
    (label tuples to values) from the metrics and the known backends.
    """

    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    samples: Callable[[ProxyMetrics, list[str], Mapping[str, bool]], Mapping[tuple, float]]


def _perBackend(counts: Mapping[str, float], names: list[str]) -> dict[tuple, float]:
    """
    C{counts} by backend, with a zero for every known backend that has none
    yet, so that rate() sees the series from the start.
    """
    found = {(name,): value for name, value in counts.items()}
    for name in names:
        found.setdefault((name,), 0)
    return found


def _perBackendAnd(
    counts: Mapping[tuple[str, str], float], names: list[str], seconds: Iterable[str]
) -> dict[tuple, float]:
    found = dict(counts)
    for name in names:
        for second in seconds:
            found.setdefault((name, second), 0)
    return found


_FAMILIES = (
    _Family(
        "ftpproxy_sessions_total",
        "counter",
        "Client sessions routed to each backend since start.",
        ("backend",),
        lambda m, names, up: _perBackend(m.sessionsTotal, names),
    ),
    _Family(
        "ftpproxy_sessions_active",
        "gauge",
        "Client sessions currently routed to each backend.",
        ("backend",),
        lambda m, names, up: _perBackend(m.sessionsActive, names),
    ),
    _Family(
        "ftpproxy_bytes_total",
        "counter",
        "Data bytes carried per backend; download is backend to client.",
        ("backend", "direction"),
        lambda m, names, up: _perBackendAnd(m.bytesTotal, names, DIRECTIONS),
    ),
    _Family(
        "ftpproxy_transfers_total",
        "counter",
        "Data transfers per backend by outcome (2xx completed, 425/426 aborted, else failed).",
        ("backend", "result"),
        lambda m, names, up: _perBackendAnd(m.transfersTotal, names, TRANSFER_RESULTS),
    ),
    _Family(
        "ftpproxy_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes by side (client or backend) and protocol version.",
        ("side", "version"),
        lambda m, names, up: dict(m.tlsHandshakes),
    ),
    _Family(
        "ftpproxy_backend_connect_failures_total",
        "counter",
        "Failed or timed-out control connections to each backend.",
        ("backend",),
        lambda m, names, up: _perBackend(m.backendConnectFailures, names),
    ),
    _Family(
        "ftpproxy_backend_up",
        "gauge",
        "1 if the backend is considered healthy, else 0.",
        ("backend",),
        lambda m, names, up: {(name,): 1 if isUp else 0 for name, isUp in up.items()},
    ),
    _Family(
        "ftpproxy_health_check_seconds",
        "gauge",
        "Duration of the last health check of each backend.",
        ("backend",),
        lambda m, names, up: {(name,): value for name, value in m.healthCheckSeconds.items()},
    ),
    _Family(
        "ftpproxy_health_checks_total",
        "counter",
        "Health checks run against each backend, by result (ok or failed).",
        ("backend", "result"),
        lambda m, names, up: dict(m.healthChecks),
    ),
)


def prometheusText(metrics: ProxyMetrics, backends: Iterable[_BackendLike] = ()) -> str:
    """
    C{metrics} in the Prometheus text format 0.0.4.

    C{backends} are the pool's current backends: each gets zero-valued
    series before its first session. Up or down comes from a backend's
    C{healthy} if it has one, else from the health checker's reports
    (L{ProxyMetrics.backendState}), else from its C{state} ("down" or not). Families come in a fixed order
    and samples sorted by their labels, so two scrapes differ only in values.
    """
    names: list[str] = []
    fromState: dict[str, bool] = {}
    fromPool: dict[str, bool] = {}
    for backend in backends:
        names.append(backend.name)
        healthy = getattr(backend, "healthy", None)
        if healthy is not None:
            fromPool[backend.name] = bool(healthy)
        else:
            fromState[backend.name] = _stateText(getattr(backend, "state", "up")) != "down"
    # The pool's own verdict is the truth; the health checker's reports
    # stand in for it, and the state for both.
    up = {**fromState, **metrics.backendUp, **fromPool}
    return "".join(_renderFamily(family, metrics, names, up) for family in _FAMILIES)


def _stateText(state: object) -> str:
    return str(getattr(state, "value", state))


def _renderFamily(
    family: _Family, metrics: ProxyMetrics, names: list[str], up: Mapping[str, bool]
) -> str:
    lines = [
        f"# HELP {family.name} {_escapeHelp(family.help)}\n",
        f"# TYPE {family.name} {family.type}\n",
    ]
    samples = family.samples(metrics, names, up)
    for labelValues in sorted(samples, key=lambda values: tuple(map(str, values))):
        lines.append(
            f"{family.name}{_labelSet(family.labels, labelValues)} "
            f"{formatValue(samples[labelValues])}\n"
        )
    return "".join(lines)


def _labelSet(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    pairs = (f'{name}="{escapeLabelValue(str(value))}"' for name, value in zip(names, values))
    return "{" + ",".join(pairs) + "}"


def escapeLabelValue(value: str) -> str:
    """
    A label value escaped for the text format: backslash, double quote and
    line feed.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escapeHelp(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def formatValue(value: float) -> str:
    """
    A sample value as the text format writes it: integers without a
    fraction, and +Inf, -Inf, NaN spelled its way.
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def families() -> Iterator[tuple[str, str]]:
    """
    The (name, type) of every family prometheusText() writes, in order.
    """
    for family in _FAMILIES:
        yield family.name, family.type
