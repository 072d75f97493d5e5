"""
One transfer command (RETR, STOR, LIST, ...) carried through the proxy.

The client's data connection comes from the session's data channel (passive
or active), on its own time: L{ClientSide} waits for it. Towards the backend
the proxy asks for passive mode itself (EPSV, else PASV), connects, replays a
pending REST, and only then sends the command. The two legs are pumped in the
command's direction once the backend has the command and both legs exist;
the backend's final reply reaches the client only once both legs have closed,
so a client never reads "226" before it has all the data.

The transfer is a state machine; this is its table (input: what happens):

==================  =====================================================================
state               inputs
==================  =====================================================================
negotiating         passiveAddress: connect to it -> connecting;
                    passiveUnsupported: send PASV -> negotiating;
                    passiveRefused, clientFailed: answer 425 -> done;
                    abort: answer 426 (and the ABOR) -> done
connecting          backendConnected: REST? -> restarting, else command -> commanded;
                    backendConnectFailed, clientFailed: answer -> done;
                    abort: answer 426 (and the ABOR) -> done
restarting          restAccepted: command -> commanded;
                    restRefused: answer the refusal -> done;
                    clientFailed: answer -> done; abort: answer 426 (and the ABOR) -> done
commanded           preliminary: relay, wait for data; commandFailed: answer it -> done;
                    commandSucceeded: -> finishing; legsClosed: final reply now due;
                    clientFailed, stalled: answer now -> done (the backend's reply is dropped);
                    abort: close legs, relay ABOR -> aborting
aborting            commandSucceeded, commandFailed: answer 426 or the error -> done
finishing           legsClosed: answer the final reply -> done;
                    clientFailed, stalled, abort: answer -> done
done                passiveAddress: the backend listens for nothing: silent ABOR;
                    everything else is ignored
==================  =====================================================================

clientReady (the client's leg is there) is taken in every state but done,
where the leg is closed at once. In every state the backend's replies to the
commands this transfer sent keep coming to it; after done they are dropped,
and the backend conversation's reply deadline still applies to them, so a
backend that went silent ends the session instead of holding it.
"""

from __future__ import annotations

import enum
import time
from typing import Any, Callable, Protocol

from automat import TypeMachineBuilder
from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.data.connecting import connectProtocol
from ftpproxy.data.legs import DataLeg, SessionNotResumed, pump
from ftpproxy.internals import indexTransitions
from ftpproxy.events import EVENT_FIELD, TRANSFER_FINISHED
from ftpproxy.session.interfaces import (
    IBackendConversation,
    ICommand,
    IDataChannel,
    IExchange,
    ITransferRecord,
)
from ftpproxy.wire.addresses import sameHost
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, parseEpsvReply, parsePasvReply


class Direction(enum.Enum):
    DOWNLOAD = "download"  # backend -> client
    UPLOAD = "upload"  # client -> backend


TRANSFER_DIRECTIONS = {
    b"RETR": Direction.DOWNLOAD,
    b"LIST": Direction.DOWNLOAD,
    b"NLST": Direction.DOWNLOAD,
    b"MLSD": Direction.DOWNLOAD,
    b"STOR": Direction.UPLOAD,
    b"STOU": Direction.UPLOAD,
    b"APPE": Direction.UPLOAD,
}

#: Transfers that carry a directory listing.
LISTINGS = frozenset({b"LIST", b"NLST", b"MLSD"})

# Replies to EPSV meaning "I don't know EPSV": fall back to PASV.
EPSV_UNSUPPORTED = frozenset({500, 501, 502, 504})

#: The longest time between two looks at a transfer's byte counts.
STALL_CHECK_MAX = 5.0

ABORTED = Reply.single(426, "Transfer aborted.")
ABOR_DONE = Reply.single(226, "ABOR command successful.")
BACKEND_DATA_FAILED = Reply.single(425, "Can't open data connection to the backend.")
STALLED = Reply.single(426, "Data connection stalled; transfer aborted.")


