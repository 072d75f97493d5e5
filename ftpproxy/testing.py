"""
ftpproxy in memory, for the tests of applications that embed it.

An application that builds ftpproxy into its own service (with
L{ftpproxy.makeService}) wants to test its wiring without sockets, timers or
real FTP servers. This module gives it:

  - L{MemoryNetwork}: a reactor (a L{MemoryReactorClock}) whose TCP
    listeners and connections live in memory, so the proxy's listening
    ports, its backend connections and every data connection work as they
    do on sockets, and time moves only when the test says so;
  - L{FakeFTPBackend}: a small FTP server with files in a dict, to stand in
    for the backends;
  - L{MemoryFTPClient}: an FTP client that logs in, lists, downloads and
    uploads through the proxy, one call at a time.

For example::

    from ftpproxy import BackendConfig, HostPort, ProxyConfig, makeService
    from ftpproxy.testing import FakeFTPBackend, MemoryFTPClient, MemoryNetwork

    network = MemoryNetwork()
    FakeFTPBackend(network, "127.0.0.2", 21, files={"hello.txt": b"hi"})
    config = ProxyConfig(
        backends=(BackendConfig(HostPort("127.0.0.2", 21), "node1"),),
        listen=("tcp:2121:interface=127.0.0.1",),
    )
    service = makeService(config, reactor=network)
    service.startService()
    client = MemoryFTPClient.connect(network, "127.0.0.1", 2121)
    client.login("alice", "secret")
    assert client.retrieve("hello.txt") == b"hi"

Only clear FTP is played in memory: FTPS needs a real TLS stack and real
sockets (the project's own integration tests show how).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.interfaces import IConnector, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from zope.interface import implementer

from ftpproxy.wire.ftptext import (
    Reply,
    ReplyParser,
    formatEpsvReply,
    formatPasvReply,
    parseCommand,
    parseEpsvReply,
)

__all__ = ["FakeFTPBackend", "MemoryFTPClient", "MemoryNetwork"]


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(IListeningPort)
class _MemoryPort:
    def __init__(self, network: MemoryNetwork, host: str, port: int, factory: Factory) -> None:
        self._network = network
        self._host = host
        self._port = port
        self.factory = factory

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self._network._listeners.pop((self._host, self._port), None)
        self.factory.doStop()

    def getHost(self) -> IPv4Address | IPv6Address:
        return _address(self._host, self._port)


@implementer(IConnector)
class _MemoryConnector:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self.stopped = False

    def stopConnecting(self) -> None:
        self.stopped = True

    def disconnect(self) -> None:
        self.stopped = True

    def connect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address | IPv6Address:
        return _address(self._host, self._port)


class MemoryNetwork(MemoryReactorClock):
    """
    A reactor whose TCP connections are made in memory between the
    protocols that listen and connect on it.

    Connections are made on the next reactor turn, and bytes move when
    L{flush} (or L{elapse}) is called, as they would between two turns of a
    real reactor. A connection to an address nobody listens on is refused.
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners: dict[tuple[str, int], Factory] = {}
        self._pumps: list[IOPump] = []
        self._nextPort = 49152
        self._nextClientPort = 30000

    def _freePort(self, host: str) -> int:
        while (host, self._nextPort) in self._listeners:
            self._nextPort += 1
        port, self._nextPort = self._nextPort, self._nextPort + 1
        return port

    def listenTCP(self, port: int, factory: Factory, backlog: int = 50, interface: str = "") -> _MemoryPort:
        host = interface or "0.0.0.0"
        if port == 0:
            port = self._freePort(host)
        if (host, port) in self._listeners:
            raise CannotListenError(interface, port, OSError("address already in use"))
        self._listeners[(host, port)] = factory
        factory.doStart()
        return _MemoryPort(self, host, port, factory)

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> _MemoryConnector:
        connector = _MemoryConnector(host, port)
        factory.startedConnecting(connector)
        localHost = bindAddress[0] if bindAddress and bindAddress[0] else ("::1" if ":" in host else "127.0.0.1")
        self.callLater(0, self._connect, connector, factory, host, port, localHost)
        return connector

    def _connect(self, connector: _MemoryConnector, factory: Any, host: str, port: int, localHost: str) -> None:
        if connector.stopped:
            return
        server = self._listeners.get((host, port)) or self._listeners.get(
            ("::" if ":" in host else "0.0.0.0", port)
        )
        if server is None:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            return
        self._nextClientPort += 1
        clientAddress = _address(localHost, self._nextClientPort)
        serverAddress = _address(host, port)
        serverProtocol = server.buildProtocol(clientAddress)
        if serverProtocol is None:
            # Accepted and closed at once: the client sees a refusal.
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            return
        clientProtocol = factory.buildProtocol(serverAddress)
        serverTransport = FakeTransport(serverProtocol, True, serverAddress, clientAddress)
        clientTransport = FakeTransport(clientProtocol, False, clientAddress, serverAddress)
        serverProtocol.makeConnection(serverTransport)
        clientProtocol.makeConnection(clientTransport)
        self._pumps.append(IOPump(clientProtocol, serverProtocol, clientTransport, serverTransport, False, self))

    def flush(self) -> None:
        """
        Run what is due now and move bytes until everything is quiet.
        """
        for _ in range(100000):
            self.advance(0)
            moved = False
            for pump in list(self._pumps):
                if pump.pump():
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self._pumps.remove(pump)
            if not moved and not any(c.getTime() <= self.seconds() for c in self.getDelayedCalls()):
                return
        raise RuntimeError("the network never went quiet")

    def elapse(self, seconds: float) -> None:
        """
        Let C{seconds} pass, then move what that made due.
        """
        self.advance(seconds)
        self.flush()


