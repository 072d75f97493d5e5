"""
Protocol completeness and hostile input, with real clients (curl, lftp,
ftplib, raw sockets) against the proxy daemon and pyftpdlib backends:
active mode (plain, explicit and implicit FTPS), bounce attempts, EPSV ALL,
LPSV/LPRT, ABOR and QUIT during transfers, Telnet sequences, long lines,
garbage, IPv6, timeouts and limits.

The daemons here are started once per module (a twistd start costs seconds
on a busy machine); each test leaves its sessions closed. At teardown each
daemon's log must be free of tracebacks and unhandled errors.
"""

from __future__ import annotations

import ftplib
import os
import random
import re
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import pytest

from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from tests.support.backends import PASSWORD, USER, WHOAMI, Backend
from tests.support.clients import EpsvFTP, curl, ftpSession, ftpURL, lftp, retrieveBytes
from tests.support.files import MiB, sha256Bytes, sha256File, writeRandomFile
from tests.support.peers import (
    BackendAddress,
    Blackhole,
    ConnectionClosed,
    ImplicitFTP_TLS,
    RawControl,
    RecordingListener,
    ReusingFTP_TLS,
    freePort,
    hostPort,
    ipv6Loopback,
    lowPortListener,
    readAll,
    startQuickBackend,
    tlsContext,
    waitUntilListening,
)
from tests.support.proxy import ProxyProcess, startProxy as launchProxy
from tests.support.workers import TWO_WORKERS, assertSpreadOverWorkers

MID = "mid.bin"  # 1 MiB, random: transfers compared by SHA-256
HUGE = "huge.bin"  # 64 MiB, sparse: never transferred whole (ABOR, stall)
MID_SIZE = MiB
SLOW_UPLOAD_SIZE = 9 * MiB // 2  # sent slowly across the idle timeout
SLOW_RATE = MiB  # bytes per second
SLOW_CHUNK = 32 * 1024
HUGE_SIZE = 64 * MiB

# The timeouts of the timeout proxy, in seconds.
LOGIN_TIMEOUT = 2
IDLE_TIMEOUT = 2
DATA_CONNECTION_TIMEOUT = 1
DATA_STALL_TIMEOUT = 2
CONNECT_TIMEOUT = 1

# How long the backends' passive ports wait for the proxy's data connection
# (pyftpdlib's default is 30 s); the proxy connects within milliseconds.
BACKEND_PASSIVE_TIMEOUT = 2

# How long a negative check ("no connection came") waits. Loopback connects
# complete within the connect call, so this only covers scheduling delays.
NOTHING_CAME_WAIT = 0.3

HAVE_IPV6 = ipv6Loopback()
needsIPv6 = pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1) here")


