"""Verify: the pipeline's correctness checks on a fresh simulated run with faults.

    python -m bench.verify [--seconds 60] [--rate 10] [--fault-every 1.5] [--model-updates N]

Starts a slice (bench/slice.py: simulator, the Binance, Coinbase and Kraken connectors and the
Flink job on the local stack, with their own topics, key prefix and database), waits until
every book is LIVE, runs traffic for ``--seconds`` while injecting faults per exchange (drop,
reorder, duplicate on the book channel, disconnect, and on Kraken wrong checksums), then
pauses the simulator and checks:
- books_equal_truth: every book in Redis (every symbol of every exchange) is LIVE and its top N
  levels equal the simulator's true book, exact decimals (waiting up to --settle-timeout for
  the pipeline to drain);
- backwards_versions: no book version on the Redis book-updates channel ever went backwards;
- Kraken checksums: the run's raw Kafka topic is replayed through the job's own core
  (``jobs.offline.CoreRun``: the compiled core the Flink operator calls, deterministic in its
  input), and every checksum mismatch it reports (its resync request names the exchange's
  checksum and the local one) is classified. A mismatch whose exchange checksum is the local
  one xor 1 is an injected checksum fault (that is how the simulator corrupts it); one on a
  Kraken book after a drop or reorder injected on it is explained by that fault (one mismatch
  per fault); any other is unexpected. replay_books_equal_redis checks that the replay ends
  where the job did;
- optionally (--model-updates, default 1,000,000) the simulator's pure Kraken model through
  the core, as tests/unit/test_kraken_checksums.py does on fewer updates.
Then the analytics (tickflow/analytics_checks.py), after a phase of ``--analytics-seconds`` in
which every trade frame is held back by up to ``--jitter-ms`` (so trades arrive after later
book updates and out of order) and a few by more than the 5 s bound:
- trades_matched / matching_errors / matching_missing: every trade of that phase against the
  simulator's record of the book state it executed against;
- nbbo_checks / nbbo_mismatches: every NBBO row of the run recomputed by brute force;
- window_rows_compared / window_mismatches: every bar of the run against the batch
  recomputation in ClickHouse;
- late_events: the late-data table (at least the trades held back beyond the bound).
Writes bench/results/verify.json and prints it; exit status 0 only if every check holds.
The slice removes its topics, consumer group, Redis keys and database and cancels its job.
Needs the local stack: `tickflow stack up` (`make verify` does that).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.slice import (
    BookUpdates,
    equals_truth,
    levels,
    read_topic,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
    with_simulator_overlay,
)
from jobs.offline import CoreRun
from jobs.sinks.book_reader import read_book
from schemas.codec import decode_envelope
from schemas.writers import registry_writer_schemas
from stack import manager
from tickflow.analytics_checks import (
    instruments,
    late_events,
    matching_check,
    nbbo_check,
    wait_stored,
    windows_check,
)
from tickflow.config import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "verify.json"
EXCHANGES = ("binance", "coinbase", "kraken")
# each exchange cycles through its faults; Kraken has no sequence numbers: its checksum is the
# only continuity check, so it also gets checksum faults (a right book, a wrong checksum)
FAULTS = {
    "binance": ("drop", "reorder", "duplicate", "disconnect"),
    "coinbase": ("drop", "reorder", "duplicate", "disconnect"),
    "kraken": ("checksum", "drop", "reorder", "checksum", "duplicate", "disconnect"),
}
GAP_FAULTS = ("drop", "reorder")  # break a book's continuity
BOOK_CHANNEL = "depth"  # the simulator's channel name for book frames on every venue


@dataclasses.dataclass
class Fault:
    at: float  # wall time (s) of the injection request
    exchange: str
    kind: str
    symbol: str | None  # None: the whole connection (disconnect)


# --- faults ---------------------------------------------------------------------------------


def symbols_of(settings: Settings, exchange: str) -> list[str]:
    return list(getattr(settings.exchanges, exchange).symbols)


def fault_plan(settings: Settings, rng: random.Random) -> list[tuple[str, str, str | None]]:
    """One cycle over every exchange's faults, interleaved: (exchange, kind, symbol)."""
    rounds = max(len(kinds) for kinds in FAULTS.values())
    plan: list[tuple[str, str, str | None]] = []
    for i in range(rounds):
        for exchange in EXCHANGES:
            kinds = FAULTS[exchange]
            if i < len(kinds):
                kind = kinds[i]
                symbols = symbols_of(settings, exchange)
                plan.append((exchange, kind, None if kind == "disconnect" else rng.choice(symbols)))
    return plan


