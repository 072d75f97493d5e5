"""
The proxy driven in memory: a L{ProxyFactory} on a L{MemoryReactorClock},
fake clients, and the connections the proxy asks the reactor for completed
(or refused) by hand.

Nothing here opens a socket. Addresses are loopback ones anyway, so that a
mistake can never send traffic elsewhere.
"""

from __future__ import annotations

import gc
from typing import Any, Iterator

import attrs
import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    CannotListenError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.backends.balancer import BackendPool, policyNamed
from ftpproxy.settings.config import BackendConfig, HostPort, PortRange, ProxyConfig
from ftpproxy.app.proxy import ProxyFactory
from ftpproxy.session.control import ClientControl

PROXY_HOST = "127.0.0.1"
PROXY_PORT = 2121
CLIENT_HOST = "127.0.0.5"
CLIENT_PORT = 40000
FOREIGN_HOST = "127.0.0.9"
PASSIVE_PORTS = PortRange(30000, 30009)

# Session-wide timeouts; 0 turns each off.
SESSION_TIMERS = ("loginTimeout", "idleTimeout", "dataStallTimeout")

ALPHA = BackendConfig(address=HostPort("127.0.0.2", 2001), name="alpha")
BETA = BackendConfig(address=HostPort("127.0.0.3", 2002), name="beta")


def address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class MemoryTransport(StringTransport):
    """
    A TCP transport in memory that, like a real one, reports the end of the
    connection to its protocol later (on the next reactor turn), never from
    inside C{loseConnection}.

    @ivar lost: whether the protocol has been told the connection is gone.
    @ivar aborted: whether the local side called C{abortConnection}.
    """

    def __init__(self, reactor: MemoryReactorClock, protocol: Protocol, host, peer) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.reactor = reactor
        self.protocol = protocol
        self.lost = False
        self.aborted = False
        self.keepAlive = False
        self.tlsStartedWith: Any = None

    # What ITCPTransport adds and the session uses.
    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepAlive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.keepAlive

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def startTLS(self, creator: Any, normal: bool = True) -> None:
        """
        Only noted: the bytes stay clear, and the test plays both ends.
        """
        self.tlsStartedWith = creator

    def unregisterProducer(self) -> None:
        # Like Twisted's TCP and TLS transports, and unlike StringTransport,
        # unregistering when no producer is registered is allowed.
        self.producer = None
        self.streaming = None

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        self.reactor.callLater(0, self.connectionLost, ConnectionDone("closed"))

    def abortConnection(self) -> None:
        self.aborted = self.disconnected = True
        if self.disconnecting:
            return
        self.disconnecting = True
        self.reactor.callLater(0, self.connectionLost, ConnectionAborted("aborted"))

    def connectionLost(self, reason: Exception) -> None:
        """
        The connection is over (closed by either side): tell the protocol,
        once.
        """
        if self.lost:
            return
        self.lost = True
        self.connected = False
        self.protocol.connectionLost(Failure(reason))


@attrs.define(eq=False)
class Peer:
    """
    The far end of one connection made with the proxy: what the proxy wrote
    to it, and a way to send bytes to the proxy or hang up.
    """

    protocol: Protocol
    transport: MemoryTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        """
        What the proxy wrote since the last C{take}.
        """
        value = self.transport.value()
        self.transport.clear()
        return value

    def hangUp(self) -> None:
        """
        The far end closes the connection.
        """
        self.transport.connectionLost(ConnectionDone("peer closed"))

    @property
    def closed(self) -> bool:
        """
        Whether the proxy has closed (or started to close) this connection,
        or it is gone.
        """
        return self.transport.disconnecting or self.transport.lost


def attach(
    reactor: MemoryReactorClock, protocol: Protocol, host: IPv4Address, peer: IPv4Address
) -> Peer:
    transport = MemoryTransport(reactor, protocol, host, peer)
    protocol.makeConnection(transport)
    return Peer(protocol, transport)


