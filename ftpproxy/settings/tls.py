"""
TLS settings: how the proxy's listeners speak TLS to clients (C{[tls]}, the
default profile, and C{[tls.profiles.NAME]}, named profiles that inherit
from it) and how it speaks TLS to one FTPS backend (the TLS keys of a
C{[[backend]]}).

These are values only; L{ftpproxy.tls.contexts} turns them into OpenSSL
contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import re

import attrs
from attrs import field, frozen
from OpenSSL import SSL

from ftpproxy.settings.values import ConfigError, expect, rejectUnknownKeys

#: The protocol versions the settings name, oldest first.
TLS_VERSION_NAMES: tuple[str, ...] = ("1.0", "1.1", "1.2", "1.3")

ClientCertificateMode = Literal["none", "request", "require"]
CLIENT_CERTIFICATE_MODES: tuple[str, ...] = ("none", "request", "require")

#: What a profile does about TLS session resumption on data connections:
#: "off" (the proxy never resumes a session), "optional" (it resumes when
#: the client asks), "required" (data connections that do not resume the
#: control connection's session are refused with 522, as vsftpd does).
SESSION_REUSE_MODES: tuple[str, ...] = ("off", "optional", "required")

#: Certificates the development CA makes for testing clients' certificate
#: checks; a profile names one with C{certificate_variant}.
CERTIFICATE_VARIANTS: dict[str, str] = {
    "expired": "expired a year ago",
    "not-yet-valid": "valid only from a year from now",
    "wrong-host": "valid, but for the name wrong-host.invalid only",
    "self-signed": "signed by its own key (no CA)",
    "unknown-root": "signed by a CA the client does not know (the chain is sent)",
    "missing-intermediate": "signed by an intermediate CA the server does not send",
    "weak-key": "a 1024-bit RSA key (refused at OpenSSL security level 2)",
}

#: The name of the profile C{[tls]} itself defines.
DEFAULT_PROFILE = "default"

_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TLSSettingsError(ValueError):
    """
    TLS settings that cannot work; the message names the setting and says
    what would.
    """


def _optionalPath(value: Any) -> Optional[Path]:
    return None if value is None else Path(value)


def _version(name: str, optional: bool = False):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if value not in TLS_VERSION_NAMES:
            raise TLSSettingsError(
                f"{name} must be one of {', '.join(map(repr, TLS_VERSION_NAMES))}, "
                f"not {value!r}"
            )

    return check


def _checkMaximumVersion(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    minimum = instance.minimumVersion
    if value is not None and TLS_VERSION_NAMES.index(value) < TLS_VERSION_NAMES.index(minimum):
        raise TLSSettingsError(f"maximum TLS version {value} is below the minimum {minimum}")


def _checkOldVersionsNeedLevelZero(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    # OpenSSL 3+ only negotiates TLS 1.0/1.1 at security level 0; say so
    # instead of letting every old client fail with "no protocols".
    ciphers = instance.ciphers
    if TLS_VERSION_NAMES.index(instance.minimumVersion) < TLS_VERSION_NAMES.index("1.2") and (
        ciphers is None or "@SECLEVEL=0" not in ciphers.upper()
    ):
        raise TLSSettingsError(
            f"TLS {instance.minimumVersion} needs OpenSSL security level 0: set the cipher "
            f"list to e.g. 'DEFAULT:@SECLEVEL=0' (only for testing old clients)"
        )


def _checkCipherString(instance: Any, attribute: attrs.Attribute, value: Optional[str]) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise TLSSettingsError(f"{attribute.name} must be a non-empty string")
    probe = SSL.Context(SSL.TLS_METHOD)
    try:
        if attribute.name == "ciphersuites":
            probe.set_tls13_ciphersuites(value.encode("ascii"))
        else:
            probe.set_cipher_list(value.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise TLSSettingsError(
            f"{attribute.name} {value!r} selects nothing OpenSSL knows: {e}"
        ) from None


def _checkClientCertificate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in CLIENT_CERTIFICATE_MODES:
        raise TLSSettingsError(
            "client certificate must be one of "
            f"{', '.join(map(repr, CLIENT_CERTIFICATE_MODES))}, not {value!r}"
        )
    if value != "none" and instance.clientCA is None:
        raise TLSSettingsError(
            f"client certificate {value!r} needs a CA file "
            "to verify client certificates against"
        )


def _checkSessionTimeout(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TLSSettingsError(
            f"session timeout must be a positive number of seconds, not {value!r}"
        )


def _checkProfileName(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not _PROFILE_NAME.fullmatch(value):
        raise TLSSettingsError(
            f"profile name {value!r} must be letters, digits, '_', '.' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    if value == DEFAULT_PROFILE:
        raise TLSSettingsError(f"profile name {value!r} is taken by [tls] itself")


def _checkSessionReuse(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value not in SESSION_REUSE_MODES:
        raise TLSSettingsError(
            f"session_reuse must be one of {', '.join(map(repr, SESSION_REUSE_MODES))}, "
            f"not {value!r}"
        )


def _checkTickets(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TLSSettingsError(f"tickets must be true or false, not {value!r}")
    if value is True and instance.sessionReuse == "off":
        raise TLSSettingsError(
            'tickets = true contradicts session_reuse = "off" (tickets are for resuming)'
        )


def _checkVariant(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value not in CERTIFICATE_VARIANTS:
        raise TLSSettingsError(
            f"certificate_variant must be one of {', '.join(map(repr, CERTIFICATE_VARIANTS))}, "
            f"not {value!r}"
        )


def _checkOverrides(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    known = {fieldName for fieldName, _ in TLS_KEYS.values()}
    for name, _ in value:
        if name not in known:
            raise TLSSettingsError(f"a profile cannot set {name!r}")


def _sortedPairs(value: Any) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), v) for k, v in items))


@frozen
class TLSProfileSettings:
    """
    One C{[tls.profiles.NAME]} table as written: only what it sets.  What it
    does not set comes from C{[tls]} (see L{resolveProfile}).

    @ivar name: the profile's name, which listeners give as C{tls_profile}.
    @ivar overrides: the L{TLSSettings} attributes it sets, as sorted
        (attribute, value) pairs.
    @ivar sessionReuse: one of L{SESSION_REUSE_MODES}, or L{None} to inherit
        the default profile's (C{require_session_reuse}).
    @ivar tickets: whether TLS session tickets are issued (L{None}: yes,
        unless session reuse is off).
    @ivar certificateVariant: one of L{CERTIFICATE_VARIANTS}: the development
        CA makes the certificate, which replaces the inherited one.
    """

    name: str = field(validator=_checkProfileName)
    overrides: tuple[tuple[str, Any], ...] = field(
        default=(), converter=_sortedPairs, validator=_checkOverrides
    )
    sessionReuse: Optional[str] = field(default=None, validator=_checkSessionReuse)
    tickets: Optional[bool] = field(default=None, validator=_checkTickets)
    certificateVariant: Optional[str] = field(default=None, validator=_checkVariant)


def _checkProfiles(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, TLSProfileSettings) for p in value):
        raise TLSSettingsError(f"profiles must be a tuple of TLSProfileSettings, not {value!r}")
    names = [p.name for p in value]
    for name in names:
        if names.count(name) > 1:
            raise TLSSettingsError(f"profile {name!r} is defined twice")
    for profile in value:
        if profile.certificateVariant is not None and instance.developmentCA is None:
            raise TLSSettingsError(
                f"profile {profile.name!r}: certificate_variant needs development_ca = "
                '"DIRECTORY" in [tls] (where the development CA that signs it lives)'
            )
        try:
            resolveProfile(instance, profile.name, "optional")
        except TLSSettingsError as e:
            raise TLSSettingsError(f"profile {profile.name!r}: {e}") from None


@frozen
class TLSSettings:
    """
    How the proxy's listeners speak TLS to FTP clients (the TOML C{[tls]}
    section plus C{--tls-cert}/C{--tls-key}).

    @ivar certificate: PEM with the server certificate, optionally followed by
        its chain, and optionally the private key too.
    @ivar key: PEM with the private key; L{None} means it is in
        C{certificate}.
    @ivar minimumVersion: lowest TLS version accepted ("1.0" to "1.3").
    @ivar maximumVersion: highest TLS version offered; L{None} for the newest
        the library supports.
    @ivar ciphers: OpenSSL cipher list for TLS 1.2 and below; L{None} for
        OpenSSL's defaults.
    @ivar ciphersuites: OpenSSL TLS 1.3 cipher suites
        (C{"TLS_AES_128_GCM_SHA256:..."}); L{None} for OpenSSL's defaults.
    @ivar clientCertificate: "none", "request" (verified if sent) or
        "require".
    @ivar clientCA: PEM with the CA certificates client certificates are
        verified against; needed unless C{clientCertificate} is "none".
    @ivar sessionTimeout: seconds a TLS session can be resumed for.  FTP
        sessions run for hours and resumption never renews a session's
        lifetime, so this is longer than OpenSSL's two hours.
    @ivar developmentCA: a directory holding the development CA
        (L{ftpproxy.tls.devcerts}) that signs certificate variants; made
        there if missing.  L{None} when no profile uses a variant.
    @ivar profiles: the named profiles (C{[tls.profiles.NAME]}); each
        inherits from these settings every key it does not set.
    """

    certificate: Path = field(converter=Path)
    key: Optional[Path] = field(default=None, converter=_optionalPath)
    minimumVersion: str = field(
        default="1.2",
        validator=[_version("minimum TLS version"), _checkOldVersionsNeedLevelZero],
    )
    maximumVersion: Optional[str] = field(
        default=None,
        validator=[_version("maximum TLS version", optional=True), _checkMaximumVersion],
    )
    ciphers: Optional[str] = field(default=None, validator=_checkCipherString)
    ciphersuites: Optional[str] = field(default=None, validator=_checkCipherString)
    clientCertificate: ClientCertificateMode = field(
        default="none", validator=_checkClientCertificate
    )
    clientCA: Optional[Path] = field(default=None, converter=_optionalPath)
    sessionTimeout: int = field(default=86400, validator=_checkSessionTimeout)
    developmentCA: Optional[Path] = field(default=None, converter=_optionalPath)
    profiles: tuple["TLSProfileSettings", ...] = field(default=(), validator=_checkProfiles)

    def profileNamed(self, name: Optional[str]) -> "TLSProfileSettings | None":
        """
        The named profile's table, or L{None} for the default profile.

        @raise KeyError: when there is no such profile.
        """
        if name is None or name == DEFAULT_PROFILE:
            return None
        for profile in self.profiles:
            if profile.name == name:
                return profile
        raise KeyError(name)


def _checkHostname(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value or value != value.strip():
        raise TLSSettingsError(
            f"backend TLS hostname must be a DNS name or IP address, not {value!r}"
        )


def _checkVerify(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TLSSettingsError(f"verify must be true or false, not {value!r}")


def _checkClientKey(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and instance.certificate is None:
        raise TLSSettingsError("a backend client key needs a certificate too")


@frozen
class BackendTLSSettings:
    """
    How the proxy speaks TLS to one FTPS backend.

    @ivar hostname: the DNS name or IP address the backend's certificate must
        be valid for (also sent as SNI when it is a name).
    @ivar verify: verify the certificate chain and C{hostname}; turning this
        off has to be said explicitly.
    @ivar caFile: PEM with the CA certificates to trust; L{None} for the
        system's store.
    @ivar certificate: a client certificate PEM to present, optionally with
        the key in it; L{None} for none.
    @ivar key: the client certificate's key if not in C{certificate}.
    """

    hostname: str = field(validator=_checkHostname)
    verify: bool = field(default=True, validator=_checkVerify)
    caFile: Optional[Path] = field(default=None, converter=_optionalPath)
    minimumVersion: str = field(
        default="1.2",
        validator=[_version("minimum TLS version"), _checkOldVersionsNeedLevelZero],
    )
    maximumVersion: Optional[str] = field(
        default=None,
        validator=[_version("maximum TLS version", optional=True), _checkMaximumVersion],
    )
    ciphers: Optional[str] = field(default=None, validator=_checkCipherString)
    certificate: Optional[Path] = field(default=None, converter=_optionalPath)
    key: Optional[Path] = field(default=None, converter=_optionalPath, validator=_checkClientKey)


@frozen
class TLSProfile:
    """
    A profile as it applies to a listener: every setting resolved.

    @ivar name: the profile's name (L{DEFAULT_PROFILE} for C{[tls]}).
    @ivar settings: the TLS settings, inherited keys included (and no
        profiles of their own).
    @ivar sessionReuse: one of L{SESSION_REUSE_MODES}.
    @ivar tickets: whether TLS session tickets are issued.
    @ivar certificateVariant: the development CA's certificate variant that
        replaces C{settings.certificate}, or L{None}.
    """

    name: str
    settings: TLSSettings
    sessionReuse: str
    tickets: bool
    certificateVariant: Optional[str] = None


def resolveProfile(tls: TLSSettings, name: Optional[str], defaultReuse: str) -> TLSProfile:
    """
    The profile C{name} (L{None} or L{DEFAULT_PROFILE}: C{[tls]} itself),
    inheriting from C{tls} every key it does not set.

    @param defaultReuse: the default profile's session reuse (what
        C{require_session_reuse} says), which named profiles inherit.
    @raise KeyError: when there is no such profile.
    @raise TLSSettingsError: when the keys it sets do not fit with the ones
        it inherits.
    """
    table = tls.profileNamed(name)
    base = attrs.evolve(tls, profiles=())
    if table is None:
        return TLSProfile(DEFAULT_PROFILE, base, defaultReuse, True)
    settings = attrs.evolve(base, **dict(table.overrides))
    reuse = table.sessionReuse if table.sessionReuse is not None else defaultReuse
    tickets = table.tickets if table.tickets is not None else reuse != "off"
    return TLSProfile(table.name, settings, reuse, tickets, table.certificateVariant)


#: The C{[tls]} table's keys: TLSSettings field and what each says.
TLS_KEYS: dict[str, tuple[str, str]] = {
    "certificate": ("certificate", "PEM with the certificate and its chain (and the key, if no key is given)."),
    "key": ("key", "PEM with the private key, if not in certificate."),
    "min_version": ("minimumVersion", "Lowest TLS version accepted: 1.0, 1.1, 1.2 (default) or 1.3."),
    "max_version": ("maximumVersion", "Highest TLS version offered (default: the newest)."),
    "ciphers": ("ciphers", "OpenSSL cipher list for TLS 1.2 and below."),
    "ciphersuites": ("ciphersuites", "OpenSSL TLS 1.3 cipher suites."),
    "client_certificate": ("clientCertificate", '"none" (default), "request" or "require".'),
    "client_ca": ("clientCA", "PEM with the CAs client certificates are verified against."),
    "session_timeout": ("sessionTimeout", "Seconds a TLS session can be resumed for (default 86400)."),
}


#: Keys a C{[tls.profiles.NAME]} table has besides those of L{TLS_KEYS}.
PROFILE_KEYS: dict[str, tuple[str, str]] = {
    "session_reuse": (
        "sessionReuse",
        '"off" (never resume), "optional" or "required" (data connections that do not '
        "resume the control connection's session get 522); default: require_session_reuse.",
    ),
    "tickets": ("tickets", "Issue TLS session tickets (default true; false: TLS 1.2 resumes "
                "by session id, TLS 1.3 cannot resume)."),
    "certificate_variant": (
        "certificateVariant",
        "A certificate the development CA makes instead of certificate: "
        + ", ".join(f"{name} ({what})" for name, what in CERTIFICATE_VARIANTS.items())
        + ".",
    ),
}

#: Keys of C{[tls]} itself besides those of L{TLS_KEYS}.
DEFAULT_PROFILE_KEYS: dict[str, tuple[str, str]] = {
    "development_ca": (
        "developmentCA",
        "Directory of the development CA that signs certificate variants (made there if "
        "missing; clients trust its ca.pem).",
    ),
    "profiles": ("profiles", "[tls.profiles.NAME] tables: named profiles for listeners."),
}


def makeTLSSettings(**arguments: Any) -> TLSSettings:
    """
    TLSSettings whose validation errors read as configuration errors.
    """
    try:
        return TLSSettings(**arguments)
    except TLSSettingsError as e:
        raise ConfigError(f"TLS: {e}") from None


def tlsSettingsFromMapping(table: Mapping[str, Any], where: str) -> TLSSettings:
    """
    The C{[tls]} table: the proxy's certificate and what it accepts.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a [tls] table")
    rejectUnknownKeys(table, {**TLS_KEYS, **DEFAULT_PROFILE_KEYS}, where)
    if "certificate" not in table:
        raise ConfigError(f"{where}: certificate = \"PEM FILE\" is missing")
    arguments: dict[str, Any] = _tlsKeys(table, where)
    if "development_ca" in table:
        arguments["developmentCA"] = expect(table["development_ca"], str, f"{where} development_ca")
    profiles = table.get("profiles", {})
    if not isinstance(profiles, Mapping) or not all(isinstance(p, Mapping) for p in profiles.values()):
        raise ConfigError(f"{where} profiles must be [tls.profiles.NAME] tables")
    arguments["profiles"] = tuple(
        _profileFromMapping(name, profile, f"{where} profiles.{name}:")
        for name, profile in profiles.items()
    )
    return makeTLSSettings(**arguments)


def _tlsKeys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    arguments = {}
    for key, (fieldName, _) in TLS_KEYS.items():
        if key in table:
            kind = int if key == "session_timeout" else str
            arguments[fieldName] = expect(table[key], kind, f"{where} {key}")
    return arguments


def _profileFromMapping(name: str, table: Mapping[str, Any], where: str) -> TLSProfileSettings:
    rejectUnknownKeys(table, {**TLS_KEYS, **PROFILE_KEYS}, where)
    extra: dict[str, Any] = {}
    for key, kind in (("session_reuse", str), ("tickets", bool), ("certificate_variant", str)):
        if key in table:
            extra[PROFILE_KEYS[key][0]] = expect(table[key], kind, f"{where} {key}")
    try:
        return TLSProfileSettings(name, _tlsKeys(table, where), **extra)
    except TLSSettingsError as e:
        raise ConfigError(f"{where} {e}") from None
