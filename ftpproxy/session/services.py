"""
What a session gets from the proxy: the services of its configuration, and
the link to the backend it greeted through.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from ftpproxy.backends.balancer import Backend
from ftpproxy.session.conversation import BackendConversation
from ftpproxy.session.limits import DeadlineQueue


@attrs.frozen
class SessionServices:
    """
    What the sessions of one configuration share; a reload makes a new one
    for new sessions, and running sessions keep theirs.
    """

    reactor: Any
    config: Any
    pool: Any
    #: The passive port pool of this configuration's range.
    passivePorts: Any
    #: The listener's TLS (an L{ftpproxy.tls.contexts.ServerTLS}), or None
    #: when it offers no TLS.
    serverTLS: Any
    events: Any
    loginThrottle: Any
    #: The TLS client creator of a backend (one per backend, shared).
    backendTLS: Callable[[Backend], Any]
    #: Choose the backend at USER (user-hash): the proxy greets first, and
    #: a later USER may move the session to another backend.
    routesByUser: bool
    greeting: str
    newSessionId: Callable[[], str]
    #: Connect to the backend only at USER (backend_at_user): the proxy
    #: greets first; the policy chooses as usual.
    connectsAtUser: bool = False
    #: Where the sessions' deadlines (idle, login, backend reply) wait:
    #: one reactor call for all of them.
    deadlines: DeadlineQueue = attrs.field(
        default=attrs.Factory(lambda self: DeadlineQueue(self.reactor), takes_self=True)
    )


class BackendLink:
    """
    The backend a session greeted through: its pool entry and the
    conversation with it. Counted as one of the backend's sessions from
    creation until L{release}.
    """

    __slots__ = ('backend', 'conversation', '_events')

    def __init__(self, backend: Backend, conversation: BackendConversation, events: Any) -> None:
        self.backend = backend
        self.conversation = conversation
        self._events = events
        backend.sessionStarted()
        events.sessionStarted(backend.name)

    def release(self) -> None:
        self.conversation.close()
        self.backend.sessionEnded()
        self._events.sessionEnded(self.backend.name)
