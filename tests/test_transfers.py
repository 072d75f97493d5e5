"""
Tests for L{ftpproxy.session.transfers}: the transfer commands and ABOR,
against fakes of the data-channel handler, the protection and the backend
conversation; the transfer itself is real, its backend data connection made
on a memory reactor.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from ftpproxy.backends.balancer import Backend
from ftpproxy.session.interfaces import IDataChannel, IDataChannels
from ftpproxy.session.transfers import TransferCommands
from ftpproxy.settings.config import ProxyConfig
from ftpproxy.tls.contexts import TLSSettings
from tests.support.fakes import (
    FakeCommand,
    FakeConversation,
    FakeDataChannel,
    FakeDataChannels,
    FakeLink,
    FakeProtection,
    FakeRecord,
    RecordingEvents,
)
from tests.support.memory import (
    ALPHA,
    ConnectWatch,
    ProxyReactor,
    loggedFailures,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.usefixtures("loggedFailures")

EPSV_229 = b"229 Entering Extended Passive Mode (|||31000|)"
PASV_227 = b"227 Entering Passive Mode (127,0,0,2,121,24)"  # port 31000
DATA_TLS = object()


class Transfers:
    def __init__(self, requireTLS: bool = False, tls: object = None) -> None:
        self.reactor = ProxyReactor()
        self.config = ProxyConfig(
            backends=(ALPHA,),
            splice=False,
            requireTLS=requireTLS,
            tls=TLSSettings(certificate="unused.pem"),
        )
        self.channels = FakeDataChannels()
        self.protection = FakeProtection(tlsActive=tls is not None, tls=tls)
        self.conversation = FakeConversation()
        self.link = FakeLink(self.conversation, Backend(ALPHA))
        self.events = RecordingEvents()
        self.handler = TransferCommands(
            self.config,
            self.reactor,
            self.channels,
            self.protection,
            self,
            FakeRecord(),
            self.events,
        )
        self.connects = ConnectWatch(self.reactor).new

    # ISessionActions (the transfer handler's part)
    def currentLink(self) -> FakeLink:
        return self.link

    def offer(self, marker: bytes | None = None) -> FakeDataChannel:
        """
        A data channel (and a restart marker) set up for the next transfer.
        """
        channel = FakeDataChannel()
        self.channels.channel = channel
        self.channels.marker = marker
        return channel

    def run(self, line: bytes) -> FakeCommand:
        command = FakeCommand(line)
        handler = self.handler.abort if command.verb == b"ABOR" else self.handler.transfer
        handler(command)
        return command


@pytest.fixture
def t() -> Transfers:
    return Transfers()


def test_fakesKeepTheContracts() -> None:
    assert verifyObject(IDataChannels, FakeDataChannels())
    assert verifyObject(IDataChannel, FakeDataChannel())


def test_protectedDataRequired() -> None:
    """
    Under --require-tls a transfer on a clear data connection is refused;
    the channel (and marker) set up for it go.
    """
    t = Transfers(requireTLS=True)
    channel = t.offer(b"100")
    command = t.run(b"RETR f")
    assert command.text() == b"521 This server requires protected data: send PBSZ 0 and PROT P.\r\n"
    assert command.finished == 1
    assert command.sent == []
    assert t.channels.forgotten == 1
    assert channel.closed
    assert (t.channels.channel, t.channels.marker) == (None, None)


def test_protectedDataGiven() -> None:
    t = Transfers(requireTLS=True, tls=DATA_TLS)
    t.offer()
    command = t.run(b"RETR f")
    assert command.sentLines == [b"EPSV"]
    assert t.channels.forgotten == 0


def test_noChannel(t: Transfers) -> None:
    t.channels.marker = b"100"
    command = t.run(b"STOR f")
    assert command.text() == b"425 Use PORT, EPRT, PASV or EPSV first.\r\n"
    assert command.finished == 1
    assert command.sent == []
    assert not command.urgent
    # A restart marker applies to the next transfer command only.
    assert t.channels.marker is None


@pytest.mark.parametrize("verb, download", [(b"RETR", True), (b"LIST", True), (b"STOR", False), (b"APPE", False)])
def test_transferStarted(t: Transfers, verb: bytes, download: bool) -> None:
    """
    The transfer takes the channel, has ABOR and QUIT read at once, and
    asks the backend for passive mode.
    """
    channel = t.offer()
    command = t.run(verb + b" f")
    assert t.channels.channel is None
    assert command.urgent
    assert channel.download is download
    assert channel.onLeg is not None
    assert command.sentLines == [b"EPSV"]
    assert command.finished == 0


def test_restartMarkerReplayed(t: Transfers) -> None:
    t.offer(b"4096")
    command = t.run(b"RETR f")
    assert t.channels.marker is None
    command.answer(0, EPSV_229)
    [attempt] = t.connects()
    assert (attempt.host, attempt.port) == ("127.0.0.2", 31000)
    attempt.complete()
    assert command.sentLines == [b"EPSV", b"REST 4096"]
    command.answer(1, b"350 Restarting")
    assert command.sentLines == [b"EPSV", b"REST 4096", b"RETR f"]


def test_noMarkerNoRest(t: Transfers) -> None:
    t.offer()
    command = t.run(b"RETR f")
    command.answer(0, EPSV_229)
    t.connects()[0].complete()
    assert command.sentLines == [b"EPSV", b"RETR f"]


def test_aborWithoutTransferRelayed(t: Transfers) -> None:
    abor = t.run(b"ABOR")
    assert abor.sentLines == [b"ABOR"]
    abor.answer(0, b"225 No transfer to abort")
    assert abor.text() == b"225 No transfer to abort\r\n"
    assert abor.finished == 1


def test_aborDuringTransfer(t: Transfers) -> None:
    """
    With a transfer running, the transfer answers ABOR (here before the
    backend has the command: the proxy answers both).
    """
    t.offer()
    command = t.run(b"RETR f")
    abor = t.run(b"ABOR")
    assert abor.sent == []
    assert command.text() == b"426 Transfer aborted.\r\n"
    assert abor.text() == b"226 ABOR command successful.\r\n"
    assert (command.finished, abor.finished) == (1, 1)
    # The transfer is over: the next ABOR goes to the backend.
    again = t.run(b"ABOR")
    assert again.sentLines == [b"ABOR"]


def test_transferDoneIsForgotten(t: Transfers) -> None:
    t.offer()
    command = t.run(b"RETR f")
    command.answer(0, EPSV_229)
    t.connects()[0].complete()
    command.answer(1, b"550 No such file")
    assert command.finished == 1
    abor = t.run(b"ABOR")
    assert abor.sentLines == [b"ABOR"]
    t.handler.interrupt()
    assert command.text() == b"550 No such file\r\n"


def test_interrupt(t: Transfers) -> None:
    """
    QUIT during a transfer: the transfer is aborted without an ABOR.
    """
    t.offer()
    command = t.run(b"RETR f")
    t.handler.interrupt()
    assert command.text() == b"426 Transfer aborted.\r\n"
    assert command.finished == 1


def test_interruptWithoutTransfer(t: Transfers) -> None:
    t.handler.interrupt()
    assert t.reactor.getDelayedCalls() == []


def test_release(t: Transfers) -> None:
    """
    The session ends: the transfer is torn down quietly, timers and channel
    included.
    """
    channel = t.offer()
    command = t.run(b"RETR f")
    command.answer(0, EPSV_229)
    [attempt] = t.connects()
    assert t.reactor.getDelayedCalls() != []
    t.handler.release()
    assert channel.closed
    assert attempt.cancelled
    assert command.text() == b""
    assert t.reactor.getDelayedCalls() == []
    # Released: ABOR goes to the backend as it is.
    assert t.run(b"ABOR").sentLines == [b"ABOR"]


def test_epsvKnowledgeKept(t: Transfers) -> None:
    """
    A backend that answered EPSV with 500 is asked with PASV from then on.
    """
    t.offer()
    first = t.run(b"RETR f")
    first.answer(0, b"500 EPSV not understood")
    assert first.sentLines == [b"EPSV", b"PASV"]
    first.answer(1, PASV_227)
    t.connects()[0].complete()
    first.answer(2, b"550 No such file")
    assert first.finished == 1
    t.offer()
    second = t.run(b"RETR g")
    assert second.sentLines == [b"PASV"]


def test_epsvKeptWhenUnderstood(t: Transfers) -> None:
    t.offer()
    first = t.run(b"RETR f")
    first.answer(0, EPSV_229)
    t.connects()[0].complete()
    first.answer(1, b"550 No such file")
    t.offer()
    assert t.run(b"RETR g").sentLines == [b"EPSV"]


def test_settingsGiven(t: Transfers) -> None:
    """
    The client's data connection must arrive within the data connection
    timeout.
    """
    t.offer()
    command = t.run(b"RETR f")
    command.answer(0, EPSV_229)
    t.connects()[0].complete()
    command.answer(1, b"150 Opening")
    t.reactor.advance(t.config.dataConnectionTimeout - 0.5)
    assert command.finished == 0
    t.reactor.advance(0.5)
    assert command.text() == b"150 Opening\r\n425 Can't open data connection: timed out.\r\n"
