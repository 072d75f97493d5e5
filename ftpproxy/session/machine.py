"""
One client's session, as a state machine.

The client's control connection (L{ftpproxy.session.control}) turns bytes
into command lines and tells the session that lines are waiting; the session
takes them one at a time, each as a L{CommandRun} given to the handler the
verb table names. The session's own state is only its life: which backend it
has, whether a command is running, whether it is closing. This is its table:

==============  ==============================================================================
state           inputs
==============  ==============================================================================
new             greetWithBackend -> connecting; greetLocally -> awaitingUser
connecting      backendReady -> idle (the backend's banner to the client);
                backendReadyForUser -> busy (the USER that chose it goes on);
                backendUnavailable -> closing; linesAvailable: wait
awaitingUser    linesAvailable, commandReceived, commandFinished: answered by the proxy
                one at a time; routeTo (USER) -> connecting
idle            linesAvailable: take one; commandReceived -> busy; idle timer -> close
busy            commandFinished -> idle; transferStarted -> transferring;
                routeTo (USER for another backend) -> connecting;
                greetAgain (REIN under user-hash) -> awaitingUser; linesAvailable: wait
transferring    linesAvailable: ABOR and QUIT jump the queue; commandFinished: when
                nothing runs any more -> idle
any but closed  backendGone, close -> closing; clientLost -> closed
closing         everything but clientLost is ignored; clientLost -> closed
closed          everything is ignored
==============  ==============================================================================

Per-state data: connecting holds the backend connect in progress; idle holds
the idle timer (so it runs only while the session waits for the client);
busy holds the command running; transferring holds the transfer command and
the urgent command (ABOR, QUIT) that came during it.

A client gets at most L{COMMANDS_PER_TURN} commands taken in a row while
more of its commands wait; then it yields and the rest is taken on the next
reactor turn (L{TurnBudget}), so that a client that floods the proxy with
commands it answers itself (empty lines, say) costs the others a bounded
delay. A client that sends more than C{max_invalid_commands} refused lines in
a row is closed (L{InvalidCommands}).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import attrs
from automat import TypeMachineBuilder
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.backends.balancer import Backend
from ftpproxy.internals import indexTransitions
from ftpproxy.events import CLIENT_CLOSED, EVENT_FIELD, SESSION_ENDED, SESSION_STARTED
from ftpproxy.session.command import CommandRun, ICommandHost
from ftpproxy.session.connector import ConnectedBackend, ConnectSettings, NoBackend, connectBackend
from ftpproxy.session.conversation import BackendConversation, IConversationListener
from ftpproxy.session.datachannel import DataChannelCommands
from ftpproxy.session.general import PROXY_FEATURES, GeneralCommands
from ftpproxy.session.limits import Deadline, IDeadlineOwner, InvalidCommands, TurnBudget
from ftpproxy.session.interfaces import IClientChannel, IExchange, ISessionActions, ITransferRecord
from ftpproxy.session.login import LoginCommands
from ftpproxy.session.routing import RoutingCommands
from ftpproxy.session.services import BackendLink, SessionServices
from ftpproxy.session.security import SecurityCommands
from ftpproxy.session.transfers import TransferCommands
from ftpproxy.session.verbs import (
    BEFORE_BACKEND,
    COMMANDS,
    NEEDS_LOGIN,
    RELAY,
    ROUTING_BY_USER,
    URGENT_DURING_TRANSFER,
)
from ftpproxy.wire.commandlines import LineTooLong
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, parseCommand

NO_BACKEND = Reply.single(421, "Service not available, no backend server is reachable.")
TOO_LONG = Reply.single(500, "Command line too long.")
UNRECOGNIZED = Reply.single(500, "Syntax error, command unrecognized.")
LOGIN_FIRST = Reply.single(530, "Please log in with USER and PASS first.")
FLOODED_TEXT = "Too many invalid commands; closing control connection."

#: Commands taken in a row from a client while more of its commands wait,
#: before it yields to the others for a reactor turn.
COMMANDS_PER_TURN = 4


@attrs.define
class Handlers:
    """
    The session's command handlers, each the owner of its part of the
    session's state.
    """

    security: SecurityCommands
    login: LoginCommands
    data: DataChannelCommands
    transfers: TransferCommands
    general: GeneralCommands
    routing: RoutingCommands

    def reset(self) -> None:
        """
        REIN: everything the client set up starts over.
        """
        self.login.reset()
        self.security.reset()
        self.data.reset()
        self.general.reset()

    def release(self) -> None:
        """
        The session ends: every timer, listener and connection goes.
        """
        self.transfers.release()
        self.data.release()
        self.login.release()


class _Inbox:
    """
    The session machine's inputs, run to completion one at a time.

    Whatever a transition causes (a command finishing at once, the next
    command taken, a close) is queued behind it instead of being run inside
    it, so that a long run of pipelined commands takes a loop, not a stack.
    Everything outside the machine, and the machine's own outputs, give
    inputs through here; it has one method per input of L{SessionInputs}.
    """

    __slots__ = ("_machine", "_queue", "_running", "_budget")

    def __init__(self, machine: SessionInputs, budget: TurnBudget | None = None) -> None:
        """
        @param budget: told of every run an input from outside starts (the
            session's L{TurnBudget} counts commands per run).
        """
        self._machine = machine
        # Made when an input arrives during a run, dropped when the run
        # ends: an idle session holds no list.
        self._queue: list[tuple[str, tuple[Any, ...]]] | None = None
        self._running = False
        self._budget = budget

    def _give(self, name: str, args: tuple[Any, ...]) -> None:
        if self._running:
            if self._queue is None:
                self._queue = []
            self._queue.append((name, args))
            return
        self._running = True
        if self._budget is not None:
            self._budget.newTurn()
        try:
            getattr(self._machine, name)(*args)
            while self._queue:
                name, args = self._queue.pop(0)
                getattr(self._machine, name)(*args)
        finally:
            self._running = False
            if not self._queue:
                self._queue = None


class _Ended:
    """
    What a closed session's inputs go to: nowhere (a late Deferred or timer
    of a session that has ended).
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


