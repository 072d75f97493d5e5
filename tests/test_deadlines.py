"""
Deadlines that share one reactor call (L{ftpproxy.session.limits}).
"""

from __future__ import annotations

from twisted.internet.task import Clock

from typing import Callable

from zope.interface import implementer

from ftpproxy.session.limits import Deadline, DeadlineQueue, IDeadlineOwner


@implementer(IDeadlineOwner)
class Owner:
    def __init__(self, passed: Callable[[], object]) -> None:
        self.deadlinePassed = passed


class Timers:
    """
    A queue on a test clock, and deadlines on it that record when they
    expire.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.queue = DeadlineQueue(self.clock)
        self.expired: list[tuple[str, float]] = []

    def deadline(self, name: str, seconds: float) -> Deadline:
        return Deadline(self.queue, seconds, Owner(lambda: self.expired.append((name, self.clock.seconds()))))


def test_expiresOnTime() -> None:
    t = Timers()
    d = t.deadline("a", 10)
    d.restart()
    t.clock.advance(9.9)
    assert t.expired == []
    t.clock.advance(0.1)
    assert t.expired == [("a", 10.0)]
    assert t.clock.getDelayedCalls() == []
    assert len(t.queue) == 0


def test_manyDeadlinesOneCall() -> None:
    """
    Deadlines of different lengths wait on one reactor call and expire each
    at its own time.
    """
    t = Timers()
    for name, seconds in (("c", 30), ("a", 10), ("b", 20)):
        t.deadline(name, seconds).restart()
    assert len(t.clock.getDelayedCalls()) == 1
    t.clock.pump([10, 10, 10])
    assert t.expired == [("a", 10.0), ("b", 20.0), ("c", 30.0)]
    assert t.clock.getDelayedCalls() == []


def test_restartPushesBack() -> None:
    """
    A restart moves the deadline later without touching the reactor: the
    queue's call, when it comes, queues the deadline again for its new time.
    """
    t = Timers()
    d = t.deadline("a", 10)
    d.restart()
    [call] = t.clock.getDelayedCalls()
    for _ in range(3):
        t.clock.advance(3)
        d.restart()
    assert t.clock.getDelayedCalls() == [call]
    t.clock.advance(1)
    assert t.expired == []
    assert len(t.clock.getDelayedCalls()) == 1
    for _ in range(2):
        t.clock.advance(5)
        d.restart()
    t.clock.advance(9)
    assert t.expired == []
    t.clock.advance(1)
    assert t.expired == [("a", 30.0)]


def test_pausedDoesNotExpire() -> None:
    """
    A paused deadline keeps its place until its time comes, then leaves the
    queue; a restart queues it again.
    """
    t = Timers()
    d = t.deadline("a", 10)
    d.restart()
    d.pause()
    assert len(t.clock.getDelayedCalls()) == 1
    t.clock.advance(10)
    assert t.expired == []
    assert t.clock.getDelayedCalls() == []
    d.restart()
    t.clock.advance(10)
    assert t.expired == [("a", 20.0)]


def test_pauseAndRestartInPlace() -> None:
    t = Timers()
    d = t.deadline("a", 10)
    d.restart()
    t.clock.advance(4)
    d.pause()
    t.clock.advance(4)
    d.restart()
    t.clock.advance(9)
    assert t.expired == []
    t.clock.advance(1)
    assert t.expired == [("a", 18.0)]


def test_stopAllCancelsTheCall() -> None:
    t = Timers()
    a, b = t.deadline("a", 10), t.deadline("b", 20)
    a.restart()
    b.restart()
    a.stop()
    assert len(t.clock.getDelayedCalls()) == 1
    b.stop()
    assert t.clock.getDelayedCalls() == []
    assert len(t.queue) == 0
    t.clock.advance(100)
    assert t.expired == []


def test_stoppedThenRestarted() -> None:
    t = Timers()
    a, b = t.deadline("a", 10), t.deadline("b", 50)
    b.restart()
    a.restart()
    a.stop()
    t.clock.advance(5)
    a.restart()
    t.clock.advance(10)
    assert t.expired == [("a", 15.0)]
    b.stop()
    assert t.clock.getDelayedCalls() == []


def test_stoppedAreSweptOut() -> None:
    """
    Stopped deadlines do not pile up in the queue (they keep what they would
    call alive): once they are more than half of it they are swept out.
    """
    t = Timers()
    kept = t.deadline("kept", 1000)
    kept.restart()
    for i in range(500):
        d = t.deadline(f"d{i}", 100)
        d.restart()
        d.stop()
        assert len(t.queue) <= max(2 * DeadlineQueue.SWEEP_AFTER + 2, 2)
    t.clock.advance(1000)
    assert t.expired == [("kept", 1000.0)]


def test_zeroSecondsNeverExpires() -> None:
    t = Timers()
    d = t.deadline("a", 0)
    d.restart()
    assert t.clock.getDelayedCalls() == []
    t.clock.advance(1000)
    assert t.expired == []


def test_sooner() -> None:
    """
    A deadline due sooner than the queue's call brings the call forward.
    """
    t = Timers()
    t.deadline("late", 100).restart()
    t.deadline("early", 5).restart()
    t.clock.advance(5)
    assert t.expired == [("early", 5.0)]
    assert len(t.clock.getDelayedCalls()) == 1
    t.clock.advance(95)
    assert t.expired == [("early", 5.0), ("late", 100.0)]


def test_shortenedWhileQueued() -> None:
    """
    A deadline whose seconds are shortened while it waits is moved to its
    new, earlier time.
    """
    t = Timers()
    d = t.deadline("a", 100)
    d.restart()
    d.seconds = 10
    d.restart()
    t.clock.advance(10)
    assert t.expired == [("a", 10.0)]


def test_expiryRestartsAndStopsOthers() -> None:
    """
    What an expiry does to deadlines (restart itself, stop another due at
    the same time) takes effect in the same pass.
    """
    t = Timers()
    b = t.deadline("b", 10)
    a = Deadline(t.queue, 10, Owner(lambda: (t.expired.append(("a", t.clock.seconds())), a.restart(), b.stop())))
    a.restart()
    b.restart()
    t.clock.advance(10)
    assert t.expired == [("a", 10.0)]
    t.clock.advance(10)
    assert t.expired == [("a", 10.0), ("a", 20.0)]
    a.stop()
    assert t.clock.getDelayedCalls() == []


def test_failingExpiryKeepsTheRest() -> None:
    """
    An expiry that raises (the reactor logs it) does not lose the other
    deadlines due: they expire on the next reactor turn.
    """
    t = Timers()

    def boom() -> None:
        raise ZeroDivisionError()

    Deadline(t.queue, 10, Owner(boom)).restart()
    t.deadline("b", 10).restart()
    try:
        t.clock.advance(10)
    except ZeroDivisionError:
        pass
    t.clock.advance(0)
    assert t.expired == [("b", 10.0)]
    assert t.clock.getDelayedCalls() == []
