"""
Tests for L{ftpproxy.app.demo}: the in-process FTP backends of C{--demo}.

Sessions run Python's ftplib in a thread (deferToThread) against backends
on the running reactor, so client and server really talk over loopback.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import socket
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor as globalReactor
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread

from ftpproxy.app.demo import (
    SAMPLE_SIZE,
    DemoBackends,
    DemoBackendsService,
    sampleBytes,
    stripTelnet,
    writeSampleFiles,
)

TIMEOUT = 10


def _connect(address: tuple[str, int]) -> ftplib.FTP:
    client = ftplib.FTP(timeout=TIMEOUT)
    client.connect(*address)
    return client


def _sha256OfDownload(client: ftplib.FTP, path: str) -> str:
    digest = hashlib.sha256()
    client.retrbinary(f"RETR {path}", digest.update)
    return digest.hexdigest()


def _welcome(address: tuple[str, int]) -> str:
    with _connect(address) as client:
        return client.getwelcome()


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def backends() -> Iterator[DemoBackends]:
    demo = DemoBackends(globalReactor)
    demo.start()
    yield demo
    pytest_twisted.blockon(demo.stop())


# -- sample files ------------------------------------------------------------


def test_writeSampleFiles(tmp_path: Path) -> None:
    """
    The sample tree holds a README naming the backend, whoami.txt with
    exactly the name, 1 MiB of deterministic bytes and an empty upload/.
    """
    writeSampleFiles(tmp_path / "b", "backend-7")
    root = tmp_path / "b"
    assert "backend-7" in (root / "README.txt").read_text()
    assert (root / "whoami.txt").read_bytes() == b"backend-7\n"
    sample = (root / "pub" / "sample.bin").read_bytes()
    assert len(sample) == SAMPLE_SIZE == 1024 * 1024
    assert sample == sampleBytes()
    assert len(set(sample[:4096])) > 200  # not a run of one byte
    assert list((root / "upload").iterdir()) == []


def test_sampleBytesDeterministic() -> None:
    """
    The same size gives the same bytes; shorter is a prefix of longer.
    """
    assert sampleBytes(100) == sampleBytes(100)
    assert sampleBytes(1000)[:100] == sampleBytes(100)
    assert len(sampleBytes(33)) == 33


@pytest.mark.parametrize(
    "raw, clean",
    [
        (b"\xff\xf4\xff\xf2ABOR", b"ABOR"),
        (b"STOR a\xff\xffb", b"STOR a\xffb"),
        (b"\xff\xfb\x01NOOP", b"NOOP"),
        (b"NOOP\xff", b"NOOP"),
        (b"PWD", b"PWD"),
        (b"\xff\xf4\xffABOR", b"ABOR"),  # DM went out of band
    ],
)
def test_stripTelnet(raw: bytes, clean: bytes) -> None:
    """
    Telnet commands go, an escaped 0xFF stays as one byte.
    """
    assert stripTelnet(raw) == clean


# -- without a real reactor --------------------------------------------------


def test_startListensOnPortZeroPerBackend() -> None:
    """
    start() listens once per backend on an OS-chosen port of the given
    interface, and creates one directory per backend and the uploads
    directory they share.
    """
    reactor = MemoryReactor()
    demo = DemoBackends(reactor, count=3, interface="127.0.0.2")
    addresses = demo.start()
    try:
        assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
            (0, "127.0.0.2")
        ] * 3
        assert [host for host, _ in addresses] == ["127.0.0.2"] * 3
        assert demo.directory is not None
        assert sorted(p.name for p in demo.directory.iterdir()) == [
            "backend-1",
            "backend-2",
            "backend-3",
            "uploads",
        ]
        assert (demo.directory / "backend-2" / "upload").resolve() == (
            demo.directory / "uploads"
        ).resolve()
        assert (demo.directory / "backend-3" / "whoami.txt").read_text() == (
            "backend-3\n"
        )
    finally:
        stopped = demo.stop()
    assert stopped.called
    assert not demo.directory.exists()


def test_stopKeepsGivenBaseDirectory(tmp_path: Path) -> None:
    """
    A directory the caller gave is theirs: stop() leaves it in place.
    """
    demo = DemoBackends(MemoryReactor(), baseDirectory=tmp_path)
    demo.start()
    assert (tmp_path / "backend-2" / "pub" / "sample.bin").is_file()
    stopped = demo.stop()
    assert stopped.called
    assert (tmp_path / "backend-1" / "README.txt").is_file()


def test_countMustBePositive() -> None:
    with pytest.raises(ValueError):
        DemoBackends(MemoryReactor(), count=0)


# -- real sessions -----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_backendsGreetAndNameThemselves(backends: DemoBackends):
    """
    Every backend greets with 220, and whoami.txt names the backend that
    served the session.
    """

    def session(address: tuple[str, int]) -> tuple[str, bytes]:
        with _connect(address) as client:
            welcome = client.getwelcome()
            client.login()
            whoami = io.BytesIO()
            client.retrbinary("RETR whoami.txt", whoami.write)
            return welcome, whoami.getvalue()

    assert len(backends.addresses) == 2
    results = []
    for address in backends.addresses:
        results.append((yield deferToThread(session, address)))
    assert [welcome[:4] for welcome, _ in results] == ["220 "] * 2
    assert "backend-1" in results[0][0]
    assert [whoami for _, whoami in results] == [b"backend-1\n", b"backend-2\n"]


@pytest_twisted.inlineCallbacks
def test_anonymousReadsButCannotWrite(backends: DemoBackends):
    """
    Anonymous users list and download, get 550 for uploads and directory
    changes, and leave no file behind.
    """
    assert backends.directory is not None
    root = backends.directory / "backend-2"
    expected = hashlib.sha256((root / "pub" / "sample.bin").read_bytes()).hexdigest()

    def session() -> tuple[list[str], str, str, str]:
        with _connect(backends.addresses[1]) as client:
            client.login("anonymous", "someone@example.invalid")
            names = client.nlst()
            digest = _sha256OfDownload(client, "pub/sample.bin")
            with pytest.raises(ftplib.error_perm) as stor:
                client.storbinary("STOR upload/x.bin", io.BytesIO(b"nope"))
            with pytest.raises(ftplib.error_perm) as mkd:
                client.mkd("upload/newdir")
            return names, digest, str(stor.value), str(mkd.value)

    names, digest, storError, mkdError = yield deferToThread(session)
    assert {"README.txt", "whoami.txt", "pub", "upload"} <= set(names)
    assert digest == expected
    assert storError.startswith("550")
    assert mkdError.startswith("550")
    assert list((root / "upload").iterdir()) == []


@pytest_twisted.inlineCallbacks
def test_demoUserUploads(backends: DemoBackends):
    """
    demo/demo stores into upload/ of the same tree anonymous users read.
    """
    assert backends.directory is not None
    payload = sampleBytes(300_000)[::-1]

    def session() -> str:
        with _connect(backends.addresses[0]) as client:
            client.login("demo", "demo")
            reply = client.storbinary("STOR upload/mine.bin", io.BytesIO(payload))
            return reply

    reply = yield deferToThread(session)
    assert reply.startswith("226")
    stored = backends.directory / "backend-1" / "upload" / "mine.bin"
    assert stored.read_bytes() == payload


@pytest_twisted.inlineCallbacks
def test_badLoginsLookAlike(backends: DemoBackends):
    """
    A wrong password and an unknown user get the same 530 reply.
    """

    def attempt(user: str, password: str) -> str:
        with _connect(backends.addresses[0]) as client:
            with pytest.raises(ftplib.error_perm) as failure:
                client.login(user, password)
            return str(failure.value)

    wrongPassword = yield deferToThread(attempt, "demo", "wrong")
    unknownUser = yield deferToThread(attempt, "nobody", "demo")
    assert wrongPassword.startswith("530")
    assert wrongPassword == unknownUser


def _retrieveOver(
    client: ftplib.FTP, dataAddress: tuple[str, int], path: str
) -> tuple[bytes, str]:
    """
    Connect to a passive data address first (Twisted's server reads no
    further command until it has), then RETR; return the data and the
    final reply.
    """
    with socket.create_connection(dataAddress, TIMEOUT) as data:
        client.putcmd(f"RETR {path}")
        preliminary = client.getresp()
        assert preliminary.startswith(("125", "150")), preliminary
        received = b""
        while chunk := data.recv(65536):
            received += chunk
    return received, client.getresp()


@pytest_twisted.inlineCallbacks
def test_epsvAndPasvOnBackendAddress():
    """
    EPSV works (the proxy prefers it) as well as PASV, and passive ports
    listen on the backend's own address, not on all interfaces.
    """
    demo = DemoBackends(globalReactor, count=1, interface="127.0.0.2")
    (address,) = demo.start()
    try:

        def session() -> list[tuple[str, bytes, str]]:
            results = []
            with _connect(address) as client:
                client.login()
                client.voidcmd("TYPE I")
                epsv = client.sendcmd("EPSV")
                port = int(epsv.split("|||")[1].split("|")[0])
                epsvData = ("127.0.0.2", port)
                results.append((epsv, *_retrieveOver(client, epsvData, "whoami.txt")))
                pasv = client.sendcmd("PASV")
                pasvData = ftplib.parse227(pasv)
                results.append((pasv, *_retrieveOver(client, pasvData, "whoami.txt")))
            return results

        (epsv, viaEpsv, epsvFinal), (pasv, viaPasv, pasvFinal) = yield deferToThread(
            session
        )
    finally:
        yield demo.stop()
    assert address[0] == "127.0.0.2"
    assert epsv.startswith("229 ")
    assert pasv.startswith("227 ") and "(127,0,0,2," in pasv
    assert viaEpsv == viaPasv == b"backend-1\n"
    assert epsvFinal.startswith("226") and pasvFinal.startswith("226")


@pytest_twisted.inlineCallbacks
def test_aborWithTelnetPreamble(backends: DemoBackends):
    """
    ABOR preceded by Telnet IP/DM (as lftp sends it) gets a 226 and
    leaves the session usable; Twisted's server alone would not answer.
    """

    def session() -> tuple[str, str]:
        with _connect(backends.addresses[0]) as client:
            client.login()
            client.sock.sendall(b"\xff\xf4\xff\xf2ABOR\r\n")
            abor = client.getresp()
            return abor, client.sendcmd("NOOP")

    abor, noop = yield deferToThread(session)
    assert abor.startswith("226 ")
    assert noop.startswith("200 ")


@pytest_twisted.inlineCallbacks
def test_stopClosesListenersSessionsAndDirectory():
    """
    stop() closes the listeners and open sessions, then removes the
    temporary directory.
    """
    demo = DemoBackends(globalReactor)
    addresses = demo.start()
    directory = demo.directory
    assert directory is not None and directory.is_dir()
    client = yield deferToThread(_connect, addresses[0])
    try:
        yield deferToThread(client.login, "demo", "demo")
        yield demo.stop()
        with pytest.raises((EOFError, OSError)):
            yield deferToThread(client.sendcmd, "NOOP")
    finally:
        client.close()
    refused = yield deferToThread(lambda: [_refused(a) for a in addresses])
    assert refused == [True, True]
    assert not directory.exists()
    assert demo.addresses == []


@pytest_twisted.inlineCallbacks
def test_service():
    """
    The service fills addresses on start and undoes everything on stop.
    """
    service = DemoBackendsService(DemoBackends(globalReactor, count=2))
    service.startService()
    try:
        assert service.running
        assert len(service.addresses) == 2
        directory = service.backends.directory
        welcome = yield deferToThread(_welcome, service.addresses[1])
        assert welcome.startswith("220 ") and "backend-2" in welcome
    finally:
        yield service.stopService()
    assert not service.running
    assert service.addresses == []
    assert directory is not None and not directory.exists()


@pytest_twisted.inlineCallbacks
def test_backendsShareTheUploadDirectory(backends: DemoBackends) -> Iterator[object]:
    """
    A file stored through one backend is listed and served by the other,
    as cluster nodes sharing one repository do.
    """
    first, second = backends.addresses
    payload = sampleBytes(5000)

    def store() -> None:
        with _connect(first) as client:
            client.login("demo", "demo")
            client.storbinary("STOR upload/shared.bin", io.BytesIO(payload))

    def fetch() -> tuple[list[str], bytes]:
        with _connect(second) as client:
            client.login()
            names = client.nlst("upload")
            data = io.BytesIO()
            client.retrbinary("RETR upload/shared.bin", data.write)
            return names, data.getvalue()

    yield deferToThread(store)
    names, data = yield deferToThread(fetch)
    assert any(name.endswith("shared.bin") for name in names)
    assert data == payload
    assert (backends.directory / "uploads" / "shared.bin").read_bytes() == payload