def _ignore(*args: object) -> None:
    pass


_ENDED = _Ended()


class SessionInputs(Protocol):
    def greetWithBackend(self, candidates: list[Backend]) -> None:
        "Start: connect to a backend, whose banner greets the client."

    def greetLocally(self) -> None:
        "Start: the proxy greets; the backend is chosen at USER."

    def routeTo(self, candidates: list[Backend], command: CommandRun) -> None:
        "A USER chose its backend (or another one)."

    def backendReady(self, connected: ConnectedBackend) -> None:
        "The backend greeted; its banner is the client's greeting."

    def backendReadyForUser(self, connected: ConnectedBackend, command: CommandRun) -> None:
        "The backend chosen by USER greeted; the USER goes on."

    def backendUnavailable(self, reply: Reply | None) -> None:
        "No backend could be had."

    def linesAvailable(self) -> None:
        "The client's command lines are waiting to be taken."

    def commandReceived(self, command: CommandRun) -> None:
        "A command line was taken."

    def transferStarted(self, command: CommandRun) -> None:
        "The running command is a transfer: read ABOR and QUIT at once."

    def commandFinished(self, command: CommandRun) -> None:
        "A command is over."

    def settled(self) -> None:
        "The transfer and the commands that came during it are all over."

    def greetAgain(self, command: CommandRun) -> None:
        "REIN under routing by user: the backend goes, the proxy greets."

    def backendGone(self, why: str, reply: Reply | None, expected: bool) -> None:
        "The backend connection is over."

    def close(self, code: int | None, text: str) -> None:
        "End the session, telling the client why when code is given."

    def clientLost(self) -> None:
        "The client's control connection is gone."


