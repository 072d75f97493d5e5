"""
The commands that are relayed to the backend but not quite as they are:
FEAT (the proxy's features merged in), TYPE (remembered for the transfer
log), QUIT (the session ends with the backend's goodbye) and REIN (every
handler starts over); and the plain relay that every other command gets.
"""

from __future__ import annotations

from typing import Callable, Iterable

from zope.interface import implementer

from ftpproxy.session.interfaces import ICommand, IExchange
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

    __slots__ = ('_proxyFeatures', '_interruptTransfer', '_resetHandlers', '_closeSession', '_greetAgain', 'transferType')

    def __init__(
        self,
        proxyFeatures: Callable[[], list[bytes]],
        interruptTransfer: Callable[[], None],
        resetHandlers: Callable[[], None],
        closeSession: Callable[..., None],
        greetAgain: Callable[[ICommand], None] | None,
    ) -> None:
        """
        @param proxyFeatures: what FEAT lists as the proxy's own.
        @param interruptTransfer: abort the transfer in progress, if any.
        @param resetHandlers: REIN: every handler back to its start.
        @param closeSession: C{closeSession(code=None, text="")} ends the
            session.
        @param greetAgain: under routing by user, REIN drops the backend and
            the proxy greets again (None otherwise: REIN is relayed).
        """
        self._proxyFeatures = proxyFeatures
        self._interruptTransfer = interruptTransfer
        self._resetHandlers = resetHandlers
        self._closeSession = closeSession
        self._greetAgain = greetAgain
        self.transferType = "A"

    def relay(self, command: ICommand) -> None:
        command.relay()

    def feat(self, command: ICommand) -> None:
        command.relay(_FeatExchange(command, self._proxyFeatures()))

    def type(self, command: ICommand) -> None:
        kind = command.argument.strip()[:1].upper().decode("ascii", "replace")
        command.relay(_TypeExchange(self, command, kind))

    def quit(self, command: ICommand) -> None:
        self._interruptTransfer()
        command.relay(_QuitExchange(command, self._closeSession))

    def rein(self, command: ICommand) -> None:
        self._resetHandlers()
        if self._greetAgain is not None:
            self._greetAgain(command)
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

    def __init__(self, command: ICommand, closeSession: Callable[..., None]) -> None:
        self._command = command
        self._closeSession = closeSession

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        if reply.isPreliminary:
            return
        self._command.reply(reply)
        self._closeSession()
