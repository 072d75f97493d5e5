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

Who may use it:

  - An endpoint given without an interface (C{tcp:8021}) listens on
    loopback only, and says so in the log.
  - With a token (C{admin_token_file}) every request must carry
    C{Authorization: Bearer TOKEN}, or gets 401. An endpoint that listens
    beyond loopback is refused at start-up without one.
  - A request whose C{Host} is neither an IP address, nor C{localhost}, nor
    one of C{admin_hosts} gets 403: a web page whose name an attacker
    points at the proxy (DNS rebinding) cannot read it.
  - A request that carries an C{Origin} header gets 403, so that a web page
    open in an operator's browser cannot drain backends with a cross-site
    form.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import stat
from typing import Any

import attrs

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
from ftpproxy.settings.values import IP_ENDPOINT_KINDS, endpointInterface

#: Shortest bearer token accepted from admin_token_file.
MIN_TOKEN_LENGTH = 16

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


@attrs.frozen
class AdminAccess:
    """
    Who the admin API answers.

    @ivar token: the bearer token every request must carry, or None for
        none (loopback only).
    @ivar hosts: the C{Host} names accepted besides IP addresses and
        C{localhost}, lower case.
    """

    token: str | None = None
    hosts: frozenset[str] = attrs.field(
        default=frozenset(), converter=lambda names: frozenset(n.lower().rstrip(".") for n in names)
    )

    def hostAllowed(self, header: bytes | None) -> bool:
        """
        Whether a request with this C{Host} header may be answered. No
        header (not a browser) is allowed; a name is allowed only if it is
        C{localhost} or listed; an IP address always (a page served from
        an IP address is the admin API's own origin, not a rebound name).
        """
        if header is None:
            return True
        host = _hostName(header.decode("latin-1").strip())
        if host is None:
            return False
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return host == "localhost" or host in self.hosts
        return True

    def authorized(self, header: bytes | None) -> bool:
        """
        Whether a request with this C{Authorization} header may be answered.
        """
        if self.token is None:
            return True
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self.token.encode("utf-8"))


def _hostName(value: str) -> str | None:
    """
    The host of a C{Host} header value (without the port), lower case; None
    if it is not one.
    """
    if value.startswith("["):
        end = value.find("]")
        if end == -1 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        return value[1:end].lower()
    host, colon, port = value.rpartition(":")
    if not colon:
        host = value
    elif not port.isdigit():
        return None
    host = host.lower().rstrip(".")
    return host or None


def readTokenFile(path: str) -> str:
    """
    The bearer token in the file at C{path} (surrounding whitespace
    dropped).

    @raise ConfigError: when it cannot be read or is too short.
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(f"admin_token_file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"admin_token_file {path}: not UTF-8 text") from None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"admin_token_file {path}: the token must be at least {MIN_TOKEN_LENGTH} characters "
            "without spaces"
        )
    return token


def tokenFileExposed(path: str) -> bool:
    """
    Whether users other than the file's owner (and group) may read it.
    """
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def adminAccess(tokenFile: str | None, hosts: tuple[str, ...]) -> AdminAccess:
    """
    The access settings for C{admin_token_file} and C{admin_hosts}; the
    token file is read now.
    """
    token = readTokenFile(tokenFile) if tokenFile is not None else None
    return AdminAccess(token=token, hosts=hosts)


def loopbackByDefault(description: str) -> tuple[str, bool]:
    """
    C{description} with C{interface=} set to loopback if it is an IP
    endpoint without one; and whether it was added.
    """
    kind, interface = endpointInterface(description)
    if kind not in IP_ENDPOINT_KINDS or interface is not None:
        return description, False
    loopback = "\\:\\:1" if kind == "tcp6" else "127.0.0.1"
    return f"{description}:interface={loopback}", True


class AdminResource(Resource):
    """
    The whole admin API as one leaf resource: the routes are few enough
    that a table reads better than a tree of resources.

    @ivar registry: what /metrics exposes; an embedder may register its own
        collectors in it.
    @ivar access: who is answered; a reload may replace it.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        registry: CollectorRegistry,
        pool: IAdminPool,
        access: AdminAccess = AdminAccess(),
        clients: Any = None,
    ) -> None:
        """
        @param clients: the L{ftpproxy.ops.clients.ClientReport} /clients
            serves; L{None} for an empty one.
        """
        super().__init__()
        self.registry = registry
        self._pool = pool
        self.access = access
        self._clients = clients if clients is not None else ClientReport()

    def render(self, request: Request) -> bytes:
        if not self.access.hostAllowed(request.getHeader(b"host")):
            return _error(request, 403, "this Host is not served; see admin_hosts")
        if not self.access.authorized(request.getHeader(b"authorization")):
            request.setHeader(b"www-authenticate", b'Bearer realm="ftpproxy"')
            return _error(request, 401, "a bearer token is required")
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

    @property
    def access(self) -> AdminAccess:
        return self.site.resource.access

    @access.setter
    def access(self, access: AdminAccess) -> None:
        """
        Answer according to C{access} from now on (a reload).
        """
        self.site.resource.access = access

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


def makeAdminService(
    reactor, endpointDescription: str, proxy, pool: IAdminPool, access: AdminAccess = AdminAccess()
) -> AdminService:
    """
    The admin endpoint listening on C{endpointDescription} only (on
    loopback if it names no interface), for C{proxy}'s counters (its
    C{metrics}, an L{ftpproxy.ops.metrics.ProxyMetrics}) and C{pool},
    answering as C{access} says.

    /metrics comes from a registry of the endpoint's own (the resource's
    C{registry}) holding one L{ftpproxy.ops.metrics.ProxyCollector} over
    those counters and the pool's backends.
    """
    try:
        description, defaulted = loopbackByDefault(endpointDescription)
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"admin endpoint {endpointDescription!r}: {e}") from None
    if defaulted:
        AdminService.log.info(
            "admin endpoint {endpoint} names no interface: listening on loopback only "
            "({listening}); give interface= (and admin_token_file) to listen elsewhere",
            endpoint=endpointDescription,
            listening=description,
        )
    registry = metricsRegistry(proxy.metrics, lambda: pool.backends)
    site = _QuietSite(AdminResource(registry, pool, access, proxy.metrics.clients))
    return AdminService(endpoint, site, description)
