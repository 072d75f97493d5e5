"""
The admin endpoint and the Prometheus exposition behind it.

The HTTP tests make real requests to an admin service listening on
127.0.0.1 port 0; the pool is a small fake with the pool's API, plus one
test against the real BackendPool.
"""

from __future__ import annotations

import ast
import enum
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest
import pytest_twisted
from hypothesis import given, settings, strategies as st
from prometheus_client import REGISTRY
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

import ftpproxy.ops
from ftpproxy.backends.balancer import BackendPool, policyNamed
from ftpproxy.events import CLOSE_REASONS, REFUSAL_REASONS, IProxyEvents
from ftpproxy.ops.admin import IAdminPool, backendJSON, makeAdminService
from ftpproxy.ops.metrics import ProxyCollector, ProxyMetrics, metricFamilies, metricsRegistry
from ftpproxy.settings.config import BackendConfig, ConfigError, HostPort


class State(enum.Enum):
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


@attrs.define(eq=False)
class FakeBackend:
    config: BackendConfig
    state: object = State.UP
    activeSessions: int = 0
    totalSessions: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> int:
        return self.config.weight


class FakePool:
    """
    The pool's admin API: backends, drain(name), enable(name). C{useStrings}
    stores states as plain strings instead of an enum.
    """

    def __init__(self, *backends: FakeBackend, useStrings: bool = False) -> None:
        self.backends = list(backends)
        self._useStrings = useStrings

    def _set(self, name: str, state: State) -> bool:
        for backend in self.backends:
            if backend.name == name:
                backend.state = state.value if self._useStrings else state
                return True
        return False

    def drain(self, name: str) -> bool:
        return self._set(name, State.DRAINING)

    def enable(self, name: str) -> bool:
        return self._set(name, State.UP)


def fakeBackend(name: str, host: str, port: int = 21, weight: int = 1, **kw) -> FakeBackend:
    return FakeBackend(BackendConfig(address=HostPort(host, port), name=name, weight=weight), **kw)


def twoBackendPool(useStrings: bool = False) -> FakePool:
    return FakePool(
        fakeBackend("alpha", "127.0.0.2", 2121, weight=3, activeSessions=2, totalSessions=7),
        fakeBackend("beta", "127.0.0.3", 2121, state=State.DOWN),
        useStrings=useStrings,
    )


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """
    Samples by (sample name, sorted labels), through prometheus_client's
    parser, which raises on malformed text.
    """
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# -- the counters and their exposition -------------------------------------------

# Every family /metrics writes: the name as it appears in the text, its type
# and its label names. Dashboards and alerts depend on these.
FAMILIES = [
    ("ftpproxy_sessions_total", "counter", {"backend"}),
    ("ftpproxy_sessions_active", "gauge", {"backend"}),
    ("ftpproxy_bytes_total", "counter", {"backend", "direction"}),
    ("ftpproxy_transfers_total", "counter", {"backend", "result"}),
    ("ftpproxy_tls_handshakes_total", "counter", {"side", "version"}),
    ("ftpproxy_client_tls_handshakes_total", "counter", {"connection", "result"}),
    ("ftpproxy_backend_connect_failures_total", "counter", {"backend"}),
    ("ftpproxy_backend_up", "gauge", {"backend"}),
    ("ftpproxy_health_check_seconds", "gauge", {"backend"}),
    ("ftpproxy_health_checks_total", "counter", {"backend", "result"}),
    ("ftpproxy_clients_closed_total", "counter", {"reason"}),
    ("ftpproxy_clients_refused_total", "counter", {"reason"}),
]

# Families with one series per reason, each there from the start at zero.
BY_REASON = {
    "ftpproxy_clients_closed_total": CLOSE_REASONS,
    "ftpproxy_clients_refused_total": REFUSAL_REASONS,
}


def render(metrics: ProxyMetrics, backends=()) -> str:
    """
    What /metrics says for C{metrics} and C{backends}.
    """
    return generate_latest(metricsRegistry(metrics, lambda: backends)).decode("utf-8")


