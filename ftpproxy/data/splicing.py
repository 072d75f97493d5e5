"""
Zero-copy pumping of clear data connections with Linux's splice(2).

When both legs of a transfer are plain TCP, the bytes need not pass through
Python at all: the kernel moves them from the source socket into a pipe and
from the pipe into the sink socket. Twisted stops watching both sockets while
this runs; a small reader and writer registered with the reactor drive the
splices, and flow control is natural (a full sink stops the reads). At the
end both transports are handed back to Twisted, which then sees the source's
EOF and closes the sink in its usual way, so the rest of the proxy notices
nothing but the speed.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any, Callable

from twisted.python.failure import Failure

from ftpproxy.internals import isPlainTCPTransport, pendingWrites

# Bigger pipes mean fewer splice calls per megabyte; Linux allows 1 MiB to
# unprivileged processes by default.
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)


def canSplice(source: Any, sink: Any) -> bool:
    """
    Whether the transports of C{source} and C{sink} are plain TCP with
    nothing buffered in Twisted, so the kernel can take over.
    """
    if not hasattr(os, "splice"):
        return False
    for transport in (source.transport, sink.transport):
        if not isPlainTCPTransport(transport) or transport.disconnecting:
            return False
    return not pendingWrites(sink.transport)


def sendAllNow(sink: Any, data: bytes) -> bool:
    """
    Write C{data} straight to C{sink}'s socket; True if all of it went, so
    splicing may follow without reordering. What does not fit goes through
    the transport as usual (and the caller does not splice).
    """
    sent = 0
    while sent < len(data):
        try:
            sent += sink.transport.getHandle().send(data[sent:])
        except OSError:
            sink.transport.write(data[sent:])
            return False
    return True


class _Side:
    """
    One file descriptor as the reactor sees it while we drive it.
    """

    def __init__(
        self, fd: int, onReady: Callable[[], None], onLost: Callable[[], None]
    ) -> None:
        self._fd = fd
        self._onReady = onReady
        self._onLost = onLost

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "SplicePump"

    def doRead(self) -> None:
        self._onReady()

    def doWrite(self) -> None:
        self._onReady()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw the socket hang up or fail (EPOLLHUP/EPOLLERR).
        self._onLost()


class SplicePump:
    """
    Moves one transfer from C{source} to C{sink} through a pipe.
    """

    def __init__(self, reactor, source: Any, sink: Any) -> None:
        self._reactor = reactor
        self.source = source
        self.sink = sink
        self._sourceFd = source.transport.fileno()
        self._sinkFd = sink.transport.fileno()
        self._pipeRead, self._pipeWrite = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self._pipeWrite, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        self._inPipe = 0
        self._sourceDone = False
        self._running = False
        self._reader = _Side(self._sourceFd, self._readable, self._sourceFailed)
        self._writer = _Side(self._sinkFd, self._writable, self._sinkFailed)

    def start(self) -> None:
        for transport in (self.source.transport, self.sink.transport):
            transport.stopReading()
            transport.stopWriting()
        self._running = True
        self._reactor.addReader(self._reader)

    def stop(self) -> None:
        """
        Stop splicing and release the pipe; the transports stay as they are
        (the caller is closing them).
        """
        if not self._running:
            return
        self._running = False
        self._reactor.removeReader(self._reader)
        self._reactor.removeWriter(self._writer)
        os.close(self._pipeRead)
        os.close(self._pipeWrite)
        self.source._splice = self.sink._splice = None

    def _readable(self) -> None:
        while self._running:
            if self._inPipe and not self._drain():
                return
            try:
                moved = os.splice(self._sourceFd, self._pipeWrite, PIPE_SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    return
                self._sourceFailed()
                return
            if moved == 0:
                self._sourceDone = True
                self._reactor.removeReader(self._reader)
                if self._drain():
                    self._finish()
                return
            self._inPipe += moved
            self.source.bytesReceived += moved

    def _drain(self) -> bool:
        """
        Empty the pipe into the sink; False (and wait for the sink to be
        writable, reads paused) when the sink is full.
        """
        while self._inPipe:
            try:
                moved = os.splice(self._pipeRead, self._sinkFd, self._inPipe, flags=_SPLICE_FLAGS)
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    self._reactor.removeReader(self._reader)
                    self._reactor.addWriter(self._writer)
                    return False
                self._sinkFailed()
                return False
            self._inPipe -= moved
        return True

    def _writable(self) -> None:
        if not self._drain():
            return
        self._reactor.removeWriter(self._writer)
        if self._sourceDone:
            self._finish()
        else:
            self._reactor.addReader(self._reader)

    def _finish(self) -> None:
        """
        The source ended and all of it reached the sink: give both back to
        Twisted, which reads the source's EOF and closes the sink.
        """
        source, sink = self.source, self.sink
        self.stop()
        source.transport.startReading()
        sink._loseConnection()

    def _sourceFailed(self) -> None:
        # Twisted reads the error (or EOF) and closes the source its way;
        # the pump then closes the sink.
        source = self.source
        self.stop()
        source.transport.startReading()

    def _sinkFailed(self) -> None:
        # Nobody takes the rest: drop the sink, and with it the source.
        sink = self.sink
        self.stop()
        sink.abort()
