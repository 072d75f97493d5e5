"""
Exchanges: what the session does with the backend's replies to one command.

An exchange's C{replyReceived} returns True once it has consumed its final
reply, so the session moves on to the next exchange waiting on the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftpproxy.ftptext import ProtocolTextError, Reply, formatFeatReply, parseFeatReply

if TYPE_CHECKING:
    from ftpproxy.balancer import Backend
    from ftpproxy.session import ProxySession


class Exchange:
    """
    Base: forwards preliminary replies, ends the command on the final one.
    """

    def __init__(self, session: ProxySession) -> None:
        self.session = session

    def replyReceived(self, reply: Reply) -> bool:
        raise NotImplementedError()


class RelayExchange(Exchange):
    """
    A command passed through: every reply goes to the client as it is.
    """

    def replyReceived(self, reply: Reply) -> bool:
        self.session.reply(reply)
        if reply.isPreliminary:
            return False
        self.session.commandDone(self)
        return True


class BannerExchange(Exchange):
    """
    The backend's greeting. A backend that greets with anything but 220
    (e.g. 421, too many users) is passed over while others remain.
    """

    def __init__(self, session: ProxySession, rest: list[Backend]) -> None:
        super().__init__(session)
        self.rest = rest

    def replyReceived(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            self.session.reply(reply)
            return False
        if reply.code == 220:
            self.session.reply(reply)
            self.session.backendGreeted()
            self.session.commandDone(self)
            return True
        if self.rest:
            self.session.log.warn(
                "session {session}: backend {backend} greeted with {code}; trying the next",
                session=self.session.id,
                backend=self.session.backend.name,
                code=reply.code,
            )
            self.session.failOver(self.rest)
            return True
        self.session.reply(reply)
        self.session.close()
        return True


# Features the proxy implements itself, whatever the backend says.
PROXY_FEATURES = (b"EPSV", b"EPRT")
# Backend features that describe the backend's own TLS or data connections,
# which the client never sees.
HIDDEN_FEATURE_PREFIXES = (b"AUTH", b"PBSZ", b"PROT", b"CCC", b"EPSV", b"EPRT", b"LPSV", b"LPRT", b"PASV", b"SSCN", b"CPSV")


def mergeFeatures(backendFeatures: list[bytes], proxyFeatures: list[bytes]) -> list[bytes]:
    """
    The backend's features with those about TLS and data connections
    replaced by the proxy's own.
    """
    kept = [
        f
        for f in backendFeatures
        if f.split(b" ", 1)[0].upper() not in HIDDEN_FEATURE_PREFIXES
    ]
    return proxyFeatures + kept


class FeatExchange(Exchange):
    """
    FEAT: the proxy's features merged into the backend's list.
    """

    def replyReceived(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            return False
        features = []
        if reply.code == 211:
            try:
                features = parseFeatReply(reply)
            except ProtocolTextError:
                features = []
        self.session.reply(formatFeatReply(mergeFeatures(features, self.session.proxyFeatures())))
        self.session.commandDone(self)
        return True


class QuitExchange(Exchange):
    """
    QUIT: the backend's goodbye goes to the client, then both close.
    """

    def replyReceived(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            return False
        self.session.reply(reply)
        self.session.close()
        return True
