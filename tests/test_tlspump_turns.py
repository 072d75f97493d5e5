"""
The socket pump's turns, in memory: after moving a turn's worth of bytes
the pump lets the reactor serve others, and it must come back on its own
when the source is TLS. OpenSSL may already hold what the peer sent after
the last record it returned (the peer's close_notify, read from the socket
with that record): the socket then never becomes readable again, and
SSL_pending does not count it. The pump found this as an ftplib upload of
exactly one turn (1 MiB) that hung now and then until the client gave up.

The sockets here are scripted fakes; tests/test_tlspump.py runs the pump on
real sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from ftpproxy.data.tlspump import STEP, TURN, WANT_READ, PumpState, SocketPump


class Leg:
    def __init__(self) -> None:
        self.bytesReceived = 0
        self._socketPump: Any = None


class FakeSocket:
    """
    A L{DirectSocket} whose reads follow a script: each entry is a number of
    bytes, 0 (the end of the stream) or L{WANT_READ}. Records what the pump
    wants and what happened to it; the reactor never reports readiness
    (nothing more arrives on the socket).
    """

    def __init__(self, script: list[int] = (), tls: bool = True) -> None:
        self.script = list(script)
        # The pump only asks whether the socket has TLS on it.
        self.tls = object() if tls else None
        self.leg = Leg()
        self.handler: Any = None
        self.wants: list[tuple[bool, bool]] = []
        self.written = 0
        self.reads = 0
        self.ended = None

    def want(self, read: bool, write: bool) -> None:
        self.wants.append((read, write))

    def read(self, buffer, start: int, size: int) -> int:
        self.reads += 1
        if not self.script:
            return WANT_READ
        step = self.script[0]
        if step > size:
            self.script[0] -= size
            return size
        self.script.pop(0)
        return step

    def write(self, buffer, start: int, size: int) -> int:
        self.written += size
        return size

    def peerClosedReading(self) -> None:
        pass

    def close(self) -> None:
        self.ended = "closed"

    def abort(self) -> None:
        self.ended = "aborted"


def test_tlsSourceComesBackAfterAFullTurnWithoutTheSocket():
    """
    A TLS source that delivered exactly one turn and whose close_notify
    OpenSSL already holds: the pump finishes on the next reactor turn, with
    no readiness event from the socket.
    """
    clock = Clock()
    source, sink = FakeSocket([TURN, 0]), FakeSocket(tls=False)
    pump = SocketPump(clock, source, sink)
    pump.start()
    assert pump.state is PumpState.MOVING
    assert sink.written == TURN
    # It yielded: not waiting on the source's socket, but on the clock.
    assert source.wants[-1] == (False, False)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert pump.state is PumpState.DONE
    assert source.ended == "closed" and sink.ended == "closed"
    assert source.leg.bytesReceived == TURN
    assert clock.getDelayedCalls() == []


def test_tlsSourceWithNothingMoreWaitsForTheSocket():
    """
    When the read on the next turn finds nothing (WANT_READ), the pump
    waits for the source's readiness and leaves no call behind.
    """
    clock = Clock()
    source, sink = FakeSocket([2 * TURN]), FakeSocket(tls=False)
    pump = SocketPump(clock, source, sink)
    pump.start()
    assert sink.written == TURN
    clock.advance(0)
    assert sink.written == 2 * TURN
    clock.advance(0)
    assert source.wants[-1] == (True, False)
    assert pump.state is PumpState.MOVING
    assert clock.getDelayedCalls() == []
    source.script = [STEP, 0]
    pump.readable(source)
    assert pump.state is PumpState.DONE
    assert sink.written == 2 * TURN + STEP


def test_clearSourceYieldsToItsReadiness():
    """
    A clear source holds nothing in user space: after a turn the pump waits
    for the socket to be readable again, with no call on the clock.
    """
    clock = Clock()
    source, sink = FakeSocket([TURN + STEP, 0], tls=False), FakeSocket(tls=False)
    pump = SocketPump(clock, source, sink)
    pump.start()
    assert sink.written == TURN
    assert source.wants[-1] == (True, False)
    assert clock.getDelayedCalls() == []
    pump.readable(source)
    assert pump.state is PumpState.DONE
    assert sink.written == TURN + STEP


def test_stoppingCancelsTheNextTurn():
    clock = Clock()
    source, sink = FakeSocket([2 * TURN]), FakeSocket(tls=False)
    pump = SocketPump(clock, source, sink)
    pump.start()
    assert len(clock.getDelayedCalls()) == 1
    pump.stop()
    assert pump.state is PumpState.STOPPED
    assert clock.getDelayedCalls() == []
    assert source.handler is None and sink.handler is None
