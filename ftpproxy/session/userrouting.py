"""
Routing by user name (the user-hash policy): the proxy greets the client
itself, answers what a client sends before USER (AUTH, FEAT, SYST, OPTS,
...), and chooses the backend when USER arrives.

Mixed into L{ftpproxy.session.core.ProxySession}, whose state it uses.
"""

from __future__ import annotations

from ftpproxy.session.state import SessionState
from ftpproxy.session.exchanges import RoutingPlaceholder


class UserRoutingCommands:
    """
    USER as the routing decision, and the commands answered before it.
    """

    def _routeByUser(self, argument: bytes, line: bytes) -> None:
        """
        Choose the backend from the user name, then connect; the USER goes
        out once the backend has greeted.
        """
        user = argument.decode("utf-8", "replace").strip()
        if not user:
            self.replyText(501, "USER needs a user name.")
            return
        self.state = SessionState.CONNECTING
        self.user = user
        self._pendingUser = line
        self._busy = RoutingPlaceholder(self)
        self._connectBackend(self.proxy.pool.candidates(self.clientHost, user=user))

    # Answered by the proxy before a backend is chosen (routing by user).

    def ftp_SYST(self, argument: bytes, line: bytes) -> None:
        if self.state is SessionState.AWAITING_USER:
            self.replyText(215, "UNIX Type: L8")
        else:
            self.relay(line)

    def ftp_NOOP(self, argument: bytes, line: bytes) -> None:
        if self.state is SessionState.AWAITING_USER:
            self.replyText(200, "NOOP ok.")
        else:
            self.relay(line)

    def ftp_HELP(self, argument: bytes, line: bytes) -> None:
        if self.state is SessionState.AWAITING_USER:
            self.replyText(214, "Log in with USER and PASS; help follows from the server.")
        else:
            self.relay(line)

    def ftp_OPTS(self, argument: bytes, line: bytes) -> None:
        if self.state is SessionState.AWAITING_USER:
            # Replayed to the backend once it is chosen.
            self._pendingOptions.append(line)
            self.replyText(200, "OPTS noted.")
        else:
            self.relay(line)
