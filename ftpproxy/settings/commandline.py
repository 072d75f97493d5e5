"""
The command line, made from the options table: the flags C{twistd
ftpproxy} takes, and how the configuration file and the flags merge into
one L{ProxyConfig} (the command line wins).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs

from ftpproxy.settings.config import ProxyConfig, makeConfig, readConfigFile
from ftpproxy.settings.options import (
    NOT_GIVEN,
    OPTIONS,
    OPTIONS_BY_KEY,
    TABLE_FLAGS,
    CommandLine,
    Option,
)
from ftpproxy.settings.tls import TLSSettings
from ftpproxy.settings.values import ConfigError

#: Where C{--demo} listens for implicit FTPS unless told otherwise.
DEMO_IMPLICIT_LISTEN = "tcp:2990:interface=127.0.0.1"

#: The flag that names the configuration file; not an option of its own.
CONFIG_FLAG = "config"


def describeDefault(value: Any) -> str | None:
    """
    A field default as the help and the documentation show it, or L{None}
    when there is nothing to say (no default, or an empty one).
    """
    if value is attrs.NOTHING or isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        return None
    if value is None or value == ():
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def fieldDefault(option: Option) -> Any:
    """
    The L{ProxyConfig} default of C{option}'s field.
    """
    return attrs.fields_dict(ProxyConfig)[option.field].default


def flagHelp(option: Option) -> str:
    """
    The help line of C{option}'s flag.
    """
    text = option.help
    if option.kind.commandLine is CommandLine.SWITCH and not getattr(option.kind, "whenGiven"):
        text = f"Turns {option.key} off: {text[0].lower()}{text[1:]}"
    default = describeDefault(fieldDefault(option))
    if default is not None and option.kind.commandLine is CommandLine.PARAMETER:
        text = f"{text} Default: {default}."
    return text


def twistdSwitches() -> list[list[Any]]:
    """
    C{optFlags} for L{twisted.python.usage.Options}.
    """
    return [
        [option.flag, None, flagHelp(option)]
        for option in OPTIONS
        if option.flag is not None and option.kind.commandLine is CommandLine.SWITCH
    ]


def twistdParameters() -> list[list[Any]]:
    """
    C{optParameters} for L{twisted.python.usage.Options}: the configuration
    file, the single-valued options and the table flags.  Values stay text;
    L{loadConfig} converts them with the messages the file gets.
    """
    parameters: list[list[Any]] = [[CONFIG_FLAG, "c", None, "TOML configuration file."]]
    parameters += [
        [option.flag, None, None, flagHelp(option)]
        for option in OPTIONS
        if option.flag is not None and option.kind.commandLine is CommandLine.PARAMETER
    ]
    parameters += [[flag.flag, None, None, flag.help] for flag in TABLE_FLAGS]
    return parameters


def twistdRepeatables() -> list[tuple[str, str]]:
    """
    The repeatable flags and their help, for C{opt_} methods.
    """
    return [
        (option.flag, flagHelp(option))
        for option in OPTIONS
        if option.flag is not None and option.kind.commandLine is CommandLine.REPEATED
    ]


def commandLineFlags() -> list[str]:
    """
    Every flag the command line takes, without C{--}.
    """
    return [CONFIG_FLAG] + [o.flag for o in OPTIONS if o.flag is not None] + [
        f.flag for f in TABLE_FLAGS
    ]


@attrs.frozen
class LoadedConfig:
    """
    A configuration as loaded from the file and the command line.

    @ivar config: the result.
    @ivar overridden: TOML keys the file sets to a value that the command
        line replaces (the file's value is not used).
    """

    config: ProxyConfig
    overridden: tuple[str, ...] = ()


def loadConfig(
    given: Mapping[str, Any], demoTLS: Callable[[], TLSSettings] | None = None
) -> LoadedConfig:
    """
    Read the configuration file named by C{given["config"]} (if any) and
    merge the command line's flags over it.

    @param given: what the flags' parser stored, by flag (C{twistd}'s
        L{usage.Options}).
    @param demoTLS: makes the demo's TLS settings when C{--demo} has none;
        called on every load that needs it, so pass one that makes them once.
    """
    fileValues: dict[str, Any] = {}
    if given.get(CONFIG_FLAG):
        fileValues = readConfigFile(given[CONFIG_FLAG])
    values = dict(fileValues)
    fromCommandLine: set[str] = set()
    for option in OPTIONS:
        if option.flag is None:
            continue
        value = option.kind.fromCommandLine(given.get(option.flag), f"--{option.flag}")
        if value is not NOT_GIVEN:
            values[option.field] = value
            fromCommandLine.add(option.key)
    for key in dict.fromkeys(flag.key for flag in TABLE_FLAGS):
        option = OPTIONS_BY_KEY[key]
        overrides = {}
        for flag in TABLE_FLAGS:
            text = given.get(flag.flag)
            if flag.key == key and text is not None:
                try:
                    overrides[flag.field] = flag.convert(text)
                except ConfigError as e:
                    raise ConfigError(f"--{flag.flag}: {e}") from None
        if overrides:
            where = "--" + ", --".join(f.flag for f in TABLE_FLAGS if f.key == key)
            values[option.field] = option.kind.override(values.get(option.field), overrides, where)
            fromCommandLine.add(key)
    if values.get("demo"):
        values.setdefault("implicitListen", (DEMO_IMPLICIT_LISTEN,))
        if values.get("tls") is None and demoTLS is not None:
            values["tls"] = demoTLS()
    values.setdefault("backends", ())
    overridden = tuple(
        option.key
        for option in OPTIONS
        if option.key in fromCommandLine
        and option.field in fileValues
        and fileValues[option.field] != values[option.field]
    )
    return LoadedConfig(makeConfig(**values), overridden)