def inject(settings: Settings, exchange: str, kind: str, symbol: str | None, abort: bool) -> None:
    if kind == "disconnect":
        sim_post(settings, f"faults/disconnect?exchange={exchange}"
                           f"&mode={'abort' if abort else 'close'}")  # fmt: skip
    else:
        sim_post(settings, f"faults/{kind}?exchange={exchange}&symbol={symbol}"
                           f"&channel={BOOK_CHANNEL}&count=1")  # fmt: skip


def run_faults(settings: Settings, seconds: float, every: float, rng: random.Random) -> list[Fault]:
    """Inject faults every ``every`` s for ``seconds`` s (the plan repeats, new symbols)."""
    faults: list[Fault] = []
    start = time.monotonic()
    plan: list[tuple[str, str, str | None]] = []
    while time.monotonic() - start < seconds:
        if not plan:
            plan = fault_plan(settings, rng)
        exchange, kind, symbol = plan.pop(0)
        at = time.time()
        inject(settings, exchange, kind, symbol, abort=len(faults) % 2 == 0)
        faults.append(Fault(at, exchange, kind, symbol))
        time.sleep(max(0.0, min(every, seconds - (time.monotonic() - start))))
    return faults


# --- the end state --------------------------------------------------------------------------


def is_live(settings: Settings, exchange: str, symbol: str) -> bool:
    book = read_book(settings.redis, exchange, symbol)
    return book is not None and book.status == "LIVE"


def all_books(settings: Settings) -> list[tuple[str, str]]:
    return [(ex, s) for ex in EXCHANGES for s in symbols_of(settings, ex)]


def compare_books(settings: Settings, timeout: float) -> tuple[int, list[dict[str, Any]]]:
    """Full passes over every book until one finds them all equal to the truth (or the
    deadline): how many the last pass found equal, and what the others looked like."""
    books = all_books(settings)
    deadline = time.monotonic() + timeout
    while True:
        unequal = [(ex, s) for ex, s in books if equals_truth(settings, ex, s) is None]
        if not unequal or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    details = []
    for ex, s in unequal:
        book = read_book(settings.redis, ex, s)
        truth = sim_get(settings, f"{ex}/book?symbol={s}")
        n = settings.book.top_n
        details.append({
            "book": f"{ex}:{s}",
            "status": book.status if book else None,
            "reason": book.reason if book else None,
            "redis_top": [book.bids[:1], book.asks[:1]] if book else None,
            "truth_top": [truth["bids"][:1], truth["asks"][:1]],
            "levels_differ": None if book is None else (
                levels(book.bids, n) != levels(truth["bids"], n),
                levels(book.asks, n) != levels(truth["asks"], n),
            ),
        })  # fmt: skip
    return len(books) - len(unequal), details


def resyncs_seen(updates: BookUpdates) -> dict[str, int]:
    """Per exchange: how often a book went from LIVE to RESYNCING (the book-updates channel)."""
    seen: Counter[str] = Counter()
    for book, trail in updates.statuses.items():
        if "LIVE" in trail:
            after = trail[trail.index("LIVE") :]
            seen[book.split(":", 1)[0]] += after.count("RESYNCING")
    return {ex: seen[ex] for ex in EXCHANGES}


# --- Kraken checksums, replayed through the job's core -------------------------------------

BookId = tuple[str, str]  # (exchange, symbol)
# a resync request's reason on a checksum mismatch (jobs/native/src/book/kraken.rs)
MISMATCH = re.compile(r"checksum mismatch.*exchange (\d+), local (\d+)")
# the guarded book write's ARGV (jobs/sinks/redis_books.py): seq, status, reason, bids, asks
SEQ, STATUS, BIDS, ASKS = 0, 1, 3, 4


@dataclasses.dataclass
class ChecksumAudit:
    """The Kraken book frames the core verified, and the mismatches it reported."""

    checked: int = 0  # Kraken book frames replayed (each carries its book's checksum)
    snapshots_checked: int = 0
    # (symbol, request time s, exchange's checksum, local checksum)
    mismatches: list[tuple[str, float, int, int]] = dataclasses.field(default_factory=list)


