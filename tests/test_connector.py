"""
Tests for L{ftpproxy.session.connector}: connecting, greeting and securing a
backend with failover, on a memory reactor whose connections the test
completes or fails by hand.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from ftpproxy.backends.balancer import Backend
from ftpproxy.session.connector import ConnectedBackend, ConnectSettings, NoBackend, connectBackend
from ftpproxy.settings.config import BackendConfig
from tests.support.fakes import FakePool, RecordingEvents
from tests.support.memory import (
    ALPHA,
    BETA,
    CLIENT_HOST,
    PROXY_HOST,
    ConnectWatch,
    Peer,
    ProxyReactor,
    loggedFailures,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.usefixtures("loggedFailures")

TIMEOUT = 10.0


class BackendTLS:
    """
    Hands out one stand-in TLS client creator per backend, and counts.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, backend: Backend) -> str:
        self.asked.append(backend.name)
        return f"tls-for-{backend.name}"


class Connecting:
    """
    One connectBackend call and everything around it.
    """

    def __init__(self, *configs: BackendConfig) -> None:
        self.reactor = ProxyReactor()
        self.connects = ConnectWatch(self.reactor)
        self.backends = [Backend(config) for config in configs]
        self.pool = FakePool(self.backends)
        self.events = RecordingEvents()
        self.tls = BackendTLS()
        self.settings = ConnectSettings(
            clock=self.reactor,
            timeout=TIMEOUT,
            sessionId="s1",
            headerAddresses=lambda: (IPv4Address("TCP", CLIENT_HOST, 40000), IPv4Address("TCP", PROXY_HOST, 2121)),
            backendTLS=self.tls,
        )
        self.results: list[Any] = []
        self.d: Deferred[ConnectedBackend] | None = None

    def start(self) -> None:
        self.d = connectBackend(self.backends, self.settings, self.pool, self.events)
        self.d.addBoth(self.results.append)

    def connected(self, index: int) -> Peer:
        """
        The next connection attempt goes to backend C{index} and succeeds.
        """
        config = self.backends[index].config
        return self.connects.next(config.address.host, config.address.port).complete()

    def result(self) -> Any:
        [result] = self.results
        return result

    def failedWith(self) -> BaseException:
        result = self.result()
        assert isinstance(result, Failure), result
        return result.value

    def failures(self) -> list[tuple[str, str]]:
        return [(backend.name, why) for backend, why in self.pool.failures]


def tlsBackend(config: BackendConfig, tls: str = "explicit", **changes: Any) -> BackendConfig:
    return attrs.evolve(config, tls=tls, **changes)


@pytest.fixture
def c() -> Connecting:
    return Connecting(ALPHA, BETA)


def test_firstBackend(c: Connecting) -> None:
    c.start()
    attempt = c.connects.next("127.0.0.2", 2001)
    assert attempt.timeout == TIMEOUT
    backend = attempt.complete()
    assert c.results == []
    backend.send(b"220-Welcome\r\n220 alpha ready\r\n")
    result = c.result()
    assert isinstance(result, ConnectedBackend)
    assert result.backend is c.backends[0]
    assert result.banner.toBytes() == b"220-Welcome\r\n220 alpha ready\r\n"
    assert result.control.transport is backend.transport
    assert c.pool.successes == [c.backends[0]]
    assert c.pool.failures == []
    assert backend.take() == b""
    assert not backend.closed
    assert c.reactor.getDelayedCalls() == []


def test_preliminaryBeforeTheBanner(c: Connecting) -> None:
    c.start()
    c.connected(0).send(b"120 Ready in a minute\r\n")
    assert c.results == []
    c.connects.new()
    # Still the first backend's connection: the 120 is no refusal.
    assert c.pool.failures == []


def test_firstRefusesSecondUsed(c: Connecting) -> None:
    c.start()
    c.connects.next("127.0.0.2", 2001).fail()
    beta = c.connected(1)
    beta.send(b"220 beta ready\r\n")
    assert c.result().backend is c.backends[1]
    [(name, why)] = c.failures()
    assert name == "alpha" and why.startswith("unreachable: ")
    assert c.pool.successes == [c.backends[1]]
    assert c.events.named("backendConnectFailed") == [("alpha",)]


