"""
Tests for the options table (L{ftpproxy.settings.options}) and what is made
from it: the TOML reader, C{twistd ftpproxy}'s flags and help, the merge of
file and command line, and C{docs/configuration.md}.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.python.usage import UsageError

from ftpproxy.app.tap import Options
from ftpproxy.backends.balancer import POLICY_NAMES
from ftpproxy.settings import reference
from ftpproxy.settings.backends import POLICIES
from ftpproxy.settings.commandline import (
    DEMO_IMPLICIT_LISTEN,
    commandLineFlags,
    flagHelp,
    loadConfig,
)
from ftpproxy.settings.config import (
    BackendConfig,
    ConfigError,
    HostPort,
    PortRange,
    ProxyConfig,
    configFromMapping,
)
from ftpproxy.settings.health import HealthSettings
from ftpproxy.settings.tls import TLSSettings
from ftpproxy.settings.options import (
    OPTIONS,
    OPTIONS_BY_KEY,
    TABLE_FLAGS,
    Reload,
    changedOptions,
)

from tests.support.proxy import PROJECT_ROOT, TWISTD

DOC = PROJECT_ROOT / "docs" / "configuration.md"
BACKEND = '\n[[backend]]\naddress = "127.0.0.2:21"\n'


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def writeConfig(tmp_path: Path, text: str, name: str = "ftpproxy.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- the table itself -----------------------------------------------------------


def test_tableCoversProxyConfigExactly() -> None:
    """
    Every ProxyConfig field is set by exactly one option, and every option
    sets a ProxyConfig field.
    """
    fields = [f.name for f in attrs.fields(ProxyConfig)]
    tableFields = [option.field for option in OPTIONS]
    assert sorted(tableFields) == sorted(fields)
    assert len(set(tableFields)) == len(tableFields)


def test_keysAndFlagsAreUnique() -> None:
    keys = [option.key for option in OPTIONS]
    assert len(set(keys)) == len(keys)
    flags = commandLineFlags()
    assert len(set(flags)) == len(flags)
    for flag in TABLE_FLAGS:
        assert flag.key in OPTIONS_BY_KEY


def test_tableFlagsNameRealSettings() -> None:
    """
    Each flag that sets one key of a table names a field of that table's
    settings value.
    """
    valueClasses = {"tls": TLSSettings, "health": HealthSettings}
    for flag in TABLE_FLAGS:
        assert flag.field in attrs.fields_dict(valueClasses[flag.key]), flag


def test_everyOptionHasHelp() -> None:
    for option in OPTIONS:
        assert option.help.strip().endswith("."), option.key
        assert option.help[0].isupper(), option.key


def test_liveRestartSplit() -> None:
    """
    Only what cannot change under a running proxy needs a restart: its
    listening endpoints, the admin endpoint, the log format, the demo and
    its TLS rig, and the number of worker processes.
    """
    restart = {option.key for option in OPTIONS if option.reload is Reload.RESTART}
    assert restart == {
        "listen",
        "implicit_tls_listen",
        "listener",
        "admin",
        "log_format",
        "demo",
        "tls_rig",
        "tls_rig_ports",
        "workers",
    }
    for key in (
        "login_failure_window",
        "login_failures_before_delay",
        "login_failures_before_block",
        "proxy_header_timeout",
        "xferlog",
    ):
        assert OPTIONS_BY_KEY[key].reload is Reload.LIVE, key


def test_policyNamesAgree() -> None:
    """
    The settings accept exactly the policies the balancer has.
    """
    assert POLICIES == POLICY_NAMES


def test_changedOptions() -> None:
    old = ProxyConfig(backends=(BackendConfig(HostPort("127.0.0.2", 2100), "alpha"),))
    new = attrs.evolve(
        old,
        loginFailureWindow=60.0,
        admin="tcp:8021:interface=127.0.0.1",
        listen=("tcp:2122:interface=127.0.0.1",),
    )
    assert [o.key for o in changedOptions(old, new)] == [
        "listen",
        "login_failure_window",
        "admin",
    ]
    assert changedOptions(old, attrs.evolve(old)) == ()


# -- the TOML reader ------------------------------------------------------------


def test_readerKnowsExactlyTheTableKeys() -> None:
    with pytest.raises(ConfigError) as caught:
        configFromMapping({"nonsense": 1}, "f.toml")
    message = str(caught.value)
    known = message.partition("known keys are ")[2].split(", ")
    assert sorted(known) == sorted(OPTIONS_BY_KEY)


def test_readerUsesEachRowsKind() -> None:
    values = configFromMapping(
        {
            "listen": "tcp:2100",
            "passive_ports": "3000-3009",
            "connect_timeout": 5,
            "max_sessions": 7,
            "splice": False,
            "health": {"kind": "tcp"},
            "user_hash": {"ignore_case": True},
        },
        "f.toml",
    )
    assert values == {
        "listen": ("tcp:2100",),
        "passivePorts": PortRange(3000, 3009),
        "connectTimeout": 5.0,
        "maxSessions": 7,
        "splice": False,
        "health": HealthSettings(kind="tcp"),
        "policyOptions": {"ignoreCase": True},
    }


# -- the command line -----------------------------------------------------------


def twistdHelp() -> str:
    result = subprocess.run(
        [*TWISTD, "ftpproxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        check=True,
    )
    return result.stdout


def test_twistdHelpMatchesTheTable() -> None:
    """
    C{twistd ftpproxy --help} lists every flag of the table (with its help)
    and no flag the table does not know, besides --help and --version.
    """
    text = twistdHelp()
    listed = set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", text, re.M))
    assert listed == set(commandLineFlags()) | {"help", "version"}
    flat = " ".join(text.split())
    for option in OPTIONS:
        if option.flag is not None:
            assert " ".join(flagHelp(option).split()) in flat, option.flag
    for flag in TABLE_FLAGS:
        assert " ".join(flag.help.split()) in flat, flag.flag


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["--connect-timeout", "2.5"], "connectTimeout", 2.5),
        (["--max-sessions", "3"], "maxSessions", 3),
        (["--passive-ports", "3000-3009"], "passivePorts", PortRange(3000, 3009)),
        (["--no-splice"], "splice", False),
        (["--require-session-reuse", "--tls-cert", "c.pem"], "requireSessionReuse", True),
        (["--listen", "tcp:1", "--listen", "tcp:2"], "listen", ("tcp:1", "tcp:2")),
        (["--policy", "random"], "policy", "random"),
        (["--xferlog", "x.log"], "xferlog", "x.log"),
    ],
)
def test_flags(argv: list[str], field: str, value: Any) -> None:
    config = parse("--backend", "127.0.0.2:21", *argv).config
    assert getattr(config, field) == value


def test_flagsNotGivenLeaveDefaults() -> None:
    config = parse("--backend", "127.0.0.2:21").config
    assert config == ProxyConfig(backends=config.backends)


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["--connect-timeout", "soon"], "--connect-timeout: 'soon' is not a number of seconds"),
        (["--max-sessions", "1.5"], "--max-sessions: '1.5' is not a whole number"),
        (["--connect-timeout", "0"], "connect_timeout must be a positive number of seconds"),
        (["--health-interval", "x"], "--health-interval: 'x' is not a number of seconds"),
        (["--health-interval", "0"], "health interval must be a positive number"),
        (["--tls-key", "k.pem"], "TLS options need a certificate: give --tls-cert"),
        (["--passive-ports", "9-1"], "--passive-ports '9-1': 9 is greater than 1"),
    ],
)
def test_badFlags(argv: list[str], complaint: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse("--backend", "127.0.0.2:21", *argv)
    assert complaint in str(caught.value)


def test_commandLineWinsAndSaysSo(tmp_path: Path) -> None:
    """
    A flag replaces the file's value; the loaded configuration names the
    keys whose file values are not used.
    """
    path = writeConfig(
        tmp_path,
        'xferlog = "file.log"\nconnect_timeout = 5\nidle_timeout = 60\n'
        '[tls]\ncertificate = "file.pem"\n' + BACKEND,
    )
    options = parse(
        "--config", path, "--xferlog", "flag.log", "--idle-timeout", "60",
        "--tls-cert", "flag.pem",
    )
    config = options.config
    assert config.xferlog == "flag.log"
    assert config.connectTimeout == 5.0
    assert config.tls is not None and config.tls.certificate == Path("flag.pem")
    # idle_timeout is given both ways, but with the same value.
    assert options.loaded.overridden == ("tls", "xferlog")


def test_tableFlagsRefineTheFilesTable(tmp_path: Path) -> None:
    path = writeConfig(
        tmp_path, '[health]\nkind = "tcp"\nfall = 5\n[tls]\ncertificate = "c.pem"\n' + BACKEND
    )
    config = parse("--config", path, "--health-interval", "2", "--tls-min-version", "1.3").config
    assert config.health == HealthSettings(kind="tcp", fall=5, interval=2.0)
    assert config.tls is not None
    assert (config.tls.certificate, config.tls.minimumVersion) == (Path("c.pem"), "1.3")


def test_pinnedUserToABackendTheCommandLineReplaced(tmp_path: Path) -> None:
    """
    A user pinned (in the file) to a backend that --backend replaced is
    refused, naming the key.
    """
    path = writeConfig(
        tmp_path,
        'policy = "user-hash"\n[user_hash.users]\nalice = "alpha"\n'
        '[[backend]]\naddress = "127.0.0.2:21"\nname = "alpha"\n',
    )
    assert parse("--config", path).config.policyOptions == {"table": {"alice": "alpha"}}
    with pytest.raises(UsageError) as caught:
        parse("--config", path, "--backend", "127.0.0.3:21")
    assert "user_hash users: alice = 'alpha' is not a backend" in str(caught.value)


# -- the demo ---------------------------------------------------------------------


def test_demoCertificatesAreMadeOnce(tmp_path: Path) -> None:
    """
    Defect 4: each reload of C{--demo --config F} made new certificates.
    Loading again reuses the first ones.
    """
    path = writeConfig(tmp_path, 'policy = "round-robin"\n')
    options = parse("--demo", "--config", path)
    first = options.config.tls
    assert first is not None and first.certificate.is_file()
    again = options.load().config.tls
    assert again == first
    assert again is first


def test_demoUsesTheFilesCertificateWhenThereIsOne(tmp_path: Path) -> None:
    made = []
    path = writeConfig(tmp_path, '[tls]\ncertificate = "mine.pem"\n')

    def demoTLS():
        made.append(1)
        raise AssertionError("no demo certificates wanted")

    given = {"config": path, "demo": 1}
    loaded = loadConfig(given, demoTLS=demoTLS)
    assert loaded.config.tls is not None
    assert loaded.config.tls.certificate == Path("mine.pem")
    assert loaded.config.implicitListen == (DEMO_IMPLICIT_LISTEN,)
    assert made == []


# -- the documentation ------------------------------------------------------------


def test_configurationDocIsCurrent() -> None:
    """
    docs/configuration.md is the table rendered; regenerate it with
    C{python -m ftpproxy.settings.reference > docs/configuration.md}.
    """
    assert DOC.read_text() == reference.render()


def test_configurationDocShowsEveryOption() -> None:
    text = DOC.read_text()
    for option in OPTIONS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{option.key}` |"))
        assert f"| {option.reload.value} |" in row
        if option.flag:
            assert f"`--{option.flag}`" in row
