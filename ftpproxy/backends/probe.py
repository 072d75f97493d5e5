"""
One health check of one backend, as a state machine (automat's typed
builder).

The states are the steps of the conversation: connecting, awaiting the
greeting, AUTH TLS and the TLS handshake, USER and PASS; then, once the
verdict is given, quitting (QUIT and a polite close), closing (the
connection dropped) and done. Every transition, hence every input each
state accepts, is declared in one place below; any other input in a state
is a bug and raises automat's C{NoTransition}. The connection
(L{_ProbeConnection}) only turns bytes and events into L{ProbeInputs}, and
the machine reaches the network only through L{IProbeLink}, so it is tested
without sockets.
"""

from __future__ import annotations

from typing import Any, Callable
from typing import Protocol as TypingProtocol

import attrs
from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from ftpproxy.backends.balancer import Backend
from ftpproxy.data.connecting import QuietFactory, clientEndpoint
from ftpproxy.tls.contexts import BackendTLSSettings, TLSSettingsError, makeBackendTLS, tlsConnectionOf
from ftpproxy.wire.ftptext import ProtocolTextError, Reply, ReplyParser
from ftpproxy.wire.proxyprotocol import formatLocalHeader

__all__ = ["CheckResult", "HealthProbe", "IProbeLink", "ProbeInputs"]


class CheckSettings(TypingProtocol):
    """
    What a probe needs of the health settings
    (L{ftpproxy.backends.health.HealthSettings}).
    """

    kind: str
    user: str | None
    password: str | None
    timeout: float


@attrs.frozen
class CheckResult:
    """
    What one check found: passed or not, why, and how long it took.
    """

    ok: bool
    why: str
    seconds: float


def _describe(reply: Reply) -> str:
    text = reply.text.decode("utf-8", "replace").strip()
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{reply.code} {text}"


# A reply's meaning depends on the state and on the kind of check, so a
# state's reply handler feeds the machine one of its own decisions (passed,
# failed, authorize, secure, logIn, sendPassword), which the machine takes
# next: automat queues inputs that arrive while a transition runs.


class ProbeInputs(TypingProtocol):
    """
    What can happen to a health probe.
    """

    def start(self) -> None:
        "The checker starts the probe."

    def settingsUnusable(self, why: str) -> None:
        "The backend's TLS settings cannot be used; no connection is made."

    def connected(self) -> None:
        "The TCP connection is open."

    def connectFailed(self, why: str) -> None:
        "The connection attempt failed (or was cancelled)."

    def replyReceived(self, reply: Reply) -> None:
        "The backend sent a complete reply."

    def garbled(self, why: str) -> None:
        "The backend sent bytes that are no reply, or sent them in the clear after 234."

    def handshakeCompleted(self) -> None:
        "The TLS handshake finished, certificate checks included."

    def timedOut(self) -> None:
        "The probe's deadline passed."

    def connectionLost(self, why: str) -> None:
        "The connection is gone."

    def stop(self) -> None:
        "The checker is stopping: give up now."

    # The machine's own decisions about a reply, which it takes next.

    def passed(self, why: str) -> None:
        "The check passed."

    def failed(self, why: str) -> None:
        "The check failed."

    def authorize(self) -> None:
        "Ask for TLS: send AUTH TLS."

    def secure(self) -> None:
        "The backend said 234: start TLS."

    def logIn(self) -> None:
        "Send USER."

    def sendPassword(self) -> None:
        "The backend asked for the password: send PASS."


class IProbeLink(Interface):
    """
    The network as a probe's state machine sees it: one connection to the
    backend.
    """

    inputs = Attribute("The L{ProbeInputs} to report what happens to; the probe sets it.")

    def connect() -> Deferred:
        """
        Open the connection. The result fails when it cannot be opened, and
        when it is cancelled (which drops the attempt).
        """

    def write(data: bytes) -> None:
        """
        Send C{data} (after L{startTLS}, through TLS).
        """

    def startTLS(creator: Any) -> None:
        """
        Start the client side of TLS; bytes the backend already sent in the
        clear behind the reply that asked for it count as garbled.
        """

    def tlsVersion() -> str:
        """
        The TLS version negotiated ("TLSv1.3"), or "?".
        """

    def close() -> None:
        """
        Close politely: flush, send TLS close_notify, end the connection.
        """

    def abort() -> None:
        """
        Drop the connection now.
        """


