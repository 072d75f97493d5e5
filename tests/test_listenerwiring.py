"""
Tests for the wiring of listeners (L{ftpproxy.app.proxy.ListenerFactory},
L{ftpproxy.app.service.makeService}) and of the TLS rig
(L{ftpproxy.settings.rig}): each listener's sessions get its TLS mode,
profile, require_tls and session reuse; a reload keeps the listeners and
makes their TLS afresh.

Sessions run in memory (L{tests.support.memory}); nothing listens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.application.internet import StreamServerEndpointService

from ftpproxy.app.proxy import ListenerFactory
from ftpproxy.app.service import makeService
from ftpproxy.settings.config import (
    ConfigError,
    ListenerSettings,
    PortRange,
    ProxyConfig,
    listenerTable,
)
from ftpproxy.settings.rig import RIG, rigExpectations, rigTable, withTLSRig
from ftpproxy.settings.tls import TLSProfileSettings, TLSSettings
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from tests.support.memory import (
    ALPHA,
    BETA,
    CLIENT_HOST,
    CLIENT_PORT,
    PASSIVE_PORTS,
    PROXY_HOST,
    Peer,
    ProxyHarness,
    address,
    attach,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("devca"))


def tlsSettings(certs: CertificatePaths, *profiles: TLSProfileSettings) -> TLSSettings:
    return TLSSettings(
        certificate=certs.serverCert,
        key=certs.serverKey,
        developmentCA=certs.ca.parent,
        profiles=profiles,
    )


LISTENERS = (
    ListenerSettings("tcp:3001:interface=127.0.0.1", tlsProfile="strict", requireTLS=True, name="strict"),
    ListenerSettings("tcp:3002:interface=127.0.0.1", tls="implicit", tlsProfile="old", name="old"),
    ListenerSettings("tcp:3003:interface=127.0.0.1", tls="none", name="clear"),
)


class Wired:
    """
    A proxy made by makeService on a memory reactor, and its clients.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.harness = ProxyHarness(
            backends=config.backends, **{
                k: v for k, v in attrs.asdict(config, recurse=False).items() if k != "backends"
            }
        )
        self.service = makeService(config, reactor=self.harness.reactor)
        self.harness.factory = self.service.factory
        self.harness.pool = self.service.factory.pool

    def listenerFactories(self) -> dict[str, ListenerFactory]:
        return {
            child.factory.listener.label: child.factory
            for child in self.service
            if isinstance(child, StreamServerEndpointService)
        }

    def connect(self, label: str) -> tuple[Peer, Peer]:
        factory = self.listenerFactories()[label]
        protocol = factory.buildProtocol(address(CLIENT_HOST, CLIENT_PORT))
        client = attach(
            self.harness.reactor, protocol, address(PROXY_HOST, 2121), address(CLIENT_HOST, CLIENT_PORT)
        )
        backend = self.harness.nextConnect().complete()
        backend.send(b"220 ready\r\n")
        assert client.take() == b"220 ready\r\n"
        return client, backend


@pytest.fixture
def wired(certs: CertificatePaths) -> Wired:
    config = ProxyConfig(
        backends=(ALPHA, BETA),
        passivePorts=PASSIVE_PORTS,
        loginTimeout=0,
        idleTimeout=0,
        dataStallTimeout=0,
        listen=("tcp:2121:interface=127.0.0.1",),
        listeners=LISTENERS,
        tls=tlsSettings(
            certs,
            TLSProfileSettings("strict", {"minimumVersion": "1.3"}, sessionReuse="required"),
            TLSProfileSettings("old", {"maximumVersion": "1.2"}, tickets=False),
        ),
    )
    return Wired(config)


