"""
One client's FTP session: its control connection, the backend control
connection it was given, and the data transfers between them.

The session reads the client's commands one at a time. Each command becomes
an exchange (relayed, answered locally, or a transfer); exchanges that wait
for the backend sit in a queue in the order their commands were sent, so each
backend reply reaches the exchange it answers. ABOR and QUIT are read even
while a transfer runs; other commands wait their turn.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from OpenSSL.SSL import Error as SSLError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.backends.control import BackendControl, connectProtocol
from ftpproxy.backends.balancer import Backend
from ftpproxy.data.closing import CONTROL_CLOSE_GRACE, loseConnectionWithin
from ftpproxy.wire.commandlines import CommandLineSplitter, LineTooLong
from ftpproxy.data.active import ActiveDataChannel
from ftpproxy.events import SESSION_ENDED, SESSION_STARTED
from ftpproxy.session.datacommands import DataConnectionCommands
from ftpproxy.session.exchanges import (
    BannerExchange,
    Exchange,
    FeatExchange,
    QuitExchange,
    RelayExchange,
    SilentExchange,
)
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, formatFeatReply, parseCommand
from ftpproxy.session.limits import Deadline, ReadGate
from ftpproxy.data.passive import PassiveDataListener
from ftpproxy.backends.control import sendProxyHeader
from ftpproxy.session.securitycommands import SecurityCommands
from ftpproxy.session.state import SessionState
from ftpproxy.session.transfer import TRANSFER_DIRECTIONS, Transfer
from ftpproxy.session.userrouting import UserRoutingCommands

if TYPE_CHECKING:
    from ftpproxy.app.proxy import ProxyFactory

# Commands read and acted on while a transfer is running.
URGENT_DURING_TRANSFER = frozenset({b"ABOR", b"QUIT"})

# What the proxy answers itself before USER when it routes by user name.
PRE_LOGIN_COMMANDS = frozenset(
    {b"AUTH", b"PBSZ", b"PROT", b"CCC", b"FEAT", b"SYST", b"NOOP", b"OPTS", b"HELP", b"QUIT", b"USER"}
)

# Beyond this many unread commands, stop reading the client.
MAX_QUEUED_COMMANDS = 32

_READING_STATES = (SessionState.READY, SessionState.AWAITING_USER)


@implementer(IHandshakeListener)
class ProxySession(DataConnectionCommands, SecurityCommands, UserRoutingCommands, Protocol):
    """
    The client-facing control connection of one session.
    """

    log = Logger()
    implicitTLS = False

    def __init__(self, proxy: ProxyFactory) -> None:
        self.proxy = proxy
        self.reactor = proxy.reactor
        self.config = proxy.config
        # Kept for the session's life: data connections must use the
        # context of their control connection even after a reload.
        self.serverTLS = proxy.serverTLS
        self.id = proxy.newSessionId()
        self.state = SessionState.CONNECTING
        self.backend: Backend | None = None
        self.backendControl: BackendControl | None = None
        self.clientHost = ""
        self.user: str | None = None
        self.transferType = "A"
        self.backendSupportsEpsv = True
        self.epsvAll = False
        self.tlsActive = False
        self.protectData = False
        self.restartOffset: bytes | None = None
        self.dataChannel: PassiveDataListener | ActiveDataChannel | None = None
        self.transfer: Transfer | None = None
        self._queue: deque[bytes | LineTooLong] = deque()
        self._busy: Exchange | None = None
        self._awaiting: deque[Exchange] = deque()
        self._startedAt = 0.0
        self._pendingConnect = None
        self._bannerTimer = None
        self._fallbacks: list[Backend] = []
        self._closeTimer = None
        self._greeted = False
        self._counted = False
        self.loggedIn = False
        self._heldReply = None
        self._pendingUser: bytes | None = None
        self._pendingOptions: list[bytes] = []
        self._loginDeadline = Deadline(self.reactor, self.config.loginTimeout, self._loginTimedOut)
        self._idleDeadline = Deadline(self.reactor, self.config.idleTimeout, self._idleTimedOut)

    # -- client connection ------------------------------------------------

    def connectionMade(self) -> None:
        self._startedAt = time.monotonic()
        self.clientHost = self.transport.getPeer().host
        self._splitter = CommandLineSplitter(self.config.maxLineLength)
        refusal = self.proxy.limiter.refusal(self.clientHost)
        if refusal is None and self.proxy.loginThrottle.blocked(self.clientHost):
            refusal = "Too many failed logins from your address; try again later."
        if refusal is not None:
            self.log.warn(
                "session {session}: refused client {client}: {why}",
                session=self.id,
                client=self.clientHost,
                why=refusal,
            )
            self.state = SessionState.CLOSING
            self.transport.write(Reply.single(421, refusal).toBytes())
            self.transport.loseConnection()
            return
        self.proxy.limiter.opened(self.clientHost)
        self._counted = True
        self._loginDeadline.restart()
        self._idleDeadline.restart()
        self._tuneControlSocket()
        self._reading = ReadGate(self.transport)
        if self.implicitTLS:
            # Implicit FTPS: TLS from the first byte, data protected unless
            # the client says PROT C.
            self.startTLS()
            self.protectData = True
        else:
            self._watchReplies()
        if self.proxy.routesByUser:
            # The backend depends on the user name: greet the client here
            # and choose at USER.
            self.state = SessionState.AWAITING_USER
            self.replyText(220, self.proxy.greeting)
        else:
            self._connectBackend(self.proxy.pool.candidates(self.clientHost))

    def _tuneControlSocket(self) -> None:
        # Keepalive keeps idle-dropping NATs from cutting a control
        # connection that is silent during a long transfer; OOBINLINE keeps
        # the urgent byte that Python's ftplib sends with ABOR in the stream.
        self.transport.setTcpKeepAlive(True)
        # Replies are small and answer a waiting client: don't let Nagle hold
        # one back behind the previous segment's delayed ACK.
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

    def startTLS(self) -> None:
        """
        Start the server side of TLS on the control connection. Until the
        handshake is done nothing watches the replies: TLS buffers them and
        would pause the very reading that lets the handshake finish.
        """
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.startTLS(self.serverTLS)
        self.tlsActive = True

    def handshakeCompleted(self) -> None:
        self._watchReplies()
        version = self.transport.getHandle().get_protocol_version_name()
        self.proxy.metrics.tlsHandshake("client", version)
        self.log.info(
            "session {session}: TLS {version} with client {client}",
            session=self.id,
            version=version,
            client=self.clientHost,
        )

    def dataReceived(self, data: bytes) -> None:
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        self._idleDeadline.restart()
        self._queue.extend(self._splitter.feed(data))
        self._processQueue()

    def _dispatchUrgent(self) -> None:
        """
        While a transfer runs, ABOR and QUIT jump the queue.
        """
        for line in list(self._queue):
            verb = self._urgentVerb(line)
            if verb == b"QUIT" or (verb == b"ABOR" and not self.transfer.aborted):
                self._queue.remove(line)
                self._dispatch(line)
                return

    def _urgentVerb(self, line: bytes | LineTooLong) -> bytes | None:
        if isinstance(line, LineTooLong):
            return None
        try:
            verb, _ = parseCommand(line)
        except ProtocolTextError:
            return None
        return verb if verb in URGENT_DURING_TRANSFER else None

    def connectionLost(self, reason: Failure = None) -> None:
        self.state = SessionState.CLOSED
        if self._closeTimer is not None:
            self._closeTimer.cancel()
        self._teardown()
        if self._counted:
            self.proxy.limiter.closed(self.clientHost)
        if self.backend is not None and self._greeted:
            self.backend.sessionEnded()
            self.proxy.metrics.sessionEnded(self.backend.name)
        self.proxy.sessionEnded(self)
        self.log.info(
            "session {session} ended: client {client}, backend {backend}, {duration:.3f}s",
            session=self.id,
            client=self.clientHost,
            backend=self.backend.name if self.backend else None,
            duration=time.monotonic() - self._startedAt,
            ftpproxy_event=SESSION_ENDED,
        )

    def _teardown(self) -> None:
        self._queue.clear()
        self._awaiting.clear()
        self._loginDeadline.stop()
        self._idleDeadline.stop()
        if self._heldReply is not None:
            held, self._heldReply = self._heldReply, None
            if held.active():
                held.cancel()
        if self._pendingConnect is not None:
            pending, self._pendingConnect = self._pendingConnect, None
            pending.cancel()
        self._cancelBannerTimer()
        if self.transfer is not None:
            self.transfer.tearDown()
        self.dropDataChannel()
        if self.backendControl is not None:
            control, self.backendControl = self.backendControl, None
            control.close()

    # -- replies to the client ----------------------------------------------

    def reply(self, reply: Reply) -> None:
        if self.state is not SessionState.CLOSED:
            self.transport.write(reply.toBytes())

    def replyText(self, code: int, text: str) -> None:
        self.reply(Reply.single(code, text))

    def close(self, code: int | None = None, text: str = "") -> None:
        """
        End the session, first telling the client why when C{code} is given.
        """
        if self.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        if code is not None:
            self.replyText(code, text)
        self.state = SessionState.CLOSING
        self._teardown()
        self._closeTimer = loseConnectionWithin(self.transport, self.reactor, CONTROL_CLOSE_GRACE)

    # -- the backend control connection ----------------------------------

    def _connectBackend(self, candidates: list[Backend]) -> None:
        if not candidates:
            self.log.warn("session {session}: no backend available", session=self.id)
            self.close(421, "Service not available, no backend server is reachable.")
            return
        backend, rest = candidates[0], candidates[1:]
        control = BackendControl()
        address = backend.config.address
        d = connectProtocol(
            self.reactor, address.host, address.port, self.config.connectTimeout, control
        )
        self._pendingConnect = d

        def connected(_: object) -> None:
            self._pendingConnect = None
            self._backendConnected(backend, control, rest)

        def failed(reason: Failure) -> None:
            self._pendingConnect = None
            self.proxy.metrics.backendConnectFailed(backend.name)
            if self.state is SessionState.CONNECTING:
                self.proxy.pool.reportConnectFailure(backend, reason.getErrorMessage())
                self.log.warn(
                    "session {session}: backend {backend} unreachable: {why}",
                    session=self.id,
                    backend=backend.name,
                    why=reason.getErrorMessage(),
                )
                self._connectBackend(rest)

        d.addCallbacks(connected, failed)

    def _backendConnected(self, backend: Backend, control: BackendControl, rest: list[Backend]) -> None:
        if self.state is not SessionState.CONNECTING:
            control.close()
            return
        if backend.config.proxyProtocol:
            # Before any FTP byte, and before TLS for implicit FTPS backends.
            sendProxyHeader(
                control.transport,
                backend.config.proxyProtocol,
                self.transport.getPeer(),
                self.transport.getHost(),
            )
        self.backend = backend
        self.backendControl = control
        self._fallbacks = rest
        self._busy = BannerExchange(self)
        self._awaiting.append(self._busy)
        # One deadline covers the greeting and, for FTPS backends, the TLS
        # set-up that follows it.
        self._bannerTimer = self.reactor.callLater(
            self.config.connectTimeout, self._bannerTimedOut
        )
        if backend.config.tls == "implicit":
            control.startTLS(self.proxy.backendTLSFor(backend))
        control.attach(self)

    def _bannerTimedOut(self) -> None:
        self._bannerTimer = None
        self.backendRefused("sent no greeting in time", None)

    def backendRefused(self, why: str, reply: Reply | None) -> None:
        """
        The backend failed before the client was greeted: try the next
        one, or tell the client (with the backend's own reply if it gave
        one) when none is left.
        """
        self.log.warn(
            "session {session}: backend {backend} {why}",
            session=self.id,
            backend=self.backend.name if self.backend else None,
            why=why,
        )
        if self.backend is not None:
            self.proxy.pool.reportConnectFailure(self.backend, why)
        if self._fallbacks or reply is None:
            self.failOver(self._fallbacks)
        else:
            self.reply(reply)
            self.close()

    def _cancelBannerTimer(self) -> None:
        if self._bannerTimer is not None:
            timer, self._bannerTimer = self._bannerTimer, None
            if timer.active():
                timer.cancel()

    def failOver(self, rest: list[Backend]) -> None:
        """
        Give up on the current backend before the client has seen it.
        """
        self._cancelBannerTimer()
        self._awaiting.clear()
        self._busy = None
        if self.backendControl is not None:
            control, self.backendControl = self.backendControl, None
            control.close()
        self.backend = None
        self._connectBackend(rest)

    def backendReady(self, banner: Reply) -> None:
        """
        The backend greeted (and, for an FTPS backend, TLS is set up): pass
        its banner on, or, when routing by user, replay what the client said
        before USER and send the USER itself.
        """
        self.backendGreeted()
        if self._pendingUser is None:
            self.reply(banner)
            return
        self._busy = None
        for line in self._pendingOptions:
            self.sendToBackend(line, SilentExchange(self))
        self._pendingOptions = []
        userLine, self._pendingUser = self._pendingUser, None
        self._relayLogin(userLine)

    def backendGreeted(self) -> None:
        """
        The backend said 220: the session is on.
        """
        self._cancelBannerTimer()
        self.state = SessionState.READY
        self._greeted = True
        self.proxy.pool.reportConnectSuccess(self.backend)
        self.backend.sessionStarted()
        self.proxy.metrics.sessionStarted(self.backend.name)
        # The session's start event: once, when it has its backend.
        self.log.info(
            "session {session} started: client {client}, backend {backend}",
            session=self.id,
            client=self.clientHost,
            backend=self.backend.name,
            user=self.user,
            ftpproxy_event=SESSION_STARTED,
        )

    # -- login and timeouts ---------------------------------------------------

    def _loginTimedOut(self) -> None:
        if not self.loggedIn:
            self.log.info("session {session}: login timed out", session=self.id)
            self.close(421, "Login timed out; closing control connection.")

    def _idleTimedOut(self) -> None:
        if self.transfer is not None:
            # Never while data flows: the control connection is quiet then.
            self._idleDeadline.restart()
            return
        self.log.info("session {session}: idle timeout", session=self.id)
        self.close(421, "Idle timeout; closing control connection.")

    def sendToBackend(self, line: bytes, exchange: Exchange) -> None:
        """
        Send a command whose replies go to C{exchange}.
        """
        self._awaiting.append(exchange)
        self.backendControl.sendCommand(line)

    def backendReplyReceived(self, reply: Reply) -> None:
        if not self._awaiting:
            # Unsolicited: typically 421 before the backend hangs up.
            self.reply(reply)
            if reply.code == 421:
                self.close()
            return
        exchange = self._awaiting[0]
        if exchange.replyReceived(reply):
            if self._awaiting and self._awaiting[0] is exchange:
                self._awaiting.popleft()

    def backendProtocolError(self, error: ProtocolTextError) -> None:
        if self.state is SessionState.CONNECTING:
            self.backendRefused(f"sent a malformed reply: {error}", None)
            return
        self.log.warn(
            "session {session}: backend {backend} sent a malformed reply: {error}",
            session=self.id,
            backend=self.backend.name if self.backend else None,
            error=str(error),
        )
        self.backendControl = None
        self.close(421, "Service not available, backend sent a malformed reply.")

    def backendConnectionLost(self, reason: Failure) -> None:
        self.backendControl = None
        if self.state is SessionState.CONNECTING:
            if reason.check(SSLError):
                self.backendRefused(f"TLS failed: {reason.getErrorMessage()}", None)
            else:
                self.backendRefused(f"closed the connection: {reason.getErrorMessage()}", None)
            return
        if isinstance(self._busy, QuitExchange):
            self.close(221, "Goodbye.")
            return
        self.close(421, "Service not available, backend closed the connection.")

    # -- commands -----------------------------------------------------------

    def _processQueue(self) -> None:
        while self._busy is None and self._queue and self.state in _READING_STATES:
            self._dispatch(self._queue.popleft())
        if self.transfer is not None and self._queue:
            self._dispatchUrgent()
        if len(self._queue) > MAX_QUEUED_COMMANDS:
            self._reading.pause("queue")
        elif not self._queue:
            self._reading.resume("queue")

    def commandDone(self, exchange: Exchange) -> None:
        """
        The command in progress has had its final reply.
        """
        if self._busy is exchange:
            self._busy = None
        if exchange is self.transfer:
            self.transfer = None
            self._idleDeadline.restart()
        if self.state in _READING_STATES:
            self._processQueue()

    def _dispatch(self, line: bytes | LineTooLong) -> None:
        if isinstance(line, LineTooLong):
            self.replyText(500, "Command line too long.")
            return
        try:
            verb, argument = parseCommand(line)
        except ProtocolTextError:
            self.replyText(500, "Syntax error, command unrecognized.")
            return
        if self.state is SessionState.AWAITING_USER and verb not in PRE_LOGIN_COMMANDS:
            self.replyText(530, "Please log in with USER and PASS first.")
            return
        handler: Callable[[bytes, bytes], None] | None = getattr(
            self, "ftp_" + verb.decode("ascii"), None
        )
        if handler is not None:
            handler(argument, line)
        elif verb in TRANSFER_DIRECTIONS:
            self._startTransfer(verb, line)
        else:
            self.relay(line)

    def relay(self, line: bytes) -> None:
        exchange = RelayExchange(self)
        self._busy = exchange
        self.sendToBackend(line, exchange)

    # Commands the proxy answers or shapes itself.

    def ftp_FEAT(self, argument: bytes, line: bytes) -> None:
        if self.state is SessionState.AWAITING_USER:
            self.reply(formatFeatReply(self.proxyFeatures() + [b"UTF8"]))
            return
        exchange = FeatExchange(self)
        self._busy = exchange
        self.sendToBackend(line, exchange)

    # -- TLS (RFC 4217), always terminated here --------------------------

    def ftp_TYPE(self, argument: bytes, line: bytes) -> None:
        # Remembered for the transfer log (xferlog's "a"/"b").
        kind = argument.strip()[:1].upper().decode("ascii", "replace")
        if kind in ("A", "I", "E", "L"):
            self.transferType = kind
        self.relay(line)

    def ftp_QUIT(self, argument: bytes, line: bytes) -> None:
        if self.state is SessionState.AWAITING_USER:
            self.close(221, "Goodbye.")
            return
        exchange = QuitExchange(self)
        if self.transfer is not None:
            self.transfer.abort(sendAborReply=False)
        self._busy = exchange
        self.sendToBackend(line, exchange)

    def ftp_ABOR(self, argument: bytes, line: bytes) -> None:
        transfer = self.transfer
        if transfer is not None:
            # Before the backend has the command, the transfer answers the
            # ABOR itself; afterwards the backend does.
            transfer.abort()
            if not transfer.commandSent:
                return
        exchange = RelayExchange(self)
        self._busy = exchange
        self.sendToBackend(line, exchange)

    # -- data channels ------------------------------------------------------
