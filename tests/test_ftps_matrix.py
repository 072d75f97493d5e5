"""
The FTPS compatibility matrix: real clients (curl, lftp, Python's ftplib)
through the proxy in explicit and implicit FTPS, in both passive modes,
against a clear pyftpdlib backend and against vsftpd as an FTPS backend
(session reuse required, and control-only FTPS), plus the TLS policies:
C{--require-tls}, C{--require-session-reuse}, command injection after AUTH,
protocol versions, client certificates and close_notify.

Every transfer compares SHA-256 digests of what was sent and what arrived.
"""

from __future__ import annotations

import ftplib
import io
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates
from tests.support.backends import Backend, startBackend
from tests.support.clients import curl
from tests.support.files import MiB, sha256Bytes, sha256File, writeRandomFile
from tests.support.workers import TWO_WORKERS, assertSpreadOverWorkers
from tests.support.ftps import (
    RecordingBackend,
    ResumingTLSSession,
    TLSProxy,
    clientContext,
    curlDataHandshakes,
    curlFTPS,
    ftpsSession,
    ftpsURL,
    lftpFTPS,
    startTLSProxy,
    tlsArguments,
    tomlText,
)
from tests.support.ftpsbackends import (
    FTPSBackend,
    PackageUnavailable,
    startVsftpd,
)

MODES = ["pasv", "epsv"]
OTHER_MODE = {"pasv": "EPSV", "epsv": "PASV"}
CLIENTS = ["curl", "curl-implicit", "lftp", "lftp-implicit", "ftplib", "ftplib-resuming"]

FETCH = "fetch.bin"
FETCH_SIZE = 2 * MiB
UPLOAD_SIZE = 1 * MiB

# Not OpenSSL's first choice, so seeing it proves --tls-ciphers applies.
TLS12_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"

CLEAR_HOST = "127.0.0.4"
VSFTPD_HOST = "127.0.0.2"


# -- fixtures -----------------------------------------------------------------


