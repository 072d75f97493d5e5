"""
Tests for TLS profiles (C{[tls.profiles.NAME]}) and listeners
(C{[[listener]]}) as settings: what the TOML file becomes, what a profile
inherits from C{[tls]}, and the one clear message for what cannot work.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest

from ftpproxy.settings.commandline import loadConfig
from ftpproxy.settings.config import (
    DEFAULT_LISTEN,
    ConfigError,
    ListenerSettings,
    ProxyConfig,
    backendsFromArguments,
    listenerTable,
    makeConfig,
    readConfigFile,
)
from ftpproxy.settings.tls import (
    TLSProfileSettings,
    TLSSettings,
    TLSSettingsError,
    resolveProfile,
)

BACKEND = '\n[[backend]]\naddress = "127.0.0.2:21"\n'
BACKENDS = backendsFromArguments(["127.0.0.2:21"])


def configFrom(tmp_path: Path, text: str) -> ProxyConfig:
    path = tmp_path / "ftpproxy.toml"
    path.write_text(textwrap.dedent(text) + BACKEND)
    return makeConfig(**readConfigFile(str(path)))


def refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        configFrom(tmp_path, text)
    assert message in str(caught.value)


PROFILES = """
[tls]
certificate = "/etc/ftpproxy/cert.pem"
min_version = "1.2"
ciphers = "ECDHE+AESGCM"
development_ca = "/var/lib/ftpproxy/devca"

[tls.profiles.strict]
min_version = "1.3"
session_reuse = "required"

[tls.profiles.old]
max_version = "1.2"
tickets = false

[tls.profiles.forgetful]
session_reuse = "off"

[tls.profiles.expired]
certificate_variant = "expired"
"""


def test_profilesInheritFromTLS(tmp_path: Path) -> None:
    """
    A profile has what it sets and [tls]'s values for the rest; session
    reuse follows require_session_reuse unless set; tickets are on unless
    turned off or reuse is off.
    """
    config = configFrom(tmp_path, PROFILES)
    assert [p.name for p in config.tls.profiles] == ["strict", "old", "forgetful", "expired"]
    strict = config.tlsProfile("strict")
    assert strict.settings.minimumVersion == "1.3"
    assert strict.settings.ciphers == "ECDHE+AESGCM"
    assert strict.settings.certificate == Path("/etc/ftpproxy/cert.pem")
    assert strict.settings.profiles == ()
    assert (strict.sessionReuse, strict.tickets) == ("required", True)
    old = config.tlsProfile("old")
    assert (old.settings.maximumVersion, old.sessionReuse, old.tickets) == ("1.2", "optional", False)
    assert config.tlsProfile("forgetful").tickets is False
    assert config.tlsProfile("expired").certificateVariant == "expired"
    default = config.tlsProfile(None)
    assert (default.name, default.sessionReuse, default.tickets) == ("default", "optional", True)
    assert config.tlsProfile("default") == default
    with pytest.raises(KeyError):
        config.tlsProfile("nonesuch")


def test_reuseInheritedFromRequireSessionReuse(tmp_path: Path) -> None:
    config = configFrom(tmp_path, "require_session_reuse = true\n" + PROFILES)
    assert config.tlsProfile(None).sessionReuse == "required"
    assert config.tlsProfile("old").sessionReuse == "required"
    assert config.tlsProfile("forgetful").sessionReuse == "off"


def test_commandLineReachesProfiles(tmp_path: Path) -> None:
    """
    --tls-* flags change [tls], and so every profile that does not set
    the key itself.
    """
    path = tmp_path / "ftpproxy.toml"
    path.write_text(textwrap.dedent(PROFILES) + BACKEND)
    loaded = loadConfig({"config": str(path), "tls-ciphers": "ECDHE+CHACHA20"})
    assert loaded.config.tlsProfile("strict").settings.ciphers == "ECDHE+CHACHA20"
    assert loaded.config.tlsProfile("strict").settings.minimumVersion == "1.3"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[tls.profiles.x]\nsession_reuse = "always"', "session_reuse must be one of"),
        ('[tls.profiles.x]\nsession_reuse = "off"\ntickets = true', "contradicts"),
        ("[tls.profiles.x]\ntickets = 1", "tickets has the wrong type"),
        ('[tls.profiles.x]\ncertificate_variant = "rotten"', "certificate_variant must be one of"),
        ('[tls.profiles.x]\nflavour = "sweet"', "unknown key 'flavour'"),
        ('[tls.profiles.default]\nmin_version = "1.3"', "taken by [tls] itself"),
        ('[tls.profiles."a b"]\nmin_version = "1.3"', "profile name 'a b'"),
        ('[tls.profiles.x]\nmax_version = "1.1"', "profile 'x': maximum TLS version 1.1"),
        ('[tls.profiles.x]\nmin_version = "1.0"', "profile 'x': TLS 1.0 needs OpenSSL"),
        ("profiles = 3", "profiles must be [tls.profiles.NAME] tables"),
    ],
)
def test_badProfiles(tmp_path: Path, text: str, message: str) -> None:
    refused(tmp_path, '[tls]\ncertificate = "/c.pem"\n' + text, message)


def test_variantNeedsADevelopmentCA(tmp_path: Path) -> None:
    refused(
        tmp_path,
        '[tls]\ncertificate = "/c.pem"\n[tls.profiles.x]\ncertificate_variant = "expired"',
        "certificate_variant needs development_ca",
    )


def test_profileValuesDirectly() -> None:
    """
    The values refuse what the file would: a clear TLSSettingsError.
    """
    with pytest.raises(TLSSettingsError, match="defined twice"):
        TLSSettings(
            certificate=Path("/c.pem"),
            profiles=(TLSProfileSettings("a"), TLSProfileSettings("a")),
        )
    with pytest.raises(TLSSettingsError, match="cannot set 'profiles'"):
        TLSProfileSettings("a", {"profiles": ()})
    tls = TLSSettings(certificate=Path("/c.pem"), profiles=(TLSProfileSettings("a", {"minimumVersion": "1.3"}),))
    assert resolveProfile(tls, "a", "optional").settings.minimumVersion == "1.3"


# -- listeners ---------------------------------------------------------------------


LISTENERS = """
listen = "tcp:2121:interface=127.0.0.1"
implicit_tls_listen = ["tcp:2990:interface=127.0.0.1"]

