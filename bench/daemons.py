"""
Start the servers under test, wait until they answer, and always stop them.

Each daemon gets its own session (process group) so that a Ctrl-C on the
terminal reaches only the harness, which then stops every group it started
by its id; nothing here looks processes up by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs


class DaemonFailed(Exception):
    """
    A daemon exited or never answered; the message carries its log's tail.
    """


def logTail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@attrs.define
class Daemon:
    """
    One started server process and where its output goes.
    """

    name: str
    process: subprocess.Popen
    log: Path
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def groupPids(self) -> list[int]:
        """
        The daemon and every process it forked (all share its process group).
        """
        return processGroupMembers(self.process.pid)

    def stop(self, grace: float = 5.0) -> None:
        """
        SIGTERM the whole group, then SIGKILL whatever is left after C{grace}.
        Only once: later the group id could name someone else's processes.
        """
        if self.stopped:
            return
        self.stopped = True
        pgid = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            self.process.poll()
            if not processGroupMembers(pgid):
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if self.waitGroupGone(grace):
                break
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def waitGroupGone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.process.poll()  # reap our direct child so it leaves the group
            if not processGroupMembers(self.process.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def processGroupMembers(pgid: int, zombies: bool = False) -> list[int]:
    """
    The live (non-zombie) processes in process group C{pgid}, from /proc;
    with C{zombies}, also those that exited and wait to be reaped.
    """
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and (zombies or state not in ("Z", "X")):
            members.append(int(entry))
    return members


def startDaemon(
    name: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Daemon:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    return Daemon(name=name, process=process, log=log)


def bannerAnswered(host: str, port: int, timeout: float = 2.0) -> bool:
    """
    Whether an FTP server at host:port sends a 220 greeting.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(1024)
                if not chunk:
                    return False
                data += chunk
            ok = data.startswith(b"220")
            sock.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


def waitForBanner(daemon: Daemon, host: str, port: int, timeout: float = 30.0) -> None:
    """
    Poll until the daemon greets with 220; fail early if it exits.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise DaemonFailed(
                f"{daemon.name} exited with {daemon.process.returncode}:\n"
                + logTail(daemon.log)
            )
        if bannerAnswered(host, port):
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise DaemonFailed(
        f"{daemon.name} did not greet on {host}:{port} within {timeout:.0f}s:\n"
        + logTail(daemon.log)
    )


def freePort(host: str = "127.0.0.1") -> int:
    """
    A port the OS says is free on host now (fine for a single-user harness).
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def rangeIsFree(host: str, first: int, count: int) -> bool:
    """
    Whether nothing is bound to any port of [first, first + count) on host.
    """
    for port in range(first, first + count):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def memoryKiB(pids: Sequence[int]) -> tuple[int, int]:
    """
    Summed (RSS, PSS) in KiB of the given processes, from smaps_rollup.
    """
    fields = smapsKiB(pids, ("Rss", "Pss"))
    return fields["Rss"], fields["Pss"]


def smapsKiB(pids: Sequence[int], keys: Sequence[str]) -> dict[str, int]:
    """
    The given fields of smaps_rollup (e.g. C{Pss_Anon}), in KiB, summed
    over the given processes.
    """
    sums = dict.fromkeys(keys, 0)
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in sums:
                sums[key] += int(rest.split()[0])
    return sums


def cpuSeconds(pids: Sequence[int]) -> float:
    """
    CPU time (user + system) used so far by the given processes and the
    children they have waited for (proftpd's session processes), from /proc.
    """
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime are fields 14-17 of stat(5).
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")
