"""
Many instances behind one address: HAProxy (the Debian package, in TCP
mode) in front of two ftpproxy instances on their own loopback addresses,
as docs/deployment.md describes it.

HAProxy balances control connections over both instances (with a PROXY
header, so each instance sees the real client) and forwards each
instance's passive port range to that instance alone; both advertise the
shared address (C{public_address}). Because each instance terminates TLS
itself, the layout works with explicit FTPS, in PASV and EPSV, with curl
and lftp; user-hash gives every user the same backend through either
instance; with one instance stopped, new sessions go to the other.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from ftpproxy.tls.devcerts import DEFAULT_SERVER_NAMES, CertificatePaths, makeCertificates
from tests.support.backends import PASSWORD
from tests.support.balancing import (
    ConfiguredProxy,
    sample,
    startConfiguredProxy,
    tomlConfig,
    waitFor,
)
from tests.support.files import sha256File, writeRandomFile
from tests.support.ftps import curlFTPS, ftpsURL, lftpFTPS
from tests.support.processes import readLog, stopProcess
from tests.support.proxy import freePort, waitUntilListening
from tests.test_load_balancing import Cluster, hashedOrder, named

#: The shared address clients use, and the instances' own addresses.
VIP = "127.0.0.10"
INSTANCES = {"a": "127.0.0.11", "b": "127.0.0.12"}
NAMES = ["alpha", "beta"]
USERS = [f"user{n}" for n in range(6)]


def haproxyConfig(control: int, instances: dict[str, ConfiguredProxy]) -> str:
    """
    The tested HAProxy configuration (docs/deployment.md shows it with the
    production addresses): control balanced with a PROXY header and health
    checks, each passive range forwarded to its instance, on the same port.
    """
    lines = [
        "global",
        "    maxconn 500",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 5m",
        "    timeout server 5m",
        "    retries 2",
        "    option redispatch",
        "",
        "frontend ftp_control",
        f"    bind {VIP}:{control}",
        "    default_backend ftp_control",
        "",
        "backend ftp_control",
        "    balance roundrobin",
    ]
    for name, proxy in instances.items():
        lines.append(
            f"    server {name} {proxy.host}:{proxy.port} send-proxy-v2 "
            "check inter 500ms fall 2 rise 2"
        )
    for name, proxy in instances.items():
        ports = proxy.process.passivePorts
        lines += [
            "",
            f"frontend ftp_passive_{name}",
            f"    bind {VIP}:{ports[0]}-{ports[-1]}",
            f"    default_backend ftp_passive_{name}",
            "",
            f"backend ftp_passive_{name}",
            # No port: the port the client connected to.
            f"    server {name} {proxy.host}",
        ]
    return "\n".join(lines) + "\n"


@attrs.define
class Front:
    """
    HAProxy and the two instances behind it.
    """

    port: int
    instances: dict[str, ConfiguredProxy]
    certificates: CertificatePaths
    process: subprocess.Popen
    logPath: Path

    def sessions(self, name: str) -> float:
        """
        Sessions instance C{name} has given a backend so far.
        """
        metrics = self.instances[name].metrics()
        return sum(sample(metrics, "ftpproxy_sessions_total", backend=b) for b in NAMES)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        problems = cluster.tearDown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def front(cluster: Cluster, tmp_path: Path) -> Iterator[Front]:
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is not installed (apt-get install haproxy; .ci/run does)"
    certificates = makeCertificates(tmp_path / "certs", (*DEFAULT_SERVER_NAMES, VIP))
    backends = cluster.start(*NAMES)
    config = tomlConfig(
        named(backends),
        policy="user-hash",
        public_address=VIP,
    ) + (
        f'\n[tls]\ncertificate = "{certificates.serverCert}"\n'
        f'key = "{certificates.serverKey}"\n'
    )
    instances = {}
    for name, host in INSTANCES.items():
        proxy = startConfiguredProxy(
            config, tmp_path / "proxy", name=f"instance-{name}", host=host, listenPrefix="haproxy:"
        )
        cluster.proxies.append(proxy)
        instances[name] = proxy
    port = freePort(VIP)
    configPath = tmp_path / "haproxy.cfg"
    configPath.write_text(haproxyConfig(port, instances))
    logPath = tmp_path / "haproxy.log"
    with logPath.open("wb") as log:
        process = subprocess.Popen(
            [haproxy, "-db", "-f", str(configPath)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        waitUntilListening(process, VIP, port, logPath)
        yield Front(port, instances, certificates, process, logPath)
    finally:
        stopProcess(process)
        print(f"--- HAProxy's configuration ---\n{configPath.read_text()}")
        print(f"--- HAProxy's log ---\n{readLog(logPath)}")


def whoamiFTPS(front: Front, user: str, mode: str) -> str:
    """
    One curl session over explicit FTPS through HAProxy: the backend that
    served C{user}.
    """
    result = curlFTPS(
        ftpsURL(VIP, front.port, "whoami.txt", user=user, password=PASSWORD),
        ca=front.certificates.ca,
        mode=mode,
    )
    assert ("EPSV" if mode == "epsv" else "PASV") in result.verbs()
    assert "PROT P" in result.commands
    return result.stdout.decode().strip()


@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_usersKeepTheirBackendThroughEitherInstance(front: Front, cluster: Cluster, mode: str):
    """
    curl over explicit FTPS, through HAProxy: every user gets the backend
    user-hash gives it, whichever instance HAProxy picks (round robin: both
    serve), in PASV and EPSV, the data connections reaching the instance
    that owns the session through its own forwarded range.
    """
    placed = {}
    for user in USERS:
        # Two sessions each: HAProxy alternates the instances.
        seen = {whoamiFTPS(front, user, mode) for _ in range(2)}
        assert len(seen) == 1, (user, seen)
        placed[user] = seen.pop()
        assert placed[user] == hashedOrder(user, NAMES)[0]
    assert set(placed.values()) == set(NAMES), placed
    for name in INSTANCES:
        waitFor(lambda: front.sessions(name) >= len(USERS) - 1, 5, f"instance {name} served")


@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_lftpTransfers(front: Front, cluster: Cluster, tmp_path: Path, mode: str):
    """
    lftp over explicit FTPS through HAProxy: a listing, a download and an
    upload in one session, on the user's backend.
    """
    upload = writeRandomFile(tmp_path / "upload.bin", 1_500_000)
    download = tmp_path / "whoami.txt"
    for user in USERS[:2]:
        result = lftpFTPS(
            VIP,
            front.port,
            ["cls -1", f"get whoami.txt -o {download}", f"put {upload} -o up-{user}-{mode}.bin"],
            ca=front.certificates.ca,
            mode=mode,
            user=user,
            password=PASSWORD,
        )
        assert ("EPSV" if mode == "epsv" else "PASV") in result.verbs()
        home = hashedOrder(user, NAMES)[0]
        assert download.read_text().strip() == home
        assert "whoami.txt" in result.stdout.decode().split()
        stored = cluster.backends[home].path(f"up-{user}-{mode}.bin")
        assert sha256File(stored) == sha256File(upload)


def test_oneInstanceStopped(front: Front):
    """
    With instance a stopped, every new session goes to b (HAProxy's checks
    take a out; until they do, it passes the connection to b), and users
    keep their backends.
    """
    before = front.sessions("b")
    a = front.instances["a"]
    a.signal(signal.SIGTERM)
    assert a.process.process.wait(15) == -signal.SIGTERM
    for user in USERS:
        assert whoamiFTPS(front, user, "epsv") == hashedOrder(user, NAMES)[0]
    waitFor(lambda: front.sessions("b") == before + len(USERS), 5, "b served every session")
    waitFor(lambda: "is DOWN" in readLog(front.logPath), 10, "HAProxy saw instance a down")
