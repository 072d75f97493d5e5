"""
Tests for L{ftpproxy.wire.proxyprotocol}: the PROXY protocol headers the proxy
sends to backends, byte for byte against the specification, and the parser
of the headers a balancer in front of the proxy sends, against the
formatter, hostile and truncated input, and any cut into pieces; then the
header on a real backend socket (L{ftpproxy.backends.control.sendProxyHeader}).

The listener that uses the parser is tested in tests/test_listeners.py.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import assume, example, given, settings, strategies as st
from twisted.internet import address, endpoints, reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from ftpproxy.backends.control import BackendControl, sendProxyHeader
from ftpproxy.data.connecting import connectProtocol
from ftpproxy.tls.devcerts import makeCertificates
from ftpproxy.wire.proxyprotocol import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    InvalidProxyHeader,
    ProxiedAddress,
    ProxyHeader,
    formatHeader,
    formatLocalHeader,
    formatV1,
    formatV2,
    formatV2Local,
    parseHeader,
)
from tests.support.proxyheaders import GARBAGE_HEADERS, endsOf, ipv4s, ipv6s, mapped, ports

TIMEOUT = 10

SIGNATURE_HEX = "0d0a0d0a000d0a515549540a"


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


@given(ends=st.one_of(endsOf(ipv4s), endsOf(ipv6s), endsOf(mapped)))
def test_v1RoundTrip(ends) -> None:
    """
    L{parseHeader} reads back what L{formatV1} wrote, within the length the
    specification allows.
    """
    (sourceHost, sourcePort), (destinationHost, destinationPort) = ends
    header = formatV1((sourceHost, sourcePort), (destinationHost, destinationPort))
    assert header.endswith(b"\r\n") and header.count(b"\r\n") == 1
    assert len(header) <= V1_MAX_LENGTH
    parsed, length = parseHeader(header)
    assert length == len(header)
    assert parsed.version == 1
    assert parsed.source.ip == _unmapped(sourceHost)
    assert parsed.destination.ip == _unmapped(destinationHost)
    assert (parsed.source.port, parsed.destination.port) == (sourcePort, destinationPort)


@given(source=st.tuples(ipv4s.map(str), ports), destination=st.tuples(ipv6s.map(str), ports))
def test_v1MixedRoundTrip(source, destination) -> None:
    """
    Mixed families give the short UNKNOWN line, which reads as "no
    addresses".
    """
    for header in (formatV1(source, destination), formatV1(destination, source)):
        assert header == b"PROXY UNKNOWN\r\n"
        assert parseHeader(header + b"x") == (ProxyHeader(1), len(header))


@pytest.mark.parametrize(
    "line", [b"PROXY UNKNOWN", b"PROXY UNKNOWN ffff::1 ffff::2 1 2", b"PROXY UNKNOWN anything"]
)
def test_v1UnknownLongAndShort(line) -> None:
    """
    The receiver must ignore whatever follows UNKNOWN on the line.
    """
    assert parseHeader(line + b"\r\nUSER x\r\n") == (ProxyHeader(1), len(line) + 2)


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


@given(ends=st.one_of(endsOf(ipv4s), endsOf(ipv6s), endsOf(mapped)))
def test_v2RoundTrip(ends) -> None:
    """
    L{parseHeader} reads back what L{formatV2} wrote, and the length field
    counts exactly the bytes after the fixed sixteen.
    """
    (sourceHost, sourcePort), (destinationHost, destinationPort) = ends
    header = formatV2((sourceHost, sourcePort), (destinationHost, destinationPort))
    assert header.startswith(V2_SIGNATURE)
    assert struct.unpack("!H", header[14:16])[0] == len(header) - 16
    parsed, length = parseHeader(header + b"220 after\r\n")
    assert length == len(header)
    assert parsed.version == 2
    assert parsed.source.ip == _unmapped(sourceHost)
    assert parsed.destination.ip == _unmapped(destinationHost)
    assert (parsed.source.port, parsed.destination.port) == (sourcePort, destinationPort)


def test_v2LocalParsesToNoAddresses() -> None:
    assert parseHeader(formatV2Local()) == (ProxyHeader(2), 16)


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


# -- parsing ----------------------------------------------------------------------


@pytest.mark.parametrize("garbage", GARBAGE_HEADERS)
def test_parseRefusesGarbage(garbage: bytes) -> None:
    with pytest.raises(InvalidProxyHeader):
        parseHeader(garbage)


def test_parseAddresses() -> None:
    assert parseHeader(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 21\r\nUSER") == (
        ProxyHeader(
            1,
            ProxiedAddress(ipaddress.IPv4Address("192.0.2.1"), 56324),
            ProxiedAddress(ipaddress.IPv4Address("198.51.100.7"), 21),
        ),
        44,
    )
    parsed, _ = parseHeader(b"PROXY TCP6 2001:DB8::1 ::ffff:192.0.2.1 0 65535\r\n")
    assert parsed.source == ProxiedAddress(ipaddress.IPv6Address("2001:db8::1"), 0)
    # A mapped address in a TCP6 line stays IPv6: it is what the balancer saw.
    assert parsed.destination == ProxiedAddress(ipaddress.IPv6Address("::ffff:192.0.2.1"), 65535)


def test_v1LongestLine() -> None:
    """
    107 bytes with the CRLF is the longest v1 line; one more is refused
    (see GARBAGE_HEADERS), and without CRLF the parser waits until then.
    """
    line = b"PROXY UNKNOWN " + b"A" * 91 + b"\r\n"
    assert len(line) == V1_MAX_LENGTH
    assert parseHeader(line) == (ProxyHeader(1), V1_MAX_LENGTH)
    assert parseHeader(line[:-1]) is None
    with pytest.raises(InvalidProxyHeader, match="no end of line within 107 bytes"):
        parseHeader(line[:-2] + b"AB")


def test_v2TLVsAreSkipped() -> None:
    """
    v2 headers may carry TLVs after the addresses (HAProxy sends ALPN,
    unique ids...): they belong to the header, not to what follows.
    """
    header = formatV2(("192.0.2.1", 4000), ("127.0.0.1", 21))
    tlv = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # PP2_TYPE_ALPN "h2", PP2_TYPE_NOOP
    length = struct.unpack("!H", header[14:16])[0] + len(tlv)
    withTLVs = header[:14] + struct.pack("!H", length) + header[16:] + tlv
    parsed, consumed = parseHeader(withTLVs + b"USER x\r\n")
    assert consumed == len(withTLVs)
    assert parsed == parseHeader(header)[0]


@pytest.mark.parametrize("family", [0x00, 0x11, 0x12, 0x21, 0x31, 0x41, 0xFF])
def test_v2LocalTakesAnyBlock(family: int) -> None:
    """
    LOCAL says "use the connection's own addresses": the block is skipped
    whatever family it names.
    """
    header = V2_SIGNATURE + bytes([0x20, family]) + struct.pack("!H", 5) + b"12345"
    assert parseHeader(header + b"rest") == (ProxyHeader(2), 21)


def test_v2UnspecNamesNoAddresses() -> None:
    header = V2_SIGNATURE + b"\x21\x00\x00\x03abc"
    assert parseHeader(header) == (ProxyHeader(2), 19)


@st.composite
def validHeaders(draw) -> bytes:
    """
    Any header the proxy takes: formatted ones of both versions, LOCAL and
    UNKNOWN ones, and v2 headers with TLVs behind the addresses.
    """
    kind = draw(st.sampled_from(["v1", "v2", "local", "unknown", "tlvs"]))
    source, destination = draw(st.one_of(endsOf(ipv4s), endsOf(ipv6s), endsOf(mapped)))
    if kind == "v1":
        return formatV1(source, destination)
    if kind == "v2":
        return formatV2(source, destination)
    if kind == "local":
        return formatV2Local()
    if kind == "unknown":
        rest = draw(st.binary(max_size=V1_MAX_LENGTH - 15).filter(lambda b: b"\n" not in b))
        return b"PROXY UNKNOWN " + rest + b"\r\n"
    header = formatV2(source, destination)
    tlvs = draw(st.binary(max_size=300))
    length = struct.unpack("!H", header[14:16])[0] + len(tlvs)
    return header[:14] + struct.pack("!H", length) + header[16:] + tlvs


@settings(max_examples=300)
@given(header=validHeaders(), after=st.binary(max_size=64), data=st.data())
def test_parseAnyTruncation(header: bytes, after: bytes, data) -> None:
    """
    Every proper prefix of a header asks for more; the whole header, with
    anything behind it, is read the same way and ends where the header
    ends.
    """
    whole = parseHeader(header + after)
    assert whole is not None and whole[1] == len(header)
    assert parseHeader(header) == whole
    cut = data.draw(st.integers(0, len(header) - 1))
    assert parseHeader(header[:cut]) is None
    assert parseHeader(bytearray(header + after)) == whole


def _outcome(data: bytes):
    try:
        return parseHeader(data)
    except InvalidProxyHeader:
        return "refused"


def _hostile():
    """
    Bytes that look like the start of a header more often than random bytes
    would: signatures, words of v1 lines, and plain noise, concatenated.
    """
    pieces = st.one_of(
        st.binary(max_size=20),
        st.sampled_from(
            [
                V2_SIGNATURE,
                b"PROXY ",
                b"TCP4 ",
                b"TCP6 ",
                b"UNKNOWN",
                b"\r\n",
                b"\n",
                b" ",
                b"127.0.0.1",
                b"::1",
                b"65535",
                b"99999",
                b"\x20",
                b"\x21\x11\x00\x0c",
                b"\x21\x21\x00\x24",
                b"\x21\x00\xff\xff",
            ]
        ),
    )
    return st.lists(pieces, max_size=12).map(b"".join)


@settings(max_examples=500)
@given(data=_hostile(), more=st.binary(max_size=40))
@example(data=b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", more=b"\n")
@example(data=V2_SIGNATURE + b"\x21\x11\x00", more=b"\x0c" + b"\x00" * 12)
def test_parseHostileInput(data: bytes, more: bytes) -> None:
    """
    Whatever arrives, the parser answers with a header, "more please" or
    L{InvalidProxyHeader}, never another error; and more bytes never change
    an answer already given, so a listener may read in any pieces.
    """
    first = _outcome(data)
    later = _outcome(data + more)
    if first is None:
        return
    assert later == first
    if first != "refused":
        header, length = first
        assert 0 < length <= len(data)
        assert header.version in (1, 2)
        assert (header.source is None) == (header.destination is None)


@given(header=validHeaders(), data=st.data())
def test_parseMutatedHeaders(header: bytes, data) -> None:
    """
    A valid header with one byte changed is read as a header (of at most
    the bytes given), asked to grow, or refused; nothing else.
    """
    index = data.draw(st.integers(0, len(header) - 1))
    value = data.draw(st.integers(0, 255))
    mutated = header[:index] + bytes([value]) + header[index + 1 :]
    outcome = _outcome(mutated)
    if outcome not in (None, "refused"):
        assert outcome[1] <= len(mutated)


@given(garbage=st.binary(min_size=1, max_size=40))
def test_parseRefusesNonHeadersAtOnce(garbage: bytes) -> None:
    """
    Bytes that start neither signature are refused from the first byte that
    differs, without waiting for more.
    """
    assume(not b"PROXY "[: len(garbage)] == garbage[:6])
    assume(not V2_SIGNATURE[: len(garbage)] == garbage[:12])
    with pytest.raises(InvalidProxyHeader, match="not a PROXY protocol header"):
        parseHeader(garbage)


@settings(max_examples=300)
@given(
    family=st.sampled_from([b"TCP4", b"TCP6"]),
    words=st.lists(
        st.one_of(
            st.sampled_from(["127.0.0.1", "::1", "0", "65535", "65536", "1.2.3", "-1", "07"]),
            ipv4s.map(str),
            ipv6s.map(str),
            ports.map(str),
            st.text(alphabet="0123456789abcdef:.%x", max_size=12),
        ),
        min_size=0,
        max_size=6,
    ),
)
def test_v1WordsAgainstTheSpecification(family: bytes, words: list[str]) -> None:
    """
    A v1 line is taken exactly when it has two addresses of its family and
    two decimal ports in range, each separated by one space.
    """
    line = b"PROXY " + family + b" " + " ".join(words).encode("ascii") + b"\r\n"
    assume(len(line) <= V1_MAX_LENGTH)
    kind = ipaddress.IPv4Address if family == b"TCP4" else ipaddress.IPv6Address

    def address(text: str) -> bool:
        try:
            kind(text)
        except ValueError:
            return False
        return "%" not in text

    def port(text: str) -> bool:
        return text.isdigit() and len(text) <= 5 and int(text) <= 65535

    valid = (
        len(words) == 4
        and address(words[0])
        and address(words[1])
        and port(words[2])
        and port(words[3])
    )
    if valid:
        header, length = parseHeader(line)
        assert length == len(line)
        assert (str(header.source.ip), header.source.port) == (
            str(kind(words[0])),
            int(words[2]),
        )
    else:
        with pytest.raises(InvalidProxyHeader):
            parseHeader(line)


@given(
    command=st.integers(0, 255),
    family=st.integers(0, 255),
    length=st.integers(0, 64),
    block=st.binary(min_size=64, max_size=64),
)
def test_v2FixedPartAgainstTheSpecification(command, family, length, block) -> None:
    """
    A v2 header is taken exactly when it says version 2, command LOCAL or
    PROXY, and (for PROXY) family UNSPEC, TCP over IPv4 or TCP over IPv6
    with a block long enough for its addresses.
    """
    header = V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", length) + block[:length]
    needed = {0x00: 0, 0x11: 12, 0x21: 36}
    valid = command == 0x20 or (command == 0x21 and needed.get(family, 99) <= length)
    if valid:
        assert parseHeader(header + b"after")[1] == len(header)
    else:
        with pytest.raises(InvalidProxyHeader):
            parseHeader(header)


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


