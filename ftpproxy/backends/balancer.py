"""
Choosing a backend for a new session.

A policy orders the backends for one session; the session tries them in that
order, so a backend that refuses or times out is passed over before the
client notices.  The pool keeps what the proxy knows about each backend at
run time (health, drain, sessions) and offers a policy only the backends that
may take a new session.

A backend with weight 0 is a backup under every policy: it comes after all
the others, so it is chosen only while none of them is available.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import math
import random
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import attrs
from twisted.logger import Logger
from zope.interface import Interface, implementer

# userHashOptions moved to the settings; it is still importable from here.
from ftpproxy.settings.backends import BackendConfig, userHashOptions  # noqa: F401
from ftpproxy.settings.values import ConfigError

log = Logger(namespace="ftpproxy.backends.balancer")


class BackendState(enum.StrEnum):
    """
    What the admin endpoint shows: draining wins over health, because it is
    what an operator asked for.
    """

    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


@attrs.define(eq=False)
class Backend:
    """
    A backend and what the proxy knows about it at run time.

    @ivar healthy: the health verdict (passive reports and active checks).
    @ivar draining: an operator asked for no new sessions.
    @ivar consecutiveFailures: failed connects or checks since the last
        success; C{fall} of them take the backend down.
    @ivar consecutiveSuccesses: passed checks since the last failure; C{rise}
        of them bring it back up.
    @ivar retryAt: when a backend taken down by failed connects may be tried
        by one session again (passive health only).
    """

    config: BackendConfig
    activeSessions: int = 0
    totalSessions: int = 0
    # The backend's TLS client context, made on first use (see ProxyFactory).
    tls: object = None
    healthy: bool = True
    draining: bool = False
    consecutiveFailures: int = 0
    consecutiveSuccesses: int = 0
    connectFailures: int = 0
    lastError: str | None = None
    lastChange: float | None = None
    retryAt: float | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def state(self) -> BackendState:
        if self.draining:
            return BackendState.DRAINING
        return BackendState.UP if self.healthy else BackendState.DOWN

    @property
    def available(self) -> bool:
        """
        May this backend take a new session now?
        """
        return self.healthy and not self.draining

    def sessionStarted(self) -> None:
        self.activeSessions += 1
        self.totalSessions += 1

    def sessionEnded(self) -> None:
        self.activeSessions -= 1


class IBalancingPolicy(Interface):
    def candidates(
        clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        """
        The backends to try for a new session from C{clientHost} (logging in
        as C{user}, when the choice waits for USER), best first.  Every
        backend given must appear once: the tail is the failover order.
        """


def _primariesAndBackups(backends: Sequence[Backend]) -> tuple[list[Backend], list[Backend]]:
    primaries = [b for b in backends if b.weight > 0]
    backups = [b for b in backends if b.weight <= 0]
    return primaries, backups


def _inService(backends: Sequence[Backend]) -> tuple[list[Backend], list[Backend]]:
    """
    Primaries and backups, the backups promoted when no primary is left.
    """
    primaries, backups = _primariesAndBackups(backends)
    if not primaries:
        return backups, []
    return primaries, backups


def _rotated(backends: Sequence[Backend], start: int) -> list[Backend]:
    if not backends:
        return []
    start %= len(backends)
    return list(backends[start:]) + list(backends[:start])


@implementer(IBalancingPolicy)
class RoundRobin:
    """
    Each new session starts one backend further along; the others follow in
    ring order as fallbacks.

    @param start: where the first session starts (worker processes each
        start one further along, so that their first sessions spread too).
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def candidates(
        self, clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        primaries, backups = _inService(backends)
        if not primaries:
            return []
        start = self._next % len(primaries)
        self._next = start + 1
        return _rotated(primaries, start) + backups


@implementer(IBalancingPolicy)
class WeightedRoundRobin:
    """
    Smooth weighted round robin (as nginx does it): over any run of
    sum-of-weights sessions each backend gets its weight's share, spread out
    rather than in bursts.  The fallbacks follow in the order the next picks
    would take.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def candidates(
        self, clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        primaries, backups = _primariesAndBackups(backends)
        if not primaries:
            # Only backups are left: share the sessions evenly among them.
            primaries, backups = backups, []
            weightOf: Callable[[Backend], int] = lambda b: 1
        else:
            weightOf = lambda b: b.weight
        if not primaries:
            return []
        names = {b.name for b in primaries}
        # A backend that was away starts again from zero.
        self._current = {n: w for n, w in self._current.items() if n in names}
        total = 0
        for backend in primaries:
            weight = weightOf(backend)
            self._current[backend.name] = self._current.get(backend.name, 0) + weight
            total += weight
        position = {b.name: i for i, b in enumerate(primaries)}
        ordered = sorted(
            primaries, key=lambda b: (-self._current[b.name], position[b.name])
        )
        self._current[ordered[0].name] -= total
        return ordered + backups


@implementer(IBalancingPolicy)
class LeastConnections:
    """
    The backend with the fewest active sessions first; ties go round robin so
    that idle backends share a burst of new sessions.

    Sessions count from the backend's greeting (L{Backend.sessionStarted}),
    so sessions still connecting are not seen.

    @param start: where the first tie starts, as for L{RoundRobin}.
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def candidates(
        self, clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        primaries, backups = _inService(backends)
        if not primaries:
            return []
        count = len(primaries)
        start = self._next % count
        self._next = start + 1
        ring = {id(b): (i - start) % count for i, b in enumerate(primaries)}
        ordered = sorted(primaries, key=lambda b: (b.activeSessions, ring[id(b)]))
        return ordered + sorted(backups, key=lambda b: b.activeSessions)


@implementer(IBalancingPolicy)
class RandomChoice:
    """
    A uniformly random order for each session.
    """

    def __init__(self, rng: random.Random | None = None, seed: Any = None) -> None:
        self._random = rng if rng is not None else random.Random(seed)

    def candidates(
        self, clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        primaries, backups = _primariesAndBackups(backends)
        return self._random.sample(primaries, len(primaries)) + self._random.sample(
            backups, len(backups)
        )


def rendezvousOrder(key: str, backends: Sequence[Backend]) -> list[Backend]:
    """
    Order C{backends} for C{key} by weighted rendezvous (highest random
    weight) hashing.

    Each (key, backend name) pair gets a score from a stable hash (BLAKE2b,
    never Python's salted C{hash()}), so every process with the same backend
    names orders a key the same way, across restarts and machines.  Taking a
    backend away moves only the keys it was first for, and each of those to
    its own next backend.  Unequal weights use Resch's C{-w / ln(h)} score;
    when all weights are equal the hash alone decides (no floating point,
    so no platform can round differently).  Weight 0 comes last.
    """
    encoded = key.encode("utf-8", "surrogateescape")
    prefix = len(encoded).to_bytes(4, "big") + encoded
    hashes = {
        id(b): int.from_bytes(
            hashlib.blake2b(
                prefix + b.name.encode("utf-8", "surrogateescape"), digest_size=8
            ).digest(),
            "big",
        )
        for b in backends
    }
    weights = {b.weight for b in backends if b.weight > 0}
    if len(weights) <= 1:
        def score(b: Backend) -> tuple:
            return (b.weight > 0, hashes[id(b)])
    else:
        def score(b: Backend) -> tuple:
            if b.weight <= 0:
                return (False, 0.0, hashes[id(b)])
            unit = (hashes[id(b)] + 1) / (2**64 + 1)  # strictly inside (0, 1)
            return (True, -b.weight / math.log(unit), hashes[id(b)])
    return sorted(backends, key=score, reverse=True)


def _hostKey(clientHost: str) -> str:
    """
    The client's address as one text per host: an IPv4 client seen through
    an IPv6 socket (::ffff:a.b.c.d) hashes like itself.
    """
    try:
        address = ipaddress.ip_address(clientHost.split("%", 1)[0])
    except ValueError:
        return clientHost
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@implementer(IBalancingPolicy)
class SourceHash:
    """
    Sessions from one client address go to the same backend, by rendezvous
    hashing of the address (see L{rendezvousOrder}).
    """

    def candidates(
        self, clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        return rendezvousOrder("host:" + _hostKey(clientHost), backends)


@implementer(IBalancingPolicy)
class UserHash:
    """
    Sessions of one user go to the same backend, by rendezvous hashing of the
    user name: proxies that share the backend names agree without sharing
    any state, and when a user's backend is down the user goes to the next
    one in that user's own order.

    @param table: user name to backend name; that backend comes first for
        the user whenever it is available, and the hashed order follows.
    @param ignoreCase: treat user names that differ only in case as one
        user (for backends such as Alfresco whose user names do).

    Without a user name yet the client address is hashed instead.
    """

    def __init__(self, table: Mapping[str, str] | None = None, ignoreCase: bool = False) -> None:
        self._ignoreCase = ignoreCase
        self._table = {self._fold(u): b for u, b in (table or {}).items()}

    def _fold(self, user: str) -> str:
        return user.casefold() if self._ignoreCase else user

    def candidates(
        self, clientHost: str, backends: Sequence[Backend], user: str | None = None
    ) -> list[Backend]:
        if user is None:
            return rendezvousOrder("host:" + _hostKey(clientHost), backends)
        user = self._fold(user)
        ordered = rendezvousOrder("user:" + user, backends)
        pinned = self._table.get(user)
        if pinned is not None:
            first = [b for b in ordered if b.name == pinned]
            ordered = first + [b for b in ordered if b.name != pinned]
        return ordered


_POLICIES: dict[str, Callable[..., IBalancingPolicy]] = {
    "round-robin": RoundRobin,
    "weighted-round-robin": WeightedRoundRobin,
    "least-connections": LeastConnections,
    "random": RandomChoice,
    "source-hash": SourceHash,
    "user-hash": UserHash,
}

#: The policies that take a C{start} (a position in the ring of backends).
RING_POLICIES = frozenset({"round-robin", "least-connections"})

#: The names L{policyNamed} knows, for --policy and the TOML C{policy} key.
POLICY_NAMES: tuple[str, ...] = tuple(_POLICIES)


def policyNamed(name: str, **options: Any) -> IBalancingPolicy:
    """
    A new policy by its configuration name; C{options} go to its constructor
    (C{table}, C{ignoreCase} for user-hash; C{seed} or C{rng} for random).

    @raise ConfigError: for an unknown name or options it does not take.
    """
    try:
        factory = _POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"policy {name!r} is unknown; choose one of {', '.join(POLICY_NAMES)}"
        ) from None
    try:
        return factory(**options)
    except TypeError as e:
        raise ConfigError(f"policy {name!r}: {e}") from None


class _HealthThresholds(Protocol):
    fall: int
    rise: int
    retry: float


class _Clock(Protocol):
    def seconds(self) -> float: ...


class _MonotonicClock:
    def seconds(self) -> float:
        return time.monotonic()


class BackendPool:
    """
    The current backends, their run-time state, and the policy that orders
    them.

    The list can be replaced while sessions run (reload); sessions keep the
    L{Backend} they were given, and a backend that keeps its name keeps its
    object, so its session counts stay right.

    Health: C{fall} consecutive failures (connects, banners, checks) take a
    backend down.  With active checks (L{activeChecks}, set by the health
    checker) only C{rise} passed checks bring it back; without, one session
    may try it again every C{retry} seconds and brings it back if it
    connects.

    @ivar metrics: told C{backendState(name, up)} on every health change, if
        it has that method.
    """

    def __init__(
        self,
        configs: Sequence[BackendConfig],
        policy: IBalancingPolicy,
        *,
        reactor: _Clock | None = None,
        health: _HealthThresholds | None = None,
        metrics: object = None,
    ) -> None:
        self.policy = policy
        self.backends: list[Backend] = []
        self.metrics = metrics
        self.activeChecks = False
        self.fall = 3
        self.rise = 2
        self.retry = 10.0
        self._clock: _Clock = reactor if reactor is not None else _MonotonicClock()
        if health is not None:
            self.useHealthSettings(health)
        self.replace(configs)

    def useHealthSettings(self, health: _HealthThresholds) -> None:
        """
        Take C{fall}, C{rise} and C{retry} from C{health} (a
        L{ftpproxy.backends.health.HealthSettings}).
        """
        self.fall, self.rise, self.retry = health.fall, health.rise, health.retry

    # -- configuration ----------------------------------------------------

    def replace(self, configs: Sequence[BackendConfig]) -> None:
        """
        Use C{configs} from now on, matching backends by name: one whose
        configuration is unchanged keeps all its state; one with a new
        weight keeps it too; one with a new address or TLS set-up is a new
        server, so it starts healthy with fresh counters and TLS context, but
        keeps its drain flag and session counts.
        """
        known = {b.name: b for b in self.backends}
        backends = []
        for config in configs:
            backend = known.pop(config.name, None)
            if backend is None:
                backend = Backend(config)
                if self.backends:
                    log.info("backend {backend} added at {address}",
                             backend=config.name, address=str(config.address))
            elif backend.config != config:
                old, backend.config = backend.config, config
                if _serverChanged(old, config):
                    backend.tls = None
                    self._resetHealth(backend)
                log.info("backend {backend} reconfigured: {changes}",
                         backend=config.name, changes=_describeChanges(old, config))
            backends.append(backend)
        for name, backend in known.items():
            log.info("backend {backend} removed ({active} sessions still running)",
                     backend=name, active=backend.activeSessions)
        self.backends = backends

    def _resetHealth(self, backend: Backend) -> None:
        wasHealthy = backend.healthy
        backend.healthy = True
        backend.consecutiveFailures = backend.consecutiveSuccesses = 0
        backend.retryAt = None
        backend.lastError = None
        if not wasHealthy:
            backend.lastChange = self._clock.seconds()
            self._report(backend)

    def backendNamed(self, name: str) -> Backend | None:
        for backend in self.backends:
            if backend.name == name:
                return backend
        return None

    # -- choosing ---------------------------------------------------------

    def candidates(self, clientHost: str, user: str | None = None) -> list[Backend]:
        """
        The backends a new session should try, in order: those up and not
        draining, ordered by the policy.  Empty when none may take it.

        A backend down from failed connects (no active checks) whose retry
        time has come is offered too: first if the policy puts it first, and
        then its retry time starts again, so one session tests it; otherwise
        as a last resort.
        """
        now = self._clock.seconds()
        offered = []
        onTrial = set()
        for backend in self.backends:
            if backend.draining:
                continue
            if backend.healthy:
                offered.append(backend)
            elif self._dueForRetry(backend, now):
                offered.append(backend)
                onTrial.add(id(backend))
        ordered = self.policy.candidates(clientHost, offered, user=user)
        if not onTrial:
            return ordered
        head: list[Backend] = []
        if ordered and id(ordered[0]) in onTrial:
            first = ordered[0]
            first.retryAt = now + self.retry
            log.info("backend {backend}: one session tries it again", backend=first.name)
            head, ordered = [first], ordered[1:]
        return (
            head
            + [b for b in ordered if id(b) not in onTrial]
            + [b for b in ordered if id(b) in onTrial]
        )

    def _dueForRetry(self, backend: Backend, now: float) -> bool:
        return (
            not self.activeChecks and backend.retryAt is not None and now >= backend.retryAt
        )

    # -- operators ----------------------------------------------------------

    def drain(self, name: str) -> bool:
        """
        No new sessions for backend C{name}; its sessions finish.  False when
        there is no such backend.
        """
        backend = self.backendNamed(name)
        if backend is None:
            return False
        if not backend.draining:
            backend.draining = True
            log.info("backend {backend} draining: {active} sessions left",
                     backend=name, active=backend.activeSessions)
        return True

    def enable(self, name: str) -> bool:
        """
        Backend C{name} takes new sessions again (when healthy).  False when
        there is no such backend.
        """
        backend = self.backendNamed(name)
        if backend is None:
            return False
        if backend.draining:
            backend.draining = False
            log.info("backend {backend} enabled: now {state}",
                     backend=name, state=backend.state.value)
        return True

    # -- health reports -----------------------------------------------------

    def reportConnectFailure(self, backend: Backend, why: str = "connect failed") -> None:
        """
        A session could not connect to C{backend}, or it sent no usable
        greeting.
        """
        if not self._current(backend):
            return
        backend.connectFailures += 1
        self._failed(backend, why)

    def reportConnectSuccess(self, backend: Backend) -> None:
        """
        A session got C{backend}'s greeting.  Without active checks that is
        enough to bring it back up.
        """
        if not self._current(backend):
            return
        backend.consecutiveFailures = 0
        backend.lastError = None
        if not backend.healthy and not self.activeChecks:
            self._setHealth(backend, True, "a session connected")

    def reportCheck(self, backend: Backend, ok: bool, why: str = "") -> None:
        """
        An active health check of C{backend} passed or failed.
        """
        if not self._current(backend):
            return
        if not ok:
            self._failed(backend, why or "health check failed")
            return
        backend.consecutiveFailures = 0
        backend.consecutiveSuccesses += 1
        if not backend.healthy and backend.consecutiveSuccesses >= self.rise:
            self._setHealth(
                backend, True, f"{backend.consecutiveSuccesses} health checks passed"
            )

    def takeVerdict(self, name: str, healthy: bool, why: str) -> bool:
        """
        Backend C{name} is up or down by a verdict reached elsewhere (the
        supervisor of a worker process hands a new worker the verdicts of
        its checks so far); the next reports count from there.  False when
        there is no such backend.
        """
        backend = self.backendNamed(name)
        if backend is None:
            return False
        backend.consecutiveFailures = backend.consecutiveSuccesses = 0
        if backend.healthy != healthy:
            self._setHealth(backend, healthy, why)
        return True

    def _current(self, backend: Backend) -> bool:
        return any(b is backend for b in self.backends)

    def _failed(self, backend: Backend, why: str) -> None:
        backend.consecutiveSuccesses = 0
        backend.consecutiveFailures += 1
        backend.lastError = why
        if backend.healthy:
            if backend.consecutiveFailures >= self.fall:
                self._setHealth(
                    backend,
                    False,
                    f"{backend.consecutiveFailures} consecutive failures, last: {why}",
                )
            else:
                log.info(
                    "backend {backend} failure {count}/{fall}: {why}",
                    backend=backend.name,
                    count=backend.consecutiveFailures,
                    fall=self.fall,
                    why=why,
                )
        else:
            backend.retryAt = self._clock.seconds() + self.retry

    def _setHealth(self, backend: Backend, healthy: bool, why: str) -> None:
        now = self._clock.seconds()
        backend.healthy = healthy
        backend.lastChange = now
        if healthy:
            backend.consecutiveFailures = 0
            backend.retryAt = None
            log.info("backend {backend} up: {why}", backend=backend.name, why=why)
        else:
            backend.consecutiveSuccesses = 0
            backend.retryAt = now + self.retry
            log.warn("backend {backend} down: {why}", backend=backend.name, why=why)
        self._report(backend)

    def _report(self, backend: Backend) -> None:
        report = getattr(self.metrics, "backendState", None)
        if report is not None:
            report(backend.name, backend.healthy)


def _serverChanged(old: BackendConfig, new: BackendConfig) -> bool:
    return (old.address, old.tls, old.tlsSettings) != (new.address, new.tls, new.tlsSettings)


def _describeChanges(old: BackendConfig, new: BackendConfig) -> str:
    changes = []
    for field in attrs.fields(BackendConfig):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            changes.append(f"{field.name} {before} -> {after}")
    return ", ".join(changes)
