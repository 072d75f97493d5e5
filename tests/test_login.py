"""
Tests for L{ftpproxy.session.login}: USER and PASS relayed and watched, the
login deadline and the failed-login throttle, on a driven clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from ftpproxy.session.login import LoginCommands
from ftpproxy.session.limits import DeadlineQueue
from tests.support.fakes import FakeCommand, FakeProtection, FakeThrottle
from tests.support.memory import (
    ProxyHarness,
    loggedFailures,  # noqa: F401 (a fixture)
)

LOGIN_TIMEOUT = 60.0
CLIENT = "127.0.0.5"
TIMED_OUT = (421, "Login timed out; closing control connection.")
TLS_FIRST = b"530 This server requires TLS: send AUTH TLS before logging in.\r\n"


class Login:
    def __init__(
        self,
        *delays: float,
        requireTLS: bool = False,
        tlsActive: bool = False,
        loginTimeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self.clock = Clock()
        self.throttle = FakeThrottle(*delays)
        self.protection = FakeProtection(tlsActive=tlsActive)
        self.closes: list[tuple[int, str]] = []
        self.logins: list[bool] = []
        self.closedFor: list[str] = []
        self.handler = LoginCommands(
            DeadlineQueue(self.clock),
            loginTimeout,
            requireTLS,
            self.protection,
            self.throttle,
            CLIENT,
            "s1",
            self,
        )

    # ISessionActions (the login handler's part)
    def closeSession(self, code: int, text: str) -> None:
        self.closes.append((code, text))

    def loginChanged(self, loggedIn: bool) -> None:
        self.logins.append(loggedIn)

    def clientClosed(self, reason: str) -> None:
        self.closedFor.append(reason)

    def user(self, name: bytes = b"alice") -> FakeCommand:
        command = FakeCommand(b"USER " + name)
        self.handler.userCommand(command)
        return command

    def password(self, secret: bytes = b"secret") -> FakeCommand:
        command = FakeCommand(b"PASS " + secret)
        self.handler.passCommand(command)
        return command

    def logIn(self) -> None:
        user = self.user()
        user.answer(0, b"331 Password please")
        password = self.password()
        password.answer(0, b"230 Logged in")
        assert self.handler.loggedIn


@pytest.fixture
def login() -> Login:
    return Login()


def test_userRelayedAndWatched(login: Login) -> None:
    command = login.user(b"alice ")
    assert command.sentLines == [b"USER alice "]
    assert login.handler.user == "alice"
    command.answer(0, b"331 Password please")
    assert command.text() == b"331 Password please\r\n"
    assert command.finished == 1
    assert not login.handler.loggedIn


def test_userAnsweredWith230(login: Login) -> None:
    """
    A server may log a user in at USER (no password needed): watched too.
    """
    command = login.user(b"anonymous")
    command.answer(0, b"230 Welcome")
    assert login.handler.loggedIn
    assert command.text() == b"230 Welcome\r\n"
    assert login.clock.getDelayedCalls() == []


def test_preliminaryReplyPassesThrough(login: Login) -> None:
    command = login.password()
    command.answer(0, b"150 thinking")
    assert command.text() == b"150 thinking\r\n"
    assert command.finished == 0
    command.answer(0, b"230 ok")
    assert command.finished == 1


def test_loggedInStopsTheDeadline(login: Login) -> None:
    assert len(login.clock.getDelayedCalls()) == 1
    login.logIn()
    assert login.clock.getDelayedCalls() == []
    login.clock.advance(LOGIN_TIMEOUT * 2)
    assert login.closes == []


@pytest.mark.parametrize("reply", [b"332 Need account", b"500 What?", b"421 Going away"])
def test_otherRepliesPassThrough(login: Login, reply: bytes) -> None:
    command = login.password()
    command.answer(0, reply)
    assert command.text() == reply + b"\r\n"
    assert command.finished == 1
    assert not login.handler.loggedIn
    assert login.throttle.failures == []
    assert len(login.clock.getDelayedCalls()) == 1


def test_failedLoginNotHeld(login: Login) -> None:
    command = login.password()
    command.answer(0, b"530 Login incorrect")
    assert command.text() == b"530 Login incorrect\r\n"
    assert command.finished == 1
    assert login.throttle.failures == [CLIENT]
    assert not login.handler.loggedIn


def test_failedLoginHeld() -> None:
    """
    The throttle's delay holds the 530 back for exactly that long; the
    command stays unfinished until then.
    """
    login = Login(3.0)
    command = login.password()
    command.answer(0, b"530 Login incorrect")
    assert command.text() == b""
    assert command.finished == 0
    login.clock.advance(2.9)
    assert command.text() == b""
    login.clock.advance(0.1)
    assert command.text() == b"530 Login incorrect\r\n"
    assert command.finished == 1
    # Only the login deadline is left.
    assert len(login.clock.getDelayedCalls()) == 1


def test_eachFailureAsksTheThrottle() -> None:
    login = Login(0.0, 5.0)
    first = login.password()
    first.answer(0, b"530 no")
    assert first.finished == 1
    second = login.password()
    second.answer(0, b"530 no")
    assert second.finished == 0
    login.clock.advance(5)
    assert second.text() == b"530 no\r\n"
    assert login.throttle.failures == [CLIENT, CLIENT]


def test_loginTimeout(login: Login) -> None:
    login.clock.advance(LOGIN_TIMEOUT - 1)
    assert login.closes == []
    login.clock.advance(1)
    assert login.closes == [TIMED_OUT]
    assert login.clock.getDelayedCalls() == []


def test_noLoginTimeout() -> None:
    login = Login(loginTimeout=0)
    assert login.clock.getDelayedCalls() == []


@pytest.mark.parametrize("verb", ["user", "password"])
def test_refusedForTLS(verb: str) -> None:
    login = Login(requireTLS=True)
    command = getattr(login, verb)()
    assert command.text() == TLS_FIRST
    assert command.sent == []
    assert command.finished == 1
    assert login.handler.user is None


def test_requireTLSUnderTLS() -> None:
    login = Login(requireTLS=True, tlsActive=True)
    command = login.user()
    assert command.sentLines == [b"USER alice"]
    assert command.text() == b""
    assert not login.handler.refusedForTLS(FakeCommand(b"PASS x"))


def test_resetForgetsTheLogin(login: Login) -> None:
    login.logIn()
    login.handler.reset()
    assert login.handler.user is None
    assert not login.handler.loggedIn
    login.clock.advance(LOGIN_TIMEOUT)
    assert login.closes == [TIMED_OUT]


def test_resetRestartsTheDeadline(login: Login) -> None:
    login.clock.advance(LOGIN_TIMEOUT - 10)
    login.handler.reset()
    login.clock.advance(LOGIN_TIMEOUT - 1)
    assert login.closes == []
    login.clock.advance(1)
    assert login.closes == [TIMED_OUT]


def test_releaseStopsTheDeadline(login: Login) -> None:
    login.handler.release()
    assert login.clock.getDelayedCalls() == []
    login.clock.advance(LOGIN_TIMEOUT * 2)
    assert login.closes == []


def test_releaseDropsAHeldReply() -> None:
    login = Login(4.0)
    command = login.password()
    command.answer(0, b"530 no")
    assert len(login.clock.getDelayedCalls()) == 2
    login.handler.release()
    assert login.clock.getDelayedCalls() == []
    login.clock.advance(10)
    assert command.text() == b""
    assert login.closes == []


# -- through the verb table --------------------------------------------------------


def test_accountLogsIn(login: Login) -> None:
    """
    ACCT (after PASS answered 332) is watched like PASS.
    """
    command = FakeCommand(b"ACCT a1")
    login.handler.passCommand(command)
    command.answer(0, b"230 Logged in")
    assert login.handler.loggedIn
    assert login.clock.getDelayedCalls() == []


@pytest.mark.usefixtures("loggedFailures")
def test_loginThroughAccountInASession() -> None:
    """
    USER, PASS answered 332 (need account), ACCT answered 230: the session
    is logged in and the login deadline stops. ACCT used to be relayed
    unwatched, and such a session was closed with "421 Login timed out".
    """
    h = ProxyHarness(loginTimeout=LOGIN_TIMEOUT)
    client, backend = h.startSession()
    for line, reply in [
        (b"USER alice", b"331 Password please"),
        (b"PASS x", b"332 Need account for login"),
        (b"ACCT a1", b"230 Logged in"),
    ]:
        client.send(line + b"\r\n")
        assert backend.take() == line + b"\r\n"
        backend.send(reply + b"\r\n")
        assert client.take() == reply + b"\r\n"
    h.advance(LOGIN_TIMEOUT * 2)
    assert client.take() == b""
    assert not client.closed


def test_loginChangesAreTold(login: Login) -> None:
    """
    The proxy counts connections not logged in: it is told when the
    backend accepts a login, and when REIN makes the client log in again,
    once each.
    """
    login.user().answer(0, b"230 No password needed")
    assert login.logins == [True]
    login.logIn()
    assert login.logins == [True]
    login.handler.reset()
    login.handler.reset()
    assert login.logins == [True, False]


def test_loginTimeoutIsCounted() -> None:
    login = Login()
    login.clock.advance(LOGIN_TIMEOUT)
    assert login.closedFor == ["login-timeout"]
    assert login.closes == [TIMED_OUT]