def busyMetrics() -> ProxyMetrics:
    """
    Counters that have seen one of every event.
    """
    metrics = ProxyMetrics()
    metrics.sessionStarted("alpha")
    metrics.transferFinished("alpha", "RETR", "download", 226, 1000, 0.5)
    metrics.transferFinished("alpha", "STOR", "upload", 226, 30, 0.1)
    metrics.transferFinished("alpha", "RETR", "download", 426, 7, 0.1)
    metrics.transferFinished("alpha", "RETR", "download", 550, 0, 0.1)
    metrics.tlsHandshake("client", "TLSv1.3")
    metrics.tlsHandshake("client", "TLSv1.3")
    metrics.tlsHandshake("backend", "TLSv1.2")
    metrics.clientHandshake({"connection": "control", "outcome": "ok", "ja4": "t13i_x"})
    metrics.clientHandshake(
        {"connection": "data", "outcome": "refused: session not resumed", "session": "s1"}
    )
    metrics.backendConnectFailed("beta")
    metrics.backendState("beta", False)
    metrics.healthCheck("alpha", 0.25, True)
    metrics.healthCheck("alpha", 0.125, True)
    metrics.healthCheck("beta", 3.0, False)
    metrics.clientClosed("invalid-commands")
    metrics.clientClosed("invalid-commands")
    metrics.clientRefused("prelogin-per-client")
    return metrics


def test_counters_provide_events_interface() -> None:
    """
    The counters are what sessions, the pool and the health checker report
    to, through IProxyEvents: every method is there with its signature.
    """
    assert IProxyEvents.implementedBy(ProxyMetrics)
    assert verifyObject(IProxyEvents, ProxyMetrics())


