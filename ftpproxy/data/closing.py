"""
Closing a connection gracefully, but not forever.

A graceful close flushes what is buffered and, on TLS, sends close_notify
and waits for the peer's. A peer that never answers (or never finishes a
handshake) would hold the connection, and a session slot, for good; so once
nothing is left to send, the connection is aborted after a grace period.
"""

from __future__ import annotations

from ftpproxy.internals import pendingWrites

# Seconds a closing connection may linger once everything has been sent:
# a control connection has had its last reply; a data connection's peer
# has had all the data.
CONTROL_CLOSE_GRACE = 2.0
DATA_CLOSE_GRACE = 5.0


def loseConnectionWithin(transport, clock, grace: float) -> GraceTimer | None:
    """
    C{transport.loseConnection()}, then abort it if it is still open C{grace}
    seconds after its last byte went out. Returns the timer to cancel once
    the connection is gone (None without a clock).
    """
    transport.loseConnection()
    if clock is None:
        return None
    return GraceTimer(transport, clock, grace)


class GraceTimer:
    """
    The pending check of a closing connection: every C{grace} seconds, while
    it still has bytes to send, look again; once it has none, abort it.
    Answers C{active()} and C{cancel()} for whichever check is pending.
    """

    __slots__ = ("_call", "_clock", "_grace", "_transport")

    def __init__(self, transport, clock, grace: float) -> None:
        self._transport = transport
        self._clock = clock
        self._grace = grace
        self._call = clock.callLater(grace, self._check)

    def _check(self) -> None:
        transport = self._transport
        if getattr(transport, "disconnected", False):
            return
        if pendingWrites(transport):
            self._call = self._clock.callLater(self._grace, self._check)
            return
        transport.abortConnection()

    def active(self) -> bool:
        return self._call.active()

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()
