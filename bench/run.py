"""
Benchmark ftpproxy against direct access, HAProxy and ProFTPD's mod_proxy.

    python bench/run.py            # full run (512 MiB files, 5 rounds)
    python bench/run.py --quick    # smoke run (64 MiB, 2 rounds)

Installs the peers if missing (Debian packages, needs root), starts every
server on loopback in a temporary directory, measures round by round with
all systems interleaved, prints a table of medians and ratios, writes it as
Markdown, and stops everything it started, also on Ctrl-C or failure.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import daemons  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
from daemons import Daemon, DaemonFailed  # noqa: E402
from measure import MeasureFailed  # noqa: E402
from peers import Endpoint, PortRange, TLSFiles  # noqa: E402

PLAIN_BACKENDS = ("127.0.0.2", "127.0.0.3")
HAPROXY_BACKENDS = ("127.0.0.4", "127.0.0.5")
PROXY_HOST = "127.0.0.1"
PORT_BASES = (20000, 14000, 8000)
# twisted.scripts.twistd has no __main__ guard, so "python -m" would do
# nothing; this runs twistd on the same interpreter as the harness.
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def say(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def parseArguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ftpproxy against direct, HAProxy and mod_proxy.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 MiB, 2 rounds, 2 s rate, 200 idle sessions")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 2)")
    parser.add_argument("--size-mib", type=int, help="file size (default 512, quick 64)")
    parser.add_argument("--duration", type=float,
                        help="seconds per session-rate run (default 5, quick 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrent clients in the session-rate run")
    parser.add_argument("--idle-sessions", type=int,
                        help="idle sessions for the memory run (default 2000, quick 200)")
    parser.add_argument("--memory-rounds", type=int,
                        help="do the idle-memory run only in the first N rounds")
    parser.add_argument("--systems", default=",".join(report.SYSTEMS),
                        help="comma-separated subset of " + ",".join(report.SYSTEMS))
    parser.add_argument("--markdown", type=Path, default=HERE / "results.md",
                        help="where to write the Markdown table (default bench/results.md)")
    parser.add_argument("--json", type=Path, help="also write every round's values here")
    parser.add_argument("--skip-install", action="store_true",
                        help="do not apt-get/pip install missing peers")
    parser.add_argument("--debug-logs", action="store_true",
                        help="turn on mod_proxy/mod_tls logs (slower)")
    parser.add_argument("--keep-temp", action="store_true",
                        help="leave the temporary directory (logs, configs) behind")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout of ftpproxy (e.g. a git worktree of main) "
                             "measured in the same rounds, transfer rows only")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 5)
    args.size_mib = args.size_mib or (64 if quick else 512)
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.idle_sessions = args.idle_sessions or (200 if quick else 2000)
    args.memory_rounds = args.rounds if args.memory_rounds is None else args.memory_rounds
    args.systems = [s for s in args.systems.split(",") if s]
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "ftpproxy" / "__init__.py").exists():
            parser.error(f"--baseline {args.baseline}: no ftpproxy package there")
    unknown = set(args.systems) - set(report.SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def raiseFileLimit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machineHeader(args: argparse.Namespace, versions: dict[str, str],
                  loadAtStart: float, started: float) -> dict[str, str]:
    memKiB = 0
    model = platform.processor() or "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memKiB = int(line.split()[1])
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores ({model}), "
                   f"{memKiB / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}",
        "run": f"{'quick' if args.quick else 'full'}: {args.rounds} rounds, "
               f"median shown; {args.size_mib} MiB file; "
               f"{args.concurrency} clients for {args.duration:g} s per rate run; "
               f"{args.idle_sessions} idle sessions",
        # Only at the start: closing mod_proxy's 2,000 session processes
        # makes the run's own load spike, so a later figure says little.
        "load": f"1-min load average {loadAtStart:.2f} at start (the machine is "
                f"shared; interleaving spreads other work over all systems); "
                f"took {(time.monotonic() - started) / 60:.1f} min",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "backend": "2 pyftpdlib processes (sendfile downloads, uploads discarded), "
                   "all on loopback",
        **({"baseline": f"'ftpproxy before' is {describeCheckout(args.baseline)}, "
                        "measured in the same rounds (transfer rows only)"}
           if args.baseline is not None else {}),
    }


def describeCheckout(path: Path) -> str:
    """
    A checkout's commit, without naming where it is on this machine.
    """
    commit = peers.commandOutput(["git", "-C", str(path), "rev-parse", "--short", "HEAD"])
    if commit and all(c in "0123456789abcdef" for c in commit):
        return f"commit {commit}"
    return "another checkout (no git metadata)"


def _knowsOption(checkout: Path, flag: str) -> bool:
    """
    Whether the ftpproxy in C{checkout} has the command-line option
    C{--flag} (a baseline checkout may be older).
    """
    return any(
        f'"{flag}"' in path.read_text()
        for path in (checkout / "ftpproxy").rglob("*.py")
    )


class Bench:
    """
    The servers of one run, their addresses, and the measurements.
    """

    def __init__(self, args: argparse.Namespace, stack: ExitStack):
        self.args = args
        self.stack = stack
        self.results = report.Results()
        self.notes: list[str] = []
        self.daemons: dict[str, Daemon] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.unavailable: dict[str, str] = {}
        self.tls: TLSFiles | None = None
        self.tmp = Path(tempfile.mkdtemp(
            prefix="ftpproxy-bench-",
            dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
        self.tmp.chmod(0o755)  # proftpd's session user must reach its tables
        if args.keep_temp:
            stack.callback(say, f"kept {self.tmp}")
        else:
            stack.callback(shutil.rmtree, self.tmp, True)
        self.data = self.tmp / "data"
        self.data.mkdir()
        self.fileName = "big.bin"
        self.fileSize = args.size_mib * 1024 * 1024

    # --- set-up

    def makeFile(self) -> None:
        """
        Random bytes, in tmpfs when possible so that reads cost no disk.
        """
        chunk = 16 * 1024 * 1024
        with open(self.data / self.fileName, "wb") as f:
            left = self.fileSize
            while left:
                n = min(chunk, left)
                f.write(os.urandom(n))
                left -= n

    def pickPassiveRanges(self) -> dict[str, PortRange]:
        sizes = (("haproxy_b1", 500), ("haproxy_b2", 500), ("ftpproxy", 1000),
                 ("ftpproxy_tls", 1000), ("mod_proxy", 1000), ("mod_proxy_tls", 1000),
                 ("ftpproxy_tlsbackend", 400), ("mod_proxy_tlsbackend", 400),
                 ("before", 200), ("before_tls", 200), ("before_tlsbackend", 200),
                 # The idle-memory instances never open a data connection.
                 ("mem_haproxy_b1", 100), ("mem_haproxy_b2", 100),
                 ("mem_ftpproxy", 200), ("mem_mod_proxy", 200))
        total = sum(n for _, n in sizes)
        for base in PORT_BASES:
            if all(daemons.rangeIsFree(host, base, total)
                   for host in (PROXY_HOST, *HAPROXY_BACKENDS)):
                ranges, first = {}, base
                for name, n in sizes:
                    ranges[name] = PortRange(first, first + n - 1)
                    first += n
                return ranges
        raise SystemExit(f"no free passive port block of {total} at {PORT_BASES}")

    def start(self, name: str, argv: list[str], endpoint: Endpoint,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Daemon:
        daemon = daemons.startDaemon(name, argv, self.tmp / f"{name}.log", env=env, cwd=cwd)
        self.daemons[name] = daemon
        self.stack.callback(daemon.stop)
        daemons.waitForBanner(daemon, endpoint.host, endpoint.port)
        self.endpoints[name] = endpoint
        return daemon

    def startBackend(self, name: str, host: str, masquerade: str | None = None,
                     passive: PortRange | None = None, tls: TLSFiles | None = None) -> Endpoint:
        endpoint = Endpoint(host, daemons.freePort(host))
        argv = [sys.executable, str(HERE / "backend.py"), "--host", host,
                "--port", str(endpoint.port), "--root", str(self.data),
                "--user", measure.USER, "--password", measure.PASSWORD,
                "--discard-uploads"]
        if tls is not None:
            argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        if masquerade:
            argv += ["--masquerade", masquerade]
        if passive:
            argv += ["--passive-ports", passive.dashed()]
        self.start(name, argv, endpoint)
        return endpoint

    def startHaproxy(self, name: str, backends: tuple[Endpoint, ...],
                     passive: tuple[PortRange, ...]) -> None:
        endpoint = Endpoint(PROXY_HOST, daemons.freePort(PROXY_HOST))
        config = self.tmp / f"{name}.cfg"
        config.write_text(peers.haproxyConfig(endpoint, backends, passive))
        # -db: foreground, one process (no master-worker), threads = cores.
        self.start(name, ["haproxy", "-db", "-f", str(config)], endpoint)

    def startModProxy(self, name: str, passive: PortRange, backends: tuple[Endpoint, ...],
                      tls: TLSFiles | None, backendTLS: bool = False) -> None:
        directory = self.tmp / name
        endpoint = Endpoint(PROXY_HOST, daemons.freePort(PROXY_HOST))
        config = directory / "proftpd.conf"
        text = peers.proftpdConfig(directory, endpoint, passive, backends, tls,
                                   debugLogs=self.args.debug_logs, backendTLS=backendTLS)
        config.write_text(text)
        # -n: stay in the foreground; -c needs an absolute path.
        self.start(name, ["proftpd", "-n", "-c", str(config.resolve())], endpoint)

    def startFtpproxy(self, name: str, passive: PortRange, backends: tuple[Endpoint, ...],
                      tls: TLSFiles | None, backendTLS: bool = False,
                      checkout: Path = REPO) -> None:
        """
        ftpproxy from C{checkout}; with C{backendTLS} its backends are
        explicit FTPS ones (a TOML file: the command line has no flag for
        that), verified against the bench certificate.
        """
        endpoint = Endpoint(PROXY_HOST, daemons.freePort(PROXY_HOST))
        argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
                "--logfile", str(self.tmp / f"{name}.twistd.log"),
                "ftpproxy", "--listen", f"tcp:{endpoint.port}:interface={PROXY_HOST}"]
        if backendTLS:
            assert tls is not None
            config = self.tmp / f"{name}.toml"
            config.write_text("".join(
                f'[[backend]]\naddress = "{b.hostPort()}"\ntls = "explicit"\n'
                f'ca_file = "{tls.cert}"\n\n' for b in backends))
            argv += ["--config", str(config)]
        else:
            for backend in backends:
                argv += ["--backend", backend.hostPort()]
        argv += ["--passive-ports", passive.dashed()]
        if _knowsOption(checkout, "max-prelogin-per-client"):
            # The load client opens every session from one address: the
            # per-address limit on sessions not yet logged in (64 by
            # default) would refuse part of the idle-memory run.
            argv += ["--max-prelogin-per-client", "0"]
        if tls is not None:
            argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(checkout), env.get("PYTHONPATH", "")) if p)
        say(f"starting {name}: twistd {' '.join(argv[3:])}")
        try:
            # "python -c" puts the working directory first on sys.path,
            # before PYTHONPATH: run in the checkout, or another one's
            # ftpproxy (the caller's) would be the one measured.
            self.start(name, argv, endpoint, env=env, cwd=checkout)
        except DaemonFailed as e:
            text = str(e)
            # twistd: "option --tls-cert not recognized"
            if tls is not None and "--tls-" in text and "not recognized" in text:
                self.unavailable[name] = "n/a (not supported yet)"
            else:
                first = [line for line in text.splitlines()[1:] if line.strip()]
                self.unavailable[name] = "n/a (did not start)"
                self.notes.append(
                    f"{name} did not start: `twistd {' '.join(argv[3:])}` said: "
                    + " / ".join(first[-3:])[:400])
            say(f"{name} unavailable:\n{text}")

    def setUp(self) -> None:
        args = self.args
        say(f"temporary directory {self.tmp}")
        self.makeFile()
        ranges = self.ranges = self.pickPassiveRanges()
        wanted = set(args.systems)
        plain = tuple(self.startBackend(f"backend{i}", host)
                      for i, host in enumerate(PLAIN_BACKENDS, 1))
        if "haproxy" in wanted:
            hbackends = (
                self.startBackend("hbackend1", HAPROXY_BACKENDS[0], PROXY_HOST,
                                  ranges["haproxy_b1"]),
                self.startBackend("hbackend2", HAPROXY_BACKENDS[1], PROXY_HOST,
                                  ranges["haproxy_b2"]),
            )
            self.hbackends = hbackends
            self.startHaproxy("haproxy", hbackends,
                              (ranges["haproxy_b1"], ranges["haproxy_b2"]))
        if wanted & {"mod_proxy", "ftpproxy"}:
            self.tls = peers.makeCertificate(self.tmp)
            # The FTPS backends (same hosts as the plain ones, other ports).
            tlsBackends = tuple(
                self.startBackend(f"tbackend{i}", host, tls=self.tls)
                for i, host in enumerate(PLAIN_BACKENDS, 1))
        if "mod_proxy" in wanted:
            self.startModProxy("mod_proxy", ranges["mod_proxy"], plain, None)
            self.startModProxy("mod_proxy_tls", ranges["mod_proxy_tls"], plain, self.tls)
            self.startModProxy("mod_proxy_tlsbackend", ranges["mod_proxy_tlsbackend"],
                               tlsBackends, self.tls, backendTLS=True)
        if "ftpproxy" in wanted:
            self.startFtpproxy("ftpproxy", ranges["ftpproxy"], plain, None)
            self.startFtpproxy("ftpproxy_tls", ranges["ftpproxy_tls"], plain, self.tls)
            self.startFtpproxy("ftpproxy_tlsbackend", ranges["ftpproxy_tlsbackend"],
                               tlsBackends, self.tls, backendTLS=True)
            if args.baseline is not None:
                say(f"baseline: ftpproxy from {args.baseline}")
                for suffix, backends, tls, backendTLS in (
                        ("", plain, None, False), ("_tls", plain, self.tls, False),
                        ("_tlsbackend", tlsBackends, self.tls, True)):
                    name = report.BASELINE + suffix
                    self.startFtpproxy(name, ranges[name], backends, tls,
                                       backendTLS=backendTLS, checkout=args.baseline)
        self.endpoints["direct"] = plain[0]
        self.plainBackends = plain
        for system in report.SYSTEMS:
            if system not in wanted:
                continue
            why = self.unavailable.get(system)
            if why is not None:
                for metric in report.METRICS:
                    self.results.notApplicable[(metric.key, system)] = why
        for system in ("direct", "haproxy"):
            for metric in ("ftps_download", "ftps_upload"):
                self.results.notApplicable[(metric, system)] = "—"
        for metric in ("ftps_backend_download", "ftps_backend_upload"):
            self.results.notApplicable[(metric, "haproxy")] = "—"
        for system in ("ftpproxy", report.BASELINE):
            for suffix, metrics in (("_tls", ("ftps_download", "ftps_upload")),
                                    ("_tlsbackend", ("ftps_backend_download",
                                                     "ftps_backend_upload"))):
                why = self.unavailable.get(system + suffix)
                for metric in metrics:
                    if why is not None:
                        self.results.notApplicable[(metric, system)] = why

    # --- measuring

    def available(self, system: str) -> bool:
        if system == report.BASELINE:
            return (self.args.baseline is not None and "ftpproxy" in self.args.systems
                    and system not in self.unavailable)
        return system in self.args.systems and system not in self.unavailable

    def checkAlive(self, names: list[str]) -> None:
        for name in names:
            daemon = self.daemons.get(name)
            if daemon is not None and not daemon.alive():
                raise MeasureFailed(
                    f"{name} exited with {daemon.process.returncode}: "
                    + daemons.logTail(daemon.log, 5).replace("\n", " / "))

    def daemonNames(self, system: str) -> list[str]:
        return {
            "direct": ["backend1", "backend2"],
            "ftpproxy": ["ftpproxy", "backend1", "backend2"],
            report.BASELINE: [report.BASELINE, "backend1", "backend2"],
            "haproxy": ["haproxy", "hbackend1", "hbackend2"],
            "mod_proxy": ["mod_proxy", "backend1", "backend2"],
        }[system]

    def run(self, metric: str, system: str, action, also: tuple[str, ...] = ()):
        """
        Measure once; record a failure instead of raising.
        """
        try:
            self.checkAlive(self.daemonNames(system) + list(also))
            # The CPU the system under test spent, for the notes: the proxy
            # (or, for direct, the backends).
            names = list(also) or self.daemonNames(system)[:1 if system != "direct" else 2]
            pids = [pid for n in names if n in self.daemons
                    for pid in self.daemons[n].groupPids()]
            cpuBefore = daemons.cpuSeconds(pids)
            result = action()
            for name in names:
                if name.startswith("mod_proxy"):
                    # Session processes' CPU counts once the master reaps them.
                    self.settleModProxy(name)
            note = {"metric": metric, "seconds": daemons.cpuSeconds(pids) - cpuBefore}
            if isinstance(result, dict):
                note["sessions"] = result["sessions"]
            else:
                note["bytes"] = self.fileSize
            self.results.note("cpu", system, note)
            return result
        except MeasureFailed as e:
            say(f"  {metric} {system}: FAILED {e}")
            self.results.fail(metric, system, str(e))
            return None

    def settleModProxy(self, name: str) -> None:
        """
        Wait until the session processes of a proftpd have gone away.
        """
        daemon = self.daemons.get(name)
        if daemon is None:
            return
        deadline = time.monotonic() + 120
        # Zombies too: a session process's CPU reaches the master's cutime
        # only once the master has reaped it (else the row reads 0.00).
        while (len(daemons.processGroupMembers(daemon.pid, zombies=True)) > 1
               and time.monotonic() < deadline):
            time.sleep(0.1)

    TRANSFER_SYSTEMS = (*report.SYSTEMS, report.BASELINE)

    def transfer(self, metric: str, system: str, daemon: str, measurement) -> None:
        """
        One transfer of one system, through C{daemon}'s listener; the CPU
        counted is C{daemon}'s (the proxy's, or for direct the backend's).
        """
        if daemon in self.unavailable or daemon not in self.endpoints:
            return
        endpoint = self.endpoints[daemon]
        also = () if daemon == system else (daemon,)
        value = self.run(metric, system, lambda: measurement(endpoint), also=also)
        if value is not None:
            self.results.add(metric, system, value)
            say(f"  {metric} {system}: {value:,.0f} MB/s")

    def transfers(self) -> None:
        def download(tls: TLSFiles | None, system: str):
            return lambda endpoint: measure.download(
                endpoint, self.fileName, self.fileSize, tls=tls)

        def upload(tls: TLSFiles | None, system: str):
            return lambda endpoint: measure.upload(
                endpoint, self.data / self.fileName, f"up-{system}.bin", tls=tls)

        proxies = ("ftpproxy", report.BASELINE, "mod_proxy")
        # Each row: the metric, the daemon each system is measured through,
        # how, and with which certificate; the rows run in this order.
        rows = (
            ("download", {s: s for s in self.TRANSFER_SYSTEMS}, download, None),
            ("upload", {s: s for s in self.TRANSFER_SYSTEMS}, upload, None),
            ("ftps_download", {s: s + "_tls" for s in proxies}, download, self.tls),
            ("ftps_upload", {s: s + "_tls" for s in proxies}, upload, self.tls),
            ("ftps_backend_download", {"direct": "tbackend1",
                                       **{s: s + "_tlsbackend" for s in proxies}},
             download, self.tls),
            ("ftps_backend_upload", {"direct": "tbackend1",
                                     **{s: s + "_tlsbackend" for s in proxies}},
             upload, self.tls),
        )
        for metric, daemonOf, how, tls in rows:
            for system in self.TRANSFER_SYSTEMS:
                if system in daemonOf and self.available(system):
                    self.transfer(metric, system, daemonOf[system], how(tls, system))

    def targetsFor(self, system: str) -> list[Endpoint]:
        if system == "direct":
            return list(self.plainBackends)
        return [self.endpoints[system]]

    def sessionRates(self) -> None:
        for system in report.SYSTEMS:
            if not self.available(system):
                continue
            got = self.run("rate", system, lambda: measure.sessionRate(
                self.targetsFor(system), self.args.concurrency, self.args.duration))
            if got is None:
                self.results.add("p50", system, None)
                self.results.add("p99", system, None)
                continue
            self.results.add("rate", system, got["rate"])
            self.results.add("p50", system, got["p50_ms"])
            self.results.add("p99", system, got["p99_ms"])
            self.results.note("rate", system, got)
            say(f"  sessions {system}: {got['rate']:,.0f}/s p50 {got['p50_ms']:.1f} ms "
                f"p99 {got['p99_ms']:.1f} ms errors {got['errors']} "
                f"(client CPU {got['client_cpu']:.0%})")

    def startMemoryInstance(self, system: str, index: int) -> list[str]:
        """
        A fresh instance of C{system} for the idle-memory run, so that what
        earlier tests left in its heap does not hide per-session growth.
        Returns the names of the daemons to measure (and stop afterwards).
        """
        name = f"{system}_mem{index}"
        if system == "direct":
            for i, host in enumerate(PLAIN_BACKENDS, 1):
                self.startBackend(f"{name}_b{i}", host)
            return [f"{name}_b1", f"{name}_b2"]
        if system == "haproxy":
            self.startHaproxy(name, self.hbackends, (
                self.ranges["mem_haproxy_b1"], self.ranges["mem_haproxy_b2"]))
        elif system == "mod_proxy":
            self.startModProxy(name, self.ranges["mem_mod_proxy"], self.plainBackends, None)
        else:
            self.startFtpproxy(name, self.ranges["mem_ftpproxy"], self.plainBackends, None)
            if name in self.unavailable:
                raise MeasureFailed(f"fresh {name} did not start")
        return [name]

    def memoryTargets(self, names: list[str]) -> list[Endpoint]:
        return [self.endpoints[name] for name in names]

    def memoryPids(self, names: list[str]) -> list[int]:
        return [pid for name in names for pid in self.daemons[name].groupPids()]

    def stopDaemons(self, names: list[str]) -> None:
        for name in names:
            daemon = self.daemons.pop(name, None)
            if daemon is not None:
                daemon.stop()

    def idleMemory(self, index: int) -> None:
        for system in report.SYSTEMS:
            if not self.available(system):
                continue
            names: list[str] = []

            def action() -> dict:
                try:
                    names.extend(self.startMemoryInstance(system, index))
                except DaemonFailed as e:
                    raise MeasureFailed(str(e).splitlines()[0])
                settle = ((lambda: self.settleModProxy(names[0]))
                          if system == "mod_proxy" else (lambda: None))
                return measure.idleMemory(
                    self.memoryTargets(names), self.args.idle_sessions,
                    lambda: self.memoryPids(names), settle)

            try:
                got = self.run("idle_pss", system, action)
            finally:
                self.stopDaemons(names)
            if got is None:
                self.results.add("idle_rss", system, None)
                continue
            if got["errors"]:
                self.notes.append(f"{system}: {got['errors']} of "
                                  f"{self.args.idle_sessions} idle sessions failed: "
                                  f"{got['error_samples'][:2]}")
            self.results.add("idle_pss", system, got["pss_kib"])
            self.results.add("idle_rss", system, got["rss_kib"])
            self.results.note("idle", system, got)
            say(f"  idle {system}: {got['sessions']} sessions, PSS {got['pss_kib']:.1f} "
                f"KiB/session, RSS {got['rss_kib']:.1f} KiB/session "
                f"({got['processes']} processes, opened in {got['open_seconds']:.1f} s)")

    def rounds(self) -> None:
        for index in range(self.args.rounds):
            say(f"round {index + 1}/{self.args.rounds}")
            self.transfers()
            self.sessionRates()
            if index < self.args.memory_rounds:
                self.idleMemory(index)

    def summaryNotes(self) -> list[str]:
        notes = list(self.notes)
        for metric, systems in self.results.errors.items():
            for system, errors in systems.items():
                notes.append(f"{system} {metric}: {len(errors)} failed round(s), "
                             f"first: {errors[0][:300]}")
        for system, details in self.results.extra.get("rate", {}).items():
            errors = sum(d["errors"] for d in details)
            cpu = sorted(d["client_cpu"] for d in details)[len(details) // 2]
            if errors:
                samples = {s for d in details for s in d["error_samples"]}
                notes.append(f"{system} session rate: {errors} failed sessions, "
                             f"e.g. {sorted(samples)[:2]}")
            notes.append(f"{system} session rate: load client used {cpu:.0%} of a core")
        return notes


def installSignalHandlers() -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Set SIGINT explicitly: a shell starting us in the background without
    # job control leaves it ignored, and Ctrl-C must always clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def main(argv: list[str] | None = None) -> int:
    args = parseArguments(argv)
    installSignalHandlers()
    limit = raiseFileLimit()
    if limit < 2 * args.idle_sessions + 100:
        say(f"warning: file descriptor limit {limit} is low for "
            f"{args.idle_sessions} idle sessions")
    if not args.skip_install:
        peers.ensureDebianPackages(say)
        peers.ensurePythonPackages(say)
    versions = peers.versions()
    loadAtStart, started = os.getloadavg()[0], time.monotonic()
    stack = ExitStack()
    try:
        bench = Bench(args, stack)
        bench.setUp()
        bench.rounds()
        header = machineHeader(args, versions, loadAtStart, started)
        text = report.markdown(bench.results, header, bench.summaryNotes(),
                                bench.args.systems)
        sys.stdout.write("\n" + text)
        args.markdown.write_text(text)
        say(f"wrote {args.markdown}")
        if args.json:
            args.json.write_text(json.dumps(
                {"header": header, **bench.results.asJSON()}, indent=1))
            say(f"wrote {args.json}")
        return 0
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    except DaemonFailed as e:
        say(f"a server did not start:\n{e}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
