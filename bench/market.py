"""Is the live demo one market? Samples the NBBOs and books the job writes to Redis, and the
simulator's fair value, for N minutes, then reports per instrument how often the NBBO was
crossed and locked, its longest crossed spell, the cross-venue mid differences (bps), the
trade-through rate (from ClickHouse's matched trades, when reachable) and the mean absolute
difference between the fair value and the NBBO mid (bps).

    python -m bench.market [--minutes 10] [--every-ms 200] [--no-clickhouse]

Run it beside a running demo (``make run``); it only reads: Redis keys under
``redis.key_prefix`` (``<p>:nbbos``, ``<p>:nbbo:<instrument>``, ``<p>:books``,
``<p>:book:<exchange>:<symbol>``), ``GET /_sim/fair`` of the simulator at
``simulator.host:port``, and ``matched_trades`` in ClickHouse. The measures are
``tickflow.market_quality`` (pure, unit-tested); the NBBO is measured as published and as
computed from the books' tops. Writes bench/results/market.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from bench.stats import write_results
from jobs.sinks.redis_books import redis_client
from tickflow.config import Settings, load_settings
from tickflow.instruments import nbbo_group
from tickflow.market_quality import Sample, quality, samples_from_redis, summary


def read_redis(client: Any, prefix: str) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    """(NBBO hashes by instrument, book hashes with their exchange and symbol), in one
    pipelined round trip after listing the keys."""
    nbbo_keys = sorted(client.smembers(f"{prefix}:nbbos"))
    book_keys = sorted(client.smembers(f"{prefix}:books"))
    pipe = client.pipeline(transaction=False)
    for key in [*nbbo_keys, *book_keys]:
        pipe.hgetall(key)
    hashes = pipe.execute()
    nbbos = {
        key.split(":nbbo:", 1)[1]: h
        for key, h in zip(nbbo_keys, hashes[: len(nbbo_keys)], strict=True) if h
    }
    books = []
    for key, h in zip(book_keys, hashes[len(nbbo_keys):], strict=True):
        if h:
            exchange, symbol = key.split(":book:", 1)[1].split(":", 1)
            books.append({**h, "exchange": exchange, "symbol": symbol})
    return nbbos, books


def read_fair(url: str) -> dict[str, str]:
    """The simulator's fair values (instrument -> decimal text); {} if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/_sim/fair", timeout=2) as reply:
            instruments: dict[str, str] = json.load(reply).get("instruments", {})
            return instruments
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def trade_throughs(settings: Settings, from_ms: int, to_ms: int) -> dict[str, Any]:
    """Per instrument, matched trades and how many traded through the NBBO (the job's own
    ``trade_through`` flag) in the window; {"error": ...} when ClickHouse is unreachable."""
    try:
        from clickhouse_driver import Client

        ch = settings.clickhouse
        client = Client(host=ch.host, port=ch.port, user=ch.user, password=ch.password,
                        database=ch.database, secure=ch.secure)
        rows = client.execute(
            "SELECT instrument, count(), sum(trade_through) FROM matched_trades FINAL "
            "WHERE trade_time_ms >= %(a)s AND trade_time_ms < %(b)s GROUP BY instrument "
            "ORDER BY instrument",
            {"a": from_ms, "b": to_ms},
        )
    except Exception as exc:  # any failure only leaves this measure out
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        instrument: {
            "trades": int(n),
            "trade_throughs": int(through),
            "trade_through_rate": round(int(through) / int(n), 6) if n else None,
        }
        for instrument, n, through in rows
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.market", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every-ms", type=int, default=200, help="sampling interval")
    parser.add_argument("--no-clickhouse", action="store_true", help="skip trade-throughs")
    args = parser.parse_args(argv)
    settings = load_settings()
    client = redis_client(settings.redis, decode_responses=True)
    sim_url = f"http://{settings.simulator.host}:{settings.simulator.port}"
    equivalents = settings.analytics.quote_equivalents

    def group(instrument: str) -> str:
        return nbbo_group(instrument, equivalents)

    published: list[Sample] = []
    from_books: list[Sample] = []
    started_ms = time.time_ns() // 1_000_000
    deadline = time.monotonic() + args.minutes * 60
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        now_ms = time.time_ns() // 1_000_000
        nbbos, books = read_redis(client, settings.redis.key_prefix)
        fair = read_fair(sim_url)
        published += samples_from_redis(now_ms, nbbos, books, fair, group, published=True)
        from_books += samples_from_redis(now_ms, nbbos, books, fair, group, published=False)
        next_at += args.every_ms / 1000
        time.sleep(max(0.0, next_at - time.monotonic()))
    ended_ms = time.time_ns() // 1_000_000
    per_instrument = quality(published)
    per_instrument_books = quality(from_books)
    result = {
        "what": "the live demo's NBBO and books sampled from Redis (bench.market)",
        "minutes": args.minutes,
        "every_ms": args.every_ms,
        "from_ms": started_ms,
        "to_ms": ended_ms,
        "fair_value_source": f"{sim_url}/_sim/fair",
        "summary": summary(per_instrument),
        "summary_from_books": summary(per_instrument_books),
        "instruments": per_instrument,
        "instruments_from_books": per_instrument_books,
        "trade_through": (
            {"skipped": True} if args.no_clickhouse
            else trade_throughs(settings, started_ms, ended_ms)
        ),
    }
    path = write_results("market", result)
    print(json.dumps(result["summary"], indent=1))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
