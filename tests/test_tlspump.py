"""
The TLS fast path on real loopback sockets: protected transfers move from
Twisted's TLS layer to OpenSSL on the sockets once the handshakes are done,
and behave as before: bytes intact and in order in both directions and TLS
to TLS, close_notify at the end both ways, flow control (a slow receiver
holds the sender back), a vanished receiver or an abort stops everything,
early data arrives first, the byte count keeps counting, and nothing (file
descriptors, reactor registrations, timers) is left behind.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from ftpproxy.internals import takeTransport
from ftpproxy.data.legs import DataLeg, pump
from ftpproxy.data.tlspump import STEP, DirectSocket, SocketPump
from ftpproxy.tls.contexts import BackendTLSSettings, TLSSettings, makeBackendTLS, makeServerTLS
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates

SIZE = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls(certs: CertificatePaths):
    """
    (server creator, client creator) sharing the test CA.
    """
    server = makeServerTLS(TLSSettings(certificate=certs.serverCert, key=certs.serverKey))
    client = makeBackendTLS(BackendTLSSettings(hostname="127.0.0.1", caFile=certs.ca))
    return server, client


def payload(size: int = SIZE) -> bytes:
    block = hashlib.sha256(b"tlspump").digest() * 4096
    return (block * (size // len(block) + 1))[:size]


@implementer(IHandshakeListener)
class Peer(protocol.Protocol):
    """
    The far end of a leg (the FTP client or the backend): optionally TLS,
    sends C{data} and closes (close_notify first under TLS), and/or collects
    what arrives; can start paused (a slow reader).
    """

    def __init__(self, data: bytes = b"", tlsCreator: Any = None, paused: bool = False) -> None:
        self.data = data
        self.tlsCreator = tlsCreator
        self.paused = paused
        self.received = bytearray()
        self.reason: Any = None
        self.closeNotifyReceived = False
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.tlsCreator is not None:
            self.transport.startTLS(self.tlsCreator)
        elif self.paused:
            self.transport.pauseProducing()
        if self.data:
            self.transport.write(self.data)
            self.transport.loseConnection()

    def handshakeCompleted(self) -> None:
        if self.paused:
            # Reads nothing more once the handshake is done.
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        if self.tlsCreator is not None:
            handle = self.transport.getHandle()
            self.closeNotifyReceived = bool(handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        self.done.callback(None)


class ServerLeg(DataLeg):
    """
    A leg the proxy accepted; it starts TLS as the server when told to.
    """

    def __init__(self, ready: defer.Deferred, tlsCreator: Any) -> None:
        super().__init__()
        self._ready = ready
        self._tlsCreator = tlsCreator

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._tlsCreator is not None:
            self.transport.startTLS(self._tlsCreator)
        self._ready.callback(self)


@defer.inlineCallbacks
def legs(sourcePeer: Peer, sinkPeer: Peer, sourceTLS: Any = None, sinkTLS: Any = None,
         acceptSource: bool = True):
    """
    Two proxy legs on real loopback connections. The accepted leg faces a
    peer that connected to the proxy (like the FTP client); the other leg
    connected out to a listening peer (like the backend), through an
    endpoint, and starts TLS as the client if C{sourceTLS}/C{sinkTLS} says.
    C{acceptSource} says which leg is the accepted one.
    """
    accepted: defer.Deferred[DataLeg] = defer.Deferred()
    acceptedPeer, outPeer = (sourcePeer, sinkPeer) if acceptSource else (sinkPeer, sourcePeer)
    acceptedTLS, outTLS = (sourceTLS, sinkTLS) if acceptSource else (sinkTLS, sourceTLS)

    class AcceptFactory(protocol.Factory):
        def buildProtocol(self, addr):
            return ServerLeg(accepted, acceptedTLS)

    remote = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(lambda: outPeer)
    )
    local = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(AcceptFactory())
    outLeg = DataLeg()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", remote.getHost().port), outLeg)
    if outTLS is not None:
        outLeg.transport.startTLS(outTLS)
    yield connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", local.getHost().port), acceptedPeer
    )
    inLeg = yield accepted
    yield remote.stopListening()
    yield local.stopListening()
    return (inLeg, outLeg) if acceptSource else (outLeg, inLeg)


def openDescriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def deferLater(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


class Watch:
    """
    Records whether the pair went through the socket pump.
    """

    def __init__(self, *legs: DataLeg) -> None:
        self.pumped = False
        self.direct: list[DirectSocket] = []
        self._legs = legs
        self._call = task.LoopingCall(self.look)
        self._call.start(0.001)

    def look(self) -> None:
        for leg in self._legs:
            if isinstance(leg._socketPump, SocketPump):
                self.pumped = True
            if leg._direct is not None and leg._direct not in self.direct:
                self.direct.append(leg._direct)

    def stop(self) -> None:
        self.look()
        self._call.stop()


def assertReleased(watch: Watch) -> None:
    """
    Nothing is left registered with the reactor or timed.
    """
    for direct in watch.direct:
        assert direct not in reactor.getReaders()
        assert direct not in reactor.getWriters()
        assert direct._closeTimer is None or not direct._closeTimer.active()


@pytest.mark.parametrize(
    "direction", ["download", "upload", "tls-to-tls"],
)
@pytest_twisted.inlineCallbacks
def test_bytesArriveIntactAndClosedCleanly(tls, direction: str):
    """
    Download: clear backend to TLS client. Upload: TLS client to clear
    backend. TLS to TLS: TLS client to an FTPS backend. The receiver gets
    every byte, in order, then close_notify; a TLS sender gets close_notify
    back.
    """
    server, client = tls
    data = payload()
    if direction == "download":
        sender, receiver = Peer(data), Peer(tlsCreator=client)
        source, sink = yield legs(sender, receiver, sinkTLS=server, acceptSource=False)
    elif direction == "upload":
        sender, receiver = Peer(data, tlsCreator=client), Peer()
        source, sink = yield legs(sender, receiver, sourceTLS=server)
    else:
        sender, receiver = Peer(data, tlsCreator=client), Peer(tlsCreator=server)
        source, sink = yield legs(sender, receiver, sourceTLS=server, sinkTLS=client)
    before = openDescriptors()
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done, sender.done])
    watch.stop()
    assert watch.pumped
    assert sha(receiver.received) == sha(data)
    assert source.bytesReceived == len(data)
    assert receiver.reason.check(ConnectionDone)
    if receiver.tlsCreator is not None:
        assert receiver.closeNotifyReceived
    if sender.tlsCreator is not None:
        assert sender.closeNotifyReceived
    assert source._socketPump is None and sink._socketPump is None
    assertReleased(watch)
    # The four sockets of the two connections are all closed.
    assert openDescriptors() <= before - 4


@pytest_twisted.inlineCallbacks
def test_slowReceiverHoldsTheSenderBack(tls):
    """
    A TLS client that reads nothing: the backend is stalled by the kernel's
    buffers, the proxy holds one buffer, and once the client reads,
    everything arrives.
    """
    server, client = tls
    data = payload()
    sender, receiver = Peer(data), Peer(tlsCreator=client, paused=True)
    source, sink = yield legs(sender, receiver, sinkTLS=server, acceptSource=False)
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield deferLater(0.5)
    assert watch.pumped
    assert 0 < source.bytesReceived < len(data)
    held = source.bytesReceived
    yield deferLater(0.2)
    assert source.bytesReceived == held
    receiver.transport.resumeProducing()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done])
    watch.stop()
    assert sha(receiver.received) == sha(data)


@pytest_twisted.inlineCallbacks
def test_receiverGoneAbortsTheSender(tls):
    server, client = tls
    data = payload()
    sender, receiver = Peer(data), Peer(tlsCreator=client, paused=True)
    source, sink = yield legs(sender, receiver, sinkTLS=server, acceptSource=False)
    before = openDescriptors()
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield deferLater(0.3)
    assert watch.pumped
    receiver.transport.abortConnection()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done, sender.done])
    watch.stop()
    assert source.bytesReceived < len(data)
    assertReleased(watch)
    assert openDescriptors() <= before - 4


@pytest_twisted.inlineCallbacks
def test_uploadingClientGoneStillClosesTheBackendGracefully(tls):
    """
    The TLS client resets in the middle of an upload: what arrived goes to
    the backend, which then sees a normal close (the FTP reply tells the
    rest), as on Twisted's path.
    """
    server, client = tls
    sender, receiver = Peer(tlsCreator=client), Peer()
    source, sink = yield legs(sender, receiver, sourceTLS=server)
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield deferLater(0.2)
    sender.transport.write(b"part of an upload")
    yield deferLater(0.2)
    assert watch.pumped
    sender.transport.abortConnection()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done])
    watch.stop()
    assert bytes(receiver.received) == b"part of an upload"
    assert receiver.reason.check(ConnectionDone)
    assertReleased(watch)


@pytest_twisted.inlineCallbacks
def test_abortStopsThePump(tls):
    server, client = tls
    data = payload()
    sender, receiver = Peer(data), Peer(tlsCreator=client, paused=True)
    source, sink = yield legs(sender, receiver, sinkTLS=server, acceptSource=False)
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield deferLater(0.3)
    assert watch.pumped
    source.abort()
    sink.abort()
    yield defer.gatherResults([source.whenLost(), sink.whenLost()])
    watch.stop()
    assert source._socketPump is None and sink._socketPump is None
    assertReleased(watch)


@pytest_twisted.inlineCallbacks
def test_earlyDataArrivesFirst(tls):
    """
    Upload bytes that arrived before the pairing (kept by the leg) reach
    the backend before everything after it.
    """
    server, client = tls
    sender, receiver = Peer(tlsCreator=client), Peer()
    source, sink = yield legs(sender, receiver, sourceTLS=server)
    sender.transport.write(b"early " * 1000)
    yield deferLater(0.2)
    assert source.bytesReceived == 6000
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield deferLater(0.1)
    assert watch.pumped
    sender.transport.write(b"late " * 1000)
    sender.transport.loseConnection()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done])
    watch.stop()
    assert bytes(receiver.received) == b"early " * 1000 + b"late " * 1000
    assert source.bytesReceived == 11000


@pytest_twisted.inlineCallbacks
def test_waitsForTheBackendHandshake(tls):
    """
    Paired while the FTPS backend's handshake still runs (the proxy sends
    the transfer command without waiting for it): the pair moves to the
    pump once it is done.
    """
    server, client = tls
    data = payload(3 * STEP + 17)
    sender, receiver = Peer(data, tlsCreator=server), Peer(tlsCreator=client)
    source, sink = yield legs(sender, receiver, sourceTLS=client, sinkTLS=server,
                              acceptSource=False)
    assert not source.secured
    watch = Watch(source, sink)
    pump(source, sink, reactor)
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done, sender.done])
    watch.stop()
    assert source.secured
    assert sha(receiver.received) == sha(data)
    assert receiver.closeNotifyReceived and sender.closeNotifyReceived


@pytest_twisted.inlineCallbacks
def test_clearPairsStayWithSplice(tls):
    sender, receiver = Peer(b"clear"), Peer()
    source, sink = yield legs(sender, receiver)
    pump(source, sink, reactor)
    assert source._upgrade is None and source._splice is not None
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), receiver.done])
    assert bytes(receiver.received) == b"clear"


@pytest_twisted.inlineCallbacks
def test_whatTwistedHadAcceptedGoesOutAtOnce():
    """
    Bytes Twisted had accepted but not sent when a leg is taken (on a
    client's upload leg: its session ticket, which must reach the client
    before the go-ahead to send) go out at once, not whenever the pump next
    writes to that leg, which for a source may be never.
    """
    client, backend = Peer(), Peer()
    source, sink = yield legs(client, backend)
    source.transport.write(b"ticket")
    tlsConnection, pending = takeTransport(source.transport, source)
    assert pending == b"ticket"
    direct = DirectSocket(reactor, source, tlsConnection, pending)
    yield until(lambda: client.received)
    assert bytes(client.received) == b"ticket"
    direct.abort()
    sink.abort()
    yield defer.gatherResults([source.whenLost(), sink.whenLost(), client.done, backend.done])
    assert direct not in reactor.getWriters()


@defer.inlineCallbacks
def until(condition, timeout: float = 5.0):
    waited = 0.0
    while not condition():
        assert waited < timeout, "timed out"
        yield deferLater(0.01)
        waited += 0.01