@implementer(ITransferRecord)
class _Record:
    """
    The session facts a transfer's log event carries, read when it ends.
    """

    __slots__ = ('_session',)

    def __init__(self, session: _Session) -> None:
        self._session = session

    @property
    def sessionId(self) -> str:
        return self._session.id

    @property
    def clientHost(self) -> str:
        return self._session.channel.clientHost

    @property
    def user(self) -> str | None:
        return self._session.handlers.login.user

    @property
    def transferType(self) -> str:
        return self._session.handlers.general.transferType

    @property
    def backendName(self) -> str | None:
        link = self._session.link
        return link.backend.name if link is not None else None


def _inboxInput(name: str) -> Callable[..., None]:
    def give(self: _Inbox, *args: Any) -> None:
        self._give(name, args)

    give.__name__ = name
    return give


for _name in (n for n, v in vars(SessionInputs).items() if callable(v) and not n.startswith("_")):
    setattr(_Inbox, _name, _inboxInput(_name))


@implementer(IConversationListener, ICommandHost, IDeadlineOwner, ISessionActions)
class _Session:
    """
    The session's core: what lives as long as the session.

    @ivar id: the session's id in log events.
    @ivar channel: the client's control connection.
    @ivar services: what the session shares with the others of its
        configuration.
    @ivar handlers: the command handlers.
    @ivar link: the backend the session has, once it greeted.
    @ivar backendName: the name of the last backend it had, for the log.
    @ivar idleTimer: the idle timeout, armed while the session is idle.
    @ivar table: the verb table for commands once a backend is there.
    @ivar budget: how many more commands are taken before the client
        yields the reactor.
    @ivar invalid: the refused command lines in a row.
    """

    __slots__ = ('id', 'channel', 'services', 'link', 'backendName', 'table', 'startedAt', 'machine', 'budget', 'invalid', 'handlers', 'idleTimer')

    log = Logger(namespace="ftpproxy.session")

    def __init__(
        self, services: SessionServices, channel: IClientChannel, sessionId: str, implicitTLS: bool
    ) -> None:
        self.id = sessionId
        self.channel = channel
        self.services = services
        self.link: BackendLink | None = None
        self.backendName: str | None = None
        self.table = COMMANDS | ROUTING_BY_USER if services.routesByUser else COMMANDS
        self.startedAt = time.monotonic()
        self.machine: SessionInputs
        self.budget = TurnBudget(services.reactor, COMMANDS_PER_TURN, self._newTurn)
        self.invalid = InvalidCommands(services.config.maxInvalidCommands)
        self.handlers = self._makeHandlers(implicitTLS)
        self.idleTimer = Deadline(services.deadlines, services.config.idleTimeout, self)

    def _makeHandlers(self, implicitTLS: bool) -> Handlers:
        services, config, reactor = self.services, self.services.config, self.services.reactor
        sessionTLS = None
        if services.serverTLS is not None:
            # The listener's TLS, bound to this session for its handshake reports.
            sessionTLS = services.serverTLS.forSession(self.id, self.channel.clientHost, services.events)
        security = SecurityCommands(sessionTLS, implicitTLS, self.channel, self, self.id)
        login = LoginCommands(
            services.deadlines,
            config.loginTimeout,
            config.requireTLS,
            security,
            services.loginThrottle,
            self.channel.clientHost,
            self.id,
            self,
        )
        data = DataChannelCommands(config, services.passivePorts, reactor, self.channel, security, self.id)
        transfers = TransferCommands(
            config, reactor, data, security, self, _Record(self), services.events
        )
        routing = RoutingCommands(services.pool, self.channel.clientHost, login, self)
        general = GeneralCommands(self, greetsAgain=services.routesByUser)
        return Handlers(security, login, data, transfers, general, routing)

    # ISessionActions: what the handlers ask of the session.

    def closeSession(self, code: int | None = None, text: str = "") -> None:
        self.machine.close(code, text)

    def currentLink(self) -> BackendLink | None:
        return self.link

    def currentBackend(self) -> Backend | None:
        return self.link.backend if self.link is not None else None

    def proxyFeatures(self) -> list[bytes]:
        return list(PROXY_FEATURES) + self.handlers.security.features()

    def interruptTransfer(self) -> None:
        self.handlers.transfers.interrupt()

    def resetHandlers(self) -> None:
        self.handlers.reset()

    def greetAgain(self, command: CommandRun) -> None:
        self.machine.greetAgain(command)

    def routeTo(self, candidates: list[Backend], command: CommandRun) -> None:
        self.machine.routeTo(candidates, command)

    def loginChanged(self, loggedIn: bool) -> None:
        self.channel.loginChanged(loggedIn)

    def clientClosed(self, reason: str) -> None:
        self.services.events.clientClosed(reason)

    # What the turn budget is given (a bound method rather than a closure).
    def _newTurn(self) -> None:
        self.machine.linesAvailable()

    # IDeadlineOwner: the idle timer
    def deadlinePassed(self) -> None:
        _idleTimedOut(self)

    # ICommandHost
    @property
    def reply(self) -> Callable[[Reply], None]:
        return self.channel.reply

    def sendToBackend(self, line: bytes, exchange: IExchange) -> None:
        if self.link is not None:
            self.link.conversation.send(line, exchange)

    def commandFinished(self, command: CommandRun) -> None:
        self.machine.commandFinished(command)

    def transferStarted(self, command: CommandRun) -> None:
        self.machine.transferStarted(command)

    # -- commands ------------------------------------------------------------

    def takeCommand(self) -> None:
        """
        Take the next waiting command line, if any, as a command; unless the
        client has had its turn (then linesAvailable comes again on the
        next reactor turn).
        """
        if not self.budget.take():
            return
        line = self.channel.nextCommand()
        if line is not None:
            self.machine.commandReceived(self.commandFor(line))

    def takeUrgentCommand(self) -> CommandRun | None:
        line = self.channel.takeUrgent(URGENT_DURING_TRANSFER)
        return None if line is None else self.commandFor(line)

    def commandFor(self, line: bytes | LineTooLong) -> CommandRun:
        if isinstance(line, LineTooLong):
            return CommandRun(self, b"", b"", b"", TOO_LONG)
        try:
            verb, argument = parseCommand(line)
        except ProtocolTextError:
            return CommandRun(self, b"", b"", line, UNRECOGNIZED)
        return CommandRun(self, verb, argument, line)

    def dispatch(self, command: CommandRun, table: dict[bytes, tuple[str, str]], relayOthers: bool) -> None:
        """
        Give C{command} to the handler C{table} names; a verb not in it is
        relayed (C{relayOthers}) or refused with 530. Lines that are no
        command, and commands that need a login the client has not made,
        are refused here, and counted.
        """
        refusal = command.refusal
        if refusal is None:
            if command.verb not in table and not relayOthers:
                refusal = LOGIN_FIRST
            elif command.verb in NEEDS_LOGIN and not self.handlers.login.loggedIn:
                refusal = LOGIN_FIRST
        if refusal is not None:
            command.reply(refusal)
            if self.invalid.refused():
                self.flooded()
            else:
                command.finish()
            return
        self.invalid.accepted()
        handlerName, method = table.get(command.verb, RELAY)
        getattr(getattr(self.handlers, handlerName), method)(command)

    def flooded(self) -> None:
        """
        The client sent more refused lines in a row than it may: close it.
        """
        self.log.warn(
            "session {session}: closing client {client} after {count} invalid commands in a row",
            session=self.id,
            client=self.channel.clientHost,
            count=self.invalid.inARow,
            reason="invalid-commands",
            **{EVENT_FIELD: CLIENT_CLOSED},
        )
        self.services.events.clientClosed("invalid-commands")
        self.machine.close(421, FLOODED_TEXT)

    # -- the backend ----------------------------------------------------------

    def connect(self, candidates: list[Backend], command: CommandRun | None) -> Deferred[Any]:
        services = self.services
        settings = ConnectSettings(
            clock=services.reactor,
            timeout=services.config.connectTimeout,
            sessionId=self.id,
            headerAddresses=self.channel.headerAddresses,
            backendTLS=services.backendTLS,
        )
        d = connectBackend(candidates, settings, services.pool, services.events)
        machine = self.machine  # the queue, not the automaton

        def ready(connected: ConnectedBackend) -> None:
            if command is None:
                machine.backendReady(connected)
            else:
                machine.backendReadyForUser(connected, command)

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError):
                return
            if not reason.check(NoBackend):
                self.log.failure("session {session}: connecting failed", reason, session=self.id)
            machine.backendUnavailable(reason.value.reply if reason.check(NoBackend) else None)

        d.addCallbacks(ready, failed)
        return d

    def adopt(self, connected: ConnectedBackend) -> None:
        backend = connected.backend
        config = backend.config
        dataTLS = None
        if config.usesTLS and config.dataProtection == "private":
            dataTLS = self.services.backendTLS(backend)
        conversation = BackendConversation(
            self.services.deadlines,
            connected.control,
            self,
            self.services.config.replyTimeout,
            self.id,
            backend.name,
            dataTLS,
        )
        self.link = BackendLink(backend, conversation, self.services.events)
        self.backendName = backend.name
        self.log.info(
            "session {session} started: client {client}, backend {backend}",
            session=self.id,
            client=self.channel.clientHost,
            backend=backend.name,
            user=self.handlers.login.user,
            **{EVENT_FIELD: SESSION_STARTED},
        )

    def dropBackend(self) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            link.release()

    # IConversationListener
    def backendGone(self, why: str, reply: Reply | None, expected: bool) -> None:
        self.machine.backendGone(why, reply, expected)

    # -- the end ----------------------------------------------------------------

    def tearDown(self) -> None:
        self.budget.stop()
        self.idleTimer.stop()
        self.handlers.release()
        self.dropBackend()

    def ended(self) -> None:
        self.tearDown()
        self.log.info(
            "session {session} ended: client {client}, backend {backend}, {duration:.3f}s",
            session=self.id,
            client=self.channel.clientHost,
            backend=self.backendName,
            duration=time.monotonic() - self.startedAt,
            **{EVENT_FIELD: SESSION_ENDED},
        )
        # Nothing more happens to this session: let go of the machine and
        # the handlers, whose references back to this object would otherwise
        # keep it all alive until the cycle collector comes by.
        self.machine = _ENDED