def test_oneFactoryPerListener(wired: Wired) -> None:
    """
    makeService listens on every listener with its own factory; only the
    implicit one starts TLS with the first byte.
    """
    factories = wired.listenerFactories()
    assert sorted(factories) == ["clear", "old", "strict", "tcp:2121:interface=127.0.0.1"]
    assert {label: f.implicit for label, f in factories.items()} == {
        "clear": False,
        "old": True,
        "strict": False,
        "tcp:2121:interface=127.0.0.1": False,
    }


def test_servicesPerListener(wired: Wired) -> None:
    """
    A listener's sessions get its own TLS (its profile's context, named
    after it), its require_tls and its profile's session reuse.
    """
    factory = wired.service.factory
    byLabel = {l.label: l for l in listenerTable(factory.config)}
    strict = factory.servicesFor(byLabel["strict"])
    assert (strict.serverTLS.listener, strict.serverTLS.profile) == ("strict", "strict")
    assert strict.serverTLS.settings.minimumVersion == "1.3"
    assert strict.config.requireTLS and strict.config.requireSessionReuse
    old = factory.servicesFor(byLabel["old"])
    assert (old.serverTLS.profile, old.serverTLS.tickets) == ("old", False)
    assert not old.config.requireTLS and not old.config.requireSessionReuse
    clear = factory.servicesFor(byLabel["clear"])
    assert clear.serverTLS is None and not clear.config.requireTLS
    default = factory.servicesFor(byLabel["tcp:2121:interface=127.0.0.1"])
    assert default.serverTLS.profile == "default"
    assert {id(s.serverTLS.context) for s in (strict, old, default)}.__len__() == 3
    # The same object for every session of a configuration.
    assert factory.servicesFor(byLabel["strict"]) is strict


def test_requireTLSListener(wired: Wired) -> None:
    """
    On the listener with require_tls, USER before AUTH gets 530 from the
    proxy; on the default listener it goes to the backend.
    """
    client, backend = wired.connect("strict")
    client.send(b"USER alice\r\n")
    assert client.take().startswith(b"530 ")
    assert backend.take() == b""
    other, otherBackend = wired.connect("tcp:2121:interface=127.0.0.1")
    other.send(b"USER alice\r\n")
    assert otherBackend.take() == b"USER alice\r\n"


def test_listenerWithoutTLS(wired: Wired) -> None:
    """
    tls = "none": AUTH is refused, and nothing is required of TLS.
    """
    client, backend = wired.connect("clear")
    client.send(b"AUTH TLS\r\n")
    assert client.take().startswith(b"502 ")
    client.send(b"USER alice\r\n")
    assert backend.take() == b"USER alice\r\n"


def test_reloadKeepsListenersAndRemakesTheirTLS(wired: Wired, certs: CertificatePaths) -> None:
    """
    A reload that changes a profile applies it to new sessions of the
    listener that uses it; the listener itself stays.
    """
    config = wired.service.config
    changed = attrs.evolve(
        config,
        tls=attrs.evolve(
            config.tls,
            profiles=(
                TLSProfileSettings("strict", {"minimumVersion": "1.2"}),
                config.tls.profiles[1],
            ),
        ),
    )
    wired.service._reloadConfig = lambda: changed
    wired.service.startService()
    try:
        assert wired.service.reload()
        factory = wired.service.factory
        strict = factory.servicesFor(LISTENERS[0])
        assert strict.serverTLS.settings.minimumVersion == "1.2"
        assert not strict.config.requireSessionReuse
        # A file without the profile (and without the listener, which
        # stays until a restart anyway) is refused.
        dropped = attrs.evolve(changed, listeners=(), tls=attrs.evolve(changed.tls, profiles=()))
        wired.service._reloadConfig = lambda: dropped
        assert not wired.service.reload()
    finally:
        wired.service.stopService()


# -- the rig -------------------------------------------------------------------------


def rigConfig(certs: CertificatePaths, **kwargs: Any) -> ProxyConfig:
    kwargs.setdefault("tls", tlsSettings(certs))
    return ProxyConfig(
        backends=(ALPHA,),
        demo=True,
        tlsRig=True,
        implicitListen=("tcp:2990:interface=127.0.0.1",),
        **kwargs,
    )