[[listener]]
endpoint = "tcp:2991:interface=127.0.0.1"
tls_profile = "strict"
require_tls = true
name = "strict-explicit"

[[listener]]
endpoint = "tcp:2992:interface=127.0.0.1"
tls = "implicit"
tls_profile = "old"

[[listener]]
endpoint = "tcp:2993:interface=127.0.0.1"
tls = "none"
""" + PROFILES


def test_listeners(tmp_path: Path) -> None:
    """
    [[listener]] tables, then listen and implicit_tls_listen as listeners
    with the default profile.
    """
    config = configFrom(tmp_path, LISTENERS)
    table = listenerTable(config)
    assert [(l.label, l.tls, l.tlsProfile, l.requireTLS) for l in table] == [
        ("strict-explicit", None, "strict", True),
        ("tcp:2992:interface=127.0.0.1", "implicit", "old", None),
        ("tcp:2993:interface=127.0.0.1", "none", None, None),
        ("tcp:2121:interface=127.0.0.1", None, None, None),
        ("tcp:2990:interface=127.0.0.1", "implicit", None, None),
    ]


def test_defaultListenOnlyWithoutListeners(tmp_path: Path) -> None:
    """
    Without listen and [[listener]] the proxy listens on 127.0.0.1:2121;
    [[listener]] tables replace that default.
    """
    plain = ProxyConfig(backends=BACKENDS)
    assert plain.listen == (DEFAULT_LISTEN,)
    only = ProxyConfig(backends=BACKENDS, listeners=(ListenerSettings("tcp:3000", tls="none"),))
    assert only.listen == ()
    assert [l.endpoint for l in listenerTable(only)] == ["tcp:3000"]
    with pytest.raises(ConfigError, match="no listening endpoint"):
        ProxyConfig(backends=BACKENDS, listen=())


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[listener]]\nendpoint = "tcp:3000"\ntls = "sometimes"', "tls 'sometimes' is unknown"),
        ('[[listener]]\nendpoint = "tcp:3000"\ntls = "none"\nrequire_tls = true',
         "would refuse every login"),
        ('[[listener]]\nendpoint = "tcp:3000"\ntls = "none"\ntls_profile = "x"',
         'makes no sense with tls = "none"'),
        ('[[listener]]\ntls = "none"', 'endpoint = "ENDPOINT" is missing'),
        ('[[listener]]\nendpoint = "tcp:3000"\nport = 3', "unknown key 'port'"),
        ('[[listener]]\nendpoint = "tcp:3000"\ntls = "implicit"', "needs a certificate"),
        ('[[listener]]\nendpoint = "tcp:3000"\ntls_profile = "x"', "needs a [tls] table"),
        ('passive_ports = "2900-3100"\n[[listener]]\nendpoint = "tcp:3000"',
         "inside the passive port range"),
        ('listen = "tcp:3000"\n[[listener]]\nendpoint = "tcp:3000"', "'tcp:3000' is given twice"),
        ("listener = 3", "must be [[listener]] tables"),
    ],
)
def test_badListeners(tmp_path: Path, text: str, message: str) -> None:
    refused(tmp_path, text, message)


def test_unknownProfile(tmp_path: Path) -> None:
    refused(
        tmp_path,
        '[[listener]]\nendpoint = "tcp:3000"\ntls_profile = "nonesuch"\n' + PROFILES,
        "no TLS profile 'nonesuch' (known: default, strict, old, forgetful, expired)",
    )


def test_rigNeedsTheDemo() -> None:
    with pytest.raises(ConfigError, match="tls_rig runs on the demo backends"):
        ProxyConfig(backends=BACKENDS, tlsRig=True)


def test_restartKeepsListenersOfAProfile(tmp_path: Path) -> None:
    """
    A reload that drops a profile a running listener names is refused by
    validation (listeners keep their running values).
    """
    config = configFrom(tmp_path, LISTENERS)
    without = attrs.evolve(config.tls, profiles=config.tls.profiles[1:])
    with pytest.raises(ConfigError, match="no TLS profile 'strict'"):
        attrs.evolve(config, tls=without)
