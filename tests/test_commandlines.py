"""
Tests for L{ftpproxy.wire.commandlines}: cutting a client's control stream into
command lines, with Telnet removed and a bound on line length.
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpproxy.wire.commandlines import CommandLineSplitter, LineTooLong
from ftpproxy.wire.ftptext import escapeIAC

TOO_LONG = LineTooLong()


def fed(splitter: CommandLineSplitter, data: bytes) -> list[bytes | LineTooLong]:
    """
    Feed C{data} and take every line it completed.
    """
    splitter.feed(data)
    return splitter.lines()


def split(data: bytes, limit: int = 512) -> list[bytes | LineTooLong]:
    return fed(CommandLineSplitter(limit), data)


def feedAll(splitter: CommandLineSplitter, chunks: list[bytes]) -> list[bytes | LineTooLong]:
    lines: list[bytes | LineTooLong] = []
    for chunk in chunks:
        lines.extend(fed(splitter, chunk))
    return lines


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class TestLineEnds:
    def test_crlf(self) -> None:
        assert split(b"USER anonymous\r\nPASS x\r\n") == [
            b"USER anonymous",
            b"PASS x",
        ]

    def test_bareLF(self) -> None:
        """
        Some clients end lines with LF alone.
        """
        assert split(b"NOOP\nPWD\r\nSYST\n") == [b"NOOP", b"PWD", b"SYST"]

    def test_onlyOneCRRemoved(self) -> None:
        """
        A CR inside the line, or a second one before the line end, is part
        of the argument (file names may contain it).
        """
        assert split(b"DELE a\rb\r\r\n") == [b"DELE a\rb\r"]

    def test_emptyLine(self) -> None:
        assert split(b"\r\n\n") == [b"", b""]

    def test_partialLineKept(self) -> None:
        splitter = CommandLineSplitter(512)
        assert fed(splitter, b"NO") == []
        assert splitter.pending == b"NO"
        assert fed(splitter, b"OP\r") == []
        assert fed(splitter, b"\nPW") == [b"NOOP"]
        assert splitter.pending == b"PW"

    def test_discard(self) -> None:
        """
        C{discard} returns and forgets what follows the last line (the bytes
        after AUTH TLS, which must never be executed).
        """
        splitter = CommandLineSplitter(512)
        assert fed(splitter, b"AUTH TLS\r\nUSER evil") == [b"AUTH TLS"]
        assert splitter.discard() == b"USER evil"
        assert splitter.pending == b""
        assert fed(splitter, b"\r\nNOOP\r\n") == [b"", b"NOOP"]


    def test_discardLinesNotTaken(self) -> None:
        """
        Lines received but not yet taken are forgotten by C{discard} too, and
        returned with the partial line after them.
        """
        splitter = CommandLineSplitter(512)
        splitter.feed(b"AUTH TLS\r\nUSER evil\r\nPASS x\r\nNO")
        assert splitter.nextLine() == b"AUTH TLS"
        assert splitter.waiting == 2
        assert splitter.discard() == b"USER evil\r\nPASS x\r\nNO"
        assert splitter.waiting == 0
        assert splitter.nextLine() is None

    def test_oneLineAtATime(self) -> None:
        """
        Lines are taken one at a time, in order; C{waiting} counts those
        complete and not taken.
        """
        splitter = CommandLineSplitter(512)
        splitter.feed(b"A\r\nB\nC")
        assert splitter.waiting == 2
        assert splitter.nextLine() == b"A"
        splitter.feed(b"\r\nD\r\n")
        assert splitter.waiting == 3
        assert splitter.lines() == [b"B", b"C", b"D"]
        assert splitter.waiting == 0
        assert splitter.nextLine() is None


class TestCost:
    def test_lineFeedFloodIsLinear(self) -> None:
        """
        Splitting is linear in the bytes received, however short the lines:
        half a mebibyte of bare line feeds in one piece (half a million
        empty commands) is split and taken in well under the bound, which
        is generous for a loaded machine. (A splitter that slices its
        buffer once per line takes about ten seconds.)
        """
        splitter = CommandLineSplitter(512)
        started = time.perf_counter()
        splitter.feed(b"\n" * 2**19)
        taken = 0
        while splitter.nextLine() is not None:
            taken += 1
        elapsed = time.perf_counter() - started
        assert taken == 2**19
        assert elapsed < 3.0, f"{elapsed:.2f}s for 512 KiB of line feeds"

    def test_feedDoesNotCutLines(self) -> None:
        """
        Feeding a read full of lines makes no line objects: what is not
        taken costs its bytes, not an object per line.
        """
        splitter = CommandLineSplitter(512)
        splitter.feed(b"AB\n" * 20000)
        assert splitter.waiting == 20000
        assert len(splitter._ready) == 1


class TestLongLines:
    def test_exactlyTheLimit(self) -> None:
        line = b"X" * 512
        assert split(line + b"\r\n") == [line]
        assert split(line + b"\n") == [line]

    def test_overTheLimit(self) -> None:
        """
        A line one byte too long is reported as L{LineTooLong}; the next line
        is read normally.
        """
        assert split(b"X" * 513 + b"\r\nNOOP\r\n") == [TOO_LONG, b"NOOP"]

    def test_longLineInPieces(self) -> None:
        """
        A huge line without an end is not buffered: it is reported once, as
        soon as it exceeds the limit, and its rest is skipped.
        """
        splitter = CommandLineSplitter(512)
        assert fed(splitter, b"STOR " + b"x" * 600) == [TOO_LONG]
        assert len(splitter.pending) <= 512
        for _ in range(100):
            assert fed(splitter, b"y" * 1000) == []
            assert len(splitter.pending) <= 512
        assert fed(splitter, b"zzz\r\nNOOP\r\n") == [b"NOOP"]

    def test_telnetFloodIsTooLong(self) -> None:
        """
        Telnet commands make no command: more than the limit's worth of
        them within one line is reported as too long, once for each
        limit's worth, so that a client flooding them is refused (and
        closed) like one flooding empty lines.
        """
        splitter = CommandLineSplitter(512)
        assert fed(splitter, b"\xff\xf1" * 256) == []
        assert fed(splitter, b"\xff\xf1") == [TOO_LONG]
        # 4001 bytes of them (with the one left over): 7 times the limit.
        assert fed(splitter, b"\xff\xf1" * 2000) == [TOO_LONG] * 7
        assert fed(splitter, b"rest\r\nNOOP\r\n") == [b"NOOP"]

    def test_escapedBytesAreNoFlood(self) -> None:
        """
        A line of the longest length made of 0xFF bytes (each doubled on
        the wire) is a line like any other.
        """
        line = b"RETR " + b"\xff" * 507
        splitter = CommandLineSplitter(512)
        assert feedAll(splitter, [escapeIAC(line)[i : i + 100] for i in range(0, 1100, 100)] + [b"\r\n"]) == [line]

    def test_exactlyTheLimitCRLFSplit(self) -> None:
        """
        The CR of a CRLF may arrive alone at the end of a chunk; it does not
        count against the limit.
        """
        line = b"X" * 512
        splitter = CommandLineSplitter(512)
        assert feedAll(splitter, [line + b"\r", b"\n"]) == [line]


class TestTelnet:
    def test_interruptBeforeABOR(self) -> None:
        """
        Python's ftplib sends C{IAC IP IAC DM} before ABOR.
        """
        assert split(b"\xff\xf4\xff\xf2ABOR\r\n") == [b"ABOR"]

    def test_negotiationDropped(self) -> None:
        assert split(b"\xff\xfb\x01NO\xff\xfd\x03OP\r\n") == [b"NOOP"]

    def test_escapedIAC(self) -> None:
        """
        A doubled 0xFF is one 0xFF byte of the file name.
        """
        assert split(b"RETR a\xff\xffb\r\n") == [b"RETR a\xffb"]

    def test_splitSequences(self) -> None:
        data = b"\xff\xf4\xff\xf2ABOR\r\nRETR a\xff\xffb\r\n"
        assert feedAll(CommandLineSplitter(512), bytewise(data)) == [b"ABOR", b"RETR a\xffb"]


# Command lines as a client means them: no line break inside, any byte
# (0xFF included) otherwise.
lineText = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@st.composite
def chunkings(draw, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


class TestChunking:
    LIMIT = 16

    def expected(self, line: bytes) -> bytes | LineTooLong:
        return line if len(line) <= self.LIMIT else TOO_LONG

    @settings(max_examples=100, deadline=None)
    @given(st.lists(lineText, max_size=8), st.data())
    def test_anyChunkingLF(self, lines: list[bytes], data: st.DataObject) -> None:
        """
        However the stream is cut, lines ended by LF come out the same, and
        as the client meant them: Telnet escapes undone, long ones marked.
        """
        stream = b"".join(escapeIAC(line) + b"\n" for line in lines)
        chunks = data.draw(chunkings(stream))
        assert feedAll(CommandLineSplitter(self.LIMIT), chunks) == [
            self.expected(line) for line in lines
        ]

    @settings(max_examples=100, deadline=None)
    @given(st.lists(lineText, max_size=8), st.data())
    def test_anyChunkingCRLF(self, lines: list[bytes], data: st.DataObject) -> None:
        """
        The same with CRLF.
        """
        stream = b"".join(escapeIAC(line) + b"\r\n" for line in lines)
        chunks = data.draw(chunkings(stream))
        assert feedAll(CommandLineSplitter(self.LIMIT), chunks) == [
            self.expected(line) for line in lines
        ]

    @settings(max_examples=100, deadline=None)
    @given(st.lists(lineText, max_size=8), st.data())
    def test_telnetCommandsAnywhere(self, lines: list[bytes], data: st.DataObject) -> None:
        """
        Telnet commands (here NOP and option negotiation) between any two
        bytes change nothing.
        """
        stream = b"".join(escapeIAC(line) + b"\n" for line in lines)
        positions = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
        commands = [b"\xff\xf1", b"\xff\xfb\x01", b"\xff\xfe\x18"]
        # Insert from the end so that earlier positions stay valid, and never
        # between the two bytes of an escaped 0xFF (after an odd count).
        for position in sorted(set(positions), reverse=True):
            if stream[:position].count(b"\xff") % 2:
                continue
            command = data.draw(st.sampled_from(commands))
            stream = stream[:position] + command + stream[position:]
        chunks = data.draw(chunkings(stream))
        assert feedAll(CommandLineSplitter(self.LIMIT), chunks) == [
            self.expected(line) for line in lines
        ]
