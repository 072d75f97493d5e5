"""
The commands that set up the client's data connection, answered by the
proxy itself: PASV, EPSV and LPSV open a listener of the proxy's own passive
range; PORT, EPRT and LPRT make the proxy connect to the client, only to the
client's own address and never below port 1024 (the bounce attack); REST is
kept and replayed just before the transfer.

L{DataChannelCommands} owns the data channel set up for the next transfer,
whether EPSV ALL was given, and the restart marker; the transfer commands
take the channel and the marker through L{IDataChannels}.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ftpproxy.data.active import ActiveDataChannel, clientAdvertisedHost
from ftpproxy.data.passive import NoFreePassivePort, PassiveDataListener, PassivePortPool
from ftpproxy.session.interfaces import IClientChannel, ICommand, IDataChannel, IDataChannels, IDataProtection
from ftpproxy.wire.addresses import sameHost
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


class PassiveMode(enum.Enum):
    ANY = "PASV, EPSV, PORT, EPRT and their long forms allowed"
    EPSV_ALL = "EPSV ALL given: only EPSV"


def _isUnspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@implementer(IDataChannels)
class DataChannelCommands:
    """
    PASV, EPSV, LPSV, PORT, EPRT, LPRT and REST.

    @ivar _channel: the data channel for the next transfer, or None.
    @ivar _mode: whether EPSV ALL restricts the client to EPSV.
    @ivar _restartMarker: the REST offset to replay, or None.
    """

    __slots__ = ('_settings', '_ports', '_clock', '_client', '_protection', '_sessionId', '_channel', '_mode', '_restartMarker')

    log = Logger()

    def __init__(
        self,
        settings: Any,
        ports: PassivePortPool,
        clock: Any,
        channel: IClientChannel,
        protection: IDataProtection,
        sessionId: str,
    ) -> None:
        """
        @param settings: the session's L{ftpproxy.settings.config.ProxyConfig}.
        @param ports: the passive port pool this session was started with.
        """
        self._settings = settings
        self._ports = ports
        self._clock = clock
        self._client = channel
        self._protection = protection
        self._sessionId = sessionId
        self._channel: IDataChannel | None = None
        self._mode = PassiveMode.ANY
        self._restartMarker: bytes | None = None

    # -- IDataChannels --------------------------------------------------------

    def takeChannel(self) -> IDataChannel | None:
        channel, self._channel = self._channel, None
        return channel

    def takeRestartMarker(self) -> bytes | None:
        marker, self._restartMarker = self._restartMarker, None
        return marker

    def forget(self) -> None:
        self._drop()
        self._restartMarker = None

    def reset(self) -> None:
        """
        REIN: no channel, no marker, and EPSV ALL no longer holds.
        """
        self.forget()
        self._mode = PassiveMode.ANY

    def release(self) -> None:
        self._drop()

    def _drop(self) -> None:
        channel = self.takeChannel()
        if channel is not None:
            channel.close()

    # -- commands ----------------------------------------------------------------

    def _refusedAfterEpsvAll(self, command: ICommand) -> bool:
        if self._mode is PassiveMode.EPSV_ALL:
            command.replyText(503, f"{command.verb.decode()} not allowed after EPSV ALL.")
            command.finish()
            return True
        return False

    def pasv(self, command: ICommand) -> None:
        if self._refusedAfterEpsvAll(command):
            return
        host = clientAdvertisedHost(self._settings.publicAddress, self._client.localHost)
        if ":" in host:
            command.replyText(500, "PASV cannot name an IPv6 address; use EPSV.")
        else:
            listener = self._listen(command)
            if listener is not None:
                command.reply(formatPasvReply(host, listener.port))
        command.finish()

    def epsv(self, command: ICommand) -> None:
        try:
            protocol = parseEpsvArgument(command.argument)
        except ProtocolTextError:
            command.replyText(501, "Syntax error in EPSV argument.")
            command.finish()
            return
        family = 2 if ":" in self._client.localHost else 1
        if protocol == "ALL":
            self._mode = PassiveMode.EPSV_ALL
            command.replyText(200, "EPSV ALL accepted.")
        elif protocol is not None and protocol != family:
            command.replyText(522, f"Network protocol not supported, use ({family}).")
        else:
            listener = self._listen(command)
            if listener is not None:
                command.reply(formatEpsvReply(listener.port))
        command.finish()

    def lpsv(self, command: ICommand) -> None:
        if self._refusedAfterEpsvAll(command):
            return
        host = clientAdvertisedHost(self._settings.publicAddress, self._client.localHost)
        listener = self._listen(command)
        if listener is not None:
            command.reply(formatLpsvReply(host, listener.port))
        command.finish()

    def port(self, command: ICommand) -> None:
        if self._refusedAfterEpsvAll(command):
            return
        try:
            host, port = parsePortArgument(command.argument)
        except ProtocolTextError:
            command.replyText(501, "Syntax error in PORT argument.")
        else:
            self._connectToClient(command, host, port)
        command.finish()

    def eprt(self, command: ICommand) -> None:
        if self._refusedAfterEpsvAll(command):
            return
        try:
            family, host, port = parseEprtArgument(command.argument)
        except ProtocolTextError:
            command.replyText(501, "Syntax error in EPRT argument.")
            command.finish()
            return
        ownFamily = 2 if ":" in self._client.localHost else 1
        if family != ownFamily:
            command.replyText(522, f"Network protocol not supported, use ({ownFamily}).")
        else:
            self._connectToClient(command, host, port)
        command.finish()

    def lprt(self, command: ICommand) -> None:
        if self._refusedAfterEpsvAll(command):
            return
        try:
            host, port = parseLprtArgument(command.argument)
        except ProtocolTextError:
            command.replyText(501, "Syntax error in LPRT argument.")
        else:
            self._connectToClient(command, host, port)
        command.finish()

    def rest(self, command: ICommand) -> None:
        # Kept until the next transfer (or REIN) and replayed just before
        # the transfer command: the proxy sends its own EPSV/PASV to the
        # backend in between, and some servers forget a restart marker on
        # any other command.
        argument = command.argument
        if argument.isdigit():
            self._restartMarker = argument
            command.replyText(350, f"Restarting at {int(argument)}. Send STORE or RETRIEVE.")
            command.finish()
        else:
            self._restartMarker = None
            command.relay()

    # -- the channels --------------------------------------------------------------

    def _dataProtection(self) -> dict[str, Any]:
        tls = self._protection.dataTLS()
        return {
            "tls": tls,
            "requireResumption": tls is not None and self._settings.requireSessionReuse,
        }

    def _listen(self, command: ICommand) -> PassiveDataListener | None:
        self._drop()
        try:
            listener = PassiveDataListener(
                self._ports,
                self._client.interfaceHost,
                (self._client.clientHost, self._client.peerHost),
                self._sessionId,
                **self._dataProtection(),
            )
        except NoFreePassivePort:
            self.log.warn("session {session}: passive port range exhausted", session=self._sessionId)
            command.replyText(425, "Can't open data connection: no free passive port.")
            return None
        self._channel = listener
        return listener

    def _connectToClient(self, command: ICommand, host: str, port: int) -> None:
        self._drop()
        verb = command.verb.decode()
        clientHost = self._client.clientHost
        if _isUnspecified(host):
            # "EPRT |2|::|port|" (lftp on IPv6) means "where I am".
            host = clientHost
        if not sameHost(host, clientHost) and not self._settings.activeAnyHost:
            self.log.warn(
                "session {session}: refused {verb} to {host} (client is {client})",
                session=self._sessionId,
                verb=verb,
                host=host,
                client=clientHost,
            )
            command.replyText(504, f"{verb} refused: data connections go only to your own address.")
            return
        if port < 1024 and not self._settings.activeLowPorts:
            command.replyText(504, f"{verb} refused: port {port} is below 1024.")
            return
        self._channel = ActiveDataChannel(
            self._clock,
            host,
            port,
            self._settings.connectTimeout,
            bindHost=clientAdvertisedHost(None, self._client.interfaceHost),
            **self._dataProtection(),
        )
        command.replyText(200, f"{verb} command successful.")