class _FakeFTPServer(Protocol):
    """
    One control connection to a L{FakeFTPBackend}.
    """

    def __init__(self, backend: FakeFTPBackend) -> None:
        self._backend = backend
        self._buffer = b""
        self._user: str | None = None
        self._loggedIn = False
        self._dataPort: _MemoryPort | None = None
        self._dataConnection: _DataConnection | None = None
        self._pending: Callable[[_DataConnection], None] | None = None

    def connectionMade(self) -> None:
        self._reply(220, f"{self._backend.name} ready.")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._command(line.rstrip(b"\r"))

    def _reply(self, code: int, text: str) -> None:
        self.transport.write(Reply.single(code, text).toBytes())

    def _command(self, line: bytes) -> None:
        try:
            verb, argument = parseCommand(line)
        except ValueError:
            self._reply(500, "Syntax error.")
            return
        name = argument.decode("utf-8", "replace")
        self._backend.commands.append(line)
        if verb == b"USER":
            self._user = name
            self._reply(331, "Password required.")
        elif verb == b"PASS":
            if self._backend.users is None or self._backend.users.get(self._user or "") == name:
                self._loggedIn = True
                self._reply(230, "Logged in.")
            else:
                self._reply(530, "Login incorrect.")
        elif verb == b"QUIT":
            self._reply(221, "Goodbye.")
            self.transport.loseConnection()
        elif not self._loggedIn and verb not in (b"SYST", b"FEAT", b"NOOP", b"OPTS"):
            self._reply(530, "Please log in.")
        elif verb in (b"NOOP", b"TYPE", b"MODE", b"STRU", b"OPTS", b"CWD"):
            self._reply(200 if verb != b"CWD" else 250, "OK.")
        elif verb == b"SYST":
            self._reply(215, "UNIX Type: L8")
        elif verb == b"PWD":
            self._reply(257, '"/" is the current directory.')
        elif verb == b"FEAT":
            self.transport.write(b"211-Features:\r\n SIZE\r\n211 End\r\n")
        elif verb == b"SIZE":
            data = self._backend.files.get(name)
            if data is None:
                self._reply(550, "No such file.")
            else:
                self._reply(213, str(len(data)))
        elif verb == b"DELE":
            if self._backend.files.pop(name, None) is None:
                self._reply(550, "No such file.")
            else:
                self._reply(250, "Deleted.")
        elif verb in (b"EPSV", b"PASV"):
            self._listen(verb)
        elif verb in (b"RETR", b"LIST", b"NLST"):
            self._download(verb, name)
        elif verb in (b"STOR", b"APPE"):
            self._upload(verb, name)
        elif verb == b"ABOR":
            self._closeData()
            self._reply(226, "ABOR successful.")
        else:
            self._reply(502, "Command not implemented.")

    def _listen(self, verb: bytes) -> None:
        self._closeData()
        host = self.transport.getHost().host
        self._dataPort = self._backend.network.listenTCP(0, _DataFactory(self), interface=host)
        port = self._dataPort.getHost().port
        reply = formatEpsvReply(port) if verb == b"EPSV" else formatPasvReply(host, port)
        self.transport.write(reply.toBytes())

    def _dataArrived(self, connection: _DataConnection) -> None:
        if self._dataPort is not None:
            port, self._dataPort = self._dataPort, None
            port.stopListening()
        self._dataConnection = connection
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending(connection)

    def _whenData(self, then: Callable[[_DataConnection], None]) -> None:
        if self._dataConnection is None and self._dataPort is None:
            self._reply(425, "Use PASV or EPSV first.")
        elif self._dataConnection is not None:
            then(self._dataConnection)
        else:
            self._pending = then

    def _download(self, verb: bytes, name: str) -> None:
        if verb == b"RETR":
            data = self._backend.files.get(name)
            if data is None:
                self._closeData()
                self._reply(550, "No such file.")
                return
        else:
            data = "".join(f"{n}\r\n" for n in sorted(self._backend.files)).encode()

        def send(connection: _DataConnection) -> None:
            self._reply(150, "Opening data connection.")
            connection.transport.write(data)
            connection.transport.loseConnection()
            self._dataConnection = None
            self._reply(226, "Transfer complete.")

        self._whenData(send)

    def _upload(self, verb: bytes, name: str) -> None:
        def receive(connection: _DataConnection) -> None:
            self._reply(150, "Ready to receive.")

            def done(data: bytes) -> None:
                self._dataConnection = None
                if verb == b"APPE":
                    data = self._backend.files.get(name, b"") + data
                self._backend.files[name] = data
                self._reply(226, "Transfer complete.")

            connection.whenDone(done)

        self._whenData(receive)

    def _closeData(self) -> None:
        self._pending = None
        if self._dataPort is not None:
            port, self._dataPort = self._dataPort, None
            port.stopListening()
        if self._dataConnection is not None:
            connection, self._dataConnection = self._dataConnection, None
            connection.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self._closeData()


