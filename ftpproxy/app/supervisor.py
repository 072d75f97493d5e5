"""
The supervisor of worker processes (C{workers} above 1).

One process cannot use more than one core, so the supervisor runs N worker
processes (L{ftpproxy.app.worker}) and keeps for itself what must exist
once per proxy:

  - the listening sockets: for every listener it opens N sockets on the
    same address with C{SO_REUSEPORT} (the kernel spreads new connections
    over them by their addresses), hands socket I to worker I and keeps its
    own copy, so that a worker that dies leaves its socket (and the
    connections waiting on it) to the worker that replaces it;
  - the passive port range, split into N disjoint slices, one per worker,
    so that a data connection can reach only the process that owns its
    session;
  - the admin endpoint: /metrics sums what the workers report (each
    session, transfer and handshake is reported as it happens, so nothing
    is lost when a worker dies), /backends is one view of all workers, and
    drain and enable reach every worker before they answer;
  - active health checks, run once: each result goes to every worker's
    pool, which judges it with C{rise} and C{fall} exactly as one process
    does (passive health, from a worker's own sessions, stays its own);
  - the log and the xferlog: workers send their log events here;
  - reload and stop: SIGHUP reloads here, and the new configuration goes to
    every worker; SIGTERM stops the listeners, gives the workers'
    sessions C{shutdown_grace}, and stops the rest once the last worker
    has exited.

A worker that exits unasked is started again (at once if it ran for a
while, with a growing delay if it keeps dying), with a log event and a
count in C{ftpproxy_worker_restarts_total}.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import attrs
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import ILogObserver, Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from ftpproxy.app.channel import (
    FORMATTED,
    CheckResult,
    Drain,
    Enable,
    Reconfigure,
    Report,
    Start,
)
from ftpproxy.app.service import ProxyService, adminAccessFor, proxyCore, startErrorsAsExit
from ftpproxy.backends.balancer import Backend, BackendPool, policyNamed
from ftpproxy.events import EVENT_FIELD, IProxyEvents
from ftpproxy.ops.admin import makeAdminService
from ftpproxy.ops.metrics import ProxyMetrics
from ftpproxy.settings.commandline import LoadedConfig
from ftpproxy.settings.config import ProxyConfig, listenerMode, listenerTable, workerCount
from ftpproxy.settings.health import HealthSettings
from ftpproxy.settings.values import ListenAddress, listenAddress

#: Log event values (L{EVENT_FIELD}) of a worker's life.
WORKER_STARTED = "worker-started"
WORKER_EXITED = "worker-exited"

#: A worker that ran at least this long is restarted at once when it dies.
STEADY_AFTER = 10.0
#: The longest wait before starting again a worker that keeps dying.
MAX_RESTART_DELAY = 30.0
#: Seconds after C{shutdown_grace} that stopping workers get before SIGKILL.
KILL_AFTER_GRACE = 10.0

#: The calls a worker's report may name (L{IProxyEvents}); nothing else.
_EVENT_CALLS = frozenset(IProxyEvents.names())

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

log = Logger(namespace="ftpproxy.app.supervisor")


# -- what each worker gets -------------------------------------------------------


def share(total: int, index: int, count: int) -> int:
    """
    Worker C{index}'s share of a limit of C{total} (0: no limit): the
    shares add up to the total, and none is below 1.
    """
    if total == 0:
        return 0
    base, extra = divmod(total, count)
    return max(1, base + (1 if index < extra else 0))


def workerConfig(config: ProxyConfig, index: int, count: int) -> ProxyConfig:
    """
    What worker C{index} of C{count} runs: C{config} (as sessions get it,
    demo backends included) with its own slice of the passive ports and of
    C{max_sessions}, and without what the supervisor does for all (admin
    endpoint, xferlog, demo backends, and adding the TLS rig's listeners,
    which C{config} already has).
    """
    return attrs.evolve(
        config,
        passivePorts=config.passivePorts.split(count)[index],
        maxSessions=share(config.maxSessions, index, count),
        workers=1,
        admin=None,
        xferlog=None,
        demo=False,
        tlsRig=False,
    )


# -- listening sockets -------------------------------------------------------------


@attrs.frozen
class SharedListener:
    """
    One listener's sockets: one per worker, all on one address.

    @ivar implicit: implicit FTPS (C{implicit_tls_listen}).
    @ivar name: the listener's name (its C{[[listener]]} name, or its
        endpoint), by which workers find its settings.
    """

    description: str
    address: ListenAddress
    implicit: bool
    sockets: tuple[socket.socket, ...]
    name: str = ""

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def openShared(description: str, implicit: bool, count: int, name: str = "") -> SharedListener:
    """
    Open C{count} listening sockets for C{description} in one
    C{SO_REUSEPORT} group.

    The port is first bound without C{SO_REUSEPORT}, so that a port another
    process listens on is refused as it is without workers, rather than
    joined.

    @raise CannotListenError: when the address cannot be listened on.
    """
    address = listenAddress(description)
    family = socket.AF_INET6 if address.ipv6 else socket.AF_INET
    host = address.host or ("::" if address.ipv6 else "0.0.0.0")
    port = address.port
    opened: list[socket.socket] = []
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
        opened.append(probe)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
        probe.close()
        opened.clear()
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            opened.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(address.backlog)
            s.setblocking(False)
    except OSError as e:
        for s in opened:
            s.close()
        raise CannotListenError(address.host, port, e) from None
    return SharedListener(description, address, implicit, tuple(opened), name or description)


# -- one worker ----------------------------------------------------------------------


class WorkerState(enum.Enum):
    """
    Where a worker slot is in its life.
    """

    IDLE = "idle"  # not started yet
    STARTING = "starting"  # process running, Start not answered yet
    RUNNING = "running"
    WAITING = "waiting"  # exited; started again after a delay
    STOPPING = "stopping"  # SIGTERM sent
    STOPPED = "stopped"


class SupervisorChannel(amp.AMP):
    """
    The supervisor's end of one worker's channel: takes its reports.
    """

    def __init__(self, slot: WorkerSlot) -> None:
        super().__init__()
        self._slot = slot

    @Report.responder
    def report(self, lines: bytes) -> dict:
        self._slot.reported(lines)
        return {}


class WorkerProcess(ProcessProtocol):
    """
    A worker's process: what it prints is logged, its end is reported.
    """

    def __init__(self, slot: WorkerSlot) -> None:
        self._slot = slot
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._partial[childFD] = (self._partial.get(childFD, b"") + data).split(b"\n")
        for line in lines:
            self._slot.printed(line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self._slot.printed(rest.decode("utf-8", "replace"))
        self._slot.exited(self, reason)


@attrs.define(eq=False)
class WorkerSlot:
    """
    Worker number C{index}: the process in it now, and what it has done
    since the supervisor started (over every process that held the slot).

    @ivar state: a L{WorkerState}; the one owner of the slot's life.
    @ivar active: the current process's running sessions, by backend.
    @ivar down: backends the current process holds down (passive health).
    @ivar sessions: sessions started in this slot, all processes counted.
    @ivar restarts: processes started again after one exited unasked.
    @ivar failedStarts: processes in a row that exited soon after start.
    """

    index: int
    workers: Workers
    state: WorkerState = WorkerState.IDLE
    process: Any = None
    protocol: WorkerProcess | None = None
    channel: SupervisorChannel | None = None
    pid: int | None = None
    startedAt: float = 0.0
    active: Counter = attrs.Factory(Counter)
    down: set = attrs.Factory(set)
    sessions: int = 0
    restarts: int = 0
    failedStarts: int = 0
    timer: Any = None

    # -- what the worker says ----------------------------------------------------

    def reported(self, lines: bytes) -> None:
        for line in lines.split(b"\n"):
            if not line:
                continue
            try:
                if line.startswith(b"["):
                    method, arguments = json.loads(line)
                    self._event(method, arguments)
                else:
                    self._log(line.decode("utf-8"))
            except Exception as e:  # a bad line costs that line only
                log.warn(
                    "worker {index}: unreadable report line ({error}): {line!r}",
                    index=self.index,
                    error=str(e),
                    line=line[:200],
                )

    def _event(self, method: str, arguments: list) -> None:
        if method not in _EVENT_CALLS:
            raise ValueError(f"unknown call {method!r}")
        counters = self.workers.counters
        if method == "backendState":
            name, up = arguments
            (self.down.discard if up else self.down.add)(str(name))
            return
        if method == "sessionStarted":
            self.active[arguments[0]] += 1
            self.sessions += 1
        elif method == "sessionEnded":
            self.active[arguments[0]] -= 1
        getattr(counters, method)(*arguments)

    def _log(self, text: str) -> None:
        event = json.loads(text)
        if FORMATTED in event:
            event["log_level"] = LogLevel.levelWithName(event.get("log_level", "info"))
            event["log_format"] = "{" + FORMATTED + "}"
        else:
            event = eventFromJSON(text)
        system = event.get("log_system")
        name = f"worker-{self.index}"
        event["log_system"] = name if system in (None, "-") else f"{name},{system}"
        event["worker"] = self.index
        self.workers.publish(event)

    def printed(self, line: str) -> None:
        if line.strip():
            log.warn("worker {index} printed: {line}", index=self.index, line=line)

    # -- its life --------------------------------------------------------------------

    def start(self) -> None:
        workers = self.workers
        self.timer = None
        self.active = Counter()
        self.down = set()
        self.protocol = WorkerProcess(self)
        self.channel = SupervisorChannel(self)
        self.process, self.pid = workers.spawn(self)
        self.startedAt = workers.reactor.seconds()
        self.state = WorkerState.STARTING
        listeners, fd = [], 4
        for shared in workers.listeners:
            listeners.append(
                {
                    "fd": fd,
                    "ipv6": shared.address.ipv6,
                    "implicit": shared.implicit,
                    "description": shared.description,
                    "name": shared.name,
                }
            )
            fd += 1
        starting = self.channel.callRemote(
            Start,
            index=self.index,
            count=len(workers.slots),
            config=workers.configFor(self.index),
            listeners=listeners,
            down=workers.downInChecks(),
            draining=workers.draining(),
        )
        starting.addCallbacks(
            self._started,
            self._notStarted,
            callbackArgs=(self.process,),
            errbackArgs=(self.process,),
        )

    def _started(self, _: object, process: Any) -> None:
        if process is not self.process or self.state is not WorkerState.STARTING:
            return
        self.state = WorkerState.RUNNING
        log.info(
            "worker {index} started (pid {pid})",
            index=self.index,
            pid=self.pid,
            **{EVENT_FIELD: WORKER_STARTED},
        )

    def _notStarted(self, reason: Failure, process: Any) -> None:
        if process is self.process and self.state is WorkerState.STARTING:
            log.error(
                "worker {index} (pid {pid}) could not start: {why}",
                index=self.index,
                pid=self.pid,
                why=reason.getErrorMessage(),
            )
            self.kill()

    def exited(self, protocol: WorkerProcess, reason: Failure) -> None:
        if protocol is not self.protocol:
            return
        workers = self.workers
        for backend, count in self.active.items():
            for _ in range(count):
                workers.counters.sessionEnded(backend)
        self.active = Counter()
        self.down = set()
        self.process = self.protocol = None
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()
        self.channel = None
        status = _exitStatus(reason)
        if self.state in (WorkerState.STOPPING, WorkerState.STOPPED):
            self.state = WorkerState.STOPPED
            log.info("worker {index} (pid {pid}) {status}", index=self.index, pid=self.pid,
                     status=status)
            workers.slotStopped(self)
            return
        ran = workers.reactor.seconds() - self.startedAt
        self.failedStarts = 0 if ran >= STEADY_AFTER else self.failedStarts + 1
        delay = 0.0 if self.failedStarts == 0 else min(MAX_RESTART_DELAY, 2.0 ** (self.failedStarts - 1))
        self.restarts += 1
        self.state = WorkerState.WAITING
        log.warn(
            "worker {index} (pid {pid}) {status} after {ran:.1f}s; starting it again in {delay:g}s",
            index=self.index,
            pid=self.pid,
            status=status,
            ran=ran,
            delay=delay,
            **{EVENT_FIELD: WORKER_EXITED},
        )
        self.timer = workers.reactor.callLater(delay, self.start)

    def stop(self) -> None:
        """
        SIGTERM the worker (it stops as one process does), or give up
        starting one.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.state in (WorkerState.STARTING, WorkerState.RUNNING):
            self.state = WorkerState.STOPPING
            self._signal("TERM")
        elif self.state is not WorkerState.STOPPING:
            self.state = WorkerState.STOPPED
            self.workers.slotStopped(self)

    def kill(self) -> None:
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        if self.process is not None:
            try:
                self.process.signalProcess(name)
            except Exception:  # it has just gone: processEnded follows
                pass

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """
        Send C{command} to the worker if it is running or starting (AMP
        keeps the order: a starting worker gets it right after its Start);
        fires with the answer, or with L{None} if the worker is not there
        to answer.
        """
        if self.state not in (WorkerState.STARTING, WorkerState.RUNNING) or self.channel is None:
            return defer.succeed(None)
        sent = self.channel.callRemote(command, **arguments)
        if command.requiresAnswer:
            return sent.addErrback(lambda _: None)
        return defer.succeed(None)