# -- the machine --------------------------------------------------------------

builder = TypeMachineBuilder(SessionInputs, _Session)
new = builder.state("new")


def _connectingData(
    machine: SessionInputs, core: _Session, candidates: list[Backend], command: CommandRun | None = None
) -> Deferred[Any]:
    return core.connect(candidates, command)


connecting = builder.state("connecting", _connectingData)
awaitingUser = builder.state("awaitingUser")


def _idleData(machine: SessionInputs, core: _Session, *args: object) -> Deadline:
    # The session's one idle timer, armed only in this state.
    timer = core.idleTimer
    timer.restart()
    return timer


def _idleTimedOut(core: _Session) -> None:
    core.log.info("session {session}: idle timeout", session=core.id)
    core.machine.close(421, "Idle timeout; closing control connection.")


idle = builder.state("idle", _idleData)


def _busyData(machine: SessionInputs, core: _Session, *args: object) -> CommandRun:
    # Both inputs that lead here (commandReceived, backendReadyForUser)
    # carry the command last.
    return args[-1]


busy = builder.state("busy", _busyData)


@attrs.define(eq=False)
class _Transferring:
    transfer: CommandRun | None
    urgent: list[CommandRun] = attrs.Factory(list)

    def running(self) -> list[CommandRun]:
        return ([self.transfer] if self.transfer is not None else []) + self.urgent

    def finished(self, command: CommandRun) -> None:
        if command is self.transfer:
            self.transfer = None
        elif command in self.urgent:
            self.urgent.remove(command)


