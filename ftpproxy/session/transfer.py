"""
One transfer command (RETR, STOR, LIST, ...) carried through the proxy.

The client's data connection comes from the session's data channel
(passive or active). Towards the backend the proxy asks for passive mode
itself (EPSV, else PASV), connects, replays a pending REST, and only then
sends the command. The two legs are pumped in the command's direction; the
backend's final reply reaches the client only once both legs have closed, so
a client never reads "226" before it has all the data.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpproxy.backends.control import connectProtocol
from ftpproxy.events import TRANSFER_FINISHED
from OpenSSL.SSL import Error as SSLError

from ftpproxy.data.legs import DataLeg, SessionNotResumed, pump
from ftpproxy.session.exchanges import Exchange, SilentExchange
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, parseEpsvReply, parsePasvReply
from ftpproxy.data.passive import sameHost

if TYPE_CHECKING:
    from ftpproxy.session.core import ProxySession


class Direction(enum.Enum):
    DOWNLOAD = "download"  # backend -> client
    UPLOAD = "upload"  # client -> backend


TRANSFER_DIRECTIONS = {
    b"RETR": Direction.DOWNLOAD,
    b"LIST": Direction.DOWNLOAD,
    b"NLST": Direction.DOWNLOAD,
    b"MLSD": Direction.DOWNLOAD,
    b"STOR": Direction.UPLOAD,
    b"STOU": Direction.UPLOAD,
    b"APPE": Direction.UPLOAD,
}

# Replies to EPSV meaning "I don't know EPSV": fall back to PASV.
EPSV_UNSUPPORTED = frozenset({500, 501, 502, 504})


class TransferState(enum.Enum):
    NEGOTIATING = "asking the backend for passive mode"
    CONNECTING = "connecting to the backend's data port"
    RESTARTING = "replaying REST"
    COMMANDED = "command sent"
    FINISHING = "final reply held until the data legs close"
    DONE = "done"


class BackendDataRefused(Exception):
    """
    The backend's passive reply names an address the proxy will not use.
    """


class Transfer(Exchange):
    log = Logger()

    def __init__(
        self,
        session: ProxySession,
        verb: bytes,
        line: bytes,
        direction: Direction,
        channel,
        restartOffset: bytes | None,
    ) -> None:
        super().__init__(session)
        self.verb = verb
        self.line = line
        self.direction = direction
        self.channel = channel
        self.restartOffset = restartOffset
        self.state = TransferState.NEGOTIATING
        self.backendLeg: DataLeg | None = None
        self.clientLeg: DataLeg | None = None
        self.commandSent = False
        self.aborted = False
        self._sendAborReply = False
        self._paired = False
        self._preliminarySeen = False
        self._finalReply: Reply | None = None
        self._override: Reply | None = None
        self._usingEpsv = session.backendSupportsEpsv
        self._connecting = None
        self._clientTimer = None
        self._stallTimer = None
        self._backendListening = False
        self._startedAt = time.monotonic()

    # -- start ----------------------------------------------------------------

    def start(self) -> None:
        reactor = self.session.reactor
        self._clientTimer = reactor.callLater(
            self.session.config.dataConnectionTimeout, self._clientDataTimedOut
        )
        self.channel.setDirection(self.direction is Direction.DOWNLOAD)
        self.channel.whenConnected(self._clientLegConnected, self._clientLegFailed)
        self.session.sendToBackend(b"EPSV" if self._usingEpsv else b"PASV", self)

    def replyReceived(self, reply: Reply) -> bool:
        if self.state is TransferState.NEGOTIATING:
            return self._passiveReply(reply)
        if self.state is TransferState.RESTARTING:
            return self._restartReply(reply)
        if self.state is TransferState.COMMANDED:
            return self._commandReply(reply)
        # Nothing is owed in the other states; pass strays on.
        self.session.reply(reply)
        return False

    # -- the backend's data connection -------------------------------------

    def _passiveReply(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            return False
        # From here on the backend listens for us, until a transfer command
        # or an ABOR.
        self._backendListening = reply.code in (227, 229)
        if self.aborted:
            self._finish(None)
            return True
        try:
            if self._usingEpsv and reply.code in EPSV_UNSUPPORTED:
                self.session.backendSupportsEpsv = self._usingEpsv = False
                self.session.backendControl.sendCommand(b"PASV")
                return False
            host, port = self._backendDataAddress(reply)
        except (ProtocolTextError, BackendDataRefused) as e:
            self.log.warn(
                "session {session}: backend {backend} passive reply unusable: {why}",
                session=self.session.id,
                backend=self.session.backend.name,
                why=str(e),
            )
            self._finish(Reply.single(425, "Can't open data connection to the backend."))
            return True
        self.state = TransferState.CONNECTING
        leg = DataLeg()
        self._connecting = connectProtocol(
            self.session.reactor, host, port, self.session.config.connectTimeout, leg
        )
        self._connecting.addCallbacks(
            lambda _: self._backendLegConnected(leg), self._backendLegFailed
        )
        return False

    def _backendDataAddress(self, reply: Reply) -> tuple[str, int]:
        backend = self.session.backend.config
        controlHost = self.session.backendControl.peerHost
        text = b" ".join(reply.lines)
        if self._usingEpsv:
            if reply.code != 229:
                raise BackendDataRefused(f"EPSV answered {reply.code}")
            host, port = controlHost, parseEpsvReply(text)
        else:
            if reply.code != 227:
                raise BackendDataRefused(f"PASV answered {reply.code}")
            host, port = parsePasvReply(reply.text)
            if backend.dataAddress == "control":
                host = controlHost
            elif backend.dataAddress == "check" and not sameHost(host, controlHost):
                raise BackendDataRefused(f"227 names {host}, not {controlHost}")
        if port < 1024 and not backend.allowLowDataPorts:
            raise BackendDataRefused(f"data port {port} is below 1024")
        return host, port

    def _backendLegConnected(self, leg: DataLeg) -> None:
        self._connecting = None
        if self.state is TransferState.DONE:
            leg.abort()
            return
        self.backendLeg = leg
        leg.whenLost().addCallback(lambda _: self._legLost())
        self._protectBackendLeg(leg)
        if self.restartOffset is not None:
            self.state = TransferState.RESTARTING
            self.session.backendControl.sendCommand(b"REST " + self.restartOffset)
        else:
            self._sendCommand()

    def _protectBackendLeg(self, leg: DataLeg) -> None:
        """
        Under PROT P towards an FTPS backend, start TLS as the client at once,
        resuming the control connection's session (vsftpd insists). The
        command goes out without waiting for the handshake: many servers only
        accept TLS on the data connection once they have the command.
        """
        backend = self.session.backend
        tls = self.session.proxy.backendTLSFor(backend)
        if tls is not None and backend.config.dataProtection == "private":
            leg.transport.startTLS(tls.resuming(self.session.backendControl.transport))

    def _backendLegFailed(self, reason: Failure) -> None:
        self._connecting = None
        if self.state is TransferState.DONE:
            return
        self.log.warn(
            "session {session}: backend {backend} data connection failed: {why}",
            session=self.session.id,
            backend=self.session.backend.name,
            why=reason.getErrorMessage(),
        )
        self._leaveBackendQueue()
        self._finish(Reply.single(425, "Can't open data connection to the backend."))

    def _restartReply(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            return False
        if self.aborted:
            self._finish(None)
            return True
        if reply.code != 350:
            self._finish(reply)
            return True
        self._sendCommand()
        return False

    def _sendCommand(self) -> None:
        self.state = TransferState.COMMANDED
        self.commandSent = True
        self.session.backendControl.sendCommand(self.line)
        self._maybePair()

    # -- the client's data connection --------------------------------------

    def _clientLegConnected(self, leg: DataLeg) -> None:
        self._cancelClientTimer()
        if self.state is TransferState.DONE:
            leg.abort()
            return
        self.clientLeg = leg
        leg.whenLost().addCallback(lambda _: self._legLost())
        self._maybePair()

    def _clientLegFailed(self, reason: Failure) -> None:
        self._cancelClientTimer()
        if reason.check(SessionNotResumed):
            reply = Reply.single(522, "SSL connection failed: session reuse required.")
        elif self.clientLeg is None and reason.check(SSLError):
            reply = Reply.single(425, "Can't open data connection: TLS handshake failed.")
        else:
            reply = Reply.single(425, "Can't open data connection to your data port.")
        self.log.info(
            "session {session}: client data connection failed: {why}",
            session=self.session.id,
            why=reason.getErrorMessage() or reason.type.__name__,
        )
        self._clientDataUnavailable(reply)

    def _clientDataTimedOut(self) -> None:
        self._clientTimer = None
        self.log.info(
            "session {session}: client opened no data connection for {verb}",
            session=self.session.id,
            verb=self.verb.decode(),
        )
        self._clientDataUnavailable(Reply.single(425, "Can't open data connection: timed out."))

    def _clientDataUnavailable(self, reply: Reply) -> None:
        if self.state is TransferState.DONE:
            return
        if self.state is TransferState.CONNECTING:
            self._leaveBackendQueue()
            self._finish(reply)
        elif self.state is TransferState.FINISHING:
            self._finish(reply)
        else:
            # A backend reply is still owed; answer the client when it comes.
            self._override = reply
            self.aborted = True
            self._abortLegs()

    def _maybePair(self) -> None:
        if self._paired or not self.commandSent or self.aborted:
            return
        if self.backendLeg is None or self.clientLeg is None:
            return
        self._paired = True
        reactor = self.session.reactor if self.session.config.splice else None
        if self.direction is Direction.DOWNLOAD:
            pump(self.backendLeg, self.clientLeg, reactor)
        else:
            pump(self.clientLeg, self.backendLeg, reactor)
        self._watchForStall(-1)

    def _movedBytes(self) -> int:
        return sum(leg.bytesReceived for leg in (self.backendLeg, self.clientLeg) if leg)

    def _watchForStall(self, previous: int) -> None:
        """
        Every stall period, check that bytes moved; abort when none did.
        Cheaper than touching a timer for every chunk.
        """
        self._stallTimer = None
        if self.state not in (TransferState.COMMANDED, TransferState.FINISHING):
            return
        moved = self._movedBytes()
        if moved == previous:
            self.log.info(
                "session {session}: {verb} stalled, no data for {seconds}s",
                session=self.session.id,
                verb=self.verb.decode(),
                seconds=self.session.config.dataStallTimeout,
            )
            stalled = Reply.single(426, "Data connection stalled; transfer aborted.")
            if self.state is TransferState.FINISHING:
                self._finish(stalled)
            else:
                self._override = stalled
                self.aborted = True
                self._abortLegs()
            return
        if self.session.config.dataStallTimeout:
            self._stallTimer = self.session.reactor.callLater(
                self.session.config.dataStallTimeout, self._watchForStall, moved
            )

    # -- the transfer command's replies --------------------------------------

    def _commandReply(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            self._preliminarySeen = True
            if self._override is None:
                self.session.reply(reply)
            return False
        if self.aborted:
            self._finish(reply if reply.isError else Reply.single(426, "Transfer aborted."))
            return True
        if reply.isError and (not self._preliminarySeen or self.clientLeg is None):
            self._finish(reply)
            return True
        self._finalReply = reply
        self.state = TransferState.FINISHING
        self._legLost()
        return True

    def _legLost(self) -> None:
        if self.state is not TransferState.FINISHING:
            return
        backendDone = self.backendLeg is None or self.backendLeg.lost
        clientDone = self.clientLeg is not None and self.clientLeg.lost
        if backendDone and clientDone:
            self._finish(self._finalReply)

    # -- abort and finish -----------------------------------------------------

    def abort(self, sendAborReply: bool = True) -> None:
        """
        The client sent ABOR (or QUIT): close the data legs now. Unless the
        backend has the command already (and answers ABOR itself), the proxy
        answers with 426, and 226 for the ABOR.
        """
        if self.state is TransferState.DONE:
            return
        self.aborted = True
        self._sendAborReply = sendAborReply and not self.commandSent
        self._cancelClientTimer()
        self._abortLegs()
        if self.state is TransferState.CONNECTING:
            self._leaveBackendQueue()
            self._finish(None)
        elif self.state is TransferState.FINISHING:
            self._finish(Reply.single(426, "Transfer aborted."))

    def _finish(self, reply: Reply | None) -> None:
        if self.state is TransferState.DONE:
            return
        self.state = TransferState.DONE
        if self._override is not None:
            reply = self._override
        elif reply is None:
            reply = Reply.single(426, "Transfer aborted.")
        self.tearDown()
        self.session.reply(reply)
        if self._sendAborReply:
            self.session.reply(Reply.single(226, "ABOR command successful."))
        if self._backendListening and not self.commandSent and self.session.backendControl:
            # Cancel the backend's passive mode: left alone, some servers
            # later send an unsolicited "421 Passive data channel timed out".
            self.session.sendToBackend(b"ABOR", SilentExchange(self.session))
        self._logTransfer(reply)
        self.session.commandDone(self)

    def tearDown(self) -> None:
        """
        Release everything: timers, the connect in progress, both legs and
        the client data channel. No reply is sent.
        """
        self.state = TransferState.DONE
        self._cancelClientTimer()
        if self._stallTimer is not None:
            timer, self._stallTimer = self._stallTimer, None
            if timer.active():
                timer.cancel()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        self._abortLegs()
        self.channel.close()

    def _abortLegs(self) -> None:
        for leg in (self.backendLeg, self.clientLeg):
            if leg is not None:
                leg.abort()

    def _cancelClientTimer(self) -> None:
        if self._clientTimer is not None:
            timer, self._clientTimer = self._clientTimer, None
            if timer.active():
                timer.cancel()

    def _leaveBackendQueue(self) -> None:
        awaiting = self.session._awaiting
        if self in awaiting:
            awaiting.remove(self)

    def _logTransfer(self, reply: Reply) -> None:
        source = self.backendLeg if self.direction is Direction.DOWNLOAD else self.clientLeg
        size = source.bytesReceived if source is not None else 0
        duration = time.monotonic() - self._startedAt
        self.session.proxy.metrics.transferFinished(
            self.session.backend.name,
            self.verb.decode(),
            self.direction.value,
            reply.code,
            size,
            duration,
        )
        self.log.info(
            "session {session}: {verb} {argument} via {backend}: {code}, "
            "{bytes} bytes in {duration:.3f}s",
            session=self.session.id,
            client=self.session.clientHost,
            user=self.session.user,
            type=self.session.transferType,
            backend=self.session.backend.name,
            verb=self.verb.decode(),
            argument=self.line[len(self.verb) + 1 :].decode("utf-8", "replace"),
            direction=self.direction.value,
            code=reply.code,
            bytes=size,
            duration=duration,
            ftpproxy_event=TRANSFER_FINISHED,
        )
