"""
Every private name the data layer's TLS fast path uses, in one module.

Once a protected data connection has finished its handshake, the proxy moves
its OpenSSL connection from Twisted's memory BIOs onto the socket itself and
drives C{SSL_read}/C{SSL_write} from reactor readiness in large steps (see
L{ftpproxy.data.tlspump}). Neither library offers that publicly:

  - pyOpenSSL wraps no way to put an existing connection on a file
    descriptor, and its C{recv}/C{send} allocate a new buffer per call. This
    module calls C{SSL_set_fd}, C{SSL_read}, C{SSL_write}, C{SSL_shutdown},
    C{SSL_get_error} and C{BIO_get_mem_data} through the cffi bindings
    pyOpenSSL itself uses (C{OpenSSL.SSL._lib}/C{_ffi}, from
    C{cryptography}) on the connection's C{SSL*} (C{Connection._ssl}), and
    forgets its memory BIOs (C{Connection._into_ssl}/C{_from_ssl}), which
    C{SSL_set_fd} frees.
  - Twisted's C{startTLS} keeps the L{TLSMemoryBIOProtocol} in
    C{transport.protocol} and marks the transport with C{transport.TLS};
    connections made through an endpoint have the application protocol
    inside an C{endpoints._WrappingProtocol};
    unsent bytes wait in C{transport.dataBuffer}/C{_tempDataBuffer} (from
    C{offset}), and small TLS writes wait in the protocol's C{_aggregator}
    until the next reactor turn.

The tests in C{tests/test_openssl_internals.py} exercise each function
against real pyOpenSSL connections and real Twisted transports, so an
upgrade that renames or changes one of these fails there, loudly. This
module belongs in C{ftpproxy/internals.py} once that exists.
"""

from __future__ import annotations

import errno
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import exception_from_error_queue
from OpenSSL.SSL import _ffi, _lib
from twisted.internet import tcp
from twisted.internet.endpoints import _WrappingProtocol
from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "WANT_READ",
    "WANT_WRITE",
    "TLSFailure",
    "SocketTLS",
    "bufferAddress",
    "memoryBIOBytes",
    "moveToSocket",
    "isPlainTCP",
    "tlsProtocolOf",
    "tlsHandshakeDone",
    "CannotTakeOver",
    "checkTakeable",
    "takeTransport",
]

#: What L{SocketTLS.read}/L{SocketTLS.write} return when the socket is not
#: ready: wait until it is readable, or writable, then call again (a write
#: with the same buffer and length).
WANT_READ = -1
WANT_WRITE = -2

_SSL_ERROR_WANT_READ = _lib.SSL_ERROR_WANT_READ
_SSL_ERROR_WANT_WRITE = _lib.SSL_ERROR_WANT_WRITE
_SSL_ERROR_ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
_SSL_ERROR_SYSCALL = _lib.SSL_ERROR_SYSCALL
_SSL_read = _lib.SSL_read
_SSL_write = _lib.SSL_write
_SSL_get_error = _lib.SSL_get_error
_ERR_clear_error = _lib.ERR_clear_error

# BIO_get_mem_data is BIO_ctrl(bio, BIO_CTRL_INFO, 0, &pointer): the number
# of bytes the memory BIO holds.
_NO_POINTER = _ffi.NULL


class TLSFailure(Exception):
    """
    The TLS connection failed: a fatal alert, a corrupt record, or the socket
    failed under it. The message says which.
    """


def bufferAddress(buffer: bytearray) -> Any:
    """
    A C pointer to C{buffer}'s bytes, valid while C{buffer} lives and is not
    resized; C{pointer + n} points C{n} bytes in.
    """
    return _ffi.from_buffer("char[]", buffer)


def memoryBIOBytes(connection: SSL.Connection) -> tuple[int, int] | None:
    """
    How many bytes wait in C{connection}'s memory BIOs: (received but not
    yet read by OpenSSL, written by OpenSSL but not yet sent). L{None} when
    the connection has no memory BIOs (it is on a socket).
    """
    incoming, outgoing = connection._into_ssl, connection._from_ssl
    if incoming is None or outgoing is None:
        return None
    return (
        _lib.BIO_get_mem_data(incoming, _NO_POINTER),
        _lib.BIO_get_mem_data(outgoing, _NO_POINTER),
    )


