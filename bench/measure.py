"""
The four measurements: curl transfers, session rate, idle session memory.

Each function measures one system once and returns a number or a dict; a
failure raises L{MeasureFailed} with what was seen, so that one bad round
shows up in the report without stopping the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from daemons import smapsKiB
from peers import Endpoint, TLSFiles

HERE = Path(__file__).resolve().parent
USER = "bench"
PASSWORD = "bench"
# smaps_rollup fields read before and while the idle sessions are open.
MEMORY_FIELDS = ("Rss", "Pss", "Pss_Anon")


class MeasureFailed(Exception):
    """
    One measurement of one system did not complete.
    """


def curl(argv: list[str], timeout: float) -> tuple[float, int]:
    """
    Run curl with C{-w '%{speed} %{size}'} last and return (bytes/s, size).
    """
    try:
        result = subprocess.run(
            ["curl", "-sS", "--max-time", str(int(timeout)), *argv],
            capture_output=True, text=True, timeout=timeout + 10,
        )
    except subprocess.TimeoutExpired:
        raise MeasureFailed(f"curl timed out: {' '.join(argv)}")
    if result.returncode != 0:
        raise MeasureFailed(
            f"curl exit {result.returncode}: {result.stderr.strip()[:300]}"
        )
    speed, size = result.stdout.split()[-2:]
    return float(speed), int(float(size))


def url(endpoint: Endpoint, name: str) -> str:
    return f"ftp://{USER}:{PASSWORD}@{endpoint.hostPort()}/{name}"


def download(endpoint: Endpoint, name: str, size: int,
             tls: TLSFiles | None = None, timeout: float = 300) -> float:
    """
    MB/s of one RETR to /dev/null (explicit FTPS with PROT P if C{tls}).
    """
    argv = ["-o", "/dev/null", "-w", "%{speed_download} %{size_download}"]
    if tls is not None:
        # --ssl-reqd: AUTH TLS, then PBSZ 0 / PROT P (curl's default).
        argv += ["--ssl-reqd", "--cacert", str(tls.cert)]
    speed, got = curl(argv + [url(endpoint, name)], timeout)
    if got != size:
        raise MeasureFailed(f"downloaded {got} bytes, expected {size}")
    return speed / 1e6


def upload(endpoint: Endpoint, source: Path, name: str,
           tls: TLSFiles | None = None, timeout: float = 300) -> float:
    """
    MB/s of one STOR of C{source} (explicit FTPS with PROT P if C{tls}).
    """
    argv = ["-T", str(source), "-w", "%{speed_upload} %{size_upload}"]
    if tls is not None:
        argv += ["--ssl-reqd", "--cacert", str(tls.cert)]
    speed, got = curl(argv + [url(endpoint, name)], timeout)
    expected = source.stat().st_size
    if got != expected:
        raise MeasureFailed(f"uploaded {got} bytes, expected {expected}")
    return speed / 1e6


def loadClient(mode: str, targets: Sequence[Endpoint], extra: list[str]) -> list[str]:
    argv = [sys.executable, str(HERE / "ftpload.py"), mode,
            "--user", USER, "--password", PASSWORD]
    for target in targets:
        argv += ["--target", target.hostPort()]
    return argv + extra


def sessionRate(targets: Sequence[Endpoint], concurrency: int, duration: float) -> dict:
    """
    Sessions/s and latency of C{concurrency} clients doing whole sessions.
    """
    argv = loadClient("rate", targets, [
        "--concurrency", str(concurrency), "--duration", str(duration)])
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=duration + 120)
    except subprocess.TimeoutExpired:
        raise MeasureFailed("load client timed out")
    if result.returncode != 0:
        raise MeasureFailed(f"load client failed: {result.stderr.strip()[-500:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["sessions"] == 0:
        raise MeasureFailed(f"no session completed: {report['error_samples']}")
    return report


def idleMemory(
    targets: Sequence[Endpoint],
    count: int,
    pidsOf: Callable[[], list[int]],
    settle: Callable[[], None],
) -> dict:
    """
    Memory per idle logged-in session: open C{count} sessions, compare the
    summed RSS/PSS of C{pidsOf()} before and while they are open.

    A few sessions are opened and closed first so that one-time costs (lazy
    imports, first allocations) are in the baseline, not in the per-session
    figure.
    """
    argv = loadClient("idle", targets, ["--count", "20", "--concurrency", "20"])
    try:
        warm = subprocess.run(argv, input="\n", capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        raise MeasureFailed("warm-up sessions timed out")
    if warm.returncode != 0 or not warm.stdout.startswith("READY 20 0"):
        raise MeasureFailed(f"warm-up sessions failed: {warm.stdout[:200]} "
                            f"{warm.stderr.strip()[-300:]}")
    settle()
    argv = loadClient("idle", targets, ["--count", str(count), "--concurrency", "100",
                                        "--wait-to-start"])
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "WAITING":
            process.kill()
            raise MeasureFailed(
                f"idle client failed: {process.stderr.read().strip()[-500:]}")
        before = smapsKiB(pidsOf(), MEMORY_FIELDS)
        process.stdin.write("\n")
        process.stdin.flush()
        ready = process.stdout.readline().split()
        if not ready or ready[0] != "READY":
            process.kill()
            raise MeasureFailed(
                f"idle client failed: {process.stderr.read().strip()[-500:]}")
        opened, failed = int(ready[1]), int(ready[2])
        # Let the servers finish whatever follows the 230 (none should).
        time.sleep(0.5)
        pids = pidsOf()
        after = smapsKiB(pids, MEMORY_FIELDS)
        process.stdin.write("\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    report = json.loads(out.strip().splitlines()[-1])
    if opened == 0:
        raise MeasureFailed(f"no idle session opened: {report['error_samples']}")
    settled = time.monotonic()
    settle()
    return {
        "sessions": opened,
        "errors": failed,
        "error_samples": report["error_samples"],
        "processes": len(pids),
        "rss_kib": (after["Rss"] - before["Rss"]) / opened,
        "pss_kib": (after["Pss"] - before["Pss"]) / opened,
        # The anonymous part (heap, stacks): what the sessions themselves
        # cost, without file-backed pages that other processes share.
        "pss_anon_kib": (after["Pss_Anon"] - before["Pss_Anon"]) / opened,
        "pss_total_kib": after["Pss"],
        "open_seconds": report["open_seconds"],
        "drain_seconds": time.monotonic() - settled,
    }
