"""
The data path: two data connections (legs) joined by a one-way pump.

An FTP data connection carries one transfer in one direction. The session
knows that direction and pairs a source leg with a sink leg. The sink's
transport is given the source's transport as a streaming producer, so a slow
receiver pauses the sender instead of piling bytes up in the proxy. Before the
pair exists, a leg keeps a small amount of early data and then stops reading.
Both passive and active mode, clear and TLS, use this same piece.

With a reactor, the bytes of a paired transfer leave Twisted's hands as soon
as they can: two clear legs are spliced (L{ftpproxy.data.splicing}); when a
leg is protected, the pair starts on Twisted's path and, once every TLS
handshake is done, moves to L{ftpproxy.data.tlspump}, where OpenSSL works on
the sockets in large steps.
"""

from __future__ import annotations

import socket
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.data.connecting import ConnectingProtocol
from ftpproxy.data.closing import DATA_CLOSE_GRACE, loseConnectionWithin
from ftpproxy.data.splicing import SplicePump, canSplice, sendAllNow
from ftpproxy.data.tlspump import DirectSocket, SocketPump, Upgrade, isProtected
from ftpproxy.tls.contexts import sessionReused

# How much a leg reads before it has a partner; beyond it, reading stops.
EARLY_DATA_LIMIT = 256 * 1024

# How long, at most, the reply that lets a client start an upload waits for
# the client's data connection to finish the TLS handshake it has begun (see
# DataLegFactory.afterHandshake).
TICKET_HOLD_LIMIT = 3.0



@implementer(IHandshakeListener)
class DataLeg(ConnectingProtocol):
    """
    One data connection, to the client or to the backend.

    @ivar secured: its TLS handshake is done (always False on a clear leg).
    @ivar bytesReceived: bytes received from the peer (after decryption), for
        stall detection and the transfer log.
    """

    def __init__(self) -> None:
        self.sink: DataLeg | None = None
        self.bytesReceived = 0
        self.connectedNow = False
        self.secured = False
        self.lost = False
        self.lostReason: Failure | None = None
        self._early: list[bytes] = []
        self._earlySize = 0
        self._paused = False
        self._lostWaiters: list[Deferred[None]] = []
        self._sourceOf: DataLeg | None = None
        self._splice: SplicePump | None = None
        # Set while the pair waits to leave Twisted (Upgrade), once it has
        # (its socket: DirectSocket), and while bytes move (SocketPump).
        self._upgrade: Upgrade | None = None
        self._direct: DirectSocket | None = None
        self._socketPump: SocketPump | None = None
        self._closeTimer = None

    def connectionMade(self) -> None:
        self.connectedNow = True

    def handshakeCompleted(self) -> None:
        self.secured = True
        if self._upgrade is not None:
            self._upgrade.legSecured()

    def dataReceived(self, data: bytes) -> None:
        self.bytesReceived += len(data)
        if self.sink is not None:
            self.sink.transport.write(data)
            return
        if self._sourceOf is not None:
            # We are a sink: data from this side runs against the transfer's
            # direction and is dropped.
            return
        self._early.append(data)
        self._earlySize += len(data)
        if self._earlySize > EARLY_DATA_LIMIT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost = True
        self.lostReason = reason
        if self._closeTimer is not None:
            self._closeTimer.cancel()
        if self._splice is not None:
            self._splice.stop()
        if self._upgrade is not None:
            self._upgrade.cancel()
        if self._direct is not None:
            self._direct.released()
        pump = self._socketPump
        if pump is not None:
            # Still moving bytes (normally the pump closes its legs itself).
            if pump.source.leg is self:
                pump.sourceLost()
            else:
                pump.sinkLost()
        else:
            if self.sink is not None:
                self.sink._sourceFinished()
            if self._sourceOf is not None:
                self._sourceOf._sinkLost()
        waiters, self._lostWaiters = self._lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenLost(self) -> Deferred[None]:
        """
        A Deferred that fires once this connection is closed.
        """
        if self.lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lostWaiters.append(waiter)
        return waiter

    def close(self) -> None:
        """
        Close gracefully: what is buffered is still sent (and a TLS leg sends
        close_notify).
        """
        if self._splice is not None:
            self._splice.stop()
        if self._socketPump is not None:
            self._socketPump.stop()
        if self._direct is not None:
            self._direct.close()
        elif not self.lost and self.transport is not None:
            self._loseConnection()

    def _loseConnection(self) -> None:
        if self._closeTimer is not None:
            # Closing already (the splice pump and the source's end both
            # ask): one grace timer is enough.
            return
        self._closeTimer = loseConnectionWithin(
            self.transport, getattr(self.transport, "reactor", None), DATA_CLOSE_GRACE
        )

    def abort(self) -> None:
        """
        Close at once, dropping what is buffered.
        """
        if self._splice is not None:
            self._splice.stop()
        if self._upgrade is not None:
            self._upgrade.cancel()
        if self._socketPump is not None:
            self._socketPump.stop()
        if self._direct is not None:
            self._direct.abort()
        elif not self.lost and self.transport is not None:
            self.transport.abortConnection()

    def _sourceFinished(self) -> None:
        if self.lost:
            return
        if self._direct is not None:
            self._direct.close()
            return
        self.transport.unregisterProducer()
        self._loseConnection()

    def _sinkLost(self) -> None:
        # The receiver went away: nobody will take the rest. A source that
        # has ended and is closing by itself finishes its close.
        if self._direct is not None and self._direct.closing:
            return
        self.abort()


