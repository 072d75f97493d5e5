"""
The reliability suite (issue 10): the proxy as a real daemon in front of
real pyftpdlib backends, driven by real clients (ftplib, curl, lftp, raw
sockets) on loopback.

  - Many concurrent sessions doing mixed transfers (RETR, STOR with
    readback, REST, APPE, LIST, ABOR) over PASV, EPSV and PORT, clear and
    PROT P, every byte checked by SHA-256; afterwards the proxy holds no
    connection, no session and no descriptor more than before.
  - Faults: a backend frozen at its banner, at login and mid-transfer, one
    killed mid-STOR; clients that reset or silently vanish; slow readers
    and writers; SIGHUP with a broken file under traffic; SIGTERM with
    transfers in flight.
  - Hostile inputs: floods of empty commands (with a bystander measuring
    its NOOP round trip), PASV squatting before login, hundreds of slow
    clients that never log in, huge lines, binary garbage.

The default run is the short form (what CI runs); C{--reliability full}
runs more clients, longer floods and more squatters. The figures reached
are printed at the end of the run (sessions, transfers, bytes verified,
fault cases, hostile inputs, and what was lost or left open).
"""

from __future__ import annotations

import ftplib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftpproxy.data.passive import SPARE_PORTS
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates

from tests.support.backends import PASSWORD, USER, Backend, startBackend
from tests.support.clients import curl, ftpURL, lftp
from tests.support.fakeservers import ThreadedServer
from tests.support.ftps import TLSProxy, curlFTPS, lftpFTPS, startTLSProxy, tlsArguments
from tests.support.peers import ConnectionClosed, RawControl
from tests.support.proxy import freePort
from tests.support.reliability import (
    FIGURES,
    connections,
    describe,
    metrics,
    noopRoundTrips,
    openFiles,
    openSession,
    retrieve,
    settle,
    sha,
    store,
    total,
    writeFile,
)

HOST = "127.0.0.1"
SMALL = "data-256k.bin"
LARGE = "data-1m.bin"
BIG = "big.bin"  # 8 MiB, different on each backend


@attrs.frozen
class Scale:
    """
    How much the suite does: the short form for every run (and CI), the
    full one with C{--reliability full}.
    """

    clients: int
    rounds: int
    floodSeconds: float
    squatters: int
    slowClients: int
    noops: int


SHORT = Scale(clients=50, rounds=1, floodSeconds=2.0, squatters=300, slowClients=300, noops=300)
FULL = Scale(clients=50, rounds=4, floodSeconds=6.0, squatters=600, slowClients=600, noops=1000)


@pytest.fixture(scope="module")
def scale(request: pytest.FixtureRequest) -> Scale:
    return FULL if request.config.getoption("reliability") == "full" else SHORT


# -- the rig ---------------------------------------------------------------------------


@attrs.define
class Rig:
    """
    Two backends with the same data files, certificates, and what the test
    needs to start proxies in front of them (each stopped at teardown, its
    log checked for tracebacks).
    """

    workDirectory: Path
    certs: CertificatePaths
    alpha: Backend
    beta: Backend
    files: dict[str, bytes]
    proxies: list[TLSProxy] = attrs.Factory(list)

    @property
    def backends(self) -> list[Backend]:
        return [self.alpha, self.beta]

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca))

    def startProxy(
        self, *extraArgs: str, backends: list[Any] | None = None, configText: str | None = None,
        name: str | None = None,
    ) -> tuple[TLSProxy, int]:
        """
        A proxy with TLS and an admin endpoint (on loopback: no interface
        given) in front of C{backends}; returns it and its admin port.
        """
        admin = freePort(HOST)
        arguments = [*tlsArguments(self.certs), "--admin", f"tcp:{admin}"]
        for backend in self.backends if backends is None else backends:
            arguments += ["--backend", backend.address]
        proxy = startTLSProxy(
            self.workDirectory / "proxies",
            extraArgs=[*arguments, *extraArgs],
            configText=configText,
            implicit=False,
            name=name or f"proxy-{len(self.proxies)}",
        )
        self.proxies.append(proxy)
        _waitForPort(HOST, admin)
        return proxy, admin


