"""
Load balancing against the real daemon: each policy's distribution over
many sessions, user-hash agreement between restarts and instances, active
and passive health with backends killed and restarted, all backends down,
drain, SIGHUP reload and SIGTERM with a transfer in flight, metrics that
follow traffic, the PROXY protocol on both sides, JSON logs and xferlog.

Backends are pyftpdlib processes that let any user in (on 127.0.0.2-4),
configured by name in a TOML file, so that C{whoami.txt}, C{/backends} and
the metrics all speak of alpha, beta and gamma.
"""

from __future__ import annotations

import ftplib
import io
import json
import re
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ftpproxy.backends.balancer import Backend as PoolBackend
from ftpproxy.backends.balancer import UserHash
from ftpproxy.settings.config import BackendConfig, HostPort

from tests.support.backends import PASSWORD, WHOAMI, Backend
from tests.support.balancing import (
    ConfiguredProxy,
    RawBackend,
    SlowDownload,
    backendTable,
    heldSession,
    logProblems,
    restartBackend,
    sample,
    startAnyUserBackend,
    startConfiguredProxy,
    tomlConfig,
    waitFor,
    whoami,
)
from tests.support.files import MiB
from tests.support.proxy import isListening
from tests.support.workers import TWO_WORKERS, servingWorkers

HOSTS = {"alpha": "127.0.0.2", "beta": "127.0.0.3", "gamma": "127.0.0.4"}
RAW_HOST = "127.0.0.5"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# Timing bounds are stated as the configured checks plus this much for a
# shared, loaded machine (polling, process scheduling).
SLACK = 1.5

# What a slow download moves, at one MiB a second.
SLOW_SIZE = 4 * MiB