@pytest.mark.parametrize("banner", [b"421 Too many users\r\n", b"530 Not now\r\n", b"120 wait\r\n554 no\r\n"])
def test_bannerOtherThan220(c: Connecting, banner: bytes) -> None:
    """
    A backend that greets with anything but 220 is closed and the next one
    tried.
    """
    c.start()
    alpha = c.connected(0)
    alpha.send(banner)
    assert alpha.transport.aborted
    code = banner.splitlines()[-1][:3].decode()
    assert c.failures() == [("alpha", f"greeted with {code}")]
    beta = c.connected(1)
    beta.send(b"220 beta ready\r\n")
    assert c.result().backend is c.backends[1]


def test_closedBeforeTheBanner(c: Connecting) -> None:
    c.start()
    c.connected(0).hangUp()
    [(name, why)] = c.failures()
    assert why.startswith("closed the connection")
    c.connected(1)


def test_malformedBanner(c: Connecting) -> None:
    c.start()
    alpha = c.connected(0)
    alpha.send(b"HELLO there\r\n")
    [(name, why)] = c.failures()
    assert why.startswith("sent a malformed reply")
    assert alpha.transport.aborted
    c.connected(1)


def test_lastRefusalCarried(c: Connecting) -> None:
    """
    When every backend refuses, the caller gets the last one's own reply
    to pass on to the client.
    """
    c.start()
    c.connected(0).send(b"421 alpha is full\r\n")
    c.connected(1).send(b"421 beta is full\r\n")
    error = c.failedWith()
    assert isinstance(error, NoBackend)
    assert error.reply.toBytes() == b"421 beta is full\r\n"
    assert [name for name, _ in c.failures()] == ["alpha", "beta"]
    assert c.pool.successes == []


def test_lastUnreachable(c: Connecting) -> None:
    c.start()
    c.connected(0).send(b"421 alpha is full\r\n")
    c.connects.next().fail()
    error = c.failedWith()
    assert isinstance(error, NoBackend) and error.reply is None


def test_noCandidates() -> None:
    c = Connecting()
    c.start()
    error = c.failedWith()
    assert isinstance(error, NoBackend) and error.reply is None
    assert c.connects.new() == []


def test_timeoutCoversConnectAndGreeting(c: Connecting) -> None:
    """
    One deadline for the connect and the greeting together.
    """
    c.start()
    attempt = c.connects.next("127.0.0.2", 2001)
    c.reactor.advance(6)
    alpha = attempt.complete()
    c.reactor.advance(TIMEOUT - 6 - 0.1)
    assert c.pool.failures == []
    c.reactor.advance(0.1)
    assert c.failures() == [("alpha", "sent no greeting in time")]
    assert alpha.transport.aborted
    beta = c.connected(1)
    beta.send(b"220 beta ready\r\n")
    assert c.result().backend is c.backends[1]
    assert c.reactor.getDelayedCalls() == []


def test_timeoutWhileConnecting(c: Connecting) -> None:
    c.start()
    attempt = c.connects.next("127.0.0.2", 2001)
    c.reactor.advance(TIMEOUT)
    assert attempt.cancelled
    assert c.failures() == [("alpha", "sent no greeting in time")]
    c.connected(1)


# -- FTPS backends -------------------------------------------------------------------------


@pytest.mark.parametrize("protection, prot", [("private", b"PROT P"), ("clear", b"PROT C")])
def test_explicitFTPS(protection: str, prot: bytes) -> None:
    c = Connecting(tlsBackend(ALPHA, dataProtection=protection))
    c.start()
    alpha = c.connected(0)
    alpha.send(b"220 alpha ready\r\n")
    assert alpha.take() == b"AUTH TLS\r\n"
    assert alpha.transport.tlsStartedWith is None
    alpha.send(b"234 go ahead\r\n")
    assert alpha.transport.tlsStartedWith == "tls-for-alpha"
    assert alpha.take() == b"PBSZ 0\r\n"
    alpha.send(b"200 PBSZ=0\r\n")
    assert alpha.take() == prot + b"\r\n"
    assert c.results == []
    alpha.send(b"200 ok\r\n")
    result = c.result()
    assert result.banner.toBytes() == b"220 alpha ready\r\n"
    assert c.pool.successes == [c.backends[0]]


