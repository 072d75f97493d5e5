"""
The states of a session's life, from connect to close.
"""

import enum


class SessionState(enum.Enum):
    AWAITING_USER = "greeted by the proxy, waiting for USER to choose a backend"
    CONNECTING = "connecting to a backend"
    READY = "relaying"
    CLOSING = "closing"
    CLOSED = "closed"
