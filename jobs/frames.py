"""Where the readers of raw frames (the batch backfill, the replay from the archive, backtests,
books as of a time) read a range of the raw topic: Kafka, or the raw archive (``jobs/archive``).

    source = frame_source(settings, "archive")          # or "kafka"
    for p in source.partitions():
        start, end = source.offset_range(p, from_ms, to_ms)
        for batch in source.read(p, start, end):          # FrameBatch, offset order
            core.feed_batch(batch.values, batch.timestamps)

The archive keeps Kafka's offsets and timestamps, so a range is the same range in both, with
the same records: values byte for byte as in the topic. ``offset_range`` answers as Kafka's
``offsets_for_times`` does: the first offset whose record is stamped at or after the time, in
offset order (the producers' records interleave slightly out of time order), or the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.archive import layout
from jobs.archive.layout import ArchiveError
from tickflow.config import Settings, resolve_path
from tickflow.kafka_security import client_config

SOURCES = ("kafka", "archive")
IDLE_TIMEOUT_S = 60.0  # no record for this long before the range's end: the broker is gone
OFFSET_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive records of one partition, in offset order."""

    partition: int
    offsets: list[int]
    values: list[bytes]  # raw envelope bytes, exactly as in the raw topic
    timestamps: list[int]  # the Kafka record timestamps, ms


class FrameSource(Protocol):
    def partitions(self) -> list[int]: ...

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        """[start, end): the first offset stamped at or after ``from_ms`` (``from_ms`` <= 0:
        the first held) and the first stamped at or after ``to_ms`` (none: the end)."""
        ...

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        """The records of offsets [start, end) that the source holds, in batches."""
        ...


def frame_source(settings: Settings, kind: str) -> FrameSource:
    """The raw topic (``settings.kafka.raw_topic``) in Kafka or in the archive."""
    if kind == "kafka":
        return KafkaFrames(settings)
    if kind == "archive":
        return archive_frames(settings)
    raise ValueError(f"frame source {kind!r}: one of {', '.join(SOURCES)}")


def archive_frames(settings: Settings) -> ArchiveFrames:
    """The raw topic's archive under ``archive.dir``."""
    return ArchiveFrames(
        Path(resolve_path(settings, settings.archive.dir)),
        settings.kafka.raw_topic,
        settings.archive.read_batch_records,
    )


@contextlib.contextmanager
def opened_source(settings: Settings, kind: str) -> Iterator[FrameSource]:
    """``frame_source``, its connections closed at the end of the block (Kafka's lookups)."""
    source = frame_source(settings, kind)
    try:
        yield source
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


# --- Kafka ------------------------------------------------------------------------------------


class KafkaFrames:
    """A topic read with confluent_kafka, records in batches of ``read_batch``. Each ``read``
    has a consumer of its own; ``partitions`` and ``offset_range`` share one, kept until
    ``close``."""

    def __init__(self, settings: Settings, topic: str | None = None, read_batch: int = 0) -> None:
        self.settings = settings
        self.topic = topic or settings.kafka.raw_topic
        self.read_batch = read_batch or settings.replay.batch_read_records
        self._lookup: Any = None  # one consumer for metadata and offsets, made when needed

    def consumer(self) -> Any:
        from confluent_kafka import Consumer

        return Consumer({
            **client_config(self.settings.kafka),
            "group.id": f"{self.settings.flink.consumer_group}-batch-backfill",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        })  # fmt: skip

    def _lookups(self) -> Any:
        if self._lookup is None:
            self._lookup = self.consumer()
        return self._lookup

    def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None

    def __enter__(self) -> KafkaFrames:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def partitions(self) -> list[int]:
        meta = self._lookups().list_topics(self.topic, timeout=OFFSET_TIMEOUT_S).topics
        found = meta.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise RuntimeError(
                f"raw topic {self.topic!r} not found on {self.settings.kafka.bootstrap}"
            )
        return sorted(found.partitions)

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        from confluent_kafka import TopicPartition

        consumer = self._lookups()
        low, high = consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=OFFSET_TIMEOUT_S
        )

        def offset_at(time_ms: int) -> int:
            found = consumer.offsets_for_times(
                [TopicPartition(self.topic, partition, time_ms)], timeout=OFFSET_TIMEOUT_S
            )[0].offset
            return high if found < 0 else found  # no record at or after it: the end

        return (offset_at(from_ms) if from_ms > 0 else low), offset_at(to_ms)

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        from confluent_kafka import KafkaError, TopicPartition

        if end <= start:
            return
        consumer = self.consumer()
        try:
            consumer.assign([TopicPartition(self.topic, partition, start)])
            last = end - 1
            idle_since = time.monotonic()
            done = False
            while not done:
                messages = consumer.consume(num_messages=self.read_batch, timeout=1.0)
                if not messages:
                    (position,) = consumer.position([TopicPartition(self.topic, partition)])
                    if position.offset >= end:
                        return  # the range ends with offsets that hold no record
                    if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                        raise RuntimeError(
                            f"partition {partition}: no record for {IDLE_TIMEOUT_S:.0f} s "
                            f"at offset {position.offset} of [{start}, {end})"
                        )
                    continue
                idle_since = time.monotonic()
                offsets: list[int] = []
                values: list[bytes] = []
                timestamps: list[int] = []
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise RuntimeError(f"partition {partition}: {error}")
                    offset = message.offset()
                    if offset >= end:
                        done = True
                        break
                    offsets.append(offset)
                    values.append(message.value() or b"")
                    timestamps.append(message.timestamp()[1])
                    if offset >= last:
                        done = True
                        break
                if offsets:
                    yield FrameBatch(partition, offsets, values, timestamps)
        finally:
            consumer.close()


