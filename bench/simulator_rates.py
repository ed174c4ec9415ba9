"""The highest rate the simulator can produce, per venue, measured in-process (no servers):
each venue's markets are stepped as fast as one core allows, on a simulated clock, and every
frame is rendered for one subscriber of all its streams, as the server does before sending.

    nice -n 10 python -m bench.simulator_rates [--seconds 10]

What it measures is generation: the server adds WebSocket framing and socket writes per
connection on the same core, and serves all venues from one process, so the rates a running
simulator sustains are below these (``combined`` is all three venues in one loop). The
configuration's symbols and depths are used (``simulator`` section). Writes
bench/results/simulator_rates.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from bench.stats import write_results
from simulator.market import LatentMarket
from simulator.market_check import build_venues
from simulator.venue import Subscription
from tickflow.config import SimulatorConfig, load_settings

START_MS = 1_767_225_600_000


def subscribe_all(venue: Any) -> Subscription:
    """One connection subscribed to every book and trade stream of the venue."""
    symbols = list(venue.symbols)
    if venue.name == "binance":
        streams = "/".join(f"{s.lower()}@{k}" for s in symbols for k in ("depth@100ms", "trade"))
        sub: Subscription = venue.ws_subscription("/stream", {"streams": [streams]})
        return sub
    sub = venue.ws_subscription("/", {})
    if venue.name == "coinbase":
        for channel in ("level2", "market_trades"):
            venue.ws_message(sub, json.dumps(
                {"type": "subscribe", "product_ids": symbols, "channel": channel}))
    else:
        for channel in ("book", "trade"):
            params: dict[str, Any] = {"channel": channel, "symbol": symbols}
            if channel == "book":
                params["depth"] = 25
            venue.ws_message(sub, json.dumps({"method": "subscribe", "params": params}))
    return sub


def measure(config: SimulatorConfig, names: set[str], seconds: float) -> dict[str, Any]:
    """Step the named venues round-robin for ``seconds`` of CPU time; rates achieved."""
    venues = [v for v in build_venues(config, LatentMarket(config.seed)) if v.name in names]
    subs = {v.name: subscribe_all(v) for v in venues}
    pairs = [(v, s) for v in venues for s in v.symbols]
    steps = frames = payload_bytes = 0
    now_ms = START_MS
    started = time.process_time()
    deadline = started + seconds
    while time.process_time() < deadline:
        now_ms += 2  # the pacer's fastest pace: one step per 2 ms per symbol
        for venue, symbol in pairs:
            sub = subs[venue.name]
            for frame in venue.step(symbol, now_ms):
                payload = sub.render(frame)
                if payload is not None:
                    payload = sub.stamp(payload)
                    frames += 1
                    payload_bytes += len(payload)
            steps += 1
    cpu_s = time.process_time() - started
    return {
        "venues": sorted(names),
        "symbols": len(pairs),
        "steps": steps,
        "cpu_s": round(cpu_s, 3),
        "steps_per_s": round(steps / cpu_s),
        "steps_per_s_per_symbol": round(steps / cpu_s / len(pairs), 1),
        "frames_per_s": round(frames / cpu_s),
        "mb_per_s": round(payload_bytes / cpu_s / 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU seconds per venue")
    args = parser.parse_args()
    config = load_settings().simulator
    per_venue = {}
    for name in ("binance", "coinbase", "kraken"):
        per_venue[name] = measure(config, {name}, args.seconds)
        print(name, per_venue[name], flush=True)
    combined = measure(config, {"binance", "coinbase", "kraken"}, args.seconds)
    print("combined", combined, flush=True)
    result = {
        "what": "simulator frame generation ceiling, in-process, one core (bench.simulator_rates)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {
            "binance_symbols": list(config.symbols),
            "coinbase_products": list(config.coinbase_products),
            "kraken_symbols": list(config.kraken_symbols),
            "depth_levels": config.depth_levels,
            "coinbase_depth_levels": config.coinbase_depth_levels,
            "demo_rate_per_symbol": {n: config.rate(n) for n in per_venue},
        },
        "per_venue": per_venue,
        "combined": combined,
    }
    write_results("simulator_rates", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
