"""
The proxy's log in forms that machines read: JSON lines for log shippers,
and an xferlog (the wu-ftpd transfer log) for FTP statistics tools.

Both are L{twisted.logger} observers; they read the events the sessions
emit, so the code that logs knows nothing of these formats. The xferlog
picks transfer events by their L{ftpproxy.events.EVENT_FIELD}, never by the
namespace (the class) that logged them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import (
    ILogObserver,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from ftpproxy.events import EVENT_FIELD, TRANSFER_FINISHED
from ftpproxy.settings.config import ConfigError

# -- JSON lines -----------------------------------------------------------------

# Keys of legacy (twisted.python.log) events that repeat what the record
# already says in its own words.
_LEGACY_KEYS = frozenset({"message", "format", "time", "isError", "failure", "why"})
_RECORD_KEYS = ("timestamp", "level", "namespace", "message", "failure")


def _fragment(value: object) -> str:
    """
    C{value} as JSON text; what JSON cannot say (objects, NaN, tuple keys)
    becomes its repr, so one odd field never loses the whole event.
    """
    try:
        return json.dumps(value, default=repr, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(repr(value))


def eventAsJSON(event: Mapping[str, Any]) -> str:
    """
    One log event as one line of JSON (without the line feed): timestamp
    (ISO 8601, UTC), level, namespace, the formatted message, the failure's
    traceback if any, then the event's own fields (session, client, backend,
    verb, bytes, ...) in the order they were given.
    """
    level = event.get("log_level")
    logTime = event.get("log_time")
    if logTime is None:
        logTime = time.time()
    timestamp = (
        datetime.fromtimestamp(logTime, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    record: dict[str, object] = {
        "timestamp": timestamp,
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure)
    parts = [f"{json.dumps(key)}: {_fragment(value)}" for key, value in record.items()]
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        if key in _RECORD_KEYS:
            key += "_"
        parts.append(f"{json.dumps(key)}: {_fragment(value)}")
    return "{" + ", ".join(parts) + "}"


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON to a text file, flushed at once
    so that a shipper tailing the file sees whole lines.
    """

    def __init__(self, outFile: IO[str]) -> None:
        self._file = outFile

    def __call__(self, event: Mapping[str, Any]) -> None:
        self._file.write(eventAsJSON(event) + "\n")
        self._file.flush()


def jsonLogger() -> JSONLinesObserver:
    """
    For C{twistd --logger ftpproxy.ops.logs.jsonLogger -n ftpproxy ...}: JSON
    lines on standard output (twistd ignores --logfile when --logger is
    given).
    """
    return JSONLinesObserver(sys.stdout)


def jsonLogObserverFor(twistdOptions: Mapping[str, Any]) -> JSONLinesObserver:
    """
    JSON lines written where twistd would write its text log, given
    twistd's own options (C{--logfile}, C{--nodaemon}): standard output for
    "-" or when not daemonised without a log file, else the log file
    (default twistd.log), rotated at 1 MB as twistd rotates its own.
    """
    logfile = twistdOptions.get("logfile")
    nodaemon = twistdOptions.get("nodaemon", False)
    if logfile == "-" or (nodaemon and not logfile):
        if not nodaemon:
            raise ConfigError("a daemon cannot log to standard output: give --nodaemon")
        return JSONLinesObserver(sys.stdout)
    return JSONLinesObserver(_TextLogFile(LogFile.fromFullPath(logfile or "twistd.log")))


class _TextLogFile:
    """
    A L{LogFile} (which takes bytes) seen as a text file.
    """

    def __init__(self, logFile: LogFile) -> None:
        self.logFile = logFile

    def write(self, text: str) -> None:
        self.logFile.write(text.encode("utf-8"))

    def flush(self) -> None:
        self.logFile.flush()


# -- xferlog ------------------------------------------------------------------