def _exitStatus(reason: Failure) -> str:
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


# -- all workers ---------------------------------------------------------------------


def spawnWorker(slot: WorkerSlot) -> tuple[Any, int]:
    """
    Start slot's worker process with the channel on descriptor 3 and the
    slot's listening sockets from descriptor 4 on; connect the channel.
    """
    workers = slot.workers
    reactor = workers.reactor
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
    for offset, shared in enumerate(workers.listeners):
        childFDs[4 + offset] = shared.sockets[slot.index].fileno()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    try:
        process = reactor.spawnProcess(
            slot.protocol,
            sys.executable,
            [
                sys.executable,
                "-c",
                "from ftpproxy.app.worker import main; main()",
                "--channel",
                "3",
            ],
            env=env,
            childFDs=childFDs,
        )
    finally:
        theirs.close()
    try:
        reactor.adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: slot.channel)
        )
    finally:
        ours.close()
    return process, process.pid


class RelayingPool(BackendPool):
    """
    The supervisor's backend pool: its own health checks judge it, and
    each result goes on to every worker.

    @ivar relay: called with (name, ok, why) for each check result.
    """

    relay: Callable[[str, bool, str], None] | None = None

    def reportCheck(self, backend: Backend, ok: bool, why: str = "") -> None:
        super().reportCheck(backend, ok, why)
        if self.relay is not None and self._current(backend):
            self.relay(backend.name, ok, why)


