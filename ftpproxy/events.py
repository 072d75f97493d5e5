"""
What the proxy tells its operations side (metrics, logs) about itself.

Sessions, transfers, the backend pool and the health checker report through
L{IProxyEvents}; the operations layer (L{ftpproxy.ops}) implements it. Neither
side imports the other: both import this module, which imports nothing of the
project.

Log events that stand for something an operator may select on carry the
field L{EVENT_FIELD} with one of the values below, so that observers (the
xferlog, the JSON log) choose events by an explicit field, never by the name
of the class that logged them.
"""

from __future__ import annotations

from typing import Any, Mapping

from zope.interface import Interface

#: The log event field that names what an event stands for.
EVENT_FIELD = "ftpproxy_event"

#: A session got its backend (fields: session, client, backend, user).
SESSION_STARTED = "session-started"
#: A session ended (fields: session, client, backend, duration).
SESSION_ENDED = "session-ended"
#: A transfer command finished (fields: session, client, user, type, backend,
#: verb, argument, direction, code, bytes, duration).
TRANSFER_FINISHED = "transfer-finished"
#: A TLS handshake with a client ended, well or not (fields: session,
#: client, connection ("control" or "data"), listener, profile, outcome,
#: tls_version, cipher, resumed, ja3, ja3_string, ja4, ja4_fresh (the JA4
#: the ClientHello would have without resuming), sni, alpn,
#: offered_versions, offered_resumption, client_hello_problem).
TLS_HANDSHAKE = "tls-handshake"
#: The proxy closed a client's session for what the client did (fields:
#: session, client, reason: one of L{CLOSE_REASONS}).
CLIENT_CLOSED = "client-closed"
#: A client connection was refused before it had a session (fields: client,
#: reason: one of L{REFUSAL_REASONS}).
CLIENT_REFUSED = "client-refused"

#: Why the proxy closes a client: more refused command lines in a row than
#: max_invalid_commands; no login within login_timeout.
CLOSE_REASONS = ("invalid-commands", "login-timeout")
#: Why a connection is refused: max_sessions, max_sessions_per_client,
#: max_prelogin_per_client, or too many failed logins from its address.
REFUSAL_REASONS = ("sessions", "sessions-per-client", "prelogin-per-client", "login-blocked")


class IProxyEvents(Interface):
    """
    Counters' view of the proxy: each call is one thing that happened.
    Implementations must be cheap; they run on the reactor thread.
    """

    def sessionStarted(backend: str) -> None:
        """
        A session was given backend C{backend} (it greeted).
        """

    def sessionEnded(backend: str) -> None:
        """
        A session that had started on C{backend} ended.
        """

    def transferFinished(
        backend: str, verb: str, direction: str, code: int, size: int, seconds: float
    ) -> None:
        """
        A transfer ended with reply C{code} after moving C{size} bytes in
        C{direction} ("download": backend to client, "upload": the other
        way) in C{seconds}.
        """

    def tlsHandshake(side: str, version: str) -> None:
        """
        A TLS handshake finished on a C{side} ("client" or "backend")
        connection with protocol C{version} (e.g. "TLSv1.3").
        """

    def clientHandshake(fields: Mapping[str, Any]) -> None:
        """
        A TLS handshake with a client ended; C{fields} are those of its
        L{TLS_HANDSHAKE} log event.
        """

    def backendConnectFailed(backend: str) -> None:
        """
        A session's connect to C{backend} (or its greeting, or its TLS set-up)
        failed.
        """

    def backendState(name: str, up: bool) -> None:
        """
        The health verdict on backend C{name} changed (or was first made).
        """

    def healthCheck(name: str, seconds: float, ok: bool) -> None:
        """
        One active health check of backend C{name} took C{seconds} and passed
        or failed.
        """

    def clientClosed(reason: str) -> None:
        """
        The proxy closed a client's session because of what the client did
        (or did not do); C{reason} is one of L{CLOSE_REASONS}.
        """

    def clientRefused(reason: str) -> None:
        """
        A client's connection was refused (421) before its session started;
        C{reason} is one of L{REFUSAL_REASONS}.
        """