class _DataConnection(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self._done: Callable[[bytes], None] | None = None
        self._lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def whenDone(self, done: Callable[[bytes], None]) -> None:
        if self._lost:
            done(bytes(self.received))
        else:
            self._done = done

    def connectionLost(self, reason: Failure = None) -> None:
        self._lost = True
        if self._done is not None:
            done, self._done = self._done, None
            done(bytes(self.received))


class _DataFactory(Factory):
    noisy = False

    def __init__(self, server: _FakeFTPServer) -> None:
        self._server = server

    def buildProtocol(self, addr: Any) -> _DataConnection:
        connection = _DataConnection()
        self._server._dataArrived(connection)
        return connection


class FakeFTPBackend(Factory):
    """
    A small FTP server on a L{MemoryNetwork}: files in a dict, any user (or
    the given ones), passive mode only.

    @ivar files: file name to contents; uploads land here.
    @ivar commands: every command line received, for assertions.
    """

    noisy = False

    def __init__(
        self,
        network: MemoryNetwork,
        host: str,
        port: int,
        files: dict[str, bytes] | None = None,
        users: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.network = network
        self.files = dict(files or {})
        self.users = users
        self.name = name or f"{host}:{port}"
        self.commands: list[bytes] = []
        self.port = network.listenTCP(port, self, interface=host)

    def buildProtocol(self, addr: Any) -> _FakeFTPServer:
        return _FakeFTPServer(self)

    def stop(self) -> None:
        self.port.stopListening()


class FTPError(Exception):
    """
    The proxy answered a L{MemoryFTPClient} call with an error; C{reply}
    is the reply.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text.decode('utf-8', 'replace')}")
        self.reply = reply


class _ClientProtocol(Protocol):
    def __init__(self) -> None:
        self.parser = ReplyParser()
        self.replies: list[Reply] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.replies.extend(self.parser.feed(data))

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost = True


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.failure: Failure | None = None

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol

    def startedConnecting(self, connector: Any) -> None:
        pass

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failure = reason

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass


@attrs.define
class MemoryFTPClient:
    """
    An FTP client on a L{MemoryNetwork}, for talking to the proxy. Every
    call moves the network until the answer is there.

    @ivar greeting: the proxy's (or backend's) greeting.
    """

    network: MemoryNetwork
    host: str
    _control: _ClientProtocol
    greeting: Reply | None = None

    @classmethod
    def connect(cls, network: MemoryNetwork, host: str, port: int) -> MemoryFTPClient:
        """
        Connect to the proxy at C{host}:C{port} and read its greeting.
        """
        control = _ClientProtocol()
        factory = _ClientFactory(control)
        network.connectTCP(host, port, factory)
        network.flush()
        if factory.failure is not None:
            factory.failure.raiseException()
        client = cls(network, host, control)
        client.greeting = client._final()
        return client

    @property
    def closed(self) -> bool:
        """
        Whether the proxy closed the control connection.
        """
        return self._control.lost

    def _final(self) -> Reply:
        self.network.flush()
        while self._control.replies:
            reply = self._control.replies.pop(0)
            if not reply.isPreliminary:
                return reply
        raise FTPError(Reply.single(421, "no reply (the connection is closed)" if self.closed else "no reply yet"))

    def command(self, line: str) -> Reply:
        """
        Send C{line}; return the final reply.
        """
        self._control.transport.write(line.encode("utf-8") + b"\r\n")
        return self._final()

    def _ok(self, line: str) -> Reply:
        reply = self.command(line)
        if reply.isError:
            raise FTPError(reply)
        return reply

    def login(self, user: str, password: str) -> Reply:
        reply = self._ok(f"USER {user}")
        if reply.code == 331:
            reply = self._ok(f"PASS {password}")
        return reply

    def _transfer(self, line: str, upload: bytes | None = None) -> tuple[bytes, Reply]:
        port = parseEpsvReply(self._ok("EPSV").text)
        data = _ClientProtocol()
        received = bytearray()
        data.dataReceived = received.extend  # type: ignore[method-assign]
        self.network.connectTCP(self.host, port, _ClientFactory(data))
        self.network.flush()
        self._control.transport.write(line.encode("utf-8") + b"\r\n")
        self.network.flush()
        if upload is not None and data.transport is not None:
            data.transport.write(upload)
            data.transport.loseConnection()
        reply = self._final()
        if reply.isError:
            raise FTPError(reply)
        return bytes(received), reply

    def retrieve(self, path: str) -> bytes:
        """
        Download C{path} (EPSV and RETR).
        """
        return self._transfer(f"RETR {path}")[0]

    def list(self, path: str = "") -> bytes:
        return self._transfer(f"LIST {path}".rstrip())[0]

    def store(self, path: str, data: bytes) -> Reply:
        """
        Upload C{data} as C{path} (EPSV and STOR).
        """
        return self._transfer(f"STOR {path}", upload=data)[1]

    def quit(self) -> Reply:
        return self.command("QUIT")
