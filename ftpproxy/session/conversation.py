"""
The conversation with a session's backend: commands out, replies matched
to the commands that asked for them.

FTP answers every command with any number of preliminary replies (1xx) and
exactly one final reply, in the order the commands were sent. The
conversation keeps the commands sent and not yet finally answered in that
order, each with the exchange that wants its replies, and gives each reply to
the oldest. A reply that nothing asked for is not passed on (it would put the
client one reply out of step): it is logged and dropped, except a 421, which
means the backend is going away.

While a command waits for its reply, a deadline runs; a backend that lets it
pass is treated as gone. The deadline stops while a transfer's final reply
waits on the data (L{waitForData}), which may take hours and is watched by the
transfer's own stall timer instead.
"""

from __future__ import annotations

from typing import Any

import attrs
from OpenSSL.SSL import Error as SSLError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ftpproxy.backends.control import BackendControl
from ftpproxy.session.interfaces import IBackendConversation, IExchange
from ftpproxy.session.limits import Deadline, DeadlineQueue, IDeadlineOwner
from ftpproxy.wire.ftptext import ProtocolTextError, Reply


class IConversationListener(Interface):
    """
    Who hears that the backend is gone: the session.
    """

    def backendGone(why, reply, expected):
        """
        The backend connection is over: closed, broken, unresponsive, or it
        announced its end with an unprompted C{reply} (421; else None).
        C{expected} is True when a QUIT was waiting for its reply.
        """


@attrs.define(eq=False)
class _Pending:
    line: bytes
    exchange: Any
    answeredPreliminary: bool = False


@implementer(IBackendConversation, IDeadlineOwner)
class BackendConversation:
    """
    @ivar _control: the backend control connection.
    @ivar _pending: commands sent and not finally answered, oldest first.
    @ivar _deadline: runs while the oldest command's reply is due.
    @ivar _waitingForData: the oldest command's final reply waits on data.
    @ivar _tls: the backend's TLS client creator when its data connections
        are protected (PROT P towards an FTPS backend), else None.
    """

    __slots__ = ('_control', '_listener', '_pending', '_deadline', '_waitingForData', '_tls', '_sessionId', '_backendName', '_over')

    log = Logger()

    def __init__(
        self,
        deadlines: DeadlineQueue,
        control: BackendControl,
        listener: IConversationListener,
        replyTimeout: float,
        sessionId: str,
        backendName: str,
        dataTLS: Any = None,
    ) -> None:
        self._control = control
        self._listener = listener
        # A command or two at a time: a tuple costs nothing while empty.
        self._pending: tuple[_Pending, ...] = ()
        self._deadline = Deadline(deadlines, replyTimeout, self)
        self._waitingForData = False
        self._tls = dataTLS
        self._sessionId = sessionId
        self._backendName = backendName
        self._over = False
        control.attach(self)

    @property
    def peerHost(self) -> str:
        return self._control.peerHost

    # -- IBackendConversation ------------------------------------------------

    def send(self, line: bytes, exchange: IExchange) -> None:
        if self._over:
            return
        self._pending += (_Pending(line, exchange),)
        if len(self._pending) == 1:
            self._deadline.restart()
        self._control.sendCommand(line)

    def waitForData(self) -> None:
        self._waitingForData = True
        self._deadline.pause()

    def dataFinished(self) -> None:
        if self._waitingForData:
            self._waitingForData = False
            if self._pending:
                self._deadline.restart()

    def resumingTLS(self) -> Any:
        if self._tls is None:
            return None
        return self._tls.resuming(self._control.transport)

    def close(self) -> None:
        """
        End the conversation; nothing more is reported. With every command
        answered (after QUIT's 221, say) the connection is closed cleanly,
        else it is dropped.
        """
        graceful = not self._pending and not self._over
        self._over = True
        self._deadline.stop()
        self._pending = ()
        self._control.close(graceful)

    # -- from the backend control connection ---------------------------------

    def backendReplyReceived(self, reply: Reply) -> None:
        if self._over:
            return
        if not self._pending:
            self._unprompted(reply)
            return
        head = self._pending[0]
        if reply.isPreliminary:
            head.answeredPreliminary = True
        else:
            self._pending = self._pending[1:]
            self._waitingForData = False
        if self._pending and not self._waitingForData:
            self._deadline.restart()
        else:
            self._deadline.pause()
        head.exchange.replyReceived(head.line, reply)

    def _unprompted(self, reply: Reply) -> None:
        if reply.code == 421:
            self._end(f"said {reply.code} {reply.text.decode('utf-8', 'replace')}", reply)
            return
        self.log.warn(
            "session {session}: backend {backend} sent a reply nothing asked for, dropped: "
            "{code} {text}",
            session=self._sessionId,
            backend=self._backendName,
            code=reply.code,
            text=reply.text.decode("utf-8", "replace"),
        )

    def backendProtocolError(self, error: ProtocolTextError) -> None:
        self._end(f"sent a malformed reply: {error}")

    def backendConnectionLost(self, reason: Failure) -> None:
        if reason.check(SSLError):
            self._end(f"TLS failed: {reason.getErrorMessage()}")
        else:
            self._end(f"closed the connection: {reason.getErrorMessage()}")

    # IDeadlineOwner: the reply deadline
    def deadlinePassed(self) -> None:
        line = self._pending[0].line if self._pending else b""
        verb = line.split(b" ", 1)[0].decode("ascii", "replace")
        self._end(f"did not answer {verb} within {self._deadline.seconds:g}s")

    def _end(self, why: str, reply: Reply | None = None) -> None:
        if self._over:
            return
        expected = bool(self._pending) and self._pending[0].line[:4].upper() == b"QUIT"
        self._over = True
        self._deadline.stop()
        self._pending = ()
        self._control.close()
        self._listener.backendGone(why, reply, expected)
