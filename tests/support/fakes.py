"""
Fakes of the session's seams (L{ftpproxy.session.interfaces}), so that each
handler, the conversation and the transfer are tested on their own.

Each fake records what was asked of it; tests read the records.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpproxy.session.interfaces import (
    IBackendConversation,
    IClientChannel,
    ICommand,
    IDataChannel,
    IDataChannels,
    IDataProtection,
    IExchange,
    ISessionActions,
    ITransferRecord,
)
from ftpproxy.wire.ftptext import Reply, parseCommand


@implementer(ICommand)
class FakeCommand:
    """
    A command whose replies, relays and backend commands are recorded.

    @ivar replies: what went to the client, as wire bytes.
    @ivar sent: (line, exchange) pairs sent to the backend.
    @ivar finished: how often finish() was called.
    """

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.verb, self.argument = parseCommand(line)
        self.replies: list[bytes] = []
        self.sent: list[tuple[bytes, IExchange]] = []
        self.finished = 0
        self.urgent = False

    def reply(self, reply: Reply) -> None:
        self.replies.append(reply.toBytes())

    def replyText(self, code: int, text: str) -> None:
        self.reply(Reply.single(code, text))

    def finish(self) -> None:
        self.finished += 1

    def relay(self, exchange: IExchange | None = None) -> None:
        self.sendToBackend(self.line, exchange if exchange is not None else _Relay(self))

    def sendToBackend(self, line: bytes, exchange: IExchange) -> None:
        self.sent.append((line, exchange))

    def readUrgentCommands(self) -> None:
        self.urgent = True

    # -- helpers for tests ---------------------------------------------------

    def answer(self, index: int, *replies: bytes) -> None:
        """
        The backend answers the C{index}th command sent with C{replies}
        (wire text of single-line replies).
        """
        line, exchange = self.sent[index]
        for raw in replies:
            code, _, text = raw.partition(b" ")
            exchange.replyReceived(line, Reply.single(int(code), text))

    def answerWith(self, index: int, *replies: Reply) -> None:
        """
        The backend answers the C{index}th command sent with C{replies}
        (multi-line ones too).
        """
        line, exchange = self.sent[index]
        for reply in replies:
            exchange.replyReceived(line, reply)

    @property
    def sentLines(self) -> list[bytes]:
        return [line for line, _ in self.sent]

    def text(self) -> bytes:
        return b"".join(self.replies)


@implementer(IExchange)
class _Relay:
    def __init__(self, command: FakeCommand) -> None:
        self._command = command

    def replyReceived(self, line: bytes, reply: Reply) -> None:
        self._command.reply(reply)
        if not reply.isPreliminary:
            self._command.finish()


@implementer(IClientChannel)
class FakeChannel:
    """
    The client's control connection: replies recorded, TLS noted.
    """

    def __init__(
        self,
        clientHost: str = "127.0.0.5",
        localHost: str = "127.0.0.1",
        pending: bool = False,
    ) -> None:
        self.clientHost = clientHost
        self.peerHost = clientHost
        self.localHost = localHost
        self.interfaceHost = localHost
        self.pending = pending
        self.replies: list[bytes] = []
        self.tlsStartedWith: Any = None
        self.closed = False
        self.logins: list[bool] = []

    def reply(self, reply: Reply) -> None:
        self.replies.append(reply.toBytes())

    def startTLS(self, creator: Any) -> None:
        self.tlsStartedWith = creator

    def discardPendingInput(self) -> bool:
        pending, self.pending = self.pending, False
        return pending

    def close(self) -> None:
        self.closed = True

    def headerAddresses(self) -> tuple[Any, Any]:
        return (None, None)

    def loginChanged(self, loggedIn: bool) -> None:
        self.logins.append(loggedIn)


@implementer(IDataProtection)
@attrs.define
class FakeProtection:
    tlsActive: bool = False
    tls: Any = None

    def dataTLS(self) -> Any:
        return self.tls


@implementer(IBackendConversation)
class FakeConversation:
    """
    The backend conversation: commands recorded, deadline calls counted.
    """

    def __init__(self, peerHost: str = "127.0.0.2", tls: Any = None) -> None:
        self.peerHost = peerHost
        self.tls = tls
        self.waiting = 0
        self.dataDone = 0

    def send(self, line: bytes, exchange: IExchange) -> None:
        raise AssertionError("handlers send through their command")

    def waitForData(self) -> None:
        self.waiting += 1

    def dataFinished(self) -> None:
        self.dataDone += 1

    def resumingTLS(self) -> Any:
        return self.tls


@implementer(IDataChannel)
class FakeDataChannel:
    """
    A data channel whose leg the test hands over (or fails) by hand.
    """

    def __init__(self) -> None:
        self.download: bool | None = None
        self.onLeg: Callable[[Any], None] | None = None
        self.onFailed: Callable[[Failure], None] | None = None
        self.closed = False

    def setDirection(self, download: bool) -> None:
        self.download = download

    def whenConnected(self, onLeg: Callable[[Any], None], onFailed: Callable[[Failure], None]) -> None:
        self.onLeg, self.onFailed = onLeg, onFailed

    def afterHandshake(self, callback: Callable[[], None]) -> None:
        # No TLS handshake here to wait for.
        callback()

    def close(self) -> None:
        self.closed = True


@implementer(IDataChannels)
class FakeDataChannels:
    """
    The data-channel handler as the transfer commands see it: a channel and
    a restart marker to take, once each.

    @ivar forgotten: how often forget() was called.
    """

    def __init__(self, channel: IDataChannel | None = None, marker: bytes | None = None) -> None:
        self.channel = channel
        self.marker = marker
        self.forgotten = 0

    def takeChannel(self) -> IDataChannel | None:
        channel, self.channel = self.channel, None
        return channel

    def takeRestartMarker(self) -> bytes | None:
        marker, self.marker = self.marker, None
        return marker

    def forget(self) -> None:
        self.forgotten += 1
        channel = self.takeChannel()
        if channel is not None:
            channel.close()
        self.marker = None


@attrs.define
class FakeLink:
    """
    The session's backend link: the conversation and the pool's backend.
    """

    conversation: Any
    backend: Any


@implementer(ITransferRecord)
@attrs.define
class FakeRecord:
    sessionId: str = "s1"
    clientHost: str = "127.0.0.5"
    user: str | None = "alice"
    transferType: str = "I"
    backendName: str = "alpha"


class RecordingEvents:
    """
    An L{ftpproxy.events.IProxyEvents} that records every call.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]


