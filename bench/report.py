"""
Turn per-round results into medians, ratios and a Markdown table.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import attrs

SYSTEMS = ("direct", "ftpproxy", "haproxy", "mod_proxy")
# --baseline: another checkout of ftpproxy, measured in the same rounds
# (transfer rows only), so a change is judged before/after in one run.
BASELINE = "before"
TITLES = {
    "direct": "direct",
    "ftpproxy": "ftpproxy",
    "haproxy": "HAProxy",
    "mod_proxy": "mod_proxy",
    BASELINE: "ftpproxy before",
}
PEERS = ("haproxy", "mod_proxy")
GIB_PER_GB = 2**30 / 1e9


@attrs.frozen
class Metric:
    key: str
    label: str
    digits: int
    higherIsBetter: bool


METRICS = (
    Metric("download", "download MB/s", 0, True),
    Metric("upload", "upload MB/s", 0, True),
    Metric("ftps_download", "FTPS download MB/s (PROT P)", 0, True),
    Metric("ftps_upload", "FTPS upload MB/s (PROT P)", 0, True),
    Metric("ftps_backend_download", "FTPS download MB/s, FTPS backend", 0, True),
    Metric("ftps_backend_upload", "FTPS upload MB/s, FTPS backend", 0, True),
    Metric("rate", "sessions/s (50 clients)", 0, True),
    Metric("p50", "session p50 ms", 1, False),
    Metric("p99", "session p99 ms", 1, False),
    Metric("idle_pss", "idle session PSS KiB", 1, False),
    Metric("idle_rss", "idle session RSS KiB", 1, False),
)


TRANSFER_METRICS = ("download", "upload", "ftps_download", "ftps_upload",
                    "ftps_backend_download", "ftps_backend_upload")


@attrs.define
class Results:
    """
    Every round's value per metric and system; a None is a failed round.
    """

    values: dict[str, dict[str, list[float | None]]] = attrs.Factory(dict)
    errors: dict[str, dict[str, list[str]]] = attrs.Factory(dict)
    notApplicable: dict[tuple[str, str], str] = attrs.Factory(dict)
    extra: dict[str, dict[str, list[dict]]] = attrs.Factory(dict)

    def add(self, metric: str, system: str, value: float | None) -> None:
        self.values.setdefault(metric, {}).setdefault(system, []).append(value)

    def fail(self, metric: str, system: str, error: str) -> None:
        self.add(metric, system, None)
        self.errors.setdefault(metric, {}).setdefault(system, []).append(error)

    def note(self, kind: str, system: str, detail: dict) -> None:
        self.extra.setdefault(kind, {}).setdefault(system, []).append(detail)

    def median(self, metric: str, system: str) -> float | None:
        good = [v for v in self.values.get(metric, {}).get(system, []) if v is not None]
        return statistics.median(good) if good else None

    def asJSON(self) -> dict:
        return {
            "values": self.values,
            "errors": self.errors,
            "not_applicable": {f"{m}/{s}": why for (m, s), why in self.notApplicable.items()},
            "details": self.extra,
            "medians": {
                m.key: {s: self.median(m.key, s) for s in (*SYSTEMS, BASELINE)}
                for m in METRICS
            },
        }


def formatNumber(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def cell(results: Results, metric: Metric, system: str) -> str:
    why = results.notApplicable.get((metric.key, system))
    if why is not None:
        return why
    rounds = results.values.get(metric.key, {}).get(system)
    if not rounds:
        return "—"
    median = results.median(metric.key, system)
    failed = sum(1 for v in rounds if v is None)
    if median is None:
        return f"failed ({failed}/{len(rounds)})"
    text = formatNumber(median, metric.digits)
    if failed:
        text += f" ({failed}/{len(rounds)} failed)"
    return text


def ratio(results: Results, metric: Metric, peer: str) -> str:
    mine = results.median(metric.key, "ftpproxy")
    theirs = results.median(metric.key, peer)
    if mine is None or theirs is None or theirs == 0:
        return "—"
    return f"{mine / theirs:.2f}x"


def columns(results: Results) -> tuple[list[str], list[str]]:
    """
    The systems and the peers to show: the baseline only when it ran.
    """
    if any(BASELINE in systems for systems in results.values.values()):
        return [*SYSTEMS, BASELINE], [*PEERS, BASELINE]
    return list(SYSTEMS), list(PEERS)


def table(results: Results) -> str:
    systems, peers = columns(results)
    header = ["", *(TITLES[s] for s in systems),
              *(f"ftpproxy/{TITLES[p]}" for p in peers)]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for metric in METRICS:
        if metric.key not in results.values and not any(
            m == metric.key for m, _ in results.notApplicable
        ):
            continue
        row = [metric.label, *(cell(results, metric, s) for s in systems),
               *(ratio(results, metric, p) for p in peers)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cpuPerUnit(results: Results, system: str, metric: str) -> float | None:
    """
    Median CPU of the server under test in one measurement: seconds per GB
    moved for transfers, ms per session for the session rate.
    """
    unit = "sessions" if metric == "rate" else "bytes"
    per = [n["seconds"] / (n[unit] / 1e9 if unit == "bytes" else n[unit] / 1e3)
           for n in results.extra.get("cpu", {}).get(system, [])
           if n["metric"] == metric and n.get(unit)]
    return statistics.median(per) if per else None


def targets(results: Results) -> list[tuple[str, str, str]]:
    """
    The issue's targets as (target, measured, verdict) rows.
    """
    def m(metric: str, system: str) -> float | None:
        return results.median(metric, system)

    rows = []

    def check(name: str, value: float | None, goal: float, atLeast: bool,
              unit: str = "x") -> None:
        if value is None:
            rows.append((name, "—", "not measured"))
            return
        met = value >= goal if atLeast else value <= goal
        digits = 2 if unit in ("x", "s/GiB") else 1
        shown = f"{value:.{digits}f}{unit}" if unit == "x" else f"{value:.{digits}f} {unit}"
        rows.append((name, shown, "met" if met else "NOT met"))

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for key, label in (("download", "plain download"), ("upload", "plain upload")):
        peers = [v for v in (m(key, "haproxy"), m(key, "mod_proxy")) if v is not None]
        check(f"{label} >= 1.2x the faster of HAProxy and mod_proxy",
              over(m(key, "ftpproxy"), max(peers) if peers else None), 1.2, True)
    check("FTPS download >= 1.5x mod_proxy",
          over(m("ftps_download", "ftpproxy"), m("ftps_download", "mod_proxy")), 1.5, True)
    check("FTPS upload >= 1.5x mod_proxy",
          over(m("ftps_upload", "ftpproxy"), m("ftps_upload", "mod_proxy")), 1.5, True)
    for key, label in (("ftps_download", "FTPS download"), ("ftps_upload", "FTPS upload")):
        cpu = cpuPerUnit(results, "ftpproxy", key)
        check(f"proxy CPU {label} <= 1.2 s/GiB",
              None if cpu is None else cpu * GIB_PER_GB, 1.2, False, "s/GiB")
    check("session rate >= 5x mod_proxy",
          over(m("rate", "ftpproxy"), m("rate", "mod_proxy")), 5.0, True)
    check("session rate >= 0.7x HAProxy",
          over(m("rate", "ftpproxy"), m("rate", "haproxy")), 0.7, True)
    check("session p99 <= 2x HAProxy's",
          over(m("p99", "ftpproxy"), m("p99", "haproxy")), 2.0, False)
    cpu = cpuPerUnit(results, "ftpproxy", "rate")
    check("proxy CPU per session <= 1.5 ms", cpu, 1.5, False, "ms")
    check("idle session <= 6 KiB (PSS)", m("idle_pss", "ftpproxy"), 6.0, False, "KiB")
    return rows


def cpuTable(results: Results, systems: Sequence[str]) -> str:
    """
    CPU spent by the server under test (the proxy; for direct the backends),
    median per round: what an optimisation has to bring down.
    """
    labels = {m.key: m.label.replace(" MB/s", "") + " s/GB" for m in METRICS}
    rows = [*((key, labels[key]) for key in TRANSFER_METRICS), ("rate", "ms per session")]
    lines = ["| CPU of the server under test | " + " | ".join(
                 TITLES[s] for s in systems) + " |",
             "|---|" + "---:|" * len(systems)]
    for metric, label in rows:
        cells = []
        for system in systems:
            per = cpuPerUnit(results, system, metric)
            cells.append(f"{per:.2f}" if per is not None else "—")
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: Results, header: Mapping[str, str], notes: Sequence[str],
             systems: Sequence[str] = SYSTEMS) -> str:
    lines = ["## Benchmark results", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", table(results), "",
              "Ratios are ftpproxy/peer: above 1 is better for MB/s and sessions/s, "
              "below 1 is better for ms and KiB.", ""]
    lines += ["| target (issues 6 and 11) | measured | |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(results)]
    if results.extra.get("cpu"):
        shown, _ = columns(results)
        lines += ["", cpuTable(results, [s for s in shown if s in systems or s == BASELINE])]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
