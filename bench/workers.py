"""
ftpproxy with one process against ftpproxy --workers 2, in one run.

    python bench/workers.py            # 5 rounds
    python bench/workers.py --quick    # 2 rounds, shorter runs

Both systems run side by side in front of the same two pyftpdlib backends
and are measured alternately, round by round: the session rate (as in
bench/run.py: 50 clients doing whole sessions) and the aggregate FTPS
download throughput of several downloads at once (each session is one
process's work, so a single download cannot use a second worker). Prints
a Markdown table of medians and 2-workers/1-process ratios and writes it to
bench/workers-results.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import daemons  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
from run import PLAIN_BACKENDS, PROXY_HOST, REPO, TWISTD, Bench, parseArguments, say  # noqa: E402
from measure import MeasureFailed  # noqa: E402
from peers import Endpoint, PortRange  # noqa: E402

SYSTEMS = {"1 process": 1, "--workers 2": 2}


def startProxy(bench: Bench, name: str, workers: int, passive: PortRange,
               backends: tuple[Endpoint, ...]) -> Endpoint:
    endpoint = Endpoint(PROXY_HOST, daemons.freePort(PROXY_HOST))
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
            "--logfile", str(bench.tmp / f"{name}.twistd.log"),
            "ftpproxy", "--listen", f"tcp:{endpoint.port}:interface={PROXY_HOST}",
            "--passive-ports", passive.dashed(), "--workers", str(workers),
            "--tls-cert", str(bench.tls.cert), "--tls-key", str(bench.tls.key)]
    for backend in backends:
        argv += ["--backend", backend.hostPort()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    say(f"starting {name}: twistd {' '.join(argv[3:])}")
    bench.start(name, argv, endpoint, env=env)
    if workers > 1:
        # The supervisor listens at once; wait until every worker serves.
        log = bench.tmp / f"{name}.twistd.log"
        deadline = time.monotonic() + 30
        while log.read_text(errors="replace").count(" started (pid ") < workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: workers did not start:\n{daemons.logTail(log)}")
            time.sleep(0.1)
    return endpoint


def busyCoreSeconds() -> float:
    """
    CPU seconds the whole machine has spent busy (not idle, not waiting
    for I/O) since boot, from /proc/stat: others' work included.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def parallelFTPSDownloads(endpoint: Endpoint, bench: Bench, count: int,
                          timeout: float = 300) -> float:
    """
    MB/s of C{count} FTPS downloads (PROT P) of the bench file run at once:
    all bytes over the time from the first start to the last end.
    """
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), "-o", "/dev/null",
            "-w", "%{size_download}", "--ssl-reqd", "--cacert", str(bench.tls.cert),
            measure.url(endpoint, bench.fileName)]
    started = time.monotonic()
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(count)]
    total = 0
    for process in processes:
        out, err = process.communicate(timeout=timeout + 10)
        if process.returncode != 0:
            raise MeasureFailed(f"curl exit {process.returncode}: {err.strip()[:300]}")
        got = int(float(out.split()[-1]))
        if got != bench.fileSize:
            raise MeasureFailed(f"downloaded {got} bytes, expected {bench.fileSize}")
        total += got
    return total / (time.monotonic() - started) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--size-mib", type=int, help="file size (default 256, quick 64)")
    parser.add_argument("--downloads", type=int, default=4,
                        help="FTPS downloads at once (default 4)")
    parser.add_argument("--duration", type=float, help="seconds per rate run (default 5)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--markdown", type=Path, default=HERE / "workers-results.md")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    size = args.size_mib or (64 if args.quick else 256)
    duration = args.duration or (2.0 if args.quick else 5.0)
    benchArgs = parseArguments(["--size-mib", str(size), "--skip-install"])

    loadAtStart, started = os.getloadavg()[0], time.monotonic()
    values: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    cores: dict[tuple[str, str], list[float]] = {}
    busy: dict[tuple[str, str], list[float]] = {}
    errors: list[str] = []
    with ExitStack() as stack:
        bench = Bench(benchArgs, stack)
        bench.makeFile()
        backends = tuple(bench.startBackend(f"backend{i}", host)
                         for i, host in enumerate(PLAIN_BACKENDS, 1))
        bench.tls = peers.makeCertificate(bench.tmp)
        base = next(b for b in (20000, 14000, 8000)
                    if daemons.rangeIsFree(PROXY_HOST, b, 2000))
        endpoints = {}
        for offset, (system, workers) in enumerate(SYSTEMS.items()):
            passive = PortRange(base + 1000 * offset, base + 1000 * offset + 999)
            endpoints[system] = startProxy(bench, f"ftpproxy-w{workers}", workers,
                                           passive, backends)

        def measured(metric: str, system: str, action, unit) -> None:
            name = f"ftpproxy-w{SYSTEMS[system]}"
            pids = bench.daemons[name].groupPids()
            before, machineBefore, wallBefore = (
                daemons.cpuSeconds(pids), busyCoreSeconds(), time.monotonic())
            try:
                got = action()
            except MeasureFailed as e:
                errors.append(f"{system} {metric}: {e}")
                say(f"  {metric} {system}: FAILED {e}")
                return
            wall = time.monotonic() - wallBefore
            proxySeconds = daemons.cpuSeconds(pids) - before
            value, amount = unit(got)
            values.setdefault((metric, system), []).append(value)
            cpu.setdefault((metric, system), []).append(proxySeconds / amount)
            cores.setdefault((metric, system), []).append(proxySeconds / wall)
            busy.setdefault((metric, system), []).append(
                (busyCoreSeconds() - machineBefore) / wall)
            say(f"  {metric} {system}: {value:,.1f} (proxy {proxySeconds / wall:.2f} cores, "
                f"machine {busy[(metric, system)][-1]:.2f} of {os.cpu_count()} busy)")

        for index in range(rounds):
            say(f"round {index + 1}/{rounds}")
            for system, endpoint in endpoints.items():
                measured("rate", system, lambda: measure.sessionRate(
                    [endpoint], args.concurrency, duration),
                    lambda got: (got["rate"], got["sessions"] / 1e3))
            for system, endpoint in endpoints.items():
                measured("ftps", system, lambda: parallelFTPSDownloads(
                    endpoint, bench, args.downloads),
                    lambda got: (got, args.downloads * bench.fileSize / 1e9))

    def cell(metric: str, system: str, table=values, digits=0) -> str:
        got = table.get((metric, system))
        return f"{median(got):,.{digits}f}" if got else "—"

    def ratio(metric: str) -> str:
        one, two = (values.get((metric, s)) for s in SYSTEMS)
        return f"{median(two) / median(one):.2f}x" if one and two else "—"

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## ftpproxy: one process against --workers 2",
        "",
        f"- date: {now}; {os.cpu_count()} cores, Linux {platform.release()}",
        f"- run: {rounds} rounds, systems alternated in each, median shown; "
        f"{args.concurrency} clients for {duration:g} s per rate run; "
        f"{args.downloads} FTPS downloads of {size} MiB at once",
        f"- load: 1-min load average {loadAtStart:.2f} at start; took "
        f"{(time.monotonic() - started) / 60:.1f} min",
        "- backends: 2 pyftpdlib processes; load client, backends and proxy share the machine",
        "- command: `python bench/workers.py" + (" --quick" if args.quick else "") + "`",
        "",
        "|  | 1 process | --workers 2 | 2 workers / 1 process |",
        "|---|---:|---:|---:|",
        f"| sessions/s ({args.concurrency} clients) | {cell('rate', '1 process')} | "
        f"{cell('rate', '--workers 2')} | {ratio('rate')} |",
        f"| FTPS download MB/s, {args.downloads} at once | {cell('ftps', '1 process')} | "
        f"{cell('ftps', '--workers 2')} | {ratio('ftps')} |",
        f"| proxy CPU ms per session | {cell('rate', '1 process', cpu, 2)} | "
        f"{cell('rate', '--workers 2', cpu, 2)} | |",
        f"| proxy CPU s per GB (FTPS) | {cell('ftps', '1 process', cpu, 2)} | "
        f"{cell('ftps', '--workers 2', cpu, 2)} | |",
        f"| cores the proxy used, sessions | {cell('rate', '1 process', cores, 2)} | "
        f"{cell('rate', '--workers 2', cores, 2)} | |",
        f"| cores the proxy used, FTPS | {cell('ftps', '1 process', cores, 2)} | "
        f"{cell('ftps', '--workers 2', cores, 2)} | |",
        f"| cores busy on the machine, sessions | {cell('rate', '1 process', busy, 2)} | "
        f"{cell('rate', '--workers 2', busy, 2)} | |",
        f"| cores busy on the machine, FTPS | {cell('ftps', '1 process', busy, 2)} | "
        f"{cell('ftps', '--workers 2', busy, 2)} | |",
        "",
        "Per round: " + "; ".join(
            f"{metric} {system}: " + ", ".join(f"{v:,.0f}" for v in got)
            for (metric, system), got in sorted(values.items())),
    ]
    if errors:
        lines += ["", "Failures:", ""] + [f"- {e}" for e in errors]
    text = "\n".join(lines) + "\n"
    sys.stdout.write("\n" + text)
    args.markdown.write_text(text)
    say(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
