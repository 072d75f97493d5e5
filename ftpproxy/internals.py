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

from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import _ffi, _lib
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
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