class TestExposition:
    def test_empty(self) -> None:
        """
        With nothing known, every family still has HELP and TYPE and no
        samples (but the zeros of the reasons a client is closed or
        refused for), and the text parses.
        """
        text = render(ProxyMetrics())
        for name, kind, _ in FAMILIES:
            assert f"# TYPE {name} {kind}\n" in text
            assert f"# HELP {name} " in text
        parsed = list(text_string_to_metric_families(text))
        assert len(parsed) == len(FAMILIES)
        for family in parsed:
            reasons = BY_REASON.get(family.name + "_total", ())
            assert sorted(s.labels["reason"] for s in family.samples) == sorted(reasons)
            assert all(s.value == 0 for s in family.samples)

    def test_names_types_and_labels(self) -> None:
        """
        Exactly the families of FAMILIES, in that order, each sample with
        exactly its family's labels.
        """
        text = render(busyMetrics(), twoBackendPool().backends)
        parsed = list(text_string_to_metric_families(text))
        assert [f.type for f in parsed] == [kind for _, kind, _ in FAMILIES]
        for family, (name, kind, labels) in zip(parsed, FAMILIES):
            assert family.samples, name
            for sample in family.samples:
                assert sample.name == name
                assert set(sample.labels) == labels, name

    def test_all_families(self) -> None:
        s = parse(render(busyMetrics()))
        assert value(s, "ftpproxy_sessions_total", backend="alpha") == 1
        assert value(s, "ftpproxy_sessions_active", backend="alpha") == 1
        assert value(s, "ftpproxy_bytes_total", backend="alpha", direction="download") == 1007
        assert value(s, "ftpproxy_bytes_total", backend="alpha", direction="upload") == 30
        for result, count in [("completed", 2), ("aborted", 1), ("failed", 1)]:
            assert value(s, "ftpproxy_transfers_total", backend="alpha", result=result) == count
        assert value(s, "ftpproxy_tls_handshakes_total", side="client", version="TLSv1.3") == 2
        assert value(s, "ftpproxy_tls_handshakes_total", side="backend", version="TLSv1.2") == 1
        assert value(s, "ftpproxy_backend_connect_failures_total", backend="beta") == 1
        assert value(s, "ftpproxy_backend_up", backend="beta") == 0
        assert value(s, "ftpproxy_health_check_seconds", backend="alpha") == 0.125
        assert value(s, "ftpproxy_health_check_seconds", backend="beta") == 3.0
        assert value(s, "ftpproxy_health_checks_total", backend="alpha", result="ok") == 2
        assert value(s, "ftpproxy_health_checks_total", backend="beta", result="failed") == 1
        assert value(s, "ftpproxy_client_tls_handshakes_total", connection="control", result="ok") == 1
        assert (
            value(s, "ftpproxy_client_tls_handshakes_total", connection="data", result="refused")
            == 1
        )
        assert value(s, "ftpproxy_clients_closed_total", reason="invalid-commands") == 2
        assert value(s, "ftpproxy_clients_closed_total", reason="login-timeout") == 0
        assert value(s, "ftpproxy_clients_refused_total", reason="prelogin-per-client") == 1
        # Only what happened, the zeros of known backends (none here) and
        # those of every reason.
        assert len(s) == 17 + len(CLOSE_REASONS) + len(REFUSAL_REASONS)

    def test_sessions_end(self) -> None:
        metrics = ProxyMetrics()
        metrics.sessionStarted("b")
        metrics.sessionStarted("a")
        metrics.sessionStarted("a")
        metrics.sessionEnded("a")
        s = parse(render(metrics))
        assert value(s, "ftpproxy_sessions_total", backend="a") == 2
        assert value(s, "ftpproxy_sessions_active", backend="a") == 1
        assert value(s, "ftpproxy_sessions_total", backend="b") == 1
        assert value(s, "ftpproxy_sessions_active", backend="b") == 1

    def test_pool_backends_get_zero_series(self) -> None:
        """
        Backends of the pool appear before their first session, with zeros,
        and their up/down value from the pool's state until the health
        checker says otherwise.
        """
        metrics = ProxyMetrics()
        pool = twoBackendPool()
        s = parse(render(metrics, pool.backends))
        for name in ("alpha", "beta"):
            assert value(s, "ftpproxy_sessions_total", backend=name) == 0
            assert value(s, "ftpproxy_sessions_active", backend=name) == 0
            assert value(s, "ftpproxy_backend_connect_failures_total", backend=name) == 0
            for direction in ("download", "upload"):
                assert value(s, "ftpproxy_bytes_total", backend=name, direction=direction) == 0
            for result in ("completed", "aborted", "failed"):
                assert value(s, "ftpproxy_transfers_total", backend=name, result=result) == 0
        assert value(s, "ftpproxy_backend_up", backend="alpha") == 1
        assert value(s, "ftpproxy_backend_up", backend="beta") == 0
        metrics.backendState("beta", True)
        metrics.backendState("alpha", False)
        s = parse(render(metrics, pool.backends))
        assert value(s, "ftpproxy_backend_up", backend="alpha") == 0
        assert value(s, "ftpproxy_backend_up", backend="beta") == 1

    def test_backends_read_at_scrape_time(self) -> None:
        """
        The collector asks for the backends at each scrape: one added by a
        reload shows up with zeros at the next.
        """
        metrics = ProxyMetrics()
        pool = twoBackendPool()
        registry = metricsRegistry(metrics, lambda: pool.backends)
        assert ("ftpproxy_sessions_total", (("backend", "gamma"),)) not in parse(
            generate_latest(registry).decode()
        )
        pool.backends.append(fakeBackend("gamma", "127.0.0.4"))
        metrics.sessionStarted("alpha")
        s = parse(generate_latest(registry).decode())
        assert value(s, "ftpproxy_sessions_total", backend="gamma") == 0
        assert value(s, "ftpproxy_backend_up", backend="gamma") == 1
        assert value(s, "ftpproxy_sessions_total", backend="alpha") == 1

    def test_pool_health_wins(self) -> None:
        """
        A backend that carries its pool's health verdict is judged by it,
        whatever the state or older reports say.
        """
        metrics = ProxyMetrics()
        metrics.backendState("a", True)
        sick = SimpleNamespace(name="a", state="draining", healthy=False)
        well = SimpleNamespace(name="b", state="down", healthy=True)
        s = parse(render(metrics, [sick, well]))
        assert value(s, "ftpproxy_backend_up", backend="a") == 0
        assert value(s, "ftpproxy_backend_up", backend="b") == 1

    def test_draining_is_up(self) -> None:
        pool = FakePool(fakeBackend("a", "127.0.0.2", state="draining"))
        s = parse(render(ProxyMetrics(), pool.backends))
        assert value(s, "ftpproxy_backend_up", backend="a") == 1

    def test_real_pool_health(self) -> None:
        """
        The real pool's backends: up, and down once the pool says so.
        """
        pool = realPool()
        s = parse(render(ProxyMetrics(), pool.backends))
        assert value(s, "ftpproxy_backend_up", backend="alpha") == 1
        pool.backends[0].healthy = False
        s = parse(render(ProxyMetrics(), pool.backends))
        assert value(s, "ftpproxy_backend_up", backend="alpha") == 0
        assert value(s, "ftpproxy_backend_up", backend="beta") == 1

    def test_stable(self) -> None:
        """
        The same numbers render the same text, whatever order they came in,
        with samples sorted by their labels.
        """
        one, two = ProxyMetrics(), ProxyMetrics()
        names = ["c", "a", "b", "a"]
        for name in names:
            one.sessionStarted(name)
            one.tlsHandshake("client", name)
        for name in reversed(names):
            two.sessionStarted(name)
            two.tlsHandshake("client", name)
        assert render(one) == render(two)
        [sessions] = [
            f for f in text_string_to_metric_families(render(one)) if f.name == "ftpproxy_sessions"
        ]
        assert [(s.labels["backend"], s.value) for s in sessions.samples] == [
            ("a", 2),
            ("b", 1),
            ("c", 1),
        ]

    @settings(deadline=None)  # a loaded CI machine is slow, not wrong
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
    def test_any_name_round_trips(self, name: str) -> None:
        """
        Whatever a backend is called (quotes, backslashes, line feeds), the
        text says it so that a parser reads the same name back.
        """
        metrics = ProxyMetrics()
        metrics.backendConnectFailed(name)
        metrics.healthCheck(name, 0.5, False)
        s = parse(render(metrics))
        assert value(s, "ftpproxy_backend_connect_failures_total", backend=name) == 1
        assert value(s, "ftpproxy_health_checks_total", backend=name, result="failed") == 1