def replay(settings: Settings) -> dict[str, Any]:
    """The run's raw topic through the job's core, each frame in its own bundle (a resync
    request then carries its frame's time)."""
    values = [v for _, v in read_topic(settings, settings.kafka.raw_topic)]
    writers = registry_writer_schemas(settings.registry)
    envelopes = [decode_envelope(v, writers) for v in values]
    run = CoreRun(settings, bundle_frames=1)
    run.feed((v, e.receive_time_ns // 1_000_000) for v, e in zip(values, envelopes, strict=True))
    audit = ChecksumAudit()
    for env in envelopes:
        if env.exchange == "kraken" and env.channel == "depth":
            audit.checked += 1
            audit.snapshots_checked += b'"type":"snapshot"' in env.payload
    resyncs: Counter[str] = Counter()
    for record in run.records.get("control", []):
        request = json.loads(record)
        resyncs[request["exchange"]] += 1
        mismatch = MISMATCH.search(request["reason"])
        if request["exchange"] == "kraken" and mismatch:
            audit.mismatches.append((request["symbol"], request["requested_at_ms"] / 1e3,
                                     int(mismatch[1]), int(mismatch[2])))  # fmt: skip
    book_prefix = f"{settings.redis.key_prefix}:book:"
    views = {
        tuple(key.removeprefix(book_prefix).split(":", 1)): args
        for key, args in run.redis.items()
        if key.startswith(book_prefix)
    }
    return {
        "envelopes": len(envelopes),
        "parse_errors": len(run.records.get("deadletter", [])),  # dead-lettered by the job too
        "resync_requests": {ex: resyncs[ex] for ex in EXCHANGES},
        "audit": audit,
        "views": views,
    }


def classify_mismatches(
    mismatches: list[tuple[str, float, int, int]], faults: list[Fault]
) -> dict[str, int]:
    """Injected checksum faults (exchange's = local xor 1, the simulator's corruption), those
    after a drop/reorder injected on that Kraken book (each fault explains one), the rest."""
    pending = sorted(
        (f for f in faults if f.exchange == "kraken" and f.kind in GAP_FAULTS), key=lambda f: f.at
    )
    counts = Counter[str]()
    for symbol, at, expected, local in sorted(mismatches, key=lambda m: m[1]):
        if expected ^ 1 == local:
            counts["injected_checksum"] += 1
            continue
        cause = next((f for f in pending if f.symbol == symbol and f.at - 0.5 <= at), None)
        if cause is not None:
            pending.remove(cause)
            counts["after_gap_fault"] += 1
        else:
            counts["unexpected"] += 1
    return {k: counts[k] for k in ("injected_checksum", "after_gap_fault", "unexpected")}


def replay_equals_redis(settings: Settings, views: dict[BookId, list[str]]) -> int:
    """Books whose replayed end state (status, seq, top N) is what the job left in Redis."""
    equal = 0
    for exchange, symbol in all_books(settings):
        view, book = views.get((exchange, symbol)), read_book(settings.redis, exchange, symbol)
        if view is None or book is None:
            continue
        status = "LIVE" if book.status == "STALE" else book.status  # stale: a timer's verdict
        n = settings.book.top_n
        equal += (
            view[STATUS] == status
            and int(view[SEQ]) == book.seq
            and levels(json.loads(view[BIDS]), n) == levels(book.bids, n)
            and levels(json.loads(view[ASKS]), n) == levels(book.asks, n)
        )
    return equal


# --- the simulator's Kraken model through the core ------------------------------------------


def kraken_model(updates: int) -> dict[str, Any]:
    """``updates`` simulated Kraken updates through the core, spread over 10 pairs (every
    precision) at depths 10 and 25, as tests/unit/test_kraken_checksums.py does."""
    from simulator.kraken import KRAKEN_PAIRS
    from tests.unit.test_kraken_checksums import replay as replay_model

    pairs = list(KRAKEN_PAIRS)[:10]
    started = time.perf_counter()
    results = [
        replay_model(pair, (10, 25)[i % 2], updates // len(pairs)) for i, pair in enumerate(pairs)
    ]
    return {
        "kraken_model_updates_checked": sum(r[0] for r in results),
        "kraken_model_mismatches": sum(r[1] for r in results),
        "kraken_model_top10_disagreements": sum(r[2] for r in results),
        "kraken_model_seconds": round(time.perf_counter() - started, 1),
    }


# --- analytics --------------------------------------------------------------------------------


def analytics_phase(settings: Settings, args: argparse.Namespace) -> int:
    """Traffic with every trade frame held back by up to --jitter-ms, and --late-trades of
    them by more than the bound. Returns how many trade frames were held back that long."""
    for exchange in EXCHANGES:
        sim_post(settings, f"faults/delay?exchange={exchange}&count=0"
                           f"&duration_s={args.analytics_seconds}"
                           f"&max_ms={args.jitter_ms}")  # fmt: skip
    time.sleep(args.analytics_seconds / 4)
    bound = settings.flink.watermark_out_of_orderness_ms
    sim_post(settings, f"faults/delay?exchange=binance&count={args.late_trades}"
                       f"&min_ms={bound + 4000}&max_ms={bound + 5000}")  # fmt: skip
    time.sleep(args.analytics_seconds * 3 / 4)
    return int(args.late_trades)


def check_analytics(
    settings: Settings, from_ms: int, to_ms: int, live_at_ms: int, timeout: float
) -> dict[str, Any]:
    """Matching over the jittered phase (waiting for the watermark to pass it), then NBBO,
    bars (the whole run, from when every book was LIVE) and late events."""
    deadline = time.monotonic() + timeout
    wait_stored(settings)
    while True:
        matching = matching_check(settings, from_ms, to_ms)
        if matching["matching_missing"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    return {
        **matching,
        **nbbo_check(settings),
        **windows_check(settings, instruments(settings, EXCHANGES), live_at_ms, to_ms),
        **late_events(settings),
    }


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {}
    with start_slice(logs, exchanges=EXCHANGES, rate_per_symbol=args.rate) as running:
        settings = running.settings
        updates = BookUpdates(settings)
        try:
            for exchange, symbol in all_books(settings):
                wait_for(f"{exchange}:{symbol} LIVE",
                         functools.partial(is_live, settings, exchange, symbol), 180)  # fmt: skip
            live_s = time.monotonic() - started
            live_at_ms = int(time.time() * 1000)
            traffic_start = time.monotonic()
            faults = run_faults(
                settings, max(0.0, args.seconds - args.quiet), args.fault_every,
                random.Random(args.seed),
            )  # fmt: skip
            time.sleep(max(0.0, args.seconds - (time.monotonic() - traffic_start)))
            analytics_from_ms = int(time.time() * 1000) + 1000
            late_injected = analytics_phase(settings, args)
            sim_post(settings, "pause")
            paused_at = time.monotonic()
            analytics_to_ms = int(time.time() * 1000) - 8000
            not_applied = sim_get(settings, "faults")["frames"]
            sim_post(settings, "faults/clear")
            applied = sim_get(settings, "status")["faults_injected"]
            equal, unequal = compare_books(settings, args.settle_timeout)
            settled_s = time.monotonic() - paused_at
            analytics = check_analytics(
                settings, analytics_from_ms, analytics_to_ms, live_at_ms, args.settle_timeout
            )
            analytics["late_trades_injected"] = late_injected
        finally:
            updates.close()
        replayed = replay(settings)
        audit: ChecksumAudit = replayed["audit"]
        causes = classify_mismatches(audit.mismatches, faults)
        result = {
            "seconds": args.seconds,
            "rate_per_symbol": args.rate,
            "books_compared": len(all_books(settings)),
            "books_equal_truth": equal,
            "books_not_equal": unequal,
            "backwards_versions": len(updates.backwards),
            "backwards_examples": updates.backwards[:10],
            "book_writes_observed": updates.writes,
            "monitor_error": None if updates.error is None else repr(updates.error),
            "kraken_checksums_checked": audit.checked,
            "kraken_snapshot_checksums_checked": audit.snapshots_checked,
            "kraken_checksum_mismatches": len(audit.mismatches),
            "kraken_checksum_mismatches_injected": causes["injected_checksum"],
            "kraken_checksum_mismatches_after_gap_fault": causes["after_gap_fault"],
            "kraken_checksum_mismatches_unexpected": causes["unexpected"],
            "kraken_checksum_faults_applied": applied.get("checksum", 0),
            "faults_requested": dict(Counter(f"{f.exchange}:{f.kind}" for f in faults)),
            "faults_applied": applied,  # frames the simulator's fault rules hit, by kind
            "faults_not_applied": len(not_applied),  # no matching frame before the pause
            "resyncs_seen": resyncs_seen(updates),
            "resync_requests": replayed["resync_requests"],
            "raw_envelopes_replayed": replayed["envelopes"],
            "replay_parse_errors": replayed["parse_errors"],
            "replay_books_equal_redis": replay_equals_redis(settings, replayed["views"]),
            **analytics,
            "startup_seconds": round(live_s, 1),
            "settle_seconds": round(settled_s, 1),
        }
    if args.model_updates > 0:
        result.update(kraken_model(args.model_updates))
    result["elapsed_seconds"] = round(time.monotonic() - started, 1)
    return result


def checks(result: dict[str, Any]) -> dict[str, bool]:
    out = {
        "books_equal_truth": result["books_equal_truth"] == result["books_compared"] > 0,
        "no_backwards_versions": result["backwards_versions"] == 0
        and result["monitor_error"] is None
        and result["book_writes_observed"] > 0,
        "kraken_checksums_checked": result["kraken_checksums_checked"] > 0,
        "no_unexpected_kraken_mismatches": result["kraken_checksum_mismatches_unexpected"] == 0,
        # a corrupted checksum is found unless it reached a book that was not LIVE (ignored)
        "injected_checksum_faults_detected": (
            result["kraken_checksum_faults_applied"] == 0
            or result["kraken_checksum_mismatches_injected"] > 0
        )
        and result["kraken_checksum_mismatches_injected"]
        <= result["kraken_checksum_faults_applied"],
        "replay_equals_redis": result["replay_books_equal_redis"] == result["books_compared"],
        "every_trade_matched_right": result["trades_matched"] > 0
        and result["matching_errors"] == 0
        and result["matching_missing"] == 0,
        "nbbo_equals_brute_force": result["nbbo_checks"] > 0 and result["nbbo_mismatches"] == 0,
        "bars_equal_batch": result["window_rows_compared"] > 0
        and result["window_mismatches"] == 0,
        "late_events_stored": result["late_events_by_kind"].get("trade", 0)
        >= result["late_trades_injected"] > 0,
    }
    if "kraken_model_updates_checked" in result:
        out["kraken_model_clean"] = (
            result["kraken_model_updates_checked"] > 0
            and result["kraken_model_mismatches"] == 0
            and result["kraken_model_top10_disagreements"] == 0
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic with faults")
    parser.add_argument("--rate", type=float, default=10.0, help="market steps/s per symbol")
    parser.add_argument("--fault-every", type=float, default=1.5, help="seconds between faults")
    parser.add_argument("--quiet", type=float, default=10.0,
                        help="fault-free seconds at the end of the traffic")  # fmt: skip
    parser.add_argument("--settle-timeout", type=float, default=120.0,
                        help="seconds the books may take to reach the truth after the pause")
    parser.add_argument("--model-updates", type=int, default=1_000_000,
                        help="simulated Kraken updates through the engine (0: skip)")
    parser.add_argument("--analytics-seconds", type=float, default=30.0,
                        help="traffic with jittered trade arrivals")  # fmt: skip
    parser.add_argument("--jitter-ms", type=int, default=4000,
                        help="trade frames held back by up to this")  # fmt: skip
    parser.add_argument("--late-trades", type=int, default=3,
                        help="trade frames held back beyond the watermark bound")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    # the slice's processes and the PyFlink client read the configuration from the environment
    os.environ["TICKFLOW_CONFIG"] = with_simulator_overlay(os.environ.get("TICKFLOW_CONFIG", ""))
    if not manager.stack_answers(load_settings()):
        print("bench.verify: the local stack does not answer; start it: tickflow stack up",
              file=sys.stderr)  # fmt: skip
        return 2
    logs = Path(tempfile.mkdtemp(prefix="tickflow-verify-"))
    result = run(args, logs)
    result["checks"] = checks(result)
    result["ok"] = all(result["checks"].values())
    if result["ok"]:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        result["logs"] = str(logs)  # the simulator's and connectors' output, kept to read
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    print(f"written to {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
