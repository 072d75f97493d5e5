"""
The TLS rig through real FTPS clients: C{twistd -n ftpproxy --demo
--tls-rig} on free ports, and curl (OpenSSL), lftp and wget (GnuTLS),
Python's ftplib, Apache Commons Net's FTPSClient (Java) and Node's
basic-ftp, each against the rig's listeners with the outcome a correct
client has there (and, where clients differ, the one each of them has, as
measured: see docs/testing-clients.md).

One rig serves the whole module; the JVM and Node run all their cases in
one process each, to keep the time down.
"""

from __future__ import annotations

import ftplib
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpproxy.tls.devcerts import VARIANTS
from tests.support.clients import curl, lftp
from tests.support.peers import ReusingFTP_TLS, tlsContext
from tests.support.rig import (
    HOST,
    Case,
    Rig,
    javaProbe,
    nodeModules,
    rigFixture,
    runJava,
    runNode,
    startRig,
    stopRig,
)

USER, PASSWORD = "demo", "demo"
TIMEOUT = 30

# What a client that checks certificates says of each variant: curl
# (OpenSSL), lftp (GnuTLS), ftplib (Python's ssl), Java, Node.
CURL_REASONS = {
    "expired": "certificate has expired",
    "not-yet-valid": "certificate is not yet valid",
    "wrong-host": "no alternative certificate subject name matches",
    "self-signed": "self-signed certificate",
    "unknown-root": "self-signed certificate in certificate chain",
    "missing-intermediate": "unable to get local issuer certificate",
    "weak-key": "EE certificate key too weak",
}
LFTP_REASONS = {
    "expired": "expired certificate",
    "not-yet-valid": "not yet valid certificate",
    "wrong-host": "doesn't match requested host name",
    "self-signed": "issuer is unknown",
    "unknown-root": "issuer is unknown",
    "missing-intermediate": "issuer is unknown",
}
PYTHON_REASONS = {
    "expired": "certificate has expired",
    "not-yet-valid": "certificate is not yet valid",
    "wrong-host": "IP address mismatch",
    "self-signed": "self-signed certificate",
    "unknown-root": "self-signed certificate in certificate chain",
    "missing-intermediate": "unable to get local issuer certificate",
    "weak-key": "key too weak",
}
JAVA_REASONS = {
    "expired": "validity check failed",
    "not-yet-valid": "validity check failed",
    "wrong-host": "No subject alternative names matching IP address",
    "self-signed": "unable to find valid certification path",
    "unknown-root": "unable to find valid certification path",
    "missing-intermediate": "unable to find valid certification path",
}
NODE_REASONS = {
    "expired": "CERT_HAS_EXPIRED",
    "not-yet-valid": "CERT_NOT_YET_VALID",
    "wrong-host": "ERR_TLS_CERT_ALTNAME_INVALID",
    "self-signed": "DEPTH_ZERO_SELF_SIGNED_CERT",
    "unknown-root": "SELF_SIGNED_CERT_IN_CHAIN",
    "missing-intermediate": "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from rigFixture(tmp_path_factory)


def url(rig: Rig, name: str, path: str = "whoami.txt", scheme: str = "ftp") -> str:
    return f"{scheme}://{USER}:{PASSWORD}@{HOST}:{rig.port(name)}/{path}"


def backendName(output: bytes) -> str:
    return output.decode().strip()


# -- the rig itself -------------------------------------------------------------------


def test_tablePrinted(rig: Rig) -> None:
    """
    The rig prints what each port tests and what a correct client does.
    """
    output = rig.outputPath.read_text()
    assert f"{rig.port('expired')}  rig-expired" in output
    assert "a client that checks certificates refuses it" in output
    assert str(rig.certificates.ca) in output


# -- curl (OpenSSL) ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_curlVariants(rig: Rig, variant: str) -> None:
    """
    curl refuses every certificate variant when it checks certificates,
    and takes it with -k; the proxy logs the client's refusal.
    """
    since = rig.mark()
    refused = curl("--ssl-reqd", "--cacert", str(rig.certificates.ca), url(rig, variant), check=False)
    assert refused.returncode == 60, refused.stderr
    assert CURL_REASONS[variant] in refused.stderr
    accepted = curl("--ssl-reqd", "-k", url(rig, variant))
    assert backendName(accepted.stdout).startswith("backend-")
    outcomes = [e["outcome"] for e in rig.handshakes(variant, since)]
    if variant == "wrong-host":
        # OpenSSL checks the name after the handshake: curl hangs up.
        assert outcomes[0] == "ok"
    else:
        assert outcomes[0].startswith("alert received: ")
    assert "ok" in outcomes[1:]


def test_curlReuseRequired(rig: Rig) -> None:
    """
    curl resumes the control connection's session on its data
    connections, so a listener that requires it serves two downloads.
    """
    since = rig.mark()
    result = curl(
        "--ssl-reqd", "--cacert", str(rig.certificates.ca),
        url(rig, "reuse-required"), url(rig, "reuse-required", "README.txt"),
    )
    assert result.stdout.startswith(b"backend-")
    data = [e for e in rig.handshakes("reuse-required", since) if e["connection"] == "data"]
    assert [(e["outcome"], e["resumed"]) for e in data] == [("ok", True), ("ok", True)]


@pytest.mark.parametrize(
    "name, version, resumed",
    [
        ("tls12-only", "TLSv1.2", True),
        ("tls13-only", "TLSv1.3", True),
        ("tls12-session-ids", "TLSv1.2", True),
        ("tls13-no-tickets", "TLSv1.3", False),
        ("reuse-off", "TLSv1.3", False),
    ],
)
def test_curlProfiles(rig: Rig, name: str, version: str, resumed: bool) -> None:
    """
    Each profile negotiates what it says, and data connections resume
    only where the profile lets them.
    """
    since = rig.mark()
    curl("--ssl-reqd", "--cacert", str(rig.certificates.ca), url(rig, name), url(rig, name, "README.txt"))
    events = rig.handshakes(name, since)
    assert {e["tls_version"] for e in events} == {version}
    data = [e for e in events if e["connection"] == "data"]
    assert [e["resumed"] for e in data] == [resumed, resumed]
    assert {e["outcome"] for e in events} == {"ok"}


def test_curlImplicit(rig: Rig) -> None:
    since = rig.mark()
    result = curl("--cacert", str(rig.certificates.ca), url(rig, "implicit-reuse-required", scheme="ftps"))
    assert result.stdout.startswith(b"backend-")
    assert [e["connection"] for e in rig.handshakes("implicit-reuse-required", since)] == [
        "control",
        "data",
    ]


def test_curlRequireTLS(rig: Rig) -> None:
    """
    Without TLS, the login is refused (530); with it, it works.
    """
    plain = curl(url(rig, "require-tls"), check=False)
    assert plain.returncode == 67 and "530" in plain.stderr
    secured = curl("--ssl-reqd", "--cacert", str(rig.certificates.ca), url(rig, "require-tls"))
    assert secured.stdout.startswith(b"backend-")


def test_curlClientCertificate(rig: Rig) -> None:
    """
    The listener requires a client certificate of the development CA.
    """
    ca = rig.certificates
    without = curl("--ssl-reqd", "--cacert", str(ca.ca), url(rig, "client-certificate"), check=False)
    assert without.returncode != 0
    assert "certificate required" in without.stderr
    withCertificate = curl(
        "--ssl-reqd", "--cacert", str(ca.ca), "--cert", str(ca.clientCert), "--key", str(ca.clientKey),
        url(rig, "client-certificate"),
    )
    assert withCertificate.stdout.startswith(b"backend-")


def test_curlNoTLS(rig: Rig) -> None:
    """
    A listener without TLS: a client that requires it stops (curl 64), one
    that only prefers it goes on in the clear.
    """
    required = curl("--ssl-reqd", url(rig, "no-tls"), check=False)
    assert required.returncode == 64
    assert not any(c.startswith("PASS") for c in required.commands)
    preferred = curl("--ssl", url(rig, "no-tls"))
    assert preferred.stdout.startswith(b"backend-")


# -- lftp and wget (GnuTLS) ---------------------------------------------------------


def lftpGet(rig: Rig, name: str, verify: bool, implicit: bool = False, files: int = 2):
    settings = {
        "ftp:ssl-allow": "yes",
        "ftp:ssl-force": "yes",
        "ftp:ssl-protect-data": "yes",
        "ssl:verify-certificate": "yes" if verify else "no",
        "ssl:ca-file": str(rig.certificates.ca),
        # With fail-exit, lftp 4.9.2 hangs after a failed certificate check.
        "cmd:fail-exit": "no",
    }
    host = f"ftps://{HOST}" if implicit else HOST
    commands = ["cat whoami.txt", "cat README.txt"][:files]
    return lftp(host, rig.port(name), commands, user=USER,
                password=PASSWORD, settings=settings, timeout=TIMEOUT, check=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lftpVariants(rig: Rig, variant: str) -> None:
    """
    lftp refuses every variant when it checks certificates (but GnuTLS's
    default profile accepts a 1024-bit key), and takes each without.
    """
    checked = lftpGet(rig, variant, verify=True, files=1)
    if variant == "weak-key":
        assert checked.returncode == 0 and checked.stdout.startswith(b"backend-")
    else:
        assert checked.returncode != 0
        assert LFTP_REASONS[variant] in checked.stderr
    unchecked = lftpGet(rig, variant, verify=False, files=1)
    assert unchecked.returncode == 0, unchecked.stderr
    assert unchecked.stdout.startswith(b"backend-")


@pytest.mark.parametrize("name", ["reuse-required", "tls12-session-ids", "implicit-reuse-required"])
def test_lftpResumes(rig: Rig, name: str) -> None:
    """
    lftp resumes the session on data connections, by ticket or by session
    id, explicit or implicit.
    """
    since = rig.mark()
    result = lftpGet(rig, name, verify=True, implicit=name.startswith("implicit"))
    assert result.returncode == 0, result.stderr
    data = [e for e in rig.handshakes(name, since) if e["connection"] == "data"]
    assert len(data) == 2 and all(e["resumed"] and e["outcome"] == "ok" for e in data)


def wget(rig: Rig, name: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["wget", "-q", "-O", "-", "--tries=1", f"--timeout={TIMEOUT}", f"--ftp-user={USER}",
         f"--ftp-password={PASSWORD}", *arguments, f"ftps://{HOST}:{rig.port(name)}/whoami.txt"],
        capture_output=True, timeout=TIMEOUT * 2, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_wgetVariants(rig: Rig, variant: str) -> None:
    """
    wget (GnuTLS) refuses the variants (exit 5) but the weak key when it
    checks certificates, and takes them all without.
    """
    checked = wget(rig, variant, f"--ca-certificate={rig.certificates.ca}")
    assert checked.returncode == (0 if variant == "weak-key" else 5), checked.stderr
    unchecked = wget(rig, variant, "--no-check-certificate")
    assert unchecked.returncode == 0 and unchecked.stdout.startswith(b"backend-")


@pytest.mark.parametrize(
    "name, extra",
    [("reuse-required", ()), ("tls12-session-ids", ()), ("implicit-reuse-required", ("--ftps-implicit",))],
)
def test_wgetResumes(rig: Rig, name: str, extra: tuple[str, ...]) -> None:
    """
    wget resumes the session on its data connection, by ticket or session
    id, explicit or implicit.
    """
    since = rig.mark()
    result = wget(rig, name, f"--ca-certificate={rig.certificates.ca}", *extra)
    assert result.returncode == 0 and result.stdout.startswith(b"backend-"), result.stderr
    data = [e for e in rig.handshakes(name, since) if e["connection"] == "data"]
    assert [(e["outcome"], e["resumed"]) for e in data] == [("ok", True)]


# -- Python's ftplib ---------------------------------------------------------------------


def ftplibGet(rig: Rig, name: str, context: ssl.SSLContext, factory=ftplib.FTP_TLS) -> str:
    with factory(context=context, timeout=TIMEOUT) as ftp:
        ftp.connect(HOST, rig.port(name))
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        chunks: list[bytes] = []
        ftp.retrbinary("RETR whoami.txt", chunks.append)
        return b"".join(chunks).decode().strip()


def test_ftplibStockRefusedWhereReuseIsRequired(rig: Rig) -> None:
    """
    Stock ftplib never resumes the session on data connections: refused
    with 522 where reuse is required (as vsftpd refuses it), fine where it
    is not.
    """
    context = tlsContext(rig.certificates.ca)
    assert ftplibGet(rig, "demo", context).startswith("backend-")
    since = rig.mark()
    with pytest.raises((ftplib.error_perm, OSError)) as caught:
        ftplibGet(rig, "reuse-required", context)
    if isinstance(caught.value, ftplib.error_perm):
        assert str(caught.value).startswith("522")
    data = [e for e in rig.handshakes("reuse-required", since) if e["connection"] == "data"]
    assert [(e["outcome"], e["resumed"]) for e in data] == [("refused: session not resumed", False)]


@pytest.mark.parametrize("name", ["reuse-required", "tls12-session-ids"])
def test_ftplibWithSessionReuse(rig: Rig, name: str) -> None:
    """
    ftplib made to resume the control session on data connections passes.
    """
    assert ftplibGet(rig, name, tlsContext(rig.certificates.ca), ReusingFTP_TLS).startswith("backend-")


@pytest.mark.parametrize("variant", VARIANTS)
def test_ftplibVariants(rig: Rig, variant: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=PYTHON_REASONS[variant]):
        ftplibGet(rig, variant, tlsContext(rig.certificates.ca))
    unchecked = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    unchecked.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert ftplibGet(rig, variant, unchecked).startswith("backend-")


# -- Apache Commons Net (Java) and basic-ftp (Node) --------------------------------------


def probeCases(rig: Rig) -> list[Case]:
    cases = [
        Case("demo", rig.port("demo")),
        Case("implicit", rig.port("demo-implicit"), implicit=True),
        Case("reuse-required", rig.port("reuse-required")),
        Case("tls12-session-ids", rig.port("tls12-session-ids")),
        Case("implicit-reuse-required", rig.port("implicit-reuse-required"), implicit=True),
        Case("tls12-only", rig.port("tls12-only")),
        Case("tls13-only", rig.port("tls13-only")),
    ]
    for variant in VARIANTS:
        cases.append(Case(variant, rig.port(variant)))
        cases.append(Case(f"{variant}-unchecked", rig.port(variant), verify=False))
    return cases


def test_commonsNet(rig: Rig, tmp_path: Path) -> None:
    """
    Apache Commons Net's FTPSClient reuses no TLS session on data
    connections: refused wherever reuse is required, fine elsewhere. It
    refuses the certificate variants when it checks them, but Java accepts
    a 1024-bit key.
    """
    results = runJava(javaProbe(tmp_path / "java"), rig.certificates.ca, probeCases(rig))
    ok = {name for name, result in results.items() if result.startswith("OK backend-")}
    assert ok == {
        "demo", "implicit", "tls12-only", "tls13-only", "weak-key",
        *(f"{variant}-unchecked" for variant in VARIANTS),
    }, results
    for variant, reason in JAVA_REASONS.items():
        assert reason in results[variant], results[variant]
    for name in ("reuse-required", "tls12-session-ids", "implicit-reuse-required"):
        assert results[name].startswith("FAIL "), results[name]


def test_basicFtp(rig: Rig) -> None:
    """
    Node's basic-ftp resumes the session on data connections, so it passes
    everywhere, and refuses the variants when it checks certificates (but
    Node accepts a 1024-bit key).
    """
    results = runNode(nodeModules(), rig.certificates.ca, probeCases(rig))
    failed = {name: result for name, result in results.items() if not result.startswith("OK backend-")}
    assert set(failed) == set(NODE_REASONS), results
    for variant, reason in NODE_REASONS.items():
        assert reason in failed[variant]


# -- the report -----------------------------------------------------------------------------


def test_reportAndClients(rig: Rig) -> None:
    """
    What clients did reads back from the JSON log (python -m
    ftpproxy.report) and from the admin endpoint's /clients, alike: curl
    resumed on the reuse-required listener and refused the expired
    certificate; stock ftplib was refused for not resuming.
    """
    checkReport(rig)


def test_reportWithWorkers(tmp_path: Path) -> None:
    """
    The same with two worker processes: each listener's profile reaches
    the workers, whose handshake reports reach the supervisor's log and
    its /clients.
    """
    workers = startRig(tmp_path / "rig", ["--workers", "2"])
    try:
        checkReport(workers)
        assert "worker 1 of 2 serving" in workers.logPath.read_text()
    finally:
        stopRig(workers)


def checkReport(rig: Rig) -> None:
    ca = str(rig.certificates.ca)
    curl("--ssl-reqd", "--cacert", ca, url(rig, "reuse-required"), url(rig, "reuse-required", "README.txt"))
    curl("--ssl-reqd", "--cacert", ca, url(rig, "expired"), check=False)
    with pytest.raises((ftplib.error_perm, OSError)):
        ftplibGet(rig, "reuse-required", tlsContext(rig.certificates.ca))

    def report() -> dict:
        command = [sys.executable, "-m", "ftpproxy.report", "--json", str(rig.logPath)]
        return json.loads(subprocess.run(command, capture_output=True, check=True, timeout=60).stdout)

    def live() -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{rig.adminPort}/clients", timeout=TIMEOUT) as response:
            return json.load(response)

    # Workers report in batches: wait until the log and /clients agree.
    deadline = time.monotonic() + 20
    fromLog, fromAdmin = report(), live()
    while (fromLog != fromAdmin or not fromLog["clients"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        fromLog, fromAdmin = report(), live()
    assert fromAdmin == fromLog

    clients = fromLog["clients"]
    curlClient = next(c for c in clients if "rig-expired" in c["listeners"])
    assert curlClient["listeners"]["rig-expired"]["control"]["alert received: certificate_expired"] >= 1
    reuse = curlClient["listeners"]["rig-reuse-required"]
    assert reuse["data_resumed"] >= 2 and "refused: session not resumed" not in reuse["data"]
    refused = [
        c for c in clients
        if c["listeners"].get("rig-reuse-required", {}).get("data", {}).get("refused: session not resumed")
    ]
    assert refused and curlClient not in refused
    assert curlClient["offered_versions"][0] == "TLSv1.3"

    text = subprocess.run(
        [sys.executable, "-m", "ftpproxy.report", str(rig.logPath)],
        capture_output=True, check=True, timeout=60, text=True,
    ).stdout
    assert "rig-reuse-required [rig-reuse-required]" in text
    assert "a correct client: resumes the session on every data connection" in text