class TestRegistry:
    def test_not_the_global_registry(self) -> None:
        """
        Each proxy has a registry of its own: two in one process (tests,
        embedders) do not clash, and prometheus_client's global REGISTRY
        never holds our families.
        """
        one, two = ProxyMetrics(), ProxyMetrics()
        one.sessionStarted("alpha")
        first = metricsRegistry(one)
        second = metricsRegistry(two)
        assert value(parse(generate_latest(first).decode()), "ftpproxy_sessions_total", backend="alpha") == 1
        assert ("ftpproxy_sessions_total", (("backend", "alpha"),)) not in parse(
            generate_latest(second).decode()
        )
        assert not [f for f in REGISTRY.collect() if f.name.startswith("ftpproxy_")]

    def test_second_collector_refused(self) -> None:
        """
        The collector describes its families, so a registry refuses a second
        one that would write the same series twice.
        """
        registry = metricsRegistry(ProxyMetrics())
        with pytest.raises(ValueError, match="ftpproxy_sessions"):
            registry.register(ProxyCollector(ProxyMetrics()))

    def test_collector_is_a_function_of_its_counters(self) -> None:
        """
        What a collector yields is metricFamilies() of its counters and the
        backends, so counters made elsewhere (summed, one day) expose alike.
        """
        metrics = busyMetrics()
        backends = twoBackendPool().backends
        collected = list(ProxyCollector(metrics, lambda: backends).collect())
        assert collected == metricFamilies(metrics, backends)
        assert [f.name for f in collected] == [
            name.removesuffix("_total") if kind == "counter" else name
            for name, kind, _ in FAMILIES
        ]


