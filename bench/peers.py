"""
The peers ftpproxy is compared with: how to install them and configure them.

Every fact here that is not obvious cost someone time to find; the comments
say why each setting is there (see also bench/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import attrs

PROFTPD_MODULES = Path("/usr/lib/proftpd")

# (Debian package, how to tell it is installed)
DEBIAN_NEEDS: tuple[tuple[str, str], ...] = (
    ("haproxy", "haproxy"),
    ("proftpd-core", "proftpd"),
    ("proftpd-mod-proxy", str(PROFTPD_MODULES / "mod_proxy.so")),
    ("proftpd-mod-crypto", str(PROFTPD_MODULES / "mod_tls.so")),
    ("openssl", "openssl"),
    ("curl", "curl"),
)


@attrs.frozen
class Endpoint:
    host: str
    port: int

    def hostPort(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen
class PortRange:
    first: int
    last: int

    def dashed(self) -> str:
        return f"{self.first}-{self.last}"


@attrs.frozen
class TLSFiles:
    cert: Path
    key: Path


def present(probe: str) -> bool:
    if probe.startswith("/"):
        return Path(probe).exists()
    return shutil.which(probe) is not None or Path("/usr/sbin", probe).exists()


def ensureDebianPackages(say) -> None:
    """
    apt-get install whatever peer is missing (needs root, as on the dev VMs).
    """
    missing = [package for package, probe in DEBIAN_NEEDS if not present(probe)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            "missing Debian packages and not root: apt-get install "
            + " ".join(missing)
        )
    say(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )
    still = [package for package, probe in DEBIAN_NEEDS if not present(probe)]
    if still:
        raise SystemExit(f"still missing after apt-get: {' '.join(still)}")


def ensurePythonPackages(say) -> None:
    """
    pyftpdlib is the backend; uvloop only makes the load client cheaper.
    """
    if importlib.util.find_spec("pyftpdlib") is None:
        say("installing pyftpdlib")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyftpdlib"],
                       check=True)
    if importlib.util.find_spec("uvloop") is None:
        say("installing uvloop (optional, for the load client)")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "uvloop"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            say("uvloop not available; the load client uses asyncio's loop")


def commandOutput(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (result.stdout or result.stderr).strip()


def versions() -> dict[str, str]:
    """
    The versions a results table should name.
    """
    import pyftpdlib

    return {
        "haproxy": commandOutput(["haproxy", "-v"]).splitlines()[0:1][0]
        .split(" - ")[0].replace("HAProxy version ", ""),
        "proftpd": commandOutput(["proftpd", "-v"]).replace("ProFTPD Version ", ""),
        "mod_proxy": commandOutput(
            ["dpkg-query", "-W", "-f", "${Version}", "proftpd-mod-proxy"]),
        "pyftpdlib": pyftpdlib.__ver__,
        "curl": commandOutput(["curl", "--version"]).split()[1],
        "openssl": commandOutput(["openssl", "version"]).split()[1],
        "python": sys.version.split()[0],
    }


def makeCertificate(directory: Path) -> TLSFiles:
    """
    A throwaway self-signed certificate for 127.0.0.1 (both FTPS proxies)
    and 127.0.0.2-3 (the FTPS backends), so every TLS peer verifies it.
    """
    files = TLSFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(files.key), "-out", str(files.cert), "-days", "2",
         "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3"],
        check=True, capture_output=True,
    )
    # proftpd reads them as root at startup; 0644 keeps it simple.
    files.cert.chmod(0o644)
    files.key.chmod(0o644)
    return files


def haproxyConfig(
    control: Endpoint,
    backends: tuple[Endpoint, ...],
    passiveRanges: tuple[PortRange, ...],
) -> str:
    """
    HAProxy in TCP mode with the classic FTP trick.

    The control port is balanced round-robin; each backend owns one passive
    port range which HAProxy forwards to that backend alone (a server line
    without a port keeps the port the client connected to), and the backend
    names HAProxy's address in its 227 replies.
    """
    lines = [
        "global",
        # HAProxy here has an FD limit of 20,000; maxconn 4000 stays under it.
        "    maxconn 4000",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 10m",
        "    timeout server 10m",
        "",
        "frontend ftp_control",
        f"    bind {control.hostPort()}",
        "    default_backend ftp_control",
        "",
        "backend ftp_control",
        "    balance roundrobin",
    ]
    for index, backend in enumerate(backends, 1):
        lines.append(f"    server b{index} {backend.hostPort()}")
    for index, (backend, ports) in enumerate(zip(backends, passiveRanges), 1):
        lines += [
            "",
            f"frontend ftp_passive_b{index}",
            f"    bind {control.host}:{ports.first}-{ports.last}",
            f"    default_backend ftp_passive_b{index}",
            "",
            f"backend ftp_passive_b{index}",
            f"    server b{index} {backend.host}",
        ]
    return "\n".join(lines) + "\n"


def proftpdUser() -> tuple[str, str]:
    """
    The unprivileged user proftpd's sessions run as (Debian creates it).
    """
    for name in ("proftpd", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name, "nogroup"
    return "nobody", "nogroup"


def prepareProftpdDirectory(directory: Path) -> Path:
    """
    Make the mod_proxy tables directory, owned by the session user.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    tables = directory / "tables"
    tables.mkdir(exist_ok=True)
    user, _ = proftpdUser()
    entry = pwd.getpwnam(user)
    os.chown(tables, entry.pw_uid, entry.pw_gid)
    return tables