class Workers(Service):
    """
    The worker processes, their listening sockets and their channels.

    @ivar counters: the sum of every worker's reports (the admin endpoint's
        /metrics).
    @ivar listeners: the shared listeners, once bound.
    @ivar slots: one per worker.
    """

    def __init__(
        self,
        reactor: Any,
        core: ProxyService,
        count: int,
        spawn: Callable[[WorkerSlot], tuple[Any, int]] = spawnWorker,
        publish: ILogObserver = globalLogPublisher,
    ) -> None:
        self.reactor = reactor
        self.core = core
        self.counters: ProxyMetrics = core.factory.metrics
        self.spawn = spawn
        self.publish = publish
        self.listeners: list[SharedListener] = []
        self.slots = [WorkerSlot(index, self) for index in range(count)]
        self._allStopped: Deferred[None] | None = None
        self._killTimer = None
        core.reloaded.append(self.reconfigure)
        pool = core.factory.pool
        if isinstance(pool, RelayingPool):
            pool.relay = self.relayCheck

    # -- what workers are given --------------------------------------------------

    def configFor(self, index: int) -> ProxyConfig:
        # The pool's backends: the configured ones and the demo's.
        pool = self.core.factory.pool
        config = attrs.evolve(
            self.core.factory.config, backends=tuple(b.config for b in pool.backends)
        )
        return workerConfig(config, index, len(self.slots))

    def downInChecks(self) -> list[str]:
        pool = self.core.factory.pool
        if not pool.activeChecks:
            return []
        return [b.name for b in pool.backends if not b.healthy]

    def draining(self) -> list[str]:
        return [b.name for b in self.core.factory.pool.backends if b.draining]

    # -- life ----------------------------------------------------------------------

    def bind(self) -> None:
        """
        Open the shared listening sockets (before privileges are dropped).
        """
        if self.listeners:
            return
        config = self.core.config
        try:
            for listener in listenerTable(config):
                implicit = listenerMode(listener, config) == "implicit"
                self.listeners.append(
                    openShared(listener.endpoint, implicit, len(self.slots), listener.label)
                )
        except BaseException:
            self._closeListeners()
            raise

    def _closeListeners(self) -> None:
        listeners, self.listeners = self.listeners, []
        for shared in listeners:
            shared.close()

    def startService(self) -> None:
        super().startService()
        self.bind()
        for slot in self.slots:
            slot.start()

    def stopService(self) -> Deferred[None]:
        """
        Close the supervisor's copies of the listening sockets, SIGTERM every
        worker, and fire once all have exited (SIGKILL for those still there
        C{shutdown_grace} plus L{KILL_AFTER_GRACE} seconds later).
        """
        super().stopService()
        self._closeListeners()
        self._allStopped = Deferred()
        deadline = self.core.config.shutdownGrace + KILL_AFTER_GRACE
        self._killTimer = self.reactor.callLater(deadline, self._killAll)
        for slot in self.slots:
            slot.stop()
        self.slotStopped(None)
        return self._allStopped

    def slotStopped(self, slot: WorkerSlot | None) -> None:
        if self._allStopped is None or self._allStopped.called:
            return
        if all(s.state is WorkerState.STOPPED for s in self.slots):
            if self._killTimer is not None and self._killTimer.active():
                self._killTimer.cancel()
            self._allStopped.callback(None)

    def _killAll(self) -> None:
        for slot in self.slots:
            if slot.state is WorkerState.STOPPING:
                log.warn("worker {index} still running: killed", index=slot.index)
                slot.kill()

    # -- telling every worker ------------------------------------------------------

    def broadcast(self, command: type[amp.Command], **arguments: Any) -> Deferred[list]:
        """
        Send C{command} to every running worker; fires with their answers
        once all have answered (L{None} for a worker that could not).
        """
        calls = [slot.call(command, **arguments) for slot in self.slots]
        return defer.gatherResults(calls)

    def reconfigure(self) -> None:
        """
        Hand every running worker its share of the configuration just
        reloaded.
        """
        for slot in self.slots:
            slot.call(Reconfigure, config=self.configFor(slot.index))

    def relayCheck(self, name: str, ok: bool, why: str) -> None:
        self.broadcast(CheckResult, name=name, ok=ok, why=why)


