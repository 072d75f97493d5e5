"""
The TLS ClientHello as bytes on the wire: reassembled from TCP segments and
TLS records, parsed, and fingerprinted with JA3 and JA4.

Pure functions and values, no I/O: the TLS layer feeds a
L{ClientHelloReader} the bytes a client sends before they enter OpenSSL,
and logs what comes out.

The fingerprints follow their published definitions:

  - JA3 (Salesforce, 2017): C{SSLVersion,Ciphers,Extensions,EllipticCurves,
    EllipticCurvePointFormats}, each a C{-}-joined list of decimal values in
    the order the client sent them, GREASE values left out; the fingerprint
    is the MD5 of that string.
  - JA4 (FoxIO): C{t} (TLS over TCP), the highest offered version (from
    supported_versions if sent, else the ClientHello's version), C{d}/C{i}
    (SNI sent or not), the number of cipher suites and of extensions (two
    digits each, at most 99), the first and last characters of the first
    ALPN value; then the first 12 hex digits of the SHA-256 of the sorted
    cipher suites, and of the sorted extensions (without SNI and ALPN)
    followed by the signature algorithms in their order.  GREASE values are
    left out everywhere.

Limits: a ClientHello longer than L{MAX_CLIENT_HELLO_LENGTH} bytes, a record
longer than TLS allows, anything but handshake records before the
ClientHello is complete, or an SSL 2.0 style hello, is refused with
L{ClientHelloError} rather than buffered.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Optional

import attrs
from attrs import frozen

#: The longest ClientHello message (without its 4-byte handshake header)
#: the reader reassembles.  Real ones are 200 bytes to 2 KiB (a post-quantum
#: key share adds about 1.2 KiB); OpenSSL itself accepts up to about 128 KiB.
MAX_CLIENT_HELLO_LENGTH = 32 * 1024

#: The longest TLS record payload allowed (TLSPlaintext: 2^14 bytes).
MAX_RECORD_LENGTH = 2**14

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1

#: Reserved values clients send to keep servers tolerant (RFC 8701): the
#: fingerprints ignore them wherever they appear.
GREASE: frozenset[int] = frozenset(0x0A0A + 0x1010 * i for i in range(16))

# Extension types the parser reads.
EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SESSION_TICKET = 0x0023
EXT_PRE_SHARED_KEY = 0x0029
EXT_EARLY_DATA = 0x002A
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_KEY_SHARE = 0x0033

#: Protocol version numbers by the names logs use.
VERSION_NAMES: dict[int, str] = {
    0x0002: "SSLv2",
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}

# JA4's two-character version codes (TLS over TCP and DTLS).
_JA4_VERSIONS: dict[int, str] = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}

_NO_VALUES = "000000000000"


class ClientHelloError(ValueError):
    """
    The bytes are not a TLS ClientHello the reader can use; the message
    says why in a few words (it goes into the log).
    """


@frozen
class ClientHello:
    """
    What a client offered in its ClientHello.

    @ivar recordVersion: the version of the first record's header.
    @ivar legacyVersion: the ClientHello's own version field (0x0303 for
        TLS 1.2 and 1.3 clients).
    @ivar sessionIdLength: bytes of the legacy session id (a TLS 1.2 client
        resuming by session id, or a TLS 1.3 client in middlebox
        compatibility mode, sends 32).
    @ivar cipherSuites: the cipher suites, in the client's order, GREASE
        included.
    @ivar compressionMethods: the compression methods.
    @ivar extensions: the extension types in the client's order, GREASE
        included.
    @ivar supportedVersions: the supported_versions extension's list, or
        empty if it was not sent.
    @ivar supportedGroups: the supported_groups (elliptic curves) list.
    @ivar pointFormats: the ec_point_formats list.
    @ivar signatureAlgorithms: the signature_algorithms list.
    @ivar keyShareGroups: the groups the client sent key shares for.
    @ivar serverName: the SNI host name, or L{None}.
    @ivar alpn: the ALPN protocol names, in order.
    @ivar sessionTicket: whether the client presented a session ticket
        (a non-empty session_ticket extension: TLS 1.2 resumption).
    @ivar preSharedKey: whether it offered a pre-shared key (TLS 1.3
        resumption).
    """

    recordVersion: int
    legacyVersion: int
    sessionIdLength: int
    cipherSuites: tuple[int, ...]
    compressionMethods: tuple[int, ...]
    extensions: tuple[int, ...]
    supportedVersions: tuple[int, ...] = ()
    supportedGroups: tuple[int, ...] = ()
    pointFormats: tuple[int, ...] = ()
    signatureAlgorithms: tuple[int, ...] = ()
    keyShareGroups: tuple[int, ...] = ()
    serverName: Optional[str] = None
    alpn: tuple[bytes, ...] = ()
    sessionTicket: bool = False
    preSharedKey: bool = False

    @property
    def offeredVersions(self) -> tuple[int, ...]:
        """
        The protocol versions offered, newest first: supported_versions
        without GREASE if it was sent, else the ClientHello's version alone.
        """
        versions = _withoutGrease(self.supportedVersions)
        if not versions:
            return (self.legacyVersion,)
        return tuple(sorted(set(versions), reverse=True))

    @property
    def offersResumption(self) -> bool:
        """
        Whether the client tries to resume a session: a TLS 1.3 pre-shared
        key, a TLS 1.2 session ticket, or (without either, and without
        TLS 1.3 on offer, where a session id is only for middleboxes) a
        session id.
        """
        if self.preSharedKey or self.sessionTicket:
            return True
        return self.sessionIdLength > 0 and 0x0304 not in self.offeredVersions

    def asFirstHandshake(self) -> ClientHello:
        """
        This ClientHello without what only a resuming one carries (the
        TLS 1.3 pre_shared_key and early_data extensions): a client's first
        and resuming handshakes look alike this way, and fingerprint alike.
        """
        resuming = (EXT_PRE_SHARED_KEY, EXT_EARLY_DATA)
        return attrs.evolve(
            self,
            extensions=tuple(e for e in self.extensions if e not in resuming),
            preSharedKey=False,
        )


def _withoutGrease(values: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(v for v in values if v not in GREASE)


def versionName(version: int) -> str:
    """
    The usual name of a protocol version ("TLSv1.3"), or its hex value.
    """
    return VERSION_NAMES.get(version, f"0x{version:04x}")


# -- reading ----------------------------------------------------------------------


class _Cursor:
    """
    Reads big-endian fields from a bytes object, failing with
    L{ClientHelloError} at the end instead of returning short data.
    """

    __slots__ = ("_data", "_at", "_end", "_what")

    def __init__(self, data: bytes, what: str, start: int = 0, end: Optional[int] = None) -> None:
        self._data = data
        self._at = start
        self._end = len(data) if end is None else end
        self._what = what

    @property
    def remaining(self) -> int:
        return self._end - self._at

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise ClientHelloError(f"{self._what} is cut short")
        chunk = self._data[self._at : self._at + count]
        self._at += count
        return chunk

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def uint8(self) -> int:
        return self.take(1)[0]

    def uint16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def vector(self, lengthBytes: int, what: str) -> _Cursor:
        """
        The next variable-length vector (its length in C{lengthBytes} bytes)
        as a cursor of its own.
        """
        length = self.uint8() if lengthBytes == 1 else self.uint16()
        if length > self.remaining:
            raise ClientHelloError(f"{what} is longer than what holds it")
        inner = _Cursor(self._data, what, self._at, self._at + length)
        self._at += length
        return inner

    def uint16List(self, what: str) -> tuple[int, ...]:
        if self.remaining % 2:
            raise ClientHelloError(f"{what} has an odd length")
        count = self.remaining // 2
        return struct.unpack(f"!{count}H", self.take(2 * count))

    def end(self) -> None:
        if self.remaining:
            raise ClientHelloError(f"{self._what} has {self.remaining} bytes too many")


def parseClientHelloBody(body: bytes, recordVersion: int = 0x0301) -> ClientHello:
    """
    Parse a ClientHello message body (after the 4-byte handshake header).

    @raise ClientHelloError: when it is malformed.
    """
    cursor = _Cursor(body, "ClientHello")
    legacyVersion = cursor.uint16()
    cursor.take(32)  # random
    sessionIdLength = len(cursor.vector(1, "session id").rest())
    if sessionIdLength > 32:
        raise ClientHelloError(f"session id of {sessionIdLength} bytes (at most 32)")
    cipherSuites = cursor.vector(2, "cipher suites").uint16List("cipher suites")
    compression = tuple(cursor.vector(1, "compression methods").rest())
    fields: dict[str, object] = {}
    extensions: list[int] = []
    if cursor.remaining:
        block = cursor.vector(2, "extensions")
        cursor.end()
        while block.remaining:
            kind = block.uint16()
            data = block.vector(2, f"extension {kind}")
            extensions.append(kind)
            _readExtension(kind, data, fields)
    return ClientHello(
        recordVersion=recordVersion,
        legacyVersion=legacyVersion,
        sessionIdLength=sessionIdLength,
        cipherSuites=cipherSuites,
        compressionMethods=compression,
        extensions=tuple(extensions),
        **fields,  # type: ignore[arg-type]
    )


def _readExtension(kind: int, data: _Cursor, fields: dict[str, object]) -> None:
    """
    Read the extensions the fingerprints and the log use into C{fields}
    (L{ClientHello} attribute names); others are only counted.
    """
    if kind == EXT_SERVER_NAME:
        if data.remaining == 0:
            return  # a server's empty acknowledgement; clients send a list
        names = data.vector(2, "server name list")
        data.end()
        while names.remaining:
            nameType = names.uint8()
            name = names.vector(2, "server name").rest()
            if nameType == 0 and "serverName" not in fields:
                fields["serverName"] = name.decode("ascii", "replace")
    elif kind == EXT_SUPPORTED_GROUPS:
        fields["supportedGroups"] = _listIn(data, 2, "supported groups")
    elif kind == EXT_EC_POINT_FORMATS:
        formats = data.vector(1, "point formats")
        data.end()
        fields["pointFormats"] = tuple(formats.rest())
    elif kind == EXT_SIGNATURE_ALGORITHMS:
        fields["signatureAlgorithms"] = _listIn(data, 2, "signature algorithms")
    elif kind == EXT_ALPN:
        protocols = data.vector(2, "ALPN list")
        data.end()
        names = []
        while protocols.remaining:
            names.append(protocols.vector(1, "ALPN protocol").rest())
        fields["alpn"] = tuple(names)
    elif kind == EXT_SESSION_TICKET:
        fields["sessionTicket"] = data.remaining > 0
    elif kind == EXT_PRE_SHARED_KEY:
        fields["preSharedKey"] = True
    elif kind == EXT_SUPPORTED_VERSIONS:
        fields["supportedVersions"] = _listIn(data, 1, "supported versions")
    elif kind == EXT_KEY_SHARE:
        shares = data.vector(2, "key shares")
        data.end()
        groups = []
        while shares.remaining:
            groups.append(shares.uint16())
            shares.vector(2, "key share")
        fields["keyShareGroups"] = tuple(groups)


def _listIn(data: _Cursor, lengthBytes: int, what: str) -> tuple[int, ...]:
    values = data.vector(lengthBytes, what)
    data.end()
    return values.uint16List(what)


class ClientHelloReader:
    """
    Reassembles the ClientHello from the bytes a client sends, in whatever
    pieces they arrive: TCP segments split records anywhere, and a
    ClientHello may span several handshake records.

    L{feed} returns the L{ClientHello} once it is complete (and L{None}
    before); it raises L{ClientHelloError} when the bytes cannot be one.
    Memory is bounded: at most one record header, one record's payload and
    L{MAX_CLIENT_HELLO_LENGTH} bytes of message are kept.

    @ivar result: the ClientHello, once read.
    """

    def __init__(self, maximumLength: int = MAX_CLIENT_HELLO_LENGTH) -> None:
        self._maximum = maximumLength
        self._pending = bytearray()
        self._message = bytearray()
        self._recordVersion: Optional[int] = None
        self._expected: Optional[int] = None
        self.result: Optional[ClientHello] = None

    def feed(self, data: bytes) -> Optional[ClientHello]:
        if self.result is not None:
            return self.result
        self._pending += data
        while self.result is None:
            if not self._record():
                return None
        return self.result

    def _record(self) -> bool:
        """
        Move one whole record from the pending bytes to the message; False
        when the record is not all there yet.
        """
        pending = self._pending
        if len(pending) < 5:
            self._checkHeaderStart()
            return False
        contentType = pending[0]
        version, length = struct.unpack("!HH", pending[1:5])
        self._checkRecordHeader(contentType, version, length)
        if len(pending) < 5 + length:
            return False
        if self._recordVersion is None:
            self._recordVersion = version
        self._message += pending[5 : 5 + length]
        del pending[: 5 + length]
        self._readMessageHeader()
        if self._expected is not None and len(self._message) >= 4 + self._expected:
            body = bytes(self._message[4 : 4 + self._expected])
            self.result = parseClientHelloBody(body, self._recordVersion)
            self._pending.clear()
            self._message.clear()
        return True

    def _checkHeaderStart(self) -> None:
        pending = self._pending
        if pending and pending[0] != _HANDSHAKE_RECORD:
            self._checkRecordHeader(pending[0], 0, 0)
        if len(pending) >= 2 and pending[1] != 0x03:
            raise ClientHelloError(f"record version major {pending[1]} is not TLS's 3")

    def _checkRecordHeader(self, contentType: int, version: int, length: int) -> None:
        if contentType != _HANDSHAKE_RECORD:
            if not self._message and contentType & 0x80:
                raise ClientHelloError("an SSL 2.0 style ClientHello")
            if not self._message and contentType in _TEXT_START:
                raise ClientHelloError("text, not TLS")
            raise ClientHelloError(f"record type {contentType} before the ClientHello ended")
        if version >> 8 != 0x03:
            raise ClientHelloError(f"record version 0x{version:04x} is not TLS")
        if length == 0:
            raise ClientHelloError("an empty handshake record")
        if length > MAX_RECORD_LENGTH:
            raise ClientHelloError(f"a record of {length} bytes (TLS allows {MAX_RECORD_LENGTH})")

    def _readMessageHeader(self) -> None:
        if self._expected is not None or len(self._message) < 4:
            return
        if self._message[0] != _CLIENT_HELLO:
            raise ClientHelloError(f"handshake message {self._message[0]} is not a ClientHello")
        length = int.from_bytes(self._message[1:4], "big")
        if length > self._maximum:
            raise ClientHelloError(f"a ClientHello of {length} bytes (at most {self._maximum} read)")
        self._expected = length


# Bytes a text protocol line starts with (a client talking FTP where TLS
# was expected): letters and digits.
_TEXT_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def readClientHello(data: bytes) -> ClientHello:
    """
    The ClientHello at the start of C{data} (whole TLS records).

    @raise ClientHelloError: when C{data} does not start with a whole,
        well-formed ClientHello.
    """
    hello = ClientHelloReader().feed(data)
    if hello is None:
        raise ClientHelloError("the ClientHello is incomplete")
    return hello


# -- fingerprints ------------------------------------------------------------------


def ja3String(hello: ClientHello) -> str:
    """
    The JA3 string: C{SSLVersion,Ciphers,Extensions,EllipticCurves,
    EllipticCurvePointFormats}, decimal values in the client's order,
    GREASE left out.
    """

    def joined(values: tuple[int, ...]) -> str:
        return "-".join(str(v) for v in values if v not in GREASE)

    return ",".join(
        [
            str(hello.legacyVersion),
            joined(hello.cipherSuites),
            joined(hello.extensions),
            joined(hello.supportedGroups),
            joined(hello.pointFormats),
        ]
    )


def ja3(hello: ClientHello) -> str:
    """
    The JA3 fingerprint: the MD5 of L{ja3String}, in hex.
    """
    return hashlib.md5(ja3String(hello).encode("ascii"), usedforsecurity=False).hexdigest()


def _ja4Version(hello: ClientHello) -> str:
    versions = _withoutGrease(hello.supportedVersions)
    version = max(versions) if versions else hello.legacyVersion
    return _JA4_VERSIONS.get(version, "00")


def _isAlphanumeric(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _ja4ALPN(hello: ClientHello) -> str:
    if not hello.alpn or not hello.alpn[0]:
        return "00"
    first = hello.alpn[0]
    if _isAlphanumeric(first[0]) and _isAlphanumeric(first[-1]):
        return chr(first[0]) + chr(first[-1])
    digits = first.hex()
    return digits[0] + digits[-1]


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _hexList(values: tuple[int, ...] | list[int]) -> str:
    return ",".join(f"{v:04x}" for v in values)


def ja4Parts(hello: ClientHello) -> tuple[str, str, str]:
    """
    JA4's three parts, unhashed: C{a}, the sorted cipher suites, and the
    sorted extensions (without SNI and ALPN) with the signature algorithms
    after an underscore (JA4_r, the "raw" form, joins them with C{_}).
    """
    ciphers = _withoutGrease(hello.cipherSuites)
    extensions = _withoutGrease(hello.extensions)
    a = "t{version}{sni}{ciphers:02d}{extensions:02d}{alpn}".format(
        version=_ja4Version(hello),
        sni="d" if EXT_SERVER_NAME in extensions else "i",
        ciphers=min(len(ciphers), 99),
        extensions=min(len(extensions), 99),
        alpn=_ja4ALPN(hello),
    )
    b = _hexList(sorted(ciphers))
    c = _hexList(sorted(e for e in extensions if e not in (EXT_SERVER_NAME, EXT_ALPN)))
    algorithms = _withoutGrease(hello.signatureAlgorithms)
    if c and algorithms:
        c += "_" + _hexList(algorithms)
    return a, b, c


def ja4(hello: ClientHello) -> str:
    """
    The JA4 fingerprint of a ClientHello sent over TCP, e.g.
    C{t13d1516h2_8daaf6152771_e5627efa2ab1}.
    """
    a, b, c = ja4Parts(hello)
    return f"{a}_{_hash12(b) if b else _NO_VALUES}_{_hash12(c) if c else _NO_VALUES}"


@frozen
class Fingerprint:
    """
    What the log says about a ClientHello.

    @ivar ja3: the JA3 fingerprint (MD5 hex).
    @ivar ja3String: the string it hashes.
    @ivar ja4: the JA4 fingerprint.
    @ivar ja4Fresh: the JA4 of L{ClientHello.asFirstHandshake}: the same for
        a client's first and resuming ClientHellos.
    @ivar offeredVersions: the protocol versions offered, by name.
    @ivar serverName: the SNI host name, or L{None}.
    @ivar alpn: the ALPN protocol names (decoded as Latin-1).
    @ivar offersResumption: whether the client tried to resume a session.
    """

    ja3: str
    ja3String: str
    ja4: str
    ja4Fresh: str
    offeredVersions: tuple[str, ...]
    serverName: Optional[str]
    alpn: tuple[str, ...]
    offersResumption: bool

    @classmethod
    def of(cls, hello: ClientHello) -> Fingerprint:
        return cls(
            ja3=ja3(hello),
            ja3String=ja3String(hello),
            ja4=ja4(hello),
            ja4Fresh=ja4(hello.asFirstHandshake()),
            offeredVersions=tuple(versionName(v) for v in hello.offeredVersions),
            serverName=hello.serverName,
            alpn=tuple(p.decode("latin-1") for p in hello.alpn),
            offersResumption=hello.offersResumption,
        )


__all__ = [
    "GREASE",
    "MAX_CLIENT_HELLO_LENGTH",
    "ClientHello",
    "ClientHelloError",
    "ClientHelloReader",
    "Fingerprint",
    "ja3",
    "ja3String",
    "ja4",
    "ja4Parts",
    "parseClientHelloBody",
    "readClientHello",
    "versionName",
]