class Cluster:
    """
    What one test starts: backends, raw backends, proxies, downloads; all
    stopped at teardown, proxies first, and each proxy's log checked.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.backends: dict[str, Backend] = {}
        self.raws: list[RawBackend] = []
        self.proxies: list[ConfiguredProxy] = []
        self.downloads: list[SlowDownload] = []

    def backend(self, name: str, files: dict[str, bytes | int] | None = None) -> Backend:
        backend = startAnyUserBackend(
            name,
            HOSTS[name],
            self.tmp_path / "roots" / name,
            self.tmp_path / "logs",
            files=files,
        )
        self.backends[name] = backend
        return backend

    def start(self, *names: str, files: dict[str, bytes | int] | None = None) -> list[Backend]:
        return [self.backend(name, files) for name in names]

    def raw(self, host: str, banner: bytes | None = None) -> RawBackend:
        raw = RawBackend(host, banner)
        self.raws.append(raw)
        return raw

    def proxy(self, config: str, *extraArgs: str, listenPrefix: str = "") -> ConfiguredProxy:
        proxy = startConfiguredProxy(
            config,
            self.tmp_path / "proxy",
            extraArgs,
            name=f"proxy-{len(self.proxies)}",
            listenPrefix=listenPrefix,
        )
        self.proxies.append(proxy)
        if "--workers" in extraArgs:
            # Listening means one worker is up; wait for all of them, or a
            # test that signals the proxy at once finds one still starting
            # (it dies of the SIGTERM before it can handle it).
            workers = int(extraArgs[extraArgs.index("--workers") + 1])
            proxy.waitForLog(" started (pid ", count=workers, timeout=30)
        return proxy

    def download(self, proxy: ConfiguredProxy, name: str, rate: int = MiB) -> SlowDownload:
        download = SlowDownload(proxy.host, proxy.port, name, rate)
        self.downloads.append(download)
        return download

    def tearDown(self) -> list[str]:
        problems = []
        for download in self.downloads:
            download.stop()
        for proxy in self.proxies:
            proxy.process.stop()
            log = proxy.log()
            print(f"--- log of {' '.join(proxy.process.command)} ---")
            print(log)
            found = logProblems(log)
            if found:
                problems.append(f"{' and '.join(found)} in the log of {proxy.configPath.stem}")
        for backend in self.backends.values():
            backend.stop()
        for raw in self.raws:
            raw.close()
        return problems


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        problems = cluster.tearDown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def sessions(proxy: ConfiguredProxy, count: int, user: str = "user") -> Counter[str]:
    """
    The backends C{count} consecutive whole sessions landed on.
    """
    return Counter(whoami(proxy.host, proxy.port, user) for _ in range(count))


def assertInFlight(proxy: ConfiguredProxy, download: SlowDownload) -> None:
    """
    The download is still running, and the proxy is still moving it from
    the backend (its transfer has not been logged as done).
    """
    assert download.running, "the download ended before the test was done with it"
    assert download.received < SLOW_SIZE
    assert f"RETR {download.name} via" not in proxy.log()


def named(backends: Sequence[Backend], **keys) -> list[dict]:
    return [backendTable(b, **keys) for b in backends]


def hashedOrder(user: str, names: Sequence[str]) -> list[str]:
    """
    The user's rendezvous order over backends named C{names}, as any
    instance computes it (addresses play no part).
    """
    backends = [
        PoolBackend(BackendConfig(HostPort("127.0.0.1", 21 + i), name=name))
        for i, name in enumerate(names)
    ]
    return [b.name for b in UserHash().candidates("127.0.0.1", backends, user=user)]


# -- policies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, weights, expected",
    [
        ("round-robin", (1, 1, 1), {"alpha": 10, "beta": 10, "gamma": 10}),
        ("weighted-round-robin", (3, 2, 1), {"alpha": 15, "beta": 10, "gamma": 5}),
        ("random", (1, 1, 1), None),
    ],
)
def test_distribution(cluster: Cluster, policy: str, weights, expected):
    """
    Over 30 sessions, round robin gives each of three backends ten,
    weighted round robin gives each its weight's share exactly (30 is a
    multiple of the weights' sum), and random uses every backend.
    """
    backends = cluster.start("alpha", "beta", "gamma")
    tables = [backendTable(b, weight=w) for b, w in zip(backends, weights)]
    proxy = cluster.proxy(tomlConfig(tables), "--policy", policy)

    counts = sessions(proxy, 30)

    if expected is None:
        assert set(counts) == {"alpha", "beta", "gamma"}, counts
        assert sum(counts.values()) == 30
    else:
        assert counts == expected
    totals = {name: entry["total_sessions"] for name, entry in proxy.backends().items()}
    assert totals == dict(counts) | {n: 0 for n in HOSTS if n not in counts}


def test_leastConnections(cluster: Cluster):
    """
    With sessions held open on beta only, every new session goes to alpha
    until alpha has as many.
    """
    backends = cluster.start("alpha", "beta")
    proxy = cluster.proxy(tomlConfig(named(backends), policy="least-connections"))
    held = [heldSession(proxy.host, proxy.port) for _ in range(4)]
    try:
        assert Counter(name for _, name in held) == {"alpha": 2, "beta": 2}
        for ftp, name in held:
            if name == "alpha":
                ftp.quit()
        held = [(ftp, name) for ftp, name in held if name == "beta"]
        waitFor(lambda: proxy.backends()["alpha"]["active_sessions"] == 0, 10, "alpha idle")

        landed = []
        for _ in range(8):
            landed.append(whoami(proxy.host, proxy.port))
            # The proxy counts the session until it sees the close.
            waitFor(lambda: proxy.activeSessions() == 2, 10, "only the held sessions left")
        assert landed == ["alpha"] * 8

        more = [heldSession(proxy.host, proxy.port) for _ in range(2)]
        held += more
        assert [name for _, name in more] == ["alpha", "alpha"]
        assert {n: e["active_sessions"] for n, e in proxy.backends().items()} == {
            "alpha": 2,
            "beta": 2,
        }
    finally:
        for ftp, _ in held:
            ftp.close()


def test_sourceHash(cluster: Cluster):
    """
    Each client address always lands on the same backend (control and data
    connections come from it), and the addresses spread over the backends.
    """
    backends = cluster.start("alpha", "beta", "gamma")
    proxy = cluster.proxy(tomlConfig(named(backends), policy="source-hash"))
    sources = [f"127.0.0.{n}" for n in range(10, 22)]

    seen: dict[str, set[str]] = {source: set() for source in sources}
    for _ in range(2):
        for source in sources:
            seen[source].add(whoami(proxy.host, proxy.port, sourceHost=source))

    assert all(len(nodes) == 1 for nodes in seen.values()), seen
    assert len({next(iter(nodes)) for nodes in seen.values()}) >= 2, seen


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_userHash(cluster: Cluster, workers: int):
    """
    user-hash: a user always lands on the same node, on two instances with
    the same backend list and across a restart; the static table wins; when
    a node is killed its users each go to one fixed next node (the next in
    their own order, the same on both instances, without a client failure)
    and nobody else moves. With worker processes, whichever worker takes a
    session.
    """
    extra = TWO_WORKERS if workers == 2 else ()
    names = ["alpha", "beta", "gamma"]
    backends = cluster.start(*names)
    users = [f"user{n:02d}" for n in range(9)]
    pinned = [f"pinned{n}" for n in range(4)]
    # The table must matter: some pinned users hash elsewhere.
    assert any(hashedOrder(user, names)[0] != "gamma" for user in pinned)
    config = tomlConfig(
        named(backends),
        policy="user-hash",
        userHashUsers={user: "gamma" for user in pinned},
    )
    first = cluster.proxy(config, *extra)
    second = cluster.proxy(config, *extra)

    def nodes(proxy: ConfiguredProxy, who: Sequence[str]) -> dict[str, str]:
        return {user: whoami(proxy.host, proxy.port, user) for user in who}

    placed = nodes(first, users + pinned)
    assert nodes(first, users + pinned) == placed
    assert nodes(second, users + pinned) == placed
    assert len({placed[user] for user in users}) >= 2, placed
    assert all(placed[user] == "gamma" for user in pinned), placed

    first.process.stop()
    restarted = cluster.proxy(config, *extra)
    assert nodes(restarted, users + pinned) == placed

    cluster.backends["gamma"].kill()
    moved = nodes(restarted, users + pinned)
    assert nodes(restarted, users + pinned) == moved
    assert nodes(second, users + pinned) == moved
    for user in users + pinned:
        if placed[user] == "gamma":
            expected = [n for n in hashedOrder(user, names) if n != "gamma"][0]
            assert moved[user] == expected, (user, moved)
        else:
            assert moved[user] == placed[user], (user, moved)
    assert "down" in {restarted.states()["gamma"], second.states()["gamma"]}
    if workers == 2:
        for proxy in (second, restarted):
            waitFor(lambda: servingWorkers(proxy.log()) == {0, 1}, 5,
                    f"both workers of {proxy.configPath.stem} served")


# -- health and failover ------------------------------------------------------


def test_passiveFailover(cluster: Cluster):
    """
    Without active checks, a killed backend costs no client a failure: the
    sessions that try it move on to the other; after C{fall} failed
    connects it is down, and /backends and /metrics say so.
    """
    backends = cluster.start("alpha", "beta")
    proxy = cluster.proxy(
        tomlConfig(named(backends), health={"kind": "none", "fall": 3, "retry": 60})
    )
    assert sessions(proxy, 2) == {"alpha": 1, "beta": 1}

    cluster.backends["alpha"].kill()
    assert sessions(proxy, 10) == {"beta": 10}

    assert proxy.states() == {"alpha": "down", "beta": "up"}
    metrics = proxy.metrics()
    assert sample(metrics, "ftpproxy_backend_up", backend="alpha") == 0
    assert sample(metrics, "ftpproxy_backend_up", backend="beta") == 1
    assert sample(metrics, "ftpproxy_backend_connect_failures_total", backend="alpha") == 3
    assert sample(metrics, "ftpproxy_sessions_total", backend="beta") == 11
    assert sample(metrics, "ftpproxy_sessions_total", backend="alpha") == 1


def test_passiveRetry(cluster: Cluster):
    """
    Without active checks, a backend down from failed connects gets one
    session again after C{retry} seconds; once it answers, it is up and
    takes its share again. No client sees a failure meanwhile.
    """
    retry = 1.0
    backends = cluster.start("alpha", "beta")
    proxy = cluster.proxy(
        tomlConfig(named(backends), health={"kind": "none", "fall": 1, "retry": retry})
    )
    alpha = cluster.backends["alpha"]
    alpha.kill()
    assert sessions(proxy, 2) == {"beta": 2}
    assert proxy.states()["alpha"] == "down"

    restartBackend(alpha)
    restarted = time.monotonic()
    landed: list[str] = []
    waitFor(
        lambda: landed.append(whoami(proxy.host, proxy.port)) or landed[-1] == "alpha",
        retry + 10,
        "a session on alpha again",
    )
    assert time.monotonic() - restarted <= retry + SLACK
    assert proxy.states()["alpha"] == "up"
    assert sessions(proxy, 4) == {"alpha": 2, "beta": 2}


def test_silentBackendFailover(cluster: Cluster):
    """
    A backend that accepts and never greets costs the first client one
    connect timeout, not a failure: the session moves on to the next
    backend; from then on the silent one is down and skipped.
    """
    silent = cluster.raw(HOSTS["alpha"])
    [beta] = cluster.start("beta")
    proxy = cluster.proxy(
        tomlConfig(
            [backendTable(silent, name="alpha"), backendTable(beta)],
            health={"kind": "none", "fall": 1, "retry": 60},
            connect_timeout=1,
        )
    )
    started = time.monotonic()
    assert whoami(proxy.host, proxy.port) == "beta"
    assert 1.0 <= time.monotonic() - started < 1.0 + SLACK
    assert proxy.states() == {"alpha": "down", "beta": "up"}
    started = time.monotonic()
    assert sessions(proxy, 3) == {"beta": 3}
    assert time.monotonic() - started < 1.0
    assert len(silent.connections()) == 1


def test_loginCheckSeesRefusedLogins(cluster: Cluster):
    """
    The login check logs in: a backend that greets but refuses the
    configured credentials is down (a banner check would pass it), and
    clients get 421.
    """
    [alpha] = cluster.start("alpha")
    proxy = cluster.proxy(
        tomlConfig(
            named([alpha]),
            health={
                "kind": "login", "user": "monitor", "password": "wrong",
                "interval": 0.5, "timeout": 1, "fall": 1,
            },
        )
    )
    waitFor(lambda: proxy.states()["alpha"] == "down", 10, "alpha down")
    # pyftpdlib holds a 530 back for three seconds: either way, PASS failed.
    assert re.search(r"backend alpha down: .*(login refused: 530|no reply to PASS)", proxy.log())
    with pytest.raises(ftplib.error_temp, match="^421 "):
        with ftplib.FTP(timeout=10) as ftp:
            ftp.connect(proxy.host, proxy.port)


@pytest.mark.parametrize("kind", ["banner", "login"])
def test_activeHealth(cluster: Cluster, kind: str):
    """
    With checks every 0.5 s, a backend killed with SIGKILL is down within
    fall * interval (no session goes there, /backends and the metrics say
    so) and, restarted on its port, up again within rise * interval.
    """
    interval, rise, fall = 0.5, 2, 2
    backends = cluster.start("alpha", "beta")
    health = {"kind": kind, "timeout": 0.5, "rise": rise, "fall": fall}
    if kind == "login":
        health |= {"user": "monitor", "password": PASSWORD}
    proxy = cluster.proxy(
        tomlConfig(named(backends), health=health), "--health-interval", str(interval)
    )
    waitFor(
        lambda: all(
            sample(proxy.metrics(), "ftpproxy_health_checks_total", backend=n, result="ok") >= 1
            for n in ("alpha", "beta")
        ),
        10,
        "a passed check of each backend",
    )
    assert sessions(proxy, 2) == {"alpha": 1, "beta": 1}

    alpha = cluster.backends["alpha"]
    alpha.kill()
    tookDown = waitFor(lambda: proxy.states()["alpha"] == "down", 10, "alpha down")
    assert tookDown <= fall * interval + SLACK
    metrics = proxy.metrics()
    assert sample(metrics, "ftpproxy_backend_up", backend="alpha") == 0
    assert sample(metrics, "ftpproxy_health_checks_total", backend="alpha", result="failed") >= fall
    assert 0 < sample(metrics, "ftpproxy_health_check_seconds", backend="beta") < 0.5
    assert sessions(proxy, 4) == {"beta": 4}
    assert sample(proxy.metrics(), "ftpproxy_backend_connect_failures_total", backend="alpha") == 0

    restartBackend(alpha)
    broughtUp = waitFor(lambda: proxy.states()["alpha"] == "up", 10, "alpha up")
    assert broughtUp <= rise * interval + SLACK
    assert sample(proxy.metrics(), "ftpproxy_backend_up", backend="alpha") == 1
    assert sessions(proxy, 4) == {"alpha": 2, "beta": 2}
    print(f"{kind}: down after {tookDown:.2f}s, up after {broughtUp:.2f}s")


def test_allBackendsDown(cluster: Cluster):
    """
    Once checks have marked every backend down (here: servers that accept
    and never greet), a client gets 421 at once, not after the connect
    timeout.
    """
    connectTimeout = 5
    silent = [cluster.raw(HOSTS["alpha"]), cluster.raw(HOSTS["beta"])]
    proxy = cluster.proxy(
        tomlConfig(
            [backendTable(raw, name=name) for raw, name in zip(silent, ["alpha", "beta"])],
            health={"kind": "banner", "interval": 0.5, "timeout": 0.3, "fall": 1},
            connect_timeout=connectTimeout,
        )
    )
    waitFor(lambda: set(proxy.states().values()) == {"down"}, 10, "both backends down")
    metrics = proxy.metrics()
    assert [sample(metrics, "ftpproxy_backend_up", backend=n) for n in ("alpha", "beta")] == [0, 0]

    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(ftplib.error_temp) as refused:
            with ftplib.FTP(timeout=connectTimeout * 3) as ftp:
                ftp.connect(proxy.host, proxy.port)
        elapsed = time.monotonic() - started
        assert str(refused.value).startswith("421 ")
        assert elapsed < 1.0, elapsed


# -- operations with a transfer in flight ---------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_drain(cluster: Cluster, workers: int):
    """
    Draining the backend of a running download: the download completes
    intact, new sessions go to the other backend; enable brings it back.
    With worker processes, the drain reaches every worker before the
    admin endpoint answers.
    """
    backends = cluster.start("alpha", "beta", files={"slow.bin": SLOW_SIZE})
    proxy = cluster.proxy(tomlConfig(named(backends)), *(TWO_WORKERS if workers == 2 else ()))

    download = cluster.download(proxy, "slow.bin")
    download.waitForBytes(64 * 1024)
    [busy] = [n for n, e in proxy.backends().items() if e["active_sessions"] == 1]
    [other] = [n for n in ("alpha", "beta") if n != busy]

    assert proxy.backends()[busy]["address"] == cluster.backends[busy].address
    drained = proxy.post(f"/backends/{busy}/drain")
    assert (drained["state"], drained["active_sessions"]) == ("draining", 1)
    assert sessions(proxy, 6 if workers == 1 else 24) == {other: 6 if workers == 1 else 24}
    assertInFlight(proxy, download)
    assert proxy.states()[busy] == "draining"

    reply, size, digest = download.finish()
    assert reply.startswith("226")
    assert (size, digest) == (SLOW_SIZE, cluster.backends[busy].sha256("slow.bin"))
    waitFor(lambda: proxy.backends()[busy]["active_sessions"] == 0, 10, "drained idle")
    assert proxy.states()[busy] == "draining"

    assert proxy.post(f"/backends/{busy}/enable")["state"] == "up"
    if workers == 1:
        assert sessions(proxy, 4) == {"alpha": 2, "beta": 2}
    else:
        # Round robin in each worker: both backends, roughly half each.
        counts = sessions(proxy, 24)
        assert set(counts) == {"alpha", "beta"} and min(counts.values()) >= 8, counts
        waitFor(lambda: servingWorkers(proxy.log()) == {0, 1}, 5, "both workers served")
    assert proxy.request("POST", "/backends/nonesuch/drain")[0] == 404


def test_reload(cluster: Cluster):
    """
    SIGHUP with a download in flight on a backend that the new file drops:
    the download completes intact, new sessions follow the new list and
    weights; a broken file is refused with a log line and the old
    configuration stays.
    """
    backends = cluster.start("alpha", "beta", "gamma", files={"slow.bin": SLOW_SIZE})
    alpha, beta, gamma = backends
    before = tomlConfig(
        [backendTable(alpha), backendTable(beta)], policy="weighted-round-robin"
    )
    after = tomlConfig(
        [backendTable(beta, weight=1), backendTable(gamma, weight=3)],
        policy="weighted-round-robin",
    )
    proxy = cluster.proxy(before)

    download = cluster.download(proxy, "slow.bin")
    download.waitForBytes(64 * 1024)
    assert proxy.backends()["alpha"]["active_sessions"] == 1

    proxy.reload(after)
    proxy.waitForLog("configuration reloaded")
    assert {n: e["weight"] for n, e in proxy.backends().items()} == {"beta": 1, "gamma": 3}
    assert sessions(proxy, 8) == {"beta": 2, "gamma": 6}
    assertInFlight(proxy, download)

    reply, size, digest = download.finish()
    assert reply.startswith("226")
    assert (size, digest) == (SLOW_SIZE, alpha.sha256("slow.bin"))

    proxy.reload('policy = "weighted-round-robin"\n[[backend]\naddress = 1\n')
    proxy.waitForLog("configuration not reloaded")
    proxy.reload(tomlConfig([backendTable(beta, weight=-1), backendTable(gamma)]))
    proxy.waitForLog("configuration not reloaded", count=2)
    assert proxy.log().count("configuration reloaded") == 1
    assert {n: e["weight"] for n, e in proxy.backends().items()} == {"beta": 1, "gamma": 3}
    assert sessions(proxy, 8) == {"beta": 2, "gamma": 6}


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_sigterm(cluster: Cluster, workers: int):
    """
    SIGTERM with a download in flight and a 10 s grace: the listener closes
    at once, the download completes intact, then the process exits (well
    before the grace period ends). With worker processes, the supervisor
    passes SIGTERM on and exits after the last worker.
    """
    [solo] = cluster.start("alpha", files={"slow.bin": SLOW_SIZE})
    proxy = cluster.proxy(
        tomlConfig(named([solo])), "--shutdown-grace", "10", *(TWO_WORKERS if workers == 2 else ())
    )
    download = cluster.download(proxy, "slow.bin")
    download.waitForBytes(64 * 1024)

    signalled = time.monotonic()
    proxy.signal(signal.SIGTERM)
    closed = waitFor(lambda: not isListening(proxy.host, proxy.port), 5, "listener closed")
    assert closed < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=5).close()
    assertInFlight(proxy, download)
    assert proxy.process.process.poll() is None

    reply, size, digest = download.finish()
    assert reply.startswith("226")
    assert (size, digest) == (SLOW_SIZE, solo.sha256("slow.bin"))
    # twistd ends a clean shutdown by re-raising the signal it got.
    assert proxy.process.process.wait(10) == -signal.SIGTERM
    assert time.monotonic() - signalled < 9
    assert "Server Shut Down." in proxy.log()
    assert "ended: client 127.0.0.1, backend alpha" in proxy.log()
    if workers == 2:
        assert proxy.log().count("exited with status 0") == 2


def test_sigtermGraceEnds(cluster: Cluster):
    """
    SIGTERM with an idle session that does not leave: the session is
    closed with 421 when the grace period ends, and the process exits.
    """
    [solo] = cluster.start("alpha")
    proxy = cluster.proxy(tomlConfig(named([solo])), "--shutdown-grace", "1")
    ftp, name = heldSession(proxy.host, proxy.port)
    with ftp:
        assert name == "alpha"
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert ftp.getline().startswith("421 ")
        closedAfter = time.monotonic() - signalled
    assert proxy.process.process.wait(10) == -signal.SIGTERM
    assert 1.0 <= closedAfter < 1.0 + SLACK


# -- metrics and logs ---------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_metricsFollowTraffic(cluster: Cluster, workers: int):
    """
    After real sessions, /metrics counts each backend's sessions, its bytes
    each way (exactly the sizes moved) and its completed transfers; with
    worker processes, the sums over the workers.
    """
    payload = 200_000
    backends = cluster.start("alpha", "beta", files={"data.bin": payload})
    proxy = cluster.proxy(tomlConfig(named(backends)), *(TWO_WORKERS if workers == 2 else ()))
    before = proxy.metrics()

    expected = {
        name: {"sessions": 0, "download": 0, "upload": 0, "transfers": 0}
        for name in ("alpha", "beta")
    }
    for n in range(4):
        upload = bytes(range(256)) * (40 + 10 * n)
        with ftplib.FTP(timeout=20) as ftp:
            ftp.connect(proxy.host, proxy.port)
            ftp.login("user", PASSWORD)
            who: list[bytes] = []
            ftp.retrbinary(f"RETR {WHOAMI}", who.append)
            name = b"".join(who).decode().strip()
            data: list[bytes] = []
            ftp.retrbinary("RETR data.bin", data.append)
            assert len(b"".join(data)) == payload
            ftp.storbinary(f"STOR up{n}.bin", io.BytesIO(upload))
            ftp.quit()
        counts = expected[name]
        counts["sessions"] += 1
        counts["download"] += len(b"".join(who)) + payload
        counts["upload"] += len(upload)
        counts["transfers"] += 3
        assert cluster.backends[name].path(f"up{n}.bin").read_bytes() == upload

    def sessionsCounted() -> float:
        return sum(e["total_sessions"] for e in proxy.backends().values())

    # Worker processes report a few times a second: wait for every report.
    waitFor(lambda: sessionsCounted() >= 4 and proxy.activeSessions() == 0, 10, "sessions closed")
    after = proxy.metrics()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    for name, counts in expected.items():
        if workers == 1:
            assert counts["sessions"] == 2
        assert delta("ftpproxy_sessions_total", backend=name) == counts["sessions"]
        assert sample(after, "ftpproxy_sessions_active", backend=name) == 0
        assert (
            delta("ftpproxy_bytes_total", backend=name, direction="download")
            == counts["download"]
        )
        assert delta("ftpproxy_bytes_total", backend=name, direction="upload") == counts["upload"]
        assert (
            delta("ftpproxy_transfers_total", backend=name, result="completed")
            == counts["transfers"]
        )
        assert delta("ftpproxy_transfers_total", backend=name, result="failed") == 0


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_jsonLogAndXferlog(cluster: Cluster, tmp_path: Path, workers: int):
    """
    --log-format json makes every line of the daemon's output a JSON object
    with the event's fields; --xferlog gets one line per RETR and STOR (not
    per listing) with the size moved. With worker processes, the supervisor
    writes both, from what the workers report.
    """
    [solo] = cluster.start("alpha", files={"data.bin": 123_456})
    xferlog = tmp_path / "xferlog"
    proxy = cluster.proxy(
        tomlConfig(named([solo])),
        "--log-format",
        "json",
        "--xferlog",
        str(xferlog),
        *(TWO_WORKERS if workers == 2 else ()),
    )
    upload = b"x" * 54_321
    with ftplib.FTP(timeout=20) as ftp:
        ftp.connect(proxy.host, proxy.port)
        ftp.login("user", PASSWORD)
        ftp.nlst()
        data: list[bytes] = []
        ftp.retrbinary("RETR data.bin", data.append)
        ftp.storbinary("STOR up.bin", io.BytesIO(upload))
        ftp.quit()

    waitFor(lambda: xferlog.exists() and len(xferlog.read_text().splitlines()) >= 2, 10, "xferlog")
    lines = [line.split() for line in xferlog.read_text().splitlines()]
    assert len(lines) == 2, lines
    retr, stor = lines
    # current-time (5 words) transfer-time remote-host size name type flag
    # direction access-mode user service auth-method auth-user status
    assert len(retr) == 18 and len(stor) == 18
    assert (retr[6], retr[7], retr[9], retr[11], retr[17]) == (
        "127.0.0.1", "123456", "b", "o", "c",
    )
    assert retr[8].endswith("data.bin")
    assert (stor[6], stor[7], stor[9], stor[11], stor[17]) == (
        "127.0.0.1", "54321", "b", "i", "c",
    )
    assert stor[8].endswith("up.bin")
    assert retr[13] == stor[13] == "user"

    waitFor(lambda: '"ended' in proxy.log() or "ended:" in proxy.log(), 10, "session end")
    records = [json.loads(line) for line in proxy.log().splitlines() if line.strip()]
    assert all({"timestamp", "level", "namespace", "message"} <= set(r) for r in records)
    transfers = [r for r in records if r.get("verb") in ("RETR", "STOR")]
    assert sorted((r["verb"], r["bytes"]) for r in transfers) == [
        ("RETR", 123_456),
        ("STOR", 54_321),
    ]
    assert all(r["backend"] == "alpha" and r["client"] == "127.0.0.1" for r in transfers)
    if workers == 2:
        assert {r.get("worker") for r in transfers} <= {0, 1}
        assert all("worker" in r for r in transfers)


# -- PROXY protocol -------------------------------------------------------------


def expectedHeader(version: int, client: tuple[str, int], proxy: tuple[str, int]) -> bytes:
    """
    The PROXY protocol header for a TCP/IPv4 connection, written out from
    the specification.
    """
    if version == 1:
        return (
            f"PROXY TCP4 {client[0]} {proxy[0]} {client[1]} {proxy[1]}\r\n".encode("ascii")
        )
    addresses = (
        socket.inet_aton(client[0])
        + socket.inet_aton(proxy[0])
        + struct.pack("!HH", client[1], proxy[1])
    )
    return (
        V2_SIGNATURE
        + bytes([0x21, 0x11])
        + struct.pack("!H", len(addresses))
        + addresses
    )


@pytest.mark.parametrize("version", [1, 2])
def test_proxyProtocolToBackend(cluster: Cluster, version: int):
    """
    A backend with C{proxy_protocol} gets the header naming the real client
    address and port, and the address it connected to, before any other
    byte; the proxy's own health checks say LOCAL (v2) or UNKNOWN (v1).
    """
    raw = cluster.raw(RAW_HOST, banner=b"220 raw ready\r\n")
    proxy = cluster.proxy(
        tomlConfig(
            [backendTable(raw, name="raw", proxy_protocol=version)],
            health={"kind": "banner", "interval": 60},
        )
    )

    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client:
        client.settimeout(10)
        client.bind(("127.0.0.7", 0))
        client.connect((proxy.host, proxy.port))
        replies = client.makefile("rb")
        assert replies.readline() == b"220 raw ready\r\n"
        client.sendall(b"QUIT\r\n")
        assert replies.readline().startswith(b"221")
        replies.close()
        header = expectedHeader(version, client.getsockname(), (proxy.host, proxy.port))

    local = b"PROXY UNKNOWN\r\n" if version == 1 else V2_SIGNATURE + b"\x20\x00\x00\x00"
    waitFor(
        lambda: [c.endswith(b"QUIT\r\n") for c in raw.connections()] == [True, True],
        10,
        "a session and a health check, each ending with QUIT",
    )
    assert sorted(raw.connections()) == sorted([header + b"QUIT\r\n", local + b"QUIT\r\n"])
    assert sorted(raw.firstChunks()) == sorted([header, local])


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_proxyProtocolListener(cluster: Cluster, tmp_path: Path, workers: int):
    """
    On a C{haproxy:} listener, the client address comes from the PROXY
    header: the daemon's JSON log and the xferlog name it (also when worker
    processes share the listener).
    """
    [solo] = cluster.start("alpha")
    xferlog = tmp_path / "xferlog"
    proxy = cluster.proxy(
        tomlConfig(named([solo])),
        "--log-format",
        "json",
        "--xferlog",
        str(xferlog),
        *(TWO_WORKERS if workers == 2 else ()),
        listenPrefix="haproxy:",
    )
    claimed = ("127.0.0.99", 43210)

    connection = socket.create_connection((proxy.host, proxy.port), timeout=10)
    connection.sendall(
        f"PROXY TCP4 {claimed[0]} {proxy.host} {claimed[1]} {proxy.port}\r\n".encode()
    )
    ftp = ftplib.FTP(timeout=10)
    try:
        ftp.sock = connection
        ftp.af = connection.family
        ftp.file = connection.makefile("r", encoding=ftp.encoding)
        ftp.welcome = ftp.getresp()
        assert ftp.welcome.startswith("220 alpha ready")
        ftp.login("user", PASSWORD)
        who: list[bytes] = []
        ftp.retrbinary(f"RETR {WHOAMI}", who.append)
        assert b"".join(who) == b"alpha\n"
        ftp.quit()
    finally:
        ftp.close()

    waitFor(lambda: xferlog.exists() and xferlog.read_text().strip(), 10, "xferlog line")
    [line] = xferlog.read_text().splitlines()
    assert line.split()[6:8] == [claimed[0], str(len(b"alpha\n"))]
    records = [json.loads(line) for line in proxy.log().splitlines() if line.strip()]
    started = [r for r in records if "started: client" in r["message"]]
    assert [r["client"] for r in started] == [claimed[0]]
    assert f"client {claimed[0]}" in started[0]["message"]
