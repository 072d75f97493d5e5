"""
Tests for L{ftpproxy.backends.health} and L{ftpproxy.backends.probe}: the
settings and their TOML table, each kind of check played in memory byte by
byte, the probe's state machine on its own (which inputs each state takes),
the checker's schedule and clean stop, and real checks over loopback: a
pyftpdlib backend killed and restarted, and FTPS backends (explicit and
implicit) with their certificates checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
from automat import NoTransition
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ftpproxy.backends.balancer import BackendPool, BackendState, RoundRobin
from ftpproxy.settings.config import BackendConfig, ConfigError, HostPort
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from ftpproxy.backends.health import CHECK_KINDS, CheckResult, HealthChecker, HealthSettings
from ftpproxy.backends.probe import HealthProbe, IProbeLink, ProbeInputs
from ftpproxy.wire.ftptext import Reply
from ftpproxy.wire.proxyprotocol import formatV2Local
from ftpproxy.tls.contexts import BackendTLS, BackendTLSSettings, TLSSettings, makeServerTLS
from tests.support.backends import SERVER_SCRIPT, _readPortLine, populateRoot
from tests.support.processes import stopProcess

ALPHA = BackendConfig(address=HostPort("127.0.0.2", 2001), name="alpha")
BETA = BackendConfig(address=HostPort("127.0.0.3", 2002), name="beta")
NO_VERIFY = BackendTLSSettings(hostname="127.0.0.2", verify=False)
EXPLICIT = BackendConfig(
    address=HostPort("127.0.0.2", 2001), name="alpha", tls="explicit", tlsSettings=NO_VERIFY
)
IMPLICIT = BackendConfig(
    address=HostPort("127.0.0.2", 2990), name="alpha", tls="implicit", tlsSettings=NO_VERIFY
)


# -- settings -------------------------------------------------------------------


def test_settingsDefaults() -> None:
    settings = HealthSettings()
    assert (settings.interval, settings.timeout, settings.rise, settings.fall) == (5.0, 3.0, 2, 3)
    assert (settings.kind, settings.retry, settings.active) == ("banner", 10.0, True)
    assert not HealthSettings(kind="none").active
    assert CHECK_KINDS == ("none", "tcp", "banner", "login", "tls")


def test_fromMapping() -> None:
    settings = HealthSettings.fromMapping(
        {
            "interval": 2,
            "timeout": 0.5,
            "rise": 1,
            "fall": 4,
            "kind": "login",
            "user": "monitor",
            "password": "pw",
            "retry": 30,
        },
        "proxy.toml: health",
    )
    assert settings == HealthSettings(
        interval=2, timeout=0.5, rise=1, fall=4, kind="login", user="monitor",
        password="pw", retry=30,
    )
    assert HealthSettings.fromMapping({}, "x") == HealthSettings()


def test_passwordNotInRepr() -> None:
    assert "hunter2" not in repr(
        HealthSettings(kind="login", user="monitor", password="hunter2")
    )


@pytest.mark.parametrize(
    "table, message",
    [
        ({"interval": 0}, "proxy.toml: health interval must be a positive number of seconds, not 0"),
        ({"timeout": -1}, "health timeout must be a positive number of seconds"),
        ({"retry": "10s"}, "health retry must be a positive number of seconds, not '10s'"),
        ({"interval": True}, "health interval must be a positive number"),
        ({"rise": 0}, "health rise must be a whole number of at least 1, not 0"),
        ({"fall": 1.5}, "health fall must be a whole number of at least 1, not 1.5"),
        ({"kind": "http"}, "health kind must be one of none, tcp, banner, login, tls, not 'http'"),
        ({"kind": "login"}, 'health kind = "login" needs user and password'),
        ({"kind": "login", "user": "u"}, 'kind = "login" needs user and password'),
        ({"user": 7}, "health user must be a string, not 7"),
        ({"user": "a\r\nDELE x"}, "health user must not contain line breaks"),
        ({"intervall": 5}, "proxy.toml: health: unknown key 'intervall'; known keys are fall, interval"),
    ],
)
def test_fromMappingRefuses(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        HealthSettings.fromMapping(table, "proxy.toml: health")
    assert message in str(error.value)


def test_fromMappingNeedsATable() -> None:
    with pytest.raises(ConfigError, match=r"proxy.toml: health must be a \[health\] table"):
        HealthSettings.fromMapping(5, "proxy.toml: health")  # type: ignore[arg-type]


def test_constructorValidates() -> None:
    with pytest.raises(ConfigError, match="health fall must be"):
        HealthSettings(fall=0)


# -- in memory ------------------------------------------------------------------


class FakeMetrics:
    def __init__(self) -> None:
        self.checks: list[tuple[str, float, bool]] = []
        self.states: list[tuple[str, bool]] = []
        self._waiting: list[tuple[str, bool, defer.Deferred]] = []

    def healthCheck(self, name: str, seconds: float, ok: bool) -> None:
        self.checks.append((name, seconds, ok))

    def backendState(self, name: str, up: bool) -> None:
        self.states.append((name, up))
        for entry in list(self._waiting):
            if entry[:2] == (name, up):
                self._waiting.remove(entry)
                entry[2].callback(None)

    def waitFor(self, name: str, up: bool) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((name, up, d))
        return d


class Transport(StringTransportWithDisconnection):
    """
    A connection in memory that reports its end at once, and records
    startTLS instead of doing it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tlsCreator: Any = None
        self.aborted = False

    def startTLS(self, creator: Any) -> None:
        self.tlsCreator = creator

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class Harness:
    """
    A checker on a memory reactor; the test plays the backends.
    """

    def __init__(self, backends=(ALPHA, BETA), **settings: Any) -> None:
        settings.setdefault("interval", 5)
        settings.setdefault("timeout", 3)
        self.settings = HealthSettings(**settings)
        self.reactor = MemoryReactorClock()
        self.metrics = FakeMetrics()
        self.pool = BackendPool(backends, RoundRobin(), reactor=self.reactor, metrics=self.metrics)
        self.checker = HealthChecker(self.reactor, self.pool, self.settings, self.metrics)
        self._seen = 0

    def attempt(self, host: str) -> tuple[Any, Any]:
        """
        The pending connection attempt to C{host}: its factory and connector.
        """
        for (h, port, factory, timeout, _), connector in zip(
            self.reactor.tcpClients, self.reactor.connectors
        ):
            if h == host and not getattr(factory, "_used", False):
                return factory, connector
        raise AssertionError(f"no connection attempt to {host}")

    def accept(self, host: str) -> Transport:
        factory, connector = self.attempt(host)
        factory._used = True
        protocol = factory.buildProtocol(IPv4Address("TCP", host, 2001))
        transport = Transport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def refuse(self, host: str) -> None:
        factory, connector = self.attempt(host)
        factory._used = True
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def results(self, name: str) -> list[bool]:
        return [ok for n, _, ok in self.metrics.checks if n == name]


