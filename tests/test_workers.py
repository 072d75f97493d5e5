"""
The proxy with worker processes (C{--workers 2}) as a real daemon: a worker
killed mid-transfer is replaced while the other worker's transfers go on
and no counter is lost; SIGHUP reaches every worker with one report; active
health checks run once, in the supervisor, and their verdict reaches every
worker; each worker keeps to its own slice of the passive ports.

(The plain, FTPS, active-mode and balancing suites run some of their tests
with two workers too; see tests/support/workers.py.)
"""

from __future__ import annotations

import ftplib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import PASSWORD
from tests.support.balancing import (
    ConfiguredProxy,
    sample,
    tomlConfig,
    waitFor,
    whoami,
)
from tests.support.workers import TWO_WORKERS, quickSessions, servingWorkers
from tests.test_load_balancing import SLOW_SIZE, Cluster, named

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        problems = cluster.tearDown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def workerPids(proxy: ConfiguredProxy) -> dict[int, int]:
    """
    Each worker's latest pid, from the supervisor's log.
    """
    return {int(index): int(pid) for index, pid in _STARTED.findall(proxy.log())}


def waitForWorkers(proxy: ConfiguredProxy, count: int = 2) -> dict[int, int]:
    waitFor(lambda: len(workerPids(proxy)) == count, 20, f"{count} workers started")
    return workerPids(proxy)


def perWorker(proxy: ConfiguredProxy, family: str) -> dict[int, float]:
    metrics = proxy.metrics()
    return {index: sample(metrics, family, worker=str(index)) for index in (0, 1)}


def test_killedWorkerIsReplaced(cluster: Cluster):
    """
    SIGKILL one worker while both run downloads: the other worker's
    downloads finish intact, the dead worker's sessions are gone, a new
    worker takes its place (logged, counted), new sessions spread over both
    again, and the totals in /metrics lose nothing.
    """
    backends = cluster.start("alpha", "beta", files={"slow.bin": SLOW_SIZE})
    proxy = cluster.proxy(tomlConfig(named(backends)), *TWO_WORKERS)
    pids = waitForWorkers(proxy)

    downloads = []
    while len(downloads) < 10:
        download = cluster.download(proxy, "slow.bin")
        download.waitForBytes(64 * 1024)
        downloads.append(download)
        active = perWorker(proxy, "ftpproxy_worker_sessions_active")
        if len(downloads) >= 2 and min(active.values()) >= 1:
            break
    active = perWorker(proxy, "ftpproxy_worker_sessions_active")
    assert min(active.values()) >= 1, active
    before = proxy.metrics()
    startedBefore = sum(
        sample(before, "ftpproxy_sessions_total", backend=name) for name in ("alpha", "beta")
    )

    os.kill(pids[0], signal.SIGKILL)
    waitFor(lambda: "worker 0 (pid" in proxy.log() and "killed by signal 9" in proxy.log(),
            10, "the supervisor saw worker 0 die")
    finished, broken = 0, 0
    for download in downloads:
        try:
            reply, size, digest = download.finish()
        except (OSError, EOFError, ftplib.Error):
            broken += 1
            continue
        assert reply.startswith("226")
        assert size == SLOW_SIZE
        assert digest in {b.sha256("slow.bin") for b in backends}
        finished += 1
    assert (finished, broken) == (active[1], active[0])

    waitFor(lambda: workerPids(proxy).get(0, pids[0]) != pids[0], 20, "worker 0 started again")
    assert workerPids(proxy)[1] == pids[1]
    restarted = proxy.log().rindex("worker 0 started")
    quickSessions(proxy.host, proxy.port)
    waitFor(lambda: servingWorkers(proxy.log()[restarted:]) == {0, 1}, 10, "both workers serve")

    def started() -> float:
        metrics = proxy.metrics()
        return sum(sample(metrics, "ftpproxy_sessions_total", backend=b) for b in ("alpha", "beta"))

    # Workers report a few times a second: wait for the last report.
    waitFor(lambda: started() == startedBefore + 24, 5, "every session counted")
    waitFor(lambda: proxy.activeSessions() == 0, 10, "no session left")
    after = proxy.metrics()
    assert sample(after, "ftpproxy_worker_restarts_total", worker="0") == 1
    assert sample(after, "ftpproxy_worker_restarts_total", worker="1") == 0
    assert sample(after, "ftpproxy_workers") == 2


