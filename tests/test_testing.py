"""
Tests for L{ftpproxy.testing}: the in-memory network, fake backend and
client that embedders test their wiring with, driving the real proxy.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionRefusedError

from ftpproxy import BackendConfig, HostPort, PortRange, ProxyConfig, makeService
from ftpproxy.testing import FakeFTPBackend, FTPError, MemoryFTPClient, MemoryNetwork


def proxyOn(network: MemoryNetwork, *backends: FakeFTPBackend, **settings: object):
    config = ProxyConfig(
        listen=("tcp:2121:interface=127.0.0.1",),
        backends=tuple(
            BackendConfig(HostPort(b.port.getHost().host, b.port.getHost().port), name=b.name)
            for b in backends
        ),
        passivePorts=PortRange(40000, 40009),
        **settings,
    )
    service = makeService(config, reactor=network)
    service.startService()
    return service


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


def test_downloadUploadList(network: MemoryNetwork) -> None:
    node = FakeFTPBackend(network, "127.0.0.2", 21, files={"a.bin": bytes(range(256)) * 1000})
    proxyOn(network, node)
    client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
    assert client.greeting.code == 220
    assert client.login("alice", "pw").code == 230
    assert client.retrieve("a.bin") == bytes(range(256)) * 1000
    assert client.store("b.bin", b"x" * 70000).code == 226
    assert node.files["b.bin"] == b"x" * 70000
    assert client.list() == b"a.bin\r\nb.bin\r\n"
    # The backend only ever saw the proxy's own passive mode requests.
    assert b"EPSV" in node.commands
    assert client.quit().code == 221
    assert client.closed


def test_errorsRaise(network: MemoryNetwork) -> None:
    node = FakeFTPBackend(network, "127.0.0.2", 21, users={"alice": "right"})
    proxyOn(network, node)
    client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
    with pytest.raises(FTPError) as raised:
        client.login("alice", "wrong")
    assert raised.value.reply.code == 530
    client.login("alice", "right")
    with pytest.raises(FTPError) as raised:
        client.retrieve("missing")
    assert raised.value.reply.code == 550


def test_roundRobinAndFailover(network: MemoryNetwork) -> None:
    one = FakeFTPBackend(network, "127.0.0.2", 21, files={"who": b"one"}, name="one")
    two = FakeFTPBackend(network, "127.0.0.3", 21, files={"who": b"two"}, name="two")
    proxyOn(network, one, two)
    served = []
    for _ in range(2):
        client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
        client.login("u", "p")
        served.append(client.retrieve("who"))
    assert sorted(served) == [b"one", b"two"]
    two.stop()
    for _ in range(2):
        client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
        client.login("u", "p")
        assert client.retrieve("who") == b"one"


def test_timeMovesOnlyWhenTold(network: MemoryNetwork) -> None:
    node = FakeFTPBackend(network, "127.0.0.2", 21)
    proxyOn(network, node, idleTimeout=30.0)
    client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
    client.login("u", "p")
    network.elapse(29)
    assert not client.closed
    network.elapse(1)
    assert client.closed


def test_stopLeavesNothing(network: MemoryNetwork) -> None:
    node = FakeFTPBackend(network, "127.0.0.2", 21, files={"f": b"data"})
    service = proxyOn(network, node)
    client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
    client.login("u", "p")
    client.retrieve("f")
    client.quit()
    stopped = service.stopService()
    network.flush()
    assert stopped.called
    assert network.getDelayedCalls() == []


def test_refusedWhenNobodyListens(network: MemoryNetwork) -> None:
    with pytest.raises(ConnectionRefusedError):
        MemoryFTPClient.connect(network, "127.0.0.1", 2121)
