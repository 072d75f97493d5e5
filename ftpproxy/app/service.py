"""
Wiring: the services that run a proxy, for twistd and for embedders alike.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger

from ftpproxy.app import listeners
from ftpproxy.app.demo import DemoBackends
from ftpproxy.app.proxy import ProxyFactory
from ftpproxy.backends.balancer import BackendPool, policyNamed
from ftpproxy.backends.health import HealthChecker
from ftpproxy.events import EVENT_FIELD, IProxyEvents
from ftpproxy.ops.admin import AdminAccess, AdminService, adminAccess, makeAdminService, tokenFileExposed
from ftpproxy.ops.logs import XferlogService
from ftpproxy.settings.commandline import LoadedConfig
from ftpproxy.settings.config import (
    BackendConfig,
    ConfigError,
    HostPort,
    ProxyConfig,
    listenerMode,
    listenerTable,
)
from ftpproxy.settings.health import HealthSettings
from ftpproxy.settings.options import Option, Reload, changedOptions
from ftpproxy.settings.rig import withTLSRig
from ftpproxy.tls.contexts import TLSSettingsError, makeProfileTLS
from ftpproxy.internals import raiseListenErrorsAtStart

#: The value of the log field L{EVENT_FIELD} on the one event each reload
#: logs (fields: changed, applied, restart, overridden: lists of TOML keys).
CONFIGURATION_RELOADED = "configuration-reloaded"

_NO_HEALTH_CHECKS = HealthSettings(kind="none")


class ProxyService(MultiService):
    """
    A running proxy: one listening service per endpoint, the xferlog, the
    admin endpoint, the health checker and the demo backends when asked
    for. C{factory} is there for inspection.

    Stopping it (SIGTERM under twistd) stops the listeners at once, lets
    running sessions finish for the configured grace period, closes what is
    left and the passive ports, and only then stops the xferlog, the health
    checks, the admin endpoint and the demo backends, so that what the last
    sessions do is still logged, checked and served.

    With C{reloadConfig}, SIGHUP (or L{reload}) applies a new configuration:
    see L{reload}.

    @ivar config: the configuration in effect: the last one loaded, except
        that options that need a restart keep the values the proxy started
        with.
    @ivar healthChecker: the active health checker, or L{None}.
    @ivar runsHealthChecks: whether active checks run here (L{True}) or
        elsewhere, their results reported to the pool from outside (a
        worker process, whose supervisor runs them).
    @ivar reloaded: called with no arguments after each reload that
        applied (the supervisor of worker processes passes it on).
    @ivar xferlog: the xferlog (reopened at a new path by a reload).
    @ivar admin: the admin endpoint, or L{None}.
    """

    log = Logger()
    # A twisted.logger observer that replaces twistd's own (--log-format json).
    logObserver = None

    def __init__(
        self,
        factory: ProxyFactory,
        reactor,
        reloadConfig: Callable[[], ProxyConfig | LoadedConfig] | None = None,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.config = factory.config
        self._reactor = reactor
        self._reloadConfig = reloadConfig
        self.healthChecker: HealthChecker | None = None
        self.admin: AdminService | None = None
        self.runsHealthChecks = True
        self.reloaded: list[Callable[[], object]] = []
        self.xferlog = ReopenableXferlog(self.config.xferlog)
        self.xferlog.setServiceParent(self)
        self._demo: _DemoWiring | None = None
        self._listeners: list[IService] = []
        self._headerFactories: list[listeners.ProxyHeaderFactory] = []
        self._previousHangupHandler: Any = None

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.logObserver)

    # -- building ----------------------------------------------------------------

    def addListener(self, description: str, factory) -> None:
        """
        Listen on endpoint C{description} with C{factory}; a C{haproxy:}
        endpoint first reads a PROXY header, within C{proxy_header_timeout}.
        """
        try:
            if description.startswith(listeners.LISTEN_PREFIX):
                endpoint = endpoints.serverFromString(
                    self._reactor, description[len(listeners.LISTEN_PREFIX) :]
                )
                factory = listeners.ProxyHeaderFactory(
                    factory, self._reactor, self.config.proxyHeaderTimeout
                )
                self._headerFactories.append(factory)
            else:
                endpoint = endpoints.serverFromString(self._reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"listen endpoint {description!r}: {e}") from None
        # Failing to listen must stop start-up, not be logged and ignored.
        listening = raiseListenErrorsAtStart(StreamServerEndpointService(endpoint, factory))
        listening.setServiceParent(self)
        self._listeners.append(listening)

    def adoptListener(self, description: str, fileno: int, ipv6: bool, factory) -> None:
        """
        Accept connections with C{factory} on a listening TCP socket opened
        by another process (the supervisor of worker processes) and passed
        down as file descriptor C{fileno}; C{description} is the endpoint
        it was opened for (a C{haproxy:} one reads PROXY headers first).
        """
        if description.startswith(listeners.LISTEN_PREFIX):
            factory = listeners.ProxyHeaderFactory(
                factory, self._reactor, self.config.proxyHeaderTimeout
            )
            self._headerFactories.append(factory)
        listening = AdoptedPortService(self._reactor, fileno, ipv6, factory)
        listening.setServiceParent(self)
        self._listeners.append(listening)

    def addDemoBackends(self) -> None:
        """
        Run the in-process demo backends and add them to the pool.
        """
        self._demo = _DemoWiring(self._reactor, self.factory.pool, self.config.backends)
        self._demo.setServiceParent(self)

    # -- running -----------------------------------------------------------------

    def privilegedStartService(self) -> None:
        with startErrorsAsExit():
            super().privilegedStartService()

    def startService(self) -> None:
        with startErrorsAsExit():
            super().startService()
        if self._reloadConfig is not None and threading.current_thread() is threading.main_thread():
            self._previousHangupHandler = signal.signal(
                signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.reload)
            )

    def _restoreHangupHandler(self) -> None:
        if self._previousHangupHandler is not None:
            previous, self._previousHangupHandler = self._previousHangupHandler, None
            signal.signal(signal.SIGHUP, previous)

    def reload(self) -> bool:
        """
        Load the configuration again and apply it.

        Options marked live in L{ftpproxy.settings.options.OPTIONS} take
        effect for new sessions (running ones keep what they started with);
        options marked restart keep their running values.  One log event
        says which keys changed, which took effect, which need a restart,
        and which file values the command line overrides.  A configuration
        that is refused (or an xferlog that cannot be opened) changes
        nothing and is logged as "configuration not reloaded".  The xferlog
        is reopened on every reload, so that it can be rotated.

        @return: whether the configuration was applied.
        """
        if self._reloadConfig is None:
            return False
        if not self.running:
            self.log.warn("configuration not reloaded: the proxy is not running (or stopping)")
            return False
        try:
            loaded = self._reloadConfig()
        except ConfigError as e:
            self.log.error("configuration not reloaded: {error}", error=str(e))
            return False
        return self.applyConfig(loaded)

    def applyConfig(self, loaded: ProxyConfig | LoadedConfig, report: bool = True) -> bool:
        """
        Apply a configuration loaded elsewhere, as L{reload} applies the one
        it loads; with C{report} false, a refusal is still logged, but what
        took effect is not (a worker's supervisor reports it once for all).

        @return: whether the configuration was applied.
        """
        if not self.running:
            self.log.warn("configuration not reloaded: the proxy is not running (or stopping)")
            return False
        if isinstance(loaded, ProxyConfig):
            loaded = LoadedConfig(loaded)
        try:
            plan = self._plan(loaded.config)
            # Reopened even at the same path, so that it can be rotated.
            self.xferlog.reopen(plan.config.xferlog)
        except ConfigError as e:
            self.log.error("configuration not reloaded: {error}", error=str(e))
            return False
        self._apply(plan)
        if report:
            self._report(plan, loaded.overridden)
        for callback in self.reloaded:
            callback()
        return True

    def _plan(self, new: ProxyConfig) -> _ReloadPlan:
        """
        Everything about applying C{new} that can fail, done before anything
        is changed.
        """
        new = withTLSRig(new)
        old = self.config
        changed = changedOptions(old, new)
        kept = {o.field: getattr(old, o.field) for o in changed if o.reload is Reload.RESTART}
        try:
            running = attrs.evolve(new, **kept)
        except ConfigError as e:
            keys = ", ".join(o.key for o in changed if o.reload is Reload.RESTART)
            raise ConfigError(
                f"{e} (with the running values of {keys}, which need a restart to change)"
            ) from None
        forSessions = running
        if self._demo is not None:
            forSessions = attrs.evolve(
                running, backends=running.backends + self._demo.backendConfigs
            )
        policy = None
        if (running.policy, running.policyOptions) != (old.policy, old.policyOptions):
            policy = policyNamed(running.policy, **running.policyOptions)
        serverTLS, listenerTLS = _serverTLS(running)
        access = adminAccessFor(running, self.log) if self.admin is not None else None
        return _ReloadPlan(running, forSessions, changed, serverTLS, listenerTLS, policy, access)

    def _apply(self, plan: _ReloadPlan) -> None:
        config = plan.config
        self.config = config
        if plan.policy is not None:
            self.factory.pool.policy = plan.policy
        if plan.adminAccess is not None and self.admin is not None:
            self.admin.access = plan.adminAccess
        self.factory.reconfigure(plan.forSessions, plan.serverTLS, plan.listenerTLS)
        for headerFactory in self._headerFactories:
            headerFactory.timeout = config.proxyHeaderTimeout
        health = config.health or _NO_HEALTH_CHECKS
        self.factory.pool.useHealthSettings(health)
        if not self.runsHealthChecks:
            self.factory.pool.activeChecks = health.active
        elif self.healthChecker is not None:
            self.healthChecker.updateSettings(health)
        elif health.active:
            self.healthChecker = HealthChecker(
                self._reactor, self.factory.pool, health, self.factory.metrics
            )
            self.healthChecker.setServiceParent(self)

    def _report(self, plan: _ReloadPlan, overridden: tuple[str, ...]) -> None:
        changed = [o.key for o in plan.changed]
        applied = [o.key for o in plan.changed if o.reload is Reload.LIVE]
        restart = [o.key for o in plan.changed if o.reload is Reload.RESTART]
        parts = []
        if changed:
            parts.append(f"changed: {', '.join(changed)}")
            parts.append(f"took effect: {', '.join(applied) or 'none'}")
            parts.append(f"need a restart: {', '.join(restart) or 'none'}")
        else:
            parts.append("nothing changed")
        if overridden:
            parts.append(f"the command line overrides the file for: {', '.join(overridden)}")
        self.log.info(
            "configuration reloaded ({backends} backends): {summary}",
            backends=len(plan.forSessions.backends),
            summary="; ".join(parts),
            changed=changed,
            applied=applied,
            restart=restart,
            overridden=list(overridden),
            **{EVENT_FIELD: CONFIGURATION_RELOADED},
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, let sessions finish (closing those still there
        after C{shutdown_grace} seconds), then stop the rest.
        """
        Service.stopService(self)
        listening = _stopAll(self._listeners, self.log)
        grace = self.config.shutdownGrace
        if self.factory.sessions:
            self.log.info(
                "stopped listening; {count} sessions have {grace}s to finish",
                count=len(self.factory.sessions),
                grace=grace,
            )
        finished = self._sessionsFinished(grace)
        rest = [service for service in reversed(list(self)) if service not in self._listeners]
        both = defer.DeferredList([listening, finished], consumeErrors=True)
        both.addCallback(lambda _: self.factory.closePassivePorts())
        both.addCallback(lambda _: _stopAll(rest, self.log))
        # Until then SIGHUP is answered with "not reloaded", not by the
        # default action (which ends the process).
        both.addCallback(lambda _: self._restoreHangupHandler())
        return both

    def _sessionsFinished(self, grace: float) -> Deferred[None]:
        idle = self.factory.whenIdle()
        if idle.called:
            return idle
        timer = self._reactor.callLater(
            grace, self.factory.closeAllSessions, "Server shutting down."
        )

        def finished(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return idle.addBoth(finished)


@attrs.frozen
class _ReloadPlan:
    """
    A reload, ready to apply.

    @ivar config: the configuration that will be in effect.
    @ivar forSessions: C{config} as the session factory gets it (with the
        demo backends).
    @ivar changed: the options whose values differ from the running ones.
    @ivar serverTLS: the default profile's server TLS, or L{None}.
    @ivar listenerTLS: each listener's server TLS (or L{None}), by name.
    @ivar policy: a new balancing policy, or L{None} to keep the current
        one (and its state, such as a round-robin position).
    @ivar adminAccess: who the admin endpoint answers (its token file read
        again), or L{None} without one.
    """

    config: ProxyConfig
    forSessions: ProxyConfig
    changed: tuple[Option, ...]
    serverTLS: Any
    listenerTLS: dict[str, Any]
    policy: Any
    adminAccess: AdminAccess | None


def _stopAll(services: Iterable[IService], log: Logger) -> Deferred[None]:
    """
    Stop C{services} together; a failure to stop one is logged and does
    not keep the others from stopping.
    """
    stopping = [defer.maybeDeferred(service.stopService) for service in services]

    def logged(results: list[tuple[bool, Any]]) -> None:
        for ok, result in results:
            if not ok:
                log.failure("a service failed to stop", result)

    return defer.DeferredList(stopping, consumeErrors=True).addCallback(logged)


class ReopenableXferlog(Service):
    """
    The xferlog at C{path}, if one is configured: one L{XferlogService} at
    a time, which L{reopen} replaces with one at a new path.

    @ivar path: where transfers are logged; L{None} for nowhere.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._current: XferlogService | None = None

    def startService(self) -> None:
        super().startService()
        self._current = _openXferlog(self.path)

    def reopen(self, path: str | None) -> None:
        """
        Log to C{path} from now on (L{None}: stop logging transfers).

        @raise ConfigError: when the new file cannot be opened; the old one
            stays in use.
        """
        if self.running:
            new = _openXferlog(path)
            old, self._current = self._current, new
            if old is not None:
                old.stopService()
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        current, self._current = self._current, None
        if current is not None:
            current.stopService()


def _openXferlog(path: str | None) -> XferlogService | None:
    if path is None:
        return None
    xferlog = XferlogService(path)
    try:
        xferlog.startService()
    except OSError as e:
        raise ConfigError(f"cannot open xferlog {path}: {e.strerror}") from None
    return xferlog


@contextmanager
def startErrorsAsExit():
    """
    A port that cannot be listened on, or a log file that cannot be opened,
    ends start-up with one line, not a traceback.
    """
    try:
        yield
    except CannotListenError as e:
        where = f"{e.interface or '*'}:{e.port}"
        raise SystemExit(f"ftpproxy: cannot listen on {where}: {e.socketError}") from None
    except ConfigError as e:
        raise SystemExit(f"ftpproxy: {e}") from None


def adminAccessFor(config: ProxyConfig, log: Logger) -> AdminAccess:
    """
    Who the admin endpoint of C{config} answers (its token file read now);
    a token file other users may read is warned about.
    """
    access = adminAccess(config.adminTokenFile, config.adminHosts)
    if config.adminTokenFile is not None and tokenFileExposed(config.adminTokenFile):
        log.warn(
            "admin_token_file {path} is readable by every user of this machine",
            path=config.adminTokenFile,
        )
    return access


def _serverTLS(config: ProxyConfig) -> tuple[Any, dict[str, Any]]:
    """
    The default profile's server TLS, and each listener's (one context per
    listener, with its profile; L{None} for a listener without TLS), made
    afresh: certificate files are read again.
    """
    if config.tls is None:
        return None, {listener.label: None for listener in listenerTable(config)}
    try:
        default = makeProfileTLS(config.tlsProfile(None))
        listenerTLS = {}
        for listener in listenerTable(config):
            if listenerMode(listener, config) == "none":
                listenerTLS[listener.label] = None
                continue
            profile = config.tlsProfile(listener.tlsProfile)
            try:
                listenerTLS[listener.label] = makeProfileTLS(profile, listener=listener.label)
            except TLSSettingsError as e:
                raise TLSSettingsError(f"listener {listener.label!r} ({profile.name}): {e}") from None
    except TLSSettingsError as e:
        raise ConfigError(f"TLS: {e}") from None
    return default, listenerTLS


def proxyCore(
    config: ProxyConfig,
    reactor,
    reloadConfig=None,
    events: IProxyEvents | None = None,
    runHealthChecks: bool = True,
    pool: BackendPool | None = None,
) -> ProxyService:
    """
    A L{ProxyService} for C{config} with no listener and no admin endpoint:
    its pool, session factory, health checks, xferlog and demo backends.

    L{makeService} adds the listeners and the admin endpoint; a worker
    process adopts its supervisor's listeners instead and reports to it.

    @param events: where sessions, the pool and health checks report
        (default: a new L{ftpproxy.ops.metrics.ProxyMetrics}).
    @param runHealthChecks: L{False} to leave active checks to someone who
        reports their results to the pool (the supervisor of a worker).
    @param pool: the backend pool, if not a new L{BackendPool} of
        C{config}'s backends.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    config = withTLSRig(config)
    health = config.health or _NO_HEALTH_CHECKS
    if pool is None:
        pool = BackendPool(
            config.backends,
            policyNamed(config.policy, **config.policyOptions),
            reactor=reactor,
            health=health,
        )
    serverTLS, listenerTLS = _serverTLS(config)
    factory = ProxyFactory(reactor, config, pool, serverTLS, listenerTLS, events=events)
    pool.metrics = factory.metrics
    service = ProxyService(factory, reactor, reloadConfig)
    service.runsHealthChecks = runHealthChecks
    if not runHealthChecks:
        pool.activeChecks = health.active
    elif health.active:
        service.healthChecker = HealthChecker(reactor, pool, health, factory.metrics)
        service.healthChecker.setServiceParent(service)
    if config.demo:
        service.addDemoBackends()
    return service


def makeService(config: ProxyConfig, reactor=None, reloadConfig=None) -> ProxyService:
    """
    The service that runs ftpproxy with C{config} in this process.

    Start it with C{startService()} (twistd does) and stop it with
    C{stopService()}; the reactor is passed in so that tests and embedders
    choose it. (With C{workers} above 1, C{twistd ftpproxy} runs
    L{ftpproxy.app.supervisor.makeSupervisor} instead.)

    @param reloadConfig: called by L{ProxyService.reload} (and on SIGHUP)
        for the new configuration: a L{ProxyConfig}, or a
        L{ftpproxy.settings.commandline.LoadedConfig}.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    if config.workers != 1:
        raise ConfigError(
            f"workers = {config.workers!r}: makeService runs the proxy in this process; "
            "ftpproxy.app.supervisor.makeSupervisor starts worker processes"
        )
    service = proxyCore(config, reactor, reloadConfig)
    factory = service.factory
    if config.admin:
        access = adminAccessFor(config, ProxyService.log)
        service.admin = makeAdminService(reactor, config.admin, factory, factory.pool, access)
        service.admin.setServiceParent(service)
    # The configuration in effect: with the TLS rig's listeners, if asked for.
    for listener in listenerTable(service.config):
        service.addListener(listener.endpoint, factory.forListener(listener))
    return service


class AdoptedPortService(Service):
    """
    Listens on a socket handed over by file descriptor while running: the
    descriptor is adopted (Twisted duplicates it) and closed on start, so
    that stopping closes this process's last hold on the socket.
    """

    def __init__(self, reactor, fileno: int, ipv6: bool, factory) -> None:
        self._reactor = reactor
        self._fileno: int | None = fileno
        self._family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self._factory = factory
        self.port = None

    def startService(self) -> None:
        super().startService()
        fileno, self._fileno = self._fileno, None
        if fileno is None:
            raise RuntimeError("a listening socket handed over can be adopted once only")
        try:
            self.port = self._reactor.adoptStreamPort(fileno, self._family, self._factory)
        finally:
            os.close(fileno)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class _DemoWiring(Service):
    """
    Starts the in-process demo backends first and adds them to the backend
    pool, after the configured ones.

    @ivar backendConfigs: the demo backends, once started.
    """

    log = Logger()

    def __init__(self, reactor, pool: BackendPool, configured: tuple[BackendConfig, ...]) -> None:
        self._backends = DemoBackends(reactor)
        self._pool = pool
        self._configured = configured
        self.backendConfigs: tuple[BackendConfig, ...] = ()

    def startService(self) -> None:
        super().startService()
        addresses = self._backends.start()
        self.backendConfigs = tuple(
            BackendConfig(address=HostPort(host, port), name=f"backend-{n}")
            for n, (host, port) in enumerate(addresses, start=1)
        )
        self._pool.replace(self._configured + self.backendConfigs)
        for n, (host, port) in enumerate(addresses, start=1):
            self.log.info("demo backend-{n} listening on {host}:{port}", n=n, host=host, port=port)

    def stopService(self):
        super().stopService()
        return self._backends.stop()
