"""
Tests for L{ftpproxy.session.control}: the client's control connection on
a string transport, with a fake admission and a fake session in place of
the session machine.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ftpproxy.data.closing import CONTROL_CLOSE_GRACE
from ftpproxy.session.control import CONTROL_READ_SIZE, MAX_QUEUED_COMMANDS, ClientControl, IAdmission
from ftpproxy.session.limits import Refusal
from ftpproxy.session.interfaces import IClientChannel
from ftpproxy.wire.commandlines import LineTooLong
from ftpproxy.wire.ftptext import Reply
from tests.support.fakes import RecordingEvents

CLIENT = "127.0.0.5"
URGENT = frozenset({b"ABOR", b"QUIT"})
class ListenerTLS:
    """
    Stands for the TLS of the proxy's listener: bound to each session
    (L{ftpproxy.tls.contexts.ServerTLS.forSession}) so that its handshakes
    are reported under the session.
    """

    def __init__(self) -> None:
        self.bound: list[tuple[str, str, Any]] = []

    def forSession(self, sessionId: str, clientHost: str, events: Any) -> tuple[str, str]:
        self.bound.append((sessionId, clientHost, events))
        return ("session TLS", sessionId)


SERVER_TLS = object()


class ControlTransport(StringTransport):
    """
    A string transport with what the control connection asks of a TCP (and
    TLS) transport.
    """

    def __init__(self, host: Any, peer: Any) -> None:
        super().__init__(hostAddress=host, peerAddress=peer)
        self.keepAlive = False
        self.noDelay = False
        self.tlsStartedWith: Any = None

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepAlive = bool(enabled)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = bool(enabled)

    def unregisterProducer(self) -> None:
        # Twisted's TCP and TLS transports allow it without a producer.
        self.producer = None
        self.streaming = None

    def startTLS(self, creator: Any) -> None:
        self.tlsStartedWith = creator

    def getHandle(self) -> Any:
        return _Handle()


class _Handle:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"


@attrs.define
class Config:
    maxLineLength: int = 512


@attrs.define
class Services:
    reactor: Clock = attrs.Factory(Clock)
    config: Config = attrs.Factory(Config)
    serverTLS: Any = attrs.Factory(ListenerTLS)
    events: RecordingEvents = attrs.Factory(RecordingEvents)

    def newSessionId(self) -> str:
        return "s-1"


@implementer(IAdmission)
class Admission:
    def __init__(self, refusal: str | None = None) -> None:
        self.services = Services()
        self.refusal = refusal
        self.admitted: list[tuple[Any, str]] = []
        self.gone: list[tuple[Any, str]] = []
        self.logins: list[tuple[Any, str, bool]] = []

    def admit(self, control: Any, clientHost: str) -> Any:
        self.admitted.append((control, clientHost))
        if self.refusal is not None:
            return Refusal("sessions-per-client", self.refusal)
        return self.services

    def released(self, control: Any, clientHost: str) -> None:
        self.gone.append((control, clientHost))

    def loginChanged(self, control: Any, clientHost: str, loggedIn: bool) -> None:
        self.logins.append((control, clientHost, loggedIn))


class FakeSession:
    """
    The session's inputs, as the control connection gives them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))

    def count(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)


class Control:
    """
    A control connection made on a string transport.
    """

    def __init__(
        self,
        refusal: str | None = None,
        implicitTLS: bool = False,
        clientHost: str = CLIENT,
        localHost: str = "127.0.0.1",
    ) -> None:
        self.admission = Admission(refusal)
        self.session = FakeSession()
        self.started: list[tuple[Any, ...]] = []
        self.protocol = ClientControl(self.admission, implicitTLS, self._start)
        addressType = IPv6Address if ":" in clientHost else IPv4Address
        self.transport = ControlTransport(addressType("TCP", localHost, 2121), addressType("TCP", clientHost, 40000))
        self.protocol.makeConnection(self.transport)

    def _start(self, services: Any, channel: Any, sessionId: str, implicitTLS: bool) -> FakeSession:
        self.started.append((services, channel, sessionId, implicitTLS))
        return self.session

    @property
    def clock(self) -> Clock:
        return self.admission.services.reactor

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lines(self) -> list[Any]:
        """
        Take every waiting line, as the session would.
        """
        taken = []
        while (line := self.protocol.nextCommand()) is not None:
            taken.append(line)
        return taken

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone("bye")))


@pytest.fixture
def c() -> Control:
    return Control()


# -- admission --------------------------------------------------------------------


def test_refused() -> None:
    """
    A refused client gets the refusal as a 421 and the connection closes;
    no session is made, and none is released later.
    """
    c = Control(refusal="Too many sessions from your address; try again later.")
    assert c.transport.value() == b"421 Too many sessions from your address; try again later.\r\n"
    assert c.transport.disconnecting
    assert c.started == []
    assert c.admission.admitted == [(c.protocol, CLIENT)]
    c.send(b"USER alice\r\n")
    assert c.session.calls == []
    c.lose()
    assert c.admission.gone == []
    assert c.session.calls == []


