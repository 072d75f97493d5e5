"""
Every use of a private name of Twisted, pyOpenSSL or automat, in one place.

Each function here does one thing the proxy needs and neither library
offers publicly; its docstring names the private name it relies on and
why there is no public way. The rest of the package calls these functions
and never the private names themselves (tests/test_internals.py greps for
them), and tests/test_internals.py runs each function against the real
thing, so that an upgrade that renames or changes one fails there, loudly
and by name, rather than somewhere in a transfer.

This module imports nothing of the project.
"""

from __future__ import annotations

import errno
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import exception_from_error_queue
from OpenSSL.SSL import _ffi, _lib
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
from twisted.internet.endpoints import _WrappingProtocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from automat import NoTransition
from twisted.internet.interfaces import IProtocol, ISSLTransport

__all__ = [
    "sslSessionReused",
    "verifyErrorText",
    "pendingWrites",
    "isPlainTCPTransport",
    "deliveringTo",
    "raiseListenErrorsAtStart",
    "indexTransitions",
    "WANT_READ",
    "WANT_WRITE",
    "TLSFailure",
    "SocketTLS",
    "bufferAddress",
    "memoryBIOBytes",
    "moveToSocket",
    "isReactorTCPTransport",
    "tlsProtocolOf",
    "tlsHandshakeDone",
    "CannotTakeOver",
    "checkTakeable",
    "takeTransport",
]


# -- pyOpenSSL -----------------------------------------------------------------


def sslSessionReused(connection: SSL.Connection) -> bool:
    """
    Did the finished handshake of C{connection} resume an earlier session
    (TLS 1.2 session id or ticket, TLS 1.3 pre-shared key)?

    pyOpenSSL does not wrap OpenSSL's C{SSL_session_reused}. It is called
    through the cffi bindings pyOpenSSL itself uses, C{OpenSSL.SSL._lib}, on
    the connection's C{SSL*}, the private attribute C{Connection._ssl}.
    """
    return bool(_lib.SSL_session_reused(connection._ssl))


