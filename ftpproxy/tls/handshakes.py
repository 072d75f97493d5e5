"""
What each TLS handshake with a client was: the client's ClientHello
fingerprint (read from the bytes before they enter OpenSSL), what was
negotiated, and how it ended, reported once per handshake.

A L{WatchedConnection} is the L{SSL.Connection} of one client connection
(control or data).  Twisted's TLS layer hands it every byte the client sends
with C{bio_write}, and C{bio_shutdown} when the TCP connection is gone; the
context's info callback (L{watchHandshakes}) tells it when the handshake is
done and which alerts went by.  Its L{HandshakeWatch} turns that into one
L{HandshakeReport}:

===============  ===========================================================
state            inputs
===============  ===========================================================
reading          bytes: fed to the ClientHello reader -> helloRead (or
                 helloRead with the reason it is not one)
helloRead        bytes: passed on unread
either           handshake done -> reported (ok, or refused when a data
                 connection had to resume and did not); a fatal alert or
                 close_notify, sent or received -> reported (the alert);
                 TCP gone -> reported ("closed")
reported         everything is ignored
===============  ===========================================================

The report is logged as one event marked L{ftpproxy.events.TLS_HANDSHAKE}
(its fields are L{HandshakeReport.fields}) and given to the session's
L{ftpproxy.events.IProxyEvents}, if it has one.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Optional

from attrs import frozen
from OpenSSL import SSL
from twisted.logger import Logger

from ftpproxy.events import EVENT_FIELD, TLS_HANDSHAKE
from ftpproxy.internals import sslSessionReused
from ftpproxy.wire.clienthello import ClientHelloError, ClientHelloReader, Fingerprint
from ftpproxy.wire.tlsalerts import alertName

log = Logger(namespace="ftpproxy.tls")

#: The two kinds of client connection.
CONTROL = "control"
DATA = "data"

#: The outcome of a handshake that went through.
OK = "ok"
#: A data connection that had to resume the control session and did not
#: (the data leg refuses it; the client gets 522).
NOT_RESUMED = "refused: session not resumed"
#: The TCP connection ended before the handshake did, without an alert.
CLOSED = "closed before the handshake ended"

_ALERT_FATAL = 2
_CLOSE_NOTIFY = 0


@frozen
class SessionBinding:
    """
    The session a connection belongs to.

    @ivar sessionId: the session's id in logs.
    @ivar clientHost: the client's address.
    @ivar events: where the report goes besides the log (an
        L{ftpproxy.events.IProxyEvents}), or L{None}.
    """

    sessionId: str
    clientHost: str
    events: Any = None


@frozen
class HandshakeReport:
    """
    One TLS handshake with a client, as the log and the report tell it.

    @ivar connection: L{CONTROL} or L{DATA}.
    @ivar listener: the listener's name.
    @ivar profile: the TLS profile's name.
    @ivar outcome: L{OK}, L{NOT_RESUMED}, L{CLOSED}, or the alert that
        ended it ("alert received: unknown_ca", "alert sent:
        protocol_version").
    @ivar fingerprint: what the ClientHello says, or L{None} if there was
        none to read.
    @ivar helloProblem: why the ClientHello could not be read, if it could
        not.
    @ivar tlsVersion: the negotiated version ("TLSv1.3"), once done.
    @ivar cipher: the negotiated cipher suite (OpenSSL's name), once done.
    @ivar resumed: whether the handshake resumed a session, once done.
    @ivar binding: the session, if the connection belongs to one.
    """

    connection: str
    listener: str
    profile: str
    outcome: str
    fingerprint: Optional[Fingerprint] = None
    helloProblem: Optional[str] = None
    tlsVersion: Optional[str] = None
    cipher: Optional[str] = None
    resumed: Optional[bool] = None
    binding: Optional[SessionBinding] = None

    def fields(self) -> dict[str, Any]:
        """
        The log event's fields (and what the client report reads).
        """
        fingerprint = self.fingerprint
        binding = self.binding
        return {
            "session": binding.sessionId if binding is not None else None,
            "client": binding.clientHost if binding is not None else None,
            "connection": self.connection,
            "listener": self.listener,
            "profile": self.profile,
            "outcome": self.outcome,
            "tls_version": self.tlsVersion,
            "cipher": self.cipher,
            "resumed": self.resumed,
            "ja3": fingerprint.ja3 if fingerprint else None,
            "ja3_string": fingerprint.ja3String if fingerprint else None,
            "ja4": fingerprint.ja4 if fingerprint else None,
            "ja4_fresh": fingerprint.ja4Fresh if fingerprint else None,
            "sni": fingerprint.serverName if fingerprint else None,
            "alpn": list(fingerprint.alpn) if fingerprint else None,
            "offered_versions": list(fingerprint.offeredVersions) if fingerprint else None,
            "offered_resumption": fingerprint.offersResumption if fingerprint else None,
            "client_hello_problem": self.helloProblem,
        }


class _State(enum.Enum):
    READING = "reading the ClientHello"
    HELLO_READ = "ClientHello read"
    REPORTED = "reported"


class HandshakeWatch:
    """
    Watches one client connection's handshake and reports it once.

    @ivar _state: where the handshake is (see the module's table).
    @ivar _reader: reassembles the ClientHello while reading.
    @ivar _fingerprint: the ClientHello's, once read.
    @ivar _helloProblem: why there is none, if so.
    """

    def __init__(
        self,
        connection: str,
        listener: str,
        profile: str,
        mustResume: bool,
        binding: Optional[SessionBinding],
        report: Callable[[HandshakeReport], None],
    ) -> None:
        """
        @param mustResume: the connection is refused unless it resumes a
            session (a data connection under session_reuse = "required").
        @param report: called with the report, once.
        """
        self._connection = connection
        self._listener = listener
        self._profile = profile
        self._mustResume = mustResume
        self._binding = binding
        self._report = report
        self._state = _State.READING
        self._reader: Optional[ClientHelloReader] = ClientHelloReader()
        self._fingerprint: Optional[Fingerprint] = None
        self._helloProblem: Optional[str] = None

    # -- inputs --------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        """
        Bytes from the client, before OpenSSL sees them.
        """
        if self._state is not _State.READING:
            return
        assert self._reader is not None
        try:
            hello = self._reader.feed(data)
        except ClientHelloError as e:
            self._helloRead(None, str(e))
            return
        except Exception:
            # A bug here must not cost the client its connection.
            log.failure("reading a ClientHello failed")
            self._helloRead(None, "unreadable")
            return
        if hello is not None:
            self._helloRead(Fingerprint.of(hello), None)

    def handshakeDone(self, connection: SSL.Connection) -> None:
        """
        OpenSSL finished the handshake (TLS 1.3 says so again after
        post-handshake messages: only the first counts).
        """
        if self._state is _State.REPORTED:
            return
        resumed = sslSessionReused(connection)
        outcome = NOT_RESUMED if self._mustResume and not resumed else OK
        self._finish(
            outcome,
            tlsVersion=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name(),
            resumed=resumed,
        )

    def alert(self, sent: bool, level: int, description: int) -> None:
        """
        An alert went by; a fatal one, or close_notify, before the
        handshake is done ends it.
        """
        if self._state is _State.REPORTED:
            return
        if level != _ALERT_FATAL and description != _CLOSE_NOTIFY:
            return
        direction = "sent" if sent else "received"
        self._finish(f"alert {direction}: {alertName(description)}")

    def closed(self) -> None:
        """
        The TCP connection is gone.
        """
        if self._state is not _State.REPORTED:
            self._finish(CLOSED)

    # -- the report ----------------------------------------------------------------

    def _helloRead(self, fingerprint: Optional[Fingerprint], problem: Optional[str]) -> None:
        self._state = _State.HELLO_READ
        self._reader = None
        self._fingerprint = fingerprint
        self._helloProblem = problem

    def _finish(self, outcome: str, **negotiated: Any) -> None:
        if self._state is _State.READING:
            self._helloProblem = "no complete ClientHello"
        self._state = _State.REPORTED
        self._reader = None
        report = HandshakeReport(
            connection=self._connection,
            listener=self._listener,
            profile=self._profile,
            outcome=outcome,
            fingerprint=self._fingerprint,
            helloProblem=self._helloProblem,
            binding=self._binding,
            **negotiated,
        )
        try:
            self._report(report)
        except Exception:
            log.failure("reporting a TLS handshake failed")


class WatchedConnection(SSL.Connection):
    """
    A server-side L{SSL.Connection} that shows its L{HandshakeWatch} the
    bytes Twisted's TLS layer feeds it and the end of the TCP connection,
    until the handshake is done: then it becomes a plain L{SSL.Connection}
    (L{unwatch}), so that the bytes of a transfer pay nothing for it.

    @ivar handshakeWatch: the watch.
    """

    def __init__(self, context: SSL.Context, watch: HandshakeWatch) -> None:
        super().__init__(context, None)
        self.handshakeWatch = watch

    def bio_write(self, buf: bytes) -> int:
        self.handshakeWatch.received(buf)
        return super().bio_write(buf)

    def bio_shutdown(self) -> None:
        self.handshakeWatch.closed()
        return super().bio_shutdown()

    def unwatch(self) -> None:
        """
        Stop watching: from now on this is a plain L{SSL.Connection}.
        """
        self.__class__ = SSL.Connection  # type: ignore[assignment]


def watchHandshakes(connection: SSL.Connection, where: int, value: int) -> None:
    """
    The info callback of a server context whose connections are
    L{WatchedConnection}s: handshake done, and alerts.  OpenSSL calls it
    from inside a read or a handshake step, where an exception would be
    lost: a failure is logged instead.
    """
    watch = getattr(connection, "handshakeWatch", None)
    if watch is None:
        return
    try:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            watch.handshakeDone(connection)
            if isinstance(connection, WatchedConnection):
                connection.unwatch()
        elif where & SSL.SSL_CB_ALERT:
            watch.alert(bool(where & SSL.SSL_CB_WRITE), value >> 8, value & 0xFF)
    except Exception:
        log.failure("watching a TLS handshake failed")


def logReport(report: HandshakeReport) -> None:
    """
    Log C{report} as one event marked L{TLS_HANDSHAKE}, and give its fields
    to the session's events.
    """
    fields = report.fields()
    log.info(
        "TLS {connection} handshake on {listener} ({profile}): {outcome}"
        " ({tls_version}, {cipher}, resumed: {resumed}; ja4 {ja4})",
        **fields,
        **{EVENT_FIELD: TLS_HANDSHAKE},
    )
    binding = report.binding
    if binding is not None and binding.events is not None:
        binding.events.clientHandshake(fields)


def newWatch(
    connection: str,
    listener: str,
    profile: str,
    mustResume: bool,
    binding: Optional[SessionBinding],
) -> HandshakeWatch:
    """
    A watch that logs its report (L{logReport}).
    """
    return HandshakeWatch(connection, listener, profile, mustResume, binding, logReport)


__all__ = [
    "CLOSED",
    "CONTROL",
    "DATA",
    "NOT_RESUMED",
    "OK",
    "HandshakeReport",
    "HandshakeWatch",
    "SessionBinding",
    "WatchedConnection",
    "logReport",
    "newWatch",
    "watchHandshakes",
]
