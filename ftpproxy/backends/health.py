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
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.backends.control import QuietFactory, clientEndpoint
from ftpproxy.backends.balancer import Backend, BackendPool
# The settings live in ftpproxy.settings.health; CHECK_KINDS is named here too
# for the checker's callers.
from ftpproxy.settings.health import CHECK_KINDS, HealthSettings  # noqa: F401
from ftpproxy.wire.proxyprotocol import formatLocalHeader
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, ReplyParser
from ftpproxy.tls.contexts import BackendTLSSettings, TLSSettingsError, makeBackendTLS, tlsConnectionOf

log = Logger(namespace="ftpproxy.backends.health")

# What a probe waits for, as its timeout message names it.
_GREETING = "220 greeting"
_GREETING_OVER_TLS = "TLS handshake and 220 greeting"


@attrs.frozen
class CheckResult:
    """
    What one check found: passed or not, why, and how long it took.
    """

    ok: bool
    why: str
    seconds: float


def _describe(reply: Reply) -> str:
    text = reply.text.decode("utf-8", "replace").strip()
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{reply.code} {text}"


@implementer(IHandshakeListener)
class HealthProbe(Protocol):
    """
    One check of one backend: connect, speak as much FTP as C{kind} needs,
    judge, say goodbye.

    @ivar verdict: fires once with a L{CheckResult}; never fails.
    @ivar finished: fires once nothing of the probe is left: no connection,
        no connection attempt, no timer.
    """

    def __init__(self, reactor: Any, backend: Backend, settings: HealthSettings) -> None:
        self._reactor = reactor
        self._backend = backend
        self._settings = settings
        config = backend.config
        kind = settings.kind
        if kind == "tls" and not config.usesTLS:
            kind = "banner"
        self._kind = kind
        self._explicit = config.tls == "explicit" and kind in ("tls", "login")
        self._implicit = config.tls == "implicit" and kind != "tcp"
        self.verdict: Deferred[CheckResult] = Deferred()
        self.finished: Deferred[None] = Deferred()
        self._decided = False
        self._done = False
        self._step = "connection"
        self._parser = ReplyParser()
        self._connecting: Deferred | None = None
        self._connected = False
        self._timer: Any = None
        self._started = 0.0

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        self._started = self._reactor.seconds()
        address = self._backend.config.address
        try:
            creator = _backendTLS(self._backend) if self._explicit or self._implicit else None
        except TLSSettingsError as e:
            self._judge(False, f"TLS settings unusable: {e}")
            self._finish()
            return
        self._creator = creator
        self._timer = self._reactor.callLater(self._settings.timeout, self._timedOut)
        endpoint = clientEndpoint(self._reactor, address.host, address.port, self._settings.timeout)
        connecting = endpoint.connect(QuietFactory(self))
        if not self._connected and not self._done:
            self._connecting = connecting
        connecting.addCallbacks(self._connectSucceeded, self._connectFailed)

    def stop(self) -> None:
        """
        Give up now (the checker is stopping): drop the connection or the
        attempt; L{finished} fires once it is gone.
        """
        self._judge(False, "check abandoned: health checker stopping")
        self._drop()

    def _connectSucceeded(self, protocol: object) -> None:
        self._connecting = None

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        self._judge(False, f"connect failed: {reason.getErrorMessage()}")
        self._finish()

    def _timedOut(self) -> None:
        self._timer = None
        if self._decided:
            # The goodbye is taking too long (a TLS peer that never answers
            # close_notify, say).
            self._drop()
            return
        self._judge(False, f"no {self._step} within {self._settings.timeout:g}s")
        self._drop()

    def _drop(self) -> None:
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        elif self._connected and self.transport is not None:
            self.transport.abortConnection()
        elif not self._connected:
            self._finish()

    def _judge(self, ok: bool, why: str) -> None:
        if self._decided:
            return
        self._decided = True
        seconds = self._reactor.seconds() - self._started
        self.verdict.callback(CheckResult(ok, why, seconds))

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()
        self.finished.callback(None)

    def _passed(self, why: str) -> None:
        self._judge(True, why)
        self._goodbye()

    def _failed(self, why: str) -> None:
        self._judge(False, why)
        if self._connected:
            self.transport.abortConnection()

    def _goodbye(self) -> None:
        """
        Leave politely, then give the peer C{timeout} seconds to let go.
        """
        if self._kind != "tcp":
            self.transport.write(b"QUIT\r\n")
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._settings.timeout)
        self.transport.loseConnection()

    # -- the conversation ---------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self._connecting = None
        version = self._backend.config.proxyProtocol
        if version:
            # A backend that expects PROXY headers refuses connections
            # without one; LOCAL says "this is the proxy itself".
            self.transport.write(formatLocalHeader(version))
        if self._implicit:
            self.transport.startTLS(self._creator)
        if self._kind == "tcp":
            self._passed("connected")
            return
        self._step = _GREETING_OVER_TLS if self._implicit else _GREETING

    def dataReceived(self, data: bytes) -> None:
        if self._decided:
            return
        if self._step == "TLS handshake" and not self._implicit:
            self._failed("data after 234 before the TLS handshake")
            return
        try:
            replies = self._parser.feed(data)
        except ProtocolTextError as e:
            self._failed(f"bad reply: {e}")
            return
        for index, reply in enumerate(replies):
            if self._decided:
                return
            self._replyReceived(reply)
            if self._step == "TLS handshake" and not self._implicit:
                if index + 1 < len(replies) or self._parser.hasPending:
                    self._failed("data after 234 before the TLS handshake")
                    return

    def _replyReceived(self, reply: Reply) -> None:
        if reply.isPreliminary:
            return
        step = self._step
        if step in (_GREETING, _GREETING_OVER_TLS):
            if reply.code != 220:
                self._failed(f"greeted with {_describe(reply)}")
            elif self._explicit:
                self._send(b"AUTH TLS", "234 reply to AUTH TLS")
            elif self._kind == "login":
                self._sendUser()
            else:
                self._passed(
                    "greeted with 220" + (" over TLS" if self._implicit else "")
                )
        elif step == "234 reply to AUTH TLS":
            if reply.code != 234:
                self._failed(f"AUTH TLS refused: {_describe(reply)}")
                return
            self._step = "TLS handshake"
            self.transport.startTLS(self._creator)
        elif step == "reply to USER":
            if reply.code == 230:
                self._passed("logged in")
            elif reply.code == 331:
                self._send(b"PASS " + self._settings.password.encode("utf-8"), "reply to PASS")
            else:
                self._failed(f"USER refused: {_describe(reply)}")
        elif step == "reply to PASS":
            if reply.code == 230:
                self._passed("logged in")
            else:
                self._failed(f"login refused: {_describe(reply)}")
        else:
            self._failed(f"unexpected reply {_describe(reply)}")

    def handshakeCompleted(self) -> None:
        if self._decided or self._implicit:
            # Implicit FTPS: the greeting, which comes next, decides.
            return
        if self._kind == "tls":
            self._passed(f"TLS {self._tlsVersion()} handshake completed")
        else:
            self._sendUser()

    def _tlsVersion(self) -> str:
        try:
            return tlsConnectionOf(self.transport).get_protocol_version_name()
        except (TypeError, AttributeError):
            return "?"

    def _sendUser(self) -> None:
        self._send(b"USER " + self._settings.user.encode("utf-8"), "reply to USER")

    def _send(self, line: bytes, awaiting: str) -> None:
        self._step = awaiting
        self.transport.write(line + b"\r\n")

    def connectionLost(self, reason: Failure = None) -> None:
        self._connected = False
        if not self._decided:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self._judge(False, f"connection lost waiting for {self._step}: {why}")
        self._finish()


def _backendTLS(backend: Backend) -> Any:
    """
    The backend's TLS client creator, built once and shared with the
    sessions (L{ftpproxy.app.proxy.ProxyFactory.backendTLSFor} does the same),
    so that checks verify exactly what sessions will.
    """
    if backend.tls is None:
        config = backend.config
        settings = config.tlsSettings or BackendTLSSettings(hostname=config.address.host)
        backend.tls = makeBackendTLS(settings)
    return backend.tls


class HealthChecker(Service):
    """
    Checks every backend of C{pool} every C{settings.interval} seconds while
    running, and reports each result to the pool (which applies C{rise} and
    C{fall}) and, when given, to C{metrics.healthCheck(name, seconds, ok)}.

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
        report = getattr(self.metrics, "healthCheck", None)
        if report is not None:
            report(backend.name, result.seconds, result.ok)
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