def test_pools_provide_what_admin_needs() -> None:
    """
    The real pool and the fake one both have what IAdminPool names.
    """
    assert verifyObject(IAdminPool, realPool(), tentative=True)
    assert verifyObject(IAdminPool, twoBackendPool(), tentative=True)


def test_backend_json_handles_enum_and_string_states() -> None:
    for useStrings in (False, True):
        pool = twoBackendPool(useStrings)
        assert [backendJSON(b) for b in pool.backends] == [
            {
                "name": "alpha",
                "address": "127.0.0.2:2121",
                "state": "up",
                "weight": 3,
                "active_sessions": 2,
                "total_sessions": 7,
            },
            {
                "name": "beta",
                "address": "127.0.0.3:2121",
                "state": "down",
                "weight": 1,
                "active_sessions": 0,
                "total_sessions": 0,
            },
        ]


def test_backend_json_ipv6_address() -> None:
    backend = fakeBackend("six", "::1", 21)
    assert backendJSON(backend)["address"] == "[::1]:21"


def test_bad_endpoint_description() -> None:
    with pytest.raises(ConfigError, match="admin endpoint"):
        makeAdminService(reactor, "nonsense:1:2", SimpleNamespace(metrics=ProxyMetrics()), FakePool())


def test_listen_failure_stops_startup() -> None:
    """
    A port that is taken fails startService at once rather than being
    logged and forgotten.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        service = makeAdminService(
            reactor,
            f"tcp:{port}:interface=127.0.0.1",
            SimpleNamespace(metrics=ProxyMetrics()),
            FakePool(),
        )
        with pytest.raises(CannotListenError):
            service.privilegedStartService()


# -- HTTP ----------------------------------------------------------------------


@attrs.frozen
class Response:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self):
        assert self.header("content-type") == "application/json"
        return json.loads(self.body)


class BodyCollector(Protocol):
    """
    A response body in full (twisted.web.client.readBody warns about the
    agent's own transport in this Twisted version).
    """

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


class AdminClient:
    def __init__(self, baseURL: str) -> None:
        self.baseURL = baseURL
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
        raw = Headers({k: [v] for k, v in (headers or {}).items()})
        response = await self._agent.request(
            method.encode("ascii"), (self.baseURL + path).encode("ascii"), raw
        )
        body: Deferred[bytes] = Deferred()
        response.deliverBody(BodyCollector(body))
        return Response(response.code, response.headers, await body)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post(self, path: str) -> Response:
        return await self.request("POST", path)


@pytest_twisted.async_yield_fixture
async def startAdmin():
    """
    C{startAdmin(proxyFactory, pool)} starts an admin service on 127.0.0.1
    port 0 and returns an L{AdminClient} for it; all are stopped after the
    test.
    """
    services = []

    async def start(proxyFactory, pool) -> AdminClient:
        service = makeAdminService(reactor, "tcp:0:interface=127.0.0.1", proxyFactory, pool)
        service.startService()
        services.append(service)
        port = await service.whenListening()
        address = port.getHost()
        assert address.host == "127.0.0.1"
        return AdminClient(f"http://127.0.0.1:{address.port}")

    yield start
    for service in services:
        await service.stopService()


def fakeProxy() -> SimpleNamespace:
    return SimpleNamespace(metrics=ProxyMetrics())


@pytest_twisted.ensureDeferred
async def test_metrics_change_with_calls(startAdmin) -> None:
    proxy = fakeProxy()
    admin = await startAdmin(proxy, twoBackendPool())
    first = await admin.get("/metrics")
    assert first.code == 200
    assert first.header("content-type") == CONTENT_TYPE_LATEST
    s = parse(first.body.decode("utf-8"))
    assert value(s, "ftpproxy_sessions_total", backend="alpha") == 0
    assert value(s, "ftpproxy_backend_up", backend="beta") == 0

    proxy.metrics.sessionStarted("alpha")
    proxy.metrics.sessionStarted("alpha")
    proxy.metrics.sessionEnded("alpha")
    proxy.metrics.transferFinished("alpha", "RETR", "download", 226, 4096, 0.2)
    proxy.metrics.tlsHandshake("client", "TLSv1.3")
    proxy.metrics.backendConnectFailed("beta")
    proxy.metrics.backendState("beta", True)
    proxy.metrics.healthCheck("beta", 0.042, True)

    s = parse((await admin.get("/metrics")).body.decode("utf-8"))
    assert value(s, "ftpproxy_sessions_total", backend="alpha") == 2
    assert value(s, "ftpproxy_sessions_active", backend="alpha") == 1
    assert value(s, "ftpproxy_bytes_total", backend="alpha", direction="download") == 4096
    assert value(s, "ftpproxy_transfers_total", backend="alpha", result="completed") == 1
    assert value(s, "ftpproxy_tls_handshakes_total", side="client", version="TLSv1.3") == 1
    assert value(s, "ftpproxy_backend_connect_failures_total", backend="beta") == 1
    assert value(s, "ftpproxy_backend_up", backend="beta") == 1
    assert value(s, "ftpproxy_health_check_seconds", backend="beta") == 0.042
    assert value(s, "ftpproxy_health_checks_total", backend="beta", result="ok") == 1


@pytest_twisted.ensureDeferred
async def test_backends_json(startAdmin) -> None:
    pool = twoBackendPool()
    admin = await startAdmin(fakeProxy(), pool)
    response = await admin.get("/backends")
    assert response.code == 200
    assert response.json() == [backendJSON(b) for b in pool.backends]
    assert [b["name"] for b in response.json()] == ["alpha", "beta"]
    assert response.json()[1]["state"] == "down"
    one = await admin.get("/backends/alpha")
    assert one.code == 200 and one.json()["address"] == "127.0.0.2:2121"
    assert (await admin.get("/backends/")).json() == response.json()


@pytest.mark.parametrize("useStrings", [False, True], ids=["enum-states", "string-states"])
@pytest_twisted.ensureDeferred
async def test_drain_and_enable(startAdmin, useStrings: bool) -> None:
    pool = twoBackendPool(useStrings)
    admin = await startAdmin(fakeProxy(), pool)
    drained = await admin.post("/backends/alpha/drain")
    assert drained.code == 200
    assert drained.json()["name"] == "alpha"
    assert drained.json()["state"] == "draining"
    assert (await admin.get("/backends")).json()[0]["state"] == "draining"
    enabled = await admin.post("/backends/alpha/enable")
    assert enabled.code == 200 and enabled.json()["state"] == "up"
    assert (await admin.get("/backends")).json()[0]["state"] == "up"


@pytest_twisted.ensureDeferred
async def test_unknown_names_and_paths(startAdmin) -> None:
    pool = twoBackendPool()
    admin = await startAdmin(fakeProxy(), pool)
    for path in ("/backends/gamma/drain", "/backends/gamma/enable"):
        response = await admin.post(path)
        assert response.code == 404
        assert "gamma" in response.json()["error"]
    assert (await admin.get("/backends/gamma")).code == 404
    for path in ("/", "/nothing", "/metrics/more", "/backends/alpha/reboot"):
        assert (await admin.get(path)).code == 404, path
    # Nothing was changed on the way.
    assert [backendJSON(b)["state"] for b in pool.backends] == ["up", "down"]


@pytest_twisted.ensureDeferred
async def test_wrong_methods(startAdmin) -> None:
    pool = twoBackendPool()
    admin = await startAdmin(fakeProxy(), pool)
    for method, path, allowed in [
        ("GET", "/backends/alpha/drain", "POST"),
        ("PUT", "/backends/alpha/enable", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/backends", "GET, HEAD"),
        ("POST", "/backends/alpha", "GET, HEAD"),
    ]:
        response = await admin.request(method, path)
        assert response.code == 405, (method, path)
        assert response.header("allow") == allowed
    assert backendJSON(pool.backends[0])["state"] == "up"


@pytest_twisted.ensureDeferred
async def test_head_metrics(startAdmin) -> None:
    admin = await startAdmin(fakeProxy(), twoBackendPool())
    response = await admin.request("HEAD", "/metrics")
    assert response.code == 200
    assert response.body == b""


@pytest_twisted.ensureDeferred
async def test_cross_origin_refused(startAdmin) -> None:
    """
    A browser's cross-site form post carries Origin; it must not drain.
    """
    pool = twoBackendPool()
    admin = await startAdmin(fakeProxy(), pool)
    response = await admin.request(
        "POST", "/backends/alpha/drain", {"Origin": "http://evil.example"}
    )
    assert response.code == 403
    assert backendJSON(pool.backends[0])["state"] == "up"


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_port(startAdmin) -> None:
    service = makeAdminService(reactor, "tcp:0:interface=127.0.0.1", fakeProxy(), FakePool())
    service.startService()
    port = (await service.whenListening()).getHost().port
    await service.stopService()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def realPool() -> BackendPool:
    return BackendPool(
        [
            BackendConfig(address=HostPort("127.0.0.2", 2121), name="alpha", weight=2),
            BackendConfig(address=HostPort("127.0.0.3", 2121), name="beta"),
        ],
        policyNamed("round-robin"),
    )


@pytest_twisted.ensureDeferred
async def test_real_pool_backends(startAdmin) -> None:
    pool = realPool()
    pool.backends[0].sessionStarted()
    admin = await startAdmin(fakeProxy(), pool)
    listed = (await admin.get("/backends")).json()
    assert [(b["name"], b["address"], b["weight"]) for b in listed] == [
        ("alpha", "127.0.0.2:2121", 2),
        ("beta", "127.0.0.3:2121", 1),
    ]
    assert listed[0]["active_sessions"] == 1 and listed[0]["total_sessions"] == 1
    assert listed[0]["state"] == "up"


@pytest_twisted.ensureDeferred
async def test_real_pool_drain(startAdmin) -> None:
    pool = realPool()
    if not hasattr(pool, "drain"):
        pytest.skip("BackendPool has no drain() yet")
    admin = await startAdmin(fakeProxy(), pool)
    drained = await admin.post("/backends/beta/drain")
    assert drained.code == 200 and drained.json()["state"] == "draining"
    assert (await admin.get("/backends")).json()[1]["state"] == "draining"
    s = parse((await admin.get("/metrics")).body.decode("utf-8"))
    assert value(s, "ftpproxy_backend_up", backend="beta") == 1
    enabled = await admin.post("/backends/beta/enable")
    assert enabled.code == 200 and enabled.json()["state"] == "up"
    assert (await admin.post("/backends/gamma/drain")).code == 404


def test_ops_does_not_import_session_or_app() -> None:
    """
    The operations layer sees sessions only through events and the pool
    through what it is given: no module of ftpproxy.ops imports
    ftpproxy.session or ftpproxy.app, at top level or anywhere else.
    """
    opsDirectory = Path(ftpproxy.ops.__file__).parent
    modules = sorted(opsDirectory.glob("*.py"))
    assert {m.name for m in modules} >= {"admin.py", "logs.py", "metrics.py"}
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert not name.startswith("."), f"{module.name}: relative import {name}"
                assert not name.startswith(("ftpproxy.session", "ftpproxy.app")), (
                    f"{module.name} imports {name}"
                )
                assert name != "ftpproxy" or not {
                    alias.name for alias in node.names
                } & {"session", "app"}, f"{module.name} imports ftpproxy.session/app"