@implementer(ISessionActions)
class FakeSessionActions:
    """
    A session as its command handlers see it: what they ask of it is
    recorded in C{calls}, as (name, args).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.link: Any = None

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def closeSession(self, code: int | None = None, text: str = "") -> None:
        self._record("closeSession", code, text)

    def proxyFeatures(self) -> list[bytes]:
        return [b"EPSV", b"EPRT"]

    def interruptTransfer(self) -> None:
        self._record("interruptTransfer")

    def resetHandlers(self) -> None:
        self._record("resetHandlers")

    def greetAgain(self, command: Any) -> None:
        self._record("greetAgain", command)

    def routeTo(self, candidates: list[Any], command: Any) -> None:
        self._record("routeTo", candidates, command)

    def currentBackend(self) -> Any:
        return self.link.backend if self.link is not None else None

    def currentLink(self) -> Any:
        return self.link

    def loginChanged(self, loggedIn: bool) -> None:
        self._record("loginChanged", loggedIn)

    def clientClosed(self, reason: str) -> None:
        self._record("clientClosed", reason)


class FakeThrottle:
    """
    The failed-login throttle: hands out the delays it was given, in order
    (then none), and records the addresses that failed.
    """

    def __init__(self, *delays: float) -> None:
        self._delays = list(delays)
        self.failures: list[str] = []

    def failed(self, clientHost: str) -> float:
        self.failures.append(clientHost)
        return self._delays.pop(0) if self._delays else 0.0


class FakePool:
    """
    The backend pool: C{candidates} answers from C{routes} (user name ->
    backends), else C{backends}; health reports are recorded.
    """

    def __init__(self, backends: list[Any] | None = None, routes: dict[str, list[Any]] | None = None) -> None:
        self.backends = list(backends or [])
        self.routes = dict(routes or {})
        self.asked: list[tuple[str, str | None]] = []
        self.failures: list[tuple[Any, str]] = []
        self.successes: list[Any] = []

    def candidates(self, clientHost: str, user: str | None = None) -> list[Any]:
        self.asked.append((clientHost, user))
        if user is not None and user in self.routes:
            return list(self.routes[user])
        return list(self.backends)

    def reportConnectFailure(self, backend: Any, why: str = "connect failed") -> None:
        self.failures.append((backend, why))

    def reportConnectSuccess(self, backend: Any) -> None:
        self.successes.append(backend)
