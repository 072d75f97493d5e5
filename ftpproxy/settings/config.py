"""
The proxy's configuration: L{ProxyConfig}, a frozen value built from a TOML
file and the command line, whose fields' validators refuse what cannot work
with one message naming the TOML key, so that start-up (or a reload) fails
clearly instead of a traceback later.

Which keys exist, and how each is read, is the table in
L{ftpproxy.settings.options}.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from typing import Any, Mapping

import attrs

from ftpproxy.settings.backends import (
    BACKEND_DATA_ADDRESS_POLICIES,
    BACKEND_TLS_MODES,
    DATA_PROTECTION_LEVELS,
    POLICIES,
    BackendConfig,
    backendFromMapping,
    backendsFromArguments,
    checkPinnedUsers,
)
from ftpproxy.settings.health import HealthSettings
from ftpproxy.settings.listeners import ListenerSettings
from ftpproxy.settings.options import AUTO_WORKERS, OPTIONS_BY_KEY, keyOf
from ftpproxy.settings.tls import (
    DEFAULT_PROFILE,
    TLSProfile,
    TLSSettings,
    makeTLSSettings,
    resolveProfile,
    tlsSettingsFromMapping,
)
from ftpproxy.settings.values import (
    IP_ENDPOINT_KINDS,
    ConfigError,
    HostPort,
    PortRange,
    SettingError,
    endpointInterface,
    isCount,
    isLoopback,
    isNumber,
    listenAddress,
    listeningPort,
    parsePort,
    rejectUnknownKeys,
)

__all__ = [
    "BACKEND_DATA_ADDRESS_POLICIES",
    "BACKEND_TLS_MODES",
    "DATA_PROTECTION_LEVELS",
    "DEFAULT_LISTEN",
    "LOG_FORMATS",
    "POLICIES",
    "BackendConfig",
    "ConfigError",
    "HostPort",
    "ListenerSettings",
    "PortRange",
    "ProxyConfig",
    "SettingError",
    "backendFromMapping",
    "backendsFromArguments",
    "configFromMapping",
    "listeningPort",
    "makeConfig",
    "makeTLSSettings",
    "workerCount",
    "parsePort",
    "listenerMode",
    "listenerTable",
    "readConfigFile",
    "rejectUnknownKeys",
    "tlsSettingsFromMapping",
]

DEFAULT_LISTEN = "tcp:2121:interface=127.0.0.1"
LOG_FORMATS = ("text", "json")


# -- validators: each names the option's TOML key ----------------------------


def _positiveSeconds(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isNumber(value) or not value > 0:
        raise SettingError(keyOf(attribute.name), "must be a positive number of seconds")


def _secondsOrOff(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isNumber(value) or not value >= 0:
        raise SettingError(keyOf(attribute.name), "must be a number of seconds (0 turns it off)")


def _countOrOff(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isCount(value) or value < 0:
        raise SettingError(keyOf(attribute.name), "must not be negative (0 turns it off)")


def _switch(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise SettingError(keyOf(attribute.name), f"must be true or false, not {value!r}")


def _optionalText(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise SettingError(keyOf(attribute.name), f"must be a non-empty string, not {value!r}")


def _instanceOf(kind: type, optional: bool = False):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, kind):
            raise SettingError(keyOf(attribute.name), f"must be a {kind.__name__}, not {value!r}")

    return check


def _oneOf(choices: tuple[str, ...]):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise SettingError(
                keyOf(attribute.name), f"{value!r} is unknown; choose one of {', '.join(choices)}"
            )

    return check


def _endpoints(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    key = keyOf(attribute.name)
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise SettingError(key, f"must be a tuple of endpoint strings, not {value!r}")
    # passive_ports has its own validator, which runs after this one.
    passive = instance.passivePorts if isinstance(instance.passivePorts, PortRange) else None
    for description in value:
        port = listeningPort(description)
        if port is not None and passive is not None and port in passive:
            raise SettingError(
                key,
                f"endpoint {description!r} lies inside the passive port range "
                f"{instance.passivePorts} (passive_ports)",
            )


def _someListener(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if not value and not instance.implicitListen and not instance.listeners:
        raise ConfigError("no listening endpoint: give --listen ENDPOINT (or listen in the file)")


def _defaultListen(config: ProxyConfig) -> tuple[str, ...]:
    return () if config.listeners else (DEFAULT_LISTEN,)


def _checkListeners(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, ListenerSettings) for v in value):
        raise SettingError("listener", f"must be a tuple of ListenerSettings, not {value!r}")
    passive = instance.passivePorts if isinstance(instance.passivePorts, PortRange) else None
    for listener in value:
        where = f"listener {listener.label!r}:"
        port = listeningPort(listener.endpoint)
        if port is not None and passive is not None and port in passive:
            raise ConfigError(
                f"{where} endpoint lies inside the passive port range {passive} (passive_ports)"
            )
        if listener.tls in ("explicit", "implicit") and instance.tls is None and not instance.demo:
            raise ConfigError(
                f"{where} tls = {listener.tls!r} needs a certificate: give [tls] certificate "
                "(or --tls-cert)"
            )
        if listener.tlsProfile is not None:
            if instance.tls is None:
                raise ConfigError(f"{where} tls_profile {listener.tlsProfile!r} needs a [tls] table")
            try:
                instance.tls.profileNamed(listener.tlsProfile)
            except KeyError:
                known = ", ".join([DEFAULT_PROFILE] + [p.name for p in instance.tls.profiles])
                raise ConfigError(
                    f"{where} there is no TLS profile {listener.tlsProfile!r} (known: {known})"
                ) from None
    shorthands = (instance.listen, instance.implicitListen)
    if all(isinstance(s, tuple) and all(isinstance(e, str) for e in s) for s in shorthands):
        labels = [listener.label for listener in listenerTable(instance)]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ConfigError(f"listener {duplicates[0]!r} is given twice (names must differ)")


def _checkRig(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if value and not instance.demo:
        raise SettingError("tls_rig", "runs on the demo backends: give --demo too")


def _checkBackends(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(b, BackendConfig) for b in value):
        raise SettingError("backend", f"must be a tuple of BackendConfig, not {value!r}")
    if not value and not instance.demo:
        raise ConfigError("no backends: give --backend HOST:PORT or [[backend]] tables")
    names = [b.name for b in value]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SettingError("backend", f"name {duplicates[0]!r} is used twice")


def _checkPublicAddress(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise SettingError("public_address", f"{value!r} is not an IP address") from None


def _checkMaxLineLength(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isCount(value) or value < 512:
        raise SettingError("max_line_length", "must be at least 512 bytes")


def _needsCertificate(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if value and instance.tls is None and not instance.demo:
        raise SettingError(
            keyOf(attribute.name),
            "needs a certificate: give --tls-cert and --tls-key "
            "(or [tls] certificate in the configuration file)",
        )


def _names(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise SettingError(keyOf(attribute.name), f"must be a list of names, not {value!r}")


def adminBeyondLoopback(description: str) -> str | None:
    """
    Where an admin endpoint listens if that may be beyond loopback (the
    interface, or what kind of endpoint it is), or None when it listens on
    loopback (or a UNIX socket) only. An IP endpoint without an interface
    listens on loopback (L{ftpproxy.ops.admin} adds it).
    """
    kind, interface = endpointInterface(description)
    if kind in IP_ENDPOINT_KINDS:
        if interface is None or isLoopback(interface):
            return None
        return f"interface {interface}"
    if kind == "unix":
        return None
    return f"a {kind}: endpoint"


def _checkAdminExposure(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    _optionalText(instance, attribute, value)
    if instance.admin is None or value is not None:
        return
    beyond = adminBeyondLoopback(instance.admin)
    if beyond is not None:
        raise SettingError(
            "admin",
            f"endpoint {instance.admin!r} listens on {beyond}, beyond loopback: give "
            "admin_token_file (a file with the bearer token every request must carry)",
        )


def _checkWorkers(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if value == AUTO_WORKERS:
        return
    if not isCount(value) or value < 1:
        raise SettingError("workers", f'must be a whole number from 1, or "auto", not {value!r}')
    if value != 1:
        for description in instance.listen + instance.implicitListen:
            try:
                listenAddress(description)
            except ConfigError as e:
                raise SettingError("workers", f"> 1 needs TCP listeners: {e}") from None
    # passive_ports has its own validator, which runs before this one.
    if isinstance(instance.passivePorts, PortRange) and len(instance.passivePorts) < value:
        raise SettingError(
            "workers",
            f"{value} cannot share the {len(instance.passivePorts)} ports of passive_ports "
            f"{instance.passivePorts}: each worker needs ports of its own",
        )


def _checkPolicyOptions(instance: ProxyConfig, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, dict):
        raise SettingError("user_hash", f"options must be a dict, not {value!r}")
    checkPinnedUsers(value, [b.name for b in instance.backends], "user_hash")


@attrs.frozen
class ProxyConfig:
    """
    Everything the proxy needs to run; what C{makeService} takes.

    Each field is one row of L{ftpproxy.settings.options.OPTIONS}, which
    says its TOML key, its flag and whether a reload applies it live.
    """

    backends: tuple[BackendConfig, ...] = attrs.field(validator=_checkBackends)
    # [[listener]] tables; listen and implicitListen add listeners with the
    # default TLS profile (see listenerTable).
    listeners: tuple[ListenerSettings, ...] = attrs.field(default=(), validator=_checkListeners)
    listen: tuple[str, ...] = attrs.field(
        default=attrs.Factory(_defaultListen, takes_self=True),
        validator=[_endpoints, _someListener],
    )
    policy: str = attrs.field(default="round-robin", validator=_oneOf(POLICIES))
    passivePorts: PortRange = attrs.field(
        default=PortRange(50000, 50999), validator=_instanceOf(PortRange)
    )
    publicAddress: str | None = attrs.field(default=None, validator=_checkPublicAddress)
    connectTimeout: float = attrs.field(default=10.0, validator=_positiveSeconds)
    dataConnectionTimeout: float = attrs.field(default=30.0, validator=_positiveSeconds)
    loginTimeout: float = attrs.field(default=60.0, validator=_secondsOrOff)
    idleTimeout: float = attrs.field(default=900.0, validator=_secondsOrOff)
    dataStallTimeout: float = attrs.field(default=600.0, validator=_secondsOrOff)
    # Seconds the backend may take to answer a command (not counting the
    # data of a transfer, which the stall timeout watches).
    replyTimeout: float = attrs.field(default=60.0, validator=_positiveSeconds)
    shutdownGrace: float = attrs.field(default=30.0, validator=_secondsOrOff)
    # Let the kernel move clear transfers (splice(2), Linux).
    splice: bool = attrs.field(default=True, validator=_switch)
    admin: str | None = attrs.field(default=None, validator=_optionalText)
    # Required when the admin endpoint listens beyond loopback.
    adminTokenFile: str | None = attrs.field(default=None, validator=_checkAdminExposure)
    # Host header values the admin API accepts besides localhost and IPs.
    adminHosts: tuple[str, ...] = attrs.field(default=(), validator=_names)
    proxyHeaderTimeout: float = attrs.field(default=10.0, validator=_positiveSeconds)
    # None: passive health only.
    health: HealthSettings | None = attrs.field(
        default=None, validator=_instanceOf(HealthSettings, optional=True)
    )
    # Keyword arguments for the policy (user-hash's static table).
    policyOptions: dict = attrs.field(factory=dict, hash=False, validator=_checkPolicyOptions)
    xferlog: str | None = attrs.field(default=None, validator=_optionalText)
    logFormat: str = attrs.field(default="text", validator=_oneOf(LOG_FORMATS))
    maxLineLength: int = attrs.field(default=4096, validator=_checkMaxLineLength)
    maxSessions: int = attrs.field(default=0, validator=_countOrOff)
    maxSessionsPerClient: int = attrs.field(default=0, validator=_countOrOff)
    # Connections from one address not logged in yet: enough for a load
    # test of 50 clients from one machine, not for a squatter.
    maxPreLoginPerClient: int = attrs.field(default=64, validator=_countOrOff)
    # Refused lines in a row before the client is closed.
    maxInvalidCommands: int = attrs.field(default=20, validator=_countOrOff)
    # Connect to the backend at USER (the proxy greets).
    backendAtUser: bool = attrs.field(default=False, validator=_switch)
    loginFailureWindow: float = attrs.field(default=300.0, validator=_positiveSeconds)
    loginFailuresBeforeDelay: int = attrs.field(default=3, validator=_countOrOff)
    loginFailuresBeforeBlock: int = attrs.field(default=10, validator=_countOrOff)
    activeAnyHost: bool = attrs.field(default=False, validator=_switch)
    activeLowPorts: bool = attrs.field(default=False, validator=_switch)
    tls: TLSSettings | None = attrs.field(
        default=None, validator=_instanceOf(TLSSettings, optional=True)
    )
    implicitListen: tuple[str, ...] = attrs.field(
        default=(), validator=[_endpoints, _needsCertificate]
    )
    requireTLS: bool = attrs.field(default=False, validator=[_switch, _needsCertificate])
    requireSessionReuse: bool = attrs.field(
        default=False, validator=[_switch, _needsCertificate]
    )
    demo: bool = attrs.field(default=False, validator=_switch)
    tlsRig: bool = attrs.field(default=False, validator=[_switch, _checkRig])
    tlsRigPorts: PortRange = attrs.field(
        default=PortRange(2991, 3010), validator=_instanceOf(PortRange)
    )

    # 1: one process; N or "auto" (one per core): a supervisor and N workers.
    workers: int | str = attrs.field(default=1, validator=_checkWorkers)

    def tlsProfile(self, name: str | None) -> TLSProfile | None:
        """
        The TLS profile C{name} (L{None}: the default profile, C{[tls]}) as
        it applies, or L{None} when the proxy has no TLS settings.

        @raise KeyError: when there is no such profile.
        """
        if self.tls is None:
            return None
        return resolveProfile(
            self.tls, name, "required" if self.requireSessionReuse else "optional"
        )


def listenerMode(listener: ListenerSettings, config: ProxyConfig) -> str:
    """
    How C{listener} offers TLS under C{config}: its C{tls}, or for a
    listener that does not say (C{listen}), "explicit" when the proxy has
    TLS settings and "none" when it has not.
    """
    if listener.tls is not None:
        return listener.tls
    return "explicit" if config.tls is not None else "none"


def listenerTable(config: ProxyConfig) -> tuple[ListenerSettings, ...]:
    """
    Every listener of C{config}: the C{[[listener]]} tables, then one per
    C{listen} endpoint (explicit FTPS if there is a certificate) and one per
    C{implicit_tls_listen} endpoint (implicit FTPS), with the default
    profile.
    """
    return (
        config.listeners
        + tuple(ListenerSettings(endpoint) for endpoint in config.listen)
        + tuple(ListenerSettings(endpoint, tls="implicit") for endpoint in config.implicitListen)
    )


def workerCount(config: ProxyConfig, cores: int | None = None) -> int:
    """
    How many worker processes C{config} asks for: its C{workers}, with
    C{"auto"} the number of cores this process may run on (C{cores} when
    given).

    @raise ConfigError: when "auto" gives more workers than passive ports.
    """
    if config.workers != AUTO_WORKERS:
        return config.workers
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
    if cores > len(config.passivePorts):
        raise SettingError(
            "workers",
            f'"auto" means {cores} workers here, more than the {len(config.passivePorts)} '
            f"ports of passive_ports {config.passivePorts}",
        )
    return cores


# -- the TOML file -------------------------------------------------------------


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
    Turn a parsed TOML document into ProxyConfig keyword arguments, each key
    read as its row of the options table says.
    """
    rejectUnknownKeys(document, OPTIONS_BY_KEY, source)
    values: dict[str, Any] = {}
    for key, value in document.items():
        option = OPTIONS_BY_KEY[key]
        values[option.field] = option.kind.fromToml(value, f"{source}: {key}")
    return values


def makeConfig(**values: Any) -> ProxyConfig:
    """
    Build a ProxyConfig, turning attrs' type errors into ConfigError.
    """
    try:
        return ProxyConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