def curlVersion() -> tuple[int, ...]:
    output = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    match = re.match(r"curl (\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


# curl 7.87 and 7.88 never start TLS on an active-mode data connection (they
# wait for data on the bare TCP connection): curl/curl#10666, fixed in 8.0.
# The same happens against pyftpdlib's own FTPS server, without the proxy.
CURL_ACTIVE_FTPS_BROKEN = (7, 87) <= curlVersion() < (8, 0)
needsCurlActiveFTPS = pytest.mark.skipif(
    CURL_ACTIVE_FTPS_BROKEN,
    reason="this curl cannot do active-mode FTPS with any server (curl/curl#10666)",
)


# -- fixtures ------------------------------------------------------------------


def populate(root: Path, name: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / WHOAMI).write_text(f"{name}\n")
    writeRandomFile(root / MID, MID_SIZE)
    with (root / HUGE).open("wb") as f:
        f.truncate(HUGE_SIZE)


@pytest.fixture(scope="module")
def workDirectory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("completeness")


@pytest.fixture(scope="module")
def certificates(workDirectory: Path) -> CertificatePaths:
    return makeCertificates(workDirectory / "certs")


def _backend(workDirectory: Path, name: str, host: str) -> Iterator[Backend]:
    root = workDirectory / "roots" / name
    populate(root, name)
    backend = startQuickBackend(
        name, host, root, workDirectory / "logs", passiveTimeout=BACKEND_PASSIVE_TIMEOUT
    )
    yield backend
    backend.stop()
    print(f"--- log of backend {name} ---\n{backend.log()}")


@pytest.fixture(scope="module")
def alpha(workDirectory: Path) -> Iterator[Backend]:
    """
    The IPv4 backend behind most proxies here.
    """
    yield from _backend(workDirectory, "alpha", "127.0.0.2")


@pytest.fixture(scope="module")
def six(workDirectory: Path) -> Iterator[Backend]:
    """
    A backend on C{::1}.
    """
    if not HAVE_IPV6:
        pytest.skip("no IPv6 loopback (::1) here")
    yield from _backend(workDirectory, "six", "::1")


def addressOf(backend: Backend) -> BackendAddress:
    return BackendAddress(hostPort(backend.host, backend.port))


def runProxy(
    workDirectory: Path,
    name: str,
    backends: Sequence[object],
    extraArgs: Sequence[str] = (),
    extraListeners: Sequence[tuple[str, int]] = (),
) -> Iterator[ProxyProcess]:
    """
    Run a proxy daemon (listening on 127.0.0.1 and on C{extraListeners})
    for a fixture's lifetime; fail at teardown if its log shows a problem.
    """
    proxy = launchProxy(
        backends,
        workDirectory / name,
        extraArgs=[*extraArgs, "--shutdown-grace", "1"],
        name=name,
    )
    try:
        for host, port in extraListeners:
            waitUntilListening(proxy.process, host, port)
    except BaseException:
        proxy.stop()
        raise
    yield proxy
    proxy.stop()
    log = proxy.log()
    print(f"--- log of {' '.join(proxy.command)} ---\n{log}")
    problems = proxy.logProblems()
    if problems:
        pytest.fail(f"{' and '.join(problems)} in the log of proxy {name}:\n{log}", pytrace=False)


@attrs.frozen
class TLSProxy:
    """
    A proxy with FTPS, implicit FTPS and, where IPv6 works, a listener on
    ::1.
    """

    proxy: ProxyProcess
    implicitPort: int
    port6: int | None

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def port(self) -> int:
        return self.proxy.port


def runTLSProxy(
    workDirectory: Path,
    name: str,
    backends: Sequence[object],
    certificates: CertificatePaths,
    extraArgs: Sequence[str] = (),
) -> Iterator[TLSProxy]:
    """
    Run a proxy with FTPS (explicit and implicit) and an IPv6 listener.
    """
    implicitPort = freePort("127.0.0.1")
    args = [
        *extraArgs,
        "--tls-cert",
        str(certificates.serverCert),
        "--tls-key",
        str(certificates.serverKey),
        "--implicit-tls-listen",
        f"tcp:{implicitPort}:interface=127.0.0.1",
    ]
    listeners = [("127.0.0.1", implicitPort)]
    port6 = None
    if HAVE_IPV6:
        port6 = freePort("::1")
        args += ["--listen", f"tcp6:{port6}:interface=\\:\\:1"]
        listeners.append(("::1", port6))
    for proxy in runProxy(workDirectory, name, backends, args, listeners):
        yield TLSProxy(proxy, implicitPort, port6)


@pytest.fixture(scope="module")
def main(
    workDirectory: Path, alpha: Backend, certificates: CertificatePaths
) -> Iterator[TLSProxy]:
    """
    The proxy in front of C{alpha} for most tests: FTPS with session reuse
    required on protected data connections, implicit FTPS, IPv6.
    """
    yield from runTLSProxy(
        workDirectory,
        "main",
        [addressOf(alpha)],
        certificates,
        ["--require-session-reuse"],
    )


@pytest.fixture(scope="module")
def mainWorkers(
    workDirectory: Path, alpha: Backend, certificates: CertificatePaths
) -> Iterator[TLSProxy]:
    """
    C{main} with two worker processes.
    """
    yield from runTLSProxy(
        workDirectory,
        "main-workers",
        [addressOf(alpha)],
        certificates,
        ["--require-session-reuse", *TWO_WORKERS],
    )


@pytest.fixture(params=["1-worker", "2-workers"])
def activeProxy(request: pytest.FixtureRequest) -> TLSProxy:
    """
    C{main}, and C{mainWorkers}: active mode from a worker process (whose
    data connections go out from it, to the client's address).
    """
    return request.getfixturevalue("main" if request.param == "1-worker" else "mainWorkers")


def test_activeFromBothWorkers(mainWorkers: TLSProxy, alpha: Backend, upload: Path):
    """
    Active-mode sessions through C{mainWorkers}, spread over both workers.
    """
    for n in range(6):
        with ftpSession(mainWorkers.host, mainWorkers.port) as ftp:
            ftp.set_pasv(False)
            transferAll(ftp, alpha, upload, f"ftplib-active-workers-{n}.bin")
    assertSpreadOverWorkers(mainWorkers.host, mainWorkers.port, mainWorkers.proxy.log)


@pytest.fixture(scope="module")
def sixProxy(workDirectory: Path, six: Backend) -> Iterator[tuple[ProxyProcess, int]]:
    """
    A proxy in front of the IPv6 backend, listening on 127.0.0.1 and ::1;
    with the port on ::1.
    """
    port6 = freePort("::1")
    listen = ["--listen", f"tcp6:{port6}:interface=\\:\\:1"]
    for proxy in runProxy(workDirectory, "six", [addressOf(six)], listen, [("::1", port6)]):
        yield proxy, port6


@pytest.fixture(scope="module")
def timeoutProxy(
    workDirectory: Path, alpha: Backend, certificates: CertificatePaths
) -> Iterator[TLSProxy]:
    """
    A proxy with short login, idle, data connection and stall timeouts (and
    FTPS).
    """
    yield from runTLSProxy(
        workDirectory,
        "timeouts",
        [addressOf(alpha)],
        certificates,
        [
            "--login-timeout",
            str(LOGIN_TIMEOUT),
            "--idle-timeout",
            str(IDLE_TIMEOUT),
            "--data-connection-timeout",
            str(DATA_CONNECTION_TIMEOUT),
            "--data-stall-timeout",
            str(DATA_STALL_TIMEOUT),
        ],
    )


THROTTLE_CONFIG = """\
login_failure_window = 120
login_failures_before_delay = 2
login_failures_before_block = 4
"""


@pytest.fixture(scope="module")
def limitProxy(workDirectory: Path, alpha: Backend) -> Iterator[ProxyProcess]:
    """
    A proxy with session limits (3 in all, 2 per client address) and
    failed-login throttling (replies held back from the 3rd failure on,
    sessions refused from the 4th), configured in a file.
    """
    config = workDirectory / "throttle.toml"
    config.write_text(THROTTLE_CONFIG)
    yield from runProxy(
        workDirectory,
        "limits",
        [addressOf(alpha)],
        [
            "--config",
            str(config),
            "--max-sessions",
            "3",
            "--max-sessions-per-client",
            "2",
        ],
    )


# -- helpers -------------------------------------------------------------------


def portArgument(host: str, port: int) -> str:
    return ",".join(host.split(".") + [str(port // 256), str(port % 256)])


def lprtArgument(host: str, port: int) -> str:
    return ",".join(["4", "4", *host.split("."), "2", str(port // 256), str(port % 256)])


def parseLpsv(reply: str) -> tuple[str, int]:
    """
    The IPv4 address and port of a 228 reply: C{(4,4,h1,h2,h3,h4,2,p1,p2)}.
    """
    match = re.search(r"\(([\d,]+)\)", reply)
    assert match is not None, reply
    numbers = [int(n) for n in match.group(1).split(",")]
    assert numbers[:2] == [4, 4] and numbers[6] == 2, reply
    return ".".join(map(str, numbers[2:6])), numbers[7] * 256 + numbers[8]


def assertActiveOnly(verbs: Sequence[str], active: str) -> None:
    assert active in verbs
    assert not {"PASV", "EPSV", "LPSV"} & set(verbs)


def ftpSessionFrom(source: str, host: str, port: int) -> EpsvFTP:
    ftp = EpsvFTP(timeout=30, source_address=(source, 0))
    try:
        ftp.connect(host, port)
        ftp.login(USER, PASSWORD)
    except BaseException:
        ftp.close()
        raise
    return ftp


def tlsSession(
    host: str,
    port: int,
    certificates: CertificatePaths,
    implicit: bool = False,
    factory: type[ftplib.FTP_TLS] | None = None,
) -> ftplib.FTP_TLS:
    """
    A logged-in FTPS session with protected data (PROT P).
    """
    factory = factory or (ImplicitFTP_TLS if implicit else ReusingFTP_TLS)
    ftp = factory(context=tlsContext(certificates.ca), timeout=30)
    try:
        ftp.connect(host, port)
        ftp.login(USER, PASSWORD)
        if not implicit:
            ftp.prot_p()
    except BaseException:
        ftp.close()
        raise
    return ftp


def transferAll(ftp: ftplib.FTP, backend: Backend, upload: Path, remote: str) -> None:
    """
    A listing, a download and an upload in the session, each checked.
    """
    names = ftp.nlst()
    assert {WHOAMI, MID} <= set(names)
    chunks: list[bytes] = []
    assert ftp.retrbinary(f"RETR {MID}", chunks.append).startswith("226")
    assert sha256Bytes(b"".join(chunks)) == backend.sha256(MID)
    with upload.open("rb") as f:
        assert ftp.storbinary(f"STOR {remote}", f).startswith("226")
    assert backend.sha256(remote) == sha256File(upload)


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    return writeRandomFile(tmp_path / "upload.bin", 700_000 + 13)


# -- active mode ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["EPRT", "PORT"])
def test_activeCurl(
    activeProxy: TLSProxy, alpha: Backend, tmp_path: Path, upload: Path, command: str
):
    """
    curl in active mode (C{--ftp-port -}; EPRT, or PORT with
    C{--disable-eprt}) lists, downloads and uploads through the proxy.
    """
    main = activeProxy
    download = tmp_path / "download.bin"
    remote = f"curl-active-{command}.bin"
    extra = ["--disable-eprt"] if command == "PORT" else []
    result = curl(
        "--ftp-port",
        "-",
        *extra,
        "-T",
        str(upload),
        "-o",
        "/dev/null",
        ftpURL(main.host, main.port, remote),
        "-o",
        str(download),
        ftpURL(main.host, main.port, MID),
        ftpURL(main.host, main.port, ""),
    )
    assertActiveOnly(result.verbs(), command)
    assert {"STOR", "RETR", "LIST"} <= set(result.verbs())
    assert MID in result.stdout.decode()
    assert sha256File(download) == alpha.sha256(MID)
    assert alpha.sha256(remote) == sha256File(upload)


def test_activeLftp(activeProxy: TLSProxy, alpha: Backend, tmp_path: Path, upload: Path):
    """
    lftp with C{ftp:passive-mode false}: listing, download, upload.
    """
    main = activeProxy
    download = tmp_path / "download.bin"
    result = lftp(
        main.host,
        main.port,
        ["cls -1", f"get {MID} -o {download}", f"put {upload} -o lftp-active.bin"],
        settings={"ftp:passive-mode": "false"},
    )
    assertActiveOnly(result.verbs(), "PORT")
    assert {WHOAMI, MID} <= set(result.stdout.decode().split())
    assert sha256File(download) == alpha.sha256(MID)
    assert alpha.sha256("lftp-active.bin") == sha256File(upload)


def test_activeFtplib(activeProxy: TLSProxy, alpha: Backend, upload: Path):
    """
    ftplib with C{set_pasv(False)}: listing, download, upload.
    """
    main = activeProxy
    with ftpSession(main.host, main.port) as ftp:
        ftp.set_pasv(False)
        transferAll(ftp, alpha, upload, "ftplib-active.bin")
    assertActiveOnly(ftp.verbs(), "PORT")


@needsCurlActiveFTPS
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_activeTlsCurl(
    main: TLSProxy,
    alpha: Backend,
    certificates: CertificatePaths,
    tmp_path: Path,
    upload: Path,
    implicit: bool,
):
    """
    curl in active mode over FTPS (PROT P), explicit (C{--ssl-reqd}) and
    implicit (C{ftps://}).
    """
    download = tmp_path / "download.bin"
    remote = f"curl-active-tls-{implicit}.bin"
    if implicit:
        urls = [
            f"ftps://{USER}:{PASSWORD}@{main.host}:{main.implicitPort}/{name}"
            for name in (remote, MID, "")
        ]
        tls = ["--cacert", str(certificates.ca)]
    else:
        urls = [ftpURL(main.host, main.port, name) for name in (remote, MID, "")]
        tls = ["--ssl-reqd", "--cacert", str(certificates.ca)]
    result = curl(
        "--ftp-port", "-", *tls,
        "-T", str(upload), "-o", "/dev/null", urls[0],
        "-o", str(download), urls[1],
        urls[2],
    )
    assertActiveOnly(result.verbs(), "EPRT")
    assert MID in result.stdout.decode()
    assert sha256File(download) == alpha.sha256(MID)
    assert alpha.sha256(remote) == sha256File(upload)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_passiveTlsCurl(
    main: TLSProxy,
    alpha: Backend,
    certificates: CertificatePaths,
    tmp_path: Path,
    upload: Path,
    implicit: bool,
):
    """
    The same curl transfers over FTPS in passive mode (EPSV): an upload, a
    download and a listing in one session, each data connection resuming
    the control connection's TLS session as the proxy requires.

    curl 7.88 (OpenSSL 3, TLS 1.3) uses each session ticket once, so the
    download after the upload resumes only because the upload's data
    connection handed out a fresh ticket too.
    """
    download = tmp_path / "download.bin"
    remote = f"curl-passive-tls-{implicit}.bin"
    if implicit:
        base = f"ftps://{USER}:{PASSWORD}@{main.host}:{main.implicitPort}/"
        tls = ["--cacert", str(certificates.ca)]
    else:
        base = ftpURL(main.host, main.port, "")
        tls = ["--ssl-reqd", "--cacert", str(certificates.ca)]
    result = curl(
        *tls,
        "-T", str(upload), "-o", "/dev/null", base + remote,
        "-o", str(download), base + MID,
        base,
    )
    assert "EPSV" in result.verbs()
    assert MID in result.stdout.decode()
    assert sha256File(download) == alpha.sha256(MID)
    assert alpha.sha256(remote) == sha256File(upload)


# Transfers of one curl run: U uploads, D downloads, L lists.
CURL_ORDERS = ["UD", "DU", "UU", "DD", "UDU", "DUD", "UUD", "LUL", "UDLDU"]


@pytest.mark.parametrize("order", CURL_ORDERS)
def test_passiveTlsCurlEveryOrder(
    main: TLSProxy,
    alpha: Backend,
    certificates: CertificatePaths,
    tmp_path: Path,
    order: str,
):
    """
    curl runs that upload, download and list in every order, in one session,
    through the proxy that requires every protected data connection to
    resume the control connection's TLS session: each transfer resumes
    (curl 7.88 with TLS 1.3 needs a fresh ticket from the data connection
    before), and every upload arrives whole (the ticket on an upload's data
    connection does not cut it).
    """
    arguments: list[str] = []
    uploads: list[tuple[Path, str]] = []
    downloads: list[Path] = []
    for index, step in enumerate(order):
        arguments += ["--ssl-reqd", "--cacert", str(certificates.ca)]
        if step == "U":
            # Sizes from tiny to several pump steps.
            source = writeRandomFile(tmp_path / f"up{index}.bin", (17, 300_000, 3 * MiB + 5)[index % 3])
            remote = f"curl-order-{order}-{index}.bin"
            uploads.append((source, remote))
            arguments += ["-T", str(source), ftpURL(main.host, main.port, remote)]
        elif step == "D":
            target = tmp_path / f"down{index}.bin"
            downloads.append(target)
            arguments += ["-o", str(target), ftpURL(main.host, main.port, MID)]
        else:
            arguments += ["-o", str(tmp_path / f"list{index}.txt"), ftpURL(main.host, main.port, "")]
        arguments.append("--next")
    result = curl(*arguments[:-1])
    assert "522" not in " ".join(result.replies)
    for source, remote in uploads:
        assert alpha.sha256(remote) == sha256File(source)
    for target in downloads:
        assert sha256File(target) == alpha.sha256(MID)


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_lftpUploadsArriveWhole(
    main: TLSProxy,
    alpha: Backend,
    certificates: CertificatePaths,
    tmp_path: Path,
    passive: bool,
):
    """
    lftp (GnuTLS) never reads the data connection of an upload before it
    closes it: a TLS session ticket sent there makes its kernel reset the
    connection and drop what it had not sent yet (about half of such
    uploads arrived cut on loopback). The proxy sends lftp none there, and
    every upload of several sizes arrives whole, the session still resumed
    on every data connection as the proxy requires.
    """
    sizes = (1, 200_000, 700_013, 3 * MiB + 7)
    sources = [writeRandomFile(tmp_path / f"up{i}.bin", size) for i, size in enumerate(sizes)]
    remotes = [f"lftp-whole-{passive}-{i}.bin" for i in range(len(sizes))]
    lftp(
        main.host,
        main.port,
        [f"put {source} -o {remote}" for source, remote in zip(sources, remotes)],
        settings={
            "ftp:passive-mode": "true" if passive else "false",
            "ftp:ssl-allow": "yes",
            "ftp:ssl-force": "yes",
            "ftp:ssl-protect-data": "yes",
            "ssl:ca-file": str(certificates.ca),
        },
    )
    for source, remote in zip(sources, remotes):
        assert alpha.sha256(remote) == sha256File(source)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_activeTlsLftp(
    activeProxy: TLSProxy,
    alpha: Backend,
    certificates: CertificatePaths,
    tmp_path: Path,
    upload: Path,
    implicit: bool,
):
    """
    lftp in active mode over FTPS with protected data, explicit and
    implicit; the proxy requires session reuse, which lftp does.
    """
    main = activeProxy
    download = tmp_path / "download.bin"
    remote = f"lftp-active-tls-{implicit}.bin"
    result = lftp(
        f"ftps://{main.host}" if implicit else main.host,
        main.implicitPort if implicit else main.port,
        ["cls -1", f"get {MID} -o {download}", f"put {upload} -o {remote}"],
        settings={
            "ftp:passive-mode": "false",
            "ftp:ssl-allow": "yes",
            "ftp:ssl-force": "yes",
            "ftp:ssl-protect-data": "yes",
            "ftp:ssl-protect-list": "yes",
            "ssl:ca-file": str(certificates.ca),
        },
    )
    assertActiveOnly(result.verbs(), "PORT")
    if not implicit:
        assert "AUTH" in result.verbs() and "PROT P" in result.commands
    assert {WHOAMI, MID} <= set(result.stdout.decode().split())
    assert sha256File(download) == alpha.sha256(MID)
    assert alpha.sha256(remote) == sha256File(upload)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_activeTlsFtplib(
    activeProxy: TLSProxy,
    alpha: Backend,
    certificates: CertificatePaths,
    upload: Path,
    implicit: bool,
):
    """
    ftplib's FTP_TLS in active mode with protected data connections that
    resume the control session: listing, download, upload.
    """
    main = activeProxy
    port = main.implicitPort if implicit else main.port
    with tlsSession(main.host, port, certificates, implicit=implicit) as ftp:
        ftp.set_pasv(False)
        transferAll(ftp, alpha, upload, f"ftplib-active-tls-{implicit}.bin")
    assertActiveOnly(ftp.verbs(), "PORT")
    assert ftp.resumed == [True, True, True]


def test_activeTlsWithoutSessionReuseRefused(
    main: TLSProxy, certificates: CertificatePaths
):
    """
    Plain ftplib starts a new TLS session on each data connection; the
    proxy, told to require reuse, refuses it with 522 also when it opened
    the data connection itself (active mode), and the session goes on.
    """
    with tlsSession(main.host, main.port, certificates, factory=ftplib.FTP_TLS) as ftp:
        ftp.set_pasv(False)
        try:
            ftp.nlst()
        except ftplib.error_perm as e:
            reply = str(e)
        except OSError:
            # The proxy closed the data connection before ftplib read the
            # reply (TLS 1.3 handshakes end on the client side first).
            with pytest.raises(ftplib.error_perm) as info:
                ftp.getresp()
            reply = str(info.value)
        else:
            pytest.fail("the listing went through without session reuse")
        assert reply.startswith("522"), reply
        assert ftp.voidcmd("NOOP").startswith("200")


# -- bounce attempts -------------------------------------------------------------


def test_bounceRefused(main: TLSProxy):
    """
    PORT, EPRT and LPRT to another host (127.0.0.9) or to a port below 1024
    on the client's own address get a 5xx reply, leave no data channel
    (the next RETR gets 425) and make no connection; the session then does
    an active transfer as usual.
    """
    with RecordingListener("127.0.0.9") as foreign, lowPortListener() as low:
        attempts = [
            f"PORT {portArgument('127.0.0.9', foreign.port)}",
            f"EPRT |1|127.0.0.9|{foreign.port}|",
            f"LPRT {lprtArgument('127.0.0.9', foreign.port)}",
            f"port {portArgument('127.0.0.9', foreign.port)}",
            f"PORT {portArgument('127.0.0.1', low.port)}",
            f"EPRT |1|127.0.0.1|{low.port}|",
            f"LPRT {lprtArgument('127.0.0.1', low.port)}",
        ]
        with ftpSession(main.host, main.port) as ftp:
            for attempt in attempts:
                with pytest.raises(ftplib.error_perm, match="^5"):
                    ftp.sendcmd(attempt)
                with pytest.raises(ftplib.error_temp, match="^425"):
                    ftp.sendcmd(f"RETR {WHOAMI}")
            ftp.set_pasv(False)
            assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"
        assert foreign.accepted(NOTHING_CAME_WAIT) == []
        assert low.accepted() == []


def test_eprtOtherFamilyRefused(main: TLSProxy):
    """
    EPRT and EPSV naming IPv6 on an IPv4 control connection get 522 (RFC
    2428), and the session goes on.
    """
    with ftpSession(main.host, main.port) as ftp:
        with pytest.raises(ftplib.error_perm, match="^522"):
            ftp.sendcmd("EPRT |2|::1|40000|")
        with pytest.raises(ftplib.error_perm, match="^522"):
            ftp.sendcmd("EPSV 2")
        assert ftp.voidcmd("NOOP").startswith("200")


# -- EPSV ALL, EPSV with an argument, LPSV and LPRT ----------------------------


def test_epsvAll(main: TLSProxy):
    """
    After C{EPSV ALL}, PASV, LPSV, PORT, EPRT and LPRT are refused with 5xx
    (and make no connection), and EPSV still works.
    """
    with RecordingListener("127.0.0.1") as own, ftpSession(
        main.host, main.port, mode="epsv"
    ) as ftp:
        assert ftp.sendcmd("EPSV ALL").startswith("200")
        for refused in [
            "PASV",
            "LPSV",
            f"PORT {portArgument('127.0.0.1', own.port)}",
            f"EPRT |1|127.0.0.1|{own.port}|",
            f"LPRT {lprtArgument('127.0.0.1', own.port)}",
        ]:
            with pytest.raises(ftplib.error_perm, match="^5"):
                ftp.sendcmd(refused)
        assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"
        assert "EPSV" in ftp.verbs()
        assert own.accepted(NOTHING_CAME_WAIT) == []


def test_epsvWithProtocol(main: TLSProxy):
    """
    C{EPSV 1} on an IPv4 control connection opens a usable passive port.
    """
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        assert control.command("TYPE I").startswith("200")
        port = control.epsvPort("EPSV 1")
        with socket.create_connection((main.host, port), timeout=10) as data:
            assert control.command(f"RETR {WHOAMI}").startswith(("125", "150"))
            assert readAll(data) == b"alpha\n"
        assert control.reply().startswith("226")


def test_lpsvAndLprt(main: TLSProxy, alpha: Backend):
    """
    LPSV is answered with 228 and a usable address; LPRT to the client's
    own address carries a download.
    """
    with RawControl(main.host, main.port) as control, RecordingListener(
        "127.0.0.1"
    ) as own:
        control.login(USER, PASSWORD)
        assert control.command("TYPE I").startswith("200")
        reply = control.command("LPSV")
        assert reply.startswith("228"), reply
        host, port = parseLpsv(reply)
        assert host == main.host
        with socket.create_connection((host, port), timeout=10) as data:
            assert control.command(f"RETR {WHOAMI}").startswith(("125", "150"))
            assert readAll(data) == b"alpha\n"
        assert control.reply().startswith("226")

        assert control.command(f"LPRT {lprtArgument('127.0.0.1', own.port)}").startswith("200")
        assert control.command(f"RETR {MID}").startswith(("125", "150"))
        with own.acceptOne() as data:
            assert sha256Bytes(readAll(data)) == alpha.sha256(MID)
        assert control.reply().startswith("226")


# -- ABOR and QUIT during a transfer -----------------------------------------------


def startHugeDownload(ftp: ftplib.FTP) -> socket.socket:
    """
    Start downloading the 64 MiB file and read its first MiB.
    """
    ftp.voidcmd("TYPE I")
    connection = ftp.transfercmd(f"RETR {HUGE}")
    received = 0
    while received < MiB:
        chunk = connection.recv(65536)
        assert chunk
        received += len(chunk)
    return connection


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_aborMidRetr(main: TLSProxy, certificates: CertificatePaths, tls: bool):
    """
    ABOR as ftplib sends it (on clear connections the command as urgent
    data) in the middle of a big download: 426 for the transfer first,
    then 225/226 for the ABOR; the session goes on.
    """
    if tls:
        ftp = tlsSession(main.host, main.port, certificates)
    else:
        ftp = ftpSession(main.host, main.port, mode="epsv")
    with ftp:
        connection = startHugeDownload(ftp)
        connection.close()
        first = ftp.abort()
        second = ftp.getresp()
        assert first.startswith("426"), (first, second)
        assert second.startswith(("225", "226")), (first, second)
        assert ftp.voidcmd("NOOP").startswith("200")
        assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"


def test_aborTelnetSynch(main: TLSProxy):
    """
    The RFC 959 form: C{IAC IP}, then C{IAC DM} as the Telnet Synch (the
    IAC as urgent data), then ABOR, while the client still holds its data
    connection: the proxy closes it, answers 426 then 225/226, and the
    session goes on.
    """
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        assert control.command("TYPE I").startswith("200")
        port = control.epsvPort()
        with socket.create_connection((main.host, port), timeout=10) as data:
            assert control.command(f"RETR {HUGE}").startswith(("125", "150"))
            assert len(data.recv(65536)) > 0
            control.sock.send(b"\xff\xf4\xff", socket.MSG_OOB)
            control.send(b"\xf2ABOR\r\n")
            first, second = control.reply(), control.reply()
            assert first.startswith("426"), (first, second)
            assert second.startswith(("225", "226")), (first, second)
            # The data connection ends: what was in flight, then the close.
            assert len(readAll(data, timeout=10)) < HUGE_SIZE
        assert control.command("NOOP").startswith("200")
        port = control.epsvPort()
        with socket.create_connection((main.host, port), timeout=10) as data:
            assert control.command(f"RETR {WHOAMI}").startswith(("125", "150"))
            assert readAll(data) == b"alpha\n"
        assert control.reply().startswith("226")


def test_quitDuringTransfer(main: TLSProxy):
    """
    QUIT in the middle of a download: the transfer is aborted (426 at
    most), QUIT gets 221, and both connections are closed.
    """
    with ftpSession(main.host, main.port, mode="epsv") as ftp:
        connection = startHugeDownload(ftp)
        with connection:
            ftp.putcmd("QUIT")
            replies = [ftp.getline()]
            while not replies[-1].startswith("221"):
                assert replies[-1].startswith("426"), replies
                replies.append(ftp.getline())
            assert ftp.file.read() == ""
            assert len(readAll(connection, timeout=10)) < HUGE_SIZE


@pytest.mark.parametrize("failure", ["activeRefused", "aborBeforeData"])
def test_failedTransferLeavesSessionUsable(main: TLSProxy, failure: str):
    """
    After a transfer that failed before any data moved (the client's active
    data port refuses, or ABOR right behind RETR), the session stays usable
    for longer than the backend's passive timeout.
    """
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        if failure == "activeRefused":
            with RecordingListener("127.0.0.1") as closed:
                port = closed.port
            assert control.command(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
            control.send(f"RETR {WHOAMI}\r\n".encode())
            _, final = control.finalReply()
            assert final.startswith("425"), final
        else:
            control.epsvPort()
            control.send(f"RETR {HUGE}\r\nABOR\r\n".encode())
            replies = [control.reply(), control.reply()]
            assert replies[0].startswith("426"), replies
            assert replies[1].startswith(("225", "226")), replies
        assert control.quiet(BACKEND_PASSIVE_TIMEOUT + 1.5), control.reply()
        assert control.command("NOOP").startswith("200")


# -- hostile and unusual input -----------------------------------------------------


def test_telnetSequences(main: TLSProxy):
    """
    Telnet commands in the control stream (NOP, option negotiation, IP and
    DM, also split across packets) are removed; the commands around them
    work.
    """
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        assert control.command(b"\xff\xf1NO\xff\xfb\x01OP").startswith("200")
        assert control.command(b"\xff\xf4\xff\xf2NOOP").startswith("200")
        assert control.command(b"N\xff\xfd\x18O\xff\xfe\x03OP").startswith("200")
        control.send(b"NO\xff")
        control.send(b"\xf1OP\r\n")
        assert control.reply().startswith("200")
        assert control.command(b"\xff\xf4\xff\xf2").startswith("5")
        assert control.command("PWD").startswith("257")


def test_longLines(main: TLSProxy):
    """
    A line of exactly the limit (4096 bytes) is taken; one byte more gets
    500, and so does a 1 MiB line; the session goes on, with one reply per
    line.
    """
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        atLimit = b"REST " + b"0" * (4096 - 5)
        assert control.command(atLimit).startswith("350")
        assert control.command(atLimit + b"0").startswith("500")
        control.send(b"NOOP " + b"x" * MiB + b"\r\nNOOP\r\n")
        assert control.reply().startswith("500")
        assert control.reply().startswith("200")
        assert control.quiet(NOTHING_CAME_WAIT)
        assert control.command("NOOP").startswith("200")


def test_lowerCaseCommands(main: TLSProxy, alpha: Backend):
    """
    Commands in any letter case, including those the proxy handles itself
    (EPSV, PASV, EPRT, REST, ABOR, QUIT).
    """
    with RawControl(main.host, main.port) as control, RecordingListener(
        "127.0.0.1"
    ) as own:
        assert control.reply().startswith("220")
        assert control.command(f"user {USER}").startswith("331")
        assert control.command(f"Pass {PASSWORD}").startswith("230")
        assert control.command("type i").startswith("200")
        port = control.epsvPort("epsv")
        with socket.create_connection((main.host, port), timeout=10) as data:
            assert control.command(f"retr {WHOAMI}").startswith(("125", "150"))
            assert readAll(data) == b"alpha\n"
        assert control.reply().startswith("226")

        reply = control.command("pasv")
        assert reply.startswith("227")
        port = ftplib.parse227(reply)[1]
        assert control.command("rest 3").startswith("350")
        with socket.create_connection((main.host, port), timeout=10) as data:
            assert control.command(f"rEtR {MID}").startswith(("125", "150"))
            assert readAll(data) == alpha.path(MID).read_bytes()[3:]
        assert control.reply().startswith("226")

        assert control.command(f"eprt |1|127.0.0.1|{own.port}|").startswith("200")
        assert control.command("nlst").startswith(("125", "150"))
        with own.acceptOne() as data:
            assert WHOAMI in readAll(data).decode()
        assert control.reply().startswith("226")
        assert control.command("abor").startswith("2")
        assert control.command("quit").startswith("221")
        assert control.readToEnd() == b""


GARBAGE_SEED = 20261125


@pytest.mark.parametrize("loggedIn", [False, True], ids=["beforeLogin", "afterLogin"])
def test_garbage(main: TLSProxy, loggedIn: bool):
    """
    Random binary lines, NUL bytes and lines of only Telnet bytes get
    well-formed replies or a clean close, never a hang; a new session works
    afterwards.
    """
    rng = random.Random(GARBAGE_SEED + loggedIn)
    garbage = [
        b"\x00",
        b"\x00\x00\x00\x00",
        b"NO\x00OP",
        b"\x00NOOP",
        b"\xff\xff\xff\xff",
        b"\xc3\x28\xa0\xa1 \xe2\x28\xa1",
        b"USER \x00\xff\xfe",
        b"\x1b[2J\x07\x08\x7f",
    ] + [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
        for _ in range(30)
    ]
    with RawControl(main.host, main.port) as control:
        if loggedIn:
            control.login(USER, PASSWORD)
        else:
            assert control.reply().startswith("220")
        # IAC SE ends a Telnet subnegotiation that the garbage may have begun.
        control.send(b"\r\n".join(garbage) + b"\xff\xf0\r\nNOOP\r\n")
        replies: list[str] = []
        try:
            # Up to NOOP's reply, each garbage line got a well-formed one
            # (RawControl.reply checks); silence would raise TimeoutError.
            while not (replies and replies[-1].startswith("200")):
                replies.append(control.reply(timeout=20))
        except ConnectionClosed:
            pass
        else:
            assert all(reply[0] in "345" for reply in replies[:-1]), replies
    with ftpSession(main.host, main.port) as ftp:
        assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"


def test_garbageInsteadOfTls(main: TLSProxy):
    """
    Garbage after AUTH TLS (instead of a ClientHello), and clear text on the
    implicit FTPS port: the proxy closes the connection.
    """
    rng = random.Random(GARBAGE_SEED)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    with RawControl(main.host, main.port) as control:
        assert control.reply().startswith("220")
        assert control.command("AUTH TLS").startswith("234")
        control.send(noise)
        control.readToEnd(timeout=20)
    with RawControl(main.host, main.implicitPort) as control:
        control.send(b"USER user\r\n" + noise)
        control.readToEnd(timeout=20)
    with ftpSession(main.host, main.port) as ftp:
        assert ftp.voidcmd("NOOP").startswith("200")


def residentMiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError(f"no VmRSS for process {pid}")


# A proxy that stops reading grows by a few MiB at most; one that reads on
# grows by about 10 MiB a second here.
FLOOD_SECONDS = 6
FLOOD_GROWTH_LIMIT_MIB = 24


def test_unreadRepliesDoNotPileUp(main: TLSProxy):
    """
    A client that floods commands the proxy answers itself (REST 0: valid,
    so not closed as a flood of invalid lines) and reads no reply is slowed
    down by TCP flow control: the proxy stops reading from it, so its
    memory stays bounded.
    """
    pid = main.proxy.process.pid
    before = residentMiB(pid)
    growth = 0
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        control.sock.setblocking(False)
        chunk = b"REST 0\r\n" * 8192
        sent = 0
        deadline = time.monotonic() + FLOOD_SECONDS
        # Stops early once the limit is passed, not to feed a runaway proxy.
        while time.monotonic() < deadline and growth < FLOOD_GROWTH_LIMIT_MIB:
            if select.select([], [control.sock], [], 0.1)[1]:
                try:
                    sent += control.sock.send(chunk)
                except BlockingIOError:
                    pass
            growth = residentMiB(pid) - before
    assert growth < FLOOD_GROWTH_LIMIT_MIB, (
        f"the proxy grew by {growth} MiB while the client sent {sent} bytes "
        "and read nothing"
    )


def test_unknownAndEmptyCommands(main: TLSProxy):
    """
    Empty lines, unknown verbs and bare CRs get 5xx replies.
    """
    with RawControl(main.host, main.port) as control:
        control.login(USER, PASSWORD)
        assert control.command(b"").startswith("5")
        assert control.command(b"XYZZY plugh").startswith("5")
        assert control.command(b"   ").startswith("5")
        assert control.command(b"\r\r").startswith("5")
        assert control.command("NOOP").startswith("200")


# -- IPv6 ------------------------------------------------------------------------


@needsIPv6
@pytest.mark.parametrize("command", ["EPSV", "EPRT"])
def test_ipv6CurlToIPv4Backend(main: TLSProxy, alpha: Backend, tmp_path: Path, command: str):
    """
    curl on ::1 through the proxy to the IPv4 backend, with EPSV and EPRT.
    """
    download = tmp_path / "download.bin"
    url = f"ftp://{USER}:{PASSWORD}@[::1]:{main.port6}/"
    mode = ["--ftp-port", "-"] if command == "EPRT" else []
    result = curl("-g", *mode, "-o", str(download), url + MID, url)
    assert command in result.verbs()
    assert not {"PASV", "PORT", "LPSV"} & set(result.verbs())
    assert sha256File(download) == alpha.sha256(MID)
    assert MID in result.stdout.decode()


@needsIPv6
@pytest.mark.parametrize("passive", [True, False], ids=["EPSV", "EPRT"])
def test_ipv6FtplibToIPv4Backend(main: TLSProxy, alpha: Backend, upload: Path, passive: bool):
    """
    ftplib on ::1 (it uses EPSV and EPRT there) through the proxy to the
    IPv4 backend.
    """
    ftp = EpsvFTP(timeout=30)
    with ftp:
        ftp.connect("::1", main.port6)
        ftp.login(USER, PASSWORD)
        ftp.set_pasv(passive)
        transferAll(ftp, alpha, upload, f"ftplib-v6-{passive}.bin")
    assert ("EPSV" if passive else "EPRT") in ftp.verbs()


@needsIPv6
def test_ipv6PassiveAndPortRefused(main: TLSProxy):
    """
    On an IPv6 control connection PASV (which cannot name an IPv6 address)
    gets 5xx, as do PORT, EPRT with the IPv4 family (522) and EPRT to a
    foreign IPv6 address; EPSV still works.
    """
    with RecordingListener("127.0.0.1") as own:
        ftp = EpsvFTP(timeout=30)
        with ftp:
            ftp.connect("::1", main.port6)
            ftp.login(USER, PASSWORD)
            with pytest.raises(ftplib.error_perm, match="^5"):
                ftp.sendcmd("PASV")
            with pytest.raises(ftplib.error_perm, match="^5"):
                ftp.sendcmd(f"PORT {portArgument('127.0.0.1', own.port)}")
            with pytest.raises(ftplib.error_perm, match="^522"):
                ftp.sendcmd(f"EPRT |1|127.0.0.1|{own.port}|")
            with pytest.raises(ftplib.error_perm, match="^5"):
                ftp.sendcmd(f"EPRT |2|::2|{own.port}|")
            assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"
        assert own.accepted(NOTHING_CAME_WAIT) == []


@needsIPv6
@pytest.mark.parametrize("command", ["EPSV", "EPRT"])
def test_ipv6Only(
    sixProxy: tuple[ProxyProcess, int], six: Backend, tmp_path: Path, upload: Path, command: str
):
    """
    IPv6 from end to end: curl and ftplib on ::1, the proxy, a backend on
    ::1.
    """
    proxy, port6 = sixProxy
    download = tmp_path / "download.bin"
    url = f"ftp://{USER}:{PASSWORD}@[::1]:{port6}/"
    mode = ["--ftp-port", "-"] if command == "EPRT" else []
    result = curl("-g", *mode, "-T", str(upload), "-o", "/dev/null", url + "curl-v6.bin",
                  "-o", str(download), url + MID, url + WHOAMI)
    assert command in result.verbs()
    assert result.stdout == b"six\n"
    assert sha256File(download) == six.sha256(MID)
    assert six.sha256("curl-v6.bin") == sha256File(upload)

    ftp = EpsvFTP(timeout=30)
    with ftp:
        ftp.connect("::1", port6)
        ftp.login(USER, PASSWORD)
        ftp.set_pasv(command == "EPSV")
        transferAll(ftp, six, upload, "ftplib-v6.bin")
    assert command in ftp.verbs()

    if command == "EPSV":
        # Only passive: lftp 4.9 sends EPRT |2|::|port| (the unspecified
        # address) on IPv6, which pyftpdlib refuses as the proxy does.
        download.unlink()
        result = lftp("::1", port6, [f"cat {WHOAMI}", f"get {MID} -o {download}"], mode="epsv")
        assert "EPSV" in result.verbs()
        assert result.stdout == b"six\n"
        assert sha256File(download) == six.sha256(MID)


@needsIPv6
@pytest.mark.parametrize("mode", ["pasv", "port"])
def test_ipv4ClientToIPv6Backend(
    sixProxy: tuple[ProxyProcess, int], six: Backend, upload: Path, mode: str
):
    """
    An IPv4 client (PASV or PORT) through the proxy to the backend on ::1.
    """
    proxy, _ = sixProxy
    with ftpSession(proxy.host, proxy.port, mode="pasv") as ftp:
        ftp.set_pasv(mode == "pasv")
        transferAll(ftp, six, upload, f"ftplib-v4-to-v6-{mode}.bin")
        assert retrieveBytes(ftp, WHOAMI) == b"six\n"
    assert mode.upper() in ftp.verbs()


# -- timeouts ------------------------------------------------------------------


def awaitReply(ftp: ftplib.FTP, timeout: float) -> str:
    """
    A reply the server sends unasked, within C{timeout} seconds.
    """
    readable, _, _ = select.select([ftp.sock], [], [], timeout)
    assert readable, f"nothing came within {timeout}s"
    return ftp.getline()


def test_loginTimeout(timeoutProxy: TLSProxy):
    """
    A client that does not log in (silent, or USER without PASS) gets 421
    after the login timeout, and the connection is closed.
    """
    started = time.monotonic()
    with RawControl(timeoutProxy.host, timeoutProxy.port) as silent, RawControl(
        timeoutProxy.host, timeoutProxy.port
    ) as halfway:
        assert silent.reply().startswith("220")
        assert halfway.reply().startswith("220")
        assert halfway.command(f"USER {USER}").startswith("331")
        for control in (silent, halfway):
            assert control.reply(timeout=LOGIN_TIMEOUT + 10).startswith("421")
            assert control.readToEnd(timeout=10) == b""
    elapsed = time.monotonic() - started
    assert LOGIN_TIMEOUT - 0.5 <= elapsed < LOGIN_TIMEOUT + 10


def closedWithin(sock: socket.socket, seconds: float) -> bool:
    """
    Whether the peer closes C{sock} (FIN or reset) within C{seconds},
    whatever it sends before.
    """
    deadline = time.monotonic() + seconds
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


@pytest.mark.parametrize(
    "case", ["quitIgnoringCloseNotify", "silentAfterAuth", "silentOnImplicitPort"]
)
def test_tlsConnectionsAreClosed(
    timeoutProxy: TLSProxy, certificates: CertificatePaths, case: str
):
    """
    Whatever the client does, the TCP connection is closed within seconds
    once the proxy ends a session: after QUIT even if the client ignores
    the proxy's close_notify, and after the login timeout even if the
    client never sends its TLS ClientHello (after AUTH TLS, or on the
    implicit FTPS port).
    """
    if case == "quitIgnoringCloseNotify":
        raw = socket.create_connection((timeoutProxy.host, timeoutProxy.implicitPort), 10)
        context = tlsContext(certificates.ca)
        with context.wrap_socket(raw, server_hostname=timeoutProxy.host) as tls:
            replies = tls.makefile("rb")
            assert replies.readline().startswith(b"220")
            tls.sendall(b"QUIT\r\n")
            assert replies.readline().startswith(b"221")
            # The proxy's close_notify, which the client leaves unanswered.
            assert replies.readline() == b""
            with socket.socket(fileno=os.dup(tls.fileno())) as plain:
                assert closedWithin(plain, 3), "no FIN within 3 s of close_notify"
    elif case == "silentAfterAuth":
        with RawControl(timeoutProxy.host, timeoutProxy.port) as control:
            assert control.reply().startswith("220")
            assert control.command("AUTH TLS").startswith("234")
            assert closedWithin(control.sock, LOGIN_TIMEOUT + 3), "still open"
    else:
        with socket.create_connection(
            (timeoutProxy.host, timeoutProxy.implicitPort), 10
        ) as silent:
            assert closedWithin(silent, LOGIN_TIMEOUT + 3), "still open"


def test_idleTimeoutSparesSlowTransfer(timeoutProxy: TLSProxy, alpha: Backend):
    """
    An upload that the client sends slowly for more than twice the idle
    timeout completes (the control connection is silent meanwhile), and the
    session goes on; once it is really idle, the idle timeout ends it with
    421.

    An upload, because the proxy sees its data flow at the client's pace;
    a slowly read download ends early on the proxy's side, when the last
    bytes are in its kernel's (autotuned, megabytes) send buffer.
    """
    data = os.urandom(SLOW_UPLOAD_SIZE)
    with ftpSession(timeoutProxy.host, timeoutProxy.port, mode="epsv") as ftp:
        ftp.voidcmd("TYPE I")
        started = time.monotonic()
        with ftp.transfercmd("STOR slow-upload.bin") as connection:
            for offset in range(0, len(data), SLOW_CHUNK):
                connection.sendall(data[offset : offset + SLOW_CHUNK])
                # Paced at SLOW_RATE bytes per second.
                sent = offset + SLOW_CHUNK
                time.sleep(max(0.0, started + sent / SLOW_RATE - time.monotonic()))
        assert ftp.voidresp().startswith("226")
        assert time.monotonic() - started > 2 * IDLE_TIMEOUT
        assert alpha.sha256("slow-upload.bin") == sha256Bytes(data)
        assert ftp.voidcmd("NOOP").startswith("200")

        idleSince = time.monotonic()
        assert awaitReply(ftp, IDLE_TIMEOUT + 10).startswith("421")
        assert time.monotonic() - idleSince >= IDLE_TIMEOUT - 0.5
        assert ftp.file.read() == ""


def test_dataConnectionTimeout(timeoutProxy: TLSProxy):
    """
    PASV then RETR without connecting, or PORT to the client's own address
    where connections hang: 425 after the data connection timeout, and the
    session goes on. (PORT to a closed port, 425 at once, is in
    L{test_failedTransferLeavesSessionUsable}.)
    """
    with ftpSession(timeoutProxy.host, timeoutProxy.port) as ftp:
        ftp.sendcmd("PASV")
        started = time.monotonic()
        ftp.putcmd(f"RETR {WHOAMI}")
        reply = ftp.getline()
        while reply.startswith("1"):
            reply = ftp.getline()
        assert reply.startswith("425"), reply
        assert DATA_CONNECTION_TIMEOUT - 0.3 <= time.monotonic() - started < 10
        assert ftp.voidcmd("NOOP").startswith("200")

        with Blackhole("127.0.0.1") as blackhole:
            ftp.sendcmd(f"PORT {portArgument('127.0.0.1', blackhole.port)}")
            started = time.monotonic()
            ftp.putcmd(f"RETR {WHOAMI}")
            reply = ftp.getline()
            while reply.startswith("1"):
                reply = ftp.getline()
            assert reply.startswith("425"), reply
            assert DATA_CONNECTION_TIMEOUT - 0.3 <= time.monotonic() - started < 10
        assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"


def test_dataStallTimeout(timeoutProxy: TLSProxy):
    """
    A client that opens the data connection and never reads: once the
    buffers are full and nothing moves for the stall timeout, the transfer
    is aborted with 426, and the session goes on.
    """
    with ftpSession(timeoutProxy.host, timeoutProxy.port, mode="epsv") as ftp:
        ftp.voidcmd("TYPE I")
        started = time.monotonic()
        with ftp.transfercmd(f"RETR {HUGE}"):
            reply = awaitReply(ftp, 4 * DATA_STALL_TIMEOUT + 20)
        assert reply.startswith("426"), reply
        assert time.monotonic() - started >= DATA_STALL_TIMEOUT - 0.5
        assert ftp.voidcmd("NOOP").startswith("200")


def test_connectTimeoutFailover(
    startProxy: Callable[..., ProxyProcess], alpha: Backend
):
    """
    The first backend never accepts (its SYNs are dropped): after the
    connect timeout the session goes to the second backend, unnoticed by
    the client but for the delay.
    """
    with Blackhole("127.0.0.8") as blackhole:
        proxy = startProxy(
            "--connect-timeout", str(CONNECT_TIMEOUT), "--shutdown-grace", "1",
            backends=[blackhole, addressOf(alpha)],
        )
        started = time.monotonic()
        with ftpSession(proxy.host, proxy.port) as ftp:
            elapsed = time.monotonic() - started
            assert ftp.getwelcome() == "220 alpha ready"
            assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"
        assert CONNECT_TIMEOUT - 0.3 <= elapsed < CONNECT_TIMEOUT + 8


# -- limits ----------------------------------------------------------------------


def assertRefused(proxy: ProxyProcess, source: str, why: str) -> None:
    """
    A connection from C{source} gets 421 (saying C{why}) and is closed.
    """
    with RawControl(proxy.host, proxy.port, source=source) as control:
        reply = control.reply()
        assert reply.startswith("421"), reply
        assert why in reply
        assert control.readToEnd() == b""


def test_sessionLimits(limitProxy: ProxyProcess):
    """
    Two sessions per client address and three in all; refused ones get
    421 and a close; a slot freed by QUIT can be taken again.
    """
    sessions: list[ftplib.FTP] = []
    try:
        sessions.append(ftpSessionFrom("127.0.0.1", limitProxy.host, limitProxy.port))
        sessions.append(ftpSessionFrom("127.0.0.1", limitProxy.host, limitProxy.port))
        assertRefused(limitProxy, "127.0.0.1", "from your address")
        sessions.append(ftpSessionFrom("127.0.0.5", limitProxy.host, limitProxy.port))
        assertRefused(limitProxy, "127.0.0.6", "on this server")
        for ftp in sessions:
            assert ftp.voidcmd("NOOP").startswith("200")

        first = sessions.pop(0)
        assert first.sendcmd("QUIT").startswith("221")
        assert first.file.read() == ""
        first.close()
        sessions.append(ftpSessionFrom("127.0.0.6", limitProxy.host, limitProxy.port))
        assert retrieveBytes(sessions[-1], WHOAMI) == b"alpha\n"
    finally:
        for ftp in sessions:
            ftp.close()


def failLogin(control: RawControl, user: str) -> tuple[str, str, float]:
    """
    A login attempt with a wrong password; the replies and how long the
    530 took.
    """
    userReply = control.command(f"USER {user}")
    started = time.monotonic()
    passReply = control.command("PASS wrong-password", timeout=30)
    return userReply, passReply, time.monotonic() - started


def test_loginThrottling(limitProxy: ProxyProcess):
    """
    From one address, the first two failed logins are answered at once,
    the third after a second, the fourth after two; then new sessions from
    that address get 421. Unknown users and bad passwords get the same
    replies and count alike. Another address is not affected.
    """
    client = "127.0.0.7"
    attempts = []
    with RawControl(limitProxy.host, limitProxy.port, source=client) as control:
        assert control.reply().startswith("220")
        attempts.append(failLogin(control, USER))
        attempts.append(failLogin(control, "nobody-here"))
    with RawControl(limitProxy.host, limitProxy.port, source=client) as control:
        assert control.reply().startswith("220")
        attempts.append(failLogin(control, "nobody-here"))
        attempts.append(failLogin(control, USER))

    userReplies = {userReply for userReply, _, _ in attempts}
    passReplies = {passReply for _, passReply, _ in attempts}
    assert len(userReplies) == 1 and userReplies.pop().startswith("331")
    assert len(passReplies) == 1 and passReplies.pop().startswith("530")
    delays = [delay for _, _, delay in attempts]
    assert delays[0] < 0.9 and delays[1] < 0.9, delays
    assert 0.9 <= delays[2] < 1.9 + 2, delays
    assert 1.9 <= delays[3] < 2.9 + 2, delays

    assertRefused(limitProxy, client, "failed logins")
    with ftpSessionFrom("127.0.0.11", limitProxy.host, limitProxy.port) as ftp:
        assert retrieveBytes(ftp, WHOAMI) == b"alpha\n"
