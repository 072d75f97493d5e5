"""
Wiring: the services that run a proxy, for twistd and for embedders alike.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
import threading
from typing import Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger

from ftpproxy.internals import raiseListenErrorsAtStart
from ftpproxy.ops.admin import makeAdminService
from ftpproxy.app import listeners
from ftpproxy.backends.balancer import BackendPool, policyNamed
from ftpproxy.backends.health import HealthChecker, HealthSettings
from ftpproxy.settings.config import BackendConfig, ConfigError, HostPort, ProxyConfig
from ftpproxy.ops.logs import XferlogService
from ftpproxy.app.proxy import ProxyFactory
from ftpproxy.tls.contexts import TLSSettingsError, makeServerTLS


class ProxyService(MultiService):
    """
    A running proxy: one listening service per endpoint, plus the demo
    backends when asked for. C{factory} is there for inspection.

    Stopping it (SIGTERM under twistd) stops the listeners at once, lets
    running sessions finish for the configured grace period, then closes
    what is left. With C{reloadConfig}, SIGHUP (or L{reload}) applies a new
    configuration to new sessions without touching running ones.
    """

    log = Logger()
    healthChecker = None
    # A twisted.logger observer that replaces twistd's own (--log-format json).
    logObserver = None

    def __init__(self, factory: ProxyFactory, reactor, reloadConfig=None) -> None:
        super().__init__()
        self.factory = factory
        self._reactor = reactor
        self._reloadConfig: Callable[[], ProxyConfig] | None = reloadConfig

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.logObserver)

    def privilegedStartService(self) -> None:
        with _listeningErrorsAsExit():
            super().privilegedStartService()

    def startService(self) -> None:
        with _listeningErrorsAsExit():
            super().startService()
        if self._reloadConfig is not None and threading.current_thread() is threading.main_thread():
            signal.signal(
                signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.reload)
            )

    def reload(self) -> bool:
        """
        Read the configuration again and use it for new sessions: backends,
        weights, limits, certificates. Listening endpoints need a restart.
        """
        if self._reloadConfig is None:
            return False
        try:
            config = self._reloadConfig()
            serverTLS = _serverTLS(config)
            policyNamed(config.policy, **config.policyOptions)
        except ConfigError as e:
            self.log.error("configuration not reloaded: {error}", error=str(e))
            return False
        old = self.factory.config
        if (config.listen, config.implicitListen) != (old.listen, old.implicitListen):
            self.log.warn("listening endpoints changed: they take effect at restart")
        if (config.policy, config.policyOptions) != (old.policy, old.policyOptions):
            self.factory.pool.policy = policyNamed(config.policy, **config.policyOptions)
        self.factory.routesByUser = config.policy == "user-hash"
        self.factory.reconfigure(config, serverTLS)
        health = config.health or HealthSettings(kind="none")
        self.factory.pool.useHealthSettings(health)
        if self.healthChecker is not None:
            self.healthChecker.updateSettings(health)
        elif health.active:
            self.healthChecker = HealthChecker(
                self._reactor, self.factory.pool, health, self.factory.metrics
            )
            self.healthChecker.setServiceParent(self)
        self.log.info(
            "configuration reloaded: {count} backends", count=len(config.backends)
        )
        return True

    def stopService(self) -> Deferred[None]:
        stopping = defer.maybeDeferred(super().stopService)
        grace = self.factory.config.shutdownGrace
        if self.factory.sessions:
            self.log.info(
                "stopped listening; {count} sessions have {grace}s to finish",
                count=len(self.factory.sessions),
                grace=grace,
            )
        idle = self.factory.whenIdle()
        timer = self._reactor.callLater(
            grace, self.factory.closeAllSessions, "Server shutting down."
        )

        def finished(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return defer.gatherResults([stopping, idle.addBoth(finished)]).addCallback(
            lambda _: None
        )


@contextmanager
def _listeningErrorsAsExit():
    """
    A port that cannot be listened on ends start-up with one line, not a
    traceback.
    """
    try:
        yield
    except CannotListenError as e:
        where = f"{e.interface or '*'}:{e.port}"
        raise SystemExit(f"ftpproxy: cannot listen on {where}: {e.socketError}") from None


def _serverTLS(config: ProxyConfig):
    if config.tls is None:
        return None
    try:
        return makeServerTLS(config.tls)
    except TLSSettingsError as e:
        raise ConfigError(f"TLS: {e}") from None


def makeService(config: ProxyConfig, reactor=None, reloadConfig=None) -> ProxyService:
    """
    The service that runs ftpproxy with C{config}.

    Start it with C{startService()} (twistd does) and stop it with
    C{stopService()}; the reactor is passed in so that tests and embedders
    choose it.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    pool = BackendPool(
        config.backends,
        policyNamed(config.policy, **config.policyOptions),
        reactor=reactor,
        health=config.health or HealthSettings(kind="none"),
    )
    factory = ProxyFactory(reactor, config, pool, _serverTLS(config))
    pool.metrics = factory.metrics
    service = ProxyService(factory, reactor, reloadConfig)
    if config.health is not None and config.health.active:
        service.healthChecker = HealthChecker(reactor, pool, config.health, factory.metrics)
        service.healthChecker.setServiceParent(service)
    if config.admin:
        makeAdminService(reactor, config.admin, factory, pool).setServiceParent(service)
    if config.xferlog:
        XferlogService(config.xferlog).setServiceParent(service)
    if config.demo:
        _DemoWiring(reactor, pool).setServiceParent(service)
    for description in config.listen:
        _listen(reactor, description, factory, config).setServiceParent(service)
    if config.implicitListen:
        implicit = factory.implicitVariant()
        for description in config.implicitListen:
            _listen(reactor, description, implicit, config).setServiceParent(service)
    return service


def _listen(reactor, description: str, factory, config: ProxyConfig) -> StreamServerEndpointService:
    try:
        # haproxy:... listeners read a PROXY protocol header first.
        endpoint = listeners.serverFromString(
            reactor, description, headerTimeout=config.proxyHeaderTimeout
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"listen endpoint {description!r}: {e}") from None
    listening = StreamServerEndpointService(endpoint, factory)
    # Failing to listen must stop start-up, not be logged and ignored.
    return raiseListenErrorsAtStart(listening)


class _DemoWiring(Service):
    """
    Starts the in-process demo backends first and hands their addresses to
    the backend pool.
    """

    log = Logger()

    def __init__(self, reactor, pool: BackendPool) -> None:
        from ftpproxy.app.demo import DemoBackends

        self._backends = DemoBackends(reactor)
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        addresses = self._backends.start()
        self._pool.replace(
            [
                BackendConfig(address=HostPort(host, port), name=f"backend-{n}")
                for n, (host, port) in enumerate(addresses, start=1)
            ]
        )
        for n, (host, port) in enumerate(addresses, start=1):
            self.log.info("demo backend-{n} listening on {host}:{port}", n=n, host=host, port=port)

    def stopService(self):
        super().stopService()
        return self._backends.stop()
