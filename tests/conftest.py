"""
Fixtures for the integration tests: real pyftpdlib backends and the proxy
running as a real twistd daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.backends import Backend, startBackend as _startBackend
from tests.support.proxy import ProxyProcess, startProxy as _startProxy
from tests.support.reliability import FIGURES

ALPHA = ("alpha", "127.0.0.2")
BETA = ("beta", "127.0.0.3")


@pytest.fixture
def startBackend(tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """
    A factory C{startBackend(name, host, passivePorts=None)} for pyftpdlib
    backends, each serving its own directory under C{tmp_path}; all are
    stopped at teardown.
    """
    started: list[Backend] = []

    def start(name: str, host: str, passivePorts: range | None = None) -> Backend:
        backend = _startBackend(
            name,
            host,
            root=tmp_path / "roots" / name,
            logDirectory=tmp_path / "logs",
            passivePorts=passivePorts,
        )
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()
    # pytest shows this only when the test failed.
    for backend in started:
        print(f"--- log of backend {backend.name} ({backend.address}) ---")
        print(backend.log())


@pytest.fixture
def twoBackends(startBackend: Callable[..., Backend]) -> tuple[Backend, Backend]:
    """
    Backends C{alpha} on 127.0.0.2 and C{beta} on 127.0.0.3.
    """
    return (startBackend(*ALPHA), startBackend(*BETA))


@pytest.fixture
def startProxy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    startBackend: Callable[..., Backend],
) -> Iterator[Callable[..., ProxyProcess]]:
    """
    A factory C{startProxy(*extraArgs, backends=None)} that runs the proxy
    daemon in front of C{backends} (default: C{twoBackends}).

    At teardown each daemon is stopped, before the backends, and the test
    fails if its log shows a traceback or an unhandled error.
    """
    started: list[ProxyProcess] = []

    def start(
        *extraArgs: str,
        backends: Sequence[Backend] | None = None,
        passivePorts: range | None = None,
    ) -> ProxyProcess:
        if backends is None:
            backends = request.getfixturevalue("twoBackends")
        proxy = _startProxy(
            backends,
            tmp_path / "proxy",
            extraArgs=extraArgs,
            passivePorts=passivePorts,
            name=f"proxy-{len(started)}",
        )
        started.append(proxy)
        return proxy

    yield start
    problems = []
    for proxy in started:
        proxy.stop()
        # pytest shows this only when the test failed.
        print(f"--- log of {' '.join(proxy.command)} ---")
        print(proxy.log())
        found = proxy.logProblems()
        if found:
            problems.append(
                f"{' and '.join(found)} in the log of {' '.join(proxy.command)}:\n"
                + proxy.log()
            )
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(startProxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    """
    The proxy in front of C{twoBackends}, with default options.
    """
    return startProxy()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability",
        choices=("short", "full"),
        default="short",
        help="how much tests/test_reliability.py does: the short form (default, what CI "
        "runs) or the full one",
    )


def pytest_terminal_summary(terminalreporter) -> None:
    """
    The figures the reliability suite reached, when it ran.
    """
    if FIGURES.ran:
        terminalreporter.write_sep("-", "reliability suite")
        terminalreporter.write_line(FIGURES.summary())
        for measurement in FIGURES.measurements:
            terminalreporter.write_line(measurement)
