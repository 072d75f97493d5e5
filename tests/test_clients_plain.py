"""
The proxy with real clients (curl, lftp, ftplib) in front of real pyftpdlib
backends, over plain FTP: listings, transfers in both passive modes, resume,
append, unique store, ASCII vs binary, load balancing, data connection
security and a dying backend.
"""

from __future__ import annotations

import ftplib
import select
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.backends import BIG, NOTES, WHOAMI, Backend
from tests.support.clients import (
    EpsvFTP,
    connectFrom,
    curl,
    ftpSession,
    ftpURL,
    lftp,
    retrieveBytes,
    storeBytes,
)
from tests.support.files import MiB, sha256Bytes, sha256File, writeRandomFile
from tests.support.proxy import ProxyProcess
from tests.support.workers import TWO_WORKERS, assertSpreadOverWorkers

MODES = ["pasv", "epsv"]
ROOT_NAMES = {BIG, NOTES, WHOAMI}
OTHER_MODE = {"pasv": "EPSV", "epsv": "PASV"}

# Bytes that a text-mode conversion anywhere would change.
MIXED = b"one\r\ntwo\nthree\rfour\x00\xff\xfe\xff\xff\r\n\xffend\n"


def backendNamed(backends: Sequence[Backend], whoami: bytes | str) -> Backend:
    """
    The backend whose C{whoami.txt} holds C{whoami}.
    """
    if isinstance(whoami, bytes):
        whoami = whoami.decode()
    [backend] = [b for b in backends if b.name == whoami.strip()]
    return backend


def holders(backends: Sequence[Backend], name: str) -> list[Backend]:
    """
    The backends that have a file called C{name} in their root.
    """
    return [b for b in backends if b.path(name).exists()]


def assertPassiveMode(verbs: Sequence[str], mode: str) -> None:
    """
    The client used the passive command of C{mode} and never the other one.
    """
    assert mode.upper() in verbs
    assert OTHER_MODE[mode] not in verbs


@pytest.fixture
def soloBackend(startBackend: Callable[..., Backend]) -> Backend:
    """
    A single backend, for tests about transfer mechanics.
    """
    return startBackend("solo", "127.0.0.4")


@pytest.fixture
def soloProxy(
    startProxy: Callable[..., ProxyProcess], soloBackend: Backend
) -> ProxyProcess:
    """
    The proxy in front of C{soloBackend} only, so that every session lands
    on a known backend.
    """
    return startProxy(backends=[soloBackend])


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def anyProxy(
    request: pytest.FixtureRequest, startProxy: Callable[..., ProxyProcess]
) -> Iterator[ProxyProcess]:
    """
    The proxy in front of C{twoBackends}, as one process and with two
    worker processes (whose sessions, at teardown, must have spread over
    both).
    """
    if request.param == 1:
        yield startProxy()
        return
    proxy = startProxy(*TWO_WORKERS)
    yield proxy
    assertSpreadOverWorkers(proxy.host, proxy.port, proxy.log)


@pytest.mark.parametrize("mode", MODES)
def test_listings(anyProxy: ProxyProcess, twoBackends: Sequence[Backend], mode: str):
    """
    LIST, NLST and MLSD work through the proxy with every client, in both
    passive modes (and with worker processes).
    """
    proxy = anyProxy
    url = ftpURL(proxy.host, proxy.port, "")

    listing = curl(url, mode=mode)
    assertPassiveMode(listing.verbs(), mode)
    assert "LIST" in listing.verbs()
    assert "big.bin" in listing.stdout.decode()
    assert str(8 * MiB) in listing.stdout.decode()

    names = curl("-l", url, mode=mode)
    assert "NLST" in names.verbs()
    assert set(names.stdout.decode().split()) == ROOT_NAMES

    with ftpSession(proxy.host, proxy.port, mode=mode) as ftp:
        assert set(ftp.nlst()) == ROOT_NAMES
        facts = dict(ftp.mlsd())
        assert set(facts) == ROOT_NAMES
        assert facts[BIG]["size"] == str(8 * MiB)
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        assert len(lines) == 3
        assert all(line.startswith("-rw") for line in lines)

    result = lftp(
        proxy.host,
        proxy.port,
        ["cls -1", "echo ---", "nlist", "echo ---", "ls"],
        mode=mode,
        settings={"ftp:use-mlsd": "on"},
    )
    assertPassiveMode(result.verbs(), mode)
    assert {"MLSD", "NLST", "LIST"} <= set(result.verbs())
    mlsd, nlst, ls = result.stdout.decode().split("---\n")
    assert set(mlsd.split()) == ROOT_NAMES
    assert set(nlst.split()) == ROOT_NAMES
    assert len(ls.splitlines()) == 3