def _transferringData(machine: SessionInputs, core: _Session, command: CommandRun) -> _Transferring:
    return _Transferring(command)


transferring = builder.state("transferring", _transferringData)
closing = builder.state("closing")
closed = builder.state("closed")


# -- new ---------------------------------------------------------------------------


@new.upon(SessionInputs.greetWithBackend).to(connecting)
def _greetWithBackend(machine: SessionInputs, core: _Session, candidates: list[Backend]) -> None:
    pass  # connecting's data (the connect) is made on entry


@new.upon(SessionInputs.greetLocally).to(awaitingUser)
def _greetLocally(machine: SessionInputs, core: _Session) -> None:
    core.channel.reply(Reply.single(220, core.services.greeting))


# -- connecting ------------------------------------------------------------------


@connecting.upon(SessionInputs.backendReady).to(idle)
def _backendReady(machine: SessionInputs, core: _Session, d: Deferred[Any], connected: ConnectedBackend) -> None:
    core.adopt(connected)
    core.channel.reply(connected.banner)
    core.takeCommand()


@connecting.upon(SessionInputs.backendReadyForUser).to(busy)
def _backendReadyForUser(
    machine: SessionInputs, core: _Session, d: Deferred[Any], connected: ConnectedBackend, command: CommandRun
) -> None:
    core.adopt(connected)
    core.handlers.routing.backendChosen(command)