def proftpdConfig(
    directory: Path,
    control: Endpoint,
    passive: PortRange,
    backends: tuple[Endpoint, ...],
    tls: TLSFiles | None,
    debugLogs: bool = False,
    backendTLS: bool = False,
) -> str:
    """
    ProFTPD as a mod_proxy reverse proxy, optionally terminating FTPS with
    mod_tls on the client side; the backend leg stays clear unless
    C{backendTLS} (then explicit FTPS with PROT P to the backends too).
    """
    tables = prepareProftpdDirectory(directory)
    user, group = proftpdUser()
    servers = " ".join(f"ftp://{b.hostPort()}" for b in backends)
    proxyLog = str(directory / "proxy.log") if debugLogs else "none"
    lines = [
        "ServerType standalone",
        'ServerName "ftpproxy bench mod_proxy"',
        f"DefaultAddress {control.host}",
        "SocketBindTight on",
        f"Port {control.port}",
        "UseIPv6 off",
        f"User {user}",
        f"Group {group}",
        f"PidFile {directory / 'proftpd.pid'}",
        f"ScoreboardFile {directory / 'proftpd.scoreboard'}",
        f"SystemLog {directory / 'system.log'}",
        "WtmpLog off",
        "TransferLog none",
        "UseReverseDNS off",
        # mod_delay would add deliberate delays at login: not what is measured.
        "DelayEngine off",
        # One process per session: allow the 2,000 idle sessions and more.
        "MaxInstances 10000",
        "TimeoutIdle 600",
        "TimeoutNoTransfer 600",
        # A wide range: one port per concurrent transfer, reused slowly.
        f"PassivePorts {passive.first} {passive.last}",
        f"ModulePath {PROFTPD_MODULES}",
        # Debian's mod_proxy.so needs libssl's symbols, which mod_tls brings in.
        "LoadModule mod_tls.c",
        "LoadModule mod_proxy.c",
        "ProxyEngine on",
        "ProxyRole reverse",
        f"ProxyLog {proxyLog}",
        # Must be at server level, or every connection fails.
        f"ProxyTables {tables}",
        # RoundRobin keeps its state in SQLite and its table locks cap the
        # session rate under load; Random has no shared state.
        "ProxyReverseConnectPolicy Random",
        f"ProxyReverseServers {servers}",
        # Backend data connections must come from the address pyftpdlib saw
        # on the control connection (it rejects foreign data peers).
        f"ProxySourceAddress {control.host}",
    ]
    if backendTLS:
        lines += [
            # AUTH TLS to every backend, PROT P on every backend data
            # connection (ProxyTLSTransferProtectionPolicy's default).
            "ProxyTLSEngine on",
            "ProxyTLSProtocol TLSv1.2 TLSv1.3",
            f"ProxyTLSCACertificateFile {tls.cert if tls else ''}",
            "ProxyTLSVerifyServer on",
        ]
    else:
        lines.append("ProxyTLSEngine off")
    if tls is None:
        lines.append("TLSEngine off")
    else:
        tlsLog = str(directory / "tls.log") if debugLogs else "none"
        lines += [
            "TLSEngine on",
            f"TLSLog {tlsLog}",
            "TLSProtocol TLSv1.2 TLSv1.3",
            f"TLSRSACertificateFile {tls.cert}",
            f"TLSRSACertificateKeyFile {tls.key}",
            # Without it every session process loads the system CA store.
            f"TLSCACertificateFile {tls.cert}",
            "TLSVerifyClient off",
            "TLSRequired off",
        ]
    return "\n".join(lines) + "\n"
