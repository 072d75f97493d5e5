"""
Helpers for the reliability suite (tests/test_reliability.py): the figures
it reaches, what the proxy process holds open (from /proc), its metrics,
and FTP clients that check every byte they move.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import socket
import ssl
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families

from .backends import PASSWORD, USER


# -- the figures ----------------------------------------------------------------


@attrs.define
class Figures:
    """
    What the reliability suite did, for its closing summary line: sessions
    run, transfers made, bytes whose SHA-256 was checked, fault cases and
    hostile inputs tried, and what went wrong (nothing, we hope).
    """

    sessions: int = 0
    transfers: int = 0
    bytesVerified: int = 0
    faultCases: int = 0
    hostileInputs: int = 0
    lost: int = 0
    leftOpen: int = 0
    measurements: list[str] = attrs.Factory(list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def measured(self, text: str) -> None:
        with self._lock:
            self.measurements.append(text)

    @property
    def ran(self) -> bool:
        return bool(self.sessions or self.faultCases or self.hostileInputs)

    def summary(self) -> str:
        return (
            f"reliability: {self.sessions} sessions, {self.transfers} transfers, "
            f"{self.bytesVerified} bytes verified by sha256, {self.faultCases} fault cases, "
            f"{self.hostileInputs} hostile inputs; lost {self.lost}, left open {self.leftOpen}"
        )


#: The suite's figures, printed at the end of the run (tests/conftest.py).
FIGURES = Figures()


# -- what the proxy process holds ---------------------------------------------------

_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}


@attrs.frozen
class SocketEntry:
    state: str
    localPort: int
    remote: str


def _tcpTable() -> dict[int, SocketEntry]:
    table: dict[int, SocketEntry] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                    table[inode] = SocketEntry(
                        _TCP_STATES.get(state, state), int(local.rsplit(":", 1)[1], 16), remote
                    )
        except FileNotFoundError:
            continue
    return table


def openFiles(pid: int) -> tuple[int, list[SocketEntry]]:
    """
    How many descriptors process C{pid} has open that are not TCP sockets,
    and its TCP sockets.
    """
    table = _tcpTable()
    others = 0
    sockets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            entry = table.get(int(target[8:-1]))
            if entry is not None:
                sockets.append(entry)
                continue
        others += 1
    return others, sockets


def connections(pid: int) -> list[SocketEntry]:
    """
    The TCP sockets of process C{pid} that are not listening.
    """
    return [s for s in openFiles(pid)[1] if s.state != "LISTEN"]


def settle(pid: int, wanted: Callable[[], bool], timeout: float = 15.0) -> bool:
    """
    Poll until C{wanted()} holds (the proxy lets go of what it closes on
    its own reactor turns), or the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted():
            return True
        time.sleep(0.1)
    return wanted()


# -- the admin endpoint ---------------------------------------------------------------


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    """
    The proxy's /metrics samples by (name, sorted labels).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    """
    The sum of C{name}'s samples whose labels include C{labels}.
    """
    return sum(
        value
        for (sampleName, sampleLabels), value in samples.items()
        if sampleName == name and set(labels.items()) <= set(sampleLabels)
    )


# -- clients ------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckedFTP(ftplib.FTP_TLS):
    """
    ftplib's FTP (or FTPS, with C{context}) with EPSV over IPv4 when asked,
    active mode (PORT) when asked, and data connections that resume the
    control connection's TLS session.
    """

    def __init__(self, mode: str, context: ssl.SSLContext | None, timeout: float = 60.0) -> None:
        super().__init__(context=context or ssl.create_default_context(), timeout=timeout)
        self.mode = mode
        self.tls = context is not None

    def makepasv(self) -> tuple[str, int]:
        if self.mode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def abortTransfer(self) -> str:
        """
        ABOR (urgent, with Telnet IP and DM, on a clear control
        connection); the first reply to it.
        """
        if self.tls:
            return ftplib.FTP_TLS.abort(self)
        return ftplib.FTP.abort(self)

    def noopAfterAbort(self) -> None:
        """
        NOOP, reading past what is left of the aborted transfer's replies
        (a 226 after the 426) up to NOOP's own 200.
        """
        self.putcmd("NOOP")
        while not (reply := self.getmultiline()).startswith("200"):
            assert reply[:1] == "2", reply

    def ntransfercmd(self, cmd: str, rest: Any = None):
        connection, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            try:
                connection = self.context.wrap_socket(
                    connection, server_hostname=self.host, session=self.sock.session
                )
            except BaseException:
                connection.close()
                raise
        return connection, size


def openSession(host: str, port: int, mode: str, context: ssl.SSLContext | None) -> CheckedFTP:
    """
    A logged-in session: plain, or (with C{context}) AUTH TLS and PROT P;
    passive (PASV or EPSV) or active (PORT).
    """
    ftp = CheckedFTP(mode, context)
    try:
        ftp.connect(host, port)
        if context is not None:
            ftp.auth()
            ftp.login(USER, PASSWORD, secure=False)
            ftp.prot_p()
        else:
            ftplib.FTP.login(ftp, USER, PASSWORD)
        ftp.set_pasv(mode != "port")
    except BaseException:
        ftp.close()
        raise
    return ftp


def retrieve(ftp: ftplib.FTP, name: str, rest: int | None = None, chunkDelay: float = 0.0) -> bytes:
    parts: list[bytes] = []

    def take(chunk: bytes) -> None:
        parts.append(chunk)
        if chunkDelay:
            time.sleep(chunkDelay)

    ftp.retrbinary(f"RETR {name}", take, blocksize=16384, rest=rest)
    return b"".join(parts)


class _SlowReader:
    def __init__(self, data: bytes, chunk: int, delay: float) -> None:
        self._data = data
        self._offset = 0
        self._chunk = chunk
        self._delay = delay

    def read(self, size: int = -1) -> bytes:
        if self._offset and self._delay:
            time.sleep(self._delay)
        piece = self._data[self._offset : self._offset + self._chunk]
        self._offset += len(piece)
        return piece


def store(ftp: ftplib.FTP, name: str, data: bytes, verb: str = "STOR", chunkDelay: float = 0.0) -> str:
    return ftp.storbinary(f"{verb} {name}", _SlowReader(data, 16384, chunkDelay), blocksize=16384)


def noopRoundTrips(host: str, port: int, count: int) -> list[float]:
    """
    A logged-in raw control connection sends C{count} NOOPs one at a time;
    the round trip of each, in seconds.
    """
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")

        def reply() -> bytes:
            line = reader.readline()
            while line[3:4] == b"-":
                line = reader.readline()
            return line

        assert reply().startswith(b"220")
        sock.sendall(f"USER {USER}\r\n".encode())
        assert reply().startswith(b"331")
        sock.sendall(f"PASS {PASSWORD}\r\n".encode())
        assert reply().startswith(b"230")
        times = []
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            assert reply().startswith(b"200")
            times.append(time.perf_counter() - started)
        sock.sendall(b"QUIT\r\n")
        reply()
        return times


def describe(times: list[float]) -> str:
    """
    Median, 99th percentile and maximum of round trips, in milliseconds.
    """
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"median {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
        f"max {ordered[-1] * 1000:.2f} ms over {len(ordered)} NOOPs"
    )


def writeFile(path: Path, size: int, seed: int) -> bytes:
    """
    Deterministic pseudo-random content (the same on every backend).
    """
    data = bytearray()
    counter = 0
    while len(data) < size:
        data += hashlib.sha256(b"%d:%d" % (seed, counter)).digest() * 64
        counter += 1
    content = bytes(data[:size])
    path.write_bytes(content)
    return content