def pump(source: DataLeg, sink: DataLeg, reactor=None) -> None:
    """
    Send everything C{source} receives to C{sink}, then close C{sink} when
    C{source} ends; abort C{source} when C{sink} goes away first.

    With a C{reactor} and two clear TCP legs, the kernel moves the bytes
    (splice(2)); with a protected leg, OpenSSL moves them on the sockets once
    the TLS handshakes are done (L{ftpproxy.data.tlspump}); otherwise they
    pass through Python with producer/consumer flow control.
    """
    early, source._early, source._earlySize = b"".join(source._early), [], 0
    if sink.lost:
        source.abort()
        return
    source.sink = sink
    sink._sourceOf = source
    if reactor is not None and canSplice(source, sink) and sendAllNow(sink, early):
        source._paused = False
        splice = SplicePump(reactor, source, sink)
        source._splice = sink._splice = splice
        splice.start()
        return
    if early:
        sink.transport.write(early)
    if source.lost:
        sink._sourceFinished()
        return
    sink.transport.registerProducer(source.transport, True)
    if source._paused:
        source._paused = False
        source.transport.resumeProducing()
    if reactor is not None and (isProtected(source) or isProtected(sink)):
        source._upgrade = sink._upgrade = Upgrade(reactor, source, sink)


def _bytesWaiting(transport) -> bool:
    """
    Whether bytes from the peer wait, unread, in the kernel (a paused leg's
    ClientHello).
    """
    try:
        handle = transport.getHandle()
        return bool(handle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (AttributeError, OSError):
        return False


class SessionNotResumed(Exception):
    """
    A protected data connection did not resume its control connection's TLS
    session, and the proxy was told to insist.
    """


class DataLegFactory(Factory):
    """
    Builds the client's data legs and reports each one once it is ready to
    carry data: at once for a clear leg, after the TLS handshake for a
    protected one (PROT P). The FTP client is always the TLS client, so
    the proxy is the TLS server on this leg even when it connected out
    (active mode).

    A protected leg waits, unread, for the transfer's direction before its
    handshake. A download's leg hands the client a fresh TLS 1.3 session
    ticket for its next data connection (curl uses each ticket once, so
    without one the next transfer of the same curl run cannot resume).

    On an upload a ticket is dangerous: a client that closes after sending
    without reading the ticket makes its kernel reset the connection, which
    drops whatever it had not sent yet (lftp and other GnuTLS clients never
    read it; curl before 8.9 reads only what has arrived when it closes). So
    an upload's leg hands out a ticket only to a client that began its
    handshake before it sent the transfer command, as curl does (its
    ClientHello is already waiting when the direction becomes known; lftp
    and ftplib start TLS only once they have the go-ahead), and then the
    go-ahead is held until that handshake, and with it the ticket, is done
    (see L{afterHandshake}): curl reads the ticket before it closes.

    @ivar download: the transfer's direction once known, else L{None}.
    """

    noisy = False

    def __init__(
        self,
        onReady: Callable[[DataLeg], None],
        onFailed: Callable[[Failure], None],
        tls=None,
        outgoing: bool = False,
        requireResumption: bool = False,
        clock=None,
    ) -> None:
        self.onReady = onReady
        self.onFailed = onFailed
        self.tls = tls
        self.outgoing = outgoing
        self.requireResumption = requireResumption
        self.download: bool | None = None
        self._clock = clock
        self._waiting: list[ClientDataLeg] = []
        self._legs: list[ClientDataLeg] = []
        self._held: list[Callable[[], None]] = []
        self._holdTimer = None

    def setDirection(self, download: bool) -> None:
        """
        The transfer is known: start TLS on legs that waited for it.
        """
        self.download = download
        waiting, self._waiting = self._waiting, []
        for leg in waiting:
            leg.helloWaiting = _bytesWaiting(leg.transport)
            leg.startTLS()

    def tlsCreator(self, leg: ClientDataLeg):
        """
        The TLS connection creator for C{leg}: with a session ticket for
        downloads and for uploads whose client began its handshake before
        the command, without for other uploads.
        """
        if self.download or leg.helloWaiting:
            return self.tls
        return self.tls.forData()

    def buildProtocol(self, addr) -> DataLeg:
        leg = ClientDataLeg(self)
        leg.factory = self
        self._legs.append(leg)
        return leg

    def afterHandshake(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} (which sends the reply that lets the client start
        its upload) once no data connection of this upload that hands out a
        session ticket is in the middle of its TLS handshake; at once
        otherwise.

        The proxy sends the ticket right after the handshake. A client that
        gets the go-ahead first may send a small upload and close before the
        ticket arrives (over a long path the go-ahead can come a round trip
        earlier); the ticket then arrives at a closed socket, whose kernel
        answers with a reset that drops what the client had not sent yet.
        Held this way, the ticket leaves no later than the go-ahead, and
        curl reads it before it closes. Nothing is held for longer than
        L{TICKET_HOLD_LIMIT} seconds.
        """
        if not self._held and not self._handshaking():
            callback()
            return
        self._held.append(callback)
        if self._holdTimer is None and self._clock is not None:
            self._holdTimer = self._clock.callLater(TICKET_HOLD_LIMIT, self.releaseHeld)

    def releaseHeld(self) -> None:
        """
        Call every held callback now, in order.
        """
        if self._holdTimer is not None:
            timer, self._holdTimer = self._holdTimer, None
            if timer.active():
                timer.cancel()
        held, self._held = self._held, []
        for callback in held:
            callback()

    def _handshaking(self) -> bool:
        return (
            self.tls is not None
            and self.download is False
            and any(leg.handshaking and leg.helloWaiting for leg in self._legs)
        )

    def _legSettled(self) -> None:
        if self._held and not self._handshaking():
            self.releaseHeld()


@implementer(IHandshakeListener)
class ClientDataLeg(DataLeg):
    """
    A data leg towards the client that tells its factory when it is ready,
    or that it failed before it was.
    """

    def __init__(self, factory: DataLegFactory) -> None:
        super().__init__()
        self._factory = factory
        self.ready = False
        self.refusal: Exception | None = None
        # The client had begun its TLS handshake before the transfer's
        # direction was known (before it sent the command).
        self.helloWaiting = False
        self._tlsStarted = False

    @property
    def handshaking(self) -> bool:
        """
        Whether the client has begun a TLS handshake here that is not over.
        """
        if not self._tlsStarted or self.ready or self.lost or self.refusal is not None:
            return False
        # The cipher is chosen as soon as the ClientHello has been read.
        return self.transport.getHandle().get_cipher_name() is not None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._factory.tls is None:
            self._becomeReady()
        elif self._factory.download is None:
            # The ClientHello waits in the kernel until the direction is known.
            self.transport.pauseProducing()
            self._factory._waiting.append(self)
        else:
            self.startTLS()

    def startTLS(self) -> None:
        if self.lost:
            return
        # normal=False on a connection we opened makes us the TLS server.
        self.transport.startTLS(self._factory.tlsCreator(self), not self._factory.outgoing)
        self._tlsStarted = True
        self.transport.resumeProducing()

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        if self._factory.requireResumption and not sessionReused(self.transport):
            self.refusal = SessionNotResumed()
            self.abort()
            return
        self._becomeReady()

    def _becomeReady(self) -> None:
        self.ready = True
        self._factory._legSettled()
        self._factory.onReady(self)

    def connectionLost(self, reason: Failure = None) -> None:
        # A reply held for this leg's handshake goes before anything the
        # leg's loss makes the session say.
        self.lost = True
        self._factory._legSettled()
        super().connectionLost(reason)
        if not self.ready:
            self._factory.onFailed(Failure(self.refusal) if self.refusal else reason)
