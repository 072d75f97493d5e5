"""
The proxy's passive ports: one listener per PASV/EPSV, taken from the
configured range, that accepts exactly one data connection, and only from the
address of the session's control connection.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReadDescriptor
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpproxy.wire.addresses import sameHost
from ftpproxy.settings.config import PortRange
from ftpproxy.data.legs import DataLeg, DataLegFactory


class NoFreePassivePort(Exception):
    """
    Every port of the passive range is in use.
    """


class PassivePortPool:
    """
    Hands out listening ports from a range, moving on after each one so that
    a port just released is not the next one offered.
    """

    def __init__(self, reactor: IReactorTCP, portRange: PortRange) -> None:
        self._reactor = reactor
        self.range = portRange
        self._cursor = 0

    @property
    def reactor(self) -> IReactorTCP:
        """
        The reactor the ports listen on (and the data legs time things with).
        """
        return self._reactor

    def listen(self, factory: Factory, interface: str) -> IListeningPort:
        size = len(self.range)
        for attempt in range(size):
            port = self.range.low + (self._cursor + attempt) % size
            try:
                listening = self._reactor.listenTCP(port, factory, backlog=5, interface=interface)
            except CannotListenError:
                continue
            self._cursor = (self._cursor + attempt + 1) % size
            return listening
        raise NoFreePassivePort(f"no free port in {self.range}")


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
        self._port: IListeningPort | None = pool.listen(factory, interface)
        self.port: int = self._port.getHost().port

    def setDirection(self, download: bool) -> None:
        """
        What the transfer does, for the TLS handshake of a protected leg.

        A data connection the kernel has already established is accepted
        first: whether its client began TLS before it sent the transfer
        command decides if an upload's leg hands out a session ticket (see
        L{DataLegFactory}), and the command and the connection may come in
        the same reactor turn.
        """
        if self.leg is None and IReadDescriptor.providedBy(self._port):
            self._port.doRead()
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
        Stop listening and drop the client's leg if one was accepted; a
        reply held by L{afterHandshake} goes out first.
        """
        self._factory.releaseHeld()
        self._onLeg = self._onFailed = None
        self._stopListening()
        if self.leg is not None:
            self.leg.abort()

    def _stopListening(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()

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
        self._listener._stopListening()
        return leg
