"""
Peers for protocol-completeness tests on real sockets: a raw FTP control
connection that can send anything, listeners that record who connects (to
prove that a bounce attempt made no connection), an address that never
accepts (to make a backend connect time out), ftplib clients for FTPS that
resume the control connection's TLS session, and backends and listeners
beyond what L{tests.support.backends} and L{tests.support.proxy} offer
(IPv6 hosts, fast failed logins).
"""

from __future__ import annotations

import ftplib
import os
import random
import re
import select
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import attrs

from .backends import Backend, launchBackend

QUICK_SERVER_SCRIPT = Path(__file__).with_name("quickftpserver.py")
START_TIMEOUT = 20.0
POLL_INTERVAL = 0.05

CRLF = b"\r\n"
_REPLY_LINE = re.compile(rb"^(\d{3})([ -])")
_EPSV_PORT = re.compile(r"\(\|\|\|(\d+)\|\)")


def ipv6Loopback() -> bool:
    """
    Whether this machine can listen on C{::1}.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            s.listen(1)
    except OSError:
        return False
    return True


def hostPort(host: str, port: int) -> str:
    """
    C{HOST:PORT}, with IPv6 hosts in brackets, as C{--backend} takes it.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def freePort(host: str) -> int:
    """
    A TCP port on C{host} (IPv4 or IPv6) that the OS has just handed out.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _procAddress(host: str, port: int) -> str:
    """
    C{host:port} as C{/proc/net/tcp} or C{/proc/net/tcp6} writes a local
    address: each 32-bit word of the address in host byte order.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    packed = socket.inet_pton(family, host)
    words = (
        int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4)
    )
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def isListening(host: str, port: int) -> bool:
    """
    Whether something listens on C{host:port}, found in C{/proc} without
    connecting (a connection would open a session in the proxy).
    """
    table = "/proc/net/tcp6" if ":" in host else "/proc/net/tcp"
    wanted = _procAddress(host, port)
    with open(table) as lines:
        next(lines)
        for line in lines:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
    return False


def waitUntilListening(
    process: subprocess.Popen, host: str, port: int, timeout: float = START_TIMEOUT
) -> None:
    """
    Poll until C{process} listens on C{host:port}.
    """
    deadline = time.monotonic() + timeout
    while not isListening(host, port):
        if process.poll() is not None:
            raise RuntimeError(f"process exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {hostPort(host, port)} after {timeout}s")
        time.sleep(POLL_INTERVAL)


@attrs.frozen
class BackendAddress:
    """
    What the proxy fixtures need of a backend: its C{--backend} address.
    """

    address: str


def startQuickBackend(
    name: str,
    host: str,
    root: Path,
    logDirectory: Path,
    passiveTimeout: float | None = None,
) -> Backend:
    """
    Start a pyftpdlib backend that answers failed logins at once, serving
    C{root} as it is, on C{host} (IPv4 or IPv6) and an OS-chosen port.

    @param passiveTimeout: how long its passive ports wait for a connection
        before it sends C{421 Passive data channel timed out.} (default 30).
    """
    environment = dict(os.environ)
    if passiveTimeout is not None:
        environment["QUICK_FTP_PASSIVE_TIMEOUT"] = str(passiveTimeout)
    logDirectory.mkdir(parents=True, exist_ok=True)
    logPath = logDirectory / f"backend-{name}.log"
    command = [
        sys.executable,
        str(QUICK_SERVER_SCRIPT),
        "--name",
        name,
        "--host",
        host,
        "--root",
        str(root),
    ]
    return launchBackend(command, name, host, root, logDirectory, logPath, env=environment)


# -- listeners ---------------------------------------------------------------


