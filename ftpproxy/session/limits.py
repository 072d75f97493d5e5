"""
What keeps one client from taking the proxy down: session limits per
client address and overall, and throttling of repeated failed logins.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


class SessionLimiter:
    """
    Counts open sessions overall and per client address; zero means no
    limit.
    """

    def __init__(self, maxSessions: int = 0, maxPerClient: int = 0) -> None:
        self.maxSessions = maxSessions
        self.maxPerClient = maxPerClient
        self.total = 0
        self._perClient: Counter[str] = Counter()

    def refusal(self, clientHost: str) -> str | None:
        """
        Why a new session from C{clientHost} must be refused, or None.
        """
        if self.maxSessions and self.total >= self.maxSessions:
            return "Too many sessions on this server; try again later."
        if self.maxPerClient and self._perClient[clientHost] >= self.maxPerClient:
            return "Too many sessions from your address; try again later."
        return None

    def opened(self, clientHost: str) -> None:
        self.total += 1
        self._perClient[clientHost] += 1

    def closed(self, clientHost: str) -> None:
        self.total -= 1
        self._perClient[clientHost] -= 1
        if self._perClient[clientHost] <= 0:
            del self._perClient[clientHost]


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


class Deadline:
    """
    A restartable timer: C{restart} pushes the deadline back, C{pause}
    disarms it, C{stop} ends it.

    A paused deadline keeps its reactor call until the call comes due, and
    the next C{restart} moves that same call (which costs the reactor
    nothing when it moves later): a deadline paused and restarted for every
    command of a session makes one call, not one per command. C{stop}
    cancels the call; use it when the owner goes away.
    """

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self._clock = clock
        self.seconds = seconds
        self._expired = expired
        self._call: IDelayedCall | None = None
        self._armed = False

    def restart(self) -> None:
        if not self.seconds:
            return
        self._armed = True
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)
        else:
            self._call = self._clock.callLater(self.seconds, self._fire)

    def pause(self) -> None:
        self._armed = False

    def stop(self) -> None:
        self._armed = False
        if self._call is not None:
            call, self._call = self._call, None
            if call.active():
                call.cancel()

    def _fire(self) -> None:
        self._call = None
        if self._armed:
            self._armed = False
            self._expired()


class ReadGate:
    """
    Stops reading a connection while any reason to stop holds (too many
    queued commands, replies the peer does not take), and reads again only
    when none does.
    """

    def __init__(self, transport) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._transport.resumeProducing()

    def repliesProducer(self) -> _RepliesProducer:
        return _RepliesProducer(self)


@implementer(IPushProducer)
class _RepliesProducer:
    """
    What the transport pauses when its send buffer is full.
    """

    def __init__(self, gate: ReadGate) -> None:
        self._gate = gate

    def pauseProducing(self) -> None:
        self._gate.pause("replies")

    def resumeProducing(self) -> None:
        self._gate.resume("replies")

    def stopProducing(self) -> None:
        pass
