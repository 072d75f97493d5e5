"""
Helpers for running the integration tests against the proxy with worker
processes (C{--workers 2}) too: which workers served sessions, and enough
quick sessions to see them spread.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

#: Extra arguments that run the proxy with two worker processes.
TWO_WORKERS = ("--workers", "2")

# A session start as the supervisor logs a worker's event (text format).
_STARTED = re.compile(r"\[worker-(\d+)[^\]]*\] session \S+ started")

#: Quick sessions that make a one-sided spread over two workers unlikely:
#: the kernel picks a worker for each connection by its addresses, so all
#: land on one worker with probability 2 ** (1 - SPREAD_SESSIONS).
SPREAD_SESSIONS = 24


def servingWorkers(log: str) -> set[int]:
    """
    The workers that started sessions, by the log of a supervisor.
    """
    return {int(index) for index in _STARTED.findall(log)}


def quickSessions(host: str, port: int, count: int = SPREAD_SESSIONS) -> None:
    """
    C{count} sessions one after another, each: connect, read the greeting
    (the backend's, so that the session has started), QUIT.
    """
    for _ in range(count):
        with socket.create_connection((host, port), timeout=20) as connection:
            reader = connection.makefile("rb")
            greeting = reader.readline()
            assert greeting.startswith(b"220"), greeting
            connection.sendall(b"QUIT\r\n")
            assert reader.readline().startswith(b"221")


def assertSpreadOverWorkers(
    host: str, port: int, log: Callable[[], str], workers: int = 2
) -> None:
    """
    After some quick sessions, every one of C{workers} workers has started
    sessions.
    """
    quickSessions(host, port)
    wanted = set(range(workers))
    deadline = time.monotonic() + 10
    while (serving := servingWorkers(log())) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert serving == wanted, f"sessions only on workers {sorted(serving)}"
