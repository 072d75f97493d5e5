"""
The commands that are relayed to the backend but not quite as they are:
FEAT (the proxy's features merged in), TYPE (remembered for the transfer
log), QUIT (the session ends with the backend's goodbye) and REIN (every
handler starts over); and the plain relay that every other command gets.
"""

from __future__ import annotations

from typing import Iterable

from zope.interface import implementer

from ftpproxy.session.interfaces import ICommand, IExchange, ISessionActions
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, formatFeatReply, parseFeatReply

# Features the proxy implements itself, whatever the backend says.
PROXY_FEATURES = (b"EPSV", b"EPRT")
# Backend features that describe the backend's own TLS or data connections,
# which the client never sees.
HIDDEN_FEATURE_PREFIXES = frozenset(
    {b"AUTH", b"PBSZ", b"PROT", b"CCC", b"EPSV", b"EPRT", b"LPSV", b"LPRT", b"PASV", b"SSCN", b"CPSV"}
)


def mergeFeatures(backendFeatures: Iterable[bytes], proxyFeatures: list[bytes]) -> list[bytes]:
    """
    The backend's features with those about TLS and data connections
    replaced by the proxy's own.
    """
    kept = [
        f for f in backendFeatures if f.split(b" ", 1)[0].upper() not in HIDDEN_FEATURE_PREFIXES
    ]
    return proxyFeatures + kept


class GeneralCommands:
    """
    FEAT, TYPE, QUIT, REIN and the relay.

    @ivar transferType: the last TYPE the client gave (A, I, E or L), for
        the transfer log.
    """

    __slots__ = ('_session', '_greetsAgain', 'transferType')

    def __init__(self, session: ISessionActions, greetsAgain: bool) -> None:
        """
        @param session: its C{proxyFeatures}, C{interruptTransfer},
            C{resetHandlers}, C{closeSession} and C{greetAgain}.
        @param greetsAgain: under routing by user, REIN drops the backend
            and the proxy greets again (C{session.greetAgain}); otherwise
            REIN is relayed.
        """
        self._session = session
        self._greetsAgain = greetsAgain
        self.transferType = "A"

    def relay(self, command: ICommand) -> None:
        command.relay()

    def feat(self, command: ICommand) -> None:
        command.relay(_FeatExchange(command, self._session.proxyFeatures()))

    def type(self, command: ICommand) -> None:
        kind = command.argument.strip()[:1].upper().decode("ascii", "replace")
        command.relay(_TypeExchange(self, command, kind))

    def quit(self, command: ICommand) -> None:
        self._session.interruptTransfer()
        command.relay(_QuitExchange(command, self._session))

    def rein(self, command: ICommand) -> None:
        self._session.resetHandlers()
        if self._greetsAgain:
            self._session.greetAgain(command)
        else:
            command.relay()

    def reset(self) -> None:
        self.transferType = "A"


@implementer(IExchange)
class _FeatExchange:
    """
    FEAT: the proxy's features merged into the backend's list.
    """

    def __init__(self, command: ICommand, proxyFeatures: list[bytes]) -> None:
        self._command = command
        self._proxyFeatures = proxyFeatures

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        if reply.isPreliminary:
            return
        features: list[bytes] = []
        if reply.code == 211:
            try:
                features = parseFeatReply(reply)
            except ProtocolTextError:
                features = []
        self._command.reply(formatFeatReply(mergeFeatures(features, self._proxyFeatures)))
        self._command.finish()


@implementer(IExchange)
class _TypeExchange:
    """
    TYPE: relayed, and remembered once the backend accepts it.
    """

    def __init__(self, general: GeneralCommands, command: ICommand, kind: str) -> None:
        self._general = general
        self._command = command
        self._kind = kind

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        self._command.reply(reply)
        if reply.isPreliminary:
            return
        if reply.isPositive and self._kind in ("A", "I", "E", "L"):
            self._general.transferType = self._kind
        self._command.finish()


@implementer(IExchange)
class _QuitExchange:
    """
    QUIT: the backend's goodbye goes to the client, then both close.
    """

    def __init__(self, command: ICommand, session: ISessionActions) -> None:
        self._command = command
        self._session = session

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        if reply.isPreliminary:
            return
        self._command.reply(reply)
        self._session.closeSession()
