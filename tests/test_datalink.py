"""
Tests for L{ftpproxy.data.legs}: data legs and the one-way pump between
them, in memory.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from ftpproxy.data.legs import EARLY_DATA_LIMIT, DataLeg, DataLegFactory, pump
from tests.support.memory import (
    CLIENT_HOST,
    PROXY_HOST,
    MemoryTransport,
    ProxyReactor,
    address,
    loggedFailures,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.usefixtures("loggedFailures")


def connectedLeg(reactor: ProxyReactor, leg: DataLeg | None = None) -> DataLeg:
    leg = leg if leg is not None else DataLeg()
    leg.makeConnection(
        MemoryTransport(reactor, leg, address(PROXY_HOST, 30000), address(CLIENT_HOST, 40001))
    )
    return leg


def pair(reactor: ProxyReactor) -> tuple[DataLeg, DataLeg]:
    source, sink = connectedLeg(reactor), connectedLeg(reactor)
    pump(source, sink)
    return source, sink


class TestPump:
    def test_bytesFlowInOrder(self) -> None:
        reactor = ProxyReactor()
        source, sink = pair(reactor)
        for chunk in (b"abc", b"", b"def", b"\x00\xff" * 10):
            source.dataReceived(chunk)
        assert sink.transport.value() == b"abcdef" + b"\x00\xff" * 10
        assert source.bytesReceived == 26

    def test_sinkDataDropped(self) -> None:
        """
        Bytes arriving on the sink run against the transfer's direction and
        go nowhere.
        """
        reactor = ProxyReactor()
        source, sink = pair(reactor)
        sink.dataReceived(b"unexpected")
        assert source.transport.value() == b""
        assert sink.transport.value() == b""

    def test_flowControl(self) -> None:
        """
        The source's transport produces for the sink's: when the sink's
        buffer is full and its transport pauses its producer, the source
        stops reading, and reads again on resume.
        """
        reactor = ProxyReactor()
        source, sink = pair(reactor)
        assert sink.transport.producer is source.transport
        assert sink.transport.streaming is True
        sink.transport.producer.pauseProducing()
        assert source.transport.producerState == "paused"
        sink.transport.producer.resumeProducing()
        assert source.transport.producerState == "producing"

    def test_sourceEndedClosesSinkAfterWriting(self) -> None:
        """
        When the sender is done, the sink is closed gracefully (so that what
        it buffers is still delivered), after the producer is unregistered.
        """
        reactor = ProxyReactor()
        source, sink = pair(reactor)
        source.dataReceived(b"last bytes")
        source.transport.connectionLost(ConnectionDone())
        assert sink.transport.value() == b"last bytes"
        assert sink.transport.producer is None
        assert sink.transport.disconnecting
        assert not sink.transport.aborted
        reactor.advance(0)
        assert sink.lost and source.lost
        assert not source.transport.aborted

    def test_sourceLostUncleanlyStillClosesSink(self) -> None:
        reactor = ProxyReactor()
        source, sink = pair(reactor)
        source.dataReceived(b"partial")
        source.transport.connectionLost(ConnectionLost())
        assert sink.transport.disconnecting
        assert sink.transport.value() == b"partial"

    def test_sinkLostAbortsSource(self) -> None:
        """
        A receiver that went away will take nothing more: the sender is cut
        at once.
        """
        reactor = ProxyReactor()
        source, sink = pair(reactor)
        sink.transport.connectionLost(ConnectionLost())
        assert source.transport.aborted
        reactor.advance(0)
        assert source.lost

    def test_whenLost(self) -> None:
        reactor = ProxyReactor()
        leg = connectedLeg(reactor)
        fired: list[object] = []
        leg.whenLost().addCallback(fired.append)
        leg.whenLost().addCallback(fired.append)
        assert fired == []
        leg.close()
        assert fired == []
        reactor.advance(0)
        assert fired == [None, None]
        assert leg.lostReason.check(ConnectionDone)
        late: list[object] = []
        leg.whenLost().addCallback(late.append)
        assert late == [None]

    def test_closeAndAbort(self) -> None:
        reactor = ProxyReactor()
        graceful, abrupt = connectedLeg(reactor), connectedLeg(reactor)
        graceful.close()
        abrupt.abort()
        assert graceful.transport.disconnecting and not graceful.transport.aborted
        assert abrupt.transport.aborted
        reactor.advance(0)
        # Once lost, closing again does nothing.
        graceful.abort()
        abrupt.close()
        assert not graceful.transport.aborted


class TestEarlyData:
    def test_keptUntilPaired(self) -> None:
        """
        What a leg receives before it has a partner (a backend that sends
        before the client has connected) is delivered first, in order.
        """
        reactor = ProxyReactor()
        source, sink = connectedLeg(reactor), connectedLeg(reactor)
        source.dataReceived(b"early ")
        source.dataReceived(b"bird")
        assert source.transport.producerState == "producing"
        pump(source, sink)
        source.dataReceived(b" sings")
        assert sink.transport.value() == b"early bird sings"

    def test_readingPausedBeyondLimit(self) -> None:
        """
        Beyond the limit the leg stops reading instead of buffering more,
        and reads again once paired.
        """
        reactor = ProxyReactor()
        source, sink = connectedLeg(reactor), connectedLeg(reactor)
        chunk = b"x" * 65536
        sent = 0
        while sent <= EARLY_DATA_LIMIT:
            assert source.transport.producerState == "producing"
            source.dataReceived(chunk)
            sent += len(chunk)
        assert source.transport.producerState == "paused"
        pump(source, sink)
        assert source.transport.producerState == "producing"
        assert sink.transport.value() == chunk * (sent // len(chunk))
        assert sink.transport.producer is source.transport

    def test_sourceEndedBeforePairing(self) -> None:
        """
        A small file can be sent and its connection closed before the
        client's leg exists: it is delivered whole, then the sink closes.
        """
        reactor = ProxyReactor()
        source = connectedLeg(reactor)
        source.dataReceived(b"whole file")
        source.transport.connectionLost(ConnectionDone())
        sink = connectedLeg(reactor)
        pump(source, sink)
        assert sink.transport.value() == b"whole file"
        assert sink.transport.disconnecting and not sink.transport.aborted
        assert sink.transport.producer is None

    def test_sinkLostBeforePairing(self) -> None:
        reactor = ProxyReactor()
        source, sink = connectedLeg(reactor), connectedLeg(reactor)
        source.dataReceived(b"data")
        sink.transport.connectionLost(ConnectionLost())
        pump(source, sink)
        assert source.transport.aborted
        assert sink.transport.producer is None


class TestFactory:
    def test_clearLegReadyAtOnce(self) -> None:
        reactor = ProxyReactor()
        ready: list[DataLeg] = []
        failed: list[Failure] = []
        factory = DataLegFactory(ready.append, failed.append)
        leg = factory.buildProtocol(address(CLIENT_HOST, 40001))
        assert ready == []
        connectedLeg(reactor, leg)
        assert ready == [leg]
        leg.transport.connectionLost(ConnectionDone())
        assert failed == []