def _waitForPort(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("reliability")
    certs = makeCertificates(base / "certs")
    backends = []
    files: dict[str, bytes] = {}
    for name, host in (("alpha", "127.0.0.2"), ("beta", "127.0.0.3")):
        backend = startBackend(name, host, root=base / "roots" / name, logDirectory=base / "logs")
        files[SMALL] = writeFile(backend.path(SMALL), 256 * 1024, seed=1)
        files[LARGE] = writeFile(backend.path(LARGE), 1024 * 1024, seed=2)
        backends.append(backend)
    rig = Rig(base, certs, backends[0], backends[1], files)
    yield rig
    problems = []
    for proxy in rig.proxies:
        proxy.stop()
        found = proxy.logProblems()
        if found:
            problems.append(f"{' and '.join(found)} in the log of {proxy.command}:\n{proxy.log()}")
    for backend in backends:
        backend.stop()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def main(rig: Rig) -> tuple[TLSProxy, int]:
    """
    The proxy with default settings in front of both backends.
    """
    return rig.startProxy(name="main")


def assertNothingLeft(proxy: TLSProxy, admin: int, baseline: int | None = None) -> None:
    """
    The proxy holds no connection and no session; its other descriptors
    are back to C{baseline}; what listens is its listener, the admin
    endpoint and idle passive ports.
    """
    pid = proxy.process.pid
    settled = settle(pid, lambda: not connections(pid))
    left = connections(pid)
    samples = metrics(admin)
    active = total(samples, "ftpproxy_sessions_active")
    others, sockets = openFiles(pid)
    listening = [s for s in sockets if s.state == "LISTEN"]
    FIGURES.add(leftOpen=len(left) + int(active))
    assert settled and not left, f"the proxy still holds {left}"
    assert active == 0
    if baseline is not None:
        assert others == baseline, f"{others} descriptors besides sockets, {baseline} before"
    assert len(listening) <= 2 + SPARE_PORTS


# -- many sessions, mixed transfers ------------------------------------------------------


def _mixedSession(rig: Rig, port: int, number: int) -> None:
    """
    One client's session: LIST, RETR, STOR and read back, RETR with REST,
    APPE and read back, an aborted RETR, each verified; passive (PASV or
    EPSV) or active (PORT), clear or PROT P, by C{number}.
    """
    mode = ("pasv", "epsv", "port")[number % 3]
    context = rig.context() if number % 2 else None
    ftp = openSession(HOST, port, mode, context)
    transfers = verified = 0
    try:
        listing: list[str] = []
        ftp.retrlines("LIST", listing.append)
        assert any(SMALL in line for line in listing), listing
        transfers += 1
        data = retrieve(ftp, SMALL)
        assert sha(data) == sha(rig.files[SMALL])
        transfers += 1
        verified += len(data)
        name = f"up-{number}-{random.getrandbits(32):08x}.bin"
        payload = os.urandom(100_000 + number * 17)
        store(ftp, name, payload)
        back = retrieve(ftp, name)
        assert sha(back) == sha(payload)
        transfers += 2
        verified += 2 * len(payload)
        offset = 100_000 + number
        tail = retrieve(ftp, SMALL, rest=offset)
        assert sha(tail) == sha(rig.files[SMALL][offset:])
        transfers += 1
        verified += len(tail)
        extra = os.urandom(30_000 + number)
        store(ftp, name, extra, verb="APPE")
        back = retrieve(ftp, name)
        assert sha(back) == sha(payload + extra)
        transfers += 2
        verified += len(extra) + len(back)
        # ABOR in the middle of a download; the session goes on.
        connection = ftp.transfercmd(f"RETR {BIG}")
        received = 0
        while received < 65536:
            chunk = connection.recv(16384)
            assert chunk
            received += len(chunk)
        assert ftp.abortTransfer()[:3] in ("426", "225", "226")
        connection.close()
        ftp.noopAfterAbort()
        transfers += 1
        ftp.delete(name)
        ftp.quit()
    except BaseException:
        FIGURES.add(lost=1)
        raise
    finally:
        ftp.close()
        FIGURES.add(sessions=1, transfers=transfers, bytesVerified=verified)


def _curlAndLftp(rig: Rig, port: int, number: int, scratch: Path) -> None:
    """
    Real command-line clients: curl (EPSV, PASV, PORT, FTPS, upload) and
    lftp (clear and FTPS), each download and upload checked.
    """
    large = rig.files[LARGE]
    kind = number % 6
    if kind == 0:
        result = curl(ftpURL(HOST, port, LARGE), mode="epsv")
        assert sha(result.stdout) == sha(large)
    elif kind == 1:
        result = curl("-P", HOST, ftpURL(HOST, port, LARGE))
        assert "PORT" in result.verbs() or "EPRT" in result.verbs()
        assert sha(result.stdout) == sha(large)
    elif kind == 2:
        result = curlFTPS(f"ftp://{USER}:{PASSWORD}@{HOST}:{port}/{LARGE}", ca=rig.certs.ca, mode="pasv")
        assert sha(result.stdout) == sha(large)
    elif kind == 3:
        source = scratch / f"curl-{number}.bin"
        source.write_bytes(os.urandom(300_000))
        # Upload and read back on one connection (one session: one backend).
        url = ftpURL(HOST, port, source.name)
        back = curl("-T", str(source), url, "--next", "-Q", f"-DELE {source.name}", url)
        assert back.commands.count("QUIT") <= 1 and "STOR curl-%d.bin" % number in back.commands
        assert sha(back.stdout) == sha(source.read_bytes())
        FIGURES.add(sessions=1, transfers=2, bytesVerified=2 * 300_000)
        return
    elif kind == 4:
        target = scratch / f"lftp-{number}.bin"
        lftp(HOST, port, [f"get {LARGE} -o {target}"], mode="epsv")
        assert sha(target.read_bytes()) == sha(large)
    else:
        target = scratch / f"lftps-{number}.bin"
        lftpFTPS(HOST, port, [f"get {LARGE} -o {target}"], ca=rig.certs.ca)
        assert sha(target.read_bytes()) == sha(large)
    FIGURES.add(sessions=1, transfers=1, bytesVerified=len(large))


def test_mixedTransfers(rig: Rig, main: tuple[TLSProxy, int], scale: Scale, tmp_path: Path) -> None:
    """
    C{scale.clients} concurrent ftplib sessions (a third each PASV, EPSV
    and PORT; half PROT P) and a dozen curl and lftp runs, every byte
    verified; then nothing is left open.
    """
    proxy, admin = main
    baseline, _ = openFiles(proxy.process.pid)
    for _ in range(scale.rounds):
        with ThreadPoolExecutor(max_workers=scale.clients + 12) as pool:
            jobs = [pool.submit(_mixedSession, rig, proxy.port, n) for n in range(scale.clients)]
            jobs += [pool.submit(_curlAndLftp, rig, proxy.port, n, tmp_path) for n in range(12)]
            for job in jobs:
                job.result()
    assertNothingLeft(proxy, admin, baseline)


# -- faults ------------------------------------------------------------------------------


class SilentServer(ThreadedServer):
    """
    A backend that accepts and then says nothing at all, or (with a
    banner) greets and then answers nothing.
    """

    def __init__(self, host: str, banner: bytes = b"") -> None:
        self.banner = banner
        super().__init__(host)

    def serve(self, connection: socket.socket) -> None:
        if self.banner:
            connection.sendall(self.banner)
        connection.settimeout(None)
        while connection.recv(4096):
            pass


def test_backendFrozenAtBanner(rig: Rig) -> None:
    """
    A backend that accepts but never greets is given up after
    connect_timeout; the client is served by the next one.
    """
    frozen = SilentServer("127.0.0.4")
    try:
        proxy, admin = rig.startProxy("--connect-timeout", "1.5", backends=[frozen, rig.alpha])
        started = time.monotonic()
        ftp = openSession(HOST, proxy.port, "epsv", None)
        assert time.monotonic() - started >= 1.0
        data = retrieve(ftp, SMALL)
        assert sha(data) == sha(rig.files[SMALL])
        ftp.quit()
        FIGURES.add(sessions=1, transfers=1, bytesVerified=len(data), faultCases=1)
        assert total(metrics(admin), "ftpproxy_backend_connect_failures_total") >= 1
        assertNothingLeft(proxy, admin)
    finally:
        frozen.close()


def test_backendFrozenAtLogin(rig: Rig) -> None:
    """
    A backend that greets and then answers nothing: the client gets 421
    once reply_timeout has passed, and the session is gone.
    """
    frozen = SilentServer("127.0.0.4", banner=b"220 frozen ready\r\n")
    try:
        proxy, admin = rig.startProxy("--reply-timeout", "1.5", backends=[frozen])
        with RawControl(HOST, proxy.port) as control:
            assert control.reply().startswith("220")
            started = time.monotonic()
            control.send(b"USER user\r\n")
            assert control.reply(timeout=10).startswith("421")
            assert 1.0 <= time.monotonic() - started < 8
            assert control.readToEnd(timeout=5) == b""
        FIGURES.add(sessions=1, faultCases=1)
        assertNothingLeft(proxy, admin)
    finally:
        frozen.close()


def test_backendFrozenMidTransfer(rig: Rig, tmp_path: Path) -> None:
    """
    A backend stopped (SIGSTOP) in the middle of a download: the stalled
    transfer is answered 426 after data_stall_timeout; once the backend
    runs again, new sessions work and nothing is left open.
    """
    backend = startBackend("frozen", "127.0.0.4", root=tmp_path / "root", logDirectory=tmp_path / "logs")
    try:
        proxy, admin = rig.startProxy(
            "--data-stall-timeout", "1.5", "--reply-timeout", "3", backends=[backend]
        )
        ftp = openSession(HOST, proxy.port, "epsv", None)
        connection = ftp.transfercmd(f"RETR {BIG}")
        connection.recv(65536)
        backend.process.send_signal(signal.SIGSTOP)
        try:
            connection.settimeout(15)
            try:
                while connection.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass  # the proxy aborts the stalled legs
            connection.close()
            reply = ftp.getmultiline()
            assert reply.startswith("426"), reply
        finally:
            backend.process.send_signal(signal.SIGCONT)
        ftp.close()
        again = openSession(HOST, proxy.port, "pasv", None)
        assert retrieve(again, "whoami.txt") == b"frozen\n"
        again.quit()
        FIGURES.add(sessions=2, transfers=2, faultCases=1)
        assertNothingLeft(proxy, admin)
    finally:
        backend.stop()


def test_backendKilledMidStor(rig: Rig, tmp_path: Path) -> None:
    """
    A backend killed in the middle of an upload: the client gets an error
    (not a hang), and the next session goes to the backend that is left.
    """
    doomed = startBackend("doomed", "127.0.0.4", root=tmp_path / "root", logDirectory=tmp_path / "logs")
    try:
        proxy, admin = rig.startProxy("--connect-timeout", "2", backends=[doomed, rig.beta])
        ftp = openSession(HOST, proxy.port, "pasv", None)
        assert retrieve(ftp, "whoami.txt") == b"doomed\n"
        payload = os.urandom(4 * 1024 * 1024)
        killer = threading.Timer(0.3, doomed.kill)
        killer.start()
        with pytest.raises(ftplib.all_errors):
            store(ftp, "killed.bin", payload, chunkDelay=0.005)
            ftp.voidcmd("NOOP")
        killer.join()
        ftp.close()
        survivor = openSession(HOST, proxy.port, "epsv", None)
        assert retrieve(survivor, "whoami.txt") == b"beta\n"
        data = retrieve(survivor, SMALL)
        assert sha(data) == sha(rig.files[SMALL])
        survivor.quit()
        FIGURES.add(sessions=2, transfers=3, bytesVerified=len(data), faultCases=1)
        assertNothingLeft(proxy, admin)
    finally:
        doomed.stop()


def test_clientsResetAndVanish(rig: Rig) -> None:
    """
    A client that resets its connections mid-download, and one that stops
    reading and never says another word: the proxy lets go of both (the
    second after the stall and idle timeouts).
    """
    proxy, admin = rig.startProxy("--data-stall-timeout", "1.5", "--idle-timeout", "3")
    # Reset: RST on data and control in the middle of a transfer.
    ftp = openSession(HOST, proxy.port, "epsv", None)
    connection = ftp.transfercmd(f"RETR {BIG}")
    connection.recv(65536)
    for sock in (connection, ftp.sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    # Vanish: a download nobody reads, on a connection kept open.
    quiet = openSession(HOST, proxy.port, "pasv", None)
    held = quiet.transfercmd(f"RETR {BIG}")
    held.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pid = proxy.process.pid
    assert settle(pid, lambda: not connections(pid), timeout=20), connections(pid)
    held.close()
    quiet.close()
    FIGURES.add(sessions=2, faultCases=2)
    assertNothingLeft(proxy, admin)


def test_slowReaderAndWriter(rig: Rig, main: tuple[TLSProxy, int]) -> None:
    """
    A client that reads slowly and one that writes slowly, clear and
    protected: flow control, not buffering, and every byte arrives.
    """
    proxy, _ = main
    for context in (None, rig.context()):
        ftp = openSession(HOST, proxy.port, "epsv", context)
        data = retrieve(ftp, LARGE, chunkDelay=0.01)
        assert sha(data) == sha(rig.files[LARGE])
        payload = os.urandom(1024 * 1024)
        name = f"slow-{random.getrandbits(32):08x}.bin"
        store(ftp, name, payload, chunkDelay=0.01)
        back = retrieve(ftp, name)
        assert sha(back) == sha(payload)
        ftp.delete(name)
        ftp.quit()
        FIGURES.add(sessions=1, transfers=3, bytesVerified=len(data) + 2 * len(payload), faultCases=2)


def _downloadLoop(rig: Rig, port: int, stop: threading.Event, results: list[int]) -> None:
    ftp = openSession(HOST, port, "epsv", None)
    try:
        while not stop.is_set():
            data = retrieve(ftp, LARGE)
            assert sha(data) == sha(rig.files[LARGE])
            results.append(len(data))
        ftp.quit()
    finally:
        ftp.close()


def test_hangupWithBrokenFileUnderTraffic(rig: Rig) -> None:
    """
    SIGHUP with a broken configuration file while downloads run: nothing
    changes, it is logged, the downloads go on unharmed; a good file is
    then applied.
    """
    proxy, admin = rig.startProxy(configText="max_invalid_commands = 20\n")
    configPath = proxy.command[proxy.command.index("--config") + 1]
    stop = threading.Event()
    results: list[int] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(_downloadLoop, rig, proxy.port, stop, results) for _ in range(3)]
        time.sleep(0.5)
        Path(configPath).write_text("max_invalid_commands = [not toml\n")
        proxy.process.send_signal(signal.SIGHUP)
        assert settle(proxy.process.pid, lambda: "configuration not reloaded" in proxy.log(), timeout=10)
        time.sleep(0.5)
        Path(configPath).write_text("max_invalid_commands = 30\n")
        proxy.process.send_signal(signal.SIGHUP)
        assert settle(proxy.process.pid, lambda: "configuration reloaded" in proxy.log(), timeout=10)
        time.sleep(0.3)
        stop.set()
        for job in jobs:
            job.result()
    assert "changed: max_invalid_commands" in proxy.log()
    FIGURES.add(sessions=3, transfers=len(results), bytesVerified=sum(results), faultCases=2)
    assertNothingLeft(proxy, admin)


def test_sigtermWithTransfersInFlight(rig: Rig) -> None:
    """
    SIGTERM while slow downloads run: the listener closes at once, the
    downloads finish within shutdown_grace, every byte checked, and the
    proxy exits cleanly.
    """
    proxy, _ = rig.startProxy("--shutdown-grace", "20")
    sessions = [openSession(HOST, proxy.port, ("pasv", "epsv", "port")[n], None) for n in range(3)]
    results: list[bytes] = []

    def download(ftp: Any) -> None:
        results.append(retrieve(ftp, LARGE, chunkDelay=0.02))
        ftp.quit()

    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(download, ftp) for ftp in sessions]
        time.sleep(0.4)
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, proxy.port), timeout=2).close()
        for job in jobs:
            job.result()
    assert [sha(r) for r in results] == [sha(rig.files[LARGE])] * 3
    # twistd ends itself with the signal it was stopped by.
    assert proxy.process.wait(20) == -signal.SIGTERM
    FIGURES.add(
        sessions=3, transfers=3, bytesVerified=sum(map(len, results)), faultCases=1
    )


