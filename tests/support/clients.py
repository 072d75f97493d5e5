"""
Real FTP clients for the integration tests: curl, lftp and Python's ftplib.

Each helper runs the client with a timeout and keeps its protocol trace, so
a test can check not only the outcome but also which commands were used
(e.g. that a transfer really went through EPSV and not PASV).
"""

from __future__ import annotations

import ftplib
import io
import os
import shlex
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs

from .backends import PASSWORD, USER

CLIENT_TIMEOUT = 60.0

PassiveMode = Literal["pasv", "epsv"]


class ClientError(Exception):
    """
    A client exited with an error; the message holds its command and output.
    """


@attrs.frozen
class ClientResult:
    """
    What a command-line client did.

    @ivar commands: the FTP commands it sent, in order, as its trace shows
        them (e.g. C{"EPSV"}, C{"RETR big.bin"}).
    @ivar replies: the reply lines it received, in order.
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str
    commands: tuple[str, ...]
    replies: tuple[str, ...]

    def verbs(self) -> list[str]:
        """
        The upper-cased command verbs sent, without arguments.
        """
        return [command.split(" ", 1)[0].upper() for command in self.commands]


def _run(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired as e:
        raise ClientError(
            f"{shlex.join(argv)} timed out after {timeout}s;\n"
            f"stderr:\n{(e.stderr or b'').decode(errors='replace')}"
        ) from None


def _check(result: ClientResult, check: bool) -> ClientResult:
    if check and result.returncode != 0:
        raise ClientError(
            f"{shlex.join(result.argv)} exited with {result.returncode};\n"
            f"stderr:\n{result.stderr}"
        )
    return result


# curl


def ftpURL(
    host: str,
    port: int,
    path: str = "",
    user: str | None = USER,
    password: str = PASSWORD,
) -> str:
    """
    An C{ftp://} URL; C{path} is relative to the login directory, a trailing
    C{/} makes curl list a directory.
    """
    credentials = "" if user is None else f"{user}:{password}@"
    return f"ftp://{credentials}{host}:{port}/{path}"


def curl(
    *args: str,
    mode: PassiveMode = "epsv",
    timeout: float = CLIENT_TIMEOUT,
    check: bool = True,
) -> ClientResult:
    """
    Run curl with C{args} in passive mode.

    @param mode: C{"pasv"} disables EPSV; C{"epsv"} is curl's default (EPSV
        first, PASV only as a fallback; check C{verbs()} to be sure).
    """
    argv = ["curl", "-sS", "-v", "--max-time", str(int(timeout)), "--ftp-pasv"]
    if mode == "pasv":
        argv.append("--disable-epsv")
    argv += args
    completed = _run(argv, timeout + 5)
    stderr = completed.stderr.decode(errors="replace")
    lines = stderr.splitlines()
    return _check(
        ClientResult(
            argv=tuple(argv),
            returncode=completed.returncode,
            stdout=completed.stdout,
            stderr=stderr,
            commands=tuple(line[2:] for line in lines if line.startswith("> ")),
            replies=tuple(line[2:] for line in lines if line.startswith("< ")),
        ),
        check,
    )


# lftp


def lftp(
    host: str,
    port: int,
    commands: Sequence[str],
    mode: PassiveMode = "pasv",
    user: str = USER,
    password: str = PASSWORD,
    settings: Mapping[str, str] | None = None,
    timeout: float = CLIENT_TIMEOUT,
    check: bool = True,
) -> ClientResult:
    """
    Run lftp non-interactively: open one session, run C{commands} in it.

    TLS is off (C{ftp:ssl-allow no}) unless C{settings} turn it on, since
    the plain tests must not depend on certificates.
    """
    allSettings = {
        "net:max-retries": "1",
        "net:timeout": "10",
        "net:reconnect-interval-base": "1",
        "ftp:ssl-allow": "no",
        "ftp:passive-mode": "yes",
        "ftp:prefer-epsv": "yes" if mode == "epsv" else "no",
        "xfer:clobber": "on",
        "cmd:fail-exit": "yes",
    }
    allSettings.update(settings or {})
    script = [f"set {name} {shlex.quote(value)}" for name, value in allSettings.items()]
    script += [
        "debug 5",
        f"open -u {shlex.quote(user)},{shlex.quote(password)} -p {port} {host}",
    ]
    script += list(commands)
    argv = ["lftp", "-c", "; ".join(script)]
    with tempfile.TemporaryDirectory(prefix="lftp-home-") as home:
        # A private HOME: no user rc files, no history written elsewhere.
        env = dict(os.environ, HOME=home)
        completed = _run(argv, timeout, env)
    stderr = completed.stderr.decode(errors="replace")
    lines = [line.strip() for line in stderr.splitlines()]
    return _check(
        ClientResult(
            argv=tuple(argv),
            returncode=completed.returncode,
            stdout=completed.stdout,
            stderr=stderr,
            commands=tuple(
                line[5:] for line in lines if line.startswith("---> ")
            ),
            replies=tuple(line[5:] for line in lines if line.startswith("<--- ")),
        ),
        check,
    )


# ftplib


class EpsvFTP(ftplib.FTP):
    """
    An C{ftplib.FTP} that can use EPSV over IPv4 too (ftplib itself only
    uses EPSV for IPv6), switched per transfer with C{useEpsv}.
    """

    useEpsv: bool = True

    def __init__(self, *args, **kwargs) -> None:
        self.commands: list[str] = []
        super().__init__(*args, **kwargs)

    def putcmd(self, line: str) -> None:
        self.commands.append(line)
        super().putcmd(line)

    def verbs(self) -> list[str]:
        """
        The upper-cased command verbs sent so far, without arguments.
        """
        return [command.split(" ", 1)[0].upper() for command in self.commands]

    def makepasv(self) -> tuple[str, int]:
        if not self.useEpsv:
            return super().makepasv()
        return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())


def ftpSession(
    host: str,
    port: int,
    mode: PassiveMode = "pasv",
    user: str = USER,
    password: str = PASSWORD,
    timeout: float = CLIENT_TIMEOUT,
) -> EpsvFTP:
    """
    A logged-in ftplib session in passive mode (PASV or EPSV); use it as a
    context manager so that it is closed.
    """
    ftp = EpsvFTP(timeout=timeout)
    ftp.useEpsv = mode == "epsv"
    try:
        ftp.connect(host, port)
        ftp.login(user, password)
    except BaseException:
        ftp.close()
        raise
    return ftp


def retrieveBytes(ftp: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    """
    Download C{name} in binary mode and return its content.
    """
    chunks: list[bytes] = []
    ftp.retrbinary(f"RETR {name}", chunks.append, rest=rest)
    return b"".join(chunks)


def storeBytes(ftp: ftplib.FTP, name: str, data: bytes, command: str = "STOR") -> str:
    """
    Upload C{data} as C{name} in binary mode; return the final reply.
    """
    return ftp.storbinary(f"{command} {name}", io.BytesIO(data))


def connectFrom(
    sourceHost: str, host: str, port: int, timeout: float = 10.0
) -> socket.socket:
    """
    A TCP connection to C{host:port} from the local address C{sourceHost};
    used to play a data-connection thief on another loopback address.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.bind((sourceHost, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s
