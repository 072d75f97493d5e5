"""
Tests for L{ftpproxy.session.routing}: routing by user name (USER chooses
the backend) and the commands the proxy answers before it has one, against
a fake pool and recorded callbacks.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from ftpproxy.session.limits import DeadlineQueue
from ftpproxy.session.login import LoginCommands
from ftpproxy.session.routing import RoutingCommands
from ftpproxy.wire.ftptext import formatFeatReply
from tests.support.fakes import FakeCommand, FakePool, FakeProtection, FakeSessionActions, FakeThrottle

CLIENT = "127.0.0.5"
PROXY_FEATURES = [b"EPSV", b"EPRT", b"AUTH TLS", b"PBSZ", b"PROT"]
ALPHA, BETA = object(), object()


class Routing:
    def __init__(self, requireTLS: bool = False, tlsActive: bool = False) -> None:
        self.clock = Clock()
        self.pool = FakePool([ALPHA, BETA], routes={"bob": [BETA, ALPHA]})
        self.login = LoginCommands(
            DeadlineQueue(self.clock), 60.0, requireTLS, FakeProtection(tlsActive=tlsActive), FakeThrottle(), CLIENT, "s1",
            FakeSessionActions(),
        )
        self.current: Any = None
        self.routed: list[tuple[list[Any], FakeCommand]] = []
        self.closes: list[tuple[Any, ...]] = []
        self.handler = RoutingCommands(self.pool, CLIENT, self.login, self)
        self._last: FakeCommand | None = None

    # ISessionActions (the routing handler's part)
    def proxyFeatures(self) -> list[bytes]:
        return list(PROXY_FEATURES)

    def routeTo(self, candidates: list[Any], command: FakeCommand) -> None:
        self.routed.append((candidates, command))

    def currentBackend(self) -> Any:
        return self.current

    def closeSession(self, *args: Any) -> None:
        self.closes.append((args, self._last.text() if self._last else b""))

    def run(self, line: bytes, method: str | None = None) -> FakeCommand:
        self._last = command = FakeCommand(line)
        getattr(self.handler, method or command.verb.decode().lower())(command)
        return command

    def answer(self, line: bytes) -> bytes:
        """
        Run C{line}, answered by the proxy; return the reply.
        """
        command = self.run(line)
        assert command.finished == 1
        assert command.sent == []
        assert self.routed == []
        return command.text()


@pytest.fixture
def r() -> Routing:
    return Routing()


# -- before a backend ------------------------------------------------------------


def test_feat(r: Routing) -> None:
    assert r.answer(b"FEAT") == formatFeatReply(PROXY_FEATURES + [b"UTF8"]).toBytes()


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"SYST", b"215 UNIX Type: L8\r\n"),
        (b"NOOP", b"200 NOOP ok.\r\n"),
        (b"HELP", b"214 Log in with USER and PASS; help follows from the server.\r\n"),
        (b"HELP SITE", b"214 Log in with USER and PASS; help follows from the server.\r\n"),
    ],
)
def test_answeredLocally(r: Routing, line: bytes, reply: bytes) -> None:
    assert r.answer(line) == reply


def test_quit(r: Routing) -> None:
    """
    221, then the session closes (with nothing more to say).
    """
    command = r.run(b"QUIT")
    assert r.closes == [((), b"221 Goodbye.\r\n")]
    assert command.sent == []


def test_optsNotedAndReplayed(r: Routing) -> None:
    """
    OPTS before the backend: noted, answered, and replayed to the backend
    once chosen, before the USER; the backend's answers to it go nowhere.
    """
    assert r.answer(b"OPTS UTF8 ON") == b"200 OPTS noted.\r\n"
    assert r.answer(b"OPTS MLST type;size;") == b"200 OPTS noted.\r\n"
    user = r.run(b"USER alice")
    assert r.routed == [([ALPHA, BETA], user)]
    r.handler.backendChosen(user)
    assert user.sentLines == [b"OPTS UTF8 ON", b"OPTS MLST type;size;", b"USER alice"]
    user.answer(0, b"200 UTF8 on")
    user.answer(1, b"501 no")
    assert user.text() == b""
    user.answer(2, b"331 Password please")
    assert user.text() == b"331 Password please\r\n"
    assert user.finished == 1


def test_optsReplayedOnce(r: Routing) -> None:
    r.answer(b"OPTS UTF8 ON")
    first = r.run(b"USER alice")
    r.handler.backendChosen(first)
    second = r.run(b"USER bob")
    r.handler.backendChosen(second)
    assert second.sentLines == [b"USER bob"]


def test_backendChosenLogsIn(r: Routing) -> None:
    """
    The USER's reply is watched by the login handler (230 logs in).
    """
    user = r.run(b"USER alice")
    r.handler.backendChosen(user)
    assert user.sentLines == [b"USER alice"]
    user.answer(0, b"230 Welcome")
    assert r.login.loggedIn


# -- USER --------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"USER", b"USER ", b"USER    "])
def test_userEmpty(r: Routing, line: bytes) -> None:
    assert r.answer(line) == b"501 USER needs a user name.\r\n"
    assert r.pool.asked == []
    assert r.login.user is None


def test_userRoutes(r: Routing) -> None:
    """
    USER asks the pool for the user's candidates and routes the session
    there; the login handler knows the user, nothing is sent yet.
    """
    command = r.run(b"USER bob")
    assert r.pool.asked == [(CLIENT, "bob")]
    assert r.routed == [([BETA, ALPHA], command)]
    assert r.login.user == "bob"
    assert command.sent == []
    assert command.finished == 0


def test_userWithoutCandidates(r: Routing) -> None:
    r.pool.backends = []
    command = r.run(b"USER carol")
    assert r.routed == [([], command)]


def test_userOfTheCurrentBackend(r: Routing) -> None:
    """
    A later USER for a user who belongs to the session's backend just logs
    in there.
    """
    r.current = BETA
    command = r.run(b"USER bob")
    assert r.routed == []
    assert command.sentLines == [b"USER bob"]
    assert r.login.user == "bob"
    command.answer(0, b"331 Password please")
    assert command.finished == 1


def test_userOfAnotherBackend(r: Routing) -> None:
    r.current = ALPHA
    command = r.run(b"USER bob")
    assert r.routed == [([BETA, ALPHA], command)]
    assert command.sent == []


def test_userRefusedForTLS() -> None:
    r = Routing(requireTLS=True)
    assert r.answer(b"USER bob") == b"530 This server requires TLS: send AUTH TLS before logging in.\r\n"
    assert r.pool.asked == []


def test_userUnderTLS() -> None:
    r = Routing(requireTLS=True, tlsActive=True)
    command = r.run(b"USER bob")
    assert r.routed == [([BETA, ALPHA], command)]
