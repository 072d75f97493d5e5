"""
The splice(2) data path on real loopback sockets: the bytes arrive intact
and in order, a slow receiver holds the sender back instead of filling
memory, a receiver that goes away stops the transfer, and nothing (pipes,
reactor registrations) is left behind.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

from ftpproxy.data.legs import DataLeg, pump
from ftpproxy.data.splicing import SplicePump, canSplice

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux only")

SIZE = 24 * 1024 * 1024


def payload(size: int = SIZE) -> bytes:
    block = hashlib.sha256(b"splice").digest() * 4096
    return (block * (size // len(block) + 1))[:size]


class Sender(protocol.Protocol):
    """
    Writes C{data} as soon as it is connected, then closes.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.done.callback(None)


class Receiver(protocol.Protocol):
    """
    Collects what arrives; optionally starts paused (a slow client).
    """

    def __init__(self, paused: bool = False) -> None:
        self.received = bytearray()
        self.paused = paused
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.paused:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.done.callback(None)


@defer.inlineCallbacks
def legPair(serverProtocol: protocol.Protocol, clientProtocol: protocol.Protocol):
    """
    A DataLeg accepted from C{clientProtocol}'s connection and one DataLeg
    connected out to C{serverProtocol}, like the proxy's two legs.
    """
    accepted: defer.Deferred[DataLeg] = defer.Deferred()

    class AcceptFactory(protocol.Factory):
        def buildProtocol(self, addr):
            leg = _NotifyingLeg(accepted)
            return leg

    remote = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(lambda: serverProtocol)
    )
    local = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(AcceptFactory())
    outLeg = DataLeg()
    yield connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", remote.getHost().port), outLeg
    )
    yield connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", local.getHost().port), clientProtocol
    )
    inLeg = yield accepted
    yield remote.stopListening()
    yield local.stopListening()
    return outLeg, inLeg


class _NotifyingLeg(DataLeg):
    def __init__(self, ready: defer.Deferred) -> None:
        super().__init__()
        self._ready = ready

    def connectionMade(self) -> None:
        super().connectionMade()
        self._ready.callback(self)


def openDescriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.inlineCallbacks
def test_bytesArriveIntactThroughSplice():
    data = payload()
    sender, receiver = Sender(data), Receiver()
    source, sink = yield legPair(sender, receiver)
    before = openDescriptors()
    assert canSplice(source, sink)
    pump(source, sink, reactor)
    assert isinstance(source._splice, SplicePump)
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done, sender.done])
    assert hashlib.sha256(receiver.received).hexdigest() == hashlib.sha256(data).hexdigest()
    assert source.bytesReceived == len(data)
    assert source._splice is None and sink._splice is None
    # The pipe and the four sockets of the two connections are all closed.
    assert openDescriptors() <= before - 4


def closeGraceTimers() -> list:
    """
    The pending grace-period checks of connections being closed.
    """
    return [
        call
        for call in reactor.getDelayedCalls()
        if getattr(call.func, "__qualname__", "") == "GraceTimer._check"
    ]


@pytest_twisted.inlineCallbacks
def test_noCloseTimerLeftBehind():
    """
    Once a spliced transfer is over, no grace-period timer of its closing
    sink is left running (the sink used to be closed twice, and the first
    timer was orphaned).
    """
    assert closeGraceTimers() == []
    sender, receiver = Sender(payload(1024 * 1024)), Receiver()
    source, sink = yield legPair(sender, receiver)
    pump(source, sink, reactor)
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done, sender.done])
    assert closeGraceTimers() == []


@pytest_twisted.inlineCallbacks
def test_slowReceiverHoldsTheSenderBack():
    """
    A receiver that reads nothing: the sender is stalled by the kernel's
    buffers, the proxy holds at most a pipe's worth, and once the receiver
    reads everything arrives.
    """
    data = payload()
    sender, receiver = Sender(data), Receiver(paused=True)
    source, sink = yield legPair(sender, receiver)
    pump(source, sink, reactor)
    yield deferLater(0.5)
    assert 0 < source.bytesReceived < len(data)
    assert not receiver.received
    receiver.transport.resumeProducing()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done])
    assert bytes(receiver.received) == data


@pytest_twisted.inlineCallbacks
def test_receiverGoneAbortsTheSender():
    data = payload()
    sender, receiver = Sender(data), Receiver(paused=True)
    source, sink = yield legPair(sender, receiver)
    before = openDescriptors()
    pump(source, sink, reactor)
    yield deferLater(0.2)
    receiver.transport.abortConnection()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done, sender.done])
    assert source.bytesReceived < len(data)
    assert source._splice is None
    # The pipe and the four sockets of the two connections are all closed.
    assert openDescriptors() <= before - 4


@pytest_twisted.inlineCallbacks
def test_abortStopsSplicing():
    data = payload()
    sender, receiver = Sender(data), Receiver(paused=True)
    source, sink = yield legPair(sender, receiver)
    pump(source, sink, reactor)
    yield deferLater(0.1)
    source.abort()
    sink.abort()
    yield defer.gatherResults([source.whenLost(), sink.whenLost()])
    assert source._splice is None and sink._splice is None


def test_tlsOrBufferedLegsAreNotSpliced():
    class Fake:
        def __init__(self, transport):
            self.transport = transport

    assert not canSplice(Fake(object()), Fake(object()))


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
