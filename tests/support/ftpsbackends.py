"""
Real Debian FTPS servers as test backends, run from the package files
without installing them (vsftpd and proftpd conflict as Debian packages, and
nothing here should change the system).

C{apt-get download} fetches the C{.deb} files into a cache directory once,
C{dpkg -x} unpacks them next to it, and each backend runs the unpacked
binary with its own configuration, root directory and log, on a loopback
address and a port the OS chose.

vsftpd serves anonymous FTP: that needs no system user, password or PAM
file.  Anonymous sessions are always chrooted and vsftpd refuses a writable
chroot, so the served root is read-only to FTP clients and uploads go to
C{upload/} (L{FTPSBackend.uploadPath}).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import attrs

#: Override where downloaded packages are kept.
CACHE_ENVIRONMENT_VARIABLE = "FTPPROXY_TEST_CACHE"
#: What the backend needs: vsftpd links against libwrap, which a minimal
#: system may lack; unpacking it alongside avoids installing it.
VSFTPD_PACKAGES = ("vsftpd", "libwrap0")

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
ANONYMOUS_USER = "anonymous"
ANONYMOUS_PASSWORD = "tester@example.com"
UPLOAD_DIRECTORY = "upload"


class PackageUnavailable(Exception):
    """
    A Debian package could not be downloaded or unpacked; the message says
    what to run.
    """


class BackendStartError(Exception):
    """
    An FTPS backend did not come up; the message includes its output.
    """


def cacheDirectory() -> Path:
    """
    Where downloaded packages are kept between test runs:
    C{$FTPPROXY_TEST_CACHE}, else C{/var/cache/ftpproxy-tests} for root,
    else C{~/.cache/ftpproxy-tests}.
    """
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/ftpproxy-tests")
    return Path.home() / ".cache" / "ftpproxy-tests"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """
    Serialise downloads and unpacking between test processes running at the
    same time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _downloaded(debs: Path, package: str) -> Optional[Path]:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def unpackedPackages(packages: Sequence[str], cache: Optional[Path] = None) -> Path:
    """
    Download (once) and unpack (once) C{packages}; return the directory they
    were unpacked into, laid out like C{/}.
    """
    cache = cacheDirectory() if cache is None else cache
    debs = cache / "debs"
    with _locked(cache / "lock"):
        debs.mkdir(parents=True, exist_ok=True)
        files = []
        for package in packages:
            deb = _downloaded(debs, package)
            if deb is None:
                result = subprocess.run(
                    ["apt-get", "download", package],
                    cwd=debs,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                deb = _downloaded(debs, package)
                if result.returncode != 0 or deb is None:
                    raise PackageUnavailable(
                        f"`apt-get download {package}` failed "
                        f"(run `apt-get update` first?): {result.stderr.strip()}"
                    )
            files.append(deb)
        name = "-".join(deb.stem for deb in files)
        target = cache / "unpacked" / name
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpacking-"))
            try:
                for deb in files:
                    subprocess.run(
                        ["dpkg-deb", "-x", str(deb), str(staging)],
                        check=True,
                        capture_output=True,
                        timeout=120,
                    )
            except subprocess.CalledProcessError as e:
                shutil.rmtree(staging, ignore_errors=True)
                raise PackageUnavailable(
                    f"cannot unpack {files}: {e.stderr.decode(errors='replace')}"
                ) from None
            staging.rename(target)
        return target


@attrs.frozen
class Installation:
    """
    A server binary unpacked from Debian packages, with the libraries that
    came with it.
    """

    binary: Path
    libraryPath: tuple[Path, ...]

    def environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        paths = [str(path) for path in self.libraryPath]
        if environment.get("LD_LIBRARY_PATH"):
            paths.append(environment["LD_LIBRARY_PATH"])
        if paths:
            environment["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
        return environment


def vsftpdInstallation(cache: Optional[Path] = None) -> Installation:
    """
    vsftpd from Debian's package, unpacked into the cache.

    @raise PackageUnavailable: when it cannot be downloaded.
    """
    root = unpackedPackages(VSFTPD_PACKAGES, cache)
    libraries = tuple(
        sorted({path.parent for path in root.glob("**/lib*.so*")})
    )
    binary = root / "usr" / "sbin" / "vsftpd"
    if not binary.exists():
        raise PackageUnavailable(f"no vsftpd binary in {root}")
    return Installation(binary, libraries)


def _anonymousAccount() -> pwd.struct_passwd:
    """
    The system account anonymous sessions run as.  vsftpd changes into its
    home directory before its own root, so that must exist; no account is
    created for the tests.
    """
    for name in ("daemon", "bin", "nobody", "ftp"):
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            continue
        if os.path.isdir(account.pw_dir):
            return account
    raise BackendStartError("no system account with an existing home directory")


def freePort(host: str) -> int:
    """
    A port the OS considers free on C{host} right now.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _yesNo(value: bool) -> str:
    return "YES" if value else "NO"


@attrs.define(eq=False)
class FTPSBackend:
    """
    A running FTPS server.

    @ivar root: the directory served as C{/}; tests put files here directly.
        Read-only to FTP clients.
    @ivar uploadDir: C{root/upload}, where FTP clients may write.
    @ivar implicit: TLS from the first byte (C{ftps://}) rather than AUTH TLS.
    """

    name: str
    host: str
    port: int
    root: Path
    uploadDir: Path
    user: str
    password: str
    implicit: bool
    process: subprocess.Popen = attrs.field(repr=False)
    logPath: Path = attrs.field(repr=False)
    configPath: Path = attrs.field(repr=False)
    outputPath: Path = attrs.field(repr=False)

    @property
    def address(self) -> str:
        """
        C{host:port}, bracketed for IPv6.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, path: str = "") -> str:
        scheme = "ftps" if self.implicit else "ftp"
        return f"{scheme}://{self.address}/{path}"

    def uploadPath(self, name: str) -> str:
        """
        The FTP path a client stores C{name} under.
        """
        return f"{UPLOAD_DIRECTORY}/{name}"

    def log(self) -> str:
        try:
            return self.logPath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def handshakes(self) -> list[bool]:
        """
        For every TLS handshake the server finished, in order, whether it
        resumed a session (from vsftpd's C{debug_ssl} log lines).
        """
        return [
            match.group(1) is None
            for match in re.finditer(r"SSL version: [^,]+, SSL cipher: [^,]+, (not )?reused", self.log())
        ]

    def stop(self) -> Optional[int]:
        """
        Stop the server and every session process it forked (they share its
        process group).
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # Session processes outlive the listener on SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(STOP_TIMEOUT)
        return self.process.returncode


def _vsftpdConfiguration(
    *,
    host: str,
    port: int,
    root: Path,
    emptyDirectory: Path,
    logPath: Path,
    account: str,
    certificate: Path,
    key: Path,
    implicit: bool,
    requireSessionReuse: bool,
    forceDataTLS: bool,
    forceLoginTLS: bool,
    strictCloseNotify: bool,
    options: Mapping[str, Any],
) -> str:
    ipv6 = ":" in host
    settings: dict[str, Any] = {
        "listen": _yesNo(not ipv6),
        "listen_ipv6": _yesNo(ipv6),
        ("listen_address6" if ipv6 else "listen_address"): host,
        "listen_port": port,
        "background": "NO",
        # anonymous only: no system user, password or PAM file needed
        "anonymous_enable": "YES",
        "local_enable": "NO",
        "anon_root": root,
        "ftp_username": account,
        "no_anon_password": "NO",
        "write_enable": "YES",
        "anon_upload_enable": "YES",
        "anon_mkdir_write_enable": "YES",
        "anon_other_write_enable": "YES",
        "anon_world_readable_only": "NO",
        "anon_umask": "022",
        "secure_chroot_dir": emptyDirectory,
        "nopriv_user": account,
        # namespaces and seccomp are not available in every container
        "seccomp_sandbox": "NO",
        "isolate": "NO",
        "isolate_network": "NO",
        "pasv_enable": "YES",
        "ssl_enable": "YES",
        "implicit_ssl": _yesNo(implicit),
        "allow_anon_ssl": "YES",
        "force_anon_logins_ssl": _yesNo(forceLoginTLS),
        "force_anon_data_ssl": _yesNo(forceDataTLS),
        "require_ssl_reuse": _yesNo(requireSessionReuse),
        "strict_ssl_read_eof": _yesNo(strictCloseNotify),
        "ssl_request_cert": "NO",
        # 3.0.3's default, DES-CBC3-SHA, is disabled in OpenSSL 3
        "ssl_ciphers": "HIGH",
        "ssl_sslv2": "NO",
        "ssl_sslv3": "NO",
        "ssl_tlsv1": "YES",
        "rsa_cert_file": certificate,
        "rsa_private_key_file": key,
        "vsftpd_log_file": logPath,
        "xferlog_enable": "YES",
        "log_ftp_protocol": "YES",
        "debug_ssl": "YES",
    }
    settings.update(options)
    return "".join(f"{name}={value}\n" for name, value in settings.items())


def _awaitGreeting(
    process: subprocess.Popen, host: str, port: int, implicit: bool, timeout: float
) -> bool:
    """
    Wait until the server accepts a connection on C{port}; C{False} if it
    exited first.  With implicit TLS the greeting is encrypted, so accepting
    is enough; otherwise the 220 greeting must arrive.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=2) as probe:
                if implicit:
                    return True
                probe.settimeout(5)
                if probe.recv(4).startswith(b"220"):
                    return True
        except OSError:
            pass
        # Bounded polling for a process's listening socket: there is no
        # readiness signal from vsftpd in the foreground.
        time.sleep(0.05)
    raise BackendStartError(f"vsftpd on {host}:{port} did not greet within {timeout}s")


def startVsftpd(
    tmpdir: Path,
    host: str,
    tlsPaths: Any,
    *,
    name: str = "vsftpd",
    implicit: bool = False,
    requireSessionReuse: bool = True,
    forceDataTLS: bool = True,
    forceLoginTLS: bool = True,
    strictCloseNotify: bool = False,
    options: Optional[Mapping[str, Any]] = None,
    cache: Optional[Path] = None,
    startTimeout: float = START_TIMEOUT,
) -> FTPSBackend:
    """
    Start vsftpd serving FTPS on C{host} (a loopback address) and a free
    port, with its files under C{tmpdir/name}.

    @param tlsPaths: a L{ftpproxy.tls.devcerts.CertificatePaths} (or anything
        with C{serverCert} and C{serverKey}).
    @param requireSessionReuse: C{require_ssl_reuse}: data connections must
        resume the control connection's TLS session.
    @param forceDataTLS: C{force_anon_data_ssl}: PROT P required.
    @param forceLoginTLS: C{force_anon_logins_ssl}: AUTH TLS before USER.
    @param strictCloseNotify: C{strict_ssl_read_eof}: uploads must end with
        close_notify, not a bare TCP close.  Off by default, as in vsftpd:
        curl 7.88 does not send close_notify after an upload.
    @param options: further C{vsftpd.conf} settings, overriding these.
    @raise PackageUnavailable: when vsftpd cannot be downloaded.
    @raise BackendStartError: when it does not start.
    """
    installation = vsftpdInstallation(cache)
    account = _anonymousAccount()
    base = Path(tmpdir) / name
    root = base / "root"
    uploadDir = root / UPLOAD_DIRECTORY
    empty = base / "empty"
    for directory in (root, uploadDir, empty):
        directory.mkdir(parents=True, exist_ok=True)
    # The chroot must not be writable by the session's user; its upload
    # directory must.
    for directory in (base, root, empty):
        os.chmod(directory, 0o755)
    os.chown(uploadDir, account.pw_uid, account.pw_gid)
    logPath = base / "vsftpd.log"
    outputPath = base / "output.log"
    configPath = base / "vsftpd.conf"

    failures = []
    for attempt in range(3):
        # vsftpd binds the port itself; another process may take it between
        # probing and binding, so retry on a fresh one.
        port = freePort(host)
        configPath.write_text(
            _vsftpdConfiguration(
                host=host,
                port=port,
                root=root,
                emptyDirectory=empty,
                logPath=logPath,
                account=account.pw_name,
                certificate=Path(tlsPaths.serverCert),
                key=Path(tlsPaths.serverKey),
                implicit=implicit,
                requireSessionReuse=requireSessionReuse,
                forceDataTLS=forceDataTLS,
                forceLoginTLS=forceLoginTLS,
                strictCloseNotify=strictCloseNotify,
                options=options or {},
            )
        )
        os.chmod(configPath, 0o600)
        with open(outputPath, "ab") as outputFile:
            process = subprocess.Popen(
                [str(installation.binary), str(configPath)],
                stdin=subprocess.DEVNULL,
                stdout=outputFile,
                stderr=subprocess.STDOUT,
                env=installation.environment(),
                start_new_session=True,
            )
        backend = FTPSBackend(
            name=name,
            host=host,
            port=port,
            root=root,
            uploadDir=uploadDir,
            user=ANONYMOUS_USER,
            password=ANONYMOUS_PASSWORD,
            implicit=implicit,
            process=process,
            logPath=logPath,
            configPath=configPath,
            outputPath=outputPath,
        )
        try:
            if _awaitGreeting(process, host, port, implicit, startTimeout):
                return backend
        except BackendStartError:
            backend.stop()
            raise
        backend.stop()
        output = outputPath.read_text(errors="replace")
        failures.append(output.strip())
        if "could not bind" not in output:
            break
    raise BackendStartError(f"vsftpd did not start: {failures[-1] or 'no output'}")
