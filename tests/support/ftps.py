"""
Helpers for the FTPS integration tests: the proxy daemon with TLS (from the
command line or a TOML file, with an implicit FTPS listener), FTPS clients
(curl, lftp, ftplib) that verify the development CA, and a fake backend that
records every line the proxy sends it.
"""

from __future__ import annotations

import ftplib
import json
import socket
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from .backends import PASSWORD, USER
from .fakeservers import ThreadedServer
from .clients import ClientResult, PassiveMode, curl, lftp
from .processes import readLog, stopProcess
from .proxy import (
    LOG_PROBLEMS,
    TWISTD,
    _environment,
    freePort,
    freePortRange,
    waitUntilListening,
)

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 30.0


# -- the proxy ----------------------------------------------------------------


@attrs.define(eq=False)
class TLSProxy:
    """
    A running proxy daemon that terminates FTPS.

    @ivar port: its explicit FTPS (and plain FTP) listener.
    @ivar implicitPort: its implicit FTPS listener, if it has one.
    """

    host: str
    port: int
    implicitPort: int | None
    command: list[str]
    process: subprocess.Popen = attrs.field(repr=False)
    logPath: Path = attrs.field(repr=False)

    def log(self) -> str:
        return readLog(self.logPath)

    def stop(self) -> int:
        return stopProcess(self.process)

    def logProblems(self) -> list[str]:
        log = self.log()
        return [word for word in LOG_PROBLEMS if word in log]


def tlsArguments(certificates: Any) -> list[str]:
    """
    C{--tls-cert} and C{--tls-key} for a L{ftpproxy.tls.devcerts.CertificatePaths}.
    """
    return ["--tls-cert", str(certificates.serverCert), "--tls-key", str(certificates.serverKey)]


def _tomlValue(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def tomlText(
    tls: Mapping[str, Any] | None = None,
    backends: Sequence[Mapping[str, Any]] = (),
    **topLevel: Any,
) -> str:
    """
    An ftpproxy TOML file: top-level keys, a C{[tls]} table and one
    C{[[backend]]} table per entry.
    """
    lines = [f"{key} = {_tomlValue(value)}" for key, value in topLevel.items()]
    if tls is not None:
        lines += ["", "[tls]"] + [f"{k} = {_tomlValue(v)}" for k, v in tls.items()]
    for table in backends:
        lines += ["", "[[backend]]"] + [f"{k} = {_tomlValue(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def startTLSProxy(
    workDirectory: Path,
    extraArgs: Sequence[str] = (),
    configText: str | None = None,
    implicit: bool = True,
    name: str = "proxy",
    host: str = HOST,
) -> TLSProxy:
    """
    Run C{twistd -n ftpproxy} with a listener, passive ports and (with
    C{implicit}) an implicit FTPS listener on OS-chosen ports, plus
    C{extraArgs} (backends, certificates, ...) and C{--config} when
    C{configText} is given; return once every listener listens.
    """
    workDirectory.mkdir(parents=True, exist_ok=True)
    port = freePort(host)
    implicitPort = freePort(host) if implicit else None
    passivePorts = freePortRange()
    command = [*TWISTD, "--pidfile=", "-n", "ftpproxy"]
    if configText is not None:
        configPath = workDirectory / f"{name}.toml"
        configPath.write_text(configText)
        command += ["--config", str(configPath)]
    command += [
        "--listen",
        f"tcp:{port}:interface={host}",
        "--passive-ports",
        f"{passivePorts[0]}-{passivePorts[-1]}",
    ]
    if implicitPort is not None:
        command += ["--implicit-tls-listen", f"tcp:{implicitPort}:interface={host}"]
    command += list(extraArgs)
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
        if implicitPort is not None:
            waitUntilListening(process, host, implicitPort, logPath)
    except BaseException:
        stopProcess(process)
        raise
    return TLSProxy(
        host=host,
        port=port,
        implicitPort=implicitPort,
        command=command,
        process=process,
        logPath=logPath,
    )


# -- command-line clients ------------------------------------------------------


def ftpsURL(
    host: str,
    port: int,
    path: str = "",
    implicit: bool = False,
    user: str = USER,
    password: str = PASSWORD,
) -> str:
    """
    An C{ftp://} (explicit) or C{ftps://} (implicit) URL with credentials.
    """
    scheme = "ftps" if implicit else "ftp"
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{scheme}://{credentials}{host}:{port}/{path}"


def curlFTPS(
    url: str,
    *args: str,
    ca: Path,
    mode: PassiveMode = "epsv",
    check: bool = True,
    timeout: float = CLIENT_TIMEOUT,
) -> ClientResult:
    """
    curl verifying C{ca}, TLS required (C{--ssl-reqd}, which curl ignores
    for C{ftps://} URLs since those are TLS from the start).
    """
    return curl(
        "--ssl-reqd", "--cacert", str(ca), *args, url, mode=mode, check=check, timeout=timeout
    )


def curlDataHandshakes(result: ClientResult) -> int:
    """
    How many TLS handshakes curl finished after the control connection's
    first one: its data connections under PROT P.
    """
    return max(0, result.stderr.count("* SSL connection using ") - 1)


def lftpFTPS(
    host: str,
    port: int,
    commands: Sequence[str],
    ca: Path,
    mode: PassiveMode = "pasv",
    implicit: bool = False,
    user: str = USER,
    password: str = PASSWORD,
    check: bool = True,
    timeout: float = CLIENT_TIMEOUT,
) -> ClientResult:
    """
    lftp with TLS forced on control and data (C{ftp:ssl-force},
    C{ftp:ssl-protect-data}), verifying the certificate against C{ca};
    C{implicit} opens an C{ftps://} URL instead of sending AUTH TLS.
    """
    settings = {
        "ftp:ssl-allow": "yes",
        "ftp:ssl-force": "true",
        "ftp:ssl-protect-data": "true",
        "ftp:ssl-protect-list": "true",
        "ssl:ca-file": str(ca),
        "ssl:verify-certificate": "yes",
        "ssl:check-hostname": "yes",
    }
    target = f"ftps://{host}" if implicit else host
    return lftp(
        target,
        port,
        commands,
        mode=mode,
        user=user,
        password=password,
        settings=settings,
        check=check,
        timeout=timeout,
    )


# -- ftplib -------------------------------------------------------------------


@attrs.frozen
class DataConnection:
    """
    What one of an ftplib session's data connections was.
    """

    command: str
    protected: bool
    resumed: bool
    version: str | None


class TLSSession(ftplib.FTP_TLS):
    """
    C{ftplib.FTP_TLS} as it is (each protected data connection makes a full
    handshake), plus EPSV over IPv4 (C{useEpsv}) and a record of the
    commands sent and of every data connection.
    """

    useEpsv: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.commands: list[str] = []
        self.dataConnections: list[DataConnection] = []
        super().__init__(*args, **kwargs)

    def putcmd(self, line: str) -> None:
        self.commands.append(line)
        super().putcmd(line)

    def verbs(self) -> list[str]:
        return [command.split(" ", 1)[0].upper() for command in self.commands]

    def makepasv(self) -> tuple[str, int]:
        if not self.useEpsv:
            return super().makepasv()
        return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())

    def wrapData(self, connection: socket.socket) -> ssl.SSLSocket:
        return self.context.wrap_socket(connection, server_hostname=self.host)

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        # FTP_TLS's own, with the wrapping made overridable.
        connection, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            try:
                connection = self.wrapData(connection)
            except BaseException:
                connection.close()
                raise
        protected = isinstance(connection, ssl.SSLSocket)
        self.dataConnections.append(
            DataConnection(
                command=cmd,
                protected=protected,
                resumed=protected and connection.session_reused,
                version=connection.version() if protected else None,
            )
        )
        return connection, size