def test_fakeAdmission() -> None:
    assert verifyObject(IAdmission, Admission())


def test_admitted(c: Control) -> None:
    assert c.started == [(c.admission.services, c.protocol, "s-1", False)]
    assert c.protocol.sessionId == "s-1"
    assert c.transport.keepAlive and c.transport.noDelay
    # Replies are watched: a client that does not read them is not read.
    assert c.transport.producer is not None and c.transport.streaming
    assert c.transport.value() == b""
    assert c.transport.tlsStartedWith is None


def test_interface(c: Control) -> None:
    assert verifyObject(IClientChannel, c.protocol)
    assert (c.protocol.clientHost, c.protocol.peerHost) == (CLIENT, CLIENT)
    assert (c.protocol.localHost, c.protocol.interfaceHost) == ("127.0.0.1", "127.0.0.1")
    client, proxy = c.protocol.headerAddresses()
    assert (client.host, client.port, proxy.host, proxy.port) == (CLIENT, 40000, "127.0.0.1", 2121)


def test_mappedLocalHost() -> None:
    c = Control(clientHost="::ffff:127.0.0.5", localHost="::ffff:127.0.0.1")
    assert c.protocol.localHost == "127.0.0.1"
    assert c.protocol.interfaceHost == "::ffff:127.0.0.1"


def test_lostConnection(c: Control) -> None:
    c.send(b"NOOP\r\n")
    c.lose()
    assert c.session.count("clientLost") == 1
    assert c.admission.gone == [(c.protocol, CLIENT)]
    assert c.protocol.nextCommand() is None
    c.send(b"NOOP\r\n")
    assert c.session.count("linesAvailable") == 1
    c.lose()
    assert c.session.count("clientLost") == 1
    assert len(c.admission.gone) == 1


def test_closeSession(c: Control) -> None:
    c.protocol.closeSession(421, "Shutting down.")
    assert c.session.calls == [("close", (421, "Shutting down."))]


# -- lines ------------------------------------------------------------------------


def test_linesOneAtATime(c: Control) -> None:
    c.send(b"USER alice\r\nPA")
    assert c.session.calls == [("linesAvailable", ())]
    assert c.protocol.nextCommand() == b"USER alice"
    assert c.protocol.nextCommand() is None
    c.send(b"SS secret\r")
    assert c.session.count("linesAvailable") == 1
    c.send(b"\nNOOP\nPWD\r\n")
    assert c.session.count("linesAvailable") == 2
    assert c.lines() == [b"PASS secret", b"NOOP", b"PWD"]


def test_tooLongLine(c: Control) -> None:
    c.send(b"NOOP " + b"x" * 600 + b"\r\nPWD\r\n")
    first, second = c.lines()
    assert isinstance(first, LineTooLong)
    assert second == b"PWD"


def test_readingPausedWhenTooManyQueued(c: Control) -> None:
    """
    Beyond MAX_QUEUED_COMMANDS unread lines, the client is not read; it is
    again once the session has taken them all.
    """
    c.send(b"NOOP\r\n" * MAX_QUEUED_COMMANDS)
    assert c.transport.producerState == "producing"
    c.send(b"NOOP\r\n")
    assert c.transport.producerState == "paused"
    for _ in range(MAX_QUEUED_COMMANDS):
        assert c.protocol.nextCommand() == b"NOOP"
        assert c.transport.producerState == "paused"
    assert c.protocol.nextCommand() == b"NOOP"
    assert c.transport.producerState == "producing"


def test_readingPausedWhileRepliesWait(c: Control) -> None:
    """
    The transport pauses the replies producer when its buffer is full:
    reading stops until it resumes it, whatever the queue does.
    """
    c.send(b"NOOP\r\n" * (MAX_QUEUED_COMMANDS + 1))
    c.transport.producer.pauseProducing()
    assert c.transport.producerState == "paused"
    c.lines()
    assert c.transport.producerState == "paused"
    c.transport.producer.resumeProducing()
    assert c.transport.producerState == "producing"


def test_startTLSReadsAgain(c: Control) -> None:
    """
    Starting TLS takes the replies producer off the transport; reading that
    it had paused goes on, or nothing would ever resume it.
    """
    c.transport.producer.pauseProducing()
    assert c.transport.producerState == "paused"
    c.protocol.startTLS(object())
    assert c.transport.producerState == "producing"


