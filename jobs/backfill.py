"""The batch backfill: a day of derived tables rebuilt from the raw topic without Flink.

    tickflow job backfill --day 2026-11-24            # batch engine, one process per core
    tickflow job backfill --day 2026-11-24 --engine flink   # the streaming job, bounded
    tickflow job backfill --day 2026-11-24 --source archive # read the raw archive, not Kafka

Each raw-topic partition is read from the offset of the range's start to the offset of its
end, from Kafka or from the raw archive (``jobs.frames``: the same offsets and records), and
run through the job's logic, the compiled core (``jobs/native``,
``tickflow_native.NativePartition``: rows encoded as RowBinary). The rows go to the live
ClickHouse database in large inserts, the dead letters to the backfill's dead-letter topic.
Partitions are independent (the connectors partition by instrument) and are spread over
worker processes, largest first; a partition too large to share out evenly is split by
instrument (``split_by_instrument``), instruments being independent too. The rows are the
ones the job writes, with the same identities, so ReplacingMergeTree keeps one of each:
running it again changes nothing, and it can run while the live job writes. Redis (live
state, not history) is not touched.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import Any

from jobs.core_schemas import learning
from jobs.frames import FrameBatch, frame_source, opened_source
from jobs.sinks.clickhouse import RowBinaryWriter, ensure_schema
from schemas.codec import EnvelopeError, decode_envelope, envelope_instrument
from schemas.deadletter import dead_letter_record
from schemas.writers import registry_writer_schemas
from tickflow.config import AnalyticsConfig, BookConfig, Settings
from tickflow.instruments import nbbo_group

OFFSET_TIMEOUT_S = 30.0
GROUP_SAMPLE_RECORDS = 20_000  # read from a partition's start to learn its instruments' shares


@dataclass(frozen=True)
class PartitionRange:
    """A range of one partition, and which of its instruments (NBBO groups) to process:
    ``only`` these, or else all but ``others`` (the partition's remainder, including any
    instrument first seen after the sample that split it)."""

    partition: int
    start: int  # first offset read
    end: int  # first offset not read
    only: frozenset[str] = frozenset()
    others: frozenset[str] = frozenset()
    share: float = 1.0  # estimated fraction of the range's records processed

    @property
    def records(self) -> int:
        return max(0, self.end - self.start)

    @property
    def work(self) -> float:
        return self.records * self.share

    def label(self) -> str:
        if self.only:
            return f"partition {self.partition} ({', '.join(sorted(self.only))})"
        if self.others:
            return f"partition {self.partition} (all but {', '.join(sorted(self.others))})"
        return f"partition {self.partition}"


def partition_ranges(
    settings: Settings, from_ms: int, to_ms: int, source: str = "kafka"
) -> list[PartitionRange]:
    """Per partition of the raw topic, the offsets of the records in [from_ms, to_ms), in
    Kafka or in the archive (``source``: ``jobs.frames.frame_source``)."""
    with opened_source(settings, source) as frames:
        return [
            PartitionRange(partition, *frames.offset_range(partition, from_ms, to_ms))
            for partition in frames.partitions()
        ]


def sample_groups(settings: Settings, part: PartitionRange, source: str = "kafka") -> Counter[str]:
    """Records per instrument (NBBO group) among the first ``GROUP_SAMPLE_RECORDS`` of a
    range."""
    equivalents = dict(settings.analytics.quote_equivalents)
    counts: Counter[str] = Counter()
    wanted = min(part.records, GROUP_SAMPLE_RECORDS)
    frames = frame_source(settings, source)
    sample_end = part.start + wanted
    for batch in frames.read(part.partition, part.start, sample_end):
        for value in batch.values:
            try:
                instrument = envelope_instrument(value)
            except EnvelopeError:
                continue  # the worker that meets it dead-letters it
            counts[nbbo_group(instrument, equivalents)] += 1
    return counts


def split_by_instrument(
    settings: Settings, ranges: list[PartitionRange], workers: int, source: str = "kafka"
) -> list[PartitionRange]:
    """Partitions too large for the workers to share evenly, split by instrument.

    The connectors put every instrument of a partition in it, so a partition can hold many
    busy instruments: with partitions as the only unit, one worker can be left with most of
    the day. A partition larger than half a worker's fair share is cut into as many pieces as
    it holds such halves, its instruments (seen in its first records) spread over them by
    their share of those records. Each piece re-reads the partition and processes its own
    instruments' records. A key's records are one book, hence one instrument, so a piece
    never divides a book or an NBBO group.
    """
    total = sum(r.records for r in ranges)
    if workers < 2 or not total:
        return ranges
    piece_records = total / workers / 2
    out: list[PartitionRange] = []
    for part in ranges:
        pieces = math.ceil(part.records / piece_records)
        if pieces < 2:
            out.append(part)
            continue
        out.extend(split_range(part, sample_groups(settings, part, source), pieces))
    return out


def split_range(part: PartitionRange, counts: Counter[str], pieces: int) -> list[PartitionRange]:
    """``part`` in up to ``pieces`` ranges of whole instruments, as even as ``counts`` (records
    per instrument in a sample) allow; the last takes every instrument the others do not."""
    pieces = min(pieces, len(counts))
    if pieces < 2:
        return [part]
    groups: list[list[str]] = [[] for _ in range(pieces)]
    loads = [0] * pieces
    for group, n in counts.most_common():  # largest first, each to the lightest piece
        lightest = loads.index(min(loads))
        groups[lightest].append(group)
        loads[lightest] += n
    sampled = sum(counts.values())
    out = [
        replace(part, only=frozenset(piece), share=load / sampled)
        for piece, load in zip(groups[:-1], loads[:-1], strict=True)
    ]
    listed = frozenset(g for piece in groups[:-1] for g in piece)
    out.append(replace(part, others=listed, share=loads[-1] / sampled))
    return out


def core_rules(book: BookConfig, analytics: AnalyticsConfig) -> dict[str, Any]:
    """The compiled core's rules from the configuration: the keyword arguments its live
    (``NativeStream``) and batch (``NativePartition``) drivers share."""
    return {
        "top_n": book.top_n,
        "snapshot_interval_ms": book.snapshot_interval_ms,
        "max_levels": book.max_levels,
        "max_buffered": book.max_buffered_updates,
        "nbbo_stale_after_ms": analytics.nbbo_stale_after_ms,
        "bar_intervals_ms": list(analytics.bar_intervals_ms),
        "depth_band_bps": str(analytics.depth_band_bps),
        "trade_dedup_ms": analytics.trade_dedup_ms,
        "quote_equivalents": sorted(analytics.quote_equivalents.items()),
        "max_event_ahead_ms": book.max_event_ahead_ms or None,
        "max_event_behind_ms": book.max_event_behind_ms or None,
    }


def native_partition(settings: Settings, part: PartitionRange) -> Any:
    """The compiled core's batch driver (``jobs/native``) configured as the job is."""
    try:
        import tickflow_native
    except ImportError as exc:
        raise RuntimeError(
            "the backfill's compiled core is not installed: `make venv` builds it "
            "(jobs/native, needs cargo); images install its wheel"
        ) from exc
    return tickflow_native.NativePartition(
        **core_rules(settings.book, settings.analytics),
        out_of_orderness_ms=settings.flink.watermark_out_of_orderness_ms,
        only=sorted(part.only),
        others=sorted(part.others),
    )


