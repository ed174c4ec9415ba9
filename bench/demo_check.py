"""The live demo as a new user runs it (`make run`: `tickflow demo up`), read from the dashboard
for a few minutes: are all books LIVE, is the consumer lag under 1 s, is receive -> Redis P99
under 50 ms at the simulator's default rate?

    python -m bench.demo_check [--minutes 4] [--settle-s 60] [--keep]

Starts the demo (stack, simulator, connectors, dashboard, job), lets it settle (snapshots,
JIT warm-up), then reads ``/api/state`` of the dashboard every ``--every-s`` and keeps, per
reading: books LIVE / total, the Flink source's consumer lag (ms, from Prometheus), the
dashboard's rolling receive -> Redis latency quantiles per exchange, the connectors' frames/s.
Prints each reading and a verdict; writes bench/results/demo_check.json. Stops the demo at the
end (``tickflow demo down``) unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.stats import write_results
from tickflow.config import load_settings

LAG_LIMIT_MS = 1_000.0
P99_LIMIT_MS = 50.0


def dashboard_state(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10) as r:
        state: dict[str, Any] = json.load(r)
    return state


def reading(state: dict[str, Any], started: float) -> dict[str, Any]:
    books = state.get("books") or []
    redis_ms = (state.get("latency") or {}).get("redis_ms") or {}
    p99 = [v.get("p99") for v in redis_ms.values() if v.get("p99") is not None]
    p50 = [v.get("p50") for v in redis_ms.values() if v.get("p50") is not None]
    frames = (state.get("rates") or {}).get("connector_frames_per_s") or {}
    return {
        "t_s": round(time.monotonic() - started, 1),
        "books": len(books),
        "live": sum(1 for b in books if b.get("status") == "LIVE"),
        "not_live": sorted(
            f"{b['exchange']}:{b['symbol']} {b.get('status')}"
            for b in books
            if b.get("status") != "LIVE"
        ),
        "consumer_lag_ms": state.get("consumer_lag_ms"),
        "redis_p50_ms_max": max(p50) if p50 else None,
        "redis_p99_ms_max": max(p99) if p99 else None,
        "redis_ms": redis_ms,
        "frames_per_s": round(sum(v for v in frames.values() if v), 1) if frames else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_check", description=__doc__)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--settle-s", type=float, default=60.0)
    parser.add_argument("--every-s", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="leave the demo running")
    args = parser.parse_args(argv)
    settings = load_settings()
    tickflow = [sys.executable, "-m", "tickflow.cli"]
    subprocess.run([*tickflow, "demo", "up"], check=True)
    port = settings.monitoring.dashboard_port
    readings: list[dict[str, Any]] = []
    try:
        time.sleep(args.settle_s)
        started = time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            r = reading(dashboard_state(port), started)
            readings.append(r)
            print(
                f"  {r['t_s']:6.1f} s  LIVE {r['live']}/{r['books']}  lag {r['consumer_lag_ms']} ms"
                f"  receive->Redis P50 {r['redis_p50_ms_max']} P99 {r['redis_p99_ms_max']} ms"
                f"  (worst exchange)  {r['frames_per_s']} frames/s",
                flush=True,
            )
            time.sleep(args.every_s)
    finally:
        if not args.keep:
            subprocess.run([*tickflow, "demo", "down"], check=False)
    lags = [r["consumer_lag_ms"] for r in readings if r["consumer_lag_ms"] is not None]
    p99s = [r["redis_p99_ms_max"] for r in readings if r["redis_p99_ms_max"] is not None]
    all_live = bool(readings) and all(r["live"] == r["books"] > 0 for r in readings)
    rates = [r["frames_per_s"] or 0.0 for r in readings]
    verdict = {
        "all_books_live_every_reading": all_live,
        "consumer_lag_ms_max": max(lags) if lags else None,
        "redis_p99_ms_max": max(p99s) if p99s else None,
        "frames_per_s_mean": round(sum(rates) / len(rates), 1) if rates else None,
    }
    lag_ok = bool(lags) and max(lags) < LAG_LIMIT_MS
    ok = all_live and lag_ok and bool(p99s) and max(p99s) < P99_LIMIT_MS
    verdict["met"] = ok
    print(f"  verdict: {verdict}")
    path = write_results(
        "demo_check",
        {
            "command": "make run (tickflow demo up), read from the dashboard's /api/state",
            "minutes": args.minutes,
            "settle_s": args.settle_s,
            "limits": {"consumer_lag_ms": LAG_LIMIT_MS, "redis_p99_ms": P99_LIMIT_MS},
            "verdict": verdict,
            "readings": readings,
        },
    )
    print(f"written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