def test_takeUrgent(c: Control) -> None:
    """
    ABOR and QUIT are taken out of turn, the first of them first; the other
    lines keep their order.
    """
    c.send(b"RETR a\r\nNOOP\r\n" + b"x" * 600 + b"\r\n12AB\r\nabor\r\nQUIT\r\n")
    assert c.protocol.takeUrgent(URGENT) == b"abor"
    assert c.protocol.takeUrgent(URGENT) == b"QUIT"
    assert c.protocol.takeUrgent(URGENT) is None
    lines = c.lines()
    assert lines[:2] == [b"RETR a", b"NOOP"]
    assert isinstance(lines[2], LineTooLong)
    assert lines[3:] == [b"12AB"]


def test_takeUrgentNone(c: Control) -> None:
    assert c.protocol.takeUrgent(URGENT) is None
    c.send(b"NOOP\r\nABORT\r\n")
    assert c.protocol.takeUrgent(URGENT) is None
    assert c.lines() == [b"NOOP", b"ABORT"]


def test_discardQueuedLines(c: Control) -> None:
    c.send(b"USER evil\r\nPASS x\r\n")
    assert c.protocol.discardPendingInput()
    assert c.protocol.nextCommand() is None


def test_discardPartialLine(c: Control) -> None:
    """
    A partial line counts too, and is gone: what follows starts a new line.
    """
    c.send(b"USER ev")
    assert c.protocol.discardPendingInput()
    c.send(b"il\r\nNOOP\r\n")
    assert c.lines() == [b"il", b"NOOP"]


def test_discardNothing(c: Control) -> None:
    assert not c.protocol.discardPendingInput()
    c.send(b"NOOP\r\n")
    c.lines()
    assert not c.protocol.discardPendingInput()


# -- replies and closing --------------------------------------------------------------


def test_reply(c: Control) -> None:
    c.protocol.reply(Reply.multi(211, [b"Features:", b" EPSV", b"End"]))
    assert c.transport.value() == b"211-Features:\r\n EPSV\r\n211 End\r\n"


def test_noReplyAfterLost(c: Control) -> None:
    c.lose()
    c.protocol.reply(Reply.single(200, "late"))
    assert c.transport.value() == b""


def test_closeAbortsAfterGrace(c: Control) -> None:
    """
    close() closes gracefully, and aborts a connection its peer does not
    let go of within the grace period.
    """
    c.protocol.reply(Reply.single(221, "Goodbye."))
    c.protocol.close()
    assert c.transport.disconnecting
    assert not c.transport.disconnected
    c.clock.advance(CONTROL_CLOSE_GRACE - 0.1)
    assert not c.transport.disconnected
    c.clock.advance(0.1)
    assert c.transport.disconnected
    assert c.transport.value() == b"221 Goodbye.\r\n"
    assert c.clock.getDelayedCalls() == []


def test_closeOnce(c: Control) -> None:
    c.protocol.close()
    c.protocol.close()
    assert len(c.clock.getDelayedCalls()) == 1


def test_closedInTime(c: Control) -> None:
    c.protocol.close()
    c.lose()
    assert c.clock.getDelayedCalls() == []
    assert not c.transport.disconnected


def test_closeAfterLost(c: Control) -> None:
    c.lose()
    c.protocol.close()
    assert c.clock.getDelayedCalls() == []


# -- TLS ---------------------------------------------------------------------------


def test_startTLS(c: Control) -> None:
    """
    AUTH TLS: the replies producer is unregistered during the handshake (TLS
    buffers the replies and would pause the reading that finishes it), and
    registered again after it.
    """
    c.protocol.startTLS(SERVER_TLS)
    assert c.transport.tlsStartedWith is SERVER_TLS
    assert c.transport.producer is None
    c.protocol.handshakeCompleted()
    assert c.transport.producer is not None
    assert c.admission.services.events.named("tlsHandshake") == [("client", "TLSv1.3")]


def test_implicitTLS() -> None:
    """
    Implicit FTPS starts TLS at once, with the listener's TLS bound to the
    session (its id is made first).
    """
    c = Control(implicitTLS=True)
    services = c.admission.services
    assert c.transport.tlsStartedWith == ("session TLS", "s-1")
    assert services.serverTLS.bound == [("s-1", CLIENT, services.events)]
    assert c.transport.producer is None
    assert c.started[0][3] is True
    c.protocol.handshakeCompleted()
    assert c.transport.producer is not None


def test_loginReported(c: Control) -> None:
    """
    The session's word that the client logged in (or out, by REIN) goes to
    the admission, which counts connections not logged in.
    """
    c.protocol.loginChanged(True)
    c.protocol.loginChanged(False)
    assert c.admission.logins == [(c.protocol, CLIENT, True), (c.protocol, CLIENT, False)]


def test_readInSmallPieces(c: Control) -> None:
    """
    A control connection is read CONTROL_READ_SIZE bytes at a time: what
    one read costs is what one client can cost the others in a turn.
    """
    assert c.transport.bufferSize == CONTROL_READ_SIZE
