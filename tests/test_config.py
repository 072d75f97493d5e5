"""
Tests for L{ftpproxy.settings.config}: the TOML file, the values it becomes, and
the checks that turn a bad configuration into one clear message.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftpproxy.settings.config import (
    BackendConfig,
    ConfigError,
    HostPort,
    PortRange,
    ProxyConfig,
    SettingError,
    backendsFromArguments,
    listeningPort,
    makeConfig,
    readConfigFile,
    workerCount,
)
from ftpproxy.settings.values import ListenAddress, listenAddress

GOOD = """
listen = ["tcp:2121:interface=127.0.0.1", "tcp6:2121:interface=\\\\:\\\\:1"]
policy = "round-robin"
passive_ports = "40000-40099"
public_address = "127.0.0.10"
connect_timeout = 5
data_connection_timeout = 12.5
max_line_length = 1024
active_any_host = false
active_low_ports = true

[[backend]]
address = "127.0.0.2:21"
name = "alpha"
data_address = "control"

[[backend]]
address = "[::1]:2121"
allow_low_data_ports = true
weight = 3
"""


def writeConfig(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ftpproxy.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def configFrom(tmp_path: Path, text: str) -> ProxyConfig:
    return makeConfig(**readConfigFile(writeConfig(tmp_path, text)))


BACKEND = '\n[[backend]]\naddress = "127.0.0.2:21"\n'


def configError(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        configFrom(tmp_path, text)
    return str(caught.value)


class TestFile:
    def test_goodFile(self, tmp_path: Path) -> None:
        config = configFrom(tmp_path, GOOD)
        assert config.listen == ("tcp:2121:interface=127.0.0.1", "tcp6:2121:interface=\\:\\:1")
        assert config.policy == "round-robin"
        assert config.passivePorts == PortRange(40000, 40099)
        assert config.publicAddress == "127.0.0.10"
        assert config.connectTimeout == 5.0
        assert isinstance(config.connectTimeout, float)
        assert config.dataConnectionTimeout == 12.5
        assert config.maxLineLength == 1024
        assert config.activeAnyHost is False
        assert config.activeLowPorts is True
        alpha, second = config.backends
        assert alpha == BackendConfig(
            address=HostPort("127.0.0.2", 21), name="alpha", dataAddress="control"
        )
        assert second.address == HostPort("::1", 2121)
        assert second.name == "[::1]:2121"
        assert second.weight == 3
        assert second.allowLowDataPorts is True
        assert second.dataAddress == "check"

    def test_defaults(self, tmp_path: Path) -> None:
        config = configFrom(tmp_path, BACKEND)
        assert config.listen == ("tcp:2121:interface=127.0.0.1",)
        assert config.passivePorts == PortRange(50000, 50999)
        assert config.publicAddress is None
        assert config.activeAnyHost is False
        assert config.activeLowPorts is False
        assert config.backends[0].name == "127.0.0.2:21"

    def test_listenAsString(self, tmp_path: Path) -> None:
        config = configFrom(tmp_path, 'listen = "tcp:2100"\n' + BACKEND)
        assert config.listen == ("tcp:2100",)

    def test_unknownKey(self, tmp_path: Path) -> None:
        message = configError(tmp_path, 'pasive_ports = "1-2"\n' + BACKEND)
        assert "unknown key 'pasive_ports'" in message
        assert "passive_ports" in message

    def test_unknownBackendKey(self, tmp_path: Path) -> None:
        message = configError(tmp_path, BACKEND + 'adress = "x"\n')
        assert "backend #1" in message
        assert "unknown key 'adress'" in message

    def test_backendWithoutAddress(self, tmp_path: Path) -> None:
        assert "address" in configError(tmp_path, '[[backend]]\nname = "a"\n')

    @pytest.mark.parametrize(
        "address, complaint",
        [
            ("127.0.0.2:70000", "outside 1-65535"),
            ("127.0.0.2:0", "outside 1-65535"),
            ("127.0.0.2:ftp", "not a port number"),
            ("127.0.0.2", "HOST:PORT"),
            (":21", "host is missing"),
            ("::1:21", "brackets"),
            ("[::1]21", "[IPV6]:PORT"),
        ],
    )
    def test_badBackendAddress(self, tmp_path: Path, address: str, complaint: str) -> None:
        message = configError(tmp_path, f'[[backend]]\naddress = "{address}"\n')
        assert complaint in message
        assert address in message

    def test_reversedRange(self, tmp_path: Path) -> None:
        message = configError(tmp_path, 'passive_ports = "50010-50000"\n' + BACKEND)
        assert "50010 is greater than 50000" in message

    @pytest.mark.parametrize("text", ["50000", "50000-", "a-b", "0-10", "1-65536"])
    def test_badRange(self, tmp_path: Path, text: str) -> None:
        configError(tmp_path, f'passive_ports = "{text}"\n' + BACKEND)

    def test_listenInsidePassiveRange(self, tmp_path: Path) -> None:
        message = configError(
            tmp_path, 'listen = "tcp:40050"\npassive_ports = "40000-40099"\n' + BACKEND
        )
        assert "tcp:40050" in message
        assert "40000-40099" in message

    def test_noBackends(self, tmp_path: Path) -> None:
        values = readConfigFile(writeConfig(tmp_path, 'listen = "tcp:2121"\n'))
        assert "backends" not in values
        with pytest.raises(ConfigError) as caught:
            makeConfig(backends=(), **values)
        assert "no backends" in str(caught.value)

    def test_emptyBackendList(self, tmp_path: Path) -> None:
        assert "no backends" in configError(tmp_path, "backend = []\n")

    def test_duplicateBackendNames(self, tmp_path: Path) -> None:
        text = BACKEND + 'name = "a"\n' + '[[backend]]\naddress = "127.0.0.3:21"\nname = "a"\n'
        assert "'a' is used twice" in configError(tmp_path, text)

    @pytest.mark.parametrize(
        "line",
        [
            "passive_ports = 50000",
            "connect_timeout = '10'",
            "connect_timeout = true",
            "max_line_length = 1024.5",
            "max_line_length = '1024'",
            "active_low_ports = 1",
            "demo = 'yes'",
            "public_address = 127",
            "listen = 2121",
            "listen = ['tcp:2121', 2122]",
            "policy = ['round-robin']",
        ],
    )
    def test_wrongTypes(self, tmp_path: Path, line: str) -> None:
        key = line.split(" ")[0]
        assert key in configError(tmp_path, line + "\n" + BACKEND)

    @pytest.mark.parametrize(
        "line",
        ["weight = '2'", "weight = true", "name = 3", "allow_low_data_ports = 'no'"],
    )
    def test_wrongBackendTypes(self, tmp_path: Path, line: str) -> None:
        message = configError(tmp_path, BACKEND + line + "\n")
        assert "backend #1" in message
        assert line.split(" ")[0] in message

    def test_backendAddressNotAString(self, tmp_path: Path) -> None:
        message = configError(tmp_path, "[[backend]]\naddress = 21\n")
        assert "backend #1 address" in message

    def test_backendNotATable(self, tmp_path: Path) -> None:
        assert "[[backend]]" in configError(tmp_path, 'backend = "127.0.0.2:21"\n')

    @pytest.mark.parametrize(
        "line, complaint",
        [
            ("connect_timeout = 0", "connect_timeout"),
            ("data_connection_timeout = -1", "data_connection_timeout"),
            ("max_line_length = 100", "max_line_length"),
            ("public_address = 'proxy.example'", "not an IP address"),
            ("policy = 'fastest'", "'fastest' is unknown"),
        ],
    )
    def test_badValues(self, tmp_path: Path, line: str, complaint: str) -> None:
        assert complaint in configError(tmp_path, line + "\n" + BACKEND)

    def test_badDataAddressPolicy(self, tmp_path: Path) -> None:
        assert "data_address" in configError(tmp_path, BACKEND + 'data_address = "trust"\n')

    def test_syntaxError(self, tmp_path: Path) -> None:
        path = writeConfig(tmp_path, "listen = [\n")
        with pytest.raises(ConfigError) as caught:
            readConfigFile(path)
        assert path in str(caught.value)

    def test_missingFile(self, tmp_path: Path) -> None:
        path = str(tmp_path / "nowhere.toml")
        with pytest.raises(ConfigError) as caught:
            readConfigFile(path)
        assert path in str(caught.value)

    def test_configErrorIsValueError(self) -> None:
        assert issubclass(ConfigError, ValueError)


class TestValues:
    def test_hostPortIPv6(self) -> None:
        address = HostPort.parse("[::1]:21")
        assert address == HostPort("::1", 21)
        assert str(address) == "[::1]:21"
        assert HostPort.parse(str(address)) == address

    def test_hostPortName(self) -> None:
        address = HostPort.parse(" ftp.internal:2121 ")
        assert address == HostPort("ftp.internal", 2121)
        assert str(address) == "ftp.internal:2121"

    def test_portRange(self) -> None:
        ports = PortRange.parse("50000 - 50009")
        assert len(ports) == 10
        assert 50000 in ports and 50009 in ports
        assert 49999 not in ports and 50010 not in ports
        assert "50000" not in ports
        assert str(ports) == "50000-50009"
        assert ports.overlaps(PortRange(50009, 50100))
        assert not ports.overlaps(PortRange(50010, 50100))

    def test_singlePortRange(self) -> None:
        assert len(PortRange.parse("2000-2000")) == 1

    def test_backendsFromArguments(self) -> None:
        assert backendsFromArguments(["127.0.0.2:21", "[::1]:2121"]) == (
            BackendConfig(address=HostPort("127.0.0.2", 21), name="127.0.0.2:21"),
            BackendConfig(address=HostPort("::1", 2121), name="[::1]:2121"),
        )

    def test_configIsFrozen(self) -> None:
        config = ProxyConfig(backends=backendsFromArguments(["127.0.0.2:21"]))
        with pytest.raises(AttributeError):
            config.connectTimeout = 1.0  # type: ignore[misc]

    def test_makeConfigTypeError(self) -> None:
        with pytest.raises(ConfigError):
            makeConfig(backends=(), nonsense=1)

    def test_demoNeedsNoBackends(self) -> None:
        assert makeConfig(backends=(), demo=True).backends == ()


class TestListeningPort:
    @pytest.mark.parametrize(
        "description, port",
        [
            ("tcp:2121:interface=127.0.0.1", 2121),
            ("tcp:port=2121:interface=127.0.0.1", 2121),
            ("tcp:interface=127.0.0.1:port=2121", 2121),
            ("2121", 2121),
            ("TCP:21", 21),
            ("tcp6:2121:interface=\\:\\:1", 2121),
            ("ssl:990:privateKey=key.pem", 990),
            ("tcp:0", 0),
            ("unix:/run/ftpproxy.sock", None),
            ("systemd:domain=INET:index=0", None),
        ],
    )
    def test_port(self, description: str, port: int | None) -> None:
        assert listeningPort(description) == port

    @pytest.mark.parametrize(
        "description", ["", "tcp", "tcp:interface=127.0.0.1", "tcp:99999", "tcp:ftp"]
    )
    def test_bad(self, description: str) -> None:
        with pytest.raises(ConfigError):
            listeningPort(description)

    def test_escapedColonsAreNotSeparators(self) -> None:
        """
        The port of C{tcp6:interface=\\:\\:1:port=21} is 21, not a piece of
        the address.
        """
        assert listeningPort("tcp6:interface=\\:\\:1:port=21") == 21

    def test_listenAtTheRangeEdges(self) -> None:
        kwargs: dict[str, Any] = dict(
            backends=backendsFromArguments(["127.0.0.2:21"]),
            passivePorts=PortRange(40000, 40099),
        )
        makeConfig(listen=("tcp:39999",), **kwargs)
        with pytest.raises(ConfigError):
            makeConfig(listen=("tcp:40000",), **kwargs)
        with pytest.raises(ConfigError):
            makeConfig(listen=("tcp:40099:interface=127.0.0.1",), **kwargs)


class TestValidators:
    """
    ProxyConfig validates each field as it is built, for embedders as for the
    file, and every message names the TOML key.
    """

    BACKENDS = backendsFromArguments(["127.0.0.2:21"])

    @pytest.mark.parametrize(
        "field, value, message",
        [
            ("connectTimeout", 0, "connect_timeout must be a positive number of seconds"),
            ("connectTimeout", "10", "connect_timeout must be a positive number of seconds"),
            ("dataConnectionTimeout", -1.0, "data_connection_timeout must be a positive"),
            ("loginFailureWindow", 0, "login_failure_window must be a positive"),
            ("proxyHeaderTimeout", 0, "proxy_header_timeout must be a positive"),
            ("loginTimeout", -1, "login_timeout must be a number of seconds (0 turns it off)"),
            ("idleTimeout", -1, "idle_timeout must be a number of seconds"),
            ("dataStallTimeout", -0.5, "data_stall_timeout must be a number of seconds"),
            ("shutdownGrace", -1, "shutdown_grace must be a number of seconds"),
            ("maxSessions", -1, "max_sessions must not be negative (0 turns it off)"),
            ("maxSessionsPerClient", -1, "max_sessions_per_client must not be negative"),
            ("loginFailuresBeforeDelay", -1, "login_failures_before_delay must not be negative"),
            ("loginFailuresBeforeBlock", 1.5, "login_failures_before_block must not be negative"),
            ("maxLineLength", 511, "max_line_length must be at least 512 bytes"),
            ("logFormat", "xml", "log_format 'xml' is unknown; choose one of text, json"),
            ("policy", "fastest", "policy 'fastest' is unknown; choose one of round-robin"),
            ("publicAddress", "proxy.example", "public_address 'proxy.example' is not an IP"),
            ("splice", 1, "splice must be true or false"),
            ("activeAnyHost", "yes", "active_any_host must be true or false"),
            ("admin", "", "admin must be a non-empty string"),
            ("xferlog", 5, "xferlog must be a non-empty string"),
            ("passivePorts", "50000-50010", "passive_ports must be a PortRange"),
            ("health", {"kind": "tcp"}, "health must be a HealthSettings"),
            ("listen", "tcp:2121", "listen must be a tuple of endpoint strings"),
            ("listen", (), "no listening endpoint: give --listen ENDPOINT"),
            ("implicitListen", ("tcp:990",), "implicit_tls_listen needs a certificate"),
            ("requireTLS", True, "require_tls needs a certificate: give --tls-cert"),
            ("requireSessionReuse", True, "require_session_reuse needs a certificate"),
            ("policyOptions", {"table": {"alice": "nowhere"}},
             "user_hash users: alice = 'nowhere' is not a backend; backends are 127.0.0.2:21"),
        ],
    )
    def test_refused(self, field: str, value: Any, message: str) -> None:
        with pytest.raises(ConfigError) as caught:
            ProxyConfig(backends=self.BACKENDS, **{field: value})
        assert message in str(caught.value)

    def test_settingErrorNamesTheKey(self) -> None:
        with pytest.raises(SettingError) as caught:
            ProxyConfig(backends=self.BACKENDS, idleTimeout=-1)
        assert caught.value.key == "idle_timeout"
        assert caught.value.within("f.toml:") == (
            "f.toml: idle_timeout must be a number of seconds (0 turns it off)"
        )

    def test_implicitListenInsidePassiveRange(self) -> None:
        with pytest.raises(ConfigError) as caught:
            ProxyConfig(
                backends=self.BACKENDS,
                passivePorts=PortRange(40000, 40099),
                implicitListen=("tcp:40001",),
                demo=True,
            )
        assert "implicit_tls_listen endpoint 'tcp:40001' lies inside" in str(caught.value)

    def test_demoNeedsNoCertificate(self) -> None:
        config = ProxyConfig(backends=(), demo=True, implicitListen=("tcp:2990",))
        assert config.tls is None

    def test_evolveValidatesToo(self) -> None:
        config = ProxyConfig(backends=self.BACKENDS)
        with pytest.raises(ConfigError, match="max_sessions must not be negative"):
            attrs.evolve(config, maxSessions=-2)

    @pytest.mark.parametrize(
        "changes, message",
        [
            ({"weight": -1}, "backend b: weight must not be negative"),
            ({"dataAddress": "trust"}, "backend b: data_address must be one of check, control, any"),
            ({"tls": "starttls"}, "backend b: tls must be one of none, explicit, implicit"),
            ({"dataProtection": "safe"}, "backend b: data_protection must be one of private, clear"),
            ({"proxyProtocol": 3}, "backend b: proxy_protocol must be 1 or 2"),
        ],
    )
    def test_backendRefused(self, changes: dict, message: str) -> None:
        with pytest.raises(ConfigError) as caught:
            BackendConfig(address=HostPort("127.0.0.2", 21), name="b", **changes)
        assert str(caught.value) == message


def test_settingsImportNoHigherLayer() -> None:
    """
    No module of ftpproxy.settings imports the backends, sessions,
    operations or application layers, anywhere in the module (functions and
    TYPE_CHECKING blocks included): the settings are values every layer
    may use.
    """
    import ast

    import ftpproxy.settings

    forbidden = ("ftpproxy.backends", "ftpproxy.session", "ftpproxy.ops", "ftpproxy.app")
    package = Path(ftpproxy.settings.__file__).parent
    found = []
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 5
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{module.name}: {n}" for n in names if n.startswith(forbidden)]
    assert found == []


# -- workers -------------------------------------------------------------------

ONE_BACKEND = (BackendConfig(HostPort("127.0.0.2", 21), name="alpha"),)


@pytest.mark.parametrize("value, expected", [(2, 2), ("auto", "auto")])
def test_workersFromToml(tmp_path: Path, value: Any, expected: Any) -> None:
    text = f'workers = {value!r}\n[[backend]]\naddress = "127.0.0.2:21"\n'.replace("'", '"')
    assert configFrom(tmp_path, text).workers == expected


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "workers must be a whole number from 1"),
        ("many", "neither a number nor"),
        (True, "wrong type"),
    ],
)
def test_badWorkers(tmp_path: Path, value: Any, message: str) -> None:
    text = f"workers = {str(value).lower() if isinstance(value, bool) else repr(value)}\n"
    text = text.replace("'", '"') + '[[backend]]\naddress = "127.0.0.2:21"\n'
    with pytest.raises(ConfigError, match=message):
        configFrom(tmp_path, text)


def test_workersNeedPortsOfTheirOwn() -> None:
    with pytest.raises(SettingError, match="3 cannot share the 2 ports of passive_ports"):
        ProxyConfig(ONE_BACKEND, passivePorts=PortRange(50000, 50001), workers=3)
    assert ProxyConfig(ONE_BACKEND, passivePorts=PortRange(50000, 50001), workers=2).workers == 2


def test_workersNeedTCPListeners() -> None:
    with pytest.raises(SettingError, match="needs TCP listeners.*unix:/tmp/s"):
        ProxyConfig(ONE_BACKEND, listen=("unix:/tmp/s",), workers=2)
    config = ProxyConfig(ONE_BACKEND, listen=("haproxy:tcp6:21:interface=\\:\\:1",), workers=2)
    assert config.workers == 2
    # One process listens on anything Twisted knows.
    assert ProxyConfig(ONE_BACKEND, listen=("unix:/tmp/s",)).workers == 1


def test_workerCountAuto() -> None:
    config = ProxyConfig(ONE_BACKEND, passivePorts=PortRange(50000, 50003), workers="auto")
    assert workerCount(config, cores=4) == 4
    assert workerCount(attrs.evolve(config, workers=3), cores=4) == 3
    with pytest.raises(SettingError, match='"auto" means 5 workers here, more than the 4 ports'):
        workerCount(config, cores=5)
    assert workerCount(config) >= 1


def test_portRangeSplit() -> None:
    assert PortRange(100, 109).split(3) == (
        PortRange(100, 103), PortRange(104, 106), PortRange(107, 109)
    )
    assert PortRange(100, 101).split(2) == (PortRange(100, 100), PortRange(101, 101))
    assert PortRange(100, 109).split(1) == (PortRange(100, 109),)
    with pytest.raises(ValueError):
        PortRange(100, 101).split(3)


@pytest.mark.parametrize(
    "description, expected",
    [
        ("tcp:21", ListenAddress(False, "", 21)),
        ("2121", ListenAddress(False, "", 2121)),
        ("tcp6:21", ListenAddress(True, "::", 21)),
        ("tcp6:21:interface=\\:\\:1", ListenAddress(True, "::1", 21)),
        ("haproxy:tcp:21:interface=127.0.0.1:backlog=7", ListenAddress(False, "127.0.0.1", 21, 7, True)),
        ("tcp:port=2121:interface=10.0.0.1", ListenAddress(False, "10.0.0.1", 2121)),
    ],
)
def test_listenAddress(description: str, expected: ListenAddress) -> None:
    assert listenAddress(description) == expected


@pytest.mark.parametrize(
    "description", ["ssl:990", "unix:/tmp/x", "tcp:21:reuse=1", "tcp:interface=1.2.3.4", "tcp:21:backlog=x"]
)
def test_listenAddressRefuses(description: str) -> None:
    with pytest.raises(ConfigError, match="listen endpoint"):
        listenAddress(description)
