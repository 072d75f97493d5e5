"""
The transfer commands (RETR, STOR, LIST, ...) and ABOR.

L{TransferCommands} owns the transfer in progress, if any, and what it has
learnt about the backend's passive mode (EPSV, or PASV after an EPSV was not
understood).
"""

from __future__ import annotations

from typing import Any

from ftpproxy.session.interfaces import ICommand, IDataChannels, IDataProtection, ISessionActions, ITransferRecord
from ftpproxy.session.transfer import TRANSFER_DIRECTIONS, ClientSide, Direction, Transfer


class TransferCommands:
    """
    @ivar _transfer: the transfer in progress, or None.
    @ivar _backendKnowsEpsv: False once the backend refused EPSV as unknown.
    """

    __slots__ = ('_settings', '_clock', '_dataChannels', '_protection', '_session', '_record', '_events', '_transfer', '_backendKnowsEpsv')

    def __init__(
        self,
        settings: Any,
        clock: Any,
        dataChannels: IDataChannels,
        protection: IDataProtection,
        session: ISessionActions,
        record: ITransferRecord,
        events: Any,
    ) -> None:
        """
        @param settings: the session's configuration.
        @param session: its C{currentLink} is the session's current backend
            link (its C{conversation} and the backend's C{config}).
        """
        self._settings = settings
        self._clock = clock
        self._dataChannels = dataChannels
        self._protection = protection
        self._session = session
        self._record = record
        self._events = events
        self._transfer: Transfer | None = None
        self._backendKnowsEpsv = True

    def transfer(self, command: ICommand) -> None:
        if self._settings.requireTLS and self._protection.dataTLS() is None:
            self._dataChannels.forget()
            command.replyText(521, "This server requires protected data: send PBSZ 0 and PROT P.")
            command.finish()
            return
        channel = self._dataChannels.takeChannel()
        restartMarker = self._dataChannels.takeRestartMarker()
        if channel is None:
            command.replyText(425, "Use PORT, EPRT, PASV or EPSV first.")
            command.finish()
            return
        direction = TRANSFER_DIRECTIONS[command.verb]
        link = self._session.currentLink()
        client = ClientSide(
            channel,
            self._clock,
            self._settings.dataConnectionTimeout,
            download=direction is Direction.DOWNLOAD,
        )
        self._transfer = Transfer(
            command=command,
            direction=direction,
            client=client,
            backend=link.conversation,
            backendPolicy=link.backend.config,
            restartOffset=restartMarker,
            settings=_TransferSettings(self._settings, self._clock),
            record=self._record,
            events=self._events,
            usingEpsv=self._backendKnowsEpsv,
            epsvUnsupported=self._epsvUnsupported,
            whenDone=self._transferDone,
        )
        command.readUrgentCommands()
        self._transfer.start()

    def abort(self, command: ICommand) -> None:
        """
        ABOR: with a transfer running, the transfer answers it (or has the
        backend answer it); otherwise it goes to the backend as it is.
        """
        if self._transfer is None:
            command.relay()
        else:
            self._transfer.abort(command)

    def interrupt(self) -> None:
        """
        QUIT while a transfer runs: abort it quietly.
        """
        if self._transfer is not None:
            self._transfer.abort(None)

    def release(self) -> None:
        if self._transfer is not None:
            transfer, self._transfer = self._transfer, None
            transfer.tearDown()

    def _epsvUnsupported(self) -> None:
        self._backendKnowsEpsv = False

    def _transferDone(self) -> None:
        self._transfer = None


class _TransferSettings:
    """
    The settings a transfer reads, with the clock beside them.
    """

    def __init__(self, settings: Any, clock: Any) -> None:
        self.clock = clock
        self.connectTimeout = settings.connectTimeout
        self.dataConnectionTimeout = settings.dataConnectionTimeout
        self.dataStallTimeout = settings.dataStallTimeout
        self.splice = settings.splice
