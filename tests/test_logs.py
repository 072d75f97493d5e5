"""
JSON-lines logging and the xferlog, fed with in-memory events (and once
through a real twistd).
"""

from __future__ import annotations

import calendar
import io
import json
import math
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest
from twisted.logger import LogLevel, Logger, LogPublisher
from twisted.scripts.twistd import ServerOptions

from ftpproxy.events import EVENT_FIELD, SESSION_ENDED, TRANSFER_FINISHED
from ftpproxy.settings.config import ConfigError
from ftpproxy.ops.logs import (
    JSONLinesObserver,
    XferlogObserver,
    XferlogService,
    eventAsJSON,
    jsonLogObserverFor,
    jsonLogger,
    xferlogLine,
    xferlogTime,
)
from tests.support.proxy import PROJECT_ROOT, TWISTD

# Monday 6 January 2025, 09:05:03 UTC.
WHEN = calendar.timegm((2025, 1, 6, 9, 5, 3))

# Where the proxy logs transfers from today; the xferlog must not care.
TRANSFER_NAMESPACE = "ftpproxy.session.transfer.Transfer"


def transferEvent(**overrides) -> dict:
    """
    An event as ftpproxy.session.transfer.Transfer._logTransfer emits it.
    """
    event = {
        "log_namespace": TRANSFER_NAMESPACE,
        "log_level": LogLevel.info,
        "log_time": WHEN,
        "log_format": (
            "session {session}: {verb} {argument} via {backend}: {code}, "
            "{bytes} bytes in {duration:.3f}s"
        ),
        "session": "0a1b2c3d",
        "client": "127.0.0.9",
        "backend": "alpha",
        "verb": "RETR",
        "argument": "pub/sample.bin",
        "direction": "download",
        "code": 226,
        "bytes": 1048576,
        "duration": 1.75,
        EVENT_FIELD: TRANSFER_FINISHED,
    }
    event.update(overrides)
    return event


def logTransfer(log: Logger, marked: bool = True, **fields) -> None:
    """
    Log a transfer the way the proxy does, through a real Logger; without
    its EVENT_FIELD unless C{marked}.
    """
    values = dict(
        session="0a1b2c3d",
        client="127.0.0.9",
        backend="alpha",
        verb="RETR",
        argument="pub/sample.bin",
        direction="download",
        code=226,
        bytes=1048576,
        duration=0.4,
        ftpproxy_event=TRANSFER_FINISHED,
    )
    values.update(fields)
    if not marked:
        del values[EVENT_FIELD]
    log.info(
        "session {session}: {verb} {argument} via {backend}: {code}, "
        "{bytes} bytes in {duration:.3f}s",
        **values,
    )


# -- JSON lines ------------------------------------------------------------------


