"""
The proxy's passive ports.

The ports of the configured range are bound when first needed and then kept
listening: a PASV or EPSV does not open a port, it takes one. The pool
(L{PassivePortPool}) hands each port to one owner at a time (a session's
L{PassiveDataListener}); a connection to a port nobody owns is closed at
once, and one to an owned port goes to its owner, which accepts exactly one
data connection, and only from the address of the session's control
connection. An owner gives its port back the moment it has its connection
(or is closed), and the port can be handed out again at once.

So a session that sends PASV again while the range is full gets back the
port it had, and a busy proxy does not call listen(2) and close(2) (nor log
two lines) per transfer. A released port waits behind other idle ones
before it is offered again, so that a late connection meant for its last
owner is unlikely to reach the next; and beyond L{SPARE_PORTS} idle ports
the pool closes the ones it releases, so that a burst does not leave the
whole range bound.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpproxy.wire.addresses import sameHost
from ftpproxy.settings.config import PortRange
from ftpproxy.data.legs import DataLeg, DataLegFactory

#: Idle ports (bound, owned by nobody) a pool keeps listening at most; it
#: closes the ones released beyond.
SPARE_PORTS = 32

#: A released port is handed out again only once more than this many ports
#: are idle on its interface (it is then the oldest of them), or when no
#: other port can be had.
REUSE_AFTER = 8


class NoFreePassivePort(Exception):
    """
    Every port of the passive range is in use.
    """


class PoolState(enum.Enum):
    OPEN = "hands out ports and keeps spare ones listening"
    RETIRED = "a reload replaced it: hands out ports to the sessions that kept it, keeps none idle"
    CLOSED = "the proxy stopped: every port closed, none handed out"


class _BoundPort:
    """
    One listening port of the range, and its current owner.

    @ivar owner: the factory that builds the connection of the session the
        port is handed to, or None while idle.
    """

    def __init__(self, interface: str, number: int) -> None:
        self.interface = interface
        self.number = number
        self.owner: Factory | None = None
        self.listening: IListeningPort | None = None


class _Dispatch(Factory):
    """
    What a bound port listens with: a connection goes to the port's owner,
    or, when there is none, is closed at once.
    """

    noisy = False

    def __init__(self, bound: _BoundPort) -> None:
        self._bound = bound

    def buildProtocol(self, addr) -> Protocol | None:
        owner = self._bound.owner
        if owner is None:
            return None
        return owner.buildProtocol(addr)


class PassivePort:
    """
    A port handed out by a L{PassivePortPool}; L{release} gives it back.
    """

    def __init__(self, pool: PassivePortPool, bound: _BoundPort, owner: Factory) -> None:
        self._pool = pool
        self._bound = bound
        self._owner = owner
        self.port = bound.number

    def acceptWaiting(self) -> None:
        """
        Accept now the connections the kernel has already established on
        this port (they go to the owner), instead of on the reactor's next
        turn.
        """
        if self._bound is not None and IReadDescriptor.providedBy(self._bound.listening):
            self._bound.listening.doRead()

    def release(self) -> None:
        """
        Give the port back (idempotent): from now on connections to it are
        not this owner's.
        """
        if self._bound is not None:
            bound, self._bound = self._bound, None
            self._pool._release(bound, self._owner)


class PassivePortPool:
    """
    The ports of one passive range, bound on each interface as they are
    needed and handed to one owner at a time.

    @ivar range: the port range.
    @ivar state: open, retired by a reload, or closed.
    @ivar _bound: the listening ports, by (interface, port).
    @ivar _idle: per interface, the bound ports nobody owns, longest idle
        first.
    @ivar _cursor: where the next search for a port to bind starts.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTCP, portRange: PortRange, spare: int = SPARE_PORTS) -> None:
        self._reactor = reactor
        self.range = portRange
        self.spare = spare
        self.state = PoolState.OPEN
        self._bound: dict[tuple[str, int], _BoundPort] = {}
        self._idle: dict[str, deque[_BoundPort]] = {}
        self._cursor = 0

    @property
    def reactor(self) -> IReactorTCP:
        """
        The reactor the ports listen on (and the data legs time things with).
        """
        return self._reactor

    @property
    def owned(self) -> int:
        """
        How many ports are handed out now.
        """
        return len(self._bound) - self.idle

    @property
    def held(self) -> list[int]:
        """
        The ports handed out now, by number.
        """
        return sorted(b.number for b in self._bound.values() if b.owner is not None)

    @property
    def idle(self) -> int:
        """
        How many ports listen with no owner.
        """
        return sum(len(queue) for queue in self._idle.values())

    def claim(self, interface: str, owner: Factory) -> PassivePort:
        """
        A port on C{interface} whose connections go to C{owner} until it is
        released.

        @raise NoFreePassivePort: when every port of the range on that
            interface is in use (or the pool is closed).
        """
        if self.state is PoolState.CLOSED:
            raise NoFreePassivePort("the proxy is stopping")
        idle = self._idle.get(interface)
        bound = None
        if idle and len(idle) > REUSE_AFTER:
            bound = idle.popleft()
        else:
            bound = self._bindNew(interface)
            if bound is None and idle:
                bound = idle.popleft()
        if bound is None:
            raise NoFreePassivePort(f"no free port in {self.range}")
        bound.owner = owner
        return PassivePort(self, bound, owner)

    def _bindNew(self, interface: str) -> _BoundPort | None:
        size = len(self.range)
        for attempt in range(size):
            number = self.range.low + (self._cursor + attempt) % size
            if (interface, number) in self._bound:
                continue
            bound = _BoundPort(interface, number)
            try:
                bound.listening = self._reactor.listenTCP(
                    number, _Dispatch(bound), backlog=5, interface=interface
                )
            except CannotListenError:
                continue
            self._cursor = (self._cursor + attempt + 1) % size
            self._bound[(interface, number)] = bound
            return bound
        return None

    def _release(self, bound: _BoundPort, owner: Factory) -> None:
        if bound.owner is not owner:
            return
        bound.owner = None
        if self.state is PoolState.OPEN and self.idle < self.spare:
            self._idle.setdefault(bound.interface, deque()).append(bound)
        else:
            self._close(bound)

    def _close(self, bound: _BoundPort) -> None:
        del self._bound[(bound.interface, bound.number)]
        listening, bound.listening = bound.listening, None
        if listening is not None:
            listening.stopListening()

    def _closeIdle(self) -> None:
        idle, self._idle = self._idle, {}
        for queue in idle.values():
            for bound in queue:
                self._close(bound)

    def retire(self) -> None:
        """
        A reload replaced this pool: close its idle ports now, and every
        other one when its owner releases it. Sessions that kept the pool
        can still be handed ports.
        """
        if self.state is PoolState.OPEN:
            self.state = PoolState.RETIRED
            self._closeIdle()

    def close(self) -> None:
        """
        The proxy stops: close every port, owned or not (owners that
        release theirs later change nothing).
        """
        self.state = PoolState.CLOSED
        self._closeIdle()
        for bound in list(self._bound.values()):
            bound.owner = None
            self._close(bound)


