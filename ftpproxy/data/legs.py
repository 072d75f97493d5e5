"""
The data path: two data connections (legs) joined by a one-way pump.

An FTP data connection carries one transfer in one direction. The session
knows that direction and pairs a source leg with a sink leg. The sink's
transport is given the source's transport as a streaming producer, so a slow
receiver pauses the sender instead of piling bytes up in the proxy. Before the
pair exists, a leg keeps a small amount of early data and then stops reading.
Both passive and active mode, clear and TLS, use this same piece.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.data.connecting import ConnectingProtocol
from ftpproxy.data.closing import DATA_CLOSE_GRACE, loseConnectionWithin
from ftpproxy.data.splicing import SplicePump, canSplice, sendAllNow
from ftpproxy.tls.contexts import sessionReused

# How much a leg reads before it has a partner; beyond it, reading stops.
EARLY_DATA_LIMIT = 256 * 1024


class DataLeg(ConnectingProtocol):
    """
    One data connection, to the client or to the backend.
    """

    def __init__(self) -> None:
        self.sink: DataLeg | None = None
        self.bytesReceived = 0
        self.connectedNow = False
        self.lost = False
        self.lostReason: Failure | None = None
        self._early: list[bytes] = []
        self._earlySize = 0
        self._paused = False
        self._lostWaiters: list[Deferred[None]] = []
        self._sourceOf: DataLeg | None = None
        self._splice: SplicePump | None = None
        self._closeTimer = None

    def connectionMade(self) -> None:
        self.connectedNow = True

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
        if not self.lost and self.transport is not None:
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
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()

    def _sourceFinished(self) -> None:
        if not self.lost:
            self.transport.unregisterProducer()
            self._loseConnection()

    def _sinkLost(self) -> None:
        # The receiver went away: nobody will take the rest.
        self.abort()


def pump(source: DataLeg, sink: DataLeg, reactor=None) -> None:
    """
    Send everything C{source} receives to C{sink}, then close C{sink} when
    C{source} ends; abort C{source} when C{sink} goes away first.

    With a C{reactor} and two clear TCP legs, the kernel moves the bytes
    (splice(2)); otherwise they pass through Python with producer/consumer
    flow control.
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
    handshake: downloads hand the client a fresh TLS 1.3 session ticket for
    its next data connection (curl uses each ticket once), uploads must not
    (a ticket the client never reads makes its kernel reset the connection
    and cut the end of the upload).
    """

    noisy = False

    def __init__(
        self,
        onReady: Callable[[DataLeg], None],
        onFailed: Callable[[Failure], None],
        tls=None,
        outgoing: bool = False,
        requireResumption: bool = False,
    ) -> None:
        self.onReady = onReady
        self.onFailed = onFailed
        self.tls = tls
        self.outgoing = outgoing
        self.requireResumption = requireResumption
        self.download: bool | None = None
        self._waiting: list[ClientDataLeg] = []

    def setDirection(self, download: bool) -> None:
        """
        The transfer is known: start TLS on legs that waited for it.
        """
        self.download = download
        waiting, self._waiting = self._waiting, []
        for leg in waiting:
            leg.startTLS()

    def tlsCreator(self):
        return self.tls if self.download else self.tls.forData()

    def buildProtocol(self, addr) -> DataLeg:
        leg = ClientDataLeg(self)
        leg.factory = self
        return leg


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
        self.transport.startTLS(self._factory.tlsCreator(), not self._factory.outgoing)
        self.transport.resumeProducing()

    def handshakeCompleted(self) -> None:
        if self._factory.requireResumption and not sessionReused(self.transport):
            self.refusal = SessionNotResumed()
            self.abort()
            return
        self._becomeReady()

    def _becomeReady(self) -> None:
        self.ready = True
        self._factory.onReady(self)

    def connectionLost(self, reason: Failure = None) -> None:
        super().connectionLost(reason)
        if not self.ready:
            self._factory.onFailed(Failure(self.refusal) if self.refusal else reason)