# Directory listings are data transfers too, but xferlog records files only.
XFERLOG_VERBS = frozenset({"RETR", "STOR", "STOU", "APPE"})
ANONYMOUS_USERS = frozenset({"anonymous", "ftp"})

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def xferlogTime(when: float, utc: bool = False) -> str:
    """
    C{when} as ctime(3) writes it ("Mon Jan  6 09:05:03 2025"), in English
    whatever the locale, as xferlog readers expect.
    """
    t = time.gmtime(when) if utc else time.localtime(when)
    return (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}"
    )


def _field(text: str) -> str:
    """
    C{text} as one xferlog field: readers split on whitespace, so blanks
    become "_" and other control characters "?".
    """
    if not text:
        return "-"
    return "".join(
        "_" if c.isspace() else "?" if ord(c) < 32 or ord(c) == 127 else c for c in text
    )


def xferlogLine(event: Mapping[str, Any], utc: bool = False) -> str | None:
    """
    The xferlog line (without the line feed) for a transfer event (one whose
    L{EVENT_FIELD} is L{TRANSFER_FINISHED}, from any namespace), or None if
    the event is not a file transfer.

    Fields: current-time transfer-time remote-host file-size filename
    transfer-type special-action-flag direction access-mode username
    service-name authentication-method authenticated-user-id
    completion-status. The transfer time is whole seconds, at least 1
    (readers divide by it). The event's C{type} ("A", "I", ...) and
    C{user} fields are used when present; without them the transfer is
    taken as binary and the user written as "*".
    """
    if event.get(EVENT_FIELD) != TRANSFER_FINISHED:
        return None
    verb = str(event.get("verb", "")).upper()
    if verb not in XFERLOG_VERBS or "bytes" not in event:
        return None
    try:
        size = int(event["bytes"])
        duration = float(event.get("duration", 0))
        code = int(event.get("code", 0))
    except (TypeError, ValueError):
        return None
    when = event.get("log_time") or time.time()
    seconds = max(1, int(duration + 0.5))
    transferType = "a" if str(event.get("type", "I")).upper().startswith("A") else "b"
    direction = "i" if event.get("direction") == "upload" else "o"
    user = event.get("user")
    accessMode = "a" if user is not None and str(user).lower() in ANONYMOUS_USERS else "r"
    status = "c" if 200 <= code < 300 else "i"
    return " ".join(
        [
            xferlogTime(when, utc),
            str(seconds),
            _field(str(event.get("client", ""))),
            str(size),
            _field(str(event.get("path") or event.get("argument") or "")),
            transferType,
            "_",
            direction,
            accessMode,
            _field(str(user)) if user is not None else "*",
            "ftp",
            "0",
            "*",
            status,
        ]
    )


@implementer(ILogObserver)
class XferlogObserver:
    """
    Writes one xferlog line per finished file transfer to C{destination}: a
    path (opened for appending, line-buffered) or an open text file. Other
    events pass by.
    """

    def __init__(self, destination: str | Path | IO[str], utc: bool = False) -> None:
        if isinstance(destination, (str, Path)):
            self._file: IO[str] = open(destination, "a", buffering=1, encoding="utf-8")
            self._owned = True
        else:
            self._file = destination
            self._owned = False
        self._utc = utc

    def __call__(self, event: Mapping[str, Any]) -> None:
        line = xferlogLine(event, self._utc)
        if line is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """
        Close the file if this observer opened it.
        """
        if self._owned:
            self._file.close()


class XferlogService(Service):
    """
    An xferlog at C{path} for as long as the service runs: the observer is
    added to C{publisher} (the global one by default) on start and removed,
    and its file closed, on stop.
    """

    def __init__(self, path: str | Path, publisher: LogPublisher = globalLogPublisher) -> None:
        self.path = path
        self.publisher = publisher
        self.observer: XferlogObserver | None = None

    def startService(self) -> None:
        super().startService()
        self.observer = XferlogObserver(self.path)
        self.publisher.addObserver(self.observer)

    def stopService(self):
        super().stopService()
        observer, self.observer = self.observer, None
        if observer is not None:
            self.publisher.removeObserver(observer)
            observer.close()
        return None
