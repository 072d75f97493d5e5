"""
SIGHUP and SIGTERM against the real daemon, for what the in-memory tests
(tests/test_reload.py) cannot show whole: the demo still serving after a
reload (defect 4), a reload's one log line, and a transfer that ends during
the shutdown grace period reaching the xferlog (defect 6).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import Backend
from tests.support.balancing import (
    ConfiguredProxy,
    SlowDownload,
    backendTable,
    logProblems,
    startAnyUserBackend,
    startConfiguredProxy,
    tomlConfig,
    waitFor,
)
from tests.support.clients import curl, ftpURL
from tests.support.files import MiB
from tests.support.proxy import freePort

SLOW_SIZE = 8 * MiB


class Started:
    """
    The daemons and downloads of one test, all stopped at teardown.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.proxies: list[ConfiguredProxy] = []
        self.backends: list[Backend] = []
        self.downloads: list[SlowDownload] = []

    def proxy(self, config: str, *extraArgs: str) -> ConfiguredProxy:
        proxy = startConfiguredProxy(
            config, self.tmp_path / "proxy", extraArgs, name=f"proxy-{len(self.proxies)}"
        )
        self.proxies.append(proxy)
        return proxy

    def backend(self, name: str, host: str) -> Backend:
        backend = startAnyUserBackend(
            name,
            host,
            self.tmp_path / "roots" / name,
            self.tmp_path / "logs",
            files={"slow.bin": SLOW_SIZE},
        )
        self.backends.append(backend)
        return backend

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
        for backend in self.backends:
            backend.stop()
        return problems


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    started = Started(tmp_path)
    try:
        yield started
    finally:
        problems = started.tearDown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def demoWhoami(proxy: ConfiguredProxy) -> str:
    url = ftpURL(proxy.host, proxy.port, "whoami.txt", user="demo", password="demo")
    return curl(url).stdout.decode().strip()


def test_demoServesAfterReload(started: Started) -> None:
    """
    Defect 4: C{--demo --config F} lost its backends on SIGHUP, and every
    new session got 421. After a reload the demo backends still serve, the
    one reload line says what changed, and no new certificates are made.
    """
    implicit = f"tcp:{freePort()}:interface=127.0.0.1"
    proxy = started.proxy(
        'policy = "round-robin"\n', "--demo", "--implicit-tls-listen", implicit
    )
    proxy.waitForLog("demo backend-2 listening")
    assert {demoWhoami(proxy) for _ in range(2)} == {"backend-1", "backend-2"}

    proxy.reload('policy = "round-robin"\nmax_sessions = 50\nidle_timeout = 120\n')
    proxy.waitForLog("configuration reloaded")
    # New demo certificates would be a changed tls (another file).
    assert (
        "configuration reloaded (2 backends): changed: idle_timeout, max_sessions; "
        "took effect: idle_timeout, max_sessions; need a restart: none"
    ) in proxy.log()
    assert {demoWhoami(proxy) for _ in range(2)} == {"backend-1", "backend-2"}


def test_reloadNamesWhatNeedsARestart(started: Started, tmp_path: Path) -> None:
    """
    A reload that changes the log format and turns on an xferlog applies
    the xferlog and says that the log format needs a restart.
    """
    alpha = started.backend("alpha", "127.0.0.2")
    table = [backendTable(alpha)]
    proxy = started.proxy(tomlConfig(table))
    xferlog = tmp_path / "xferlog"
    proxy.reload(tomlConfig(table, log_format="json", xferlog=str(xferlog)))
    proxy.waitForLog("configuration reloaded")
    assert (
        "changed: xferlog, log_format; took effect: xferlog; need a restart: log_format"
        in proxy.log()
    )
    url = ftpURL(proxy.host, proxy.port, "whoami.txt")
    assert curl(url).stdout.decode().strip() == "alpha"
    waitFor(lambda: xferlog.exists() and "whoami.txt" in xferlog.read_text(), 10, "xferlog")


def test_transferInTheGracePeriodIsInTheXferlog(started: Started, tmp_path: Path) -> None:
    """
    Defect 6: SIGTERM stopped the xferlog at once, so a download that
    finished during the grace period was missing from it.
    """
    alpha = started.backend("alpha", "127.0.0.2")
    xferlog = tmp_path / "xferlog"
    proxy = started.proxy(
        tomlConfig([backendTable(alpha)], xferlog=str(xferlog), shutdown_grace=20)
    )
    download = SlowDownload(proxy.host, proxy.port, "slow.bin", rate=2 * MiB)
    started.downloads.append(download)
    download.waitForBytes(256 * 1024)

    proxy.signal(signal.SIGTERM)
    reply, size, _ = download.finish()
    assert reply.startswith("226") and size == SLOW_SIZE
    assert proxy.process.process.wait(20) == -signal.SIGTERM
    log = proxy.log()
    assert log.index("Received SIGTERM") < log.index("RETR slow.bin via alpha: 226")
    [line] = [line for line in xferlog.read_text().splitlines() if "slow.bin" in line]
    fields = line.split()
    assert fields[7] == str(SLOW_SIZE) and fields[-1] == "c"