@implementer(IListeningPort)
class TrackedPort:
    """
    A listening port that remembers whether it was closed. Like a real one,
    it takes no connection once told to stop, but its port number is in
    use until the next reactor turn.
    """

    def __init__(self, reactor: MemoryReactorClock, addr, factory, interface: str) -> None:
        self._reactor = reactor
        self._address = addr
        self.factory = factory
        self.interface = interface
        self.listening = True
        self.bound = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            self._reactor.callLater(0, self._unbind)

    def _unbind(self) -> None:
        self.bound = False

    def getHost(self):
        return self._address


class ProxyReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose listening ports can be checked for having
    been closed, and that refuses to listen twice on one port (or on ports
    listed in C{busyPorts}), as a real one does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[TrackedPort] = []
        self.busyPorts: set[int] = set()

    def listenTCP(self, port, factory, backlog=50, interface=""):
        inUse = any(
            p.getHost().port == port and p.bound and p.interface == interface
            for p in self.ports
        )
        if port in self.busyPorts or (port != 0 and inUse):
            raise CannotListenError(interface, port, OSError("address in use"))
        self.tcpServers.append((port, factory, backlog, interface))
        listening = TrackedPort(self, address(interface or "0.0.0.0", port), factory, interface)
        self.ports.append(listening)
        return listening

    def openPorts(self) -> list[TrackedPort]:
        return [p for p in self.ports if p.listening]


@attrs.define(eq=False)
class ConnectAttempt:
    """
    An outgoing connection the proxy asked the reactor for.
    """

    reactor: ProxyReactor
    host: str
    port: int
    factory: Any
    timeout: float
    bindAddress: tuple[str, int] | None
    connector: Any

    def complete(self, localHost: str = PROXY_HOST, localPort: int = 45000) -> Peer:
        """
        The connection is established; return its far end.
        """
        protocol = self.factory.buildProtocol(address(self.host, self.port))
        assert protocol is not None
        return attach(
            self.reactor, protocol, address(localHost, localPort), address(self.host, self.port)
        )

    def fail(self, reason: Exception | None = None) -> None:
        """
        The connection attempt fails (refused by default).
        """
        self.factory.clientConnectionFailed(
            self.connector, Failure(reason or ConnectionRefusedError())
        )

    @property
    def cancelled(self) -> bool:
        return self.connector.stoppedConnecting


class ConnectWatch:
    """
    The outgoing connections asked of a reactor, as they come.
    """

    def __init__(self, reactor: ProxyReactor) -> None:
        self.reactor = reactor
        self._seen = 0

    def new(self) -> list[ConnectAttempt]:
        """
        The connection attempts made since the last look.
        """
        attempts = [
            ConnectAttempt(self.reactor, host, port, factory, timeout, bindAddress, connector)
            for (host, port, factory, timeout, bindAddress), connector in zip(
                self.reactor.tcpClients[self._seen :], self.reactor.connectors[self._seen :]
            )
        ]
        self._seen = len(self.reactor.tcpClients)
        return attempts

    def next(self, host: str | None = None, port: int | None = None) -> ConnectAttempt:
        """
        The one connection attempt made since the last look, checked against
        C{host} and C{port} when given.
        """
        attempts = self.new()
        assert len(attempts) == 1, f"expected one connection attempt, got {attempts}"
        attempt = attempts[0]
        assert host is None or attempt.host == host, attempt
        assert port is None or attempt.port == port, attempt
        return attempt


