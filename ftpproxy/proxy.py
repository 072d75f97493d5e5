"""
The proxy's server factory: what every session shares.
"""

from __future__ import annotations

import copy
import secrets

from twisted.internet.protocol import Factory

from ftpproxy.balancer import BackendPool
from ftpproxy.config import ProxyConfig
from ftpproxy.limits import LoginThrottle, SessionLimiter
from ftpproxy.metrics import ProxyMetrics
from ftpproxy.passive import PassivePortPool
from ftpproxy.session import ProxySession
from ftpproxy.tlsconfig import BackendTLSSettings, makeBackendTLS


class ProxyFactory(Factory):
    """
    Builds a L{ProxySession} per client connection and keeps what they
    share: the configuration, the backends, the passive ports.
    """

    implicitTLS = False

    def __init__(self, reactor, config: ProxyConfig, pool: BackendPool, serverTLS=None) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = pool
        self.serverTLS = serverTLS
        self.passivePorts = PassivePortPool(reactor, config.passivePorts)
        self.sessions: set[ProxySession] = set()
        self.metrics = ProxyMetrics()
        self.limiter = SessionLimiter(config.maxSessions, config.maxSessionsPerClient)
        self.loginThrottle = LoginThrottle(
            reactor,
            window=config.loginFailureWindow,
            delayAfter=config.loginFailuresBeforeDelay,
            blockAfter=config.loginFailuresBeforeBlock,
        )

    def implicitVariant(self) -> ProxyFactory:
        """
        A factory for implicit FTPS listeners that shares everything with
        this one (backends, passive ports, the TLS context) but starts TLS
        on the first byte.
        """
        variant = copy.copy(self)
        variant.implicitTLS = True
        return variant

    def buildProtocol(self, addr) -> ProxySession:
        session = ProxySession(self)
        session.factory = self
        self.sessions.add(session)
        return session

    def newSessionId(self) -> str:
        return secrets.token_hex(4)

    def sessionEnded(self, session: ProxySession) -> None:
        self.sessions.discard(session)

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
