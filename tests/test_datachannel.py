"""
Tests for L{ftpproxy.session.datachannel}: PASV, EPSV, LPSV, PORT, EPRT,
LPRT and REST answered by the proxy, with the passive listeners opened on a
memory reactor and the active connects recorded, not made.
"""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.verify import verifyObject

from ftpproxy.data.passive import PassivePortPool
from ftpproxy.session import datachannel
from ftpproxy.session.datachannel import DataChannelCommands
from ftpproxy.session.interfaces import IDataChannels
from ftpproxy.settings.config import ProxyConfig
from ftpproxy.tls.contexts import TLSSettings
from ftpproxy.wire.ftptext import parseLpsvReply
from tests.support.fakes import FakeChannel, FakeCommand, FakeProtection
from tests.support.memory import (
    ALPHA,
    CLIENT_HOST,
    FOREIGN_HOST,
    PASSIVE_PORTS,
    PROXY_HOST,
    ProxyReactor,
    address,
)

# Stands for the TLS server creator of PROT P data connections.
DATA_TLS = object()


class RecordedActive:
    """
    Stands in for L{ftpproxy.data.active.ActiveDataChannel}: records how it
    was made and whether it was closed.
    """

    made: list["RecordedActive"] = []

    def __init__(self, reactor: Any, host: str, port: int, timeout: float, **kwargs: Any) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self.kwargs = kwargs
        self.closed = False
        RecordedActive.made.append(self)

    def close(self) -> None:
        self.closed = True


class Data:
    """
    A data-channel handler on a memory reactor.
    """

    def __init__(
        self,
        clientHost: str = CLIENT_HOST,
        localHost: str = PROXY_HOST,
        tls: object = None,
        **settings: Any,
    ) -> None:
        self.reactor = ProxyReactor()
        # The certificate is never read: the handler gets its creator
        # through the protection.
        settings.setdefault("tls", TLSSettings(certificate="unused.pem"))
        self.config = ProxyConfig(backends=(ALPHA,), passivePorts=PASSIVE_PORTS, **settings)
        self.ports = PassivePortPool(self.reactor, self.config.passivePorts)
        self.channel = FakeChannel(clientHost, localHost)
        self.protection = FakeProtection(tlsActive=tls is not None, tls=tls)
        self.handler = DataChannelCommands(
            self.config, self.ports, self.reactor, self.channel, self.protection, "s1"
        )

    def run(self, line: bytes) -> FakeCommand:
        command = FakeCommand(line)
        getattr(self.handler, command.verb.decode().lower())(command)
        return command

    def answer(self, line: bytes) -> bytes:
        """
        Run C{line}, which the proxy answers itself; return the reply.
        """
        command = self.run(line)
        assert command.finished == 1
        assert command.sent == []
        return command.text()

    def listening(self) -> list[int]:
        """
        The passive ports the handler holds (the pool keeps the others
        bound, owned by nobody).
        """
        return self.ports.held


@pytest.fixture
def d() -> Data:
    return Data()


@pytest.fixture
def active(monkeypatch: pytest.MonkeyPatch) -> type[RecordedActive]:
    RecordedActive.made = []
    monkeypatch.setattr(datachannel, "ActiveDataChannel", RecordedActive)
    return RecordedActive


def test_interface(d: Data) -> None:
    assert verifyObject(IDataChannels, d.handler)


# -- passive --------------------------------------------------------------------


def test_pasv(d: Data) -> None:
    """
    The proxy listens on the first port of its range, on the interface the
    control connection arrived on, and names its own address.
    """
    assert d.answer(b"PASV") == b"227 Entering Passive Mode (127,0,0,1,117,48).\r\n"
    [port] = d.reactor.openPorts()
    assert (port.getHost().port, port.interface) == (30000, PROXY_HOST)


def test_pasvNamesThePublicAddress() -> None:
    d = Data(publicAddress="192.0.2.7")
    assert d.answer(b"PASV") == b"227 Entering Passive Mode (192,0,2,7,117,48).\r\n"
    assert d.reactor.openPorts()[0].interface == PROXY_HOST


def test_epsv(d: Data) -> None:
    assert d.answer(b"EPSV") == b"229 Entering Extended Passive Mode (|||30000|)\r\n"
    assert d.listening() == [30000]


