"""
Development certificates: a throwaway CA, a server certificate and a client
certificate it signed.

The demo and the tests make fresh ones in a directory of their own, so no
private key is ever shared between runs or checked in.  Only the
C{cryptography} package is needed (no C{openssl} command line tool).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Iterable

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The names a development server certificate is valid for: the loopback
#: addresses the tests use as distinct "hosts", and localhost.
DEFAULT_SERVER_NAMES: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    "::1",
    "127.0.0.2",
    "127.0.0.3",
)


@frozen
class CertificatePaths:
    """
    Where L{makeCertificates} wrote each PEM file.

    @ivar ca: the CA certificate, for clients to verify the server (and for
        the server to verify client certificates).
    @ivar caKey: the CA's private key, kept so more certificates can be made.
    @ivar serverCert: the server certificate alone.
    @ivar serverKey: the server's private key alone.
    @ivar serverChainPem: server certificate, then the CA, then the server
        key, in one file: what C{--tls-cert} takes when no C{--tls-key} is
        given.
    @ivar clientCert: a client certificate (extended key usage clientAuth)
        for mutual TLS tests.
    @ivar clientKey: its private key.
    """

    ca: Path
    caKey: Path
    serverCert: Path
    serverKey: Path
    serverChainPem: Path
    clientCert: Path
    clientKey: Path


def _newKey() -> rsa.RSAPrivateKey:
    # RSA rather than ECDSA: the point of the dev certificates is testing all
    # kinds of FTPS clients, old ones included.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _keyPem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certPem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _subjectAltName(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    # Keys are created 0600 from the start rather than chmod-ed afterwards.
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def makeCertificates(
    directory: Path,
    serverNames: Iterable[str] = DEFAULT_SERVER_NAMES,
    validDays: int = 825,
    now: datetime.datetime | None = None,
) -> CertificatePaths:
    """
    Make a development CA and a server and a client certificate signed by it
    in C{directory} (created if missing; existing files are replaced).

    @param serverNames: DNS names and IP addresses put in the server
        certificate's subjectAltName; the first one is also its common name.
    @param validDays: how long the leaf certificates are valid (825 days is
        the longest some clients accept); the CA lives ten years.
    @param now: the start of validity, for tests that need expired
        certificates; defaults to the current time.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    serverNames = list(serverNames)
    if not serverNames:
        raise ValueError("a server certificate needs at least one name")
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    notBefore = now - datetime.timedelta(hours=1)

    caKey = _newKey()
    caName = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ftpproxy development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ftpproxy development CA"),
        ]
    )
    caSKI = x509.SubjectKeyIdentifier.from_public_key(caKey.public_key())
    caCert = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(caSKI, critical=False)
        .sign(caKey, hashes.SHA256())
    )

    def leaf(
        commonName: str,
        usage: x509.ObjectIdentifier,
        extensions: list[x509.ExtensionType],
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = _newKey()
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(
                            NameOID.ORGANIZATION_NAME, "ftpproxy development"
                        ),
                        x509.NameAttribute(NameOID.COMMON_NAME, commonName),
                    ]
                )
            )
            .issuer_name(caName)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore)
            .not_valid_after(now + datetime.timedelta(days=validDays))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(caSKI),
                False,
            )
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(caKey, hashes.SHA256()), key

    serverCert, serverKey = leaf(
        serverNames[0], ExtendedKeyUsageOID.SERVER_AUTH, [_subjectAltName(serverNames)]
    )
    clientCert, clientKey = leaf(
        "ftpproxy test client", ExtendedKeyUsageOID.CLIENT_AUTH, []
    )

    return CertificatePaths(
        ca=_write(directory / "ca.pem", _certPem(caCert)),
        caKey=_write(directory / "ca-key.pem", _keyPem(caKey), private=True),
        serverCert=_write(directory / "server.pem", _certPem(serverCert)),
        serverKey=_write(directory / "server-key.pem", _keyPem(serverKey), True),
        serverChainPem=_write(
            directory / "server-chain-key.pem",
            _certPem(serverCert) + _certPem(caCert) + _keyPem(serverKey),
            private=True,
        ),
        clientCert=_write(directory / "client.pem", _certPem(clientCert)),
        clientKey=_write(directory / "client-key.pem", _keyPem(clientKey), True),
    )
