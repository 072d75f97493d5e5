"""
The twistd command line: ``twistd -n ftpproxy --help``.

Every option can also come from the TOML file given with --config; what
the command line says wins.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

from twisted.python import usage

from ftpproxy.tls.contexts import TLSSettings

from ftpproxy.settings.config import (
    DEFAULT_LISTEN,
    ConfigError,
    PortRange,
    ProxyConfig,
    backendsFromArguments,
    makeConfig,
    makeTLSSettings,
    readConfigFile,
)

DEMO_IMPLICIT_LISTEN = "tcp:2990:interface=127.0.0.1"

DEMO_HELP = """\
ftpproxy demo: two in-process FTP backends behind the proxy.
  127.0.0.1:2121  FTP, and explicit FTPS (AUTH TLS)
  127.0.0.1:2990  implicit FTPS
Try:
  curl ftp://127.0.0.1:2121/                       (list; anonymous, read-only)
  curl ftp://127.0.0.1:2121/whoami.txt             (which backend served you)
  curl -O ftp://127.0.0.1:2121/pub/sample.bin      (download 1 MiB)
  curl -T somefile ftp://demo:demo@127.0.0.1:2121/upload/   (upload as demo/demo)
  curl --ssl-reqd --cacert {ca} ftp://127.0.0.1:2121/whoami.txt    (explicit FTPS)
  curl --cacert {ca} ftps://127.0.0.1:2990/whoami.txt              (implicit FTPS)
  python3 -c "import ftplib; f=ftplib.FTP(); f.connect('127.0.0.1', 2121); f.login(); f.retrlines('LIST'); f.quit()"
