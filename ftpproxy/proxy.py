"""
The proxy's server factory: what every session shares.
"""

from __future__ import annotations

import secrets

from twisted.internet.protocol import Factory

from ftpproxy.balancer import BackendPool
from ftpproxy.config import ProxyConfig
from ftpproxy.passive import PassivePortPool
from ftpproxy.session import ProxySession


class ProxyFactory(Factory):
    """
    Builds a L{ProxySession} per client connection and keeps what they
    share: the configuration, the backends, the passive ports.
    """

    def __init__(self, reactor, config: ProxyConfig, pool: BackendPool) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = pool
        self.passivePorts = PassivePortPool(reactor, config.passivePorts)
        self.sessions: set[ProxySession] = set()

    def buildProtocol(self, addr) -> ProxySession:
        session = ProxySession(self)
        session.factory = self
        self.sessions.add(session)
        return session

    def newSessionId(self) -> str:
        return secrets.token_hex(4)

    def sessionEnded(self, session: ProxySession) -> None:
        self.sessions.discard(session)