class BackendDataRefused(Exception):
    """
    The backend's passive reply names an address the proxy will not use.
    """


class _Inputs(Protocol):
    def start(self) -> None:
        "Ask the backend for passive mode."

    def passiveAddress(self, host: str, port: int) -> None:
        "The backend listens at host:port."

    def passiveUnsupported(self) -> None:
        "The backend does not know EPSV."

    def passiveRefused(self, why: str) -> None:
        "The backend's passive reply is unusable."

    def backendConnected(self, leg: DataLeg) -> None:
        "The backend data connection is up."

    def backendConnectFailed(self, why: str) -> None:
        "The backend data connection failed."

    def restAccepted(self) -> None:
        "350 to the replayed REST."

    def restRefused(self, reply: Reply) -> None:
        "Anything else to the replayed REST."

    def preliminary(self, reply: Reply) -> None:
        "1xx to the transfer command."

    def finalReply(self, reply: Reply) -> None:
        "The final reply to the transfer command."

    def answerNow(self) -> None:
        "The final reply is an error with no data to wait for."

    def clientReady(self, leg: DataLeg) -> None:
        "The client's data leg is ready."

    def clientFailed(self, reply: Reply) -> None:
        "The client's data connection could not be had; answer C{reply}."

    def legsClosed(self) -> None:
        "Both data legs have closed."

    def stalled(self) -> None:
        "No byte moved for the stall period."

    def abort(self, abor: ICommand | None) -> None:
        "The client sent ABOR (C{abor}) or QUIT (None)."

    def sessionEnded(self) -> None:
        "The session is over: release everything, answer nothing."


class ClientSide:
    """
    The client's data connection for one transfer: the channel it comes
    from and the deadline for it to arrive.
    """

    def __init__(
        self, channel: IDataChannel, clock: IReactorTime, timeout: float, download: bool
    ) -> None:
        self._channel = channel
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self.leg: DataLeg | None = None
        channel.setDirection(download)

    def start(self, onReady: Callable[[DataLeg], None], onFailed: Callable[[Reply, str], None]) -> None:
        def ready(leg: DataLeg) -> None:
            self._stopTimer()
            self.leg = leg
            onReady(leg)

        def failed(reason: Failure) -> None:
            self._stopTimer()
            if reason.check(SessionNotResumed):
                reply = Reply.single(522, "SSL connection failed: session reuse required.")
            elif reason.check(SSLError):
                reply = Reply.single(425, "Can't open data connection: TLS handshake failed.")
            else:
                reply = Reply.single(425, "Can't open data connection to your data port.")
            onFailed(reply, reason.getErrorMessage() or reason.type.__name__)

        def timedOut() -> None:
            self._timer = None
            onFailed(Reply.single(425, "Can't open data connection: timed out."), "timed out")

        self._timer = self._clock.callLater(self._timeout, timedOut)
        self._channel.whenConnected(ready, failed)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()

    def afterHandshake(self, callback: Callable[[], None]) -> None:
        self._channel.afterHandshake(callback)

    def close(self) -> None:
        self._stopTimer()
        self._channel.close()