@connecting.upon(SessionInputs.backendUnavailable).to(closing)
def _backendUnavailable(machine: SessionInputs, core: _Session, d: Deferred[Any], reply: Reply | None) -> None:
    if reply is None:
        core.log.warn("session {session}: no backend available", session=core.id)
    _close(core, reply or NO_BACKEND)


connecting.upon(SessionInputs.linesAvailable).loop().returns(None)


@connecting.upon(SessionInputs.close).to(closing)
def _closeConnecting(machine: SessionInputs, core: _Session, d: Deferred[Any], code: int | None, text: str) -> None:
    d.cancel()
    _close(core, Reply.single(code, text) if code is not None else None)


@connecting.upon(SessionInputs.clientLost).to(closed)
def _lostConnecting(machine: SessionInputs, core: _Session, d: Deferred[Any]) -> None:
    d.cancel()
    core.ended()


@connecting.upon(SessionInputs.commandFinished).loop()
def _finishedConnecting(machine: SessionInputs, core: _Session, d: Deferred[Any], command: CommandRun) -> None:
    pass  # a command answered while the session changes backend (a held 530)


# -- awaitingUser: the proxy answers until USER chooses the backend ----------------


@awaitingUser.upon(SessionInputs.linesAvailable).loop()
def _linesBeforeBackend(machine: SessionInputs, core: _Session) -> None:
    core.takeCommand()


@awaitingUser.upon(SessionInputs.commandReceived).loop()
def _commandBeforeBackend(machine: SessionInputs, core: _Session, command: CommandRun) -> None:
    core.dispatch(command, BEFORE_BACKEND, relayOthers=False)


@awaitingUser.upon(SessionInputs.commandFinished).loop()
def _finishedBeforeBackend(machine: SessionInputs, core: _Session, command: CommandRun) -> None:
    core.takeCommand()


@awaitingUser.upon(SessionInputs.routeTo).to(connecting)
def _routeFromGreeting(machine: SessionInputs, core: _Session, candidates: list[Backend], command: CommandRun) -> None:
    pass  # connecting's data (the connect) is made on entry


# -- idle: waiting for the client ------------------------------------------------------


@idle.upon(SessionInputs.linesAvailable).loop()
def _linesWhileIdle(machine: SessionInputs, core: _Session, timer: Deadline) -> None:
    core.takeCommand()


@idle.upon(SessionInputs.commandReceived).to(busy)
def _commandReceived(machine: SessionInputs, core: _Session, timer: Deadline, command: CommandRun) -> None:
    timer.pause()
    core.dispatch(command, core.table, relayOthers=True)


@idle.upon(SessionInputs.commandFinished).loop()
def _finishedWhileIdle(machine: SessionInputs, core: _Session, timer: Deadline, command: CommandRun) -> None:
    pass  # an urgent command's reply may come after its transfer's


# -- busy: one command running ---------------------------------------------------------

busy.upon(SessionInputs.linesAvailable).loop().returns(None)


@busy.upon(SessionInputs.commandFinished).to(idle)
def _commandFinished(machine: SessionInputs, core: _Session, running: CommandRun, command: CommandRun) -> None:
    core.takeCommand()


