"""
Listeners: where the proxy accepts clients and how it speaks to them
(C{[[listener]]} tables; C{listen} and C{implicit_tls_listen} are
shorthands for listeners with the default TLS profile).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs
from attrs import field, frozen

from ftpproxy.settings.values import ConfigError, SettingError, expect, rejectUnknownKeys

#: How a listener offers TLS: "explicit" (AUTH TLS), "implicit" (TLS from
#: the first byte) or "none" (AUTH is refused).
LISTENER_TLS_MODES: tuple[str, ...] = ("explicit", "implicit", "none")


def _checkEndpoint(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SettingError("endpoint", f"must be a Twisted endpoint string, not {value!r}")


def _checkMode(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value not in LISTENER_TLS_MODES:
        raise SettingError(
            "tls", f"{value!r} is unknown; choose one of {', '.join(LISTENER_TLS_MODES)}"
        )


def _checkOptionalText(key: str):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise SettingError(key, f"must be a non-empty string, not {value!r}")

    return check


def _checkOptionalSwitch(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise SettingError("require_tls", f"must be true or false, not {value!r}")


def _checkProfileMode(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and instance.tls == "none":
        raise SettingError("tls_profile", 'makes no sense with tls = "none"')


def _checkRequireTLS(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value and instance.tls == "none":
        raise SettingError("require_tls", 'with tls = "none" would refuse every login')


@frozen
class ListenerSettings:
    """
    One listener: an endpoint and how its sessions speak TLS.

    @ivar endpoint: the Twisted server endpoint string (C{haproxy:...} for
        the PROXY protocol in front).
    @ivar tls: one of L{LISTENER_TLS_MODES}, or L{None} for "explicit if the
        proxy has a certificate, else none" (what C{listen} means).
    @ivar tlsProfile: the TLS profile of its control and data connections;
        L{None} for the default profile (C{[tls]}).
    @ivar requireTLS: refuse USER/PASS before AUTH TLS and transfers under
        PROT C; L{None} to follow the top-level C{require_tls}.
    @ivar name: what logs and the report call it; L{None} for the endpoint.
    """

    endpoint: str = field(validator=_checkEndpoint)
    tls: Optional[str] = field(default=None, validator=_checkMode)
    tlsProfile: Optional[str] = field(
        default=None, validator=[_checkOptionalText("tls_profile"), _checkProfileMode]
    )
    requireTLS: Optional[bool] = field(
        default=None, validator=[_checkOptionalSwitch, _checkRequireTLS]
    )
    name: Optional[str] = field(default=None, validator=_checkOptionalText("name"))

    @property
    def label(self) -> str:
        """
        The listener's name in logs: its C{name}, else its endpoint.
        """
        return self.name if self.name is not None else self.endpoint


#: The C{[[listener]]} table's keys: ListenerSettings attribute and meaning.
LISTENER_KEYS: dict[str, tuple[str, str]] = {
    "endpoint": ("endpoint", "Twisted server endpoint, e.g. tcp:2121:interface=127.0.0.1 "
                 "(haproxy:... for the PROXY protocol)."),
    "tls": ("tls", '"explicit" (AUTH TLS; the default when there is a certificate), '
            '"implicit" (TLS from the first byte) or "none" (AUTH refused).'),
    "tls_profile": ("tlsProfile", "The [tls.profiles.NAME] its control and data connections "
                    "use (default: [tls] itself)."),
    "require_tls": ("requireTLS", "Refuse logins before AUTH TLS and transfers under PROT C "
                    "(default: the top-level require_tls)."),
    "name": ("name", "What the log and the report call it (default: the endpoint)."),
}


def listenerFromMapping(table: Mapping[str, Any], where: str) -> ListenerSettings:
    """
    One C{[[listener]]} table.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a [[listener]] table")
    rejectUnknownKeys(table, LISTENER_KEYS, where)
    if "endpoint" not in table:
        raise ConfigError(f'{where}: endpoint = "ENDPOINT" is missing')
    arguments = {}
    for key, (attribute, _) in LISTENER_KEYS.items():
        if key in table:
            kind = bool if key == "require_tls" else str
            arguments[attribute] = expect(table[key], kind, f"{where} {key}")
    try:
        return ListenerSettings(**arguments)
    except SettingError as e:
        raise ConfigError(e.within(where)) from None
