"""
The admin HTTP endpoint: metrics for Prometheus, the backends as JSON, and
drain/enable for operators.

  GET  /metrics                 Prometheus text format (prometheus_client's)
  GET  /backends                JSON list of backends
  GET  /backends/NAME           JSON for one backend
  POST /backends/NAME/drain     no new sessions for NAME; live ones finish
  POST /backends/NAME/enable    NAME takes new sessions again
  GET  /clients                 TLS clients by fingerprint: sessions, versions,
                                ciphers, resumed data connections, failures
                                (what python -m ftpproxy.report prints)

There is no authentication: listen on loopback or a management network only.
Requests that carry an Origin header are refused, so that a web page open
in an operator's browser cannot drain backends with a cross-site form.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import Attribute, Interface

from ftpproxy.ops.clients import ClientReport
from ftpproxy.ops.metrics import metricsRegistry
from ftpproxy.settings.config import ConfigError

JSON_CONTENT_TYPE = b"application/json"


class IAdminPool(Interface):
    """
    What the admin endpoint needs of the backend pool, and nothing more.
    """

    backends = Attribute(
        """
        The current backends, in configuration order. Each has a C{name}, a
        C{config} (with C{address} and C{weight}), a C{state} ("up", "down"
        or "draining", as a string or a string enum), C{activeSessions} and
        C{totalSessions}; a C{weight} and a C{healthy} verdict if it has
        them.
        """
    )

    def drain(name: str) -> bool:
        """
        No new sessions for backend C{name}; False if there is no such
        backend. A pool that spans processes may return a L{Deferred}
        that fires with the answer once every process has it.
        """

    def enable(name: str) -> bool:
        """
        Backend C{name} takes new sessions again; False if there is no such
        backend (or a L{Deferred} of that, as for L{drain}).
        """


def backendJSON(backend: Any) -> dict[str, Any]:
    """
    What /backends says about one backend.
    """
    state = getattr(backend, "state", "up")
    weight = getattr(backend, "weight", None)
    if weight is None:
        weight = backend.config.weight
    return {
        "name": backend.name,
        "address": str(backend.config.address),
        "state": str(getattr(state, "value", state)),
        "weight": weight,
        "active_sessions": backend.activeSessions,
        "total_sessions": backend.totalSessions,
    }


class AdminResource(Resource):
    """
    The whole admin API as one leaf resource: the routes are few enough
    that a table reads better than a tree of resources.

    @ivar registry: what /metrics exposes; an embedder may register its own
        collectors in it.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, registry: CollectorRegistry, pool: IAdminPool, clients: Any = None) -> None:
        """
        @param clients: the L{ftpproxy.ops.clients.ClientReport} /clients
            serves; L{None} for an empty one.
        """
        super().__init__()
        self.registry = registry
        self._pool = pool
        self._clients = clients if clients is not None else ClientReport()

    def render(self, request: Request) -> bytes:
        if request.getHeader(b"origin") is not None:
            return _error(request, 403, "cross-origin requests are refused")
        try:
            segments = [s.decode("utf-8") for s in request.postpath]
        except UnicodeDecodeError:
            return _error(request, 404, "no such resource")
        while len(segments) > 1 and segments[-1] == "":
            segments.pop()  # "/backends/" is "/backends"
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"  # twisted.web drops the body
        match segments:
            case ["metrics"]:
                allowed, handler = ("GET",), lambda: self._metrics(request)
            case ["backends"]:
                allowed, handler = ("GET",), lambda: self._backends(request)
            case ["clients"]:
                allowed, handler = ("GET",), lambda: _json(request, 200, self._clients.asJSON())
            case ["backends", name]:
                allowed, handler = ("GET",), lambda: self._backend(request, name)
            case ["backends", name, ("drain" | "enable") as action]:
                allowed, handler = ("POST",), lambda: self._change(request, name, action)
            case _:
                return _error(request, 404, "no such resource")
        if method not in allowed:
            request.setHeader(b"allow", ", ".join(allowed + (("HEAD",) if "GET" in allowed else ())))
            return _error(request, 405, f"use {' or '.join(allowed)}")
        return handler()

    def _metrics(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)

    def _backends(self, request: Request) -> bytes:
        return _json(request, 200, [backendJSON(b) for b in self._pool.backends])

    def _backend(self, request: Request, name: str) -> bytes:
        backend = self._find(name)
        if backend is None:
            return _error(request, 404, f"no backend named {name!r}")
        return _json(request, 200, backendJSON(backend))

    def _change(self, request: Request, name: str, action: str) -> bytes | int:
        change = self._pool.drain if action == "drain" else self._pool.enable
        found = change(name)
        if not isinstance(found, Deferred):
            return self._changed(request, name, action, found)

        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def failed(reason: Failure) -> bytes:
            self.log.failure("admin: {action} backend {backend} failed", reason,
                             action=action, backend=name)
            return _error(request, 500, f"{action} failed: {reason.getErrorMessage()}")

        found.addCallback(lambda result: self._changed(request, name, action, result))
        found.addErrback(failed)
        found.addCallback(answer)
        return NOT_DONE_YET

    def _changed(self, request: Request, name: str, action: str, found: bool) -> bytes:
        if not found:
            return _error(request, 404, f"no backend named {name!r}")
        backend = self._find(name)
        if backend is None:  # replaced by a reload in between: unlikely
            return _error(request, 404, f"no backend named {name!r}")
        self.log.info(
            "admin: {action} backend {backend} (from {peer})",
            action=action,
            backend=name,
            peer=_peer(request),
        )
        return _json(request, 200, backendJSON(backend))

    def _find(self, name: str):
        for backend in self._pool.backends:
            if backend.name == name:
                return backend
        return None


