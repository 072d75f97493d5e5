"""
TLS and login, both handled at the proxy: AUTH, PBSZ, PROT and CCC (RFC
4217) terminate TLS here whatever the backend speaks; USER and PASS are
relayed but watched, for --require-tls, for the login timeout and for
failed-login throttling.

Mixed into L{ftpproxy.session.core.ProxySession}, whose state it uses.
"""

from __future__ import annotations

from ftpproxy.session.state import SessionState
from ftpproxy.session.exchanges import PROXY_FEATURES, Exchange, LoginExchange
from ftpproxy.wire.ftptext import Reply, parseCommand

# AUTH arguments that start TLS (RFC 4217 and the older drafts).
AUTH_MECHANISMS = frozenset({b"TLS", b"TLS-C", b"SSL", b"TLS-P"})


class SecurityCommands:
    """
    AUTH, PBSZ, PROT, CCC, USER and PASS.
    """

    def proxyFeatures(self) -> list[bytes]:
        """
        What FEAT lists as the proxy's own, ahead of the backend's features.
        """
        features = list(PROXY_FEATURES)
        if self.serverTLS is not None:
            features += [b"AUTH TLS", b"PBSZ", b"PROT"]
        return features

    def ftp_AUTH(self, argument: bytes, line: bytes) -> None:
        mechanism = argument.strip().upper()
        if self.serverTLS is None:
            self.replyText(502, "TLS is not configured on this proxy.")
        elif self.tlsActive:
            self.replyText(503, "TLS is already active.")
        elif mechanism not in AUTH_MECHANISMS:
            self.replyText(504, "Unknown security mechanism; use AUTH TLS.")
        elif self._queue or self._splitter.pending:
            # Commands sent behind AUTH, before the handshake, would be
            # taken as protected when they were not (CVE-2011-0411).
            self.log.warn(
                "session {session}: client {client} sent commands after AUTH "
                "before the TLS handshake; closing",
                session=self.id,
                client=self.clientHost,
            )
            self._queue.clear()
            self._splitter.discard()
            self.close(421, "Commands after AUTH before the TLS handshake; closing.")
        else:
            self.replyText(234, "AUTH command ok; starting TLS connection.")
            self.startTLS()
            # The old AUTH SSL implied protected data.
            self.protectData = mechanism in (b"SSL", b"TLS-P")

    def ftp_PBSZ(self, argument: bytes, line: bytes) -> None:
        if not self.tlsActive:
            self.replyText(503, "PBSZ requires AUTH first.")
        else:
            self.replyText(200, "PBSZ=0")

    def ftp_PROT(self, argument: bytes, line: bytes) -> None:
        level = argument.strip().upper()
        if not self.tlsActive:
            self.replyText(503, "PROT requires AUTH first.")
        elif level == b"P":
            self.protectData = True
            self.replyText(200, "Protection level set to Private.")
        elif level == b"C":
            self.protectData = False
            self.replyText(200, "Protection level set to Clear.")
        elif level in (b"S", b"E"):
            self.replyText(536, "Protection level not supported; use PROT P or PROT C.")
        else:
            self.replyText(504, "Unknown protection level; use PROT P or PROT C.")

    def ftp_CCC(self, argument: bytes, line: bytes) -> None:
        if not self.tlsActive:
            self.replyText(533, "Command channel is not protected.")
        else:
            self.replyText(534, "CCC refused: the command channel stays protected.")

    def ftp_USER(self, argument: bytes, line: bytes) -> None:
        if self._loginNeedsTLS():
            return
        if self.state is SessionState.AWAITING_USER:
            self._routeByUser(argument, line)
            return
        self._relayLogin(line)

    def ftp_PASS(self, argument: bytes, line: bytes) -> None:
        if self._loginNeedsTLS():
            return
        self._relayLogin(line)

    def _relayLogin(self, line: bytes) -> None:
        verb, argument = parseCommand(line)
        if verb == b"USER":
            self.user = argument.decode("utf-8", "replace").strip()
        exchange = LoginExchange(self)
        self._busy = exchange
        self.sendToBackend(line, exchange)

    def ftp_REIN(self, argument: bytes, line: bytes) -> None:
        # A new login is due: its deadline starts again.
        self.loggedIn = False
        self.restartOffset = None
        self._loginDeadline.restart()
        self.relay(line)

    def _loginNeedsTLS(self) -> bool:
        if self.config.requireTLS and not self.tlsActive:
            self.replyText(530, "This server requires TLS: send AUTH TLS before logging in.")
            return True
        return False

    def loginSucceeded(self) -> None:
        self.loggedIn = True
        self._loginDeadline.stop()

    def loginFailed(self) -> float:
        """
        Count a failed login; how long to hold the 530 back.
        """
        delay = self.proxy.loginThrottle.failed(self.clientHost)
        if delay:
            self.log.info(
                "session {session}: failed login from {client}, reply held {delay:.0f}s",
                session=self.id,
                client=self.clientHost,
                delay=delay,
            )
        return delay

    def holdReply(self, delay: float, reply: Reply, exchange: Exchange) -> None:
        def release() -> None:
            self._heldReply = None
            self.reply(reply)
            self.commandDone(exchange)

        self._heldReply = self.reactor.callLater(delay, release)
