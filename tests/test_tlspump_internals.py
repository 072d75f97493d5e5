"""
The TLS fast path's part of L{ftpproxy.internals} (OpenSSL on the socket,
taking a transport from Twisted), against the real things: real OpenSSL
handshakes over real sockets, real reactor TCP connections. If an upgrade of
pyOpenSSL, cryptography or Twisted renames or changes one of the private
names, these tests fail, and say which.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from ftpproxy import internals
from ftpproxy.internals import (
    WANT_READ,
    WANT_WRITE,
    CannotTakeOver,
    TLSFailure,
    bufferAddress,
    checkTakeable,
    memoryBIOBytes,
    moveToSocket,
    takeTransport,
)
from ftpproxy.tls.contexts import (
    BackendTLSSettings,
    TLSSettings,
    makeBackendTLS,
    makeServerTLS,
)
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


def serverTLS(certs: CertificatePaths):
    return makeServerTLS(TLSSettings(certificate=certs.serverCert, key=certs.serverKey))


def clientTLS(certs: CertificatePaths):
    return makeBackendTLS(BackendTLSSettings(hostname="127.0.0.1", caFile=certs.ca))


def test_privateNamesArePresent() -> None:
    """
    The names the module relies on exist with the expected kinds; this is
    the first thing an upgrade would break.
    """
    from OpenSSL.SSL import _ffi, _lib
    from twisted.internet import tcp
    from twisted.internet.endpoints import _WrappingProtocol
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    for name in (
        "SSL_set_fd", "SSL_read", "SSL_write", "SSL_shutdown", "SSL_get_error",
        "SSL_get_shutdown", "SSL_set_mode", "BIO_get_mem_data",
        "ERR_clear_error",
    ):
        assert callable(getattr(_lib, name)), f"OpenSSL.SSL._lib.{name} is gone"
    assert _lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    assert callable(_ffi.from_buffer)
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    for name in ("_ssl", "_into_ssl", "_from_ssl", "_socket"):
        assert hasattr(connection, name), f"pyOpenSSL Connection.{name} is gone"
    # (Its instance attributes, and _WrappingProtocol's, are checked by the
    # take-over tests below.)
    for name in ("_handshakeDone", "_lostTLSConnection", "_aborted", "_flushSendBIO"):
        assert hasattr(TLSMemoryBIOProtocol, name), f"TLSMemoryBIOProtocol.{name} is gone"
    assert isinstance(_WrappingProtocol, type)
    for name in ("dataBuffer", "offset"):
        assert hasattr(tcp.Connection, name), f"twisted tcp.Connection.{name} is gone"


# -- OpenSSL on memory BIOs, then on the socket --------------------------------


class Pair:
    """
    A TLS client on a real socket (blocking, its own socket BIO) and a TLS
    server on memory BIOs whose bytes this test carries to and from the
    server's end of the socket pair, as Twisted does.
    """

    def __init__(self, certs: CertificatePaths, tickets: bool = True) -> None:
        self.clientSocket, self.serverSocket = socket.socketpair()
        self.serverSocket.setblocking(False)
        self.server = serverTLS(certs).serverConnectionForTLS(None)
        self.server.set_accept_state()
        context = clientTLS(certs).context
        self.client = SSL.Connection(context, self.clientSocket)
        self.client.set_connect_state()

    def carry(self) -> None:
        """
        Move what the server wrote to the socket, and what arrived for the
        server into its memory BIO.
        """
        while True:
            try:
                self.serverSocket.sendall(self.server.bio_read(65536))
            except SSL.WantReadError:
                break
        while True:
            try:
                data = self.serverSocket.recv(65536)
            except BlockingIOError:
                break
            self.server.bio_write(data)

    def handshake(self) -> None:
        self.clientSocket.setblocking(False)
        for _ in range(20):
            for side in (self.client, self.server):
                try:
                    side.do_handshake()
                except SSL.WantReadError:
                    pass
            self.carry()
            if self.serverDone() and self.clientDone():
                break
        self.clientSocket.setblocking(True)
        assert self.serverDone() and self.clientDone()

    def serverDone(self) -> bool:
        return self.server.get_state_string() == b"SSL negotiation finished successfully"

    def clientDone(self) -> bool:
        return self.client.get_state_string() == b"SSL negotiation finished successfully"

    def close(self) -> None:
        self.clientSocket.close()
        self.serverSocket.close()


@pytest.fixture
def pair(certs: CertificatePaths):
    pair = Pair(certs)
    pair.handshake()
    yield pair
    pair.close()


def test_memoryBIOBytesCountsBothWays(certs: CertificatePaths) -> None:
    pair = Pair(certs)
    try:
        assert memoryBIOBytes(pair.server) == (0, 0)
        pair.clientSocket.setblocking(False)
        with pytest.raises(SSL.WantReadError):
            pair.client.do_handshake()
        hello = pair.serverSocket.recv(65536)
        pair.server.bio_write(hello)
        assert memoryBIOBytes(pair.server) == (len(hello), 0)
        with pytest.raises(SSL.WantReadError):
            pair.server.do_handshake()
        incoming, outgoing = memoryBIOBytes(pair.server)
        assert incoming == 0 and outgoing > 0
    finally:
        pair.close()


def readAll(tls: internals.SocketTLS, size: int) -> bytes:
    buffer = bytearray(size)
    address = bufferAddress(buffer)
    got = 0
    while got < size:
        result = tls.read(address + got, size - got)
        assert result != 0, "closed early"
        if result < 0:
            continue
        got += result
    return bytes(buffer)


def test_partlyReceivedRecordCarriesOverToTheSocket(pair: Pair) -> None:
    """
    A record OpenSSL has begun to read from the memory BIO is finished from
    the socket after the move: nothing is lost or read twice.
    """
    pair.carry()  # the session ticket goes to the client
    message = bytes(range(256)) * 40
    pair.client.sendall(message)
    record = pair.serverSocket.recv(65536)
    half = len(record) // 2
    pair.server.bio_write(record[:half])
    with pytest.raises(SSL.WantReadError):
        pair.server.recv(65536)
    assert memoryBIOBytes(pair.server) == (0, 0)
    tls = moveToSocket(pair.server, pair.serverSocket)
    # The rest of the record arrives on the socket itself.
    pair.clientSocket.sendall(record[half:])
    assert readAll(tls, len(message)) == message
    assert memoryBIOBytes(pair.server) is None
    with pytest.raises(TypeError):
        pair.server.bio_read(1)


def test_moveRefusesUnreadBytes(pair: Pair) -> None:
    pair.client.sendall(b"x")
    pair.carry()
    assert memoryBIOBytes(pair.server)[0] > 0
    with pytest.raises(ValueError):
        moveToSocket(pair.server, pair.serverSocket)


def test_writeReadAndCloseNotifyOnTheSocket(pair: Pair) -> None:
    pair.carry()
    tls = moveToSocket(pair.server, pair.serverSocket)
    data = bytearray(b"y" * 100_000)
    sent = 0
    address = bufferAddress(data)
    while sent < len(data):
        result = tls.write(address + sent, len(data) - sent)
        if result > 0:
            sent += result
        else:
            assert result == WANT_WRITE
            received = pair.client.recv(65536)
            assert received
    received = b""
    pair.clientSocket.settimeout(5)
    while len(received) < len(data):
        received += pair.client.recv(65536)
    assert received == data
    assert tls.shutdown() == 1
    # close_notify sent once: shutdown again is a no-op, not a second alert.
    assert tls.shutdown() == 1
    with pytest.raises(SSL.ZeroReturnError):
        pair.client.recv(1)
    assert not tls.closeNotifyReceived()
    pair.client.shutdown()
    buffer = bytearray(16)
    assert tls.read(bufferAddress(buffer), 16) == 0
    assert tls.closeNotifyReceived()


def test_wantReadWhenNothingCame(pair: Pair) -> None:
    pair.carry()
    tls = moveToSocket(pair.server, pair.serverSocket)
    buffer = bytearray(16)
    assert tls.read(bufferAddress(buffer), 16) == WANT_READ


def test_bareEOFIsAClose(pair: Pair) -> None:
    """
    The contexts accept an EOF without close_notify as the end (FTP clients
    do that); OpenSSL reports it as a clean close.
    """
    pair.carry()
    tls = moveToSocket(pair.server, pair.serverSocket)
    pair.clientSocket.shutdown(socket.SHUT_WR)
    buffer = bytearray(16)
    assert tls.read(bufferAddress(buffer), 16) == 0


def test_corruptRecordFails(pair: Pair) -> None:
    pair.carry()
    tls = moveToSocket(pair.server, pair.serverSocket)
    pair.clientSocket.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    buffer = bytearray(64)
    with pytest.raises(TLSFailure) as caught:
        tls.read(bufferAddress(buffer), 64)
    assert str(caught.value)


def test_resetPeerFailsWrites(pair: Pair) -> None:
    pair.carry()
    tls = moveToSocket(pair.server, pair.serverSocket)
    pair.clientSocket.close()
    data = bytearray(1 << 20)
    with pytest.raises(TLSFailure) as caught:
        for _ in range(64):
            tls.write(bufferAddress(data), len(data))
    assert "socket" in str(caught.value) or str(caught.value)


# -- Twisted transports ----------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.handshook: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def handshakeCompleted(self) -> None:
        self.handshook.callback(None)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        self.lost.callback(None)


@defer.inlineCallbacks
def connectedPair(acceptedProtocol: protocol.Protocol, connecting: protocol.Protocol):
    """
    A real TCP connection: C{acceptedProtocol} on the accepted side,
    C{connecting} on the side that connected through an endpoint.
    """
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(lambda: acceptedProtocol)
    )
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), connecting)
    yield port.stopListening()
    while acceptedProtocol.transport is None:
        yield deferLater(0.01)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_takePlainTransportWithPendingWrites():
    accepted, connecting = Recorder(), Recorder()
    yield connectedPair(accepted, connecting)
    accepted.transport.write(b"not yet sent")
    tls, pending = takeTransport(accepted.transport, accepted)
    assert tls is None and pending == b"not yet sent"
    # Twisted no longer writes it; the new owner does.
    accepted.transport.socket.send(pending)
    yield deferLater(0.05)
    assert connecting.received == b"not yet sent"
    accepted.transport.abortConnection()
    yield accepted.lost
    assert accepted.reason.check(ConnectionAborted)
    yield connecting.lost


@pytest_twisted.inlineCallbacks
def test_takeTLSTransportThroughEndpointWrapper(certs: CertificatePaths):
    """
    The connecting side (through an endpoint, so its protocol sits in a
    wrapper) is taken after its handshake: its connection moves to the
    socket, still what getHandle() gives, and the transport closes without
    touching the old TLS layer.
    """
    accepted, connecting = Recorder(), Recorder()
    yield connectedPair(accepted, connecting)
    accepted.transport.startTLS(serverTLS(certs))
    connecting.transport.startTLS(clientTLS(certs))
    yield defer.gatherResults([accepted.handshook, connecting.handshook])
    handle = connecting.transport.getHandle()
    # Refused while TLS writes wait in the aggregator? No: they are flushed.
    connecting.transport.write(b"early")
    checkTakeable(connecting.transport, connecting)
    tls, pending = takeTransport(connecting.transport, connecting)
    assert tls is not None and tls.connection is handle
    assert connecting.transport.getHandle() is handle
    assert not connecting.transport.TLS
    connecting.transport.socket.sendall(pending)
    data = bytearray(b"after the take-over")
    sent = tls.write(bufferAddress(data), len(data))
    assert sent == len(data)
    yield deferLater(0.1)
    assert accepted.received == b"early" + bytes(data)
    assert tls.shutdown() == 1
    connecting.transport.loseConnection()
    yield defer.gatherResults([connecting.lost, accepted.lost])
    assert accepted.transport.getHandle().get_shutdown() & SSL.RECEIVED_SHUTDOWN


@pytest_twisted.inlineCallbacks
def test_refusals(certs: CertificatePaths):
    accepted, connecting = Recorder(), Recorder()
    yield connectedPair(accepted, connecting)

    class Other:
        pass

    with pytest.raises(CannotTakeOver):
        checkTakeable(object(), Other())
    with pytest.raises(CannotTakeOver, match="another protocol"):
        checkTakeable(accepted.transport, Other())
    accepted.transport.startTLS(serverTLS(certs))
    with pytest.raises(CannotTakeOver, match="handshake"):
        checkTakeable(accepted.transport, accepted)
    connecting.transport.startTLS(clientTLS(certs))
    yield defer.gatherResults([accepted.handshook, connecting.handshook])
    # Received TLS bytes that OpenSSL has not read cannot move to a socket.
    tlsProtocol = internals.tlsProtocolOf(accepted.transport)
    tlsProtocol._tlsConnection.bio_write(b"\x17\x03\x03")
    with pytest.raises(CannotTakeOver, match="unread"):
        checkTakeable(accepted.transport, accepted)
    accepted.transport.loseConnection()
    with pytest.raises(CannotTakeOver, match="closing"):
        checkTakeable(accepted.transport, accepted)
    connecting.transport.abortConnection()
    yield defer.gatherResults([accepted.lost, connecting.lost])


def test_bufferAddressPointsIntoTheBuffer() -> None:
    from OpenSSL.SSL import _ffi

    data = bytearray(b"abcdef")
    address = bufferAddress(data)
    assert _ffi.buffer(address + 2, 3)[:] == b"cde"
    data[2] = ord("X")
    assert _ffi.buffer(address, 6)[:] == b"abXdef"

