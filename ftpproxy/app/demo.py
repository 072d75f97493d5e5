"""
In-process FTP backends for C{--demo}, so the proxy can be tried on a bare
machine.

Each backend is Twisted's own FTP server over its own directory of sample
files; their C{upload/} directories are one and the same (as cluster nodes
share one repository), so a file uploaded through one backend is listed by
the others.  Anonymous users may read; user C{demo} (password C{demo}) may
also write.  Twisted's server is small: it has no REST, APPE, STOU, MLSD/MLST,
STAT, HELP, SITE or AUTH, reads no command while a transfer runs or while
a passive data connection is awaited, and uses the global reactor for parts
of its work, so sessions only run on the reactor C{twisted.internet}
installed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.cred import credentials, error as credError
from twisted.cred.checkers import AllowAnonymousAccess, ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import defer, interfaces
from twisted.internet.defer import Deferred
from twisted.protocols import ftp
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

SAMPLE_SIZE = 1024 * 1024
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


_TELNET_COMMAND = re.compile(
    rb"\xff(\xff)|\xff[\xfb-\xfe].?|\xff[\xf0-\xfa]?", re.DOTALL
)


def stripTelnet(line: bytes) -> bytes:
    """
    Remove Telnet commands from a control line, keeping escaped 0xFF bytes.

    A lone IAC loses only itself: a client that sends DM as urgent data
    leaves C{IAC} without its DM in the stream, right before C{ABOR}.
    """
    return _TELNET_COMMAND.sub(lambda match: match.group(1) or b"", line)


def sampleBytes(size: int = SAMPLE_SIZE) -> bytes:
    """
    Deterministic, incompressible bytes (SHA-256 in counter mode), so a
    download can be checked against a known digest on any backend.
    """
    blocks = []
    for counter in range(-(-size // 32)):
        blocks.append(hashlib.sha256(b"ftpproxy demo %d" % (counter,)).digest())
    return b"".join(blocks)[:size]


def writeSampleFiles(root: Path, backendName: str, uploads: Path | None = None) -> None:
    """
    Fill C{root} with what a demo user looks at: a README, a file naming the
    backend (to see the load balancing), a 1 MiB download and an upload
    directory: its own, or C{uploads} (a link to it) when given.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text(
        f"This is ftpproxy's demo backend {backendName}.\n"
        "\n"
        "Log in as anonymous (read-only) or demo/demo (read-write), then try:\n"
        "  ls                   list this directory\n"
        "  get whoami.txt       shows which backend served this session\n"
        "  get pub/sample.bin   1 MiB of deterministic bytes\n"
        "  put FILE upload/FILE upload (user demo only)\n",
        encoding="ascii",
    )
    (root / "whoami.txt").write_text(backendName + "\n", encoding="ascii")
    (root / "pub").mkdir(exist_ok=True)
    (root / "pub" / "sample.bin").write_bytes(sampleBytes())
    if uploads is None:
        (root / "upload").mkdir(exist_ok=True)
    else:
        uploads.mkdir(parents=True, exist_ok=True)
        link = root / "upload"
        if not link.is_symlink():
            link.symlink_to(uploads.resolve(), target_is_directory=True)


