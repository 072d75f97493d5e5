"""
The small values settings are made of (addresses, port ranges) and the
errors that say why a setting is refused.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

import attrs


class ConfigError(ValueError):
    """
    The configuration is unusable; the message names the problem.
    """


class SettingError(ConfigError):
    """
    One setting refused by its validator.

    @ivar key: the setting's key as the TOML file spells it.
    @ivar problem: what is wrong with it, worded to follow the key.
    @ivar table: where the key lives (C{"health"}, C{"backend alpha:"}), or
        L{None} for a top-level key.
    """

    def __init__(self, key: str, problem: str, table: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.table = table
        super().__init__(self.within(table))

    def within(self, where: str | None) -> str:
        """
        The message, with C{where} (e.g. C{"ftpproxy.toml: health"}) in
        front of the key.
        """
        text = f"{self.key} {self.problem}"
        return text if where is None else f"{where} {text}"


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

    def split(self, count: int) -> tuple[PortRange, ...]:
        """
        C{count} disjoint consecutive ranges that together are this one,
        their sizes differing by one at most (the first ones larger).
        """
        if not 1 <= count <= len(self):
            raise ValueError(f"cannot split {self} ({len(self)} ports) into {count} ranges")
        size, extra = divmod(len(self), count)
        ranges, low = [], self.low
        for index in range(count):
            high = low + size - 1 + (1 if index < extra else 0)
            ranges.append(PortRange(low, high))
            low = high + 1
        return tuple(ranges)

    def overlaps(self, other: PortRange) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


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
    return 0 if portText == "0" else parsePort(portText, f"listen endpoint {description!r}")


#: Server endpoint kinds that listen on an IP interface of their own choice.
IP_ENDPOINT_KINDS = ("tcp", "tcp6", "ssl")


def endpointInterface(description: str) -> tuple[str, str | None]:
    """
    The kind of a Twisted server endpoint description (C{tcp}, C{tcp6},
    C{ssl}, C{unix}, ...) and the C{interface=} it names, if any.
    """
    parts = _splitEndpoint(description)
    if not parts:
        raise ConfigError(f"endpoint {description!r} is empty")
    kind = parts[0].lower()
    if kind.isdigit():
        kind = "tcp"  # the old "PORT:interface=..." form
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return kind, keywords.get("interface")


def isLoopback(host: str) -> bool:
    """
    Whether C{host} is an IP address of this machine's loopback
    (127.0.0.0/8, ::1, or an IPv4-mapped loopback address).
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@attrs.frozen
class ListenAddress:
    """
    Where a TCP server endpoint description listens, for a process that
    binds the socket itself (the supervisor of worker processes).

    @ivar ipv6: C{tcp6:} rather than C{tcp:}.
    @ivar host: the interface; empty for all of IPv4, C{::} for all of IPv6.
    @ivar proxyHeader: the description starts with C{haproxy:}.
    """

    ipv6: bool
    host: str
    port: int
    backlog: int = 50
    proxyHeader: bool = False


def listenAddress(description: str) -> ListenAddress:
    """
    The address a C{tcp:} or C{tcp6:} endpoint description (optionally
    behind C{haproxy:}) listens on.

    @raise ConfigError: for any other kind of endpoint, or a bad one.
    """
    parts = _splitEndpoint(description)
    proxyHeader = bool(parts) and parts[0].lower() == "haproxy"
    if proxyHeader:
        parts = parts[1:]
    if not parts:
        raise ConfigError(f"listen endpoint {description!r} is empty")
    kind = parts[0].lower()
    if kind.isdigit():
        kind, parts = "tcp", ["tcp", *parts]
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(
            f"listen endpoint {description!r}: worker processes share tcp: and tcp6: "
            "endpoints only"
        )
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    unknown = sorted(set(keywords) - {"port", "interface", "backlog"})
    if unknown:
        raise ConfigError(f"listen endpoint {description!r}: unknown parameter {unknown[0]!r}")
    portText = keywords.get("port", positional[0] if positional else None)
    if portText is None:
        raise ConfigError(f"listen endpoint {description!r} has no port")
    port = 0 if portText == "0" else parsePort(portText, f"listen endpoint {description!r}")
    host = keywords.get("interface", positional[1] if len(positional) > 1 else "")
    if kind == "tcp6" and not host:
        host = "::"
    try:
        backlog = int(keywords.get("backlog", 50))
    except ValueError:
        raise ConfigError(f"listen endpoint {description!r}: backlog is not a number") from None
    return ListenAddress(kind == "tcp6", host, port, backlog, proxyHeader)


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


def expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """
    C{value} if it is a C{kind}, else a L{ConfigError} naming C{where}.
    """
    # bool is an int in Python; a TOML true is not a port or a timeout.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    return value


def optional(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """
    C{table[key]} checked with L{expect}, or L{None} when absent.
    """
    if key not in table:
        return None
    return expect(table[key], kind, f"{where} {key}")


def isNumber(value: object) -> bool:
    """
    An int or a float, but not a bool.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def isCount(value: object) -> bool:
    """
    An int, but not a bool.
    """
    return isinstance(value, int) and not isinstance(value, bool)
