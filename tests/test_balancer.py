"""
Tests for L{ftpproxy.backends.balancer}: each policy's distribution over many
sessions and its failover order, the pool's view of backend state (health,
drain, reload), and passive health from session reports.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from ftpproxy.backends.balancer import (
    POLICY_NAMES,
    Backend,
    BackendPool,
    BackendState,
    IBalancingPolicy,
    LeastConnections,
    RandomChoice,
    RoundRobin,
    SourceHash,
    UserHash,
    WeightedRoundRobin,
    policyNamed,
    rendezvousOrder,
    userHashOptions,
)
from ftpproxy.settings.config import BackendConfig, ConfigError, HostPort
from ftpproxy.tls.contexts import BackendTLSSettings

CLIENT = "127.0.0.5"


def config(name: str, weight: int = 1, host: str = "127.0.0.2", port: int = 2021, **kw) -> BackendConfig:
    return BackendConfig(address=HostPort(host, port), name=name, weight=weight, **kw)


def configs(*names: str, weights: dict[str, int] | None = None) -> tuple[BackendConfig, ...]:
    weights = weights or {}
    return tuple(
        config(name, weights.get(name, 1), port=2021 + i) for i, name in enumerate(names)
    )


def backends(*names: str, weights: dict[str, int] | None = None) -> list[Backend]:
    return [Backend(c) for c in configs(*names, weights=weights)]


def names(ordered: list[Backend]) -> list[str]:
    return [b.name for b in ordered]


def firstChoices(pool: BackendPool, sessions: int, **kw) -> Counter[str]:
    return Counter(pool.candidates(CLIENT, **kw)[0].name for _ in range(sessions))


class FakeMetrics:
    def __init__(self) -> None:
        self.states: list[tuple[str, bool]] = []

    def backendState(self, name: str, up: bool) -> None:
        self.states.append((name, up))


@pytest.fixture
def logEvents() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == "ftpproxy.backends.balancer"]


# -- backends and the pool ----------------------------------------------------


def test_backendStartsUpWithItsWeight() -> None:
    backend = Backend(config("alpha", weight=3))
    assert backend.state is BackendState.UP
    assert backend.state.value == "up" and backend.state == "up"
    assert backend.weight == 3
    assert (backend.activeSessions, backend.totalSessions) == (0, 0)
    assert backend.available


def test_sessionCounts() -> None:
    backend = Backend(config("alpha"))
    backend.sessionStarted()
    backend.sessionStarted()
    backend.sessionEnded()
    assert (backend.activeSessions, backend.totalSessions) == (1, 2)


def test_candidatesAreUpAndNotDraining() -> None:
    pool = BackendPool(configs("alpha", "beta", "gamma"), RoundRobin())
    alpha, beta, gamma = pool.backends
    beta.healthy = False
    assert pool.drain("gamma") is True
    assert gamma.state is BackendState.DRAINING
    assert beta.state is BackendState.DOWN
    for _ in range(5):
        assert names(pool.candidates(CLIENT)) == ["alpha"]


def test_noCandidatesWhenNoneAvailable() -> None:
    pool = BackendPool(configs("alpha", "beta"), RoundRobin())
    pool.drain("alpha")
    pool.backends[1].healthy = False
    assert pool.candidates(CLIENT) == []
    assert BackendPool([], RoundRobin()).candidates(CLIENT) == []


def test_drainAndEnable(logEvents: list[LogEvent]) -> None:
    pool = BackendPool(configs("alpha", "beta"), RoundRobin())
    alpha = pool.backends[0]
    alpha.sessionStarted()
    assert pool.drain("alpha")
    assert alpha.draining and alpha.state == "draining"
    # Existing sessions are untouched: the count stays until they end.
    assert alpha.activeSessions == 1
    assert all(names(pool.candidates(CLIENT)) == ["beta"] for _ in range(4))
    assert pool.enable("alpha")
    assert alpha.state is BackendState.UP
    assert sorted(firstChoices(pool, 4)) == ["alpha", "beta"]
    assert pool.drain("nosuch") is False
    assert pool.enable("nosuch") is False
    logged = texts(logEvents)
    assert "backend alpha draining: 1 sessions left" in logged
    assert "backend alpha enabled: now up" in logged


def test_enableKeepsHealth() -> None:
    """
    Enabling ends a drain; it does not vouch for a down backend.
    """
    pool = BackendPool(configs("alpha"), RoundRobin())
    pool.drain("alpha")
    pool.backends[0].healthy = False
    pool.enable("alpha")
    assert pool.backends[0].state is BackendState.DOWN
    assert pool.candidates(CLIENT) == []


def test_backendNamed() -> None:
    pool = BackendPool(configs("alpha", "beta"), RoundRobin())
    assert pool.backendNamed("beta") is pool.backends[1]
    assert pool.backendNamed("gamma") is None


# -- reload -------------------------------------------------------------------


def test_replaceKeepsUnchangedBackends() -> None:
    pool = BackendPool(configs("alpha", "beta"), RoundRobin())
    alpha, beta = pool.backends
    alpha.sessionStarted()
    alpha.healthy = False
    alpha.consecutiveFailures = 3
    beta.draining = True
    beta.tls = marker = object()
    pool.replace(configs("alpha", "beta", "gamma"))
    assert pool.backends[:2] == [alpha, beta]
    assert (alpha.activeSessions, alpha.healthy, alpha.consecutiveFailures) == (1, False, 3)
    assert beta.draining and beta.tls is marker
    assert pool.backends[2].name == "gamma" and pool.backends[2].available


def test_replaceUpdatesWeightAndKeepsState() -> None:
    pool = BackendPool(configs("alpha"), RoundRobin())
    alpha = pool.backends[0]
    alpha.sessionStarted()
    alpha.healthy = False
    alpha.tls = marker = object()
    pool.replace([config("alpha", weight=5, port=2021)])
    assert pool.backends == [alpha]
    assert alpha.weight == 5
    assert (alpha.activeSessions, alpha.healthy, alpha.tls) == (1, False, marker)


def test_replaceWithNewAddressIsANewServer(logEvents: list[LogEvent]) -> None:
    """
    A backend whose address or TLS changed keeps its object (its sessions
    still count against it) and its drain flag, but its health verdict and
    TLS context belonged to the old server.
    """
    metrics = FakeMetrics()
    pool = BackendPool(configs("alpha"), RoundRobin(), metrics=metrics)
    alpha = pool.backends[0]
    alpha.sessionStarted()
    alpha.healthy = False
    alpha.consecutiveFailures = 4
    alpha.draining = True
    alpha.tls = object()
    pool.replace([config("alpha", host="127.0.0.3", port=2121)])
    assert pool.backends == [alpha]
    assert alpha.config.address == HostPort("127.0.0.3", 2121)
    assert (alpha.healthy, alpha.consecutiveFailures, alpha.tls) == (True, 0, None)
    assert alpha.draining and alpha.activeSessions == 1
    assert metrics.states == [("alpha", True)]
    assert any("backend alpha reconfigured: address" in t for t in texts(logEvents))

    pool.backends[0].tls = object()
    settings = BackendTLSSettings(hostname="ftp.example.test")
    pool.replace(
        [config("alpha", host="127.0.0.3", port=2121, tls="explicit", tlsSettings=settings)]
    )
    assert pool.backends[0] is alpha and alpha.tls is None


def test_replaceDropsRemovedBackends(logEvents: list[LogEvent]) -> None:
    pool = BackendPool(configs("alpha", "beta"), RoundRobin())
    alpha, beta = pool.backends
    beta.sessionStarted()
    pool.replace(configs("alpha"))
    assert pool.backends == [alpha]
    # A session still on beta ends normally, and reports about it are ignored.
    beta.sessionEnded()
    pool.reportConnectFailure(beta, "refused")
    assert beta.consecutiveFailures == 0
    assert "backend beta removed (1 sessions still running)" in texts(logEvents)


# -- policies -------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policyNamed(name: str) -> None:
    policy = policyNamed(name)
    assert verifyObject(IBalancingPolicy, policy)
    several = backends("alpha", "beta", "gamma")
    for user in (None, "alice"):
        ordered = policy.candidates(CLIENT, several, user=user)
        assert sorted(names(ordered)) == ["alpha", "beta", "gamma"]
    assert policy.candidates(CLIENT, []) == []


def test_policyNames() -> None:
    assert POLICY_NAMES == (
        "round-robin",
        "weighted-round-robin",
        "least-connections",
        "random",
        "source-hash",
        "user-hash",
    )


def test_policyNamedRefusesUnknown() -> None:
    with pytest.raises(ConfigError, match="policy 'fastest' is unknown; choose one of round-robin"):
        policyNamed("fastest")
    with pytest.raises(ConfigError, match="policy 'round-robin'"):
        policyNamed("round-robin", table={})


def test_policyOptions() -> None:
    policy = policyNamed("user-hash", table={"alice": "beta"}, ignoreCase=True)
    assert names(policy.candidates(CLIENT, backends("alpha", "beta"), user="ALICE"))[0] == "beta"
    first = policyNamed("random", seed=7).candidates(CLIENT, backends("a", "b", "c", "d"))
    again = policyNamed("random", seed=7).candidates(CLIENT, backends("a", "b", "c", "d"))
    assert names(first) == names(again)


def test_roundRobinDistribution() -> None:
    pool = BackendPool(configs("alpha", "beta", "gamma"), RoundRobin())
    orders = [names(pool.candidates(CLIENT)) for _ in range(300)]
    assert Counter(o[0] for o in orders) == {"alpha": 100, "beta": 100, "gamma": 100}
    # The fallbacks follow in ring order.
    assert orders[:3] == [
        ["alpha", "beta", "gamma"],
        ["beta", "gamma", "alpha"],
        ["gamma", "alpha", "beta"],
    ]


def test_roundRobinSkipsDownBackendsEvenly() -> None:
    pool = BackendPool(configs("alpha", "beta", "gamma"), RoundRobin())
    pool.backends[1].healthy = False
    assert firstChoices(pool, 200) == {"alpha": 100, "gamma": 100}


def test_weightedRoundRobinDistribution() -> None:
    pool = BackendPool(
        configs("a", "b", "c", weights={"a": 5, "b": 1, "c": 1}), WeightedRoundRobin()
    )
    picks = [pool.candidates(CLIENT)[0].name for _ in range(700)]
    assert Counter(picks) == {"a": 500, "b": 100, "c": 100}
    # Smooth: the heavy backend's turns are spread out, never five in a row.
    assert "".join(picks[:7]) == "aabacaa"
    assert "aaaaa" not in "".join(picks)


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5))
def test_weightedRoundRobinShares(weights: list[int]) -> None:
    """
    Over each full cycle of sum-of-weights sessions, every backend is first
    exactly its weight's number of times.
    """
    labels = [f"b{i}" for i in range(len(weights))]
    pool = BackendPool(
        configs(*labels, weights=dict(zip(labels, weights))), WeightedRoundRobin()
    )
    total = sum(weights)
    for _ in range(2):
        assert firstChoices(pool, total) == {
            label: weight for label, weight in zip(labels, weights)
        }


def test_weightZeroIsABackup() -> None:
    """
    Under every policy a weight-0 backend is never first while another is
    up, follows the others as a fallback, and takes sessions once they are
    all down.
    """
    for name in POLICY_NAMES:
        pool = BackendPool(
            configs("a", "spare", "b", weights={"spare": 0}), policyNamed(name)
        )
        for i in range(60):
            ordered = names(pool.candidates(f"127.0.1.{i}", user=f"user{i}"))
            assert ordered[-1] == "spare" and len(ordered) == 3, name
        for backend in pool.backends:
            if backend.name != "spare":
                backend.healthy = False
        assert names(pool.candidates(CLIENT, user="bob")) == ["spare"], name


def test_leastConnections() -> None:
    pool = BackendPool(configs("a", "b", "c"), LeastConnections())
    a, b, c = pool.backends
    for _ in range(3):
        a.sessionStarted()
    b.sessionStarted()
    ordered = pool.candidates(CLIENT)
    assert names(ordered) == ["c", "b", "a"]


def test_leastConnectionsTiesGoRoundRobin() -> None:
    pool = BackendPool(configs("a", "b", "c"), LeastConnections())
    assert firstChoices(pool, 300) == {"a": 100, "b": 100, "c": 100}


def test_leastConnectionsBalancesSessions() -> None:
    """
    With sessions of random lengths, the busiest and idlest backends never
    differ by more than one session at the moment of a choice.
    """
    pool = BackendPool(configs("a", "b", "c", "d"), LeastConnections())
    rng = random.Random(3)
    running: list[Backend] = []
    for _ in range(2000):
        counts = [b.activeSessions for b in pool.backends]
        chosen = pool.candidates(CLIENT)[0]
        assert chosen.activeSessions == min(counts)
        chosen.sessionStarted()
        running.append(chosen)
        if rng.random() < 0.45 and running:
            running.pop(rng.randrange(len(running))).sessionEnded()
    assert max(b.totalSessions for b in pool.backends) - min(
        b.totalSessions for b in pool.backends
    ) < 60


def test_randomDistribution() -> None:
    pool = BackendPool(configs("a", "b", "c", "d"), RandomChoice(seed=1))
    counts = firstChoices(pool, 4000)
    assert set(counts) == {"a", "b", "c", "d"}
    # Binomial(4000, 1/4): mean 1000, sd 27; 5 sd either side.
    assert all(860 < n < 1140 for n in counts.values()), counts
    # Every position, not just the first, is shuffled.
    lasts = Counter(names(pool.candidates(CLIENT))[-1] for _ in range(4000))
    assert all(860 < n < 1140 for n in lasts.values()), lasts


# -- hashing policies -------------------------------------------------------


def test_sourceHashIsStableAndSpread() -> None:
    pool = BackendPool(configs("a", "b", "c"), SourceHash())
    other = BackendPool(configs("a", "b", "c"), SourceHash())
    clients = [f"10.{i // 256}.{i % 256}.7" for i in range(3000)]
    firsts = {}
    for host in clients:
        ordered = names(pool.candidates(host))
        assert ordered == names(pool.candidates(host))
        assert ordered == names(other.candidates(host))
        firsts[host] = ordered[0]
    counts = Counter(firsts.values())
    # Binomial(3000, 1/3): sd 26.
    assert all(870 < n < 1130 for n in counts.values()), counts


def test_sourceHashMapsIPv4InIPv6() -> None:
    several = backends("a", "b", "c", "d")
    policy = SourceHash()
    for i in range(20):
        host = f"192.0.2.{i}"
        assert names(policy.candidates(host, several)) == names(
            policy.candidates(f"::ffff:{host}", several)
        )


def test_sourceHashRemovalMovesOnlyItsKeys() -> None:
    """
    Taking a backend away moves exactly the clients it had, each to its own
    second choice; everyone else stays.
    """
    full = BackendPool(configs("a", "b", "c", "d"), SourceHash())
    before = {f"10.0.{i // 256}.{i % 256}": names(full.candidates(f"10.0.{i // 256}.{i % 256}")) for i in range(2000)}
    full.backends[2].healthy = False  # "c"
    moved = 0
    for host, order in before.items():
        after = names(full.candidates(host))
        assert after == [n for n in order if n != "c"]
        if order[0] == "c":
            moved += 1
            assert after[0] == order[1]
        else:
            assert after[0] == order[0]
    assert 400 < moved < 600


def test_userHashPinned() -> None:
    """
    The hash is part of the contract: proxies of different versions, on
    different machines, must send a user to the same backend.  These values
    were computed once; if they change, stickiness across an upgrade breaks.
    """
    several = backends("node1", "node2", "node3")
    policy = UserHash()
    assert {
        user: names(policy.candidates(CLIENT, several, user=user))
        for user in ("admin", "alice", "bob", "guest")
    } == PINNED_USER_ORDERS


PINNED_USER_ORDERS = {
    "admin": ["node2", "node1", "node3"],
    "alice": ["node2", "node3", "node1"],
    "bob": ["node1", "node2", "node3"],
    "guest": ["node2", "node3", "node1"],
}


def test_userHashAcrossProxies() -> None:
    """
    Two proxies with the same backend names (listed in different orders,
    at different addresses) send every user to the same backend and fail
    over along the same order.
    """
    one = BackendPool(configs("n1", "n2", "n3"), policyNamed("user-hash"))
    two = BackendPool(
        tuple(reversed([config(n, host="127.0.0.9", port=21 + i) for i, n in enumerate(("n1", "n2", "n3"))])),
        policyNamed("user-hash"),
    )
    users = [f"user{i}" for i in range(1500)]
    firsts = Counter()
    for user in users:
        ordered = names(one.candidates("127.0.0.5", user=user))
        assert ordered == names(two.candidates("127.0.0.6", user=user))
        firsts[ordered[0]] += 1
    assert all(430 < n < 570 for n in firsts.values()), firsts


def test_userHashFailsOverAlongTheUsersOwnOrder() -> None:
    pool = BackendPool(configs("n1", "n2", "n3", "n4"), UserHash())
    orders = {f"u{i}": names(pool.candidates(CLIENT, user=f"u{i}")) for i in range(400)}
    down = pool.backendNamed("n2")
    down.healthy = False
    seconds = Counter()
    for user, order in orders.items():
        after = names(pool.candidates(CLIENT, user=user))
        assert after == [n for n in order if n != "n2"]
        if order[0] == "n2":
            seconds[after[0]] += 1
    # n2's users spread over the others instead of piling onto one.
    assert set(seconds) == {"n1", "n3", "n4"}
    down.healthy = True
    assert all(names(pool.candidates(CLIENT, user=u)) == o for u, o in orders.items())


def test_userHashTable() -> None:
    policy = UserHash(table={"alice": "n3", "bob": "gone"})
    several = backends("n1", "n2", "n3")
    hashed = names(rendezvousOrder("user:alice", several))
    ordered = names(policy.candidates(CLIENT, several, user="alice"))
    assert ordered == ["n3"] + [n for n in hashed if n != "n3"]
    # A pinned backend that is unavailable (or unknown) leaves the hash order.
    assert names(policy.candidates(CLIENT, several[:2], user="alice")) == [
        n for n in hashed if n != "n3"
    ]
    assert names(policy.candidates(CLIENT, several, user="bob")) == names(
        rendezvousOrder("user:bob", several)
    )
    # Case matters unless told otherwise.
    assert names(policy.candidates(CLIENT, several, user="Alice")) == names(
        rendezvousOrder("user:Alice", several)
    )


def test_userHashIgnoreCase() -> None:
    policy = UserHash(ignoreCase=True)
    several = backends("n1", "n2", "n3", "n4")
    for user in ("Alice", "BOB", "Straße"):
        assert names(policy.candidates(CLIENT, several, user=user)) == names(
            policy.candidates(CLIENT, several, user=user.casefold())
        )


def test_userHashWithoutUserHashesTheClient() -> None:
    several = backends("n1", "n2", "n3")
    assert names(UserHash().candidates("192.0.2.1", several)) == names(
        SourceHash().candidates("192.0.2.1", several)
    )


def test_weightedRendezvousShares() -> None:
    several = backends("a", "b", "c", weights={"a": 1, "b": 2, "c": 1})
    counts = Counter(rendezvousOrder(f"k{i}", several)[0].name for i in range(4000))
    # b has half the weight; sd about 32 for each.
    assert 1850 < counts["b"] < 2150, counts
    assert 850 < counts["a"] < 1150 and 850 < counts["c"] < 1150, counts


names_ = st.lists(
    st.text(alphabet="abcdefgh0123-", min_size=1, max_size=6), min_size=1, max_size=6, unique=True
)


@settings(max_examples=100, deadline=None)
@given(
    labels=names_,
    weights=st.lists(st.integers(min_value=0, max_value=4), min_size=6, max_size=6),
    key=st.text(max_size=20),
    data=st.data(),
)
def test_rendezvousRemovalProperty(labels, weights, key, data) -> None:
    """
    For any key: the order is a permutation of the backends, it does not
    depend on the order they are listed in, and removing any backend leaves
    the others in the same relative order.
    """
    several = backends(*labels, weights=dict(zip(labels, weights)))
    ordered = names(rendezvousOrder(key, several))
    assert sorted(ordered) == sorted(labels)
    shuffled = data.draw(st.permutations(several))
    assert names(rendezvousOrder(key, shuffled)) == ordered
    gone = data.draw(st.sampled_from(labels))
    rest = [b for b in several if b.name != gone]
    assert names(rendezvousOrder(key, rest)) == [n for n in ordered if n != gone]


# -- passive health -----------------------------------------------------------


def makePool(*labels: str, policy=None, **kw) -> tuple[BackendPool, Clock, FakeMetrics]:
    clock = Clock()
    metrics = FakeMetrics()
    pool = BackendPool(
        configs(*labels), policy or RoundRobin(), reactor=clock, metrics=metrics, **kw
    )
    return pool, clock, metrics


class Thresholds:
    fall = 2
    rise = 3
    retry = 30.0


def test_healthSettingsFromAnObject() -> None:
    pool, _, _ = makePool("a", health=Thresholds())
    assert (pool.fall, pool.rise, pool.retry) == (2, 3, 30.0)
    default, _, _ = makePool("a")
    assert (default.fall, default.rise, default.retry) == (3, 2, 10.0)


def test_fallConsecutiveFailuresTakeABackendDown(logEvents: list[LogEvent]) -> None:
    pool, clock, metrics = makePool("a", "b")
    a = pool.backends[0]
    pool.reportConnectFailure(a, "connection refused")
    pool.reportConnectFailure(a, "connection refused")
    pool.reportConnectSuccess(a)  # the streak ends
    pool.reportConnectFailure(a, "connection refused")
    pool.reportConnectFailure(a, "connection refused")
    assert a.healthy and metrics.states == []
    pool.reportConnectFailure(a, "no greeting in time")
    assert a.state is BackendState.DOWN
    assert a.connectFailures == 5
    assert a.lastError == "no greeting in time"
    assert metrics.states == [("a", False)]
    assert all(names(pool.candidates(CLIENT)) == ["b"] for _ in range(4))
    logged = texts(logEvents)
    assert "backend a failure 1/3: connection refused" in logged
    assert "backend a down: 3 consecutive failures, last: no greeting in time" in logged
    down = [e for e in logEvents if e.get("log_format", "").startswith("backend {backend} down")]
    assert down[0]["log_level"].name == "warn"


def test_retryLetsOneSessionTryAgain(logEvents: list[LogEvent]) -> None:
    pool, clock, metrics = makePool("a", "b", health=Thresholds())
    a, b = pool.backends
    pool.reportConnectFailure(a)
    pool.reportConnectFailure(a)
    assert not a.healthy
    clock.advance(29)
    assert all(names(pool.candidates(CLIENT)) == ["b"] for _ in range(3))
    clock.advance(1)
    # Round robin puts b first, then a: a is offered only as a last resort
    # and stays due; the next session has a first, and uses its trial.
    assert names(pool.candidates(CLIENT)) == ["b", "a"]
    assert names(pool.candidates(CLIENT)) == ["a", "b"]
    assert "backend a: one session tries it again" in texts(logEvents)
    # The others wait for the next retry.
    assert all(names(pool.candidates(CLIENT)) == ["b"] for _ in range(3))

    # That session fails: a stays down, retried 30 s after the failure.
    pool.reportConnectFailure(a, "refused again")
    assert not a.healthy
    clock.advance(29)
    assert names(pool.candidates(CLIENT)) == ["b"]
    clock.advance(1)
    orders = [names(pool.candidates(CLIENT)) for _ in range(2)]
    assert ["a", "b"] in orders
    pool.reportConnectSuccess(a)
    assert a.healthy
    assert metrics.states == [("a", False), ("a", True)]
    assert "backend a up: a session connected" in texts(logEvents)
    assert sorted(firstChoices(pool, 2)) == ["a", "b"]


def test_retryWhenAllAreDown() -> None:
    """
    With everything down the client gets 421 at once, until a retry is due.
    """
    pool, clock, _ = makePool("a", "b")
    for backend in pool.backends:
        for _ in range(3):
            pool.reportConnectFailure(backend)
    assert pool.candidates(CLIENT) == []
    clock.advance(10)
    first = names(pool.candidates(CLIENT))
    assert sorted(first) == ["a", "b"]
    # The one on trial first has been used; the other is still due.
    second = names(pool.candidates(CLIENT))
    assert second == [n for n in first[1:]]
    assert pool.candidates(CLIENT) == []


def test_activeChecksReplaceRetries() -> None:
    pool, clock, metrics = makePool("a", "b")
    pool.activeChecks = True
    a = pool.backends[0]
    for _ in range(3):
        pool.reportConnectFailure(a)
    assert not a.healthy
    clock.advance(1000)
    assert all(names(pool.candidates(CLIENT)) == ["b"] for _ in range(4))
    # A session that still got through does not override the checker.
    pool.reportConnectSuccess(a)
    assert not a.healthy
    pool.reportCheck(a, True)
    assert not a.healthy
    pool.reportCheck(a, True)
    assert a.healthy
    assert metrics.states == [("a", False), ("a", True)]


def test_checkFailuresAndRise(logEvents: list[LogEvent]) -> None:
    pool, clock, metrics = makePool("a", health=Thresholds())
    pool.activeChecks = True
    a = pool.backends[0]
    pool.reportCheck(a, False, "refused")
    pool.reportCheck(a, True)
    pool.reportCheck(a, False, "refused")
    assert a.healthy
    pool.reportCheck(a, False, "greeted with 421 busy")
    assert not a.healthy
    pool.reportCheck(a, True)
    pool.reportCheck(a, True)
    pool.reportCheck(a, False, "refused")  # the rise starts again
    pool.reportCheck(a, True)
    pool.reportCheck(a, True)
    assert not a.healthy
    pool.reportCheck(a, True)
    assert a.healthy
    assert metrics.states == [("a", False), ("a", True)]
    logged = texts(logEvents)
    assert "backend a down: 2 consecutive failures, last: greeted with 421 busy" in logged
    assert "backend a up: 3 health checks passed" in logged


def test_metricsOptional() -> None:
    pool = BackendPool(configs("a"), RoundRobin(), reactor=Clock())
    for _ in range(3):
        pool.reportConnectFailure(pool.backends[0])
    assert not pool.backends[0].healthy
    pool.metrics = object()  # without backendState
    pool.reportConnectSuccess(pool.backends[0])
    assert pool.backends[0].healthy


def test_drainedBackendKeepsBeingJudged() -> None:
    pool, clock, _ = makePool("a", "b")
    a = pool.backends[0]
    pool.drain("a")
    for _ in range(3):
        pool.reportConnectFailure(a)
    assert a.state is BackendState.DRAINING and not a.healthy
    pool.enable("a")
    assert a.state is BackendState.DOWN


# -- user-hash options from TOML ------------------------------------------------


def test_userHashOptions() -> None:
    options = userHashOptions(
        {"ignore_case": True, "users": {"alice": "n2"}}, "proxy.toml: user_hash", ["n1", "n2"]
    )
    assert options == {"ignoreCase": True, "table": {"alice": "n2"}}
    policy = policyNamed("user-hash", **options)
    assert names(policy.candidates(CLIENT, backends("n1", "n2"), user="ALICE"))[0] == "n2"
    assert userHashOptions({}, "x", ["n1"]) == {}


@pytest.mark.parametrize(
    "table, message",
    [
        ({"ignorecase": True}, "proxy.toml: user_hash: unknown key 'ignorecase'; known keys are ignore_case, users"),
        ({"ignore_case": "yes"}, "proxy.toml: user_hash ignore_case must be true or false"),
        ({"users": ["alice"]}, "proxy.toml: user_hash users must be a table"),
        ({"users": {"alice": 1}}, "proxy.toml: user_hash users: alice must name a backend, not 1"),
        ({"users": {"alice": "n9"}}, "proxy.toml: user_hash users: alice = 'n9' is not a backend; backends are n1, n2"),
    ],
)
def test_userHashOptionsRefused(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        userHashOptions(table, "proxy.toml: user_hash", ["n1", "n2"])
    assert str(error.value).startswith(message)