class SocketTLS:
    """
    An OpenSSL connection that reads and writes its socket itself (a socket
    BIO on the file descriptor), driven by the caller from the reactor's
    readiness events.

    @ivar connection: the L{SSL.Connection}, still what C{getHandle()} gives
        (session, peer certificate, L{ftpproxy.tls.contexts.sessionReused}).
    """

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection
        self._ssl = connection._ssl

    def read(self, into: Any, size: int) -> int:
        """
        Decrypt up to C{size} bytes into the buffer at C{into}, record after
        record until C{size} bytes came or the socket has no more: the
        number of bytes, 0 once the peer has closed (close_notify, or a bare
        EOF, which the contexts accept as a close), or
        L{WANT_READ}/L{WANT_WRITE} when nothing came.

        @raise TLSFailure: on a fatal TLS or socket error before any byte
            came (after some, the next call raises it).
        """
        ssl, got = self._ssl, 0
        _ERR_clear_error()
        while got < size:
            result = _SSL_read(ssl, into + got, size - got)
            if result <= 0:
                if got:
                    return got
                return self._outcome(result, eofIsClose=True)
            got += result
        return got

    def write(self, data: Any, size: int) -> int:
        """
        Encrypt and send the C{size} bytes at C{data}, record after record
        while the socket takes them: how many went, or L{WANT_WRITE}/
        L{WANT_READ} when none did. After a want, the rest must be offered
        again (OpenSSL may hold part of a record).

        @raise TLSFailure: on a fatal TLS or socket error (the peer is gone)
            before any byte went.
        """
        ssl, sent = self._ssl, 0
        _ERR_clear_error()
        while sent < size:
            result = _SSL_write(ssl, data + sent, size - sent)
            if result <= 0:
                if sent:
                    return sent
                return self._outcome(result, eofIsClose=False)
            sent += result
        return sent

    def pending(self) -> int:
        """
        Decrypted bytes OpenSSL holds that the next L{read} returns without
        touching the socket.
        """
        return _lib.SSL_pending(self._ssl)

    def shutdown(self) -> int:
        """
        Send close_notify (once): 1 when it is sent (or was), else
        L{WANT_WRITE}/L{WANT_READ} to be repeated.

        @raise TLSFailure: when the socket is gone.
        """
        if _lib.SSL_get_shutdown(self._ssl) & _lib.SSL_SENT_SHUTDOWN:
            # Sent before; SSL_shutdown would now wait for the peer's.
            return 1
        _ERR_clear_error()
        result = _lib.SSL_shutdown(self._ssl)
        if result >= 0:
            return 1
        return self._outcome(result, eofIsClose=False)

    def closeNotifyReceived(self) -> bool:
        """
        Whether the peer's close_notify has arrived.
        """
        return bool(_lib.SSL_get_shutdown(self._ssl) & _lib.SSL_RECEIVED_SHUTDOWN)

    def _outcome(self, result: int, eofIsClose: bool) -> int:
        error = _SSL_get_error(self._ssl, result)
        if error == _SSL_ERROR_WANT_READ:
            return WANT_READ
        if error == _SSL_ERROR_WANT_WRITE:
            return WANT_WRITE
        if error == _SSL_ERROR_ZERO_RETURN:
            if eofIsClose:
                return 0
            raise TLSFailure("the peer closed the TLS connection")
        if error == _SSL_ERROR_SYSCALL:
            code = _ffi.errno
            _ERR_clear_error()
            if eofIsClose and (result == 0 or code == 0):
                return 0
            raise TLSFailure(
                f"socket error {errno.errorcode.get(code, code)}" if code else "socket closed"
            )
        try:
            exception_from_error_queue(SSL.Error)
        except SSL.Error as e:
            raise TLSFailure(str(e) or "TLS error") from None
        raise TLSFailure(f"TLS error {error}")


