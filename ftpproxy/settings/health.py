"""
How backends are judged: the C{[health]} table.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from ftpproxy.settings.values import ConfigError, SettingError, isCount, isNumber, rejectUnknownKeys

CHECK_KINDS: tuple[str, ...] = ("none", "tcp", "banner", "login", "tls")

_TABLE = "health"


def _positiveSeconds(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isNumber(value) or not value > 0:
        raise SettingError(
            attribute.name, f"must be a positive number of seconds, not {value!r}", _TABLE
        )


def _atLeastOne(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isCount(value) or value < 1:
        raise SettingError(
            attribute.name, f"must be a whole number of at least 1, not {value!r}", _TABLE
        )


def _checkKind(instance: HealthSettings, attribute: attrs.Attribute, value: Any) -> None:
    if value not in CHECK_KINDS:
        raise SettingError(
            "kind", f"must be one of {', '.join(CHECK_KINDS)}, not {value!r}", _TABLE
        )
    if value == "login" and (instance.user is None or instance.password is None):
        raise SettingError('kind = "login"', "needs user and password", _TABLE)


def _checkCredential(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise SettingError(attribute.name, f"must be a string, not {value!r}", _TABLE)
    if "\r" in value or "\n" in value:
        raise SettingError(attribute.name, "must not contain line breaks", _TABLE)


@attrs.frozen
class HealthSettings:
    """
    How backends are judged.

    @ivar interval: seconds between the starts of two checks of a backend.
    @ivar timeout: seconds one check may take, connect included.
    @ivar rise: passed checks that bring a down backend up.
    @ivar fall: failed checks or session connects that take it down.
    @ivar kind: one of L{CHECK_KINDS}.
    @ivar user: the login check's user name.
    @ivar password: its password (kept out of reprs and logs).
    @ivar retry: without active checks, seconds after which one session
        may try a down backend again.
    """

    interval: float = attrs.field(default=5.0, validator=_positiveSeconds)
    timeout: float = attrs.field(default=3.0, validator=_positiveSeconds)
    rise: int = attrs.field(default=2, validator=_atLeastOne)
    fall: int = attrs.field(default=3, validator=_atLeastOne)
    kind: str = attrs.field(default="banner", validator=_checkKind)
    user: str | None = attrs.field(default=None, validator=_checkCredential)
    password: str | None = attrs.field(default=None, repr=False, validator=_checkCredential)
    retry: float = attrs.field(default=10.0, validator=_positiveSeconds)

    @property
    def active(self) -> bool:
        """
        Are there active checks to run?
        """
        return self.kind != "none"

    @classmethod
    def fromMapping(cls, table: Mapping[str, Any], where: str) -> HealthSettings:
        """
        Settings from the TOML C{[health]} table; C{where} starts every error
        message (e.g. C{"ftpproxy.toml: health"}).
        """
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a [health] table")
        rejectUnknownKeys(table, HEALTH_KEYS, where)
        try:
            return cls(**table)
        except SettingError as e:
            raise ConfigError(e.within(where)) from None


#: The C{[health]} table's keys and what each says.
HEALTH_KEYS: dict[str, str] = {
    "interval": "Seconds between two checks of a backend (default 5).",
    "timeout": "Seconds one check may take, connect included (default 3).",
    "rise": "Passed checks that bring a down backend up (default 2).",
    "fall": "Failed checks or session connects that take a backend down (default 3).",
    "kind": "none, tcp, banner (default: a 220 greeting), login (230) or tls.",
    "user": 'User name for kind = "login".',
    "password": 'Password for kind = "login".',
    "retry": "Without active checks: seconds after which a down backend is tried again (default 10).",
}
