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

from typing import Any, Callable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ftpproxy.backends.balancer import Backend, BackendPool
from ftpproxy.backends.probe import CheckResult, HealthProbe
from ftpproxy.settings.config import ConfigError, rejectUnknownKeys

log = Logger(namespace="ftpproxy.backends.health")

CHECK_KINDS: tuple[str, ...] = ("none", "tcp", "banner", "login", "tls")

_NUMBER_KEYS = ("interval", "timeout", "retry")
_COUNT_KEYS = ("rise", "fall")
_TEXT_KEYS = ("kind", "user", "password")
_KEYS = _NUMBER_KEYS + _COUNT_KEYS + _TEXT_KEYS

def _check(values: Mapping[str, Any], where: str) -> None:
    """
    Refuse settings that cannot work, naming the key as the TOML file has it.
    """
    for key in _NUMBER_KEYS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{where} {key} must be a positive number of seconds, not {value!r}")
    for key in _COUNT_KEYS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where} {key} must be a whole number of at least 1, not {value!r}")
    if values["kind"] not in CHECK_KINDS:
        raise ConfigError(
            f"{where} kind must be one of {', '.join(CHECK_KINDS)}, not {values['kind']!r}"
        )
    for key in ("user", "password"):
        value = values[key]
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where} {key} must be a string, not {value!r}")
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            raise ConfigError(f"{where} {key} must not contain line breaks")
    if values["kind"] == "login" and (values["user"] is None or values["password"] is None):
        raise ConfigError(f'{where} kind = "login" needs user and password')


@attrs.frozen
class HealthSettings:
    """
    How backends are judged.

    @ivar interval: seconds between the starts of two checks of a backend.
    @ivar timeout: seconds one check may take, connect included.
    @ivar rise: passed checks that bring a down backend up.
    @ivar fall: failed checks or session connects that take it down.
    @ivar kind: one of L{CHECK_KINDS}.
    @ivar user: the login check's user name.
    @ivar password: its password (kept out of reprs and logs).
    @ivar retry: without active checks, seconds after which one session
        may try a down backend again.
    """

    interval: float = 5.0
    timeout: float = 3.0
    rise: int = 2
    fall: int = 3
    kind: str = "banner"
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    retry: float = 10.0

    def __attrs_post_init__(self) -> None:
        _check(attrs.asdict(self), "health")

    @property
    def active(self) -> bool:
        """
        Are there active checks to run?
        """
        return self.kind != "none"

    @classmethod
    def fromMapping(cls, table: Mapping[str, Any], where: str) -> HealthSettings:
        """
        Settings from the TOML C{[health]} table; C{where} starts every error
        message (e.g. C{"ftpproxy.toml: health"}).
        """
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a [health] table")
        rejectUnknownKeys(table, _KEYS, where)
        values = attrs.asdict(cls()) | dict(table)
        _check(values, where)
        return cls(**values)


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