class ProxyHarness:
    """
    A proxy on a memory reactor, with helpers to play its clients and
    backends.
    """

    def __init__(
        self,
        backends: tuple[BackendConfig, ...] = (ALPHA, BETA),
        sessionTimers: bool = False,
        **settings: Any,
    ) -> None:
        """
        @param sessionTimers: keep the session-wide timers (login, idle,
            stall) at their defaults; off by default so that a test can see
            exactly the timers of what it drives.
        @param settings: L{ProxyConfig} fields.
        """
        settings.setdefault("passivePorts", PASSIVE_PORTS)
        if not sessionTimers:
            known = attrs.fields_dict(ProxyConfig)
            for name in SESSION_TIMERS:
                if name in known:
                    settings.setdefault(name, 0)
        self.config = ProxyConfig(backends=backends, **settings)
        self.reactor = ProxyReactor()
        self.pool = BackendPool(self.config.backends, policyNamed(self.config.policy, **self.config.policyOptions))
        self.factory = ProxyFactory(self.reactor, self.config, self.pool)
        self._seenConnects = 0

    # -- clients --------------------------------------------------------------

    def connectClient(
        self,
        host: str = CLIENT_HOST,
        port: int = CLIENT_PORT,
        localHost: str = PROXY_HOST,
        localPort: int = PROXY_PORT,
    ) -> Peer:
        """
        A client connects to the proxy's control port.
        """
        session = self.factory.buildProtocol(address(host, port))
        return attach(self.reactor, session, address(localHost, localPort), address(host, port))

    def connectData(
        self, port: int, host: str = CLIENT_HOST, sourcePort: int = 40001
    ) -> Peer | None:
        """
        A client connects to passive port C{port}; None when the proxy's
        listener refuses it.
        """
        listening = [p for p in self.reactor.openPorts() if p.getHost().port == port]
        assert len(listening) == 1, f"no single open listener on {port}: {listening}"
        listener = listening[0]
        protocol = listener.factory.buildProtocol(address(host, sourcePort))
        if protocol is None:
            return None
        return attach(self.reactor, protocol, listener.getHost(), address(host, sourcePort))

    # -- outgoing connections -------------------------------------------------

    def newConnects(self) -> list[ConnectAttempt]:
        """
        The connection attempts made since the last call.
        """
        attempts = [
            ConnectAttempt(self.reactor, host, port, factory, timeout, bindAddress, connector)
            for (host, port, factory, timeout, bindAddress), connector in zip(
                self.reactor.tcpClients[self._seenConnects :],
                self.reactor.connectors[self._seenConnects :],
            )
        ]
        self._seenConnects = len(self.reactor.tcpClients)
        return attempts

    def nextConnect(self, host: str | None = None, port: int | None = None) -> ConnectAttempt:
        """
        The one connection attempt made since the last look, checked against
        C{host} and C{port} when given.
        """
        attempts = self.newConnects()
        assert len(attempts) == 1, f"expected one connection attempt, got {attempts}"
        attempt = attempts[0]
        if host is not None:
            assert attempt.host == host
        if port is not None:
            assert attempt.port == port
        return attempt

    # -- time -------------------------------------------------------------------

    def flush(self) -> None:
        """
        Run what is due now: chiefly the connection losses that transports
        report on the next reactor turn.
        """
        self.reactor.advance(0)

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    # -- a whole session --------------------------------------------------------

    def startSession(
        self, banner: bytes = b"220 alpha ready\r\n", login: bool = True, **clientArgs: Any
    ) -> tuple[Peer, Peer]:
        """
        A client connected and greeted through the first backend, and (with
        C{login}) logged in; both ends' buffers are empty on return.
        """
        client = self.connectClient(**clientArgs)
        backend = self.nextConnect().complete()
        backend.send(banner)
        assert client.take() == banner
        assert backend.take() == b""
        if login:
            self.logIn(client, backend)
        return client, backend

    def logIn(self, client: Peer, backend: Peer, user: bytes = b"alice") -> None:
        """
        The client logs in: USER and PASS, which the backend accepts.
        """
        client.send(b"USER " + user + b"\r\n")
        assert backend.take() == b"USER " + user + b"\r\n"
        backend.send(b"331 Password required.\r\n")
        client.send(b"PASS secret\r\n")
        assert backend.take() == b"PASS secret\r\n"
        backend.send(b"230 Logged in.\r\n")
        assert client.take() == b"331 Password required.\r\n230 Logged in.\r\n"

    @property
    def sessions(self) -> set[ClientControl]:
        return self.factory.sessions


@pytest.fixture
def loggedFailures() -> Iterator[list[dict]]:
    """
    Log events that carry a failure (unhandled errors in Deferreds,
    exceptions in callbacks) during the test; the test fails if any.
    """
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    # An unhandled error in a Deferred is logged when the Deferred is
    # collected. Freezing what exists beforehand keeps that collection to
    # the test's own objects, and cheap.
    gc.freeze()
    try:
        yield failures
        gc.collect()
    finally:
        gc.unfreeze()
        globalLogPublisher.removeObserver(observe)
    assert not [e["log_failure"].getTraceback() for e in failures]
