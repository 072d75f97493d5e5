"""
Backend settings: one C{[[backend]]} table, the balancing policies by name,
and the C{[user_hash]} table.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import attrs

from ftpproxy.settings.tls import BackendTLSSettings, TLSSettingsError
from ftpproxy.settings.values import (
    ConfigError,
    HostPort,
    SettingError,
    expect,
    isCount,
    optional,
    rejectUnknownKeys,
)

BACKEND_DATA_ADDRESS_POLICIES = ("check", "control", "any")
BACKEND_TLS_MODES = ("none", "explicit", "implicit")
DATA_PROTECTION_LEVELS = ("private", "clear")

#: The balancing policies by the names C{policy} and C{--policy} take.
POLICIES: tuple[str, ...] = (
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "random",
    "source-hash",
    "user-hash",
)

#: The C{[[backend]]} keys: the BackendConfig (or BackendTLSSettings) field
#: each sets, and what it says.
BACKEND_KEYS: dict[str, tuple[str, str]] = {
    "address": ("address", "HOST:PORT or [IPV6]:PORT of the backend (required)."),
    "name": ("name", "Name in logs, metrics and the admin API (default: the address)."),
    "weight": ("weight", "Share under weighted-round-robin; 0 makes it a backup (default 1)."),
    "data_address": (
        "dataAddress",
        'The host in its 227 replies: "check" (must be the control host; default), '
        '"control" (ignore it) or "any".',
    ),
    "allow_low_data_ports": ("allowLowDataPorts", "Accept 227 ports below 1024 (default false)."),
    "tls": ("tls", '"none" (default), "explicit" (AUTH TLS) or "implicit".'),
    "data_protection": (
        "dataProtection",
        'PROT level asked of a TLS backend: "private" (default) or "clear".',
    ),
    "proxy_protocol": ("proxyProtocol", "Send a PROXY protocol v1 or v2 header naming the client."),
    "verify": ("verify", "Verify the backend's certificate (default true)."),
    "ca_file": ("caFile", "PEM with the CAs to trust (default: the system store)."),
    "server_name": ("hostname", "Name the certificate must be valid for (default: the address's host)."),
    "min_version": ("minimumVersion", "Lowest TLS version (default 1.2)."),
    "max_version": ("maximumVersion", "Highest TLS version (default: the newest)."),
    "ciphers": ("ciphers", "OpenSSL cipher list for TLS 1.2 and below."),
    "client_certificate": ("certificate", "Client certificate PEM to present."),
    "client_key": ("key", "Its key, if not in client_certificate."),
}


def _key(attribute: attrs.Attribute) -> str:
    return next(key for key, (name, _) in BACKEND_KEYS.items() if name == attribute.name)


def _where(instance: Any) -> str:
    return f"backend {instance.name}:"


def _oneOf(choices: Sequence[str]):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise SettingError(_key(attribute), f"must be one of {', '.join(choices)}", _where(instance))

    return check


def _checkWeight(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isCount(value) or value < 0:
        raise SettingError("weight", "must not be negative", _where(instance))


def _checkProxyProtocol(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value not in (1, 2):
        raise SettingError("proxy_protocol", "must be 1 or 2", _where(instance))


def _checkTLSSettings(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, BackendTLSSettings):
        raise SettingError("tls", "settings must be BackendTLSSettings", _where(instance))


def _checkAddress(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, HostPort):
        raise SettingError("address", f"must be a HostPort, not {value!r}", _where(instance))


@attrs.frozen
class BackendConfig:
    """
    One backend FTP server.

    ``dataAddress`` says what to do with the host a backend names in its 227
    reply: ``check`` refuses any host but the control connection's peer,
    ``control`` ignores it and uses that peer (as curl does), ``any`` trusts it.

    ``tls`` is how the proxy reaches the backend: clear, explicit AUTH TLS or
    implicit TLS; ``dataProtection`` is the PROT level the proxy asks a TLS
    backend for (``clear`` for servers that cannot encrypt data, such as
    Alfresco's).
    """

    address: HostPort = attrs.field(validator=_checkAddress)
    name: str
    weight: int = attrs.field(default=1, validator=_checkWeight)
    dataAddress: str = attrs.field(default="check", validator=_oneOf(BACKEND_DATA_ADDRESS_POLICIES))
    allowLowDataPorts: bool = False
    tls: str = attrs.field(default="none", validator=_oneOf(BACKEND_TLS_MODES))
    tlsSettings: BackendTLSSettings | None = attrs.field(default=None, validator=_checkTLSSettings)
    dataProtection: str = attrs.field(default="private", validator=_oneOf(DATA_PROTECTION_LEVELS))
    proxyProtocol: int | None = attrs.field(default=None, validator=_checkProxyProtocol)

    @property
    def usesTLS(self) -> bool:
        return self.tls != "none"


def backendFromMapping(table: Mapping[str, Any], where: str) -> BackendConfig:
    """
    One C{[[backend]]} table; C{where} starts every error message.
    """
    rejectUnknownKeys(table, BACKEND_KEYS, where)
    if "address" not in table:
        raise ConfigError(f"{where}: address = \"HOST:PORT\" is missing")
    address = HostPort.parse(expect(table["address"], str, f"{where} address"), where)
    tls = expect(table.get("tls", "none"), str, f"{where} tls")
    tlsSettings = None
    if tls != "none":
        try:
            tlsSettings = BackendTLSSettings(
                hostname=expect(table.get("server_name", address.host), str, f"{where} server_name"),
                verify=expect(table.get("verify", True), bool, f"{where} verify"),
                caFile=optional(table, "ca_file", str, where),
                minimumVersion=expect(table.get("min_version", "1.2"), str, f"{where} min_version"),
                maximumVersion=optional(table, "max_version", str, where),
                ciphers=optional(table, "ciphers", str, where),
                certificate=optional(table, "client_certificate", str, where),
                key=optional(table, "client_key", str, where),
            )
        except TLSSettingsError as e:
            raise ConfigError(f"{where}: {e}") from None
    return BackendConfig(
        address=address,
        name=expect(table.get("name", str(address)), str, f"{where} name"),
        weight=expect(table.get("weight", 1), int, f"{where} weight"),
        dataAddress=expect(table.get("data_address", "check"), str, f"{where} data_address"),
        allowLowDataPorts=expect(
            table.get("allow_low_data_ports", False), bool, f"{where} allow_low_data_ports"
        ),
        tls=tls,
        tlsSettings=tlsSettings,
        dataProtection=expect(
            table.get("data_protection", "private"), str, f"{where} data_protection"
        ),
        proxyProtocol=optional(table, "proxy_protocol", int, where),
    )


def backendsFromArguments(addresses: Iterable[str]) -> tuple[BackendConfig, ...]:
    """
    Backends given as ``--backend HOST:PORT``, named after their address.
    """
    backends = []
    for text in addresses:
        address = HostPort.parse(text, "--backend")
        backends.append(BackendConfig(address=address, name=str(address)))
    return tuple(backends)


#: The C{[user_hash]} keys and what each says.
USER_HASH_KEYS: dict[str, str] = {
    "ignore_case": "Treat user names that differ only in case as one user (default false).",
    "users": 'A table of user = "backend name": pinned users go to that backend while it is available.',
}


def userHashOptions(
    table: Mapping[str, Any], where: str, backendNames: Sequence[str] | None = None
) -> dict[str, Any]:
    """
    The C{user-hash} options from a TOML table such as::

        [user_hash]
        ignore_case = true
        [user_hash.users]
        alice = "node1"

    as keyword arguments for the user-hash policy (C{ignoreCase},
    C{table}).  C{where} starts error messages; with C{backendNames}, a
    user pinned to a backend not among them is refused (L{ProxyConfig}
    checks that too, against its backends).
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a [user_hash] table")
    rejectUnknownKeys(table, USER_HASH_KEYS, where)
    options: dict[str, Any] = {}
    if "ignore_case" in table:
        if not isinstance(table["ignore_case"], bool):
            raise ConfigError(f"{where} ignore_case must be true or false")
        options["ignoreCase"] = table["ignore_case"]
    users = table.get("users", {})
    if not isinstance(users, Mapping):
        raise ConfigError(f"{where} users must be a table of user = \"backend name\"")
    for user, backend in users.items():
        if not isinstance(backend, str):
            raise ConfigError(f"{where} users: {user} must name a backend, not {backend!r}")
    if users:
        options["table"] = dict(users)
    if backendNames is not None:
        checkPinnedUsers(options, backendNames, where)
    return options


def checkPinnedUsers(options: Mapping[str, Any], backendNames: Sequence[str], where: str) -> None:
    """
    Refuse user-hash options that pin a user to a backend not in
    C{backendNames}.
    """
    for user, backend in options.get("table", {}).items():
        if backend not in backendNames:
            raise ConfigError(
                f"{where} users: {user} = {backend!r} is not a backend; backends are "
                + (", ".join(backendNames) or "none")
            )
