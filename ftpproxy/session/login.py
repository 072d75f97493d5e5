"""
USER and PASS: relayed to the backend, but watched. The login handler owns
the user name, whether the client is logged in, the login deadline, and the
failed-login throttling of its client's address (a 530 may be held back a
while, which slows password guessing down without telling anything).
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from ftpproxy.session.interfaces import ICommand, IDataProtection, IExchange, ISessionActions
from ftpproxy.session.limits import Deadline, DeadlineQueue, IDeadlineOwner
from ftpproxy.wire.ftptext import Reply


class LoginState(enum.Enum):
    LOGGED_OUT = "no login yet (or since REIN)"
    LOGGED_IN = "the backend said 230"


@implementer(IDeadlineOwner)
class LoginCommands:
    """
    @ivar user: the name given with the last USER, or None.
    @ivar _state: logged in or not.
    @ivar _deadline: the login deadline, running while logged out.
    @ivar _held: a 530 held back by the throttle, until its timer fires.
    """

    __slots__ = ('_clock', '_session', '_requireTLS', '_protection', '_throttle', '_clientHost', '_sessionId', 'user', '_state', '_deadline', '_held')

    log = Logger()

    def __init__(
        self,
        deadlines: DeadlineQueue,
        loginTimeout: float,
        requireTLS: bool,
        protection: IDataProtection,
        throttle: Any,
        clientHost: str,
        sessionId: str,
        session: ISessionActions,
    ) -> None:
        """
        @param deadlines: where the login deadline waits; its clock also
            times held replies.
        @param session: its C{closeSession}; its C{loginChanged} is told
            True when the backend accepts a login, False when a logged-in
            client must log in again (REIN); its C{clientClosed} is told
            C{"login-timeout"} when the session is closed for want of a login.
        """
        self._clock = deadlines.clock
        self._session = session
        self._requireTLS = requireTLS
        self._protection = protection
        self._throttle = throttle
        self._clientHost = clientHost
        self._sessionId = sessionId
        self.user: str | None = None
        self._state = LoginState.LOGGED_OUT
        self._deadline = Deadline(deadlines, loginTimeout, self)
        self._held: IDelayedCall | None = None
        self._deadline.restart()

    @property
    def loggedIn(self) -> bool:
        return self._state is LoginState.LOGGED_IN

    def refusedForTLS(self, command: ICommand) -> bool:
        """
        Under --require-tls, refuse C{command} (USER/PASS) before AUTH TLS.
        """
        if self._requireTLS and not self._protection.tlsActive:
            command.replyText(530, "This server requires TLS: send AUTH TLS before logging in.")
            command.finish()
            return True
        return False

    def noteUser(self, command: ICommand) -> str:
        self.user = command.argument.decode("utf-8", "replace").strip()
        return self.user

    def userCommand(self, command: ICommand) -> None:
        if self.refusedForTLS(command):
            return
        self.noteUser(command)
        self.sendLogin(command)

    def passCommand(self, command: ICommand) -> None:
        if self.refusedForTLS(command):
            return
        self.sendLogin(command)

    def sendLogin(self, command: ICommand) -> None:
        """
        Relay USER or PASS, watching the reply.
        """
        command.relay(_LoginExchange(self, command))

    def reset(self) -> None:
        """
        REIN: a new login is due, and its deadline starts again.
        """
        self.user = None
        self.newLogin()

    def newLogin(self) -> None:
        """
        The session moves to another backend for the user just named: not
        logged in there yet, and the login deadline starts again.
        """
        wasIn = self._state is LoginState.LOGGED_IN
        self._state = LoginState.LOGGED_OUT
        self._deadline.restart()
        if wasIn:
            self._session.loginChanged(False)

    def release(self) -> None:
        """
        The session ends: stop the timers.
        """
        self._deadline.stop()
        if self._held is not None:
            held, self._held = self._held, None
            if held.active():
                held.cancel()

    # IDeadlineOwner: the login deadline
    def deadlinePassed(self) -> None:
        self.log.info("session {session}: login timed out", session=self._sessionId)
        self._session.clientClosed("login-timeout")
        self._session.closeSession(421, "Login timed out; closing control connection.")

    def _succeeded(self) -> None:
        wasIn = self._state is LoginState.LOGGED_IN
        self._state = LoginState.LOGGED_IN
        self._deadline.stop()
        if not wasIn:
            self._session.loginChanged(True)

    def _failed(self, command: ICommand, reply: Reply) -> None:
        delay = self._throttle.failed(self._clientHost)
        if not delay:
            command.reply(reply)
            command.finish()
            return
        self.log.info(
            "session {session}: failed login from {client}, reply held {delay:.0f}s",
            session=self._sessionId,
            client=self._clientHost,
            delay=delay,
        )

        def release() -> None:
            self._held = None
            command.reply(reply)
            command.finish()

        self._held = self._clock.callLater(delay, release)


@implementer(IExchange)
class _LoginExchange:

    __slots__ = ('_login', '_command')
    def __init__(self, login: LoginCommands, command: ICommand) -> None:
        self._login = login
        self._command = command

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        if reply.isPreliminary:
            self._command.reply(reply)
            return
        if reply.code == 230:
            self._login._succeeded()
        elif reply.code == 530:
            self._login._failed(self._command, reply)
            return
        self._command.reply(reply)
        self._command.finish()
