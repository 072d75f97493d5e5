"""
Helpers for the load-balancing integration tests: backends that let any
user in and can be killed and restarted on their port, raw TCP "backends"
that record what the proxy sends, the proxy daemon started from a TOML
file (so that SIGHUP can reload it), its admin endpoint, and clients that
say which backend served them.
"""

from __future__ import annotations

import ftplib
import hashlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .backends import PASSWORD, WHOAMI, Backend, launchBackend
from .fakeservers import ThreadedServer
from .files import writeRandomFile
from .processes import stopProcess
from .proxy import (
    LOG_PROBLEMS,
    TWISTD,
    ProxyProcess,
    _environment,
    freePort,
    freePortRange,
    waitUntilListening,
)

ANY_USER_SERVER = Path(__file__).with_name("anyuserserver.py")
START_TIMEOUT = 20.0
POLL = 0.05
CLIENT_TIMEOUT = 20.0
ADMIN_HOST = "127.0.0.1"


# -- waiting ------------------------------------------------------------------


def waitFor(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = POLL
) -> float:
    """
    Poll C{predicate} until it returns something true; return the seconds
    that took, or fail naming C{what} after C{timeout} seconds.
    """
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


# -- backends -----------------------------------------------------------------


def startAnyUserBackend(
    name: str,
    host: str,
    root: Path,
    logDirectory: Path,
    port: int = 0,
    files: Mapping[str, bytes | int] | None = None,
) -> Backend:
    """
    Start a pyftpdlib backend that lets in any user with the test password,
    serving C{root} (which gets C{whoami.txt} naming the backend, and
    C{files}: name to content, or to a size for random content).

    @param port: 0 for an OS-chosen port, or the port of a killed backend
        to restart it where it was (the root is then left as it is).
    """
    root.mkdir(parents=True, exist_ok=True)
    if port == 0:
        (root / WHOAMI).write_text(f"{name}\n")
        for fileName, content in (files or {}).items():
            if isinstance(content, int):
                writeRandomFile(root / fileName, content)
            else:
                (root / fileName).write_bytes(content)
    logDirectory.mkdir(parents=True, exist_ok=True)
    logPath = logDirectory / f"backend-{name}.log"
    command = [
        sys.executable,
        str(ANY_USER_SERVER),
        "--name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--root",
        str(root),
    ]
    return launchBackend(command, name, host, root, logDirectory, logPath, appendLog=True)


def restartBackend(backend: Backend) -> None:
    """
    Start a killed C{backend} again on its own address and port, in place.
    """
    assert backend.process.poll() is not None, f"{backend.name} is still running"
    stopProcess(backend.process)
    again = startAnyUserBackend(
        backend.name, backend.host, backend.root, backend.logPath.parent, port=backend.port
    )
    backend.process = again.process


class RawBackend(ThreadedServer):
    """
    A TCP server on C{host} (OS-chosen port) run by a thread, that records
    every byte each connection sends.

    With a C{banner}, it reads the connection's first bytes (a PROXY
    header, when the proxy sends one), then greets with the banner and
    answers QUIT with 221; without one it never says anything, like a
    hung FTP server.
    """

    def __init__(self, host: str, banner: bytes | None = None) -> None:
        self.banner = banner
        self._received: list[bytearray] = []
        self._firstChunks: list[bytes] = []
        super().__init__(host)

    def connections(self) -> list[bytes]:
        """
        What each connection accepted so far has sent, in order of arrival.
        """
        with self._lock:
            return [bytes(r) for r in self._received]

    def firstChunks(self) -> list[bytes]:
        """
        The first bytes read from each connection, before the banner.
        """
        with self._lock:
            return list(self._firstChunks)

    def accepted(self, connection: socket.socket) -> tuple[bytearray]:
        received = bytearray()
        self._received.append(received)
        return (received,)

    def serve(self, connection: socket.socket, received: bytearray) -> None:
        if self.banner is not None:
            first = connection.recv(4096)
            with self._lock:
                received += first
                self._firstChunks.append(first)
            connection.sendall(self.banner)
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                return
            with self._lock:
                received += chunk
            if self.banner is not None and b"QUIT\r\n" in bytes(received):
                connection.sendall(b"221 Goodbye.\r\n")
                return