@attrs.frozen
class _Plan:
    """
    What a probe of one backend does, from the settings and the backend.

    @ivar kind: the kind of check; C{tls} becomes C{banner} for a backend
        without TLS.
    @ivar explicit: AUTH TLS after the greeting (explicit FTPS backends, for
        the C{tls} and C{login} kinds).
    @ivar implicit: TLS from the first byte (implicit FTPS backends, all
        kinds but C{tcp}).
    @ivar proxyVersion: the PROXY protocol version the backend expects, or
        None.
    @ivar timeout: seconds the whole check may take, connect included.
    """

    kind: str
    explicit: bool
    implicit: bool
    proxyVersion: int | None
    user: str | None
    password: str | None = attrs.field(repr=False)
    timeout: float

    @classmethod
    def of(cls, backend: Backend, settings: CheckSettings) -> _Plan:
        config = backend.config
        kind = settings.kind
        if kind == "tls" and not config.usesTLS:
            kind = "banner"
        return cls(
            kind=kind,
            explicit=config.tls == "explicit" and kind in ("tls", "login"),
            implicit=config.tls == "implicit" and kind != "tcp",
            proxyVersion=config.proxyProtocol or None,
            user=settings.user,
            password=settings.password,
            timeout=settings.timeout,
        )

    @property
    def usesTLS(self) -> bool:
        return self.explicit or self.implicit

    @property
    def greeting(self) -> str:
        """
        What the probe waits for once connected, as a timeout names it.
        """
        return "TLS handshake and 220 greeting" if self.implicit else "220 greeting"


@attrs.define(eq=False)
class _ProbeCore:
    """
    What a probe keeps for its whole life: its plan, its link, its one
    deadline (the check's C{timeout}, connect included, then once more for
    the goodbye) and its two results.

    @ivar verdict: fires once with a L{CheckResult}; never fails.
    @ivar finished: fires once nothing of the probe is left: no connection,
        no connection attempt, no timer.
    """

    reactor: Any
    plan: _Plan
    link: IProbeLink
    startedAt: float
    creator: Any = None
    deadline: Any = None
    verdict: Deferred[CheckResult] = attrs.field(factory=Deferred)
    finished: Deferred[None] = attrs.field(factory=Deferred)

    def armDeadline(self, inputs: ProbeInputs) -> None:
        self.deadline = self.reactor.callLater(self.plan.timeout, self._deadlinePassed, inputs)

    def _deadlinePassed(self, inputs: ProbeInputs) -> None:
        self.deadline = None
        inputs.timedOut()

    def extendDeadline(self) -> None:
        if self.deadline is not None:
            self.deadline.reset(self.plan.timeout)

    def judge(self, ok: bool, why: str) -> None:
        self.verdict.callback(CheckResult(ok, why, self.reactor.seconds() - self.startedAt))

    def goodbye(self) -> None:
        """
        Leave politely (QUIT, then close), and give the backend a fresh
        C{timeout} to let go.
        """
        if self.plan.kind != "tcp":
            self.link.write(b"QUIT\r\n")
        self.extendDeadline()
        self.link.close()

    def send(self, line: bytes) -> None:
        self.link.write(line + b"\r\n")

    def finish(self) -> None:
        if self.deadline is not None:
            deadline, self.deadline = self.deadline, None
            deadline.cancel()
        self.finished.callback(None)


@attrs.define
class _Connecting:
    """
    The state connecting's own data: the connection attempt.
    """

    attempt: Deferred


@attrs.frozen
class _Awaiting:
    """
    The data of a state that waits for the backend: what it waits for, as a
    timeout or a lost connection names it.
    """

    what: str


def _openConnection(inputs: ProbeInputs, core: _ProbeCore) -> _Connecting:
    """
    Entering connecting opens the connection.
    """
    attempt = core.link.connect()
    attempt.addErrback(lambda failure: inputs.connectFailed(failure.getErrorMessage()))
    return _Connecting(attempt)


def _waitingFor(what: str) -> Callable[[ProbeInputs, _ProbeCore], _Awaiting]:
    def enter(inputs: ProbeInputs, core: _ProbeCore) -> _Awaiting:
        return _Awaiting(what)

    enter.__name__ = f"waitingFor({what!r})"
    return enter