@pytest.mark.parametrize(
    "clientHost, localHost, argument",
    [(CLIENT_HOST, PROXY_HOST, b"1"), ("::1", "::1", b"2")],
)
def test_epsvOwnFamily(clientHost: str, localHost: str, argument: bytes) -> None:
    d = Data(clientHost, localHost)
    assert d.answer(b"EPSV " + argument) == b"229 Entering Extended Passive Mode (|||30000|)\r\n"


@pytest.mark.parametrize(
    "clientHost, localHost, argument, own",
    [(CLIENT_HOST, PROXY_HOST, b"2", b"1"), ("::1", "::1", b"1", b"2")],
)
def test_epsvOtherFamily(clientHost: str, localHost: str, argument: bytes, own: bytes) -> None:
    d = Data(clientHost, localHost)
    assert d.answer(b"EPSV " + argument) == b"522 Network protocol not supported, use (" + own + b").\r\n"
    assert d.listening() == []


def test_epsvBadArgument(d: Data) -> None:
    assert d.answer(b"EPSV 3") == b"501 Syntax error in EPSV argument.\r\n"
    assert d.listening() == []


def test_lpsv(d: Data) -> None:
    reply = d.answer(b"LPSV")
    assert reply.startswith(b"228 ")
    assert parseLpsvReply(reply) == (PROXY_HOST, 30000)


def test_lpsvIPv6() -> None:
    d = Data("::1", "::1")
    reply = d.answer(b"LPSV")
    assert parseLpsvReply(reply) == ("::1", 30000)


def test_pasvRefusedOnIPv6() -> None:
    """
    A 227 cannot name an IPv6 address (ncftp has no IPv6): refused, no
    port opened.
    """
    d = Data("::1", "::1")
    assert d.answer(b"PASV") == b"500 PASV cannot name an IPv6 address; use EPSV.\r\n"
    assert d.listening() == []


def test_rangeExhausted(d: Data) -> None:
    d.reactor.busyPorts = set(range(PASSIVE_PORTS.low, PASSIVE_PORTS.high + 1))
    assert d.answer(b"PASV") == b"425 Can't open data connection: no free passive port.\r\n"
    assert d.answer(b"EPSV") == b"425 Can't open data connection: no free passive port.\r\n"
    assert d.handler.takeChannel() is None


def test_rangeFullAfterAListener(d: Data) -> None:
    """
    A PASV when no other port of the range can be had gives the session its
    own port back, as a new channel (issue 10, defect 3: it used to answer
    425 and lose the port).
    """
    d.answer(b"PASV")
    d.reactor.busyPorts = set(range(PASSIVE_PORTS.low, PASSIVE_PORTS.high + 1))
    for _ in range(3):
        assert d.answer(b"PASV") == b"227 Entering Passive Mode (127,0,0,1,117,48).\r\n"
        assert d.listening() == [30000]
    assert d.handler.takeChannel() is not None


def test_newPasvClosesThePrevious(d: Data) -> None:
    d.answer(b"PASV")
    d.answer(b"EPSV")
    assert d.listening() == [30001]
    d.answer(b"LPSV")
    assert d.listening() == [30002]


def test_busyPortSkipped(d: Data) -> None:
    d.reactor.busyPorts = {30000}
    assert d.answer(b"EPSV") == b"229 Entering Extended Passive Mode (|||30001|)\r\n"


# -- EPSV ALL -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"PASV", b"LPSV", b"PORT 127,0,0,5,156,65", b"EPRT |1|127.0.0.5|40001|", b"LPRT 4,4,127,0,0,5,2,156,65"],
)
def test_afterEpsvAll(d: Data, line: bytes) -> None:
    assert d.answer(b"EPSV ALL") == b"200 EPSV ALL accepted.\r\n"
    assert d.answer(line) == b"503 " + line.split(b" ")[0] + b" not allowed after EPSV ALL.\r\n"
    assert d.listening() == []
    assert d.answer(b"EPSV") == b"229 Entering Extended Passive Mode (|||30000|)\r\n"


def test_resetEndsEpsvAll(d: Data) -> None:
    d.answer(b"EPSV ALL")
    d.handler.reset()
    assert d.answer(b"PASV").startswith(b"227 ")


