"""
The TLS building blocks (L{ftpproxy.tls.contexts}, L{ftpproxy.tls.devcerts}) in
real handshakes: in memory through Twisted's TLS layer, and over loopback
with Python's C{ssl} module (what C{ftplib.FTP_TLS} uses) as the client.
"""

from __future__ import annotations

import socket
import ssl
import ftplib
import gc
import io
import os
import re
import runpy
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
import pytest
import pytest_twisted
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from ftpproxy.tls.contexts import (
    BackendCertificateError,
    BackendTLS,
    BackendTLSSettings,
    ServerTLS,
    TLSSettings,
    TLSSettingsError,
    makeBackendTLS,
    makeServerTLS,
    sessionReused,
)
from tests.support import ftpsbackends
from tests.support.ftpsbackends import FTPSBackend

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
IO_TIMEOUT = 10.0


@pytest.fixture
def reactor() -> Any:
    """
    The reactor pytest-twisted runs, for the tests that need real sockets.
    """
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def otherCerts(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    """
    A second, unrelated CA and its certificates.
    """
    return makeCertificates(tmp_path_factory.mktemp("other-certs"))


def serverTLS(certs: CertificatePaths, **settings: Any) -> ServerTLS:
    return makeServerTLS(TLSSettings(certificate=certs.serverChainPem, **settings))


def backendTLS(
    certs: CertificatePaths, hostname: str = HOST, **settings: Any
) -> BackendTLS:
    settings.setdefault("caFile", certs.ca)
    return makeBackendTLS(BackendTLSSettings(hostname=hostname, **settings))


# In-memory handshakes ------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Remembers what happened to one end of a TLS connection.
    """

    handshakeDone = False
    lostReason = None

    def __init__(self) -> None:
        self.received = b""

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lostReason = reason


@attrs.define
class Handshake:
    """
    Both ends of one in-memory TLS connection, after pumping it dry.
    """

    server: Any  # TLSMemoryBIOProtocol
    client: Any
    serverApp: Recorder
    clientApp: Recorder
    pump: iosim.IOPump

    @property
    def succeeded(self) -> bool:
        return self.serverApp.handshakeDone and self.clientApp.handshakeDone

    def clientError(self) -> str:
        assert self.clientApp.lostReason is not None, "client connection still up"
        return str(self.clientApp.lostReason.value)

    def close(self) -> None:
        if self.clientApp.lostReason is None:
            self.client.loseConnection()
            self.pump.flush()


def handshake(server: Any, client: Any) -> Handshake:
    """
    Connect a TLS server and client in memory and run the handshake (and
    whatever follows it, such as TLS 1.3 session tickets) to completion.
    """
    clock = Clock()
    serverSide = TLSMemoryBIOFactory(
        server, False, Factory.forProtocol(Recorder), clock
    ).buildProtocol(None)
    clientSide = TLSMemoryBIOFactory(
        client, True, Factory.forProtocol(Recorder), clock
    ).buildProtocol(None)
    serverApp, clientApp = serverSide.wrappedProtocol, clientSide.wrappedProtocol
    pump = iosim.connect(
        serverSide,
        iosim.makeFakeServer(serverSide),
        clientSide,
        iosim.makeFakeClient(clientSide),
        clock=clock,
    )
    return Handshake(serverSide, clientSide, serverApp, clientApp, pump)


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class RawClient:
    """
    A client built directly on a pyOpenSSL context, for what L{BackendTLS}
    deliberately does not offer (no tickets, a chosen session).
    """

    context: SSL.Context
    session: Optional[SSL.Session] = None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.session is not None:
            connection.set_session(self.session)
        return connection


def rawClientContext(
    minimum: int = SSL.TLS1_VERSION, maximum: int = 0, options: int = 0
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.set_min_proto_version(minimum)
    context.set_max_proto_version(maximum)
    if options:
        context.set_options(options)
    context.set_verify(SSL.VERIFY_NONE)
    return context


# Settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(minimumVersion="1.4"), "minimum TLS version must be one of"),
        (dict(maximumVersion="TLSv1.3"), "maximum TLS version must be one of"),
        (dict(minimumVersion="1.3", maximumVersion="1.2"), "below the minimum"),
        (dict(minimumVersion="1.1"), "@SECLEVEL=0"),
        (dict(ciphers="NO-SUCH-CIPHER"), "selects nothing"),
        (dict(ciphersuites="TLS_NO_SUCH"), "selects nothing"),
        (dict(clientCertificate="maybe"), "one of 'none', 'request', 'require'"),
        (dict(clientCertificate="require"), "needs a CA file"),
        (dict(sessionTimeout=0), "positive number of seconds"),
    ],
)
def test_settingsRefused(
    certs: CertificatePaths, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(TLSSettingsError, match=message):
        TLSSettings(certificate=certs.serverChainPem, **settings)


def test_settingsDefaults(certs: CertificatePaths) -> None:
    settings = TLSSettings(certificate=str(certs.serverChainPem))
    assert settings.certificate == certs.serverChainPem
    assert settings.key is None
    assert (settings.minimumVersion, settings.maximumVersion) == ("1.2", None)
    assert settings.clientCertificate == "none"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(hostname=""), "DNS name or IP address"),
        (dict(hostname="x", verify="no"), "verify must be true or false"),
        (dict(hostname="x", key="k.pem"), "needs a certificate"),
        (dict(hostname="x", minimumVersion="1.0"), "@SECLEVEL=0"),
    ],
)
def test_backendSettingsRefused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(TLSSettingsError, match=message):
        BackendTLSSettings(**settings)


def test_loadErrorsNameTheFile(
    certs: CertificatePaths, otherCerts: CertificatePaths, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSSettingsError, match="cannot read certificate file.*missing.pem"):
        makeServerTLS(TLSSettings(certificate=missing))
    with pytest.raises(TLSSettingsError, match="no PEM private key.*give the key file"):
        makeServerTLS(TLSSettings(certificate=certs.serverCert))
    with pytest.raises(TLSSettingsError, match="no PEM certificate"):
        makeServerTLS(TLSSettings(certificate=certs.serverKey))
    with pytest.raises(TLSSettingsError, match="does not belong to the certificate"):
        makeServerTLS(TLSSettings(certificate=certs.serverCert, key=otherCerts.serverKey))
    with pytest.raises(TLSSettingsError, match="backend CA file"):
        makeBackendTLS(BackendTLSSettings(hostname=HOST, caFile=missing))


def test_separateKeyFile(certs: CertificatePaths) -> None:
    """
    Certificate and key in two files work as well as the combined PEM.
    """
    server = makeServerTLS(TLSSettings(certificate=certs.serverCert, key=certs.serverKey))
    connection = handshake(server, backendTLS(certs))
    assert connection.succeeded
    connection.close()


def test_creatorsShareOneContext(certs: CertificatePaths) -> None:
    server = serverTLS(certs)
    assert IOpenSSLServerConnectionCreator.providedBy(server)
    assert server.getContext() is server.getContext() is server.context
    first = server.serverConnectionForTLS(None)
    second = server.serverConnectionForTLS(None)
    assert first is not second
    assert first.get_context() is second.get_context() is server.context


# Session resumption ---------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_dataConnectionResumesControlSession(
    certs: CertificatePaths, version: str
) -> None:
    """
    A second connection that offers the first one's session resumes it (TLS
    1.2: ticket, TLS 1.3: ticket/PSK), and L{sessionReused} tells the
    resumed connection from the full handshake on both ends.
    """
    server = serverTLS(certs)
    backend = backendTLS(certs, maximumVersion=version)
    control = handshake(server, backend)
    assert control.succeeded
    assert control.client.getHandle().get_protocol_version_name() == f"TLSv{version}"
    assert not sessionReused(control.server)
    assert not sessionReused(control.client)

    data = handshake(server.forData(), backend.resuming(control.client))
    assert data.succeeded
    assert sessionReused(data.server)
    assert sessionReused(data.client.getHandle())

    fresh = handshake(server, backend)
    assert fresh.succeeded
    assert not sessionReused(fresh.server)
    for connection in (control, data, fresh):
        connection.close()


def test_tls12SessionIdResumption(certs: CertificatePaths) -> None:
    """
    Without tickets, TLS 1.2 resumes through the server's session cache
    (session ids).
    """
    server = serverTLS(certs)
    context = rawClientContext(maximum=SSL.TLS1_2_VERSION, options=SSL.OP_NO_TICKET)
    control = handshake(server, RawClient(context))
    assert control.succeeded
    session = control.client.getHandle().get_session()
    assert not sessionReused(control.server)

    data = handshake(server.forData(), RawClient(context, session))
    assert data.succeeded
    assert sessionReused(data.server)
    control.close()
    data.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("chained", [False, True], ids=["controlSession", "newestTicket"])
def test_manyDataConnectionsKeepResuming(
    certs: CertificatePaths, version: str, chained: bool
) -> None:
    """
    A long FTP session opens many data connections.  They all resume, both
    when each offers the control connection's session again (ftplib, curl,
    our backend side) and when each offers the session the previous data
    connection ended with.  Tickets are stateless, so presenting one again
    works: OpenSSL's two tickets at login do not run out.
    """
    server = serverTLS(certs)
    backend = backendTLS(certs, maximumVersion=version)
    control = handshake(server, backend)
    assert control.succeeded
    previous = control.client.getHandle()
    reused = []
    for _ in range(8):
        data = handshake(
            server.forData(), backend.resuming(previous if chained else control.client)
        )
        reused.append((data.succeeded, sessionReused(data.server)))
        previous = data.client.getHandle()
        # the data connection ends the way the proxy ends it: close_notify
        data.server.loseConnection()
        data.pump.flush()
    assert reused == [(True, True)] * 8
    control.close()


def test_sessionOfAnotherServerIsNotResumed(certs: CertificatePaths) -> None:
    """
    Sessions belong to one listener's context: another context does a full
    handshake, and sessionReused says so.
    """
    backend = backendTLS(certs)
    control = handshake(serverTLS(certs), backend)
    elsewhere = handshake(serverTLS(certs), backend.resuming(control.client))
    assert elsewhere.succeeded
    assert not sessionReused(elsewhere.server)
    assert not sessionReused(elsewhere.client)
    control.close()
    elsewhere.close()


def test_closeNotifySent(certs: CertificatePaths) -> None:
    """
    loseConnection() on the server side ends the TLS session cleanly: the
    client receives close_notify, not a bare TCP close.
    """
    connection = handshake(serverTLS(certs), backendTLS(certs))
    clientHandle = connection.client.getHandle()
    connection.server.write(b"payload")
    connection.server.loseConnection()
    connection.pump.flush()
    assert connection.clientApp.received == b"payload"
    assert connection.clientApp.lostReason.check(ConnectionDone)
    assert clientHandle.get_shutdown() & SSL.RECEIVED_SHUTDOWN


def forgetConnection(connection: Handshake) -> None:
    """
    Drop every reference to a finished connection so that OpenSSL frees its
    C{SSL*} now, as it would in a long-running proxy.
    """
    connection.server = connection.client = connection.pump = None
    gc.collect()


def test_serverKeepsSessionAfterUncleanDataClose(certs: CertificatePaths) -> None:
    """
    A data connection whose client closes TCP without close_notify (curl
    after an upload) does not cost the control connection its session:
    TLS 1.2 session-id resumption keeps working afterwards.
    """
    server = serverTLS(certs)
    context = rawClientContext(maximum=SSL.TLS1_2_VERSION, options=SSL.OP_NO_TICKET)
    control = handshake(server, RawClient(context))
    session = control.client.getHandle().get_session()
    for _ in range(3):
        data = handshake(server.forData(), RawClient(context, session))
        assert data.succeeded and sessionReused(data.server)
        # only the server side is under test here
        data.client.getHandle().set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        data.client.transport.loseConnection()
        data.pump.flush()
        assert data.serverApp.lostReason is not None
        forgetConnection(data)
    control.close()


@pytest.mark.parametrize("tickets", [True, False], ids=["ticket", "sessionId"])
def test_backendKeepsSessionAfterUncleanDataClose(
    certs: CertificatePaths, tickets: bool
) -> None:
    """
    The same on the backend side: a backend data connection that ends
    without close_notify leaves the control session resumable (otherwise
    the client marks the shared session object not resumable, and vsftpd
    answers the next transfer with 522 and hangs up).
    """
    server = serverTLS(certs)
    backend = backendTLS(certs, maximumVersion="1.2")
    if not tickets:
        server = makeServerTLS(
            TLSSettings(certificate=certs.serverChainPem, maximumVersion="1.2")
        )
    control = handshake(server, backend)
    for _ in range(3):
        data = handshake(server.forData(), backend.resuming(control.client))
        assert data.succeeded and sessionReused(data.server)
        data.server.getHandle().set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        data.server.transport.loseConnection()
        data.pump.flush()
        assert data.clientApp.lostReason is not None
        forgetConnection(data)
    control.close()


# Versions and ciphers ----------------------------------------------------


@pytest.mark.parametrize(
    "serverSettings, clientRange, accepted, negotiated",
    [
        ({}, (SSL.TLS1_1_VERSION, SSL.TLS1_1_VERSION), False, None),
        ({}, (SSL.TLS1_VERSION, SSL.TLS1_VERSION), False, None),
        ({}, (SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION), True, "TLSv1.2"),
        ({}, (SSL.TLS1_VERSION, 0), True, "TLSv1.3"),
        ({"maximumVersion": "1.2"}, (SSL.TLS1_3_VERSION, 0), False, None),
        ({"maximumVersion": "1.2"}, (SSL.TLS1_VERSION, 0), True, "TLSv1.2"),
        ({"minimumVersion": "1.3"}, (SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION), False, None),
        (
            {"minimumVersion": "1.1", "ciphers": "DEFAULT:@SECLEVEL=0"},
            (SSL.TLS1_1_VERSION, SSL.TLS1_1_VERSION),
            True,
            "TLSv1.1",
        ),
    ],
)
def test_versionLimits(
    certs: CertificatePaths,
    serverSettings: dict[str, str],
    clientRange: tuple[int, int],
    accepted: bool,
    negotiated: Optional[str],
) -> None:
    """
    TLS 1.2 and 1.3 by default; an old-only client is refused, and the
    configured range is what is negotiated.
    """
    server = serverTLS(certs, **serverSettings)
    connection = handshake(server, RawClient(rawClientContext(*clientRange)))
    assert connection.succeeded is accepted
    if accepted:
        assert connection.server.getHandle().get_protocol_version_name() == negotiated
        connection.close()
    else:
        assert "protocol version" in connection.clientError()


def test_cipherList(certs: CertificatePaths) -> None:
    """
    The cipher list decides TLS 1.2 ciphers; a client with none in common is
    refused.
    """
    cipher = "ECDHE-RSA-AES128-GCM-SHA256"
    server = serverTLS(certs, ciphers=cipher)
    connection = handshake(server, backendTLS(certs, maximumVersion="1.2"))
    assert connection.server.getHandle().get_cipher_name() == cipher
    connection.close()

    refused = handshake(
        server, backendTLS(certs, maximumVersion="1.2", ciphers="ECDHE-RSA-AES256-GCM-SHA384")
    )
    assert not refused.succeeded


def test_tls13Ciphersuites(certs: CertificatePaths) -> None:
    suite = "TLS_CHACHA20_POLY1305_SHA256"
    connection = handshake(serverTLS(certs, ciphersuites=suite), backendTLS(certs))
    assert connection.server.getHandle().get_cipher_name() == suite
    connection.close()


# Client certificates -------------------------------------------------------


def clientWith(certs: CertificatePaths, owner: Optional[CertificatePaths]) -> BackendTLS:
    """
    A client that presents C{owner}'s client certificate (or none).
    """
    if owner is None:
        return backendTLS(certs)
    return backendTLS(certs, certificate=owner.clientCert, key=owner.clientKey)


def peerName(connection: Handshake) -> Optional[str]:
    peer = connection.server.getHandle().get_peer_certificate(as_cryptography=True)
    if peer is None:
        return None
    return peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.mark.parametrize(
    "mode, presented, accepted",
    [
        ("none", "own", True),
        ("request", None, True),
        ("request", "own", True),
        ("request", "other", False),
        ("require", None, False),
        ("require", "own", True),
        ("require", "other", False),
    ],
)
def test_clientCertificate(
    certs: CertificatePaths,
    otherCerts: CertificatePaths,
    mode: str,
    presented: Optional[str],
    accepted: bool,
) -> None:
    server = serverTLS(certs, clientCertificate=mode, clientCA=certs.ca)
    owner = {None: None, "own": certs, "other": otherCerts}[presented]
    client = clientWith(certs, owner)
    connection = handshake(server, client)
    # With TLS 1.3 the client finishes its side before the server has judged
    # its certificate; what counts is whether the server accepted it.
    assert connection.serverApp.handshakeDone is accepted
    if not accepted:
        assert connection.serverApp.lostReason is not None
        return
    expected = "ftpproxy test client" if presented == "own" and mode != "none" else None
    assert peerName(connection) == expected
    if mode == "require":
        # resumption keeps working, and keeps the verified client identity
        data = handshake(server, client.resuming(connection.client))
        assert data.succeeded and sessionReused(data.server)
        assert peerName(data) == "ftpproxy test client"
        data.close()
    connection.close()


# Backend certificate verification -----------------------------------------


@pytest.mark.parametrize("hostname", ["127.0.0.1", "127.0.0.3", "::1", "localhost"])
def test_backendVerified(certs: CertificatePaths, hostname: str) -> None:
    connection = handshake(serverTLS(certs), backendTLS(certs, hostname))
    assert connection.succeeded
    connection.close()


@pytest.mark.parametrize(
    "hostname, useOtherCA, message",
    [
        ("127.0.0.1", True, "refused: self-signed certificate in certificate chain"),
        ("127.0.0.9", False, "not valid for that name; it is for localhost, 127.0.0.1"),
        ("ftp.example.com", False, "not valid for that name"),
    ],
)
def test_backendRefused(
    certs: CertificatePaths,
    otherCerts: CertificatePaths,
    hostname: str,
    useOtherCA: bool,
    message: str,
) -> None:
    """
    A backend whose certificate is from an unknown CA or for another name is
    refused during the handshake, with a reason that says which.
    """
    client = backendTLS(certs, hostname, caFile=(otherCerts if useOtherCA else certs).ca)
    connection = handshake(serverTLS(certs), client)
    assert not connection.clientApp.handshakeDone
    assert connection.clientApp.lostReason.check(BackendCertificateError)
    assert message in connection.clientError()
    assert not connection.serverApp.handshakeDone


def test_backendSystemStoreRefusesDevelopmentCA(certs: CertificatePaths) -> None:
    client = makeBackendTLS(BackendTLSSettings(hostname="localhost"))
    connection = handshake(serverTLS(certs), client)
    assert connection.clientApp.lostReason.check(BackendCertificateError)


def test_backendVerifyOff(certs: CertificatePaths, otherCerts: CertificatePaths) -> None:
    """
    verify=False connects to a wrong name from an unknown CA, and still
    resumes sessions.
    """
    client = makeBackendTLS(
        BackendTLSSettings(hostname="ftp.example.com", verify=False, caFile=otherCerts.ca)
    )
    server = serverTLS(certs)
    control = handshake(server, client)
    assert control.succeeded
    data = handshake(server, client.resuming(control.client))
    assert data.succeeded and sessionReused(data.server)
    assert data.client.getHandle().get_servername() == b"ftp.example.com"
    control.close()
    data.close()


def test_backendSendsSNIForNamesOnly(certs: CertificatePaths) -> None:
    named = handshake(serverTLS(certs), backendTLS(certs, "localhost"))
    assert named.server.getHandle().get_servername() == b"localhost"
    numeric = handshake(serverTLS(certs), backendTLS(certs, "127.0.0.1"))
    assert numeric.server.getHandle().get_servername() is None
    named.close()
    numeric.close()


# Over loopback: explicit AUTH TLS, data connections, Python's ssl ----------


class ControlServer(LineReceiver):
    """
    Just enough of an FTPS control channel: 220, AUTH TLS -> 234 and
    startTLS, PING -> whether this connection's handshake resumed, QUIT.
    """

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost = defer.Deferred()
        self.sendLine(b"220 ready")

    def lineReceived(self, line: bytes) -> None:
        if line == b"AUTH TLS":
            self.sendLine(b"234 go ahead")
            self.transport.startTLS(self.factory.tls)
        elif line == b"PING":
            self.sendLine(b"200 reused=%d" % sessionReused(self.transport))
        elif line == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@implementer(IHandshakeListener)
class DataServer(Protocol):
    """
    A PROT P data connection: says whether it resumed, then closes with
    close_notify.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost = defer.Deferred()

    def handshakeCompleted(self) -> None:
        reused = sessionReused(self.transport)
        self.factory.reused.append(reused)
        self.transport.write(b"reused=%d\n" % reused)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@attrs.define
