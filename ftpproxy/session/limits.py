"""
What keeps one client from taking the proxy down: session limits per
client address and overall, throttling of repeated failed logins, a bound
on the commands one client has answered per reactor turn, and a count of
the invalid commands it sends in a row.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from heapq import heapify, heappop, heappush
from typing import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import Interface, implementer


@attrs.frozen
class Refusal:
    """
    Why a connection may not have a session.

    @ivar reason: one of L{ftpproxy.events.REFUSAL_REASONS}.
    @ivar text: what the 421 reply says.
    """

    reason: str
    text: str


class SessionLimiter:
    """
    Counts open sessions overall and per client address, and those of each
    address that have not logged in yet; zero means no limit.

    A session counts as not logged in from its admission until the backend
    accepts its login, and again after REIN.
    """

    def __init__(self, maxSessions: int = 0, maxPerClient: int = 0, maxPreLoginPerClient: int = 0) -> None:
        self.maxSessions = maxSessions
        self.maxPerClient = maxPerClient
        self.maxPreLoginPerClient = maxPreLoginPerClient
        self.total = 0
        self._perClient: Counter[str] = Counter()
        self._preLogin: Counter[str] = Counter()

    def preLogin(self, clientHost: str) -> int:
        """
        How many sessions from C{clientHost} have not logged in.
        """
        return self._preLogin[clientHost]

    def refusal(self, clientHost: str) -> Refusal | None:
        """
        Why a new session from C{clientHost} must be refused, or None.
        """
        if self.maxSessions and self.total >= self.maxSessions:
            return Refusal("sessions", "Too many sessions on this server; try again later.")
        if self.maxPerClient and self._perClient[clientHost] >= self.maxPerClient:
            return Refusal("sessions-per-client", "Too many sessions from your address; try again later.")
        if self.maxPreLoginPerClient and self._preLogin[clientHost] >= self.maxPreLoginPerClient:
            return Refusal(
                "prelogin-per-client",
                "Too many connections from your address that have not logged in; try again later.",
            )
        return None

    def opened(self, clientHost: str) -> None:
        self.total += 1
        self._perClient[clientHost] += 1
        self._preLogin[clientHost] += 1

    def loggedIn(self, clientHost: str) -> None:
        """
        A session from C{clientHost} counted as not logged in has logged in.
        """
        _decrement(self._preLogin, clientHost)

    def loggedOut(self, clientHost: str) -> None:
        """
        A logged-in session from C{clientHost} must log in again (REIN).
        """
        self._preLogin[clientHost] += 1

    def closed(self, clientHost: str, loggedIn: bool) -> None:
        self.total -= 1
        _decrement(self._perClient, clientHost)
        if not loggedIn:
            _decrement(self._preLogin, clientHost)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


#: How many client addresses a L{LoginThrottle} remembers failures of, at
#: most: about 215 bytes each with one failure and 630 with the most it
#: keeps (IPv6), so a few megabytes however many addresses an attacker
#: rotates through. Past it, the address whose last failure is oldest is
#: forgotten first.
DEFAULT_MAX_TRACKED = 10_000

#: Addresses whose failures have all expired that one call forgets, at most:
#: the work of a call stays small, and calls forget addresses faster than
#: they add them (one each).
_FORGET_PER_CALL = 16


class LoginThrottle:
    """
    Remembers failed logins per client address over a sliding window.

    After C{delayAfter} failures the next failure replies are held back
    (one more second per failure, up to C{maxDelay}), and after
    C{blockAfter} failures new sessions from that address are refused until
    the window has passed. Unknown users and bad passwords look alike here:
    only the backend's 530 counts.

    Memory is bounded: each call forgets a few addresses whose failures have
    all left the window (oldest first), at most C{maxTracked} addresses are
    remembered (the one whose last failure is oldest goes first), and each
    keeps only the failures that can still change a delay or a block. No
    timer runs, so there is nothing to stop.

    @ivar window: seconds a failure counts.
    @ivar delayAfter: failures after which replies are held back.
    @ivar blockAfter: failures after which new sessions are refused; 0 never.
    @ivar maxDelay: the longest hold, in seconds.
    @ivar maxTracked: the most addresses remembered.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: float = 300.0,
        delayAfter: int = 3,
        blockAfter: int = 10,
        maxDelay: float = 10.0,
        maxTracked: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        if maxTracked < 1:
            raise ValueError(f"maxTracked must be at least 1, not {maxTracked!r}")
        self._clock = clock
        self.window = window
        self.delayAfter = delayAfter
        self.blockAfter = blockAfter
        self.maxDelay = maxDelay
        self.maxTracked = maxTracked
        # Failure times per address; addresses in the order of their last
        # failure, oldest first.
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    @property
    def tracked(self) -> int:
        """
        How many addresses are remembered now.
        """
        return len(self._failures)

    def _worthKeeping(self) -> int:
        """
        How many of an address's latest failures can matter: with more, the
        hold is already C{maxDelay} and the address already blocked.
        """
        return max(self.blockAfter, self.delayAfter + math.ceil(self.maxDelay), 1)

    def _forgetExpired(self, horizon: float) -> None:
        for _ in range(_FORGET_PER_CALL):
            oldest = next(iter(self._failures.values()), None)
            if oldest is None or oldest[-1] >= horizon:
                return
            self._failures.popitem(last=False)

    def _recent(self, clientHost: str, horizon: float) -> list[float] | None:
        failures = self._failures.get(clientHost)
        if failures is None:
            return None
        expired = 0
        while expired < len(failures) and failures[expired] < horizon:
            expired += 1
        if expired == len(failures):
            del self._failures[clientHost]
            return None
        del failures[:expired]
        return failures

    def failed(self, clientHost: str) -> float:
        """
        Record a failed login; return how long to hold the reply back.
        """
        now = self._clock.seconds()
        horizon = now - self.window
        self._forgetExpired(horizon)
        failures = self._recent(clientHost, horizon)
        if failures is None:
            while self._failures and len(self._failures) >= self.maxTracked:
                self._failures.popitem(last=False)
            failures = self._failures[clientHost] = []
        else:
            self._failures.move_to_end(clientHost)
        failures.append(now)
        del failures[: -self._worthKeeping()]
        excess = len(failures) - self.delayAfter
        return min(float(excess), self.maxDelay) if excess > 0 else 0.0

    def blocked(self, clientHost: str) -> bool:
        """
        Must new sessions from C{clientHost} be refused?
        """
        horizon = self._clock.seconds() - self.window
        self._forgetExpired(horizon)
        if not self.blockAfter:
            return False
        failures = self._recent(clientHost, horizon)
        return failures is not None and len(failures) >= self.blockAfter


