"""
Tests for the certificate variants of L{ftpproxy.tls.devcerts}: each is
refused by a client that trusts the development CA and checks certificates,
for the reason the variant stands for, and accepted with checks off.

Python's ssl module plays both ends over loopback.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from ftpproxy.tls.devcerts import (
    VARIANTS,
    WRONG_HOST,
    developmentCA,
    makeCertificates,
    makeVariant,
)

REASONS = {
    "expired": "certificate has expired",
    "not-yet-valid": "certificate is not yet valid",
    "wrong-host": "Hostname mismatch",
    "self-signed": "self-signed certificate",
    "unknown-root": "self-signed certificate in certificate chain",
    "missing-intermediate": "unable to get local issuer certificate",
    "weak-key": "key too weak",
}


@pytest.fixture(scope="module")
def caDirectory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("devca")
    makeCertificates(directory)
    return directory


def _handshake(chain: Path, key: Path, client: ssl.SSLContext, name: str = "localhost") -> None:
    """
    One TLS handshake over loopback: a server presenting C{chain}, the
    C{client} context checking it for C{name}; raises what the client
    raises.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that it can load the weak key
    server.load_cert_chain(chain, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                server.wrap_socket(connection, server_side=True).close()
            except (ssl.SSLError, OSError):
                connection.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                client.wrap_socket(raw, server_hostname=name).close()
        finally:
            thread.join(10)


def _verifying(caDirectory: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(caDirectory / "ca.pem"))


def test_theServerCertificateIsAccepted(caDirectory: Path) -> None:
    """
    The control case: the CA's own server certificate passes the same
    checks.
    """
    _handshake(caDirectory / "server.pem", caDirectory / "server-key.pem", _verifying(caDirectory))


@pytest.mark.parametrize("variant", VARIANTS)
def test_refusedByAVerifyingClient(caDirectory: Path, variant: str) -> None:
    """
    Each variant is refused, and for the reason it stands for.
    """
    paths = makeVariant(caDirectory, variant)
    with pytest.raises(ssl.SSLCertVerificationError, match=REASONS[variant]):
        _handshake(paths.chain, paths.key, _verifying(caDirectory))


@pytest.mark.parametrize("variant", VARIANTS)
def test_acceptedWithoutChecks(caDirectory: Path, variant: str) -> None:
    """
    With certificate checks off, every variant works.
    """
    paths = makeVariant(caDirectory, variant)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    _handshake(paths.chain, paths.key, client)


def test_onlyTheFlawIsWrong(caDirectory: Path) -> None:
    """
    Each variant is wrong in its one way only: the wrong-host one passes
    for its own name, the missing intermediate completes the chain, the
    weak key passes at security level 0.
    """
    wrongHost = makeVariant(caDirectory, "wrong-host")
    _handshake(wrongHost.chain, wrongHost.key, _verifying(caDirectory), name=WRONG_HOST)

    missing = makeVariant(caDirectory, "missing-intermediate")
    completed = ssl.create_default_context(cafile=str(caDirectory / "ca.pem"))
    completed.load_verify_locations(cafile=str(caDirectory / "variants" / "intermediate-ca.pem"))
    _handshake(missing.chain, missing.key, completed)

    weak = makeVariant(caDirectory, "weak-key")
    lenient = _verifying(caDirectory)
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    _handshake(weak.chain, weak.key, lenient)
    key = x509.load_pem_x509_certificate(weak.chain.read_bytes()).public_key()
    assert key.key_size == 1024


def test_madeOncePerProcess(caDirectory: Path) -> None:
    """
    Asking again gives the same files, not new keys (a reload must not
    change certificates under running listeners).
    """
    first = makeVariant(caDirectory, "expired")
    before = first.key.read_bytes()
    again = makeVariant(caDirectory, "expired")
    assert again == first and again.key.read_bytes() == before
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"


def test_developmentCAMadeWhenMissing(tmp_path: Path) -> None:
    """
    developmentCA makes the CA in an empty directory and reuses one that
    is there.
    """
    made = developmentCA(tmp_path / "ca")
    assert made.ca.exists() and made.caKey.exists()
    pem = made.ca.read_bytes()
    assert developmentCA(tmp_path / "ca").ca.read_bytes() == pem
    with pytest.raises(ValueError, match="unknown certificate variant"):
        makeVariant(tmp_path / "ca", "nonsense")