class TestEventAsJSON:
    def test_transfer_event(self) -> None:
        record = json.loads(eventAsJSON(transferEvent()))
        assert record == {
            "timestamp": "2025-01-06T09:05:03.000Z",
            "level": "info",
            "namespace": TRANSFER_NAMESPACE,
            "message": "session 0a1b2c3d: RETR pub/sample.bin via alpha: 226, "
            "1048576 bytes in 1.750s",
            "session": "0a1b2c3d",
            "client": "127.0.0.9",
            "backend": "alpha",
            "verb": "RETR",
            "argument": "pub/sample.bin",
            "direction": "download",
            "code": 226,
            "bytes": 1048576,
            "duration": 1.75,
            "ftpproxy_event": "transfer-finished",
        }
        assert list(record)[:4] == ["timestamp", "level", "namespace", "message"]

    def test_one_line(self) -> None:
        text = eventAsJSON(transferEvent(argument="two\nlines"))
        assert "\n" not in text
        assert json.loads(text)["argument"] == "two\nlines"

    def test_values_json_cannot_say(self) -> None:
        thing = object()
        record = json.loads(
            eventAsJSON(
                transferEvent(
                    thing=thing,
                    raw=b"\xff",
                    nested={"ok": [1, 2], "odd": thing},
                    tupleKeys={(1, 2): 3},
                    nan=math.nan,
                    when=None,
                )
            )
        )
        assert record["thing"] == repr(thing)
        assert record["raw"] == repr(b"\xff")
        assert record["nested"] == {"ok": [1, 2], "odd": repr(thing)}
        assert record["tupleKeys"] == repr({(1, 2): 3})
        assert record["nan"] == "nan"
        assert record["when"] is None

    def test_reserved_names_kept_apart(self) -> None:
        record = json.loads(eventAsJSON(transferEvent(level="mine", namespace="n", timestamp=1)))
        assert record["level"] == "info"
        assert record["namespace"] == TRANSFER_NAMESPACE
        assert (record["level_"], record["namespace_"], record["timestamp_"]) == ("mine", "n", 1)

    def test_private_and_legacy_keys_left_out(self) -> None:
        record = json.loads(
            eventAsJSON(
                transferEvent(
                    log_source=object(), message=("legacy",), isError=0, time=WHEN, system="-"
                )
            )
        )
        assert not [k for k in record if k.startswith("log_")]
        assert "isError" not in record and "time" not in record
        assert record["system"] == "-"
        assert record["message"].startswith("session 0a1b2c3d")

    def test_failure(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="ftpproxy.test", observer=JSONLinesObserver(out))
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("session {session} broke", session="s1")
        record = json.loads(out.getvalue())
        assert record["level"] == "critical"
        assert record["message"] == "session s1 broke"
        assert record["session"] == "s1"
        assert "Traceback" in record["failure"]
        assert "ZeroDivisionError" in record["failure"]

    def test_unformattable_message_still_logged(self) -> None:
        record = json.loads(eventAsJSON(transferEvent(log_format="{missing}")))
        assert "Unable to format event" in record["message"]
        assert record["bytes"] == 1048576


def test_observer_writes_one_line_per_event() -> None:
    out = io.StringIO()
    log = Logger(namespace=TRANSFER_NAMESPACE, observer=JSONLinesObserver(out))
    before = time.time()
    logTransfer(log)
    logTransfer(log, verb="STOR", direction="upload", bytes=5)
    log.warn("backend {backend} is down", backend="beta")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r.get("verb") for r in records] == ["RETR", "STOR", None]
    assert records[1]["bytes"] == 5 and records[1]["direction"] == "upload"
    assert records[2] == {
        "timestamp": records[2]["timestamp"],
        "level": "warn",
        "namespace": TRANSFER_NAMESPACE,
        "message": "backend beta is down",
        "backend": "beta",
    }
    stamp = records[0]["timestamp"]
    assert stamp.endswith("Z")
    parsed = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    assert before - 1 <= parsed <= time.time()


def test_twistd_options_nodaemon_means_stdout(capsys) -> None:
    options = ServerOptions()
    options.parseOptions(["--nodaemon"])
    observer = jsonLogObserverFor(options)
    Logger(namespace="t", observer=observer).info("hello {who}", who="you")
    assert json.loads(capsys.readouterr().out)["message"] == "hello you"
    Logger(namespace="t", observer=jsonLogger()).info("for --logger")
    assert json.loads(capsys.readouterr().out)["message"] == "for --logger"


def test_twistd_options_logfile(tmp_path: Path) -> None:
    path = tmp_path / "proxy.log"
    options = ServerOptions()
    options.parseOptions(["--logfile", str(path)])
    observer = jsonLogObserverFor(options)
    log = Logger(namespace=TRANSFER_NAMESPACE, observer=observer)
    logTransfer(log)
    logTransfer(log, argument="b")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["argument"] for r in records] == ["pub/sample.bin", "b"]


def test_daemon_cannot_log_to_stdout() -> None:
    with pytest.raises(ConfigError, match="standard output"):
        jsonLogObserverFor({"logfile": "-", "nodaemon": False})


