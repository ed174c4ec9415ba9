"""A book as of a time, rebuilt from the raw topic through the core (``jobs.book_at``), timed
for a book 10 minutes after its snapshot: the whole request, from locating the book's last
sync point in ClickHouse to its levels, as the API and ``tickflow book-at`` run it.

    python -m bench.book_at [--minutes 10] [--runs 5] [--mix binance|all]

The frames are generated as ``tickflow.generated`` does (10 books per exchange of the mix, 20
market steps per book per simulated second), preloaded into a private raw topic of the
namespace's Kafka and backfilled into a private ClickHouse database (its ``gaps`` rows place
each book's snapshot). Each run rebuilds the first book as of ``--minutes`` after its
snapshot, the frames of its partition read from Kafka from there. Writes
bench/results/book_at.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bench.book_pipeline import produce
from bench.stats import machine, target_entry, write_results
from jobs.backfill import partition_ranges, run_backfill_ranges
from jobs.book_at import book_at, last_interval
from jobs.frames import FrameBatch, KafkaFrames
from jobs.sinks.clickhouse import connect
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import GENERATED_STEPS_PER_S, MIXES, book_settings, generate
from tickflow.slice import _delete_kafka_topics


class Preloaded:
    """One partition's records held in memory (a ``FrameSource``): times the core alone."""

    def __init__(self, partitions: list[int], batches: list[FrameBatch]) -> None:
        self._partitions = partitions
        self.batches = batches

    def partitions(self) -> list[int]:
        return self._partitions

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        # the range read from Kafka, whatever is asked (so the data reaches the lookahead)
        return self.batches[0].offsets[0], self.batches[-1].offsets[-1] + 1

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        yield from self.batches


FRAMES_PER_STEP = 1.8  # measured: depth updates and trades


def private_settings(tag: str) -> Settings:
    with patched_environ({
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.bookat{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.bookat{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"bench_bookat_{tag}",
    }):  # fmt: skip
        return load_settings()


def run(minutes: float, runs: int, mix: str) -> dict[str, Any]:
    exchanges = MIXES[mix]
    settings = book_settings(private_settings(uuid.uuid4().hex[:8]), exchanges)
    books = [(ex, s) for ex in exchanges for s in getattr(settings.exchanges, ex).symbols]
    seconds = minutes * 60 + 120  # and a margin: the frames per step vary
    frames = int(len(books) * GENERATED_STEPS_PER_S * FRAMES_PER_STEP * seconds)
    source: KafkaFrames | None = None
    try:
        started = time.perf_counter()
        generated = generate(settings, exchanges, frames)
        envelopes = generated.envelopes
        span_s = (envelopes[-1].receive_time_ns - envelopes[0].receive_time_ns) / 1e9
        print(f"generated {len(envelopes)} frames of {len(books)} books, {span_s:.0f} s of "
              f"market, in {time.perf_counter() - started:.0f} s")  # fmt: skip
        ensure_topics(settings)
        produce(settings, settings.kafka.raw_topic, envelopes)
        backfill = run_backfill_ranges(
            settings, partition_ranges(settings, 0, 2**62), workers=1, log=lambda _: None
        )
        print(f"backfilled {backfill['frames']} frames in {backfill['seconds']} s")
        exchange, symbol = books[0]
        end_ms = envelopes[-1].receive_time_ns // 1_000_000
        startup = last_interval(settings.clickhouse, exchange, symbol, end_ms)
        if startup is None or startup.end_ms is None:
            raise RuntimeError(f"{exchange} {symbol}: no resync stored")
        at_ms = startup.end_ms + int(minutes * 60_000)
        if at_ms + settings.replay.book_at_lookahead_ms >= end_ms:
            raise RuntimeError("the generated frames end before the time and its lookahead")
        source = KafkaFrames(settings)
        timings: list[float] = []
        book = None
        for _ in range(runs):
            started = time.perf_counter()
            book = book_at(settings, source, exchange, symbol, at_ms)
            timings.append((time.perf_counter() - started) * 1000)
        assert book is not None and book.status == "LIVE", book
        median_ms = statistics.median(timings)
        # the same frames from memory: the core's share of the time
        preloaded = Preloaded(
            source.partitions(),
            list(source.read(book.partition, book.start_offset, book.end_offset)),
        )
        core_timings = []
        for _ in range(runs):
            started = time.perf_counter()
            in_memory = book_at(settings, preloaded, exchange, symbol, at_ms)
            core_timings.append((time.perf_counter() - started) * 1000)
        assert (in_memory.bids, in_memory.asks, in_memory.version) == (
            book.bids,
            book.asks,
            book.version,
        )
        core_ms = statistics.median(core_timings)
        return {
            "book": f"{exchange}:{symbol}",
            "minutes_after_snapshot": minutes,
            "books_generated": len(books),
            "frames_generated": len(envelopes),
            "frames_read": book.frames,
            "partition": book.partition,
            "sync_point": book.sync_point,
            "levels": {"bids": len(book.bids), "asks": len(book.asks)},
            "runs_ms": [round(t, 1) for t in timings],
            "median_ms": round(median_ms, 1),
            "frames_read_per_s": round(book.frames / (median_ms / 1000)),
            "from_memory_runs_ms": [round(t, 1) for t in core_timings],
            "from_memory_median_ms": round(core_ms, 1),
            "machine": machine(),
            "targets": {
                "book_at_ms": target_entry(
                    round(median_ms, 1),
                    "ms",
                    minutes_after_snapshot=minutes,
                    frames_read=book.frames,
                    source="kafka",
                )
            },
        }
    finally:
        if source is not None:
            source.close()
        _delete_kafka_topics(settings, [settings.kafka.raw_topic, settings.kafka.deadletter_topic])
        client = connect(settings.clickhouse)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        finally:
            client.disconnect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0, help="time after the book's snapshot")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--mix", choices=sorted(MIXES), default="binance")
    args = p.parse_args(argv)
    report = run(args.minutes, args.runs, args.mix)
    print(
        f"book as of {args.minutes:g} min after its snapshot ({report['book']}): "
        f"{report['median_ms']} ms median of {args.runs} ({report['frames_read']} frames read, "
        f"{report['frames_read_per_s']} frames/s; {report['levels']['bids']} bids, "
        f"{report['levels']['asks']} asks); the same frames from memory (the core, the "
        f"gaps lookup): {report['from_memory_median_ms']} ms"
    )
    print(f"wrote {write_results('book_at', report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