def reply(transport: Transport, data: bytes) -> None:
    transport.protocol.dataReceived(data)


def taken(transport: Transport) -> bytes:
    value = transport.value()
    transport.clear()
    return value


@pytest.fixture
def logEvents() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_tcpChecksRiseAndFall(logEvents: list[LogEvent]) -> None:
    h = Harness(kind="tcp", rise=2, fall=2)
    h.checker.startService()
    assert h.pool.activeChecks
    # Both backends are checked at once, with the check's timeout.
    assert [(c[0], c[1], c[3]) for c in h.reactor.tcpClients] == [
        ("127.0.0.2", 2001, 3),
        ("127.0.0.3", 2002, 3),
    ]
    alpha = h.accept("127.0.0.2")
    assert alpha.value() == b"" and not alpha.connected  # closed politely
    h.refuse("127.0.0.3")
    assert h.results("alpha") == [True] and h.results("beta") == [False]
    assert h.pool.backends[1].healthy

    h.reactor.advance(5)
    h.accept("127.0.0.2")
    h.refuse("127.0.0.3")
    assert h.pool.backends[1].state is BackendState.DOWN
    assert h.metrics.states == [("beta", False)]

    h.reactor.advance(5)
    h.accept("127.0.0.2")
    h.accept("127.0.0.3")
    assert not h.pool.backends[1].healthy
    h.reactor.advance(5)
    h.accept("127.0.0.2")
    h.accept("127.0.0.3")
    assert h.pool.backends[1].healthy
    assert h.metrics.states == [("beta", False), ("beta", True)]
    logged = [formatEvent(e) for e in logEvents]
    assert any(t.startswith("backend beta down: 2 consecutive failures, last: connect failed") for t in logged)
    assert "backend beta up: 2 health checks passed" in logged
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_bannerCheck() -> None:
    h = Harness(backends=(ALPHA,))
    h.checker.startService()
    h.reactor.advance(0.25)
    alpha = h.accept("127.0.0.2")
    h.reactor.advance(0.5)
    reply(alpha, b"220-Welcome\r\n to alpha\r\n220 ready\r\n")
    assert taken(alpha) == b"QUIT\r\n"
    assert not alpha.connected and not alpha.aborted
    assert h.metrics.checks == [("alpha", 0.75, True)]
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_bannerCheckWaitsPastPreliminaryReplies() -> None:
    h = Harness(backends=(ALPHA,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"120 ready in 1 minute\r\n")
    assert h.metrics.checks == []
    reply(alpha, b"220 ready\r\n")
    assert h.results("alpha") == [True]
    h.checker.stopService()


@pytest.mark.parametrize(
    "greeting, why",
    [
        (b"421 Too many users\r\n", "greeted with 421 Too many users"),
        (b"hello\r\n", "bad reply"),
    ],
)
def test_bannerCheckFails(greeting: bytes, why: str) -> None:
    h = Harness(backends=(ALPHA,), fall=1)
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, greeting)
    assert alpha.aborted
    assert h.results("alpha") == [False]
    assert why in h.pool.backends[0].lastError
    assert not h.pool.backends[0].healthy
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_greetingTimeout() -> None:
    h = Harness(backends=(ALPHA,), fall=1, timeout=2, interval=5)
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    h.reactor.advance(1.9)
    assert h.metrics.checks == []
    h.reactor.advance(0.1)
    assert alpha.aborted
    assert h.metrics.checks == [("alpha", 2.0, False)]
    assert h.pool.backends[0].lastError == "no 220 greeting within 2s"
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_connectTimeout() -> None:
    h = Harness(backends=(ALPHA,), fall=1, timeout=2, interval=5)
    h.checker.startService()
    factory, connector = h.attempt("127.0.0.2")
    h.reactor.advance(2)
    assert connector.stoppedConnecting
    assert h.pool.backends[0].lastError == "no connection within 2s"
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_slowCheckIsNotStartedTwice() -> None:
    """
    With a timeout longer than the interval, a round skips a backend whose
    check is still running instead of piling up connections.
    """
    h = Harness(backends=(ALPHA,), timeout=8, interval=5)
    h.checker.startService()
    h.reactor.advance(5)
    assert len(h.reactor.tcpClients) == 1
    h.reactor.advance(3)
    assert h.pool.backends[0].lastError == "no connection within 8s"
    h.reactor.advance(2)
    assert len(h.reactor.tcpClients) == 2
    h.checker.stopService()


