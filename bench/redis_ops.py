"""Redis benchmark: live book writes, top-N reads and NBBO updates with the project's own code.

    python -m bench.redis_ops [--writes 20000] [--books 30] [--reads 5000]

The writes are the compiled core's (``tickflow_native.NativeStream``, configured as the job
is): realistic book frames (BTC-like prices, 0.01 tick, 8-decimal sizes, the book moving by a
few ticks between frames; each a full top-``book.top_n`` snapshot with the next update id),
round-robin over ``--books`` books, three books (venues) per instrument.

1. Book update: one guarded book write (``RedisBatch`` with one write: one EVALSHA of the
   version-guarded Lua script, HSET of the levels as JSON, SADD, PUBLISH), a round trip each,
   every write accepted; then the first writes again, which the version guard refuses.
2. Top-N read: ``jobs.sinks.book_reader.read_book`` as the CLI calls it (a new client, hence a
   new connection, per call) and the same HGETALL + decode on one long-lived client (what a
   service reading books in a loop would do).
3. NBBO update: the core taking one frame of a venue (its book, then the instrument's NBBO
   over its three venues) and the NBBO's guarded write, timed together and apart.

Every call is timed on its own (``perf_counter_ns``) after an unreported warm-up; P50 / P99 /
P99.9 in microseconds. The whole run is repeated ``--repeats`` times; each target's figure is
the median of the runs' P99s. The stack's Redis is shared: everything is written under a unique key
prefix that is deleted at the end. Results: bench/results/redis_ops.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import redis

from bench.stats import (
    fmt_summary,
    histogram,
    machine,
    median,
    summarize,
    target_entry,
    write_results,
)
from jobs.operators import native_stream
from jobs.sinks import book_reader
from jobs.sinks.redis_books import RedisBatch, book_key, redis_client
from schemas.bundles import frame_bundle
from schemas.codec import RawEnvelope, encode_envelope
from tickflow.config import RedisConfig, Settings, load_settings

NAME = "redis_ops"
DEFAULT_WRITES = 20_000
DEFAULT_BOOKS = 30
DEFAULT_READS = 5_000
DEFAULT_REPEATS = 3
WARMUP_CALLS = 500
SEED = 7
MID_CENTS = 6_701_234  # BTC-like mid, in cents (0.01 tick)
LEVEL_GAP_TICKS = (1, 4)  # ticks between adjacent levels: random in this range
MOVE_TICKS = 3  # the book's mid moves by up to this many ticks between updates
SIZE_SATOSHI = (10_000, 500_000_000)  # sizes 0.0001 .. 5 BTC, 8 decimals
VENUES_PER_INSTRUMENT = 3
RETRIES = 5  # the shared stack may be briefly down (failure tests): retry a phase this often
RETRY_WAIT_S = 5.0
TARGET_BOOK_MS = 5.0
TARGET_NBBO_MS = 2.0

T = TypeVar("T")


def levels(rng: random.Random, best: int, side: int, n: int) -> list[list[str]]:
    """``n`` levels from ``best`` (cents) away from the touch (side -1: bids, +1: asks)."""
    out = []
    price = best
    for _ in range(n):
        size = rng.randint(*SIZE_SATOSHI)
        out.append([str(Decimal(price).scaleb(-2)), str(Decimal(size).scaleb(-8))])
        price += side * rng.randint(*LEVEL_GAP_TICKS)
    return out


@dataclasses.dataclass(frozen=True)
class Frame:
    """One book frame: its operator key (the instrument), the encoded envelope, its time."""

    instrument: str
    value: bytes
    time_ms: int


def book_frames(books: int, count: int, top_n: int, seed: int = SEED) -> list[Frame]:
    """``count`` Binance depth snapshots, round-robin over ``books`` books (``SYM<i>``, three
    per instrument ``INST<j>-USD``), each book's mid a random walk and its update ids
    increasing."""
    rng = random.Random(seed)
    mids = [MID_CENTS] * books
    update_ids = [1_000_000] * books
    t0_ms = 1_795_996_800_000
    out = []
    for k in range(count):
        b = k % books
        mids[b] += rng.randint(-MOVE_TICKS, MOVE_TICKS)
        update_ids[b] += 1
        body = {
            "lastUpdateId": update_ids[b],
            "bids": levels(rng, mids[b] - 1, -1, top_n),
            "asks": levels(rng, mids[b] + 1, 1, top_n),
        }
        instrument = f"INST{b // VENUES_PER_INSTRUMENT}-USD"
        env = RawEnvelope(instrument, "binance", f"SYM{b}", "snapshot", (t0_ms + k) * 1_000_000,
                          "bench", k, json.dumps(body).encode())  # fmt: skip
        out.append(Frame(instrument, encode_envelope(env), t0_ms + k))
    return out


Write = tuple[list[str], list[bytes]]  # a guarded write's KEYS and ARGV


class Core:
    """The compiled core as the job configures it, fed one frame per call."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.stream = native_stream(settings.book, settings.analytics, prefix)

    def process(self, frame: Frame) -> tuple[list[Write], list[Write]]:
        """The frame's (book writes, NBBO writes)."""
        bundle = frame_bundle([(frame.value, frame.time_ms)])
        self.stream.process_bundle(frame.instrument, bundle, 0, frame.time_ms)
        self.stream.take_blob()
        books: list[Write] = []
        nbbos: list[Write] = []
        for is_nbbo, keys, args in self.stream.take_redis(time.time_ns()):
            (nbbos if is_nbbo else books).append((keys, args))
        return books, nbbos


