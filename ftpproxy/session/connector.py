"""
Getting a session a backend: connect, read the greeting, secure an FTPS
backend, and fail over to the next candidate before the client notices.

Setting up one backend is a fixed dialog (connect, PROXY header, greeting,
AUTH TLS, PBSZ, PROT), written as one coroutine so that it reads in the order
it happens; each step either gives what the next needs or raises
L{BackendRefused}. One deadline covers a backend's connect, greeting and TLS
set-up. A backend that refuses, times out, greets with anything but 220 or
fails its TLS set-up counts as a connect failure with the pool, and the next
candidate is tried. When none is left the caller gets L{NoBackend}, carrying
the last backend's own refusal (e.g. "421 Too many users") if it gave one.

Cancelling the Deferred (the client went away) stops at whatever step is
running, closes the connection and reports nothing to the pool: a client
that hangs up is not the backend's failure.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Sequence

import attrs
from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpproxy.backends.balancer import Backend
from ftpproxy.wire.ftptext import ProtocolTextError, Reply
from ftpproxy.backends.control import BackendControl, connectProtocol, sendProxyHeader

log = Logger(namespace="ftpproxy.session.connector")


class BackendRefused(Exception):
    """
    This backend will not do; C{reply} is its own refusal, if it sent one.
    """

    def __init__(self, why: str, reply: Reply | None = None) -> None:
        super().__init__(why)
        self.reply = reply


class NoBackend(Exception):
    """
    Every candidate failed; C{reply} is the last one's refusal, if any.
    """

    def __init__(self, reply: Reply | None) -> None:
        super().__init__("no backend available")
        self.reply = reply


@attrs.frozen
class ConnectedBackend:
    """
    A backend that greeted: its control connection (now the caller's) and
    its greeting.
    """

    backend: Backend
    control: BackendControl
    banner: Reply


@attrs.define(eq=False)
class ConnectSettings:
    """
    What connecting needs from the session.
    """

    clock: Any
    timeout: float
    sessionId: str
    #: (client address, proxy address) for PROXY protocol headers.
    headerAddresses: Callable[[], tuple[Any, Any]]
    #: The backend's TLS client creator (one per backend, shared).
    backendTLS: Callable[[Backend], Any]


class _Replies:
    """
    The backend control connection's replies, one awaited at a time.
    """

    def __init__(self, control: BackendControl) -> None:
        self._control = control
        self._received: deque[Reply] = deque()
        self._waiter: Deferred[Reply] | None = None
        self._broken: BackendRefused | None = None
        control.attach(self)

    def next(self) -> Deferred[Reply]:
        """
        The next final reply (preliminary ones are skipped).
        """
        if self._received:
            return succeed(self._received.popleft())
        if self._broken is not None:
            return fail(self._broken)
        self._waiter = Deferred(lambda d: setattr(self, "_waiter", None))
        return self._waiter

    def command(self, line: bytes) -> Deferred[Reply]:
        self._control.sendCommand(line)
        return self.next()

    def _deliver(self, reply: Reply) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(reply)
        else:
            self._received.append(reply)

    def _break(self, error: BackendRefused) -> None:
        self._broken = error
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(error)

    # BackendListener
    def backendReplyReceived(self, reply: Reply) -> None:
        if not reply.isPreliminary:
            self._deliver(reply)

    def backendProtocolError(self, error: ProtocolTextError) -> None:
        self._break(BackendRefused(f"sent a malformed reply: {error}"))

    def backendConnectionLost(self, reason: Failure) -> None:
        if reason.check(SSLError):
            self._break(BackendRefused(f"TLS failed: {reason.getErrorMessage()}"))
        else:
            self._break(BackendRefused(f"closed the connection: {reason.getErrorMessage()}"))


async def _expect(replies: _Replies, line: bytes, code: int, step: str) -> None:
    reply = await replies.command(line)
    if reply.code != code:
        raise BackendRefused(f"answered {step} with {reply.code}")


async def _setUp(backend: Backend, control: BackendControl, settings: ConnectSettings) -> Reply:
    """
    Connect to C{backend} and get it ready for the session; return its
    greeting.
    """
    config = backend.config
    address = config.address
    try:
        await connectProtocol(settings.clock, address.host, address.port, settings.timeout, control)
    except (CancelledError, ConnectingCancelledError):
        raise CancelledError() from None
    except Exception as e:
        raise BackendRefused(f"unreachable: {Failure(e).getErrorMessage()}") from None
    if config.proxyProtocol:
        # Before any FTP byte, and before TLS for implicit FTPS backends.
        sendProxyHeader(control.transport, config.proxyProtocol, *settings.headerAddresses())
    replies = _Replies(control)
    if config.tls == "implicit":
        control.startTLS(settings.backendTLS(backend))
    banner = await replies.next()
    if banner.code != 220:
        raise BackendRefused(f"greeted with {banner.code}", banner)
    if config.tls == "explicit":
        await _expect(replies, b"AUTH TLS", 234, "AUTH")
        control.startTLS(settings.backendTLS(backend))
    if config.usesTLS:
        await _expect(replies, b"PBSZ 0", 200, "PBSZ")
        private = config.dataProtection == "private"
        await _expect(replies, b"PROT P" if private else b"PROT C", 200, "PROT")
    return banner


async def _tryBackend(backend: Backend, settings: ConnectSettings) -> ConnectedBackend:
    control = BackendControl()
    setUp = Deferred.fromCoroutine(_setUp(backend, control, settings))
    setUp.addTimeout(settings.timeout, settings.clock)
    try:
        banner = await setUp
    except DeferredTimeout:
        control.close()
        raise BackendRefused("sent no greeting in time") from None
    except BaseException:
        control.close()
        raise
    return ConnectedBackend(backend, control, banner)


async def _connect(
    candidates: Sequence[Backend], settings: ConnectSettings, pool: Any, events: Any
) -> ConnectedBackend:
    refusal: Reply | None = None
    for backend in candidates:
        try:
            connected = await _tryBackend(backend, settings)
        except BackendRefused as e:
            log.warn(
                "session {session}: backend {backend} {why}",
                session=settings.sessionId,
                backend=backend.name,
                why=str(e),
            )
            events.backendConnectFailed(backend.name)
            pool.reportConnectFailure(backend, str(e))
            refusal = e.reply
            continue
        pool.reportConnectSuccess(backend)
        return connected
    raise NoBackend(refusal)


def connectBackend(
    candidates: Sequence[Backend], settings: ConnectSettings, pool: Any, events: Any
) -> Deferred[ConnectedBackend]:
    """
    Try C{candidates} in order; fire with the first that is ready, or fail
    with L{NoBackend}. Cancel it to give up quietly.
    """
    return Deferred.fromCoroutine(_connect(list(candidates), settings, pool, events))
