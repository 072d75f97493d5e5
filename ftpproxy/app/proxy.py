"""
The proxy's server factory: what every session shares.
"""

from __future__ import annotations

import secrets

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory

from ftpproxy.backends.balancer import BackendPool
from ftpproxy.settings.config import ProxyConfig
from ftpproxy.session.limits import LoginThrottle, SessionLimiter
from ftpproxy.ops.metrics import ProxyMetrics
from ftpproxy.data.passive import PassivePortPool
from ftpproxy.session.core import ProxySession
from ftpproxy.tls.contexts import BackendTLSSettings, makeBackendTLS


class ProxyFactory(Factory):
    """
    Builds a L{ProxySession} per client connection and keeps what they
    share: the configuration, the backends, the passive ports.
    """

    greeting = "ftpproxy ready."

    def __init__(self, reactor, config: ProxyConfig, pool: BackendPool, serverTLS=None) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = pool
        self.serverTLS = serverTLS
        self.passivePorts = PassivePortPool(reactor, config.passivePorts)
        self.sessions: set[ProxySession] = set()
        self._idleWaiters: list[Deferred[None]] = []
        self.metrics = ProxyMetrics()
        # Under user-hash the backend is chosen at USER, not at connect.
        self.routesByUser = config.policy == "user-hash"
        self.limiter = SessionLimiter(config.maxSessions, config.maxSessionsPerClient)
        self.loginThrottle = LoginThrottle(
            reactor,
            window=config.loginFailureWindow,
            delayAfter=config.loginFailuresBeforeDelay,
            blockAfter=config.loginFailuresBeforeBlock,
        )

    def implicitVariant(self) -> ImplicitTLSFactory:
        """
        A factory for implicit FTPS listeners: the same sessions, backends,
        passive ports and TLS context, but TLS from the first byte.
        """
        return ImplicitTLSFactory(self)

    def buildProtocol(self, addr) -> ProxySession:
        session = ProxySession(self)
        session.factory = self
        self.sessions.add(session)
        return session

    def reconfigure(self, config: ProxyConfig, serverTLS) -> None:
        """
        Take a reloaded configuration for new sessions; sessions already
        running keep what they started with.
        """
        self.config = config
        self.serverTLS = serverTLS
        self.pool.replace(config.backends)
        if config.passivePorts != self.passivePorts.range:
            self.passivePorts = PassivePortPool(self.reactor, config.passivePorts)
        self.limiter.maxSessions = config.maxSessions
        self.limiter.maxPerClient = config.maxSessionsPerClient
        self.loginThrottle.window = config.loginFailureWindow
        self.loginThrottle.delayAfter = config.loginFailuresBeforeDelay
        self.loginThrottle.blockAfter = config.loginFailuresBeforeBlock

    def newSessionId(self) -> str:
        return secrets.token_hex(4)

    def sessionEnded(self, session: ProxySession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires once no session is left.
        """
        if not self.sessions:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        return waiter

    def closeAllSessions(self, text: str) -> None:
        for session in list(self.sessions):
            session.close(421, text)

    def backendTLSFor(self, backend):
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


class ImplicitTLSFactory(Factory):
    """
    Builds the proxy's sessions for an implicit FTPS listener.
    """

    noisy = False

    def __init__(self, proxy: ProxyFactory) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr) -> ProxySession:
        session = self.proxy.buildProtocol(addr)
        session.implicitTLS = True
        return session