def book_writes(settings: Settings, prefix: str, frames: list[Frame]) -> list[Write]:
    """The book writes the core makes for ``frames``, one per frame."""
    core = Core(settings, prefix)
    writes = []
    for frame in frames:
        books, _ = core.process(frame)
        writes.extend(books)
    if len(writes) != len(frames):
        raise RuntimeError(f"{len(writes)} book writes for {len(frames)} frames")
    return writes


def timed(fn: Callable[[T], object], items: list[T]) -> list[float]:
    """Microseconds per ``fn(item)``, after ``WARMUP_CALLS`` untimed calls (items reused)."""
    for item in items[:WARMUP_CALLS]:
        fn(item)
    clock = time.perf_counter_ns
    out = []
    for item in items:
        t0 = clock()
        fn(item)
        out.append((clock() - t0) / 1000)
    return out


def retrying(what: str, fn: Callable[[], T]) -> T:
    """Run a measurement phase again when the shared Redis was briefly unavailable."""
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if attempt == RETRIES:
                raise
            print(f"  {what}: Redis unavailable ({exc}); retrying in {RETRY_WAIT_S:.0f} s")
            time.sleep(RETRY_WAIT_S)
    raise AssertionError("unreachable")


def delete_prefix(config: RedisConfig) -> int:
    r = redis_client(config)
    try:
        keys = list(r.scan_iter(f"{config.key_prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
        return len(keys)
    finally:
        r.close()


def run(settings: Settings, writes: int, books: int, reads: int, command: str) -> dict[str, Any]:
    top_n = settings.book.top_n
    config = dataclasses.replace(
        settings.redis, key_prefix=f"tfbench-redis-{uuid.uuid4().hex[:8]}"
    )
    frames = book_frames(books, writes, top_n)
    book_updates = book_writes(settings, config.key_prefix, frames)
    _, first_args = book_updates[0]
    info = redis_client(config).info("server")
    result: dict[str, Any] = {
        "command": command,
        "conditions": {
            "writes": writes,
            "books": books,
            "reads": reads,
            "top_n": top_n,
            "levels_json_bytes": len(first_args[3]) + len(first_args[4]),
            "key_prefix": config.key_prefix,
            "redis_server": info.get("redis_version"),
            "redis_py": redis.__version__,
            "connection": f"TCP {config.host}:{config.port}, one client, no pipelining",
            "machine": machine(),
        },
    }
    client = redis_client(config)
    batch = RedisBatch(client)

    def write_one(is_nbbo: bool, write: Write) -> bool:
        batch.add_write(is_nbbo, *write)
        (accepted,) = batch.flush()
        return accepted

    try:
        book_us = retrying(
            "book writes", lambda: timed(lambda w: write_one(False, w), book_updates)
        )
        # a replay of older versions (as after a Flink restore): the guard refuses every one
        accepted = sum(write_one(False, w) for w in book_updates[:books])
        result["book_write"] = {
            "us": summarize(book_us),
            "older_replayed_accepted": accepted,
            "note": "one guarded write of the core's (EVALSHA, version guard, HSET top-N, "
            "SADD, PUBLISH), a round trip each",
        }
        print(f"book write ({top_n} levels a side): {fmt_summary(summarize(book_us), 'us')}")

        targets = [("binance", f"SYM{b}") for b in range(min(books, len(frames)))]
        reads_list = [targets[i % len(targets)] for i in range(reads)]
        cli_us = retrying(
            "reads",
            lambda: timed(lambda t: book_reader.read_book(config, t[0], t[1]), reads_list),
        )
        reader = redis_client(config, decode_responses=True)
        keys = [(ex, sym, book_key(config.key_prefix, ex, sym)) for ex, sym in reads_list]

        def read_long_lived(item: tuple[str, str, str]) -> book_reader.StoredBook:
            return book_reader._decode(item[0], item[1], reader.hgetall(item[2]))

        sample = read_long_lived(keys[0])
        if len(sample.bids) != top_n or len(sample.asks) != top_n:
            raise RuntimeError(f"read back {len(sample.bids)}/{len(sample.asks)} levels")
        long_us = retrying("reads", lambda: timed(read_long_lived, keys))
        reader.close()
        result["top_n_read"] = {
            "read_book_us": summarize(cli_us),
            "long_lived_client_us": summarize(long_us),
            "note": "read_book opens a new connection per call (CLI use); the long-lived "
            "client does the same HGETALL + decode on one connection",
        }
        print(f"top-{top_n} read, read_book: {fmt_summary(summarize(cli_us), 'us')}")
        print(f"top-{top_n} read, long-lived client: {fmt_summary(summarize(long_us), 'us')}")

        # the NBBO: a fresh core per measurement, so each frame moves the books on; the
        # versions increase, so every write is accepted
        nbbo_prefix = dataclasses.replace(config, key_prefix=f"{config.key_prefix}-nbbo")
        compute = Core(settings, nbbo_prefix.key_prefix)
        compute_us = timed(compute.process, frames)
        timing = Core(settings, nbbo_prefix.key_prefix)
        nbbo_updates = [w for frame in frames for w in timing.process(frame)[1]]
        nbbo_write_us = retrying(
            "nbbo writes", lambda: timed(lambda w: write_one(True, w), nbbo_updates)
        )
        both = Core(settings, config.key_prefix)

        def process_and_write(frame: Frame) -> None:
            for write in both.process(frame)[1]:
                write_one(True, write)

        both_us = retrying("nbbo", lambda: timed(process_and_write, frames))
        result["nbbo"] = {
            "compute_and_write_us": summarize(both_us),
            "compute_us": summarize(compute_us),
            "write_us": summarize(nbbo_write_us),
            "venues_per_instrument": VENUES_PER_INSTRUMENT,
            "note": "the core taking one venue's frame (its book, then the NBBO over the "
            "instrument's venues) + the NBBO's guarded Redis write when the NBBO changed",
        }
        print(f"NBBO compute (core, one frame): {fmt_summary(summarize(compute_us), 'us')}")
        print(f"NBBO write: {fmt_summary(summarize(nbbo_write_us), 'us')}")
        print(f"NBBO compute + write: {fmt_summary(summarize(both_us), 'us')}")
        result["histograms"] = {
            "Redis book write, us": histogram(book_us),
            "Redis top-N read (long-lived client), us": histogram(long_us),
            "NBBO compute + Redis write, us": histogram(both_us),
        }
    finally:
        client.close()
        result["keys_deleted"] = delete_prefix(config) + delete_prefix(
            dataclasses.replace(config, key_prefix=f"{config.key_prefix}-nbbo")
        )
    m = result["conditions"]["machine"]
    common = {"cpus": m["cpus"], "load_1m": m["load_1m"], "redis": info.get("redis_version")}
    result["targets"] = {
        "book_update_p99": target_entry(
            round(result["book_write"]["us"]["p99"] / 1000, 3), "ms",
            what="P99 of one guarded book write to Redis (the round trip of one book update)",
            top_n=top_n, books=books, writes=writes,
            p50_ms=round(result["book_write"]["us"]["p50"] / 1000, 3),
            top_n_read_p99_ms=round(result["top_n_read"]["long_lived_client_us"]["p99"] / 1000, 3),
            top_n_read_cli_p99_ms=round(result["top_n_read"]["read_book_us"]["p99"] / 1000, 3),
            **common,
        ),
        "nbbo_p99": target_entry(
            round(result["nbbo"]["compute_and_write_us"]["p99"] / 1000, 3), "ms",
            what="P99 of the compiled core taking one venue's frame (book and NBBO over 3 "
            "venues) + the NBBO's Redis write",
            updates=writes,
            p50_ms=round(result["nbbo"]["compute_and_write_us"]["p50"] / 1000, 3),
            compute_p99_ms=round(result["nbbo"]["compute_us"]["p99"] / 1000, 4),
            **common,
        ),
    }
    return result


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run's details, with each target's figure the median over the runs (this
    machine is shared: one run's P99 can be another process's burst) and every run's value
    in its conditions."""
    result = dict(runs[-1])
    result["targets"] = {}
    for name, last in runs[-1]["targets"].items():
        values = [r["targets"][name]["measured"] for r in runs]
        conditions = {**last["conditions"], "repeats": len(runs), "every_run": values}
        result["targets"][name] = target_entry(median(values), last["unit"], **conditions)
    result["runs"] = [{k: r[k] for k in ("book_write", "top_n_read", "nbbo")} for r in runs]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.redis_ops", description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=DEFAULT_WRITES)
    parser.add_argument("--books", type=int, default=DEFAULT_BOOKS)
    parser.add_argument("--reads", type=int, default=DEFAULT_READS)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="whole runs; the targets take the median of their P99s")
    parser.add_argument("--out", type=Path, default=None)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    command = " ".join(["python -m bench.redis_ops", *raw])
    runs = []
    for r in range(args.repeats):
        print(f"run {r + 1}/{args.repeats}:", flush=True)
        runs.append(run(load_settings(), args.writes, args.books, args.reads, command))
    result = combine(runs)
    print(f"written to {write_results(NAME, result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
