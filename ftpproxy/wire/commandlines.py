"""
Splitting a client's control stream into command lines.

Telnet sequences are removed first (RFC 959 control connections are Telnet
NVT), then lines are cut at LF with an optional CR before it. A line longer
than the limit is not buffered: it is reported once as L{LineTooLong} and the
rest of it is skipped, so a hostile client cannot grow our memory.
"""

from __future__ import annotations

import attrs

from ftpproxy.wire.ftptext import TelnetFilter


@attrs.frozen
class LineTooLong:
    """
    Marks a command line that exceeded the limit and was dropped.
    """


class CommandLineSplitter:
    """
    Incremental splitter: feed it bytes, get complete lines (without CRLF).
    """

    def __init__(self, maxLength: int) -> None:
        self._maxLength = maxLength
        self._telnet = TelnetFilter()
        self._buffer = b""
        self._skipping = False

    @property
    def pending(self) -> bytes:
        """
        What has been received after the last complete line.
        """
        return self._buffer

    def discard(self) -> bytes:
        """
        Forget everything not yet returned as a line; return what it was.
        """
        pending, self._buffer = self._buffer, b""
        return pending

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        self._buffer += self._telnet.feed(data)
        lines: list[bytes | LineTooLong] = []
        while True:
            end = self._buffer.find(b"\n")
            if end == -1:
                break
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if self._skipping:
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._maxLength:
                lines.append(LineTooLong())
            else:
                lines.append(line)
        # One byte more than the limit: the CR of a CRLF may come alone.
        if len(self._buffer) > self._maxLength + 1:
            self._buffer = b""
            if not self._skipping:
                self._skipping = True
                lines.append(LineTooLong())
        return lines
