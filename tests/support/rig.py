"""
The TLS rig as a real daemon (C{twistd -n ftpproxy --demo --tls-rig}) on
free ports, and the FTPS clients the rig tests drive that are not in
L{tests.support.clients}: Apache Commons Net's FTPSClient (Java) and Node's
basic-ftp, each running a list of cases in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from ftpproxy.settings.rig import RIG
from ftpproxy.tls.devcerts import CertificatePaths, makeCertificates

from .processes import readLog, stopProcess
from .proxy import LOG_PROBLEMS, TWISTD, _environment, freePort, freePortRange, waitUntilListening

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
COMMONS_NET = Path("/usr/share/java/commons-net.jar")
BASIC_FTP = "basic-ftp@6"
CLIENT_TIMEOUT = 120.0


@attrs.define(eq=False)
class Rig:
    """
    A running rig.

    @ivar ports: each listener's port, by rig name ("expired", ...), plus
        "demo" (explicit FTPS and FTP) and "demo-implicit".
    @ivar certificates: the development CA and its certificates.
    @ivar logPath: the daemon's JSON log.
    @ivar outputPath: what it printed (its table).
    @ivar adminPort: the admin endpoint's port.
    """

    ports: dict[str, int]
    certificates: CertificatePaths
    logPath: Path
    outputPath: Path
    adminPort: int
    process: subprocess.Popen = attrs.field(repr=False)

    def port(self, name: str) -> int:
        return self.ports[name]

    def events(self) -> list[dict[str, Any]]:
        """
        The daemon's log events so far.
        """
        text = readLog(self.logPath)
        # The daemon may be writing a line right now: only whole lines count.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def handshakes(self, listener: str, since: int = 0) -> list[dict[str, Any]]:
        """
        The TLS handshake events of rig listener C{listener} (without the
        "rig-" prefix), from event number C{since} on.
        """
        label = listener if listener.startswith(("rig-", "tcp:")) else "rig-" + listener
        return [
            e
            for e in self.events()[since:]
            if e.get("ftpproxy_event") == "tls-handshake" and e.get("listener") == label
        ]

    def mark(self) -> int:
        """
        The number of events so far, for L{handshakes}'s C{since}.
        """
        return len(self.events())


def startRig(directory: Path, extraArgs: Sequence[str] = ()) -> Rig:
    """
    Run the rig with its own development CA, on free ports, with
    C{extraArgs} (e.g. C{--workers 2}); return once every listener listens.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certificates = makeCertificates(directory / "devca")
    config = directory / "rig.toml"
    config.write_text(
        "[tls]\n"
        f'certificate = "{certificates.serverCert}"\n'
        f'key = "{certificates.serverKey}"\n'
        f'development_ca = "{certificates.ca.parent}"\n'
    )
    # freePortRange never hands out overlapping ranges.
    passive = freePortRange()
    rigPorts = freePortRange(len(RIG) + 3)
    demo, implicit, admin = freePort(HOST), freePort(HOST), freePort(HOST)
    logPath = directory / "rig.log"
    outputPath = directory / "rig.out"
    command = [
        *TWISTD,
        "--pidfile=",
        "--logfile",
        str(logPath),
        "-n",
        "ftpproxy",
        "--config",
        str(config),
        "--demo",
        "--tls-rig",
        "--log-format",
        "json",
        "--listen",
        f"tcp:{demo}:interface={HOST}",
        "--implicit-tls-listen",
        f"tcp:{implicit}:interface={HOST}",
        "--tls-rig-ports",
        f"{rigPorts[0]}-{rigPorts[-1]}",
        "--passive-ports",
        f"{passive[0]}-{passive[-1]}",
        "--admin",
        f"tcp:{admin}:interface={HOST}",
        *extraArgs,
    ]
    with outputPath.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_environment(), cwd=directory,
        )
    ports = {entry.name: rigPorts[0] + entry.offset for entry in RIG}
    ports.update({"demo": demo, "demo-implicit": implicit})
    try:
        for port in [*ports.values(), admin]:
            waitUntilListening(process, HOST, port, outputPath)
    except BaseException:
        stopProcess(process)
        raise
    return Rig(ports, certificates, logPath, outputPath, admin, process)


