"""
Tests for L{ftpproxy.session.general}: FEAT, TYPE, QUIT, REIN and the plain
relay, against fake commands and recorded callbacks.
"""

from __future__ import annotations

from typing import Any

import pytest

from ftpproxy.session.general import GeneralCommands, mergeFeatures
from ftpproxy.wire.ftptext import Reply, ReplyParser, formatFeatReply
from tests.support.fakes import FakeCommand

PROXY_FEATURES = [b"EPSV", b"EPRT", b"AUTH TLS", b"PBSZ", b"PROT"]


def parsed(wire: bytes) -> Reply:
    """
    The one reply in C{wire}, as the backend connection would parse it.
    """
    [reply] = ReplyParser().feed(wire)
    return reply


class General:
    """
    A general handler and its session (this object), whose actions are
    recorded, in order, in C{calls}.
    """

    def __init__(self, routesByUser: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.features = list(PROXY_FEATURES)
        self.handler = GeneralCommands(self, greetsAgain=routesByUser)
        self.command: FakeCommand | None = None

    # ISessionActions (the general handler's part)
    def proxyFeatures(self) -> list[bytes]:
        return list(self.features)

    def interruptTransfer(self) -> None:
        self.calls.append(("interrupt", None))

    def resetHandlers(self) -> None:
        self.calls.append(("reset", None))

    def greetAgain(self, command: Any) -> None:
        self.calls.append(("greetAgain", command))

    def closeSession(self, *args: Any, **kwargs: Any) -> None:
        # What the client had been sent when the session was closed.
        sent = self.command.text() if self.command is not None else b""
        self.calls.append(("close", (args, kwargs, sent)))

    def run(self, line: bytes) -> FakeCommand:
        self.command = command = FakeCommand(line)
        getattr(self.handler, command.verb.decode().lower())(command)
        return command


@pytest.fixture
def g() -> General:
    return General()


def test_relay(g: General) -> None:
    command = FakeCommand(b"CWD /pub")
    g.handler.relay(command)
    assert command.sentLines == [b"CWD /pub"]
    command.answer(0, b"250 ok")
    assert command.text() == b"250 ok\r\n"
    assert command.finished == 1


def test_featMerged(g: General) -> None:
    """
    The proxy's features come first; the backend's features about its own
    TLS and data connections are hidden, the rest passed on in order.
    """
    command = g.run(b"FEAT")
    assert command.sentLines == [b"FEAT"]
    backend = Reply.multi(
        211,
        [
            b"Features:",
            b" AUTH TLS",
            b" SIZE",
            b" PBSZ",
            b" prot",
            b" EPSV",
            b" EPRT",
            b" MDTM",
            b" REST STREAM",
            b" CCC",
            b" PASV",
            b" LPSV",
            b" UTF8",
            b"End",
        ],
    )
    command.answerWith(0, backend)
    assert command.replies == [
        formatFeatReply(PROXY_FEATURES + [b"SIZE", b"MDTM", b"REST STREAM", b"UTF8"]).toBytes()
    ]
    assert command.text().startswith(b"211-Features:\r\n EPSV\r\n EPRT\r\n AUTH TLS\r\n")
    assert command.finished == 1


def test_featLinesWithCodes(g: General) -> None:
    """
    Some servers prefix every feature line with "211-".
    """
    command = g.run(b"FEAT")
    command.answerWith(0, parsed(b"211-Extensions:\r\n211-SIZE\r\n211-AUTH SSL\r\n211 End\r\n"))
    assert command.replies == [formatFeatReply(PROXY_FEATURES + [b"SIZE"]).toBytes()]


@pytest.mark.parametrize("refusal", [b"500 FEAT not understood", b"502 Not implemented"])
def test_featRefusedByBackend(g: General, refusal: bytes) -> None:
    """
    A backend that knows no FEAT: the client still learns the proxy's own
    features, with a 211.
    """
    command = g.run(b"FEAT")
    command.answer(0, refusal)
    assert command.replies == [formatFeatReply(PROXY_FEATURES).toBytes()]
    assert command.finished == 1


def test_featPreliminaryIgnored(g: General) -> None:
    command = g.run(b"FEAT")
    command.answer(0, b"120 wait")
    assert command.text() == b""
    assert command.finished == 0


def test_featAsksTheProxyFeaturesEachTime(g: General) -> None:
    g.features = [b"EPSV", b"EPRT"]
    command = g.run(b"FEAT")
    command.answer(0, b"500 no")
    assert command.replies == [formatFeatReply([b"EPSV", b"EPRT"]).toBytes()]


def test_mergeFeatures() -> None:
    assert mergeFeatures([b"MLST type*;size*;", b"Auth TLS", b"CPSV", b"SSCN"], [b"EPSV"]) == [
        b"EPSV",
        b"MLST type*;size*;",
    ]


@pytest.mark.parametrize(
    "argument, kind",
    [(b"I", "I"), (b"a", "A"), (b"A N", "A"), (b"L 8", "L"), (b"E", "E"), (b" i", "I")],
)
def test_typeRemembered(g: General, argument: bytes, kind: str) -> None:
    command = g.run(b"TYPE " + argument)
    assert command.sentLines == [b"TYPE " + argument]
    # Remembered once the backend accepts it.
    assert g.handler.transferType == "A"
    command.answer(0, b"200 Type set")
    assert g.handler.transferType == kind
    assert command.text() == b"200 Type set\r\n"
    assert command.finished == 1


def test_typeRefusedNotRemembered(g: General) -> None:
    command = g.run(b"TYPE E")
    command.answer(0, b"504 Type not supported")
    assert g.handler.transferType == "A"
    assert command.text() == b"504 Type not supported\r\n"
    assert command.finished == 1


@pytest.mark.parametrize("argument", [b"X", b"", b"Z 1"])
def test_typeUnknownNotRemembered(g: General, argument: bytes) -> None:
    g.run(b"TYPE I").answer(0, b"200 Type set")
    command = g.run(b"TYPE " + argument if argument else b"TYPE")
    # Relayed all the same: the backend answers it.
    assert command.sent != []
    command.answer(0, b"200 Whatever")
    assert g.handler.transferType == "I"


def test_typeReset(g: General) -> None:
    assert g.handler.transferType == "A"
    g.run(b"TYPE I").answer(0, b"200 Type set")
    assert g.handler.transferType == "I"
    g.handler.reset()
    assert g.handler.transferType == "A"


def test_quit(g: General) -> None:
    """
    QUIT interrupts the transfer, is relayed, and the session closes once
    the backend's goodbye went to the client.
    """
    command = g.run(b"QUIT")
    assert g.calls == [("interrupt", None)]
    assert command.sentLines == [b"QUIT"]
    command.answer(0, b"221 Goodbye")
    assert g.calls == [("interrupt", None), ("close", ((), {}, b"221 Goodbye\r\n"))]


def test_quitPreliminaryIgnored(g: General) -> None:
    command = g.run(b"QUIT")
    command.answer(0, b"150 hm")
    assert command.text() == b""
    assert [name for name, _ in g.calls] == ["interrupt"]


def test_reinRelayed(g: General) -> None:
    command = g.run(b"REIN")
    assert g.calls == [("reset", None)]
    assert command.sentLines == [b"REIN"]
    command.answer(0, b"220 Ready for new user")
    assert command.text() == b"220 Ready for new user\r\n"
    assert command.finished == 1


def test_reinUnderRoutingByUser() -> None:
    """
    Routing by user: REIN resets the handlers and the proxy greets again;
    nothing goes to the backend (which is dropped).
    """
    g = General(routesByUser=True)
    command = g.run(b"REIN")
    assert g.calls == [("reset", None), ("greetAgain", command)]
    assert command.sent == []