class RecordingListener:
    """
    A listening socket that records who connected to it, without ever
    sending anything: the target of a bounce attempt.
    """

    def __init__(self, host: str, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(16)
        except BaseException:
            self.socket.close()
            raise
        self.host = host
        self.port: int = self.socket.getsockname()[1]
        self.peers: list[tuple] = []

    def accepted(self, timeout: float = 0.0) -> list[tuple]:
        """
        The peers that have connected so far, waiting up to C{timeout}
        seconds for a first one; each connection is closed at once.
        """
        wait = timeout
        while select.select([self.socket], [], [], wait)[0]:
            connection, peer = self.socket.accept()
            connection.close()
            self.peers.append(peer)
            wait = 0
        return list(self.peers)

    def acceptOne(self, timeout: float = 10.0) -> socket.socket:
        """
        Accept the next connection and hand it over (for active-mode data).
        """
        self.socket.settimeout(timeout)
        connection, peer = self.socket.accept()
        self.peers.append(peer)
        connection.settimeout(timeout)
        return connection

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> RecordingListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def lowPortListener(host: str = "127.0.0.1") -> RecordingListener:
    """
    A recording listener on a port below 1024 (we are root): port 22 when it
    is free, else another free one.
    """
    candidates = [22] + random.SystemRandom().sample(range(600, 1024), 100)
    for port in candidates:
        try:
            return RecordingListener(host, port)
        except OSError:
            continue
    raise RuntimeError(f"no free port below 1024 on {host}")


class Blackhole:
    """
    An address that accepts no connection and refuses none: a listening
    socket with a backlog of zero that is already full, so the kernel drops
    further SYNs and a connect to it hangs until its own timeout.
    """

    def __init__(self, host: str) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> str:
        return hostPort(self.host, self.port)

    def _connects(self, timeout: float) -> bool:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setblocking(False)
        self._fillers.append(probe)
        try:
            probe.connect((self.host, self.port))
        except BlockingIOError:
            pass
        return bool(select.select([], [probe], [], timeout)[1])

    def _fill(self) -> None:
        # Connections complete while the accept queue has room; once one
        # stays pending, the queue is full and the SYNs are being dropped.
        for _ in range(8):
            if not self._connects(0.5):
                return
        raise RuntimeError("the backlog never filled up")

    def close(self) -> None:
        for s in self._fillers:
            s.close()
        self.listener.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- a raw control connection ---------------------------------------------


class ConnectionClosed(Exception):
    """
    The server closed the control connection.
    """


class RawControl:
    """
    An FTP control connection that sends exactly the bytes it is given and
    reads replies with deadlines, so a test can tell a reply from a hang or
    a close.
    """

    def __init__(
        self,
        host: str,
        port: int,
        source: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        sourceAddress = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout, sourceAddress)
        self.timeout = timeout
        self.host = host
        self._buffer = b""
        self.eof = False

    # reading

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete reply before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no complete reply before the deadline") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise ConnectionClosed(f"closed; unparsed rest: {self._buffer!r}")
        self._buffer += chunk

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            self._fill(deadline)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self, timeout: float | None = None) -> str:
        """
        The next whole reply (multi-line ones joined with newlines).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        first = self._line(deadline)
        match = _REPLY_LINE.match(first)
        if match is None:
            raise AssertionError(f"not an FTP reply line: {first!r}")
        lines = [first]
        if match.group(2) == b"-":
            end = match.group(1) + b" "
            while not lines[-1].startswith(end):
                lines.append(self._line(deadline))
        return b"\n".join(lines).decode("latin-1")

    def finalReply(self, timeout: float | None = None) -> tuple[list[str], str]:
        """
        Skip preliminary (1xx) replies; return them and the final reply.
        """
        preliminary = []
        while (reply := self.reply(timeout)).startswith("1"):
            preliminary.append(reply)
        return preliminary, reply

    def readToEnd(self, timeout: float | None = None) -> bytes:
        """
        What remains until the server closes the connection.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            pass
        rest, self._buffer = self._buffer, b""
        return rest

    def quiet(self, seconds: float) -> bool:
        """
        Whether nothing at all arrives within C{seconds}.
        """
        if self._buffer:
            return False
        return not select.select([self.sock], [], [], seconds)[0]

    # writing

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str | bytes, timeout: float | None = None) -> str:
        """
        Send one command line and return the reply to it.
        """
        if isinstance(line, str):
            line = line.encode("latin-1")
        self.send(line + CRLF)
        return self.reply(timeout)

    def login(self, user: str, password: str) -> None:
        assert self.reply().startswith("220")
        assert self.command(f"USER {user}").startswith("331")
        assert self.command(f"PASS {password}").startswith("230")

    def epsvPort(self, command: str = "EPSV") -> int:
        reply = self.command(command)
        assert reply.startswith("229"), reply
        match = _EPSV_PORT.search(reply)
        assert match is not None, reply
        return int(match.group(1))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def readAll(connection: socket.socket, timeout: float = 30.0) -> bytes:
    """
    Everything a data connection carries until it is closed (a reset counts
    as closed).
    """
    connection.settimeout(timeout)
    chunks = []
    try:
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


# -- ftplib for FTPS ------------------------------------------------------


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """
    An FTP_TLS whose protected data connections resume the control
    connection's TLS session, as vsftpd and C{--require-session-reuse}
    demand; plain ftplib starts a new session on each.

    @ivar resumed: for each protected data connection, whether it resumed.
    """

    def __init__(self, *args, **kwargs) -> None:
        self.commands: list[str] = []
        self.resumed: list[bool] = []
        super().__init__(*args, **kwargs)

    def putcmd(self, line: str) -> None:
        self.commands.append(line)
        super().putcmd(line)

    def verbs(self) -> list[str]:
        return [command.split(" ", 1)[0].upper() for command in self.commands]

    def ntransfercmd(self, cmd, rest=None):
        connection, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            connection = self.context.wrap_socket(
                connection, server_hostname=self.host, session=self.sock.session
            )
            self.resumed.append(connection.session_reused)
        return connection, size


class ImplicitFTP_TLS(ReusingFTP_TLS):
    """
    Implicit FTPS: TLS from the first byte, data protected without PBSZ or
    PROT.
    """

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        if host:
            self.host = host
        if port:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        sock = socket.create_connection(
            (self.host, self.port), self.timeout, source_address=self.source_address
        )
        self.af = sock.family
        self.sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self._prot_p = True
        self.welcome = self.getresp()
        return self.welcome


def tlsContext(caFile: Path) -> ssl.SSLContext:
    """
    A client context that trusts only the development CA.
    """
    return ssl.create_default_context(cafile=str(caFile))
