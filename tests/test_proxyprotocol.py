"""
Tests for L{ftpproxy.wire.proxyprotocol}: the PROXY protocol headers the proxy
sends to backends, and the listener wrapper that reads them from a balancer
in front of the proxy.

Headers are checked byte for byte against the specification and round-trip
through Twisted's parsers (the reference implementation the wrapper uses);
the wrapper is driven in memory with arbitrary fragmentation, then on real
loopback sockets next to Twisted's own C{haproxy:} endpoint.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import assume, given, settings, strategies as st
from twisted.internet import address, endpoints, error, reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from zope.interface import implementer

from ftpproxy.backends.control import BackendControl, connectProtocol
from ftpproxy.tls.devcerts import makeCertificates
from ftpproxy.wire.proxyprotocol import (
    _V1Parser,
    DEFAULT_HEADER_TIMEOUT,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeaderFactory,
    ProxyHeaderServerEndpoint,
    formatHeader,
    formatLocalHeader,
    formatV1,
    formatV2,
    formatV2Local,
    sendProxyHeader,
    serverFromString,
)

TIMEOUT = 10

SIGNATURE_HEX = "0d0a0d0a000d0a515549540a"

ports = st.integers(min_value=0, max_value=65535)
ipv4s = st.ip_addresses(v=4)
ipv6s = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None)
mapped = ipv4s.map(lambda ip: ipaddress.IPv6Address(f"::ffff:{ip}"))


def _ends(ips):
    return st.tuples(st.tuples(ips.map(str), ports), st.tuples(ips.map(str), ports))


# -- v1 -----------------------------------------------------------------------


def test_v1TCP4() -> None:
    assert (
        formatV1(("192.0.2.1", 56324), ("198.51.100.7", 21))
        == b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 21\r\n"
    )


def test_v1TCP6Canonical() -> None:
    """
    IPv6 hosts are written compressed and in lower case, whatever form they
    were given in.
    """
    assert (
        formatV1(("2001:DB8:0:0:0:0:0:1", 1), ("2001:db8::0:2", 65535))
        == b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"
    )


def test_v1MappedBothSidesAreTCP4() -> None:
    """
    A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6; the header
    says TCP4 with the plain IPv4 addresses.
    """
    assert (
        formatV1(("::ffff:192.0.2.1", 4000), ("::FFFF:127.0.0.1", 2121))
        == b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 2121\r\n"
    )
    assert (
        formatV1(("::ffff:192.0.2.1", 4000), ("127.0.0.1", 2121))
        == b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 2121\r\n"
    )


def test_v1MappedAndNativeIPv6AreTCP6() -> None:
    assert (
        formatV1(("::ffff:192.0.2.1", 4000), ("::1", 2121))
        == b"PROXY TCP6 ::ffff:c000:201 ::1 4000 2121\r\n"
    )


def test_v1ScopeIsDropped() -> None:
    assert (
        formatV1(("fe80::1%eth0", 4000), ("fe80::2%eth0", 21))
        == b"PROXY TCP6 fe80::1 fe80::2 4000 21\r\n"
    )


@pytest.mark.parametrize(
    "source, destination",
    [
        (("192.0.2.1", 4000), ("::1", 21)),
        (("2001:db8::1", 4000), ("127.0.0.1", 21)),
        (("client.example", 4000), ("127.0.0.1", 21)),
        (("/run/ftp.sock", 0), ("/run/ftp.sock", 0)),
    ],
)
def test_v1UnknownWhenNoCommonFamily(source, destination) -> None:
    assert formatV1(source, destination) == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize("port", [-1, 65536, 1.5, "21", True])
def test_badPortsAreRefused(port) -> None:
    with pytest.raises(ValueError):
        formatV1(("127.0.0.1", port), ("127.0.0.1", 21))
    with pytest.raises(ValueError):
        formatV2(("127.0.0.1", 21), ("127.0.0.1", port))


def test_twistedAddressesAreAccepted() -> None:
    """
    What C{transport.getPeer()} and C{getHost()} return can be passed as is.
    """
    assert formatV1(
        address.IPv4Address("TCP", "192.0.2.1", 4000), address.IPv4Address("TCP", "127.0.0.1", 21)
    ) == formatV1(("192.0.2.1", 4000), ("127.0.0.1", 21))
    assert formatV2(
        address.IPv6Address("TCP", "::1", 4000), address.IPv6Address("TCP", "::1", 21)
    ) == formatV2(("::1", 4000), ("::1", 21))


@given(ends=st.one_of(_ends(ipv4s), _ends(ipv6s), _ends(mapped)))
def test_v1RoundTrip(ends) -> None:
    """
    Twisted's v1 parser reads back what L{formatV1} wrote, within the
    length the specification allows.
    """
    (sourceHost, sourcePort), (destinationHost, destinationPort) = ends
    header = formatV1((sourceHost, sourcePort), (destinationHost, destinationPort))
    assert header.endswith(b"\r\n") and header.count(b"\r\n") == 1
    assert len(header) <= V1_MAX_LENGTH
    info, rest = V1Parser().feed(header)
    assert rest == b""
    assert info.header + b"\r\n" == header
    assert _ip(info.source.host) == _unmapped(sourceHost)
    assert _ip(info.destination.host) == _unmapped(destinationHost)
    assert (info.source.port, info.destination.port) == (sourcePort, destinationPort)


@given(source=st.tuples(ipv4s.map(str), ports), destination=st.tuples(ipv6s.map(str), ports))
def test_v1MixedRoundTrip(source, destination) -> None:
    """
    Mixed families give the short UNKNOWN line, which the wrapper's parser
    reads as "no addresses" (Twisted's own refuses it).
    """
    for header in (formatV1(source, destination), formatV1(destination, source)):
        assert header == b"PROXY UNKNOWN\r\n"
        info, rest = _V1Parser().feed(header + b"x")
        assert (info.source, info.destination, rest) == (None, None, b"x")


@pytest.mark.parametrize(
    "line", [b"PROXY UNKNOWN", b"PROXY UNKNOWN ffff::1 ffff::2 1 2", b"PROXY UNKNOWN anything"]
)
def test_v1UnknownLongAndShort(line) -> None:
    """
    The receiver must ignore whatever follows UNKNOWN on the line.
    """
    info = _V1Parser.parse(line)
    assert (info.source, info.destination) == (None, None)


# -- v2 -----------------------------------------------------------------------


def test_v2TCP4() -> None:
    assert formatV2(("192.0.2.1", 56324), ("198.51.100.7", 21)) == bytes.fromhex(
        SIGNATURE_HEX
        + "21"  # version 2, PROXY
        + "11"  # AF_INET, STREAM
        + "000c"  # 12 bytes follow
        + "c0000201"  # 192.0.2.1
        + "c6336407"  # 198.51.100.7
        + "dc04"  # 56324
        + "0015"  # 21
    )


def test_v2TCP6() -> None:
    assert formatV2(("2001:db8::1", 1), ("::1", 65535)) == bytes.fromhex(
        SIGNATURE_HEX
        + "21"
        + "21"  # AF_INET6, STREAM
        + "0024"  # 36 bytes follow
        + "20010db8000000000000000000000001"
        + "00000000000000000000000000000001"
        + "0001"
        + "ffff"
    )


def test_v2MappedIsTCP4() -> None:
    assert formatV2(("::ffff:192.0.2.1", 1), ("127.0.0.1", 2)) == formatV2(
        ("192.0.2.1", 1), ("127.0.0.1", 2)
    )


def test_v2UnspecWhenNoCommonFamily() -> None:
    assert formatV2(("192.0.2.1", 1), ("::1", 2)) == bytes.fromhex(SIGNATURE_HEX + "21000000")


def test_v2Local() -> None:
    assert formatV2Local() == bytes.fromhex(SIGNATURE_HEX + "20000000")
    assert V2_SIGNATURE == bytes.fromhex(SIGNATURE_HEX)


@given(ends=st.one_of(_ends(ipv4s), _ends(ipv6s), _ends(mapped)))
def test_v2RoundTrip(ends) -> None:
    """
    Twisted's v2 parser reads back what L{formatV2} wrote, and the length
    field counts exactly the bytes after the fixed sixteen.
    """
    (sourceHost, sourcePort), (destinationHost, destinationPort) = ends
    header = formatV2((sourceHost, sourcePort), (destinationHost, destinationPort))
    assert header.startswith(V2_SIGNATURE)
    assert struct.unpack("!H", header[14:16])[0] == len(header) - 16
    info, rest = V2Parser().feed(header + b"220 after\r\n")
    assert rest == b"220 after\r\n"
    assert _ip(info.source.host) == _unmapped(sourceHost)
    assert _ip(info.destination.host) == _unmapped(destinationHost)
    assert (info.source.port, info.destination.port) == (sourcePort, destinationPort)


def test_v2LocalParsesToNoAddresses() -> None:
    info, rest = V2Parser().feed(formatV2Local())
    assert (info.source, info.destination, rest) == (None, None, b"")


# -- choosing a version ---------------------------------------------------------


def test_formatHeader() -> None:
    source, destination = ("192.0.2.1", 1), ("127.0.0.1", 2)
    assert formatHeader(1, source, destination) == formatV1(source, destination)
    assert formatHeader(2, source, destination) == formatV2(source, destination)
    assert formatLocalHeader(1) == b"PROXY UNKNOWN\r\n"
    assert formatLocalHeader(2) == formatV2Local()
    for version in (0, 3, "1", None):
        with pytest.raises(ValueError):
            formatHeader(version, source, destination)
        with pytest.raises(ValueError):
            formatLocalHeader(version)


def test_sendProxyHeaderWritesOnlyTheHeader() -> None:
    transport = StringTransport()
    sendProxyHeader(transport, 2, ("192.0.2.1", 1), ("127.0.0.1", 2))
    assert transport.value() == formatV2(("192.0.2.1", 1), ("127.0.0.1", 2))


def _ip(host: str):
    return ipaddress.ip_address(host)


def _unmapped(host: str):
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# -- the listener wrapper, in memory --------------------------------------------------


class Recorder(Protocol):
    """
    Records what the wrapped protocol sees, and when.
    """

    def __init__(self) -> None:
        self.peerAtConnect = None
        self.hostAtConnect = None
        self.received = b""
        self.lost = None

    def connectionMade(self) -> None:
        self.peerAtConnect = self.transport.getPeer()
        self.hostAtConnect = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class RecorderFactory(Factory):
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.addresses: list = []
        self.built: list[Recorder] = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        if self.refuse:
            return None
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


BALANCER = address.IPv4Address("TCP", "127.0.0.5", 40000)
LISTENER = address.IPv4Address("TCP", "127.0.0.1", 2121)


def _connectWrapper(clock=None, refuse=False):
    wrapped = RecorderFactory(refuse)
    factory = ProxyHeaderFactory(wrapped, clock or Clock(), timeout=5)
    protocol = factory.buildProtocol(BALANCER)
    transport = StringTransport(peerAddress=BALANCER, hostAddress=LISTENER)
    protocol.makeConnection(transport)
    return wrapped, factory, protocol, transport


def _feedInPieces(protocol, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > start:
            protocol.dataReceived(data[start:cut])
            start = cut


@settings(max_examples=200)
@given(
    ends=st.one_of(_ends(ipv4s), _ends(ipv6s)),
    version=st.sampled_from([1, 2]),
    payload=st.binary(max_size=64),
    data=st.data(),
)
def test_wrapperAnyFragmentation(ends, version, payload, data) -> None:
    """
    However the header and what follows are cut into reads, the wrapped
    protocol is built once for the header's client, sees it from
    C{connectionMade} on, and receives exactly the bytes after the header.
    """
    source, destination = ends
    stream = formatHeader(version, source, destination) + payload
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    wrapped, factory, protocol, transport = _connectWrapper()
    _feedInPieces(protocol, stream, cuts)
    assert not transport.disconnecting
    [recorder] = wrapped.built
    [built] = wrapped.addresses
    for seen in (built, recorder.peerAtConnect, protocol.getPeer()):
        assert (_ip(seen.host), seen.port) == (_ip(source[0]), source[1])
        assert seen.host == str(_ip(source[0]))  # canonical text
    assert (_ip(recorder.hostAtConnect.host), recorder.hostAtConnect.port) == (
        _ip(destination[0]),
        destination[1],
    )
    assert recorder.received == payload
    assert recorder.transport.connectionPeer() == BALANCER
    protocol.connectionLost(Failure(error.ConnectionDone()))
    assert recorder.lost.check(error.ConnectionDone)
    assert factory.protocols == {}


@pytest.mark.parametrize(
    "header", [formatV2Local(), b"PROXY UNKNOWN\r\n", formatV2(("192.0.2.1", 1), ("::1", 2))]
)
def test_wrapperNoAddressesKeepsRealPeer(header) -> None:
    """
    LOCAL, UNKNOWN and UNSPEC headers (a balancer's own health checks)
    leave the connection's real addresses in place.
    """
    wrapped, _, protocol, transport = _connectWrapper()
    protocol.dataReceived(header + b"x")
    [recorder] = wrapped.built
    assert recorder.peerAtConnect == BALANCER
    assert recorder.hostAtConnect == LISTENER
    assert recorder.received == b"x"
    assert not transport.disconnecting


def test_wrapperIgnoresTLVs() -> None:
    """
    v2 headers may carry TLVs after the addresses (HAProxy sends ALPN,
    unique ids...): they are skipped, not passed on as data.
    """
    header = formatV2(("192.0.2.1", 4000), ("127.0.0.1", 21))
    tlv = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # PP2_TYPE_ALPN "h2", PP2_TYPE_NOOP
    length = struct.unpack("!H", header[14:16])[0] + len(tlv)
    withTLVs = header[:14] + struct.pack("!H", length) + header[16:] + tlv
    wrapped, _, protocol, transport = _connectWrapper()
    protocol.dataReceived(withTLVs + b"USER x\r\n")
    [recorder] = wrapped.built
    assert (recorder.peerAtConnect.host, recorder.peerAtConnect.port) == ("192.0.2.1", 4000)
    assert recorder.received == b"USER x\r\n"


GARBAGE_HEADERS = [
    b"USER anonymous\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS ClientHello
    b"PROXY\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 x y\r\n",  # Twisted raises ValueError here
    b"PROXY TCP4 evil host 1 2\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n",
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY " + b"A" * 200,  # no CRLF within 107 bytes
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 signature
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # unknown command
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # address block too short
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
    V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"\x00" * 216,  # AF_UNIX
    V2_SIGNATURE + b"\x21\x41\x00\x00",  # unknown family
]


@pytest.mark.parametrize("garbage", GARBAGE_HEADERS)
def test_wrapperRefusesGarbage(garbage) -> None:
    """
    Anything but a valid TCP header closes the connection without building
    the wrapped protocol and without raising.
    """
    clock = Clock()
    wrapped, factory, protocol, transport = _connectWrapper(clock)
    protocol.dataReceived(garbage)
    assert transport.disconnecting
    assert wrapped.built == [] and wrapped.addresses == []
    protocol.dataReceived(b"more")  # arrives before the close completes
    protocol.connectionLost(Failure(error.ConnectionDone()))
    assert factory.protocols == {}
    assert clock.getDelayedCalls() == []


@given(garbage=st.binary(min_size=1, max_size=40))
def test_wrapperRefusesAnyNonHeader(garbage) -> None:
    assume(not b"PROXY "[: len(garbage)] == garbage[:6])
    assume(not V2_SIGNATURE[: len(garbage)] == garbage[:12])
    wrapped, _, protocol, transport = _connectWrapper()
    protocol.dataReceived(garbage)
    assert transport.disconnecting
    assert wrapped.built == []


def test_wrapperHeaderDeadline() -> None:
    clock = Clock()
    wrapped, factory, protocol, transport = _connectWrapper(clock)
    protocol.dataReceived(b"PROXY TCP4 1.2.3")
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert wrapped.built == []
    assert DEFAULT_HEADER_TIMEOUT > 0


def test_wrapperDeadlineCancelledByHeader() -> None:
    clock = Clock()
    wrapped, _, protocol, transport = _connectWrapper(clock)
    protocol.dataReceived(formatV1(("192.0.2.1", 1), ("127.0.0.1", 2)))
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert not transport.disconnecting


def test_wrapperLostBeforeHeader() -> None:
    """
    A connection that ends before its header built nothing, so nothing is
    told it ended (the proxy's factory counts sessions when it builds them).
    """
    clock = Clock()
    wrapped, factory, protocol, _ = _connectWrapper(clock)
    protocol.dataReceived(b"PROX")
    protocol.connectionLost(Failure(error.ConnectionDone()))
    assert wrapped.built == [] and factory.protocols == {}
    assert clock.getDelayedCalls() == []


def test_wrapperFactoryRefuses() -> None:
    wrapped, _, protocol, transport = _connectWrapper(refuse=True)
    protocol.dataReceived(formatV1(("192.0.2.1", 1), ("127.0.0.1", 2)))
    assert transport.disconnecting
    assert len(wrapped.addresses) == 1


# -- real listeners ------------------------------------------------------------


class PeerReporter(Protocol):
    """
    Replies with the peer it sees at connection time and at the first line,
    then closes.
    """

    def connectionMade(self) -> None:
        self.atConnect = self.transport.getPeer()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer:
            peer, host = self.transport.getPeer(), self.transport.getHost()
            self.transport.write(
                f"{self.atConnect.host} {self.atConnect.port}|{peer.host} {peer.port}|"
                f"{host.host} {host.port}|".encode()
                + self.buffer
            )
            self.transport.loseConnection()


class Collector(Protocol):
    """
    A client that sends C{toSend} and collects everything until the server
    closes; C{done} fires with the bytes and the reason.
    """

    def __init__(self, toSend: bytes) -> None:
        self.toSend = toSend
        self.received = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.toSend)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.done.callback((self.received, reason))


@pytest.fixture
def loggedFailures():
    failures: list = []

    def observe(event) -> None:
        # New-style failures carry log_failure; the reactor's own "Unhandled
        # Error" (legacy log.err) arrives with isError and failure.
        if "log_failure" in event or event.get("isError"):
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


def _listen(endpoint, protocol=PeerReporter):
    return endpoint.listen(Factory.forProtocol(protocol))


def _exchange(port, data: bytes) -> Deferred:
    client = Collector(data)
    target = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    endpoints.connectProtocol(target, client)
    return client.done.addTimeout(TIMEOUT, reactor)


SOURCE = ("192.0.2.44", 51234)
DESTINATION = ("198.51.100.7", 21)


@pytest.mark.parametrize("version", [1, 2])
@pytest_twisted.inlineCallbacks
def test_twistedHAProxyEndpoint(version, loggedFailures):
    """
    Twisted's C{haproxy:} endpoint accepts both versions and reports the
    header's client, but only once the header is read: in
    C{connectionMade} the peer is still the balancer, which is why the
    proxy uses L{serverFromString} from this module instead.
    """
    port = yield _listen(endpoints.serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1"))
    try:
        header = formatHeader(version, SOURCE, DESTINATION)
        received, reason = yield _exchange(port, header + b"hi\n")
    finally:
        yield port.stopListening()
    atConnect, peer, host, rest = received.split(b"|")
    assert atConnect.split()[0] == b"127.0.0.1"
    assert peer == b"192.0.2.44 51234"
    assert host == b"198.51.100.7 21"
    assert rest == b"hi\n"
    assert reason.check(error.ConnectionDone)
    assert loggedFailures == []


@pytest_twisted.inlineCallbacks
def test_twistedHAProxyEndpointGarbage(loggedFailures):
    port = yield _listen(endpoints.serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1"))
    try:
        received, reason = yield _exchange(port, b"USER anonymous\r\n")
    finally:
        yield port.stopListening()
    assert received == b""
    assert reason.check(error.ConnectionDone)
    assert loggedFailures == []


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    "source, destination",
    [(SOURCE, DESTINATION), (("2001:db8::44", 51234), ("2001:db8::7", 21))],
)
@pytest_twisted.inlineCallbacks
def test_proxyHeaderEndpoint(version, source, destination, loggedFailures):
    """
    With this module's C{haproxy:} endpoint the wrapped protocol sees the
    header's client from C{connectionMade} on.
    """
    port = yield _listen(serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1"))
    try:
        header = formatHeader(version, source, destination)
        received, reason = yield _exchange(port, header + b"hi\n")
    finally:
        yield port.stopListening()
    atConnect, peer, host, rest = received.split(b"|")
    expected = f"{source[0]} {source[1]}".encode()
    assert atConnect == peer == expected
    assert host == f"{destination[0]} {destination[1]}".encode()
    assert rest == b"hi\n"
    assert reason.check(error.ConnectionDone)
    assert loggedFailures == []


@pytest.mark.parametrize(
    "garbage",
    [b"USER anonymous\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 x y\r\n", b"PROXY TCP4 a b 1 2\r\n"],
)
@pytest_twisted.inlineCallbacks
def test_proxyHeaderEndpointGarbage(garbage, loggedFailures):
    """
    Garbage gets a plain close (FIN, not a reset) and no traceback.
    """
    port = yield _listen(serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1"))
    try:
        received, reason = yield _exchange(port, garbage)
    finally:
        yield port.stopListening()
    assert received == b""
    assert reason.check(error.ConnectionDone)
    assert loggedFailures == []


def test_serverFromStringWithoutPrefix() -> None:
    endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    assert isinstance(endpoint, endpoints.TCP4ServerEndpoint)
    wrapped = serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1", headerTimeout=3)
    assert isinstance(wrapped, ProxyHeaderServerEndpoint)
    assert isinstance(wrapped.wrapped, endpoints.TCP4ServerEndpoint)
    assert wrapped.timeout == 3


# -- the header on a real backend socket ------------------------------------------


class FirstBytes(Protocol):
    """
    A backend that records what it receives; C{enough} fires once
    C{wanted} bytes have arrived, C{lost} when the connection ends.
    """

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.received = b""
        self.enough: Deferred = Deferred()
        self.lost: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.wanted and not self.enough.called:
            self.enough.callback(self.received)

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class OneProtocolFactory(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr):
        return self.protocol_


@inlineCallbacks
def _backendReceives(version, client, proxy, afterConnect, wanted):
    backend = FirstBytes(wanted)
    listening = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2").listen(
        OneProtocolFactory(backend)
    )
    control = BackendControl()
    try:
        yield connectProtocol(reactor, "127.0.0.2", listening.getHost().port, TIMEOUT, control)
        assert control.transport.getPeer().host == "127.0.0.2"
        sendProxyHeader(control.transport, version, client, proxy)
        afterConnect(control)
        received = yield backend.enough.addTimeout(TIMEOUT, reactor)
    finally:
        control.close()
        yield backend.lost.addTimeout(TIMEOUT, reactor)
        yield listening.stopListening()
    return received


CLIENTS = [
    (
        address.IPv4Address("TCP", "192.0.2.44", 51234),
        address.IPv4Address("TCP", "127.0.0.1", 2121),
    ),
    (address.IPv6Address("TCP", "2001:db8::44", 51234), address.IPv6Address("TCP", "::1", 2121)),
    (
        address.IPv6Address("TCP", "::ffff:192.0.2.44", 51234),
        address.IPv6Address("TCP", "::ffff:127.0.0.1", 2121),
    ),
]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("client, proxy", CLIENTS)
@pytest_twisted.inlineCallbacks
def test_headerFirstOnBackendSocket(version, client, proxy):
    """
    The header is the first thing a backend receives, before the first FTP
    command, exactly as formatted.
    """
    header = formatHeader(version, client, proxy)
    command = b"USER anonymous\r\n"
    received = yield _backendReceives(
        version,
        client,
        proxy,
        lambda control: control.sendCommand(b"USER anonymous"),
        len(header) + len(command),
    )
    assert received == header + command
    family = "TCP6" if client.host == "2001:db8::44" else "TCP4"
    if version == 1:
        assert received.startswith(f"PROXY {family} ".encode())
    else:
        familyByte = b"\x21" if family == "TCP6" else b"\x11"
        assert received.startswith(V2_SIGNATURE + b"\x21" + familyByte)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> object:
    return makeCertificates(tmp_path_factory.mktemp("proxyprotocol-certs"))


def _clientTLS(certificates):
    return ssl.optionsForClientTLS(
        "127.0.0.1", trustRoot=ssl.Certificate.loadPEM(Path(certificates.ca).read_bytes())
    )


def _serverTLS(certificates):
    pem = Path(certificates.serverCert).read_bytes() + Path(certificates.serverKey).read_bytes()
    return ssl.PrivateCertificate.loadPEM(pem).options()


@pytest.mark.parametrize("version", [1, 2])
@pytest_twisted.inlineCallbacks
def test_headerBeforeImplicitTLS(version, certificates):
    """
    For an implicit-FTPS backend the header goes in the clear, then the
    TLS ClientHello (a handshake record, 0x16 0x03).
    """
    client, proxy = CLIENTS[0]
    header = formatHeader(version, client, proxy)
    received = yield _backendReceives(
        version,
        client,
        proxy,
        lambda control: control.startTLS(_clientTLS(certificates)),
        len(header) + 2,
    )
    assert received.startswith(header + b"\x16\x03")


@implementer(IHandshakeListener)
class TLSPeerReporter(PeerReporter):
    """
    An implicit-TLS server: TLS from its first byte, as the proxy's
    implicit FTPS sessions are; says whether it was told of the handshake.
    """

    options = None
    handshakes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.startTLS(self.options)

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(f"{self.handshakes} handshake|".encode() + data)


class TLSCollector(Collector):
    """
    A client behind a balancer: the header in the clear, then TLS.
    """

    def __init__(self, toSend: bytes, options) -> None:
        super().__init__(toSend)
        self.options = options

    def connectionMade(self) -> None:
        sendProxyHeader(self.transport, 2, SOURCE, DESTINATION)
        self.transport.startTLS(self.options)
        self.transport.write(self.toSend)


@pytest_twisted.inlineCallbacks
def test_proxyHeaderEndpointWithImplicitTLS(certificates, loggedFailures):
    """
    Behind a balancer, an implicit-TLS protocol starts TLS in
    C{connectionMade}; the handshake bytes that came with the header reach
    the TLS layer, not the protocol.
    """

    class Reporter(TLSPeerReporter):
        options = _serverTLS(certificates)

    port = yield _listen(serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1"), Reporter)
    try:
        client = TLSCollector(b"hi\n", _clientTLS(certificates))
        target = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield endpoints.connectProtocol(target, client)
        received, reason = yield client.done.addTimeout(TIMEOUT, reactor)
    finally:
        yield port.stopListening()
    atConnect, peer, host, handshakes, rest = received.split(b"|")
    assert atConnect == peer == b"192.0.2.44 51234"
    assert handshakes == b"1 handshake"
    assert rest == b"hi\n"
    assert loggedFailures == []


def test_parsersRejectTheirOwnGarbage() -> None:
    """
    The Twisted parsers this module relies on raise their documented error
    for a wrong signature (a guard against a Twisted upgrade changing them).
    """
    with pytest.raises(InvalidProxyHeader):
        V1Parser().feed(b"NOTPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    with pytest.raises(InvalidProxyHeader):
        V2Parser().feed(b"\x00" * 16)
