"""
Start and stop helper processes (backends, the proxy) with deadlines.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

STOP_TIMEOUT = 10.0


def stopProcess(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int:
    """
    Stop C{process} with SIGTERM, then SIGKILL if it has not exited within
    C{timeout} seconds; return its exit status.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return process.returncode


def readLog(path: Path) -> str:
    """
    The text of a log file, or an empty string if it does not exist yet.
    """
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
