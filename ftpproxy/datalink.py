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

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

# How much a leg reads before it has a partner; beyond it, reading stops.
EARLY_DATA_LIMIT = 256 * 1024


class DataLeg(Protocol):
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
            from twisted.internet.defer import succeed

            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lostWaiters.append(waiter)
        return waiter

    def close(self) -> None:
        """
        Close gracefully: what is buffered is still sent (and a TLS leg sends
        close_notify).
        """
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """
        Close at once, dropping what is buffered.
        """
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()

    def _sourceFinished(self) -> None:
        if not self.lost:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _sinkLost(self) -> None:
        # The receiver went away: nobody will take the rest.
        self.abort()


def pump(source: DataLeg, sink: DataLeg) -> None:
    """
    Send everything C{source} receives to C{sink}, then close C{sink} when
    C{source} ends; abort C{source} when C{sink} goes away first.
    """
    early, source._early, source._earlySize = source._early, [], 0
    for chunk in early:
        sink.transport.write(chunk)
    if sink.lost:
        source.abort()
        return
    source.sink = sink
    sink._sourceOf = source
    if source.lost:
        sink._sourceFinished()
        return
    sink.transport.registerProducer(source.transport, True)
    if source._paused:
        source._paused = False
        source.transport.resumeProducing()


class DataLegFactory(Factory):
    """
    Builds legs and reports each connected one; used for both accepting and
    connecting.
    """

    def __init__(self, onLeg: Callable[[DataLeg], None] | None = None) -> None:
        self.onLeg = onLeg

    def buildProtocol(self, addr) -> DataLeg:
        leg = _ReportingLeg(self.onLeg)
        leg.factory = self
        return leg


class _ReportingLeg(DataLeg):
    def __init__(self, onLeg: Callable[[DataLeg], None] | None) -> None:
        super().__init__()
        self._onLeg = onLeg

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._onLeg is not None:
            self._onLeg(self)
