"""
The twistd command line: ``twistd -n ftpproxy --help``.

Every option can also come from the TOML file given with --config; what
the command line says wins.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from ftpproxy.config import (
    DEFAULT_LISTEN,
    ConfigError,
    PortRange,
    ProxyConfig,
    backendsFromArguments,
    makeConfig,
    readConfigFile,
)

DEMO_HELP = """\
ftpproxy demo: two in-process FTP backends behind the proxy on 127.0.0.1:2121.
Try:
  curl ftp://127.0.0.1:2121/                       (list; anonymous, read-only)
  curl ftp://127.0.0.1:2121/whoami.txt             (which backend served you)
  curl -O ftp://127.0.0.1:2121/pub/sample.bin      (download 1 MiB)
  curl -T somefile ftp://demo:demo@127.0.0.1:2121/upload/   (upload as demo/demo)
  python3 -c "import ftplib; f=ftplib.FTP(); f.connect('127.0.0.1', 2121); f.login(); f.retrlines('LIST'); f.quit()"
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []

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
    if options["demo"]:
        values["demo"] = True
    for option, field in [
        ("policy", "policy"),
        ("public-address", "publicAddress"),
        ("connect-timeout", "connectTimeout"),
        ("data-connection-timeout", "dataConnectionTimeout"),
    ]:
        if options[option] is not None:
            values[field] = options[option]
    if options["passive-ports"] is not None:
        values["passivePorts"] = PortRange.parse(options["passive-ports"], "--passive-ports")
    if values.get("demo"):
        values.setdefault("listen", (DEFAULT_LISTEN,))
        values.setdefault("backends", ())
    values.setdefault("backends", ())
    return makeConfig(**values)


def makeService(options: Options):
    from ftpproxy.service import makeService as makeProxyService

    config = options.config
    if config.demo:
        sys.stdout.write(DEMO_HELP)
        sys.stdout.flush()
    return makeProxyService(config)
