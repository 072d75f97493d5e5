"""
Development certificates: a throwaway CA, a server certificate and a client
certificate it signed, and server certificates that are wrong in one way
each (L{makeVariant}), for testing how clients check certificates.

The demo and the tests make fresh ones in a directory of their own, so no
private key is ever shared between runs or checked in.  Only the
C{cryptography} package is needed (no C{openssl} command line tool).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Optional

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


def _newKey(size: int = 2048) -> rsa.RSAPrivateKey:
    # RSA rather than ECDSA: the point of the dev certificates is testing all
    # kinds of FTPS clients, old ones included.
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


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
    # Keys are created 0600 from the start rather than chmod-ed afterwards,
    # under a temporary name and renamed, so that a reader never sees half
    # a file.
    mode = 0o600 if private else 0o644
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def _name(commonName: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ftpproxy development"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)

_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _caCertificate(
    commonName: str,
    key: rsa.RSAPrivateKey,
    notBefore: datetime.datetime,
    notAfter: datetime.datetime,
    issuer: Optional[tuple[x509.Certificate, rsa.RSAPrivateKey]] = None,
    pathLength: Optional[int] = 1,
) -> x509.Certificate:
    """
    A CA certificate: self-signed (a root) or signed by C{issuer} (an
    intermediate).
    """
    subject = _name(commonName)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathLength), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
        )
    return builder.sign(key if issuer is None else issuer[1], hashes.SHA256())


def _leafCertificate(
    commonName: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey],
    notBefore: datetime.datetime,
    notAfter: datetime.datetime,
    usage: x509.ObjectIdentifier,
    names: Iterable[str] = (),
) -> x509.Certificate:
    """
    An end-entity certificate for C{key}, signed by C{issuer} (a name and
    its key; the leaf's own name and key for a self-signed one).
    """
    issuerName, issuerKey = issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_LEAF_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()), False
        )
    )
    names = list(names)
    if names:
        builder = builder.add_extension(_subjectAltName(names), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


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
    # path length 1: the CA may sign one intermediate (the
    # "missing-intermediate" variant needs one).
    caCert = _caCertificate(
        "ftpproxy development CA", caKey, notBefore, now + datetime.timedelta(days=3650)
    )
    caIssuer = (caCert.subject, caKey)
    validUntil = now + datetime.timedelta(days=validDays)
    serverKey = _newKey()
    serverCert = _leafCertificate(
        serverNames[0],
        serverKey,
        caIssuer,
        notBefore,
        validUntil,
        ExtendedKeyUsageOID.SERVER_AUTH,
        serverNames,
    )
    clientKey = _newKey()
    clientCert = _leafCertificate(
        "ftpproxy test client",
        clientKey,
        caIssuer,
        notBefore,
        validUntil,
        ExtendedKeyUsageOID.CLIENT_AUTH,
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


# -- certificate variants -----------------------------------------------------------

#: The variants L{makeVariant} makes (the names the settings use,
#: L{ftpproxy.settings.tls.CERTIFICATE_VARIANTS}).
VARIANTS: tuple[str, ...] = (
    "expired",
    "not-yet-valid",
    "wrong-host",
    "self-signed",
    "unknown-root",
    "missing-intermediate",
    "weak-key",
)

#: The only name the "wrong-host" variant is valid for.
WRONG_HOST = "wrong-host.invalid"


@frozen
class VariantPaths:
    """
    A variant server certificate as a server presents it.

    @ivar chain: PEM with the certificate and the CA certificates the server
        sends with it (for "unknown-root", the unknown root; for the others
        none).
    @ivar key: PEM with its private key.
    """

    chain: Path
    key: Path


def developmentCA(directory: Path) -> CertificatePaths:
    """
    The development CA in C{directory}, made there (with its server and
    client certificates) unless C{ca.pem} and C{ca-key.pem} are there
    already.
    """
    directory = Path(directory)
    paths = _pathsIn(directory)
    if not (paths.ca.exists() and paths.caKey.exists() and paths.serverCert.exists()):
        return makeCertificates(directory)
    return paths


def _pathsIn(directory: Path) -> CertificatePaths:
    return CertificatePaths(
        ca=directory / "ca.pem",
        caKey=directory / "ca-key.pem",
        serverCert=directory / "server.pem",
        serverKey=directory / "server-key.pem",
        serverChainPem=directory / "server-chain-key.pem",
        clientCert=directory / "client.pem",
        clientKey=directory / "client-key.pem",
    )


_variantsMade: dict[tuple[Path, str], VariantPaths] = {}
_variantsLock = threading.Lock()


def makeVariant(
    directory: Path,
    variant: str,
    serverNames: Iterable[str] = DEFAULT_SERVER_NAMES,
    now: datetime.datetime | None = None,
) -> VariantPaths:
    """
    Make the server certificate C{variant} in C{directory}/variants, signed
    (unless the variant says otherwise) by the development CA in
    C{directory} (see L{developmentCA}).  A client that trusts that CA and
    checks certificates properly refuses every variant:

      - expired: valid from two years ago until a year ago;
      - not-yet-valid: valid from a year from now;
      - wrong-host: valid only for L{WRONG_HOST};
      - self-signed: signed by its own key;
      - unknown-root: signed by another CA, which is sent along;
      - missing-intermediate: signed by an intermediate CA (itself signed by
        the development CA) that the server does not send;
      - weak-key: a 1024-bit RSA key (OpenSSL security level 2, the default
        of Debian's OpenSSL and of the one in C{cryptography}, refuses it).

    Each variant is made once per process and directory (a reload does not
    make new keys); a new process makes new ones.

    @raise ValueError: for an unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown certificate variant {variant!r}")
    directory = Path(directory).resolve()
    with _variantsLock:
        made = _variantsMade.get((directory, variant))
        if made is not None and made.chain.exists() and made.key.exists():
            return made
        made = _makeVariant(directory, variant, list(serverNames), now)
        _variantsMade[(directory, variant)] = made
        return made


def _makeVariant(
    directory: Path, variant: str, serverNames: list[str], now: datetime.datetime | None
) -> VariantPaths:
    ca = developmentCA(directory)
    caCert = x509.load_pem_x509_certificate(ca.ca.read_bytes())
    caKey = serialization.load_pem_private_key(ca.caKey.read_bytes(), password=None)
    assert isinstance(caKey, rsa.RSAPrivateKey)
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    year = datetime.timedelta(days=365)
    notBefore, notAfter = now - datetime.timedelta(hours=1), now + year
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] = (caCert.subject, caKey)
    key = _newKey(1024 if variant == "weak-key" else 2048)
    names = serverNames
    sentAlong: list[x509.Certificate] = []
    commonName = f"{serverNames[0]} ({variant})"
    if variant == "expired":
        notBefore, notAfter = now - 2 * year, now - year
    elif variant == "not-yet-valid":
        notBefore, notAfter = now + year, now + 2 * year
    elif variant == "wrong-host":
        names = [WRONG_HOST]
        commonName = WRONG_HOST
    elif variant == "self-signed":
        issuer = (_name(commonName), key)
    elif variant == "unknown-root":
        otherKey = _newKey()
        other = _caCertificate("ftpproxy unknown CA", otherKey, notBefore, now + 10 * year)
        issuer = (other.subject, otherKey)
        sentAlong = [other]
    elif variant == "missing-intermediate":
        intermediateKey = _newKey()
        intermediate = _caCertificate(
            "ftpproxy development intermediate CA",
            intermediateKey,
            notBefore,
            now + 5 * year,
            issuer=(caCert, caKey),
            pathLength=0,
        )
        issuer = (intermediate.subject, intermediateKey)
        # Kept beside the variant (not served), for tests that complete
        # the chain themselves.
        variantsDirectory = directory / "variants"
        variantsDirectory.mkdir(parents=True, exist_ok=True)
        _write(variantsDirectory / "intermediate-ca.pem", _certPem(intermediate))
    leaf = _leafCertificate(
        commonName, key, issuer, notBefore, notAfter, ExtendedKeyUsageOID.SERVER_AUTH, names
    )
    variantsDirectory = directory / "variants"
    variantsDirectory.mkdir(parents=True, exist_ok=True)
    chain = _certPem(leaf) + b"".join(_certPem(c) for c in sentAlong)
    return VariantPaths(
        chain=_write(variantsDirectory / f"{variant}.pem", chain),
        key=_write(variantsDirectory / f"{variant}.key.pem", _keyPem(key), private=True),
    )
