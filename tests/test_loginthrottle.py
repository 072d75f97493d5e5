"""
Tests for L{ftpproxy.session.limits.LoginThrottle}: the delay after N
failures, the block after M, the sliding window, against a plain reference
model that remembers every failure forever; and memory that stays bounded
(the number of remembered addresses) however many addresses come and go.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from ftpproxy.session.limits import DEFAULT_MAX_TRACKED, LoginThrottle


def throttle(**options) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    return LoginThrottle(clock, **options), clock


def test_delayAfterFailures() -> None:
    """
    From the failure after C{delayAfter} on, replies are held one more
    second per failure, up to C{maxDelay}.
    """
    limiter, clock = throttle(delayAfter=3, maxDelay=4.0, blockAfter=0)
    delays = []
    for _ in range(10):
        delays.append(limiter.failed("192.0.2.1"))
        clock.advance(1)
    assert delays == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]


def test_blockAfterFailuresUntilTheWindowPasses() -> None:
    limiter, clock = throttle(window=300.0, blockAfter=10)
    for _ in range(9):
        limiter.failed("192.0.2.1")
        clock.advance(1)
    assert not limiter.blocked("192.0.2.1")
    limiter.failed("192.0.2.1")  # the tenth, at t=9
    assert limiter.blocked("192.0.2.1")
    assert not limiter.blocked("192.0.2.2")
    clock.advance(291)  # t=300: the first failure (t=0) still counts
    assert limiter.blocked("192.0.2.1")
    clock.advance(0.5)
    assert not limiter.blocked("192.0.2.1")
    assert limiter.tracked == 1  # nine failures still count


def test_windowSlides() -> None:
    limiter, clock = throttle(window=100.0, delayAfter=2, blockAfter=0)
    assert limiter.failed("192.0.2.1") == 0.0  # t=0
    clock.advance(60)
    assert limiter.failed("192.0.2.1") == 0.0  # t=60
    clock.advance(50)
    # t=110: the first one has left the window; this is the second again.
    assert limiter.failed("192.0.2.1") == 0.0
    assert limiter.failed("192.0.2.1") == 1.0
    clock.advance(101)
    assert limiter.failed("192.0.2.1") == 0.0


def test_blockAfterZeroNeverBlocks() -> None:
    limiter, _ = throttle(blockAfter=0)
    for _ in range(50):
        limiter.failed("192.0.2.1")
    assert not limiter.blocked("192.0.2.1")


def test_maxTrackedMustAllowOne() -> None:
    with pytest.raises(ValueError, match="maxTracked must be at least 1"):
        throttle(maxTracked=0)


class Reference:
    """
    The throttle's rules with no concern for memory: every failure of every
    address is kept forever and counted when asked.
    """

    def __init__(self, window: float, delayAfter: int, blockAfter: int, maxDelay: float) -> None:
        self.window, self.delayAfter = window, delayAfter
        self.blockAfter, self.maxDelay = blockAfter, maxDelay
        self.failures: dict[str, list[float]] = defaultdict(list)

    def _count(self, host: str, now: float) -> int:
        return sum(1 for t in self.failures[host] if t >= now - self.window)

    def failed(self, host: str, now: float) -> float:
        self.failures[host].append(now)
        excess = self._count(host, now) - self.delayAfter
        return min(float(excess), self.maxDelay) if excess > 0 else 0.0

    def blocked(self, host: str, now: float) -> bool:
        return bool(self.blockAfter) and self._count(host, now) >= self.blockAfter


@settings(max_examples=300)
@given(
    window=st.sampled_from([1.0, 60.0, 300.0]),
    delayAfter=st.integers(0, 5),
    blockAfter=st.integers(0, 12),
    maxDelay=st.sampled_from([0.0, 0.5, 2.5, 10.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.25, 1.0, 10.0, 59.75, 60.0, 100.0, 300.0]),
            st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]),
            st.booleans(),
        ),
        max_size=80,
    ),
)
def test_sameAnswersAsTheReference(window, delayAfter, blockAfter, maxDelay, steps) -> None:
    """
    Keeping only the failures that can matter and forgetting expired
    addresses changes no answer.
    """
    limiter, clock = throttle(
        window=window, delayAfter=delayAfter, blockAfter=blockAfter, maxDelay=maxDelay
    )
    reference = Reference(window, delayAfter, blockAfter, maxDelay)
    for advance, host, fail in steps:
        clock.advance(advance)
        if fail:
            assert limiter.failed(host) == reference.failed(host, clock.seconds())
        else:
            assert limiter.blocked(host) == reference.blocked(host, clock.seconds())


def _address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def test_rotatingAddressesAreForgottenAsTimePasses() -> None:
    """
    Defect 8: an address that never comes back is forgotten once its
    failures leave the window, not kept forever. One new address a second
    for 3 hours, a 5-minute window: about 300 remembered at any time.
    """
    limiter, clock = throttle(window=300.0)
    most = 0
    for n in range(3 * 3600):
        limiter.failed(_address(n))
        most = max(most, limiter.tracked)
        clock.advance(1)
    # Each call forgets up to 16 expired addresses and adds one.
    assert 300 <= most <= 301 + 16
    clock.advance(300)
    for _ in range(20):
        limiter.blocked("192.0.2.1")
    assert limiter.tracked == 0


def test_rotatingAddressesAreCapped() -> None:
    """
    A flood of new addresses within one window (a botnet, or a spoofed
    PROXY header source) fills the table up to C{maxTracked} and no
    further; the addresses whose last failure is oldest make room.
    """
    limiter, clock = throttle(window=300.0)
    for n in range(3 * DEFAULT_MAX_TRACKED):
        limiter.failed(_address(n))
        assert limiter.tracked <= DEFAULT_MAX_TRACKED
        clock.advance(0.001)
    assert limiter.tracked == DEFAULT_MAX_TRACKED


def test_oldestLastFailureIsForgottenFirst() -> None:
    limiter, clock = throttle(delayAfter=1, maxTracked=3)
    for host in ("a", "b", "c"):
        assert limiter.failed(host) == 0.0
        clock.advance(1)
    assert limiter.failed("a") == 1.0  # a's last failure is now the newest
    clock.advance(1)
    assert limiter.failed("d") == 0.0  # makes room: b goes
    assert limiter.tracked == 3
    assert limiter.failed("a") == 2.0
    assert limiter.failed("c") == 1.0
    assert limiter.failed("d") == 1.0
    assert limiter.failed("b") == 0.0  # b starts again


def test_oneAddressFailingForeverStaysSmall() -> None:
    """
    Thousands of failures of one address keep it blocked and at the longest
    delay, and it is unblocked once the window has passed since the
    C{blockAfter}-th latest of them, as if all were counted.
    """
    limiter, clock = throttle(window=60.0, delayAfter=3, blockAfter=10, maxDelay=10.0)
    for _ in range(5000):
        assert limiter.failed("192.0.2.1") in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
        clock.advance(0.1)
    assert limiter.failed("192.0.2.1") == 10.0
    assert limiter.blocked("192.0.2.1")
    # The tenth latest failure was 0.9 s ago (failures every 0.1 s).
    clock.advance(60 - 0.9 - 0.05)
    assert limiter.blocked("192.0.2.1")
    clock.advance(0.1)
    assert not limiter.blocked("192.0.2.1")