The demo's certificates (development CA: {ca}) are made afresh at each start.
Press Ctrl-C to stop.
"""


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "FTP load balancer: relays each client session to one backend and "
        "keeps its data connections pinned to that backend. Options may also "
        "be given in a TOML file (--config); the command line wins."
    )

    optFlags = [
        ["demo", None, "Run two in-process demo FTP backends and listen on 127.0.0.1:2121."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["policy", None, None, "Backend selection policy: round-robin (default)."],
        ["passive-ports", None, None, "Passive port range LO-HI (default 50000-50999)."],
        ["public-address", None, None, "Address advertised in PASV replies (default: the control connection's local address)."],
        ["connect-timeout", None, None, "Seconds to wait for a backend connection (default 10).", float],
        ["data-connection-timeout", None, None, "Seconds to wait for a client's data connection (default 30).", float],
        ["login-timeout", None, None, "Seconds a client has to log in (default 60; 0: no limit).", float],
        ["idle-timeout", None, None, "Seconds a control connection may stay idle outside transfers (default 900; 0: no limit).", float],
        ["data-stall-timeout", None, None, "Seconds a transfer may move no byte before it is aborted (default 600; 0: no limit).", float],
        ["reply-timeout", None, None, "Seconds a backend may take to answer a command before the session ends with 421 (default 60).", float],
        ["shutdown-grace", None, None, "Seconds sessions may go on after SIGTERM before they are closed (default 30).", float],
        ["max-sessions", None, None, "Most sessions at once (default 0: no limit).", int],
        ["max-sessions-per-client", None, None, "Most sessions at once from one client address (default 0: no limit).", int],
        ["health-interval", None, None, "Seconds between active health checks of each backend (turns them on; kind, thresholds and credentials go in [health]).", float],
        ["admin", None, None, "Twisted endpoint for the admin HTTP API (metrics, backends, drain), e.g. tcp:8021:interface=127.0.0.1."],
        ["xferlog", None, None, "Write one xferlog line per file transfer to this file."],
        ["log-format", None, None, "Log as text (default) or json (one JSON object per line)."],
        ["tls-cert", None, None, "PEM certificate (and chain, and optionally key) for FTPS."],
        ["tls-key", None, None, "PEM private key, if not in --tls-cert."],
        ["tls-min-version", None, None, "Lowest TLS version accepted: 1.0, 1.1, 1.2 (default) or 1.3."],
        ["tls-max-version", None, None, "Highest TLS version offered (default: the newest)."],
        ["tls-ciphers", None, None, "OpenSSL cipher list for TLS 1.2 and below."],
    ]
    optFlags += [
        ["require-tls", None, "Refuse USER/PASS before AUTH TLS and transfers under PROT C."],
        ["no-splice", None, "Move clear transfers through Python instead of splice(2)."],
        ["require-session-reuse", None, "Refuse protected data connections that do not resume the control connection's TLS session."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self["implicit-tls-listen"] = []

    def opt_implicit_tls_listen(self, description: str) -> None:
        """
        Twisted server endpoint for implicit FTPS, e.g. tcp:990 (repeatable).
        """
        self["implicit-tls-listen"].append(description)

    def opt_listen(self, description: str) -> None:
        """
        Twisted server endpoint to listen on, e.g. tcp:2121:interface=127.0.0.1 (repeatable).
        """
        self["listen"].append(description)

    def opt_backend(self, address: str) -> None:
        """
        Backend FTP server HOST:PORT (repeatable).
        """
        self["backend"].append(address)

    def postOptions(self) -> None:
        try:
            self.config = configFromOptions(self)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def configFromOptions(options: usage.Options) -> ProxyConfig:
    """
    Merge the configuration file (if any) with the command line.
    """
    values: dict[str, Any] = {}
    if options["config"]:
        values.update(readConfigFile(options["config"]))
    if options["listen"]:
        values["listen"] = tuple(options["listen"])
    if options["backend"]:
        values["backends"] = backendsFromArguments(options["backend"])
    if options["implicit-tls-listen"]:
        values["implicitListen"] = tuple(options["implicit-tls-listen"])
    if options["demo"]:
        values["demo"] = True
    for flag, field in [("require-tls", "requireTLS"), ("require-session-reuse", "requireSessionReuse")]:
        if options[flag]:
            values[field] = True
    if options["no-splice"]:
        values["splice"] = False
    tlsOverrides = {
        field: options[option]
        for option, field in [
            ("tls-cert", "certificate"),
            ("tls-key", "key"),
            ("tls-min-version", "minimumVersion"),
            ("tls-max-version", "maximumVersion"),
            ("tls-ciphers", "ciphers"),
        ]
        if options[option] is not None
    }
    if tlsOverrides:
        base = values.get("tls")
        if base is None and "certificate" not in tlsOverrides:
            raise ConfigError("TLS options need a certificate: give --tls-cert")
        values["tls"] = (
            attrs.evolve(base, **tlsOverrides) if base is not None else makeTLSSettings(**tlsOverrides)
        )
    for option, field in [
        ("policy", "policy"),
        ("public-address", "publicAddress"),
        ("connect-timeout", "connectTimeout"),
        ("data-connection-timeout", "dataConnectionTimeout"),
        ("login-timeout", "loginTimeout"),
        ("idle-timeout", "idleTimeout"),
        ("data-stall-timeout", "dataStallTimeout"),
        ("reply-timeout", "replyTimeout"),
        ("shutdown-grace", "shutdownGrace"),
        ("admin", "admin"),
        ("xferlog", "xferlog"),
        ("log-format", "logFormat"),
        ("max-sessions", "maxSessions"),
        ("max-sessions-per-client", "maxSessionsPerClient"),
    ]:
        if options[option] is not None:
            values[field] = options[option]
    if options["health-interval"] is not None:
        from ftpproxy.backends.health import HealthSettings

        health = values.get("health") or HealthSettings()
        try:
            values["health"] = attrs.evolve(health, interval=options["health-interval"])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--health-interval: {e}") from None
    if options["passive-ports"] is not None:
        values["passivePorts"] = PortRange.parse(options["passive-ports"], "--passive-ports")
    if values.get("demo"):
        values.setdefault("listen", (DEFAULT_LISTEN,))
        values.setdefault("implicitListen", (DEMO_IMPLICIT_LISTEN,))
        values.setdefault("backends", ())
        if values.get("tls") is None:
            values["tls"] = demoTLSSettings()
    values.setdefault("backends", ())
    return makeConfig(**values)


def demoTLSSettings() -> TLSSettings:
    """
    Fresh development certificates for the demo, in a directory removed
    when the process exits.
    """
    from ftpproxy.tls.devcerts import makeCertificates

    directory = Path(tempfile.mkdtemp(prefix="ftpproxy-demo-certs-"))
    atexit.register(shutil.rmtree, directory, True)
    paths = makeCertificates(directory)
    return makeTLSSettings(certificate=paths.serverCert, key=paths.serverKey)


def makeService(options: Options):
    from ftpproxy.ops.logs import jsonLogObserverFor
    from ftpproxy.app.service import makeService as makeProxyService

    config = options.config
    if config.demo:
        ca = config.tls.certificate.parent / "ca.pem" if config.tls else "(none)"
        sys.stdout.write(DEMO_HELP.format(ca=ca))
        sys.stdout.flush()
    # SIGHUP re-reads the file; the command line still wins over it.
    reload = (lambda: configFromOptions(options)) if options["config"] else None

    try:
        service = makeProxyService(config, reloadConfig=reload)
        if config.logFormat == "json":
            # Handed to twistd as the application's log observer.
            service.logObserver = jsonLogObserverFor(options.parent or {"nodaemon": True})
    except ConfigError as e:
        raise SystemExit(f"ftpproxy: {e}") from None
    return service
