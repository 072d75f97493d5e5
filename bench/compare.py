"""
Compare two checkouts of ftpproxy on the same machine in one run.

    git worktree add /tmp/before <commit>
    python bench/compare.py --baseline /tmp/before          # this checkout vs that one
    python bench/compare.py --baseline /tmp/before --quick  # 64 MiB, 2 rounds

Both versions run as twistd daemons in front of the same two pyftpdlib
backends (bench/backend.py); every round measures both, interleaved (A, B,
then B, A in the next round), so that drift of the shared machine hits both
alike. Rows: download, upload and FTPS (PROT P) download MB/s with the proxy's
CPU seconds per GB, and the session rate (bench/ftpload.py: connect, login,
EPSV, LIST, QUIT) with p50/p99 latency and the proxy's CPU ms per session.
Medians over rounds and the ratio this/baseline are printed as Markdown.
Everything started is stopped, and the temporary directory removed, at the
end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
from peers import Endpoint, PortRange  # noqa: E402

# twistd on this interpreter, importing ftpproxy (and its twistd plugin) only
# from the checkout named by FTPPROXY_CHECKOUT: any other checkout on the path
# (an editable install) is taken off it.
TWISTD = (
    "import os, sys; c = os.environ['FTPPROXY_CHECKOUT']; "
    "sys.path[:] = [c] + [p for p in sys.path if p != c and "
    "not os.path.exists(os.path.join(p or '.', 'ftpproxy', '__init__.py'))]; "
    "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
)
BACKENDS = ("127.0.0.2", "127.0.0.3")
PROXY_HOST = "127.0.0.1"

ROWS = (
    ("download", "download MB/s", True),
    ("download_cpu", "proxy CPU s/GB, download", False),
    ("upload", "upload MB/s", True),
    ("upload_cpu", "proxy CPU s/GB, upload", False),
    ("ftps", "FTPS download MB/s", True),
    ("ftps_cpu", "proxy CPU s/GB, FTPS", False),
    ("rate", "sessions/s", True),
    ("p50", "session p50 ms", False),
    ("p99", "session p99 ms", False),
    ("session_cpu", "proxy CPU ms/session", False),
)


def say(message: str) -> None:
    sys.stderr.write(f"[compare {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="the other checkout (a directory with ftpproxy/ in it)")
    parser.add_argument("--quick", action="store_true", help="64 MiB files, 2 rounds, 2 s rate")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--size-mib", type=int)
    parser.add_argument("--duration", type=float, help="seconds per session-rate run")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.size_mib = args.size_mib or (64 if args.quick else 512)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    baseline = args.baseline.resolve()
    if not (baseline / "ftpproxy" / "__init__.py").exists():
        parser.error(f"{baseline} holds no ftpproxy package")
    peers.ensurePythonPackages(say)
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="ftpproxy-compare-",
                                    dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
        stack.callback(shutil.rmtree, tmp, True)
        data = tmp / "data"
        data.mkdir()
        size = args.size_mib * 1024 * 1024
        with open(data / "big.bin", "wb") as f:
            for _ in range(args.size_mib // 16 or 1):
                f.write(os.urandom(min(size, 16 * 1024 * 1024)))
        size = (data / "big.bin").stat().st_size
        tls = peers.makeCertificate(tmp)
        started: list[daemons.Daemon] = []
        stack.callback(lambda: [d.stop() for d in started])

        def start(name: str, argv: list[str], endpoint: Endpoint, env=None) -> daemons.Daemon:
            daemon = daemons.startDaemon(name, argv, tmp / f"{name}.log", env=env)
            started.append(daemon)
            daemons.waitForBanner(daemon, endpoint.host, endpoint.port)
            return daemon

        backends = []
        for i, host in enumerate(BACKENDS, 1):
            endpoint = Endpoint(host, daemons.freePort(host))
            start(f"backend{i}", [sys.executable, str(HERE / "backend.py"), "--host", host,
                                  "--port", str(endpoint.port), "--root", str(data),
                                  "--user", measure.USER, "--password", measure.PASSWORD,
                                  "--discard-uploads"], endpoint)
            backends.append(endpoint)

        versions = {"this": REPO, "baseline": baseline}
        proxies: dict[str, tuple[Endpoint, daemons.Daemon]] = {}
        for index, (label, checkout) in enumerate(versions.items()):
            for tlsOn in (False, True):
                name = f"{label}{'_tls' if tlsOn else ''}"
                endpoint = Endpoint(PROXY_HOST, daemons.freePort(PROXY_HOST))
                first = 21000 + index * 2000 + (1000 if tlsOn else 0)
                argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
                        "--logfile", str(tmp / f"{name}.twistd.log"), "ftpproxy",
                        "--listen", f"tcp:{endpoint.port}:interface={PROXY_HOST}",
                        "--passive-ports", PortRange(first, first + 999).dashed()]
                for backend in backends:
                    argv += ["--backend", backend.hostPort()]
                if tlsOn:
                    argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
                env = dict(os.environ, FTPPROXY_CHECKOUT=str(checkout))
                env.pop("PYTHONPATH", None)
                say(f"starting {name} from {checkout}")
                proxies[name] = (endpoint, start(name, argv, endpoint, env=env))

        results: dict[str, dict[str, list[float]]] = {v: {row: [] for row, _, _ in ROWS}
                                                     for v in versions}

        def cpu(name: str) -> float:
            return daemons.cpuSeconds(proxies[name][1].groupPids())

        for round in range(args.rounds):
            order = list(versions) if round % 2 == 0 else list(reversed(versions))
            say(f"round {round + 1}/{args.rounds}: {' then '.join(order)}")
            for label in order:
                got = results[label]
                endpoint = proxies[label][0]
                before = cpu(label)
                got["download"].append(measure.download(endpoint, "big.bin", size))
                got["download_cpu"].append((cpu(label) - before) / (size / 1e9))
                before = cpu(label)
                got["upload"].append(measure.upload(endpoint, data / "big.bin", f"up-{label}.bin"))
                got["upload_cpu"].append((cpu(label) - before) / (size / 1e9))
                name = f"{label}_tls"
                before = cpu(name)
                got["ftps"].append(measure.download(proxies[name][0], "big.bin", size, tls=tls))
                got["ftps_cpu"].append((cpu(name) - before) / (size / 1e9))
                before = cpu(label)
                rate = measure.sessionRate([endpoint], args.concurrency, args.duration)
                got["rate"].append(rate["rate"])
                got["p50"].append(rate["p50_ms"])
                got["p99"].append(rate["p99_ms"])
                got["session_cpu"].append((cpu(label) - before) * 1000 / rate["sessions"])
                say(f"  {label}: download {got['download'][-1]:.0f} MB/s, FTPS "
                    f"{got['ftps'][-1]:.0f} MB/s, {rate['rate']:.0f} sessions/s, "
                    f"{got['session_cpu'][-1]:.2f} ms CPU/session")

    load = os.getloadavg()[0]
    lines = [
        f"Compared {REPO} (this) with {baseline} (baseline): {args.rounds} rounds, "
        f"{args.size_mib} MiB, {args.concurrency} clients for {args.duration:g} s, "
        f"{os.cpu_count()} cores, load {load:.2f} at the end; medians.",
        "",
        "| | this | baseline | this/baseline |",
        "|---|---:|---:|---:|",
    ]
    for row, label, _ in ROWS:
        a = statistics.median(results["this"][row])
        b = statistics.median(results["baseline"][row])
        lines.append(f"| {label} | {a:,.2f} | {b:,.2f} | {a / b:.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
