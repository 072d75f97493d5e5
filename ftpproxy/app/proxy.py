"""
The proxy's server factory: it admits clients and hands each session the
services of the current configuration.
"""

from __future__ import annotations

import secrets
from typing import Any, Mapping

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from zope.interface import implementer

from ftpproxy.backends.balancer import Backend, BackendPool
from ftpproxy.data.passive import PassivePortPool
from ftpproxy.events import IProxyEvents
from ftpproxy.ops.metrics import ProxyMetrics
from ftpproxy.session.control import ClientControl, IAdmission
from ftpproxy.session.limits import LoginThrottle, Refusal, SessionLimiter
from ftpproxy.session.services import SessionServices
from ftpproxy.settings.config import ListenerSettings, ProxyConfig, listenerMode
from ftpproxy.tls.contexts import BackendTLSSettings, makeBackendTLS

GREETING = "ftpproxy ready."


@implementer(IAdmission)
class ProxyFactory(Factory):
    """
    Builds a L{ClientControl} per client connection.

    @ivar services: what new sessions get (those of a listener get them with
        the listener's TLS: L{servicesFor}); a reload replaces it, and
        running sessions keep the one they started with.
    @ivar sessions: the admitted control connections still open.
    @ivar loggedIn: those of them whose client has logged in.
    @ivar metrics: the proxy's counters (an L{ftpproxy.events.IProxyEvents}).
    """


    def __init__(
        self,
        reactor: Any,
        config: ProxyConfig,
        pool: BackendPool,
        serverTLS: Any = None,
        listenerTLS: Mapping[str, Any] | None = None,
        events: IProxyEvents | None = None,
    ) -> None:
        """
        @param serverTLS: the default profile's TLS, for sessions of this
            factory's own C{buildProtocol}.
        @param listenerTLS: each listener's TLS (a
            L{ftpproxy.tls.contexts.ServerTLS} or None), by listener name,
            for the factories of L{forListener}; a listener missing there
            gets C{serverTLS}.
        @param events: where sessions report (default: a new
            L{ftpproxy.ops.metrics.ProxyMetrics}).
        """
        self.reactor = reactor
        self.pool = pool
        self.metrics = events if events is not None else ProxyMetrics()
        self.sessions: set[ClientControl] = set()
        self.loggedIn: set[ClientControl] = set()
        self._idleWaiters: list[Deferred[None]] = []
        self.limiter = SessionLimiter(
            config.maxSessions, config.maxSessionsPerClient, config.maxPreLoginPerClient
        )
        self.loginThrottle = LoginThrottle(
            reactor,
            window=config.loginFailureWindow,
            delayAfter=config.loginFailuresBeforeDelay,
            blockAfter=config.loginFailuresBeforeBlock,
        )
        self._listenerTLS: Mapping[str, Any] = dict(listenerTLS or {})
        self._byListener: dict[str, SessionServices] = {}
        self.services = self._services(config, serverTLS, PassivePortPool(reactor, config.passivePorts))
        self._retiredPorts: list[PassivePortPool] = []

    @property
    def config(self) -> ProxyConfig:
        return self.services.config

    @property
    def serverTLS(self) -> Any:
        return self.services.serverTLS

    def _services(self, config: ProxyConfig, serverTLS: Any, ports: PassivePortPool) -> SessionServices:
        return SessionServices(
            reactor=self.reactor,
            config=config,
            pool=self.pool,
            passivePorts=ports,
            serverTLS=serverTLS,
            events=self.metrics,
            loginThrottle=self.loginThrottle,
            backendTLS=self.backendTLSFor,
            routesByUser=config.policy == "user-hash",
            greeting=GREETING,
            newSessionId=lambda: secrets.token_hex(4),
            connectsAtUser=config.backendAtUser,
        )

    def forListener(self, listener: ListenerSettings) -> ListenerFactory:
        """
        The factory of one listener: the same sessions, backends and
        passive ports, with the listener's TLS mode, profile and
        require_tls.
        """
        return ListenerFactory(self, listener, listenerMode(listener, self.config) == "implicit")

    def servicesFor(self, listener: ListenerSettings) -> SessionServices:
        """
        What a new session of C{listener} gets: the current services with
        the listener's TLS, require_tls and session reuse.
        """
        services = self._byListener.get(listener.label)
        if services is None:
            services = self._byListener[listener.label] = self._listenerServices(listener)
        return services

    def _listenerServices(self, listener: ListenerSettings) -> SessionServices:
        base = self.services
        config = base.config
        if listenerMode(listener, config) == "none":
            # No TLS here: nothing can be required of it.
            sessionConfig = attrs.evolve(config, requireTLS=False, requireSessionReuse=False)
            return attrs.evolve(base, config=sessionConfig, serverTLS=None)
        profile = config.tlsProfile(listener.tlsProfile)
        requireTLS = config.requireTLS if listener.requireTLS is None else listener.requireTLS
        sessionConfig = attrs.evolve(
            config,
            requireTLS=requireTLS,
            requireSessionReuse=profile.sessionReuse == "required",
        )
        serverTLS = self._listenerTLS.get(listener.label, base.serverTLS)
        return attrs.evolve(base, config=sessionConfig, serverTLS=serverTLS)

    def implicitVariant(self) -> ImplicitTLSFactory:
        """
        A factory for implicit FTPS listeners: the same sessions, backends,
        passive ports and TLS context, but TLS from the first byte.
        """
        return ImplicitTLSFactory(self)

    def buildProtocol(self, addr: Any) -> ClientControl:
        return ClientControl(self)

    # -- IAdmission -------------------------------------------------------------

    def admit(self, control: ClientControl, clientHost: str) -> SessionServices | Refusal:
        refusal = self.limiter.refusal(clientHost)
        if refusal is None and self.loginThrottle.blocked(clientHost):
            refusal = Refusal("login-blocked", "Too many failed logins from your address; try again later.")
        if refusal is not None:
            self.metrics.clientRefused(refusal.reason)
            return refusal
        self.limiter.opened(clientHost)
        self.sessions.add(control)
        return self.services

    def released(self, control: ClientControl, clientHost: str) -> None:
        wasIn = control in self.loggedIn
        self.loggedIn.discard(control)
        self.limiter.closed(clientHost, loggedIn=wasIn)
        self.sessions.discard(control)
        if not self.sessions:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def loginChanged(self, control: ClientControl, clientHost: str, loggedIn: bool) -> None:
        if control not in self.sessions or (control in self.loggedIn) == loggedIn:
            return
        if loggedIn:
            self.loggedIn.add(control)
            self.limiter.loggedIn(clientHost)
        else:
            self.loggedIn.discard(control)
            self.limiter.loggedOut(clientHost)

    # -- for the service ------------------------------------------------------------

    def reconfigure(
        self, config: ProxyConfig, serverTLS: Any, listenerTLS: Mapping[str, Any] | None = None
    ) -> None:
        """
        Take a reloaded configuration (and the TLS of its listeners, made
        afresh) for new sessions; sessions already running keep what they
        started with (their passive ports and TLS included).
        """
        ports = self.services.passivePorts
        if config.passivePorts != ports.range:
            ports.retire()
            self._retiredPorts = [p for p in self._retiredPorts if p.owned] + [ports]
            ports = PassivePortPool(self.reactor, config.passivePorts)
        self.pool.replace(config.backends)
        self.limiter.maxSessions = config.maxSessions
        self.limiter.maxPerClient = config.maxSessionsPerClient
        self.limiter.maxPreLoginPerClient = config.maxPreLoginPerClient
        # The same throttle object: failures counted before a reload count on.
        self.loginThrottle.window = config.loginFailureWindow
        self.loginThrottle.delayAfter = config.loginFailuresBeforeDelay
        self.loginThrottle.blockAfter = config.loginFailuresBeforeBlock
        self.services = self._services(config, serverTLS, ports)
        self._listenerTLS = dict(listenerTLS or {})
        self._byListener = {}

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires once no session is left.
        """
        if not self.sessions:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        return waiter

    def closePassivePorts(self) -> None:
        """
        Stop listening on every passive port (the proxy stops).
        """
        retired, self._retiredPorts = self._retiredPorts, []
        for pool in [self.services.passivePorts, *retired]:
            pool.close()

    def closeAllSessions(self, text: str) -> None:
        for control in list(self.sessions):
            control.closeSession(421, text)

    def backendTLSFor(self, backend: Backend) -> Any:
        """
        The client-side TLS creator for a backend, built once per backend
        so that its control and data connections share one context.
        """
        config = backend.config
        if not config.usesTLS:
            return None
        if backend.tls is None:
            settings = config.tlsSettings or BackendTLSSettings(hostname=config.address.host)
            backend.tls = makeBackendTLS(settings)
        return backend.tls


@implementer(IAdmission)
class ListenerFactory(Factory):
    """
    Builds the sessions of one listener: the proxy admits them, and they
    get the proxy's services with the listener's TLS (L{ProxyFactory.servicesFor}).

    @ivar listener: the listener's settings.
    @ivar implicit: whether TLS starts with the first byte.
    """

    noisy = False

    def __init__(self, proxy: ProxyFactory, listener: ListenerSettings, implicit: bool) -> None:
        self.proxy = proxy
        self.listener = listener
        self.implicit = implicit

    def doStart(self) -> None:
        # The proxy's factory counts the ports it serves, as a wrapping
        # factory's wrapped one does.
        self.proxy.doStart()

    def doStop(self) -> None:
        self.proxy.doStop()

    def buildProtocol(self, addr: Any) -> ClientControl:
        return ClientControl(self, implicitTLS=self.implicit)

    def admit(self, control: ClientControl, clientHost: str) -> SessionServices | Refusal:
        admitted = self.proxy.admit(control, clientHost)
        if not isinstance(admitted, SessionServices):
            return admitted
        return self.proxy.servicesFor(self.listener)

    def released(self, control: ClientControl, clientHost: str) -> None:
        self.proxy.released(control, clientHost)

    def loginChanged(self, control: ClientControl, clientHost: str, loggedIn: bool) -> None:
        self.proxy.loginChanged(control, clientHost, loggedIn)


class ImplicitTLSFactory(Factory):
    """
    Builds the proxy's sessions for an implicit FTPS listener.
    """

    noisy = False

    def __init__(self, proxy: ProxyFactory) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> ClientControl:
        return ClientControl(self.proxy, implicitTLS=True)
