"""
The grace period of a closing connection (L{ftpproxy.data.closing}), on a
driven clock: a connection that has sent everything is aborted once the
grace has passed, one still sending is looked at again, one that went away
or whose timer was cancelled is left alone.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from ftpproxy.data.closing import GraceTimer, loseConnectionWithin


class Transport:
    def __init__(self) -> None:
        self.dataBuffer = b""
        self.disconnected = False
        self.calls: list[str] = []

    def loseConnection(self) -> None:
        self.calls.append("lose")

    def abortConnection(self) -> None:
        self.calls.append("abort")
        self.disconnected = True


def test_abortedOnceTheGraceHasPassed():
    clock, transport = Clock(), Transport()
    timer = loseConnectionWithin(transport, clock, 2.0)
    assert isinstance(timer, GraceTimer)
    assert transport.calls == ["lose"]
    clock.advance(1.9)
    assert transport.calls == ["lose"] and timer.active()
    clock.advance(0.1)
    assert transport.calls == ["lose", "abort"]
    assert not timer.active()
    assert clock.getDelayedCalls() == []


def test_stillSendingGetsAnotherGrace():
    clock, transport = Clock(), Transport()
    transport.dataBuffer = b"last reply"
    timer = loseConnectionWithin(transport, clock, 2.0)
    clock.advance(2.0)
    assert transport.calls == ["lose"]
    assert timer.active()
    transport.dataBuffer = b""
    clock.advance(2.0)
    assert transport.calls == ["lose", "abort"]
    assert clock.getDelayedCalls() == []


def test_goneOrCancelledIsLeftAlone():
    clock, gone = Clock(), Transport()
    loseConnectionWithin(gone, clock, 2.0)
    gone.disconnected = True
    clock.advance(2.0)
    assert gone.calls == ["lose"]
    assert clock.getDelayedCalls() == []

    cancelled = Transport()
    cancelled.dataBuffer = b"x"
    timer = loseConnectionWithin(cancelled, clock, 2.0)
    clock.advance(2.0)
    timer.cancel()
    assert not timer.active()
    timer.cancel()
    assert clock.getDelayedCalls() == []
    assert cancelled.calls == ["lose"]


def test_withoutAClockOnlyLoses():
    transport = Transport()
    assert loseConnectionWithin(transport, None, 2.0) is None
    assert transport.calls == ["lose"]
