"""
HAProxy's PROXY protocol (v1 text, v2 binary) as bytes: the headers the
proxy sends to tell a backend who the real client is, and the parser of
the headers a balancer in front of the proxy sends to tell it.

Pure functions, no I/O: L{ftpproxy.backends.control.sendProxyHeader} writes
a header on a backend connection, L{ftpproxy.app.listeners} reads one on a
listener. The specification is HAProxy's C{proxy-protocol.txt}.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Union

import attrs
from twisted.internet import address

#: The versions a backend's C{proxy_protocol} setting may name.
PROXY_PROTOCOL_VERSIONS = (1, 2)

#: The twelve bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: The longest v1 header the specification allows, CRLF included.
V1_MAX_LENGTH = 107

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


# -- parsing ------------------------------------------------------------------


class InvalidProxyHeader(ValueError):
    """
    What a connection sent is not a PROXY protocol header this proxy takes.
    """


@attrs.frozen
class ProxiedAddress:
    """
    One end of the proxied connection, as a header names it.
    """

    ip: _IP
    port: int


@attrs.frozen
class ProxyHeader:
    """
    A parsed header.

    @ivar version: 1 (text) or 2 (binary).
    @ivar source: the client; None when the header names no addresses (v1
        C{UNKNOWN}, v2 C{LOCAL} or family C{UNSPEC}): the connection's own
        addresses stand.
    @ivar destination: the address the client connected to; None exactly
        when C{source} is.
    """

    version: int
    source: ProxiedAddress | None = None
    destination: ProxiedAddress | None = None


_V1_PREFIX = b"PROXY "
_V1_FAMILIES = {b"TCP4": ipaddress.IPv4Address, b"TCP6": ipaddress.IPv6Address}
_PORT = re.compile(rb"[0-9]{1,5}")

#: Address block length by v2 family-and-transport byte, for the ones taken.
_V2_ADDRESS_LENGTHS = {_V2_UNSPEC: 0, _V2_TCP4: 12, _V2_TCP6: 36}
_V2_FIXED = 16


def parseHeader(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    """
    The header at the start of C{data} and its length in bytes, or None
    while C{data} is the start of a header that is not complete yet.

    The answer for C{data} never changes when more bytes are appended:
    None may become a header or an error, but a header or an error stays
    what it was; so a reader may call this again on all it has each time
    more arrives.

    @raise InvalidProxyHeader: C{data} does not start a header this proxy
        takes: neither signature, a malformed or over-long v1 line, an
        unknown v2 version or command, or addresses other than TCP over
        IPv4 or IPv6 (UDP and UNIX sockets are not what a balancer in
        front of an FTP proxy sends).
    """
    signature = bytes(data[: len(V2_SIGNATURE)])
    if signature == V2_SIGNATURE[: len(signature)]:
        return _parseV2(data) if len(signature) == len(V2_SIGNATURE) else None
    start = bytes(data[: len(_V1_PREFIX)])
    if start == _V1_PREFIX[: len(start)]:
        return _parseV1(data) if len(start) == len(_V1_PREFIX) else None
    raise InvalidProxyHeader("not a PROXY protocol header")


def _parseV1(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise InvalidProxyHeader(f"no end of line within {V1_MAX_LENGTH} bytes")
        return None
    if data[end - 1] != ord("\r"):
        raise InvalidProxyHeader("v1 header line does not end in CRLF")
    words = bytes(data[: end - 1]).split(b" ")
    if words[1] == b"UNKNOWN":
        # Whatever follows UNKNOWN on the line is to be ignored.
        return ProxyHeader(1), end + 1
    family = _V1_FAMILIES.get(words[1])
    if family is None:
        raise InvalidProxyHeader(f"unknown v1 protocol {words[1][:8]!r}")
    if len(words) != 6:
        raise InvalidProxyHeader(f"v1 {words[1].decode()} line has {len(words)} words, not 6")
    source = _v1Address(family, words[2], words[4])
    destination = _v1Address(family, words[3], words[5])
    return ProxyHeader(1, source, destination), end + 1


def _v1Address(family: type[_IP], host: bytes, port: bytes) -> ProxiedAddress:
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise InvalidProxyHeader(f"bad v1 port {port[:8]!r}")
    try:
        # No scope: the text form a header carries has none.
        if b"%" in host:
            raise ValueError(host)
        ip = family(host.decode("ascii"))
    except ValueError:
        raise InvalidProxyHeader(f"bad v1 address {host[:40]!r}") from None
    return ProxiedAddress(ip, int(port))


def _parseV2(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    if len(data) <= 12:
        return None
    versionAndCommand = data[12]
    if versionAndCommand & 0xF0 != 0x20:
        raise InvalidProxyHeader("unknown PROXY protocol v2 version")
    if versionAndCommand not in (_V2_LOCAL, _V2_PROXY):
        raise InvalidProxyHeader(f"unknown v2 command {versionAndCommand & 0x0F}")
    if len(data) <= 13:
        return None
    family = data[13]
    local = versionAndCommand == _V2_LOCAL
    # LOCAL: the receiver uses the connection's own addresses and skips the
    # block, whatever family it claims.
    needed = 0 if local else _V2_ADDRESS_LENGTHS.get(family)
    if needed is None:
        raise InvalidProxyHeader(f"unsupported v2 address family and transport 0x{family:02x}")
    if len(data) < _V2_FIXED:
        return None
    (length,) = struct.unpack("!H", bytes(data[14:_V2_FIXED]))
    if length < needed:
        raise InvalidProxyHeader(f"v2 address block of {length} bytes, {needed} needed")
    total = _V2_FIXED + length
    if len(data) < total:
        return None
    if local or family == _V2_UNSPEC:
        return ProxyHeader(2), total
    # Anything after the addresses is TLVs (ALPN, unique ids...): skipped.
    block = bytes(data[_V2_FIXED : _V2_FIXED + needed])
    kind = ipaddress.IPv4Address if family == _V2_TCP4 else ipaddress.IPv6Address
    size = 4 if family == _V2_TCP4 else 16
    sourcePort, destinationPort = struct.unpack("!HH", block[2 * size :])
    source = ProxiedAddress(kind(block[:size]), sourcePort)
    destination = ProxiedAddress(kind(block[size : 2 * size]), destinationPort)
    return ProxyHeader(2, source, destination), total
