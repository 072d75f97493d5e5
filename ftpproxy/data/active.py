"""
The client side of a data connection in active mode (PORT/EPRT), and the
address the proxy advertises for passive mode.

Passive mode lives in L{ftpproxy.data.passive}; both offer C{whenConnected} and
C{close}, so a transfer does not care which one the client chose.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from twisted.internet import endpoints
from twisted.python.failure import Failure

from ftpproxy.data.legs import DataLeg, DataLegFactory


def clientAdvertisedHost(publicAddress: str | None, localHost: str) -> str:
    """
    The address to put in a passive reply: the configured public address,
    else the local address of the control connection (as IPv4 when it is
    an IPv4-mapped IPv6 address of a dual-stack listener).
    """
    if publicAddress:
        return publicAddress
    try:
        address = ipaddress.ip_address(localHost.split("%")[0])
    except ValueError:
        return localHost
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return localHost


class ActiveDataChannel:
    """
    Connects to the client's data port when the transfer starts, from the
    address of the control connection (some clients, Java's among them,
    refuse data connections from any other).
    """

    def __init__(
        self,
        reactor,
        host: str,
        port: int,
        timeout: float,
        bindHost: str,
        tls=None,
        requireResumption: bool = False,
    ) -> None:
        self._reactor = reactor
        self.host = host
        self.port = port
        self._timeout = timeout
        self._bindHost = bindHost
        self._tls = tls
        self._requireResumption = requireResumption
        self._connecting = None
        self._factory: DataLegFactory | None = None
        self.leg: DataLeg | None = None
        self._download: bool | None = None

    def setDirection(self, download: bool) -> None:
        """
        What the transfer does, for the TLS handshake of a protected leg.
        """
        self._download = download

    def afterHandshake(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} (the reply that lets the client send an upload)
        once the client's data connection is not in the middle of its TLS
        handshake; see L{DataLegFactory.afterHandshake}.
        """
        if self._factory is None:
            callback()
        else:
            self._factory.afterHandshake(callback)

    def whenConnected(
        self, onLeg: Callable[[DataLeg], None], onFailed: Callable[[Failure], None]
    ) -> None:
        endpointType = endpoints.TCP6ClientEndpoint if ":" in self.host else endpoints.TCP4ClientEndpoint
        endpoint = endpointType(
            self._reactor, self.host, self.port, self._timeout, (self._bindHost, 0)
        )
        self._factory = DataLegFactory(
            onLeg,
            onFailed,
            self._tls,
            outgoing=True,
            requireResumption=self._requireResumption,
            clock=self._reactor,
        )
        if self._download is not None:
            self._factory.setDirection(self._download)
        self._connecting = endpoint.connect(self._factory)

        def connected(leg: DataLeg) -> None:
            self._connecting = None
            self.leg = leg

        def failed(reason: Failure) -> None:
            self._connecting = None
            if self._factory is not None:
                self._factory.onFailed(reason)

        self._connecting.addCallbacks(connected, failed)

    def close(self) -> None:
        """
        Give up the channel: a reply held by L{afterHandshake} goes out
        first, a connect in progress is cancelled without being reported as
        a failure, a leg made is dropped.
        """
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.releaseHeld()
            factory.onReady = lambda leg: leg.abort()
            factory.onFailed = lambda reason: None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.leg is not None:
            self.leg.abort()