def test_rigExpansion(certs: CertificatePaths) -> None:
    """
    The rig adds one listener per entry on its ports, and a profile for
    each entry that needs one; adding it twice changes nothing.
    """
    config = withTLSRig(rigConfig(certs, tlsRigPorts=PortRange(4000, 4030)))
    rig = {l.label: l for l in config.listeners}
    assert len(rig) == len(RIG)
    assert rig["rig-expired"].endpoint == "tcp:4002:interface=127.0.0.1"
    assert config.tlsProfile("rig-expired").certificateVariant == "expired"
    assert config.tlsProfile("rig-reuse-required").sessionReuse == "required"
    assert config.tlsProfile("rig-client-certificate").settings.clientCA == certs.ca
    assert rig["rig-require-tls"].tlsProfile is None and rig["rig-require-tls"].requireTLS
    assert rig["rig-no-tls"].tls == "none"
    assert config.listen == ("tcp:2121:interface=127.0.0.1",)
    assert withTLSRig(config) == config
    assert set(rigExpectations()) == set(rig)
    table = rigTable(config)
    assert "4002  rig-expired" in table and "2990  demo-implicit" in table


def test_rigExpectedPortForExpired(certs: CertificatePaths) -> None:
    """
    With the default ports, the expired certificate is on 2993 (the
    example the issue gives).
    """
    config = withTLSRig(rigConfig(certs))
    assert {l.label: l.endpoint for l in config.listeners}["rig-expired"].startswith("tcp:2993:")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tlsRigPorts": PortRange(4000, 4003)}, "the rig needs"),
        ({"listen": ("tcp:4002",), "tlsRigPorts": PortRange(4000, 4030)}, r"4002 \(rig-expired\) is already"),
        ({"passivePorts": PortRange(4000, 4100), "tlsRigPorts": PortRange(4000, 4030)},
         "inside the passive port range"),
    ],
)
def test_rigRefused(certs: CertificatePaths, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        withTLSRig(rigConfig(certs, **kwargs))


def test_rigNeedsADevelopmentCA(certs: CertificatePaths) -> None:
    tls = TLSSettings(certificate=certs.serverCert, key=certs.serverKey)
    with pytest.raises(ConfigError, match="tls_rig needs \\[tls\\] development_ca"):
        withTLSRig(rigConfig(certs, tls=tls))


def test_rigServiceMakesEveryListenersTLS(certs: CertificatePaths, tmp_path: Path) -> None:
    """
    makeService with the rig builds every rig listener's TLS, variants
    included, in the development CA's directory.
    """
    makeCertificates(tmp_path)
    config = rigConfig(
        certs,
        tls=TLSSettings(
            certificate=tmp_path / "server.pem", key=tmp_path / "server-key.pem", developmentCA=tmp_path
        ),
        tlsRigPorts=PortRange(4000, 4030),
    )
    harness = ProxyHarness(backends=(ALPHA,))
    service = makeService(config, reactor=harness.reactor)
    factory = service.factory
    labels = {l.label: l for l in listenerTable(factory.config)}
    expired = factory.servicesFor(labels["rig-expired"]).serverTLS
    assert expired.settings.certificate == tmp_path / "variants" / "expired.pem"
    assert factory.servicesFor(labels["rig-no-tls"]).serverTLS is None
    assert factory.servicesFor(labels["rig-implicit-reuse-required"]).config.requireSessionReuse
    served = (tmp_path / "variants").glob("*.pem")
    assert sorted(p.name for p in served if not p.name.endswith(".key.pem")) == sorted(
        ["intermediate-ca.pem"] + [f"{v}.pem" for v in (
            "expired", "not-yet-valid", "wrong-host", "self-signed", "unknown-root",
            "missing-intermediate", "weak-key",
        )]
    )