# -- active ---------------------------------------------------------------------


def test_port(d: Data, active: type[RecordedActive]) -> None:
    """
    PORT to the client's own address: the proxy will connect there (when
    the transfer starts), from the control connection's interface.
    """
    assert d.answer(b"PORT 127,0,0,5,156,65") == b"200 PORT command successful.\r\n"
    [made] = active.made
    assert (made.host, made.port) == (CLIENT_HOST, 40001)
    assert made.reactor is d.reactor
    assert made.timeout == d.config.connectTimeout
    assert made.kwargs == {"bindHost": PROXY_HOST, "tls": None, "requireResumption": False}
    assert d.handler.takeChannel() is made


@pytest.mark.parametrize(
    "line",
    [b"PORT 127,0,0,9,156,65", b"EPRT |1|127.0.0.9|40001|", b"LPRT 4,4,127,0,0,9,2,156,65"],
)
def test_activeToAnotherHost(d: Data, active: type[RecordedActive], line: bytes) -> None:
    """
    The bounce attack: data connections go only to the client.
    """
    verb = line.split(b" ")[0]
    assert d.answer(line) == b"504 " + verb + b" refused: data connections go only to your own address.\r\n"
    assert active.made == []
    assert d.handler.takeChannel() is None


def test_activeAnyHostAllowed(active: type[RecordedActive]) -> None:
    d = Data(activeAnyHost=True)
    assert d.answer(b"PORT 127,0,0,9,156,65") == b"200 PORT command successful.\r\n"
    assert active.made[0].host == FOREIGN_HOST


@pytest.mark.parametrize(
    "line, port",
    [(b"PORT 127,0,0,5,0,21", 21), (b"EPRT |1|127.0.0.5|1023|", 1023), (b"LPRT 4,4,127,0,0,5,2,0,80", 80)],
)
def test_lowPortRefused(d: Data, active: type[RecordedActive], line: bytes, port: int) -> None:
    verb = line.split(b" ")[0]
    assert d.answer(line) == b"504 %s refused: port %d is below 1024.\r\n" % (verb, port)
    assert active.made == []


def test_lowPortAllowed(active: type[RecordedActive]) -> None:
    d = Data(activeLowPorts=True)
    assert d.answer(b"PORT 127,0,0,5,0,21") == b"200 PORT command successful.\r\n"
    assert active.made[0].port == 21


def test_eprtUnspecifiedMeansTheClient(active: type[RecordedActive]) -> None:
    """
    lftp on IPv6 sends EPRT |2|::|port|: "where I am".
    """
    d = Data("::1", "::1")
    assert d.answer(b"EPRT |2|::|40001|") == b"200 EPRT command successful.\r\n"
    [made] = active.made
    assert (made.host, made.port) == ("::1", 40001)
    assert made.kwargs["bindHost"] == "::1"


def test_eprtOtherFamily(d: Data, active: type[RecordedActive]) -> None:
    assert d.answer(b"EPRT |2|::1|40001|") == b"522 Network protocol not supported, use (1).\r\n"
    assert active.made == []


def test_eprtAndLprtToTheClient(d: Data, active: type[RecordedActive]) -> None:
    assert d.answer(b"EPRT |1|127.0.0.5|40001|") == b"200 EPRT command successful.\r\n"
    assert d.answer(b"LPRT 4,4,127,0,0,5,2,156,66") == b"200 LPRT command successful.\r\n"
    first, second = active.made
    assert first.closed and not second.closed
    assert (second.host, second.port) == (CLIENT_HOST, 40002)


@pytest.mark.parametrize(
    "line, error",
    [
        (b"PORT 127,0,0,5", b"501 Syntax error in PORT argument.\r\n"),
        (b"EPRT |3|x|1|", b"501 Syntax error in EPRT argument.\r\n"),
        (b"LPRT 5,4,1", b"501 Syntax error in LPRT argument.\r\n"),
    ],
)
def test_activeSyntax(d: Data, active: type[RecordedActive], line: bytes, error: bytes) -> None:
    assert d.answer(line) == error
    assert active.made == []