class Listeners:
    controlPort: int
    dataPort: int
    dataFactory: Factory
    controlFactory: Factory
    ports: list


def listen(
    reactor: Any,
    tls: ServerTLS,
    dataProtocol: type = None,
    dataCreator: Any = None,
) -> Listeners:
    """
    A control listener (explicit AUTH TLS) and a data listener (TLS from the
    first byte, with C{tls.forData()} unless told otherwise) sharing C{tls}.
    """
    controlFactory = Factory.forProtocol(ControlServer)
    controlFactory.tls = tls
    controlFactory.connections = []
    dataFactory = Factory.forProtocol(dataProtocol or DataServer)
    dataFactory.connections = []
    dataFactory.reused = []
    control = reactor.listenTCP(0, controlFactory, interface=HOST)
    creator = tls.forData() if dataCreator is None else dataCreator
    data = reactor.listenTCP(0, TLSMemoryBIOFactory(creator, False, dataFactory), interface=HOST)
    return Listeners(
        control.getHost().port, data.getHost().port, dataFactory, controlFactory, [control, data]
    )


@defer.inlineCallbacks
def shutDown(listeners: Listeners):
    """
    Stop listening and wait until every accepted connection is gone,
    aborting those a failed test left open.
    """
    for port in listeners.ports:
        yield port.stopListening()
    connections = listeners.controlFactory.connections + listeners.dataFactory.connections
    for connection in connections:
        if not connection.lost.called:
            connection.transport.abortConnection()
    yield defer.gatherResults([c.lost for c in connections])