class IDeadlineOwner(Interface):
    """
    Who a L{Deadline} tells that it passed (each owner has one deadline:
    the session its idle one, the login handler the login one, the backend
    conversation the reply one). An interface rather than a callable: a
    bound method kept for a session's whole life costs 64 bytes.
    """

    def deadlinePassed():
        """
        The deadline passed while armed.
        """


class DeadlineQueue:
    """
    The deadlines of many sessions on one reactor call.

    Every session has a few deadlines (idle, login, backend reply) that are
    restarted, paused and stopped all the time and rarely expire. A reactor
    call per deadline costs about 400 bytes (the call, its keyword dict and
    three bound methods) and stays in the reactor's heap until it comes due,
    even once cancelled; here a deadline is one slot in a heap ordered by
    the time it is queued for, and the queue keeps one reactor call, for the
    earliest of them.

    Deadlines are queued lazily: one pushed back (restarted later) stays
    where it is and, when its old time comes, is queued again for its new
    one; one paused stays queued and is dropped when its time comes. Stopped
    deadlines are dropped in one sweep once they are more than half of the
    queue (as Twisted does with cancelled calls), so that an ended session
    is not kept alive by its stopped deadlines for long; and when every
    queued deadline is stopped, the reactor call goes too.

    @ivar clock: the reactor (or test clock) that times the queue.
    @ivar _heap: the queued deadlines, a heap by L{Deadline._queuedAt}.
    @ivar _stopped: how many queued deadlines are stopped.
    @ivar _call: the reactor call, due at C{_callAt}, or None.
    @ivar _firing: deadlines are being expired (the call is made after).
    """

    __slots__ = ('clock', '_heap', '_stopped', '_call', '_callAt', '_firing')

    #: Stopped deadlines are swept out only beyond this many.
    SWEEP_AFTER = 50

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: list[Deadline] = []
        self._stopped = 0
        self._call: IDelayedCall | None = None
        self._callAt = 0.0
        self._firing = False

    def __len__(self) -> int:
        return len(self._heap)

    def _queue(self, deadline: Deadline, at: float) -> None:
        deadline._queuedAt = at
        heappush(self._heap, deadline)
        self._wake()

    def _requeue(self, deadline: Deadline, at: float) -> None:
        # Due sooner than where it waits (the clock went back, or its
        # seconds were shortened): rare, so a linear removal is fine.
        self._heap.remove(deadline)
        heapify(self._heap)
        self._queue(deadline, at)

    def _noteStopped(self) -> None:
        self._stopped += 1
        heap = self._heap
        if self._stopped == len(heap):
            for deadline in heap:
                deadline._queuedAt = None
            heap.clear()
            self._stopped = 0
            self._cancelCall()
        elif self._stopped > self.SWEEP_AFTER and 2 * self._stopped > len(heap):
            kept = []
            for deadline in heap:
                if deadline._state is _STOPPED:
                    deadline._queuedAt = None
                else:
                    kept.append(deadline)
            heap[:] = kept
            heapify(heap)
            self._stopped = 0

    def _noteRestarted(self) -> None:
        self._stopped -= 1

    def _cancelCall(self) -> None:
        if self._call is not None:
            call, self._call = self._call, None
            if call.active():
                call.cancel()

    def _wake(self) -> None:
        """
        Have the reactor call come no later than the earliest deadline.
        """
        if self._firing:
            return
        if not self._heap:
            self._cancelCall()
            return
        first = self._heap[0]._queuedAt
        if self._call is not None and self._callAt <= first:
            return
        self._cancelCall()
        self._callAt = first
        self._call = self.clock.callLater(max(0.0, first - self.clock.seconds()), self._due)

    def _due(self) -> None:
        self._call = None
        now = self.clock.seconds()
        heap = self._heap
        self._firing = True
        try:
            while heap and heap[0]._queuedAt <= now:
                deadline = heappop(heap)
                deadline._queuedAt = None
                if deadline._state is _STOPPED:
                    self._stopped -= 1
                    continue
                again = deadline._reached(now)
                if again is not None:
                    deadline._queuedAt = again
                    heappush(heap, deadline)
        finally:
            self._firing = False
            self._wake()