@pytest.mark.parametrize(
    "client, mode, workers",
    [(client, mode, 1) for client in ("curl", "ftplib", "lftp") for mode in MODES]
    + [("curl", "pasv", 2), ("ftplib", "epsv", 2), ("lftp", "epsv", 2)],
)
def test_bigTransfers(
    startProxy: Callable[..., ProxyProcess],
    twoBackends: Sequence[Backend],
    tmp_path: Path,
    client: str,
    mode: str,
    workers: int,
):
    """
    An 8 MiB download and an 8 MiB upload, in one session, arrive intact and
    go to the backend that the session's C{whoami.txt} names (with worker
    processes too, each with its own slice of the passive ports).
    """
    proxy = startProxy(*(TWO_WORKERS if workers == 2 else ()))
    upload = writeRandomFile(tmp_path / "upload.bin", 8 * MiB)
    download = tmp_path / "download.bin"
    remote = f"up-{client}-{mode}.bin"

    if client == "curl":
        # One curl run, one connection: upload, whoami, download.
        # curl pairs -T and -o with URLs in order; whoami goes to stdout.
        result = curl(
            "-T",
            str(upload),
            "-o",
            "/dev/null",
            ftpURL(proxy.host, proxy.port, remote),
            "-o",
            str(download),
            ftpURL(proxy.host, proxy.port, BIG),
            ftpURL(proxy.host, proxy.port, WHOAMI),
            mode=mode,
        )
        assert result.verbs().count("USER") == 1, result.stderr
        whoami = result.stdout
        verbs = result.verbs()
    elif client == "ftplib":
        with ftpSession(proxy.host, proxy.port, mode=mode) as ftp:
            whoami = retrieveBytes(ftp, WHOAMI)
            download.write_bytes(retrieveBytes(ftp, BIG))
            with upload.open("rb") as f:
                assert ftp.storbinary(f"STOR {remote}", f).startswith("226")
        verbs = ftp.verbs()
    else:
        result = lftp(
            proxy.host,
            proxy.port,
            [
                f"cat {WHOAMI}",
                f"get {BIG} -o {download}",
                f"put {upload} -o {remote}",
            ],
            mode=mode,
        )
        whoami = result.stdout
        verbs = result.verbs()

    assertPassiveMode(verbs, mode)
    backend = backendNamed(twoBackends, whoami)
    assert sha256File(download) == backend.sha256(BIG)
    assert holders(twoBackends, remote) == [backend]
    assert backend.sha256(remote) == sha256File(upload)


def test_resumeDownload(soloProxy: ProxyProcess, soloBackend: Backend, tmp_path: Path):
    """
    REST resumes a download: curl C{-C -} completes a partial file and
    ftplib fetches the tail from an offset.
    """
    original = soloBackend.path(BIG).read_bytes()
    offset = 3 * MiB + 12345
    partial = tmp_path / "partial.bin"
    partial.write_bytes(original[:offset])

    result = curl(
        "-C", "-", "-o", str(partial), ftpURL(soloProxy.host, soloProxy.port, BIG)
    )
    assert f"REST {offset}" in result.commands
    assert sha256File(partial) == sha256Bytes(original)

    with ftpSession(soloProxy.host, soloProxy.port, mode="epsv") as ftp:
        assert retrieveBytes(ftp, BIG, rest=offset) == original[offset:]


def test_resumeUpload(soloProxy: ProxyProcess, soloBackend: Backend, tmp_path: Path):
    """
    An interrupted upload is completed: ftplib with REST + STOR, curl with
    C{-C - -T} (SIZE, then APPE of the rest).
    """
    local = writeRandomFile(tmp_path / "local.bin", 2 * MiB + 7)
    data = local.read_bytes()
    offset = MiB + 3
    soloBackend.path("rest.bin").write_bytes(data[:offset])
    soloBackend.path("curl.bin").write_bytes(data[:offset])

    with ftpSession(soloProxy.host, soloProxy.port) as ftp, local.open("rb") as f:
        f.seek(offset)
        reply = ftp.storbinary("STOR rest.bin", f, rest=offset)
        assert reply.startswith("226")
    assert soloBackend.path("rest.bin").read_bytes() == data

    result = curl(
        "-C", "-", "-T", str(local), ftpURL(soloProxy.host, soloProxy.port, "curl.bin")
    )
    assert "SIZE curl.bin" in result.commands
    assert soloBackend.path("curl.bin").read_bytes() == data


