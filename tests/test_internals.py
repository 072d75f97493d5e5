"""
Tests for L{ftpproxy.internals}: each function against the real thing (TLS
handshakes in memory with pyOpenSSL, TCP connections on 127.0.0.1 through
the running reactor, a real listening service), so that an upgrade of
Twisted or pyOpenSSL that renames or changes a private name fails here,
with a message naming it; and a scan of the package showing that no other
module uses those names.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from OpenSSL import SSL, crypto
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import abstract, endpoints, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from ftpproxy import internals
from ftpproxy.tls.contexts import ServerTLS, TLSSettings, makeServerTLS
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates

PACKAGE = Path(internals.__file__).resolve().parent
WAIT = 10.0


@contextlib.contextmanager
def privateName(name: str) -> Iterator[None]:
    """
    Turn any error inside into a failure that names the private name the
    code under test relies on.
    """
    try:
        yield
    except Exception as e:
        pytest.fail(
            f"the private name {name} no longer works as ftpproxy.internals "
            f"expects: {e.__class__.__name__}: {e}"
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("internals-certs"))


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# -- pyOpenSSL: real handshakes in memory -------------------------------------------


def _serverContext(certs: CertificatePaths, version: int) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_file(str(certs.serverCert))
    context.use_privatekey_file(str(certs.serverKey))
    context.set_max_proto_version(version)
    context.set_session_id(b"internals")
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return context


def _clientContext(version: int) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(version)
    context.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    return context


def _move(source: SSL.Connection, sink: SSL.Connection) -> bool:
    try:
        data = source.bio_read(65536)
    except SSL.WantReadError:
        return False
    sink.bio_write(data)
    return True


def _step(connection: SSL.Connection) -> None:
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass


def _handshake(
    serverContext: SSL.Context, clientContext: SSL.Context, session: SSL.Session | None = None
) -> tuple[SSL.Connection, SSL.Connection]:
    """
    A finished handshake between two pyOpenSSL connections over memory BIOs;
    the client has also read what the server sent after it (TLS 1.3
    tickets), so its session can be resumed.
    """
    server = SSL.Connection(serverContext, None)
    server.set_accept_state()
    client = SSL.Connection(clientContext, None)
    client.set_connect_state()
    if session is not None:
        client.set_session(session)
    for _ in range(20):
        _step(client)
        moved = _move(client, server)
        _step(server)
        moved = _move(server, client) or moved
        if not moved:
            break
    server.write(b"after the handshake")
    _move(server, client)
    assert client.recv(100) == b"after the handshake"
    return server, client


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_sslSessionReused(certs: CertificatePaths, version: int) -> None:
    """
    A fresh handshake is not a resumption; one that offers the first
    session is, on both sides.
    """
    serverContext, clientContext = _serverContext(certs, version), _clientContext(version)
    server, client = _handshake(serverContext, clientContext)
    name = "OpenSSL.SSL._lib.SSL_session_reused on SSL.Connection._ssl"
    with privateName(name):
        assert not internals.sslSessionReused(server), name
        assert not internals.sslSessionReused(client), name
    again = _handshake(serverContext, clientContext, client.get_session())
    with privateName(name):
        assert [internals.sslSessionReused(c) for c in again] == [True, True], name


def test_verifyErrorText(certs: CertificatePaths, otherCerts: CertificatePaths) -> None:
    """
    The error number a verify callback gets during a real handshake reads
    as the text pyOpenSSL's public certificate check gives for the same
    certificate.
    """
    seen: list[int] = []

    def verify(connection, certificate, errno, depth, ok) -> bool:
        if not ok:
            seen.append(errno)
        return True

    clientContext = _clientContext(SSL.TLS1_3_VERSION)
    clientContext.load_verify_locations(str(otherCerts.ca))
    clientContext.set_verify(SSL.VERIFY_PEER, verify)
    _handshake(_serverContext(certs, SSL.TLS1_3_VERSION), clientContext)
    assert seen, "the handshake should have met a certificate it cannot verify"

    store = crypto.X509Store()
    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, Path(otherCerts.ca).read_bytes()))
    leaf = crypto.load_certificate(crypto.FILETYPE_PEM, Path(certs.serverCert).read_bytes())
    with pytest.raises(crypto.X509StoreContextError) as refused:
        crypto.X509StoreContext(store, leaf).verify_certificate()
    name = "OpenSSL.SSL._ffi / _lib.X509_verify_cert_error_string"
    with privateName(name):
        text = internals.verifyErrorText(seen[0])
    assert seen[0] == refused.value.errors[0]
    assert text == str(refused.value) == "unable to get local issuer certificate", name
    with privateName(name):
        assert internals.verifyErrorText(10) == "certificate has expired", name


@pytest.fixture(scope="module")
def otherCerts(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("internals-other-certs"))


# -- Twisted: real TCP connections on 127.0.0.1 ---------------------------------------


@implementer(IHandshakeListener)
class Peer(Protocol):
    """
    One end of a test connection: C{made} fires at connect, C{lost} at the
    end; counts what it receives, and C{enough} fires once C{wanted} bytes
    have arrived.
    """

    def __init__(self) -> None:
        self.made: Deferred[Peer] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.handshook: Deferred[None] = Deferred()
        self.received = 0
        self.wanted = 0
        self.enough: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.wanted and self.received >= self.wanted and not self.enough.called:
            self.enough.callback(None)

    def handshakeCompleted(self) -> None:
        self.handshook.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class Connection:
    """
    A real TCP connection on 127.0.0.1: C{server} and C{client} protocols.
    """

    def __init__(self, port: Any, server: Peer, client: Peer) -> None:
        self.port, self.server, self.client = port, server, client

    @inlineCallbacks
    def close(self, reactor: Any):
        for peer in (self.server, self.client):
            if peer.transport is not None:
                peer.transport.abortConnection()
        yield self.server.lost.addTimeout(WAIT, reactor)
        yield self.client.lost.addTimeout(WAIT, reactor)
        yield self.port.stopListening()


@inlineCallbacks
def _connect(reactor: Any, wrap: Any = None):
    server, client = Peer(), Peer()
    factory: Any = Factory.forProtocol(lambda: server)
    if wrap is not None:
        factory = wrap(factory)
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    target = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    yield endpoints.connectProtocol(target, client)
    yield server.made.addTimeout(WAIT, reactor)
    return Connection(port, server, client)


@pytest_twisted.inlineCallbacks
def test_pendingWrites(reactor):
    """
    Bytes written and not yet taken by the kernel count as pending, both
    just after the write and after the reactor found the socket full; none
    are once the peer has read everything.
    """
    connection = yield _connect(reactor)
    try:
        transport = connection.server.transport
        with privateName("FileDescriptor.dataBuffer / _tempDataBuffer"):
            assert isinstance(transport, abstract.FileDescriptor)
            assert "dataBuffer" in vars(abstract.FileDescriptor)
            assert isinstance(transport._tempDataBuffer, list)
        assert not internals.pendingWrites(transport)
        # The client stops reading, so the kernel's buffers fill up.
        connection.client.transport.pauseProducing()
        size = 32 * 1024 * 1024
        connection.client.wanted = size
        transport.write(b"x" * size)
        assert internals.pendingWrites(transport), "FileDescriptor._tempDataBuffer"
        yield deferLater(reactor, 0.2, lambda: None)
        with privateName("FileDescriptor.dataBuffer"):
            assert len(transport.dataBuffer) > transport.offset, "FileDescriptor.dataBuffer"
        assert internals.pendingWrites(transport), "FileDescriptor.dataBuffer"
        connection.client.transport.resumeProducing()
        yield connection.client.enough.addTimeout(WAIT, reactor)
        assert not internals.pendingWrites(transport)
    finally:
        yield connection.close(reactor)


def test_pendingWritesOfOtherTransports() -> None:
    transport = StringTransport()
    transport.write(b"kept by the test double")
    assert not internals.pendingWrites(transport)


@pytest_twisted.inlineCallbacks
def test_isPlainTCPTransport(reactor, certs: CertificatePaths):
    """
    Both ends of a real TCP connection are plain TCP until TLS starts on
    them; wrappers and test doubles never are.
    """
    connection = yield _connect(reactor)
    try:
        server, client = connection.server.transport, connection.client.transport
        with privateName("twisted.internet.tcp.Server / tcp.Client"):
            assert type(server) is tcp.Server and type(client) is tcp.Client
        assert internals.isPlainTCPTransport(server)
        assert internals.isPlainTCPTransport(client)
        server.startTLS(_serverOptions(certs))
        client.startTLS(CertificateOptions())
        assert not internals.isPlainTCPTransport(server)
        assert not internals.isPlainTCPTransport(client)
    finally:
        yield connection.close(reactor)
    assert not internals.isPlainTCPTransport(StringTransport())

    wrapped = yield _connect(reactor, WrappingFactory)
    try:
        assert not internals.isPlainTCPTransport(wrapped.server.transport)
        assert internals.isPlainTCPTransport(wrapped.client.transport)
    finally:
        yield wrapped.close(reactor)


def _serverOptions(certs: CertificatePaths) -> ServerTLS:
    return makeServerTLS(TLSSettings(certificate=certs.serverCert, key=certs.serverKey))


@pytest_twisted.inlineCallbacks
def test_deliveringTo(reactor, certs: CertificatePaths):
    """
    A TCP transport delivers to its protocol; once TLS starts on it, to the
    TLS layer over that protocol, which is where bytes read ahead must go.
    """
    connection = yield _connect(reactor)
    try:
        server = connection.server
        name = "transport.protocol, replaced by twisted.internet._newtls.startTLS"
        assert internals.deliveringTo(server.transport) is server, name
        server.transport.startTLS(_serverOptions(certs))
        layer = internals.deliveringTo(server.transport)
        assert isinstance(layer, TLSMemoryBIOProtocol), name
        assert layer.wrappedProtocol is server, name
        connection.client.transport.startTLS(CertificateOptions())
        yield server.handshook.addTimeout(WAIT, reactor)
    finally:
        yield connection.close(reactor)
    assert internals.deliveringTo(StringTransport()) is None


def test_raiseListenErrorsAtStart(reactor) -> None:
    """
    With it, a service whose port is taken raises at start; without it,
    the same service starts and only logs.
    """
    taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        port = taken.getHost().port

        def service() -> StreamServerEndpointService:
            endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
            return StreamServerEndpointService(endpoint, Factory.forProtocol(Protocol))

        name = "StreamServerEndpointService._raiseSynchronously"
        with privateName(name):
            assert "_raiseSynchronously" in vars(StreamServerEndpointService), name
        raising = internals.raiseListenErrorsAtStart(service())
        with pytest.raises(CannotListenError):
            raising.startService()
        quiet = service()
        errors: list = []
        from twisted.python import log

        log.addObserver(errors.append)
        try:
            quiet.startService()
        finally:
            log.removeObserver(errors.append)
        assert any(e.get("isError") for e in errors)
    finally:
        taken.stopListening()


# -- automat ----------------------------------------------------------------------------


def test_indexTransitions() -> None:
    """
    A machine whose transitions are indexed behaves as automat's own: the
    same outputs and states, and NoTransition for an undeclared input.
    """
    from typing import Protocol as TypingProtocol

    from automat import NoTransition, TypeMachineBuilder

    class Inputs(TypingProtocol):
        def go(self) -> None: ...

        def back(self) -> None: ...

    class Core:
        def __init__(self) -> None:
            self.seen: list[str] = []

    builder = TypeMachineBuilder(Inputs, Core)
    first = builder.state("first")
    second = builder.state("second")

    @first.upon(Inputs.go).to(second)
    def went(inputs: Inputs, core: Core) -> None:
        core.seen.append("go")

    @second.upon(Inputs.back).to(first)
    def cameBack(inputs: Inputs, core: Core) -> None:
        core.seen.append("back")

    machine = builder.build()
    assert internals.indexTransitions(machine) is machine
    core = Core()
    instance = machine(core)
    instance.go()
    instance.back()
    instance.go()
    assert core.seen == ["go", "back", "go"]
    with pytest.raises(NoTransition):
        instance.go()


# -- nobody else uses them -------------------------------------------------------------

#: What a use of a private name of another library looks like, and which.
PRIVATE_NAMES: dict[str, str] = {
    r"\b_lib\b|\b_ffi\b": "OpenSSL.SSL._lib / _ffi (cffi bindings)",
    r"\._ssl\b": "OpenSSL.SSL.Connection._ssl",
    r"\._context\b": "OpenSSL.SSL.Context._context",
    r"\bdataBuffer\b|_tempDataBuffer": "FileDescriptor.dataBuffer / _tempDataBuffer",
    r"\btcp\.(Server|Client)\b|from twisted\.internet import [^\n]*\btcp\b": (
        "twisted.internet.tcp.Server / Client"
    ),
    r"_raiseSynchronously": "StreamServerEndpointService._raiseSynchronously",
    r"_newtls": "twisted.internet._newtls",
    r"getattr\([^)]*[\"']TLS[\"']|\.TLS\b": "the TLS flag of Twisted's TCP transports",
    r"transport\.protocol\b|getattr\([^)]*transport[^)]*[\"']protocol[\"']": (
        "transport.protocol, which Twisted's startTLS replaces"
    ),
    r"haproxy\._": "twisted.protocols.haproxy's private modules",
    r"__automat_automaton__": "automat's TypeMachine.__automat_automaton__",
    # Any import of a private module or a private name from another package.
    r"^\s*(from|import)\s+(?!ftpproxy\b)[\w.]*\._\w": "a private module of another package",
    r"^\s*from\s+(?!ftpproxy\b)[\w.]+\s+import\s+[^\n]*\b_[a-zA-Z]\w*": (
        "a private name of another package"
    ),
}


def _sources() -> list[Path]:
    sources = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "internals.py" or p.parent != PACKAGE)
    assert len(sources) > 20, f"found only {len(sources)} modules under {PACKAGE}"
    return sources


def test_privateNamesOnlyInInternals() -> None:
    found = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for pattern, what in PRIVATE_NAMES.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {what}: {line.strip()}")
    assert found == [], "use ftpproxy.internals instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "from OpenSSL.SSL import _lib",
        "    return bool(lib.SSL_session_reused(connection._ssl))",
        "    if transport.dataBuffer:",
        "    if type(transport) is tcp.Server:",
        "from twisted.internet import reactor, tcp",
        "    service._raiseSynchronously = True",
        "from twisted.protocols.haproxy._v1parser import V1Parser",
        "from twisted.internet._sslverify import OpenSSLCertificateOptions",
        "from twisted.internet.task import _EPSILON",
        '    if getattr(transport, "TLS", False):',
        '    receiver = getattr(self.transport, "protocol", None)',
        "    after = self.transport.protocol",
        "    automaton = Machine.__automat_automaton__",
    ],
)
def test_scanFindsEachKind(line: str) -> None:
    """
    The scan above would catch each kind of use (so that an empty result
    means something).
    """
    assert any(re.search(pattern, line) for pattern in PRIVATE_NAMES)


@pytest.mark.parametrize(
    "line",
    [
        "from ftpproxy.internals import pendingWrites",
        "from ftpproxy.data._openssl import x",
        "        self._state = state",
        "from twisted.internet import reactor",
        "    sslContext = context",
        'AUTH_MECHANISMS = frozenset({b"TLS", b"TLS-C", b"SSL", b"TLS-P"})',
        "    protocol = self.factory.protocol",
    ],
)
def test_scanLeavesOurOwnNamesAlone(line: str) -> None:
    assert not any(re.search(pattern, line) for pattern in PRIVATE_NAMES)
