"""
Real FTP backends for the integration tests: pyftpdlib servers, each in its
own process, bound to its own loopback address with its own root directory.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from pathlib import Path

import attrs

from .files import MiB, sha256File, writeRandomFile
from .processes import readLog, stopProcess

SERVER_SCRIPT = Path(__file__).with_name("ftpserver.py")
START_TIMEOUT = 20.0

USER = "user"
PASSWORD = "secret"

WHOAMI = "whoami.txt"
BIG = "big.bin"
NOTES = "notes.txt"
BIG_SIZE = 8 * MiB


class BackendStartError(Exception):
    """
    A backend process did not report its port in time.
    """


@attrs.define(eq=False)
class Backend:
    """
    A running pyftpdlib backend.

    @ivar name: what C{whoami.txt} in its root says.
    @ivar root: the directory it serves; tests inspect it directly.
    """

    name: str
    host: str
    port: int
    root: Path
    process: subprocess.Popen = attrs.field(repr=False)
    logPath: Path = attrs.field(repr=False)

    @property
    def address(self) -> str:
        """
        C{host:port}, as the proxy's C{--backend} option takes it.
        """
        return f"{self.host}:{self.port}"

    def path(self, name: str) -> Path:
        """
        The on-disk path of C{name} in this backend's root.
        """
        return self.root / name

    def sha256(self, name: str) -> str:
        """
        The SHA-256 of a file in this backend's root.
        """
        return sha256File(self.path(name))

    def log(self) -> str:
        """
        What the server has logged so far.
        """
        return readLog(self.logPath)

    def kill(self) -> None:
        """
        Kill the server abruptly (SIGKILL) and wait until it is gone, to
        simulate a crashed backend.
        """
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(START_TIMEOUT)

    def stop(self) -> None:
        """
        Stop the server; safe to call more than once.
        """
        stopProcess(self.process)


def populateRoot(root: Path, name: str) -> None:
    """
    Put the files every backend serves into C{root}: C{whoami.txt} naming the
    backend, a random C{big.bin} and a small text file.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / WHOAMI).write_text(f"{name}\n")
    writeRandomFile(root / BIG, BIG_SIZE)
    (root / NOTES).write_text(f"Notes of {name}.\nSecond line.\n")


def _readPortLine(process: subprocess.Popen, logPath: Path, timeout: float) -> int:
    """
    Wait until the server prints C{PORT <n>}, failing early if it exits.
    """
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendStartError(
                    f"backend did not report its port within {timeout}s:\n"
                    + readLog(logPath)
                )
            if not selector.select(remaining):
                continue
            chunk = process.stdout.read1(256)
            if not chunk:
                process.wait(START_TIMEOUT)
                raise BackendStartError(
                    f"backend exited with status {process.returncode}:\n"
                    + readLog(logPath)
                )
            buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode("ascii")
    keyword, port = line.split()
    if keyword != "PORT":
        raise BackendStartError(f"unexpected line from backend: {line!r}")
    return int(port)


def startBackend(
    name: str,
    host: str,
    root: Path,
    logDirectory: Path,
    passivePorts: range | None = None,
    populate: bool = True,
) -> Backend:
    """
    Start a pyftpdlib backend serving C{root} on C{host} (an OS-chosen port)
    and return it once it listens.

    @param passivePorts: the backend's passive ports; by default the OS
        chooses each one.
    """
    if populate:
        populateRoot(root, name)
    logDirectory.mkdir(parents=True, exist_ok=True)
    logPath = logDirectory / f"backend-{name}.log"
    command = [
        sys.executable,
        str(SERVER_SCRIPT),
        "--name",
        name,
        "--host",
        host,
        "--root",
        str(root),
    ]
    if passivePorts is not None:
        command += ["--passive-ports", f"{passivePorts[0]}-{passivePorts[-1]}"]
    return launchBackend(command, name, host, root, logDirectory, logPath)


def launchBackend(
    command: list[str],
    name: str,
    host: str,
    root: Path,
    logDirectory: Path,
    logPath: Path,
    env: dict[str, str] | None = None,
    appendLog: bool = False,
) -> Backend:
    """
    Run a backend server script (one that prints its port once it listens)
    and return it as a L{Backend}; stop it again if it does not start.
    """
    with logPath.open("ab" if appendLog else "wb") as logFile:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=logFile,
            cwd=logDirectory,
            env=env,
        )
    try:
        port = _readPortLine(process, logPath, START_TIMEOUT)
    except BaseException:
        stopProcess(process)
        raise
    return Backend(name=name, host=host, port=port, root=root, process=process, logPath=logPath)
