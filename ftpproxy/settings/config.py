"""
The proxy's configuration: frozen values, built from a TOML file and the
command line, validated at the edge so that start-up fails with one clear
message instead of a traceback later.
"""

from __future__ import annotations

import ipaddress
import tomllib
from typing import Any, Iterable, Mapping

import attrs

from ftpproxy.tls.contexts import BackendTLSSettings, TLSSettings, TLSSettingsError


class ConfigError(ValueError):
    """
    The configuration is unusable; the message names the problem.
    """


@attrs.frozen
class HostPort:
    """
    A host and a TCP port, written ``HOST:PORT`` or ``[IPV6]:PORT``.
    """

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "address") -> HostPort:
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ConfigError(f"{what} {text!r}: expected [IPV6]:PORT")
            portText = rest[1:]
        else:
            host, sep, portText = text.rpartition(":")
            if not sep or ":" in host:
                raise ConfigError(
                    f"{what} {text!r}: expected HOST:PORT "
                    "(IPv6 addresses go in brackets: [::1]:21)"
                )
        if not host:
            raise ConfigError(f"{what} {text!r}: the host is missing")
        return cls(host, parsePort(portText, f"{what} {text!r}"))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parsePort(text: str | int, what: str) -> int:
    """
    A TCP port number from 1 to 65535.
    """
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: {text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is outside 1-65535")
    return port


@attrs.frozen
class PortRange:
    """
    An inclusive range of TCP ports, written ``LO-HI``.
    """

    low: int
    high: int

    @classmethod
    def parse(cls, text: str, what: str = "port range") -> PortRange:
        lowText, sep, highText = str(text).partition("-")
        if not sep:
            raise ConfigError(f"{what} {text!r}: expected LO-HI, e.g. 50000-50999")
        low = parsePort(lowText.strip(), what)
        high = parsePort(highText.strip(), what)
        if low > high:
            raise ConfigError(f"{what} {text!r}: {low} is greater than {high}")
        return cls(low, high)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __len__(self) -> int:
        return self.high - self.low + 1

    def overlaps(self, other: PortRange) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


BACKEND_DATA_ADDRESS_POLICIES = ("check", "control", "any")
BACKEND_TLS_MODES = ("none", "explicit", "implicit")
DATA_PROTECTION_LEVELS = ("private", "clear")


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

    address: HostPort
    name: str
    weight: int = 1
    dataAddress: str = "check"
    allowLowDataPorts: bool = False
    tls: str = "none"
    tlsSettings: BackendTLSSettings | None = None
    dataProtection: str = "private"
    proxyProtocol: int | None = None

    @property
    def usesTLS(self) -> bool:
        return self.tls != "none"


DEFAULT_LISTEN = "tcp:2121:interface=127.0.0.1"
POLICIES = (
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "random",
    "source-hash",
    "user-hash",
)


@attrs.frozen
class ProxyConfig:
    """
    Everything the proxy needs to run; what ``makeService`` takes.
    """

    backends: tuple[BackendConfig, ...]
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    policy: str = "round-robin"
    passivePorts: PortRange = PortRange(50000, 50999)
    publicAddress: str | None = None
    connectTimeout: float = 10.0
    dataConnectionTimeout: float = 30.0
    loginTimeout: float = 60.0
    idleTimeout: float = 900.0
    dataStallTimeout: float = 600.0
    # Seconds the backend may take to answer a command (not counting the
    # data of a transfer, which the stall timeout watches).
    replyTimeout: float = 60.0
    shutdownGrace: float = 30.0
    # Let the kernel move clear transfers (splice(2), Linux).
    splice: bool = True
    admin: str | None = None
    proxyHeaderTimeout: float = 10.0
    # ftpproxy.backends.health.HealthSettings; None: passive health only.
    health: Any = None
    # Keyword arguments for the policy (user-hash's static table).
    policyOptions: dict = attrs.field(factory=dict, hash=False)
    xferlog: str | None = None
    logFormat: str = "text"
    maxLineLength: int = 4096
    maxSessions: int = 0
    maxSessionsPerClient: int = 0
    loginFailureWindow: float = 300.0
    loginFailuresBeforeDelay: int = 3
    loginFailuresBeforeBlock: int = 10
    activeAnyHost: bool = False
    activeLowPorts: bool = False
    tls: TLSSettings | None = None
    implicitListen: tuple[str, ...] = ()
    requireTLS: bool = False
    requireSessionReuse: bool = False
    demo: bool = False

    def __attrs_post_init__(self) -> None:
        validate(self)


def validate(config: ProxyConfig) -> None:
    """
    Refuse configurations that cannot work, naming the problem.
    """
    if not config.listen:
        raise ConfigError("no listening endpoint: give --listen ENDPOINT")
    if not config.backends and not config.demo:
        raise ConfigError("no backends: give --backend HOST:PORT or [[backend]] tables")
    if config.logFormat not in ("text", "json"):
        raise ConfigError(f"log format {config.logFormat!r} is unknown; choose text or json")
    if config.policy not in POLICIES:
        raise ConfigError(
            f"policy {config.policy!r} is unknown; choose one of {', '.join(POLICIES)}"
        )
    names = [b.name for b in config.backends]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"backend name {duplicates[0]!r} is used twice")
    for backend in config.backends:
        if backend.dataAddress not in BACKEND_DATA_ADDRESS_POLICIES:
            raise ConfigError(
                f"backend {backend.name}: data_address must be one of "
                f"{', '.join(BACKEND_DATA_ADDRESS_POLICIES)}"
            )
        if backend.weight < 0:
            raise ConfigError(f"backend {backend.name}: weight must not be negative")
        if backend.tls not in BACKEND_TLS_MODES:
            raise ConfigError(
                f"backend {backend.name}: tls must be one of {', '.join(BACKEND_TLS_MODES)}"
            )
        if backend.proxyProtocol is not None and backend.proxyProtocol not in (1, 2):
            raise ConfigError(f"backend {backend.name}: proxy_protocol must be 1 or 2")
        if backend.dataProtection not in DATA_PROTECTION_LEVELS:
            raise ConfigError(
                f"backend {backend.name}: data_protection must be one of "
                f"{', '.join(DATA_PROTECTION_LEVELS)}"
            )
    if config.tls is None:
        for wanted, what in [
            (config.implicitListen, "implicit TLS listeners"),
            (config.requireTLS, "require_tls"),
            (config.requireSessionReuse, "require_session_reuse"),
        ]:
            if wanted and not config.demo:
                raise ConfigError(
                    f"{what} need a certificate: give --tls-cert and --tls-key "
                    "(or [tls] certificate in the configuration file)"
                )
    if config.publicAddress is not None:
        try:
            ipaddress.ip_address(config.publicAddress)
        except ValueError:
            raise ConfigError(
                f"public address {config.publicAddress!r} is not an IP address"
            ) from None
    for description in config.listen + config.implicitListen:
        port = listeningPort(description)
        if port is not None and port in config.passivePorts:
            raise ConfigError(
                f"listen endpoint {description!r} lies inside the passive port "
                f"range {config.passivePorts}"
            )
    for name, value in [
        ("connect_timeout", config.connectTimeout),
        ("reply_timeout", config.replyTimeout),
        ("data_connection_timeout", config.dataConnectionTimeout),
        ("login_failure_window", config.loginFailureWindow),
        ("proxy_header_timeout", config.proxyHeaderTimeout),
    ]:
        if not value > 0:
            raise ConfigError(f"{name} must be a positive number of seconds")
    for name, value in [
        ("login_timeout", config.loginTimeout),
        ("idle_timeout", config.idleTimeout),
        ("data_stall_timeout", config.dataStallTimeout),
        ("shutdown_grace", config.shutdownGrace),
    ]:
        if not value >= 0:
            raise ConfigError(f"{name} must be a number of seconds (0 turns it off)")
    for name, value in [
        ("max_sessions", config.maxSessions),
        ("max_sessions_per_client", config.maxSessionsPerClient),
        ("login_failures_before_delay", config.loginFailuresBeforeDelay),
        ("login_failures_before_block", config.loginFailuresBeforeBlock),
    ]:
        if value < 0:
            raise ConfigError(f"{name} must not be negative (0 turns it off)")
    if config.maxLineLength < 512:
        raise ConfigError("max_line_length must be at least 512 bytes")