class NativeEngine:
    """The compiled engine: every frame's work in Rust, rows as RowBinary over HTTP."""

    def __init__(self, settings: Settings, part: PartitionRange) -> None:
        self.books = native_partition(settings, part)
        self.writers = registry_writer_schemas(settings.registry)
        self.writer = RowBinaryWriter(settings.clickhouse)
        self.batch_rows = settings.clickhouse.insert_batch_rows
        self.inserted_rows: dict[str, int] = {}

    def _insert(self, min_rows: int) -> None:
        for table, data, rows in self.books.take_tables(min_rows):
            self.writer.insert(table, data, rows)
            self.inserted_rows[table] = self.inserted_rows.get(table, 0) + rows

    def _letters(self) -> list[str]:
        letters = []
        for reason, value, envelope_ok in self.books.take_dead_letters():
            if envelope_ok:
                env = decode_envelope(value, self.writers)
                letters.append(dead_letter_record("job", reason, env.payload, env))
            else:
                letters.append(dead_letter_record("job", reason, value))
        return letters

    def feed(self, batch: FrameBatch) -> list[str]:
        learning(self.writers, lambda: self.books.feed_batch(batch.values, batch.timestamps))
        self._insert(self.batch_rows)
        return self._letters()

    def finish(self) -> list[str]:
        self.books.finish()
        self._insert(0)
        return self._letters()

    def counts(self) -> dict[str, int]:
        return self.books.counts()

    def inserted(self) -> dict[str, int]:
        return self.inserted_rows

    def close(self) -> None:
        self.writer.close()


