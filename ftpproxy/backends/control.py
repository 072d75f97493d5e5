"""
The proxy's control connection to a backend, and how it is made.

The backend side only parses replies and hands them up whole; what they
mean is the session's business.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.python.failure import Failure

from ftpproxy.data.closing import CONTROL_CLOSE_GRACE, loseConnectionWithin
from ftpproxy.data.connecting import ConnectingProtocol
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, ReplyParser, escapeIAC
from ftpproxy.wire.proxyprotocol import Address, formatHeader


class BackendListener(TypingProtocol):
    """
    What a backend control connection reports to.
    """

    def backendReplyReceived(self, reply: Reply) -> None: ...

    def backendProtocolError(self, error: ProtocolTextError) -> None: ...

    def backendConnectionLost(self, reason: Failure) -> None: ...


class BackendControl(ConnectingProtocol):
    """
    A control connection to a backend FTP server.
    """

    def __init__(self) -> None:
        self.listener: BackendListener | None = None
        self._parser = ReplyParser()
        # Replies before attach (the banner, usually none): free while empty.
        self._pending: tuple[Reply, ...] = ()
        self.disconnecting = False
        self._tlsJustStarted = False
        self._closeTimer = None

    def startTLS(self, creator) -> None:
        """
        Start the client side of TLS after the backend's 234 (or at once
        for implicit FTPS). Anything the backend sent behind its 234 in the
        clear is refused (the reply-injection twin of CVE-2011-0411).
        """
        self._tlsJustStarted = True
        self.transport.startTLS(creator)

    def connectionMade(self) -> None:
        # Commands are small and each waits for its reply: no Nagle delay.
        self.transport.setTcpNoDelay(True)

    def attach(self, listener: BackendListener) -> None:
        """
        Start reporting to C{listener}, first with anything already received
        (the banner may arrive before the session is ready for it).
        """
        self.listener = listener
        pending, self._pending = self._pending, ()
        for reply in pending:
            if self.listener is listener:
                listener.backendReplyReceived(reply)

    def sendCommand(self, line: bytes) -> None:
        self.transport.write(escapeIAC(line) + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ProtocolTextError as e:
            if self.listener is not None:
                self.listener.backendProtocolError(e)
            self.close()
            return
        for index, reply in enumerate(replies):
            if self.disconnecting:
                return
            if self.listener is None:
                self._pending += (reply,)
            else:
                self.listener.backendReplyReceived(reply)
            if self._tlsJustStarted:
                self._tlsJustStarted = False
                if index + 1 < len(replies) or self._parser.hasPending:
                    if self.listener is not None:
                        self.listener.backendProtocolError(
                            ProtocolTextError("data after 234 before the TLS handshake")
                        )
                    self.close()
                    return

    def connectionLost(self, reason: Failure = None) -> None:
        if self._closeTimer is not None:
            timer, self._closeTimer = self._closeTimer, None
            timer.cancel()
        self.disconnecting = True
        if self.listener is not None:
            listener, self.listener = self.listener, None
            listener.backendConnectionLost(reason)

    def close(self, graceful: bool = False) -> None:
        """
        End the connection without telling the listener again: at once, or
        (C{graceful}) after what was written is sent, with TLS's
        close_notify, and at the latest after a grace period.
        """
        self.listener = None
        already = self.disconnecting
        self.disconnecting = True
        if self.transport is None:
            return
        if graceful and not already:
            self._closeTimer = loseConnectionWithin(
                self.transport, getattr(self.transport, "reactor", None), CONTROL_CLOSE_GRACE
            )
        else:
            self.transport.abortConnection()

    @property
    def peerHost(self) -> str:
        return self.transport.getPeer().host


def sendProxyHeader(transport, version: int, clientAddress: Address, proxyAddress: Address) -> None:
    """
    Tell a backend who the client is: write the PROXY protocol header of
    C{version} on a just-connected backend control C{transport}, before any
    FTP byte and before C{startTLS}. Never on data connections: a header
    there ends up inside the file.

    @param clientAddress: the client's address (the client control
        connection's C{getPeer()}).
    @param proxyAddress: where the client reached us (that connection's
        C{getHost()}).
    """
    transport.write(formatHeader(version, clientAddress, proxyAddress))
