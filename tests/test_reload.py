"""
Tests for L{ftpproxy.app.service.ProxyService} in memory: what a reload
applies and reports (defects 4 and 5), and the order in which stopping
ends things (defect 6).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, globalLogPublisher

from ftpproxy.app.service import CONFIGURATION_RELOADED, ProxyService, makeService
from ftpproxy.events import EVENT_FIELD, TRANSFER_FINISHED
from ftpproxy.settings.commandline import LoadedConfig
from ftpproxy.settings.config import BackendConfig, ConfigError, HostPort, PortRange, ProxyConfig
from ftpproxy.settings.health import HealthSettings
from ftpproxy.app import listeners

from tests.support.memory import ALPHA, BETA, CLIENT_HOST, ProxyReactor, address, attach

LISTEN = "tcp:2121:interface=127.0.0.1"
ADMIN = "tcp:8021:interface=127.0.0.1"
GAMMA = BackendConfig(address=HostPort("127.0.0.4", 2003), name="gamma")

# What the xferlog writes a line for (by the transfer logger's namespace
# today, by the event field once operations select on it).
_transferLog = Logger(namespace="ftpproxy.session.transfer.Transfer")


def logTransfer(path: str) -> None:
    _transferLog.info(
        "transfer {verb} {argument}",
        verb="RETR",
        argument=path,
        bytes=1234,
        duration=0.5,
        code=226,
        client=CLIENT_HOST,
        direction="download",
        **{EVENT_FIELD: TRANSFER_FINISHED},
    )


@attrs.define
class Running:
    """
    A proxy service on a memory reactor, and what its next reload loads.
    """

    service: ProxyService
    reactor: ProxyReactor
    next: Any = None

    def reload(self, config: ProxyConfig | LoadedConfig | Exception) -> bool:
        self.next = config
        return self.service.reload()

    @property
    def factory(self):
        return self.service.factory

    def listening(self) -> set[int]:
        return {p.getHost().port for p in self.reactor.openPorts()}


@pytest.fixture
def events() -> Iterator[list[dict]]:
    """
    The log events of the proxy service during the test.
    """
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace", "").startswith("ftpproxy.app.service"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def start() -> Iterator[Any]:
    """
    C{start(config)}: a started proxy service in memory; stopped (and its
    sessions closed) at teardown.
    """
    started: list[Running] = []

    def startService(config: ProxyConfig) -> Running:
        reactor = ProxyReactor()
        running = Running(None, reactor)  # type: ignore[arg-type]

        def load() -> ProxyConfig | LoadedConfig:
            if isinstance(running.next, Exception):
                raise running.next
            return running.next

        running.service = makeService(config, reactor, reloadConfig=load)
        running.service.startService()
        started.append(running)
        return running

    yield startService
    for running in started:
        if running.service.running:
            stopped = running.service.stopService()
            running.reactor.advance(running.service.config.shutdownGrace + 60)
            assert stopped.called


def config(**changes: Any) -> ProxyConfig:
    values: dict[str, Any] = dict(
        backends=(ALPHA, BETA), listen=(LISTEN,), passivePorts=PortRange(30000, 30009)
    )
    values.update(changes)
    return ProxyConfig(**values)


def reloadEvents(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get(EVENT_FIELD) == CONFIGURATION_RELOADED]


def refusals(events: list[dict]) -> list[str]:
    return [
        e["error"] for e in events if e.get("log_format", "").startswith("configuration not")
    ]


def connect(running: Running, host: str = CLIENT_HOST):
    session = running.factory.buildProtocol(address(host, 40000))
    return attach(running.reactor, session, address("127.0.0.1", 2121), address(host, 40000))


# -- what a reload reports -----------------------------------------------------


def test_oneEventSaysWhatChangedTookEffectAndNeedsARestart(start, events) -> None:
    running = start(config(admin=ADMIN))
    new = config(
        backends=(BETA, GAMMA),
        connectTimeout=3.0,
        loginFailureWindow=60.0,
        admin="tcp:8022:interface=127.0.0.1",
        logFormat="json",
    )
    assert running.reload(new)
    [event] = reloadEvents(events)
    assert event["changed"] == [
        "backend",
        "connect_timeout",
        "login_failure_window",
        "admin",
        "log_format",
    ]
    assert event["applied"] == ["backend", "connect_timeout", "login_failure_window"]
    assert event["restart"] == ["admin", "log_format"]
    assert event["overridden"] == []
    assert event["summary"] == (
        "changed: backend, connect_timeout, login_failure_window, admin, log_format; "
        "took effect: backend, connect_timeout, login_failure_window; "
        "need a restart: admin, log_format"
    )
    # Live ones are in use for new sessions; restart ones keep running values.
    assert running.factory.config.connectTimeout == 3.0
    assert [b.name for b in running.factory.pool.backends] == ["beta", "gamma"]
    assert running.service.config.admin == ADMIN
    assert running.service.config.logFormat == "text"
    assert 8021 in running.listening() and 8022 not in running.listening()


def test_restartStillNeededIsReportedAgain(start, events) -> None:
    running = start(config())
    moved = config(listen=("tcp:2122:interface=127.0.0.1",))
    assert running.reload(moved)
    assert running.reload(moved)
    assert [e["restart"] for e in reloadEvents(events)] == [["listen"], ["listen"]]
    assert running.listening() == {2121}


def test_nothingChanged(start, events) -> None:
    running = start(config())
    assert running.reload(config())
    [event] = reloadEvents(events)
    assert event["changed"] == [] and event["summary"] == "nothing changed"


def test_commandLineOverridesAreReported(start, events) -> None:
    running = start(config())
    assert running.reload(LoadedConfig(config(), overridden=("xferlog",)))
    [event] = reloadEvents(events)
    assert event["overridden"] == ["xferlog"]
    assert "the command line overrides the file for: xferlog" in event["summary"]


def test_refusedConfigurationChangesNothing(start, events) -> None:
    running = start(config())
    before = running.factory.config
    assert not running.reload(ConfigError("connect_timeout must be a positive number"))
    assert refusals(events) == ["connect_timeout must be a positive number"]
    assert reloadEvents(events) == []
    assert running.factory.config is before


def test_restartValuesMustFitTheNewConfiguration(start, events) -> None:
    """
    A new passive range that takes in the running listener's port is
    refused: the listener cannot move without a restart.
    """
    running = start(config())
    new = config(listen=("tcp:3000:interface=127.0.0.1",), passivePorts=PortRange(2100, 2200))
    assert not running.reload(new)
    [refusal] = refusals(events)
    assert "lies inside the passive port range 2100-2200" in refusal
    assert "running values of listen, which need a restart" in refusal
    assert running.factory.config.passivePorts == PortRange(30000, 30009)


def test_notRunning(start, events) -> None:
    reactor = ProxyReactor()
    service = makeService(config(), reactor, reloadConfig=lambda: config(maxSessions=1))
    assert not service.reload()
    assert service.factory.config.maxSessions == 0


# -- defect 5: settings that reloads ignored -------------------------------------


def test_loginThrottleThresholdsAreLive(start, events) -> None:
    running = start(config())
    throttle = running.factory.loginThrottle
    assert running.reload(
        config(loginFailureWindow=60.0, loginFailuresBeforeDelay=1, loginFailuresBeforeBlock=2)
    )
    assert (throttle.window, throttle.delayAfter, throttle.blockAfter) == (60.0, 1, 2)
    assert running.factory.loginThrottle is throttle
    assert throttle.failed(CLIENT_HOST) == 0.0
    assert throttle.failed(CLIENT_HOST) == 1.0
    client = connect(running)
    assert client.take().startswith(b"421 ")
    # The new window: after 60 s the address is welcome again.
    running.reactor.advance(61)
    assert not throttle.blocked(CLIENT_HOST)


def test_proxyHeaderTimeoutIsLive(start) -> None:
    running = start(config(listen=("haproxy:" + LISTEN,), proxyHeaderTimeout=10.0))
    assert running.reload(config(listen=("haproxy:" + LISTEN,), proxyHeaderTimeout=2.0))
    [port] = running.reactor.openPorts()
    assert isinstance(port.factory, listeners.ProxyHeaderFactory)
    protocol = port.factory.buildProtocol(address(CLIENT_HOST, 40000))
    transport = StringTransport(address("127.0.0.1", 2121), address(CLIENT_HOST, 40000))
    protocol.makeConnection(transport)
    running.reactor.advance(1.9)
    assert not transport.disconnecting
    running.reactor.advance(0.2)
    assert transport.disconnecting
    protocol.connectionLost(None)


def test_xferlogReopensAtTheNewPath(start, tmp_path: Path, events) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    running = start(config(xferlog=str(first)))
    logTransfer("/before")
    assert running.reload(config(xferlog=str(second)))
    assert reloadEvents(events)[0]["applied"] == ["xferlog"]
    logTransfer("/after")
    assert " /before " in first.read_text() and "/after" not in first.read_text()
    assert " /after " in second.read_text() and "/before" not in second.read_text()


def test_xferlogTurnedOnAndOff(start, tmp_path: Path) -> None:
    path = tmp_path / "xferlog"
    running = start(config())
    logTransfer("/nowhere")
    assert running.reload(config(xferlog=str(path)))
    logTransfer("/logged")
    assert running.reload(config())
    logTransfer("/not-any-more")
    assert [line.split()[8] for line in path.read_text().splitlines()] == ["/logged"]


def test_xferlogThatCannotBeOpenedChangesNothing(start, tmp_path: Path, events) -> None:
    path = tmp_path / "xferlog"
    running = start(config(xferlog=str(path)))
    missing = tmp_path / "no-such-directory" / "xferlog"
    assert not running.reload(config(xferlog=str(missing), connectTimeout=1.0))
    [refusal] = refusals(events)
    assert refusal.startswith(f"cannot open xferlog {missing}")
    assert running.factory.config.connectTimeout == 10.0
    logTransfer("/still-here")
    assert " /still-here " in path.read_text()


def test_healthSettingsAreLive(start) -> None:
    running = start(config())
    assert running.service.healthChecker is None
    assert running.reload(config(health=HealthSettings(kind="tcp", interval=30, fall=5)))
    checker = running.service.healthChecker
    assert checker is not None and checker.running
    assert running.factory.pool.fall == 5


# -- defect 4: the demo across reloads -----------------------------------------


def test_demoBackendsSurviveReload(start, events) -> None:
    """
    Under --demo the pool holds the in-process backends; a reload of a
    file without backends keeps them (it used to empty the pool, and every
    new session got 421), and backends the file names are added to them.
    """
    running = start(config(backends=(), demo=True))
    pool = running.factory.pool
    demoBackends = list(pool.backends)
    assert [b.name for b in demoBackends] == ["backend-1", "backend-2"]

    assert running.reload(config(backends=(), demo=True, maxSessions=5))
    assert list(pool.backends) == demoBackends
    assert reloadEvents(events)[0]["backends"] == 2

    client = connect(running)
    assert client.take() == b""
    assert running.reactor.tcpClients, "the session did not connect to a backend"

    assert running.reload(config(backends=(GAMMA,), demo=True))
    assert [b.name for b in pool.backends] == ["gamma", "backend-1", "backend-2"]
    assert list(pool.backends)[1:] == demoBackends


# -- defect 6: stopping --------------------------------------------------------


def test_stoppingKeepsLogsChecksAndAdminUntilSessionsEnd(start, tmp_path: Path) -> None:
    """
    SIGTERM stops the listener at once; the xferlog, the health checks and
    the admin endpoint stay until the last session has ended (here: closed
    when the grace period ends), so a transfer that finishes in the grace
    period is in the xferlog.
    """
    path = tmp_path / "xferlog"
    running = start(
        config(
            xferlog=str(path),
            admin=ADMIN,
            health=HealthSettings(kind="tcp", interval=60),
            shutdownGrace=30.0,
        )
    )
    service = running.service
    client = connect(running)
    assert running.listening() == {2121, 8021}

    stopped = service.stopService()
    assert running.listening() == {8021}
    assert service.xferlog.running and service.healthChecker.running
    running.reactor.advance(29)
    logTransfer("/in-the-grace-period")
    assert not stopped.called
    assert service.xferlog.running and service.healthChecker.running
    assert running.listening() == {8021}

    running.reactor.advance(1)
    assert client.take().startswith(b"421 Server shutting down.")
    running.reactor.advance(10)
    assert stopped.called
    assert not running.factory.sessions
    assert not service.xferlog.running and not service.healthChecker.running
    assert running.listening() == set()
    assert " /in-the-grace-period " in path.read_text()


def test_stoppingWithoutSessionsStopsEverythingAtOnce(start, tmp_path: Path) -> None:
    running = start(config(xferlog=str(tmp_path / "xferlog"), admin=ADMIN))
    stopped = running.service.stopService()
    assert stopped.called
    assert running.listening() == set()
    assert not running.service.xferlog.running


def test_stoppingRestoresTheHangupHandler(start) -> None:
    before = signal.getsignal(signal.SIGHUP)
    running = start(config())
    assert signal.getsignal(signal.SIGHUP) is not before
    running.service.stopService()
    assert signal.getsignal(signal.SIGHUP) is before


def test_xferlogIsReopenedOnEveryReload(start, tmp_path: Path, events) -> None:
    """
    The same path is reopened too, so that the xferlog can be rotated
    (moved away, then SIGHUP); it is not reported as a changed setting.
    """
    path = tmp_path / "xferlog"
    running = start(config(xferlog=str(path)))
    logTransfer("/first")
    path.rename(tmp_path / "xferlog.1")
    assert running.reload(config(xferlog=str(path)))
    logTransfer("/second")
    assert " /first " in (tmp_path / "xferlog.1").read_text()
    assert [line.split()[8] for line in path.read_text().splitlines()] == ["/second"]
    assert reloadEvents(events)[0]["changed"] == []


def test_hangupDuringShutdownIsAnsweredNotFatal(start, events) -> None:
    """
    While sessions finish after SIGTERM, a reload is refused with a log
    line (the SIGHUP handler stays until everything has stopped).
    """
    before = signal.getsignal(signal.SIGHUP)
    running = start(config(shutdownGrace=5.0))
    connect(running)
    stopped = running.service.stopService()
    assert signal.getsignal(signal.SIGHUP) is not before
    assert not running.reload(config(maxSessions=3))
    assert "not running (or stopping)" in events[-1]["log_format"]
    running.reactor.advance(10)
    assert stopped.called
    assert signal.getsignal(signal.SIGHUP) is before
