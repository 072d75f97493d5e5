"""
PROXY protocol test vectors shared by the header tests and the listener
tests: address strategies and headers that must be refused.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from ftpproxy.wire.proxyprotocol import V2_SIGNATURE

ports = st.integers(min_value=0, max_value=65535)
ipv4s = st.ip_addresses(v=4)
ipv6s = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None)
mapped = ipv4s.map(lambda ip: ipaddress.IPv6Address(f"::ffff:{ip}"))


def endsOf(ips):
    """
    (source, destination) pairs of (host text, port) from C{ips}.
    """
    return st.tuples(st.tuples(ips.map(str), ports), st.tuples(ips.map(str), ports))


#: Headers a listener must refuse, each for a different reason.
GARBAGE_HEADERS = [
    b"USER anonymous\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS ClientHello
    b"PROXY\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 x y\r\n",
    b"PROXY TCP4 evil host 1 2\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n",
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # an Arabic-Indic digit
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero
    b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",  # a scope
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
    b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY " + b"A" * 200,  # no CRLF within 107 bytes
    b"PROXY UNKNOWN " + b"A" * 92 + b"\r\n",  # 108 bytes with its CRLF
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 signature
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # unknown command
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # address block too short
    V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12,  # too short for IPv6
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
    V2_SIGNATURE + b"\x21\x10\x00\x0c" + b"\x00" * 12,  # IPv4, transport UNSPEC
    V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"\x00" * 216,  # AF_UNIX
    V2_SIGNATURE + b"\x21\x41\x00\x00",  # unknown family
]