def moveToSocket(connection: SSL.Connection, socket: Any) -> SocketTLS:
    """
    Put C{connection}, which has done its handshake on memory BIOs, on
    C{socket}'s file descriptor. The caller has made sure that nothing waits
    in the memory BIOs (L{memoryBIOBytes} is C{(0, 0)}); a partly received
    record OpenSSL holds itself carries over.

    Large writes go out as whole records with partial writes on (pyOpenSSL's
    mode, which cannot be cleared): each L{SocketTLS.write} sends at most one
    record, and a write that must wait may be repeated with the buffer at a
    new address.
    """
    if memoryBIOBytes(connection) != (0, 0):
        raise ValueError("bytes still wait in the memory BIOs")
    if _lib.SSL_set_fd(connection._ssl, socket.fileno()) != 1:
        raise TLSFailure("SSL_set_fd failed")
    _lib.SSL_set_mode(connection._ssl, _lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
    # SSL_set_fd freed the memory BIOs; pyOpenSSL then treats the connection
    # like one made on a socket (its bio_* methods refuse, not crash).
    connection._into_ssl = connection._from_ssl = None
    connection._socket = socket
    return SocketTLS(connection)


def isPlainTCP(transport: Any) -> bool:
    """
    Whether C{transport} is one of the reactor's own TCP connections (not a
    test double or another transport), whose socket can be taken over.
    """
    return type(transport) in (tcp.Server, tcp.Client)


def tlsProtocolOf(transport: Any) -> TLSMemoryBIOProtocol | None:
    """
    The TLS layer C{startTLS} put on a reactor TCP transport, or L{None} if
    it has none.
    """
    if not getattr(transport, "TLS", False):
        return None
    protocol = transport.protocol
    return protocol if isinstance(protocol, TLSMemoryBIOProtocol) else None


def tlsHandshakeDone(transport: Any) -> bool:
    """
    Whether the TLS layer of C{transport} finished its handshake.
    """
    protocol = tlsProtocolOf(transport)
    return protocol is not None and protocol._handshakeDone


def _pendingWrites(transport: Any) -> bytes:
    """
    Take the bytes C{transport} has accepted but not yet sent (Twisted keeps
    them in C{dataBuffer} from C{offset}, then in C{_tempDataBuffer}).
    """
    pending = transport.dataBuffer[transport.offset :] + b"".join(transport._tempDataBuffer)
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    return pending


class CannotTakeOver(Exception):
    """
    The transport is in a state the fast path does not handle; it stays with
    Twisted.
    """


def _unwrapped(protocol: Any) -> Any:
    """
    The protocol inside an endpoint's pass-through wrapper, if it is one.
    """
    if isinstance(protocol, _WrappingProtocol):
        return protocol._wrappedProtocol
    return protocol


def checkTakeable(transport: Any, protocol: Any) -> None:
    """
    Make sure L{takeTransport} can take C{transport} now: a reactor TCP
    connection, open, and if TLS was started on it, handshake done with
    nothing held in the TLS layer. The TLS layer's last small writes are
    encrypted into the transport's buffer on the way (harmless if the
    transport then stays with Twisted).

    @raise CannotTakeOver: with the reason.
    """
    if not isPlainTCP(transport):
        raise CannotTakeOver(f"not a reactor TCP transport: {type(transport).__name__}")
    if not transport.connected or transport.disconnecting:
        raise CannotTakeOver("the connection is closing")
    tlsProtocol = tlsProtocolOf(transport)
    top = transport.protocol if tlsProtocol is None else tlsProtocol.wrappedProtocol
    if _unwrapped(top) is not protocol:
        raise CannotTakeOver(f"another protocol is on the connection: {type(top).__name__}")
    if tlsProtocol is None:
        return
    if not tlsProtocol._handshakeDone or tlsProtocol._appSendBuffer:
        raise CannotTakeOver("the TLS handshake is not done")
    if tlsProtocol.disconnecting or tlsProtocol._lostTLSConnection:
        raise CannotTakeOver("the TLS layer is closing")
    aggregator = getattr(tlsProtocol, "_aggregator", None)
    if aggregator is not None:
        # BufferingTLSTransport holds small writes until the next turn.
        aggregator.flush()
    connection = tlsProtocol._tlsConnection
    held = memoryBIOBytes(connection)
    if held is None or held[0]:
        raise CannotTakeOver("received TLS bytes are still unread")
    while held[1]:
        tlsProtocol._flushSendBIO()
        held = memoryBIOBytes(connection)


def takeTransport(transport: Any, protocol: Any) -> tuple[SocketTLS | None, bytes]:
    """
    Stop Twisted from reading and writing C{transport} (checked with
    L{checkTakeable}), so that the caller owns its socket; C{protocol} is the
    application protocol on it.

    If TLS was started on it, the TLS layer is taken apart: its connection
    moves onto the socket and is returned, and from then on the transport is
    a clear one that delivers C{connectionLost} straight to C{protocol};
    closing it (C{loseConnection}/C{abortConnection}) closes the socket
    without any TLS alert: the caller sends close_notify itself.

    Returns the TLS connection (or L{None}) and the bytes the transport had
    accepted but not yet sent, which must go out before anything else.
    """
    checkTakeable(transport, protocol)
    tlsProtocol = tlsProtocolOf(transport)
    transport.stopReading()
    transport.stopWriting()
    pending = _pendingWrites(transport)
    if tlsProtocol is None:
        return None, pending
    aggregator = getattr(tlsProtocol, "_aggregator", None)
    if aggregator is not None:
        aggregator.close()
    # The TLS protocol is out of the loop: nothing may reach its (soon
    # freed) memory BIOs again; its connection stays its getHandle().
    tlsProtocol._lostTLSConnection = True
    tlsProtocol._aborted = True
    transport.protocol = tlsProtocol.wrappedProtocol
    transport.TLS = False
    return moveToSocket(tlsProtocol._tlsConnection, transport.socket), pending
