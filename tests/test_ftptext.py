"""
Tests for L{ftpproxy.wire.ftptext}: examples from the RFCs and from real servers,
the error cases, and properties checked with hypothesis.
"""

from __future__ import annotations

import time

import ipaddress

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpproxy.wire.ftptext import (
    MAX_LINE_LENGTH,
    MAX_REPLY_SIZE,
    ProtocolTextError,
    Reply,
    ReplyParser,
    TelnetFilter,
    escapeIAC,
    formatEprtArgument,
    formatEpsvReply,
    formatFeatReply,
    formatLprtArgument,
    formatLpsvReply,
    formatPasvReply,
    formatPortArgument,
    parseCommand,
    parseEprtArgument,
    parseEpsvArgument,
    parseEpsvReply,
    parseFeatReply,
    parseLprtArgument,
    parseLpsvReply,
    parsePasvReply,
    parsePortArgument,
)



# --- strategies ------------------------------------------------------------

lineText = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)
replyCodes = st.integers(100, 599)
ipv4Hosts = st.ip_addresses(v=4).map(str)
ipv6Hosts = st.ip_addresses(v=6).map(str)
ports = st.integers(1, 65535)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    """Replies as the constructors build them and as servers send them."""
    code = draw(replyCodes)
    kind = draw(st.sampled_from(["single", "bare", "multi", "raw"]))
    if kind == "single":
        return Reply.single(code, draw(lineText))
    if kind == "bare":
        return Reply(code, (b"%d" % code,))
    if kind == "multi":
        return Reply.multi(code, draw(st.lists(lineText, min_size=1, max_size=6)))
    # Raw multi-line reply: middle lines may repeat "ddd-" (IIS, some
    # others), start with other codes, or be empty; the last may be "ddd".
    prefix = b"%d" % code
    middle = draw(
        st.lists(
            st.one_of(lineText, lineText.map(lambda t: prefix + b"-" + t)),
            max_size=5,
        )
    )
    middle = [
        b" " + line if line == prefix or line.startswith(prefix + b" ") else line
        for line in middle
    ]
    last = draw(st.one_of(st.just(prefix), lineText.map(lambda t: prefix + b" " + t)))
    return Reply(code, (prefix + b"-" + draw(lineText), *middle, last))


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """C{data} cut at random places (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def serialise(reply: Reply, bareLF: bool) -> bytes:
    return b"".join(line + (b"\n" if bareLF else b"\r\n") for line in reply.lines)


def feedAll(parser: ReplyParser, chunks: list[bytes]) -> list[Reply]:
    result = []
    for chunk in chunks:
        result.extend(parser.feed(chunk))
    return result


# --- parseCommand ----------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"retr  a b ", (b"RETR", b" a b ")),
        (b"NOOP", (b"NOOP", b"")),
        (b"NOOP ", (b"NOOP", b"")),
        (b"USER anonymous", (b"USER", b"anonymous")),
        (b"Stor file with spaces.txt", (b"STOR", b"file with spaces.txt")),
        (b"EPSV ALL", (b"EPSV", b"ALL")),
        (b"EPRT |2|::1|5282|", (b"EPRT", b"|2|::1|5282|")),
        (b"PORT 127,0,0,1,4,1", (b"PORT", b"127,0,0,1,4,1")),
        (b"AUTH TLS", (b"AUTH", b"TLS")),
        (b"SITE CHMOD 755 x", (b"SITE", b"CHMOD 755 x")),
        (b"RETR caf\xc3\xa9 \xff", (b"RETR", b"caf\xc3\xa9 \xff")),
        (b"ABCDEFGH x", (b"ABCDEFGH", b"x")),
    ],
)
def test_parseCommand(line: bytes, expected: tuple[bytes, bytes]) -> None:
    assert parseCommand(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b" NOOP",
        b"ABCDEFGHI",
        b"ABCDEFGHI arg",
        b"RE1R x",
        b"RETR\tx",
        b"\xffABOR",
        b"\xc3\xa9TOR x",
        b"RETR a\r\nDELE b",
        b"RETR a\nDELE b",
        b"RETR a\rb",
        b"STOR\x00",
    ],
)
def test_parseCommandRejects(line: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parseCommand(line)


@settings(deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8), lineText)
def test_parseCommandKeepsArgument(verb: str, argument: bytes) -> None:
    assert parseCommand(verb.encode() + b" " + argument) == (verb.upper().encode(), argument)


@settings(deadline=None)
@given(st.binary(max_size=40))
def test_parseCommandRaisesOnlyProtocolTextError(line: bytes) -> None:
    try:
        verb, argument = parseCommand(line)
    except ProtocolTextError:
        return
    assert verb.isalpha() and verb == verb.upper() and 1 <= len(verb) <= 8
    assert line.upper().startswith(verb)


# --- Reply -----------------------------------------------------------------


def test_replySingle() -> None:
    reply = Reply.single(220, "Service ready")
    assert reply == Reply(220, (b"220 Service ready",))
    assert reply.toBytes() == b"220 Service ready\r\n"
    assert reply.text == b"Service ready"
    assert Reply.single(200, "caf\u00e9").lines == (b"200 caf\xc3\xa9",)


def test_replyMulti() -> None:
    reply = Reply.multi(230, ["Welcome", "to the proxy", "Login successful."])
    assert reply.toBytes() == b"230-Welcome\r\nto the proxy\r\n230 Login successful.\r\n"
    assert reply.text == b"Welcome"
    assert reply.lines == (b"230-Welcome", b"to the proxy", b"230 Login successful.")


def test_replyMultiWithOneTextIsSingle() -> None:
    assert Reply.multi(211, [b"End"]) == Reply.single(211, b"End")


def test_replyMultiProtectsLinesThatLookLikeReplies() -> None:
    """
    A middle line starting with three digits and a space, a dash or nothing
    gets a leading space, so that no client ends the reply there.
    """
    reply = Reply.multi(211, ["a", "211 early", "500-x", "226", "2261", "12 x", "b"])
    assert reply.lines == (
        b"211-a",
        b" 211 early",
        b" 500-x",
        b" 226",
        b"2261",
        b"12 x",
        b"211 b",
    )
    assert ReplyParser().feed(reply.toBytes()) == [reply]


@pytest.mark.parametrize("text", ["a\r\nb", "a\nb", "a\rb", b"x\n", b"\r"])
def test_replyRejectsLineBreaks(text: str | bytes) -> None:
    with pytest.raises(ProtocolTextError):
        Reply.single(200, text)
    with pytest.raises(ProtocolTextError):
        Reply.multi(200, ["first", text, "last"])


@pytest.mark.parametrize("code", [0, 99, 600, 1000, -200, True])
def test_replyRejectsBadCodes(code: int) -> None:
    with pytest.raises(ProtocolTextError):
        Reply.single(code, "x")
    with pytest.raises(ProtocolTextError):
        Reply.multi(code, ["x", "y"])


@pytest.mark.parametrize(
    "code, lines",
    [
        (200, ()),
        (200, (b"201 x",)),
        (200, (b"200x",)),
        (200, (b"200-x",)),
        (200, (b"200 x", b"200 y")),
        (200, (b"200-x", b"y")),
        (200, (b"200-x", b"200 early", b"200 y")),
        (200, (b"200-x", b"200", b"200 y")),
        (200, (b"200 x\nfoo",)),
    ],
)
def test_replyRejectsBadFraming(code: int, lines: tuple[bytes, ...]) -> None:
    with pytest.raises(ProtocolTextError):
        Reply(code, lines)


def test_replyIsFrozen() -> None:
    reply = Reply.single(200, "ok")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        reply.code = 500  # type: ignore[misc]


@pytest.mark.parametrize(
    "code, kind",
    [
        (110, "isPreliminary"),
        (150, "isPreliminary"),
        (200, "isPositive"),
        (257, "isPositive"),
        (331, "isIntermediate"),
        (350, "isIntermediate"),
        (421, "isError"),
        (530, "isError"),
        (599, "isError"),
    ],
)
def test_replyKinds(code: int, kind: str) -> None:
    reply = Reply.single(code, "x")
    kinds = ["isPreliminary", "isPositive", "isIntermediate", "isError"]
    assert [getattr(reply, k) for k in kinds] == [k == kind for k in kinds]


def test_replyTextOfBareCode() -> None:
    assert Reply(200, (b"200",)).text == b""
    assert Reply(211, (b"211-", b"211")).text == b""


# --- ReplyParser -----------------------------------------------------------


def test_parserRFC959MultiLineExample() -> None:
    """The example of RFC 959 section 4.2."""
    data = (
        b"123-First line\r\n"
        b"Second line\r\n"
        b"  234 A line beginning with numbers\r\n"
        b"123 The last line\r\n"
    )
    [reply] = ReplyParser().feed(data)
    assert reply.code == 123
    assert reply.lines == (
        b"123-First line",
        b"Second line",
        b"  234 A line beginning with numbers",
        b"123 The last line",
    )
    assert reply.toBytes() == data
    assert reply.text == b"First line"


def test_parserServerSessions() -> None:
    """Replies as vsftpd, ProFTPD, pyftpdlib and IIS send them."""
    data = (
        b"220 (vsFTPd 3.0.3)\r\n"
        b"220 ProFTPD Server (Debian) [127.0.0.1]\r\n"
        b"220 pyftpdlib 2.2.0 ready.\r\n"
        # IIS repeats the code on every line of a multi-line reply.
        b"230-Welcome to IIS\r\n230-Second line\r\n230 User logged in.\r\n"
        b"331 Please specify the password.\r\n"
        b"257 \"/home/user\" is the current directory\r\n"
        b"530 Login incorrect.\r\n"
        b"150 Opening BINARY mode data connection for x (3 bytes).\r\n"
        b"226 Transfer complete.\r\n"
        b"426 Connection closed; transfer aborted.\r\n"
        b"225 ABOR command successful.\r\n"
        b"221 Goodbye.\r\n"
    )
    replies = ReplyParser().feed(data)
    assert [r.code for r in replies] == [220, 220, 220, 230, 331, 257, 530, 150, 226, 426, 225, 221]
    assert replies[3].lines == (b"230-Welcome to IIS", b"230-Second line", b"230 User logged in.")
    assert b"".join(r.toBytes() for r in replies) == data


def test_parserBareLFAndBareCode() -> None:
    parser = ReplyParser()
    assert parser.feed(b"200\n211-x\n211\n331 pw\r\n") == [
        Reply(200, (b"200",)),
        Reply(211, (b"211-x", b"211")),
        Reply(331, (b"331 pw",)),
    ]


def test_parserMultiLineEndsOnlyAtSameCode() -> None:
    """Other codes, "ddd-" lines and "dddx" do not end a multi-line reply."""
    parser = ReplyParser()
    assert parser.feed(b"250-a\r\n200 b\r\n250-c\r\n2500\r\n250x\r\n") == []
    assert parser.hasPending
    [reply] = parser.feed(b"250 end\r\n")
    assert reply.lines == (b"250-a", b"200 b", b"250-c", b"2500", b"250x", b"250 end")
    assert not parser.hasPending


def test_parserKeepsPartialInput() -> None:
    parser = ReplyParser()
    assert parser.feed(b"22") == []
    assert parser.hasPending
    assert parser.feed(b"0 hello\r") == []
    assert parser.feed(b"\n2") == [Reply.single(220, b"hello")]
    assert parser.feed(b"00 ok\r\n") == [Reply.single(200, b"ok")]
    assert not parser.hasPending


def test_parserKeepsBytesExactly() -> None:
    """Odd bytes in the text are kept: the reply is relayed unchanged."""
    data = b"200 \x00\xff\xfe caf\xc3\xa9 \tx\r\r\n"
    [reply] = ReplyParser().feed(data)
    assert reply.lines == (b"200 \x00\xff\xfe caf\xc3\xa9 \tx\r",)
    assert reply.toBytes() == data


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"\r\n",
        b" 220 x\r\n",
        b"22 x\r\n",
        b"22\r\n",
        b"220x\r\n",
        b"2a0 x\r\n",
        b"020 x\r\n",
        b"620 x\r\n",
        b"999 x\r\n",
        b"220 ok\r\nHTTP/1.1 200 OK\r\n",
        b"\xef\xbb\xbf220 x\r\n",
    ],
)
def test_parserRejectsNonReplies(data: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        ReplyParser().feed(data)


def test_parserErrorIsFinal() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolTextError):
        parser.feed(b"junk\r\n")
    with pytest.raises(ProtocolTextError):
        parser.feed(b"200 ok\r\n")


def test_parserLineLimit() -> None:
    line = b"200 " + b"x" * (MAX_LINE_LENGTH - 4)
    assert ReplyParser().feed(line + b"\r\n") == [Reply(200, (line,))]
    with pytest.raises(ProtocolTextError):
        ReplyParser().feed(line + b"x\r\n")


def test_parserLineLimitBeforeLineEnd() -> None:
    """
    A long line is refused as soon as it is too long, before its CRLF comes,
    however it is chunked; a CR at the limit waits for its LF.
    """
    line = b"200 " + b"x" * (MAX_LINE_LENGTH - 4)
    parser = ReplyParser()
    for start in range(0, len(line), 1000):
        assert parser.feed(line[start : start + 1000]) == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [Reply(200, (line,))]

    parser = ReplyParser()
    assert parser.feed(line) == []
    with pytest.raises(ProtocolTextError):
        parser.feed(b"y")
    with pytest.raises(ProtocolTextError):
        ReplyParser().feed(b"2" * (10 * MAX_LINE_LENGTH))

    parser = ReplyParser()
    assert parser.feed(line + b"\r") == []
    with pytest.raises(ProtocolTextError):
        parser.feed(b"\rz")


def test_parserReplySizeLimit() -> None:
    body = b"x" * 1000
    lineCount = MAX_REPLY_SIZE // (len(body) + 2)
    parser = ReplyParser()
    assert parser.feed(b"211-start\r\n") == []
    with pytest.raises(ProtocolTextError):
        for _ in range(lineCount + 1):
            assert parser.feed(body + b"\r\n") == []

    parser = ReplyParser(maxReplySize=40)
    [reply] = parser.feed(b"211-a\r\n" + b"b" * 20 + b"\r\n211 c\r\n")
    assert len(reply.toBytes()) == 7 + 22 + 7
    parser = ReplyParser(maxReplySize=40)
    with pytest.raises(ProtocolTextError):
        parser.feed(b"211-a\r\n" + b"b" * 25 + b"\r\n211 c\r\n")


def test_parserBigStreamInSmallChunks() -> None:
    """Many replies fed in small chunks: no re-scanning of what was parsed."""
    reply = Reply.multi(211, [b"Features:", *[b" FEAT%d" % i for i in range(100)], b"End"])
    data = reply.toBytes() * 200
    parser = ReplyParser()
    got = feedAll(parser, [data[i : i + 37] for i in range(0, len(data), 37)])
    assert got == [reply] * 200


@settings(deadline=None)
@given(st.lists(replies(), max_size=6), st.booleans(), st.data())
def test_parserRoundtripAnyChunking(
    expected: list[Reply], bareLF: bool, data: st.DataObject
) -> None:
    stream = b"".join(serialise(reply, bareLF) for reply in expected)
    chunks = data.draw(chunked(stream))
    parser = ReplyParser()
    assert feedAll(parser, chunks) == expected
    assert not parser.hasPending
    if not bareLF:
        assert b"".join(reply.toBytes() for reply in expected) == stream


@settings(deadline=None)
@given(replyCodes, st.lists(lineText, min_size=1, max_size=6))
def test_replyMultiRoundtrip(code: int, texts: list[bytes]) -> None:
    reply = Reply.multi(code, texts)
    assert ReplyParser().feed(reply.toBytes()) == [reply]
    assert reply.text == texts[0]
    if len(texts) > 1:
        assert reply.lines[-1] == b"%d %s" % (code, texts[-1])
        for text, line in zip(texts[1:-1], reply.lines[1:-1]):
            assert line in (text, b" " + text)


@settings(deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.sampled_from([b"211", b"-", b" ", b"\r", b"\n", b"x", b"2", b"211 ", b"\r\n"]),
            max_size=40,
        ).map(b"".join),
    ),
    st.data(),
)
def test_parserArbitraryBytes(stream: bytes, data: st.DataObject) -> None:
    """
    On any input the parser returns replies or raises ProtocolTextError,
    and chunking makes no difference to which.
    """
    outcomes = []
    for chunks in ([stream], data.draw(chunked(stream))):
        parser = ReplyParser(maxLineLength=30, maxReplySize=100)
        try:
            outcomes.append((feedAll(parser, chunks), parser.hasPending))
        except ProtocolTextError:
            outcomes.append("error")
    assert outcomes[0] == outcomes[1]
    if outcomes[0] != "error":
        replies_, _ = outcomes[0]
        assert stream.replace(b"\r\n", b"\n").startswith(
            b"".join(r.toBytes() for r in replies_).replace(b"\r\n", b"\n")
        )


# --- PASV ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # RFC 959 / vsftpd / ProFTPD / IIS
        (b"227 Entering Passive Mode (127,0,0,1,4,1)", ("127.0.0.1", 1025)),
        (b"227 Entering Passive Mode (127,0,0,1,195,149).", ("127.0.0.1", 50069)),
        (b"Entering Passive Mode (10,0,0,5,195,80).", ("10.0.0.5", 50000)),
        # pyftpdlib
        (b"227 Entering passive mode (127,0,0,1,207,53).", ("127.0.0.1", 53045)),
        # RFC 1123 section 4.1.2.6 forms
        (b"227 =127,0,0,1,4,1", ("127.0.0.1", 1025)),
        (b"227 Entering Passive Mode 127,0,0,1,4,1.", ("127.0.0.1", 1025)),
        (b"227 Entering Passive Mode. 127,0,0,1,4,1", ("127.0.0.1", 1025)),
        (b"227 Passive 127,000,000,001,004,001", ("127.0.0.1", 1025)),
        (b"227 Passive (127, 0, 0, 1, 4, 1)", ("127.0.0.1", 1025)),
        (b"227 Entering Passive Mode (255,255,255,255,255,255)", ("255.255.255.255", 65535)),
        (b"227 Entering Passive Mode (0,0,0,0,0,0)", ("0.0.0.0", 0)),
        # Only the first six-number run counts; shorter runs are skipped.
        (b"227 Mode 1,2 (127,0,0,1,4,1)", ("127.0.0.1", 1025)),
        (b"227-Entering\r\n227 Passive Mode (127,0,0,2,4,1)", ("127.0.0.2", 1025)),
    ],
)
def test_parsePasvReply(text: bytes, expected: tuple[str, int]) -> None:
    assert parsePasvReply(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"227 Entering Passive Mode",
        b"227 Entering Passive Mode (127,0,0,1,4)",
        b"227 Entering Passive Mode (127,0,0,256,4,1)",
        b"227 Entering Passive Mode (127,0,0,1,4,1000)",
        b"227 Entering Passive Mode (1127,0,0,1,4,1)",
        b"227 Entering Passive Mode (127;0;0;1;4;1)",
        b"227 (" + b"9" * 5000 + b",0,0,1,4,1)",
    ],
)
def test_parsePasvReplyRejects(text: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parsePasvReply(text)


def test_formatPasvReply() -> None:
    reply = formatPasvReply("127.0.0.1", 1025)
    assert reply.toBytes() == b"227 Entering Passive Mode (127,0,0,1,4,1).\r\n"
    # What a dual-stack socket reports for an IPv4 peer.
    assert formatPasvReply("::ffff:127.0.0.2", 65535).text == (
        b"Entering Passive Mode (127,0,0,2,255,255)."
    )


@pytest.mark.parametrize("host, port", [("::1", 1025), ("nonsense", 1025), ("127.0.0.1", 0), ("127.0.0.1", 65536)])
def test_formatPasvReplyRejects(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        formatPasvReply(host, port)


@settings(deadline=None)
@given(ipv4Hosts, ports)
def test_pasvRoundtrip(host: str, port: int) -> None:
    reply = formatPasvReply(host, port)
    assert parsePasvReply(reply.text) == (host, port)
    assert parsePasvReply(reply.lines[0]) == (host, port)
    assert ReplyParser().feed(reply.toBytes()) == [reply]


# --- PORT ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, expected",
    [
        (b"127,0,0,1,4,1", ("127.0.0.1", 1025)),
        (b"132,235,1,2,24,131", ("132.235.1.2", 6275)),
        (b" 127,0,0,1,4,1 ", ("127.0.0.1", 1025)),
        (b"127, 0 ,0,1,4, 1", ("127.0.0.1", 1025)),
        (b"127,000,0,01,4,1", ("127.0.0.1", 1025)),
    ],
)
def test_parsePortArgument(argument: bytes, expected: tuple[str, int]) -> None:
    assert parsePortArgument(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        b"127,0,0,1,4",
        b"127,0,0,1,4,1,5",
        b"127,0,0,256,4,1",
        b"127,0,0,1,4,-1",
        b"127,0,0,1,4,",
        b"127.0.0.1,4,1",
        b"127,0,0,1,4,1x",
        b"127,0,0,1,4,0001",
        b"\xd9\xa1,0,0,1,4,1",
    ],
)
def test_parsePortArgumentRejects(argument: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parsePortArgument(argument)


def test_formatPortArgument() -> None:
    assert formatPortArgument("132.235.1.2", 6275) == b"132,235,1,2,24,131"
    with pytest.raises(ValueError):
        formatPortArgument("::1", 21)


@settings(deadline=None)
@given(ipv4Hosts, st.integers(0, 65535))
def test_portRoundtrip(host: str, port: int) -> None:
    assert parsePortArgument(formatPortArgument(host, port)) == (host, port)


# --- EPSV ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # RFC 2428, vsftpd, Alfresco, IIS
        (b"229 Entering Extended Passive Mode (|||6446|)", 6446),
        (b"Entering Extended Passive Mode (|||50001|)", 50001),
        # pyftpdlib
        (b"229 Entering extended passive mode (|||55841|).", 55841),
        (b"229 Entering Extended Passive Mode (!!!1!)", 1),
        (b"229 EPSV ok (###65535#)", 65535),
        (b"229 (|||01025|)", 1025),
        (b"229 (x) (|||2000|)", 2000),
    ],
)
def test_parseEpsvReply(text: bytes, expected: int) -> None:
    assert parseEpsvReply(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        b"229 Entering Extended Passive Mode",
        b"229 Entering Extended Passive Mode (|||0|)",
        b"229 Entering Extended Passive Mode (|||65536|)",
        b"229 Entering Extended Passive Mode (|||123456|)",
        b"229 Entering Extended Passive Mode (||6446|)",
        b"229 Entering Extended Passive Mode (|!|6446|)",
        b"229 Entering Extended Passive Mode (|||6446!)",
        b"229 Entering Extended Passive Mode (|||6446|",
        b"229 Entering Extended Passive Mode (111644651)",
        b"229 Entering Extended Passive Mode (   6446 )",
        b"229 Entering Extended Passive Mode (|1|127.0.0.1|6446|)",
    ],
)
def test_parseEpsvReplyRejects(text: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parseEpsvReply(text)


def test_formatEpsvReply() -> None:
    assert formatEpsvReply(6446).toBytes() == b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    for port in (0, 65536):
        with pytest.raises(ValueError):
            formatEpsvReply(port)


@settings(deadline=None)
@given(ports)
def test_epsvRoundtrip(port: int) -> None:
    reply = formatEpsvReply(port)
    assert parseEpsvReply(reply.text) == port
    assert parseEpsvReply(reply.toBytes()) == port


@pytest.mark.parametrize(
    "argument, expected",
    [(b"", None), (b" ", None), (b"ALL", "ALL"), (b"all", "ALL"), (b"aLl", "ALL"), (b"1", 1), (b"2", 2)],
)
def test_parseEpsvArgument(argument: bytes, expected: object) -> None:
    assert parseEpsvArgument(argument) == expected


@pytest.mark.parametrize("argument", [b"3", b"0", b"12", b"ALLX", b"ALL 1", b"-1", b"\xff"])
def test_parseEpsvArgumentRejects(argument: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parseEpsvArgument(argument)


# --- EPRT ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, expected",
    [
        # RFC 2428 examples
        (b"|1|132.235.1.2|6275|", (1, "132.235.1.2", 6275)),
        (b"|2|1080::8:800:200C:417A|5282|", (2, "1080::8:800:200c:417a", 5282)),
        (b"|2|::1|5282|", (2, "::1", 5282)),
        (b"|2|0:0:0:0:0:0:0:1|5282|", (2, "::1", 5282)),
        (b"!1!127.0.0.1!1025!", (1, "127.0.0.1", 1025)),
        (b" |1|127.0.0.1|1025| ", (1, "127.0.0.1", 1025)),
        (b"|2|::ffff:127.0.0.1|1025|", (2, "::ffff:7f00:1", 1025)),
        (b"|1|127.0.0.1|65535|", (1, "127.0.0.1", 65535)),
    ],
)
def test_parseEprtArgument(argument: bytes, expected: tuple[int, str, int]) -> None:
    assert parseEprtArgument(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        b"|",
        b"||",
        b"|1|127.0.0.1|1025",
        b"1|127.0.0.1|1025|",
        b"|1|127.0.0.1|1025|x",
        b"|3|127.0.0.1|1025|",
        b"||127.0.0.1|1025|",
        b"|1|::1|1025|",
        b"|2|127.0.0.1|1025|",
        b"|1|127.0.0.256|1025|",
        b"|1|localhost|1025|",
        b"|1|127.0.0.1|65536|",
        b"|1|127.0.0.1|-1|",
        b"|1|127.0.0.1||",
        b"|1|127.0.0.1|1025|1|",
        b":2:::1:1025:",
        b"|2|fe80::1%eth0|1025|",
        b"\x7f1\x7f127.0.0.1\x7f1025\x7f",
        b" 1 127.0.0.1 1025 ",
        b"|1|127.0.0.1|\xd9\xa1|",
        b"|1|\xff|1025|",
    ],
)
def test_parseEprtArgumentRejects(argument: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parseEprtArgument(argument)


def test_formatEprtArgument() -> None:
    assert formatEprtArgument("132.235.1.2", 6275) == b"|1|132.235.1.2|6275|"
    assert formatEprtArgument("1080:0:0:0:8:800:200C:417A", 5282) == b"|2|1080::8:800:200c:417a|5282|"
    assert formatEprtArgument("::ffff:127.0.0.1", 1025) == b"|1|127.0.0.1|1025|"
    with pytest.raises(ValueError):
        formatEprtArgument("example.com", 21)


@settings(deadline=None)
@given(st.one_of(ipv4Hosts, ipv6Hosts), st.integers(0, 65535))
def test_eprtRoundtrip(host: str, port: int) -> None:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    assert parseEprtArgument(formatEprtArgument(host, port)) == (address.version // 2 - 1, str(address), port)


# --- LPSV / LPRT -----------------------------------------------------------


def test_formatLpsvReply() -> None:
    assert formatLpsvReply("127.0.0.1", 1025).toBytes() == (
        b"228 Entering Long Passive Mode (4,4,127,0,0,1,2,4,1)\r\n"
    )
    assert formatLpsvReply("::1", 1025).text == (
        b"Entering Long Passive Mode (6,16,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,2,4,1)"
    )


@pytest.mark.parametrize(
    "argument, expected",
    [
        (b"4,4,132,235,1,2,2,24,131", ("132.235.1.2", 6275)),
        (b"6,16,16,128,0,0,0,0,0,0,0,8,8,0,32,12,65,122,2,20,162", ("1080::8:800:200c:417a", 5282)),
        (b" 4, 4,127,0,0,1,2,4,1 ", ("127.0.0.1", 1025)),
        (b"4,4,127,0,0,1,1,80", ("127.0.0.1", 80)),
    ],
)
def test_parseLprtArgument(argument: bytes, expected: tuple[str, int]) -> None:
    assert parseLprtArgument(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        b"4",
        b"4,4,127,0,0,1,2,4",
        b"4,4,127,0,0,1,2,4,1,0",
        b"4,16,127,0,0,1,2,4,1",
        b"6,4,127,0,0,1,2,4,1",
        b"5,4,127,0,0,1,2,4,1",
        b"4,4,127,0,0,1,3,0,4,1",
        b"4,4,127,0,0,1,0",
        b"4,4,127,0,0,256,2,4,1",
        b"4,4,127,0,0,1",
    ],
)
def test_parseLprtArgumentRejects(argument: bytes) -> None:
    with pytest.raises(ProtocolTextError):
        parseLprtArgument(argument)


@settings(deadline=None)
@given(st.one_of(ipv4Hosts, ipv6Hosts), ports)
def test_longRoundtrip(host: str, port: int) -> None:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)
    expected = (str(mapped or address), port)
    assert parseLprtArgument(formatLprtArgument(host, port)) == expected
    assert parseLpsvReply(formatLpsvReply(host, port).text) == expected


# --- FEAT ------------------------------------------------------------------


def test_parseFeatReplyRFC2389() -> None:
    data = (
        b"211-Extensions supported:\r\n"
        b" MLST size*;create;modify*;perm;media-type\r\n"
        b" SIZE\r\n"
        b" COMPRESSION\r\n"
        b" MDTM\r\n"
        b"211 END\r\n"
    )
    [reply] = ReplyParser().feed(data)
    assert parseFeatReply(reply) == [
        b"MLST size*;create;modify*;perm;media-type",
        b"SIZE",
        b"COMPRESSION",
        b"MDTM",
    ]


@pytest.mark.parametrize(
    "data, expected",
    [
        (  # vsftpd
            b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n"
            b" SIZE\r\n TVFS\r\n211 End\r\n",
            [b"EPRT", b"EPSV", b"MDTM", b"PASV", b"REST STREAM", b"SIZE", b"TVFS"],
        ),
        (  # ProFTPD with mod_tls
            b"211-Features:\r\n MFF modify;UNIX.group;UNIX.mode;\r\n REST STREAM\r\n"
            b" MLST modify*;perm*;size*;type*;unique*;UNIX.group*;UNIX.mode*;UNIX.owner*;\r\n"
            b" UTF8\r\n EPRT\r\n EPSV\r\n MDTM\r\n SIZE\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End\r\n",
            [
                b"MFF modify;UNIX.group;UNIX.mode;",
                b"REST STREAM",
                b"MLST modify*;perm*;size*;type*;unique*;UNIX.group*;UNIX.mode*;UNIX.owner*;",
                b"UTF8",
                b"EPRT",
                b"EPSV",
                b"MDTM",
                b"SIZE",
                b"AUTH TLS",
                b"PBSZ",
                b"PROT",
            ],
        ),
        (  # pyftpdlib
            b"211-Features supported:\r\n EPRT\r\n EPSV\r\n MDTM\r\n MLST type*;perm*;size*;"
            b"modify*;unique*;unix.mode;unix.uid;unix.gid;\r\n REST STREAM\r\n SIZE\r\n"
            b" TVFS\r\n UTF8\r\n211 End FEAT.\r\n",
            [
                b"EPRT",
                b"EPSV",
                b"MDTM",
                b"MLST type*;perm*;size*;modify*;unique*;unix.mode;unix.uid;unix.gid;",
                b"REST STREAM",
                b"SIZE",
                b"TVFS",
                b"UTF8",
            ],
        ),
        (  # IIS
            b"211-Extended features supported:\r\n LANG EN*\r\n UTF8\r\n"
            b" AUTH TLS;TLS-C;SSL;TLS-P;\r\n PBSZ\r\n PROT C;P;\r\n CCC\r\n HOST\r\n"
            b" SIZE\r\n MDTM\r\n REST STREAM\r\n211 END\r\n",
            [
                b"LANG EN*",
                b"UTF8",
                b"AUTH TLS;TLS-C;SSL;TLS-P;",
                b"PBSZ",
                b"PROT C;P;",
                b"CCC",
                b"HOST",
                b"SIZE",
                b"MDTM",
                b"REST STREAM",
            ],
        ),
        (  # code repeated on every line, odd spacing, blank line
            b"211-Features:\r\n211-MDTM\r\n211- SIZE \r\n\r\n  UTF8\r\n211 End\r\n",
            [b"MDTM", b"SIZE", b"UTF8"],
        ),
        (b"211 No features\r\n", []),
        (b"211-Features:\r\n211 End\r\n", []),
        (b"500 FEAT not understood.\r\n", []),
        (b"502-Not\r\n implemented\r\n502 sorry\r\n", []),
    ],
)
def test_parseFeatReplyServers(data: bytes, expected: list[bytes]) -> None:
    [reply] = ReplyParser().feed(data)
    assert parseFeatReply(reply) == expected


def test_formatFeatReply() -> None:
    reply = formatFeatReply([b"AUTH TLS", b"PBSZ", b"PROT", b"EPSV", b"EPRT", b"REST STREAM"])
    assert reply.toBytes() == (
        b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPSV\r\n EPRT\r\n REST STREAM\r\n211 End\r\n"
    )
    assert formatFeatReply([]).toBytes() == b"211-Features:\r\n211 End\r\n"
    for bad in ([b"A\r\nB"], [b""], [b"X\n"]):
        with pytest.raises(ProtocolTextError):
            formatFeatReply(bad)


@settings(deadline=None)
@given(
    st.lists(
        lineText.map(lambda b: b.strip(b" \t")).filter(bool),
        max_size=10,
    )
)
def test_featRoundtrip(features: list[bytes]) -> None:
    reply = formatFeatReply(features)
    assert ReplyParser().feed(reply.toBytes()) == [reply]
    assert parseFeatReply(reply) == features


# --- Telnet ----------------------------------------------------------------

IAC, IP, DM, WILL, WONT, DO, DONT, SB, SE, AYT, NOP = (
    b"\xff", b"\xf4", b"\xf2", b"\xfb", b"\xfc", b"\xfd", b"\xfe", b"\xfa", b"\xf0", b"\xf6", b"\xf1"
)


def test_escapeIAC() -> None:
    assert escapeIAC(b"a\xffb\xff\xff") == b"a\xff\xffb\xff\xff\xff\xff"
    assert escapeIAC(b"plain") == b"plain"


@pytest.mark.parametrize(
    "data, expected, interrupt",
    [
        (b"NOOP\r\n", b"NOOP\r\n", False),
        # ABOR in its urgent form (RFC 959 section 4.1.3)
        (IAC + IP + IAC + DM + b"ABOR\r\n", b"ABOR\r\n", True),
        # The same when the kernel took the second IAC out of band
        # (BSD ftp sends "IAC IP IAC" urgent; no SO_OOBINLINE).
        (IAC + IP + DM + b"ABOR\r\n", b"ABOR\r\n", True),
        (b"RETR a" + IAC + IAC + b"b\r\n", b"RETR a\xffb\r\n", False),
        (IAC + WILL + b"\x01" + IAC + WONT + b"\x03" + IAC + DO + IAC + IAC + DONT + b"\x22NOOP", b"NOOP", False),
        (IAC + SB + b"\x18\x00xterm" + IAC + IAC + b"\x01" + IAC + SE + b"QUIT", b"QUIT", False),
        (IAC + SB + b"\x18" + IAC + b"x" + IAC + SE + b"QUIT", b"QUIT", False),
        (IAC + AYT + b"PWD" + IAC + NOP + b"\r\n", b"PWD\r\n", False),
        (IAC + b"\x00" + b"X", b"X", False),
        (b"A" + IAC + IP + b"B", b"AB", True),
        (IAC + IP + IAC + IAC, b"\xff", True),
    ],
)
def test_telnetFilter(data: bytes, expected: bytes, interrupt: bool) -> None:
    telnet = TelnetFilter()
    assert telnet.feed(data) == expected
    assert telnet.sawInterrupt is interrupt


def test_telnetFilterAcrossChunks() -> None:
    telnet = TelnetFilter()
    out = [telnet.feed(bytes([byte])) for byte in IAC + IP + IAC + DM + b"AB" + IAC + IAC + IAC + WILL + b"\x01C"]
    assert b"".join(out) == b"AB\xffC"
    assert telnet.sawInterrupt
    telnet.sawInterrupt = False
    assert telnet.feed(b"D") == b"D"
    assert not telnet.sawInterrupt


telnetBytes = st.lists(
    st.one_of(
        st.binary(max_size=8),
        st.sampled_from([IAC, IP, DM, WILL, WONT, DO, DONT, SB, SE, AYT, NOP, IAC + IAC, IAC + SE, IAC + IP]),
    ),
    max_size=30,
).map(b"".join)


@settings(deadline=None)
@given(telnetBytes, st.data())
def test_telnetFilterAnyChunking(data: bytes, draw: st.DataObject) -> None:
    whole = TelnetFilter()
    expected = whole.feed(data)
    pieces = TelnetFilter()
    assert b"".join(pieces.feed(chunk) for chunk in draw.draw(chunked(data))) == expected
    assert pieces.sawInterrupt == whole.sawInterrupt
    assert pieces._state == whole._state
    assert len(expected) <= len(data)


@settings(deadline=None)
@given(st.binary(max_size=200), st.data())
def test_telnetEscapeRoundtrip(data: bytes, draw: st.DataObject) -> None:
    telnet = TelnetFilter()
    chunks = draw.draw(chunked(escapeIAC(data)))
    assert b"".join(telnet.feed(chunk) for chunk in chunks) == data
    assert not telnet.sawInterrupt


def referenceTelnet(data: bytes) -> tuple[bytes, bool]:
    """
    Telnet commands removed byte by byte, as RFC 854 reads them (and as
    the filter did before it used regular expressions): the reference the
    filter is held to.
    """
    out = bytearray()
    interrupted = False
    state = "data"
    for byte in data:
        if state == "data":
            if byte == 0xFF:
                state = "command"
            else:
                out.append(byte)
        elif state == "command":
            if byte == 0xFF:
                out.append(byte)
                state = "data"
            elif byte in (0xFB, 0xFC, 0xFD, 0xFE):
                state = "option"
            elif byte == 0xFA:
                state = "sb"
            elif byte == 0xF4:
                interrupted = True
                state = "afterIP"
            else:
                state = "data"
        elif state == "option":
            state = "data"
        elif state == "sb":
            if byte == 0xFF:
                state = "sbIAC"
        elif state == "sbIAC":
            state = "data" if byte == 0xF0 else "sb"
        else:  # afterIP: a bare DM is dropped
            if byte == 0xFF:
                state = "command"
            elif byte != 0xF2:
                out.append(byte)
                state = "data"
            else:
                state = "data"
    return bytes(out), interrupted


iacHeavy = st.lists(
    st.one_of(
        st.binary(max_size=3),
        st.sampled_from([IAC, IP, DM, WILL, SB, SE, NOP, IAC + IAC, IAC + SE, IAC + IP, IAC + SB]),
    ),
    max_size=60,
).map(b"".join)


@settings(deadline=None, max_examples=500)
@given(st.one_of(iacHeavy, st.binary(max_size=200)), st.data())
def test_telnetFilterIsTheReference(data: bytes, draw: st.DataObject) -> None:
    """
    However the stream is cut, the filter removes exactly what the
    byte-by-byte reference removes, and sees the same interrupts.
    """
    telnet = TelnetFilter()
    out = b"".join(telnet.feed(chunk) for chunk in draw.draw(chunked(data)))
    assert (out, telnet.sawInterrupt) == referenceTelnet(data)


@pytest.mark.parametrize(
    "sequence", [IAC + NOP, IAC + IAC, IAC + IP, IAC + WILL + b"\x01", IAC + SB + b"x" + IAC + SE]
)
def test_telnetFloodIsCheap(sequence: bytes) -> None:
    """
    A read full of Telnet sequences is filtered in C, not byte by byte:
    64 KiB of them take a few milliseconds (byte by byte: about 60), here
    bounded generously for a loaded machine.
    """
    data = sequence * (65536 // len(sequence))
    started = time.perf_counter()
    out = TelnetFilter().feed(data)
    elapsed = time.perf_counter() - started
    assert out == referenceTelnet(data)[0]
    assert elapsed < 0.040, f"{elapsed * 1000:.1f} ms"


# --- every parser, on any bytes ----------------------------------------------

parsers = [
    parseCommand,
    parsePasvReply,
    parsePortArgument,
    parseEpsvReply,
    parseEpsvArgument,
    parseEprtArgument,
    parseLprtArgument,
    parseLpsvReply,
]

# Bytes that resemble the inputs, so that the fuzzing reaches deep paths.
protocolish = st.lists(
    st.one_of(
        st.binary(max_size=4),
        st.sampled_from(
            [b"|", b"1", b"2", b"4", b"6", b"16", b"255", b"256", b"65535", b"65536", b"::",
             b":", b".", b",", b" ", b"(", b")", b"127.0.0.1", b"::1", b"%", b"ALL", b"9" * 30]
        ),
    ),
    max_size=30,
).map(b"".join)


@settings(deadline=None, max_examples=800)
@given(st.sampled_from(parsers), st.one_of(st.binary(max_size=100), protocolish))
def test_parsersRaiseOnlyProtocolTextError(parser, data: bytes) -> None:
    """
    Anything but ProtocolTextError fails the test.  (Not parametrized:
    pytest-twisted breaks parametrized hypothesis tests.)
    """
    try:
        parser(data)
    except ProtocolTextError:
        pass


@settings(deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=5))
def test_replyConstructorsRaiseOnlyProtocolTextError(texts: list[bytes]) -> None:
    for build in (lambda: Reply.multi(211, texts), lambda: formatFeatReply(texts)):
        try:
            reply = build()
        except ProtocolTextError:
            continue
        assert ReplyParser().feed(reply.toBytes()) == [reply]
