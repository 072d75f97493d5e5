"""
Listeners behind a balancer that speaks HAProxy's PROXY protocol: each
connection starts with a header naming the real client.

Twisted's own C{haproxy:} endpoint connects the wrapped protocol before the
header has arrived, so C{connectionMade} sees the balancer's address; an
FTP server speaks first and decides everything there. The wrapper here
builds and connects the wrapped protocol only once the header is read
(with a deadline), and refuses anything else with a plain close. The header
itself is read by L{ftpproxy.wire.proxyprotocol.parseHeader}.
"""

from __future__ import annotations

import enum

import attrs
from twisted.internet import address, endpoints
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IListeningPort,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from ftpproxy.internals import deliveringTo
from ftpproxy.wire.proxyprotocol import (
    InvalidProxyHeader,
    ProxiedAddress,
    ProxyHeader,
    parseHeader,
)

#: What a listener string starts with to expect a PROXY header.
LISTEN_PREFIX = "haproxy:"

#: Seconds a connection to a PROXY listener may take to send its header.
DEFAULT_HEADER_TIMEOUT = 10.0


class HeaderState(enum.Enum):
    """
    Where a L{ProxyHeaderProtocol} is in its connection's life.
    """

    AWAITING = "awaiting the PROXY header"
    RELAYING = "relaying to the wrapped protocol"
    REFUSED = "refused"


def _twistedAddress(given: ProxiedAddress | None) -> IAddress | None:
    if given is None:
        return None
    kind = address.IPv4Address if given.ip.version == 4 else address.IPv6Address
    return kind("TCP", str(given.ip), given.port)


@implementer(IHandshakeListener)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    Reads a PROXY header, then builds the wrapped protocol for the client
    the header names and connects it; C{getPeer()} and C{getHost()} are the
    header's addresses, or the connection's own after LOCAL or UNKNOWN.

    @ivar state: a L{HeaderState}.
    """

    log = Logger()

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)
        self.state = HeaderState.AWAITING
        self._buffered = bytearray()
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._deadline = None

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "ProxyHeaderProtocol"
        return super().logPrefix()

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._deadline = self.factory.reactor.callLater(self.factory.timeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self.state is HeaderState.RELAYING:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.state is HeaderState.REFUSED:
            return
        self._buffered += data
        try:
            parsed = parseHeader(self._buffered)
        except InvalidProxyHeader as e:
            self._refuse(str(e))
            return
        if parsed is None:
            return
        header, length = parsed
        rest, self._buffered = bytes(self._buffered[length:]), bytearray()
        self._start(header, rest)

    def _start(self, header: ProxyHeader, rest: bytes) -> None:
        self._cancelDeadline()
        self._peer = _twistedAddress(header.source)
        self._host = _twistedAddress(header.destination)
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._refuse("the wrapped factory built no protocol")
            return
        self.wrappedProtocol = protocol
        self.state = HeaderState.RELAYING
        receiver = deliveringTo(self.transport)
        protocol.makeConnection(self)
        if rest:
            after = deliveringTo(self.transport)
            if after is not receiver and after is not None:
                # The wrapped protocol started TLS (implicit FTPS): bytes
                # that came with the header are the start of the handshake.
                after.dataReceived(rest)
            else:
                protocol.dataReceived(rest)

    def _timedOut(self) -> None:
        self._deadline = None
        self._refuse(f"no PROXY header within {self.factory.timeout} seconds")

    def _refuse(self, why: str) -> None:
        self.state = HeaderState.REFUSED
        self._buffered = bytearray()
        self._cancelDeadline()
        self.log.info(
            "PROXY protocol: refused connection from {peer}: {why}",
            peer=self.transport.getPeer(),
            why=why,
        )
        self.transport.loseConnection()

    def _cancelDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def handshakeCompleted(self) -> None:
        # A TLS layer started under this wrapper (implicit FTPS) reports to
        # the wrapper; pass it on to the protocol that started it.
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def getPeer(self) -> IAddress:
        return self._peer or self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self._host or self.transport.getHost()

    def connectionHost(self) -> IAddress:
        """
        This end of the TCP connection itself: where to listen for the
        session's passive data connections.
        """
        return self.transport.getHost()

    def connectionPeer(self) -> IAddress:
        """
        The other end of the TCP connection itself (the balancer), for
        checks that concern the connection rather than the client, such as
        where data connections relayed by the same balancer come from.
        """
        return self.transport.getPeer()

    def connectionLost(self, reason: Failure = None) -> None:
        self._cancelDeadline()
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            wrapped, self.wrappedProtocol = self.wrappedProtocol, None
            wrapped.connectionLost(reason)


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps a server factory so that each connection must start with a PROXY
    header, sent within C{timeout} seconds.
    """

    protocol = ProxyHeaderProtocol
    noisy = False

    def __init__(
        self, wrappedFactory: Factory, reactor, timeout: float = DEFAULT_HEADER_TIMEOUT
    ) -> None:
        super().__init__(wrappedFactory)
        self.reactor = reactor
        self.timeout = timeout

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol:
        return self.protocol(self)

    def logPrefix(self) -> str:
        return f"{super().logPrefix()} (PROXY)"


@implementer(IStreamServerEndpoint)
@attrs.frozen
class ProxyHeaderServerEndpoint:
    """
    A server endpoint whose connections start with a PROXY header.
    """

    reactor: object
    wrapped: IStreamServerEndpoint
    timeout: float = DEFAULT_HEADER_TIMEOUT

    def listen(self, factory: Factory) -> IListeningPort:
        return self.wrapped.listen(ProxyHeaderFactory(factory, self.reactor, self.timeout))


def serverFromString(
    reactor, description: str, headerTimeout: float = DEFAULT_HEADER_TIMEOUT
) -> IStreamServerEndpoint:
    """
    Like L{endpoints.serverFromString}, except that C{haproxy:...} gives an
    endpoint that reads the PROXY header before building the protocol
    (Twisted's own C{haproxy:} plugin connects it first).
    """
    if description.startswith(LISTEN_PREFIX):
        wrapped = endpoints.serverFromString(reactor, description[len(LISTEN_PREFIX) :])
        return ProxyHeaderServerEndpoint(reactor, wrapped, headerTimeout)
    return endpoints.serverFromString(reactor, description)
