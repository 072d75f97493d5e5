"""
Capture the ClientHello of real FTPS clients, for the parser's test data.

    python -m tests.support.capturehello tests/data/clienthello

For each client it listens on a loopback port, plays just enough FTP to get
an explicit FTPS client to send AUTH TLS (or none, for a client that starts
TLS at once), records the bytes the client sends until its ClientHello is
complete, and hangs up.  Each capture is written as NAME.bin: the raw bytes
as they came off the socket, possibly in more than one TLS record.

The clients and their versions are whatever the machine has; the file
tests/data/clienthello/README.md says which ones made the stored files.
"""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from ftpproxy.tls.devcerts import makeCertificates
from ftpproxy.wire.clienthello import ClientHelloReader

HOST = "127.0.0.1"
TIMEOUT = 10.0

FEATURES = b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End\r\n"


def _recordHello(connection: socket.socket) -> bytes:
    reader = ClientHelloReader()
    captured = bytearray()
    while reader.result is None:
        chunk = connection.recv(65536)
        if not chunk:
            raise RuntimeError(f"client hung up after {len(captured)} bytes")
        captured += chunk
        reader.feed(chunk)
    return bytes(captured)


def _serveOnce(listener: socket.socket, explicit: bool) -> bytes:
    connection, _ = listener.accept()
    connection.settimeout(TIMEOUT)
    with connection:
        if explicit:
            connection.sendall(b"220 capture ready\r\n")
            lines = connection.makefile("rb")
            while True:
                line = lines.readline()
                if not line:
                    raise RuntimeError("client hung up before AUTH")
                verb = line.split()[0].upper() if line.split() else b""
                if verb == b"AUTH":
                    connection.sendall(b"234 go ahead\r\n")
                    break
                if verb == b"FEAT":
                    connection.sendall(FEATURES)
                else:
                    connection.sendall(b"502 not here\r\n")
        return _recordHello(connection)


def capture(run: Callable[[int], subprocess.Popen | None], explicit: bool) -> bytes:
    """
    Listen, start the client with C{run(port)}, and return what it sent.
    """
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        process = run(port)
        try:
            return _serveOnce(listener, explicit)
        finally:
            if process is not None:
                process.kill()
                process.communicate()


def _spawn(*command: str) -> Callable[[int], subprocess.Popen]:
    def run(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [part.format(port=port) for part in command],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return run


def _ftplib(port: int) -> None:
    def client() -> None:
        try:
            with ftplib.FTP_TLS(timeout=TIMEOUT) as ftp:
                ftp.connect(HOST, port)
                ftp.auth()
        except (OSError, ftplib.Error, EOFError):
            pass

    threading.Thread(target=client, daemon=True).start()
    return None


def _tlsServer(certificates) -> tuple[socket.socket, ssl.SSLContext]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.serverCert, certificates.serverKey)
    listener = socket.create_server((HOST, 0))
    return listener, context


def _opensslResuming(directory: Path, certificates, version: str) -> bytes:
    """
    An C{openssl s_client} that resumes the session it got from a real TLS
    server (a TLS 1.3 pre-shared key, or a TLS 1.2 session ticket).
    """
    listener, context = _tlsServer(certificates)
    port = listener.getsockname()[1]
    sessionFile = directory / f"session-{version}.pem"

    def serve() -> None:
        connection, _ = listener.accept()
        with context.wrap_socket(connection, server_side=True) as tls:
            tls.sendall(b"hello\n")
            tls.recv(100)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    subprocess.run(
        ["openssl", "s_client", f"-{version}", "-connect", f"{HOST}:{port}",
         "-sess_out", str(sessionFile), "-ign_eof"],
        input=b"bye\n",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    server.join(TIMEOUT)
    listener.close()
    return capture(
        _spawn("openssl", "s_client", f"-{version}", "-connect", HOST + ":{port}",
               "-sess_in", str(sessionFile)),
        explicit=False,
    )


def main(outDirectory: str) -> None:
    out = Path(outDirectory)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="capturehello-"))
    certificates = makeCertificates(scratch / "certs")
    clients: dict[str, tuple[Callable[[int], object], bool]] = {
        "curl": (_spawn("curl", "-s", "--ssl-reqd", "-k", "ftp://127.0.0.1:{port}/"), True),
        "curl-sni": (_spawn("curl", "-s", "--ssl-reqd", "-k", "ftp://localhost:{port}/"), True),
        "lftp": (
            _spawn("lftp", "-c", "set ssl:verify-certificate no; set ftp:ssl-force yes; "
                   "set net:max-retries 1; open ftp://user:secret@127.0.0.1:{port}; ls"),
            True,
        ),
        "wget": (
            _spawn("wget", "-q", "--no-check-certificate", "-O", os.devnull,
                   "ftps://127.0.0.1:{port}/x"),
            True,
        ),
        "ftplib": (_ftplib, True),
        "openssl-s_client": (_spawn("openssl", "s_client", "-connect", "127.0.0.1:{port}"), False),
        "gnutls-cli": (
            _spawn("gnutls-cli", "--insecure", "-p", "{port}", "127.0.0.1"),
            False,
        ),
    }
    for name, (run, explicit) in clients.items():
        data = capture(run, explicit)  # type: ignore[arg-type]
        (out / f"{name}.bin").write_bytes(data)
        print(f"{name}: {len(data)} bytes")
    for version in ("tls1_3", "tls1_2"):
        data = _opensslResuming(scratch, certificates, version)
        name = f"openssl-s_client-resuming-{version.replace('_', '.')}"
        (out / f"{name}.bin").write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
