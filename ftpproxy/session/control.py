"""
The client's control connection: bytes in, command lines out; replies in,
bytes out. All decisions are the session's (L{ftpproxy.session.machine});
this protocol only splits lines, keeps them until the session takes them,
writes replies, runs TLS and says when the connection is gone.

What a client's input costs is bounded here: lines wait as the bytes they
came in (not as one object each), and reading stops while more than
L{MAX_QUEUED_COMMANDS} wait. (How many commands the session takes per
reactor turn is the session's business.)
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ftpproxy.data.active import clientAdvertisedHost
from ftpproxy.events import CLIENT_REFUSED, EVENT_FIELD
from ftpproxy.data.closing import CONTROL_CLOSE_GRACE, loseConnectionWithin
from ftpproxy.session.interfaces import IClientChannel
from ftpproxy.session.limits import ReadGate, Refusal
from ftpproxy.session.machine import SessionInputs, startSession
from ftpproxy.session.services import SessionServices
from ftpproxy.wire.commandlines import CommandLineSplitter, LineTooLong
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, parseCommand

# Beyond this many unread commands, stop reading the client. ABOR and QUIT
# jump the queue among these (the rest waits in the splitter).
MAX_QUEUED_COMMANDS = 32

# Bytes read from a client's control connection at a time (Twisted reads
# 64 KiB): commands are short, and what one read costs (Telnet filtering,
# splitting) is what one client can cost everyone else in a reactor turn.
CONTROL_READ_SIZE = 4096


class IAdmission(Interface):
    """
    What a control connection asks of the proxy that accepted it.
    """

    def admit(control, clientHost):
        """
        The services for a new session on C{control} from C{clientHost}, or a
        L{Refusal} saying why it may not have one.
        """

    def released(control, clientHost):
        """
        The admitted connection C{control} from C{clientHost} is gone.
        """

    def loginChanged(control, clientHost, loggedIn):
        """
        The admitted connection C{control} from C{clientHost} has logged in
        (C{loggedIn} True), or must log in again (False).
        """


@implementer(IClientChannel, IHandshakeListener)
class ClientControl(Protocol):
    """
    @ivar _session: the session's inputs, once admitted.
    @ivar _splitter: the bytes received, cut into lines as they are taken.
    @ivar _lines: lines already cut but not taken (those looked through for
        ABOR and QUIT during a transfer); older than the splitter's.
    @ivar _closeTimer: aborts the connection if a graceful close lingers.
    @ivar _start: makes and starts the session of an admitted connection
        (L{startSession}; tests give their own).
    """

    log = Logger()

    def __init__(
        self,
        admission: IAdmission,
        implicitTLS: bool = False,
        start: Callable[[SessionServices, IClientChannel, str, bool], SessionInputs] = startSession,
    ) -> None:
        self._admission = admission
        self._implicitTLS = implicitTLS
        self._start = start
        self._session: SessionInputs | None = None
        self._services: SessionServices | None = None
        # Rarely any (only while a transfer runs): a tuple, replaced as it
        # changes, costs nothing while empty.
        self._lines: tuple[bytes | LineTooLong, ...] = ()
        self._splitter: CommandLineSplitter | None = None
        self._reading: ReadGate | None = None
        self._closeTimer: Any = None
        self._lost = False
        self.clientHost = ""
        self.sessionId = ""

    # -- the connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.clientHost = self.transport.getPeer().host
        admitted = self._admission.admit(self, self.clientHost)
        if isinstance(admitted, Refusal):
            self.log.warn(
                "refused client {client}: {why}",
                client=self.clientHost,
                why=admitted.text,
                reason=admitted.reason,
                **{EVENT_FIELD: CLIENT_REFUSED},
            )
            self.transport.write(Reply.single(421, admitted.text).toBytes())
            self.transport.loseConnection()
            return
        services = self._services = admitted
        self._splitter = CommandLineSplitter(services.config.maxLineLength)
        self._reading = ReadGate(self.transport)
        self._tuneSocket()
        self.sessionId = services.newSessionId()
        if self._implicitTLS:
            # Implicit FTPS: TLS from the first byte.
            self.startTLS(
                services.serverTLS.forSession(self.sessionId, self.clientHost, services.events)
            )
        else:
            self._watchReplies()
        self._session = self._start(services, self, self.sessionId, self._implicitTLS)

    def _tuneSocket(self) -> None:
        # A TCP transport reads bufferSize bytes at a time (and counts its
        # write buffer full beyond it, which pauses reading a client that
        # does not read its replies); wrapped transports ignore it.
        self.transport.bufferSize = CONTROL_READ_SIZE
        # Keepalive keeps idle-dropping NATs from cutting a control
        # connection that is silent during a long transfer; OOBINLINE keeps
        # the urgent byte that Python's ftplib sends with ABOR in the stream.
        self.transport.setTcpKeepAlive(True)
        # Replies are small and answer a waiting client: no Nagle delay.
        self.transport.setTcpNoDelay(True)
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)

    def _watchReplies(self) -> None:
        """
        A client that does not read its replies is not read either: the
        transport pauses this producer when its send buffer fills.
        """
        self.transport.registerProducer(self._reading.repliesProducer(), True)

    def dataReceived(self, data: bytes) -> None:
        if self._session is None or self._lost:
            return
        self._splitter.feed(data)
        waiting = self._waiting()
        if not waiting:
            return
        if waiting > MAX_QUEUED_COMMANDS:
            self._reading.pause("queue")
        self._session.linesAvailable()

    def _waiting(self) -> int:
        return len(self._lines) + self._splitter.waiting

    def connectionLost(self, reason: Failure = None) -> None:
        self._lost = True
        if self._closeTimer is not None:
            self._closeTimer.cancel()
        self._lines = ()
        if self._splitter is not None:
            self._splitter.discard()
        if self._session is not None:
            session, self._session = self._session, None
            session.clientLost()
            self._admission.released(self, self.clientHost)

    # -- for the proxy ----------------------------------------------------------------

    def closeSession(self, code: int, text: str) -> None:
        """
        End this session (shutdown, or the operator's word), telling the
        client why.
        """
        if self._session is not None:
            self._session.close(code, text)

    # -- IClientChannel ----------------------------------------------------------------

    @property
    def peerHost(self) -> str:
        connectionPeer = getattr(self.transport, "connectionPeer", None)
        return (connectionPeer() if connectionPeer else self.transport.getPeer()).host

    @property
    def localHost(self) -> str:
        return clientAdvertisedHost(None, self.transport.getHost().host)

    @property
    def interfaceHost(self) -> str:
        connectionHost = getattr(self.transport, "connectionHost", None)
        return (connectionHost() if connectionHost else self.transport.getHost()).host

    def headerAddresses(self) -> tuple[Any, Any]:
        return self.transport.getPeer(), self.transport.getHost()

    def loginChanged(self, loggedIn: bool) -> None:
        if self._session is not None:
            self._admission.loginChanged(self, self.clientHost, loggedIn)

    def nextCommand(self) -> bytes | LineTooLong | None:
        """
        The oldest command line not yet taken, or None.
        """
        if self._lost or not self._waiting():
            return None
        if self._lines:
            line, self._lines = self._lines[0], self._lines[1:]
        else:
            line = self._splitter.nextLine()
        if not self._waiting():
            self._reading.resume("queue")
        return line

    def takeUrgent(self, verbs: frozenset[bytes]) -> bytes | None:
        """
        The oldest waiting line whose verb is one of C{verbs}, taken out of
        turn; or None. Only the oldest L{MAX_QUEUED_COMMANDS} waiting lines
        are looked through.
        """
        if len(self._lines) < MAX_QUEUED_COMMANDS and self._splitter.waiting:
            lines = list(self._lines)
            while len(lines) < MAX_QUEUED_COMMANDS:
                line = self._splitter.nextLine()
                if line is None:
                    break
                lines.append(line)
            self._lines = tuple(lines)
        for index, line in enumerate(self._lines):
            if isinstance(line, LineTooLong):
                continue
            try:
                verb, _ = parseCommand(line)
            except ProtocolTextError:
                continue
            if verb in verbs:
                self._lines = self._lines[:index] + self._lines[index + 1 :]
                if not self._waiting():
                    self._reading.resume("queue")
                return line
        return None

    def discardPendingInput(self) -> bool:
        discarded = self._splitter.discard()
        pending = bool(self._lines) or bool(discarded)
        self._lines = ()
        if self._reading is not None:
            self._reading.resume("queue")
        return pending

    def reply(self, reply: Reply) -> None:
        if not self._lost:
            self.transport.write(reply.toBytes())

    def startTLS(self, creator: Any) -> None:
        """
        Start the server side of TLS. Until the handshake is done nothing
        watches the replies: TLS buffers them and would pause the very
        reading that lets the handshake finish.
        """
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        # Whatever the replies producer paused, it no longer holds.
        self._reading.resume("replies")
        self.transport.startTLS(creator)

    def handshakeCompleted(self) -> None:
        self._watchReplies()
        version = self.transport.getHandle().get_protocol_version_name()
        self._services.events.tlsHandshake("client", version)
        self.log.info(
            "session {session}: TLS {version} with client {client}",
            session=self.sessionId,
            version=version,
            client=self.clientHost,
        )

    def close(self) -> None:
        if self._closeTimer is None and not self._lost:
            self._closeTimer = loseConnectionWithin(
                self.transport, self._services.reactor, CONTROL_CLOSE_GRACE
            )
