"""
Turn per-round results into medians, ratios and a Markdown table.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import attrs

SYSTEMS = ("direct", "ftpproxy", "haproxy", "mod_proxy")
TITLES = {
    "direct": "direct",
    "ftpproxy": "ftpproxy",
    "haproxy": "HAProxy",
    "mod_proxy": "mod_proxy",
}
PEERS = ("haproxy", "mod_proxy")


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
    Metric("rate", "sessions/s (50 clients)", 0, True),
    Metric("p50", "session p50 ms", 1, False),
    Metric("p99", "session p99 ms", 1, False),
    Metric("idle_pss", "idle session PSS KiB", 1, False),
    Metric("idle_rss", "idle session RSS KiB", 1, False),
)


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
                m.key: {s: self.median(m.key, s) for s in SYSTEMS} for m in METRICS
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


def table(results: Results) -> str:
    header = ["", *(TITLES[s] for s in SYSTEMS),
              *(f"ftpproxy/{TITLES[p]}" for p in PEERS)]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for metric in METRICS:
        if metric.key not in results.values and not any(
            m == metric.key for m, _ in results.notApplicable
        ):
            continue
        row = [metric.label, *(cell(results, metric, s) for s in SYSTEMS),
               *(ratio(results, metric, p) for p in PEERS)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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
        shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.1f} {unit}"
        rows.append((name, shown, "met" if met else "NOT met"))

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for key, label in (("download", "plain download"), ("upload", "plain upload")):
        peers = [v for v in (m(key, "haproxy"), m(key, "mod_proxy")) if v is not None]
        check(f"{label} >= 1.2x the faster of HAProxy and mod_proxy",
              over(m(key, "ftpproxy"), max(peers) if peers else None), 1.2, True)
    check("FTPS download >= 1.5x mod_proxy",
          over(m("ftps_download", "ftpproxy"), m("ftps_download", "mod_proxy")), 1.5, True)
    check("session rate >= 5x mod_proxy",
          over(m("rate", "ftpproxy"), m("rate", "mod_proxy")), 5.0, True)
    check("session rate >= 0.7x HAProxy",
          over(m("rate", "ftpproxy"), m("rate", "haproxy")), 0.7, True)
    check("session p99 <= 2x HAProxy's",
          over(m("p99", "ftpproxy"), m("p99", "haproxy")), 2.0, False)
    check("idle session <= 16 KiB (PSS)", m("idle_pss", "ftpproxy"), 16.0, False, "KiB")
    return rows


def cpuTable(results: Results, systems: Sequence[str]) -> str:
    """
    CPU spent by the server under test (the proxy; for direct the backends),
    median per round: what an optimisation has to bring down.
    """
    rows = (("download", "download s/GB", "bytes"), ("upload", "upload s/GB", "bytes"),
            ("ftps_download", "FTPS download s/GB", "bytes"),
            ("rate", "ms per session", "sessions"))
    notes = results.extra.get("cpu", {})
    lines = ["| CPU of the server under test | " + " | ".join(
                 TITLES[s] for s in systems) + " |",
             "|---|" + "---:|" * len(systems)]
    for metric, label, unit in rows:
        cells = []
        for system in systems:
            per = [n["seconds"] / (n[unit] / 1e9 if unit == "bytes" else n[unit] / 1e3)
                   for n in notes.get(system, [])
                   if n["metric"] == metric and n.get(unit)]
            cells.append(f"{statistics.median(per):.2f}" if per else "—")
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
    lines += ["| target (issue 6) | measured | |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(results)]
    if results.extra.get("cpu"):
        lines += ["", cpuTable(results, [s for s in SYSTEMS if s in systems])]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
