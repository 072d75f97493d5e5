"""
What each FTPS client did, by its TLS fingerprint: built from the proxy's
TLS handshake events (L{ftpproxy.events.TLS_HANDSHAKE}), live for the admin
endpoint's C{/clients} and from a JSON log for C{python -m ftpproxy.report
LOG}.

A client is known by the JA4 of its control connection's ClientHello as a
first handshake (C{ja4_fresh}: a control connection that resumes a TLS 1.3
session counts with the client's others).  Its data connections count for
it through their session, whatever their own ClientHello looks like (one
that resumes a session offers a pre-shared key and so fingerprints
differently).  For each client the report
says how many sessions it had, what was negotiated, how many data
connections resumed the control connection's session, and which handshakes
failed and why, listener by listener: enough to read which TLS profiles a
client handles.

Memory is bounded: at most L{MAX_CLIENTS} fingerprints (later ones are
counted, not kept) and the sessions of the last L{MAX_SESSIONS} control
handshakes.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, OrderedDict
from contextlib import nullcontext
from typing import IO, Any, Iterable, Mapping, Optional

import attrs

from ftpproxy.events import EVENT_FIELD, TLS_HANDSHAKE

MAX_CLIENTS = 1000
MAX_SESSIONS = 100_000
MAX_HOSTS = 20

#: The fingerprint data connections of an unknown session count under.
UNKNOWN = "(control connection not seen)"
#: The fingerprint of a connection whose ClientHello could not be read.
UNREADABLE = "(no readable ClientHello)"


@attrs.define
class ListenerRecord:
    """
    What one client did on one listener.

    @ivar profile: the listener's TLS profile.
    @ivar control: control handshakes, by outcome.
    @ivar data: data handshakes, by outcome.
    @ivar dataResumed: data handshakes that resumed a session.
    """

    profile: str
    control: Counter = attrs.field(factory=Counter)
    data: Counter = attrs.field(factory=Counter)
    dataResumed: int = 0

    def asJSON(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "control": dict(self.control),
            "data": dict(self.data),
            "data_resumed": self.dataResumed,
        }


@attrs.define
class ClientRecord:
    """
    What one client (one control connection fingerprint) did.

    @ivar ja4: the fingerprint.
    @ivar ja3: the JA3s its control connections had (one, normally).
    @ivar ja4Resuming: the JA4s of its control connections that resumed a
        session (they differ from C{ja4}).
    @ivar hosts: addresses it came from (the first L{MAX_HOSTS}).
    @ivar offeredVersions: the versions its control ClientHello offered.
    @ivar sni: the server names it sent.
    @ivar sessions: control handshakes (one per session).
    @ivar versions: negotiated versions, over all its handshakes.
    @ivar ciphers: negotiated cipher suites, over all its handshakes.
    @ivar dataConnections: its data handshakes.
    @ivar dataResumed: of those, the ones that resumed a session.
    @ivar failures: handshakes that did not end "ok", by outcome.
    @ivar listeners: what it did on each listener.
    """

    ja4: str
    ja3: Counter = attrs.field(factory=Counter)
    ja4Resuming: Counter = attrs.field(factory=Counter)
    hosts: list = attrs.field(factory=list)
    offeredVersions: list = attrs.field(factory=list)
    sni: Counter = attrs.field(factory=Counter)
    sessions: int = 0
    versions: Counter = attrs.field(factory=Counter)
    ciphers: Counter = attrs.field(factory=Counter)
    dataConnections: int = 0
    dataResumed: int = 0
    failures: Counter = attrs.field(factory=Counter)
    listeners: dict = attrs.field(factory=dict)

    def asJSON(self) -> dict[str, Any]:
        return {
            "ja4": self.ja4,
            "ja3": sorted(self.ja3),
            "ja4_resuming": sorted(self.ja4Resuming),
            "hosts": list(self.hosts),
            "offered_versions": list(self.offeredVersions),
            "sni": sorted(self.sni),
            "sessions": self.sessions,
            "versions": dict(self.versions),
            "ciphers": dict(self.ciphers),
            "data_connections": self.dataConnections,
            "data_resumed": self.dataResumed,
            "failures": dict(self.failures),
            "listeners": {name: record.asJSON() for name, record in self.listeners.items()},
        }


class ClientReport:
    """
    TLS handshake events, summed up by client fingerprint.

    @ivar clients: the records, by JA4, in the order first seen.
    @ivar dropped: handshakes of fingerprints beyond L{MAX_CLIENTS}.
    """

    def __init__(self, maxClients: int = MAX_CLIENTS, maxSessions: int = MAX_SESSIONS) -> None:
        self._maxClients = maxClients
        self._maxSessions = maxSessions
        self.clients: dict[str, ClientRecord] = {}
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self.dropped = 0

    def add(self, fields: Mapping[str, Any]) -> None:
        """
        Count one handshake, given the fields of its log event.
        """
        connection = fields.get("connection")
        session = fields.get("session")
        own = fields.get("ja4_fresh") or fields.get("ja4") or UNREADABLE
        if connection == "control":
            key = own
            if session is not None:
                self._remember(str(session), key)
        else:
            key = self._sessions.get(str(session), UNKNOWN) if session is not None else UNKNOWN
        record = self._record(key)
        if record is None:
            self.dropped += 1
            return
        outcome = str(fields.get("outcome", "?"))
        listener = str(fields.get("listener") or "?")
        perListener = record.listeners.get(listener)
        if perListener is None:
            perListener = record.listeners[listener] = ListenerRecord(str(fields.get("profile")))
        resumed = fields.get("resumed") is True
        if connection == "control":
            record.sessions += 1
            perListener.control[outcome] += 1
            self._noteClient(record, fields)
        else:
            record.dataConnections += 1
            perListener.data[outcome] += 1
            if resumed:
                record.dataResumed += 1
                perListener.dataResumed += 1
        if fields.get("tls_version"):
            record.versions[fields["tls_version"]] += 1
        if fields.get("cipher"):
            record.ciphers[fields["cipher"]] += 1
        if outcome != "ok":
            record.failures[outcome] += 1

    def _remember(self, session: str, key: str) -> None:
        self._sessions[session] = key
        self._sessions.move_to_end(session)
        while len(self._sessions) > self._maxSessions:
            self._sessions.popitem(last=False)

    def _record(self, key: str) -> Optional[ClientRecord]:
        record = self.clients.get(key)
        if record is None:
            if len(self.clients) >= self._maxClients:
                return None
            record = self.clients[key] = ClientRecord(key)
        return record

    def _noteClient(self, record: ClientRecord, fields: Mapping[str, Any]) -> None:
        if fields.get("ja3"):
            record.ja3[fields["ja3"]] += 1
        if fields.get("ja4") and fields["ja4"] != record.ja4:
            record.ja4Resuming[fields["ja4"]] += 1
        host = fields.get("client")
        if host and host not in record.hosts and len(record.hosts) < MAX_HOSTS:
            record.hosts.append(host)
        if fields.get("sni"):
            record.sni[fields["sni"]] += 1
        offered = fields.get("offered_versions")
        if offered and not record.offeredVersions:
            record.offeredVersions = list(offered)

    def asJSON(self) -> dict[str, Any]:
        """
        The report as JSON values (what C{/clients} serves).
        """
        return {
            "clients": [record.asJSON() for record in self.clients.values()],
            "dropped_handshakes": self.dropped,
        }

    def text(self, expectations: Mapping[str, str] | None = None) -> str:
        """
        The report for people; C{expectations} maps listener names to what
        a correct client does there (the TLS rig's table).
        """
        expectations = expectations or {}
        if not self.clients:
            return (
                "No TLS handshakes found. The report reads the proxy's JSON log "
                "(--log-format json); did a client use FTPS?\n"
            )
        lines: list[str] = []
        for record in self.clients.values():
            lines += _clientText(record, expectations)
            lines.append("")
        if self.dropped:
            lines.append(f"({self.dropped} handshakes of further clients not counted)")
        return "\n".join(lines).rstrip("\n") + "\n"


def _counted(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(counter.items())) or "none"


def _clientText(record: ClientRecord, expectations: Mapping[str, str]) -> list[str]:
    lines = [f"client {record.ja4}"]
    if record.ja3:
        lines.append(f"  ja3: {', '.join(sorted(record.ja3))}")
    if record.ja4Resuming:
        lines.append(f"  ja4 when resuming: {', '.join(sorted(record.ja4Resuming))}")
    if record.hosts:
        lines.append(f"  from: {', '.join(record.hosts)}")
    if record.offeredVersions:
        lines.append(f"  offers: {', '.join(record.offeredVersions)}")
    if record.sni:
        lines.append(f"  server names: {', '.join(sorted(record.sni))}")
    lines.append(
        f"  sessions: {record.sessions}; data connections: {record.dataConnections}, "
        f"{record.dataResumed} resumed the session"
    )
    lines.append(f"  versions: {_counted(record.versions)}")
    lines.append(f"  ciphers: {_counted(record.ciphers)}")
    lines.append(f"  failures: {_counted(record.failures)}")
    lines.append("  by listener:")
    for name, perListener in sorted(record.listeners.items()):
        parts = [f"control {_counted(perListener.control)}"]
        if perListener.data:
            parts.append(
                f"data {_counted(perListener.data)} ({perListener.dataResumed} resumed)"
            )
        lines.append(f"    {name} [{perListener.profile}]: {'; '.join(parts)}")
        if name in expectations:
            lines.append(f"      a correct client: {expectations[name]}")
    return lines


def handshakeEvents(lines: Iterable[str]) -> Iterable[Mapping[str, Any]]:
    """
    The TLS handshake events among JSON log lines; other lines (other
    events, text, broken JSON) are passed over.
    """
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get(EVENT_FIELD) == TLS_HANDSHAKE:
            yield event


def reportFromLog(lines: Iterable[str]) -> ClientReport:
    """
    The client report of a JSON log's lines.
    """
    report = ClientReport()
    for event in handshakeEvents(lines):
        report.add(event)
    return report


def main(argv: list[str], out: IO[str] = sys.stdout, expectations: Mapping[str, str] | None = None) -> int:
    """
    C{python -m ftpproxy.report [--json] LOG...}: the client report of the
    proxy's JSON logs ("-" reads standard input).
    """
    asJSON = "--json" in argv
    paths = [a for a in argv if a != "--json"]
    if not paths or any(p in ("-h", "--help") for p in paths):
        out.write(
            "usage: python -m ftpproxy.report [--json] LOG...\n"
            "Reads the proxy's JSON log (--log-format json) and prints, per TLS client\n"
            "fingerprint, its sessions, versions and ciphers, data connections that\n"
            "resumed the session, and failed handshakes by reason and listener.\n"
        )
        return 0 if paths else 2
    report = ClientReport()
    for path in paths:
        try:
            stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")
        except OSError as e:
            sys.stderr.write(f"ftpproxy.report: cannot read {path}: {e.strerror}\n")
            return 1
        with stream if path != "-" else nullcontext(stream):
            for event in handshakeEvents(stream):
                report.add(event)
    if asJSON:
        out.write(json.dumps(report.asJSON(), indent=1) + "\n")
    else:
        out.write(report.text(expectations))
    return 0