# -- the configuration file ---------------------------------------------------


def _tomlValue(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _tomlTable(values: Mapping[str, Any]) -> list[str]:
    return [f"{key} = {_tomlValue(value)}" for key, value in values.items()]


def backendTable(backend: Backend | RawBackend, name: str | None = None, **keys: Any) -> dict:
    """
    A C{[[backend]]} table for a running backend.
    """
    return {"address": backend.address, "name": name or backend.name, **keys}


def tomlConfig(
    backends: Sequence[Mapping[str, Any]],
    health: Mapping[str, Any] | None = None,
    userHashUsers: Mapping[str, str] | None = None,
    **topLevel: Any,
) -> str:
    """
    The text of an ftpproxy TOML file: top-level keys, C{[health]},
    C{[user_hash.users]} and one C{[[backend]]} per entry.
    """
    lines = _tomlTable(topLevel)
    if health is not None:
        lines += ["", "[health]", *_tomlTable(health)]
    if userHashUsers is not None:
        lines += ["", "[user_hash.users]", *_tomlTable(userHashUsers)]
    for table in backends:
        lines += ["", "[[backend]]", *_tomlTable(table)]
    return "\n".join(lines) + "\n"


# -- the proxy ----------------------------------------------------------------


@attrs.define(eq=False)
class ConfiguredProxy:
    """
    A proxy daemon started with C{--config}, and its admin endpoint.
    """

    process: ProxyProcess
    configPath: Path
    adminPort: int

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        return self.process.port

    def log(self) -> str:
        return self.process.log()

    def signal(self, number: int) -> None:
        self.process.process.send_signal(number)

    def reload(self, text: str | None = None) -> None:
        """
        Write C{text} (when given) over the configuration file, then SIGHUP.
        """
        if text is not None:
            self.configPath.write_text(text)
        self.signal(signal.SIGHUP)

    def waitForLog(self, text: str, count: int = 1, timeout: float = 10.0) -> float:
        """
        Wait until C{text} occurs C{count} times in the daemon's log.
        """
        return waitFor(
            lambda: self.log().count(text) >= count,
            timeout,
            f"{text!r} x{count} in the log:\n{self.log()}",
        )

    # -- the admin endpoint ----------------------------------------------

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(ADMIN_HOST, self.adminPort, timeout=10)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def backends(self) -> dict[str, dict]:
        """
        GET /backends, by backend name.
        """
        status, body = self.request("GET", "/backends")
        assert status == 200, body
        return {entry["name"]: entry for entry in json.loads(body)}

    def states(self) -> dict[str, str]:
        return {name: entry["state"] for name, entry in self.backends().items()}

    def post(self, path: str) -> dict:
        status, body = self.request("POST", path)
        assert status == 200, body
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """
        GET /metrics, parsed: (family, labels) to value.
        """
        status, body = self.request("GET", "/metrics")
        assert status == 200, body
        return parseMetrics(body.decode("utf-8"))

    def activeSessions(self) -> int:
        return sum(entry["active_sessions"] for entry in self.backends().values())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parseMetrics(text: str) -> dict[tuple[str, frozenset], float]:
    """
    Prometheus text format samples as (name, frozenset of label pairs) to
    value.
    """
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def sample(samples: Mapping[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """
    One sample's value; 0 when the series is absent.
    """
    return samples.get((name, frozenset(labels.items())), 0.0)


def startConfiguredProxy(
    configText: str,
    workDirectory: Path,
    extraArgs: Sequence[str] = (),
    name: str = "proxy",
    host: str = "127.0.0.1",
    listenPrefix: str = "",
) -> ConfiguredProxy:
    """
    Run C{twistd -n ftpproxy --config FILE} with the listener, passive
    ports and admin endpoint on the command line (OS-chosen ports), and
    return once the control and admin ports listen.

    @param listenPrefix: e.g. C{"haproxy:"} for a PROXY-protocol listener.
    """
    workDirectory.mkdir(parents=True, exist_ok=True)
    configPath = workDirectory / f"{name}.toml"
    configPath.write_text(configText)
    port = freePort(host)
    adminPort = freePort(ADMIN_HOST)
    passivePorts = freePortRange()
    command = [
        *TWISTD,
        "--pidfile=",
        "-n",
        "ftpproxy",
        "--config",
        str(configPath),
        "--listen",
        f"{listenPrefix}tcp:{port}:interface={host}",
        "--passive-ports",
        f"{passivePorts[0]}-{passivePorts[-1]}",
        "--admin",
        f"tcp:{adminPort}:interface={ADMIN_HOST}",
        *extraArgs,
    ]
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
        waitUntilListening(process, ADMIN_HOST, adminPort, logPath)
    except BaseException:
        stopProcess(process)
        raise
    return ConfiguredProxy(
        process=ProxyProcess(
            host=host,
            port=port,
            passivePorts=passivePorts,
            backends=[],
            command=command,
            process=process,
            logPath=logPath,
        ),
        configPath=configPath,
        adminPort=adminPort,
    )


# -- clients ------------------------------------------------------------------


def whoami(
    host: str,
    port: int,
    user: str = "user",
    sourceHost: str | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> str:
    """
    One whole session: log in as C{user} (from C{sourceHost} when given,
    for control and data connections alike), read C{whoami.txt}, quit;
    return the name of the backend that served it.
    """
    source = (sourceHost, 0) if sourceHost else None
    with ftplib.FTP(timeout=timeout, source_address=source) as ftp:
        ftp.connect(host, port)
        ftp.login(user, PASSWORD)
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR {WHOAMI}", chunks.append)
        ftp.quit()
    return b"".join(chunks).decode().strip()


def heldSession(host: str, port: int, user: str = "user") -> tuple[ftplib.FTP, str]:
    """
    A logged-in session left open, and the backend it is on (from the 230
    reply of the any-user backends).
    """
    ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
    try:
        ftp.connect(host, port)
        reply = ftp.login(user, PASSWORD)
    except BaseException:
        ftp.close()
        raise
    match = re.search(r"Login successful on (\S+)\.", reply)
    assert match, reply
    return ftp, match.group(1)


class SlowDownload:
    """
    A download read slowly by a thread, so that a transfer is in flight
    while the test acts: a small receive buffer on the data socket keeps
    the kernel from soaking the file up, and the reader paces itself at
    C{rate} bytes a second, so that the proxy has to hold the backend back.

    (curl's C{--limit-rate} does not slow FTP downloads in curl 7.88.)
    """

    CHUNK = 16 * 1024

    def __init__(self, host: str, port: int, name: str, rate: int, user: str = "user") -> None:
        self.host, self.port, self.name, self.rate, self.user = host, port, name, rate, user
        self.received = 0
        self.reply: str | None = None
        self.error: BaseException | None = None
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with ftplib.FTP(timeout=60) as ftp:
                ftp.connect(self.host, self.port)
                ftp.login(self.user, PASSWORD)
                ftp.voidcmd("TYPE I")
                host, port = ftp.makepasv()
                data = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with data:
                    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.CHUNK)
                    data.settimeout(60)
                    data.connect((host, port))
                    preliminary = ftp.sendcmd(f"RETR {self.name}")
                    if not preliminary.startswith(("125", "150")):
                        raise ftplib.error_reply(preliminary)
                    started = time.monotonic()
                    while chunk := data.recv(self.CHUNK):
                        self._digest.update(chunk)
                        self.received += len(chunk)
                        ahead = self.received / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                self.reply = ftp.voidresp()
                ftp.quit()
        except BaseException as e:
            self.error = e

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def waitForBytes(self, count: int = 1, timeout: float = 20.0) -> None:
        """
        Wait until C{count} bytes have arrived: the transfer is flowing.
        """

        def arrived() -> bool:
            assert self.running, f"the download ended early: {self.error!r}"
            return self.received >= count

        waitFor(arrived, timeout, f"{count} bytes of {self.name}")

    def finish(self, timeout: float = 60.0) -> tuple[str, int, str]:
        """
        Wait for the download to end; return the final reply, the number
        of bytes and their SHA-256, or raise what went wrong.
        """
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name} still downloading after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.reply, self.received, self._digest.hexdigest()

    def stop(self) -> None:
        self._thread.join(60)


def logProblems(log: str) -> list[str]:
    return [word for word in LOG_PROBLEMS if word in log]