def test_reloadReachesEveryWorker(cluster: Cluster):
    """
    SIGHUP: the supervisor reloads, logs one report, and every worker takes
    the new backend list for new sessions.
    """
    alpha, beta = cluster.start("alpha", "beta")
    proxy = cluster.proxy(tomlConfig(named([alpha])), *TWO_WORKERS)
    waitForWorkers(proxy)
    assert {whoami(proxy.host, proxy.port) for _ in range(8)} == {"alpha"}

    proxy.reload(tomlConfig(named([beta])))
    proxy.waitForLog("configuration reloaded")
    names = [whoami(proxy.host, proxy.port) for _ in range(24)]
    assert set(names) == {"beta"}
    waitFor(
        lambda: servingWorkers(proxy.log()[proxy.log().index("configuration reloaded"):])
        == {0, 1},
        5,
        "both workers served after the reload",
    )
    assert proxy.log().count("configuration reloaded") == 1
    assert list(proxy.backends()) == ["beta"]


def test_healthChecksRunOnceForAllWorkers(cluster: Cluster):
    """
    Active checks run in the supervisor only (one check per interval per
    backend, not one per worker); when a backend dies their verdict takes
    it out of every worker, and when it comes back it is back everywhere.
    """
    alpha, beta = cluster.start("alpha", "beta")
    health = {"kind": "banner", "interval": 0.5, "timeout": 2, "rise": 2, "fall": 2}
    proxy = cluster.proxy(tomlConfig(named([alpha, beta]), health=health), *TWO_WORKERS)
    waitForWorkers(proxy)

    first = proxy.metrics()
    time.sleep(3)
    second = proxy.metrics()
    checks = sample(second, "ftpproxy_health_checks_total", backend="alpha", result="ok") - sample(
        first, "ftpproxy_health_checks_total", backend="alpha", result="ok"
    )
    # About 6 in 3 s at one check every 0.5 s; workers running their own
    # would make it 12.
    assert 3 <= checks <= 9, checks

    alpha.kill()
    waitFor(lambda: proxy.states()["alpha"] == "down", 10, "alpha down")
    failuresBefore = sample(
        proxy.metrics(), "ftpproxy_backend_connect_failures_total", backend="alpha"
    )
    assert {whoami(proxy.host, proxy.port) for _ in range(24)} == {"beta"}
    # No worker tried alpha: the checks' verdict reached both.
    assert (
        sample(proxy.metrics(), "ftpproxy_backend_connect_failures_total", backend="alpha")
        == failuresBefore
    )
    waitFor(lambda: servingWorkers(proxy.log()) == {0, 1}, 5, "both workers served")


def test_eachWorkerHasItsOwnPassivePorts(cluster: Cluster):
    """
    The passive range is split in two: each worker answers PASV from its
    own half only, and the two halves make the whole range.
    """
    alpha, = cluster.start("alpha")
    proxy = cluster.proxy(tomlConfig(named([alpha])), *TWO_WORKERS)
    waitForWorkers(proxy)
    serving = re.compile(r"\[worker-(\d)[^\]]*\] worker \d of 2 serving with passive ports (\S+)")
    waitFor(lambda: len(serving.findall(proxy.log())) == 2, 10, "both workers' slices logged")
    slices = dict(serving.findall(proxy.log()))
    ranges = proxy.process.passivePorts
    low, high = ranges[0], ranges[-1]
    middle = low + len(ranges) // 2
    assert slices == {"0": f"{low}-{middle - 1}", "1": f"{middle}-{high}"}

    for _ in range(16):
        with ftplib.FTP(timeout=20) as ftp:
            ftp.connect(proxy.host, proxy.port)
            ftp.login("user", PASSWORD)
            port = ftplib.parse227(ftp.sendcmd("PASV"))[1]
            assert low <= port <= high
            ftp.quit()
    # Each passive port was opened by the worker whose slice holds it.
    opened: dict[int, set[int]] = {0: set(), 1: set()}
    for index, port in re.findall(
        r"\[worker-(\d+)[^\]]*\] \S+ starting on (\d+)", proxy.log()
    ):
        if low <= int(port) <= high:
            opened[int(index)].add(int(port))
    assert opened[0] and opened[1], opened
    assert all(low <= p < middle for p in opened[0]), opened
    assert all(middle <= p <= high for p in opened[1]), opened