class _StallWatch:
    """
    Ends a transfer that moves no byte for C{seconds}. It looks at the byte
    counts a few times per period (at least every L{STALL_CHECK_MAX}
    seconds), which is much cheaper than touching a timer for every chunk,
    and notices a stall at most that long after the period is up.
    """

    def __init__(
        self,
        clock: IReactorTime,
        seconds: float,
        moved: Callable[[], int],
        stalled: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._seconds = seconds
        self._interval = min(seconds / 4, STALL_CHECK_MAX)
        self._moved = moved
        self._stalled = stalled
        self._call: IDelayedCall | None = None
        self._lastCount = moved()
        self._lastProgress = clock.seconds()
        if seconds:
            self._call = clock.callLater(self._interval, self._check)

    def _check(self) -> None:
        self._call = None
        now = self._clock.seconds()
        count = self._moved()
        if count != self._lastCount:
            self._lastCount = count
            self._lastProgress = now
        elif now - self._lastProgress >= self._seconds - 1e-9:
            self._stalled()
            return
        self._call = self._clock.callLater(self._interval, self._check)

    def stop(self) -> None:
        if self._call is not None:
            call, self._call = self._call, None
            if call.active():
                call.cancel()


class TransferSettings(Protocol):
    clock: IReactorTime
    connectTimeout: float
    dataConnectionTimeout: float
    dataStallTimeout: float
    splice: bool


@implementer(IExchange)
class _Core:
    """
    What a transfer keeps for its whole life; the per-state parts live in
    the machine's states.

    @ivar backendLeg: the data connection to the backend, once made.
    @ivar client: the client's side (channel, deadline, leg).
    @ivar backendListening: the backend answered EPSV/PASV and listens,
        until it has a transfer command or an ABOR.
    """

    log = Logger(namespace="ftpproxy.session.transfer")

    def __init__(
        self,
        command: ICommand,
        direction: Direction,
        client: ClientSide,
        backend: IBackendConversation,
        backendPolicy: Any,
        restartOffset: bytes | None,
        settings: TransferSettings,
        record: ITransferRecord,
        events: Any,
        usingEpsv: bool,
        epsvUnsupported: Callable[[], None],
        whenDone: Callable[[], None],
    ) -> None:
        self.command = command
        self.direction = direction
        self.client = client
        self.backend = backend
        self.policy = backendPolicy
        self.restartOffset = restartOffset
        self.settings = settings
        self.record = record
        self.events = events
        self.usingEpsv = usingEpsv
        self._epsvUnsupported = epsvUnsupported
        self._whenDone = whenDone
        self.backendLeg: DataLeg | None = None
        self.backendListening = False
        self.stallWatch: _StallWatch | None = None
        self.startedAt = time.monotonic()
        self.machine: _Inputs

    # -- replies from the backend, turned into inputs ------------------------

    def replyReceived(self, command: bytes, reply: Reply) -> None:
        verb = command[:4].upper()
        if verb in (b"EPSV", b"PASV"):
            if not reply.isPreliminary:
                self._passiveReply(reply)
        elif verb == b"REST":
            if not reply.isPreliminary:
                if reply.code == 350:
                    self.machine.restAccepted()
                else:
                    self.machine.restRefused(reply)
        elif command == self.command.line:
            if reply.isPreliminary:
                self.machine.preliminary(reply)
            else:
                self.machine.finalReply(reply)
        # Replies to the silent ABOR are nobody's business.

    def _passiveReply(self, reply: Reply) -> None:
        self.backendListening = reply.code in (227, 229)
        if self.usingEpsv and reply.code in EPSV_UNSUPPORTED:
            self.usingEpsv = False
            self._epsvUnsupported()
            self.machine.passiveUnsupported()
            return
        try:
            host, port = self._dataAddress(reply)
        except (ProtocolTextError, BackendDataRefused) as e:
            self.machine.passiveRefused(str(e))
            return
        self.machine.passiveAddress(host, port)

    def _dataAddress(self, reply: Reply) -> tuple[str, int]:
        controlHost = self.backend.peerHost
        if self.usingEpsv:
            if reply.code != 229:
                raise BackendDataRefused(f"EPSV answered {reply.code}")
            host, port = controlHost, parseEpsvReply(b" ".join(reply.lines))
        else:
            if reply.code != 227:
                raise BackendDataRefused(f"PASV answered {reply.code}")
            host, port = parsePasvReply(reply.text)
            if self.policy.dataAddress == "control":
                host = controlHost
            elif self.policy.dataAddress == "check" and not sameHost(host, controlHost):
                raise BackendDataRefused(f"227 names {host}, not {controlHost}")
        if port < 1024 and not self.policy.allowLowDataPorts:
            raise BackendDataRefused(f"data port {port} is below 1024")
        return host, port

    # -- actions ------------------------------------------------------------

    def askPassive(self) -> None:
        self.command.sendToBackend(b"EPSV" if self.usingEpsv else b"PASV", self)

    def connectBackend(self, host: str, port: int) -> Deferred[Any]:
        leg = DataLeg()
        machine = self.machine
        d = connectProtocol(self.settings.clock, host, port, self.settings.connectTimeout, leg)

        def connected(_: object) -> None:
            machine.backendConnected(leg)

        def failed(reason: Failure) -> None:
            machine.backendConnectFailed(reason.getErrorMessage())

        d.addCallbacks(connected, failed)
        return d

    def adoptBackendLeg(self, leg: DataLeg) -> None:
        self.backendLeg = leg
        tls = self.backend.resumingTLS()
        if tls is not None:
            # Under PROT P towards an FTPS backend, start TLS as the client at
            # once, resuming the control connection's session (vsftpd insists).
            # The command goes out without waiting for the handshake: many
            # servers only accept TLS on the data connection once they have
            # the command.
            leg.transport.startTLS(tls)
        leg.whenLost().addCallback(lambda _: self.checkLegs())

    def clientLegArrived(self, leg: DataLeg) -> None:
        leg.whenLost().addCallback(lambda _: self.checkLegs())

    def sendCommandOrRest(self) -> None:
        if self.restartOffset is not None:
            self.command.sendToBackend(b"REST " + self.restartOffset, self)
        else:
            self.sendCommand()

    def sendCommand(self) -> None:
        self.backendListening = False
        self.command.sendToBackend(self.command.line, self)
        self.pairIfReady()

    def pairIfReady(self) -> None:
        clientLeg = self.client.leg
        if self.backendLeg is None or clientLeg is None or self.stallWatch is not None:
            return
        # Directory listings are mostly small: setting up splice(2) (a pipe,
        # four epoll changes) costs more than moving them through Python.
        splice = self.settings.splice and self.command.verb not in LISTINGS
        reactor = self.settings.clock if splice else None
        if self.direction is Direction.DOWNLOAD:
            pump(self.backendLeg, clientLeg, reactor)
        else:
            pump(clientLeg, self.backendLeg, reactor)
        self.stallWatch = _StallWatch(
            self.settings.clock, self.settings.dataStallTimeout, self.movedBytes, self.machine.stalled
        )

    def movedBytes(self) -> int:
        return sum(leg.bytesReceived for leg in (self.backendLeg, self.client.leg) if leg)

    def checkLegs(self) -> None:
        """
        Report when both legs are gone (the backend's never made counts as gone).
        """
        backendDone = self.backendLeg is None or self.backendLeg.lost
        clientDone = self.client.leg is not None and self.client.leg.lost
        if backendDone and clientDone:
            self.machine.legsClosed()

    def answer(self, reply: Reply, abor: ICommand | None = None) -> None:
        """
        The transfer is over for the client: release everything, send
        C{reply} (and the ABOR's own reply when the proxy answers it), and
        let the session go on.
        """
        self.release()
        self.command.reply(reply)
        if abor is not None:
            abor.reply(ABOR_DONE)
            abor.finish()
        if self.backendListening:
            # Cancel the backend's passive mode: left alone, some servers
            # later send an unsolicited "421 Passive data channel timed out".
            self.cancelBackendPassive()
        self.backend.dataFinished()
        self.logTransfer(reply)
        self._whenDone()
        self.command.finish()

    def cancelBackendPassive(self) -> None:
        self.backendListening = False
        self.command.sendToBackend(b"ABOR", self)

    def release(self) -> None:
        """
        Timers, the client channel and both legs: no reply is sent.
        """
        if self.stallWatch is not None:
            self.stallWatch.stop()
        self.client.close()
        self.abortLegs()

    def abortLegs(self) -> None:
        for leg in (self.backendLeg, self.client.leg):
            if leg is not None:
                leg.abort()

    def logTransfer(self, reply: Reply) -> None:
        source = self.backendLeg if self.direction is Direction.DOWNLOAD else self.client.leg
        size = source.bytesReceived if source is not None else 0
        duration = time.monotonic() - self.startedAt
        record = self.record
        verb = self.command.verb.decode()
        self.events.transferFinished(
            record.backendName, verb, self.direction.value, reply.code, size, duration
        )
        self.log.info(
            "session {session}: {verb} {argument} via {backend}: {code}, "
            "{bytes} bytes in {duration:.3f}s",
            session=record.sessionId,
            client=record.clientHost,
            user=record.user,
            type=record.transferType,
            backend=record.backendName,
            verb=verb,
            argument=self.command.argument.decode("utf-8", "replace"),
            direction=self.direction.value,
            code=reply.code,
            bytes=size,
            duration=duration,
            **{EVENT_FIELD: TRANSFER_FINISHED},
        )

    def warn(self, what: str, why: str) -> None:
        self.log.warn(
            "session {session}: {what}: {why}",
            session=self.record.sessionId,
            what=what,
            why=why,
        )


builder = TypeMachineBuilder(_Inputs, _Core)
created = builder.state("created")
negotiating = builder.state("negotiating")


def _connectingData(machine: _Inputs, core: _Core, host: str, port: int) -> Deferred[Any]:
    return core.connectBackend(host, port)


connecting = builder.state("connecting", _connectingData)
restarting = builder.state("restarting")
commanded = builder.state("commanded")
streaming = builder.state("streaming")
aborting = builder.state("aborting")


def _finishingData(machine: _Inputs, core: _Core, reply: Reply) -> Reply:
    return reply


finishing = builder.state("finishing", _finishingData)
done = builder.state("done")

_BEFORE_COMMAND = (negotiating, connecting, restarting)


@created.upon(_Inputs.start).to(negotiating)
def _start(machine: _Inputs, core: _Core) -> None:
    core.client.start(machine.clientReady, lambda reply, why: _clientFailed(machine, core, reply, why))
    core.askPassive()


def _clientFailed(machine: _Inputs, core: _Core, reply: Reply, why: str) -> None:
    core.log.info(
        "session {session}: client data connection failed: {why}",
        session=core.record.sessionId,
        why=why,
    )
    machine.clientFailed(reply)


# -- negotiating: EPSV/PASV sent --------------------------------------------


@negotiating.upon(_Inputs.passiveAddress).to(connecting)
def _passiveAddress(machine: _Inputs, core: _Core, host: str, port: int) -> None:
    pass  # connecting's data (the connect) is made on entry


@negotiating.upon(_Inputs.passiveUnsupported).loop()
def _fallBackToPasv(machine: _Inputs, core: _Core) -> None:
    core.askPassive()


@negotiating.upon(_Inputs.passiveRefused).to(done)
def _passiveRefused(machine: _Inputs, core: _Core, why: str) -> None:
    core.warn(f"backend {core.record.backendName} passive reply unusable", why)
    core.answer(BACKEND_DATA_FAILED)


# -- connecting: to the backend's data port -----------------------------------


@connecting.upon(_Inputs.backendConnected).to(restarting)
def _backendConnected(machine: _Inputs, core: _Core, connecting: Deferred[Any], leg: DataLeg) -> None:
    core.adoptBackendLeg(leg)
    if core.restartOffset is not None:
        core.sendCommandOrRest()
    else:
        # Nothing to replay: straight on to the command.
        machine.restAccepted()


@connecting.upon(_Inputs.backendConnectFailed).to(done)
def _backendConnectFailed(machine: _Inputs, core: _Core, connecting: Deferred[Any], why: str) -> None:
    core.warn(f"backend {core.record.backendName} data connection failed", why)
    core.answer(BACKEND_DATA_FAILED)


def _cancelConnect(connecting: Deferred[Any]) -> None:
    if not connecting.called:
        connecting.cancel()


# -- restarting: REST replayed ---------------------------------------------------


@restarting.upon(_Inputs.restAccepted).to(commanded)
def _restAccepted(machine: _Inputs, core: _Core) -> None:
    core.sendCommand()


@restarting.upon(_Inputs.restRefused).to(done)
def _restRefused(machine: _Inputs, core: _Core, reply: Reply) -> None:
    core.answer(reply)


# -- before the backend has the command: the proxy answers -----------------------


for _state in _BEFORE_COMMAND:
    if _state is connecting:

        @_state.upon(_Inputs.clientFailed).to(done)
        def _clientGoneWhileConnecting(
            machine: _Inputs, core: _Core, connecting: Deferred[Any], reply: Reply
        ) -> None:
            _cancelConnect(connecting)
            core.answer(reply)

        @_state.upon(_Inputs.abort).to(done)
        def _abortWhileConnecting(
            machine: _Inputs, core: _Core, connecting: Deferred[Any], abor: ICommand | None
        ) -> None:
            _cancelConnect(connecting)
            core.answer(ABORTED, abor)

        _state.upon(_Inputs.legsClosed).loop().returns(None)

        @_state.upon(_Inputs.clientReady).loop()
        def _clientReadyEarly(
            machine: _Inputs, core: _Core, connecting: Deferred[Any], leg: DataLeg
        ) -> None:
            core.clientLegArrived(leg)

    else:

        @_state.upon(_Inputs.clientFailed).to(done)
        def _clientGoneBeforeCommand(machine: _Inputs, core: _Core, reply: Reply) -> None:
            core.answer(reply)

        @_state.upon(_Inputs.abort).to(done)
        def _abortBeforeCommand(machine: _Inputs, core: _Core, abor: ICommand | None) -> None:
            core.answer(ABORTED, abor)

        # The client's leg may be over already (a small upload): its bytes
        # wait in the leg until the backend's is there.
        _state.upon(_Inputs.legsClosed).loop().returns(None)

        @_state.upon(_Inputs.clientReady).loop()
        def _clientReadyBeforeCommand(machine: _Inputs, core: _Core, leg: DataLeg) -> None:
            core.clientLegArrived(leg)


# -- commanded: the backend has the command; streaming: it said 1xx ---------------


for _state in (commanded, streaming):

    @_state.upon(_Inputs.clientReady).loop()
    def _clientReady(machine: _Inputs, core: _Core, leg: DataLeg) -> None:
        core.clientLegArrived(leg)
        core.pairIfReady()

    @_state.upon(_Inputs.legsClosed).loop()
    def _legsClosedFirst(machine: _Inputs, core: _Core) -> None:
        # The data is through; the final reply is due now.
        core.backend.dataFinished()

    @_state.upon(_Inputs.clientFailed).to(done)
    def _clientFailedAfterCommand(machine: _Inputs, core: _Core, reply: Reply) -> None:
        # The backend's own final reply will be dropped when it comes.
        core.answer(reply)

    @_state.upon(_Inputs.stalled).to(done)
    def _stalled(machine: _Inputs, core: _Core) -> None:
        core.log.info(
            "session {session}: {verb} stalled, no data for {seconds}s",
            session=core.record.sessionId,
            verb=core.command.verb.decode(),
            seconds=core.settings.dataStallTimeout,
        )
        core.answer(STALLED)

    @_state.upon(_Inputs.abort).to(aborting)
    def _abortAfterCommand(machine: _Inputs, core: _Core, abor: ICommand | None) -> None:
        core.release()
        core.backend.dataFinished()
        if abor is not None:
            # The backend answers the ABOR itself (426 to the command, 226
            # to the ABOR), in order.
            abor.relay()


@commanded.upon(_Inputs.preliminary).to(streaming)
def _preliminary(machine: _Inputs, core: _Core, reply: Reply) -> None:
    # For an upload under PROT P, the data layer may hold this reply until
    # the client's data connection has its TLS session ticket (see
    # DataLegFactory.afterHandshake); release() sends it before any other.
    core.client.afterHandshake(lambda: core.command.reply(reply))
    core.backend.waitForData()


streaming.upon(_Inputs.preliminary).loop()(_preliminary)


@commanded.upon(_Inputs.finalReply).to(finishing)
def _finalBeforeData(machine: _Inputs, core: _Core, reply: Reply) -> None:
    if reply.isError:
        # Refused outright (550 no such file, ...): nothing to wait for.
        machine.answerNow()
    elif core.client.leg is not None:
        core.checkLegs()
    # else: the client's data connection may still come, within its deadline.


@streaming.upon(_Inputs.finalReply).to(finishing)
def _finalAfterData(machine: _Inputs, core: _Core, reply: Reply) -> None:
    if core.client.leg is None:
        if reply.isError:
            machine.answerNow()
    else:
        core.checkLegs()


# -- aborting: legs closed, the backend's final reply awaited ---------------------


@aborting.upon(_Inputs.finalReply).to(done)
def _abortedReply(machine: _Inputs, core: _Core, reply: Reply) -> None:
    core.answer(reply if reply.isError else ABORTED)


for _input in (_Inputs.preliminary, _Inputs.legsClosed, _Inputs.stalled, _Inputs.clientFailed):
    aborting.upon(_input).loop().returns(None)


@aborting.upon(_Inputs.clientReady).loop()
def _clientReadyAborting(machine: _Inputs, core: _Core, leg: DataLeg) -> None:
    leg.abort()


@aborting.upon(_Inputs.abort).loop()
def _abortAgain(machine: _Inputs, core: _Core, abor: ICommand | None) -> None:
    if abor is not None:
        abor.relay()


# -- finishing: the final reply held until both legs have closed --------------------


@finishing.upon(_Inputs.answerNow).to(done)
def _answerNow(machine: _Inputs, core: _Core, reply: Reply) -> None:
    core.answer(reply)


@finishing.upon(_Inputs.clientReady).loop()
def _clientReadyLate(machine: _Inputs, core: _Core, reply: Reply, leg: DataLeg) -> None:
    core.clientLegArrived(leg)
    core.pairIfReady()
    core.checkLegs()


@finishing.upon(_Inputs.legsClosed).to(done)
def _legsClosed(machine: _Inputs, core: _Core, reply: Reply) -> None:
    core.answer(reply)


@finishing.upon(_Inputs.clientFailed).to(done)
def _clientFailedFinishing(machine: _Inputs, core: _Core, reply: Reply, clientReply: Reply) -> None:
    core.answer(clientReply)


@finishing.upon(_Inputs.stalled).to(done)
def _stalledFinishing(machine: _Inputs, core: _Core, reply: Reply) -> None:
    core.answer(STALLED)


@finishing.upon(_Inputs.abort).to(done)
def _abortFinishing(machine: _Inputs, core: _Core, reply: Reply, abor: ICommand | None) -> None:
    # The backend is done with the command, but the client's ABOR comes
    # first: the transfer ends with 426, and the ABOR goes to the backend.
    core.answer(ABORTED)
    if abor is not None:
        abor.relay()


finishing.upon(_Inputs.preliminary).loop().returns(None)


# -- the session ends: drop everything, answer nothing --------------------------------


def _dropEverything(core: _Core) -> None:
    core.release()
    core.logTransfer(ABORTED)


for _state in (created, negotiating, restarting, commanded, streaming, aborting):

    @_state.upon(_Inputs.sessionEnded).to(done)
    def _sessionEnded(machine: _Inputs, core: _Core) -> None:
        _dropEverything(core)


@finishing.upon(_Inputs.sessionEnded).to(done)
def _sessionEndedFinishing(machine: _Inputs, core: _Core, reply: Reply) -> None:
    _dropEverything(core)


@connecting.upon(_Inputs.sessionEnded).to(done)
def _sessionEndedConnecting(machine: _Inputs, core: _Core, connecting: Deferred[Any]) -> None:
    _cancelConnect(connecting)
    _dropEverything(core)


# -- done: the client has its answer ----------------------------------------------


@done.upon(_Inputs.passiveAddress).loop()
def _lateBackendPassive(machine: _Inputs, core: _Core, host: str, port: int) -> None:
    core.cancelBackendPassive()


@done.upon(_Inputs.clientReady).loop()
def _clientReadyDone(machine: _Inputs, core: _Core, leg: DataLeg) -> None:
    leg.abort()


@done.upon(_Inputs.backendConnected).loop()
def _backendConnectedDone(machine: _Inputs, core: _Core, leg: DataLeg) -> None:
    leg.abort()


for _input in (
    _Inputs.passiveUnsupported,
    _Inputs.passiveRefused,
    _Inputs.backendConnectFailed,
    _Inputs.restAccepted,
    _Inputs.restRefused,
    _Inputs.preliminary,
    _Inputs.finalReply,
    _Inputs.answerNow,
    _Inputs.clientFailed,
    _Inputs.legsClosed,
    _Inputs.stalled,
    _Inputs.abort,
    _Inputs.sessionEnded,
):
    done.upon(_input).loop().returns(None)

_Machine = indexTransitions(builder.build())

#: The (input, states) pairs the table above leaves out, because the input
#: cannot arrive there; a test holds this against the machine.
CANNOT_HAPPEN: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset(s.name for s in (negotiating, connecting, restarting, commanded, streaming, aborting, finishing, done)), "given once, first"),
    "passiveAddress": (frozenset({"created", "connecting", "restarting", "commanded", "streaming", "aborting", "finishing"}), "EPSV/PASV is answered before anything else is sent"),
    "passiveRefused": (frozenset({"created", "connecting", "restarting", "commanded", "streaming", "aborting", "finishing"}), "as passiveAddress"),
    "passiveUnsupported": (frozenset({"created", "connecting", "restarting", "commanded", "streaming", "aborting", "finishing"}), "as passiveAddress"),
    "backendConnected": (frozenset({"created", "negotiating", "restarting", "commanded", "streaming", "aborting", "finishing"}), "the connect is cancelled whenever connecting is left early"),
    "backendConnectFailed": (frozenset({"created", "negotiating", "restarting", "commanded", "streaming", "aborting", "finishing"}), "as backendConnected"),
    "restAccepted": (frozenset({"created", "negotiating", "connecting", "commanded", "streaming", "aborting", "finishing"}), "REST is answered before the command is sent"),
    "restRefused": (frozenset({"created", "negotiating", "connecting", "commanded", "streaming", "aborting", "finishing"}), "as restAccepted"),
    "preliminary": (frozenset({"created", "negotiating", "connecting", "restarting"}), "the command is not sent yet"),
    "finalReply": (frozenset({"created", "negotiating", "connecting", "restarting", "finishing"}), "not sent yet, or answered already"),
    "answerNow": (frozenset({"created", "negotiating", "connecting", "restarting", "commanded", "streaming", "aborting"}), "only given on entering finishing"),
    "stalled": (frozenset({"created", "negotiating", "connecting", "restarting"}), "the stall watch starts when the legs are paired"),
    "clientReady": (frozenset({"created"}), "the client side is started by start"),
    "clientFailed": (frozenset({"created"}), "as clientReady"),
    "legsClosed": (frozenset({"created"}), "as clientReady"),
    "abort": (frozenset({"created"}), "the session starts the transfer at once"),
}


class Transfer:
    """
    One transfer. Start it with L{start}; it answers the client and
    finishes its command on its own.
    """

    def __init__(self, **parts: Any) -> None:
        """
        @param parts: what L{_Core} takes: the command, direction, client
            side, backend conversation and policy, restart offset, settings,
            log record, events and the session's EPSV knowledge.
        """
        core = _Core(**parts)
        self._machine = _Machine(core)
        core.machine = self._machine

    def start(self) -> None:
        self._machine.start()

    def abort(self, abor: ICommand | None) -> None:
        """
        The client sent ABOR (the command C{abor}, answered here or by the
        backend) or QUIT (None).
        """
        self._machine.abort(abor)

    def tearDown(self) -> None:
        """
        The session is ending: drop everything, answer nothing.
        """
        self._machine.sessionEnded()
