"""
Tests for L{ftpproxy.session.core} and L{ftpproxy.session.transfer}: a whole session in
memory, with the client, the backends and every data connection played by
the test, and the bytes on each wire checked.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from ftpproxy.wire.ftptext import parsePasvReply
from ftpproxy.data.passive import REUSE_AFTER
from ftpproxy.session.control import MAX_QUEUED_COMMANDS
from ftpproxy.session.machine import COMMANDS_PER_TURN
from tests.support.memory import (
    ALPHA,
    BETA,
    CLIENT_HOST,
    FOREIGN_HOST,
    PASSIVE_PORTS,
    PROXY_HOST,
    Peer,
    ProxyHarness,
    address,
    loggedFailures,  # noqa: F401 (a fixture)
)

# Any error logged during a test (an unhandled one in a Deferred, say) fails it.
pytestmark = pytest.mark.usefixtures("loggedFailures")

BANNER = b"220 alpha ready\r\n"
BACKEND_DATA_PORT = 31000
EPSV_REPLY = b"229 Entering Extended Passive Mode (|||31000|)\r\n"
# 31000 = 121 * 256 + 24
PASV_REPLY = b"227 Entering Passive Mode (127,0,0,2,121,24).\r\n"
FIRST_PASSIVE_REPLY = b"227 Entering Passive Mode (127,0,0,1,117,48).\r\n"  # port 30000


@pytest.fixture
def h() -> ProxyHarness:
    return ProxyHarness()


def assertNoPortHeld(h: ProxyHarness) -> None:
    """
    No passive port is handed out; those still listening are the pool's
    idle ones.
    """
    pool = h.factory.services.passivePorts
    assert pool.owned == 0
    assert len(h.reactor.openPorts()) == pool.idle


def assertQuiet(h: ProxyHarness) -> None:
    """
    Nothing is left behind: no timer, no passive port held, no session.
    """
    h.flush()
    assert h.reactor.getDelayedCalls() == []
    assertNoPortHeld(h)
    assert h.sessions == set()


def assertQuietTransfer(h: ProxyHarness) -> None:
    """
    After a transfer: no timer and no passive port held are left (the
    session goes on), once the backend's reply deadline, paused but not
    cancelled between commands, has come by and found nothing owed.
    """
    h.flush()
    h.advance(h.config.replyTimeout)
    assert h.reactor.getDelayedCalls() == []
    assertNoPortHeld(h)


def pasv(client: Peer) -> int:
    """
    Send PASV and return the port the proxy names.
    """
    client.send(b"PASV\r\n")
    reply = client.take()
    assert reply.startswith(b"227 ")
    return parsePasvReply(reply)[1]


def openDownload(
    h: ProxyHarness, client: Peer, backend: Peer, command: bytes = b"RETR file.bin"
) -> tuple[Peer, Peer]:
    """
    Carry a download up to the point where the backend has the command and
    both data connections exist; return (client data, backend data).
    """
    port = pasv(client)
    client.send(command + b"\r\n")
    assert backend.take() == b"EPSV\r\n"
    backend.send(EPSV_REPLY)
    backendData = h.nextConnect("127.0.0.2", BACKEND_DATA_PORT).complete()
    assert backend.take() == command + b"\r\n"
    clientData = h.connectData(port)
    assert clientData is not None
    return clientData, backendData


# -- the control channel --------------------------------------------------------


class TestControl:
    def test_banner(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        attempt = h.nextConnect("127.0.0.2", 2001)
        assert attempt.timeout == h.config.connectTimeout
        backend = attempt.complete()
        assert client.take() == b""
        banner = b"220-Welcome to alpha.\r\n220-Be nice.\r\n220 Ready.\r\n"
        backend.send(banner[:20])
        assert client.take() == b""
        backend.send(banner[20:])
        assert client.take() == banner
        assert client.protocol.transport.keepAlive

    def test_multilineReplyWholeAndInOrder(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"HELP\r\n")
        assert backend.take() == b"HELP\r\n"
        reply = b"214-The following commands are recognized:\r\n USER PASS\r\n214 Help OK.\r\n"
        backend.send(reply[:30])
        assert client.take() == b""
        backend.send(reply[30:])
        assert client.take() == reply

    def test_pipelinedCommands(self, h: ProxyHarness) -> None:
        """
        Commands sent together go to the backend one at a time, each after
        the previous one's final reply, and the replies reach the client in
        order.
        """
        client, backend = h.startSession()
        client.send(b"USER anonymous\r\nPASS guest\r\nPWD\r\n")
        assert backend.take() == b"USER anonymous\r\n"
        backend.send(b"331 Password please.\r\n")
        assert backend.take() == b"PASS guest\r\n"
        backend.send(b"230-Welcome\r\n230 Logged in.\r\n")
        assert backend.take() == b"PWD\r\n"
        backend.send(b'257 "/" is the current directory.\r\n')
        assert client.take() == (
            b"331 Password please.\r\n"
            b"230-Welcome\r\n230 Logged in.\r\n"
            b'257 "/" is the current directory.\r\n'
        )

    def test_localReplyWaitsItsTurn(self, h: ProxyHarness) -> None:
        """
        A command the proxy answers itself, pipelined behind a relayed one,
        is answered after it.
        """
        client, backend = h.startSession()
        client.send(b"NOOP\r\nPASV\r\n")
        assert client.take() == b""
        assert backend.take() == b"NOOP\r\n"
        backend.send(b"200 NOOP ok.\r\n")
        assert client.take() == b"200 NOOP ok.\r\n" + FIRST_PASSIVE_REPLY

    def test_preliminaryRepliesRelayed(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"SITE SLOW\r\nNOOP\r\n")
        assert backend.take() == b"SITE SLOW\r\n"
        backend.send(b"150 working\r\n")
        assert client.take() == b"150 working\r\n"
        assert backend.take() == b""
        backend.send(b"200 done\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_lowerCase(self, h: ProxyHarness) -> None:
        """
        Verbs are case-insensitive: relayed ones go out as the client wrote
        them, the proxy's own are recognized.
        """
        client, backend = h.startSession()
        client.send(b"user anonymous\r\n")
        assert backend.take() == b"user anonymous\r\n"
        backend.send(b"331 ok\r\n")
        assert client.take() == b"331 ok\r\n"
        client.send(b"pasv\r\n")
        assert client.take() == FIRST_PASSIVE_REPLY
        assert backend.take() == b""
        client.send(b"Epsv\r\n")
        assert client.take() == b"229 Entering Extended Passive Mode (|||30001|)\r\n"

    def test_tooLongLine(self) -> None:
        h = ProxyHarness(maxLineLength=512)
        client, backend = h.startSession()
        client.send(b"NOOP " + b"x" * 300)
        client.send(b"x" * 300 + b"\r\nNOOP\r\n")
        assert client.take() == b"500 Command line too long.\r\n"
        assert backend.take() == b"NOOP\r\n"
        backend.send(b"200 ok\r\n")
        assert client.take() == b"200 ok\r\n"
        assert not client.closed

    @pytest.mark.parametrize("line", [b"", b"   ", b"12AB x", b"TOOLONGVERB x"])
    def test_unparseableLine(self, h: ProxyHarness, line: bytes) -> None:
        client, backend = h.startSession()
        client.send(line + b"\r\n")
        assert client.take() == b"500 Syntax error, command unrecognized.\r\n"
        assert backend.take() == b""

    def test_telnetStripped(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"\xff\xfb\x01NO\xff\xf1OP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_iacDoubledTowardsBackend(self, h: ProxyHarness) -> None:
        """
        A file name with a 0xFF byte (sent doubled by the client, as Telnet
        wants) reaches the backend doubled again.
        """
        client, backend = h.startSession()
        client.send(b"DELE caf\xff\xff.txt\r\n")
        assert backend.take() == b"DELE caf\xff\xff.txt\r\n"
        backend.send(b"250 deleted\r\n")
        assert client.take() == b"250 deleted\r\n"
        openDownload(h, client, backend, command=b"RETR \xff\xff")
        # (openDownload checked the doubled form of the RETR as well.)

    def test_repliesRelayedByteForByte(self, h: ProxyHarness) -> None:
        """
        A backend's reply reaches the client unchanged, 0xFF bytes (already
        doubled by the backend) included.
        """
        client, backend = h.startSession()
        client.send(b"MKD caf\xff\xff\r\n")
        assert backend.take() == b"MKD caf\xff\xff\r\n"
        reply = b'257 "/caf\xff\xff" created\r\n'
        backend.send(reply)
        assert client.take() == reply

    def test_unsolicited421(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        backend.send(b"421 Idle timeout.\r\n")
        assert client.take() == b"421 Idle timeout.\r\n"
        assert client.closed
        assert backend.closed
        assertQuiet(h)

    def test_longPipelineIsALoop(self) -> None:
        """
        Thousands of commands in one read are taken one after the other
        without the stack growing with them, COMMANDS_PER_TURN per reactor
        turn.
        """
        h = ProxyHarness(maxInvalidCommands=0)
        client, backend = h.startSession()
        client.send(b"\r\n" * 20000)
        refused = b"500 Syntax error, command unrecognized.\r\n"
        assert client.take() == refused * COMMANDS_PER_TURN
        # The rest waits for the next reactor turn (task.Clock runs the
        # turns that follow it in the same advance).
        now = h.reactor.seconds()
        assert len([c for c in h.reactor.getDelayedCalls() if c.getTime() == now]) == 1
        h.flush()
        assert client.take() == refused * (20000 - COMMANDS_PER_TURN)
        assert client.transport.producerState == "producing"
        assertQuietTransfer(h)

    def test_manyPipelinedCommandsStopReading(self, h: ProxyHarness) -> None:
        """
        A client that sends command after command while one is outstanding
        is no longer read beyond a bound, and read again when the queue has
        drained.
        """
        client, backend = h.startSession()
        count = MAX_QUEUED_COMMANDS + 5
        client.send(b"NOOP\r\n" * count)
        assert client.transport.producerState == "paused"
        for n in range(count):
            assert backend.take() == b"NOOP\r\n"
            backend.send(b"200 ok\r\n")
        assert client.take() == b"200 ok\r\n" * count
        assert client.transport.producerState == "producing"

    def test_feat(self, h: ProxyHarness) -> None:
        """
        FEAT lists the proxy's own features, then the backend's minus those
        about TLS and data connections.
        """
        client, backend = h.startSession()
        client.send(b"FEAT\r\n")
        assert backend.take() == b"FEAT\r\n"
        backend.send(
            b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPSV\r\n EPRT\r\n"
            b" SIZE\r\n MDTM\r\n REST STREAM\r\n UTF8\r\n211 End\r\n"
        )
        assert client.take() == (
            b"211-Features:\r\n EPSV\r\n EPRT\r\n SIZE\r\n MDTM\r\n REST STREAM\r\n"
            b" UTF8\r\n211 End\r\n"
        )

    def test_featUnknownToBackend(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"FEAT\r\n")
        backend.take()
        backend.send(b"500 FEAT not understood.\r\n")
        assert client.take() == b"211-Features:\r\n EPSV\r\n EPRT\r\n211 End\r\n"

    def test_quit(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"QUIT\r\n")
        assert backend.take() == b"QUIT\r\n"
        backend.send(b"221 Goodbye.\r\n")
        assert client.take() == b"221 Goodbye.\r\n"
        assert client.closed and backend.closed
        assertQuiet(h)
        assert h.pool.backends[0].activeSessions == 0
        assert h.pool.backends[0].totalSessions == 1

    def test_quitBackendHangsUp(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"QUIT\r\n")
        backend.hangUp()
        assert client.take() == b"221 Goodbye.\r\n"
        assert client.closed
        assertQuiet(h)


# -- choosing a backend -----------------------------------------------------------


class TestFailover:
    def test_refusedThenNext(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        h.nextConnect("127.0.0.2", 2001).fail()
        beta = h.nextConnect("127.0.0.3", 2002).complete()
        beta.send(b"220 beta ready\r\n")
        assert client.take() == b"220 beta ready\r\n"
        client.send(b"NOOP\r\n")
        assert beta.take() == b"NOOP\r\n"

    def test_bannerTimeout(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        alpha = h.nextConnect("127.0.0.2").complete()
        h.advance(h.config.connectTimeout - 0.1)
        assert h.newConnects() == []
        h.advance(0.1)
        assert alpha.transport.aborted
        beta = h.nextConnect("127.0.0.3").complete()
        alpha.send(BANNER)  # too late: ignored
        beta.send(b"220 beta ready\r\n")
        assert client.take() == b"220 beta ready\r\n"
        h.flush()
        assert h.reactor.getDelayedCalls() == []

    def test_busyBanner(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        alpha = h.nextConnect("127.0.0.2").complete()
        alpha.send(b"421 Too many users, try later.\r\n")
        assert alpha.closed
        beta = h.nextConnect("127.0.0.3").complete()
        beta.send(b"220 beta ready\r\n")
        assert client.take() == b"220 beta ready\r\n"

    def test_closedBeforeBanner(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        h.nextConnect("127.0.0.2").complete().hangUp()
        beta = h.nextConnect("127.0.0.3").complete()
        beta.send(b"220 beta ready\r\n")
        assert client.take() == b"220 beta ready\r\n"

    def test_allRefused(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        h.nextConnect("127.0.0.2").fail()
        h.nextConnect("127.0.0.3").fail()
        assert client.take() == b"421 Service not available, no backend server is reachable.\r\n"
        assert client.closed
        assertQuiet(h)

    def test_allTimeOut(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        h.nextConnect("127.0.0.2").complete()
        h.advance(h.config.connectTimeout)
        h.nextConnect("127.0.0.3").complete()
        h.advance(h.config.connectTimeout)
        assert client.take() == b"421 Service not available, no backend server is reachable.\r\n"
        assert client.closed
        assertQuiet(h)

    def test_lastBackendBusy(self, h: ProxyHarness) -> None:
        """
        When the last backend greets with an error, the client gets that
        reply.
        """
        client = h.connectClient()
        h.nextConnect("127.0.0.2").fail()
        h.nextConnect("127.0.0.3").complete().send(b"421 Too many users.\r\n")
        assert client.take() == b"421 Too many users.\r\n"
        assert client.closed
        assertQuiet(h)

    def test_activeSessionsClientLeavesBeforeBanner(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        h.nextConnect().complete()
        client.hangUp()
        h.flush()
        assert [b.activeSessions for b in h.pool.backends] == [0, 0]

    def test_activeSessionsLastBackendBusy(self, h: ProxyHarness) -> None:
        h.connectClient()
        h.nextConnect("127.0.0.2").fail()
        h.nextConnect("127.0.0.3").complete().send(b"421 Too many users.\r\n")
        h.flush()
        assert [b.activeSessions for b in h.pool.backends] == [0, 0]

    def test_activeSessionsCounted(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        assert [b.activeSessions for b in h.pool.backends] == [1, 0]
        client.hangUp()
        h.flush()
        assert [b.activeSessions for b in h.pool.backends] == [0, 0]
        assert h.pool.backends[0].totalSessions == 1

    def test_commandsBeforeBannerWait(self, h: ProxyHarness) -> None:
        """
        Commands sent before any backend greeted are kept, and go to the
        backend that finally does.
        """
        client = h.connectClient()
        client.send(b"USER anonymous\r\nPASS guest\r\nPASV\r\n")
        alpha = h.nextConnect("127.0.0.2").complete()
        alpha.send(b"421 Busy.\r\n")
        assert alpha.take() == b""
        beta = h.nextConnect("127.0.0.3").complete()
        assert client.take() == b""
        beta.send(b"220 beta ready\r\n")
        assert beta.take() == b"USER anonymous\r\n"
        beta.send(b"331 Password please.\r\n")
        assert beta.take() == b"PASS guest\r\n"
        beta.send(b"230 Welcome.\r\n")
        assert client.take() == (
            b"220 beta ready\r\n331 Password please.\r\n230 Welcome.\r\n" + FIRST_PASSIVE_REPLY
        )

    def test_roundRobin(self, h: ProxyHarness) -> None:
        h.connectClient()
        h.nextConnect("127.0.0.2")
        h.connectClient(port=40010)
        h.nextConnect("127.0.0.3")
        h.connectClient(port=40020)
        h.nextConnect("127.0.0.2")

    def test_clientLeavesWhileConnecting(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        attempt = h.nextConnect()
        client.hangUp()
        assert attempt.cancelled
        assert h.newConnects() == []
        assertQuiet(h)

    def test_clientLeavesBeforeBanner(self, h: ProxyHarness) -> None:
        client = h.connectClient()
        alpha = h.nextConnect().complete()
        client.hangUp()
        assert alpha.closed
        assertQuiet(h)


# -- passive mode towards the client -----------------------------------------------


class TestPassive:
    def test_pasv(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"PASV\r\n")
        assert client.take() == FIRST_PASSIVE_REPLY
        assert backend.take() == b""
        (port, factory, backlog, interface) = h.reactor.tcpServers[-1]
        assert port == 30000
        assert port in PASSIVE_PORTS
        assert interface == PROXY_HOST

    def test_publicAddress(self) -> None:
        h = ProxyHarness(publicAddress="127.0.0.10")
        client, _ = h.startSession()
        client.send(b"PASV\r\n")
        assert client.take() == b"227 Entering Passive Mode (127,0,0,10,117,48).\r\n"

    def test_epsv(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        client.send(b"EPSV\r\nEPSV 1\r\n")
        assert client.take() == (
            b"229 Entering Extended Passive Mode (|||30000|)\r\n"
            b"229 Entering Extended Passive Mode (|||30001|)\r\n"
        )

    def test_newPassiveReleasesPrevious(self, h: ProxyHarness) -> None:
        """
        A session holds one passive port: a second PASV gives the first back
        (a connection to it is refused) and takes another.
        """
        client, _ = h.startSession()
        first = pasv(client)
        second = pasv(client)
        assert first != second
        assert h.factory.services.passivePorts.owned == 1
        assert h.connectData(first) is None
        assert h.connectData(second) is not None

    def test_rangeUsedInTurn(self, h: ProxyHarness) -> None:
        """
        Ports are taken in turn; a released one is offered again once more
        than REUSE_AFTER ports are idle, the longest idle first.
        """
        client, _ = h.startSession()
        ports = [pasv(client) for _ in range(REUSE_AFTER + 4)]
        fresh = REUSE_AFTER + 1
        assert ports[:fresh] == list(range(30000, 30000 + fresh))
        assert ports[fresh:] == [30000, 30001, 30002]
        # Bound once each: no port was opened twice.
        assert len(h.reactor.tcpServers) == fresh

    def test_busyPortsSkipped(self, h: ProxyHarness) -> None:
        h.reactor.busyPorts.update({30000, 30001})
        client, _ = h.startSession()
        assert pasv(client) == 30002

    def test_sessionsShareTheRange(self, h: ProxyHarness) -> None:
        """
        Ports held by one session are skipped for another; when all are
        held, PASV fails with 425 and the session goes on.
        """
        first, _ = h.startSession()
        second, _ = h.startSession(port=40010)
        assert pasv(first) == 30000
        assert pasv(second) == 30001
        assert pasv(first) == 30002  # 30000 is released but not reused at once
        sessions = [h.startSession(port=40100 + n)[0] for n in range(7)]
        assert [pasv(c) for c in sessions] == [30003, 30004, 30005, 30006, 30007, 30008, 30009]
        pool = h.factory.services.passivePorts
        assert pool.owned == 9
        assert pasv(sessions[0]) == 30000  # and 30003 is released
        extra, _ = h.startSession(port=40200)
        assert pasv(extra) == 30003
        assert pool.owned == 10
        last, _ = h.startSession(port=40300)
        last.send(b"PASV\r\n")
        assert last.take() == b"425 Can't open data connection: no free passive port.\r\n"
        assert not last.closed

    def test_rangeExhausted(self, h: ProxyHarness) -> None:
        h.reactor.busyPorts.update(range(30000, 30010))
        client, _ = h.startSession()
        client.send(b"PASV\r\n")
        assert client.take() == b"425 Can't open data connection: no free passive port.\r\n"
        assert not client.closed

    def test_epsvAll(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"EPSV ALL\r\n")
        assert client.take() == b"200 EPSV ALL accepted.\r\n"
        client.send(b"PASV\r\nPORT 127,0,0,5,156,65\r\nEPRT |1|127.0.0.5|40001|\r\n")
        assert client.take() == (
            b"503 PASV not allowed after EPSV ALL.\r\n"
            b"503 PORT not allowed after EPSV ALL.\r\n"
            b"503 EPRT not allowed after EPSV ALL.\r\n"
        )
        assert h.reactor.tcpServers == []
        assert h.newConnects() == []
        client.send(b"EPSV\r\n")
        assert client.take() == b"229 Entering Extended Passive Mode (|||30000|)\r\n"
        assert backend.take() == b""

    def test_epsvWrongFamily(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        client.send(b"EPSV 2\r\n")
        assert client.take() == b"522 Network protocol not supported, use (1).\r\n"
        assert h.reactor.tcpServers == []

    def test_epsvBadArgument(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        client.send(b"EPSV 3\r\n")
        assert client.take() == b"501 Syntax error in EPSV argument.\r\n"

    def test_ipv6Control(self, h: ProxyHarness) -> None:
        client, _ = h.startSession(host="::1", localHost="::1")
        client.send(b"PASV\r\n")
        assert client.take() == b"500 PASV cannot name an IPv6 address; use EPSV.\r\n"
        client.send(b"EPSV 1\r\n")
        assert client.take() == b"522 Network protocol not supported, use (2).\r\n"
        client.send(b"EPSV 2\r\n")
        assert client.take() == b"229 Entering Extended Passive Mode (|||30000|)\r\n"
        assert h.reactor.tcpServers[-1][3] == "::1"

    def test_ipv4MappedControl(self, h: ProxyHarness) -> None:
        """
        On a dual-stack listener an IPv4 client shows up with mapped
        addresses; PASV names the plain IPv4 address.
        """
        client, _ = h.startSession(host="::ffff:127.0.0.5", localHost="::ffff:127.0.0.1")
        client.send(b"PASV\r\nEPSV 2\r\n")
        assert client.take() == (
            FIRST_PASSIVE_REPLY + b"522 Network protocol not supported, use (1).\r\n"
        )

    def test_foreignDataConnectionRefused(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        port = pasv(client)
        assert h.connectData(port, host=FOREIGN_HOST) is None
        assert h.factory.services.passivePorts.owned == 1
        accepted = h.connectData(port)
        assert accepted is not None
        assert not accepted.closed
        # The port is released once the client's connection is there.
        assertNoPortHeld(h)
        assert h.connectData(port, sourcePort=40002) is None

    def test_secondConnectionRefused(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        port = pasv(client)
        listener = h.reactor.openPorts()[0]
        assert h.connectData(port) is not None
        assert listener.factory.buildProtocol(address(CLIENT_HOST, 40002)) is None

    def test_ipv4MappedDataConnectionAccepted(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        port = pasv(client)
        assert h.connectData(port, host="::ffff:127.0.0.5") is not None

    def test_passiveListenerClosedWithSession(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.hangUp()
        # Nothing was owed: the backend connection is closed cleanly.
        assert backend.closed and not backend.transport.aborted
        assertQuiet(h)


# -- transfers ---------------------------------------------------------------------


class TestDownload:
    def test_retr(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"RETR file.bin\r\n")
        # The proxy asks the backend for passive mode itself ...
        assert backend.take() == b"EPSV\r\n"
        backend.send(EPSV_REPLY)
        # ... connects to that port on the backend's control address ...
        attempt = h.nextConnect("127.0.0.2", BACKEND_DATA_PORT)
        assert attempt.timeout == h.config.connectTimeout
        # ... and sends the command only once connected.
        assert backend.take() == b""
        backendData = attempt.complete()
        assert backend.take() == b"RETR file.bin\r\n"
        clientData = h.connectData(port)
        backend.send(b"150 Opening BINARY mode data connection.\r\n")
        assert client.take() == b"150 Opening BINARY mode data connection.\r\n"

        backendData.send(b"first chunk,")
        backendData.send(b"second chunk")
        assert clientData.take() == b"first chunk,second chunk"
        assert clientData.transport.producer is backendData.transport

        # The 226 waits for the data connections to close.
        backend.send(b"226 Transfer complete.\r\n")
        assert client.take() == b""
        backendData.hangUp()
        assert clientData.transport.disconnecting
        assert not clientData.transport.aborted
        assert client.take() == b""
        h.flush()
        assert client.take() == b"226 Transfer complete.\r\n"
        assertQuietTransfer(h)

        # The session goes on.
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_dataClosedBefore226(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 Here it comes.\r\n")
        backendData.send(b"data")
        backendData.hangUp()
        h.flush()
        assert clientData.transport.lost
        assert client.take() == b"150 Here it comes.\r\n"
        backend.send(b"226 Done.\r\n")
        assert client.take() == b"226 Done.\r\n"
        assert clientData.take() == b"data"

    def test_clientConnectsLate(self, h: ProxyHarness) -> None:
        """
        The backend may send (and finish) before the client's data
        connection exists: the data is kept and delivered.
        """
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"RETR small.txt\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        backendData = h.nextConnect().complete()
        backend.send(b"150 Opening.\r\n")
        backendData.send(b"tiny")
        backendData.hangUp()
        backend.send(b"226 Done.\r\n")
        assert client.take() == b"150 Opening.\r\n"
        clientData = h.connectData(port)
        assert clientData.take() == b"tiny"
        assert client.take() == b""
        h.flush()
        assert client.take() == b"226 Done.\r\n"

    def test_list(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend, command=b"LIST")
        backend.send(b"150 Listing.\r\n")
        backendData.send(b"-rw-r--r-- 1 ftp ftp 4 Jan 1 00:00 a\r\n")
        backendData.hangUp()
        backend.send(b"226 Listed.\r\n")
        h.flush()
        assert clientData.take() == b"-rw-r--r-- 1 ftp ftp 4 Jan 1 00:00 a\r\n"
        assert client.take() == b"150 Listing.\r\n226 Listed.\r\n"

    def test_clientDataClosedMidDownload(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        backendData.send(b"part")
        clientData.hangUp()
        assert backendData.transport.aborted
        h.flush()
        backend.send(b"426 Connection closed; transfer aborted.\r\n")
        assert client.take() == b"150 ok\r\n426 Connection closed; transfer aborted.\r\n"
        assertQuietTransfer(h)

    def test_slowClientSlowsBackend(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        clientData.transport.producer.pauseProducing()
        assert backendData.transport.producerState == "paused"
        clientData.transport.producer.resumeProducing()
        assert backendData.transport.producerState == "producing"

    def test_epsvFallback(self, h: ProxyHarness) -> None:
        """
        A backend without EPSV gets PASV, now and for later transfers.
        """
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"RETR a\r\n")
        assert backend.take() == b"EPSV\r\n"
        backend.send(b"500 EPSV not understood.\r\n")
        assert backend.take() == b"PASV\r\n"
        assert client.take() == b""
        backend.send(PASV_REPLY)
        backendData = h.nextConnect("127.0.0.2", BACKEND_DATA_PORT).complete()
        assert backend.take() == b"RETR a\r\n"
        clientData = h.connectData(port)
        backend.send(b"150 ok\r\n")
        backendData.hangUp()
        backend.send(b"226 ok\r\n")
        h.flush()
        assert client.take() == b"150 ok\r\n226 ok\r\n"
        assert clientData.transport.lost

        pasv(client)
        client.send(b"RETR b\r\n")
        assert backend.take() == b"PASV\r\n"

    def test_pasvNamingAnotherHost(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(b"500 no EPSV\r\n")
        backend.take()
        clientData = h.connectData(port)
        backend.send(b"227 Entering Passive Mode (127,0,0,9,121,24).\r\n")
        assert client.take() == b"425 Can't open data connection to the backend.\r\n"
        assert h.newConnects() == []
        assert backend.take() == b"ABOR\r\n"  # cancels the backend's passive mode
        backend.send(b"225 ABOR command successful.\r\n")
        assert client.take() == b""
        assert clientData.transport.aborted
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    @pytest.mark.parametrize("policy, host", [("control", "127.0.0.2"), ("any", "127.0.0.9")])
    def test_dataAddressPolicy(self, policy: str, host: str) -> None:
        h = ProxyHarness(backends=(attrs.evolve(ALPHA, dataAddress=policy), BETA))
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(b"502 no EPSV\r\n")
        assert backend.take() == b"PASV\r\n"
        backend.send(b"227 Entering Passive Mode (127,0,0,9,121,24).\r\n")
        h.nextConnect(host, BACKEND_DATA_PORT).complete()
        assert backend.take() == b"RETR a\r\n"

    def test_pasvWithoutParentheses(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(b"500 no EPSV\r\n")
        backend.take()
        backend.send(b"227 Entering passive mode 127,0,0,2,121,24\r\n")
        h.nextConnect("127.0.0.2", BACKEND_DATA_PORT)

    @pytest.mark.parametrize(
        "useEpsv, reply",
        [
            (False, b"227 Entering Passive Mode (127,0,0,2,3,255).\r\n"),
            (True, b"229 Entering Extended Passive Mode (|||21|)\r\n"),
        ],
    )
    def test_lowBackendDataPort(self, h: ProxyHarness, useEpsv: bool, reply: bytes) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        if not useEpsv:
            backend.send(b"500 no EPSV\r\n")
            backend.take()
        backend.send(reply)
        assert client.take() == b"425 Can't open data connection to the backend.\r\n"
        assert h.newConnects() == []
        # The backend's passive mode is cancelled; its reply goes nowhere.
        assert backend.take() == b"ABOR\r\n"
        backend.send(b"225 No transfer to ABOR.\r\n")
        assert client.take() == b""
        assertQuietTransfer(h)

    def test_lowBackendDataPortAllowed(self) -> None:
        h = ProxyHarness(backends=(attrs.evolve(ALPHA, allowLowDataPorts=True),))
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(b"229 Entering Extended Passive Mode (|||20|)\r\n")
        h.nextConnect("127.0.0.2", 20)

    @pytest.mark.parametrize(
        "reply", [b"229 Entering Extended Passive Mode\r\n", b"425 No data port.\r\n"]
    )
    def test_unusableEpsvReply(self, h: ProxyHarness, reply: bytes) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(reply)
        assert client.take() == b"425 Can't open data connection to the backend.\r\n"
        assert h.newConnects() == []

    def test_backendDataConnectFails(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        h.nextConnect().fail()
        assert client.take() == b"425 Can't open data connection to the backend.\r\n"
        assert backend.take() == b"ABOR\r\n"  # cancels the backend's passive mode
        backend.send(b"225 ABOR command successful.\r\n")
        assert client.take() == b""
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_restReplayed(self, h: ProxyHarness) -> None:
        """
        REST is answered by the proxy and replayed to the backend after the
        proxy's EPSV and data connection, right before the RETR.
        """
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"REST 100\r\n")
        assert client.take() == b"350 Restarting at 100. Send STORE or RETRIEVE.\r\n"
        assert backend.take() == b""
        client.send(b"RETR big.iso\r\n")
        assert backend.take() == b"EPSV\r\n"
        backend.send(EPSV_REPLY)
        assert backend.take() == b""
        h.nextConnect().complete()
        assert backend.take() == b"REST 100\r\n"
        backend.send(b"350 Restarting at 100.\r\n")
        assert backend.take() == b"RETR big.iso\r\n"
        assert client.take() == b""
        h.connectData(port)
        backend.send(b"150 ok\r\n")
        assert client.take() == b"150 ok\r\n"

    def test_restRefusedByBackend(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        port = pasv(client)
        clientData = h.connectData(port)
        client.send(b"REST 100\r\nRETR a\r\n")
        assert client.take() == b"350 Restarting at 100. Send STORE or RETRIEVE.\r\n"
        backend.take()
        backend.send(EPSV_REPLY)
        backendData = h.nextConnect().complete()
        assert backend.take() == b"REST 100\r\n"
        backend.send(b"502 REST not implemented.\r\n")
        assert client.take() == b"502 REST not implemented.\r\n"
        assert backend.take() == b"ABOR\r\n"  # cancels the backend's passive mode
        backend.send(b"225 ABOR command successful.\r\n")
        assert client.take() == b""
        assert backendData.transport.aborted and clientData.transport.aborted
        assertQuietTransfer(h)

    def test_restForgottenAfterRein(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"REST 100\r\nREIN\r\n")
        assert backend.take() == b"REIN\r\n"
        backend.send(b"220 ready\r\n")
        assert client.take() == (
            b"350 Restarting at 100. Send STORE or RETRIEVE.\r\n220 ready\r\n"
        )
        h.logIn(client, backend)
        openDownload(h, client, backend)

    def test_restKeptOverPasvAndType(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"REST 100\r\nTYPE I\r\n")
        assert backend.take() == b"TYPE I\r\n"
        backend.send(b"200 Type set to I.\r\n")
        assert client.take() == (
            b"350 Restarting at 100. Send STORE or RETRIEVE.\r\n200 Type set to I.\r\n"
        )
        pasv(client)
        client.send(b"RETR big.iso\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        h.nextConnect().complete()
        assert backend.take() == b"REST 100\r\n"

    def test_restNotNumericRelayed(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"REST abc\r\n")
        assert backend.take() == b"REST abc\r\n"
        backend.send(b"501 Bad marker.\r\n")
        assert client.take() == b"501 Bad marker.\r\n"

    def test_errorBefore150(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend, command=b"RETR missing")
        backend.send(b"550 No such file.\r\n")
        assert client.take() == b"550 No such file.\r\n"
        assert clientData.transport.aborted
        assert backendData.transport.aborted
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_errorBefore150ClientNotYetConnected(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"RETR missing\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        h.nextConnect().complete()
        backend.send(b"550 No such file.\r\n")
        assert client.take() == b"550 No such file.\r\n"
        # The passive port is given back with the transfer.
        assert h.connectData(port) is None
        assertQuietTransfer(h)

    def test_noDataChannel(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"RETR a\r\n")
        assert client.take() == b"425 Use PORT, EPRT, PASV or EPSV first.\r\n"
        assert backend.take() == b""

    def test_dataChannelUsedOnce(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        backendData.hangUp()
        backend.send(b"226 ok\r\n")
        h.flush()
        client.take()
        client.send(b"RETR again\r\n")
        assert client.take() == b"425 Use PORT, EPRT, PASV or EPSV first.\r\n"

    def test_clientNeverConnects(self) -> None:
        h = ProxyHarness(dataConnectionTimeout=5.0)
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        backendData = h.nextConnect().complete()
        assert backend.take() == b"RETR a\r\n"
        backend.send(b"150 ok\r\n")
        assert client.take() == b"150 ok\r\n"
        h.advance(4.9)
        assert client.take() == b""
        h.advance(0.1)
        assert backendData.transport.aborted
        backend.send(b"426 Connection closed; transfer aborted.\r\n")
        assert client.take() == b"425 Can't open data connection: timed out.\r\n"
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_clientNeverConnectsWhileProxyConnects(self) -> None:
        h = ProxyHarness(dataConnectionTimeout=5.0)
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        attempt = h.nextConnect()
        h.advance(5.0)
        assert client.take() == b"425 Can't open data connection: timed out.\r\n"
        assert attempt.cancelled
        assert backend.take() == b"ABOR\r\n"  # cancels the backend's passive mode
        backend.send(b"225 ABOR command successful.\r\n")
        assert client.take() == b""
        assertQuietTransfer(h)


class TestUpload:
    def test_stor(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        port = pasv(client)
        clientData = h.connectData(port)
        # Data the client sends before the backend leg exists is kept.
        clientData.send(b"early ")
        client.send(b"STOR up.bin\r\n")
        assert backend.take() == b"EPSV\r\n"
        backend.send(EPSV_REPLY)
        backendData = h.nextConnect("127.0.0.2", BACKEND_DATA_PORT).complete()
        assert backend.take() == b"STOR up.bin\r\n"
        backend.send(b"150 Ok to send data.\r\n")
        assert client.take() == b"150 Ok to send data.\r\n"
        clientData.send(b"upload")
        assert backendData.take() == b"early upload"
        assert backendData.transport.producer is clientData.transport
        # Bytes from the backend on an upload are dropped.
        backendData.send(b"noise")
        assert clientData.take() == b""
        clientData.hangUp()
        assert backendData.transport.disconnecting
        assert not backendData.transport.aborted
        h.flush()
        assert client.take() == b""
        backend.send(b"226 Transfer complete.\r\n")
        assert client.take() == b"226 Transfer complete.\r\n"
        assertQuietTransfer(h)

    def test_uploadFinishedBeforeBackendConnects(self, h: ProxyHarness) -> None:
        """
        A small upload can be sent and closed before the proxy's connection
        to the backend exists; the backend still gets all of it.
        """
        client, backend = h.startSession()
        port = pasv(client)
        client.send(b"STOR small\r\n")
        clientData = h.connectData(port)
        clientData.send(b"all of it")
        clientData.hangUp()
        backend.take()
        backend.send(EPSV_REPLY)
        backendData = h.nextConnect().complete()
        assert backend.take() == b"STOR small\r\n"
        assert backendData.take() == b"all of it"
        assert backendData.transport.disconnecting and not backendData.transport.aborted
        backend.send(b"150 ok\r\n226 stored\r\n")
        h.flush()
        assert client.take() == b"150 ok\r\n226 stored\r\n"
        assertQuietTransfer(h)

    def test_backendGivesUpMidUpload(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend, command=b"STOR big")
        backend.send(b"150 ok\r\n")
        clientData.send(b"bytes")
        backendData.hangUp()
        assert clientData.transport.aborted
        backend.send(b"552 Disk full.\r\n")
        assert client.take() == b"150 ok\r\n"
        h.flush()
        assert client.take() == b"552 Disk full.\r\n"
        assertQuietTransfer(h)

    @pytest.mark.parametrize("verb", [b"APPE", b"STOU"])
    def test_otherUploads(self, h: ProxyHarness, verb: bytes) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend, command=verb + b" x")
        clientData.send(b"bytes")
        assert backendData.take() == b"bytes"


class TestActive:
    def test_port(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"PORT 127,0,0,5,156,65\r\n")
        assert client.take() == b"200 PORT command successful.\r\n"
        assert backend.take() == b""
        # Nothing is connected before the transfer command.
        assert h.newConnects() == []
        client.send(b"RETR a\r\n")
        toClient = h.nextConnect(CLIENT_HOST, 40001)
        assert toClient.bindAddress == (PROXY_HOST, 0)
        assert backend.take() == b"EPSV\r\n"
        backend.send(EPSV_REPLY)
        backendData = h.nextConnect("127.0.0.2", BACKEND_DATA_PORT).complete()
        assert backend.take() == b"RETR a\r\n"
        clientData = toClient.complete(localHost=CLIENT_HOST, localPort=40001)
        backend.send(b"150 ok\r\n")
        backendData.send(b"active data")
        assert clientData.take() == b"active data"
        backendData.hangUp()
        backend.send(b"226 ok\r\n")
        h.flush()
        assert client.take() == b"150 ok\r\n226 ok\r\n"
        assertQuietTransfer(h)

    def test_eprt(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"EPRT |1|127.0.0.5|40001|\r\n")
        assert client.take() == b"200 EPRT command successful.\r\n"
        client.send(b"LIST\r\n")
        attempt = h.nextConnect(CLIENT_HOST, 40001)
        assert attempt.bindAddress == (PROXY_HOST, 0)

    def test_eprtIPv6(self, h: ProxyHarness) -> None:
        client, backend = h.startSession(host="::1", localHost="::1")
        client.send(b"EPRT |2|::1|40001|\r\nEPRT |1|127.0.0.1|40001|\r\n")
        assert client.take() == (
            b"200 EPRT command successful.\r\n"
            b"522 Network protocol not supported, use (2).\r\n"
        )

    def test_portOnDualStackListener(self, h: ProxyHarness) -> None:
        client, _ = h.startSession(host="::ffff:127.0.0.5", localHost="::ffff:127.0.0.1")
        client.send(b"PORT 127,0,0,5,156,65\r\n")
        assert client.take() == b"200 PORT command successful.\r\n"
        client.send(b"RETR a\r\n")
        attempt = h.nextConnect(CLIENT_HOST, 40001)
        assert attempt.bindAddress == (PROXY_HOST, 0)

    def test_eprtWrongFamily(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        client.send(b"EPRT |2|::1|40001|\r\n")
        assert client.take() == b"522 Network protocol not supported, use (1).\r\n"

    @pytest.mark.parametrize(
        "command, reply",
        [
            (b"PORT 127,0,0,9,156,65", b"504 PORT refused: data connections go only to your own address.\r\n"),
            (b"EPRT |1|127.0.0.9|40001|", b"504 EPRT refused: data connections go only to your own address.\r\n"),
            (b"PORT 127,0,0,5,0,21", b"504 PORT refused: port 21 is below 1024.\r\n"),
            (b"EPRT |1|127.0.0.5|1023|", b"504 EPRT refused: port 1023 is below 1024.\r\n"),
        ],
    )
    def test_refused(self, h: ProxyHarness, command: bytes, reply: bytes) -> None:
        client, backend = h.startSession()
        client.send(command + b"\r\n")
        assert client.take() == reply
        client.send(b"RETR a\r\n")
        assert client.take() == b"425 Use PORT, EPRT, PASV or EPSV first.\r\n"
        assert h.newConnects() == []
        assert backend.take() == b""

    def test_refusedPortDropsEarlierChannel(self, h: ProxyHarness) -> None:
        client, _ = h.startSession()
        pasv(client)
        client.send(b"PORT 127,0,0,9,156,65\r\n")
        client.take()
        assertNoPortHeld(h)

    def test_configuredLeniency(self) -> None:
        h = ProxyHarness(activeAnyHost=True, activeLowPorts=True)
        client, _ = h.startSession()
        client.send(b"PORT 127,0,0,9,0,21\r\nRETR a\r\n")
        assert client.take() == b"200 PORT command successful.\r\n"
        h.nextConnect(FOREIGN_HOST, 21)

    @pytest.mark.parametrize("command", [b"PORT 1,2,3", b"PORT 127,0,0,5,300,1", b"EPRT |x|"])
    def test_syntax(self, h: ProxyHarness, command: bytes) -> None:
        client, _ = h.startSession()
        client.send(command + b"\r\n")
        assert client.take().startswith(b"501 ")

    def test_connectToClientFails(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"PORT 127,0,0,5,156,65\r\nRETR a\r\n")
        client.take()
        h.nextConnect(CLIENT_HOST).fail()
        assert backend.take() == b"EPSV\r\n"
        backend.send(EPSV_REPLY)
        assert client.take() == b"425 Can't open data connection to your data port.\r\n"
        assert h.newConnects() == []
        assert backend.take() == b"ABOR\r\n"
        backend.send(b"225 No transfer to ABOR.\r\n")
        assert client.take() == b""
        assertQuietTransfer(h)


class TestAbort:
    def startTransfer(self, h: ProxyHarness) -> tuple[Peer, Peer, Peer, Peer]:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        backendData.send(b"some data")
        assert client.take() == b"150 ok\r\n"
        assert clientData.take() == b"some data"
        return client, backend, clientData, backendData

    @pytest.mark.parametrize("abor", [b"ABOR\r\n", b"\xff\xf4\xff\xf2ABOR\r\n", b"abor\r\n"])
    def test_duringTransfer(self, h: ProxyHarness, abor: bytes) -> None:
        client, backend, clientData, backendData = self.startTransfer(h)
        client.send(abor)
        assert backend.take() == abor.lstrip(b"\xff\xf4\xf2")
        assert clientData.transport.aborted
        assert backendData.transport.aborted
        h.flush()
        backend.send(b"426 Connection closed; transfer aborted.\r\n")
        backend.send(b"226 Abort successful.\r\n")
        assert client.take() == (
            b"426 Connection closed; transfer aborted.\r\n226 Abort successful.\r\n"
        )
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_backendCompletedBeforeAbort(self, h: ProxyHarness) -> None:
        """
        The backend's 226 for the transfer comes before its reply to ABOR
        (the transfer had finished): the client still gets one reply for
        the transfer and then the ABOR's.
        """
        client, backend, clientData, backendData = self.startTransfer(h)
        client.send(b"ABOR\r\n")
        backend.take()
        backend.send(b"226 Transfer complete.\r\n225 No transfer to abort.\r\n")
        h.flush()
        assert client.take() == b"426 Transfer aborted.\r\n225 No transfer to abort.\r\n"

    def test_whileFinalReplyHeld(self, h: ProxyHarness) -> None:
        """
        ABOR while the backend's 226 is held for a client still reading:
        the proxy answers the transfer with 426 and relays ABOR's reply.
        """
        client, backend, clientData, backendData = self.startTransfer(h)
        backend.send(b"226 Transfer complete.\r\n")
        assert client.take() == b""
        client.send(b"ABOR\r\n")
        assert client.take() == b"426 Transfer aborted.\r\n"
        assert clientData.transport.aborted
        assert backend.take() == b"ABOR\r\n"
        backend.send(b"225 No transfer to abort.\r\n")
        assert client.take() == b"225 No transfer to abort.\r\n"
        assertQuietTransfer(h)

    def test_whileNegotiating(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        port = pasv(client)
        clientData = h.connectData(port)
        client.send(b"RETR a\r\n")
        assert backend.take() == b"EPSV\r\n"
        client.send(b"ABOR\r\n")
        assert backend.take() == b""
        assert clientData.transport.aborted
        backend.send(EPSV_REPLY)
        assert client.take() == b"426 Transfer aborted.\r\n226 ABOR command successful.\r\n"
        assert h.newConnects() == []
        assert backend.take() == b"ABOR\r\n"  # cancels the backend's passive mode
        backend.send(b"225 ABOR command successful.\r\n")
        assert client.take() == b""
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_whileConnectingToBackend(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.take()
        backend.send(EPSV_REPLY)
        attempt = h.nextConnect()
        client.send(b"ABOR\r\n")
        assert client.take() == b"426 Transfer aborted.\r\n226 ABOR command successful.\r\n"
        assert attempt.cancelled
        assert backend.take() == b"ABOR\r\n"  # cancels the backend's passive mode
        backend.send(b"225 ABOR command successful.\r\n")
        assert client.take() == b""
        assertQuietTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b"NOOP\r\n"

    def test_inSameChunkAsRetr(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\nABOR\r\n")
        assert backend.take() == b"EPSV\r\n"
        backend.send(EPSV_REPLY)
        assert client.take() == b"426 Transfer aborted.\r\n226 ABOR command successful.\r\n"
        assert h.newConnects() == []

    def test_withoutTransfer(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"ABOR\r\n")
        assert backend.take() == b"ABOR\r\n"
        backend.send(b"225 No transfer to abort.\r\n")
        assert client.take() == b"225 No transfer to abort.\r\n"

    def test_otherCommandsWait(self, h: ProxyHarness) -> None:
        """
        During a transfer only ABOR and QUIT are acted on; other commands
        wait for the transfer's end.
        """
        client, backend, clientData, backendData = self.startTransfer(h)
        client.send(b"NOOP\r\n")
        assert backend.take() == b""
        backendData.hangUp()
        backend.send(b"226 ok\r\n")
        h.flush()
        assert client.take() == b"226 ok\r\n"
        assert backend.take() == b"NOOP\r\n"

    def test_quitDuringTransfer(self, h: ProxyHarness) -> None:
        client, backend, clientData, backendData = self.startTransfer(h)
        client.send(b"QUIT\r\n")
        assert backend.take() == b"QUIT\r\n"
        assert clientData.transport.aborted
        assert backendData.transport.aborted
        backend.send(b"426 Transfer aborted.\r\n221 Goodbye.\r\n")
        assert client.take() == b"426 Transfer aborted.\r\n221 Goodbye.\r\n"
        assert client.closed
        assert backend.closed
        assertQuiet(h)


class TestEndings:
    def test_backendLostMidSession(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        backend.hangUp()
        assert client.take() == b"421 Service not available, backend closed the connection.\r\n"
        assert client.closed
        assertQuiet(h)

    def test_backendLostDuringTransfer(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.hangUp()
        assert client.take() == b"421 Service not available, backend closed the connection.\r\n"
        assert clientData.transport.aborted
        assert backendData.transport.aborted
        assertQuiet(h)

    def test_backendMalformedReply(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"NOOP\r\n")
        backend.send(b"hello there\r\n")
        assert client.take() == b"421 Service not available, backend sent a malformed reply.\r\n"
        assert client.closed and backend.closed
        assertQuiet(h)

    def test_clientLeavesMidTransfer(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        client.hangUp()
        assert backend.transport.aborted
        assert clientData.transport.aborted
        assert backendData.transport.aborted
        assertQuiet(h)
        assert h.pool.backends[0].activeSessions == 0

    def test_clientLeavesWhileProxyConnectsData(self) -> None:
        h = ProxyHarness(dataConnectionTimeout=5.0)
        client, backend = h.startSession()
        pasv(client)
        client.send(b"RETR a\r\n")
        backend.send(EPSV_REPLY)
        attempt = h.nextConnect()
        client.hangUp()
        assert attempt.cancelled
        assertQuiet(h)

    def test_clientLeavesWithActiveChannel(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"PORT 127,0,0,5,156,65\r\nRETR a\r\n")
        attempt = h.nextConnect(CLIENT_HOST)
        client.hangUp()
        assert attempt.cancelled
        assertQuiet(h)

    def test_clientLeavesWithSessionTimers(self) -> None:
        """
        With the session-wide timers at their defaults, a session that ends
        mid-transfer still leaves no timer behind.
        """
        h = ProxyHarness(sessionTimers=True)
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        backendData.send(b"x")
        assert h.reactor.getDelayedCalls() != []
        client.hangUp()
        assertQuiet(h)

    def test_idleTimerSparesTransfers(self) -> None:
        h = ProxyHarness(sessionTimers=True, idleTimeout=10.0, dataStallTimeout=0, loginTimeout=0)
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        for _ in range(6):
            h.advance(5.0)
            backendData.send(b"x" * 10)
        assert not client.closed
        backendData.hangUp()
        backend.send(b"226 ok\r\n")
        h.flush()
        assert client.take() == b"150 ok\r\n226 ok\r\n"
        h.advance(9.9)
        assert not client.closed
        h.advance(0.1)
        assert client.take() == b"421 Idle timeout; closing control connection.\r\n"
        assert client.closed
        assertQuiet(h)

    def test_stalledTransferAborted(self) -> None:
        h = ProxyHarness(sessionTimers=True, idleTimeout=0, dataStallTimeout=5.0, loginTimeout=0)
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        h.advance(4.0)
        backendData.send(b"x")
        h.advance(4.0)
        assert not backendData.transport.aborted
        h.advance(6.0)
        assert backendData.transport.aborted and clientData.transport.aborted
        backend.send(b"426 Connection closed; transfer aborted.\r\n")
        assert client.take() == b"150 ok\r\n426 Data connection stalled; transfer aborted.\r\n"
        assertQuietTransfer(h)

    def test_noBackendsConfiguredForSession(self) -> None:
        """
        A pool emptied at run time (the demo fills it late) still answers.
        """
        h = ProxyHarness()
        h.pool.replace([])
        client = h.connectClient()
        assert client.take() == b"421 Service not available, no backend server is reachable.\r\n"
        assert client.closed
        assertQuiet(h)



# -- regressions ------------------------------------------------------------------------


def logEvents() -> tuple[list[dict], Any]:
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events, lambda: globalLogPublisher.removeObserver(events.append)


class TestRegressions:
    def test_frozenBackendDuringTransfer(self) -> None:
        """
        Defect 1: a backend that freezes mid-transfer (SIGSTOP) used to
        leave the client without a reply forever. Now the client hears 426
        once the stall timeout is up (plus at most a check interval), and
        the session ends when the backend's own reply does not come within
        the reply deadline.
        """
        h = ProxyHarness(sessionTimers=True, idleTimeout=900, dataStallTimeout=10.0, replyTimeout=5.0)
        client, backend = h.startSession()
        clientData, backendData = openDownload(h, client, backend)
        backend.send(b"150 ok\r\n")
        backendData.send(b"x" * 1000)
        assert client.take() == b"150 ok\r\n"
        # The backend says nothing more and sends nothing more.
        h.reactor.pump([0.5] * 20)
        assert client.take() == b""
        h.reactor.pump([0.5] * 5)
        assert client.take() == b"426 Data connection stalled; transfer aborted.\r\n"
        assert not client.closed
        h.reactor.pump([0.5] * 10)
        assert client.take() == b"421 Service not available, backend did not answer.\r\n"
        assert client.closed
        h.flush()
        assert backend.transport.aborted
        assertQuiet(h)

    def test_silentBackendAfterLogin(self) -> None:
        """
        Defect 1, second half: a backend that never answers a command does
        not hold the client past the reply deadline.
        """
        h = ProxyHarness(replyTimeout=5.0)
        client, backend = h.startSession()
        client.send(b"CWD /somewhere\r\n")
        assert backend.take() == b"CWD /somewhere\r\n"
        h.advance(4.9)
        assert client.take() == b""
        h.advance(0.1)
        assert client.take() == b"421 Service not available, backend did not answer.\r\n"
        assert client.closed
        assertQuiet(h)

    def test_unpromptedRepliesKeepStep(self, h: ProxyHarness) -> None:
        """
        Defect 2: extra replies from the backend are dropped, so the client
        gets the reply to each command, not the one before.
        """
        client, backend = h.startSession()
        client.send(b"NOOP\r\n")
        backend.take()
        backend.send(b"200 NOOP ok.\r\n200 stray\r\n200 another stray\r\n")
        assert client.take() == b"200 NOOP ok.\r\n"
        client.send(b"PWD\r\n")
        assert backend.take() == b"PWD\r\n"
        backend.send(b'257 "/" is the current directory.\r\n')
        assert client.take() == b'257 "/" is the current directory.\r\n'

    def test_clientLeavingWhileConnectingIsNoBackendFailure(self, h: ProxyHarness) -> None:
        """
        Defect 7: a client that hangs up while its backend connect is
        pending does not count against the backend.
        """
        client = h.connectClient()
        attempt = h.nextConnect()
        client.hangUp()
        assert attempt.cancelled
        h.flush()
        [alpha, beta] = h.pool.backends
        assert (alpha.connectFailures, alpha.consecutiveFailures) == (0, 0)
        assert dict(h.factory.metrics.backendConnectFailures) == {}
        assert h.newConnects() == []
        assertQuiet(h)

    def test_cancelledActiveConnectIsNoFailure(self, h: ProxyHarness) -> None:
        """
        Defect 9: cancelling a pending connect to the client's data port
        (the session ends) is not logged as a failed data connection.
        """
        events, stop = logEvents()
        try:
            client, backend = h.startSession()
            client.send(b"PORT 127,0,0,5,156,65\r\nRETR a\r\n")
            attempt = h.nextConnect(CLIENT_HOST)
            client.hangUp()
            h.flush()
        finally:
            stop()
        assert attempt.cancelled
        assert not [e for e in events if "data connection failed" in e.get("log_format", "")]
        assertQuiet(h)


class TestUserRouting:
    """
    Defect 3: under user-hash, USER and REIN follow the user.
    """

    def harness(self) -> ProxyHarness:
        return ProxyHarness(policy="user-hash")

    def usersOn(self, h: ProxyHarness) -> dict[str, str]:
        """
        A user name that hashes to each backend.
        """
        found: dict[str, str] = {}
        for n in range(100):
            name = f"user{n}"
            first = h.pool.candidates(CLIENT_HOST, user=name)[0].name
            found.setdefault(first, name)
            if len(found) == 2:
                return found
        raise AssertionError("no user for each backend")

    def login(self, h: ProxyHarness, client: Peer, user: str, host: str) -> Peer:
        client.send(f"USER {user}\r\n".encode())
        backend = h.nextConnect(host).complete()
        backend.send(b"220 ready\r\n")
        assert backend.take() == f"USER {user}\r\n".encode()
        backend.send(b"331 Password?\r\n")
        assert client.take() == b"331 Password?\r\n"
        client.send(b"PASS pw\r\n")
        assert backend.take() == b"PASS pw\r\n"
        backend.send(b"230 In.\r\n")
        assert client.take() == b"230 In.\r\n"
        return backend

    def test_secondUserMovesToItsBackend(self) -> None:
        h = self.harness()
        users = self.usersOn(h)
        client = h.connectClient()
        assert client.take() == b"220 ftpproxy ready.\r\n"
        first = self.login(h, client, users["alpha"], "127.0.0.2")
        # Another user, who belongs to beta: the session moves there.
        second = self.login(h, client, users["beta"], "127.0.0.3")
        h.flush()
        assert first.closed
        assert h.pool.backendNamed("alpha").activeSessions == 0
        assert h.pool.backendNamed("beta").activeSessions == 1
        client.send(b"PWD\r\n")
        assert second.take() == b"PWD\r\n"

    def test_movedUserLogsInAgain(self) -> None:
        """
        After a move to another backend the session is not logged in there
        until the backend says so: the login deadline runs again.
        """
        h = ProxyHarness(policy="user-hash", sessionTimers=True, loginTimeout=30.0, idleTimeout=0, dataStallTimeout=0)
        users = self.usersOn(h)
        client = h.connectClient()
        client.take()
        self.login(h, client, users["alpha"], "127.0.0.2")
        h.advance(60)
        assert not client.closed
        client.send(f"USER {users['beta']}\r\n".encode())
        second = h.nextConnect("127.0.0.3").complete()
        second.send(b"220 ready\r\n")
        assert second.take() == f"USER {users['beta']}\r\n".encode()
        second.send(b"331 Password?\r\n")
        assert client.take() == b"331 Password?\r\n"
        h.advance(30)
        assert client.take() == b"421 Login timed out; closing control connection.\r\n"
        assert client.closed

    def test_sameBackendUserStays(self) -> None:
        h = self.harness()
        users = self.usersOn(h)
        client = h.connectClient()
        client.take()
        backend = self.login(h, client, users["alpha"], "127.0.0.2")
        client.send(f"USER {users['alpha']}\r\n".encode())
        assert backend.take() == f"USER {users['alpha']}\r\n".encode()
        assert h.newConnects() == []

    def test_reinStartsOver(self) -> None:
        """
        REIN drops the backend and the user, EPSV ALL and PROT; the proxy
        greets again and the next USER chooses anew.
        """
        h = self.harness()
        users = self.usersOn(h)
        client = h.connectClient()
        client.take()
        first = self.login(h, client, users["alpha"], "127.0.0.2")
        client.send(b"EPSV ALL\r\n")
        assert client.take() == b"200 EPSV ALL accepted.\r\n"
        client.send(b"REIN\r\n")
        assert client.take() == b"220 ftpproxy ready.\r\n"
        h.flush()
        assert first.closed
        # Before USER, the proxy answers; data commands wait for a login.
        client.send(b"PASV\r\n")
        assert client.take() == b"530 Please log in with USER and PASS first.\r\n"
        second = self.login(h, client, users["beta"], "127.0.0.3")
        # EPSV ALL no longer holds.
        client.send(b"PASV\r\n")
        assert client.take().startswith(b"227 ")
        second.take()

    def test_reinWithoutUserHashIsRelayed(self, h: ProxyHarness) -> None:
        client, backend = h.startSession()
        client.send(b"EPSV ALL\r\n")
        client.take()
        client.send(b"REIN\r\n")
        assert backend.take() == b"REIN\r\n"
        backend.send(b"220 Ready for a new user.\r\n")
        assert client.take() == b"220 Ready for a new user.\r\n"
        # Logged out by REIN: data commands wait for the next login.
        client.send(b"PASV\r\n")
        assert client.take() == b"530 Please log in with USER and PASS first.\r\n"
        h.logIn(client, backend)
        client.send(b"PASV\r\n")
        assert client.take().startswith(b"227 ")


def test_runningSessionKeepsItsPassiveRange(h: ProxyHarness) -> None:
    """
    Defect 5: a reload's new passive range is for new sessions; a running
    session keeps the range it started with.
    """
    old, _ = h.startSession()
    newRange = attrs.evolve(PASSIVE_PORTS, low=PASSIVE_PORTS.low + 100, high=PASSIVE_PORTS.high + 100)
    h.factory.reconfigure(attrs.evolve(h.config, passivePorts=newRange), None)
    assert pasv(old) in PASSIVE_PORTS
    new, _ = h.startSession(banner=b"220 beta ready\r\n")
    assert pasv(new) in newRange
