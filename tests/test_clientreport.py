"""
Tests for L{ftpproxy.ops.clients}: the client report built from TLS
handshake events, its bounds, its text, and C{python -m ftpproxy.report}.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftpproxy.events import EVENT_FIELD, TLS_HANDSHAKE
from ftpproxy.ops.clients import UNKNOWN, ClientReport, handshakeEvents, main, reportFromLog
from ftpproxy.ops.logs import eventAsJSON
from ftpproxy.ops.metrics import ProxyMetrics
from ftpproxy.settings.rig import rigExpectations

CURL = "t13i311000_e8f1e7e78f70_b26ce05bbdd6"
CURL_RESUMING = "t13i311100_e8f1e7e78f70_aaaaaaaaaaaa"
FTPLIB = "t13i181000_85036bcba153_d41ae481755e"


def handshake(**fields: Any) -> dict[str, Any]:
    event = {
        "session": "s1",
        "client": "127.0.0.5",
        "connection": "control",
        "listener": "rig-reuse-required",
        "profile": "rig-reuse-required",
        "outcome": "ok",
        "tls_version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "resumed": False,
        "ja3": "0732e7ae1e82c99f17258ef97e868d4e",
        "ja4": CURL,
        "ja4_fresh": CURL,
        "sni": None,
        "offered_versions": ["TLSv1.3", "TLSv1.2"],
        EVENT_FIELD: TLS_HANDSHAKE,
    }
    event.update(fields)
    return event


def session(sessionId: str, ja4: str = CURL, data: int = 2, resumed: bool = True, **extra) -> list[dict]:
    events = [handshake(session=sessionId, ja4=ja4, ja4_fresh=ja4, **extra)]
    for _ in range(data):
        events.append(
            handshake(
                session=sessionId,
                connection="data",
                ja4="t13i311100_e8f1e7e78f70_0000000000ff",
                ja4_fresh=ja4,
                resumed=resumed,
                outcome="ok" if resumed else "refused: session not resumed",
                **extra,
            )
        )
    return events


def test_byClientFingerprint() -> None:
    """
    Sessions count for the fingerprint of their control connection, data
    connections through their session (whatever their own ClientHello);
    versions, ciphers, resumption and failures add up per client and per
    listener.
    """
    report = ClientReport()
    for event in session("a") + session("b") + session("c", FTPLIB, data=1, resumed=False):
        report.add(event)
    report.add(handshake(session="d", outcome="alert received: certificate_expired",
                         listener="rig-expired", profile="rig-expired", tls_version=None, cipher=None))
    curl, ftplib = report.clients[CURL], report.clients[FTPLIB]
    assert (curl.sessions, curl.dataConnections, curl.dataResumed) == (3, 4, 4)
    assert curl.versions == {"TLSv1.3": 6}
    assert curl.failures == {"alert received: certificate_expired": 1}
    assert curl.listeners["rig-expired"].control == {"alert received: certificate_expired": 1}
    assert curl.listeners["rig-reuse-required"].dataResumed == 4
    assert ftplib.failures == {"refused: session not resumed": 1}
    assert ftplib.listeners["rig-reuse-required"].data == {"refused: session not resumed": 1}
    summary = report.asJSON()
    assert [c["ja4"] for c in summary["clients"]] == [CURL, FTPLIB]
    assert summary["clients"][0]["listeners"]["rig-reuse-required"]["data_resumed"] == 4
    json.dumps(summary)


def test_resumingControlConnectionsCountForTheClient() -> None:
    """
    A control connection that resumes a TLS 1.3 session has another JA4;
    it counts for the client by its ja4_fresh, and its JA4 is listed.
    """
    report = ClientReport()
    report.add(handshake(session="a"))
    report.add(handshake(session="b", ja4=CURL_RESUMING, ja4_fresh=CURL, resumed=True))
    assert list(report.clients) == [CURL]
    assert report.clients[CURL].sessions == 2
    assert list(report.clients[CURL].ja4Resuming) == [CURL_RESUMING]


def test_dataOfAnUnknownSession() -> None:
    report = ClientReport()
    report.add(handshake(connection="data", session="never-seen"))
    report.add(handshake(connection="data", session=None))
    assert report.clients[UNKNOWN].dataConnections == 2


def test_bounded() -> None:
    """
    At most maxClients fingerprints are kept (later handshakes are
    counted as dropped), and the last maxSessions sessions are known.
    """
    report = ClientReport(maxClients=2, maxSessions=3)
    for n in range(4):
        report.add(handshake(session=f"s{n}", ja4=f"t13i_{n}", ja4_fresh=f"t13i_{n}"))
    assert list(report.clients) == ["t13i_0", "t13i_1"]
    assert report.dropped == 2
    for n in range(5):
        report.add(handshake(session=f"x{n}", ja4="t13i_0", ja4_fresh="t13i_0"))
    report.add(handshake(connection="data", session="x0"))
    report.add(handshake(connection="data", session="x4"))
    assert report.clients["t13i_0"].dataConnections == 1
    assert report.dropped == 3  # x0's session is forgotten, UNKNOWN is a third client


def test_text() -> None:
    report = ClientReport()
    for event in session("a", data=1) + session("b", FTPLIB, data=1, resumed=False):
        report.add(event)
    text = report.text(rigExpectations())
    assert f"client {CURL}" in text and f"client {FTPLIB}" in text
    assert "sessions: 1; data connections: 1, 1 resumed the session" in text
    assert "failures: refused: session not resumed x1" in text
    assert "rig-reuse-required [rig-reuse-required]: control ok x1; data refused: session not resumed x1" in text
    assert "a correct client: resumes the session on every data connection" in text
    assert "No TLS handshakes found" in ClientReport().text()


def test_metricsFeedTheLiveReport() -> None:
    metrics = ProxyMetrics()
    for event in session("a"):
        metrics.clientHandshake(event)
    assert metrics.clients.clients[CURL].dataResumed == 2
    assert metrics.clientHandshakes == {("control", "ok"): 1, ("data", "ok"): 2}


def logLines(events: list[dict]) -> list[str]:
    return [eventAsJSON({**e, "log_format": "x"}) for e in events]


def test_fromTheJSONLog(tmp_path: Path) -> None:
    """
    The report reads the JSON log as the JSON observer writes it, passing
    over other events, text and broken lines.
    """
    lines = logLines(session("a"))
    lines.insert(1, eventAsJSON({"log_format": "session started", EVENT_FIELD: "session-started"}))
    lines.insert(0, "2026-01-01 some text line")
    lines.append('{"broken": ')
    lines.append("[1, 2]")
    assert len(list(handshakeEvents(lines))) == 3
    report = reportFromLog(lines)
    assert report.clients[CURL].dataResumed == 2


def test_commandLine(tmp_path: Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text("\n".join(logLines(session("a") + session("b", FTPLIB, resumed=False))) + "\n")
    out = io.StringIO()
    assert main(["--json", str(log)], out) == 0
    assert [c["ja4"] for c in json.loads(out.getvalue())["clients"]] == [CURL, FTPLIB]
    completed = subprocess.run(
        [sys.executable, "-m", "ftpproxy.report", str(log)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert f"client {FTPLIB}" in completed.stdout
    assert "a correct client:" in completed.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "ftpproxy.report", str(tmp_path / "nope.log")],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    usage = io.StringIO()
    assert main([], usage) == 2 and "usage" in usage.getvalue()
    assert main(["--help"], io.StringIO()) == 0


@pytest.mark.parametrize("junk", ["", "{}", '{"ftpproxy_event": "tls-handshake"}'])
def test_oddEvents(junk: str) -> None:
    """
    Events with fields missing are counted without error.
    """
    report = reportFromLog([junk])
    report.text()
    json.dumps(report.asJSON())
