"""
Wiring: the services that run a proxy, for twistd and for embedders alike.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger

from ftpproxy.balancer import BackendPool, policyNamed
from ftpproxy.config import BackendConfig, ConfigError, HostPort, ProxyConfig
from ftpproxy.proxy import ProxyFactory
from ftpproxy.tlsconfig import TLSSettingsError, makeServerTLS


class ProxyService(MultiService):
    """
    A running proxy: one listening service per endpoint, plus the demo
    backends when asked for. C{factory} is there for inspection.
    """

    def __init__(self, factory: ProxyFactory) -> None:
        super().__init__()
        self.factory = factory


def makeService(config: ProxyConfig, reactor=None) -> ProxyService:
    """
    The service that runs ftpproxy with C{config}.

    Start it with C{startService()} (twistd does) and stop it with
    C{stopService()}; the reactor is passed in so that tests and embedders
    choose it.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    pool = BackendPool(config.backends, policyNamed(config.policy))
    serverTLS = None
    if config.tls is not None:
        try:
            serverTLS = makeServerTLS(config.tls)
        except TLSSettingsError as e:
            raise ConfigError(f"TLS: {e}") from None
    factory = ProxyFactory(reactor, config, pool, serverTLS)
    service = ProxyService(factory)
    if config.demo:
        _DemoWiring(reactor, pool).setServiceParent(service)
    for description in config.listen:
        _listen(reactor, description, factory).setServiceParent(service)
    if config.implicitListen:
        implicit = factory.implicitVariant()
        for description in config.implicitListen:
            _listen(reactor, description, implicit).setServiceParent(service)
    return service


def _listen(reactor, description: str, factory: ProxyFactory) -> StreamServerEndpointService:
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"listen endpoint {description!r}: {e}") from None
    listening = StreamServerEndpointService(endpoint, factory)
    # Failing to listen must stop start-up, not be logged and ignored.
    listening._raiseSynchronously = True
    return listening


class _DemoWiring(Service):
    """
    Starts the in-process demo backends first and hands their addresses to
    the backend pool.
    """

    log = Logger()

    def __init__(self, reactor, pool: BackendPool) -> None:
        from ftpproxy.demo import DemoBackends

        self._backends = DemoBackends(reactor)
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        addresses = self._backends.start()
        self._pool.replace(
            [
                BackendConfig(address=HostPort(host, port), name=f"backend-{n}")
                for n, (host, port) in enumerate(addresses, start=1)
            ]
        )
        for n, (host, port) in enumerate(addresses, start=1):
            self.log.info("demo backend-{n} listening on {host}:{port}", n=n, host=host, port=port)

    def stopService(self):
        super().stopService()
        return self._backends.stop()
