"""
Tests for L{ftpproxy.app.listeners}: the listener wrapper that reads a PROXY
header from a balancer in front of the proxy before it builds the wrapped
protocol, driven in memory with arbitrary fragmentation, then on real
loopback sockets next to Twisted's own C{haproxy:} endpoint (which reads
what L{ftpproxy.wire.proxyprotocol} formats).
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import assume, given, settings, strategies as st
from twisted.internet import address, endpoints, error, reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.app.listeners import (
    DEFAULT_HEADER_TIMEOUT,
    HeaderState,
    ProxyHeaderFactory,
    ProxyHeaderServerEndpoint,
    serverFromString,
)
from ftpproxy.backends.control import sendProxyHeader
from ftpproxy.tls.devcerts import makeCertificates
from ftpproxy.wire.proxyprotocol import V2_SIGNATURE, formatHeader, formatV1, formatV2, formatV2Local
from tests.support.proxyheaders import GARBAGE_HEADERS, endsOf, ipv4s, ipv6s

TIMEOUT = 10


def _ip(host: str):
    return ipaddress.ip_address(host)


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
    ends=st.one_of(endsOf(ipv4s), endsOf(ipv6s)),
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




def test_wrapperLongestV2Header() -> None:
    """
    The longest v2 header (64 KiB of TLVs), arriving in small pieces, is
    read whole; what follows it goes to the wrapped protocol.
    """
    header = formatV2(("192.0.2.1", 4000), ("127.0.0.1", 21))
    tlvs = b"\x04\xff\xf1" + b"\x00" * (65535 - 12 - 3)  # one PP2_TYPE_NOOP
    longest = header[:14] + b"\xff\xff" + header[16:] + tlvs
    assert len(longest) == 16 + 65535
    wrapped, _, protocol, transport = _connectWrapper()
    _feedInPieces(protocol, longest + b"USER x\r\n", list(range(0, len(longest), 100)))
    [recorder] = wrapped.built
    assert (recorder.peerAtConnect.host, recorder.peerAtConnect.port) == ("192.0.2.1", 4000)
    assert recorder.received == b"USER x\r\n"
    assert not transport.disconnecting


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
    assert protocol.state is HeaderState.REFUSED
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


# -- implicit TLS behind a balancer ---------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> object:
    return makeCertificates(tmp_path_factory.mktemp("listeners-certs"))


def _clientTLS(certificates):
    return ssl.optionsForClientTLS(
        "127.0.0.1", trustRoot=ssl.Certificate.loadPEM(Path(certificates.ca).read_bytes())
    )


def _serverTLS(certificates):
    pem = Path(certificates.serverCert).read_bytes() + Path(certificates.serverKey).read_bytes()
    return ssl.PrivateCertificate.loadPEM(pem).options()


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