def test_portClosesAListener(d: Data, active: type[RecordedActive]) -> None:
    d.answer(b"PASV")
    d.answer(b"PORT 127,0,0,5,156,65")
    assert d.listening() == []
    d.answer(b"PASV")
    assert active.made[0].closed


def test_refusedPortStillDropsTheOldChannel(d: Data, active: type[RecordedActive]) -> None:
    d.answer(b"PASV")
    d.answer(b"PORT 127,0,0,9,156,65")
    assert d.listening() == []
    assert d.handler.takeChannel() is None


# -- handing over ---------------------------------------------------------------


def test_takeChannelOnce(d: Data) -> None:
    d.answer(b"EPSV")
    channel = d.handler.takeChannel()
    assert channel is not None and channel.port == 30000
    assert d.handler.takeChannel() is None
    # Now the caller's: the handler neither closes it on a new PASV nor
    # on release.
    d.answer(b"PASV")
    d.handler.release()
    assert d.listening() == [30000]
    channel.close()
    assert d.listening() == []


def test_release(d: Data) -> None:
    d.answer(b"PASV")
    d.handler.release()
    assert d.listening() == []


def test_restKept(d: Data) -> None:
    assert d.answer(b"REST 100") == b"350 Restarting at 100. Send STORE or RETRIEVE.\r\n"
    assert d.handler.takeRestartMarker() == b"100"
    assert d.handler.takeRestartMarker() is None


def test_restNonNumericRelayed(d: Data) -> None:
    """
    A marker that is not a byte offset is the backend's business: relayed,
    and any marker kept before is forgotten.
    """
    d.answer(b"REST 100")
    command = d.run(b"REST abc")
    assert command.sentLines == [b"REST abc"]
    assert command.finished == 0
    command.answer(0, b"501 Bad marker")
    assert command.text() == b"501 Bad marker\r\n"
    assert command.finished == 1
    assert d.handler.takeRestartMarker() is None


def test_forget(d: Data) -> None:
    d.answer(b"PASV")
    d.answer(b"REST 5")
    d.handler.forget()
    assert d.listening() == []
    assert d.handler.takeChannel() is None
    assert d.handler.takeRestartMarker() is None


def test_reset(d: Data) -> None:
    d.answer(b"EPSV ALL")
    d.answer(b"EPSV")
    d.answer(b"REST 5")
    d.handler.reset()
    assert d.listening() == []
    assert d.handler.takeRestartMarker() is None
    assert d.answer(b"PORT 127,0,0,5,156,65") == b"200 PORT command successful.\r\n"


# -- protection of the data connections -------------------------------------------


@pytest.mark.parametrize(
    "tls, reuse, resumption",
    [(None, False, False), (None, True, False), (DATA_TLS, False, False), (DATA_TLS, True, True)],
)
def test_listenerProtection(tls: object, reuse: bool, resumption: bool) -> None:
    d = Data(tls=tls, requireSessionReuse=reuse)
    d.answer(b"EPSV")
    factory = legFactory(d)
    assert factory.tls is tls
    assert factory.requireResumption is resumption


def legFactory(d: Data) -> Any:
    """
    What builds the client's data leg on the one passive port held: the
    client connects, and its leg names its factory.
    """
    [number] = d.listening()
    [port] = [p for p in d.reactor.openPorts() if p.getHost().port == number]
    leg = port.factory.buildProtocol(address(CLIENT_HOST, 40001))
    return leg.factory


def test_protectionReadAtEachListener() -> None:
    """
    PROT changes between two PASVs reach the second listener.
    """
    d = Data(requireSessionReuse=True)
    d.answer(b"PASV")
    d.protection.tls = DATA_TLS
    d.answer(b"PASV")
    factory = legFactory(d)
    assert (factory.tls, factory.requireResumption) == (DATA_TLS, True)


@pytest.mark.parametrize("tls, reuse", [(None, True), (DATA_TLS, False), (DATA_TLS, True)])
def test_activeProtection(active: type[RecordedActive], tls: object, reuse: bool) -> None:
    d = Data(tls=tls, requireSessionReuse=reuse)
    d.answer(b"EPRT |1|127.0.0.5|40001|")
    [made] = active.made
    assert made.kwargs["tls"] is tls
    assert made.kwargs["requireResumption"] is (tls is not None and reuse)
