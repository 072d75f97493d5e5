"""
The supervisor of worker processes and the worker's side of the channel,
in memory: the AMP arguments, what each worker is given, how reports are
batched, counted and logged, what a worker's death does to the counters,
when a worker is started again, the admin endpoint's one view of all
workers, and a whole supervisor-to-worker conversation over a fake
connection (no process, no socket but the listening ones of one test).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.test import iosim
from zope.interface.verify import verifyObject

from ftpproxy.app.channel import FORMATTED, BigBytes, JSON, Pickled, eventLine
from ftpproxy.app.service import proxyCore
from ftpproxy.app.supervisor import (
    MAX_RESTART_DELAY,
    STEADY_AFTER,
    ClusterBackends,
    RelayingPool,
    Workers,
    WorkerState,
    openShared,
    share,
    workerConfig,
)
from ftpproxy.app.worker import (
    REPORT_INTERVAL,
    ForwardedEvents,
    LogForwarder,
    ReportQueue,
    WorkerChannel,
    forwardedLogLine,
)
from ftpproxy.backends.balancer import policyNamed
from ftpproxy.events import IProxyEvents
from ftpproxy.settings.config import BackendConfig, HostPort, PortRange, ProxyConfig
from ftpproxy.settings.health import HealthSettings

ALPHA = BackendConfig(HostPort("127.0.0.2", 21), name="alpha")
BETA = BackendConfig(HostPort("127.0.0.3", 21), name="beta")


def config(**changes: Any) -> ProxyConfig:
    values: dict[str, Any] = dict(
        backends=(ALPHA, BETA),
        listen=("tcp:2121:interface=127.0.0.1",),
        passivePorts=PortRange(30000, 30009),
        workers=2,
    )
    values.update(changes)
    return ProxyConfig(**values)


# -- the channel's arguments ------------------------------------------------------


@pytest.mark.parametrize(
    "argument, value",
    [
        (BigBytes(), b""),
        (BigBytes(), b"x" * 200_000),
        (JSON(), {"fd": 4, "text": "é" * 70_000}),
        (Pickled(), config()),
    ],
)
def test_bigArgumentsRoundTrip(argument: amp.Argument, value: Any) -> None:
    """
    Values of any size go through an AMP box, spread over keys of at most
    64 KiB each.
    """
    box = amp.AmpBox()
    argument.toBox(b"value", box, {"value": value}, None)
    assert all(len(v) <= 0xFFFF for v in box.values())
    parsed: dict = {}
    argument.fromBox(b"value", dict(box), parsed, None)
    assert parsed["value"] == value


def test_bigBoxSerializes() -> None:
    """
    A box with a 200 kB value serializes (AMP refuses values over 64 KiB).
    """
    box = amp.AmpBox()
    BigBytes().toBox(b"lines", box, {"lines": b"y" * 200_000}, None)
    assert len(box.serialize()) > 200_000
    assert len(box) == 4


# -- what each worker gets -----------------------------------------------------------


def test_share() -> None:
    assert [share(0, i, 3) for i in range(3)] == [0, 0, 0]
    assert [share(10, i, 3) for i in range(3)] == [4, 3, 3]
    assert [share(1, i, 2) for i in range(2)] == [1, 1]


def test_workerConfig() -> None:
    base = config(maxSessions=9, admin="tcp:0", xferlog="/tmp/xferlog")
    first, second = (workerConfig(base, i, 2) for i in range(2))
    assert (first.passivePorts, second.passivePorts) == (
        PortRange(30000, 30004),
        PortRange(30005, 30009),
    )
    assert (first.maxSessions, second.maxSessions) == (5, 4)
    for one in (first, second):
        assert (one.workers, one.admin, one.xferlog, one.demo) == (1, None, None, False)
        assert one.backends == base.backends and one.listen == base.listen


# -- the worker's side ----------------------------------------------------------------


def test_reportsAreBatched() -> None:
    clock = Clock()
    sent: list[list[str]] = []
    queue = ReportQueue(clock)
    queue.add("early")
    clock.advance(0)
    assert sent == []  # nowhere to send yet: kept
    queue.send = sent.append
    events = ForwardedEvents(queue)
    verifyObject(IProxyEvents, events)
    events.sessionStarted("alpha")
    events.transferFinished("alpha", "RETR", "download", 226, 10, 0.5)
    assert sent == []
    clock.advance(0)
    assert sent == [
        [
            "early",
            eventLine("sessionStarted", ("alpha",)),
            eventLine("transferFinished", ("alpha", "RETR", "download", 226, 10, 0.5)),
        ]
    ]
    clock.advance(1)
    assert len(sent) == 1
    # A busy worker: the next report waits until REPORT_INTERVAL has passed
    # since the last one.
    events.sessionEnded("alpha")
    clock.advance(0)
    assert len(sent) == 2
    events.sessionStarted("beta")
    events.sessionEnded("beta")
    clock.advance(0)
    assert len(sent) == 2
    clock.advance(REPORT_INTERVAL)
    assert len(sent) == 3 and len(sent[2]) == 2


def test_logForwarderSendsJSON() -> None:
    """
    A log event goes as its formatted message and its plain fields; one
    with a failure goes whole, traceback included.
    """
    lines: list[str] = []
    queue = ReportQueue(Clock())
    queue.send = lines.extend
    forward = LogForwarder(queue)
    forward({"log_format": "hello {who}", "who": "you", "other": object(), "bytes": 12,
             "log_level": LogLevel.warn, "log_namespace": "here"})
    try:
        1 / 0
    except ZeroDivisionError:
        forward({"log_format": "oops", "log_failure": Failure(), "log_level": LogLevel.error})
    queue.flush()
    plain, failed = (json.loads(line) for line in lines)
    assert plain == {
        "log_format": "hello {who}", "who": "you", "bytes": 12, "log_namespace": "here",
        "log_level": "warn", FORMATTED: "hello you",
    }
    assert "ZeroDivisionError" in eventFromJSON(lines[1])["log_failure"].getTraceback()
    assert FORMATTED not in failed


# -- reports in the supervisor ----------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


@attrs.define
class Harness:
    """
    A supervisor's workers on a memory reactor, with processes that are
    fakes and channels that connect to nothing (or to in-memory workers).
    """

    reactor: MemoryReactorClock
    workers: Workers
    published: list[dict]
    processes: list[FakeProcess]
    pumps: list[iosim.IOPump] = attrs.Factory(list)
    workerChannels: list[WorkerChannel] = attrs.Factory(list)

    def slot(self, index: int):
        return self.workers.slots[index]

    def report(self, index: int, *lines: str) -> None:
        self.slot(index).reported("\n".join(lines).encode())

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def die(self, index: int, signal: int | None = 9) -> None:
        slot = self.slot(index)
        reason = ProcessTerminated(signal=signal) if signal else ProcessDone(0)
        slot.exited(slot.protocol, Failure(reason))


def makeHarness(connectWorkers: bool = False, **changes: Any) -> Harness:
    reactor = MemoryReactorClock()
    pool = RelayingPool(
        (ALPHA, BETA), policyNamed("round-robin"), reactor=reactor, health=HealthSettings()
    )
    core = proxyCore(config(**changes), reactor, pool=pool)
    published: list[dict] = []
    processes: list[FakeProcess] = []
    harness: Harness

    def spawn(slot):
        process = FakeProcess(1000 + len(processes))
        processes.append(process)
        if connectWorkers:
            worker = WorkerChannel(reactor, ReportQueue(reactor), onLost=lambda: None)
            harness.workerChannels.append(worker)
            harness.pumps.append(
                iosim.connect(
                    worker,
                    iosim.FakeTransport(worker, True),
                    slot.channel,
                    iosim.FakeTransport(slot.channel, False),
                )
            )
        else:
            slot.channel.makeConnection(StringTransport())
        return process, process.pid

    workers = Workers(reactor, core, 2, spawn=spawn, publish=published.append)
    # No listening sockets: the workers here live in this process.
    workers.bind = lambda: None  # type: ignore[method-assign]
    harness = Harness(reactor, workers, published, processes)
    return harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    harness = makeHarness()
    harness.workers.core.startService()
    harness.workers.startService()
    yield harness
    for slot in harness.workers.slots:
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()


def test_reportsAreCountedOnce(harness: Harness) -> None:
    counters = harness.workers.counters
    harness.report(0, eventLine("sessionStarted", ("alpha",)), eventLine("tlsHandshake", ("client", "TLSv1.3")))
    harness.report(1, eventLine("sessionStarted", ("alpha",)), eventLine("sessionEnded", ("alpha",)))
    harness.report(1, eventLine("transferFinished", ("alpha", "RETR", "download", 226, 7, 0.1)))
    assert counters.sessionsTotal["alpha"] == 2
    assert counters.sessionsActive["alpha"] == 1
    assert counters.bytesTotal[("alpha", "download")] == 7
    assert counters.tlsHandshakes[("client", "TLSv1.3")] == 1
    assert [harness.slot(i).sessions for i in (0, 1)] == [1, 1]


def test_hostileClientsAreCounted(harness: Harness) -> None:
    """
    Clients a worker closes for floods, or refuses by a limit, are counted
    in the supervisor's /metrics with the others'.
    """
    queue = ReportQueue(harness.reactor)
    lines: list[str] = []
    queue.send = lines.extend
    events = ForwardedEvents(queue)
    events.clientClosed("invalid-commands")
    events.clientRefused("prelogin-per-client")
    harness.reactor.advance(0)
    harness.report(0, *lines)
    harness.report(1, eventLine("clientClosed", ("invalid-commands",)))
    counters = harness.workers.counters
    assert counters.clientsClosed == {"invalid-commands": 2}
    assert counters.clientsRefused == {"prelogin-per-client": 1}


def test_unknownCallsAndBadLinesAreRefused(harness: Harness) -> None:
    """
    A worker's report names only IProxyEvents calls: anything else (or a
    line that is not JSON) is logged and dropped, the rest still counts.
    """
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        harness.report(
            0,
            '["__init__", []]',
            "[not json",
            eventLine("sessionStarted", ("beta",)),
        )
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert harness.workers.counters.sessionsTotal["beta"] == 1
    assert sum("unreadable report line" in e.get("log_format", "") for e in seen) == 2


def test_logEventsArePublishedWithTheWorker(harness: Harness) -> None:
    harness.report(
        1,
        forwardedLogLine({"log_format": "session {s} {{x}}", "s": "ab", "log_system": "-",
                          "log_level": LogLevel.info}),
        eventAsJSON({"log_format": "whole {s}", "s": "cd", "log_system": "Proto,3"}),
    )
    plain, whole = harness.published
    assert (plain["log_system"], plain["worker"], plain["s"]) == ("worker-1", 1, "ab")
    assert formatEvent(plain) == "session ab {x}"
    assert plain["log_level"] is LogLevel.info
    assert (whole["log_system"], formatEvent(whole)) == ("worker-1,Proto,3", "whole cd")


def test_deadWorkersSessionsAreNoLongerActive(harness: Harness) -> None:
    counters = harness.workers.counters
    harness.report(0, *[eventLine("sessionStarted", ("alpha",))] * 3)
    harness.report(1, eventLine("sessionStarted", ("alpha",)))
    harness.report(0, eventLine("backendState", ("beta", False)))
    harness.die(0)
    assert counters.sessionsActive["alpha"] == 1
    assert counters.sessionsTotal["alpha"] == 4  # nothing lost
    assert harness.slot(0).down == set()
    assert harness.slot(0).sessions == 3
    assert harness.slot(0).restarts == 1


def test_restartDelays(harness: Harness) -> None:
    """
    A worker that dies soon after it started is started again after 1, 2,
    4, ... seconds (at most MAX_RESTART_DELAY); one that ran for a while at
    once.
    """
    slot = harness.slot(0)
    delays = []
    for _ in range(8):
        harness.die(0)
        assert slot.state is WorkerState.WAITING
        delays.append(slot.timer.getTime() - harness.reactor.seconds())
        harness.reactor.advance(delays[-1])
        assert slot.state is WorkerState.STARTING
    assert delays == [1, 2, 4, 8, 16, MAX_RESTART_DELAY, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    harness.reactor.advance(STEADY_AFTER)
    harness.die(0)
    assert slot.timer.getTime() == harness.reactor.seconds()
    assert len(harness.processes) == 2 + 8
    assert slot.restarts == 9


def test_stopSignalsEveryWorkerAndWaits(harness: Harness) -> None:
    stopped = harness.workers.stopService()
    assert [p.signals for p in harness.processes] == [["TERM"], ["TERM"]]
    assert not stopped.called
    harness.die(0, signal=None)
    assert not stopped.called
    harness.die(1, signal=None)
    assert stopped.called
    assert [s.state for s in harness.workers.slots] == [WorkerState.STOPPED] * 2
    assert len(harness.processes) == 2  # no restart while stopping


def test_stopKillsWorkersThatOutstayTheGrace(harness: Harness) -> None:
    stopped = harness.workers.stopService()
    harness.die(0, signal=None)
    harness.reactor.advance(harness.workers.core.config.shutdownGrace + 10)
    assert harness.processes[1].signals == ["TERM", "KILL"]
    harness.die(1)
    assert stopped.called


# -- one view for the admin endpoint ---------------------------------------------------------


def test_clusterView(harness: Harness) -> None:
    view = ClusterBackends(harness.workers)
    for slot in harness.workers.slots:
        slot.state = WorkerState.RUNNING
    harness.report(0, eventLine("sessionStarted", ("alpha",)))
    harness.report(1, eventLine("sessionStarted", ("alpha",)), eventLine("backendState", ("beta", False)))
    alpha, beta = view.backends
    assert (alpha.state, alpha.activeSessions, alpha.totalSessions) == ("up", 2, 2)
    assert (beta.state, beta.healthy) == ("down", False)
    harness.die(1)
    alpha, beta = view.backends
    assert (alpha.activeSessions, alpha.totalSessions, beta.state) == (1, 2, "up")


# -- the whole conversation, in memory ------------------------------------------------------------


def test_conversation() -> None:
    """
    The supervisor starts two in-memory workers; drain reaches both before
    it answers, a reload hands each its share, health check results reach
    both pools, and what the workers report is counted.
    """
    harness = makeHarness(connectWorkers=True, health=HealthSettings(kind="banner", fall=1, rise=1))
    workers = harness.workers
    workers.core.startService()
    workers.startService()
    # A drain while the workers start reaches them right after their Start.
    early = ClusterBackends(workers).drain("alpha")
    assert [s.state for s in workers.slots] == [WorkerState.STARTING] * 2
    harness.flush()
    assert early.result is True
    assert [w.service.factory.pool.backendNamed("alpha").draining for w in harness.workerChannels] == [True, True]
    enabled = ClusterBackends(workers).enable("alpha")
    harness.flush()
    assert enabled.result is True
    assert [s.state for s in workers.slots] == [WorkerState.RUNNING] * 2
    pools = [w.service.factory.pool for w in harness.workerChannels]
    assert [w.service.factory.config.passivePorts for w in harness.workerChannels] == [
        PortRange(30000, 30004),
        PortRange(30005, 30009),
    ]
    assert all(p.activeChecks for p in pools)

    answered = ClusterBackends(workers).drain("beta")
    assert not answered.called
    harness.flush()
    assert answered.result is True
    assert [p.backendNamed("beta").draining for p in pools] == [True, True]
    assert ClusterBackends(workers).drain("nonesuch") is False

    workers.core.factory.pool.reportCheck(workers.core.factory.pool.backendNamed("alpha"), False, "no banner")
    harness.flush()
    assert [p.backendNamed("alpha").healthy for p in pools] == [False, False]

    workers.core.applyConfig(attrs.evolve(workers.core.config, passivePorts=PortRange(40000, 40003)))
    harness.flush()
    assert [w.service.factory.config.passivePorts for w in harness.workerChannels] == [
        PortRange(40000, 40001),
        PortRange(40002, 40003),
    ]

    harness.workerChannels[1].service.factory.metrics.sessionStarted("beta")
    harness.reactor.advance(0)
    harness.flush()
    assert workers.counters.sessionsTotal["beta"] == 1
    assert workers.slots[1].sessions == 1

    # A worker started later learns what the supervisor knows.
    harness.die(0)
    harness.reactor.advance(1)
    harness.flush()
    late = harness.workerChannels[-1].service.factory.pool
    assert (late.backendNamed("beta").draining, late.backendNamed("alpha").healthy) == (True, False)
    for channel in harness.workerChannels:
        channel.service.stopService()


# -- listening sockets ------------------------------------------------------------------------------


def test_openShared() -> None:
    shared = openShared("tcp:0:interface=127.0.0.1", False, 3)
    try:
        ports = {s.getsockname() for s in shared.sockets}
        assert len(shared.sockets) == 3 and len(ports) == 1
        [(host, port)] = ports
        connection = socket.create_connection((host, port), timeout=5)
        connection.close()
        # Something else on the port (without SO_REUSEPORT) is refused, as
        # it is for one process.
        from twisted.internet.error import CannotListenError

        with pytest.raises(CannotListenError):
            openShared(f"tcp:{port}:interface=127.0.0.1", False, 2)
    finally:
        shared.close()


def test_startFailureStopsThatProcessOnly() -> None:
    """
    A worker that answers Start with an error is killed (and started again
    when it has gone); the unanswered Start of a process that is already
    gone does not touch its successor.
    """
    harness = makeHarness()
    harness.workers.core.startService()
    harness.workers.startService()
    slot = harness.slot(0)
    slot.channel.dataReceived(
        amp.AmpBox(_error=b"1", _error_code=b"UNKNOWN", _error_description=b"boom").serialize()
    )
    assert harness.processes[0].signals == ["KILL"]
    harness.die(0)
    harness.reactor.advance(1)
    assert slot.state is WorkerState.STARTING and len(harness.processes) == 3

    # Worker 1 dies before it answers Start; its successor starts before
    # the old channel reports the lost connection.
    other = harness.slot(1)
    oldChannel = other.channel
    other.startedAt -= STEADY_AFTER  # it ran long enough: started again at once
    harness.die(1)
    harness.reactor.advance(0)
    assert other.state is WorkerState.STARTING and len(harness.processes) == 4
    oldChannel.connectionLost(Failure(Exception("gone")))
    assert other.state is WorkerState.STARTING
    assert harness.processes[3].signals == []


# -- which service twistd runs --------------------------------------------------------------------


def test_makeServiceRunsOneProcessOnly() -> None:
    from ftpproxy import makeService
    from ftpproxy.settings.config import ConfigError

    with pytest.raises(ConfigError, match="makeSupervisor starts worker processes"):
        makeService(config(workers=2), MemoryReactorClock())


@pytest.mark.parametrize(
    "flags, supervised",
    [((), False), (("--workers", "1"), False), (("--workers", "2"), True)],
)
def test_twistdPicksTheSupervisor(flags: tuple[str, ...], supervised: bool) -> None:
    from ftpproxy.app import tap
    from ftpproxy.app.service import ProxyService
    from ftpproxy.app.supervisor import SupervisorService

    options = tap.Options()
    options.parseOptions(
        ["--backend", "127.0.0.2:21", "--listen", "tcp:0:interface=127.0.0.1", *flags]
    )
    service = tap.makeService(options)
    assert isinstance(service, SupervisorService if supervised else ProxyService)
    if supervised:
        assert len(service.workers.slots) == 2


def test_autoOnOneCoreIsOneProcess(monkeypatch) -> None:
    """
    workers = "auto" on a machine with one core runs today's single process.
    """
    from ftpproxy.app import tap
    from ftpproxy.app.service import ProxyService
    from ftpproxy.settings import config as configModule

    monkeypatch.setattr(configModule.os, "sched_getaffinity", lambda pid: {0})
    options = tap.Options()
    options.parseOptions(
        ["--backend", "127.0.0.2:21", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "auto"]
    )
    service = tap.makeService(options)
    assert isinstance(service, ProxyService)
    assert service.config.workers == 1
