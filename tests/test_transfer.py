"""
Tests for L{ftpproxy.session.transfer}: one transfer against fakes of the
command, the backend conversation and the client's data channel, with real
data legs on memory transports.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.python.failure import Failure

from ftpproxy.data.legs import DataLeg
from ftpproxy.events import EVENT_FIELD, TRANSFER_FINISHED
from ftpproxy.session import transfer as transferModule
from ftpproxy.session.transfer import ClientSide, Direction, Transfer
from tests.support.fakes import (
    FakeCommand,
    FakeConversation,
    FakeDataChannel,
    FakeRecord,
    RecordingEvents,
)
from tests.support.machines import undeclared
from tests.support.memory import (
    CLIENT_HOST,
    PROXY_HOST,
    ConnectAttempt,
    MemoryTransport,
    Peer,
    ProxyReactor,
    address,
    loggedFailures,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.usefixtures("loggedFailures")

EPSV_229 = b"229 Entering Extended Passive Mode (|||31000|)"
STALL = 600.0
CLIENT_DATA_TIMEOUT = 30.0


@attrs.define
class Settings:
    clock: Any
    connectTimeout: float = 10.0
    dataConnectionTimeout: float = CLIENT_DATA_TIMEOUT
    dataStallTimeout: float = STALL
    splice: bool = False


@attrs.define
class Policy:
    dataAddress: str = "check"
    allowLowDataPorts: bool = False


class Run:
    """
    One transfer and everything around it.
    """

    def __init__(self, line: bytes = b"RETR file", restart: bytes | None = None, epsv: bool = True) -> None:
        self.reactor = ProxyReactor()
        self.command = FakeCommand(line)
        self.conversation = FakeConversation()
        self.channel = FakeDataChannel()
        self.events = RecordingEvents()
        self.epsvRefused = 0
        self.done = 0
        direction = transferModule.TRANSFER_DIRECTIONS[self.command.verb]
        self.transfer = Transfer(
            command=self.command,
            direction=direction,
            client=ClientSide(
                self.channel, self.reactor, CLIENT_DATA_TIMEOUT, direction is Direction.DOWNLOAD
            ),
            backend=self.conversation,
            backendPolicy=Policy(),
            restartOffset=restart,
            settings=Settings(self.reactor),
            record=FakeRecord(),
            events=self.events,
            usingEpsv=epsv,
            epsvUnsupported=self._epsvRefused,
            whenDone=self._done,
        )
        self._seen = 0

    def _epsvRefused(self) -> None:
        self.epsvRefused += 1

    def _done(self) -> None:
        self.done += 1

    def connects(self) -> list[ConnectAttempt]:
        attempts = [
            ConnectAttempt(self.reactor, host, port, factory, timeout, bind, connector)
            for (host, port, factory, timeout, bind), connector in zip(
                self.reactor.tcpClients[self._seen :], self.reactor.connectors[self._seen :]
            )
        ]
        self._seen = len(self.reactor.tcpClients)
        return attempts

    def clientLeg(self) -> Peer:
        """
        The client's data connection arrives (through the fake channel).
        """
        leg = DataLeg()
        peer = Peer(leg, MemoryTransport(self.reactor, leg, address(PROXY_HOST, 30000), address(CLIENT_HOST, 40001)))
        leg.makeConnection(peer.transport)
        self.channel.onLeg(leg)
        return peer

    def toCommand(self) -> Peer:
        """
        Start, answer EPSV, connect the backend's data leg: the command is
        sent. Returns the backend's data connection.
        """
        self.transfer.start()
        assert self.command.sentLines == [b"EPSV"]
        self.command.answer(0, EPSV_229)
        [attempt] = self.connects()
        assert (attempt.host, attempt.port) == ("127.0.0.2", 31000)
        return attempt.complete()


def test_tableComplete() -> None:
    """
    Every input is declared in every state, or listed as one that cannot
    happen there.
    """
    states = ["created", "negotiating", "connecting", "restarting", "commanded", "streaming", "aborting", "finishing", "done"]
    missing = undeclared(transferModule._Machine, transferModule._Inputs, states)
    assert missing == {name: set(states) for name, (states, _) in transferModule.CANNOT_HAPPEN.items()}


def test_download() -> None:
    run = Run()
    backendData = run.toCommand()
    assert run.command.sentLines == [b"EPSV", b"RETR file"]
    assert run.channel.download is True
    client = run.clientLeg()
    run.command.answer(1, b"150 Opening")
    assert run.conversation.waiting == 1
    backendData.send(b"payload")
    assert client.take() == b"payload"
    run.command.answer(1, b"226 Done")
    # Held until both legs have closed.
    assert run.command.text() == b"150 Opening\r\n"
    backendData.hangUp()
    run.reactor.advance(0)
    assert client.closed
    client.hangUp()
    assert run.command.text() == b"150 Opening\r\n226 Done\r\n"
    assert run.command.finished == 1
    assert run.done == 1
    assert run.events.named("transferFinished") == [("alpha", "RETR", "download", 226, 7, pytest.approx(0, abs=5))]
    run.reactor.advance(0)
    assert run.reactor.getDelayedCalls() == []
    assert run.channel.closed


def test_transferLogEventIsMarked() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        run = Run()
        run.toCommand()
        run.command.answer(1, b"550 No such file")
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get(EVENT_FIELD) == TRANSFER_FINISHED]
    assert (event["verb"], event["code"], event["user"], event["backend"]) == ("RETR", 550, "alice", "alpha")


def test_refusedBeforeData() -> None:
    """
    An error instead of 150 ends the transfer at once, client leg or not.
    """
    run = Run()
    run.toCommand()
    run.command.answer(1, b"550 No such file")
    assert run.command.text() == b"550 No such file\r\n"
    assert run.command.finished == 1
    run.reactor.advance(0)
    assert run.reactor.getDelayedCalls() == []


def test_epsvFallsBackToPasv() -> None:
    run = Run()
    run.transfer.start()
    run.command.answer(0, b"500 EPSV not understood")
    assert run.epsvRefused == 1
    assert run.command.sentLines == [b"EPSV", b"PASV"]
    run.command.answer(1, b"227 Entering Passive Mode (127,0,0,2,121,24)")
    [attempt] = run.connects()
    assert (attempt.host, attempt.port) == ("127.0.0.2", 31000)


def test_unusablePassiveReply() -> None:
    """
    A 229 naming a port below 1024: 425, and the backend's passive mode is
    cancelled with a silent ABOR.
    """
    run = Run()
    run.transfer.start()
    run.command.answer(0, b"229 Entering Extended Passive Mode (|||21|)")
    assert run.command.text() == b"425 Can't open data connection to the backend.\r\n"
    assert run.command.sentLines == [b"EPSV", b"ABOR"]
    assert run.connects() == []
    assert run.command.finished == 1


def test_restReplayed() -> None:
    run = Run(restart=b"100")
    run.transfer.start()
    run.command.answer(0, EPSV_229)
    [attempt] = run.connects()
    attempt.complete()
    assert run.command.sentLines == [b"EPSV", b"REST 100"]
    run.command.answer(1, b"350 Restarting")
    assert run.command.sentLines == [b"EPSV", b"REST 100", b"RETR file"]
    assert run.command.text() == b""


def test_restRefused() -> None:
    run = Run(restart=b"100")
    run.transfer.start()
    run.command.answer(0, EPSV_229)
    run.connects()[0].complete()
    run.command.answer(1, b"554 Restart not possible")
    assert run.command.text() == b"554 Restart not possible\r\n"
    # The backend still waits for a transfer on its data port: cancelled.
    assert run.command.sentLines == [b"EPSV", b"REST 100", b"ABOR"]
    assert run.command.finished == 1


def test_abortBeforeTheBackendHasTheCommand() -> None:
    """
    The proxy answers both: 426 for the transfer, 226 for the ABOR; the
    backend's passive mode is cancelled once it answers.
    """
    run = Run()
    run.transfer.start()
    abor = FakeCommand(b"ABOR")
    run.transfer.abort(abor)
    assert run.command.text() == b"426 Transfer aborted.\r\n"
    assert abor.text() == b"226 ABOR command successful.\r\n"
    assert (run.command.finished, abor.finished) == (1, 1)
    run.command.answer(0, EPSV_229)
    assert run.command.sentLines == [b"EPSV", b"ABOR"]
    assert run.connects() == []


def test_abortWhileConnectingToTheBackend() -> None:
    run = Run()
    run.transfer.start()
    run.command.answer(0, EPSV_229)
    [attempt] = run.connects()
    run.transfer.abort(None)
    assert attempt.cancelled
    assert run.command.text() == b"426 Transfer aborted.\r\n"


def test_abortAfterTheCommand() -> None:
    """
    The backend has the command: the legs close and the ABOR goes to the
    backend, which answers for both.
    """
    run = Run()
    backendData = run.toCommand()
    client = run.clientLeg()
    run.command.answer(1, b"150 Opening")
    abor = FakeCommand(b"ABOR")
    run.transfer.abort(abor)
    run.reactor.advance(0)
    assert backendData.transport.aborted and client.transport.aborted
    assert abor.sentLines == [b"ABOR"]
    run.command.answer(1, b"426 Connection closed; transfer aborted")
    abor.answer(0, b"226 ABOR successful")
    assert run.command.text() == b"150 Opening\r\n426 Connection closed; transfer aborted\r\n"
    assert abor.text() == b"226 ABOR successful\r\n"


def test_clientNeverConnects() -> None:
    run = Run()
    run.toCommand()
    run.command.answer(1, b"150 Opening")
    run.reactor.advance(CLIENT_DATA_TIMEOUT)
    assert run.command.text() == b"150 Opening\r\n425 Can't open data connection: timed out.\r\n"
    assert run.command.finished == 1
    # The backend's own final reply comes later and goes nowhere; its
    # deadline runs again.
    assert run.conversation.dataDone >= 1
    run.command.answer(1, b"426 aborted")
    assert run.command.text().endswith(b"timed out.\r\n")


def test_clientDataConnectionFails() -> None:
    run = Run()
    run.transfer.start()
    run.channel.onFailed(Failure(ConnectionRefusedError()))
    assert run.command.text() == b"425 Can't open data connection to your data port.\r\n"


def test_stalledTransferAnswersAtOnce() -> None:
    """
    Defect 1: a backend that freezes mid-transfer. The stall timer answers
    the client with 426 itself instead of waiting for a final reply that
    may never come, and hands the backend's reply back to the deadline.
    """
    run = Run()
    backendData = run.toCommand()
    client = run.clientLeg()
    run.command.answer(1, b"150 Opening")
    backendData.send(b"some")
    run.reactor.advance(STALL)
    assert run.command.text() == b"150 Opening\r\n"
    run.reactor.advance(STALL)
    assert run.command.text() == b"150 Opening\r\n426 Data connection stalled; transfer aborted.\r\n"
    assert run.command.finished == 1
    assert run.conversation.dataDone == 1
    run.reactor.advance(0)
    assert backendData.transport.aborted and client.transport.aborted
    assert run.reactor.getDelayedCalls() == []


def test_sessionEnded() -> None:
    run = Run()
    backendData = run.toCommand()
    client = run.clientLeg()
    run.transfer.tearDown()
    run.reactor.advance(0)
    assert run.command.text() == b""
    assert backendData.transport.aborted and client.transport.aborted
    assert run.channel.closed
    assert run.reactor.getDelayedCalls() == []


def test_upload() -> None:
    run = Run(b"STOR up")
    backendData = run.toCommand()
    assert run.channel.download is False
    client = run.clientLeg()
    run.command.answer(1, b"150 Send it")
    client.send(b"data")
    assert backendData.take() == b"data"
    client.hangUp()
    run.reactor.advance(0)
    backendData.hangUp()
    run.command.answer(1, b"226 Stored")
    assert run.command.text() == b"150 Send it\r\n226 Stored\r\n"
    assert run.events.named("transferFinished")[0][2:5] == ("upload", 226, 4)