# --- the archive ------------------------------------------------------------------------------


class ArchiveFrames:
    """A topic's archive (``jobs/archive``) under ``root``, read from its Parquet files."""

    def __init__(self, root: Path, topic: str, read_batch: int = 10_000) -> None:
        self.root = root
        self.topic = topic
        self.read_batch = read_batch
        self._files: dict[int, list[layout.ArchivedFile]] | None = None

    def listing(self) -> dict[int, list[layout.ArchivedFile]]:
        """Per partition, its files in offset order, as listed at the first call."""
        if self._files is None:
            files = layout.archived_files(self.root, self.topic)
            if not files:
                raise ArchiveError(
                    f"nothing archived for {self.topic} under {self.root} (archive.dir): "
                    f"`tickflow archive run` writes it"
                )
            self._files = files
        return self._files

    def partitions(self) -> list[int]:
        return list(self.listing())

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        files = self.listing().get(partition, [])
        if not files:
            return 0, 0
        end = files[-1].last + 1

        def offset_at(time_ms: int) -> int:
            for archived in files:
                if _highest_timestamp(archived.path) < time_ms:
                    continue  # every record of the file is stamped before it
                rows = pq.read_table(archived.path, columns=["offset", "timestamp_ms"])
                at = pc.index(pc.greater_equal(rows["timestamp_ms"], time_ms), True).as_py()
                return int(rows["offset"][at].as_py())
            return end

        return (offset_at(from_ms) if from_ms > 0 else files[0].first), offset_at(to_ms)

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        for batch, _keys in self.read_keyed(partition, start, end):
            yield batch

    def read_keyed(
        self, partition: int, start: int, end: int
    ) -> Iterator[tuple[FrameBatch, list[bytes | None]]]:
        """``read``, with each record's Kafka key (to produce the records again)."""
        columns = [*layout.VALUE_COLUMNS, "key"]
        for archived in self.listing().get(partition, []):
            if archived.last < start or archived.first >= end:
                continue
            parquet = pq.ParquetFile(archived.path)
            for batch in parquet.iter_batches(self.read_batch, columns=columns):
                if archived.first < start or archived.last >= end:
                    offsets = batch.column("offset")
                    keep = pc.and_(pc.greater_equal(offsets, start), pc.less(offsets, end))
                    batch = batch.filter(keep)
                    if not batch.num_rows:
                        continue
                yield _frame_batch(partition, batch), batch.column("key").to_pylist()


def _highest_timestamp(path: Path) -> float:
    """The highest Kafka timestamp in an archived file, from its statistics (inf: none)."""
    meta = pq.ParquetFile(path).metadata
    column = layout.SCHEMA.get_field_index("timestamp_ms")
    highest = -float("inf")
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            return float("inf")
        highest = max(highest, stats.max)
    return highest


def _frame_batch(partition: int, batch: pa.RecordBatch) -> FrameBatch:
    return FrameBatch(
        partition,
        batch.column("offset").to_pylist(),
        layout.record_values(batch),
        batch.column("timestamp_ms").to_pylist(),
    )
