"""
The text of the FTP control channel: commands, replies, and the address
arguments of PASV, EPSV, LPSV, PORT, EPRT and LPRT, plus the Telnet layer
underneath.

Everything here is pure: bytes in, values out, no I/O.  That keeps every
rule testable on its own, apart from the protocols that move the bytes.
Wire text is L{bytes}; hosts are L{str} in the form L{ipaddress} prints.
Anything malformed raises L{ProtocolTextError}, and only that.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Sequence

import attrs

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_REPLY_SIZE",
    "ProtocolTextError",
    "Reply",
    "ReplyParser",
    "TelnetFilter",
    "escapeIAC",
    "formatEprtArgument",
    "formatEpsvReply",
    "formatFeatReply",
    "formatLprtArgument",
    "formatLpsvReply",
    "formatPasvReply",
    "formatPortArgument",
    "parseCommand",
    "parseEprtArgument",
    "parseEpsvArgument",
    "parseEpsvReply",
    "parseFeatReply",
    "parseLprtArgument",
    "parseLpsvReply",
    "parsePasvReply",
    "parsePortArgument",
]

#: Longest reply line accepted from a server, without its line end.
MAX_LINE_LENGTH = 8192
#: Largest reply (all lines with their CRLFs) accepted from a server.
MAX_REPLY_SIZE = 1024 * 1024
#: Longest command verb (RFC 959 verbs have 3 or 4 letters; leave room).
MAX_VERB_LENGTH = 8


class ProtocolTextError(ValueError):
    """
    Text that is not valid FTP: sent by a peer, or asked of a formatter.
    """


# --- helpers ---------------------------------------------------------------


def _asBytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        text = text.encode("utf-8")
    else:
        text = bytes(text)
    if b"\r" in text or b"\n" in text:
        raise ProtocolTextError(f"line break inside reply text: {text!r}")
    return text


def _checkReplyCode(code: int) -> None:
    if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
        raise ProtocolTextError(f"reply code out of range 100..599: {code!r}")


def _checkPort(port: int, lowest: int = 0) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port <= 65535:
        raise ProtocolTextError(f"port out of range {lowest}..65535: {port!r}")


def _ipAddress(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    Parse C{host}; an IPv4-mapped IPv6 address (what a dual-stack socket
    reports for an IPv4 peer) counts as the IPv4 address it carries.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError as e:
        raise ProtocolTextError(f"not an IP address: {host!r}") from e
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ProtocolTextError(f"scoped IPv6 address: {host!r}")
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _ipv4Address(host: str) -> ipaddress.IPv4Address:
    address = _ipAddress(host)
    if not isinstance(address, ipaddress.IPv4Address):
        raise ProtocolTextError(f"not an IPv4 address: {host!r}")
    return address


def _octet(text: bytes) -> int:
    """Decode one decimal number 0..255 of a comma-separated address."""
    text = text.strip(b" ")
    if not 1 <= len(text) <= 3 or not text.isdigit():
        raise ProtocolTextError(f"not a number 0..255: {text!r}")
    value = int(text)
    if value > 255:
        raise ProtocolTextError(f"number out of range 0..255: {text!r}")
    return value


def _startsReply(line: bytes) -> bool:
    """
    Would C{line} be read as the start or end of a reply (three digits and
    then a space, a dash or nothing)?  Used to keep generated text safe.
    """
    return line[:3].isdigit() and len(line) >= 3 and line[3:4] in (b"", b" ", b"-")


# --- commands --------------------------------------------------------------


def parseCommand(line: bytes) -> tuple[bytes, bytes]:
    """
    Split one command line (without its CRLF) into the upper-cased verb and
    the argument.  The argument is kept byte for byte: file names may begin
    or end with spaces.
    """
    line = bytes(line)
    if not line:
        raise ProtocolTextError("empty command line")
    if b"\r" in line or b"\n" in line:
        raise ProtocolTextError(f"line break inside command line: {line[:80]!r}")
    verb, _, argument = line.partition(b" ")
    if not verb or len(verb) > MAX_VERB_LENGTH or not verb.isalpha():
        raise ProtocolTextError(f"malformed command verb: {verb[:80]!r}")
    return verb.upper(), argument


# --- replies ---------------------------------------------------------------


def _checkReplyLines(reply: Reply, attribute: object, lines: tuple[bytes, ...]) -> None:
    """
    A L{Reply} must serialise to text that a client reads back as exactly
    this one reply: check the framing of its lines.
    """
    _checkReplyCode(reply.code)
    if not lines:
        raise ProtocolTextError("reply without lines")
    code = b"%d" % (reply.code,)
    for line in lines:
        if not isinstance(line, bytes):
            raise ProtocolTextError(f"reply line is not bytes: {line!r}")
        if b"\n" in line:
            raise ProtocolTextError(f"line break inside reply line: {line[:80]!r}")
    first, last = lines[0], lines[-1]
    if len(lines) == 1:
        if not (first == code or first.startswith(code + b" ")):
            raise ProtocolTextError(f"single-line reply must start {code!r}: {first[:80]!r}")
        return
    if not first.startswith(code + b"-"):
        raise ProtocolTextError(f"multi-line reply must start {code + b'-'!r}: {first[:80]!r}")
    if not (last == code or last.startswith(code + b" ")):
        raise ProtocolTextError(f"multi-line reply must end {code!r}: {last[:80]!r}")
    for line in lines[1:-1]:
        if line == code or line.startswith(code + b" "):
            raise ProtocolTextError(f"reply line would end the reply early: {line[:80]!r}")


@attrs.frozen
class Reply:
    """
    One server reply: its code and its lines exactly as on the wire
    (without line ends), so that a relayed reply is passed on unchanged.
    """

    code: int
    lines: tuple[bytes, ...] = attrs.field(converter=tuple, validator=_checkReplyLines)

    @classmethod
    def single(cls, code: int, text: str | bytes) -> Reply:
        """A one-line reply C{ddd text}."""
        _checkReplyCode(code)
        return cls(code, (b"%d %s" % (code, _asBytes(text)),))

    @classmethod
    def multi(cls, code: int, texts: Sequence[str | bytes]) -> Reply:
        """
        A multi-line reply C{ddd-first} ... C{ddd last}.  A middle line that
        looks like the start of a reply gets a leading space so that no
        client can take it for the end.  One text makes a one-line reply.
        """
        _checkReplyCode(code)
        encoded = [_asBytes(text) for text in texts]
        if not encoded:
            raise ProtocolTextError("multi-line reply without text")
        if len(encoded) == 1:
            return cls.single(code, encoded[0])
        middle = [b" " + text if _startsReply(text) else text for text in encoded[1:-1]]
        return cls(
            code,
            (b"%d-%s" % (code, encoded[0]), *middle, b"%d %s" % (code, encoded[-1])),
        )

    def toBytes(self) -> bytes:
        """The reply as sent on the wire, each line ended by CRLF."""
        return b"\r\n".join(self.lines) + b"\r\n"

    @property
    def text(self) -> bytes:
        """The text of the first line, after C{ddd } or C{ddd-}."""
        return self.lines[0][4:]

    @property
    def isPreliminary(self) -> bool:
        return 100 <= self.code < 200

    @property
    def isPositive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def isIntermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def isError(self) -> bool:
        return 400 <= self.code < 600


class ReplyParser:
    """
    Incremental parser of a server's reply stream (RFC 959 section 4.2).

    Lines end in CRLF (a bare LF is accepted too).  Memory is bounded: a line
    longer than C{maxLineLength} or a reply larger than C{maxReplySize}
    raises L{ProtocolTextError}.  After an error the stream is unusable and
    every later L{feed} raises again; replies completed in the same chunk
    before the error are not returned (close the connection).
    """

    __slots__ = ('_maxLineLength', '_maxReplySize', '_partial', '_code', '_lines', '_size', '_failure')

    def __init__(
        self, maxLineLength: int = MAX_LINE_LENGTH, maxReplySize: int = MAX_REPLY_SIZE
    ) -> None:
        self._maxLineLength = maxLineLength
        self._maxReplySize = maxReplySize
        # Bytes after the last line end. Bytes, not a bytearray: usually
        # empty, and the empty bytes object is shared.
        self._partial = b""
        self._code: bytes | None = None
        # The lines of a multi-line reply being received, else None.
        self._lines: list[bytes] | None = None
        self._size = 0
        self._failure: str | None = None

    @property
    def hasPending(self) -> bool:
        """
        Whether input is buffered that does not yet form a whole reply (e.g.
        bytes after a C{234} that must not be there).
        """
        return bool(self._partial) or self._code is not None

    def feed(self, data: bytes) -> list[Reply]:
        """Consume C{data}; return the replies it completed, in order."""
        if self._failure is not None:
            raise ProtocolTextError(f"reply stream already failed: {self._failure}")
        try:
            return self._feed(bytes(data))
        except ProtocolTextError as e:
            self._failure = str(e)
            raise

    def _feed(self, data: bytes) -> list[Reply]:
        replies = []
        position = 0
        while True:
            end = data.find(b"\n", position)
            if end == -1:
                break
            line = data[position:end]
            if position == 0 and self._partial:
                line = self._partial + line
                self._partial = b""
            position = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self._checkLineLength(len(line))
            reply = self._lineReceived(line)
            if reply is not None:
                replies.append(reply)
        if position < len(data):
            # A trailing CR may be the first half of the CRLF: allow one byte.
            rest = len(data) - position
            pending = len(self._partial) + rest
            if data.endswith(b"\r"):
                pending -= 1
            self._checkLineLength(pending)
            self._partial += data[position:]
        return replies

    def _checkLineLength(self, length: int) -> None:
        if length > self._maxLineLength:
            raise ProtocolTextError(f"reply line longer than {self._maxLineLength} bytes")

    def _lineReceived(self, line: bytes) -> Reply | None:
        if self._code is None:
            if not (line[:1] in b"12345" and _startsReply(line)):
                raise ProtocolTextError(f"not a reply line: {line[:80]!r}")
            if line[3:4] == b"-":
                self._code = line[:3]
                self._lines = [line]
                self._size = len(line) + 2
                return None
            return Reply(int(line[:3]), (line,))
        self._lines.append(line)
        self._size += len(line) + 2
        if self._size > self._maxReplySize:
            raise ProtocolTextError(f"reply larger than {self._maxReplySize} bytes")
        code = self._code
        if line[:3] == code and line[3:4] in (b"", b" "):
            reply = Reply(int(code), tuple(self._lines))
            self._code = None
            self._lines = None
            self._size = 0
            return reply
        return None


# --- PASV / PORT (RFC 959, RFC 1123 section 4.1.2.6) -----------------------

_number = rb"([0-9]{1,3})"
_comma = rb"[ \t]*,[ \t]*"
_PASV_NUMBERS = re.compile(rb"(?<![0-9])" + _number + (_comma + _number) * 5 + rb"(?![0-9])")


def _hostPort(numbers: Sequence[bytes]) -> tuple[str, int]:
    values = [_octet(number) for number in numbers]
    host = "%d.%d.%d.%d" % tuple(values[:4])
    return host, values[4] * 256 + values[5]


def parsePasvReply(text: bytes) -> tuple[str, int]:
    """
    Find the address in a 227 reply.  RFC 1123 says to scan for the six
    numbers: servers differ in the text and parentheses around them.
    """
    match = _PASV_NUMBERS.search(bytes(text))
    if match is None:
        raise ProtocolTextError(f"no address in PASV reply: {bytes(text)[:80]!r}")
    return _hostPort(match.groups())


def _commaAddress(host: str, port: int) -> bytes:
    address = _ipv4Address(host)
    _checkPort(port)
    return b",".join(b"%d" % (n,) for n in (*address.packed, port >> 8, port & 0xFF))


def formatPasvReply(host: str, port: int) -> Reply:
    """The 227 reply that tells a client to connect to C{host}:C{port}."""
    _checkPort(port, 1)
    return Reply.single(227, b"Entering Passive Mode (%s)." % (_commaAddress(host, port),))


def parsePortArgument(argument: bytes) -> tuple[str, int]:
    """Decode C{h1,h2,h3,h4,p1,p2}; spaces around the numbers are tolerated."""
    numbers = bytes(argument).split(b",")
    if len(numbers) != 6:
        raise ProtocolTextError(f"PORT needs six numbers: {bytes(argument)[:80]!r}")
    return _hostPort(numbers)


def formatPortArgument(host: str, port: int) -> bytes:
    """Encode C{host}:C{port} (IPv4) as a PORT argument."""
    return _commaAddress(host, port)


# --- EPSV / EPRT (RFC 2428) ------------------------------------------------

_EPSV_ADDRESS = re.compile(rb"\(([\x21-\x2f\x3a-\x7e])\1\1([0-9]{1,5})\1\)")


def parseEpsvReply(text: bytes) -> int:
    """Find the port in a 229 reply: C{(|||port|)} with any delimiter."""
    match = _EPSV_ADDRESS.search(bytes(text))
    if match is None:
        raise ProtocolTextError(f"no port in EPSV reply: {bytes(text)[:80]!r}")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise ProtocolTextError(f"EPSV port out of range: {port}")
    return port


def formatEpsvReply(port: int) -> Reply:
    """The 229 reply that tells a client to connect to C{port}."""
    _checkPort(port, 1)
    return Reply.single(229, b"Entering Extended Passive Mode (|||%d|)" % (port,))


def parseEpsvArgument(argument: bytes) -> int | str | None:
    """
    The argument of EPSV: none, C{"ALL"} (refuse other data commands from
    now on), or the network protocol 1 (IPv4) or 2 (IPv6).
    """
    argument = bytes(argument).strip(b" ")
    if not argument:
        return None
    if argument.upper() == b"ALL":
        return "ALL"
    if argument in (b"1", b"2"):
        return int(argument)
    raise ProtocolTextError(f"bad EPSV argument: {argument[:80]!r}")


def parseEprtArgument(argument: bytes) -> tuple[int, str, int]:
    """
    Decode C{<d>proto<d>address<d>port<d>} into (protocol, host, port); the
    host comes back in canonical (compressed) form.
    """
    argument = bytes(argument).strip(b" ")
    if len(argument) < 2 or not 33 <= argument[0] <= 126 or argument[-1] != argument[0]:
        raise ProtocolTextError(f"malformed EPRT argument: {argument[:80]!r}")
    fields = argument[1:-1].split(argument[:1])
    if len(fields) != 3:
        raise ProtocolTextError(f"EPRT needs three fields: {argument[:80]!r}")
    protocol, host, port = fields
    if protocol not in (b"1", b"2"):
        raise ProtocolTextError(f"unknown EPRT network protocol: {protocol[:80]!r}")
    if not 1 <= len(port) <= 5 or not port.isdigit() or int(port) > 65535:
        raise ProtocolTextError(f"bad EPRT port: {port[:80]!r}")
    if not host.isascii() or b"%" in host:
        raise ProtocolTextError(f"bad EPRT address: {host[:80]!r}")
    family = ipaddress.IPv4Address if protocol == b"1" else ipaddress.IPv6Address
    try:
        address = family(host.decode("ascii"))
    except ValueError as e:
        raise ProtocolTextError(f"bad EPRT address: {host[:80]!r}") from e
    return int(protocol), str(address), int(port)


def formatEprtArgument(host: str, port: int) -> bytes:
    """Encode C{host}:C{port} as an EPRT argument, protocol 1 or 2 to match."""
    address = _ipAddress(host)
    _checkPort(port)
    protocol = 1 if address.version == 4 else 2
    return b"|%d|%s|%d|" % (protocol, str(address).encode("ascii"), port)


# --- LPSV / LPRT (RFC 1639) ------------------------------------------------

_LONG_ADDRESS = re.compile(rb"\(([0-9 ,]*)\)")


def _longAddress(host: str, port: int) -> bytes:
    address = _ipAddress(host)
    _checkPort(port)
    packed = address.packed
    family = 4 if address.version == 4 else 6
    numbers = (family, len(packed), *packed, 2, port >> 8, port & 0xFF)
    return b",".join(b"%d" % (n,) for n in numbers)


def formatLpsvReply(host: str, port: int) -> Reply:
    """The 228 reply for LPSV: C{(af,hal,h1,...,pal,p1,p2)}."""
    _checkPort(port, 1)
    return Reply.single(228, b"Entering Long Passive Mode (%s)" % (_longAddress(host, port),))


def formatLprtArgument(host: str, port: int) -> bytes:
    """Encode C{host}:C{port} as an LPRT argument."""
    return _longAddress(host, port)


def parseLprtArgument(argument: bytes) -> tuple[str, int]:
    """Decode C{af,hal,h1,...,pal,p1,...} for IPv4 (4,4) or IPv6 (6,16)."""
    values = [_octet(number) for number in bytes(argument).split(b",")]
    if len(values) < 2 or (values[0], values[1]) not in ((4, 4), (6, 16)):
        raise ProtocolTextError(f"unsupported LPRT address family: {bytes(argument)[:80]!r}")
    hostLength = values[1]
    rest = values[2 + hostLength :]
    if not rest or not 1 <= rest[0] <= 2 or len(rest) != 1 + rest[0]:
        raise ProtocolTextError(f"malformed LPRT port: {bytes(argument)[:80]!r}")
    packed = bytes(values[2 : 2 + hostLength])
    port = 0
    for byte in rest[1:]:
        port = port * 256 + byte
    return str(ipaddress.ip_address(packed)), port


def parseLpsvReply(text: bytes) -> tuple[str, int]:
    """Find the address in a 228 reply (inside the parentheses)."""
    match = _LONG_ADDRESS.search(bytes(text))
    if match is None:
        raise ProtocolTextError(f"no address in LPSV reply: {bytes(text)[:80]!r}")
    return parseLprtArgument(match.group(1))


# --- FEAT (RFC 2389) -------------------------------------------------------


def parseFeatReply(reply: Reply) -> list[bytes]:
    """
    The features listed in a FEAT reply, e.g. C{b"REST STREAM"}.  A reply
    other than 211 (FEAT not understood) lists none.
    """
    if reply.code != 211:
        return []
    prefix = b"211-"
    features = []
    for line in reply.lines[1:-1]:
        if line.startswith(prefix):
            # Some servers prefix every line with the code.
            line = line[len(prefix) :]
        feature = line.strip(b" \t")
        if feature:
            features.append(feature)
    return features


def formatFeatReply(features: Sequence[bytes]) -> Reply:
    """The 211 reply to FEAT listing C{features}, one per line."""
    lines = []
    for feature in features:
        feature = _asBytes(feature).strip(b" ")
        if not feature:
            raise ProtocolTextError("empty feature")
        lines.append(b" " + feature)
    return Reply.multi(211, [b"Features:", *lines, b"End"])


# --- Telnet (RFC 854), as much of it as FTP needs ---------------------------

IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
DM = 242
IP = 244
SE = 240

_DATA, _COMMAND, _OPTION, _SUBNEGOTIATION, _SUBNEGOTIATION_IAC, _AFTER_IP = range(6)

# Telnet sequences complete within one chunk, as regular expressions, so
# that a chunk full of them is filtered in C, not byte by byte: IAC IAC (a
# 0xFF data byte, captured), an option command and its option, a whole
# subnegotiation, IP (followed by a bare DM or by anything: not at the end
# of the chunk, where what follows is not known yet), any other command.
_OTHER_SEQUENCES = (
    rb"[\xfb-\xfe][\x00-\xff]"
    rb"|\xfa(?:[^\xff]|\xff[^\xf0])*+\xff\xf0"
    rb"|[^\xf4\xfa\xff\xfb-\xfe]"
)
_SEQUENCE = re.compile(rb"\xff(?:(\xff)|" + _OTHER_SEQUENCES + rb"|\xf4\xf2?)")
# Data bytes and complete sequences, as far as they go.
_RUN = re.compile(
    rb"(?:[^\xff]++|\xff(?:\xff|" + _OTHER_SEQUENCES + rb"|\xf4(?:\xf2|(?=[\x00-\xff]))))*+"
)
# A run that holds an IP: the sequences before it, then IAC IP.
_INTERRUPTED = re.compile(rb"(?:[^\xff]++|\xff(?:\xff|" + _OTHER_SEQUENCES + rb"))*+\xff\xf4")


def escapeIAC(data: bytes) -> bytes:
    """Double every 0xFF byte, as Telnet requires of data."""
    return bytes(data).replace(b"\xff", b"\xff\xff")


def _keepEscaped(match: re.Match[bytes]) -> bytes:
    return match.group(1) or b""


class TelnetFilter:
    """
    Remove Telnet commands from a control stream, incrementally: a command
    may be split across chunks.  C{IAC IAC} becomes one 0xFF byte; option
    negotiation, subnegotiation and other commands are dropped.

    @ivar sawInterrupt: set when C{IAC IP} (the urgent form of ABOR sends
        C{IAC IP IAC DM ABOR}) has been seen; the caller may reset it.
    """

    __slots__ = ('_state', 'sawInterrupt')

    def __init__(self) -> None:
        self._state = _DATA
        self.sawInterrupt = False

    def feed(self, data: bytes) -> bytes:
        """
        Return the data bytes of C{data}, Telnet commands removed.

        Linear in the length of C{data} with a small constant, however many
        Telnet sequences it holds: complete sequences are removed by regular
        expressions; only one cut by the chunk's end goes byte by byte.
        """
        data = bytes(data)
        if self._state == _DATA and b"\xff" not in data:
            return data
        output = bytearray()
        position = 0
        length = len(data)
        while position < length:
            state = self._state
            if state == _DATA:
                end = _RUN.match(data, position).end()
                if end > position:
                    run = data[position:end]
                    if not self.sawInterrupt and b"\xff\xf4" in run and _INTERRUPTED.match(run):
                        self.sawInterrupt = True
                    if b"\xff\xff" in run:
                        output += _SEQUENCE.sub(_keepEscaped, run)
                    else:
                        output += _SEQUENCE.sub(b"", run)
                    position = end
                    continue
                # An IAC whose sequence this chunk does not complete.
                position += 1
                self._state = _COMMAND
            elif state == _SUBNEGOTIATION:
                found = data.find(b"\xff", position)
                if found == -1:
                    break
                position = found + 1
                self._state = _SUBNEGOTIATION_IAC
            else:
                byte = data[position]
                position += 1
                self._state = self._commandByte(state, byte, output)
        return bytes(output)

    def _commandByte(self, state: int, byte: int, output: bytearray) -> int:
        """Handle one byte inside a Telnet command; return the next state."""
        if state == _COMMAND:
            if byte == IAC:
                output.append(IAC)
                return _DATA
            if byte in (WILL, WONT, DO, DONT):
                return _OPTION
            if byte == SB:
                return _SUBNEGOTIATION
            if byte == IP:
                self.sawInterrupt = True
                return _AFTER_IP
            return _DATA
        if state == _OPTION:
            return _DATA
        if state == _SUBNEGOTIATION_IAC:
            return _DATA if byte == SE else _SUBNEGOTIATION
        # _AFTER_IP: when a client sends the Synch's IAC as urgent data and
        # the socket lacks SO_OOBINLINE, the kernel removes that IAC and a
        # bare DM byte is left in the stream: drop it as well.
        if byte == DM:
            return _DATA
        if byte == IAC:
            return _COMMAND
        output.append(byte)
        return _DATA