def within(reactor: Any, d: defer.Deferred) -> defer.Deferred:
    """
    C{d}, failing after L{IO_TIMEOUT} instead of hanging the test run.
    """
    return d.addTimeout(IO_TIMEOUT, reactor)


def readLine(sock: Any) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise EOFError(f"connection closed after {line!r}")
        line += byte
    return line[:-2]


def readAll(sock: Any) -> bytes:
    received = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return received
        received += chunk


def pythonClientSession(
    listeners: Listeners,
    context: ssl.SSLContext,
    dataConnections: int,
    reuse: bool,
) -> dict[str, Any]:
    """
    In a thread: what ftplib.FTP_TLS does (AUTH TLS, then PROT P data
    connections), with the control session offered on data connections when
    C{reuse}.
    """
    results: dict[str, Any] = {"data": []}
    with socket.create_connection((HOST, listeners.controlPort), IO_TIMEOUT) as raw:
        assert readLine(raw).startswith(b"220")
        raw.sendall(b"AUTH TLS\r\n")
        assert readLine(raw).startswith(b"234")
        control = context.wrap_socket(raw, server_hostname=HOST)
        control.sendall(b"PING\r\n")
        # reading the reply also reads TLS 1.3's session tickets
        results["control"] = readLine(control)
        results["version"] = control.version()
        for _ in range(dataConnections):
            sock = socket.create_connection((HOST, listeners.dataPort), IO_TIMEOUT)
            data = context.wrap_socket(
                sock,
                server_hostname=HOST,
                session=control.session if reuse else None,
            )
            with data:
                results["data"].append((readAll(data), data.session_reused))
        control.sendall(b"QUIT\r\n")
        assert readLine(control).startswith(b"221")
        control.close()
    return results


