"""
TLS settings: how the proxy's listeners speak TLS to clients (C{[tls]}) and
how it speaks TLS to one FTPS backend (the TLS keys of a C{[[backend]]}).

These are values only; L{ftpproxy.tls.contexts} turns them into OpenSSL
contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import attrs
from attrs import field, frozen
from OpenSSL import SSL

from ftpproxy.settings.values import ConfigError, expect, rejectUnknownKeys

#: The protocol versions the settings name, oldest first.
TLS_VERSION_NAMES: tuple[str, ...] = ("1.0", "1.1", "1.2", "1.3")

ClientCertificateMode = Literal["none", "request", "require"]
CLIENT_CERTIFICATE_MODES: tuple[str, ...] = ("none", "request", "require")


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
    rejectUnknownKeys(table, TLS_KEYS, where)
    if "certificate" not in table:
        raise ConfigError(f"{where}: certificate = \"PEM FILE\" is missing")
    arguments = {}
    for key, (fieldName, _) in TLS_KEYS.items():
        if key in table:
            kind = int if key == "session_timeout" else str
            arguments[fieldName] = expect(table[key], kind, f"{where} {key}")
    return makeTLSSettings(**arguments)