@busy.upon(SessionInputs.transferStarted).to(transferring)
def _transferStarted(machine: SessionInputs, core: _Session, running: CommandRun, command: CommandRun) -> None:
    # ABOR or QUIT may be waiting already (sent with the RETR).
    core.machine.linesAvailable()


@busy.upon(SessionInputs.routeTo).to(connecting)
def _reroute(machine: SessionInputs, core: _Session, running: CommandRun, candidates: list[Backend], command: CommandRun) -> None:
    core.log.info(
        "session {session}: user {user} belongs to another backend; leaving {backend}",
        session=core.id,
        user=core.handlers.login.user,
        backend=core.link.backend.name if core.link is not None else None,
    )
    core.handlers.data.forget()
    core.dropBackend()


@busy.upon(SessionInputs.greetAgain).to(awaitingUser)
def _greetAgain(machine: SessionInputs, core: _Session, running: CommandRun, command: CommandRun) -> None:
    core.dropBackend()
    command.reply(Reply.single(220, core.services.greeting))
    command.finish()


# -- transferring: a transfer runs, ABOR and QUIT are read at once ------------------------


@transferring.upon(SessionInputs.linesAvailable).loop()
def _linesDuringTransfer(machine: SessionInputs, core: _Session, running: _Transferring) -> None:
    command = core.takeUrgentCommand()
    if command is not None:
        running.urgent.append(command)
        core.dispatch(command, core.table, relayOthers=True)


@transferring.upon(SessionInputs.commandFinished).loop()
def _finishedDuringTransfer(machine: SessionInputs, core: _Session, running: _Transferring, command: CommandRun) -> None:
    running.finished(command)
    if not running.running():
        core.machine.settled()


@transferring.upon(SessionInputs.settled).to(idle)
def _settled(machine: SessionInputs, core: _Session, running: _Transferring) -> None:
    core.takeCommand()


# -- the end ------------------------------------------------------------------------------


def _close(core: _Session, reply: Reply | None) -> None:
    if reply is not None:
        core.channel.reply(reply)
    core.tearDown()
    core.channel.close()


def _goneReply(core: _Session, why: str, reply: Reply | None, expected: bool) -> Reply:
    if expected:
        return Reply.single(221, "Goodbye.")
    backend = core.link.backend.name if core.link is not None else None
    core.log.warn("session {session}: backend {backend} {why}", session=core.id, backend=backend, why=why)
    if reply is not None:
        return reply
    if why.startswith("sent a malformed reply"):
        return Reply.single(421, "Service not available, backend sent a malformed reply.")
    if why.startswith("did not answer"):
        return Reply.single(421, "Service not available, backend did not answer.")
    return Reply.single(421, "Service not available, backend closed the connection.")


for _state in (new, awaitingUser):

    @_state.upon(SessionInputs.close).to(closing)
    def _closeWithoutData(machine: SessionInputs, core: _Session, code: int | None, text: str) -> None:
        _close(core, Reply.single(code, text) if code is not None else None)

    @_state.upon(SessionInputs.clientLost).to(closed)
    def _lostWithoutData(machine: SessionInputs, core: _Session) -> None:
        core.ended()


@idle.upon(SessionInputs.close).to(closing)
def _closeIdle(machine: SessionInputs, core: _Session, timer: Deadline, code: int | None, text: str) -> None:
    timer.stop()
    _close(core, Reply.single(code, text) if code is not None else None)


@idle.upon(SessionInputs.backendGone).to(closing)
def _backendGoneIdle(machine: SessionInputs, core: _Session, timer: Deadline, why: str, reply: Reply | None, expected: bool) -> None:
    timer.stop()
    _close(core, _goneReply(core, why, reply, expected))


@idle.upon(SessionInputs.clientLost).to(closed)
def _lostIdle(machine: SessionInputs, core: _Session, timer: Deadline) -> None:
    timer.stop()
    core.ended()


