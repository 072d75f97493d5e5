"""
Active health checks: every few seconds each backend is connected to and
asked as much FTP as the configured kind needs, and the pool is told how it
went; the pool's C{rise} and C{fall} thresholds turn the results into up and
down.

Kinds of check:

  - C{tcp}: the TCP connection opens.
  - C{banner}: the backend greets with 220 (through TLS for implicit FTPS).
  - C{login}: USER and PASS with configured credentials get 230 (after AUTH
    TLS for explicit FTPS backends, which may refuse logins in the clear).
  - C{tls}: the TLS handshake with an FTPS backend succeeds, certificate
    checks included (AUTH TLS first for explicit ones); a backend without
    TLS gets the banner check.
  - C{none}: no active checks; C{fall} and C{retry} still set passive health.

Each check is a L{ftpproxy.backends.probe.HealthProbe}, a state machine.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ftpproxy.backends.balancer import Backend, BackendPool
from ftpproxy.backends.probe import CheckResult, HealthProbe
# The settings live in ftpproxy.settings.health; named here too for the
# checker's callers.
from ftpproxy.settings.health import CHECK_KINDS, HealthSettings  # noqa: F401

log = Logger(namespace="ftpproxy.backends.health")


class HealthChecker(Service):
    """
    Checks every backend of C{pool} every C{settings.interval} seconds while
    running, and reports each result to the pool (which applies C{rise} and
    C{fall}) and, when given, to C{metrics}: an
    L{ftpproxy.events.IProxyEvents} (its C{healthCheck(name, seconds, ok)}).

    While it runs the pool knows there are active checks, so backends taken
    down by failed connects come back through checks only.
    """

    def __init__(
        self,
        reactor: Any,
        pool: BackendPool,
        settings: HealthSettings,
        metrics: object = None,
    ) -> None:
        self._reactor = reactor
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self._loop: LoopingCall | None = None
        self._probes: dict[Backend, HealthProbe] = {}

    def startService(self) -> None:
        super().startService()
        self._startLoop()

    def updateSettings(self, settings: HealthSettings) -> None:
        """
        Use C{settings} from now on (configuration reload); checks already
        running finish under the old ones.
        """
        self.settings = settings
        if not self.running:
            return
        self._stopLoop()
        self._startLoop()

    def _stopLoop(self) -> None:
        self.pool.activeChecks = False
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _startLoop(self) -> None:
        self.pool.useHealthSettings(self.settings)
        if not self.settings.active:
            return
        self.pool.activeChecks = True
        log.info(
            "health checks: {kind} every {interval:g}s, timeout {timeout:g}s, "
            "rise {rise}, fall {fall}",
            kind=self.settings.kind,
            interval=self.settings.interval,
            timeout=self.settings.timeout,
            rise=self.settings.rise,
            fall=self.settings.fall,
        )
        self._loop = LoopingCall(self._round)
        self._loop.clock = self._reactor
        self._loop.start(self.settings.interval, now=True)

    def stopService(self) -> Deferred[None]:
        """
        Stop checking: cancel the timer, drop checks in progress; the result
        fires once their connections are gone.
        """
        super().stopService()
        self._stopLoop()
        probes = list(self._probes.values())
        for probe in probes:
            probe.stop()
        finished = defer.DeferredList([p.finished for p in probes])
        finished.addCallback(lambda _: None)
        return finished

    def _round(self) -> None:
        for backend in list(self.pool.backends):
            if backend not in self._probes:
                try:
                    self.check(backend)
                except Exception:
                    log.failure("health check of backend {backend} failed to start",
                                backend=backend.name)

    def check(self, backend: Backend) -> Deferred[CheckResult]:
        """
        Check C{backend} now (or join the check already running) and report
        the result; the L{Deferred} fires with it.
        """
        running = self._probes.get(backend)
        if running is None:
            running = HealthProbe(self._reactor, backend, self.settings)
            self._probes[backend] = running
            running.verdict.addCallback(self._judged, backend)
            running.finished.addCallback(self._probeFinished, backend, running)
            running.start()
        result: Deferred[CheckResult] = Deferred()
        running.verdict.addCallback(_passOn(result))
        return result

    def _judged(self, result: CheckResult, backend: Backend) -> CheckResult:
        if not self.running:
            return result
        if self.metrics is not None:
            self.metrics.healthCheck(backend.name, result.seconds, result.ok)
        self.pool.reportCheck(backend, result.ok, result.why)
        return result

    def _probeFinished(self, _: None, backend: Backend, probe: HealthProbe) -> None:
        if self._probes.get(backend) is probe:
            del self._probes[backend]


def _passOn(result: Deferred[CheckResult]) -> Callable[[CheckResult], CheckResult]:
    def passOn(value: CheckResult) -> CheckResult:
        result.callback(value)
        return value

    return passOn