def listeningPort(description: str) -> int | None:
    """
    The TCP port of a Twisted server endpoint description such as
    ``tcp:2121:interface=127.0.0.1``, or None when it has none we know.
    """
    parts = _splitEndpoint(description)
    if parts and parts[0].lower() == "haproxy":
        parts = parts[1:]
    if not parts:
        raise ConfigError(f"listen endpoint {description!r} is empty")
    kind = parts[0].lower()
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind.isdigit():
        portText: str | None = kind
    elif kind in ("tcp", "tcp6", "ssl"):
        portText = keywords.get("port", positional[0] if positional else None)
        if portText is None:
            raise ConfigError(f"listen endpoint {description!r} has no port")
    else:
        return None
    return (
        0
        if portText == "0"
        else parsePort(portText, f"listen endpoint {description!r}")
    )


def _splitEndpoint(description: str) -> list[str]:
    """
    Split an endpoint description on colons, honouring backslash escapes
    (``tcp6:2121:interface=\\:\\:1``).
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p != ""] if description else []


# The TOML file's keys, and how each becomes a ProxyConfig field.
_TOP_LEVEL_KEYS = {
    "listen": "listen",
    "policy": "policy",
    "passive_ports": "passivePorts",
    "public_address": "publicAddress",
    "connect_timeout": "connectTimeout",
    "data_connection_timeout": "dataConnectionTimeout",
    "max_line_length": "maxLineLength",
    "login_timeout": "loginTimeout",
    "idle_timeout": "idleTimeout",
    "data_stall_timeout": "dataStallTimeout",
    "reply_timeout": "replyTimeout",
    "shutdown_grace": "shutdownGrace",
    "splice": "splice",
    "admin": "admin",
    "xferlog": "xferlog",
    "log_format": "logFormat",
    "proxy_header_timeout": "proxyHeaderTimeout",
    "health": "health",
    "user_hash": "policyOptions",
    "max_sessions": "maxSessions",
    "max_sessions_per_client": "maxSessionsPerClient",
    "login_failure_window": "loginFailureWindow",
    "login_failures_before_delay": "loginFailuresBeforeDelay",
    "login_failures_before_block": "loginFailuresBeforeBlock",
    "active_any_host": "activeAnyHost",
    "active_low_ports": "activeLowPorts",
    "implicit_tls_listen": "implicitListen",
    "require_tls": "requireTLS",
    "require_session_reuse": "requireSessionReuse",
    "tls": "tls",
    "demo": "demo",
    "backend": "backends",
}
_BACKEND_KEYS = {
    "address",
    "name",
    "weight",
    "data_address",
    "allow_low_data_ports",
    "tls",
    "verify",
    "ca_file",
    "server_name",
    "data_protection",
    "min_version",
    "max_version",
    "ciphers",
    "client_certificate",
    "client_key",
    "proxy_protocol",
}
_TLS_KEYS = {
    "certificate": "certificate",
    "key": "key",
    "min_version": "minimumVersion",
    "max_version": "maximumVersion",
    "ciphers": "ciphers",
    "ciphersuites": "ciphersuites",
    "client_certificate": "clientCertificate",
    "client_ca": "clientCA",
    "session_timeout": "sessionTimeout",
}


def rejectUnknownKeys(table: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """
    Refuse a table with a key we do not know, naming it and the known ones
    (a typo must not silently fall back to a default).
    """
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys are " + ", ".join(sorted(known))
        )


def readConfigFile(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file into ProxyConfig keyword arguments.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration file {path}: {e}") from None
    return configFromMapping(document, source=path)


def configFromMapping(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    """
    Turn a parsed TOML document into ProxyConfig keyword arguments.
    """
    rejectUnknownKeys(document, _TOP_LEVEL_KEYS, source)
    values: dict[str, Any] = {}
    for key, value in document.items():
        field = _TOP_LEVEL_KEYS[key]
        where = f"{source}: {key}"
        if key in ("listen", "implicit_tls_listen"):
            listen = [value] if isinstance(value, str) else value
            if not isinstance(listen, list) or not all(isinstance(v, str) for v in listen):
                raise ConfigError(f"{where} must be a string or a list of strings")
            values[field] = tuple(listen)
        elif key == "tls":
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a [tls] table")
            values[field] = tlsSettingsFromMapping(value, where)
        elif key == "health":
            from ftpproxy.backends.health import HealthSettings

            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a [health] table")
            values[field] = HealthSettings.fromMapping(value, f"{source}: health")
        elif key == "user_hash":
            continue
        elif key == "backend":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{where} must be [[backend]] tables")
            values[field] = tuple(
                backendFromMapping(table, f"{source}: backend #{i + 1}")
                for i, table in enumerate(value)
            )
        elif key == "passive_ports":
            values[field] = PortRange.parse(_expect(value, str, where), where)
        elif key in ("policy", "public_address", "admin", "xferlog", "log_format"):
            values[field] = _expect(value, str, where)
        elif key in (
            "demo",
            "active_any_host",
            "active_low_ports",
            "require_tls",
            "require_session_reuse",
            "splice",
        ):
            values[field] = _expect(value, bool, where)
        elif key in (
            "max_line_length",
            "max_sessions",
            "max_sessions_per_client",
            "login_failures_before_delay",
            "login_failures_before_block",
        ):
            values[field] = _expect(value, int, where)
        else:
            values[field] = float(_expect(value, (int, float), where))
    if "user_hash" in document:
        from ftpproxy.backends.balancer import userHashOptions

        names = [b.name for b in values.get("backends", ())]
        values["policyOptions"] = userHashOptions(
            document["user_hash"], f"{source}: user_hash", names
        )
    return values


def backendFromMapping(table: Mapping[str, Any], where: str) -> BackendConfig:
    rejectUnknownKeys(table, _BACKEND_KEYS, where)
    if "address" not in table:
        raise ConfigError(f"{where}: address = \"HOST:PORT\" is missing")
    address = HostPort.parse(_expect(table["address"], str, f"{where} address"), where)
    tls = _expect(table.get("tls", "none"), str, f"{where} tls")
    tlsSettings = None
    if tls != "none":
        try:
            tlsSettings = BackendTLSSettings(
                hostname=_expect(table.get("server_name", address.host), str, f"{where} server_name"),
                verify=_expect(table.get("verify", True), bool, f"{where} verify"),
                caFile=_optional(table, "ca_file", str, where),
                minimumVersion=_expect(table.get("min_version", "1.2"), str, f"{where} min_version"),
                maximumVersion=_optional(table, "max_version", str, where),
                ciphers=_optional(table, "ciphers", str, where),
                certificate=_optional(table, "client_certificate", str, where),
                key=_optional(table, "client_key", str, where),
            )
        except TLSSettingsError as e:
            raise ConfigError(f"{where}: {e}") from None
    return BackendConfig(
        address=address,
        name=_expect(table.get("name", str(address)), str, f"{where} name"),
        weight=_expect(table.get("weight", 1), int, f"{where} weight"),
        dataAddress=_expect(table.get("data_address", "check"), str, f"{where} data_address"),
        allowLowDataPorts=_expect(
            table.get("allow_low_data_ports", False), bool, f"{where} allow_low_data_ports"
        ),
        tls=tls,
        tlsSettings=tlsSettings,
        dataProtection=_expect(
            table.get("data_protection", "private"), str, f"{where} data_protection"
        ),
        proxyProtocol=_optional(table, "proxy_protocol", int, where),
    )


def tlsSettingsFromMapping(table: Mapping[str, Any], where: str) -> TLSSettings:
    """
    The C{[tls]} table: the proxy's certificate and what it accepts.
    """
    rejectUnknownKeys(table, _TLS_KEYS, where)
    if "certificate" not in table:
        raise ConfigError(f"{where}: certificate = \"PEM FILE\" is missing")
    arguments = {}
    for key, field in _TLS_KEYS.items():
        if key in table:
            kind = int if key == "session_timeout" else str
            arguments[field] = _expect(table[key], kind, f"{where} {key}")
    return makeTLSSettings(**arguments)


def makeTLSSettings(**arguments: Any) -> TLSSettings:
    """
    TLSSettings whose validation errors read as configuration errors.
    """
    try:
        return TLSSettings(**arguments)
    except TLSSettingsError as e:
        raise ConfigError(f"TLS: {e}") from None


def _optional(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        return None
    return _expect(table[key], kind, f"{where} {key}")


def backendsFromArguments(addresses: Iterable[str]) -> tuple[BackendConfig, ...]:
    """
    Backends given as ``--backend HOST:PORT``, named after their address.
    """
    backends = []
    for text in addresses:
        address = HostPort.parse(text, "--backend")
        backends.append(BackendConfig(address=address, name=str(address)))
    return tuple(backends)


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int in Python; a TOML true is not a port or a timeout.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    return value


def makeConfig(**values: Any) -> ProxyConfig:
    """
    Build a ProxyConfig, turning attrs' type errors into ConfigError.
    """
    try:
        return ProxyConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
