"""
C{docs/configuration.md}: the options table rendered for people.

    python -m ftpproxy.settings.reference > docs/configuration.md

A test renders it again and compares, so the document cannot drift from the
table.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ftpproxy.settings.backends import BACKEND_KEYS, USER_HASH_KEYS
from ftpproxy.settings.commandline import CONFIG_FLAG, describeDefault, fieldDefault
from ftpproxy.settings.health import HEALTH_KEYS
from ftpproxy.settings.listeners import LISTENER_KEYS
from ftpproxy.settings.options import OPTIONS, TABLE_FLAGS, Reload
from ftpproxy.settings.tls import DEFAULT_PROFILE_KEYS, PROFILE_KEYS, TLS_KEYS

_INTRO = f"""\
# Configuration reference

<!-- Generated from ftpproxy/settings/options.py by
     python -m ftpproxy.settings.reference > docs/configuration.md
     (tests/test_options.py checks that it is current). -->

Every option can be given in the TOML file named by `--{CONFIG_FLAG} PATH`; those
with a flag can also be given on the command line, which wins over the
file. Bad values stop start-up (or a reload) with one message naming the
key.

**Reload** says what SIGHUP (or `ProxyService.reload()`) does with a
changed value: *live* options take effect at once for new sessions
(running sessions keep the values they started with); *restart* options
keep their old value until the proxy is restarted. Each reload logs one
event (`configuration reloaded: ...`) listing the keys that changed, those
that took effect and those that need a restart, and the keys whose file
value the command line overrides.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _flags(key: str, flag: str | None) -> str:
    flags = ([f"`--{flag}`"] if flag else []) + [
        f"`--{f.flag}`" for f in TABLE_FLAGS if f.key == key
    ]
    return ", ".join(flags) or "-"


def render() -> str:
    """
    The whole of C{docs/configuration.md}.
    """
    lines = [_INTRO, "## Top-level keys", ""]
    rows = []
    for option in OPTIONS:
        default = describeDefault(fieldDefault(option))
        rows.append(
            [
                f"`{option.key}`",
                _flags(option.key, option.flag),
                f"`{option.field}`",
                f"`{default}`" if default is not None else "-",
                option.reload.value,
                option.help,
            ]
        )
    lines += _table(["TOML key", "Flag", "ProxyConfig field", "Default", "Reload", "Meaning"], rows)
    live = [o.key for o in OPTIONS if o.reload is Reload.LIVE]
    restart = [o.key for o in OPTIONS if o.reload is Reload.RESTART]
    lines += [
        "",
        f"Live: {', '.join(live)}.",
        "",
        f"Restart: {', '.join(restart)}.",
        "",
        "## Flags that set one key of a table",
        "",
    ]
    lines += _table(
        ["Flag", "Sets", "Meaning"],
        ([f"`--{f.flag}`", f"`[{f.key}]` `{f.field}`", f.help] for f in TABLE_FLAGS),
    )
    for title, keys in [
        ("`[[backend]]` (one table per backend)", {k: h for k, (_, h) in BACKEND_KEYS.items()}),
        ("`[[listener]]` (one table per listener)", {k: h for k, (_, h) in LISTENER_KEYS.items()}),
        (
            "`[tls]` (the default TLS profile)",
            {k: h for k, (_, h) in {**TLS_KEYS, **DEFAULT_PROFILE_KEYS}.items()},
        ),
        (
            "`[tls.profiles.NAME]` (a TLS profile: what it does not set comes from `[tls]`)",
            {
                **{k: "As in `[tls]`." for k in TLS_KEYS},
                **{k: h for k, (_, h) in PROFILE_KEYS.items()},
            },
        ),
        ("`[health]`", HEALTH_KEYS),
        ("`[user_hash]`", USER_HASH_KEYS),
    ]:
        lines += ["", f"## {title}", ""]
        lines += _table(["Key", "Meaning"], ([f"`{k}`", h] for k, h in keys.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
