"""Issue 7's targets against what the benchmarks measured: bench/results/summary.json, a table
on stdout and bench/results/report.html (latency histograms, throughput over time).

    python -m bench.summary [--results bench/results]

Reads every bench/results/*.json that exists; writes nothing but summary.json and report.html.

Where each figure comes from (``TARGETS``): a target lists its sources in order of
preference; the first results file that exists and has the figure wins. A source is a
results file and how to read the figure from it:

- ``targets.<name>`` (the convention every new benchmark follows, ``bench.stats``): the file
  carries ``{"targets": {<name>: {"measured": x, "unit": u, "conditions": {...}}}}``;
- or a function of the whole file, for the files written before that convention
  (``book_pipeline.json``).

A target no results file answers is reported with ``measured`` null, ``met`` false and a note
naming the command that would measure it. Context figures that are not targets (the Kafka
consume ceiling) are listed under ``context``.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.stats import RESULTS_DIR

SUMMARY = "summary.json"
REPORT = "report.html"

Measurement = tuple[float, str, dict[str, Any]]  # measured, unit, conditions
Extractor = Callable[[dict[str, Any]], Measurement | None]

# unit -> (dimension, factor to the dimension's base unit)
UNITS: dict[str, tuple[str, float]] = {
    "us": ("time", 1e-6),
    "ms": ("time", 1e-3),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "msg/s": ("rate", 1.0),
    "records": ("count", 1.0),
    "%": ("share", 1.0),
}


def convert(value: float, unit: str, to: str) -> float:
    """``value`` in ``unit`` expressed in ``to`` (same dimension)."""
    (dim_a, fa), (dim_b, fb) = UNITS[unit], UNITS[to]
    if dim_a != dim_b:
        raise ValueError(f"cannot convert {unit} to {to}")
    return value * fa / fb


def from_targets(name: str) -> Extractor:
    """The figure a results file declares under ``targets.<name>``."""

    def extract(data: dict[str, Any]) -> Measurement | None:
        entry = (data.get("targets") or {}).get(name)
        if not entry or entry.get("measured") is None:
            return None
        return float(entry["measured"]), str(entry["unit"]), dict(entry.get("conditions") or {})

    return extract


def _pipeline_conditions(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "parallelism": data.get("parallelism"),
        "python_execution_mode": data.get("python_execution_mode"),
        "checkpoint_interval_ms": data.get("checkpoint_interval_ms"),
        "cpus": (data.get("machine") or {}).get("cpus"),
    }


def pipeline_throughput(data: dict[str, Any]) -> Measurement | None:
    """book_pipeline.json: the best frames/s of the Flink job over a preloaded topic."""
    runs = data.get("throughput") or []
    if not runs:
        return None
    best = max(runs, key=lambda r: (r.get("mix") == "all", r.get("frames_per_s", 0)))
    return (
        float(best["frames_per_s"]),
        "msg/s",
        {
            "what": "Flink job (jobs/pipeline.py) frames/s consuming a preloaded raw topic, "
            "Kafka -> book -> Redis + ClickHouse (bench.book_pipeline)",
            "mix": best.get("mix"),
            "books": best.get("books"),
            "frames": best.get("frames"),
            "state_backend": best.get("state_backend"),
            "core": best.get("core", "python"),
            "every_run_frames_per_s": {
                "/".join(
                    str(r.get(k)) for k in ("mix", "state_backend", "core") if r.get(k)
                ): r.get("frames_per_s")
                for r in runs
            },
            "cpu_us_per_frame": best.get("cpu_us_per_frame"),
            "revision": data.get("revision"),
            **_pipeline_conditions(data),
        },
    )


def pipeline_latency(data: dict[str, Any]) -> Measurement | None:
    """book_pipeline.json: P99 Kafka record -> Redis write at the lowest live rate measured."""
    runs = [r for r in data.get("latency") or [] if r.get("p99_ms") is not None]
    if not runs:
        return None
    low = min(runs, key=lambda r: r["target_frames_per_s"])
    return (
        float(low["p99_ms"]),
        "ms",
        {
            "what": "connector receive time (Kafka record time) -> Redis book write, P99, live "
            "simulator + connectors (bench.book_pipeline); not exchange -> ClickHouse",
            "frames_per_s": low.get("frames_per_s_into_kafka"),
            "books": low.get("books"),
            "p50_ms": low.get("p50_ms"),
            "every_rate_p99_ms": {str(r["target_frames_per_s"]): r["p99_ms"] for r in runs},
            "state_backend": data.get("latency_state_backend"),
            **_pipeline_conditions(data),
        },
    )


def pipeline_lag_at_peak(data: dict[str, Any]) -> Measurement | None:
    """book_pipeline.json: how far behind its input the job is at the highest live rate
    offered (Kafka record time -> Redis write, P99, in seconds); the conditions say whether the
    backlog was still growing (a growing lag has no steady value: the P99 is a lower bound)."""
    runs = [r for r in data.get("latency") or [] if r.get("p99_ms") is not None]
    if not runs:
        return None
    peak = max(runs, key=lambda r: r["target_frames_per_s"])
    first, last = peak.get("p50_first_tenth_ms"), peak.get("p50_last_tenth_ms")
    return (
        float(peak["p99_ms"]) / 1000.0,
        "s",
        {
            "what": "consumer lag as the P99 of Kafka record -> Redis book write at the highest "
            "offered live rate (bench.book_pipeline)",
            "frames_per_s_offered": peak.get("frames_per_s_into_kafka"),
            "backlog_growing": first is not None and last is not None and last > 1.5 * first,
            "p50_first_tenth_ms": first,
            "p50_last_tenth_ms": last,
            "every_rate_p99_s": {str(r["target_frames_per_s"]): r["p99_ms"] / 1000.0 for r in runs},
            **_pipeline_conditions(data),
        },
    )


@dataclasses.dataclass(frozen=True)
class Source:
    file: str  # under bench/results/
    extract: Extractor
    command: str  # what writes the file


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    limit: float
    unit: str
    better: str  # "lower" | "higher": what meeting the target means
    sources: tuple[Source, ...]
    context: tuple[str, ...] = ()  # CONTEXT figures added to the entry's conditions

    @property
    def text(self) -> str:
        op = "<" if self.better == "lower" else ">"
        return f"{op} {self.limit:g} {self.unit}"

    def met(self, measured: float | None) -> bool:
        if measured is None:
            return False
        return measured < self.limit if self.better == "lower" else measured > self.limit


def _src(file: str, name: str, command: str) -> Source:
    return Source(file, from_targets(name), command)


# Issue 7's targets and where each is measured (first source that answers wins).
TARGETS: tuple[Target, ...] = (
    Target(
        "sustained_throughput",
        "sustained messages/s through the pipeline",
        100_000,
        "msg/s",
        "higher",
        (
            _src("throughput.json", "sustained_throughput", "python -m bench.throughput"),
            # the compiled core's longest preloaded run (its file also keeps the Python
            # operators' run of the same data, measured before they were deleted)
            Source(
                "book_pipeline_cores.json",
                pipeline_throughput,
                "python -m bench.book_pipeline --frames 200000 --mixes all --backends hashmap "
                "--rates none --out bench/results/book_pipeline_cores.json",
            ),
            Source("book_pipeline.json", pipeline_throughput, "python -m bench.book_pipeline"),
        ),
        context=("kafka_consume_ceiling",),
    ),
    Target(
        "e2e_latency_p99",
        "end-to-end P99, exchange -> storage",
        50,
        "ms",
        "lower",
        (
            _src("latency.json", "e2e_latency_p99", "python -m bench.latency"),
            # offered by a paced producer at 20k/50k/100k frames/s: the figure at 50k
            _src("offered_latency.json", "e2e_latency_p99", "python -m bench.offered_latency"),
            Source("book_pipeline.json", pipeline_latency, "python -m bench.book_pipeline"),
        ),
    ),
    Target(
        "book_update_p99",
        "order-book update P99 in Redis",
        5,
        "ms",
        "lower",
        (_src("redis_ops.json", "book_update_p99", "python -m bench.redis_ops"),),
    ),
    Target(
        "nbbo_p99",
        "NBBO update P99",
        2,
        "ms",
        "lower",
        (_src("redis_ops.json", "nbbo_p99", "python -m bench.redis_ops"),),
    ),
    Target(
        "clickhouse_day_query",
        "1-day ClickHouse query",
        100,
        "ms",
        "lower",
        (
            _src(
                "clickhouse_queries.json",
                "clickhouse_day_query",
                "python -m bench.clickhouse_queries",
            ),
        ),
    ),
    Target(
        "serialization_per_message",
        "serialization per message",
        100,
        "us",
        "lower",
        (_src("serialization.json", "serialization_per_message", "python -m bench.serialization"),),
    ),
    Target(
        "consumer_lag_at_peak",
        "consumer lag at peak",
        1,
        "s",
        "lower",
        (
            _src("throughput.json", "consumer_lag_at_peak", "python -m bench.throughput"),
            _src("latency.json", "consumer_lag_at_peak", "python -m bench.latency"),
            _src(
                "offered_latency.json", "consumer_lag_at_peak", "python -m bench.offered_latency"
            ),
            Source("book_pipeline.json", pipeline_lag_at_peak, "python -m bench.book_pipeline"),
        ),
    ),
    Target(
        "batch_day",
        "1-day batch (backfill)",
        10,
        "min",
        "lower",
        (
            _src("backfill_day.json", "batch_day", "python -m bench.backfill_day run"),
            _src("backfill.json", "batch_day", "python -m bench.backfill"),
        ),
    ),
    Target(
        "chaos_records_lost",
        "records lost or duplicated across injected failures",
        1,
        "records",
        "lower",
        (_src("chaos.json", "chaos_records_lost", "python -m bench.chaos"),),
    ),
    Target(
        "ha_availability",
        "availability at one fault of each kind a day (HA profile drill)",
        99.95,
        "%",
        "higher",
        (_src("ha_drill.json", "ha_availability", "python -m bench.ha_drill"),),
    ),
)

# figures that are not targets but give them meaning: (name, where it is read from)
CONTEXT: tuple[tuple[str, Source], ...] = (
    (
        "kafka_consume_ceiling",
        _src("kafka_ceiling.json", "kafka_consume_ceiling", "python -m bench.kafka_ceiling"),
    ),
)


def load_results(results: Path) -> dict[str, dict[str, Any]]:
    """Every results file but ours: file name -> parsed JSON (unreadable files skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        if path.name == SUMMARY:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out[path.name] = data
    return out


def resolve(source: Source, files: dict[str, dict[str, Any]]) -> Measurement | None:
    data = files.get(source.file)
    return None if data is None else source.extract(data)


def entry(
    target: Target, files: dict[str, dict[str, Any]], context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One summary.json entry: the target against the first source that measured it."""
    for source in target.sources:
        found = resolve(source, files)
        if found is None:
            continue
        value, unit, conditions = found
        for name in target.context:
            if name in (context or {}) and name not in conditions:
                c = (context or {})[name]
                conditions[name] = {
                    "measured": c["measured"],
                    "unit": c["unit"],
                    "command": c["command"],
                }
        measured = convert(value, unit, target.unit)
        # percentages near 100 (availability) keep what tells them from their target
        digits = 4 if target.unit == "%" else 3 if abs(measured) < 10 else 1
        return {
            "name": target.name,
            "description": target.description,
            "target": target.text,
            "measured": round(measured, digits),
            "unit": target.unit,
            "met": target.met(measured),
            "conditions": conditions,
            "source": source.file,
            "command": files[source.file].get("command") or source.command,
        }
    first = target.sources[0]
    return {
        "name": target.name,
        "description": target.description,
        "target": target.text,
        "measured": None,
        "unit": target.unit,
        "met": False,
        "conditions": {},
        "source": None,
        "command": first.command,
        "note": f"not measured: run {first.command}",
    }


def summarize(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json: one entry per target, and the context figures found."""
    context = {}
    for name, source in CONTEXT:
        found = resolve(source, files)
        if found is not None:
            value, unit, conditions = found
            context[name] = {
                "measured": value,
                "unit": unit,
                "conditions": conditions,
                "command": files[source.file].get("command") or source.command,
            }
    return {
        "targets": [entry(t, files, context) for t in TARGETS],
        "context": context,
        "files_read": sorted(files),
    }


def table(summary: dict[str, Any]) -> str:
    rows = [("target", "goal", "measured", "met", "command")]
    for e in summary["targets"]:
        measured = "-" if e["measured"] is None else f"{e['measured']:g} {e['unit']}"
        met = "yes" if e["met"] else ("NOT MEASURED" if e["measured"] is None else "no")
        rows.append((e["name"], e["target"], measured, met, e["command"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, c in summary["context"].items():
        lines.append(f"context: {name} = {c['measured']:g} {c['unit']} ({c['command']})")
    return "\n".join(lines)


# -- report.html: inline SVG charts ------------------------------------------------------------

SVG_W, SVG_H = 640, 260
PAD_L, PAD_R, PAD_T, PAD_B = 60, 16, 28, 40


def _esc(text: object) -> str:
    return html.escape(str(text))


def svg_histogram(title: str, edges: Sequence[float], counts: Sequence[float]) -> str:
    """Bars of a (log-spaced) histogram, one equal-width bar per bin, edges labelled."""
    if not counts or len(edges) != len(counts) + 1:
        return ""
    w, h = SVG_W - PAD_L - PAD_R, SVG_H - PAD_T - PAD_B
    top = max(counts) or 1.0
    bar = w / len(counts)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" '
        f'role="img"><title>{_esc(title)}</title>',
        f'<text x="{PAD_L}" y="18" font-size="13">{_esc(title)}</text>',
    ]
    for i, c in enumerate(counts):
        bh = h * c / top
        parts.append(
            f'<rect x="{PAD_L + i * bar:.1f}" y="{PAD_T + h - bh:.1f}" '
            f'width="{max(bar - 1, 1):.1f}" height="{bh:.1f}" fill="#4a7bd0">'
            f"<title>{edges[i]:g}-{edges[i + 1]:g}: {c:g}</title></rect>"
        )
    step = max(1, len(edges) // 8)
    for i in range(0, len(edges), step):
        x = PAD_L + i * bar
        parts.append(
            f'<text x="{x:.1f}" y="{SVG_H - 22}" font-size="10" '
            f'text-anchor="middle">{edges[i]:g}</text>'
        )
    parts.append(
        f'<text x="{PAD_L - 6}" y="{PAD_T + 8}" font-size="10" text-anchor="end">{top:g}</text>'
    )
    parts.append(
        f'<line x1="{PAD_L}" y1="{PAD_T + h}" x2="{PAD_L + w}" y2="{PAD_T + h}" '
        'stroke="#333"/></svg>'
    )
    return "".join(parts)


def rates(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """(t, cumulative count) points -> (t, count per second over the previous interval)."""
    out = []
    for (t0, c0), (t1, c1) in itertools.pairwise(points):
        if t1 > t0:
            out.append((float(t1), (c1 - c0) / (t1 - t0)))
    return out


def svg_line(title: str, points: Sequence[tuple[float, float]], xlabel: str, ylabel: str) -> str:
    if len(points) < 2:
        return ""
    w, h = SVG_W - PAD_L - PAD_R, SVG_H - PAD_T - PAD_B
    xmax = max(p[0] for p in points) or 1.0
    ymax = max(p[1] for p in points) or 1.0
    coords = " ".join(
        f"{PAD_L + w * x / xmax:.1f},{PAD_T + h - h * y / ymax:.1f}" for x, y in points
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" role="img">'
        f"<title>{_esc(title)}</title>"
        f'<text x="{PAD_L}" y="18" font-size="13">{_esc(title)}</text>'
        f'<polyline points="{coords}" fill="none" stroke="#d0554a" stroke-width="1.5"/>'
        f'<line x1="{PAD_L}" y1="{PAD_T + h}" x2="{PAD_L + w}" y2="{PAD_T + h}" stroke="#333"/>'
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + h}" stroke="#333"/>'
        f'<text x="{PAD_L - 6}" y="{PAD_T + 8}" font-size="10" text-anchor="end">{ymax:,.0f}'
        f'</text><text x="{PAD_L - 6}" y="{PAD_T + h}" font-size="10" text-anchor="end">0</text>'
        f'<text x="{PAD_L + w}" y="{SVG_H - 22}" font-size="10" text-anchor="end">{xmax:g}'
        f'</text><text x="{PAD_L + w / 2}" y="{SVG_H - 6}" font-size="11" '
        f'text-anchor="middle">{_esc(xlabel)}</text>'
        f'<text x="12" y="{PAD_T + h / 2}" font-size="11" transform="rotate(-90 12 '
        f'{PAD_T + h / 2})" text-anchor="middle">{_esc(ylabel)}</text></svg>'
    )


def charts(files: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(section, svg) for every histogram and time series the results files carry."""
    out = []
    for name, data in files.items():
        for title, hist in (data.get("histograms") or {}).items():
            svg = svg_histogram(f"{title} ({name})", hist.get("edges", []), hist.get("counts", []))
            if svg:
                out.append((f"Latency histograms: {name}", svg))
        for title, series in (data.get("series") or {}).items():
            svg = svg_line(f"{title} ({name})", rates(series), "seconds", "per second")
            if svg:
                out.append((f"Throughput over time: {name}", svg))
        for run in data.get("throughput") or []:  # book_pipeline.json's progress
            progress = run.get("progress") if isinstance(run, dict) else None
            if progress:
                title = (
                    f"Flink job: book messages applied/s, {run.get('mix')}/"
                    f"{run.get('state_backend')} ({name})"
                )
                svg = svg_line(title, rates(progress), "seconds", "messages/s")
                if svg:
                    out.append((f"Throughput over time: {name}", svg))
    return out


def report_html(summary: dict[str, Any], files: dict[str, dict[str, Any]]) -> str:
    rows = []
    for e in summary["targets"]:
        measured = "not measured" if e["measured"] is None else f"{e['measured']:g} {e['unit']}"
        colour = "#dff0d8" if e["met"] else ("#eee" if e["measured"] is None else "#f2dede")
        rows.append(
            f'<tr style="background:{colour}"><td>{_esc(e["name"])}</td>'
            f"<td>{_esc(e['description'])}</td><td>{_esc(e['target'])}</td>"
            f"<td>{_esc(measured)}</td><td>{'yes' if e['met'] else 'no'}</td>"
            f"<td><code>{_esc(e['command'])}</code></td>"
            f"<td><details><summary>conditions</summary><pre>"
            f"{_esc(json.dumps(e['conditions'], indent=1, default=str))}</pre></details></td></tr>"
        )
    sections: dict[str, list[str]] = {}
    for section, svg in charts(files):
        sections.setdefault(section, []).append(svg)
    body = "".join(
        f"<h2>{_esc(s)}</h2>" + "".join(f"<div>{svg}</div>" for svg in svgs)
        for s, svgs in sections.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tickflow benchmarks</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;"
        "border-bottom:1px solid #ccc;vertical-align:top}pre{font-size:11px}</style></head>"
        "<body><h1>tickflow: targets vs measured</h1><table><tr><th>target</th><th>what</th>"
        "<th>goal</th><th>measured</th><th>met</th><th>command</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        + f"<p>Files read: {_esc(', '.join(summary['files_read']))}</p>"
        + body
        + "</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.summary", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    files = load_results(args.results)
    summary = summarize(files)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.results / REPORT).write_text(report_html(summary, files))
    print(table(summary))
    met = sum(e["met"] for e in summary["targets"])
    unmeasured = sum(e["measured"] is None for e in summary["targets"])
    print(
        f"{met}/{len(summary['targets'])} targets met, {unmeasured} not measured; "
        f"{args.results / SUMMARY}, {args.results / REPORT}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
