"""
What keeps one client from taking the proxy down: session limits per
client address and overall, and throttling of repeated failed logins.
"""

from __future__ import annotations

from collections import Counter, deque
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


class LoginThrottle:
    """
    Remembers failed logins per client address over a sliding window.

    After C{delayAfter} failures the next failure replies are held back
    (one more second per failure, up to C{maxDelay}), and after
    C{blockAfter} failures new sessions from that address are refused until
    the window has passed. Unknown users and bad passwords look alike here:
    only the backend's 530 counts.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: float = 300.0,
        delayAfter: int = 3,
        blockAfter: int = 10,
        maxDelay: float = 10.0,
    ) -> None:
        self._clock = clock
        self.window = window
        self.delayAfter = delayAfter
        self.blockAfter = blockAfter
        self.maxDelay = maxDelay
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, clientHost: str) -> deque[float]:
        failures = self._failures.get(clientHost)
        if failures is None:
            return deque()
        horizon = self._clock.seconds() - self.window
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[clientHost]
        return failures

    def failed(self, clientHost: str) -> float:
        """
        Record a failed login; return how long to hold the reply back.
        """
        failures = self._recent(clientHost)
        if not failures:
            failures = self._failures[clientHost] = deque()
        failures.append(self._clock.seconds())
        excess = len(failures) - self.delayAfter
        return min(float(excess), self.maxDelay) if excess > 0 else 0.0

    def blocked(self, clientHost: str) -> bool:
        return bool(self.blockAfter) and len(self._recent(clientHost)) >= self.blockAfter


class Deadline:
    """
    A restartable timer: C{restart} pushes the deadline back, C{stop} ends it.
    """

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self._clock = clock
        self.seconds = seconds
        self._expired = expired
        self._call: IDelayedCall | None = None

    def restart(self) -> None:
        if not self.seconds:
            return
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)
        else:
            self._call = self._clock.callLater(self.seconds, self._fire)

    def stop(self) -> None:
        if self._call is not None:
            call, self._call = self._call, None
            if call.active():
                call.cancel()

    def _fire(self) -> None:
        self._call = None
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
