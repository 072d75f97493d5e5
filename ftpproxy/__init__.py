"""
ftpproxy: an FTP load balancer that terminates FTPS, built on Twisted.

Embedding::

    from ftpproxy import ProxyConfig, BackendConfig, HostPort, makeService
    config = ProxyConfig(backends=(BackendConfig(HostPort("10.0.0.5", 21), "node1"),))
    makeService(config, reactor).setServiceParent(application)
"""

from ftpproxy.settings.config import BackendConfig, ConfigError, HostPort, PortRange, ProxyConfig
from ftpproxy.app.service import makeService

__all__ = ["BackendConfig", "ConfigError", "HostPort", "PortRange", "ProxyConfig", "makeService"]
