"""
Getting a session a backend: connect, read the greeting, secure an FTPS
backend, and fail over to the next candidate before the client notices.

Setting up one backend is a fixed dialog (connect, PROXY header, greeting,
AUTH TLS, PBSZ, PROT): L{_SetUp} goes through it one L{Step} at a time, each
reply either moving it to the next step or ending the attempt with
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

import enum
from typing import Any, Callable, Sequence

import attrs
from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpproxy.backends.balancer import Backend
from ftpproxy.wire.ftptext import ProtocolTextError, Reply
from ftpproxy.backends.control import BackendControl, sendProxyHeader
from ftpproxy.data.connecting import connectProtocol

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


class Step(enum.Enum):
    """
    Where one backend's set-up stands; each step awaits one reply.
    """

    CONNECTING = "connecting"
    GREETING = "waiting for the 220 greeting"
    AUTH = "AUTH TLS sent"
    PBSZ = "PBSZ 0 sent"
    PROT = "PROT sent"
    DONE = "done"


class _SetUp:
    """
    Connect to one backend and get it ready for a session. L{done} fires
    with a L{ConnectedBackend}, or fails with L{BackendRefused}; cancelling
    it drops the attempt.

    @ivar _step: where the dialog stands.
    """

    def __init__(self, backend: Backend, settings: ConnectSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._config = backend.config
        self._control = BackendControl()
        self._step = Step.CONNECTING
        self._banner: Reply | None = None
        self.done: Deferred[ConnectedBackend] = Deferred(self._cancelled)
        address = self._config.address
        self._timer = settings.clock.callLater(settings.timeout, self._timedOut)
        self._connecting: Deferred[Any] | None = connectProtocol(
            settings.clock, address.host, address.port, settings.timeout, self._control
        )
        self._connecting.addCallbacks(self._connected, self._unreachable)

    # -- connecting ----------------------------------------------------------

    def _connected(self, _: object) -> None:
        self._connecting = None
        if self._step is not Step.CONNECTING:
            # Too late: the attempt is over.
            self._control.close()
            return
        if self._config.proxyProtocol:
            # Before any FTP byte, and before TLS for implicit FTPS backends.
            sendProxyHeader(
                self._control.transport, self._config.proxyProtocol, *self._settings.headerAddresses()
            )
        self._step = Step.GREETING
        self._control.attach(self)
        if self._config.tls == "implicit":
            self._control.startTLS(self._settings.backendTLS(self._backend))

    def _unreachable(self, reason: Failure) -> None:
        self._connecting = None
        if not reason.check(CancelledError, ConnectingCancelledError):
            self._fail(f"unreachable: {reason.getErrorMessage()}")

    def _timedOut(self) -> None:
        self._timer = None
        self._fail("sent no greeting in time")

    # -- the dialog (the control connection reports here) -----------------------

    def backendReplyReceived(self, reply: Reply) -> None:
        if reply.isPreliminary:
            return
        step = self._step
        if step is Step.GREETING:
            if reply.code != 220:
                self._fail(f"greeted with {reply.code}", reply)
                return
            self._banner = reply
            if self._config.tls == "explicit":
                self._send(Step.AUTH, b"AUTH TLS")
            elif self._config.usesTLS:
                self._send(Step.PBSZ, b"PBSZ 0")
            else:
                self._succeed()
        elif step is Step.AUTH:
            if reply.code != 234:
                self._fail(f"answered AUTH with {reply.code}")
                return
            self._control.startTLS(self._settings.backendTLS(self._backend))
            self._send(Step.PBSZ, b"PBSZ 0")
        elif step is Step.PBSZ:
            if reply.code != 200:
                self._fail(f"answered PBSZ with {reply.code}")
                return
            private = self._config.dataProtection == "private"
            self._send(Step.PROT, b"PROT P" if private else b"PROT C")
        elif step is Step.PROT:
            if reply.code != 200:
                self._fail(f"answered PROT with {reply.code}")
                return
            self._succeed()

    def backendProtocolError(self, error: ProtocolTextError) -> None:
        self._fail(f"sent a malformed reply: {error}")

    def backendConnectionLost(self, reason: Failure) -> None:
        if reason.check(SSLError):
            self._fail(f"TLS failed: {reason.getErrorMessage()}")
        else:
            self._fail(f"closed the connection: {reason.getErrorMessage()}")

    def _send(self, step: Step, line: bytes) -> None:
        self._step = step
        self._control.sendCommand(line)

    # -- the end ---------------------------------------------------------------

    def _finish(self) -> bool:
        if self._step is Step.DONE:
            return False
        self._step = Step.DONE
        if self._timer is not None:
            timer, self._timer = self._timer, None
            timer.cancel()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        return True

    def _succeed(self) -> None:
        if self._finish():
            self.done.callback(ConnectedBackend(self._backend, self._control, self._banner))

    def _fail(self, why: str, reply: Reply | None = None) -> None:
        if self._finish():
            self._control.close()
            self.done.errback(BackendRefused(why, reply))

    def _cancelled(self, done: Deferred[ConnectedBackend]) -> None:
        if self._finish():
            self._control.close()
            done.errback(CancelledError())


class _Candidates:
    """
    Tries the backends in order until one is ready. L{done} fires with the
    L{ConnectedBackend}, or fails with L{NoBackend}; cancelling it gives up
    quietly (the backend being tried is not blamed).
    """

    def __init__(self, candidates: Sequence[Backend], settings: ConnectSettings, pool: Any, events: Any) -> None:
        self._candidates = iter(candidates)
        self._settings = settings
        self._pool = pool
        self._events = events
        self._current: _SetUp | None = None
        self._refusal: Reply | None = None
        self.done: Deferred[ConnectedBackend] = Deferred(self._cancelled)

    def next(self) -> None:
        backend = next(self._candidates, None)
        if backend is None:
            self._current = None
            self.done.errback(NoBackend(self._refusal))
            return
        attempt = self._current = _SetUp(backend, self._settings)
        attempt.done.addCallbacks(self._ready, self._refused, errbackArgs=(backend,))

    def _ready(self, connected: ConnectedBackend) -> None:
        self._current = None
        self._pool.reportConnectSuccess(connected.backend)
        self.done.callback(connected)

    def _refused(self, reason: Failure, backend: Backend) -> None:
        if reason.check(CancelledError):
            return
        error = reason.value
        why = str(error)
        log.warn(
            "session {session}: backend {backend} {why}",
            session=self._settings.sessionId,
            backend=backend.name,
            why=why,
        )
        self._events.backendConnectFailed(backend.name)
        self._pool.reportConnectFailure(backend, why)
        self._refusal = getattr(error, "reply", None)
        self.next()

    def _cancelled(self, done: Deferred[ConnectedBackend]) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.done.cancel()
        if not done.called:
            done.errback(CancelledError())


def connectBackend(
    candidates: Sequence[Backend], settings: ConnectSettings, pool: Any, events: Any
) -> Deferred[ConnectedBackend]:
    """
    Try C{candidates} in order; fire with the first that is ready, or fail
    with L{NoBackend}. Cancel it to give up quietly.
    """
    attempts = _Candidates(list(candidates), settings, pool, events)
    attempts.next()
    return attempts.done
