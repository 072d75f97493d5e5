"""
Routing by user name (the user-hash policy): the proxy greets the client
itself, answers what a client sends before USER (AUTH, FEAT, SYST, OPTS,
...), and chooses the backend when USER arrives. A later USER for a user
who belongs elsewhere moves the session to that user's backend.

L{RoutingCommands} owns the OPTS the client sent before it had a backend
(replayed to the backend once chosen).
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from ftpproxy.session.interfaces import ICommand, IExchange, ISessionActions
from ftpproxy.session.login import LoginCommands
from ftpproxy.wire.ftptext import formatFeatReply


class RoutingCommands:
    """
    USER as the routing decision, and the commands answered before it.

    @ivar _options: OPTS lines to replay to the backend once it is chosen.
    """

    __slots__ = ('_pool', '_clientHost', '_login', '_session', '_options')

    def __init__(self, pool: Any, clientHost: str, login: LoginCommands, session: ISessionActions) -> None:
        """
        @param session: its C{proxyFeatures}, C{routeTo}, C{currentBackend}
            and C{closeSession}.
        """
        self._pool = pool
        self._clientHost = clientHost
        self._login = login
        self._session = session
        # Rarely any: a tuple costs nothing while empty.
        self._options: tuple[bytes, ...] = ()

    def user(self, command: ICommand) -> None:
        """
        USER: choose the backend from the user name. Before any backend the
        proxy connects; later, a user who belongs to another backend moves
        the session there, and one who belongs here just logs in.
        """
        if self._login.refusedForTLS(command):
            return
        user = command.argument.decode("utf-8", "replace").strip()
        if not user:
            command.replyText(501, "USER needs a user name.")
            command.finish()
            return
        self._login.noteUser(command)
        candidates = self._pool.candidates(self._clientHost, user=user)
        current = self._session.currentBackend()
        if current is not None and candidates and candidates[0] is current:
            self._login.sendLogin(command)
            return
        if current is not None:
            self._login.newLogin()
        self._session.routeTo(candidates, command)

    def backendChosen(self, command: ICommand) -> None:
        """
        The backend for C{command} (a USER) greeted: replay the options,
        then log in.
        """
        options, self._options = self._options, ()
        for line in options:
            command.sendToBackend(line, _Ignored())
        self._login.sendLogin(command)

    # Answered by the proxy before a backend is chosen.

    def feat(self, command: ICommand) -> None:
        command.reply(formatFeatReply(self._session.proxyFeatures() + [b"UTF8"]))
        command.finish()

    def syst(self, command: ICommand) -> None:
        command.replyText(215, "UNIX Type: L8")
        command.finish()

    def noop(self, command: ICommand) -> None:
        command.replyText(200, "NOOP ok.")
        command.finish()

    def help(self, command: ICommand) -> None:
        command.replyText(214, "Log in with USER and PASS; help follows from the server.")
        command.finish()

    def opts(self, command: ICommand) -> None:
        self._options += (command.line,)
        command.replyText(200, "OPTS noted.")
        command.finish()

    def quit(self, command: ICommand) -> None:
        command.replyText(221, "Goodbye.")
        self._session.closeSession()


@implementer(IExchange)
class _Ignored:
    """
    The backend's answer to a replayed OPTS is not the client's business.
    """

    def replyReceived(self, line: bytes, reply: Any) -> None:
        pass
