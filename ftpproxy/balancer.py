"""
Choosing a backend for a new session.

A policy orders the backends for one session; the session tries them in that
order, so a backend that refuses or times out is passed over before the
client notices.
"""

from __future__ import annotations

from typing import Sequence

import attrs
from zope.interface import Interface, implementer

from ftpproxy.config import BackendConfig


@attrs.define(eq=False)
class Backend:
    """
    A backend and what the proxy knows about it at run time.
    """

    config: BackendConfig
    activeSessions: int = 0
    totalSessions: int = 0
    # The backend's TLS client context, made on first use (see ProxyFactory).
    tls: object = None

    @property
    def name(self) -> str:
        return self.config.name

    def sessionStarted(self) -> None:
        self.activeSessions += 1
        self.totalSessions += 1

    def sessionEnded(self) -> None:
        self.activeSessions -= 1


class IBalancingPolicy(Interface):
    def candidates(clientHost: str, backends: Sequence[Backend]) -> list[Backend]:
        """
        The backends to try for a new session from C{clientHost}, best first.
        """


@implementer(IBalancingPolicy)
class RoundRobin:
    """
    Each new session starts one backend further along; the others follow in
    ring order as fallbacks.
    """

    def __init__(self) -> None:
        self._next = 0

    def candidates(self, clientHost: str, backends: Sequence[Backend]) -> list[Backend]:
        if not backends:
            return []
        start = self._next % len(backends)
        self._next = start + 1
        return list(backends[start:]) + list(backends[:start])


def policyNamed(name: str) -> IBalancingPolicy:
    policies = {"round-robin": RoundRobin}
    return policies[name]()


class BackendPool:
    """
    The current backends and the policy that orders them.

    The list can be replaced while sessions run (the demo fills it once its
    backends listen); sessions keep the L{Backend} they were given.
    """

    def __init__(self, configs: Sequence[BackendConfig], policy: IBalancingPolicy) -> None:
        self.policy = policy
        self.backends: list[Backend] = []
        self.replace(configs)

    def replace(self, configs: Sequence[BackendConfig]) -> None:
        known = {b.config: b for b in self.backends}
        self.backends = [known.get(c) or Backend(c) for c in configs]

    def candidates(self, clientHost: str) -> list[Backend]:
        return self.policy.candidates(clientHost, self.backends)