def _waitingForGreeting(inputs: ProbeInputs, core: _ProbeCore) -> _Awaiting:
    return _Awaiting(core.plan.greeting)


_ABANDONED = "check abandoned: health checker stopping"
_INJECTED = "data after 234 before the TLS handshake"

_builder = TypeMachineBuilder(ProbeInputs, _ProbeCore)

# The states. Until a verdict: idle, connecting and the five that wait for
# the backend; after it: quitting (passed, QUIT sent, closing politely),
# closing (failed or given up, connection dropped) and done.
idle = _builder.state("idle")
connecting = _builder.state("connecting", _openConnection)
greeting = _builder.state("awaiting the greeting", _waitingForGreeting)
authorizing = _builder.state("awaiting 234 to AUTH TLS", _waitingFor("234 reply to AUTH TLS"))
handshaking = _builder.state("TLS handshake", _waitingFor("TLS handshake"))
sentUser = _builder.state("awaiting the reply to USER", _waitingFor("reply to USER"))
sentPassword = _builder.state("awaiting the reply to PASS", _waitingFor("reply to PASS"))
quitting = _builder.state("quitting")
closing = _builder.state("closing")
done = _builder.state("done")

_TALKING = (greeting, authorizing, handshaking, sentUser, sentPassword)


# idle -------------------------------------------------------------------------


