"""
The commands that set up data connections, answered by the proxy itself:
PASV, EPSV and LPSV open a listener of the proxy's own passive range; PORT,
EPRT and LPRT make the proxy connect to the client, only to the client's own
address and never below port 1024 (the bounce attack); REST is kept and
replayed just before the transfer; the transfer commands start a
L{Transfer}.

Mixed into L{ftpproxy.session.core.ProxySession}, whose state it uses.
"""

from __future__ import annotations

import ipaddress

from ftpproxy.data.active import ActiveDataChannel, clientAdvertisedHost
from ftpproxy.wire.ftptext import (
    ProtocolTextError,
    formatEpsvReply,
    formatLpsvReply,
    formatPasvReply,
    parseEprtArgument,
    parseEpsvArgument,
    parseLprtArgument,
    parsePortArgument,
)
from ftpproxy.data.passive import NoFreePassivePort, PassiveDataListener, sameHost
from ftpproxy.session.transfer import TRANSFER_DIRECTIONS, Transfer


def _isUnspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class DataConnectionCommands:
    """
    PASV, EPSV, LPSV, PORT, EPRT, LPRT, REST and the start of transfers.
    """

    def ftp_PASV(self, argument: bytes, line: bytes) -> None:
        if self.epsvAll:
            self.replyText(503, "PASV not allowed after EPSV ALL.")
            return
        host = clientAdvertisedHost(self.config.publicAddress, self.transport.getHost().host)
        if ":" in host:
            self.replyText(500, "PASV cannot name an IPv6 address; use EPSV.")
            return
        listener = self._listenForClientData()
        if listener is not None:
            self.reply(formatPasvReply(host, listener.port))

    def ftp_EPSV(self, argument: bytes, line: bytes) -> None:
        try:
            protocol = parseEpsvArgument(argument)
        except ProtocolTextError:
            self.replyText(501, "Syntax error in EPSV argument.")
            return
        if protocol == "ALL":
            self.epsvAll = True
            self.replyText(200, "EPSV ALL accepted.")
            return
        family = 2 if ":" in self._controlHost() else 1
        if protocol is not None and protocol != family:
            self.replyText(522, f"Network protocol not supported, use ({family}).")
            return
        listener = self._listenForClientData()
        if listener is not None:
            self.reply(formatEpsvReply(listener.port))

    def ftp_PORT(self, argument: bytes, line: bytes) -> None:
        if self.epsvAll:
            self.replyText(503, "PORT not allowed after EPSV ALL.")
            return
        try:
            host, port = parsePortArgument(argument)
        except ProtocolTextError:
            self.replyText(501, "Syntax error in PORT argument.")
            return
        self._connectToClient(host, port, "PORT")

    def ftp_EPRT(self, argument: bytes, line: bytes) -> None:
        if self.epsvAll:
            self.replyText(503, "EPRT not allowed after EPSV ALL.")
            return
        try:
            family, host, port = parseEprtArgument(argument)
        except ProtocolTextError:
            self.replyText(501, "Syntax error in EPRT argument.")
            return
        ownFamily = 2 if ":" in self._controlHost() else 1
        if family != ownFamily:
            self.replyText(522, f"Network protocol not supported, use ({ownFamily}).")
            return
        self._connectToClient(host, port, "EPRT")

    def ftp_LPSV(self, argument: bytes, line: bytes) -> None:
        if self.epsvAll:
            self.replyText(503, "LPSV not allowed after EPSV ALL.")
            return
        host = clientAdvertisedHost(self.config.publicAddress, self.transport.getHost().host)
        listener = self._listenForClientData()
        if listener is not None:
            self.reply(formatLpsvReply(host, listener.port))

    def ftp_LPRT(self, argument: bytes, line: bytes) -> None:
        if self.epsvAll:
            self.replyText(503, "LPRT not allowed after EPSV ALL.")
            return
        try:
            host, port = parseLprtArgument(argument)
        except ProtocolTextError:
            self.replyText(501, "Syntax error in LPRT argument.")
            return
        self._connectToClient(host, port, "LPRT")

    def ftp_REST(self, argument: bytes, line: bytes) -> None:
        # Kept here until the next transfer (or REIN), and replayed just
        # before the transfer command, because
        # the proxy sends its own EPSV/PASV to the backend in between and
        # some servers forget a restart marker on any other command.
        if argument.isdigit():
            self.restartOffset = argument
            self.replyText(350, f"Restarting at {int(argument)}. Send STORE or RETRIEVE.")
        else:
            self.restartOffset = None
            self.relay(line)

    def _controlHost(self) -> str:
        """
        The address the client connected to (behind a PROXY-protocol
        balancer: the balancer's), IPv4-mapped addresses as IPv4.
        """
        return clientAdvertisedHost(None, self.transport.getHost().host)

    def _localInterface(self) -> str:
        """
        Where this control connection really arrived on this machine: the
        interface to listen on for passive data, and to connect from.
        """
        connectionHost = getattr(self.transport, "connectionHost", None)
        return (connectionHost() if connectionHost else self.transport.getHost()).host

    def _connectionPeerHost(self) -> str:
        """
        The TCP peer of the control connection: the client, or the balancer
        in front that relays the client's data connections too.
        """
        connectionPeer = getattr(self.transport, "connectionPeer", None)
        return (connectionPeer() if connectionPeer else self.transport.getPeer()).host

    def _listenForClientData(self) -> PassiveDataListener | None:
        self.dropDataChannel()
        try:
            listener = PassiveDataListener(
                self.proxy.passivePorts,
                self._localInterface(),
                (self.clientHost, self._connectionPeerHost()),
                self.id,
                **self._dataProtection(),
            )
        except NoFreePassivePort:
            self.log.warn("session {session}: passive port range exhausted", session=self.id)
            self.replyText(425, "Can't open data connection: no free passive port.")
            return None
        self.dataChannel = listener
        return listener

    def _connectToClient(self, host: str, port: int, verb: str) -> None:
        self.dropDataChannel()
        if _isUnspecified(host):
            # "EPRT |2|::|port|" (lftp on IPv6) means "where I am".
            host = self.clientHost
        if not sameHost(host, self.clientHost) and not self.config.activeAnyHost:
            self.log.warn(
                "session {session}: refused {verb} to {host} (client is {client})",
                session=self.id, verb=verb, host=host, client=self.clientHost,
            )
            self.replyText(504, f"{verb} refused: data connections go only to your own address.")
            return
        if port < 1024 and not self.config.activeLowPorts:
            self.replyText(504, f"{verb} refused: port {port} is below 1024.")
            return
        self.dataChannel = ActiveDataChannel(
            self.reactor,
            host,
            port,
            self.config.connectTimeout,
            bindHost=clientAdvertisedHost(None, self._localInterface()),
            **self._dataProtection(),
        )
        self.replyText(200, f"{verb} command successful.")

    def _dataProtection(self) -> dict:
        """
        How the client's next data connection is protected: TLS under PROT P,
        with resumption of the control session when that is required.
        """
        if not self.protectData:
            return {"tls": None, "requireResumption": False}
        return {
            "tls": self.serverTLS,
            "requireResumption": self.config.requireSessionReuse,
        }

    def takeDataChannel(self) -> PassiveDataListener | ActiveDataChannel | None:
        channel, self.dataChannel = self.dataChannel, None
        return channel

    def dropDataChannel(self) -> None:
        channel = self.takeDataChannel()
        if channel is not None:
            channel.close()

    def _startTransfer(self, verb: bytes, line: bytes) -> None:
        if self.config.requireTLS and not self.protectData:
            self.dropDataChannel()
            self.restartOffset = None
            self.replyText(521, "This server requires protected data: send PBSZ 0 and PROT P.")
            return
        channel = self.takeDataChannel()
        if channel is None:
            self.restartOffset = None
            self.replyText(425, "Use PORT, EPRT, PASV or EPSV first.")
            return
        transfer = Transfer(
            self, verb, line, TRANSFER_DIRECTIONS[verb], channel, self.restartOffset
        )
        self.restartOffset = None
        self._busy = transfer
        self.transfer = transfer
        transfer.start()