class ResumingTLSSession(TLSSession):
    """
    A L{TLSSession} that offers the control connection's TLS session on its
    data connections, as servers requiring session reuse want.
    """

    def wrapData(self, connection: socket.socket) -> ssl.SSLSocket:
        return self.context.wrap_socket(
            connection, server_hostname=self.host, session=self.sock.session
        )


def clientContext(ca: Path) -> ssl.SSLContext:
    """
    A client context that verifies the server against C{ca}.
    """
    return ssl.create_default_context(cafile=str(ca))


def ftpsSession(
    host: str,
    port: int,
    ca: Path,
    mode: PassiveMode = "pasv",
    resuming: bool = False,
    user: str = USER,
    password: str = PASSWORD,
    protect: bool = True,
    timeout: float = CLIENT_TIMEOUT,
) -> TLSSession:
    """
    A logged-in FTPS session (AUTH TLS, then PBSZ 0 and PROT P when
    C{protect}); use it as a context manager so that it is closed.
    """
    cls = ResumingTLSSession if resuming else TLSSession
    ftp = cls(context=clientContext(ca), timeout=timeout)
    ftp.useEpsv = mode == "epsv"
    try:
        ftp.connect(host, port)
        ftp.login(user, password)
        if protect:
            ftp.prot_p()
    except BaseException:
        ftp.close()
        raise
    return ftp


# -- a recording backend ---------------------------------------------------------


class RecordingBackend(ThreadedServer):
    """
    A fake FTP server on C{host} that greets, records every line it gets,
    and answers USER, PASS and QUIT plausibly (anything else: 502).

    @param authReply: what to send to C{AUTH TLS} (default: refuse with
        504); a test of the proxy's backend leg sends a 234 with something
        behind it.
    """

    def __init__(self, host: str, authReply: bytes = b"504 No TLS here.\r\n") -> None:
        self.authReply = authReply
        self._lines: list[bytes] = []
        super().__init__(host)

    def lines(self) -> list[bytes]:
        """
        Every line received so far, over all connections.
        """
        with self._lock:
            return list(self._lines)

    def connectionCount(self) -> int:
        with self._lock:
            return len(self._connections)

    def _answer(self, line: bytes) -> bytes | None:
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"USER":
            return b"331 Password please.\r\n"
        if verb == b"PASS":
            return b"230 Logged in.\r\n"
        if verb == b"AUTH":
            return self.authReply
        if verb == b"QUIT":
            return None
        return b"502 Not implemented.\r\n"

    def serve(self, connection: socket.socket) -> None:
        buffer = b""
        connection.sendall(b"220 recorder ready\r\n")
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                return
            buffer += chunk
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                with self._lock:
                    self._lines.append(line)
                answer = self._answer(line)
                if answer is None:
                    connection.sendall(b"221 Goodbye.\r\n")
                    return
                connection.sendall(answer)