class Proxies:
    """
    Starts TLS proxies and, when done, stops them and reports any whose log
    shows a traceback or an unhandled error.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[TLSProxy] = []

    def start(self, *args: str, configText: str | None = None, implicit: bool = True) -> TLSProxy:
        proxy = startTLSProxy(
            self.directory,
            extraArgs=args,
            configText=configText,
            implicit=implicit,
            name=f"proxy-{len(self.started)}",
        )
        self.started.append(proxy)
        return proxy

    def finish(self) -> None:
        problems = []
        for proxy in self.started:
            proxy.stop()
            # pytest shows this only when the test failed.
            print(f"--- log of {' '.join(proxy.command)} ---")
            print(proxy.log())
            found = proxy.logProblems()
            if found:
                problems.append(f"{' and '.join(found)} in the log of {proxy.command}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return makeCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def otherCerts(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    """
    A second development CA, which signed none of the certificates in use.
    """
    return makeCertificates(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture(scope="module")
def clearBackend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """
    A clear pyftpdlib backend (what Alfresco is to the proxy) with a
    C{fetch.bin} to download.
    """
    base = tmp_path_factory.mktemp("clear")
    root = base / "root"
    root.mkdir()
    (root / "whoami.txt").write_text("clear\n")
    writeRandomFile(root / FETCH, FETCH_SIZE)
    backend = startBackend(
        "clear", CLEAR_HOST, root=root, logDirectory=base / "logs", populate=False
    )
    yield backend
    backend.stop()
    print(f"--- log of backend {backend.name} ---\n{backend.log()}")


@pytest.fixture(scope="module")
def moduleProxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    proxies = Proxies(tmp_path_factory.mktemp("proxies"))
    yield proxies
    proxies.finish()


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    proxies = Proxies(tmp_path / "proxies")
    yield proxies
    proxies.finish()


@pytest.fixture(scope="module")
def tlsProxy(moduleProxies: Proxies, clearBackend: Backend, certs: CertificatePaths) -> TLSProxy:
    """
    Explicit and implicit FTPS in front of the clear backend.
    """
    return moduleProxies.start("--backend", clearBackend.address, *tlsArguments(certs))


@pytest.fixture(scope="module")
def reuseProxy(moduleProxies: Proxies, clearBackend: Backend, certs: CertificatePaths) -> TLSProxy:
    """
    Like C{tlsProxy}, refusing data connections that do not resume.
    """
    return moduleProxies.start(
        "--backend", clearBackend.address, *tlsArguments(certs), "--require-session-reuse"
    )


def _vsftpd(directory: Path, certs: CertificatePaths, name: str, **options) -> FTPSBackend:
    try:
        backend = startVsftpd(directory, VSFTPD_HOST, certs, name=name, **options)
    except PackageUnavailable as e:
        pytest.skip(str(e))
    writeRandomFile(backend.root / FETCH, FETCH_SIZE)
    return backend


@pytest.fixture(scope="module")
def vsftpdBackends(
    tmp_path_factory: pytest.TempPathFactory, certs: CertificatePaths
) -> Iterator[Callable[[str], FTPSBackend]]:
    """
    vsftpd requiring TLS on login and data, session reuse on data
    connections and close_notify at the end of uploads, with explicit and
    with implicit FTPS, started on demand.
    """
    directory = tmp_path_factory.mktemp("vsftpd")
    started: dict[str, FTPSBackend] = {}

    def get(kind: str) -> FTPSBackend:
        if kind not in started:
            started[kind] = _vsftpd(
                directory,
                certs,
                f"vsftpd-{kind}",
                implicit=kind == "implicit",
                requireSessionReuse=True,
                # Uploads must end with close_notify from the proxy.
                strictCloseNotify=True,
            )
        return started[kind]

    yield get
    for backend in started.values():
        backend.stop()
        print(f"--- log of {backend.name} ---\n{backend.log()}")


def backendTable(backend: FTPSBackend, certs: CertificatePaths, **keys) -> dict:
    """
    A C{[[backend]]} table for an FTPS backend, verified against C{certs}.
    """
    return {
        "address": backend.address,
        "name": backend.name,
        "tls": "implicit" if backend.implicit else "explicit",
        "verify": True,
        "ca_file": str(certs.ca),
        **keys,
    }


def serverTLS(certs: CertificatePaths, **keys) -> dict:
    return {"certificate": str(certs.serverCert), "key": str(certs.serverKey), **keys}


# -- helpers ------------------------------------------------------------------


def assertPassiveMode(verbs: list[str], mode: str) -> None:
    assert mode.upper() in verbs
    assert OTHER_MODE[mode] not in verbs


def exchangeFiles(
    client: str,
    mode: str,
    proxy: TLSProxy,
    ca: Path,
    tmp_path: Path,
    remoteDirectory: Path,
    expectedFetch: str,
    uploadPath: str,
    user: str | None = None,
    password: str | None = None,
) -> list[str]:
    """
    With C{client}, through C{proxy} in passive C{mode}: list the login
    directory, download C{fetch.bin} and upload a random file as
    C{uploadPath}; check that the listing names C{fetch.bin}, that both
    files arrive intact and that the data connections were TLS.  Return
    the commands the client sent.
    """
    credentials = {}
    if user is not None:
        credentials = {"user": user, "password": password}
    implicit = client.endswith("-implicit")
    port = proxy.implicitPort if implicit else proxy.port
    upload = writeRandomFile(tmp_path / "upload.bin", UPLOAD_SIZE)
    download = tmp_path / "download.bin"

    if client.startswith("curl"):

        def url(path: str) -> str:
            return ftpsURL(proxy.host, port, path, implicit=implicit, **credentials)

        listing = curlFTPS(url(""), "-l", ca=ca, mode=mode)
        fetched = curlFTPS(url(FETCH), "-o", str(download), ca=ca, mode=mode)
        stored = curlFTPS(url(uploadPath), "-T", str(upload), ca=ca, mode=mode)
        results = [listing, fetched, stored]
        assert FETCH in listing.stdout.decode().split()
        for result in results:
            assertPassiveMode(result.verbs(), mode)
            assert "PROT P" in result.commands
            # The data connection was TLS too.
            assert curlDataHandshakes(result) >= 1, result.stderr
        commands = [c for r in results for c in r.commands]
    elif client.startswith("lftp"):
        result = lftpFTPS(
            proxy.host,
            port,
            [
                "cls -1",
                f"get {FETCH} -o {download}",
                f"put {upload} -o {uploadPath}",
            ],
            ca=ca,
            mode=mode,
            implicit=implicit,
            **credentials,
        )
        assert FETCH in result.stdout.decode().split()
        assertPassiveMode(result.verbs(), mode)
        assert "PROT P" in result.commands
        assert {"RETR", "STOR"} <= set(result.verbs())
        commands = list(result.commands)
    else:
        with ftpsSession(
            proxy.host, port, ca, mode=mode, resuming=client == "ftplib-resuming", **credentials
        ) as ftp:
            assert FETCH in [name.rsplit("/", 1)[-1] for name in ftp.nlst()]
            with download.open("wb") as f:
                ftp.retrbinary(f"RETR {FETCH}", f.write)
            with upload.open("rb") as f:
                ftp.storbinary(f"STOR {uploadPath}", f)
            ftp.quit()
            assertPassiveMode(ftp.verbs(), mode)
            assert len(ftp.dataConnections) == 3
            assert all(c.protected for c in ftp.dataConnections)
            resumed = [c.resumed for c in ftp.dataConnections]
            # Stock ftplib makes a full handshake each time; the subclass
            # resumes the control connection's session every time.
            assert resumed == [client == "ftplib-resuming"] * 3
            commands = ftp.commands

    assert sha256File(download) == expectedFetch
    assert sha256File(remoteDirectory / uploadPath) == sha256File(upload)
    return commands


# -- the matrix: every client, clear backend ------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", CLIENTS)
def test_matrixClearBackend(
    tlsProxy: TLSProxy,
    clearBackend: Backend,
    certs: CertificatePaths,
    tmp_path: Path,
    client: str,
    mode: str,
):
    """
    Every client lists, downloads and uploads over FTPS (protected data)
    through the proxy to a clear backend, in both passive modes.
    """
    commands = exchangeFiles(
        client,
        mode,
        tlsProxy,
        certs.ca,
        tmp_path,
        clearBackend.root,
        clearBackend.sha256(FETCH),
        f"up-{client}-{mode}.bin",
    )
    verbs = [c.split(" ", 1)[0].upper() for c in commands]
    if client.endswith("-implicit"):
        assert "AUTH" not in verbs
    else:
        assert "AUTH TLS" in commands or "AUTH SSL" in commands


@pytest.fixture(scope="module")
def workersProxy(
    moduleProxies: Proxies, clearBackend: Backend, certs: CertificatePaths
) -> TLSProxy:
    """
    C{tlsProxy} with two worker processes.
    """
    return moduleProxies.start("--backend", clearBackend.address, *tlsArguments(certs), *TWO_WORKERS)


@pytest.mark.parametrize(
    "client, mode",
    [
        ("curl", "pasv"),
        ("curl-implicit", "epsv"),
        ("lftp", "epsv"),
        ("lftp-implicit", "pasv"),
        ("ftplib-resuming", "epsv"),
    ],
)
def test_matrixWithWorkers(
    workersProxy: TLSProxy,
    clearBackend: Backend,
    certs: CertificatePaths,
    tmp_path: Path,
    client: str,
    mode: str,
):
    """
    A representative part of the matrix through two worker processes: the
    data connections reach the worker that owns the session (its own slice
    of the passive ports) and resume its TLS session.
    """
    exchangeFiles(
        client,
        mode,
        workersProxy,
        certs.ca,
        tmp_path,
        clearBackend.root,
        clearBackend.sha256(FETCH),
        f"up-workers-{client}-{mode}.bin",
    )


def test_workersShareFTPSSessions(workersProxy: TLSProxy):
    """
    The FTPS proxy's sessions spread over both workers.
    """
    assertSpreadOverWorkers(workersProxy.host, workersProxy.port, workersProxy.log)


def test_featAdvertisesTLS(tlsProxy: TLSProxy):
    """
    FEAT names what the proxy offers itself, on a clear control connection
    before AUTH.
    """
    with ftplib.FTP(timeout=20) as ftp:
        ftp.connect(tlsProxy.host, tlsProxy.port)
        features = {line.strip() for line in ftp.sendcmd("FEAT").splitlines()[1:-1]}
    assert {"AUTH TLS", "PBSZ", "PROT", "EPSV"} <= features


# -- FTPS backends: vsftpd ---------------------------------------------------------


@pytest.fixture(scope="module")
def vsftpdProxy(
    moduleProxies: Proxies,
    vsftpdBackends: Callable[[str], FTPSBackend],
    certs: CertificatePaths,
) -> Callable[[str], tuple[TLSProxy, FTPSBackend]]:
    """
    For "explicit" or "implicit": the proxy in front of that vsftpd, with
    the backend certificate verified and PROT P towards it.
    """
    started: dict[str, tuple[TLSProxy, FTPSBackend]] = {}

    def get(kind: str) -> tuple[TLSProxy, FTPSBackend]:
        if kind not in started:
            backend = vsftpdBackends(kind)
            text = tomlText(
                tls=serverTLS(certs),
                backends=[backendTable(backend, certs, data_protection="private")],
            )
            started[kind] = (moduleProxies.start(configText=text, implicit=False), backend)
        return started[kind]

    return get


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", ["curl", "lftp"])
@pytest.mark.parametrize("backendTLS", ["explicit", "implicit"])
def test_vsftpdBackend(
    vsftpdProxy: Callable[[str], tuple[TLSProxy, FTPSBackend]],
    certs: CertificatePaths,
    tmp_path: Path,
    backendTLS: str,
    client: str,
    mode: str,
):
    """
    Through the proxy to vsftpd over FTPS (explicit or implicit), which
    requires TLS session reuse on data connections: listing, download and
    upload work, and every backend data connection resumed the session.
    """
    proxy, backend = vsftpdProxy(backendTLS)
    before = len(backend.handshakes())
    exchangeFiles(
        client,
        mode,
        proxy,
        certs.ca,
        tmp_path,
        backend.root,
        sha256File(backend.root / FETCH),
        backend.uploadPath(f"up-{client}-{mode}.bin"),
        user=backend.user,
        password=backend.password,
    )
    handshakes = backend.handshakes()[before:]
    # A full handshake per control connection (curl ran three times), a
    # resumed one per data connection (listing, download, upload).
    sessions = 3 if client == "curl" else 1
    assert handshakes.count(False) == sessions, backend.log()
    assert handshakes.count(True) == 3, backend.log()
    assert handshakes[0] is False


@pytest.mark.parametrize("client", ["curl", "lftp"])
def test_controlOnlyFTPSBackend(
    proxies: Proxies, certs: CertificatePaths, tmp_path: Path, client: str
):
    """
    A backend that encrypts the control channel only (Alfresco; here
    vsftpd not forcing data TLS) with C{data_protection = "clear"}: the
    client still gets PROT P and TLS data connections from the proxy, while
    the backend's data connections stay clear.
    """
    backend = _vsftpd(tmp_path, certs, "vsftpd-control-only", forceDataTLS=False)
    try:
        text = tomlText(
            tls=serverTLS(certs),
            backends=[backendTable(backend, certs, data_protection="clear")],
        )
        proxy = proxies.start(configText=text, implicit=False)
        exchangeFiles(
            client,
            "epsv",
            proxy,
            certs.ca,
            tmp_path,
            backend.root,
            sha256File(backend.root / FETCH),
            backend.uploadPath(f"up-{client}.bin"),
            user=backend.user,
            password=backend.password,
        )
        log = backend.log()
        assert '"PROT C"' in log
        assert '"PROT P"' not in log
        # Only the control connections were TLS at the backend.
        sessions = 3 if client == "curl" else 1
        assert backend.handshakes() == [False] * sessions
    finally:
        backend.stop()


def _connectReply(proxy: TLSProxy) -> str:
    """
    The greeting a client gets, or the error reply that ftplib raised.
    """
    ftp = ftplib.FTP(timeout=20)
    try:
        return ftp.connect(proxy.host, proxy.port)
    except ftplib.Error as e:
        return str(e)
    finally:
        ftp.close()


@pytest.mark.parametrize("problem", ["wrong name", "unknown CA"])
def test_backendCertificateRefused(
    proxies: Proxies,
    vsftpdBackends: Callable[[str], FTPSBackend],
    certs: CertificatePaths,
    otherCerts: CertificatePaths,
    problem: str,
):
    """
    A backend whose certificate does not verify (a name it is not for, or
    a CA that did not sign it) is never used: the client gets 421 and the
    log says which backend and why.
    """
    if problem == "wrong name":
        keys, why = {"server_name": "wrong.example"}, r"'wrong.example' is not valid for"
    else:
        keys, why = {"ca_file": str(otherCerts.ca)}, r"refused: .*(issuer|self.signed)"
    backend = vsftpdBackends("explicit")
    logBefore = len(backend.log())
    text = tomlText(tls=serverTLS(certs), backends=[backendTable(backend, certs, **keys)])
    proxy = proxies.start(configText=text, implicit=False)

    reply = _connectReply(proxy)
    assert reply.startswith("421"), reply
    [line] = [
        line
        for line in proxy.log().splitlines()
        if "#warn]" in line and f"backend {backend.name} " in line and "certificate" in line
    ]
    assert re.search(why, line), line
    # The proxy hung up after the failed handshake: no login was tried.
    newLog = backend.log()[logBefore:]
    assert '"AUTH TLS"' in newLog
    assert "USER" not in newLog


def test_backendCertificateFailover(
    proxies: Proxies,
    vsftpdBackends: Callable[[str], FTPSBackend],
    clearBackend: Backend,
    certs: CertificatePaths,
):
    """
    With a backend whose certificate fails first in line, sessions fail
    over to the next backend before the client notices.
    """
    bad = vsftpdBackends("explicit")
    text = tomlText(
        tls=serverTLS(certs),
        backends=[
            backendTable(bad, certs, server_name="wrong.example"),
            {"address": clearBackend.address, "name": "clear"},
        ],
    )
    proxy = proxies.start(configText=text, implicit=False)
    for _ in range(2):
        with ftpsSession(proxy.host, proxy.port, certs.ca, resuming=True) as ftp:
            chunks: list[bytes] = []
            ftp.retrbinary("RETR whoami.txt", chunks.append)
            assert b"".join(chunks) == b"clear\n"
    assert "not valid for that name" in proxy.log()


# -- --require-tls -------------------------------------------------------------


@pytest.fixture(scope="module")
def requireTLSProxy(
    moduleProxies: Proxies, clearBackend: Backend, certs: CertificatePaths
) -> TLSProxy:
    return moduleProxies.start(
        "--backend", clearBackend.address, *tlsArguments(certs), "--require-tls",
        implicit=False,
    )


def test_requireTLSLoginBeforeAuth(requireTLSProxy: TLSProxy, certs: CertificatePaths):
    """
    USER and PASS before AUTH TLS get 530 saying why; the session stays
    usable and logs in after AUTH TLS.
    """
    proxy = requireTLSProxy
    with ftplib.FTP_TLS(context=clientContext(certs.ca), timeout=20) as ftp:
        ftp.connect(proxy.host, proxy.port)
        for command in ("USER user", "PASS secret"):
            with pytest.raises(ftplib.error_perm) as refused:
                ftp.sendcmd(command)
            reply = str(refused.value)
            assert reply.startswith("530 ")
            assert "TLS" in reply
        assert ftp.login("user", "secret").startswith("230")


def test_requireTLSClearCurlRefused(requireTLSProxy: TLSProxy):
    """
    curl without TLS cannot log in.
    """
    proxy = requireTLSProxy
    result = curl(ftpsURL(proxy.host, proxy.port, "whoami.txt"), check=False)
    assert result.returncode != 0
    assert any(reply.startswith("530") for reply in result.replies), result.stderr


def test_requireTLSClearData(
    requireTLSProxy: TLSProxy, clearBackend: Backend, certs: CertificatePaths
):
    """
    Under PROT C every transfer is refused with 521 and a reason (and
    nothing is stored); after PROT P the same transfers work.
    """
    proxy = requireTLSProxy
    with ftpsSession(proxy.host, proxy.port, certs.ca, protect=False, resuming=True) as ftp:
        ftp.prot_c()
        refusals = []
        for transfer in (
            lambda: ftp.nlst(),
            lambda: ftp.retrbinary(f"RETR {FETCH}", lambda _: None),
            lambda: ftp.storbinary("STOR clear-upload.bin", io.BytesIO(b"clear")),
        ):
            with pytest.raises(ftplib.error_perm) as refused:
                transfer()
            refusals.append(str(refused.value))
        assert all(r.startswith("521 ") and "PROT P" in r for r in refusals), refusals
        assert not clearBackend.path("clear-upload.bin").exists()

        ftp.prot_p()
        assert FETCH in ftp.nlst()
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR {FETCH}", chunks.append)
        assert sha256Bytes(b"".join(chunks)) == clearBackend.sha256(FETCH)
        assert ftp.voidcmd("NOOP").startswith("200")


# -- --require-session-reuse ------------------------------------------------------


@pytest.mark.parametrize(
    "client", ["curl", "curl-implicit", "lftp", "lftp-implicit", "ftplib-resuming"]
)
def test_requireSessionReuseResumingClients(
    reuseProxy: TLSProxy,
    clearBackend: Backend,
    certs: CertificatePaths,
    tmp_path: Path,
    client: str,
):
    """
    Clients that resume the control connection's TLS session on data
    connections pass under C{--require-session-reuse}.
    """
    exchangeFiles(
        client,
        "epsv",
        reuseProxy,
        certs.ca,
        tmp_path,
        clearBackend.root,
        clearBackend.sha256(FETCH),
        f"reuse-{client}.bin",
    )


def test_requireSessionReuseStockFTPTLS(reuseProxy: TLSProxy, certs: CertificatePaths):
    """
    Stock C{ftplib.FTP_TLS} does not resume: its data connection is
    refused with 522, and the control session stays usable.

    The proxy drops the refused data connection as vsftpd does (no
    close_notify), so ftplib's C{unwrap()} of it fails before ftplib reads
    the 522: both are what this client sees.
    """
    proxy = reuseProxy
    logBefore = len(proxy.log())
    with ftplib.FTP_TLS(context=clientContext(certs.ca), timeout=20) as ftp:
        ftp.connect(proxy.host, proxy.port)
        ftp.login("user", "secret")
        ftp.prot_p()
        with pytest.raises((ftplib.Error, OSError)) as refused:
            ftp.nlst()
        if isinstance(refused.value, ftplib.Error):
            reply = str(refused.value)
        else:
            # The data connection broke first; the reply is still owed.
            with pytest.raises(ftplib.error_perm) as owed:
                ftp.getresp()
            reply = str(owed.value)
        assert reply.startswith("522 "), reply
        assert "reuse" in reply
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.prot_c()
        assert FETCH in ftp.nlst()
    assert re.search(r"NLST .*: 522, ", proxy.log()[logBefore:])


def test_requireSessionReuseCurlSeveralTransfers(
    reuseProxy: TLSProxy, clearBackend: Backend, certs: CertificatePaths, tmp_path: Path
):
    """
    One curl run, one session, three protected data connections (a listing
    and two downloads): each must resume, so none is refused. curl uses a
    TLS 1.3 ticket only once, so this needs the fresh ticket the proxy hands
    out on each download data connection.
    """
    proxy = reuseProxy

    def url(path: str) -> str:
        return ftpsURL(proxy.host, proxy.port, path)

    outputs = [tmp_path / "first.bin", tmp_path / "second.bin"]
    # curlFTPS puts its first argument last: curl pairs each -o with the
    # URL after it.
    result = curlFTPS(
        url(FETCH),
        "-o", str(tmp_path / "listing.txt"),
        url(""),
        "-o", str(outputs[0]),
        url(FETCH),
        "-o", str(outputs[1]),
        ca=certs.ca,
        check=False,
    )
    finals = [r[:3] for r in result.replies if r[:3] in ("226", "425", "522")]
    assert finals == ["226", "226", "226"], result.replies
    assert result.returncode == 0
    assert all(sha256File(o) == clearBackend.sha256(FETCH) for o in outputs)


# -- injection after AUTH ------------------------------------------------------


def _readUntilClosed(connection: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """
    Everything the peer sends until it closes; and whether it closed
    within C{timeout} seconds.
    """
    connection.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                return received, True
            received += chunk
    except socket.timeout:
        return received, False
    except ConnectionResetError:
        return received, True


@pytest.mark.parametrize("mechanism", ["TLS", "SSL"])
def test_injectionAfterAuth(proxies: Proxies, certs: CertificatePaths, mechanism: str):
    """
    C{AUTH TLS\\r\\nUSER x\\r\\n} in one packet: the USER is never executed
    (no 331, nothing reaches the backend) and the proxy closes, saying why.
    """
    recorder = RecordingBackend("127.0.0.5")
    try:
        proxy = proxies.start("--backend", recorder.address, *tlsArguments(certs), implicit=False)
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
            greeting = s.recv(4096)
            assert greeting.startswith(b"220 recorder ready")
            s.sendall(f"AUTH {mechanism}\r\nUSER x\r\n".encode())
            received, closed = _readUntilClosed(s)
        assert closed, received
        assert received.startswith(b"421 "), received
        assert b"331" not in received
        assert not any(line.upper().startswith(b"USER") for line in recorder.lines())
    finally:
        recorder.close()


def test_clearCommandAfter234(proxies: Proxies, certs: CertificatePaths):
    """
    A clear-text command sent after the 234, where the TLS handshake should
    be, is not executed either: the handshake fails and the proxy closes.
    """
    recorder = RecordingBackend("127.0.0.5")
    try:
        proxy = proxies.start("--backend", recorder.address, *tlsArguments(certs), implicit=False)
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
            assert s.recv(4096).startswith(b"220")
            s.sendall(b"AUTH TLS\r\n")
            assert s.recv(4096).startswith(b"234")
            s.sendall(b"USER x\r\n")
            received, closed = _readUntilClosed(s)
        assert closed, received
        assert b"331" not in received
        assert not any(line.upper().startswith(b"USER") for line in recorder.lines())
    finally:
        recorder.close()


def test_injectionAfterBackend234(proxies: Proxies, certs: CertificatePaths):
    """
    The twin on the backend leg: a backend that sends a reply behind its
    234 in the same packet is refused, and the client gets 421.
    """
    recorder = RecordingBackend("127.0.0.5", authReply=b"234 Go ahead.\r\n230 Injected.\r\n")
    try:
        text = tomlText(
            tls=serverTLS(certs),
            backends=[
                {"address": recorder.address, "name": "injector", "tls": "explicit", "verify": False}
            ],
        )
        proxy = proxies.start(configText=text, implicit=False)
        reply = _connectReply(proxy)
        assert reply.startswith("421"), reply
        assert recorder.lines() == [b"AUTH TLS"]
        assert "data after 234" in proxy.log()
    finally:
        recorder.close()


# -- TLS settings ------------------------------------------------------------------


def test_minimumVersion13(
    proxies: Proxies, clearBackend: Backend, certs: CertificatePaths
):
    """
    C{--tls-min-version 1.3} refuses a client that speaks TLS 1.2 at most,
    on both listeners, and serves TLS 1.3.
    """
    proxy = proxies.start(
        "--backend", clearBackend.address, *tlsArguments(certs), "--tls-min-version", "1.3"
    )
    oldContext = clientContext(certs.ca)
    oldContext.maximum_version = ssl.TLSVersion.TLSv1_2

    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        assert s.recv(4096).startswith(b"220")
        s.sendall(b"AUTH TLS\r\n")
        assert s.recv(4096).startswith(b"234")
        with pytest.raises(ssl.SSLError):
            oldContext.wrap_socket(s, server_hostname=proxy.host)

    with socket.create_connection((proxy.host, proxy.implicitPort), timeout=10) as s:
        with pytest.raises(ssl.SSLError):
            oldContext.wrap_socket(s, server_hostname=proxy.host)

    with ftpsSession(proxy.host, proxy.port, certs.ca, resuming=True) as ftp:
        assert ftp.sock.version() == "TLSv1.3"
        assert FETCH in ftp.nlst()


def test_maximumVersion12(
    proxies: Proxies, clearBackend: Backend, certs: CertificatePaths, tmp_path: Path
):
    """
    C{--tls-max-version 1.2} gives curl TLS 1.2 on control and data, with
    the cipher C{--tls-ciphers} names; with
    C{--require-session-reuse} too, TLS 1.2 session ids resume, for
    several transfers in one session.
    """
    proxy = proxies.start(
        "--backend",
        clearBackend.address,
        *tlsArguments(certs),
        "--tls-max-version",
        "1.2",
        "--tls-ciphers",
        TLS12_CIPHER,
        "--require-session-reuse",
    )
    downloads = [tmp_path / "first.bin", tmp_path / "second.bin"]
    for implicit in (False, True):
        port = proxy.implicitPort if implicit else proxy.port
        url = ftpsURL(proxy.host, port, FETCH, implicit=implicit)
        # Two transfers in one session: both data connections resume.
        result = curlFTPS(
            url, "-o", str(downloads[0]), url, "-o", str(downloads[1]), ca=certs.ca
        )
        connections = re.findall(r"\* SSL connection using (\S+) / (\S+)", result.stderr)
        assert connections == [("TLSv1.2", TLS12_CIPHER)] * 3, result.stderr
        assert all(sha256File(d) == clearBackend.sha256(FETCH) for d in downloads)

    with ftpsSession(proxy.host, proxy.port, certs.ca, resuming=True) as ftp:
        assert ftp.sock.version() == "TLSv1.2"
        assert FETCH in ftp.nlst()
        [data] = ftp.dataConnections
        assert data.version == "TLSv1.2" and data.resumed


def test_clientCertificateRequired(
    proxies: Proxies, clearBackend: Backend, certs: CertificatePaths, tmp_path: Path
):
    """
    With C{client_certificate = "require"}, a client without a certificate
    is refused, and curl with the development client certificate gets in.
    """
    text = tomlText(
        tls=serverTLS(certs, client_certificate="require", client_ca=str(certs.ca)),
        backends=[{"address": clearBackend.address, "name": "clear"}],
    )
    proxy = proxies.start(configText=text)
    url = ftpsURL(proxy.host, proxy.port, FETCH)
    download = tmp_path / "download.bin"

    refused = curlFTPS(url, "-o", str(download), ca=certs.ca, check=False)
    assert refused.returncode != 0
    assert not any(reply.startswith("230") for reply in refused.replies), refused.stderr

    with socket.create_connection((proxy.host, proxy.implicitPort), timeout=10) as s:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with clientContext(certs.ca).wrap_socket(s, server_hostname=proxy.host) as tls:
                # TLS 1.3: the refusal arrives after the client's Finished.
                tls.recv(4096)

    for implicit in (False, True):
        port = proxy.implicitPort if implicit else proxy.port
        accepted = curlFTPS(
            ftpsURL(proxy.host, port, FETCH, implicit=implicit),
            "--cert",
            str(certs.clientCert),
            "--key",
            str(certs.clientKey),
            "-o",
            str(download),
            ca=certs.ca,
        )
        assert sha256File(download) == clearBackend.sha256(FETCH)
        assert curlDataHandshakes(accepted) == 1


# -- close_notify ----------------------------------------------------------------


class _StrictEOFSession(ResumingTLSSession):
    """
    Data connections that raise on a TCP close without close_notify
    instead of treating it as the end of the data.
    """

    def wrapData(self, connection: socket.socket) -> ssl.SSLSocket:
        return self.context.wrap_socket(
            connection,
            server_hostname=self.host,
            session=self.sock.session,
            suppress_ragged_eofs=False,
        )


@pytest.mark.parametrize("mode", MODES)
def test_closeNotifyOnDownload(
    tlsProxy: TLSProxy, clearBackend: Backend, certs: CertificatePaths, mode: str
):
    """
    A protected download ends with the proxy's close_notify: the client
    reads to a clean end of TLS data and its own shutdown succeeds.
    """
    ftp = _StrictEOFSession(context=clientContext(certs.ca), timeout=20)
    ftp.useEpsv = mode == "epsv"
    with ftp:
        ftp.connect(tlsProxy.host, tlsProxy.port)
        ftp.login("user", "secret")
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        connection, _ = ftp.ntransfercmd(f"RETR {FETCH}")
        chunks = []
        # SSLEOFError here would be a ragged EOF (TCP closed without
        # close_notify); b"" is a clean close_notify.
        while chunk := connection.recv(65536):
            chunks.append(chunk)
        plain = connection.unwrap()
        plain.close()
        assert ftp.voidresp().startswith("226")
        assert sha256Bytes(b"".join(chunks)) == clearBackend.sha256(FETCH)
