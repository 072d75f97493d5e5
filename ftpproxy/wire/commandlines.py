"""
Splitting a client's control stream into command lines.

Telnet sequences are removed first (RFC 959 control connections are Telnet
NVT), then lines are cut at LF with an optional CR before it. A line longer
than the limit is not buffered: it is reported once as L{LineTooLong} and the
rest of it is skipped, so a hostile client cannot grow our memory. Telnet
sequences count too: more than the limit's worth of them within one line
(no client sends more than a few) is reported as L{LineTooLong} again and
again, so that a flood of them, which makes no command, is refused like one.

The splitter is lazy: L{CommandLineSplitter.feed} keeps the bytes of the
complete lines as they came, and L{CommandLineSplitter.nextLine} cuts one
line at a time. Each byte is copied a bounded number of times whatever the
lines are like (a flood of line feeds costs as much per byte as a few long
commands), and lines that are never taken (a session that closes) are never
made into objects.
"""

from __future__ import annotations


import attrs

from ftpproxy.wire.ftptext import TelnetFilter


@attrs.frozen
class LineTooLong:
    """
    Marks a command line that exceeded the limit and was dropped.
    """


TOO_LONG = LineTooLong()


class CommandLineSplitter:
    """
    Incremental splitter: feed it bytes, take complete lines (without CRLF)
    one at a time.

    @ivar _ready: what complete lines are waiting, in order: runs of bytes
        that each end with LF, and L{LineTooLong} marks where a line was
        dropped before its end arrived.
    @ivar _offset: where the first run of C{_ready} has not been taken yet.
    @ivar _readyCount: how many lines (and marks) C{_ready} holds.
    @ivar _tail: the bytes after the last LF: a line not complete yet.
        Bytes, not a bytearray: usually empty, and the empty bytes object
        is shared (an empty bytearray costs 56 bytes a session); it grows
        only up to the line length limit.
    @ivar _skipping: the line being received is too long already; its bytes
        are dropped until its LF.
    @ivar _telnetBytes: bytes of Telnet sequences received since the last
        chunk that completed a line.
    """

    __slots__ = ('_maxLength', '_telnet', '_ready', '_offset', '_readyCount', '_tail', '_skipping', '_telnetBytes')

    def __init__(self, maxLength: int) -> None:
        self._maxLength = maxLength
        self._telnet = TelnetFilter()
        self._ready: list[bytes | LineTooLong] = []
        self._offset = 0
        self._readyCount = 0
        self._tail = b""
        self._skipping = False
        self._telnetBytes = 0

    @property
    def waiting(self) -> int:
        """
        How many complete lines (too-long ones included) can be taken now.
        """
        return self._readyCount

    @property
    def pending(self) -> bytes:
        """
        What has been received after the last complete line.
        """
        return self._tail

    def discard(self) -> bytes:
        """
        Forget everything not yet taken as a line; return its bytes.
        """
        runs = [r for r in self._ready if isinstance(r, bytes)]
        if runs:
            runs[0] = runs[0][self._offset :]
        forgotten = b"".join(runs) + self._tail
        self._ready.clear()
        self._offset = 0
        self._readyCount = 0
        self._tail = b""
        return forgotten

    def feed(self, data: bytes) -> None:
        """
        Take in received bytes; the lines they complete can be taken with
        L{nextLine}.
        """
        received = len(data)
        data = self._telnet.feed(data)
        end = data.rfind(b"\n")
        if end == -1:
            self._telnetBytes += received - len(data)
            while self._telnetBytes > self._maxLength:
                self._telnetBytes -= self._maxLength + 1
                self._tooLong()
            self._extendTail(data)
            return
        self._telnetBytes = 0
        complete, rest = data[: end + 1], data[end + 1 :]
        if self._skipping:
            # The line being dropped ends at the first LF.
            complete = complete[complete.index(b"\n") + 1 :]
            self._skipping = False
        elif self._tail:
            complete = self._tail + complete
        self._tail = b""
        if complete:
            self._ready.append(complete)
            self._readyCount += complete.count(b"\n")
        self._extendTail(rest)

    def _extendTail(self, data: bytes) -> None:
        if self._skipping or not data:
            return
        self._tail += data
        # One byte more than the limit: the CR of a CRLF may come alone.
        if len(self._tail) > self._maxLength + 1:
            self._tooLong()

    def _tooLong(self) -> None:
        """
        The line being received is too long: report it, skip to its end.
        """
        self._tail = b""
        self._skipping = True
        self._ready.append(TOO_LONG)
        self._readyCount += 1

    def nextLine(self) -> bytes | LineTooLong | None:
        """
        The oldest complete line not yet taken (L{LineTooLong} for one that
        was too long), or None.
        """
        if not self._ready:
            return None
        self._readyCount -= 1
        run = self._ready[0]
        if isinstance(run, LineTooLong):
            self._ready.pop(0)
            return run
        start = self._offset
        end = run.index(b"\n", start)
        if end + 1 == len(run):
            self._ready.pop(0)
            self._offset = 0
        else:
            self._offset = end + 1
        if end > start and run[end - 1] == 0x0D:
            end -= 1
        if end - start > self._maxLength:
            return TOO_LONG
        return run[start:end]

    def lines(self) -> list[bytes | LineTooLong]:
        """
        Take every complete line waiting.
        """
        taken = []
        while (line := self.nextLine()) is not None:
            taken.append(line)
        return taken