def test_appendAndUniqueStore(
    soloProxy: ProxyProcess, soloBackend: Backend, tmp_path: Path
):
    """
    APPE (curl C{--append}) extends a file; STOU stores under a name the
    backend chooses and reports in its 1xx reply.
    """
    head = b"first part\n" * 1000
    tail = writeRandomFile(tmp_path / "tail.bin", 300_000)
    soloBackend.path("log.bin").write_bytes(head)

    result = curl(
        "--append", "-T", str(tail), ftpURL(soloProxy.host, soloProxy.port, "log.bin")
    )
    assert "APPE" in result.verbs()
    assert soloBackend.path("log.bin").read_bytes() == head + tail.read_bytes()

    content = b"unique content \xff\r\n" * 5000
    with ftpSession(soloProxy.host, soloProxy.port, mode="epsv") as ftp:
        ftp.voidcmd("TYPE I")
        host, port = ftp.makepasv()
        with socket.create_connection((host, port), timeout=30) as connection:
            reply = ftp.sendcmd("STOU")
            assert reply.startswith(("125", "150"))
            connection.sendall(content)
        assert ftp.voidresp().startswith("226")
    name = reply.split("FILE:", 1)[1].strip()
    assert soloBackend.path(name).read_bytes() == content
    assert {p.name for p in soloBackend.root.iterdir()} == ROOT_NAMES | {
        "log.bin",
        name,
    }


def _rawRetrieve(ftp: ftplib.FTP, command: str) -> bytes:
    """
    The bytes of a transfer exactly as they come off the data connection.
    """
    chunks: list[bytes] = []
    connection = ftp.transfercmd(command)
    with connection:
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    ftp.voidresp()
    return b"".join(chunks)


def test_asciiAndBinary(soloProxy: ProxyProcess, soloBackend: Backend):
    """
    The proxy passes data through unchanged in both types: TYPE I gives the
    file's exact bytes (CRLF, bare CR, 0xFF), TYPE A gives what the backend
    itself sends in TYPE A, and listings work in TYPE A.
    """
    soloBackend.path("mixed.bin").write_bytes(MIXED)

    def transfers(host: str, port: int) -> tuple[bytes, bytes, bytes, list[str]]:
        with ftpSession(host, port, mode="epsv") as ftp:
            ftp.voidcmd("TYPE A")
            ascii = _rawRetrieve(ftp, "RETR mixed.bin")
            listing: list[str] = []
            ftp.retrlines("NLST", listing.append)
            ftp.voidcmd("TYPE I")
            binary = _rawRetrieve(ftp, "RETR mixed.bin")
            ftp.voidcmd("TYPE A")
            ftp.voidcmd("TYPE I")
            again = _rawRetrieve(ftp, "RETR mixed.bin")
        return ascii, binary, again, listing

    viaProxy = transfers(soloProxy.host, soloProxy.port)
    direct = transfers(soloBackend.host, soloBackend.port)
    ascii, binary, again, listing = viaProxy
    assert binary == again == MIXED
    assert ascii == direct[0]
    assert "mixed.bin" in listing

    result = curl("--use-ascii", ftpURL(soloProxy.host, soloProxy.port, "mixed.bin"))
    assert "TYPE A" in result.commands
    directCurl = curl("--use-ascii", ftpURL(soloBackend.host, soloBackend.port, "mixed.bin"))
    assert result.stdout == directCurl.stdout


def test_sessionsSpread(proxy: ProxyProcess, twoBackends: Sequence[Backend]):
    """
    Ten concurrent sessions alternate between the two backends, starting
    with the first (round robin).
    """
    sessions: list[EpsvFTP] = []
    try:
        for _ in range(10):
            sessions.append(ftpSession(proxy.host, proxy.port))
        names = [retrieveBytes(ftp, WHOAMI).decode().strip() for ftp in sessions]
    finally:
        for ftp in sessions:
            ftp.close()
    assert Counter(names) == {"alpha": 5, "beta": 5}
    assert names == ["alpha", "beta"] * 5