# -- hostile inputs ----------------------------------------------------------------------


def _cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


FLOODER = Path(__file__).parent / "support" / "flooder.py"


@pytest.mark.parametrize("kind", ["lines", "telnet"])
def test_floodDoesNotStarveOthers(rig: Rig, scale: Scale, kind: str) -> None:
    """
    Defect 1 on real sockets: two logged-in clients (processes of their
    own) flood the proxy as fast as it takes it, with empty commands (not
    closed: max_invalid_commands 0) or with Telnet NOPs (no command at
    all), while a bystander measures its NOOP round trip; the round trip
    moves by a few milliseconds at most. The figures (and the proxy's CPU
    per thousand empty commands) go into the summary.
    """
    proxy, admin = rig.startProxy("--max-invalid-commands", "0")
    pid = proxy.process.pid
    quiet = noopRoundTrips(HOST, proxy.port, scale.noops)
    cpuBefore = _cpuSeconds(pid)
    flooders = [
        subprocess.Popen(
            [sys.executable, str(FLOODER), HOST, str(proxy.port), USER, PASSWORD,
             str(scale.floodSeconds + 1), kind],
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        time.sleep(0.5)
        flooded: list[float] = []
        bystanders = 0
        deadline = time.monotonic() + scale.floodSeconds
        while time.monotonic() < deadline:
            flooded += noopRoundTrips(HOST, proxy.port, 50)
            bystanders += 1
        outputs = [f.communicate(timeout=30)[0].decode().split() for f in flooders]
    finally:
        for flooder in flooders:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait()
    cpu = _cpuSeconds(pid) - cpuBefore
    sent = sum(int(o[1]) for o in outputs)
    answered = sum(int(o[3]) for o in outputs)
    assert not any(int(o[5]) for o in outputs), "a flooder was closed"
    FIGURES.add(hostileInputs=2, sessions=2 + 1 + bystanders)
    FIGURES.measured(f"bystander NOOP round trip, quiet:   {describe(quiet)}")
    if kind == "lines":
        FIGURES.measured(
            f"bystander NOOP round trip, flooded with empty commands: {describe(flooded)}; "
            f"{answered} answered to 2 flooders in {scale.floodSeconds:.0f}s, proxy CPU "
            f"{1000 * cpu / max(answered, 1) * 1000:.1f} ms per thousand"
        )
        assert answered > 10000
    else:
        FIGURES.measured(
            f"bystander NOOP round trip, flooded with Telnet NOPs: {describe(flooded)}; "
            f"2 flooders sent {sent / 2**20:.1f} MiB ({answered} times refused as too long), "
            f"proxy CPU {cpu:.2f}s"
        )
        # Every line's worth of them is refused as a line too long.
        assert answered > 100
    median = sorted(flooded)[len(flooded) // 2]
    quietMedian = sorted(quiet)[len(quiet) // 2]
    assert median - quietMedian < 0.010, (describe(quiet), describe(flooded))
    assertNothingLeft(proxy, admin)


def test_floodersAreClosed(main: tuple[TLSProxy, int]) -> None:
    """
    With the default limit, a client flooding empty or garbage commands is
    answered max_invalid_commands times, then closed with 421, and counted;
    a flood of Telnet commands (no command at all) is refused as lines too
    long, and closed the same way.
    """
    proxy, admin = main
    before = total(metrics(admin), "ftpproxy_clients_closed_total", reason="invalid-commands")
    payloads = (b"\r\n" * 100_000, b"\x00\x01garbage \xfe\n" * 5000, b"\xff\xf1" * 100_000)
    for payload in payloads:
        with RawControl(HOST, proxy.port) as control:
            control.login(USER, PASSWORD)
            try:
                control.send(payload)
            except OSError:
                pass
            rest = control.readToEnd(timeout=10)
            # The limit (20) refused, then one more: past the limit.
            assert rest.count(b"500 ") == 21, rest
            assert rest.endswith(b"421 Too many invalid commands; closing control connection.\r\n")
        FIGURES.add(sessions=1, hostileInputs=1)
    after = total(metrics(admin), "ftpproxy_clients_closed_total", reason="invalid-commands")
    assert after - before == len(payloads)


def _fromAddress(number: int) -> str:
    return f"127.0.0.{20 + number % 10}"


def test_passiveSquattingBeforeLogin(rig: Rig, main: tuple[TLSProxy, int], scale: Scale) -> None:
    """
    Defect 2 on real sockets: hundreds of connections that send PASV,
    EPSV, LPSV and PORT before logging in get 530 and hold no port; a
    logged-in user then downloads through a passive port.
    """
    proxy, admin = main
    squatters = []
    try:
        for n in range(scale.squatters):
            control = RawControl(HOST, proxy.port, source=_fromAddress(n))
            assert control.reply().startswith("220")
            squatters.append(control)
        for control in squatters:
            control.send(b"PASV\r\nEPSV\r\nLPSV\r\nPORT 127,0,0,1,200,1\r\n")
        for control in squatters:
            for _ in range(4):
                assert control.reply().startswith("530")
        ftp = openSession(HOST, proxy.port, "epsv", None)
        data = retrieve(ftp, SMALL)
        assert sha(data) == sha(rig.files[SMALL])
        ftp.quit()
    finally:
        for control in squatters:
            control.close()
    FIGURES.add(hostileInputs=len(squatters), sessions=len(squatters) + 1, transfers=1, bytesVerified=len(data))
    assertNothingLeft(proxy, admin)


def test_slowClientsThatNeverLogIn(rig: Rig, scale: Scale) -> None:
    """
    Defect 4 on real sockets: with backend_at_user, hundreds of clients
    that trickle bytes and never log in hold no backend connection, and a
    bystander's round trip is unharmed; from one address, more than
    max_prelogin_per_client get 421.
    """
    proxy, admin = rig.startProxy("--backend-at-user")
    pid = proxy.process.pid
    backendPorts = {rig.alpha.port, rig.beta.port}
    slow = []
    try:
        for n in range(scale.slowClients):
            control = RawControl(HOST, proxy.port, source=_fromAddress(n))
            assert control.reply().startswith("220 ftpproxy ready.")
            slow.append(control)
        for _ in range(3):
            for control in slow:
                control.send(b"U")
            time.sleep(0.2)
        toBackends = [s for s in connections(pid) if int(s.remote.rsplit(":", 1)[1], 16) in backendPorts]
        assert toBackends == []
        during = noopRoundTrips(HOST, proxy.port, scale.noops // 3)
        FIGURES.measured(f"bystander NOOP round trip, {len(slow)} slow pre-login clients: {describe(during)}")
        # Up to the limit from one address (64 by default), then 421.
        crowd = [RawControl(HOST, proxy.port, source="127.0.0.40") for _ in range(64)]
        slow += crowd
        for control in crowd:
            assert control.reply().startswith("220")
        with RawControl(HOST, proxy.port, source="127.0.0.40") as refused:
            assert refused.reply().startswith("421 Too many connections from your address")
        assert total(metrics(admin), "ftpproxy_clients_refused_total", reason="prelogin-per-client") == 1
    finally:
        for control in slow:
            control.close()
    FIGURES.add(hostileInputs=len(slow) + 1, sessions=len(slow) + 1)
    assertNothingLeft(proxy, admin)


def test_hugeLinesAndGarbage(rig: Rig, main: tuple[TLSProxy, int]) -> None:
    """
    A line of a mebibyte is refused once and skipped; random binary
    garbage is refused or closed; the proxy serves on.
    """
    proxy, admin = main
    with RawControl(HOST, proxy.port) as control:
        control.login(USER, PASSWORD)
        control.send(b"STOR " + b"x" * (1 << 20))
        control.send(b"\r\nNOOP\r\n")
        assert control.reply(timeout=20) == "500 Command line too long."
        assert control.reply().startswith("200")
    generator = random.Random(10)
    for n in range(5):
        garbage = generator.randbytes(256 * 1024)
        with RawControl(HOST, proxy.port) as control:
            control.login(USER, PASSWORD)
            try:
                control.send(garbage)
            except OSError:
                pass
            try:
                control.readToEnd(timeout=15)
            except (ConnectionClosed, TimeoutError):
                pass
    ftp = openSession(HOST, proxy.port, "pasv", rig.context())
    data = retrieve(ftp, SMALL)
    assert sha(data) == sha(rig.files[SMALL])
    ftp.quit()
    FIGURES.add(hostileInputs=6, sessions=7, transfers=1, bytesVerified=len(data))
    assertNothingLeft(proxy, admin)