class PassiveDataListener:
    """
    Waits for the client's data connection on a port of the passive range.

    A connection from any host but the client's (or the balancer's that
    relays the client's control connection) is closed at once and
    the listener keeps waiting (so that guessing the port steals nothing).
    The first connection from the client is kept and the port is released;
    under PROT P it is reported once its TLS handshake is done.
    """

    log = Logger()

    def __init__(
        self,
        pool: PassivePortPool,
        interface: str,
        clientHosts: tuple[str, ...],
        sessionId: str,
        tls=None,
        requireResumption: bool = False,
    ) -> None:
        self._clientHosts = clientHosts
        self._sessionId = sessionId
        self.leg: DataLeg | None = None
        self._failure: Failure | None = None
        self._onLeg: Callable[[DataLeg], None] | None = None
        self._onFailed: Callable[[Failure], None] | None = None
        self._factory = factory = _GuardedFactory(self, tls, requireResumption, pool.reactor)
        self._port: PassivePort | None = pool.claim(interface, factory)
        self.port: int = self._port.port

    def setDirection(self, download: bool) -> None:
        """
        What the transfer does, for the TLS handshake of a protected leg.

        A data connection the kernel has already established is accepted
        first: whether its client began TLS before it sent the transfer
        command decides if an upload's leg hands out a session ticket (see
        L{DataLegFactory}), and the command and the connection may come in
        the same reactor turn.
        """
        if self.leg is None and self._port is not None:
            self._port.acceptWaiting()
        self._factory.setDirection(download)

    def afterHandshake(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} (the reply that lets the client send an upload)
        once the client's data connection is not in the middle of its TLS
        handshake; see L{DataLegFactory.afterHandshake}.
        """
        self._factory.afterHandshake(callback)

    def whenConnected(
        self, onLeg: Callable[[DataLeg], None], onFailed: Callable[[Failure], None]
    ) -> None:
        """
        Call C{onLeg} with the client's leg once it is ready (now, if it is),
        or C{onFailed} if it broke first. Waiting has no end of its own: the
        transfer times it out.
        """
        if self.leg is not None and self.leg.ready:
            onLeg(self.leg)
        elif self._failure is not None:
            onFailed(self._failure)
        else:
            self._onLeg, self._onFailed = onLeg, onFailed

    def close(self) -> None:
        """
        Give the port back and drop the client's leg if one was accepted; a
        reply held by L{afterHandshake} goes out first.
        """
        self._factory.releaseHeld()
        self._onLeg = self._onFailed = None
        self._releasePort()
        if self.leg is not None:
            self.leg.abort()

    def _releasePort(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            port.release()

    def _ready(self, leg: DataLeg) -> None:
        if self._onLeg is not None:
            onLeg, self._onLeg, self._onFailed = self._onLeg, None, None
            onLeg(leg)

    def _failed(self, reason: Failure) -> None:
        self._failure = reason
        if self._onFailed is not None:
            onFailed, self._onLeg, self._onFailed = self._onFailed, None, None
            onFailed(reason)

    def _accept(self, host: str) -> bool:
        if self.leg is not None or self._port is None:
            return False
        if any(sameHost(host, allowed) for allowed in self._clientHosts):
            return True
        self.log.warn(
            "session {session}: refused data connection from {host} "
            "(control connection is from {client})",
            session=self._sessionId,
            host=host,
            client=self._clientHosts[0],
        )
        return False


class _GuardedFactory(DataLegFactory):
    def __init__(
        self, listener: PassiveDataListener, tls, requireResumption: bool, clock
    ) -> None:
        super().__init__(
            listener._ready,
            listener._failed,
            tls=tls,
            requireResumption=requireResumption,
            clock=clock,
        )
        self._listener = listener

    def buildProtocol(self, addr):
        if not self._listener._accept(addr.host):
            return None
        leg = super().buildProtocol(addr)
        self._listener.leg = leg
        self._listener._releasePort()
        return leg
