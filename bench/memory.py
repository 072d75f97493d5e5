"""
Only the idle-memory row for ftpproxy, repeated: a quick check while
working on memory per session.

    python bench/memory.py                      # 5 rounds of 2,000 sessions
    python bench/memory.py --rounds 3 --checkout ../before   # another checkout too

Starts the two pyftpdlib backends once, then in every round a fresh plain
ftpproxy (as bench/run.py's memory run does), 20 warm-up sessions, and
C{--idle-sessions} logged-in sessions held open; prints each round's PSS
and RSS growth per session and the medians. With C{--checkout} the other
checkout's ftpproxy is measured in the same rounds, right after this one.
Installs nothing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402
from run import (PLAIN_BACKENDS, REPO, Bench, describeCheckout, parseArguments,  # noqa: E402
                 raiseFileLimit, say)


def measureOnce(bench: Bench, name: str, checkout: Path, sessions: int) -> dict:
    bench.startFtpproxy(name, bench.ranges["mem_ftpproxy"], bench.plainBackends,
                        None, checkout=checkout)
    if name in bench.unavailable:
        raise SystemExit(f"{name} did not start: {bench.notes[-1:]}")
    try:
        return measure.idleMemory([bench.endpoints[name]], sessions,
                                  lambda: bench.daemons[name].groupPids(), lambda: None)
    finally:
        bench.stopDaemons([name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-sessions", type=int, default=2000)
    parser.add_argument("--checkout", type=Path,
                        help="another checkout of ftpproxy, measured in the same rounds")
    args = parser.parse_args(argv)
    raiseFileLimit()
    checkouts = {"this": REPO}
    if args.checkout is not None:
        checkouts["other"] = args.checkout.resolve()
    pss: dict[str, list[float]] = {label: [] for label in checkouts}
    rss: dict[str, list[float]] = {label: [] for label in checkouts}
    anon: dict[str, list[float]] = {label: [] for label in checkouts}
    with ExitStack() as stack:
        bench = Bench(parseArguments(["--skip-install", "--systems", "ftpproxy"]), stack)
        bench.ranges = bench.pickPassiveRanges()
        bench.plainBackends = tuple(bench.startBackend(f"backend{i}", host)
                                    for i, host in enumerate(PLAIN_BACKENDS, 1))
        for index in range(args.rounds):
            for label, checkout in checkouts.items():
                got = measureOnce(bench, f"ftpproxy_{label}{index}", checkout,
                                  args.idle_sessions)
                if got["errors"]:
                    say(f"  {got['errors']} sessions failed: {got['error_samples'][:2]}")
                pss[label].append(got["pss_kib"])
                rss[label].append(got["rss_kib"])
                anon[label].append(got["pss_anon_kib"])
                say(f"round {index + 1} {label}: {got['sessions']} sessions, "
                    f"PSS {got['pss_kib']:.2f} KiB/session (anonymous "
                    f"{got['pss_anon_kib']:.2f}), RSS {got['rss_kib']:.2f}")
    for label, checkout in checkouts.items():
        print(f"{label} ({describeCheckout(checkout)}): median of {args.rounds} rounds, "
              f"PSS {median(pss[label]):.2f} KiB/session (anonymous "
              f"{median(anon[label]):.2f}), RSS {median(rss[label]):.2f} "
              f"(PSS rounds: {', '.join(f'{v:.2f}' for v in pss[label])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