def login(**settings: Any) -> Harness:
    settings.setdefault("kind", "login")
    settings.setdefault("user", "monitor")
    settings.setdefault("password", "s3cret")
    return Harness(**settings)


def test_loginCheck() -> None:
    h = login(backends=(ALPHA,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    assert taken(alpha) == b"USER monitor\r\n"
    reply(alpha, b"331 Password please\r\n")
    assert taken(alpha) == b"PASS s3cret\r\n"
    assert h.metrics.checks == []
    reply(alpha, b"230 Logged in\r\n")
    assert taken(alpha) == b"QUIT\r\n"
    assert h.results("alpha") == [True]
    h.checker.stopService()


def test_loginWithoutPassword() -> None:
    h = login(backends=(ALPHA,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n230 Welcome, no password needed\r\n")
    assert taken(alpha) == b"USER monitor\r\nQUIT\r\n"
    assert h.results("alpha") == [True]
    h.checker.stopService()


@pytest.mark.parametrize(
    "replies, why",
    [
        ([b"331 Password\r\n", b"530 Login incorrect.\r\n"], "login refused: 530 Login incorrect."),
        ([b"530 Not you\r\n"], "USER refused: 530 Not you"),
        ([b"331 Password\r\n", b"332 Need account\r\n"], "login refused: 332 Need account"),
    ],
)
def test_loginRefused(replies: list[bytes], why: str) -> None:
    h = login(backends=(ALPHA,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    for data in replies:
        reply(alpha, data)
    assert alpha.aborted
    assert h.results("alpha") == [False]
    assert h.pool.backends[0].lastError == why
    h.checker.stopService()


def test_explicitTLSCheck() -> None:
    h = Harness(backends=(EXPLICIT,), kind="tls")
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    assert taken(alpha) == b"AUTH TLS\r\n"
    reply(alpha, b"234 go ahead\r\n")
    # The session's own creator for this backend, built once and shared.
    assert isinstance(alpha.tlsCreator, BackendTLS)
    assert alpha.tlsCreator is h.pool.backends[0].tls
    assert h.metrics.checks == []
    alpha.protocol.handshakeCompleted()
    assert h.results("alpha") == [True]
    assert taken(alpha) == b"QUIT\r\n"
    h.checker.stopService()


def test_explicitTLSLogin() -> None:
    h = login(backends=(EXPLICIT,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    assert taken(alpha) == b"AUTH TLS\r\n"
    reply(alpha, b"234 go ahead\r\n")
    assert alpha.value() == b""
    alpha.protocol.handshakeCompleted()
    assert taken(alpha) == b"USER monitor\r\n"
    reply(alpha, b"331 Password\r\n")
    reply(alpha, b"230 in\r\n")
    assert h.results("alpha") == [True]
    h.checker.stopService()


def test_bannerOnExplicitBackendStaysClear() -> None:
    h = Harness(backends=(EXPLICIT,), kind="banner")
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    assert taken(alpha) == b"QUIT\r\n"
    assert alpha.tlsCreator is None
    assert h.results("alpha") == [True]
    h.checker.stopService()


def test_tlsKindOnClearBackendChecksTheBanner() -> None:
    h = Harness(backends=(ALPHA,), kind="tls")
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    assert taken(alpha) == b"QUIT\r\n"
    assert h.results("alpha") == [True]
    h.checker.stopService()


@pytest.mark.parametrize("split", [False, True])
def test_dataAfter234IsRefused(split: bool) -> None:
    """
    Bytes behind the 234 in the clear would be read as if they came through
    TLS (the reply-injection twin of CVE-2011-0411): the check fails.
    """
    h = Harness(backends=(EXPLICIT,), kind="tls", fall=1)
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    if split:
        reply(alpha, b"234 go ahead\r\n")
        reply(alpha, b"230 injected\r\n")
    else:
        reply(alpha, b"234 go ahead\r\n230 injected\r\n")
    assert alpha.aborted
    assert h.pool.backends[0].lastError == "data after 234 before the TLS handshake"
    h.checker.stopService()


def test_authTLSRefused() -> None:
    h = Harness(backends=(EXPLICIT,), kind="tls", fall=1)
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n500 AUTH not understood\r\n")
    assert h.pool.backends[0].lastError == "AUTH TLS refused: 500 AUTH not understood"
    assert alpha.tlsCreator is None
    h.checker.stopService()


def test_unusableTLSSettingsFailTheCheck(tmp_path: Path) -> None:
    missing = BackendTLSSettings(hostname="127.0.0.2", caFile=tmp_path / "nope.pem")
    backend = BackendConfig(
        address=HostPort("127.0.0.2", 2001), name="alpha", tls="implicit", tlsSettings=missing
    )
    h = Harness(backends=(backend,), kind="tls", fall=1)
    h.checker.startService()
    assert h.reactor.tcpClients == []
    assert h.pool.backends[0].lastError.startswith("TLS settings unusable: cannot read backend CA file")
    assert not h.pool.backends[0].healthy
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_connectionLostMidway() -> None:
    h = login(backends=(ALPHA,), fall=1)
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"220 ready\r\n")
    alpha.loseConnection()
    assert h.pool.backends[0].lastError.startswith("connection lost waiting for reply to USER")
    h.checker.stopService()


def test_stopServiceLeavesNothing() -> None:
    """
    Stopping drops the connection attempts and the connections of checks in
    progress, cancels every timer, ignores what they would have said, and
    fires once all is gone.
    """
    h = Harness()
    h.checker.startService()
    alpha = h.accept("127.0.0.2")  # greeting outstanding
    factory, connector = h.attempt("127.0.0.3")  # still connecting
    stopped = h.checker.stopService()
    assert alpha.aborted
    assert connector.stoppedConnecting
    assert stopped.called
    assert h.reactor.getDelayedCalls() == []
    assert h.metrics.checks == []
    assert all(b.healthy and b.consecutiveFailures == 0 for b in h.pool.backends)
    assert not h.pool.activeChecks
    h.reactor.advance(100)
    assert len(h.reactor.tcpClients) == 2


def test_stopWaitsForTheConnectionToGo() -> None:
    h = Harness(backends=(ALPHA,))
    h.checker.startService()
    factory, connector = h.attempt("127.0.0.2")
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 2001))
    factory._used = True

    class LateTransport(Transport):
        def loseConnection(self) -> None:  # the reactor reports it later
            self.disconnecting = True

    transport = LateTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    stopped = h.checker.stopService()
    assert transport.aborted and not stopped.called
    protocol.connectionLost(Failure(ConnectionRefusedError()))
    assert stopped.called


def test_noneKindRunsNoChecks() -> None:
    h = Harness(kind="none", fall=5, retry=60)
    h.checker.startService()
    h.reactor.advance(100)
    assert h.reactor.tcpClients == []
    assert not h.pool.activeChecks
    assert (h.pool.fall, h.pool.retry) == (5, 60)
    h.checker.stopService()


def test_updateSettings() -> None:
    """
    A reload with new settings takes effect at once: new thresholds in the
    pool, the new interval, and no active checks for kind "none".
    """
    h = Harness(backends=(ALPHA,), kind="tcp", interval=5)
    h.checker.startService()
    h.accept("127.0.0.2")
    h.checker.updateSettings(HealthSettings(kind="tcp", interval=2, fall=7))
    assert h.pool.fall == 7
    h.accept("127.0.0.2")  # the new loop checks at once
    h.reactor.advance(2)
    h.accept("127.0.0.2")
    h.checker.updateSettings(HealthSettings(kind="none"))
    assert not h.pool.activeChecks
    h.reactor.advance(10)
    assert len(h.reactor.tcpClients) == 3
    h.checker.stopService()
    assert h.reactor.getDelayedCalls() == []


def test_checkerFollowsReplace() -> None:
    h = Harness(kind="tcp", fall=1)
    h.checker.startService()
    h.accept("127.0.0.2")
    gone = h.pool.backends[1]
    h.pool.replace([ALPHA, BackendConfig(address=HostPort("127.0.0.4", 2004), name="gamma")])
    h.refuse("127.0.0.3")  # the removed backend's last check
    assert gone.healthy and gone.consecutiveFailures == 0
    h.reactor.advance(5)
    assert sorted(c[0] for c in h.reactor.tcpClients[2:]) == ["127.0.0.2", "127.0.0.4"]
    h.refuse("127.0.0.4")
    assert not h.pool.backendNamed("gamma").healthy
    h.checker.stopService()


def test_checkNow() -> None:
    h = Harness(backends=(ALPHA,), kind="tcp")
    h.checker.startService()
    joined = h.checker.check(h.pool.backends[0])
    assert len(h.reactor.tcpClients) == 1
    h.accept("127.0.0.2")
    result = joined.result
    assert isinstance(result, CheckResult) and result.ok and result.why == "connected"
    h.checker.stopService()


def test_metricsOptional() -> None:
    h = Harness(backends=(ALPHA,), kind="tcp", fall=1)
    h.checker.metrics = None
    h.checker.startService()
    h.refuse("127.0.0.2")
    assert not h.pool.backends[0].healthy
    h.checker.stopService()


@pytest.mark.parametrize("version, header", [(1, b"PROXY UNKNOWN\r\n"), (2, formatV2Local())])
def test_proxyHeaderFirst(version: int, header: bytes) -> None:
    """
    A backend that expects PROXY headers gets one saying "the proxy itself"
    (LOCAL, or UNKNOWN in v1) before anything else.
    """
    backend = BackendConfig(address=HostPort("127.0.0.2", 2001), name="alpha", proxyProtocol=version)
    h = Harness(backends=(backend,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    assert taken(alpha) == header
    reply(alpha, b"220 ready\r\n")
    assert taken(alpha) == b"QUIT\r\n"
    assert h.results("alpha") == [True]
    h.checker.stopService()


def test_proxyHeaderBeforeImplicitTLS() -> None:
    backend = attrs.evolve(IMPLICIT, proxyProtocol=2)
    h = Harness(backends=(backend,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    assert alpha.value() == formatV2Local() and alpha.tlsCreator is not None
    h.checker.stopService()


def test_implicitBannerCheck() -> None:
    """
    An implicit FTPS backend: TLS from the first byte, and the greeting
    through it decides; the handshake alone does not.
    """
    h = Harness(backends=(IMPLICIT,))
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    assert alpha.tlsCreator is h.pool.backends[0].tls
    alpha.protocol.handshakeCompleted()
    assert h.metrics.checks == []
    reply(alpha, b"220 ready\r\n")
    assert h.pool.backends[0].lastError is None
    assert [c[2] for c in h.metrics.checks] == [True]
    assert taken(alpha) == b"QUIT\r\n"
    h.checker.stopService()


def test_implicitGreetingTimeoutNamesTheHandshake() -> None:
    h = Harness(backends=(IMPLICIT,), fall=1, timeout=2)
    h.checker.startService()
    h.accept("127.0.0.2")
    h.reactor.advance(2)
    assert h.pool.backends[0].lastError == "no TLS handshake and 220 greeting within 2s"
    h.checker.stopService()


def test_goodbyeGetsItsOwnTimeout() -> None:
    """
    After the verdict the backend has a fresh timeout to close; one that
    does not is dropped, and only then is the check finished.
    """
    h = Harness(backends=(ALPHA,), timeout=2)
    h.checker.startService()
    factory, connector = h.attempt("127.0.0.2")
    factory._used = True
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 2001))

    class Lingering(Transport):
        def loseConnection(self) -> None:  # a peer that never lets go
            self.disconnecting = True

    transport = Lingering()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    h.reactor.advance(1.5)
    reply(transport, b"220 ready\r\n")
    assert h.results("alpha") == [True]
    h.reactor.advance(1.9)
    assert not transport.aborted
    h.reactor.advance(0.1)
    assert transport.aborted
    stopped = h.checker.stopService()
    assert not stopped.called
    protocol.connectionLost(Failure(ConnectionRefusedError()))
    assert stopped.called
    assert h.reactor.getDelayedCalls() == []


def test_repliesAfterTheVerdictAreIgnored() -> None:
    h = Harness(backends=(ALPHA,), fall=1)
    h.checker.startService()
    alpha = h.accept("127.0.0.2")
    reply(alpha, b"421 busy\r\n220 ready\r\n")
    assert h.results("alpha") == [False]
    assert h.pool.backends[0].lastError == "greeted with 421 busy"
    h.checker.stopService()


# -- the probe's machine on its own ----------------------------------------------


@implementer(IProbeLink)
class FakeLink:
    """
    A link that records what the machine asks of it; the test plays the
    network by calling the machine's inputs.
    """

    inputs: Any = None

    def __init__(self) -> None:
        self.attempts: list[defer.Deferred] = []
        self.done: list[Any] = []

    def connect(self) -> defer.Deferred:
        attempt: defer.Deferred = defer.Deferred()
        self.attempts.append(attempt)
        return attempt

    def write(self, data: bytes) -> None:
        self.done.append(data)

    def startTLS(self, creator: Any) -> None:
        self.done.append(("startTLS", creator))

    def tlsVersion(self) -> str:
        return "TLSv1.3"

    def close(self) -> None:
        self.done.append("close")

    def abort(self) -> None:
        self.done.append("abort")


def test_fakeLinkProvidesTheInterface() -> None:
    verifyObject(IProbeLink, FakeLink())


def probe(kind: str = "login", backend: BackendConfig = EXPLICIT, link: Any = None):
    """
    A probe over a fake link on a clock: (probe, its machine's inputs,
    the link, the clock, the pool's backend).
    """
    clock = Clock()
    link = link or FakeLink()
    settings = HealthSettings(kind=kind, user="monitor", password="pw", timeout=3)
    pool = BackendPool([backend], RoundRobin(), reactor=clock)
    checked = HealthProbe(clock, pool.backends[0], settings, link)
    return checked, link.inputs, link, clock, pool.backends[0]


REPLY = Reply.single(220, "ready")

#: How to get a fresh machine (explicit FTPS, login check) into each state.
ROUTES: dict[str, list[tuple[str, tuple]]] = {
    "idle": [],
    "connecting": [("start", ())],
    "greeting": [("start", ()), ("connected", ())],
    "authorizing": [("start", ()), ("connected", ()), ("authorize", ())],
    "handshaking": [("start", ()), ("connected", ()), ("authorize", ()), ("secure", ())],
    "sentUser": [("start", ()), ("connected", ()), ("logIn", ())],
    "sentPassword": [("start", ()), ("connected", ()), ("logIn", ()), ("sendPassword", ())],
    "quitting": [("start", ()), ("connected", ()), ("passed", ("ok",))],
    "closing": [("start", ()), ("connected", ()), ("failed", ("no",))],
    "done": [("start", ()), ("connectFailed", ("refused",))],
}

ARGUMENTS: dict[str, tuple] = {
    "start": (),
    "settingsUnusable": ("bad CA",),
    "connected": (),
    "connectFailed": ("refused",),
    "replyReceived": (REPLY,),
    "garbled": ("bad reply",),
    "handshakeCompleted": (),
    "timedOut": (),
    "connectionLost": ("gone",),
    "stop": (),
    "passed": ("ok",),
    "failed": ("no",),
    "authorize": (),
    "secure": (),
    "logIn": (),
    "sendPassword": (),
}

#: The inputs each state takes; any other input there is a bug, and the
#: machine says so (automat's NoTransition) rather than guessing.
ACCEPTED: dict[str, set[str]] = {
    "idle": {"start", "settingsUnusable", "stop"},
    "connecting": {"connected", "connectFailed", "timedOut", "stop"},
    "greeting": {
        "replyReceived", "garbled", "handshakeCompleted", "timedOut", "connectionLost", "stop",
        "passed", "failed", "authorize", "logIn",
    },
    "authorizing": {
        "replyReceived", "garbled", "timedOut", "connectionLost", "stop", "failed", "secure",
    },
    "handshaking": {
        "replyReceived", "garbled", "handshakeCompleted", "timedOut", "connectionLost", "stop",
        "passed", "logIn",
    },
    "sentUser": {
        "replyReceived", "garbled", "timedOut", "connectionLost", "stop", "passed", "failed",
        "sendPassword",
    },
    "sentPassword": {
        "replyReceived", "garbled", "timedOut", "connectionLost", "stop", "passed", "failed",
    },
    "quitting": {
        "replyReceived", "garbled", "handshakeCompleted", "timedOut", "connectionLost", "stop",
    },
    "closing": {
        "replyReceived", "garbled", "handshakeCompleted", "timedOut", "connectionLost", "stop",
    },
    "done": {"replyReceived", "garbled", "handshakeCompleted", "connectFailed", "stop"},
}


def test_inputsProtocolIsTheTable() -> None:
    assert set(ARGUMENTS) == {
        name for name in vars(ProbeInputs) if not name.startswith("_")
    }


@pytest.mark.parametrize("state", list(ROUTES))
def test_transitionTable(state: str) -> None:
    """
    Each state takes exactly the inputs of L{ACCEPTED}.
    """
    accepted = set()
    for name, arguments in ARGUMENTS.items():
        _, inputs, _, _, _ = probe()
        for step, stepArguments in ROUTES[state]:
            getattr(inputs, step)(*stepArguments)
        try:
            getattr(inputs, name)(*arguments)
        except NoTransition:
            continue
        accepted.add(name)
    assert accepted == ACCEPTED[state]


@pytest.mark.parametrize("state", list(ROUTES))
def test_stopInEveryState(state: str) -> None:
    """
    Stopping gives a verdict if there was none, drops what is open, and
    the probe finishes once the connection (if any) is gone; no timer is
    left.
    """
    checked, inputs, link, clock, _ = probe()
    for step, arguments in ROUTES[state]:
        getattr(inputs, step)(*arguments)
    hadVerdict = checked.verdict.called
    checked.stop()
    assert checked.verdict.called
    if not hadVerdict:
        assert checked.verdict.result.why == "check abandoned: health checker stopping"
    if state not in ("idle", "connecting", "done"):
        assert link.done[-1] == "abort"
        assert not checked.finished.called
        inputs.connectionLost("aborted")
    assert checked.finished.called
    assert clock.getDelayedCalls() == []
    if state == "connecting":
        assert link.attempts[0].called  # cancelled


def test_connectFailureThatComesAtOnce() -> None:
    """
    A connect that fails while the machine is still entering connecting is
    taken next, in connecting.
    """

    @implementer(IProbeLink)
    class Refusing(FakeLink):
        def connect(self) -> defer.Deferred:
            return defer.fail(ConnectionRefusedError())

    checked, _, _, clock, _ = probe(kind="banner", backend=ALPHA, link=Refusing())
    checked.start()
    assert checked.verdict.result.why.startswith("connect failed: Connection was refused")
    assert checked.finished.called and clock.getDelayedCalls() == []


def test_explicitLoginConversation() -> None:
    checked, inputs, link, clock, backend = probe()
    checked.start()
    inputs.connected()
    inputs.replyReceived(Reply.single(220, "ready"))
    inputs.replyReceived(Reply.single(234, "go"))
    assert link.done == [b"AUTH TLS\r\n", ("startTLS", backend.tls)]
    inputs.handshakeCompleted()
    inputs.replyReceived(Reply.single(331, "password"))
    clock.advance(1)
    inputs.replyReceived(Reply.single(230, "in"))
    assert link.done[2:] == [b"USER monitor\r\n", b"PASS pw\r\n", b"QUIT\r\n", "close"]
    assert checked.verdict.result == CheckResult(True, "logged in", 1.0)
    inputs.connectionLost("closed")
    assert checked.finished.called and clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "why",
    ["no 220 greeting within", "no 234 reply to AUTH TLS within", "no TLS handshake within"],
)
def test_timeoutsNameTheStep(why: str) -> None:
    checked, inputs, link, clock, _ = probe()
    checked.start()
    inputs.connected()
    if "220" not in why:
        inputs.replyReceived(Reply.single(220, "ready"))
    if "handshake" in why:
        inputs.replyReceived(Reply.single(234, "go"))
    clock.advance(3)
    assert checked.verdict.result.why == why + " 3s"
    assert link.done[-1] == "abort"


# -- real sockets -----------------------------------------------------------------

WAIT = 10.0


class PyftpdlibBackend:
    """
    A pyftpdlib server in its own process that can be killed and started
    again on the same address.
    """

    def __init__(self, root: Path, logs: Path, host: str) -> None:
        self.root, self.logs, self.host = root, logs, host
        self.port = 0
        self.process: subprocess.Popen | None = None
        populateRoot(root, "alpha")
        logs.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        logPath = self.logs / "alpha.log"
        with logPath.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVER_SCRIPT), "--name", "alpha", "--host", self.host,
                 "--port", str(self.port), "--root", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            )
        try:
            self.port = _readPortLine(self.process, logPath, WAIT)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(WAIT)
        self.process.stdout.close()

    def stop(self) -> None:
        if self.process is not None:
            stopProcess(self.process)
            if not self.process.stdout.closed:
                self.process.stdout.close()


@pytest.fixture
def pyftpdlibBackend(tmp_path: Path) -> Iterator[PyftpdlibBackend]:
    backend = PyftpdlibBackend(tmp_path / "root", tmp_path / "logs", "127.0.0.2")
    backend.start()
    yield backend
    backend.stop()


def within(d: defer.Deferred, seconds: float) -> defer.Deferred:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


@pytest_twisted.inlineCallbacks
def test_killedBackendGoesDownAndComesBack(pyftpdlibBackend: PyftpdlibBackend):
    """
    A real backend, checked by logging in: killed, it is down within
    fall * interval (plus the checks' own time); started again, it is up
    within rise * interval.
    """
    from twisted.internet import reactor

    interval, rise, fall = 0.25, 2, 3
    settings = HealthSettings(
        interval=interval, timeout=1.0, rise=rise, fall=fall, kind="login",
        user="user", password="secret",
    )
    metrics = FakeMetrics()
    config = BackendConfig(address=HostPort("127.0.0.2", pyftpdlibBackend.port), name="alpha")
    pool = BackendPool([config], RoundRobin(), reactor=reactor, metrics=metrics)
    checker = HealthChecker(reactor, pool, settings, metrics)
    checker.startService()
    try:
        # Wait for a few passed logins to make sure the check itself works.
        while len([c for c in metrics.checks if c[2]]) < 2:
            yield within(_tick(reactor, interval), WAIT)
        assert pool.backends[0].healthy

        down = metrics.waitFor("alpha", False)
        killedAt = reactor.seconds()
        pyftpdlibBackend.kill()
        yield within(down, WAIT)
        tookDown = reactor.seconds() - killedAt
        assert pool.backends[0].state is BackendState.DOWN
        assert pool.candidates("127.0.0.5") == []
        # The slack covers the checks' own time on a loaded machine.
        assert tookDown <= fall * interval + 1.0, tookDown
        assert "Connection was refused" in pool.backends[0].lastError

        up = metrics.waitFor("alpha", True)
        pyftpdlibBackend.start()  # returns once it listens again
        startedAt = reactor.seconds()
        yield within(up, WAIT)
        tookUp = reactor.seconds() - startedAt
        assert tookUp <= rise * interval + 1.0, tookUp
        assert [b.name for b in pool.candidates("127.0.0.5")] == ["alpha"]
        assert metrics.states == [("alpha", False), ("alpha", True)]
        assert all(seconds < 1.0 for _, seconds, _ in metrics.checks)
    finally:
        yield checker.stopService()
    assert [c for c in reactor.getDelayedCalls() if c.active() and _ours(c)] == []


def _ours(call: Any) -> bool:
    func = call.func
    return "health" in getattr(func, "__module__", "") or "health" in repr(func).lower()


def _tick(reactor: Any, seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


class FakeFTPS(Protocol):
    """
    Just enough of an FTPS server for the checks: 220, and 234 to AUTH TLS
    followed by the handshake.
    """

    def __init__(self, serverTLS: Any) -> None:
        self.serverTLS = serverTLS

    def connectionMade(self) -> None:
        self.transport.write(b"220 fake FTPS ready\r\n")

    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"AUTH TLS"):
            self.transport.write(b"234 go ahead\r\n")
            self.transport.startTLS(self.serverTLS)
        elif data.startswith(b"QUIT"):
            self.transport.write(b"221 bye\r\n")
            self.transport.loseConnection()


@pytest.fixture
def ftpsServer(certs: CertificatePaths) -> Iterator[Any]:
    """
    C{listen(mode)}: a fake FTPS server on 127.0.0.3 (explicit or implicit);
    the listeners are closed at teardown.
    """
    from twisted.internet import reactor

    serverTLS = makeServerTLS(TLSSettings(certificate=certs.serverCert, key=certs.serverKey))
    ports = []

    def listen(mode: str) -> int:
        factory = Factory.forProtocol(lambda: FakeFTPS(serverTLS))
        if mode == "implicit":
            factory = TLSMemoryBIOFactory(serverTLS, False, factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.3")
        ports.append(port)
        return port.getHost().port

    yield listen
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
@pytest.mark.parametrize("trusted", [True, False])
@pytest_twisted.inlineCallbacks
def test_tlsCheck(certs, otherCerts, ftpsServer, mode: str, trusted: bool):
    """
    The TLS check does the handshake an FTPS session would, certificate
    check included: against the right CA it passes; against another it
    fails and says why.
    """
    from twisted.internet import reactor

    port = ftpsServer(mode)
    ca = certs.ca if trusted else otherCerts.ca
    config = BackendConfig(
        address=HostPort("127.0.0.3", port), name="secure", tls=mode,
        tlsSettings=BackendTLSSettings(hostname="127.0.0.3", caFile=ca),
    )
    pool = BackendPool([config], RoundRobin(), reactor=reactor)
    checker = HealthChecker(reactor, pool, HealthSettings(kind="tls", timeout=5.0))
    checker.startService()
    try:
        result = yield within(checker.check(pool.backends[0]), WAIT)
    finally:
        yield checker.stopService()
    if trusted:
        assert result.ok, result.why
        expected = "TLS TLSv1.3 handshake completed" if mode == "explicit" else "greeted with 220 over TLS"
        assert result.why == expected
    else:
        assert not result.ok
        assert "certificate of backend '127.0.0.3' refused" in result.why, result.why


@pytest.fixture(scope="module")
def otherCerts(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("other"))