@pytest.mark.parametrize(
    "version, tickets",
    [("1.2", True), ("1.2", False), ("1.3", True)],
    ids=["tls1.2-ticket", "tls1.2-session-id", "tls1.3"],
)
@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "noReuse"])
@pytest_twisted.inlineCallbacks
def test_pythonSSLClientResumes(
    reactor: Any, certs: CertificatePaths, version: str, tickets: bool, reuse: bool
):
    """
    Python's ssl module (ftplib) as the client: explicit AUTH TLS through
    startTLS, then PROT P data connections on a TLSMemoryBIOFactory listener
    sharing the same ServerTLS.  Offering the control session resumes on
    every data connection (session_reused on the client, sessionReused on
    the server); not offering it never does.
    """
    listeners = listen(reactor, serverTLS(certs))
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.maximum_version = ssl.TLSVersion[f"TLSv1_{version[-1]}"]
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    try:
        results = yield threads.deferToThread(
            pythonClientSession, listeners, context, 3, reuse
        )
    finally:
        yield shutDown(listeners)
    assert results["version"] == f"TLSv{version}"
    assert results["control"] == b"200 reused=0"
    line = b"reused=%d\n" % reuse
    assert results["data"] == [(line, reuse)] * 3
    assert listeners.dataFactory.reused == [reuse] * 3


