"""
Connecting out: one protocol to one address, with a Deferred for the
result, at the cost of one connector and one Deferred.

A client endpoint would do it too, but it wraps the protocol (every read of
the connection's life then passes through the wrapper) and builds a chain of
Deferreds; the proxy connects out twice per session (backend control, then
backend data), so this is its own, smaller version for literal addresses.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from ftpproxy.wire.addresses import isIPAddress


class ConnectingProtocol(Protocol):
    """
    A protocol that says when it has its transport.

    @ivar whenConnected: called once, right after C{connectionMade}; set by
        L{connectProtocol}.
    """

    whenConnected: Callable[[], None] | None = None

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if self.whenConnected is not None:
            whenConnected, self.whenConnected = self.whenConnected, None
            whenConnected()


def connectProtocol(
    reactor: Any, host: str, port: int, timeout: float, protocol: Protocol
) -> Deferred[Protocol]:
    """
    Connect C{protocol} to C{host}:C{port}, failing after C{timeout}
    seconds. The Deferred fires with C{protocol} once it has its transport;
    cancelling it stops the attempt. Names (not literal addresses) are
    resolved through a client endpoint.
    """
    if not isIPAddress(host) or not isinstance(protocol, ConnectingProtocol):
        return clientEndpoint(reactor, host, port, timeout).connect(QuietFactory(protocol))
    factory = _OneConnection(protocol)
    factory.connector = reactor.connectTCP(host, port, factory, timeout)
    return factory.connected


def clientEndpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    """
    An endpoint for C{host}:C{port}: literal addresses connect directly,
    names are resolved first.
    """
    if isIPAddress(host):
        if ":" in host:
            return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)


class _OneConnection(ClientFactory):
    """
    The factory of one outgoing connection. The connection's transport
    keeps its connector, and the connector this factory, for the whole life
    of the connection: once the attempt is over the factory lets go of the
    Deferred, the protocol and the connector.

    @ivar connected: fires with the protocol once connected; None once the
        attempt is over.
    """

    noisy = False

    def __init__(self, protocol: ConnectingProtocol) -> None:
        self._protocol: ConnectingProtocol | None = protocol
        self.connector: Any = None
        self.connected: Deferred[Protocol] | None = Deferred(self._cancel)
        protocol.whenConnected = self._madeConnection

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self._protocol

    def _over(self) -> tuple[Deferred[Protocol] | None, ConnectingProtocol | None]:
        connected, protocol = self.connected, self._protocol
        self.connected = self._protocol = self.connector = None
        return connected, protocol

    def _madeConnection(self) -> None:
        connected, protocol = self._over()
        if connected is not None and not connected.called:
            connected.callback(protocol)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        connected, _ = self._over()
        if connected is not None and not connected.called:
            connected.errback(reason)

    def _cancel(self, deferred: Deferred[Protocol]) -> None:
        connector, protocol = self.connector, self._protocol
        if protocol is not None:
            protocol.whenConnected = None
        connector.stopConnecting()
        self._over()
        if not deferred.called:
            deferred.errback(ConnectingCancelledError(connector.getDestination()))


class QuietFactory(Factory):
    """
    Hands out one given protocol without logging its start and stop: the
    proxy makes several connections per transfer.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol
