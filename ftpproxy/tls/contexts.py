"""
TLS building blocks for FTPS: the one server-side context that a client's
control and data connections share, and client-side contexts for FTPS
backends that resume the control session on data connections, built from
the settings values of L{ftpproxy.settings.tls}.

Why not L{twisted.internet.ssl.CertificateOptions}: it turns session caching
and session tickets off, and builds a context per options object.  FTPS needs
the opposite: data connections resume the control connection's TLS session
(vsftpd, FileZilla Server and many clients insist), so everything here is
built on one L{OpenSSL.SSL.Context} per listener (server side) or per backend
(client side).

How the pieces plug into Twisted::

    server = makeServerTLS(TLSSettings(certificate=Path("server.pem")))

    # explicit FTPS: after replying 234 to AUTH TLS on the control connection
    transport.startTLS(server)
    # implicit FTPS control connections
    TLSMemoryBIOFactory(server, False, controlFactory)
    # PROT P data connections: same context, no new tickets (see forData)
    TLSMemoryBIOFactory(server.forData(), False, dataFactory)
    # a session's connections, so that each handshake's report names it
    # (ftpproxy.tls.handshakes): the control connection, then data ones
    session = server.forSession(sessionId, clientHost, events)
    transport.startTLS(session)
    TLSMemoryBIOFactory(session.data, False, dataFactory)        # tickets
    TLSMemoryBIOFactory(session.data.forData(), False, dataFactory)  # none
    # the proxy is the TLS server on data connections even when it
    # connected out (PORT/EPRT): on that outgoing TCP connection
    transport.startTLS(server.forData(), normal=False)
    # then, in the data protocol's handshakeCompleted()
    # (IHandshakeListener): sessionReused(self.transport) for
    # --require-session-reuse

    backend = makeBackendTLS(BackendTLSSettings(hostname="ftp.example.com"))
    # explicit FTPS backend: after the backend's 234
    controlTransport.startTLS(backend)
    # implicit FTPS backend control connection
    wrapClientTLS(backend, TCP4ClientEndpoint(reactor, host, port))
    # backend data connection, resuming the control connection's session
    wrapClientTLS(backend.resuming(controlTransport), dataEndpoint)
    # or TLSMemoryBIOFactory(backend.resuming(controlTransport), True, f)
    # when the proxy accepted the backend's data connection (PORT to backend)

Twisted's TLS transports send C{close_notify} on C{loseConnection()}.
A peer's EOF without C{close_notify} is reported as a clean close
(C{ConnectionDone}): see L{_COMMON_OPTIONS} for why.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
from attrs import field, frozen
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from ftpproxy.internals import sslSessionReused, verifyErrorText
from ftpproxy.settings.tls import (
    CLIENT_CERTIFICATE_MODES,
    DEFAULT_PROFILE,
    BackendTLSSettings,
    TLSProfile,
    TLSSettings,
    TLSSettingsError,
)
from ftpproxy.tls.devcerts import makeVariant
from ftpproxy.tls.handshakes import (
    CONTROL,
    DATA,
    SessionBinding,
    WatchedConnection,
    newWatch,
    watchHandshakes,
)
from ftpproxy.wire.addresses import isIPAddress

__all__ = [
    "TLS_VERSIONS",
    "CLIENT_CERTIFICATE_MODES",
    "TLSSettingsError",
    "BackendCertificateError",
    "TLSSettings",
    "BackendTLSSettings",
    "ServerTLS",
    "ServerConnections",
    "ServerDataTLS",
    "BackendTLS",
    "makeServerTLS",
    "makeProfileTLS",
    "makeBackendTLS",
    "serverContext",
    "backendContext",
    "sessionReused",
    "tlsConnectionOf",
]

#: Protocol versions by the names the settings use
#: (L{ftpproxy.settings.tls.TLS_VERSION_NAMES}).
TLS_VERSIONS: dict[str, int] = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}

# OP_IGNORE_UNEXPECTED_EOF: FTP peers often end data connections without
# close_notify (curl after uploads, many servers after downloads).  OpenSSL
# otherwise treats that as a fatal error, and a fatal error evicts the
# session from the cache and marks it not resumable: one such upload and
# every later data connection of the FTP session does a full handshake,
# which servers requiring reuse refuse (vsftpd: 522, then it hangs up).
# With it, such an EOF is a clean close (Twisted reports ConnectionDone); the
# end of a transfer is confirmed by the FTP reply, as it always is in FTP.
_COMMON_OPTIONS = (
    SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_IGNORE_UNEXPECTED_EOF
)

# The session id context ties cached sessions to what this program serves;
# OpenSSL refuses to resume sessions with client verification without one.
_SESSION_ID_CONTEXT = b"ftpproxy"


class BackendCertificateError(SSL.Error):
    """
    A backend's certificate was refused.  An L{SSL.Error}, so that Twisted's
    TLS layer reports it to C{connectionLost} like any failed handshake,
    with a message that says why (unknown CA, wrong name, expired, ...).
    Its C{args} have the shape of OpenSSL's error queue, which Twisted's TLS
    layer inspects.
    """

    def __init__(self, message: str) -> None:
        super().__init__([("ftpproxy", "backend certificate verification", message)])
        self.message = message

    def __str__(self) -> str:
        return self.message


def _readable(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSSettingsError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None


def _loadKeyPair(context: SSL.Context, certificate: Path, key: Optional[Path]) -> None:
    """
    Load a certificate (with its chain, leaf first) and its key, which may be
    in the same PEM, failing with a message that names the file.
    """
    keyPath = certificate if key is None else key
    certificateBytes = _readable(certificate, "certificate file")
    if b"-----BEGIN CERTIFICATE-----" not in certificateBytes:
        raise TLSSettingsError(f"no PEM certificate in {str(certificate)!r}")
    if b"PRIVATE KEY-----" not in _readable(keyPath, "key file"):
        raise TLSSettingsError(
            f"no PEM private key in {str(keyPath)!r}"
            + ("; give the key file separately" if key is None else "")
        )
    try:
        context.use_certificate_chain_file(str(certificate).encode())
    except SSL.Error as e:
        raise TLSSettingsError(
            f"cannot load the certificate chain from {str(certificate)!r}: {e}"
        ) from None
    mismatch = TLSSettingsError(
        f"the private key in {str(keyPath)!r} does not belong to the "
        f"certificate in {str(certificate)!r}"
    )
    try:
        context.use_privatekey_file(str(keyPath).encode())
    except SSL.Error as e:
        if "mismatch" in str(e):
            raise mismatch from None
        raise TLSSettingsError(
            f"cannot load the private key from {str(keyPath)!r} "
            f"(encrypted keys are not supported): {e}"
        ) from None
    try:
        context.check_privatekey()
    except SSL.Error:
        raise mismatch from None


def _applyVersionsAndCiphers(
    context: SSL.Context,
    minimumVersion: str,
    maximumVersion: Optional[str],
    ciphers: Optional[str],
    ciphersuites: Optional[str] = None,
) -> None:
    context.set_min_proto_version(TLS_VERSIONS[minimumVersion])
    context.set_max_proto_version(
        0 if maximumVersion is None else TLS_VERSIONS[maximumVersion]
    )
    if ciphers is not None:
        context.set_cipher_list(ciphers.encode("ascii"))
    if ciphersuites is not None:
        context.set_tls13_ciphersuites(ciphersuites.encode("ascii"))


def serverContext(settings: TLSSettings, sessionReuse: str = "optional") -> SSL.Context:
    """
    Build the server-side context for one listener: session cache and TLS 1.2
    session ids on, session tickets (TLS 1.2 and 1.3) on, versions, ciphers
    and client certificate checks as configured.  With C{sessionReuse}
    "off" the session cache is off (the listener's L{ServerTLS} issues no
    tickets either), so that no session can be resumed.

    Session tickets are stateless (encrypted with this context's random
    key), so a client may present the same ticket on every data connection,
    and each resumed handshake hands out a fresh one: long FTP sessions do not
    run out of tickets even though OpenSSL sends only two after login (the
    bindings do not expose C{SSL_CTX_set_num_tickets}, and there is no need).
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    options = context.set_options(
        _COMMON_OPTIONS | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    if options & SSL.OP_NO_TICKET:
        # set_options returns the context's whole option mask. pyOpenSSL
        # cannot clear options; a fresh OpenSSL context never has this one,
        # but fail loudly rather than silently lose resumption.
        raise RuntimeError("OpenSSL context unexpectedly disables session tickets")
    _applyVersionsAndCiphers(
        context,
        settings.minimumVersion,
        settings.maximumVersion,
        settings.ciphers,
        settings.ciphersuites,
    )
    _loadKeyPair(context, settings.certificate, settings.key)

    context.set_session_id(_SESSION_ID_CONTEXT)
    context.set_session_cache_mode(
        SSL.SESS_CACHE_OFF if sessionReuse == "off" else SSL.SESS_CACHE_SERVER
    )
    context.set_timeout(settings.sessionTimeout)

    if settings.clientCertificate != "none":
        assert settings.clientCA is not None
        caPath = str(settings.clientCA).encode()
        _readable(settings.clientCA, "client CA file")
        try:
            context.load_verify_locations(caPath)
            # Tell clients which CAs we accept, so they pick the right
            # certificate.
            context.load_client_ca(caPath)
        except SSL.Error as e:
            raise TLSSettingsError(
                f"cannot load client CA certificates from "
                f"{str(settings.clientCA)!r}: {e}"
            ) from None
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if settings.clientCertificate == "require":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    return context


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
@frozen(eq=False)
class ServerTLS:
    """
    The server side of TLS for one listener: every connection it creates
    (control and data alike) uses the same L{SSL.Context}, hence the same
    session cache and ticket key, which is what makes resumption work.
    Pass it to C{startTLS} or L{twisted.protocols.tls.TLSMemoryBIOFactory}
    for control connections, and L{forData} for data connections; or, for
    a session, L{forSession}.

    Each connection it makes reports its handshake once
    (L{ftpproxy.tls.handshakes}).

    @ivar settings: the TLS settings.
    @ivar context: the one context.
    @ivar listener: the listener's name, for the handshake reports.
    @ivar profile: the TLS profile's name, for the handshake reports.
    @ivar tickets: whether connections may be issued session tickets.
    @ivar sessionReuse: the profile's session reuse: data connections of a
        profile that requires it are reported refused when they do not
        resume (the data leg refuses them).
    """

    settings: TLSSettings
    context: SSL.Context
    listener: str = ""
    profile: str = DEFAULT_PROFILE
    tickets: bool = True
    sessionReuse: str = "optional"
    _withoutTickets: "weakref.WeakSet[SSL.Connection]" = field(
        factory=weakref.WeakSet, repr=False
    )

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self.newConnection(CONTROL, True, None)

    def getContext(self) -> SSL.Context:
        return self.context

    def forData(self) -> "ServerConnections":
        """
        The creator for (PROT P) data connections: same context, so they
        resume the control connection's session, but they hand out no TLS
        1.3 session tickets.  A ticket that the client never reads makes
        its kernel answer the client's close() with a reset, which loses
        the end of an upload (curl before 8.9 with TLS 1.3: the same
        failure vsftpd reports as "426 Failure reading network stream").
        Clients resume data connections from the control connection's
        session, so they need no tickets from data connections.
        """
        return ServerConnections(self, DATA, issueTickets=False)

    def forSession(self, sessionId: str, clientHost: str, events: Any = None) -> "ServerConnections":
        """
        The creator for one session's control connection; its C{data} is
        the one for the session's data connections.  Their handshake
        reports name the session and go to C{events} (an
        L{ftpproxy.events.IProxyEvents}) too.
        """
        return ServerConnections(self, CONTROL, True, SessionBinding(sessionId, clientHost, events))

    def newConnection(
        self, kind: str, issueTickets: bool, binding: Optional[SessionBinding]
    ) -> SSL.Connection:
        """
        A server-side connection of C{kind} (control or data), watched
        from its first byte.
        """
        mustResume = kind == DATA and self.sessionReuse == "required"
        watch = newWatch(kind, self.listener, self.profile, mustResume, binding)
        connection = WatchedConnection(self.context, watch)
        if not (issueTickets and self.tickets):
            self._withoutTickets.add(connection)
        return connection


@implementer(IOpenSSLServerConnectionCreator)
@frozen(eq=False)
class ServerConnections:
    """
    Makes one kind of connection of a listener's L{ServerTLS}.

    @ivar server: the listener's TLS.
    @ivar kind: "control" or "data".
    @ivar issueTickets: whether these connections may get TLS session
        tickets (the profile has the last word).
    @ivar binding: the session they belong to, if any.
    """

    server: ServerTLS
    kind: str
    issueTickets: bool = True
    binding: Optional[SessionBinding] = None

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self.server.newConnection(self.kind, self.issueTickets, self.binding)

    @property
    def data(self) -> "ServerConnections":
        """
        The creator for the data connections of the same session: they may
        get tickets (a download hands the client one for its next data
        connection); L{forData} gives none.
        """
        return attrs.evolve(self, kind=DATA, issueTickets=True)

    def forData(self) -> "ServerConnections":
        """
        See L{ServerTLS.forData}.
        """
        return attrs.evolve(self, kind=DATA, issueTickets=False)


#: The creator L{ServerTLS.forData} returns (its older name).
ServerDataTLS = ServerConnections


def _ticketSuppressor(
    withoutTickets: "weakref.WeakSet[SSL.Connection]",
) -> Callable[[SSL.Connection], None]:
    """
    A servername callback (OpenSSL calls it for every ClientHello, with or
    without SNI) that turns tickets off for data connections.  When that
    callback turns C{OP_NO_TICKET} on, OpenSSL cancels the ticket it meant
    to send after the handshake (C{final_server_name} in its extension
    code); the session the client offered has already been accepted by
    then, so resumption still works.  C{SSL_set_num_tickets}, the obvious
    way, is not in the bindings pyOpenSSL uses.  The tests check both the
    resumption and the effect on uploads.
    """

    def callback(connection: SSL.Connection) -> None:
        if connection in withoutTickets:
            connection.set_options(SSL.OP_NO_TICKET)

    return callback


def makeServerTLS(
    settings: TLSSettings,
    listener: str = "",
    profile: str = DEFAULT_PROFILE,
    tickets: bool = True,
    sessionReuse: str = "optional",
) -> ServerTLS:
    """
    Load the certificate and build the shared server context.

    @raise TLSSettingsError: when a file is missing or does not fit.
    """
    context = serverContext(settings, sessionReuse)
    server = ServerTLS(
        settings,
        context,
        listener=listener,
        profile=profile,
        tickets=tickets and sessionReuse != "off",
        sessionReuse=sessionReuse,
    )
    context.set_tlsext_servername_callback(_ticketSuppressor(server._withoutTickets))
    context.set_info_callback(watchHandshakes)
    return server


def makeProfileTLS(profile: TLSProfile, listener: str = "") -> ServerTLS:
    """
    The server TLS of a listener with C{profile}: a certificate variant is
    made by the development CA (L{ftpproxy.tls.devcerts.makeVariant}) and
    replaces the profile's certificate; the weak-key variant lowers the
    context's OpenSSL security level to 0, so that it can be loaded at all.

    @raise TLSSettingsError: when a file is missing or does not fit.
    """
    settings = profile.settings
    variant = profile.certificateVariant
    if variant is not None:
        if settings.developmentCA is None:
            raise TLSSettingsError(f"certificate variant {variant!r} needs a development CA")
        try:
            made = makeVariant(settings.developmentCA, variant)
        except OSError as e:
            raise TLSSettingsError(
                f"cannot make certificate variant {variant!r} in "
                f"{str(settings.developmentCA)!r}: {e.strerror}"
            ) from None
        settings = attrs.evolve(settings, certificate=made.chain, key=made.key)
        if variant == "weak-key" and "@SECLEVEL=" not in (settings.ciphers or "").upper():
            settings = attrs.evolve(settings, ciphers=(settings.ciphers or "DEFAULT") + ":@SECLEVEL=0")
    return makeServerTLS(
        settings,
        listener=listener,
        profile=profile.name,
        tickets=profile.tickets,
        sessionReuse=profile.sessionReuse,
    )


def _certificateNames(certificate: x509.Certificate) -> str:
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return "no DNS name or IP address (no subjectAltName)"
    return ", ".join(str(getattr(name, "value", name)) for name in names) or "nothing"


def _backendVerifier(
    hostname: str,
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """
    A verify callback: OpenSSL checks the chain, service_identity the name
    (during the handshake, so nothing is ever sent to a wrong server).
    """
    isAddress = isIPAddress(hostname)

    def verify(
        connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            subject = certificate.to_cryptography().subject.rfc4514_string()
            raise BackendCertificateError(
                f"certificate of backend {hostname!r} refused: "
                f"{verifyErrorText(errno)} (depth {depth}, subject {subject})"
            )
        if depth == 0:
            leaf = certificate.to_cryptography()
            try:
                if isAddress:
                    verify_certificate_ip_address(leaf, hostname)
                else:
                    verify_certificate_hostname(leaf, hostname)
            except (VerificationError, CertificateError):
                raise BackendCertificateError(
                    f"certificate of backend {hostname!r} is not valid for "
                    f"that name; it is for {_certificateNames(leaf)}"
                ) from None
        return True

    return verify


def backendContext(settings: BackendTLSSettings) -> SSL.Context:
    """
    Build the client-side context for connections to one backend.  All of a
    backend's control and data connections must use the one context: OpenSSL
    (and pyOpenSSL's C{set_session}) only resume a session within it.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_options(_COMMON_OPTIONS)
    _applyVersionsAndCiphers(
        context, settings.minimumVersion, settings.maximumVersion, settings.ciphers
    )
    if settings.certificate is not None:
        _loadKeyPair(context, settings.certificate, settings.key)
    if settings.verify:
        if settings.caFile is None:
            context.set_default_verify_paths()
        else:
            _readable(settings.caFile, "backend CA file")
            try:
                context.load_verify_locations(str(settings.caFile).encode())
            except SSL.Error as e:
                raise TLSSettingsError(
                    f"cannot load CA certificates from {str(settings.caFile)!r}: {e}"
                ) from None
        context.set_verify(SSL.VERIFY_PEER, _backendVerifier(settings.hostname))
    else:
        context.set_verify(SSL.VERIFY_NONE)
    return context


def tlsConnectionOf(tls: Any) -> SSL.Connection:
    """
    The L{SSL.Connection} behind a TLS transport (after C{startTLS}), a
    L{twisted.protocols.tls.TLSMemoryBIOProtocol}, or the connection itself.
    """
    if isinstance(tls, SSL.Connection):
        return tls
    handle = tls.getHandle()
    if not isinstance(handle, SSL.Connection):
        raise TypeError(f"{tls!r} is not a TLS connection")
    return handle


@implementer(IOpenSSLClientConnectionCreator)
@frozen(eq=False)
class BackendTLS:
    """
    The client side of TLS towards one backend.  Use it as is for the control
    connection, and L{resuming} for data connections.

    @ivar resumeFrom: the control connection whose current session data
        connections offer to resume; L{None} for a full handshake.
    """

    settings: BackendTLSSettings
    context: SSL.Context
    resumeFrom: Optional[SSL.Connection] = None

    def resuming(self, control: Any) -> "BackendTLS":
        """
        A creator for data connections that resume C{control}'s session:
        C{control} is the control connection's TLS transport (or its
        L{SSL.Connection}).  The session is fetched when each data
        connection starts, so with TLS 1.3 it is the newest ticket the
        backend sent.
        """
        return attrs.evolve(self, resumeFrom=tlsConnectionOf(control))

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if not isIPAddress(self.settings.hostname):
            connection.set_tlsext_host_name(self.settings.hostname.encode("idna"))
        if self.resumeFrom is not None:
            session = self.resumeFrom.get_session()
            if session is not None:
                connection.set_session(session)
        return connection


def makeBackendTLS(settings: BackendTLSSettings) -> BackendTLS:
    """
    Build the context for one backend.

    @raise TLSSettingsError: when a file is missing or does not fit.
    """
    return BackendTLS(settings, backendContext(settings))


def sessionReused(tls: Any) -> bool:
    """
    Did this finished handshake resume an earlier session (TLS 1.2 session id
    or ticket, TLS 1.3 pre-shared key from a ticket)?

    C{tls} is an L{SSL.Connection}, a TLS transport or a
    L{twisted.protocols.tls.TLSMemoryBIOProtocol}.  pyOpenSSL does not wrap
    C{SSL_session_reused}: see L{ftpproxy.internals.sslSessionReused}.
    """
    return sslSessionReused(tlsConnectionOf(tls))
