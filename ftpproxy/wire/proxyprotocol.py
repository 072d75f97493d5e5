"""
HAProxy's PROXY protocol (v1 text, v2 binary): telling a backend who the
real client is, and learning it from a balancer placed in front of us.

Sending: the session writes a header as the very first bytes of its backend
control connection (before any FTP byte and before an implicit-TLS
handshake), so a backend that speaks the protocol logs and checks the
client's address instead of the proxy's. Never on data connections: a
header there ends up inside the file.

Accepting: Twisted's own C{haproxy:} endpoint connects the wrapped protocol
before the header has arrived, so C{connectionMade} sees the balancer's
address; an FTP server speaks first and decides everything there. The
wrapper here builds and connects the wrapped protocol only once the header
is read (with a deadline), refuses anything else with a plain close, and
reuses Twisted's header parsers rather than a parser of our own.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import Union

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
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

#: The versions a backend's C{proxy_protocol} setting may name.
PROXY_PROTOCOL_VERSIONS = (1, 2)

#: The twelve bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: The longest v1 header the specification allows, CRLF included.
V1_MAX_LENGTH = 107

#: What a listener string starts with to expect a PROXY header.
LISTEN_PREFIX = "haproxy:"

#: Seconds a connection to a PROXY listener may take to send its header.
DEFAULT_HEADER_TIMEOUT = 10.0

_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_V2_TCP4 = 0x11  # AF_INET, STREAM
_V2_TCP6 = 0x21  # AF_INET6, STREAM
_V2_UNSPEC = 0x00

#: A host and port, as a tuple or as what C{transport.getPeer()} returns.
Address = Union[tuple[str, int], address.IPv4Address, address.IPv6Address]

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


# -- sending ------------------------------------------------------------------


def _hostPort(where: Address) -> tuple[str, int]:
    if isinstance(where, (address.IPv4Address, address.IPv6Address)):
        return where.host, where.port
    host, port = where
    return host, port


def _checkedPort(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{port!r} is not a TCP port number")
    return port


def _ipOrNone(host: str) -> _IP | None:
    """
    The address C{host} names, without an IPv6 scope (a header has no room
    for one), or None when it is not an IP address.
    """
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None


def _asIPv4(ip: _IP | None) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped
    return None


@attrs.frozen
class _Endpoints:
    """
    Both ends of a proxied connection, in the one family a header can carry
    them in: C{family} is 4, 6, or None when they cannot share one.
    """

    family: int | None
    source: _IP | None = None
    destination: _IP | None = None
    sourcePort: int = 0
    destinationPort: int = 0

    @classmethod
    def of(cls, source: Address, destination: Address) -> _Endpoints:
        sourceHost, sourcePort = _hostPort(source)
        destinationHost, destinationPort = _hostPort(destination)
        ports = _checkedPort(sourcePort), _checkedPort(destinationPort)
        sourceIP, destinationIP = _ipOrNone(sourceHost), _ipOrNone(destinationHost)
        source4, destination4 = _asIPv4(sourceIP), _asIPv4(destinationIP)
        if source4 is not None and destination4 is not None:
            # IPv4-mapped addresses (a dual-stack socket's view of an IPv4
            # peer) go out as plain IPv4.
            return cls(4, source4, destination4, *ports)
        if isinstance(sourceIP, ipaddress.IPv6Address) and isinstance(
            destinationIP, ipaddress.IPv6Address
        ):
            return cls(6, sourceIP, destinationIP, *ports)
        return cls(None)


def formatV1(source: Address, destination: Address) -> bytes:
    """
    A v1 (text) header: C{source} is the client, C{destination} the address
    it connected to. Families that differ, or hosts that are not IP
    addresses, give C{PROXY UNKNOWN}, which tells the backend to use the
    connection's own addresses.
    """
    ends = _Endpoints.of(source, destination)
    if ends.family is None:
        return b"PROXY UNKNOWN\r\n"
    line = (
        f"PROXY TCP{ends.family} {ends.source} {ends.destination} "
        f"{ends.sourcePort} {ends.destinationPort}\r\n"
    )
    return line.encode("ascii")


def formatV2(source: Address, destination: Address) -> bytes:
    """
    A v2 (binary) header with command PROXY over TCP. Families that differ,
    or hosts that are not IP addresses, give family UNSPEC with no address
    block, the v2 twin of C{PROXY UNKNOWN}.
    """
    ends = _Endpoints.of(source, destination)
    if ends.family is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, _V2_UNSPEC, 0)
    block = (
        ends.source.packed
        + ends.destination.packed
        + struct.pack("!HH", ends.sourcePort, ends.destinationPort)
    )
    family = _V2_TCP4 if ends.family == 4 else _V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(block)) + block


def formatV2Local() -> bytes:
    """
    A v2 header with command LOCAL: the connection is the proxy's own (a
    health check), so the backend keeps the real addresses.
    """
    return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, _V2_UNSPEC, 0)


def _checkedVersion(version: int) -> int:
    if version not in PROXY_PROTOCOL_VERSIONS:
        raise ValueError(f"PROXY protocol version {version!r} is not 1 or 2")
    return version


def formatHeader(version: int, source: Address, destination: Address) -> bytes:
    """
    The header of PROXY protocol C{version} (1 or 2) for a client at
    C{source} that connected to C{destination}.
    """
    if _checkedVersion(version) == 1:
        return formatV1(source, destination)
    return formatV2(source, destination)


def formatLocalHeader(version: int) -> bytes:
    """
    What the proxy's own connections (health checks) send to a backend that
    expects a header: v1 has no LOCAL command, so C{PROXY UNKNOWN}.
    """
    if _checkedVersion(version) == 1:
        return b"PROXY UNKNOWN\r\n"
    return formatV2Local()


def sendProxyHeader(transport, version: int, clientAddress: Address, proxyAddress: Address) -> None:
    """
    Tell a backend who the client is: write the header on a just-connected
    backend control C{transport}, before any FTP byte and before C{startTLS}.

    @param clientAddress: the client's address (the client control
        connection's C{getPeer()}).
    @param proxyAddress: where the client reached us (that connection's
        C{getHost()}).
    """
    transport.write(formatHeader(version, clientAddress, proxyAddress))


# -- accepting ----------------------------------------------------------------


class _HeaderState(enum.Enum):
    AWAITING = "awaiting the PROXY header"
    RELAYING = "relaying to the wrapped protocol"
    REFUSED = "refused"


class _V1Parser(V1Parser):
    """
    Twisted's v1 parser, also taking the short C{PROXY UNKNOWN} line the
    specification allows (and HAProxy sends), which it refuses.
    """

    @classmethod
    def parse(cls, line: bytes) -> ProxyInfo:
        if line.split(b" ")[:2] == [cls.PROXYSTR, cls.UNKNOWN_PROTO]:
            return ProxyInfo(line, None, None)
        return super().parse(line)


def _chooseParser(buffered: bytes) -> V1Parser | V2Parser | None:
    """
    The parser for the header C{buffered} starts, None until enough has
    arrived to tell, or L{InvalidProxyHeader} when it starts neither.
    """
    if buffered[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(buffered)]:
        if len(buffered) < 16:
            return None
        if buffered[12] & 0xF0 != 0x20:
            raise InvalidProxyHeader("unknown PROXY protocol v2 version")
        return V2Parser()
    v1 = V1Parser.PROXYSTR + b" "
    if buffered[: len(v1)] == v1[: len(buffered)]:
        return None if len(buffered) < len(v1) else _V1Parser()
    raise InvalidProxyHeader("not a PROXY protocol header")


def _checkedAddress(given: IAddress | None) -> IAddress | None:
    """
    An address from a parsed header, its host in canonical form; the v1
    parser takes any word for a host and any integer for a port, and the
    v2 parser writes IPv6 addresses uncompressed.
    """
    if given is None:
        return None
    if not isinstance(given, (address.IPv4Address, address.IPv6Address)) or given.type != "TCP":
        raise InvalidProxyHeader(f"unsupported address {given!r}")
    kind = ipaddress.IPv6Address
    if isinstance(given, address.IPv4Address):
        kind = ipaddress.IPv4Address
    try:
        host = str(kind(given.host))
    except ValueError:
        raise InvalidProxyHeader(f"bad host {given.host!r}") from None
    if not 0 <= given.port <= 65535:
        raise InvalidProxyHeader(f"bad port {given.port!r}")
    return type(given)("TCP", host, given.port)


@implementer(IHandshakeListener)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    Reads a PROXY header, then builds the wrapped protocol for the client
    the header names and connects it; C{getPeer()} and C{getHost()} are the
    header's addresses, or the connection's own after LOCAL or UNKNOWN.
    """

    log = Logger()

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)
        self.state = _HeaderState.AWAITING
        self._buffered = b""
        self._parser: V1Parser | V2Parser | None = None
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
        if self.state is _HeaderState.RELAYING:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.state is _HeaderState.REFUSED:
            return
        try:
            info, rest = self._feed(data)
            if info is None:
                return
            source, destination = _checkedAddress(info.source), _checkedAddress(info.destination)
        except (InvalidProxyHeader, ValueError) as e:
            # Twisted's v1 parser lets int() errors out as ValueError.
            self._refuse(str(e) or e.__class__.__name__)
            return
        self._start(source, destination, rest)

    def _feed(self, data: bytes) -> tuple[ProxyInfo | None, bytes | None]:
        if self._parser is None:
            self._buffered += data
            self._parser = _chooseParser(self._buffered)
            if self._parser is None:
                return None, None
            data, self._buffered = self._buffered, b""
        return self._parser.feed(data)

    def _start(self, source: IAddress | None, destination: IAddress | None, rest: bytes) -> None:
        self._cancelDeadline()
        self._peer, self._host = source, destination
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._refuse("the wrapped factory built no protocol")
            return
        self.wrappedProtocol = protocol
        self.state = _HeaderState.RELAYING
        receiver = getattr(self.transport, "protocol", None)
        protocol.makeConnection(self)
        if rest:
            after = getattr(self.transport, "protocol", None)
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
        self.state = _HeaderState.REFUSED
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
