"""
Closing a connection gracefully, but not forever.

A graceful close flushes what is buffered and, on TLS, sends close_notify
and waits for the peer's. A peer that never answers (or never finishes a
handshake) would hold the connection, and a session slot, for good; so once
nothing is left to send, the connection is aborted after a grace period.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall

from ftpproxy.internals import pendingWrites

# Seconds a closing connection may linger once everything has been sent:
# a control connection has had its last reply; a data connection's peer
# has had all the data.
CONTROL_CLOSE_GRACE = 2.0
DATA_CLOSE_GRACE = 5.0


def loseConnectionWithin(transport, clock, grace: float) -> IDelayedCall | None:
    """
    C{transport.loseConnection()}, then abort it if it is still open C{grace}
    seconds after its last byte went out. Returns the timer to cancel once
    the connection is gone (None without a clock).
    """
    transport.loseConnection()
    if clock is None:
        return None
    timer: list[IDelayedCall] = []

    def check() -> None:
        if getattr(transport, "disconnected", False):
            return
        if pendingWrites(transport):
            timer[0] = clock.callLater(grace, check)
            return
        transport.abortConnection()

    timer.append(clock.callLater(grace, check))

    class _Timer:
        """
        Cancels whichever check is pending.
        """

        def active(self) -> bool:
            return timer[0].active()

        def cancel(self) -> None:
            if timer[0].active():
                timer[0].cancel()

    return _Timer()