def test_twistd_logger_option(tmp_path: Path) -> None:
    """
    C{twistd --logger ftpproxy.ops.logs.jsonLogger -n ftpproxy ...} writes its
    whole log as JSON lines on standard output.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = [
        *TWISTD,
        "--pidfile=",
        "--nodaemon",
        "--logger",
        "ftpproxy.ops.logs.jsonLogger",
        "ftpproxy",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--backend",
        "127.0.0.2:2121",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen = _readUntil(process, "Starting factory", timeout=30)
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = (seen + rest).splitlines()
    records = [json.loads(line) for line in lines]
    messages = [r["message"] for r in records]
    assert any("starting up" in m for m in messages)
    assert any(m.startswith("Starting factory") for m in messages)
    assert any(r["namespace"] == "ftpproxy.app.proxy.ProxyFactory" for r in records)
    assert "Traceback" not in seen + rest + errors


def _readUntil(process: subprocess.Popen, text: str, timeout: float) -> str:
    """
    C{process}'s standard output until a complete line holds C{text};
    fails after C{timeout} seconds or if the process exits.

    Reads the pipe's file descriptor directly: a buffered C{readline} may
    pull several lines into Python's buffer, after which C{select} would
    wait for data that has already arrived.
    """
    deadline = time.monotonic() + timeout
    received = b""
    fd = process.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if text.encode() in received.rpartition(b"\n")[0]:
                # All of it, a partial last line included: the caller joins
                # it with what the process writes afterwards.
                return received.decode()
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {text!r} in {timeout}s; output so far:\n{received.decode()}")
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"twistd exited; output:\n{received.decode()}{process.stderr.read()}")
            received += chunk


# -- xferlog --------------------------------------------------------------------


class TestXferlogLine:
    def test_download(self) -> None:
        assert xferlogLine(transferEvent(user="alice", type="I"), utc=True) == (
            "Mon Jan  6 09:05:03 2025 2 127.0.0.9 1048576 pub/sample.bin b _ o r alice ftp 0 * c"
        )

    def test_fields(self) -> None:
        fields = xferlogLine(transferEvent(), utc=True).split()
        assert len(fields) == 18  # ctime is five words, then 13 fields

    def test_aborted_ascii_anonymous_upload(self) -> None:
        line = xferlogLine(
            transferEvent(
                verb="STOR",
                direction="upload",
                argument="incoming/notes.txt",
                code=426,
                bytes=12,
                duration=0.1,
                type="A N",
                user="anonymous",
            ),
            utc=True,
        )
        assert line.split()[5:] == [
            "1",
            "127.0.0.9",
            "12",
            "incoming/notes.txt",
            "a",
            "_",
            "i",
            "a",
            "anonymous",
            "ftp",
            "0",
            "*",
            "i",
        ]

    def test_without_user_and_type(self) -> None:
        """
        Until the events carry them: binary, a real user named "*".
        """
        fields = xferlogLine(transferEvent(), utc=True).split()
        assert fields[9:13] == ["b", "_", "o", "r"]
        assert fields[13] == "*"

    @pytest.mark.parametrize("duration, seconds", [(0.0, 1), (0.2, 1), (1.49, 1), (2.5, 3), (61.2, 61)])
    def test_transfer_time(self, duration: float, seconds: int) -> None:
        assert xferlogLine(transferEvent(duration=duration), utc=True).split()[5] == str(seconds)

    def test_awkward_names(self) -> None:
        line = xferlogLine(transferEvent(argument="my file\twith\x01odd.txt", user="a b"), utc=True)
        fields = line.split()
        assert len(fields) == 18
        assert fields[8] == "my_file_with?odd.txt"
        assert fields[13] == "a_b"

    def test_stou_without_name(self) -> None:
        fields = xferlogLine(transferEvent(verb="STOU", argument="", direction="upload"), utc=True).split()
        assert len(fields) == 18 and fields[8] == "-"

    def test_prefers_path(self) -> None:
        line = xferlogLine(transferEvent(path="/home/alice/pub/sample.bin"), utc=True)
        assert line.split()[8] == "/home/alice/pub/sample.bin"

    @pytest.mark.parametrize(
        "event",
        [
            transferEvent(verb="LIST", argument=""),
            transferEvent(verb="MLSD"),
            {k: v for k, v in transferEvent().items() if k != EVENT_FIELD},
            transferEvent(**{EVENT_FIELD: SESSION_ENDED}),
            transferEvent(**{EVENT_FIELD: None}),
            {k: v for k, v in transferEvent().items() if k != "bytes"},
            transferEvent(bytes="lots"),
        ],
        ids=["LIST", "MLSD", "no-event-field", "other-event", "empty-event-field", "no-bytes",
             "bad-bytes"],
    )
    def test_not_a_file_transfer(self, event) -> None:
        assert xferlogLine(event) is None


def test_xferlog_time() -> None:
    assert xferlogTime(WHEN, utc=True) == "Mon Jan  6 09:05:03 2025"
    assert xferlogTime(calendar.timegm((2024, 12, 25, 23, 0, 9)), utc=True) == "Wed Dec 25 23:00:09 2024"
    assert xferlogTime(WHEN) == time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(WHEN))


def test_observer_from_real_logger() -> None:
    out = io.StringIO()
    log = Logger(namespace=TRANSFER_NAMESPACE, observer=XferlogObserver(out))
    logTransfer(log)
    logTransfer(log, verb="LIST", argument="")
    logTransfer(log, verb="APPE", direction="upload", bytes=10, code=550)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[5:] == "1 127.0.0.9 1048576 pub/sample.bin b _ o r * ftp 0 * c".split()
    assert lines[1].split()[7:] == "10 pub/sample.bin b _ i r * ftp 0 * i".split()


@pytest.mark.parametrize(
    "namespace",
    [TRANSFER_NAMESPACE, "ftpproxy.session.transfers.TransferMachine", "embedder.own"],
)
def test_selected_by_field_from_any_namespace(namespace: str) -> None:
    """
    A transfer event is one that says so in its EVENT_FIELD, whichever
    class logged it; one with the same fields but no EVENT_FIELD, even from
    the namespace transfers are logged in today, is not.
    """
    out = io.StringIO()
    log = Logger(namespace=namespace, observer=XferlogObserver(out, utc=True))
    logTransfer(log, argument="selected.bin")
    logTransfer(log, argument="unmarked.bin", marked=False)
    logTransfer(
        Logger(namespace=TRANSFER_NAMESPACE, observer=XferlogObserver(out, utc=True)),
        argument="unmarked-usual-namespace.bin",
        marked=False,
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].split()[8] == "selected.bin"


def test_without_namespace() -> None:
    """
    Even an event with no namespace at all is a transfer if it says so.
    """
    event = {k: v for k, v in transferEvent().items() if k != "log_namespace"}
    assert xferlogLine(event, utc=True).split()[8] == "pub/sample.bin"


def test_observer_appends_to_path(tmp_path: Path) -> None:
    path = tmp_path / "xferlog"
    path.write_text("earlier line\n")
    observer = XferlogObserver(path, utc=True)
    try:
        observer(transferEvent())
        # Written through at once: a reader sees the line before close.
        assert path.read_text().splitlines()[1].endswith(" c")
    finally:
        observer.close()
    assert path.read_text().splitlines()[0] == "earlier line"


def test_service_adds_and_removes_observer(tmp_path: Path) -> None:
    path = tmp_path / "xferlog"
    publisher = LogPublisher()
    service = XferlogService(path, publisher)
    service.startService()
    publisher(transferEvent())
    publisher(transferEvent(verb="LIST"))
    service.stopService()
    publisher(transferEvent(argument="after-stop"))
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert "pub/sample.bin" in lines[0]
    assert service.observer is None
