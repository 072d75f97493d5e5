"""
Tests for L{ftpproxy.wire.clienthello}: ClientHellos captured from real
FTPS clients (tests/data/clienthello, see its README for how the expected
fingerprints were cross-checked), the worked examples of the JA3 and JA4
definitions, and hypothesis properties for cut, split and hostile input.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpproxy.wire.clienthello import (
    GREASE,
    MAX_CLIENT_HELLO_LENGTH,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    Fingerprint,
    ja3,
    ja3String,
    ja4,
    ja4Parts,
    readClientHello,
)

DATA = Path(__file__).parent / "data" / "clienthello"


def _captured(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


# -- building ClientHellos ---------------------------------------------------------


def _vector(lengthBytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(lengthBytes, "big") + body


def _u16s(values) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def extension(kind: int, body: bytes = b"") -> bytes:
    return struct.pack("!H", kind) + _vector(2, body)


def sni(name: bytes) -> bytes:
    return extension(0, _vector(2, b"\x00" + _vector(2, name)))


def alpn(*names: bytes) -> bytes:
    return extension(0x10, _vector(2, b"".join(_vector(1, n) for n in names)))


def u16ListExtension(kind: int, values, lengthBytes: int = 2) -> bytes:
    return extension(kind, _vector(lengthBytes, _u16s(values)))


def helloBody(
    ciphers=(0x1301,),
    extensions: list[bytes] | None = None,
    version: int = 0x0303,
    sessionId: bytes = b"",
) -> bytes:
    body = struct.pack("!H", version) + bytes(32) + _vector(1, sessionId)
    body += _vector(2, _u16s(ciphers)) + _vector(1, b"\x00")
    if extensions is not None:
        body += _vector(2, b"".join(extensions))
    return body


def handshake(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 16384, version: int = 0x0301) -> bytes:
    """
    C{message} in handshake records of at most C{size} bytes each.
    """
    out = b""
    for start in range(0, len(message), size):
        piece = message[start : start + size]
        out += struct.pack("!BHH", 22, version, len(piece)) + piece
    return out


def helloBytes(**kwargs) -> bytes:
    return records(handshake(helloBody(**kwargs)))


# -- captured from real clients -----------------------------------------------------

# name: (JA3, JA4, SNI, offered versions, resumption offered)
CAPTURED = {
    "curl": (
        "0732e7ae1e82c99f17258ef97e868d4e",
        "t13i311000_e8f1e7e78f70_b26ce05bbdd6",
        None,
        ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"),
        False,
    ),
    "curl-sni": (
        "8f2dfd01a68a182e6d58f285ff59c02b",
        "t13d311100_e8f1e7e78f70_b26ce05bbdd6",
        "localhost",
        ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"),
        False,
    ),
    "lftp": (
        "f35ce21b44ac0b87d3266294bb1b0e20",
        "t13d291300_723694b0fccc_2cc26d266019",
        "127.0.0.1",
        ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"),
        False,
    ),
    "wget": (
        "b1eb3ca3daaf03d365753f0a321e1601",
        "t13i291200_723694b0fccc_899037bd0b8c",
        None,
        ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"),
        False,
    ),
    "ftplib": (
        "8a9d5d0f12f7d43ee3af1c51d2998d99",
        "t13i181000_85036bcba153_d41ae481755e",
        None,
        ("TLSv1.3", "TLSv1.2"),
        False,
    ),
    "openssl-s_client": (
        "c216e752cae6f8755fd27f561d031636",
        "t13i310900_e8f1e7e78f70_1f22a2ca17c4",
        None,
        ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"),
        False,
    ),
    "gnutls-cli": (
        "24fdb1f10384c4be81a72d6f020c6c73",
        "t13i291200_723694b0fccc_2cc26d266019",
        None,
        ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"),
        False,
    ),
    "openssl-s_client-resuming-tls1.3": (
        "eea20e284925cd8657090566bd8438e3",
        "t13i041000_16476d049b0b_6775ac8fe30b",
        None,
        ("TLSv1.3",),
        True,
    ),
    "openssl-s_client-resuming-tls1.2": (
        "fbe7e189e37a07ee33706f86bc746344",
        "t12i280600_d943125447b4_e7e480e5a997",
        None,
        ("TLSv1.2",),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_capturedFingerprints(name: str) -> None:
    """
    Each captured ClientHello gives the JA3 and JA4 that Wireshark and
    FoxIO's reference implementation give, and the SNI, versions and
    resumption offer the client sent.
    """
    expectedJA3, expectedJA4, serverName, versions, resuming = CAPTURED[name]
    fingerprint = Fingerprint.of(readClientHello(_captured(name)))
    assert (fingerprint.ja3, fingerprint.ja4) == (expectedJA3, expectedJA4)
    assert fingerprint.ja3 == hashlib.md5(fingerprint.ja3String.encode()).hexdigest()
    assert fingerprint.serverName == serverName
    assert fingerprint.offeredVersions == versions
    assert fingerprint.offersResumption is resuming
    assert fingerprint.alpn == ()


def test_capturedDetails() -> None:
    """
    The fields behind the fingerprints, read from curl's ClientHello by
    hand (cipher suites and extensions in curl's order).
    """
    hello = readClientHello(_captured("curl"))
    assert hello.recordVersion == 0x0301
    assert hello.legacyVersion == 0x0303
    assert hello.sessionIdLength == 32
    assert hello.cipherSuites[:3] == (0x1302, 0x1303, 0x1301)
    assert len(hello.cipherSuites) == 31
    assert hello.extensions == (11, 10, 22, 23, 49, 13, 43, 45, 51, 21)
    assert hello.supportedGroups[:2] == (29, 23)
    assert hello.pointFormats == (0, 1, 2)
    assert hello.keyShareGroups == (29,)
    assert hello.signatureAlgorithms[0] == 0x0403
    assert not hello.sessionTicket and not hello.preSharedKey


def test_resumingClientHellos() -> None:
    """
    A TLS 1.3 client resuming offers a pre-shared key; a TLS 1.2 one
    presents a session ticket.
    """
    tls13 = readClientHello(_captured("openssl-s_client-resuming-tls1.3"))
    tls12 = readClientHello(_captured("openssl-s_client-resuming-tls1.2"))
    assert tls13.preSharedKey and not tls13.sessionTicket
    assert tls13.extensions[-1] == 41  # pre_shared_key comes last
    assert tls12.sessionTicket and not tls12.preSharedKey


# -- the definitions' own examples ---------------------------------------------------


def test_ja3Examples() -> None:
    """
    The two examples of the JA3 README: strings and MD5s.
    """
    first = readClientHello(
        helloBytes(
            version=769,
            ciphers=(47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4),
            extensions=[
                sni(b"example.com"),
                u16ListExtension(10, (23, 24, 25)),
                extension(11, _vector(1, b"\x00")),
            ],
        )
    )
    assert ja3String(first) == "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0"
    assert ja3(first) == "ada70206e40642a3e4461f35503241d5"
    second = readClientHello(
        helloBytes(version=769, ciphers=(4, 5, 10, 9, 100, 98, 3, 6, 19, 18, 99))
    )
    assert ja3String(second) == "769,4-5-10-9-100-98-3-6-19-18-99,,,"
    assert ja3(second) == "de350869b8c85de67a350c8d186f11e6"


# The JA4 definition's worked example: its cipher suites and extensions in
# the client's order, GREASE added where browsers put it.
JA4_CIPHERS = (
    0x2A2A, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030,
    0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
)
JA4_SIGNATURES = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def _ja4Example(signatures=JA4_SIGNATURES, alpnNames=(b"h2", b"http/1.1")) -> ClientHello:
    order = [
        0x3A3A, 0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D,
        0x0005, 0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015,
    ]
    bodies = {
        0x0000: sni(b"example.com"),
        0x000A: u16ListExtension(0x0A, (0x001D, 0x0017)),
        0x000B: extension(0x0B, _vector(1, b"\x00")),
        0x0033: extension(0x33, _vector(2, struct.pack("!H", 0x001D) + _vector(2, bytes(32)))),
        0x0010: alpn(*alpnNames),
        0x000D: u16ListExtension(0x0D, signatures),
        0x002B: u16ListExtension(0x2B, (0x5A5A, 0x0304, 0x0303), lengthBytes=1),
    }
    extensions = [bodies.get(kind, extension(kind)) for kind in order]
    return readClientHello(helloBytes(ciphers=JA4_CIPHERS, extensions=extensions))


def test_ja4Example() -> None:
    """
    The JA4 definition's example: t13d1516h2_8daaf6152771_e5627efa2ab1,
    GREASE ignored in ciphers, extensions and versions.
    """
    hello = _ja4Example()
    a, b, c = ja4Parts(hello)
    assert a == "t13d1516h2"
    assert b == "002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
    assert c == (
        "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
        "0403,0804,0401,0503,0805,0501,0806,0601"
    )
    assert ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_ja4WithoutSignatureAlgorithms() -> None:
    """
    Without signature algorithms (an empty list) the extension list is
    hashed alone, with no underscore (the definition's second example,
    6d807ffa2a79).
    """
    hello = _ja4Example(signatures=())
    assert ja4(hello).split("_")[2] == "6d807ffa2a79"
    assert ja4(hello).startswith("t13d1516h2_")


def test_ja4Empty() -> None:
    """
    No cipher suites, or no extensions: that part is twelve zeros; a
    client without supported_versions is fingerprinted by its ClientHello
    version, one without SNI gets "i", without ALPN "00".
    """
    bare = readClientHello(helloBytes(ciphers=(), version=0x0301))
    assert ja4(bare) == "t10i000000_000000000000_000000000000"
    assert ja3String(bare) == "769,,,,"
    onlySNI = readClientHello(helloBytes(extensions=[sni(b"a.example")]))
    assert ja4(onlySNI).endswith("_000000000000")
    assert ja4(onlySNI).startswith("t12d0101")


@pytest.mark.parametrize(
    "first, expected",
    [
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"x", "xx"),
        (b"\xab", "ab"),
        (b"\x20", "20"),
        (b"\xab\xcd", "ad"),
        (b"\x20\x61", "21"),
        (b"\x30\xab", "3b"),
        (b"\x61\x20", "60"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ],
)
def test_ja4ALPN(first: bytes, expected: str) -> None:
    """
    The ALPN characters, including the definition's examples of values
    that start or end with a byte that is no letter or digit.
    """
    hello = readClientHello(helloBytes(extensions=[alpn(first, b"h2")]))
    assert ja4Parts(hello)[0][-2:] == expected


def test_ja4EmptyALPN() -> None:
    """
    An empty first ALPN value, or an empty list, counts as none: "00".
    """
    for extensions in ([alpn(b"", b"h2")], [alpn()]):
        hello = readClientHello(helloBytes(extensions=extensions))
        assert ja4Parts(hello)[0][-2:] == "00"


def test_ja4CountsCapped() -> None:
    """
    More than 99 cipher suites count as 99.
    """
    hello = readClientHello(helloBytes(ciphers=tuple(range(1, 151))))
    assert ja4Parts(hello)[0][4:6] == "99"
    assert len(hello.cipherSuites) == 150


def test_ja4VersionFromSupportedVersions() -> None:
    """
    The highest non-GREASE value of supported_versions wins over the
    ClientHello's version; an unknown one is "00".
    """
    hello = readClientHello(
        helloBytes(extensions=[u16ListExtension(0x2B, (0x0303, 0x0A0A), lengthBytes=1)])
    )
    assert ja4(hello).startswith("t12")
    assert hello.offeredVersions == (0x0303,)
    odd = readClientHello(helloBytes(version=0x0305))
    assert ja4(odd).startswith("t00")


# -- reassembly ------------------------------------------------------------------------


def test_splitAcrossRecordsAndSegments() -> None:
    """
    The same ClientHello in one-byte records, fed one byte at a time, reads
    as the one in a single record.
    """
    whole = _captured("lftp")
    hello = readClientHello(whole)
    message = whole[5:]
    fragmented = records(message, size=1)
    reader = ClientHelloReader()
    results = [reader.feed(fragmented[i : i + 1]) for i in range(len(fragmented))]
    assert results[:-1] == [None] * (len(fragmented) - 1)
    assert results[-1] == hello
    assert reader.feed(b"more") == hello


def test_bytesAfterTheHelloAreIgnored() -> None:
    """
    Bytes after the ClientHello (a client that pipelines) are not read.
    """
    whole = _captured("curl")
    assert readClientHello(whole + b"\x14\x03\x03\x00\x01\x01") == readClientHello(whole)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"USER anonymous\r\n", "text, not TLS"),
        (b"\x80\x2e\x01\x00\x02", "SSL 2.0"),
        (b"\x16\x02\x00\x00\x10", "not TLS"),
        (b"\x16\x03\x01\x00\x00", "empty handshake record"),
        (b"\x16\x03\x01\x40\x01", "a record of 16385 bytes"),
        (records(b"\x02\x00\x00\x00"), "not a ClientHello"),
        (records(b"\x01\x01\x00\x00"), "ClientHello of 65536 bytes"),
        (records(b"\x01\x00\x00\x10") + b"\x15\x03\x03\x00\x02\x02\x28", "record type 21"),
        (records(handshake(b"\x03\x03" + bytes(10))), "cut short"),
        (records(handshake(helloBody() + b"\x00\x05\x00")), "longer than what holds it"),
        (records(handshake(helloBody(extensions=[]) + b"x")), "too many"),
        (records(handshake(helloBody(sessionId=bytes(33)))), "session id of 33 bytes"),
        (
            records(handshake(helloBody(extensions=[extension(0x2B, b"\x03\x03\x04\x03")]))),
            "odd length",
        ),
    ],
)
def test_refused(data: bytes, reason: str) -> None:
    """
    What cannot be a ClientHello is refused with a reason, at once.
    """
    with pytest.raises(ClientHelloError, match=reason):
        ClientHelloReader().feed(data)


def test_incomplete() -> None:
    """
    readClientHello wants the whole message; the reader waits for it.
    """
    whole = _captured("gnutls-cli")
    assert ClientHelloReader().feed(whole[:-1]) is None
    with pytest.raises(ClientHelloError, match="incomplete"):
        readClientHello(whole[:-1])


def test_boundedMemory() -> None:
    """
    A client announcing a huge ClientHello is refused when it says so, not
    after sending it; the limit can be lowered.
    """
    header = records(b"\x01" + (MAX_CLIENT_HELLO_LENGTH + 1).to_bytes(3, "big"))
    with pytest.raises(ClientHelloError, match="at most"):
        ClientHelloReader().feed(header)
    with pytest.raises(ClientHelloError, match="at most 100"):
        ClientHelloReader(maximumLength=100).feed(_captured("curl"))


# -- properties --------------------------------------------------------------------------

CAPTURES = [_captured(name) for name in sorted(CAPTURED)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CAPTURES), st.lists(st.integers(min_value=1, max_value=64), max_size=40))
def test_anySplitReadsTheSame(whole: bytes, cuts: list[int]) -> None:
    """
    However the bytes are split into segments, the ClientHello is the same,
    and nothing is reported before the last byte.
    """
    reader = ClientHelloReader()
    at = 0
    for size in cuts:
        if at + size >= len(whole):
            break
        assert reader.feed(whole[at : at + size]) is None
        at += size
    assert reader.feed(whole[at:]) == readClientHello(whole)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CAPTURES), st.data())
def test_truncatedWaits(whole: bytes, data: st.DataObject) -> None:
    """
    A cut ClientHello is never read as a complete (shorter) one.
    """
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    assert ClientHelloReader().feed(whole[:cut]) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_hostileBytes(data: bytes) -> None:
    """
    Arbitrary bytes give a ClientHello, nothing yet, or ClientHelloError;
    never another exception.
    """
    try:
        ClientHelloReader().feed(data)
    except ClientHelloError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(CAPTURES), st.data())
def test_corruptedClientHellos(whole: bytes, data: st.DataObject) -> None:
    """
    A real ClientHello with bytes changed anywhere (lengths included)
    parses, waits or is refused, and whatever parses can be fingerprinted.
    """
    corrupted = bytearray(whole)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        at = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
        corrupted[at] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        hello = ClientHelloReader().feed(bytes(corrupted))
    except ClientHelloError:
        return
    if hello is not None:
        fingerprint = Fingerprint.of(hello)
        assert len(fingerprint.ja3) == 32
        assert len(fingerprint.ja4) == 36


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=0xFFFF), max_size=120),
    st.lists(st.integers(min_value=0, max_value=0xFFFF), max_size=30, unique=True),
)
def test_greaseNeverCounts(ciphers: list[int], kinds: list[int]) -> None:
    """
    Adding GREASE values anywhere changes neither fingerprint.
    """
    kinds = [k for k in kinds if k not in (0x0000, 0x0010, 0x000A, 0x000B, 0x000D, 0x0023,
                                           0x0029, 0x002B, 0x0033) and k not in GREASE]
    plain = readClientHello(
        helloBytes(ciphers=ciphers, extensions=[extension(k) for k in kinds])
    )
    greased = readClientHello(
        helloBytes(
            ciphers=[0x1A1A, *ciphers, 0xFAFA],
            extensions=[extension(0x0A0A)] + [extension(k) for k in kinds] + [extension(0xEAEA)],
        )
    )
    assert (ja3(plain), ja4(plain)) == (ja3(greased), ja4(greased))


def test_ja4AsAFirstHandshake() -> None:
    """
    ja4Fresh leaves out what only a resuming ClientHello carries (TLS 1.3
    pre_shared_key, early_data), so that a client's first and resuming
    handshakes group together; for a first handshake it is the JA4.
    """
    resuming = Fingerprint.of(readClientHello(_captured("openssl-s_client-resuming-tls1.3")))
    assert resuming.ja4 == "t13i041000_16476d049b0b_6775ac8fe30b"
    assert resuming.ja4Fresh.startswith("t13i040900_16476d049b0b_")
    assert resuming.ja4Fresh != resuming.ja4
    for name in ("curl", "lftp", "openssl-s_client-resuming-tls1.2"):
        fingerprint = Fingerprint.of(readClientHello(_captured(name)))
        assert fingerprint.ja4Fresh == fingerprint.ja4
