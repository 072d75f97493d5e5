"""
TLS on the client side, terminated at the proxy whatever the backend
speaks: AUTH, PBSZ, PROT and CCC (RFC 4217), and implicit FTPS.

L{SecurityCommands} owns two facts: whether the control connection is under
TLS, and the protection level of the client's data connections. The data
channel handler reads the second through L{IDataProtection}.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ftpproxy.session.interfaces import IClientChannel, ICommand, IDataProtection, ISessionActions

# AUTH arguments that start TLS (RFC 4217 and the older drafts).
AUTH_MECHANISMS = frozenset({b"TLS", b"TLS-C", b"SSL", b"TLS-P"})
# The old AUTH SSL and AUTH TLS-P implied protected data.
PROTECTED_BY_DEFAULT = frozenset({b"SSL", b"TLS-P"})


class ControlSecurity(enum.Enum):
    CLEAR = "clear control connection"
    ENCRYPTED = "control connection under TLS"


class DataProtection(enum.Enum):
    CLEAR = "PROT C"
    PRIVATE = "PROT P"


@implementer(IDataProtection)
class SecurityCommands:
    """
    AUTH, PBSZ, PROT and CCC.

    @ivar _control: whether the control connection is under TLS.
    @ivar _data: the protection of the client's next data connections.
    """

    __slots__ = ('_serverTLS', '_implicit', '_channel', '_session', '_sessionId', '_control', '_data')

    log = Logger()

    def __init__(
        self,
        serverTLS: Any,
        implicit: bool,
        channel: IClientChannel,
        session: ISessionActions,
        sessionId: str,
    ) -> None:
        """
        @param serverTLS: the TLS server creator of this session's listener
            for its control connection (its C{data} is the one for data
            connections: L{ftpproxy.tls.contexts.ServerTLS.forSession}), or
            None when the listener offers no TLS.
        @param implicit: implicit FTPS: TLS from the first byte, and PROT P
            assumed until the client says otherwise.
        @param session: its C{closeSession}.
        """
        self._serverTLS = serverTLS
        self._implicit = implicit
        self._channel = channel
        self._session = session
        self._sessionId = sessionId
        self._control = ControlSecurity.ENCRYPTED if implicit else ControlSecurity.CLEAR
        self._data = self._defaultProtection()

    def _defaultProtection(self) -> DataProtection:
        return DataProtection.PRIVATE if self._implicit else DataProtection.CLEAR

    # -- IDataProtection -------------------------------------------------------

    @property
    def tlsActive(self) -> bool:
        return self._control is ControlSecurity.ENCRYPTED

    def dataTLS(self) -> Any:
        return self._serverTLS.data if self._data is DataProtection.PRIVATE else None

    # -- what FEAT says ----------------------------------------------------------

    def features(self) -> list[bytes]:
        if self._serverTLS is None:
            return []
        return [b"AUTH TLS", b"PBSZ", b"PROT"]

    # -- commands ----------------------------------------------------------------

    def auth(self, command: ICommand) -> None:
        mechanism = command.argument.strip().upper()
        if self._serverTLS is None:
            command.replyText(502, "TLS is not offered on this port.")
        elif self._control is ControlSecurity.ENCRYPTED:
            command.replyText(503, "TLS is already active.")
        elif mechanism not in AUTH_MECHANISMS:
            command.replyText(504, "Unknown security mechanism; use AUTH TLS.")
        elif self._channel.discardPendingInput():
            # Commands sent behind AUTH, before the handshake, would be
            # taken as protected when they were not (CVE-2011-0411).
            self.log.warn(
                "session {session}: client sent commands after AUTH before the TLS "
                "handshake; closing",
                session=self._sessionId,
            )
            self._session.closeSession(421, "Commands after AUTH before the TLS handshake; closing.")
            return
        else:
            command.replyText(234, "AUTH command ok; starting TLS connection.")
            self._channel.startTLS(self._serverTLS)
            self._control = ControlSecurity.ENCRYPTED
            if mechanism in PROTECTED_BY_DEFAULT:
                self._data = DataProtection.PRIVATE
        command.finish()

    def pbsz(self, command: ICommand) -> None:
        if self._control is ControlSecurity.CLEAR:
            command.replyText(503, "PBSZ requires AUTH first.")
        else:
            command.replyText(200, "PBSZ=0")
        command.finish()

    def prot(self, command: ICommand) -> None:
        level = command.argument.strip().upper()
        if self._control is ControlSecurity.CLEAR:
            command.replyText(503, "PROT requires AUTH first.")
        elif level == b"P":
            self._data = DataProtection.PRIVATE
            command.replyText(200, "Protection level set to Private.")
        elif level == b"C":
            self._data = DataProtection.CLEAR
            command.replyText(200, "Protection level set to Clear.")
        elif level in (b"S", b"E"):
            command.replyText(536, "Protection level not supported; use PROT P or PROT C.")
        else:
            command.replyText(504, "Unknown protection level; use PROT P or PROT C.")
        command.finish()

    def ccc(self, command: ICommand) -> None:
        if self._control is ControlSecurity.CLEAR:
            command.replyText(533, "Command channel is not protected.")
        else:
            command.replyText(534, "CCC refused: the command channel stays protected.")
        command.finish()

    def reset(self) -> None:
        """
        REIN: the data protection goes back to its default. The control
        connection stays under TLS: the proxy never falls back to clear
        text once a client has asked for TLS.
        """
        self._data = self._defaultProtection()
