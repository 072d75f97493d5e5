"""
Session tickets on upload data connections, and the held go-ahead that
keeps them from cutting uploads (L{DataLegFactory.afterHandshake}).

Every protected data connection hands the client a fresh TLS 1.3 ticket
(curl 7.88 uses each ticket once). A client that closes after an upload
without reading a ticket that arrived makes its kernel reset the
connection, which can drop the end of the upload; so while the client's
handshake on an upload's data connection is under way, the reply that lets
it start sending waits until the handshake, and the ticket, are done.

Here the client is Python's ssl module on memory BIOs over a real loopback
socket, so the test decides when each handshake flight goes out.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from ftpproxy.data.legs import TICKET_HOLD_LIMIT, ClientDataLeg, DataLegFactory
from ftpproxy.data.passive import PassiveDataListener, PassivePortPool
from ftpproxy.settings.config import PortRange
from ftpproxy.tls.contexts import TLSSettings, makeServerTLS
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from tests.support.proxy import freePortRange


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def serverTLS(certs: CertificatePaths):
    return makeServerTLS(TLSSettings(certificate=certs.serverCert, key=certs.serverKey))


def deferLater(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class SteppedClient:
    """
    A TLS 1.3 client whose handshake flights the test sends one by one.
    """

    def __init__(self, certs: CertificatePaths, port: int) -> None:
        context = ssl.create_default_context(cafile=str(certs.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setblocking(False)

    def step(self) -> bool:
        """
        Advance the handshake with what has arrived; send what it produced.
        True once the handshake is done on this side.
        """
        self.receive()
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        self.socket.sendall(self.outgoing.read())
        return done

    def receive(self) -> int:
        got = 0
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return got
            if not data:
                return got
            got += len(data)
            self.incoming.write(data)

    def ticketArrived(self) -> bool:
        """
        Read what came; whether a session ticket was among it.
        """
        before = self.tls.session
        self.receive()
        try:
            self.tls.read(1)
        except ssl.SSLWantReadError:
            pass
        after = self.tls.session
        return after is not None and after.has_ticket and after.id != before.id

    def close(self) -> None:
        self.socket.close()


class Recording(DataLegFactory):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready: list[ClientDataLeg] = []
        self.failed: list[Any] = []
        super().__init__(self.ready.append, self.failed.append, *args, **kwargs)
        self.built: list[ClientDataLeg] = []

    def buildProtocol(self, addr):
        leg = super().buildProtocol(addr)
        self.built.append(leg)
        return leg


@defer.inlineCallbacks
def until(condition, timeout: float = 5.0):
    waited = 0.0
    while not condition():
        assert waited < timeout, "timed out"
        yield deferLater(0.01)
        waited += 0.01


@defer.inlineCallbacks
def midHandshake(certs: CertificatePaths, factory: Recording, download: bool):
    """
    A client connected to C{factory}'s port that has sent its ClientHello and
    received the server's flight, but not yet sent its Finished.
    """
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = SteppedClient(certs, port.getHost().port)
    yield until(lambda: factory.built)
    leg = factory.built[0]
    assert not client.step()  # ClientHello out
    factory.setDirection(download)
    yield until(lambda: leg.handshaking)
    yield port.stopListening()
    return client, leg


@pytest_twisted.inlineCallbacks
def test_uploadGoAheadWaitsForTheTicket(certs, serverTLS):
    """
    The go-ahead of an upload whose client is mid-handshake waits; it goes
    once the handshake is done, and by then the upload's data connection
    has sent the client its ticket for the next one.
    """
    factory = Recording(tls=serverTLS, clock=task.Clock())
    client, leg = yield midHandshake(certs, factory, download=False)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("150"))
    yield deferLater(0.1)
    assert sent == []
    assert client.step()  # Finished out: the handshake is done
    yield until(lambda: sent)
    assert leg.ready and factory.ready == [leg]
    yield until(client.ticketArrived)
    client.close()
    yield leg.whenLost()


@pytest_twisted.inlineCallbacks
def test_repliesStayInOrder(certs, serverTLS):
    factory = Recording(tls=serverTLS, clock=task.Clock())
    client, leg = yield midHandshake(certs, factory, download=False)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("first"))
    factory.afterHandshake(lambda: sent.append("second"))
    client.step()
    yield until(lambda: len(sent) == 2)
    factory.afterHandshake(lambda: sent.append("third"))
    assert sent == ["first", "second", "third"]
    client.close()
    yield leg.whenLost()


@pytest_twisted.inlineCallbacks
def test_downloadsAreNotHeld(certs, serverTLS):
    factory = Recording(tls=serverTLS, clock=task.Clock())
    client, leg = yield midHandshake(certs, factory, download=True)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("150"))
    assert sent == ["150"]
    client.close()
    yield leg.whenLost()


@pytest_twisted.inlineCallbacks
def test_clientThatWaitsForTheGoAheadIsNotHeld(certs, serverTLS):
    """
    Python's ftplib connects, sends the command and begins its handshake
    only after the 150: holding the 150 for it would deadlock.
    """
    factory = Recording(tls=serverTLS, clock=task.Clock())
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = SteppedClient(certs, port.getHost().port)
    yield until(lambda: factory.built)
    leg = factory.built[0]
    factory.setDirection(False)
    yield deferLater(0.05)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("150"))
    assert sent == ["150"] and not leg.handshaking
    client.close()
    yield leg.whenLost()
    yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_lateHandshakeGetsNoTicketOnUploads(certs, serverTLS):
    """
    A client that begins TLS on an upload's data connection only after it
    sent the command (lftp, ftplib) gets no ticket there: it would not read
    it, and its close would then reset the connection. Nothing is held for
    it either.
    """
    factory = Recording(tls=serverTLS, clock=task.Clock())
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = SteppedClient(certs, port.getHost().port)
    yield until(lambda: factory.built)
    leg = factory.built[0]
    factory.setDirection(False)
    assert not leg.helloWaiting
    assert not client.step()
    yield until(lambda: leg.handshaking)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("150"))
    assert sent == ["150"]
    yield until(client.step)
    yield until(lambda: leg.ready)
    yield deferLater(0.2)
    assert not client.ticketArrived()
    client.close()
    yield leg.whenLost()
    yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_earlyHandshakeGetsATicketOnUploads(certs, serverTLS):
    factory = Recording(tls=serverTLS, clock=task.Clock())
    client, leg = yield midHandshake(certs, factory, download=False)
    assert leg.helloWaiting
    yield until(client.step)
    yield until(client.ticketArrived)
    client.close()
    yield leg.whenLost()


@pytest_twisted.inlineCallbacks
def test_heldAtMostTheLimit(certs, serverTLS):
    clock = task.Clock()
    factory = Recording(tls=serverTLS, clock=clock)
    client, leg = yield midHandshake(certs, factory, download=False)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("150"))
    clock.advance(TICKET_HOLD_LIMIT - 0.1)
    assert sent == []
    clock.advance(0.1)
    assert sent == ["150"]
    assert not clock.getDelayedCalls()
    client.close()
    yield leg.whenLost()


@pytest_twisted.inlineCallbacks
def test_releasedWhenTheConnectionGoes(certs, serverTLS):
    clock = task.Clock()
    factory = Recording(tls=serverTLS, clock=clock)
    client, leg = yield midHandshake(certs, factory, download=False)
    sent: list[str] = []
    factory.afterHandshake(lambda: sent.append("150"))
    client.close()
    yield leg.whenLost()
    assert sent == ["150"]
    yield until(lambda: factory.failed)
    assert not clock.getDelayedCalls()


@pytest_twisted.inlineCallbacks
def test_connectionAndCommandInTheSameTurn(certs, serverTLS):
    """
    curl connects, sends its ClientHello, then the command; the proxy may
    read the command before it has accepted the connection. The listener
    accepts it first, so curl's early handshake is still seen (and gets its
    ticket).
    """
    pool = _AnyPortPool(task.Clock())
    listener = PassiveDataListener(pool, "127.0.0.1", ("127.0.0.1",), "test", tls=serverTLS)
    client = SteppedClient(certs, listener.port)
    assert not client.step()  # ClientHello out, not yet accepted by the proxy
    assert listener.leg is None
    listener.setDirection(False)
    assert listener.leg is not None and listener.leg.helloWaiting
    leg = listener.leg
    yield until(client.step)
    yield until(client.ticketArrived)
    listener.close()
    client.close()
    yield leg.whenLost()
    pool.close()


@pytest_twisted.inlineCallbacks
def test_closingThePassiveListenerReleases(certs, serverTLS):
    """
    A transfer that ends (or is torn down) while its go-ahead is held sends
    it before whatever it replies next, and the listener leaves no timer.
    """
    clock = task.Clock()
    pool = _AnyPortPool(clock)
    listener = PassiveDataListener(pool, "127.0.0.1", ("127.0.0.1",), "test", tls=serverTLS)
    client = SteppedClient(certs, listener.port)
    legs: list[Any] = []
    listener.whenConnected(legs.append, legs.append)
    yield until(lambda: listener.leg is not None)
    assert not client.step()
    listener.setDirection(False)
    yield until(lambda: listener.leg.handshaking)
    sent: list[str] = []
    listener.afterHandshake(lambda: sent.append("150"))
    assert sent == []
    leg = listener.leg
    listener.close()
    assert sent == ["150"]
    assert not clock.getDelayedCalls()
    client.close()
    yield leg.whenLost()
    pool.close()


class _AnyPortPool(PassivePortPool):
    """
    A passive port pool on a few free ports that hands the data legs a clock
    the test drives. Close it when done.
    """

    def __init__(self, clock: task.Clock) -> None:
        ports = freePortRange(4)
        super().__init__(reactor, PortRange(ports[0], ports[-1]))
        self._clock = clock

    @property
    def reactor(self):
        return self._clock