def test_twentyTransfersPerSession(
    anyProxy: ProxyProcess, twoBackends: Sequence[Backend]
):
    """
    Two concurrent sessions on different backends each do twenty mixed
    transfers, alternating PASV and EPSV: every upload lands only on the
    session's own backend and every download comes from it.
    """
    proxy = anyProxy
    with ftpSession(proxy.host, proxy.port) as first, ftpSession(
        proxy.host, proxy.port
    ) as second:
        sessions = {
            "first": (first, backendNamed(twoBackends, retrieveBytes(first, WHOAMI))),
            "second": (
                second,
                backendNamed(twoBackends, retrieveBytes(second, WHOAMI)),
            ),
        }
        assert sessions["first"][1] is not sessions["second"][1]
        uploads: dict[str, list[tuple[str, bytes]]] = {"first": [], "second": []}
        for i in range(20):
            for label, (ftp, backend) in sessions.items():
                ftp.useEpsv = i % 2 == 1
                if i % 4 in (0, 1):
                    name = f"{label}-{i}.bin"
                    data = f"{label} {i}\n".encode() * (1000 + i)
                    assert storeBytes(ftp, name, data).startswith("226")
                    uploads[label].append((name, data))
                elif i % 4 == 2:
                    assert retrieveBytes(ftp, WHOAMI).decode().strip() == backend.name
                else:
                    assert sha256Bytes(retrieveBytes(ftp, BIG)) == backend.sha256(BIG)

    for label, (_, backend) in sessions.items():
        assert len(uploads[label]) == 10
        for name, data in uploads[label]:
            assert holders(twoBackends, name) == [backend]
            assert backend.path(name).read_bytes() == data


def _passivePort(ftp: ftplib.FTP, mode: str) -> int:
    """
    Send PASV or EPSV by hand and return the port the reply names.
    """
    if mode == "pasv":
        return ftplib.parse227(ftp.sendcmd("PASV"))[1]
    return ftplib.parse229(ftp.sendcmd("EPSV"), ftp.sock.getpeername())[1]


@pytest.mark.parametrize("mode", MODES)
def test_foreignDataConnectionRefused(
    proxy: ProxyProcess, twoBackends: Sequence[Backend], mode: str
):
    """
    A data connection to the session's passive port from another address
    (127.0.0.5) is closed without data; the real client then connects from
    its control address and gets its file.
    """
    with ftpSession(proxy.host, proxy.port) as ftp:
        ftp.voidcmd("TYPE I")
        port = _passivePort(ftp, mode)
        assert port in proxy.passivePorts

        try:
            thief = connectFrom("127.0.0.5", proxy.host, port)
        except ConnectionRefusedError:
            stolen = b""
        else:
            with thief:
                try:
                    stolen = thief.recv(65536)
                except ConnectionResetError:
                    stolen = b""
                except socket.timeout:
                    pytest.fail("the proxy kept the foreign data connection open")
        assert stolen == b""

        with socket.create_connection((proxy.host, port), timeout=10) as data:
            assert ftp.sendcmd(f"RETR {WHOAMI}").startswith(("125", "150"))
            received = b""
            while chunk := data.recv(4096):
                received += chunk
        assert ftp.voidresp().startswith("226")
        backend = backendNamed(twoBackends, received)
        assert retrieveBytes(ftp, WHOAMI) == backend.path(WHOAMI).read_bytes()


def test_backendKilled(soloProxy: ProxyProcess, soloBackend: Backend):
    """
    When the session's backend dies, the client gets a 421 reply and the
    proxy closes the control connection.
    """
    with ftpSession(soloProxy.host, soloProxy.port) as ftp:
        assert retrieveBytes(ftp, WHOAMI) == b"solo\n"
        soloBackend.kill()
        # The proxy may announce the 421 at once or as the reply to the next
        # command; either is fine.
        readable, _, _ = select.select([ftp.sock], [], [], 2)
        with pytest.raises(ftplib.error_temp, match="^421"):
            if readable:
                ftp.getresp()
            else:
                ftp.sendcmd("NOOP")
        assert ftp.file.read() == "", "the proxy kept the control connection open"
