"""
Where the CPU of one plain transfer goes: the client (curl), the proxy and
the backend, per GB, through HAProxy, ftpproxy and direct, interleaved.

    python bench/pipeline.py                          # upload, 5 rounds, 512 MiB
    python bench/pipeline.py --direction download
    python bench/pipeline.py --ftpproxy other=/path/to/another/checkout

On a 2-core machine the three processes share the CPU, so a transfer runs
at about 1 / (their CPU per byte together): a proxy can slow a transfer down
by making the client or the backend work harder, not only by its own CPU.
This script shows that split; bench/run.py shows the proxy's share only.
The backends are bench/backend.py (pyftpdlib; uploads discarded, downloads
by sendfile), as in bench/run.py; HAProxy runs the classic passive-range
trick in front of its own two masquerading backends. Every server is
stopped and the temporary directory (in /dev/shm) removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import daemons  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
from compare import TWISTD  # noqa: E402  (twistd importing only FTPPROXY_CHECKOUT's ftpproxy)
from peers import Endpoint, PortRange  # noqa: E402


def childCPU() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--direction", choices=("upload", "download"), default="upload")
    parser.add_argument("--ftpproxy", action="append", default=[], metavar="NAME=CHECKOUT",
                        help="also measure ftpproxy from another checkout (repeatable)")
    args = parser.parse_args(argv)
    checkouts = [("ftpproxy", str(REPO))] + [tuple(v.split("=", 1)) for v in args.ftpproxy]

    tmp = Path(tempfile.mkdtemp(prefix="ftpproxy-pipeline-", dir="/dev/shm"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        root = tmp / "root"
        root.mkdir()
        big = root / "big.bin"
        chunk = os.urandom(1 << 20)
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(chunk)
        running: dict[str, daemons.Daemon] = {}

        def start(name, argv, endpoint, env=None, cwd=None):
            daemon = daemons.startDaemon(name, argv, tmp / f"{name}.log", env=env, cwd=cwd)
            stack.callback(daemon.stop)
            daemons.waitForBanner(daemon, endpoint.host, endpoint.port)
            running[name] = daemon

        def backend(name, host, masquerade=None, passive=None) -> Endpoint:
            endpoint = Endpoint(host, daemons.freePort(host))
            argv = [sys.executable, str(HERE / "backend.py"), "--host", host,
                    "--port", str(endpoint.port), "--root", str(root),
                    "--user", measure.USER, "--password", measure.PASSWORD,
                    "--discard-uploads"]
            if masquerade:
                argv += ["--masquerade", masquerade]
            if passive:
                argv += ["--passive-ports", passive.dashed()]
            start(name, argv, endpoint)
            return endpoint

        plain = (backend("backend1", "127.0.0.2"), backend("backend2", "127.0.0.3"))
        ranges = [PortRange(first, first + 99) for first in range(24000, 24000 + 100 * (
            2 + len(checkouts)), 100)]
        for port in (r.first for r in ranges):
            if not daemons.rangeIsFree("127.0.0.1", port, 100):
                raise SystemExit(f"passive ports {port}-{port + 99} are in use")
        masquerading = (backend("hbackend1", "127.0.0.4", "127.0.0.1", ranges[0]),
                        backend("hbackend2", "127.0.0.5", "127.0.0.1", ranges[1]))
        endpoints: dict[str, Endpoint] = {"direct": plain[0]}
        # (proxy daemons, backend daemons) whose CPU each system's row counts
        owners: dict[str, tuple[list[str], list[str]]] = {
            "direct": ([], ["backend1", "backend2"])}
        haproxy = Endpoint("127.0.0.1", daemons.freePort())
        config = tmp / "haproxy.cfg"
        config.write_text(peers.haproxyConfig(haproxy, masquerading, tuple(ranges[:2])))
        start("haproxy", ["haproxy", "-db", "-f", str(config)], haproxy)
        endpoints["haproxy"] = haproxy
        owners["haproxy"] = (["haproxy"], ["hbackend1", "hbackend2"])
        for (name, checkout), passive in zip(checkouts, ranges[2:]):
            endpoint = Endpoint("127.0.0.1", daemons.freePort())
            argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
                    "--logfile", str(tmp / f"{name}.twistd.log"), "ftpproxy",
                    "--listen", f"tcp:{endpoint.port}:interface=127.0.0.1",
                    "--backend", plain[0].hostPort(), "--backend", plain[1].hostPort(),
                    "--passive-ports", passive.dashed()]
            env = dict(os.environ, FTPPROXY_CHECKOUT=checkout)
            start(name, argv, endpoint, env=env, cwd=checkout)
            endpoints[name] = endpoint
            owners[name] = ([name], ["backend1", "backend2"])

        gb = args.size_mib * (1 << 20) / 1e9
        results = {name: {"mbs": [], "client": [], "proxy": [], "backend": []}
                   for name in endpoints}
        for number in range(args.rounds):
            names = list(endpoints) if number % 2 == 0 else list(reversed(endpoints))
            for name in names:
                proxyNames, backendNames = owners[name]
                proxyPids = [p for n in proxyNames for p in running[n].groupPids()]
                backendPids = [p for n in backendNames for p in running[n].groupPids()]
                before = (childCPU(), daemons.cpuSeconds(proxyPids),
                          daemons.cpuSeconds(backendPids))
                if args.direction == "upload":
                    speed = measure.upload(endpoints[name], big, f"up-{name}.bin")
                else:
                    speed = measure.download(endpoints[name], "big.bin", big.stat().st_size)
                after = (childCPU(), daemons.cpuSeconds(proxyPids),
                         daemons.cpuSeconds(backendPids))
                row = results[name]
                row["mbs"].append(speed)
                for key, b, a in zip(("client", "proxy", "backend"), before, after):
                    row[key].append((a - b) / gb)
            sys.stderr.write(f"round {number + 1}: " + ", ".join(
                f"{n} {results[n]['mbs'][-1]:,.0f} MB/s" for n in endpoints) + "\n")

    print(f"{args.direction}, {args.size_mib} MiB, {args.rounds} rounds, medians; "
          "CPU in seconds per GB moved\n")
    print("| system | MB/s | client (curl) | proxy | backend | all three |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        m = {k: statistics.median(v) for k, v in row.items()}
        total = m["client"] + m["proxy"] + m["backend"]
        print(f"| {name} | {m['mbs']:,.0f} | {m['client']:.2f} | {m['proxy']:.2f} | "
              f"{m['backend']:.2f} | {total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
