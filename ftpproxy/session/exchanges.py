"""
Exchanges: what the session does with the backend's replies to one command.

An exchange's C{replyReceived} returns True once it has consumed its final
reply, so the session moves on to the next exchange waiting on the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftpproxy.wire.ftptext import ProtocolTextError, Reply, formatFeatReply, parseFeatReply

if TYPE_CHECKING:
    from ftpproxy.session.core import ProxySession


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


class LoginExchange(Exchange):
    """
    USER and PASS: relayed, but a 230 marks the session logged in and a 530
    counts against the client's address (and may be held back a while,
    which slows down password guessing without telling anything).
    """

    def replyReceived(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            self.session.reply(reply)
            return False
        if reply.code == 230:
            self.session.loginSucceeded()
        elif reply.code == 530:
            delay = self.session.loginFailed()
            if delay > 0:
                self.session.holdReply(delay, reply, self)
                return True
        self.session.reply(reply)
        self.session.commandDone(self)
        return True


class BannerExchange(Exchange):
    """
    The backend's greeting. A backend that greets with anything but 220
    (e.g. 421, too many users) is passed over while others remain. An FTPS
    backend is secured (AUTH TLS, PBSZ, PROT) before the client is greeted.
    """

    def replyReceived(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            return False
        if reply.code != 220:
            self.session.backendRefused(f"greeted with {reply.code}", reply)
            return True
        backend = self.session.backend.config
        if backend.tls == "none":
            self.session.backendReady(reply)
            self.session.commandDone(self)
        else:
            securing = BackendSecuringExchange(self.session, reply)
            self.session._busy = securing
            securing.start(explicit=backend.tls == "explicit")
        return True


class BackendSecuringExchange(Exchange):
    """
    AUTH TLS (explicit backends), then PBSZ 0 and PROT P or C towards an
    FTPS backend; the backend's banner reaches the client when all of it
    has worked. Any refusal counts as the backend failing.
    """

    def __init__(self, session: ProxySession, banner: Reply) -> None:
        super().__init__(session)
        self.banner = banner
        self.step = ""

    def start(self, explicit: bool) -> None:
        if explicit:
            self._send("AUTH", b"AUTH TLS", first=True)
        else:
            self._send("PBSZ", b"PBSZ 0", first=True)

    def _send(self, step: str, line: bytes, first: bool = False) -> None:
        self.step = step
        if first:
            self.session.sendToBackend(line, self)
        else:
            self.session.backendControl.sendCommand(line)

    def replyReceived(self, reply: Reply) -> bool:
        if reply.isPreliminary:
            return False
        if self.step == "AUTH":
            if reply.code != 234:
                return self._refused(reply)
            control = self.session.backendControl
            control.startTLS(self.session.proxy.backendTLSFor(self.session.backend))
            self._send("PBSZ", b"PBSZ 0")
            return False
        if self.step == "PBSZ":
            if reply.code != 200:
                return self._refused(reply)
            private = self.session.backend.config.dataProtection == "private"
            self._send("PROT", b"PROT P" if private else b"PROT C")
            return False
        if reply.code != 200:
            return self._refused(reply)
        self.session.backendReady(self.banner)
        self.session.commandDone(self)
        return True

    def _refused(self, reply: Reply) -> bool:
        self.session.backendRefused(f"answered {self.step} with {reply.code}", None)
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


class RoutingPlaceholder(Exchange):
    """
    Holds the client's command slot while a USER waits for its backend.
    """

    def replyReceived(self, reply: Reply) -> bool:
        return True


class SilentExchange(Exchange):
    """
    A command the proxy replays on the client's behalf (OPTS after routing
    by user): the backend's answer is not the client's business.
    """

    def replyReceived(self, reply: Reply) -> bool:
        return not reply.isPreliminary


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
