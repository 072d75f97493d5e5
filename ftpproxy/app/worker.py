"""
A worker process: the proxy on listening sockets its supervisor opened,
reporting what happens (events for the metrics, log events) to the
supervisor, and obeying it (configuration, drain, health checks).

The supervisor (L{ftpproxy.app.supervisor}) starts it as::

    python -c "from ftpproxy.app.worker import main; main()" --channel 3

with the channel's socket on descriptor 3 and the listening sockets on the
descriptors the L{ftpproxy.app.channel.Start} command names.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, eventAsJSON, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.app.channel import (
    FORMATTED,
    CheckResult,
    Drain,
    Enable,
    Reconfigure,
    Report,
    Start,
    eventLine,
)
from ftpproxy.app.service import ProxyService, proxyCore
from ftpproxy.backends.balancer import RING_POLICIES, policyNamed
from ftpproxy.events import IProxyEvents
from ftpproxy.settings.config import ConfigError, ProxyConfig, listenerTable

#: The shortest time between two reports of a worker: what a worker killed
#: outright (SIGKILL, out of memory) can fail to report, at most. A worker
#: that is stopped, or whose supervisor goes away, reports everything first.
REPORT_INTERVAL = 0.02

#: Seconds a stopping worker waits for its last report to reach the
#: supervisor before it exits anyway.
FLUSH_TIMEOUT = 5.0


class ReportQueue:
    """
    Lines for the supervisor, sent together: at the end of the reactor turn
    that queued the first of them, but at most once every
    L{REPORT_INTERVAL} seconds, so that a busy worker sends (and wakes the
    supervisor) a few dozen times a second rather than once per session.

    @ivar send: sends a list of lines (set once the channel exists); while
        it is L{None}, lines wait.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._lines: list[str] = []
        self._pending = None
        self._lastSent = float("-inf")
        self.send: Callable[[list[str]], None] | None = None

    def add(self, line: str) -> None:
        self._lines.append(line)
        if self._pending is None and self.send is not None:
            wait = self._lastSent + REPORT_INTERVAL - self._reactor.seconds()
            self._pending = self._reactor.callLater(max(0.0, wait), self.flush)

    def flush(self) -> None:
        """
        Send what is queued now.
        """
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        if self.send is None or not self._lines:
            return
        lines, self._lines = self._lines, []
        self._lastSent = self._reactor.seconds()
        self.send(lines)


@implementer(IProxyEvents)
class ForwardedEvents:
    """
    The worker's L{IProxyEvents}: every call becomes a report line, and the
    supervisor counts it.
    """

    def __init__(self, queue: ReportQueue) -> None:
        self._queue = queue

    def sessionStarted(self, backend: str) -> None:
        self._queue.add(eventLine("sessionStarted", (backend,)))

    def sessionEnded(self, backend: str) -> None:
        self._queue.add(eventLine("sessionEnded", (backend,)))

    def transferFinished(
        self, backend: str, verb: str, direction: str, code: int, size: int, seconds: float
    ) -> None:
        self._queue.add(
            eventLine("transferFinished", (backend, verb, direction, code, size, seconds))
        )

    def tlsHandshake(self, side: str, version: str) -> None:
        self._queue.add(eventLine("tlsHandshake", (side, version)))

    def backendConnectFailed(self, backend: str) -> None:
        self._queue.add(eventLine("backendConnectFailed", (backend,)))

    def backendState(self, name: str, up: bool) -> None:
        self._queue.add(eventLine("backendState", (name, bool(up))))

    def healthCheck(self, name: str, seconds: float, ok: bool) -> None:
        self._queue.add(eventLine("healthCheck", (name, seconds, ok)))

    def clientHandshake(self, fields: Mapping[str, Any]) -> None:
        self._queue.add(eventLine("clientHandshake", (dict(fields),)))

    def clientClosed(self, reason: str) -> None:
        self._queue.add(eventLine("clientClosed", (reason,)))

    def clientRefused(self, reason: str) -> None:
        self._queue.add(eventLine("clientRefused", (reason,)))


#: Field types a forwarded log event keeps as they are (JSON can say them).
_PLAIN = (str, int, float, bool, type(None))


def _isPlain(value: object) -> bool:
    if type(value) in (list, tuple):
        return all(type(item) in _PLAIN for item in value)  # type: ignore[union-attr]
    return type(value) in _PLAIN


def _plain(value: object) -> object:
    return list(value) if type(value) is tuple else value  # type: ignore[arg-type]


def forwardedLogLine(event: dict) -> str:
    """
    A log event as one report line: its message formatted here (so that
    the workers, not the supervisor, do that work), its level, and its
    fields that JSON can say as they are, lists of such values included (the
    session's, the transfer's, the TLS handshake's:
    what the JSON log and the xferlog read); other fields (the logger, the
    source object) are left out. An event with a failure goes whole, as
    C{twisted.logger.eventAsJSON} writes it, so that its traceback is kept.
    """
    if "log_failure" in event:
        try:
            return eventAsJSON(event)
        except Exception:  # one odd field must not lose the event
            return eventAsJSON({k: v for k, v in event.items() if k.startswith("log_")})
    line = {key: _plain(value) for key, value in event.items() if _isPlain(value)}
    level = event.get("log_level")
    line["log_level"] = getattr(level, "name", "info")
    line[FORMATTED] = formatEvent(event)
    return json.dumps(line, default=repr)