@idle.upon(ProbeInputs.start).to(connecting)
def _start(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.armDeadline(inputs)


@idle.upon(ProbeInputs.settingsUnusable).to(done)
def _unusable(inputs: ProbeInputs, core: _ProbeCore, why: str) -> None:
    core.judge(False, why)
    core.finish()


@idle.upon(ProbeInputs.stop).to(done)
def _stopBeforeStart(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.judge(False, _ABANDONED)
    core.finish()


# connecting -----------------------------------------------------------------


@connecting.upon(ProbeInputs.connected).to(greeting)
def _connected(inputs: ProbeInputs, core: _ProbeCore, connection: _Connecting) -> None:
    plan = core.plan
    if plan.proxyVersion:
        # A backend that expects PROXY headers refuses connections without
        # one; LOCAL says "this is the proxy itself".
        core.link.write(formatLocalHeader(plan.proxyVersion))
    if plan.implicit:
        core.link.startTLS(core.creator)
    if plan.kind == "tcp":
        inputs.passed("connected")


@connecting.upon(ProbeInputs.connectFailed).to(done)
def _connectFailed(inputs: ProbeInputs, core: _ProbeCore, connection: _Connecting, why: str) -> None:
    core.judge(False, f"connect failed: {why}")
    core.finish()


def _giveUpConnecting(why: str) -> Callable[..., None]:
    def giveUp(inputs: ProbeInputs, core: _ProbeCore, connection: _Connecting) -> None:
        core.judge(False, why.format(timeout=core.plan.timeout))
        # The attempt's failure comes back as connectFailed, in done.
        connection.attempt.cancel()
        core.finish()

    return giveUp


connecting.upon(ProbeInputs.timedOut).to(done)(_giveUpConnecting("no connection within {timeout:g}s"))
connecting.upon(ProbeInputs.stop).to(done)(_giveUpConnecting(_ABANDONED))


# greeting, authorizing, handshaking, sentUser, sentPassword ---------------------


@greeting.upon(ProbeInputs.replyReceived).loop()
def _greeted(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, reply: Reply) -> None:
    plan = core.plan
    if reply.isPreliminary:
        return
    if reply.code != 220:
        inputs.failed(f"greeted with {_describe(reply)}")
    elif plan.explicit:
        inputs.authorize()
    elif plan.kind == "login":
        inputs.logIn()
    else:
        inputs.passed("greeted with 220" + (" over TLS" if plan.implicit else ""))


@greeting.upon(ProbeInputs.handshakeCompleted).loop()
def _implicitHandshake(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting) -> None:
    # Implicit FTPS: the greeting, which comes next, decides.
    pass


@greeting.upon(ProbeInputs.authorize, nodata=True).to(authorizing)
def _sendAuth(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.send(b"AUTH TLS")


@authorizing.upon(ProbeInputs.replyReceived).loop()
def _authorized(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, reply: Reply) -> None:
    if reply.isPreliminary:
        return
    if reply.code == 234:
        inputs.secure()
    else:
        inputs.failed(f"AUTH TLS refused: {_describe(reply)}")


@authorizing.upon(ProbeInputs.secure, nodata=True).to(handshaking)
def _startTLS(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.link.startTLS(core.creator)


@handshaking.upon(ProbeInputs.handshakeCompleted).loop()
def _secured(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting) -> None:
    if core.plan.kind == "tls":
        inputs.passed(f"TLS {core.link.tlsVersion()} handshake completed")
    else:
        inputs.logIn()


@handshaking.upon(ProbeInputs.replyReceived).to(closing)
def _injectedReply(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, reply: Reply) -> None:
    # Bytes behind the 234 in the clear would be read as if they came
    # through TLS (the reply-injection twin of CVE-2011-0411).
    core.judge(False, _INJECTED)
    core.link.abort()


@handshaking.upon(ProbeInputs.garbled).to(closing)
def _injectedBytes(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, why: str) -> None:
    core.judge(False, _INJECTED)
    core.link.abort()


@greeting.upon(ProbeInputs.logIn, nodata=True).to(sentUser)
@handshaking.upon(ProbeInputs.logIn, nodata=True).to(sentUser)
def _sendUser(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.send(b"USER " + core.plan.user.encode("utf-8"))


@sentUser.upon(ProbeInputs.replyReceived).loop()
def _userAnswered(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, reply: Reply) -> None:
    if reply.isPreliminary:
        return
    if reply.code == 230:
        inputs.passed("logged in")
    elif reply.code == 331:
        inputs.sendPassword()
    else:
        inputs.failed(f"USER refused: {_describe(reply)}")


@sentUser.upon(ProbeInputs.sendPassword, nodata=True).to(sentPassword)
def _sendPass(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.send(b"PASS " + core.plan.password.encode("utf-8"))


@sentPassword.upon(ProbeInputs.replyReceived).loop()
def _passAnswered(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, reply: Reply) -> None:
    if reply.isPreliminary:
        return
    if reply.code == 230:
        inputs.passed("logged in")
    else:
        inputs.failed(f"login refused: {_describe(reply)}")


def _pass(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, why: str) -> None:
    core.judge(True, why)
    core.goodbye()


def _fail(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, why: str) -> None:
    core.judge(False, why)
    core.link.abort()


def _timedOutWaiting(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting) -> None:
    core.judge(False, f"no {awaiting.what} within {core.plan.timeout:g}s")
    core.link.abort()


def _lostWaiting(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting, why: str) -> None:
    core.judge(False, f"connection lost waiting for {awaiting.what}: {why}")
    core.finish()


def _stopWaiting(inputs: ProbeInputs, core: _ProbeCore, awaiting: _Awaiting) -> None:
    core.judge(False, _ABANDONED)
    core.link.abort()


for _state in (greeting, handshaking, sentUser, sentPassword):
    _state.upon(ProbeInputs.passed).to(quitting)(_pass)
for _state in (greeting, authorizing, sentUser, sentPassword):
    _state.upon(ProbeInputs.failed).to(closing)(_fail)
    _state.upon(ProbeInputs.garbled).to(closing)(_fail)
for _state in _TALKING:
    _state.upon(ProbeInputs.timedOut).to(closing)(_timedOutWaiting)
    _state.upon(ProbeInputs.connectionLost).to(done)(_lostWaiting)
    _state.upon(ProbeInputs.stop).to(closing)(_stopWaiting)


# quitting, closing, done: the verdict is given ----------------------------------


def _ignore(inputs: ProbeInputs, core: _ProbeCore, *args: object) -> None:
    pass


def _abort(inputs: ProbeInputs, core: _ProbeCore) -> None:
    core.link.abort()


def _gone(inputs: ProbeInputs, core: _ProbeCore, why: str) -> None:
    core.finish()


for _state in (quitting, closing, done):
    # What the backend still says no longer matters. (In done too: a
    # transport may report its end while the rest of a read is handed over.)
    _state.upon(ProbeInputs.replyReceived).loop()(_ignore)
    _state.upon(ProbeInputs.garbled).loop()(_ignore)
    _state.upon(ProbeInputs.handshakeCompleted).loop()(_ignore)
for _state in (quitting, closing):
    _state.upon(ProbeInputs.connectionLost).to(done)(_gone)
# The goodbye is taking too long (a TLS peer that never answers
# close_notify, say), or the checker is stopping.
quitting.upon(ProbeInputs.timedOut).to(closing)(_abort)
quitting.upon(ProbeInputs.stop).to(closing)(_abort)
closing.upon(ProbeInputs.timedOut).loop()(_abort)
closing.upon(ProbeInputs.stop).loop()(_ignore)
# The failure of an attempt cancelled on leaving connecting.
done.upon(ProbeInputs.connectFailed).loop()(_ignore)
done.upon(ProbeInputs.stop).loop()(_ignore)

_ProbeMachine = _builder.build()


@implementer(IProbeLink, IHandshakeListener)
class _ProbeConnection(Protocol):
    """
    A probe's connection: turns what happens on it into L{ProbeInputs} and
    does what the machine asks through L{IProbeLink}.

    @ivar inputs: the machine, set right after construction.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        self.inputs: ProbeInputs | None = None
        self._parser = ReplyParser()
        self._tlsJustStarted = False

    # -- IProbeLink ---------------------------------------------------------------

    def connect(self) -> Deferred:
        endpoint = clientEndpoint(self._reactor, self._host, self._port, self._timeout)
        return endpoint.connect(QuietFactory(self))

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def startTLS(self, creator: Any) -> None:
        self._tlsJustStarted = True
        self.transport.startTLS(creator)

    def tlsVersion(self) -> str:
        try:
            return tlsConnectionOf(self.transport).get_protocol_version_name()
        except (TypeError, AttributeError):
            return "?"

    def close(self) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()

    # -- what happens -------------------------------------------------------------

    def connectionMade(self) -> None:
        self.inputs.connected()

    def dataReceived(self, data: bytes) -> None:
        # Only bytes of the read that carried the reply to AUTH TLS can
        # still be in the clear; later reads come through TLS.
        self._tlsJustStarted = False
        try:
            replies = self._parser.feed(data)
        except ProtocolTextError as e:
            self.inputs.garbled(f"bad reply: {e}")
            return
        for reply in replies:
            if self._tlsJustStarted:
                self.inputs.garbled(_INJECTED)
                return
            self.inputs.replyReceived(reply)
        if self._tlsJustStarted and self._parser.hasPending:
            self.inputs.garbled(_INJECTED)

    def handshakeCompleted(self) -> None:
        self.inputs.handshakeCompleted()

    def connectionLost(self, reason: Failure = None) -> None:
        self.inputs.connectionLost(reason.getErrorMessage() if reason is not None else "closed")


class HealthProbe:
    """
    One check of one backend: connect, speak as much FTP as the kind of
    check needs, judge, say goodbye.

    @ivar verdict: fires once with a L{CheckResult}; never fails.
    @ivar finished: fires once nothing of the probe is left: no connection,
        no connection attempt, no timer.
    """

    def __init__(
        self,
        reactor: Any,
        backend: Backend,
        settings: CheckSettings,
        link: IProbeLink | None = None,
    ) -> None:
        """
        @param link: the connection to use; by default a real one to the
            backend's address (tests give a fake and play the network by
            calling its C{inputs}).
        """
        if link is None:
            address = backend.config.address
            link = _ProbeConnection(reactor, address.host, address.port, settings.timeout)
        self._backend = backend
        self._core = core = _ProbeCore(reactor, _Plan.of(backend, settings), link, reactor.seconds())
        self.verdict = core.verdict
        self.finished = core.finished
        self._machine = _ProbeMachine(core)
        link.inputs = self._machine

    def start(self) -> None:
        if self._core.plan.usesTLS:
            try:
                self._core.creator = _backendTLS(self._backend)
            except TLSSettingsError as e:
                self._machine.settingsUnusable(f"TLS settings unusable: {e}")
                return
        self._machine.start()

    def stop(self) -> None:
        """
        Give up now (the checker is stopping): drop the connection or the
        attempt; L{finished} fires once it is gone.
        """
        self._machine.stop()


def _backendTLS(backend: Backend) -> Any:
    """
    The backend's TLS client creator, built once and shared with the
    sessions (L{ftpproxy.app.proxy.ProxyFactory.backendTLSFor} does the same),
    so that checks verify exactly what sessions will.
    """
    if backend.tls is None:
        config = backend.config
        settings = config.tlsSettings or BackendTLSSettings(hostname=config.address.host)
        backend.tls = makeBackendTLS(settings)
    return backend.tls
