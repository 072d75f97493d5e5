"""
The TLS test rig for FTPS clients (C{--demo --tls-rig}): one listener per
TLS behaviour and certificate variant worth testing a client against, each
with what it tests and what a correct client does there.

The rig is a configuration, nothing more: L{withTLSRig} adds its profiles
(C{[tls.profiles.rig-...]}) and listeners (C{[[listener]]} on 127.0.0.1,
ports from C{tls_rig_ports}) to a configuration that asks for it.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from attrs import frozen

from ftpproxy.settings.listeners import ListenerSettings
from ftpproxy.settings.tls import TLSProfileSettings
from ftpproxy.settings.values import ConfigError, listeningPort

#: The prefix of the rig's listener and profile names.
PREFIX = "rig-"
RIG_INTERFACE = "127.0.0.1"


@frozen
class RigListener:
    """
    One listener of the rig.

    @ivar name: its name (and its profile's), without L{PREFIX}.
    @ivar offset: its port's offset in C{tls_rig_ports}.
    @ivar tests: what it tests.
    @ivar correct: what a correct client does there.
    @ivar tls: "explicit", "implicit" or "none".
    @ivar requireTLS: the listener's require_tls.
    @ivar profile: its profile's L{TLSSettings} attributes (with the
        development CA's files as C{"{ca}"}, C{"{clientCA}"}), or L{None}
        for the default profile.
    @ivar sessionReuse: its profile's session_reuse.
    @ivar tickets: its profile's tickets.
    @ivar variant: its profile's certificate_variant.
    """

    name: str
    offset: int
    tests: str
    correct: str
    tls: str = "explicit"
    requireTLS: Optional[bool] = None
    profile: Optional[dict[str, Any]] = None
    sessionReuse: Optional[str] = None
    tickets: Optional[bool] = None
    variant: Optional[str] = None

    @property
    def label(self) -> str:
        return PREFIX + self.name

    @property
    def hasProfile(self) -> bool:
        return self.tls != "none" and (
            self.profile is not None
            or self.sessionReuse is not None
            or self.tickets is not None
            or self.variant is not None
        )


_VERIFYING = "a client that checks certificates refuses it; with checks off it works"

# fmt: off
RIG: tuple[RigListener, ...] = (
    RigListener("require-tls", 0, "logins and transfers only under TLS",
                "sends AUTH TLS before USER, and PBSZ 0 and PROT P before transfers "
                "(USER first gets 530)",
                requireTLS=True),
    RigListener("reuse-required", 1,
                "data connections must resume the control connection's TLS session "
                "(like vsftpd's require_ssl_reuse)",
                "resumes the session on every data connection; one that does not "
                "(Python's ftplib, Apache Commons Net) gets 522",
                sessionReuse="required"),
    RigListener("expired", 2, "an expired certificate", _VERIFYING, variant="expired"),
    RigListener("not-yet-valid", 3, "a certificate valid only from next year",
                _VERIFYING, variant="not-yet-valid"),
    RigListener("wrong-host", 4, "a certificate for another host name (wrong-host.invalid)",
                _VERIFYING, variant="wrong-host"),
    RigListener("self-signed", 5, "a self-signed certificate", _VERIFYING, variant="self-signed"),
    RigListener("unknown-root", 6, "a certificate from a CA the client does not trust",
                _VERIFYING, variant="unknown-root"),
    RigListener("missing-intermediate", 7,
                "a certificate whose intermediate CA the server does not send",
                _VERIFYING + " (unless it fetches the intermediate itself)",
                variant="missing-intermediate"),
    RigListener("weak-key", 8, "a certificate with a 1024-bit RSA key",
                "a client at OpenSSL security level 2 (Debian's default) refuses it; "
                "with checks off, or at a lower level, it works",
                variant="weak-key"),
    RigListener("tls12-only", 9, "a server that speaks TLS 1.2 at most",
                "negotiates TLS 1.2 (a TLS 1.3-only client fails with protocol_version)",
                profile={"maximumVersion": "1.2"}),
    RigListener("tls13-only", 10, "a server that speaks TLS 1.3 only",
                "negotiates TLS 1.3 (a client without it fails with protocol_version)",
                profile={"minimumVersion": "1.3"}),
    RigListener("tls12-session-ids", 11,
                "TLS 1.2 without session tickets, reuse required: resumption by session id",
                "resumes by session id on every data connection (one that only resumes "
                "with tickets gets 522)",
                profile={"maximumVersion": "1.2"}, sessionReuse="required", tickets=False),
    RigListener("tls13-no-tickets", 12,
                "TLS 1.3 without session tickets: no data connection can resume",
                "copes with full handshakes on every data connection",
                profile={"minimumVersion": "1.3"}, tickets=False),
    RigListener("reuse-off", 13, "a server that never resumes a session",
                "copes with full handshakes on every data connection",
                sessionReuse="off"),
    RigListener("client-certificate", 14, "a server that requires a client certificate",
                "presents a certificate from the development CA (client.pem, client-key.pem); "
                "without one the handshake fails (certificate_required)",
                profile={"clientCertificate": "require", "clientCA": "{ca}"}),
    RigListener("implicit-reuse-required", 15,
                "implicit FTPS (TLS from the first byte) with session reuse required",
                "starts TLS at once, assumes PROT P, resumes the session on data connections",
                tls="implicit", sessionReuse="required"),
    RigListener("no-tls", 16, "a server that offers no TLS (AUTH gets 502)",
                "one that requires TLS stops before sending a password; an opportunistic one "
                "goes on in the clear",
                tls="none"),
)
# fmt: on


def rigPort(config: Any, listener: RigListener) -> int:
    return config.tlsRigPorts.low + listener.offset


def withTLSRig(config: Any) -> Any:
    """
    C{config} with the rig's profiles and listeners added, when it asks
    for the rig (C{tls_rig}); as it is otherwise, or when they are there
    already.

    @raise ConfigError: when the rig cannot be added: no development CA,
        too few ports, or names taken.
    """
    if not config.tlsRig:
        return config
    tls = config.tls
    if tls is None or tls.developmentCA is None:
        raise ConfigError(
            "tls_rig needs [tls] development_ca (--demo makes one when no [tls] is given)"
        )
    if any(p.name.startswith(PREFIX) for p in tls.profiles):
        return config
    if len(config.tlsRigPorts) < len(RIG):
        raise ConfigError(
            f"tls_rig_ports {config.tlsRigPorts} has {len(config.tlsRigPorts)} ports; "
            f"the rig needs {len(RIG)}"
        )
    taken = {listeningPort(l.endpoint) for l in config.listeners}
    taken |= {listeningPort(e) for e in config.listen + config.implicitListen}
    ca = tls.developmentCA / "ca.pem"
    profiles = []
    listeners = []
    for entry in RIG:
        port = rigPort(config, entry)
        if port in taken:
            raise ConfigError(f"tls_rig_ports: port {port} ({entry.label}) is already a listener")
        if entry.hasProfile:
            overrides = {
                key: str(value).format(ca=ca) if isinstance(value, str) else value
                for key, value in (entry.profile or {}).items()
            }
            profiles.append(
                TLSProfileSettings(
                    entry.label,
                    overrides,
                    sessionReuse=entry.sessionReuse,
                    tickets=entry.tickets,
                    certificateVariant=entry.variant,
                )
            )
        listeners.append(
            ListenerSettings(
                f"tcp:{port}:interface={RIG_INTERFACE}",
                tls=entry.tls,
                tlsProfile=entry.label if entry.hasProfile else None,
                requireTLS=entry.requireTLS,
                name=entry.label,
            )
        )
    return attrs.evolve(
        config,
        tls=attrs.evolve(tls, profiles=tls.profiles + tuple(profiles)),
        listeners=config.listeners + tuple(listeners),
    )


def rigExpectations() -> dict[str, str]:
    """
    What a correct client does, by rig listener name (for the report).
    """
    return {entry.label: entry.correct for entry in RIG}


def rigTable(config: Any) -> str:
    """
    The rig as a table for people: port, what it tests, what a correct
    client does.
    """
    rows = [("port", "listener", "tests", "a correct client")]
    for endpoint, name, tests, correct in _demoRows(config):
        rows.append((endpoint, name, tests, correct))
    for entry in RIG:
        mode = {"implicit": "implicit FTPS", "none": "plain FTP"}.get(entry.tls, "explicit FTPS")
        rows.append((str(rigPort(config, entry)), entry.label, f"{mode}: {entry.tests}", entry.correct))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = []
    for port, name, tests, correct in rows:
        lines.append(f"  {port:<{width[0]}}  {name:<{width[1]}}  {tests}")
        lines.append(f"  {'':<{width[0]}}  {'':<{width[1]}}    -> {correct}")
    return "\n".join(lines) + "\n"


def _demoRows(config: Any) -> list[tuple[str, str, str, str]]:
    rows = []
    for endpoint in config.listen:
        rows.append(
            (str(listeningPort(endpoint)), "demo", "explicit FTPS (and plain FTP): the default "
             "profile, TLS 1.2 and 1.3, session reuse optional", "works")
        )
    for endpoint in config.implicitListen:
        rows.append(
            (str(listeningPort(endpoint)), "demo-implicit",
             "implicit FTPS: the default profile", "starts TLS at once and works")
        )
    return rows