def backfill_partition(
    settings: Settings, part: PartitionRange, source: str = "kafka"
) -> dict[str, Any]:
    """Read one partition's range (from Kafka or the archive), run it through the job's
    logic, write its rows."""
    from connectors.producer import KafkaSink

    started = time.monotonic()
    engine = NativeEngine(settings, part)
    letters: list[str] = []
    try:
        if part.records:
            frames = frame_source(settings, source)
            for batch in frames.read(part.partition, part.start, part.end):
                letters.extend(engine.feed(batch))
        letters.extend(engine.finish())
        if letters:
            # the connectors' producer: it also counts deliveries the broker refused
            sink = KafkaSink(settings.kafka, overrides={"client.id": "tickflow-backfill"})
            for letter in letters:
                sink.dead_letter(letter)
            sink.close(OFFSET_TIMEOUT_S)
            if sink.failed:
                raise RuntimeError(
                    f"{sink.failed} of {len(letters)} dead letters not delivered to "
                    f"{settings.kafka.deadletter_topic}"
                )
    finally:
        engine.close()
    counts = engine.counts()
    return {
        "partition": part.partition,
        "range": part.label(),
        **{k: counts[k] for k in ("frames", "dead_letters", "rows", "late")},
        "rows_by_table": engine.inserted(),
        "seconds": round(time.monotonic() - started, 2),
    }


def parse_offset_ranges(spec: str) -> list[PartitionRange]:
    """``"0:100-200,1:5-80"``: per partition, the first offset read and the first not read."""
    ranges = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        partition, _, span = item.partition(":")
        start, _, end = span.partition("-")
        try:
            part = PartitionRange(int(partition), int(start), int(end))
        except ValueError:
            raise ValueError(f"{item!r} is not partition:start-end") from None
        if part.partition < 0 or part.start < 0 or part.end < part.start:
            raise ValueError(f"{item!r}: want partition >= 0 and 0 <= start <= end")
        ranges.append(part)
    if len({r.partition for r in ranges}) != len(ranges):
        raise ValueError(f"a partition is named twice in {spec!r}")
    return ranges


def format_offset_ranges(ranges: list[PartitionRange]) -> str:
    return ",".join(f"{r.partition}:{r.start}-{r.end}" for r in ranges)


def run_backfill(
    settings: Settings,
    from_ms: int,
    to_ms: int,
    workers: int = 0,
    log: Callable[[str], None] = print,
    source: str = "kafka",
) -> dict[str, Any]:
    """Backfill [from_ms, to_ms) of the raw topic (in Kafka or in the archive: ``source``)
    into ``settings.clickhouse.database``."""
    from stack.topics import ensure_topics

    ensure_topics(settings)  # before its offsets are looked up
    ranges = partition_ranges(settings, from_ms, to_ms, source)
    return run_backfill_ranges(settings, ranges, workers, log, source)


def run_backfill_ranges(
    settings: Settings,
    ranges: list[PartitionRange],
    workers: int = 0,
    log: Callable[[str], None] = print,
    source: str = "kafka",
) -> dict[str, Any]:
    """Backfill these offset ranges of the raw topic (in Kafka or in the archive:
    ``source``) into ``settings.clickhouse.database``, each from empty state (as a live job
    starting at a range's start would)."""
    from stack.topics import ensure_topics

    started = time.monotonic()
    workers = workers or settings.replay.batch_workers or os.cpu_count() or 1
    ensure_schema(settings.clickhouse)
    ensure_topics(settings)
    ranges = [r for r in ranges if r.records]
    total = sum(r.records for r in ranges)
    partitions = len(ranges)
    # largest first: the last to start are the shortest
    ranges = sorted(split_by_instrument(settings, ranges, workers, source), key=lambda r: -r.work)
    log(f"backfill: {total} records in {partitions} partitions ({len(ranges)} ranges), "
        f"{workers} worker processes")  # fmt: skip
    results: list[dict[str, Any]] = []
    if workers == 1:
        results = [backfill_partition(settings, r, source) for r in ranges]
    else:
        # spawned, not forked: each worker opens its own Kafka and ClickHouse clients
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(backfill_partition, settings, r, source) for r in ranges]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                log(f"  {result['range']}: {result['frames']} frames, "
                    f"{result['rows']} rows in {result['seconds']} s")  # fmt: skip
    seconds = time.monotonic() - started
    rows_by_table: dict[str, int] = {}
    for result in results:
        for table, n in result["rows_by_table"].items():
            rows_by_table[table] = rows_by_table.get(table, 0) + n
    frames = sum(r["frames"] for r in results)
    return {
        "frames": frames,
        "rows": sum(rows_by_table.values()),
        "rows_by_table": dict(sorted(rows_by_table.items())),
        "dead_letters": sum(r["dead_letters"] for r in results),
        "late": sum(r["late"] for r in results),
        "partitions": sorted(results, key=lambda r: (r["partition"], r["range"])),
        "workers": workers,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds) if seconds > 0 else 0,
    }