# A deadline's states (identity-compared strings).
_STOPPED = "stopped"
_ARMED = "armed"
_PAUSED = "paused"


class Deadline:
    """
    A restartable timer: C{restart} pushes the deadline back, C{pause}
    disarms it, C{stop} ends it.

    It waits in a L{DeadlineQueue} shared with other sessions' deadlines,
    not in a reactor call of its own: restarting, pausing and stopping cost
    no reactor work, and a deadline paused and restarted for every command
    of a session is queued once, not once per command.

    @ivar seconds: how long after C{restart} it expires (0: never).
    @ivar _owner: told when it expires (L{IDeadlineOwner}).
    @ivar _state: stopped, armed or paused.
    @ivar _due: when it expires, while armed.
    @ivar _queuedAt: the time it waits in the queue for, or None when it is
        not queued; set only by the queue.
    """

    __slots__ = ('_queue', 'seconds', '_owner', '_state', '_due', '_queuedAt')

    def __init__(self, queue: DeadlineQueue, seconds: float, owner: IDeadlineOwner) -> None:
        self._queue = queue
        self.seconds = seconds
        self._owner = owner
        self._state = _STOPPED
        self._due = 0.0
        self._queuedAt: float | None = None

    def __lt__(self, other: Deadline) -> bool:
        # The queue's heap order; only queued deadlines are compared.
        return self._queuedAt < other._queuedAt  # type: ignore[operator]

    def _reached(self, now: float) -> float | None:
        """
        The queue has reached the time this deadline waited for: expire, or
        say when to come back (pushed back meanwhile). A paused deadline
        leaves the queue; C{restart} queues it again.
        """
        if self._state is not _ARMED:
            return None
        if self._due > now:
            return self._due
        self._state = _STOPPED
        self._owner.deadlinePassed()
        return None

    def restart(self) -> None:
        if not self.seconds:
            return
        queue = self._queue
        due = self._due = queue.clock.seconds() + self.seconds
        if self._queuedAt is None:
            self._state = _ARMED
            queue._queue(self, due)
            return
        if self._state is _STOPPED:
            queue._noteRestarted()
        self._state = _ARMED
        if due < self._queuedAt:
            queue._requeue(self, due)

    def pause(self) -> None:
        if self._state is _ARMED:
            self._state = _PAUSED

    def stop(self) -> None:
        if self._state is _STOPPED:
            return
        self._state = _STOPPED
        if self._queuedAt is not None:
            self._queue._noteStopped()


