"""Helpers shared by the benchmarks: percentiles, latency summaries, histograms, the machine's
conditions and the results files (bench/results/<name>.json).

Every benchmark that feeds ``bench.summary`` writes, beside its own details, a top-level
``targets`` object: ``{target name: {"measured": number, "unit": str, "conditions": {...}}}``
(``target_entry``). ``bench.summary`` reads it as is; the names are ``bench.summary.TARGETS``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

PERCENTILES = (50.0, 99.0, 99.9)
# histogram bins per decade of a latency (log scale): fine enough to see two modes
HISTOGRAM_BINS_PER_DECADE = 10


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (the value of a real sample)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {pct}")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def pct_key(pct: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99_9" (a JSON field name)."""
    return "p" + f"{pct:g}".replace(".", "_")


def summarize(samples: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Count, mean, P50 / P99 / P99.9 and max of ``samples`` (any unit, kept as given)."""
    ordered = sorted(samples)
    out: dict[str, Any] = {"n": len(ordered)}
    if not ordered:
        return out
    out["mean"] = round(sum(ordered) / len(ordered), digits)
    for pct in PERCENTILES:
        out[pct_key(pct)] = round(percentile(ordered, pct), digits)
    out["min"] = round(ordered[0], digits)
    out["max"] = round(ordered[-1], digits)
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def histogram(
    samples: Sequence[float], bins_per_decade: int = HISTOGRAM_BINS_PER_DECADE
) -> dict[str, list[float]]:
    """Log-spaced histogram of positive samples: ``edges`` (len n + 1) and ``counts`` (n).

    Samples <= 0 go into the first bin. Edges are powers of 10 ** (1 / bins_per_decade)
    covering the smallest to the largest sample.
    """
    if not samples:
        return {"edges": [], "counts": []}
    positive = [s for s in samples if s > 0]
    lo = min(positive) if positive else 1.0
    hi = max(positive) if positive else 1.0
    first = math.floor(math.log10(lo) * bins_per_decade)
    last = math.floor(math.log10(hi) * bins_per_decade) + 1
    edges = [10 ** (k / bins_per_decade) for k in range(first, last + 1)]
    counts = [0] * (len(edges) - 1)
    for s in samples:
        if s <= 0:
            counts[0] += 1
            continue
        k = math.floor(math.log10(s) * bins_per_decade) - first
        counts[min(max(k, 0), len(counts) - 1)] += 1
    return {"edges": [float(f"{e:.4g}") for e in edges], "counts": [float(c) for c in counts]}


def timer_overhead_ns(calls: int = 10_000) -> float:
    """Median cost of one ``perf_counter_ns`` pair around nothing (what each sample includes)."""
    clock = time.perf_counter_ns
    laps = []
    for _ in range(calls):
        t0 = clock()
        laps.append(clock() - t0)
    return median(laps)


def time_each(fn: Callable[[], object], repeats: int) -> list[float]:
    """``repeats`` wall times of ``fn()``, in microseconds."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000)
    return out


def machine() -> dict[str, Any]:
    """Where a figure was measured: cores, Python, load (others share this machine)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_1m": round(load[0], 2),
        "load_5m": round(load[1], 2),
    }


def target_entry(measured: float | None, unit: str, **conditions: Any) -> dict[str, Any]:
    """One ``targets`` item of a results file (see the module docstring)."""
    return {"measured": measured, "unit": unit, "conditions": conditions}


def code_revision() -> str:
    """The git commit measured, ``+`` if the tree had uncommitted changes; ``unknown`` outside
    a checkout."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short=12", "HEAD") + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_results(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``result`` as bench/results/<name>.json (or ``out``), stamped with the revision
    measured and the time; the path written."""
    result.setdefault("revision", code_revision())
    result.setdefault("written", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def fmt_summary(s: dict[str, Any], unit: str) -> str:
    """"P50 1.2 us, P99 3.4 us, P99.9 5.6 us (n 10000)"."""
    if not s.get("n"):
        return "no samples"
    parts = [f"{name.upper().replace('_', '.')} {s[name]:g} {unit}" for name in map(
        pct_key, PERCENTILES
    )]
    return ", ".join(parts) + f" (n {s['n']})"
