"""
One client command in progress (L{CommandRun}): the L{ICommand} through
which a handler answers the client and talks to the backend, and nothing
more of the session.
"""

from __future__ import annotations

from zope.interface import Interface, implementer

from ftpproxy.session.interfaces import ICommand, IExchange
from ftpproxy.wire.ftptext import Reply


class ICommandHost(Interface):
    """
    What a running command needs of its session.
    """

    def reply(reply):
        "Send a reply to the client."

    def sendToBackend(line, exchange):
        "Send a line to the session's backend, if it has one."

    def commandFinished(command):
        "The command is over."

    def transferStarted(command):
        "The command is a transfer: read ABOR and QUIT at once."


@implementer(ICommand)
class CommandRun:
    """
    One command in progress: how its handler answers the client and talks
    to the backend.
    """

    __slots__ = ("_session", "_reply", "verb", "argument", "line", "refusal", "_finished")

    def __init__(
        self, session: ICommandHost, verb: bytes, argument: bytes, line: bytes, refusal: Reply | None = None
    ) -> None:
        self._session = session
        self._reply = session.reply
        self.verb = verb
        self.argument = argument
        self.line = line
        #: Set for a line that is no command: what to answer.
        self.refusal = refusal
        self._finished = False

    def reply(self, reply: Reply) -> None:
        self._reply(reply)

    def replyText(self, code: int, text: str) -> None:
        self._reply(Reply.single(code, text))

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._session.commandFinished(self)

    def relay(self, exchange: IExchange | None = None) -> None:
        self.sendToBackend(self.line, exchange if exchange is not None else RelayExchange(self))

    def sendToBackend(self, line: bytes, exchange: IExchange) -> None:
        self._session.sendToBackend(line, exchange)

    def readUrgentCommands(self) -> None:
        self._session.transferStarted(self)


@implementer(IExchange)
class RelayExchange:
    """
    A command passed through: every reply goes to the client as it is.
    """

    __slots__ = ("_command",)

    def __init__(self, command: CommandRun) -> None:
        self._command = command

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        self._command.reply(reply)
        if not reply.isPreliminary:
            self._command.finish()