def stopRig(rig: Rig) -> None:
    """
    Stop the rig; its log must be free of tracebacks.
    """
    stopProcess(rig.process)
    log = readLog(rig.logPath) + readLog(rig.outputPath)
    problems = [word for word in LOG_PROBLEMS if word in log]
    assert not problems, f"the rig logged {problems}:\n{log[-5000:]}"


# -- clients in other languages ------------------------------------------------------


@attrs.frozen
class Case:
    """
    One session for a probe: a name, the rig listener, implicit or
    explicit FTPS, and whether the client checks the certificate.
    """

    name: str
    port: int
    implicit: bool = False
    verify: bool = True

    def argument(self) -> str:
        mode = "implicit" if self.implicit else "explicit"
        check = "verify" if self.verify else "noverify"
        return f"{self.name}:{self.port}:{mode}:{check}"


def _results(output: str) -> dict[str, str]:
    results = {}
    for line in output.splitlines():
        if line.startswith("CASE "):
            _, name, rest = line.split(" ", 2)
            results[name] = rest
    return results


def _run(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        list(command), capture_output=True, timeout=CLIENT_TIMEOUT, env=env, stdin=subprocess.DEVNULL
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"{command[0]} failed ({completed.returncode}):\n"
            f"{completed.stdout.decode(errors='replace')}\n{completed.stderr.decode(errors='replace')}"
        )
    return completed.stdout.decode(errors="replace")


def javaProbe(workDirectory: Path) -> Path:
    """
    Compile the Commons Net probe into C{workDirectory}; skips when the JDK
    or Debian's libcommons-net-java is missing.
    """
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("needs a JDK (Debian: default-jdk-headless)")
    if not COMMONS_NET.exists():
        pytest.skip(f"needs {COMMONS_NET} (Debian: libcommons-net-java)")
    workDirectory.mkdir(parents=True, exist_ok=True)
    source = workDirectory / "FtpsProbe.java"
    shutil.copy(HERE / "clients" / "FtpsProbe.java", source)
    _run(["javac", "-cp", str(COMMONS_NET), "-d", str(workDirectory), str(source)])
    return workDirectory


def runJava(classes: Path, ca: Path, cases: Sequence[Case]) -> dict[str, str]:
    """
    Run every case in one JVM; the result line of each, by case name.
    """
    classpath = os.pathsep.join([str(COMMONS_NET), str(classes)])
    output = _run(["java", "-cp", classpath, "FtpsProbe", str(ca), HOST, *(c.argument() for c in cases)])
    return _results(output)


def nodeModules() -> Path:
    """
    basic-ftp, installed with npm into a cache directory kept between runs
    ($XDG_CACHE_HOME/ftpproxy-tests/node); skips when Node or npm is
    missing.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs Node.js and npm (Debian: nodejs, npm)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = cache / "ftpproxy-tests" / "node"
    modules = prefix / "node_modules"
    if not (modules / "basic-ftp" / "package.json").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        _run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             "--loglevel=error", BASIC_FTP]
        )
    return modules


def runNode(modules: Path, ca: Path, cases: Sequence[Case]) -> dict[str, str]:
    """
    Run every case in one Node process; the result line of each, by name.
    """
    env = dict(os.environ, NODE_PATH=str(modules))
    output = _run(
        ["node", str(HERE / "clients" / "ftpsprobe.js"), str(ca), HOST, *(c.argument() for c in cases)],
        env=env,
    )
    return _results(output)


def rigFixture(tmpFactory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = startRig(tmpFactory.mktemp("rig"))
    try:
        yield rig
    finally:
        stopRig(rig)
