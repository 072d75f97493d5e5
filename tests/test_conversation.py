"""
Tests for L{ftpproxy.session.conversation}: replies matched to the commands
that asked for them, replies nothing asked for, and the reply deadline.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ftpproxy.backends.control import BackendControl
from ftpproxy.session.conversation import BackendConversation, IConversationListener
from ftpproxy.session.interfaces import IBackendConversation, IExchange
from ftpproxy.session.limits import DeadlineQueue
from ftpproxy.wire.ftptext import Reply

REPLY_TIMEOUT = 60.0


@implementer(IExchange)
class Recorder:
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, int]] = []

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        self.replies.append((line, reply.code))


@implementer(IConversationListener)
class Listener:
    def __init__(self) -> None:
        self.gone: list[tuple[str, Reply | None, bool]] = []

    def backendGone(self, why: str, reply: Reply | None, expected: bool) -> None:
        self.gone.append((why, reply, expected))


class TCPStringTransport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Backend:
    """
    A backend control connection over a string transport, and the
    conversation on it.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.control = BackendControl()
        self.transport = TCPStringTransport()
        self.control.makeConnection(self.transport)
        self.listener = Listener()
        self.conversation = BackendConversation(
            DeadlineQueue(self.clock), self.control, self.listener, REPLY_TIMEOUT, "s1", "alpha"
        )

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def says(self, data: bytes) -> None:
        self.control.dataReceived(data)


@pytest.fixture
def b() -> Backend:
    return Backend()


def test_interface(b: Backend) -> None:
    assert verifyObject(IBackendConversation, b.conversation)


def test_repliesGoToTheCommandsInOrder(b: Backend) -> None:
    first, second = Recorder(), Recorder()
    b.conversation.send(b"CWD /x", first)
    b.conversation.send(b"PWD", second)
    assert b.sent() == b"CWD /x\r\nPWD\r\n"
    b.says(b"250 ok\r\n257 \"/x\"\r\n")
    assert first.replies == [(b"CWD /x", 250)]
    assert second.replies == [(b"PWD", 257)]


def test_preliminaryRepliesStayWithTheirCommand(b: Backend) -> None:
    first, second = Recorder(), Recorder()
    b.conversation.send(b"RETR f", first)
    b.conversation.send(b"NOOP", second)
    b.says(b"150 here it comes\r\n226 done\r\n200 noop\r\n")
    assert first.replies == [(b"RETR f", 150), (b"RETR f", 226)]
    assert second.replies == [(b"NOOP", 200)]


def test_unpromptedReplyDropped(b: Backend) -> None:
    """
    A reply with no command waiting is not passed on: it would put the
    client one reply out of step. The next command gets its own reply.
    """
    b.says(b"200 stray\r\n")
    assert b.listener.gone == []
    recorder = Recorder()
    b.conversation.send(b"NOOP", recorder)
    b.says(b"200 NOOP ok\r\n")
    assert recorder.replies == [(b"NOOP", 200)]


def test_unprompted421EndsTheConversation(b: Backend) -> None:
    b.says(b"421 Timeout, closing\r\n")
    [(why, reply, expected)] = b.listener.gone
    assert reply is not None and reply.code == 421
    assert not expected
    assert b.transport.disconnecting


def test_deadline(b: Backend) -> None:
    """
    A backend that does not answer within the reply timeout is gone; the
    deadline restarts with every reply.
    """
    recorder = Recorder()
    b.conversation.send(b"LIST", recorder)
    b.clock.advance(REPLY_TIMEOUT - 1)
    b.says(b"150 listing\r\n")
    b.clock.advance(REPLY_TIMEOUT - 1)
    assert b.listener.gone == []
    b.clock.advance(1)
    [(why, reply, expected)] = b.listener.gone
    assert why == "did not answer LIST within 60s"
    assert reply is None and not expected
    assert b.transport.disconnecting
    assert b.clock.getDelayedCalls() == []


def test_noDeadlineWhenNothingIsOwed(b: Backend) -> None:
    """
    With every command answered the deadline is off: its reactor call, kept
    for the next command, comes due and does nothing, and is not made again.
    """
    recorder = Recorder()
    b.conversation.send(b"NOOP", recorder)
    b.says(b"200 ok\r\n")
    b.clock.advance(REPLY_TIMEOUT)
    assert b.listener.gone == []
    assert b.clock.getDelayedCalls() == []
    b.clock.advance(REPLY_TIMEOUT * 10)
    assert b.listener.gone == []


def test_oneReactorCallForManyCommands(b: Backend) -> None:
    """
    The deadline of a conversation is one reactor call, moved along, not one
    per command.
    """
    for _ in range(5):
        b.conversation.send(b"NOOP", Recorder())
        b.says(b"200 ok\r\n")
    calls = b.clock.getDelayedCalls()
    assert len(calls) == 1
    b.conversation.send(b"NOOP", Recorder())
    assert b.clock.getDelayedCalls() == calls


def test_dataPausesTheDeadline(b: Backend) -> None:
    """
    While a transfer's data flows, its final reply is not due; it is again
    once the data legs are done.
    """
    recorder = Recorder()
    b.conversation.send(b"RETR big", recorder)
    b.says(b"150 ok\r\n")
    b.conversation.waitForData()
    b.clock.advance(REPLY_TIMEOUT * 10)
    assert b.listener.gone == []
    b.conversation.dataFinished()
    b.clock.advance(REPLY_TIMEOUT)
    assert [why for why, _, _ in b.listener.gone] == ["did not answer RETR within 60s"]


def test_closedByBackend(b: Backend) -> None:
    b.conversation.send(b"NOOP", Recorder())
    b.control.connectionLost(Failure(ConnectionDone("bye")))
    [(why, reply, expected)] = b.listener.gone
    assert why.startswith("closed the connection")
    assert not expected
    assert b.clock.getDelayedCalls() == []


def test_closedAfterQuitIsExpected(b: Backend) -> None:
    b.conversation.send(b"QUIT", Recorder())
    b.control.connectionLost(Failure(ConnectionDone("bye")))
    [(why, reply, expected)] = b.listener.gone
    assert expected


def test_malformedReply(b: Backend) -> None:
    b.conversation.send(b"NOOP", Recorder())
    b.says(b"XYZ not a reply\r\n")
    [(why, reply, expected)] = b.listener.gone
    assert why.startswith("sent a malformed reply")
    assert b.transport.disconnecting


def test_closeReportsNothing(b: Backend) -> None:
    b.conversation.send(b"NOOP", Recorder())
    b.conversation.close()
    b.control.connectionLost(Failure(ConnectionDone("bye")))
    assert b.listener.gone == []
    assert b.clock.getDelayedCalls() == []
    # Nothing is sent once closed.
    b.sent()
    b.conversation.send(b"NOOP", Recorder())
    assert b.sent() == b""