for _state in (busy, transferring):

    @_state.upon(SessionInputs.close).to(closing)
    def _closeRunning(machine: SessionInputs, core: _Session, running: object, code: int | None, text: str) -> None:
        _close(core, Reply.single(code, text) if code is not None else None)

    @_state.upon(SessionInputs.backendGone).to(closing)
    def _backendGoneRunning(
        machine: SessionInputs, core: _Session, running: object, why: str, reply: Reply | None, expected: bool
    ) -> None:
        _close(core, _goneReply(core, why, reply, expected))

    @_state.upon(SessionInputs.clientLost).to(closed)
    def _lostRunning(machine: SessionInputs, core: _Session, running: object) -> None:
        core.ended()


@closing.upon(SessionInputs.clientLost).to(closed)
def _closedAfterClosing(machine: SessionInputs, core: _Session) -> None:
    core.ended()


for _input in (
    SessionInputs.linesAvailable,
    SessionInputs.commandReceived,
    SessionInputs.commandFinished,
    SessionInputs.settled,
    SessionInputs.transferStarted,
    SessionInputs.routeTo,
    SessionInputs.greetAgain,
    SessionInputs.backendReady,
    SessionInputs.backendReadyForUser,
    SessionInputs.backendUnavailable,
    SessionInputs.backendGone,
    SessionInputs.close,
):
    closing.upon(_input).loop().returns(None)
    closed.upon(_input).loop().returns(None)
closed.upon(SessionInputs.clientLost).loop().returns(None)

_Machine = indexTransitions(builder.build())

_BEFORE_BACKEND = frozenset({"new", "connecting", "awaitingUser"})
_HAS_BACKEND = frozenset({"idle", "busy", "transferring"})

#: The (input, states) pairs the table above leaves out, because the input
#: cannot arrive there; a test holds this against the machine.
CANNOT_HAPPEN: dict[str, tuple[frozenset[str], str]] = {
    "greetWithBackend": (frozenset({"connecting", "awaitingUser", "idle", "busy", "transferring", "closing", "closed"}), "given once, first"),
    "greetLocally": (frozenset({"connecting", "awaitingUser", "idle", "busy", "transferring", "closing", "closed"}), "given once, first"),
    "backendReady": (frozenset({"new", "awaitingUser"}) | _HAS_BACKEND, "only the connect in connecting gives it; leaving connecting cancels it"),
    "backendReadyForUser": (frozenset({"new", "awaitingUser"}) | _HAS_BACKEND, "as backendReady"),
    "backendUnavailable": (frozenset({"new", "awaitingUser"}) | _HAS_BACKEND, "as backendReady"),
    "backendGone": (_BEFORE_BACKEND, "no conversation yet; a dropped one reports nothing"),
    "linesAvailable": (frozenset({"new"}), "the session starts before the first byte is read"),
    "commandReceived": (frozenset({"new", "connecting", "busy", "transferring"}), "only taken in awaitingUser and idle"),
    "commandFinished": (frozenset({"new"}), "no command yet"),
    "settled": (frozenset({"new", "connecting", "awaitingUser", "idle", "busy"}), "only given in transferring"),
    "transferStarted": (frozenset({"new", "connecting", "awaitingUser", "idle", "transferring"}), "only a running transfer command gives it"),
    "routeTo": (frozenset({"new", "connecting", "idle", "transferring"}), "only USER gives it, while it runs"),
    "greetAgain": (frozenset({"new", "connecting", "awaitingUser", "idle", "transferring"}), "only REIN gives it, while it runs"),
}


def startSession(
    services: SessionServices, channel: IClientChannel, sessionId: str, implicitTLS: bool
) -> SessionInputs:
    """
    Make the session of a client that has just connected, and start it:
    connect to a backend, or (routing by user) greet the client.
    """
    core = _Session(services, channel, sessionId, implicitTLS)
    machine = core.machine = _Inbox(_Machine(core), core.budget)
    if services.routesByUser or services.connectsAtUser:
        machine.greetLocally()
    else:
        machine.greetWithBackend(services.pool.candidates(channel.clientHost))
    return machine