# -- the admin endpoint's view -----------------------------------------------------------


@attrs.frozen
class BackendView:
    """
    One backend as all workers together see it.
    """

    name: str
    config: Any
    weight: int
    state: str
    healthy: bool
    activeSessions: int
    totalSessions: int


class ClusterBackends:
    """
    The backends of all workers, for the admin endpoint (an
    L{ftpproxy.ops.admin.IAdminPool}): drained in the supervisor's pool and
    in every worker; down when the supervisor's checks or any running worker
    hold them down; sessions counted over all workers.
    """

    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    @property
    def _pool(self) -> BackendPool:
        return self._workers.core.factory.pool

    @property
    def backends(self) -> list[BackendView]:
        counters = self._workers.counters
        downInWorkers = set().union(
            *(s.down for s in self._workers.slots if s.state is WorkerState.RUNNING)
        )
        views = []
        for backend in self._pool.backends:
            healthy = backend.healthy and backend.name not in downInWorkers
            state = "draining" if backend.draining else ("up" if healthy else "down")
            views.append(
                BackendView(
                    name=backend.name,
                    config=backend.config,
                    weight=backend.weight,
                    state=state,
                    healthy=healthy,
                    activeSessions=counters.sessionsActive[backend.name],
                    totalSessions=counters.sessionsTotal[backend.name],
                )
            )
        return views

    def drain(self, name: str) -> bool | Deferred[bool]:
        if not self._pool.drain(name):
            return False
        return self._workers.broadcast(Drain, name=name).addCallback(lambda _: True)

    def enable(self, name: str) -> bool | Deferred[bool]:
        if not self._pool.enable(name):
            return False
        return self._workers.broadcast(Enable, name=name).addCallback(lambda _: True)