@implementer(IHandshakeListener)
class UploadSink(Protocol):
    """
    A data connection receiving an upload, slower than the client: it reads
    nothing until the test calls L{resume}, by which time the client has
    closed its end.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost = defer.Deferred()
        self.received = b""
        self.reason = None

    def handshakeCompleted(self) -> None:
        self.factory.reused.append(sessionReused(self.transport))
        self.transport.pauseProducing()

    def resume(self) -> None:
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.lost.callback(None)


def uploadLikeOldCurl(
    listeners: Listeners, context: ssl.SSLContext, payload: bytes
) -> bool:
    """
    In a thread: AUTH TLS, then a data connection resuming the control
    session that sends C{payload} and closes without reading anything and
    without close_notify, as curl 7.88 does after an upload.
    """
    with socket.create_connection((HOST, listeners.controlPort), IO_TIMEOUT) as raw:
        assert readLine(raw).startswith(b"220")
        raw.sendall(b"AUTH TLS\r\n")
        assert readLine(raw).startswith(b"234")
        control = context.wrap_socket(raw, server_hostname=HOST)
        control.sendall(b"PING\r\n")
        readLine(control)
        sock = socket.create_connection((HOST, listeners.dataPort), IO_TIMEOUT)
        data = context.wrap_socket(sock, server_hostname=HOST, session=control.session)
        reused = data.session_reused
        data.sendall(payload)
        data.close()
        control.sendall(b"QUIT\r\n")
        readLine(control)
        control.close()
    return reused


@pytest.mark.parametrize("forData", [True, False], ids=["forData", "controlCreator"])
@pytest_twisted.inlineCallbacks
def test_uploadSurvivesClientCloseWithoutReading(
    reactor: Any, certs: CertificatePaths, forData: bool
):
    """
    With TLS 1.3 OpenSSL sends a session ticket after every handshake.  On
    a data connection the uploading client never reads it, so its close()
    becomes a TCP reset and the end of the upload is lost.  Data
    connections made by L{ServerTLS.forData} send no ticket, so the whole
    upload arrives; the control creator's would not.
    """
    tls = serverTLS(certs)
    listeners = listen(
        reactor, tls, dataProtocol=UploadSink, dataCreator=tls.forData() if forData else tls
    )
    context = ssl.create_default_context(cafile=str(certs.ca))
    payload = bytes(range(256)) * 512
    try:
        reused = yield threads.deferToThread(uploadLikeOldCurl, listeners, context, payload)
        (sink,) = listeners.dataFactory.connections
        sink.resume()
        yield within(reactor, sink.lost)
    finally:
        yield shutDown(listeners)
    assert reused and listeners.dataFactory.reused == [True]
    if forData:
        assert sink.received == payload
        assert sink.reason.check(ConnectionDone)
    else:
        assert sink.received != payload


class ControlClient(LineReceiver):
    """
    The proxy's side of an explicit FTPS backend: AUTH TLS, startTLS with
    L{BackendTLS} after 234, PING.
    """

    delimiter = b"\r\n"

    def __init__(self, tls: BackendTLS) -> None:
        self.tls = tls
        self.replies: defer.DeferredQueue = defer.DeferredQueue()
        self.lost = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"234"):
            self.transport.startTLS(self.tls)
        self.replies.put(line)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


class DataClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(reason.type)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest_twisted.inlineCallbacks
def test_twistedBackendSideResumes(reactor: Any, certs: CertificatePaths, version: str):
    """
    The proxy as client of an FTPS backend: transport.startTLS(BackendTLS)
    on the control connection, wrapClientTLS(backend.resuming(control)) for
    data connections, which the server sees resuming.
    """
    listeners = listen(reactor, serverTLS(certs))
    backend = backendTLS(certs, maximumVersion=version)
    try:
        control = yield connectProtocol(
            TCP4ClientEndpoint(reactor, HOST, listeners.controlPort), ControlClient(backend)
        )
        assert (yield within(reactor, control.replies.get())).startswith(b"220")
        control.sendLine(b"AUTH TLS")
        assert (yield within(reactor, control.replies.get())).startswith(b"234")
        control.sendLine(b"PING")
        assert (yield within(reactor, control.replies.get())) == b"200 reused=0"

        received = []
        for _ in range(3):
            endpoint = wrapClientTLS(
                backend.resuming(control.transport),
                TCP4ClientEndpoint(reactor, HOST, listeners.dataPort),
            )
            data = yield within(reactor, connectProtocol(endpoint, DataClient()))
            reason = yield within(reactor, data.done)
            received.append((data.received, reason))
        control.sendLine(b"QUIT")
        assert (yield within(reactor, control.replies.get())).startswith(b"221")
        yield within(reactor, control.lost)
    finally:
        yield shutDown(listeners)
    assert received == [(b"reused=1\n", ConnectionDone)] * 3
    assert listeners.dataFactory.reused == [True] * 3


# The certificate script ---------------------------------------------------


def test_makeCertsScript(tmp_path: Path) -> None:
    script = runpy.run_path(str(REPO / "certs" / "make-certs.py"), run_name="make_certs")
    assert script["main"]([str(tmp_path), "--name", "ftp.test"]) == 0
    for name in ("ca.pem", "server.pem", "server-key.pem", "server-chain-key.pem",
                 "client.pem", "client-key.pem"):
        assert (tmp_path / name).exists()
    assert (tmp_path / "server-key.pem").stat().st_mode & 0o077 == 0
    paths = CertificatePaths(
        ca=tmp_path / "ca.pem",
        caKey=tmp_path / "ca-key.pem",
        serverCert=tmp_path / "server.pem",
        serverKey=tmp_path / "server-key.pem",
        serverChainPem=tmp_path / "server-chain-key.pem",
        clientCert=tmp_path / "client.pem",
        clientKey=tmp_path / "client-key.pem",
    )
    connection = handshake(serverTLS(paths), backendTLS(paths, "ftp.test"))
    assert connection.succeeded
    connection.close()


def test_serverCertificateNames(certs: CertificatePaths) -> None:
    """
    The development certificate is valid for every loopback "host" the
    tests use.
    """
    for name in ("localhost", "127.0.0.1", "::1", "127.0.0.2", "127.0.0.3"):
        connection = handshake(serverTLS(certs), backendTLS(certs, name))
        assert connection.succeeded, name
        connection.close()


# Real FTPS backends (vsftpd from Debian's package) -------------------------

FTPS_HOST = "127.0.0.2"


@pytest.fixture
def startVsftpd(tmp_path: Path, certs: CertificatePaths):
    """
    C{startVsftpd(**options)}: a vsftpd FTPS backend on 127.0.0.2 with a
    file C{hello.bin} in its root; all are stopped at teardown.
    """
    started: list[FTPSBackend] = []

    def start(**options: Any) -> FTPSBackend:
        try:
            backend = ftpsbackends.startVsftpd(
                tmp_path, FTPS_HOST, certs, name=f"vsftpd-{len(started)}", **options
            )
        except ftpsbackends.PackageUnavailable as e:
            if os.environ.get("CI"):
                raise
            pytest.skip(str(e))
        started.append(backend)
        (backend.root / "hello.bin").write_bytes(HELLO)
        return backend

    yield start
    for backend in started:
        backend.stop()


HELLO = bytes(range(256)) * 1024 + b"\r\n\n\r end"


def curl(backend: FTPSBackend, certs: CertificatePaths, *arguments: str) -> bytes:
    command = ["curl", "-sS", "--fail", "--max-time", "30", "--cacert", str(certs.ca)]
    if not backend.implicit:
        command.append("--ssl-reqd")
    result = subprocess.run(command + list(arguments), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace") + backend.log()
    return result.stdout


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_vsftpdWithCurl(
    startVsftpd: Callable[..., FTPSBackend],
    certs: CertificatePaths,
    tmp_path: Path,
    implicit: bool,
) -> None:
    """
    curl lists, downloads and uploads (PROT P) through vsftpd requiring
    session reuse; every data connection resumed.

    The upload is limited to TLS 1.2: vsftpd sends a TLS 1.3 session ticket
    on every data connection, curl 7.88 never reads it, and its close then
    resets the connection and loses the end of the upload ("426 Failure
    reading network stream", curl issue 6149, fixed in curl 8.9).  The
    proxy does not send tickets on data connections for that reason.
    """
    backend = startVsftpd(implicit=implicit)
    listing = curl(backend, certs, backend.url())
    assert b"hello.bin" in listing and b"upload" in listing
    assert curl(backend, certs, backend.url("hello.bin")) == HELLO
    upload = tmp_path / "up.bin"
    upload.write_bytes(HELLO[::-1])
    curl(
        backend,
        certs,
        "--tls-max",
        "1.2",
        "-T",
        str(upload),
        backend.url(backend.uploadPath("up.bin")),
    )
    assert (backend.uploadDir / "up.bin").read_bytes() == HELLO[::-1]
    # three sessions, one control and one data handshake each
    assert backend.handshakes() == [False, True] * 3


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """
    ftplib.FTP_TLS offering the control session on data connections, which
    the stock class does not.
    """

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        return conn, size


def ftplibSession(
    backend: FTPSBackend, certs: CertificatePaths, cls: type, version: str = "1.3"
) -> ftplib.FTP_TLS:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.maximum_version = ssl.TLSVersion[f"TLSv1_{version[-1]}"]
    ftp = cls(context=context, timeout=IO_TIMEOUT)
    ftp.connect(backend.host, backend.port)
    ftp.auth()
    ftp.login(backend.user, backend.password)
    ftp.prot_p()
    return ftp


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_vsftpdRefusesDataWithoutSessionReuse(
    startVsftpd: Callable[..., FTPSBackend], certs: CertificatePaths, version: str
) -> None:
    """
    Stock ftplib does not resume the session on data connections: vsftpd
    with require_ssl_reuse refuses with 522 (and then drops the control
    connection).  Offering the session makes listing, download and upload
    work.
    """
    backend = startVsftpd()
    plain = ftplibSession(backend, certs, ftplib.FTP_TLS, version)
    with pytest.raises(ftplib.error_perm, match="522 SSL connection failed: session reuse required"):
        plain.nlst()
    plain.close()

    ftp = ftplibSession(backend, certs, ReusingFTP_TLS, version)
    assert ftp.sock.version() == f"TLSv{version}"
    assert set(ftp.nlst()) == {"hello.bin", "upload"}
    received = io.BytesIO()
    ftp.retrbinary("RETR hello.bin", received.write)
    assert received.getvalue() == HELLO
    ftp.storbinary(f"STOR {backend.uploadPath('f.bin')}", io.BytesIO(HELLO))
    assert (backend.uploadDir / "f.bin").read_bytes() == HELLO
    ftp.quit()
    assert backend.handshakes() == [False, False] + [False, True, True, True]


def test_vsftpdWithoutReuseRequirement(
    startVsftpd: Callable[..., FTPSBackend], certs: CertificatePaths
) -> None:
    """
    The require_ssl_reuse=NO variant accepts stock ftplib.
    """
    backend = startVsftpd(requireSessionReuse=False)
    ftp = ftplibSession(backend, certs, ftplib.FTP_TLS)
    assert set(ftp.nlst()) == {"hello.bin", "upload"}
    ftp.quit()
    assert backend.handshakes() == [False, False]


class FTPControl(LineReceiver):
    """
    The proxy's side of an FTPS backend's control connection, reduced to
    sending a command and waiting for its final reply.
    """

    delimiter = b"\r\n"

    def __init__(self, tls: BackendTLS) -> None:
        self.tls = tls
        self.replies: defer.DeferredQueue = defer.DeferredQueue()
        self.lost = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
            if line.startswith(b"234"):
                # before any other byte is read: what follows is TLS
                self.transport.startTLS(self.tls)
            self.replies.put(line.decode())

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


class FTPData(Protocol):
    def __init__(self, payload: bytes = b"") -> None:
        self.payload = payload
        self.received = b""
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        if self.payload:
            self.transport.write(self.payload)
            # Twisted sends close_notify; vsftpd's strict_ssl_read_eof
            # refuses an upload without it.
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(reason.type)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest_twisted.inlineCallbacks
def test_backendTLSAgainstVsftpd(
    reactor: Any,
    startVsftpd: Callable[..., FTPSBackend],
    certs: CertificatePaths,
    version: str,
):
    """
    L{BackendTLS} is what the proxy uses towards FTPS backends: startTLS
    after 234, data connections through backend.resuming(control), and
    vsftpd (require_ssl_reuse, strict_ssl_read_eof) accepts downloads and
    uploads, several in a row.
    """
    backend = yield threads.deferToThread(startVsftpd, strictCloseNotify=True)
    tls = backendTLS(certs, backend.host, maximumVersion=version)
    control = yield within(
        reactor,
        connectProtocol(TCP4ClientEndpoint(reactor, backend.host, backend.port), FTPControl(tls)),
    )

    @defer.inlineCallbacks
    def command(line: str, expected: str):
        if line:
            control.sendLine(line.encode())
        reply = yield within(reactor, control.replies.get())
        assert reply.startswith(expected), (line, reply)
        return reply

    @defer.inlineCallbacks
    def transfer(line: str, payload: bytes = b""):
        reply = yield command("PASV", "227")
        numbers = [int(n) for n in re.findall(r"\d+", reply.split("(")[1])]
        endpoint = wrapClientTLS(
            tls.resuming(control.transport),
            TCP4ClientEndpoint(reactor, backend.host, numbers[4] * 256 + numbers[5]),
        )
        data = yield within(reactor, connectProtocol(endpoint, FTPData(payload)))
        yield command(line, "150")
        reason = yield within(reactor, data.done)
        yield command("", "226")
        assert reason is ConnectionDone
        return data.received

    try:
        yield command("", "220")
        yield command("AUTH TLS", "234")
        yield command(f"USER {backend.user}", "331")
        yield command(f"PASS {backend.password}", "230")
        yield command("PBSZ 0", "200")
        yield command("PROT P", "200")
        yield command("TYPE I", "200")
        for n in range(3):
            assert (yield transfer("RETR hello.bin")) == HELLO
            yield transfer(f"STOR {backend.uploadPath(f'{n}.bin')}", HELLO[n:])
        yield command("QUIT", "221")
        yield within(reactor, control.lost)
    finally:
        if not control.lost.called:
            control.transport.abortConnection()
    assert control.transport.getHandle().get_protocol_version_name() == f"TLSv{version}"
    for n in range(3):
        assert (backend.uploadDir / f"{n}.bin").read_bytes() == HELLO[n:]
    assert backend.handshakes() == [False] + [True] * 6
