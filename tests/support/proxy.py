"""
The proxy as a real daemon: C{twistd -n ftpproxy ...} in a subprocess.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from .backends import Backend
from .processes import readLog, stopProcess

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.05

PASSIVE_PORT_COUNT = 50
# Above Linux's default ephemeral range (32768-60999), so outgoing connections
# and OS-chosen backend passive ports never take them, and away from the round
# numbers (20000, 50000, ...) that other tools on a shared machine pick.
PASSIVE_PORT_LOW = 61000
PASSIVE_PORT_HIGH = 65535

# twistd with this interpreter.  Not "-m twisted.scripts.twistd": that module
# has no __main__ block, so it silently does nothing and exits 0.
TWISTD = (
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; "
    "from twisted.scripts.twistd import run; sys.exit(run())",
)

# Words that must never appear in the daemon's log.
LOG_PROBLEMS = ("Traceback", "Unhandled")


class ProxyStartError(Exception):
    """
    The proxy daemon exited or did not listen in time.
    """


def freePort(host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that the OS has just handed out as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bindable(ports: range) -> bool:
    """
    Whether every port in C{ports} can be bound on all interfaces right now.
    """
    sockets = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("", port))
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


def freePortRange(
    count: int = PASSIVE_PORT_COUNT, rng: random.Random | None = None
) -> range:
    """
    C{count} consecutive ports that are bindable now, from a random base so
    that parallel test runs are unlikely to pick the same ones.
    """
    rng = rng or random.SystemRandom()
    for _ in range(100):
        base = rng.randrange(PASSIVE_PORT_LOW, PASSIVE_PORT_HIGH + 2 - count)
        ports = range(base, base + count)
        # A proxy binds its passive ports only when a client asks for one,
        # so "bindable now" does not see the range of a proxy started a
        # moment ago: never hand out a range that overlaps an earlier one.
        if any(_overlap(ports, earlier) for earlier in _handedOut):
            continue
        if _bindable(ports):
            _handedOut.append(ports)
            del _handedOut[:-_REMEMBERED]
            return ports
    raise RuntimeError(f"no {count} free consecutive ports found")


#: The ranges handed out lately (a test run uses far fewer than this).
_handedOut: list[range] = []
_REMEMBERED = 40


def _overlap(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


def _procAddress(host: str, port: int) -> str:
    """
    C{host:port} as C{/proc/net/tcp} writes a local address.
    """
    number = int.from_bytes(socket.inet_aton(host), sys.byteorder)
    return f"{number:08X}:{port:04X}"


def isListening(host: str, port: int) -> bool:
    """
    Whether something listens on C{host:port} (or on all interfaces), found
    without connecting so that no session is opened in the proxy.
    """
    wanted = {_procAddress(host, port), _procAddress("0.0.0.0", port)}
    try:
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[1] in wanted and fields[3] == "0A":
                    return True
        return False
    except FileNotFoundError:
        # Not Linux: fall back to connecting.
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True


@attrs.define(eq=False)
class ProxyProcess:
    """
    A running proxy daemon.

    @ivar passivePorts: the client-facing passive ports it was given.
    """

    host: str
    port: int
    passivePorts: range
    backends: Sequence[Backend]
    command: list[str]
    process: subprocess.Popen = attrs.field(repr=False)
    logPath: Path = attrs.field(repr=False)

    def log(self) -> str:
        """
        What the daemon has written so far (stdout and stderr).
        """
        return readLog(self.logPath)

    def stop(self) -> int:
        """
        Stop the daemon with SIGTERM (SIGKILL after a deadline); return its
        exit status.  Safe to call more than once.
        """
        return stopProcess(self.process)

    def logProblems(self) -> list[str]:
        """
        The problem words that occur in the daemon's log.
        """
        log = self.log()
        return [word for word in LOG_PROBLEMS if word in log]


def proxyCommand(
    listenPort: int,
    backends: Sequence[Backend],
    passivePorts: range,
    extraArgs: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> list[str]:
    """
    The command line that runs the proxy in the foreground.
    """
    command = [*TWISTD, "--pidfile=",
        "-n",
        "ftpproxy",
        "--listen",
        f"tcp:{listenPort}:interface={host}",
    ]
    for backend in backends:
        command += ["--backend", backend.address]
    command += ["--passive-ports", f"{passivePorts[0]}-{passivePorts[-1]}"]
    command += list(extraArgs)
    return command


def _environment() -> dict[str, str]:
    """
    The daemon's environment: the checkout first on the path, so the tests
    exercise the working tree, and unbuffered output, so the log is current.
    """
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def waitUntilListening(
    process: subprocess.Popen,
    host: str,
    port: int,
    logPath: Path,
    timeout: float = START_TIMEOUT,
) -> None:
    """
    Poll until the daemon listens on C{host:port}; raise with its output if
    it exits first or the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while not isListening(host, port):
        if process.poll() is not None:
            raise ProxyStartError(
                f"proxy exited with status {process.returncode}:\n" + readLog(logPath)
            )
        if time.monotonic() > deadline:
            raise ProxyStartError(
                f"proxy not listening on {host}:{port} after {timeout}s:\n"
                + readLog(logPath)
            )
        time.sleep(POLL_INTERVAL)


def startProxy(
    backends: Sequence[Backend],
    workDirectory: Path,
    extraArgs: Sequence[str] = (),
    host: str = "127.0.0.1",
    passivePorts: range | None = None,
    name: str = "proxy",
) -> ProxyProcess:
    """
    Start the proxy daemon in front of C{backends} and return it once its
    control port listens.
    """
    workDirectory.mkdir(parents=True, exist_ok=True)
    port = freePort(host)
    if passivePorts is None:
        passivePorts = freePortRange()
    command = proxyCommand(port, backends, passivePorts, extraArgs, host)
    logPath = workDirectory / f"{name}.log"
    with logPath.open("wb") as logFile:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=logFile,
            stderr=subprocess.STDOUT,
            cwd=workDirectory,
            env=_environment(),
        )
    try:
        waitUntilListening(process, host, port, logPath)
    except BaseException:
        stopProcess(process)
        raise
    return ProxyProcess(
        host=host,
        port=port,
        passivePorts=passivePorts,
        backends=list(backends),
        command=command,
        process=process,
        logPath=logPath,
    )