@implementer(ILogObserver)
class LogForwarder:
    """
    Sends every log event of the worker to the supervisor, which logs it
    where and how it logs its own (L{forwardedLogLine}).
    """

    def __init__(self, queue: ReportQueue) -> None:
        self._queue = queue

    def __call__(self, event: dict) -> None:
        self._queue.add(forwardedLogLine(event))


class WorkerChannel(amp.AMP):
    """
    The worker's end of the channel: runs the proxy as the supervisor says.

    @ivar service: the proxy, once started.
    """

    log = Logger()

    def __init__(self, reactor: Any, queue: ReportQueue, onLost: Callable[[], None]) -> None:
        super().__init__()
        self._reactor = reactor
        self._queue = queue
        self._onLost = onLost
        self._closed: Deferred[None] = Deferred()
        self.service: ProxyService | None = None
        self.index: int | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._queue.send = self._report
        self._queue.flush()

    def _report(self, lines: list[str]) -> None:
        if not self._isOpen():
            return
        self.callRemote(Report, lines="\n".join(lines).encode("utf-8"))

    def _isOpen(self) -> bool:
        return self.transport is not None and not self._closed.called

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._queue.send = None
        if not self._closed.called:
            self._closed.callback(None)
        self._onLost()

    @Start.responder
    def start(
        self,
        index: int,
        count: int,
        config: ProxyConfig,
        listeners: list[dict],
        down: list[str],
        draining: list[str],
    ) -> dict:
        if self.service is not None:
            raise ConfigError("this worker has started already")
        self.index = index
        service = proxyCore(
            config, self._reactor, events=ForwardedEvents(self._queue), runHealthChecks=False
        )
        pool = service.factory.pool
        if config.policy in RING_POLICIES:
            # Each worker starts one backend further along the ring.
            pool.policy = policyNamed(config.policy, start=index, **config.policyOptions)
        for name in down:
            pool.takeVerdict(name, False, "down in the supervisor's health checks")
        for name in draining:
            pool.drain(name)
        # Each listener's sessions get its TLS profile: found by name.
        byName = {listener.label: listener for listener in listenerTable(service.config)}
        implicit = service.factory.implicitVariant()
        for listener in listeners:
            settings = byName.get(listener.get("name", ""))
            if settings is not None:
                factory = service.factory.forListener(settings)
            else:
                factory = implicit if listener["implicit"] else service.factory
            service.adoptListener(listener["description"], listener["fd"], listener["ipv6"], factory)
        self.service = service
        service.startService()
        self.log.info(
            "worker {index} of {count} serving with passive ports {ports}",
            index=index,
            count=count,
            ports=str(config.passivePorts),
        )
        return {}

    @Reconfigure.responder
    def reconfigure(self, config: ProxyConfig) -> dict:
        applied = self.service is not None and self.service.applyConfig(config, report=False)
        return {"applied": applied}

    @Drain.responder
    def drain(self, name: str) -> dict:
        return {"found": self.service is not None and self.service.factory.pool.drain(name)}

    @Enable.responder
    def enable(self, name: str) -> dict:
        return {"found": self.service is not None and self.service.factory.pool.enable(name)}

    @CheckResult.responder
    def checkResult(self, name: str, ok: bool, why: str) -> dict:
        if self.service is not None:
            pool = self.service.factory.pool
            backend = pool.backendNamed(name)
            if backend is not None:
                pool.reportCheck(backend, ok, why)
        return {}

    def stop(self) -> Deferred[None]:
        """
        Stop the proxy as one process stops on SIGTERM, send the last
        report and close the channel; fires once the supervisor has it all
        (or after L{FLUSH_TIMEOUT} seconds).
        """
        stopping = succeed(None) if self.service is None else self.service.stopService()

        def flushed(_: object) -> Deferred[None]:
            self._queue.flush()
            if self._isOpen():
                self.transport.loseConnection()
            timer = self._reactor.callLater(FLUSH_TIMEOUT, self._giveUp)
            return self._closed.addBoth(lambda r: timer.cancel() if timer.active() else None)

        return stopping.addBoth(flushed)

    def _giveUp(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


def main(argv: list[str] | None = None) -> None:
    """
    Run one worker on the channel's descriptor until told to stop
    (SIGTERM, SIGINT, or the supervisor's end of the channel closing).
    """
    parser = argparse.ArgumentParser(prog="ftpproxy-worker")
    parser.add_argument("--channel", type=int, default=3)
    arguments = parser.parse_args(argv)

    from twisted.internet import reactor

    # The supervisor reloads the configuration and hands it down; a hangup
    # of the terminal must not end a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    queue = ReportQueue(reactor)
    globalLogBeginner.beginLoggingTo([LogForwarder(queue)], redirectStandardIO=False)
    stopping: list[Deferred[None]] = []

    def stop() -> None:
        if not stopping:
            stopping.append(succeed(None))
            reactor.stop()

    channel = WorkerChannel(reactor, queue, onLost=lambda: reactor.callLater(0, stop))
    reactor.adoptStreamConnection(
        arguments.channel, socket.AF_UNIX, Factory.forProtocol(lambda: channel)
    )
    os.close(arguments.channel)
    reactor.addSystemEventTrigger("before", "shutdown", channel.stop)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: reactor.callFromThread(stop))
    reactor.run(installSignalHandlers=False)
    sys.exit(0)
