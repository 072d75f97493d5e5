"""
Hostile clients cannot starve the proxy or squat its resources (issue 10):
a regression test for each of the five defects, in memory.

1. Command floods starved every session; the line splitter was quadratic.
2. Strangers could hold the passive port range (PASV before login).
3. A full passive range failed every other PASV and lost the port.
4. Every connection cost a backend connection before login.
5. The admin API was easy to expose (no interface: every address; no Host
   check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from ftpproxy.app.service import makeService
from ftpproxy.app.supervisor import makeSupervisor
from ftpproxy.data.passive import NoFreePassivePort, PassivePortPool, PoolState
from ftpproxy.events import CLIENT_CLOSED, CLIENT_REFUSED, EVENT_FIELD
from ftpproxy.ops.admin import AdminAccess, AdminResource, loopbackByDefault, readTokenFile
from ftpproxy.ops.metrics import ProxyMetrics, metricsRegistry
from ftpproxy.session.control import MAX_QUEUED_COMMANDS
from ftpproxy.session.machine import COMMANDS_PER_TURN
from ftpproxy.settings.config import ConfigError, PortRange, ProxyConfig
from ftpproxy.wire.ftptext import parsePasvReply

from tests.support.memory import (
    ALPHA,
    BETA,
    CLIENT_HOST,
    PASSIVE_PORTS,
    Peer,
    ProxyHarness,
    ProxyReactor,
    loggedFailures,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.usefixtures("loggedFailures")

NOT_LOGGED_IN = b"530 Please log in with USER and PASS first.\r\n"
UNRECOGNIZED = b"500 Syntax error, command unrecognized.\r\n"
FLOODED = b"421 Too many invalid commands; closing control connection.\r\n"


@pytest.fixture
def events() -> Iterator[list[dict]]:
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def marked(events: list[dict], value: str) -> list[dict]:
    return [e for e in events if e.get(EVENT_FIELD) == value]


def pasvPort(client: Peer, verb: bytes = b"PASV") -> int:
    client.send(verb + b"\r\n")
    reply = client.take()
    if verb == b"EPSV":
        assert reply.startswith(b"229 "), reply
        return int(reply.split(b"|||")[1].split(b"|")[0])
    assert reply.startswith(b"227 "), reply
    return parsePasvReply(reply)[1]


# -- 1. floods ----------------------------------------------------------------


class TestFloods:
    def test_floodOfEmptyLinesIsClosed(self, events: list[dict]) -> None:
        """
        A client that keeps sending empty lines gets max_invalid_commands
        refusals, then 421, and is closed; the close is logged (event
        client-closed) and counted.
        """
        h = ProxyHarness(maxInvalidCommands=5)
        client, backend = h.startSession()
        client.send(b"\r\n" * 1000)
        h.flush()
        assert client.take() == UNRECOGNIZED * 6 + FLOODED
        assert client.closed
        assert backend.take() == b""
        h.flush()
        assert h.sessions == set()
        assert h.factory.metrics.clientsClosed == {"invalid-commands": 1}
        [event] = marked(events, CLIENT_CLOSED)
        assert event["reason"] == "invalid-commands" and event["client"] == CLIENT_HOST

    def test_invalidKindsCount(self) -> None:
        """
        Unparseable lines, too long ones and commands that need a login all
        count; a command accepted starts the count again.
        """
        h = ProxyHarness(maxInvalidCommands=3, maxLineLength=512)
        client, backend = h.startSession(login=False)
        client.send(b"12 x\r\n" + b"X" * 600 + b"\r\nPASV\r\n")
        assert client.take() == UNRECOGNIZED + b"500 Command line too long.\r\n" + NOT_LOGGED_IN
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"
        backend.send(b"200 ok\r\n")
        client.send(b"\r\n" * 3)
        assert client.take() == b"200 ok\r\n" + UNRECOGNIZED * 3
        assert not client.closed
        client.send(b"\r\n")
        assert client.take() == UNRECOGNIZED + FLOODED
        assert client.closed

    def test_floodYieldsToOthers(self) -> None:
        """
        A flood of commands the proxy answers itself is taken
        COMMANDS_PER_TURN at a time, not read further, and goes on a
        reactor turn later: a bystander's command in between is relayed
        and answered at once.
        """
        h = ProxyHarness(maxInvalidCommands=0)
        flooder, _ = h.startSession()
        bystander, backend = h.startSession(banner=b"220 beta ready\r\n", port=40010)
        flooder.send(b"\n" * 65536)
        assert flooder.take() == UNRECOGNIZED * COMMANDS_PER_TURN
        assert flooder.transport.producerState == "paused"
        bystander.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"
        backend.send(b"200 NOOP ok.\r\n")
        assert bystander.take() == b"200 NOOP ok.\r\n"
        h.flush()
        assert flooder.take() == UNRECOGNIZED * (65536 - COMMANDS_PER_TURN)
        assert flooder.transport.producerState == "producing"

    def test_relayedCommandsNeverYield(self) -> None:
        """
        Relayed commands are taken one per backend reply: a client whose
        pipelined commands all go to the backend is never made to wait a
        turn.
        """
        h = ProxyHarness()
        client, backend = h.startSession()
        count = COMMANDS_PER_TURN * 3
        client.send(b"NOOP\r\n" * count)
        for _ in range(count):
            assert backend.take() == b"NOOP\r\n"
            backend.send(b"200 ok\r\n")
        assert client.take() == b"200 ok\r\n" * count
        now = h.reactor.seconds()
        assert [c for c in h.reactor.getDelayedCalls() if c.getTime() <= now] == []

    def test_waitingLinesAreBytes(self) -> None:
        """
        Lines a client pipelines wait as the bytes they came in: a read of
        thousands of short lines is not cut into thousands of objects (only
        those looked through for ABOR and QUIT are).
        """
        h = ProxyHarness()
        client, backend = h.startSession()
        client.send(b"NOOP\r\n" + b"AB\n" * 20000)
        control = client.protocol
        assert control._splitter.waiting + len(control._lines) == 20000
        assert len(control._lines) <= MAX_QUEUED_COMMANDS


# -- 2. nothing before login ----------------------------------------------------


class TestBeforeLogin:
    @pytest.mark.parametrize(
        "command",
        [b"PASV", b"EPSV", b"EPSV 1", b"LPSV", b"PORT 127,0,0,5,156,65", b"EPRT |1|127.0.0.5|40001|",
         b"LPRT 4,4,127,0,0,5,2,156,65", b"REST 100", b"RETR a", b"STOR a", b"LIST", b"NLST",
         b"MLSD", b"APPE a", b"STOU"],
    )
    def test_dataCommandsRefused(self, command: bytes) -> None:
        h = ProxyHarness()
        client, backend = h.startSession(login=False)
        client.send(command + b"\r\n")
        assert client.take() == NOT_LOGGED_IN
        assert backend.take() == b""
        assert h.reactor.tcpServers == [] and h.newConnects() == []

    def test_afterUserBeforePass(self) -> None:
        """
        USER alone is no login: the backend must have said 230.
        """
        h = ProxyHarness()
        client, backend = h.startSession(login=False)
        client.send(b"USER alice\r\n")
        backend.take()
        backend.send(b"331 Password required.\r\n")
        client.send(b"PASV\r\n")
        assert client.take() == b"331 Password required.\r\n" + NOT_LOGGED_IN
        client.send(b"PASS wrong\r\n")
        backend.take()
        backend.send(b"530 Login incorrect.\r\n")
        client.send(b"EPSV\r\n")
        assert client.take() == b"530 Login incorrect.\r\n" + NOT_LOGGED_IN

    def test_squattersHoldNoPort(self) -> None:
        """
        Defect 2: every session of the range's size sends PASV before login
        and gets 530; a logged-in user then gets a port.
        """
        h = ProxyHarness()
        squatters = [h.startSession(login=False, port=41000 + n)[0] for n in range(len(PASSIVE_PORTS) * 3)]
        for squatter in squatters:
            squatter.send(b"PASV\r\nEPSV\r\nLPSV\r\n")
            assert squatter.take() == NOT_LOGGED_IN * 3
        assert h.factory.services.passivePorts.owned == 0
        user, _ = h.startSession(port=42000)
        assert pasvPort(user) in PASSIVE_PORTS


# -- 3. a full passive range ------------------------------------------------------


class TestFullRange:
    def fill(self, h: ProxyHarness) -> list[Peer]:
        sessions = [h.startSession(port=41000 + n)[0] for n in range(len(PASSIVE_PORTS))]
        for session in sessions:
            pasvPort(session, b"EPSV")
        assert h.factory.services.passivePorts.owned == len(PASSIVE_PORTS)
        return sessions

    def test_repeatedEpsvKeepsItsPort(self) -> None:
        """
        Defect 3: with the range full, a session repeating EPSV (or PASV)
        gets its own port back each time, never 425, and that port still
        takes its data connection.
        """
        h = ProxyHarness()
        sessions = self.fill(h)
        mine = sessions[3]
        ports = [pasvPort(mine, b"EPSV"), pasvPort(mine, b"PASV"), pasvPort(mine, b"EPSV")]
        assert len(set(ports)) == 1
        assert h.factory.services.passivePorts.owned == len(PASSIVE_PORTS)
        assert h.connectData(ports[0]) is not None

    def test_freedPortReusableAtOnce(self) -> None:
        """
        A port given back is handed out again in the same reactor turn
        (closing a listening socket frees its port only a turn later).
        """
        h = ProxyHarness()
        sessions = self.fill(h)
        sessions[0].send(b"PORT 127,0,0,5,156,65\r\n")
        assert sessions[0].take() == b"200 PORT command successful.\r\n"
        newcomer, _ = h.startSession(port=42000)
        assert pasvPort(newcomer) in PASSIVE_PORTS
        sessions[0].hangUp()
        sessions[1].hangUp()
        h.flush()
        late, _ = h.startSession(port=42001)
        assert pasvPort(late, b"EPSV") in PASSIVE_PORTS

    def test_fullRangeStill425(self) -> None:
        h = ProxyHarness()
        self.fill(h)
        other, _ = h.startSession(port=42000)
        other.send(b"EPSV\r\n")
        assert other.take() == b"425 Can't open data connection: no free passive port.\r\n"
        assert not other.closed


class TestPortPool:
    def pool(self, spare: int = 4) -> tuple[ProxyReactor, PassivePortPool]:
        reactor = ProxyReactor()
        return reactor, PassivePortPool(reactor, PortRange(30000, 30019), spare=spare)

    def test_boundOncePerInterface(self) -> None:
        """
        A port is bound on each interface it is asked for, and kept: the
        same number may be handed out on two interfaces at once.
        """
        reactor, pool = self.pool()
        a = pool.claim("127.0.0.1", object())
        b = pool.claim("::1", object())
        assert a.port == 30000 and b.port == 30001
        a.release()
        b.release()
        assert len(reactor.openPorts()) == 2 and pool.idle == 2 and pool.owned == 0

    def test_unownedPortRefusesAtOnce(self) -> None:
        reactor, pool = self.pool()
        pool.claim("127.0.0.1", object()).release()
        [port] = reactor.openPorts()
        assert port.factory.buildProtocol(None) is None

    def test_spareBeyondClosed(self) -> None:
        """
        Beyond the spare count, released ports are closed: a burst does not
        leave the range bound.
        """
        reactor, pool = self.pool(spare=3)
        claims = [pool.claim("127.0.0.1", object()) for _ in range(10)]
        for claim in claims:
            claim.release()
        assert pool.idle == 3 and len(reactor.openPorts()) == 3

    def test_retire(self) -> None:
        """
        A pool replaced by a reload closes its idle ports at once and the
        others as they are released; it still hands out ports.
        """
        reactor, pool = self.pool()
        held = pool.claim("127.0.0.1", object())
        pool.claim("127.0.0.1", object()).release()
        pool.retire()
        assert pool.state is PoolState.RETIRED
        assert len(reactor.openPorts()) == 1
        again = pool.claim("127.0.0.1", object())
        held.release()
        again.release()
        assert reactor.openPorts() == []

    def test_close(self) -> None:
        reactor, pool = self.pool()
        held = pool.claim("127.0.0.1", object())
        pool.claim("127.0.0.1", object()).release()
        pool.close()
        assert reactor.openPorts() == []
        held.release()
        with pytest.raises(NoFreePassivePort):
            pool.claim("127.0.0.1", object())


def test_stoppingClosesThePassivePorts() -> None:
    """
    The proxy's passive ports stay bound while it runs and are closed when
    it stops, those of a range replaced by a reload included.
    """
    reactor = ProxyReactor()
    config = ProxyConfig(
        backends=(ALPHA, BETA), listen=("tcp:2121:interface=127.0.0.1",), passivePorts=PASSIVE_PORTS
    )
    service = makeService(config, reactor)
    service.startService()
    factory = service.factory
    factory.services.passivePorts.claim("127.0.0.1", object()).release()
    old = factory.services.passivePorts
    held = old.claim("127.0.0.1", object())
    factory.reconfigure(ProxyConfig(backends=(ALPHA,), passivePorts=PortRange(31000, 31009)), None)
    factory.services.passivePorts.claim("127.0.0.1", object()).release()
    assert {p.getHost().port for p in reactor.openPorts()} == {30001, 31000, 2121}
    stopped = service.stopService()
    assert stopped.called
    assert reactor.openPorts() == []
    held.release()


# -- 4. what a stranger holds ----------------------------------------------------------


class TestStrangers:
    def test_backendAtUser(self) -> None:
        """
        Defect 4: with backend_at_user, a connection that never logs in
        costs no backend connection: the proxy greets, answers what comes
        before USER, and the policy chooses at USER.
        """
        h = ProxyHarness(backendAtUser=True)
        clients = [h.connectClient(host=f"127.0.0.{10 + n % 6}", port=41000 + n) for n in range(300)]
        for client in clients:
            assert client.take() == b"220 ftpproxy ready.\r\n"
        assert h.newConnects() == []
        client = clients[0]
        client.send(b"SYST\r\nPASV\r\nUSER alice\r\n")
        assert client.take() == b"215 UNIX Type: L8\r\n" + NOT_LOGGED_IN
        backend = h.nextConnect("127.0.0.2").complete()
        backend.send(b"220 alpha ready\r\n")
        assert backend.take() == b"USER alice\r\n"
        backend.send(b"331 Password required.\r\n")
        client.send(b"PASS pw\r\n")
        assert backend.take() == b"PASS pw\r\n"
        backend.send(b"230 Logged in.\r\n")
        assert client.take() == b"331 Password required.\r\n230 Logged in.\r\n"
        assert pasvPort(client) in PASSIVE_PORTS
        # Round robin goes on for the next user; a later USER stays.
        second = clients[1]
        second.send(b"USER bob\r\n")
        h.nextConnect("127.0.0.3")
        client.send(b"USER carol\r\n")
        assert backend.take() == b"USER carol\r\n"
        assert h.newConnects() == []

    def test_preLoginLimit(self, events: list[dict]) -> None:
        """
        At most max_prelogin_per_client connections from one address may
        wait for a login; more get 421 (logged and counted). Logging in
        makes room; REIN takes it again; other addresses are not affected.
        """
        h = ProxyHarness(maxPreLoginPerClient=2)
        first, firstBackend = h.startSession(login=False, port=41000)
        h.startSession(login=False, port=41001)
        refused = h.connectClient(port=41002)
        assert refused.take() == (
            b"421 Too many connections from your address that have not logged in; "
            b"try again later.\r\n"
        )
        assert refused.closed
        assert h.newConnects() == []
        assert h.factory.metrics.clientsRefused == {"prelogin-per-client": 1}
        [event] = marked(events, CLIENT_REFUSED)
        assert event["reason"] == "prelogin-per-client"
        h.startSession(login=False, host="127.0.0.6", port=41003)
        h.logIn(first, firstBackend)
        h.startSession(login=False, port=41004)
        first.send(b"REIN\r\n")
        firstBackend.send(b"220 again\r\n")
        assert h.factory.limiter.preLogin(CLIENT_HOST) == 3
        assert h.connectClient(port=41005).take().startswith(b"421 ")

    def test_closedSessionsMakeRoom(self) -> None:
        h = ProxyHarness(maxPreLoginPerClient=1)
        first, backend = h.startSession(login=False)
        h.logIn(first, backend)
        waiting, _ = h.startSession(login=False, port=41001)
        first.hangUp()
        waiting.hangUp()
        h.flush()
        assert h.factory.limiter.preLogin(CLIENT_HOST) == 0
        h.startSession(login=False, port=41002)

    def test_loginTimeoutCounted(self) -> None:
        h = ProxyHarness(sessionTimers=True)
        client, _ = h.startSession(login=False)
        h.advance(h.config.loginTimeout)
        assert client.take() == b"421 Login timed out; closing control connection.\r\n"
        assert h.factory.metrics.clientsClosed == {"login-timeout": 1}


# -- 5. the admin API ----------------------------------------------------------------


class TestAdmin:
    def resource(self, **access: Any) -> AdminResource:
        class Pool:
            backends: list = []

        return AdminResource(metricsRegistry(ProxyMetrics()), Pool(), AdminAccess(**access))

    def get(self, resource: AdminResource, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
        request = DummyRequest([b"metrics"])
        request.method = b"GET"
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        body = resource.render(request)
        return request.responseCode or 200, body

    def test_noInterfaceMeansLoopback(self) -> None:
        """
        Defect 5: an endpoint without an interface listens on loopback.
        """
        assert loopbackByDefault("tcp:8021") == ("tcp:8021:interface=127.0.0.1", True)
        assert loopbackByDefault("tcp6:port=8021") == ("tcp6:port=8021:interface=\\:\\:1", True)
        assert loopbackByDefault("tcp:8021:interface=10.0.0.1") == ("tcp:8021:interface=10.0.0.1", False)
        assert loopbackByDefault("unix:/run/ftpproxy.sock") == ("unix:/run/ftpproxy.sock", False)

    def test_adminWithoutInterfaceListensOnLoopback(self) -> None:
        reactor = ProxyReactor()
        config = ProxyConfig(
            backends=(ALPHA,), listen=("tcp:2121:interface=127.0.0.1",), admin="tcp:8021"
        )
        service = makeService(config, reactor)
        service.startService()
        try:
            [admin] = [s for s in reactor.tcpServers if s[0] == 8021]
            assert admin[3] == "127.0.0.1"
        finally:
            service.stopService()

    @pytest.mark.parametrize(
        "endpoint", ["tcp:8021:interface=0.0.0.0", "tcp6:8021:interface=\\:\\:", "tcp:8021:interface=10.0.0.1"]
    )
    def test_beyondLoopbackNeedsAToken(self, endpoint: str) -> None:
        with pytest.raises(ConfigError, match="admin_token_file"):
            ProxyConfig(backends=(ALPHA,), admin=endpoint)
        ProxyConfig(backends=(ALPHA,), admin=endpoint, adminTokenFile="/some/file")

    def test_tokenRequired(self) -> None:
        resource = self.resource(token="s3cret-token-0123456789")
        host = {b"host": b"127.0.0.1:8021"}
        assert self.get(resource, host)[0] == 401
        assert self.get(resource, {**host, b"authorization": b"Bearer wrong"})[0] == 401
        assert self.get(resource, {**host, b"authorization": b"Basic czNjcmV0"})[0] == 401
        good = {**host, b"authorization": b"Bearer s3cret-token-0123456789"}
        code, body = self.get(resource, good)
        assert code == 200 and b"ftpproxy_sessions_total" in body

    @pytest.mark.parametrize(
        "host, allowed",
        [(b"127.0.0.1:8021", True), (b"localhost:8021", True), (b"[::1]:8021", True),
         (b"10.1.2.3", True), (b"ops.example.net:8021", True), (b"OPS.example.net.", True),
         (b"attacker.example:8021", False), (b"localhost.attacker.example", False),
         (b"bad:port", False)],
    )
    def test_hostChecked(self, host: bytes, allowed: bool) -> None:
        """
        A page whose name is rebound to the proxy sends its own name as
        Host: only IP addresses, localhost and admin_hosts are answered.
        """
        resource = self.resource(hosts=("ops.example.net",))
        code, _ = self.get(resource, {b"host": host})
        assert code == (200 if allowed else 403)

    def test_tokenFile(self, tmp_path: Path) -> None:
        path = tmp_path / "token"
        path.write_text("  abcdefghijklmnopqrstuvwxyz\n")
        assert readTokenFile(str(path)) == "abcdefghijklmnopqrstuvwxyz"
        path.write_text("short\n")
        with pytest.raises(ConfigError, match="at least 16"):
            readTokenFile(str(path))
        with pytest.raises(ConfigError, match="admin_token_file"):
            readTokenFile(str(tmp_path / "missing"))

    def test_tokenReloadsLive(self, tmp_path: Path) -> None:
        path = tmp_path / "token"
        path.write_text("first-token-0123456789\n")
        reactor = ProxyReactor()
        config = ProxyConfig(
            backends=(ALPHA,), listen=("tcp:2121:interface=127.0.0.1",), admin="tcp:8021",
            adminTokenFile=str(path),
        )
        service = makeService(config, reactor, reloadConfig=lambda: config)
        service.startService()
        try:
            assert service.admin.access.token == "first-token-0123456789"
            path.write_text("second-token-0123456789\n")
            assert service.reload()
            assert service.admin.access.token == "second-token-0123456789"
        finally:
            service.stopService()

    def test_supervisorAdminHasTheToken(self, tmp_path: Path) -> None:
        """
        With worker processes, the supervisor's admin endpoint takes the
        token too, and a reload reads it again.
        """
        path = tmp_path / "token"
        path.write_text("first-token-0123456789\n")
        config = ProxyConfig(
            backends=(ALPHA,), listen=("tcp:2121:interface=127.0.0.1",), admin="tcp:8021:interface=0.0.0.0",
            adminTokenFile=str(path), workers=2,
        )
        supervisor = makeSupervisor(config, ProxyReactor(), reloadConfig=lambda: config, count=2)
        assert supervisor.core.admin.access.token == "first-token-0123456789"
        assert supervisor.core.admin.description == "tcp:8021:interface=0.0.0.0"