class ReadGate:
    """
    Stops reading a connection while any reason to stop holds (too many
    queued commands, replies the peer does not take), and reads again only
    when none does.
    """

    __slots__ = ('_transport', '_reasons')

    def __init__(self, transport) -> None:
        self._transport = transport
        # At most two reasons, and usually none: a tuple, replaced as it
        # changes, costs nothing while empty (a list costs 56 bytes).
        self._reasons: tuple[str, ...] = ()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        if reason not in self._reasons:
            self._reasons += (reason,)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons = tuple(r for r in self._reasons if r != reason)
        if not self._reasons:
            self._transport.resumeProducing()

    def repliesProducer(self) -> _RepliesProducer:
        return _RepliesProducer(self)


@implementer(IPushProducer)
class _RepliesProducer:
    """
    What the transport pauses when its send buffer is full.
    """

    __slots__ = ('_gate',)

    def __init__(self, gate: ReadGate) -> None:
        self._gate = gate

    def pauseProducing(self) -> None:
        self._gate.pause("replies")

    def resumeProducing(self) -> None:
        self._gate.resume("replies")

    def stopProducing(self) -> None:
        pass


class TurnBudget:
    """
    Bounded work for one client per turn: at most C{perTurn} commands are
    taken in one turn; then the client yields, and the rest is taken from a
    call on the next reactor turn, so that every other connection's input
    and every timer run in between.

    A turn is what one event from outside causes (bytes from the client, a
    reply from the backend, a timer): the session runs it to completion, and
    L{newTurn} is called as it starts. A client whose commands are relayed
    takes one per backend reply and never yields; one whose commands the
    proxy answers itself, many in one read, does.

    @ivar _used: commands taken in this turn.
    @ivar _continuation: the call that goes on next reactor turn, while
        yielding.
    """

    __slots__ = ('_clock', 'perTurn', '_resume', '_used', '_continuation')

    def __init__(self, clock: IReactorTime, perTurn: int, resume: Callable[[], None]) -> None:
        """
        @param resume: called on the next reactor turn after yielding: take
            commands again.
        """
        self._clock = clock
        self.perTurn = perTurn
        self._resume = resume
        self._used = 0
        self._continuation: IDelayedCall | None = None

    @property
    def yielding(self) -> bool:
        return self._continuation is not None

    def newTurn(self) -> None:
        """
        An event from outside starts a turn.
        """
        self._used = 0

    def take(self) -> bool:
        """
        May one more command be taken now? If not, the client yields.
        """
        if self._continuation is not None:
            return False
        if self._used >= self.perTurn:
            self._continuation = self._clock.callLater(0, self._nextTurn)
            return False
        self._used += 1
        return True

    def stop(self) -> None:
        """
        The session is over: no continuation.
        """
        if self._continuation is not None:
            continuation, self._continuation = self._continuation, None
            if continuation.active():
                continuation.cancel()

    def _nextTurn(self) -> None:
        self._continuation = None
        self._resume()


class InvalidCommands:
    """
    Counts the command lines in a row that the proxy refused without
    passing them on: empty, unparseable or too long, or needing a login the
    client has not made. A client past C{limit} of them (0: no limit) is
    flooding; any command accepted starts the count again.

    @ivar inARow: invalid lines since the last command accepted.
    """

    __slots__ = ('limit', 'inARow')

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inARow = 0

    def refused(self) -> bool:
        """
        Count one refused line; return True once the client is past the
        limit.
        """
        self.inARow += 1
        return bool(self.limit) and self.inARow > self.limit

    def accepted(self) -> None:
        self.inARow = 0
