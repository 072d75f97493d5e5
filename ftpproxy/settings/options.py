"""
The one table of the proxy's options.

Each row names an option's TOML key, the L{ProxyConfig} field it sets, how
its TOML value (and command-line text) become that field's value, whether
SIGHUP applies it live, its command-line flag if it has one, and its help.
The TOML reader (L{ftpproxy.settings.config}), C{twistd ftpproxy}'s options
(L{ftpproxy.settings.commandline}), the reload report and
C{docs/configuration.md} (L{ftpproxy.settings.reference}) are all made from
it: adding an option is one row here and one field in L{ProxyConfig}.

"live" means that after a reload new sessions use the new value (running
sessions keep what they started with); "restart" means that the running
proxy keeps the old value until it is restarted.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping, Protocol

import attrs

from ftpproxy.settings.backends import backendFromMapping, backendsFromArguments, userHashOptions
from ftpproxy.settings.health import HealthSettings
from ftpproxy.settings.listeners import listenerFromMapping
from ftpproxy.settings.tls import TLSSettings, TLSSettingsError, tlsSettingsFromMapping
from ftpproxy.settings.values import ConfigError, PortRange, SettingError, expect


class Reload(enum.Enum):
    """
    What SIGHUP does with a changed option.
    """

    LIVE = "live"
    RESTART = "restart"


class CommandLine(enum.Enum):
    """
    How an option's flag is given on the command line.
    """

    PARAMETER = "parameter"  # --flag VALUE
    SWITCH = "switch"  # --flag
    REPEATED = "repeated"  # --flag VALUE, any number of times


#: The value of C{workers} that means one worker process per core.
AUTO_WORKERS = "auto"

#: What L{Kind.fromCommandLine} returns when the flag was not given.
NOT_GIVEN = object()


class Kind(Protocol):
    """
    How one option's values are written.
    """

    commandLine: CommandLine | None

    def fromToml(self, value: Any, where: str) -> Any:
        """
        The field value for TOML C{value}; C{where} starts error messages.
        """

    def fromCommandLine(self, given: Any, where: str) -> Any:
        """
        The field value for what the flag's parser stored, or L{NOT_GIVEN}.
        """


class TableKind(Kind, Protocol):
    """
    The kind of an option that is a TOML table; L{TableFlag}s set its keys
    from the command line.
    """

    def override(self, base: Any, overrides: Mapping[str, Any], where: str) -> Any:
        """
        C{base} (the file's value, or L{None}) with the attributes in
        C{overrides} replaced; C{where} names the flags in error messages.
        """


@attrs.frozen
class _Text:
    commandLine = CommandLine.PARAMETER

    def fromToml(self, value: Any, where: str) -> str:
        return expect(value, str, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return NOT_GIVEN if given is None else given


@attrs.frozen
class _Seconds:
    commandLine = CommandLine.PARAMETER

    def fromToml(self, value: Any, where: str) -> float:
        return float(expect(value, (int, float), where))

    def fromCommandLine(self, given: Any, where: str) -> Any:
        if given is None:
            return NOT_GIVEN
        try:
            return float(given)
        except ValueError:
            raise ConfigError(f"{where}: {given!r} is not a number of seconds") from None


@attrs.frozen
class _Count:
    commandLine = CommandLine.PARAMETER

    def fromToml(self, value: Any, where: str) -> int:
        return expect(value, int, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        if given is None:
            return NOT_GIVEN
        try:
            return int(given)
        except ValueError:
            raise ConfigError(f"{where}: {given!r} is not a whole number") from None


@attrs.frozen
class _Switch:
    """
    A boolean; its flag, when given, sets it to C{whenGiven}.
    """

    whenGiven: bool
    commandLine = CommandLine.SWITCH

    def fromToml(self, value: Any, where: str) -> bool:
        return expect(value, bool, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return self.whenGiven if given else NOT_GIVEN


@attrs.frozen
class _Workers:
    """
    A number of worker processes, or C{"auto"} for one per core.
    """

    commandLine = CommandLine.PARAMETER

    def fromToml(self, value: Any, where: str) -> int | str:
        if value == AUTO_WORKERS:
            return AUTO_WORKERS
        if isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is neither a number nor \"{AUTO_WORKERS}\"")
        return expect(value, int, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        if given is None:
            return NOT_GIVEN
        if given == AUTO_WORKERS:
            return AUTO_WORKERS
        try:
            return int(given)
        except ValueError:
            raise ConfigError(
                f"{where}: {given!r} is neither a number nor \"{AUTO_WORKERS}\""
            ) from None


@attrs.frozen
class _PortRange:
    commandLine = CommandLine.PARAMETER

    def fromToml(self, value: Any, where: str) -> PortRange:
        return PortRange.parse(expect(value, str, where), where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return NOT_GIVEN if given is None else PortRange.parse(given, where)


@attrs.frozen
class _TextList:
    """
    A string or a list of strings in the file; a repeated flag.
    """

    commandLine = CommandLine.REPEATED

    def fromToml(self, value: Any, where: str) -> tuple[str, ...]:
        endpoints = [value] if isinstance(value, str) else value
        if not isinstance(endpoints, list) or not all(isinstance(v, str) for v in endpoints):
            raise ConfigError(f"{where} must be a string or a list of strings")
        return tuple(endpoints)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return tuple(given) if given else NOT_GIVEN


@attrs.frozen
class _Backends:
    commandLine = CommandLine.REPEATED

    def fromToml(self, value: Any, where: str) -> tuple:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where} must be [[backend]] tables")
        return tuple(
            backendFromMapping(table, f"{where} #{i + 1}")
            for i, table in enumerate(value)
        )

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return backendsFromArguments(given) if given else NOT_GIVEN


@attrs.frozen
class _Listeners:
    commandLine = None

    def fromToml(self, value: Any, where: str) -> tuple:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where} must be [[listener]] tables")
        return tuple(
            listenerFromMapping(table, f"{where} #{i + 1}") for i, table in enumerate(value)
        )

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return NOT_GIVEN


@attrs.frozen
class _TLSTable:
    commandLine = None

    def fromToml(self, value: Any, where: str) -> TLSSettings:
        return tlsSettingsFromMapping(value, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return NOT_GIVEN

    def override(self, base: TLSSettings | None, overrides: Mapping[str, Any], where: str) -> TLSSettings:
        if base is None and "certificate" not in overrides:
            raise ConfigError("TLS options need a certificate: give --tls-cert")
        try:
            if base is None:
                return TLSSettings(**overrides)
            return attrs.evolve(base, **overrides)
        except TLSSettingsError as e:
            raise ConfigError(f"TLS: {e}") from None


@attrs.frozen
class _HealthTable:
    commandLine = None

    def fromToml(self, value: Any, where: str) -> HealthSettings:
        return HealthSettings.fromMapping(value, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return NOT_GIVEN

    def override(
        self, base: HealthSettings | None, overrides: Mapping[str, Any], where: str
    ) -> HealthSettings:
        try:
            return attrs.evolve(base or HealthSettings(), **overrides)
        except SettingError as e:
            raise ConfigError(f"{where}: {e}") from None


@attrs.frozen
class _UserHashTable:
    commandLine = None

    def fromToml(self, value: Any, where: str) -> dict[str, Any]:
        return userHashOptions(value, where)

    def fromCommandLine(self, given: Any, where: str) -> Any:
        return NOT_GIVEN


TEXT = _Text()
SECONDS = _Seconds()
COUNT = _Count()
ON = _Switch(True)
OFF = _Switch(False)
PORT_RANGE = _PortRange()
WORKERS = _Workers()
ENDPOINTS = _TextList()
NAMES = _TextList()
BACKENDS = _Backends()
LISTENERS = _Listeners()
TLS = _TLSTable()
HEALTH = _HealthTable()
USER_HASH = _UserHashTable()

LIVE = Reload.LIVE
RESTART = Reload.RESTART


@attrs.frozen
class Option:
    """
    One row of the table.

    @ivar key: the TOML key.
    @ivar field: the L{ProxyConfig} attribute it sets.
    @ivar kind: how its values are written (L{Kind}).
    @ivar reload: whether SIGHUP applies a change live.
    @ivar flag: the command-line flag, without C{--}; L{None} for none.
    @ivar help: what it does, one sentence or two.
    """

    key: str
    field: str
    kind: Kind
    reload: Reload
    flag: str | None
    help: str


@attrs.frozen
class TableFlag:
    """
    A command-line flag that sets one key of a table option (C{--tls-cert}
    sets C{[tls] certificate}).

    @ivar flag: the flag, without C{--}.
    @ivar key: the table option's TOML key.
    @ivar field: the attribute of the table's settings value it sets.
    @ivar convert: turns the flag's text into that attribute's value.
    @ivar help: what it does.
    """

    flag: str
    key: str
    field: str
    convert: Any
    help: str


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None


# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("listen", "listen", ENDPOINTS, RESTART, "listen",
           "Twisted server endpoint for FTP and explicit FTPS, e.g. tcp:21 or haproxy:tcp:21 "
           "(repeatable; a list in the file; default tcp:2121:interface=127.0.0.1 unless there "
           "are [[listener]] tables)."),
    Option("implicit_tls_listen", "implicitListen", ENDPOINTS, RESTART, "implicit-tls-listen",
           "Twisted server endpoint for implicit FTPS, e.g. tcp:990 (repeatable; a list in the file)."),
    Option("listener", "listeners", LISTENERS, RESTART, None,
           "Listeners as [[listener]] tables: endpoints with their own TLS mode, TLS profile and "
           "require_tls (listen and implicit_tls_listen are shorthands for listeners with the "
           "default profile)."),
    Option("backend", "backends", BACKENDS, LIVE, "backend",
           "Backend FTP server HOST:PORT (repeatable); in the file, [[backend]] tables."),
    Option("policy", "policy", TEXT, LIVE, "policy",
           "Backend selection policy: round-robin, weighted-round-robin, least-connections, "
           "random, source-hash or user-hash."),
    Option("user_hash", "policyOptions", USER_HASH, LIVE, None,
           "The [user_hash] table: options of the user-hash policy (ignore_case, pinned users)."),
    Option("health", "health", HEALTH, LIVE, None,
           "The [health] table: active health checks and passive health thresholds."),
    Option("passive_ports", "passivePorts", PORT_RANGE, LIVE, "passive-ports",
           "Passive port range LO-HI that the proxy listens on for clients."),
    Option("public_address", "publicAddress", TEXT, LIVE, "public-address",
           "IP address advertised in PASV replies (default: the control connection's local "
           "address)."),
    Option("connect_timeout", "connectTimeout", SECONDS, LIVE, "connect-timeout",
           "Seconds to wait for a backend connection and its greeting."),
    Option("data_connection_timeout", "dataConnectionTimeout", SECONDS, LIVE,
           "data-connection-timeout", "Seconds to wait for a client's data connection."),
    Option("login_timeout", "loginTimeout", SECONDS, LIVE, "login-timeout",
           "Seconds a client has to log in (0: no limit)."),
    Option("idle_timeout", "idleTimeout", SECONDS, LIVE, "idle-timeout",
           "Seconds a control connection may stay idle outside transfers (0: no limit)."),
    Option("data_stall_timeout", "dataStallTimeout", SECONDS, LIVE, "data-stall-timeout",
           "Seconds a transfer may move no byte before it is aborted (0: no limit)."),
    Option("reply_timeout", "replyTimeout", SECONDS, LIVE, "reply-timeout",
           "Seconds a backend may take to answer a command before the session ends with 421."),
    Option("shutdown_grace", "shutdownGrace", SECONDS, LIVE, "shutdown-grace",
           "Seconds sessions may go on after SIGTERM before they are closed."),
    Option("max_sessions", "maxSessions", COUNT, LIVE, "max-sessions",
           "Most sessions at once (0: no limit)."),
    Option("max_sessions_per_client", "maxSessionsPerClient", COUNT, LIVE,
           "max-sessions-per-client", "Most sessions at once from one client address (0: no limit)."),
    Option("max_prelogin_per_client", "maxPreLoginPerClient", COUNT, LIVE,
           "max-prelogin-per-client",
           "Most connections at once from one client address that have not logged in yet; "
           "more get 421 (0: no limit)."),
    Option("max_invalid_commands", "maxInvalidCommands", COUNT, LIVE, "max-invalid-commands",
           "Refused command lines in a row (empty, unparseable, too long, or needing a login) "
           "after which a client is closed with 421 (0: no limit)."),
    Option("backend_at_user", "backendAtUser", ON, LIVE, "backend-at-user",
           "The proxy greets clients itself and connects to a backend only when USER arrives, "
           "so that connections that never log in hold no backend connection (always so "
           "under user-hash)."),
    Option("login_failure_window", "loginFailureWindow", SECONDS, LIVE, None,
           "Seconds over which failed logins from one client address are counted."),
    Option("login_failures_before_delay", "loginFailuresBeforeDelay", COUNT, LIVE, None,
           "Failed logins after which each further 530 is held back one second more (up to 10)."),
    Option("login_failures_before_block", "loginFailuresBeforeBlock", COUNT, LIVE, None,
           "Failed logins after which new sessions from that address get 421 until the window "
           "has passed (0: never)."),
    Option("max_line_length", "maxLineLength", COUNT, LIVE, None,
           "Longest command line accepted from a client, in bytes (at least 512)."),
    Option("proxy_header_timeout", "proxyHeaderTimeout", SECONDS, LIVE, None,
           "Seconds a haproxy:... listener waits for a connection's PROXY protocol header."),
    Option("require_tls", "requireTLS", ON, LIVE, "require-tls",
           "Refuse USER/PASS before AUTH TLS and transfers under PROT C."),
    Option("require_session_reuse", "requireSessionReuse", ON, LIVE, "require-session-reuse",
           "Refuse protected data connections that do not resume the control connection's TLS "
           "session."),
    Option("active_any_host", "activeAnyHost", ON, LIVE, None,
           "Allow PORT/EPRT to hosts other than the client."),
    Option("active_low_ports", "activeLowPorts", ON, LIVE, None,
           "Allow PORT/EPRT to ports below 1024."),
    Option("splice", "splice", OFF, LIVE, "no-splice",
           "Clear transfers move with splice(2) (Linux) rather than through Python."),
    Option("tls", "tls", TLS, LIVE, None,
           "The [tls] table: the proxy's certificate and what it accepts from FTPS clients; "
           "a reload reads the certificate files again."),
    Option("admin", "admin", TEXT, RESTART, "admin",
           "Twisted endpoint for the admin HTTP API (metrics, backends, drain), e.g. tcp:8021 "
           "(without interface=, loopback only; beyond loopback it needs admin_token_file)."),
    Option("admin_token_file", "adminTokenFile", TEXT, LIVE, "admin-token-file",
           "File holding the bearer token (at least 16 characters) that every admin request "
           "must carry as 'Authorization: Bearer TOKEN'; required when the admin endpoint "
           "listens beyond loopback; every reload reads it again."),
    Option("admin_hosts", "adminHosts", NAMES, LIVE, "admin-host",
           "Host names the admin API answers to, besides localhost and IP addresses; requests "
           "naming any other Host get 403, against DNS rebinding (repeatable; a list in the "
           "file)."),
    Option("xferlog", "xferlog", TEXT, LIVE, "xferlog",
           "Write one xferlog line per file transfer to this file; every reload reopens it (at "
           "its new path, if that changed), so that it can be rotated."),
    Option("log_format", "logFormat", TEXT, RESTART, "log-format",
           "Log as text or json (one JSON object per line)."),
    Option("workers", "workers", WORKERS, RESTART, "workers",
           "Worker processes that share the listeners, each with its own slice of "
           "passive_ports: 1 runs everything in one process, \"auto\" one worker per core; "
           "with more than 1 a supervising process starts them, restarts any that dies and "
           "serves the admin endpoint for all."),
    Option("demo", "demo", ON, RESTART, "demo",
           "Run two in-process demo FTP backends (added to the configured ones) and listen on "
           "127.0.0.1:2121 (and 127.0.0.1:2990 for implicit FTPS)."),
    Option("tls_rig", "tlsRig", ON, RESTART, "tls-rig",
           "With demo: the test rig for FTPS clients, one listener on 127.0.0.1 per TLS profile "
           "and certificate variant worth testing (docs/testing-clients.md)."),
    Option("tls_rig_ports", "tlsRigPorts", PORT_RANGE, RESTART, "tls-rig-ports",
           "The ports of the TLS rig's listeners, LO-HI (at least as many as it has)."),
)

TABLE_FLAGS: tuple[TableFlag, ...] = (
    TableFlag("tls-cert", "tls", "certificate", str,
              "PEM certificate (and chain, and optionally key) for FTPS."),
    TableFlag("tls-key", "tls", "key", str, "PEM private key, if not in --tls-cert."),
    TableFlag("tls-min-version", "tls", "minimumVersion", str,
              "Lowest TLS version accepted: 1.0, 1.1, 1.2 (default) or 1.3."),
    TableFlag("tls-max-version", "tls", "maximumVersion", str,
              "Highest TLS version offered (default: the newest)."),
    TableFlag("tls-ciphers", "tls", "ciphers", str,
              "OpenSSL cipher list for TLS 1.2 and below."),
    TableFlag("health-interval", "health", "interval", _seconds,
              "Seconds between active health checks of each backend (turns them on; kind, "
              "thresholds and credentials go in [health])."),
)
# fmt: on

OPTIONS_BY_KEY: dict[str, Option] = {option.key: option for option in OPTIONS}
OPTIONS_BY_FIELD: dict[str, Option] = {option.field: option for option in OPTIONS}


def keyOf(field: str) -> str:
    """
    The TOML key of the option that sets L{ProxyConfig} field C{field}.
    """
    return OPTIONS_BY_FIELD[field].key


def changedOptions(old: object, new: object) -> tuple[Option, ...]:
    """
    The options whose values differ between two L{ProxyConfig}s, in table
    order.
    """
    return tuple(
        option
        for option in OPTIONS
        if getattr(old, option.field) != getattr(new, option.field)
    )