def verifyErrorText(errno: int) -> str:
    """
    OpenSSL's description of certificate verification error C{errno} (what
    a verify callback is given), e.g. "unable to get local issuer
    certificate".

    pyOpenSSL builds this text only inside
    L{OpenSSL.crypto.X509StoreContextError}, never for verify callbacks; it
    is read with C{X509_verify_cert_error_string} through C{OpenSSL.SSL._lib}
    and C{OpenSSL.SSL._ffi}.
    """
    return _ffi.string(_lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")


# -- Twisted transports ------------------------------------------------------------


def pendingWrites(transport: Any) -> bool:
    """
    Are bytes written to C{transport} still waiting in Twisted's buffers
    (not yet handed to the kernel)?

    Twisted keeps them in C{FileDescriptor.dataBuffer} and
    C{FileDescriptor._tempDataBuffer} (L{twisted.internet.abstract}) and has
    no public way to ask; producers learn it only by being paused. A
    transport without these (a TLS wrapper that does not pass them through,
    a test double) counts as having nothing pending.
    """
    return bool(
        getattr(transport, "dataBuffer", b"") or getattr(transport, "_tempDataBuffer", None)
    )


def isPlainTCPTransport(transport: Any) -> bool:
    """
    Is C{transport} exactly Twisted's own TCP connection (either side), with
    no TLS started on it: a kernel socket that the reactor reads and writes
    itself, so that another piece of code may take over its file descriptor
    for a while (L{ftpproxy.data.splicing})?

    Relies on the classes L{twisted.internet.tcp.Server} and
    L{twisted.internet.tcp.Client}, which Twisted documents as implementation
    classes of its reactors; an interface check cannot tell them from
    wrappers (a L{twisted.protocols.policies.ProtocolWrapper} provides the
    interfaces of the transport it wraps). TLS started on them is seen
    through L{ISSLTransport}, the public way.
    """
    return type(transport) in (tcp.Server, tcp.Client) and not ISSLTransport.providedBy(
        transport
    )


def deliveringTo(transport: Any) -> IProtocol | None:
    """
    The protocol C{transport} currently hands received bytes to, or None when
    it does not say.

    A protocol that read ahead of a layer another protocol then starts (the
    bytes after a PROXY header, when the wrapped protocol starts implicit
    TLS in C{connectionMade}) must give those bytes to that new layer.
    Twisted's C{startTLS} (C{twisted.internet._newtls.startTLS}) installs its
    TLS protocol by replacing the transport's C{protocol} attribute; there
    is no public way to hand received bytes back to a transport.
    """
    return getattr(transport, "protocol", None)


# -- Twisted services ----------------------------------------------------------


def raiseListenErrorsAtStart(service: StreamServerEndpointService) -> StreamServerEndpointService:
    """
    Make C{service} raise from C{startService} (or C{privilegedStartService})
    when its endpoint cannot listen, instead of logging the error and
    running on without a listener. Returns C{service}.

    This is C{StreamServerEndpointService._raiseSynchronously}, documented
    there with an C{@ivar} but private; Twisted's own
    C{twisted.application.strports.service} sets it, and offers the
    behaviour only for endpoint description strings, not for an endpoint
    object such as a PROXY-protocol listener.
    """
    service._raiseSynchronously = True
    return service


# -- automat ---------------------------------------------------------------------


def indexTransitions(machine: Any) -> Any:
    """
    Make C{machine} (what C{TypeMachineBuilder.build()} returns) find its
    transitions in a dictionary; returns C{machine}.

    automat's C{Automaton.outputForInput} looks a transition up by scanning
    every transition of the machine and comparing states dataclass by
    dataclass: with the session's and the transfer's sixty-odd transitions
    that was a third of the proxy's CPU per session. The table is read with
    the public C{allTransitions()}; the machine's automaton is its
    C{__automat_automaton__} field, which automat's own C{asDigraph} uses but
    does not document, and the lookup replaces the automaton's method on
    that one instance. An input with no transition still raises automat's
    C{NoTransition}.
    """
    automaton = machine.__automat_automaton__
    table = {
        (state, symbol): (target, list(outputs))
        for state, symbol, target, outputs in automaton.allTransitions()
    }

    def outputForInput(state: Any, symbol: str) -> tuple[Any, list[Any]]:
        try:
            target, outputs = table[state, symbol]
        except KeyError:
            raise NoTransition(state=state, symbol=symbol) from None
        return target, list(outputs)

    automaton.outputForInput = outputForInput
    return machine


# -- the TLS fast path: OpenSSL on the socket ---------------------------------------
#
# Once a protected data connection has finished its handshake, the proxy
# moves its OpenSSL connection from Twisted's memory BIOs onto the socket
# itself and drives SSL_read/SSL_write from reactor readiness in large steps
# (ftpproxy.data.tlspump). Neither library offers that publicly:
#
#   - pyOpenSSL wraps no way to put an existing connection on a file
#     descriptor, and its recv/send allocate a new buffer per call. Here
#     SSL_set_fd, SSL_read, SSL_write, SSL_shutdown, SSL_get_error,
#     SSL_get_shutdown and BIO_get_mem_data are called through
#     OpenSSL.SSL._lib/_ffi on the connection's SSL* (Connection._ssl), and
#     the memory BIOs SSL_set_fd frees are forgotten (Connection._into_ssl,
#     _from_ssl), so that pyOpenSSL then treats the connection as one made on
#     a socket; OpenSSL._util.exception_from_error_queue reads OpenSSL's
#     error queue.
#   - Twisted's startTLS keeps the TLSMemoryBIOProtocol in transport.protocol
#     and marks the transport with transport.TLS; unsent bytes wait in
#     transport.dataBuffer/_tempDataBuffer (from offset), small TLS writes in
#     the TLS protocol's _aggregator until the next reactor turn; connections
#     made through an endpoint have the application protocol inside an
#     endpoints._WrappingProtocol.
#
# tests/test_tlspump_internals.py runs each against real OpenSSL connections
# and real reactor transports.

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
    resized; C{pointer + n} points C{n} bytes in. (C{_ffi.from_buffer}: the
    bindings' own cffi instance, so that OpenSSL calls accept it.)
    """
    return _ffi.from_buffer("char[]", buffer)


def memoryBIOBytes(connection: SSL.Connection) -> tuple[int, int] | None:
    """
    How many bytes wait in C{connection}'s memory BIOs: (received but not
    yet read by OpenSSL, written by OpenSSL but not yet sent). L{None} when
    the connection has no memory BIOs (it is on a socket). (C{BIO_get_mem_data}
    on C{Connection._into_ssl}/C{_from_ssl}; pyOpenSSL exposes neither.)
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


def isReactorTCPTransport(transport: Any) -> bool:
    """
    Whether C{transport} is one of the reactor's own TCP connections (not a
    test double or another transport), TLS started on it or not, whose
    socket can be taken over (L{takeTransport}). Relies on the classes
    L{twisted.internet.tcp.Server} and L{twisted.internet.tcp.Client}, as
    L{isPlainTCPTransport} does.
    """
    return type(transport) in (tcp.Server, tcp.Client)


def tlsProtocolOf(transport: Any) -> TLSMemoryBIOProtocol | None:
    """
    The TLS layer C{startTLS} put on a reactor TCP transport, or L{None} if
    it has none. (C{transport.TLS} and C{transport.protocol}, which
    C{twisted.internet._newtls.startTLS} sets; there is no public way to
    reach the TLS protocol.)
    """
    if not getattr(transport, "TLS", False):
        return None
    protocol = transport.protocol
    return protocol if isinstance(protocol, TLSMemoryBIOProtocol) else None


def tlsHandshakeDone(transport: Any) -> bool:
    """
    Whether the TLS layer of C{transport} finished its handshake
    (C{TLSMemoryBIOProtocol._handshakeDone}; the public signal is
    C{IHandshakeListener}, which only the protocol under the layer gets).
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
    if not isReactorTCPTransport(transport):
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
