"""
Pumping protected transfers with the sockets in the proxy's own hands.

Twisted's TLS layer encrypts and decrypts through memory BIOs record by
record and queues every record in its write buffer; for a bulk transfer that
costs several times what the cipher does. So once a transfer's two legs are
paired and each protected leg has finished its TLS handshake, the legs are
taken from Twisted: reading and writing them stops there, each OpenSSL
connection moves onto its socket, and a L{SocketPump} moves the bytes in
large steps (L{STEP}) from reactor readiness, like the splice pump does for
clear legs: C{recv}/C{SSL_read} into one buffer, C{send}/C{SSL_write} out of
it, and no reading while the buffer waits for the sink (flow control).

Each taken leg is a L{DirectSocket}: it sends what Twisted had already
accepted first, and when its leg closes it sends close_notify (TLS) and waits
a while for the peer's before closing the socket, as Twisted's TLS layer
does. Until the take-over (and whenever it cannot happen, e.g. TLS records
half-read into a memory BIO) the transfer runs through Twisted as before:
the fast path changes the speed, not the behaviour.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpproxy import internals
from ftpproxy.internals import (
    WANT_READ,
    WANT_WRITE,
    CannotTakeOver,
    SocketTLS,
    TLSFailure,
    bufferAddress,
)
from ftpproxy.data.closing import DATA_CLOSE_GRACE, loseConnectionWithin

#: Bytes moved per read and per write: 16 TLS records.
STEP = 256 * 1024
#: Bytes one transfer moves per reactor turn before others get theirs.
TURN = 4 * STEP
#: What a sink may send against the transfer's direction (session tickets,
#: key updates, close_notify) is read in pieces of this size and dropped.
DRAIN_SIZE = 16 * 1024


class SocketFailed(Exception):
    """
    A taken-over connection failed: reset, broken pipe, or a fatal TLS error.
    """


class Buffer:
    """
    Bytes in memory that both Python (for C{recv_into}/C{send}) and OpenSSL
    (for C{SSL_read}/C{SSL_write}) can reach without copies.
    """

    def __init__(self, data: bytes | int) -> None:
        self.bytes = bytearray(data)
        self.view = memoryview(self.bytes)
        self.address = bufferAddress(self.bytes)

    def __len__(self) -> int:
        return len(self.bytes)


class SocketState:
    OPEN = "open: the pump reads or writes it"
    CLOSING = "closing: close_notify going out, waiting for the peer's"
    CLOSED = "closed: handed back to Twisted to close, or aborted"


class DirectSocket:
    """
    A data connection whose socket the proxy reads and writes itself after
    Twisted gave it up (L{internals.takeTransport}). While the transfer runs,
    its C{handler} (the pump) gets the readiness events it asked for with
    L{want}; L{close} and L{abort} end it. Its leg still gets
    C{connectionLost} from the transport, which Twisted closes.

    @ivar leg: the L{ftpproxy.data.legs.DataLeg} on this connection.
    @ivar tls: the OpenSSL connection on the socket, or L{None} for a clear
        leg.
    @ivar state: a L{SocketState}.
    @ivar handler: who gets C{readable(socket)}/C{writable(socket)}/
        C{failed(socket, why)} while the state is OPEN.
    """

    def __init__(self, reactor, leg: Any, tls: SocketTLS | None, pending: bytes) -> None:
        self._reactor = reactor
        self.leg = leg
        self.tls = tls
        self.state = SocketState.OPEN
        self.handler: Any = None
        self._transport = leg.transport
        self._socket = leg.transport.socket
        self._fd = self._socket.fileno()
        # Bytes Twisted accepted before the take-over: they go first.
        self._unsent = memoryview(pending) if pending else None
        self._wantRead = self._wantWrite = False
        self._reading = self._writing = False
        self._failure: SocketFailed | None = None
        self._peerClosed = False
        self._closeTimer = None
        self._sentWhileClosing = 0
        self._drain: Buffer | None = None
        if self._unsent is not None:
            # Out at once, not when the pump next writes here: on a client's
            # upload leg this is its session ticket, which must reach the
            # client before the go-ahead to send does (see
            # DataLegFactory.afterHandshake), and the pump may not write to
            # a source for the whole transfer.
            try:
                self._sendUnsent()
            except SocketFailed as e:
                self._failure = e
            if self._unsent is not None:
                self._setInterest(read=False, write=True)

    # -- what the reactor calls ------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "DirectSocket"

    def doRead(self) -> None:
        if self.state is SocketState.CLOSING:
            self._continueClose()
        elif self.state is SocketState.OPEN and self.handler is not None:
            self.handler.readable(self)

    def doWrite(self) -> None:
        if self._unsent is not None:
            try:
                if not self._sendUnsent():
                    return
            except SocketFailed as e:
                self._fail(e)
                return
            self._update()
        if self.state is SocketState.CLOSING:
            self._continueClose()
        elif self.state is SocketState.OPEN and self.handler is not None and self._wantWrite:
            self.handler.writable(self)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw the socket hang up or fail (EPOLLHUP/EPOLLERR) and
        # has stopped watching it.
        self._reading = self._writing = False
        self._fail(SocketFailed(reason.getErrorMessage()))

    # -- reading and writing, for the pump -------------------------------------

    def want(self, read: bool, write: bool) -> None:
        """
        Which readiness events the handler wants next.
        """
        self._wantRead, self._wantWrite = read, write
        self._update()

    def read(self, buffer: Buffer, start: int, size: int) -> int:
        """
        Receive up to C{size} bytes into C{buffer} at C{start}: the number
        of bytes, 0 at the end of the stream, or L{WANT_READ}/L{WANT_WRITE}.

        @raise SocketFailed: the connection broke.
        """
        if self._failure is not None:
            raise self._failure
        if self.tls is None:
            try:
                return self._socket.recv_into(buffer.view[start : start + size])
            except BlockingIOError:
                return WANT_READ
            except OSError as e:
                raise SocketFailed(f"receive failed: {e.strerror or e}") from None
        try:
            return self.tls.read(buffer.address + start, size)
        except TLSFailure as e:
            raise SocketFailed(str(e)) from None

    def write(self, buffer: Buffer, start: int, size: int) -> int:
        """
        Send up to C{size} bytes of C{buffer} from C{start}: how many went,
        or L{WANT_WRITE}/L{WANT_READ}.

        @raise SocketFailed: the connection broke (the peer is gone).
        """
        if self._failure is not None:
            raise self._failure
        if self._unsent is not None and not self._sendUnsent():
            return WANT_WRITE
        if self.tls is None:
            try:
                return self._socket.send(buffer.view[start : start + size])
            except BlockingIOError:
                return WANT_WRITE
            except OSError as e:
                raise SocketFailed(f"send failed: {e.strerror or e}") from None
        try:
            return self.tls.write(buffer.address + start, size)
        except TLSFailure as e:
            raise SocketFailed(str(e)) from None

    def drain(self) -> int:
        """
        Read and drop what the peer sent against the transfer's direction:
        0 once the peer has closed, else L{WANT_READ}/L{WANT_WRITE}.

        @raise SocketFailed: the connection broke.
        """
        if self._drain is None:
            self._drain = Buffer(DRAIN_SIZE)
        while True:
            result = self.read(self._drain, 0, DRAIN_SIZE)
            if result <= 0:
                return result

    def _sendUnsent(self) -> bool:
        """
        Send what Twisted had accepted; True once all of it is out.
        """
        unsent = self._unsent
        assert unsent is not None
        try:
            sent = self._socket.send(unsent)
        except BlockingIOError:
            return False
        except OSError as e:
            raise SocketFailed(f"send failed: {e.strerror or e}") from None
        self._sentWhileClosing += sent
        self._unsent = unsent[sent:] if sent < len(unsent) else None
        return self._unsent is None

    # -- the end -----------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.state is not SocketState.OPEN

    def close(self) -> None:
        """
        End gracefully: what is unsent still goes out; a TLS connection
        sends close_notify and waits up to L{DATA_CLOSE_GRACE} seconds (more
        while the peer keeps reading) for the peer's before the socket
        closes.
        """
        if self.state is not SocketState.OPEN:
            return
        self.state = SocketState.CLOSING
        self.handler = None
        self._wantRead = self._wantWrite = False
        if self.tls is None:
            self._handBack(graceful=True)
            return
        self._armCloseTimer(-1)
        self._continueClose()

    def abort(self) -> None:
        """
        Close at once, dropping what is unsent.
        """
        if self.state is SocketState.CLOSED:
            return
        self.state = SocketState.CLOSED
        self.handler = None
        self._release()
        self._transport.abortConnection()

    def released(self) -> None:
        """
        The leg's connection is gone: stop watching and timing.
        """
        self.state = SocketState.CLOSED
        self.handler = None
        self._release()

    def peerClosedReading(self) -> None:
        """
        The peer has closed its side (its close_notify or EOF was read):
        closing need not wait for it.
        """
        self._peerClosed = True

    def _continueClose(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            if self._unsent is not None and not self._sendUnsent():
                self._setInterest(read=False, write=True)
                return
            outcome = tls.shutdown()
            if outcome == WANT_WRITE:
                self._setInterest(read=False, write=True)
                return
            if outcome == WANT_READ:
                self._setInterest(read=True, write=False)
                return
            if self._peerClosed or tls.closeNotifyReceived():
                self._handBack(graceful=True)
                return
            # close_notify is out: wait for the peer's (or its EOF).
            drained = self.drain()
        except (SocketFailed, TLSFailure):
            # The peer is gone already (it reset, or closed before our
            # close_notify reached it): nothing more to say to it.
            self._handBack(graceful=False)
            return
        if drained == 0:
            self._handBack(graceful=True)
        else:
            self._setInterest(read=drained == WANT_READ, write=drained == WANT_WRITE)

    def _armCloseTimer(self, previous: int) -> None:
        """
        Every grace period, check that bytes went out; give up on a peer that
        neither reads nor answers.
        """
        self._closeTimer = None
        if self.state is not SocketState.CLOSING:
            return
        if self._sentWhileClosing == previous:
            self.abort()
            return
        self._closeTimer = self._reactor.callLater(
            DATA_CLOSE_GRACE, self._armCloseTimer, self._sentWhileClosing
        )

    def _handBack(self, graceful: bool) -> None:
        """
        Give the socket back to Twisted to close: its leg then gets
        C{connectionLost} the usual way.
        """
        self.state = SocketState.CLOSED
        unsent = self._unsent
        self._release()
        transport = self._transport
        if not graceful:
            transport.abortConnection()
            return
        if unsent is not None:
            transport.write(bytes(unsent))
        self._closeTimer = loseConnectionWithin(transport, self._reactor, DATA_CLOSE_GRACE)

    def _fail(self, failure: SocketFailed) -> None:
        if self._failure is None:
            self._failure = failure
        if self.state is SocketState.CLOSING:
            self._handBack(graceful=False)
        elif self.state is SocketState.OPEN and self.handler is not None:
            self.handler.failed(self, failure)

    def _release(self) -> None:
        self._unsent = None
        self._setInterest(read=False, write=False)
        if self._closeTimer is not None:
            timer, self._closeTimer = self._closeTimer, None
            if timer.active():
                timer.cancel()

    # -- the reactor's interest --------------------------------------------------

    def _update(self) -> None:
        if self.state is SocketState.OPEN:
            self._setInterest(self._wantRead, self._wantWrite or self._unsent is not None)

    def _setInterest(self, read: bool, write: bool) -> None:
        if read != self._reading:
            self._reading = read
            (self._reactor.addReader if read else self._reactor.removeReader)(self)
        if write != self._writing:
            self._writing = write
            (self._reactor.addWriter if write else self._reactor.removeWriter)(self)


class PumpState:
    MOVING = "moving bytes"
    DONE = "source ended and drained; both legs closing"
    STOPPED = "stopped: a leg failed or was aborted"


class SocketPump:
    """
    Moves one transfer from the source leg's socket to the sink leg's, TLS or
    clear on either side, with one buffer of L{STEP} bytes.

    @ivar source: the L{DirectSocket} the bytes come from.
    @ivar sink: the L{DirectSocket} they go to.
    @ivar state: a L{PumpState}.
    """

    def __init__(self, reactor, source: DirectSocket, sink: DirectSocket) -> None:
        self._reactor = reactor
        self.source = source
        self.sink = sink
        self.state = PumpState.MOVING
        self._buffer = Buffer(STEP)
        # Bytes read but not yet written: _buffer[_start:_end].
        self._start = self._end = 0
        self._sourceEnded = False
        self._sourceFailed = False
        # The last wait each socket reported (WANT_READ/WANT_WRITE/None).
        self._sinkWait: int | None = None
        self._resume = None
        source.handler = sink.handler = self

    def start(self) -> None:
        self._advance()

    # -- events ----------------------------------------------------------------

    def readable(self, socket: DirectSocket) -> None:
        if socket is self.sink and self._sinkWait != WANT_READ:
            self._drainSink()
        else:
            self._advance()

    def writable(self, socket: DirectSocket) -> None:
        self._advance()

    def failed(self, socket: DirectSocket, why: SocketFailed) -> None:
        if socket is self.source:
            self._sourceEnded = self._sourceFailed = True
            self._advance()
        else:
            self._sinkGone()

    def sourceLost(self) -> None:
        """
        The source's connection went away (its leg got C{connectionLost}).
        """
        self._sourceEnded = self._sourceFailed = True
        self._advance()

    def sinkLost(self) -> None:
        """
        The sink's connection went away: nobody takes the rest.
        """
        self._sinkGone()

    def stop(self) -> None:
        """
        Stop moving bytes; the legs stay as they are (their owner closes
        them).
        """
        if self.state is not PumpState.MOVING:
            return
        self.state = PumpState.STOPPED
        self._detach()

    # -- moving ------------------------------------------------------------------

    def _advance(self) -> None:
        if self.state is not PumpState.MOVING:
            return
        if self._resume is not None:
            if self._resume.active():
                self._resume.cancel()
            self._resume = None
        source, sink, buffer = self.source, self.sink, self._buffer
        moved = 0
        while True:
            if self._start < self._end:
                try:
                    sent = sink.write(buffer, self._start, self._end - self._start)
                except SocketFailed:
                    self._sinkGone()
                    return
                if sent < 0:
                    self._sinkWait = sent
                    source.want(read=False, write=False)
                    sink.want(read=sent == WANT_READ, write=sent == WANT_WRITE)
                    return
                self._sinkWait = None
                self._start += sent
                continue
            if self._sourceEnded:
                self._finish()
                return
            if moved >= TURN:
                # Let the reactor serve others. A clear source's readiness
                # brings us back. A TLS source is resumed by a call on the
                # next turn instead: OpenSSL may already hold bytes it read
                # from the socket (the rest of a record, or the peer's
                # close_notify right behind the last one) that neither the
                # socket's readiness nor SSL_pending reports, and waiting for
                # readiness would then wait forever. Only a read that answers
                # WANT_READ proves OpenSSL's buffer is empty.
                sink.want(read=True, write=False)
                if source.tls is not None:
                    source.want(read=False, write=False)
                    self._resume = self._reactor.callLater(0, self._advance)
                else:
                    source.want(read=True, write=False)
                return
            try:
                got = source.read(buffer, 0, STEP)
            except SocketFailed:
                self._sourceEnded = self._sourceFailed = True
                continue
            if got < 0:
                source.want(read=got == WANT_READ, write=got == WANT_WRITE)
                # Meanwhile, notice the sink's peer leaving.
                sink.want(read=True, write=False)
                return
            if got == 0:
                self._sourceEnded = True
                source.peerClosedReading()
                continue
            source.leg.bytesReceived += got
            moved += got
            self._start, self._end = 0, got

    def _drainSink(self) -> None:
        """
        The sink's peer sent something (session tickets, a key update, or
        its close): read it; a closed or broken sink ends the transfer.
        """
        try:
            result = self.sink.drain()
        except SocketFailed:
            self._sinkGone()
            return
        if result == 0:
            self.sink.peerClosedReading()
            self._sinkGone()
        elif result == WANT_WRITE:
            self.sink.want(read=False, write=True)

    def _finish(self) -> None:
        """
        The source ended and the sink has everything: close both.
        """
        self.state = PumpState.DONE
        self._detach()
        if self._sourceFailed:
            self.source.abort()
        else:
            self.source.close()
        self.sink.close()

    def _sinkGone(self) -> None:
        if self.state is not PumpState.MOVING:
            return
        self.state = PumpState.STOPPED
        self._detach()
        self.sink.abort()
        self.source.abort()

    def _detach(self) -> None:
        if self._resume is not None:
            if self._resume.active():
                self._resume.cancel()
            self._resume = None
        for socket in (self.source, self.sink):
            if socket.handler is self:
                socket.want(read=False, write=False)
                socket.handler = None
            if socket.leg._socketPump is self:
                socket.leg._socketPump = None


def isProtected(leg: Any) -> bool:
    """
    Whether TLS was started on C{leg}'s connection.
    """
    return internals.tlsProtocolOf(leg.transport) is not None


def takeOver(reactor, source: Any, sink: Any) -> SocketPump:
    """
    Take both legs of a paired transfer from Twisted and start pumping.

    @raise CannotTakeOver: one of them cannot be taken (nothing changed).
    """
    for leg in (source, sink):
        internals.checkTakeable(leg.transport, leg)
    sink.transport.unregisterProducer()
    sockets = []
    for leg in (source, sink):
        tls, pending = internals.takeTransport(leg.transport, leg)
        leg._direct = DirectSocket(reactor, leg, tls, pending)
        sockets.append(leg._direct)
    pump = SocketPump(reactor, *sockets)
    source._socketPump = sink._socketPump = pump
    pump.start()
    return pump


class Upgrade:
    """
    A paired transfer with a protected leg, running on Twisted's path until
    it can be taken over: on the reactor turn after the pairing (never from
    inside a TLS callback), or after the last TLS handshake is done. If the
    take-over is refused, the transfer stays on Twisted's path.

    @ivar refusal: why the take-over was refused, if it was.
    """

    log = Logger()

    def __init__(self, reactor, source: Any, sink: Any) -> None:
        self._reactor = reactor
        self.source = source
        self.sink = sink
        self.refusal: str | None = None
        self._call = None
        self._schedule()

    def legSecured(self) -> None:
        """
        A leg finished its TLS handshake: try again.
        """
        self._schedule()

    def cancel(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        for leg in (self.source, self.sink):
            if leg._upgrade is self:
                leg._upgrade = None

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self._reactor.callLater(0, self._attempt)

    def _attempt(self) -> None:
        self._call = None
        source, sink = self.source, self.sink
        if source._upgrade is not self or source.lost or sink.lost:
            self.cancel()
            return
        for leg in (source, sink):
            if isProtected(leg) and not internals.tlsHandshakeDone(leg.transport):
                # The backend's handshake runs on: legSecured() comes back.
                return
        self.cancel()
        try:
            takeOver(self._reactor, source, sink)
        except CannotTakeOver as e:
            self.refusal = str(e)
            self.log.info("protected transfer stays on the slow path: {why}", why=self.refusal)


__all__ = [
    "STEP",
    "TURN",
    "CannotTakeOver",
    "DirectSocket",
    "SocketFailed",
    "SocketPump",
    "Upgrade",
    "isProtected",
    "takeOver",
]
