"""
Tests for L{ftpproxy.tls.handshakes} and the profile-built server TLS of
L{ftpproxy.tls.contexts}: one report per client handshake, with the
fingerprint of the bytes the client sent and what came of them, and the
profiles' session reuse and tickets.

The handshakes run in memory (Twisted's TLS protocol over iosim) with
pyOpenSSL clients; no socket is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from twisted.logger import globalLogPublisher

from ftpproxy.events import EVENT_FIELD, TLS_HANDSHAKE
from ftpproxy.settings.tls import TLSProfile, TLSSettings
from ftpproxy.tls.contexts import ServerTLS, makeProfileTLS, makeServerTLS, sessionReused
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from ftpproxy.tls.handshakes import (
    CLOSED,
    NOT_RESUMED,
    OK,
    HandshakeReport,
    HandshakeWatch,
    SessionBinding,
    watchHandshakes,
)
from ftpproxy.wire.clienthello import ClientHelloReader, Fingerprint
from tests.test_tlsconfig import RawClient, handshake, rawClientContext


class Events:
    """
    The session's events: the reports' fields, as given.
    """

    def __init__(self) -> None:
        self.handshakes: list[dict[str, Any]] = []

    def clientHandshake(self, fields: dict[str, Any]) -> None:
        self.handshakes.append(dict(fields))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def logged() -> Any:
    """
    The TLS handshake events logged during the test.
    """
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get(EVENT_FIELD) == TLS_HANDSHAKE:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def profileTLS(
    certs: CertificatePaths,
    name: str = "p",
    sessionReuse: str = "optional",
    tickets: bool = True,
    **settings: Any,
) -> ServerTLS:
    profile = TLSProfile(
        name,
        TLSSettings(certificate=certs.serverCert, key=certs.serverKey, **settings),
        sessionReuse,
        tickets and sessionReuse != "off",
    )
    return makeProfileTLS(profile, listener="rig-test")


def client(minimum: int = SSL.TLS1_2_VERSION, maximum: int = 0, **kwargs: Any) -> RawClient:
    return RawClient(rawClientContext(minimum, maximum), **kwargs)


class TestReports:
    def test_controlHandshake(self, certs: CertificatePaths, logged: list) -> None:
        """
        A session's control handshake is reported once, logged and given
        to the session's events, with the session, listener, profile,
        what was negotiated and the ClientHello's fingerprint.
        """
        events = Events()
        server = profileTLS(certs, "strict")
        raw = RawClient(rawClientContext(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION))
        connection = handshake(server.forSession("s1", "127.0.0.5", events), raw)
        assert connection.succeeded
        connection.pump.flush()
        connection.close()
        assert len(events.handshakes) == 1
        fields = events.handshakes[0]
        assert {k: fields[k] for k in ("session", "client", "connection", "listener", "profile")} == {
            "session": "s1",
            "client": "127.0.0.5",
            "connection": "control",
            "listener": "rig-test",
            "profile": "strict",
        }
        assert (fields["outcome"], fields["tls_version"], fields["resumed"]) == (OK, "TLSv1.3", False)
        assert fields["cipher"].startswith("TLS_")
        assert fields["offered_versions"] == ["TLSv1.3", "TLSv1.2"]
        assert fields["offered_resumption"] is False
        assert fields["ja4"].startswith("t13i") and len(fields["ja3"]) == 32
        assert fields["ja4_fresh"] == fields["ja4"]
        assert fields["client_hello_problem"] is None
        [event] = logged
        assert {k: event[k] for k in fields} == fields

    def test_unwatchedOnceDone(self, certs: CertificatePaths) -> None:
        """
        Once its handshake is done, a connection is a plain SSL.Connection:
        the bytes of a transfer pass no watch.
        """
        connection = handshake(profileTLS(certs).forSession("s", "h"), client())
        assert connection.succeeded
        assert type(connection.server.getHandle()) is SSL.Connection
        connection.client.write(b"after the handshake")
        connection.pump.flush()
        assert connection.serverApp.received == b"after the handshake"
        connection.close()

    def test_fingerprintIsOfTheClientsBytes(self, certs: CertificatePaths) -> None:
        """
        The fingerprint is the one of the bytes the client sent: the
        server sees exactly the cipher suites the client was told to offer.
        """
        events = Events()
        context = rawClientContext(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
        context.set_cipher_list(b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
        connection = handshake(
            profileTLS(certs).forSession("s", "h", events), RawClient(context)
        )
        assert connection.succeeded
        connection.close()
        fields = events.handshakes[0]
        ciphers = fields["ja3_string"].split(",")[1].split("-")
        assert ciphers[:2] == [str(0xC02F), str(0xC030)]
        assert fields["tls_version"] == "TLSv1.2"
        assert fields["offered_versions"] == ["TLSv1.2"]

    def test_dataConnectionsResumeOrAreRefused(self, certs: CertificatePaths) -> None:
        """
        A data connection that resumes the control session is reported
        resumed; under session_reuse = "required" one that does not is
        reported refused (the data leg refuses it).
        """
        events = Events()
        server = profileTLS(certs, sessionReuse="required")
        session = server.forSession("s", "h", events)
        context = rawClientContext(SSL.TLS1_3_VERSION)
        control = handshake(session, RawClient(context))
        control.pump.flush()
        saved = control.client.getHandle().get_session()
        resumed = handshake(session.data, RawClient(context, saved))
        assert resumed.succeeded and sessionReused(resumed.server)
        fresh = handshake(session.data.forData(), RawClient(context))
        assert fresh.succeeded
        for c in (control, resumed, fresh):
            c.close()
        outcomes = [(f["connection"], f["outcome"], f["resumed"]) for f in events.handshakes]
        assert outcomes == [
            ("control", OK, False),
            ("data", OK, True),
            ("data", NOT_RESUMED, False),
        ]
        assert events.handshakes[1]["offered_resumption"] is True
        assert events.handshakes[1]["ja4"] != events.handshakes[1]["ja4_fresh"]

    def test_versionRefused(self, certs: CertificatePaths) -> None:
        """
        A client offering only versions the profile does not take is
        reported with the alert the proxy sent, and what it offered.
        """
        events = Events()
        server = profileTLS(certs, minimumVersion="1.3")
        connection = handshake(
            server.forSession("s", "h", events), client(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
        )
        assert not connection.succeeded
        [fields] = events.handshakes
        assert fields["outcome"] == "alert sent: protocol_version"
        assert fields["offered_versions"] == ["TLSv1.2"]
        assert fields["tls_version"] is None

    def test_certificateRefusedByTheClient(
        self, certs: CertificatePaths, tmp_path: Path
    ) -> None:
        """
        A client that does not trust the certificate says so with an alert;
        the report has it.
        """
        other = makeCertificates(tmp_path / "other")
        context = rawClientContext(SSL.TLS1_2_VERSION)
        context.load_verify_locations(str(other.ca).encode())
        context.set_verify(SSL.VERIFY_PEER)
        events = Events()
        connection = handshake(profileTLS(certs).forSession("s", "h", events), RawClient(context))
        assert not connection.succeeded
        assert [f["outcome"] for f in events.handshakes] == ["alert received: unknown_ca"]

    def test_notTLS(self, certs: CertificatePaths) -> None:
        """
        A client that sends FTP where TLS belongs: the report says why
        there is no fingerprint.
        """
        events = Events()
        server = profileTLS(certs).forSession("s", "h", events)
        connection = handshake(server, client())
        connection.pump.flush()
        assert connection.succeeded
        connection.close()
        events.handshakes.clear()
        watch = server.serverConnectionForTLS(None).handshakeWatch
        watch.received(b"USER anonymous\r\n")
        watch.closed()
        [fields] = events.handshakes
        assert fields["outcome"] == CLOSED
        assert fields["client_hello_problem"] == "text, not TLS"
        assert fields["ja4"] is None

    def test_unboundConnectionsAreLogged(self, certs: CertificatePaths, logged: list) -> None:
        """
        A connection made without a session (the server TLS used as it
        is) is logged all the same, without session and client.
        """
        connection = handshake(makeServerTLS(TLSSettings(certificate=certs.serverChainPem)), client())
        assert connection.succeeded
        connection.close()
        [event] = logged
        assert (event["session"], event["connection"], event["profile"]) == (None, "control", "default")


class TestWatch:
    def watch(self, **kwargs: Any) -> tuple[HandshakeWatch, list[HandshakeReport]]:
        reports: list[HandshakeReport] = []
        arguments = dict(
            connection="data",
            listener="l",
            profile="p",
            mustResume=False,
            binding=SessionBinding("s", "h"),
        )
        arguments.update(kwargs)
        return HandshakeWatch(report=reports.append, **arguments), reports

    def test_closedBeforeTheHello(self) -> None:
        watch, reports = self.watch()
        watch.received(b"\x16\x03\x01\x00")
        watch.closed()
        watch.closed()
        [report] = reports
        assert (report.outcome, report.helloProblem, report.fingerprint) == (
            CLOSED,
            "no complete ClientHello",
            None,
        )

    def test_onlyFatalAlertsAndCloseNotifyEndIt(self) -> None:
        """
        A warning alert (other than close_notify) is no failure; a
        close_notify before the end is (a client giving up politely).
        """
        watch, reports = self.watch()
        watch.alert(sent=False, level=1, description=112)  # unrecognized_name
        assert reports == []
        watch.alert(sent=False, level=1, description=0)
        watch.alert(sent=True, level=2, description=40)
        assert [r.outcome for r in reports] == ["alert received: close_notify"]

    def test_callbackFailuresAreLogged(self, logged: list) -> None:
        """
        A watch that fails inside OpenSSL's callback is logged, not raised
        into OpenSSL.
        """
        failures: list[dict] = []
        globalLogPublisher.addObserver(failures.append)
        try:

            class Broken:
                def handshakeDone(self, connection: Any) -> None:
                    raise RuntimeError("boom")

            class Fake:
                handshakeWatch = Broken()

            watchHandshakes(Fake(), SSL.SSL_CB_HANDSHAKE_DONE, 1)  # type: ignore[arg-type]
            watchHandshakes(object(), SSL.SSL_CB_HANDSHAKE_DONE, 1)  # type: ignore[arg-type]
        finally:
            globalLogPublisher.removeObserver(failures.append)
        assert any("boom" in str(e.get("log_failure")) for e in failures)


class TestProfiles:
    def resumes(self, server: ServerTLS, version: int, useTicket: bool = True) -> bool:
        """
        Whether the control connection's session resumes on a data
        connection.
        """
        options = 0 if useTicket else SSL.OP_NO_TICKET
        context = rawClientContext(version, version, options)
        session = server.forSession("s", "h")
        control = handshake(session, RawClient(context))
        control.pump.flush()
        saved = control.client.getHandle().get_session()
        data = handshake(session.data, RawClient(context, saved))
        data.pump.flush()
        result = sessionReused(data.server)
        control.close()
        data.close()
        return result

    def test_ticketsOff(self, certs: CertificatePaths) -> None:
        """
        tickets = false: TLS 1.2 still resumes (by session id), TLS 1.3
        cannot (no ticket, no pre-shared key).
        """
        server = profileTLS(certs, tickets=False)
        assert self.resumes(server, SSL.TLS1_2_VERSION) is True
        assert self.resumes(server, SSL.TLS1_3_VERSION) is False
        withTickets = profileTLS(certs)
        assert self.resumes(withTickets, SSL.TLS1_3_VERSION) is True

    def test_reuseOff(self, certs: CertificatePaths) -> None:
        """
        session_reuse = "off": nothing resumes, by ticket or by session id.
        """
        server = profileTLS(certs, sessionReuse="off")
        assert not server.tickets
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            assert self.resumes(server, version) is False
            assert self.resumes(server, version, useTicket=False) is False

    def test_variantCertificate(self, certs: CertificatePaths, tmp_path: Path) -> None:
        """
        A profile with a certificate variant serves the development CA's
        variant; the weak key loads (the profile lowers the security
        level for it).
        """
        makeCertificates(tmp_path)
        profile = TLSProfile(
            "weak",
            TLSSettings(certificate=certs.serverChainPem, developmentCA=tmp_path),
            "optional",
            True,
            "weak-key",
        )
        server = makeProfileTLS(profile, listener="w")
        assert server.settings.certificate == tmp_path / "variants" / "weak-key.pem"
        assert server.settings.ciphers == "DEFAULT:@SECLEVEL=0"
        context = rawClientContext(SSL.TLS1_2_VERSION)
        connection = handshake(server, RawClient(context))
        assert connection.succeeded
        leaf = connection.client.getHandle().get_peer_certificate().to_cryptography()
        assert leaf.public_key().key_size == 1024
        connection.close()
        expired = makeProfileTLS(attrs.evolve(profile, certificateVariant="expired"))
        assert expired.settings.ciphers is None


def test_fingerprintMatchesTheReader(certs: CertificatePaths) -> None:
    """
    The report's fingerprint is what the reader makes of the same client's
    ClientHello (read here from the bytes the client wrote).
    """
    events = Events()
    raw = client()
    connection = handshake(profileTLS(certs).forSession("s", "h", events), raw)
    connection.close()
    sent = ClientHelloReader()
    probe = SSL.Connection(raw.context, None)
    probe.set_connect_state()
    try:
        probe.do_handshake()
    except SSL.WantReadError:
        pass
    hello = sent.feed(probe.bio_read(65536))
    assert hello is not None
    expected = Fingerprint.of(hello)
    fields = events.handshakes[0]
    # The key share is random, the fingerprints are not.
    assert (fields["ja3"], fields["ja4"]) == (expected.ja3, expected.ja4)
