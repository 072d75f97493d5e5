"""
The twistd command line: ``twistd -n ftpproxy --help``.

The flags are made from the options table (L{ftpproxy.settings.options});
every option can also come from the TOML file given with --config, and what
the command line says wins.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.python import usage

import attrs

from ftpproxy.app.service import ProxyService, makeService as makeProxyService
from ftpproxy.app.supervisor import SupervisorService, makeSupervisor
from ftpproxy.ops.logs import jsonLogObserverFor
from ftpproxy.settings.commandline import (
    DEMO_IMPLICIT_LISTEN,
    LoadedConfig,
    loadConfig,
    twistdParameters,
    twistdRepeatables,
    twistdSwitches,
)
from ftpproxy.settings.config import ConfigError, ProxyConfig, workerCount
from ftpproxy.settings.rig import rigTable
from ftpproxy.settings.tls import TLSSettings, makeTLSSettings
from ftpproxy.tls.devcerts import makeCertificates

__all__ = ["DEMO_IMPLICIT_LISTEN", "Options", "makeService"]

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

RIG_HELP = """ftpproxy TLS rig for FTPS clients: one listener per TLS behaviour to test.
Trust the development CA {ca} (the client certificate for
client-certificate is {client}, key {clientKey}); log in as demo/demo
(read-write; the backends share one upload/ directory) or anonymous.
{table}
Run with --log-format json and read what your client did with
  python -m ftpproxy.report twistd.log
or GET /clients on the admin endpoint (--admin tcp:8021:interface=127.0.0.1).
"""


class DemoCertificates:
    """
    Development certificates for the demo, made on first use (once per
    process, whatever number of reloads) in a directory removed when the
    process exits.
    """

    def __init__(self) -> None:
        self._settings: TLSSettings | None = None

    def __call__(self) -> TLSSettings:
        if self._settings is None:
            directory = Path(tempfile.mkdtemp(prefix="ftpproxy-demo-certs-"))
            atexit.register(shutil.rmtree, directory, True)
            paths = makeCertificates(directory)
            # The same CA signs the TLS rig's certificate variants.
            self._settings = makeTLSSettings(
                certificate=paths.serverCert, key=paths.serverKey, developmentCA=directory
            )
        return self._settings


class Options(usage.Options):
    """
    C{twistd ftpproxy}'s options; L{loadConfig} makes them a configuration.

    @ivar loaded: the configuration after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "FTP load balancer: relays each client session to one backend and "
        "keeps its data connections pinned to that backend. Options may also "
        "be given in a TOML file (--config); the command line wins. "
        "docs/configuration.md lists every option, its TOML key and whether "
        "SIGHUP applies it live."
    )
    optFlags = twistdSwitches()
    optParameters = twistdParameters()

    def __init__(self) -> None:
        super().__init__()
        for flag, _ in twistdRepeatables():
            self[flag] = []
        self._demoCertificates = DemoCertificates()

    def postOptions(self) -> None:
        try:
            self.loaded = self.load()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    @property
    def config(self) -> ProxyConfig:
        return self.loaded.config

    def load(self) -> LoadedConfig:
        """
        Read the configuration file (if any) again and merge the command
        line over it; the demo's certificates are made only once.
        """
        return loadConfig(self, demoTLS=self._demoCertificates)


def _appender(flag: str, help: str):
    def append(self: Options, value: str) -> None:
        self[flag].append(value)

    append.__doc__ = help
    return append


for _flag, _help in twistdRepeatables():
    setattr(Options, "opt_" + _flag.replace("-", "_"), _appender(_flag, _help))


def _oneProcess(load):
    def loadForOneProcess() -> LoadedConfig:
        loaded = load()
        return attrs.evolve(loaded, config=attrs.evolve(loaded.config, workers=1))

    return loadForOneProcess


def makeService(options: Options) -> ProxyService | SupervisorService:
    config = options.config
    if config.demo:
        ca = config.tls.certificate.parent / "ca.pem" if config.tls else "(none)"
        sys.stdout.write(DEMO_HELP.format(ca=ca))
        if config.tlsRig and config.tls is not None and config.tls.developmentCA is not None:
            devca = config.tls.developmentCA
            sys.stdout.write(
                RIG_HELP.format(
                    ca=devca / "ca.pem",
                    client=devca / "client.pem",
                    clientKey=devca / "client-key.pem",
                    table=rigTable(config),
                )
            )
        sys.stdout.flush()
    # SIGHUP re-reads the file; the command line still wins over it.
    reload = options.load if options["config"] else None
    try:
        if workerCount(config) > 1:
            service = makeSupervisor(config, reloadConfig=reload)
        else:
            if config.workers != 1:  # "auto" on one core
                config = attrs.evolve(config, workers=1)
                reload = _oneProcess(reload) if reload is not None else None
            service = makeProxyService(config, reloadConfig=reload)
        if config.logFormat == "json":
            # Handed to twistd as the application's log observer.
            service.logObserver = jsonLogObserverFor(options.parent or {"nodaemon": True})
    except ConfigError as e:
        raise SystemExit(f"ftpproxy: {e}") from None
    return service