@pytest.mark.parametrize(
    "answers, step",
    [
        ([b"500 AUTH not understood"], "AUTH with 500"),
        ([b"334 ADAT=x"], "AUTH with 334"),
        ([b"234 ok", b"503 no"], "PBSZ with 503"),
        ([b"234 ok", b"200 ok", b"534 no"], "PROT with 534"),
    ],
)
def test_explicitFTPSRefused(answers: list[bytes], step: str) -> None:
    """
    Any refusal on the way to a secured backend fails over to the next.
    """
    c = Connecting(tlsBackend(ALPHA), BETA)
    c.start()
    alpha = c.connected(0)
    alpha.send(b"220 alpha ready\r\n")
    for answer in answers:
        alpha.send(answer + b"\r\n")
    assert c.failures() == [("alpha", f"answered {step}")]
    assert alpha.transport.aborted
    c.connected(1).send(b"220 beta ready\r\n")
    assert c.result().backend is c.backends[1]


def test_implicitFTPS() -> None:
    """
    Implicit FTPS: TLS from the first byte, then PBSZ and PROT after the
    greeting; no AUTH.
    """
    c = Connecting(tlsBackend(ALPHA, tls="implicit"))
    c.start()
    alpha = c.connected(0)
    assert alpha.transport.tlsStartedWith == "tls-for-alpha"
    alpha.send(b"220 alpha ready\r\n")
    assert alpha.take() == b"PBSZ 0\r\n"
    alpha.send(b"200 ok\r\n")
    assert alpha.take() == b"PROT P\r\n"
    alpha.send(b"200 ok\r\n")
    assert isinstance(c.result(), ConnectedBackend)


def test_clearBackendNeverTLS(c: Connecting) -> None:
    c.start()
    alpha = c.connected(0)
    alpha.send(b"220 alpha ready\r\n")
    assert alpha.transport.tlsStartedWith is None
    assert c.tls.asked == []


# -- cancelling ----------------------------------------------------------------------------


def test_cancelWhileGreeting(c: Connecting) -> None:
    """
    Defect 7: the client went away while the backend had not greeted yet.
    The connection is closed and nothing is told to the pool: a client
    that hangs up is not the backend's failure.
    """
    c.start()
    alpha = c.connected(0)
    c.d.cancel()
    assert isinstance(c.failedWith(), CancelledError)
    assert alpha.transport.aborted
    assert c.pool.failures == [] and c.pool.successes == []
    assert c.events.calls == []
    assert c.connects.new() == []
    c.reactor.advance(0)
    assert c.pool.failures == []
    assert c.reactor.getDelayedCalls() == []


def test_cancelWhileConnecting(c: Connecting) -> None:
    c.start()
    attempt = c.connects.next()
    c.d.cancel()
    assert attempt.cancelled
    assert isinstance(c.failedWith(), CancelledError)
    assert c.pool.failures == [] and c.pool.successes == []
    assert c.connects.new() == []
    assert c.reactor.getDelayedCalls() == []


def test_cancelWhileSecuring() -> None:
    c = Connecting(tlsBackend(ALPHA), BETA)
    c.start()
    alpha = c.connected(0)
    alpha.send(b"220 alpha ready\r\n234 go\r\n")
    c.d.cancel()
    assert alpha.transport.aborted
    assert c.pool.failures == []
    assert c.connects.new() == []


# -- PROXY protocol --------------------------------------------------------------------------


def test_proxyHeaderFirst() -> None:
    c = Connecting(attrs.evolve(ALPHA, proxyProtocol=1))
    c.start()
    alpha = c.connected(0)
    assert alpha.take() == b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 2121\r\n"
    alpha.send(b"220 alpha ready\r\n")
    assert alpha.take() == b""
    assert isinstance(c.result(), ConnectedBackend)


def test_proxyHeaderBeforeTLS() -> None:
    c = Connecting(tlsBackend(ALPHA, tls="implicit", proxyProtocol=2))
    c.start()
    alpha = c.connected(0)
    header = alpha.take()
    assert header.startswith(b"\r\n\r\n\x00\r\nQUIT\n")
    assert alpha.transport.tlsStartedWith == "tls-for-alpha"


def test_noProxyHeaderByDefault(c: Connecting) -> None:
    c.start()
    assert c.connected(0).take() == b""


def test_repliesInjectedAfter234() -> None:
    """
    Replies sent in the clear behind the backend's 234 are refused (the
    reply-injection twin of CVE-2011-0411): the next backend is tried.
    """
    c = Connecting(tlsBackend(ALPHA), BETA)
    c.start()
    alpha = c.connected(0)
    alpha.send(b"220 alpha ready\r\n")
    alpha.send(b"234 go ahead\r\n200 PBSZ=0\r\n")
    [(name, why)] = c.failures()
    assert why == "sent a malformed reply: data after 234 before the TLS handshake"
    assert alpha.transport.aborted
    c.connected(1)