class WorkersCollector(Collector):
    """
    The workers' own metrics: how many run, and per worker its restarts
    and sessions.
    """

    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        slots = self._workers.slots
        running = GaugeMetricFamily(
            "ftpproxy_workers", "Worker processes running.", value=sum(
                1 for s in slots if s.state is WorkerState.RUNNING
            )
        )
        restarts = CounterMetricFamily(
            "ftpproxy_worker_restarts_total",
            "Worker processes started again after one exited unasked.",
            labels=("worker",),
        )
        sessions = CounterMetricFamily(
            "ftpproxy_worker_sessions_total",
            "Client sessions each worker gave a backend since start.",
            labels=("worker",),
        )
        active = GaugeMetricFamily(
            "ftpproxy_worker_sessions_active",
            "Client sessions each worker runs now.",
            labels=("worker",),
        )
        for slot in slots:
            label = [str(slot.index)]
            restarts.add_metric(label, slot.restarts)
            sessions.add_metric(label, slot.sessions)
            active.add_metric(label, sum(slot.active.values()))
        return iter([running, restarts, sessions, active])

    def describe(self) -> Iterator[Metric]:
        return self.collect()


# -- the whole --------------------------------------------------------------------


class SupervisorService(Service):
    """
    The proxy as a supervisor and its workers: what C{twistd ftpproxy}
    runs when C{workers} is above 1.

    @ivar core: the supervisor's own L{ProxyService} (no listener, no
        session): pool and health checks, xferlog, admin endpoint, demo
        backends, reload.
    @ivar workers: the worker processes.
    """

    # A twisted.logger observer that replaces twistd's own (--log-format json).
    logObserver = None

    def __init__(self, core: ProxyService, workers: Workers) -> None:
        self.core = core
        self.workers = workers

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.logObserver)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        with startErrorsAsExit():
            self.workers.bind()
        self.core.privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.core.startService()
        self.workers.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop the workers (each as one process stops), then the rest.
        """
        super().stopService()
        stopping = self.workers.stopService()
        stopping.addBoth(lambda _: self.core.stopService())
        return stopping


def makeSupervisor(
    config: ProxyConfig,
    reactor: Any = None,
    reloadConfig: Callable[[], ProxyConfig | LoadedConfig] | None = None,
    count: int | None = None,
) -> SupervisorService:
    """
    The supervisor of C{workerCount(config)} worker processes (or C{count}).
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    if count is None:
        count = workerCount(config)
    health = config.health or HealthSettings(kind="none")
    pool = RelayingPool(
        config.backends,
        policyNamed(config.policy, **config.policyOptions),
        reactor=reactor,
        health=health,
    )
    core = proxyCore(config, reactor, reloadConfig, pool=pool)
    workers = Workers(reactor, core, count)
    if config.admin:
        view = ClusterBackends(workers)
        admin = core.admin = makeAdminService(
            reactor,
            config.admin,
            SimpleNamespace(metrics=workers.counters),
            view,
            adminAccessFor(config, log),
        )
        admin.site.resource.registry.register(WorkersCollector(workers))
        admin.setServiceParent(core)
    return SupervisorService(core, workers)