def _json(request: Request, code: int, value: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, indent=1).encode("utf-8") + b"\n"


def _error(request: Request, code: int, message: str) -> bytes:
    return _json(request, code, {"error": message})


def _peer(request: Request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", str(peer))


class _QuietSite(Site):
    """
    A site that writes no access log: Prometheus scrapes every few seconds
    and would drown the proxy's own log. Drain and enable log themselves.
    """

    noisy = False

    def log(self, request) -> None:
        pass


class AdminService(Service):
    """
    Listens on one endpoint with the admin site. Listening happens in
    privilegedStartService, so a port below 1024 is bound before twistd
    drops privileges, and a failure to listen stops start-up.
    """

    log = Logger()

    def __init__(self, endpoint, site: Site, description: str) -> None:
        self.endpoint = endpoint
        self.site = site
        self.description = description
        self._listening: Deferred[IListeningPort] | None = None
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._startListening()

    def startService(self) -> None:
        super().startService()
        self._startListening()

    def _startListening(self) -> None:
        if self._listening is not None:
            return
        starting = True
        early: list[Failure] = []

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            return port

        def failed(reason: Failure) -> None:
            if starting:
                early.append(reason)
            else:
                self.log.failure(
                    "admin endpoint {endpoint} failed to listen", reason, endpoint=self.description
                )

        self._listening = self.endpoint.listen(self.site).addCallbacks(listening, failed)
        starting = False
        if early:
            self._listening = None
            early[0].raiseException()

    def whenListening(self) -> Deferred[IListeningPort | None]:
        """
        Fires with the listening port once the endpoint listens (None if it
        could not): how a test or an embedder learns the port "tcp:0" got.
        """
        if self._listening is None:
            raise RuntimeError("the admin service has not been started")
        result: Deferred[IListeningPort | None] = Deferred()

        def fire(port):
            result.callback(port)
            return port

        self._listening.addCallback(fire)
        return result

    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, None
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        if listening is not None:
            listening.cancel()
        return None


def makeAdminService(reactor, endpointDescription: str, proxy, pool: IAdminPool) -> AdminService:
    """
    The admin endpoint listening on C{endpointDescription} only, for
    C{proxy}'s counters (its C{metrics}, an L{ftpproxy.ops.metrics.ProxyMetrics})
    and C{pool}.

    /metrics comes from a registry of the endpoint's own (the resource's
    C{registry}) holding one L{ftpproxy.ops.metrics.ProxyCollector} over
    those counters and the pool's backends.
    """
    try:
        endpoint = endpoints.serverFromString(reactor, endpointDescription)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"admin endpoint {endpointDescription!r}: {e}") from None
    registry = metricsRegistry(proxy.metrics, lambda: pool.backends)
    site = _QuietSite(AdminResource(registry, pool, proxy.metrics.clients))
    return AdminService(endpoint, site, endpointDescription)