@implementer(ICredentialsChecker)
class _PasswordChecker:
    """
    In-memory username/password checker.

    Twisted's FTP server hands over C{str} credentials, which
    L{InMemoryUsernamePasswordDatabaseDontUse} (keyed by C{bytes}) never
    matches; this one compares both as UTF-8.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {
            name.encode("utf-8"): password.encode("utf-8")
            for name, password in users.items()
        }

    def requestAvatarId(self, creds: Any) -> Deferred[bytes]:
        username = _asBytes(creds.username)
        expected = self._users.get(username)
        given = _asBytes(creds.password)
        if expected is not None and hmac.compare_digest(expected, given):
            return defer.succeed(username)
        return defer.fail(credError.UnauthorizedLogin())


def _asBytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


class _SharedRootRealm(ftp.BaseFTPRealm):
    """
    Every authenticated user works in the anonymous root, read-write; the
    base realm gives anonymous users the read-only shell.
    """

    def getHomeDirectory(self, avatarId: bytes) -> FilePath[str]:
        return self.anonymousRoot


class _DemoFTP(ftp.FTP):
    """
    Twisted's FTP server with timers and passive listeners on the factory's
    reactor, passive ports bound to the control connection's own address
    (not all interfaces) and its connections tracked so they can be dropped.
    """

    factory: _DemoFTPFactory
    _dtpInstance: ftp.DTP | None = None

    @property  # type: ignore[override]
    def dtpInstance(self) -> ftp.DTP | None:
        return self._dtpInstance

    @dtpInstance.setter
    def dtpInstance(self, dtp: ftp.DTP | None) -> None:
        self._dtpInstance = dtp
        if dtp is not None:
            self.factory.dataConnections.add(dtp)

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        return self.factory.reactor.callLater(period, func)

    def getDTPPort(
        self, factory: ftp.DTPFactory, interface: str = ""
    ) -> interfaces.IListeningPort:
        host = self.transport.getHost().host
        return self.factory.reactor.listenTCP(0, factory, interface=host)

    def lineReceived(self, line: bytes) -> None:
        """
        Drop Telnet commands (clients send C{IAC IP IAC DM} before ABOR):
        Twisted's server would fail to encode its reply and answer nothing.
        """
        super().lineReceived(stripTelnet(line))

    def ftp_ABOR(self) -> None:
        """
        Twisted's server reads no command while a transfer runs, so an ABOR
        only ever finds nothing to abort (RFC 959: reply 226); an idle data
        connection is closed.
        """
        dtp = self.dtpInstance
        if self.dtpFactory is not None:
            self.cleanupDTP()
        if dtp is not None and dtp.transport is not None:
            dtp.transport.loseConnection()
        self.sendLine("226 No transfer to abort.")

    def ftp_NLST(self, path: str = "") -> Deferred[object]:
        """
        Bare C{NLST} (as C{curl --list-only} sends it) lists the working
        directory; Twisted's server would answer 500.
        """
        return super().ftp_NLST(path)

    def connectionMade(self) -> None:
        self.factory.sessions[self] = []
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        for waiter in self.factory.sessions.pop(self, []):
            waiter.callback(None)


class _DemoFTPFactory(ftp.FTPFactory):
    """
    An FTP factory for one demo backend that remembers its reactor and its
    live control and data connections.
    """

    protocol = _DemoFTP

    def __init__(self, reactor: Any, portal: Portal, backendName: str) -> None:
        super().__init__(portal)
        self.reactor = reactor
        self.welcomeMessage = f"ftpproxy demo backend {backendName}"
        self.sessions: dict[_DemoFTP, list[Deferred[None]]] = {}
        self.dataConnections: weakref.WeakSet[ftp.DTP] = weakref.WeakSet()

    def dropConnections(self) -> Deferred[None]:
        """
        Abort every control and data connection; fire once the control
        connections are gone.
        """
        waiting = []
        for dtp in list(self.dataConnections):
            if dtp.isConnected and dtp.transport is not None:
                dtp.transport.abortConnection()
        for session, waiters in list(self.sessions.items()):
            lost: Deferred[None] = Deferred()
            waiters.append(lost)
            waiting.append(lost)
            if session.transport is not None:
                session.transport.abortConnection()
        return defer.gatherResults(waiting, consumeErrors=True).addCallback(
            lambda _: None
        )


class DemoBackends:
    """
    C{count} FTP backends named C{backend-1}, C{backend-2}, ..., each over
    its own subdirectory of a temporary (or given) directory, sharing its
    C{uploads} subdirectory as their C{upload/}.
    """

    def __init__(
        self,
        reactor: Any,
        count: int = 2,
        interface: str = "127.0.0.1",
        baseDirectory: Path | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        self._reactor = reactor
        self._count = count
        self._interface = interface
        self._baseDirectory = baseDirectory
        self._ownedDirectory: Path | None = None
        self._ports: list[interfaces.IListeningPort] = []
        self._factories: list[_DemoFTPFactory] = []
        self.directory: Path | None = None
        self.addresses: list[tuple[str, int]] = []

    def start(self) -> list[tuple[str, int]]:
        """
        Write the sample files and listen; return each backend's
        C{(host, port)}.
        """
        if self._ports:
            raise RuntimeError("demo backends already started")
        if self._baseDirectory is None:
            self._ownedDirectory = Path(tempfile.mkdtemp(prefix="ftpproxy-demo-"))
            self.directory = self._ownedDirectory
        else:
            self.directory = self._baseDirectory
        host = _WILDCARDS.get(self._interface, self._interface)
        try:
            for number in range(1, self._count + 1):
                name = f"backend-{number}"
                root = self.directory / name
                writeSampleFiles(root, name, self.directory / "uploads")
                factory = _DemoFTPFactory(self._reactor, _makePortal(root), name)
                port = self._reactor.listenTCP(0, factory, interface=self._interface)
                self._factories.append(factory)
                self._ports.append(port)
                self.addresses.append((host, port.getHost().port))
        except BaseException:
            self._cleanUp()
            raise
        return list(self.addresses)

    def stop(self) -> Deferred[None]:
        """
        Stop listening, drop open connections and remove the temporary
        directory (never a given C{baseDirectory}).
        """
        ports, self._ports = self._ports, []
        factories, self._factories = self._factories, []
        stopping = [defer.maybeDeferred(port.stopListening) for port in ports]
        stopping += [factory.dropConnections() for factory in factories]
        done = defer.gatherResults(stopping, consumeErrors=True)
        done.addBoth(self._finishStop)
        return done

    def _finishStop(self, result: object) -> object:
        self._cleanUp()
        return result if isinstance(result, Failure) else None

    def _cleanUp(self) -> None:
        for port in self._ports:
            port.stopListening()
        self._ports = []
        self._factories = []
        self.addresses = []
        owned, self._ownedDirectory = self._ownedDirectory, None
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)


def _makePortal(root: Path) -> Portal:
    portal = Portal(_SharedRootRealm(str(root)))
    portal.registerChecker(AllowAnonymousAccess())
    portal.registerChecker(_PasswordChecker({DEMO_USER: DEMO_PASSWORD}))
    return portal


class DemoBackendsService(Service):
    """
    Runs L{DemoBackends} for the life of a service, e.g. under twistd.
    """

    def __init__(self, backends: DemoBackends) -> None:
        self.backends = backends
        self.addresses: list[tuple[str, int]] = []

    def startService(self) -> None:
        self.addresses = self.backends.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.addresses = []
        return self.backends.stop()
