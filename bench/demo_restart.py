"""Restarting the demo after it was stopped while the exchanges kept sending: how many seconds
until every book is LIVE again, and is anything missing from ClickHouse?

    python -m bench.demo_restart [--stopped-minutes 10] [--paths resume,fresh] [--keep]

Starts the demo (`tickflow demo up`) and waits until every book is LIVE. Then, per path:
``tickflow demo down`` (the job stops with a savepoint), the simulator and the connectors start
again without the job so the raw topic grows for ``--stopped-minutes``, and ``tickflow demo up``
runs again, timed from the command to every book LIVE:
- ``resume``: from the savepoint ``down`` took (the job reads the whole backlog);
- ``fresh``: as if there were no state to restore (the restore history is set aside): the job
  starts at the end of the raw topic and a batch backfill stores the skipped backlog.
After each path the trades in ClickHouse are counted per exchange and minute over the stopped
interval (every minute must have trades: a hole would be data lost across the restart), once
the backlog's backfill (if any) has finished. Writes bench/results/demo_restart.json.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.stats import write_results
from jobs.sinks.clickhouse import connect
from tickflow import demo
from tickflow.config import Settings, load_settings

BACKFILL_TIMEOUT_S = 900.0


def trades_per_minute(settings: Settings, from_ms: int, to_ms: int) -> dict[str, list[int]]:
    """Per exchange, the number of trades stored for each whole minute in [from_ms, to_ms)."""
    first, last = from_ms // 60_000 + 1, to_ms // 60_000  # whole minutes only
    client = connect(settings.clickhouse)
    rows = client.execute(
        "SELECT exchange, intDiv(trade_time_ms, 60000) AS minute, count()"
        f" FROM {settings.clickhouse.database}.trades FINAL"
        " WHERE trade_time_ms >= %(a)s AND trade_time_ms < %(b)s GROUP BY exchange, minute",
        {"a": first * 60_000, "b": last * 60_000},
    )
    client.disconnect()
    counts: dict[str, dict[int, int]] = {}
    for exchange, minute, n in rows:
        counts.setdefault(exchange, {})[minute] = n
    return {ex: [by.get(m, 0) for m in range(first, last)] for ex, by in sorted(counts.items())}


def restart(settings: Settings, path: str, stopped_s: float) -> dict[str, Any]:
    demo.down(settings)
    stopped_ms = int(time.time() * 1000)
    if path == "fresh":
        history = demo._history_file(settings)
        if history.exists():
            history.rename(history.with_suffix(".set-aside"))
    for app in demo.APPS:
        demo.start_app(settings, app)
    print(f"{path}: job stopped, connectors producing for {stopped_s:.0f} s", flush=True)
    time.sleep(stopped_s)
    restarted_ms = int(time.time() * 1000)
    how = demo.up(settings)
    backfill = how.pop("backfill", None)
    backfill_s = None
    if backfill is not None:
        began = time.monotonic()
        backfill.wait(timeout=BACKFILL_TIMEOUT_S)
        backfill_s = round(time.monotonic() - began, 1)
    time.sleep(settings.clickhouse.insert_interval_ms / 1000 + 5)  # the job's inserts land
    minutes = trades_per_minute(settings, stopped_ms, restarted_ms)
    holes = {ex: sum(1 for n in counts if n == 0) for ex, counts in minutes.items()}
    result = {
        "path": path,
        "stopped_s": stopped_s,
        **how,
        "backfill_seconds_after_live": backfill_s,
        "trades_per_minute_while_stopped": minutes,
        "minutes_without_trades": holes,
        "nothing_missing": bool(minutes) and not any(holes.values()),
    }
    print(f"{path}: {result}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stopped-minutes", type=float, default=10.0)
    parser.add_argument("--paths", default="resume,fresh")
    parser.add_argument("--keep", action="store_true", help="leave the demo running")
    args = parser.parse_args(argv)
    # what `make run` runs: the demo against the simulator (the Makefile sets this too)
    os.environ.setdefault("TICKFLOW_CONFIG", "config/simulator.yaml")
    settings = load_settings()
    first = demo.up(settings)
    runs = [restart(settings, p, args.stopped_minutes * 60) for p in args.paths.split(",")]
    if not args.keep:
        demo.down(settings)
    out: dict[str, Any] = {
        "command": "python -m bench.demo_restart " + " ".join(argv or []),
        "first_start_live_after_s": first.get("live_after_s"),
        "runs": runs,
        "targets": {},
    }
    write_results("demo_restart", out)
    return 0 if all(r["nothing_missing"] and r["live_after_s"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
