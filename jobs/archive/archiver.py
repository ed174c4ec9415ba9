"""The archiver: every record of the raw topic into the archive's Parquet files, once.

Where it resumes comes from the files (``layout.next_offsets``), not from a consumer group:
a partition is read from the offset after its last archived one. A file is written under a
hidden temporary name a row group at a time, and is closed at ``archive.roll_records`` or
``archive.roll_seconds`` after its first record (or at a new day, or on a clean stop):
fsynced, renamed into place, the rename fsynced. Only then are its offsets committed to the
consumer group (``archive.consumer_group``), for lag monitoring. A crash (SIGKILL, power) at
any point leaves whole files and a temporary one; the next start deletes the temporary one
and reads its records from Kafka again. Nothing is archived twice and, while Kafka still
holds a record, nothing is lost.

A record Kafka no longer holds (deleted by retention before it was archived, so the next
record's offset jumps) is a gap: logged, counted, and recorded in the partition's gaps file
before the file holding the next record appears. A value that is not a RawEnvelope is
archived whole and flagged (``decode_error``), never dropped. One archiver per archive
directory and topic: a second one exits (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from jobs.archive import layout
from jobs.archive.layout import ArchiveError, Columns
from jobs.export import replace_durably
from schemas.codec import WriterSchemaSource
from schemas.writers import registry_writer_schemas
from tickflow.config import Settings, resolve_path
from tickflow.kafka_security import client_config

log = logging.getLogger("tickflow.archive")

POLL_RECORDS = 10_000
POLL_TIMEOUT_S = 0.5
PARTITIONS_REFRESH_S = 60.0  # partitions added to the topic are picked up this often
IDLE_TIMEOUT_S = 60.0  # archiving up to the end, no record for this long: the broker is gone
LOCK_FILE = ".archiver.lock"


def archive_root(settings: Settings) -> Path:
    return Path(resolve_path(settings, settings.archive.dir))


@dataclass
class OpenFile:
    """A file being written: a partition's records from ``first``, a row group at a time."""

    partition: int
    day: date
    directory: Path
    first: int
    opened_at: float  # monotonic
    tmp: Path = field(init=False)
    writer: pq.ParquetWriter | None = None
    writers: WriterSchemaSource | None = None  # framed records' writer schemas by id
    rows: Columns = field(init=False)
    last: int = -1
    records: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # recorded before the file shows

    def __post_init__(self) -> None:
        self.rows = Columns(self.writers)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tmp = layout.tmp_path(self.directory / layout.file_name(self.first, self.first))

    def add(self, offset: int, timestamp_ms: int, key: bytes | None, value: bytes) -> bool:
        decoded = self.rows.append(self.partition, offset, timestamp_ms, key, value)
        self.last = offset
        self.records += 1
        return decoded

    def write_rows(self) -> None:
        """The gathered records as a row group of the temporary file."""
        if not len(self.rows):
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, layout.SCHEMA, compression=layout.COMPRESSION)
        self.writer.write_batch(self.rows.batch())
        self.rows = Columns(self.writers)

    def close(self, root: Path, topic: str) -> layout.ArchivedFile:
        """Gaps recorded, the file written whole and renamed into place."""
        for start, end in self.gaps:
            layout.record_gap(root, topic, self.partition, start, end, "not in Kafka when read")
        self.write_rows()
        assert self.writer is not None  # a file is opened by its first record
        self.writer.close()
        path = self.directory / layout.file_name(self.first, self.last)
        replace_durably(self.tmp, path)
        return layout.ArchivedFile(self.partition, self.first, self.last, path)

    def discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.tmp.unlink(missing_ok=True)


class ArchiveMetrics:
    """``tickflow_archive_*`` in a registry of its own (served at ``archive.metrics_port``):
    records, undecodable records, files and gap offsets (counters), the next offset to archive
    (gauge); all per partition."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ["topic", "partition"]
        self.records = Counter("tickflow_archive_records", "records archived", labels,
                               registry=self.registry)  # fmt: skip
        self.undecodable = Counter(
            "tickflow_archive_undecodable_records",
            "records archived whole because their value is not a RawEnvelope",
            labels,
            registry=self.registry,
        )
        self.files = Counter("tickflow_archive_files", "files closed into place", labels,
                             registry=self.registry)  # fmt: skip
        self.gap_offsets = Counter(
            "tickflow_archive_gap_offsets",
            "offsets Kafka no longer held when the archiver reached them (recorded as gaps)",
            labels,
            registry=self.registry,
        )
        self.next_offset = Gauge("tickflow_archive_next_offset",
                                 "first offset not archived (in a closed file) yet", labels,
                                 registry=self.registry)  # fmt: skip

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, host, registry=self.registry)
        except OSError as exc:  # metrics are a convenience: the archive goes on without them
            log.warning("archive metrics not served on %s:%d: %s", host, port, exc)


class Archiver:
    """Consumes ``topic`` (default: the raw topic) into the archive under ``root``."""

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        root: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.config = settings.archive
        self.topic = topic or settings.kafka.raw_topic
        self.root = root or archive_root(settings)
        self.clock = clock
        self.metrics = ArchiveMetrics()
        self.writers = registry_writer_schemas(settings.registry)
        self.open: dict[int, OpenFile] = {}
        self.next_offset: dict[int, int] = {}  # per partition, the offset expected next
        self.high_ts: dict[int, int] = {}  # per partition, the highest timestamp seen
        self.closed_files = 0
        self.consumer: Any = None
        self._lock: int | None = None

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> dict[int, int]:
        """Lock the directory, clear what a crash left, and assign every partition at the
        offset after its last archived one; returns those offsets (absent: from the start)."""
        from confluent_kafka import Consumer

        top = layout.topic_dir(self.root, self.topic)
        top.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(top / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(f"another archiver is writing {top}") from None
        for tmp in layout.temporary_files(self.root, self.topic):
            log.info("removing %s, left half-written by a stopped archiver", tmp)
            tmp.unlink()
        resume = layout.next_offsets(layout.archived_files(self.root, self.topic))
        self.consumer = Consumer({
            **client_config(self.settings.kafka, **{"client.id": "tickflow-archive"}),
            "group.id": self.config.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",  # an offset retention deleted: the earliest kept
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        })  # fmt: skip
        self.next_offset = {}
        self._assign(resume)
        return resume

    def _partitions(self) -> list[int]:
        meta = self.consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ArchiveError(f"topic {self.topic!r} not found on {self.settings.kafka.bootstrap}")
        return sorted(meta.partitions)

    def _assign(self, resume: dict[int, int]) -> None:
        """Assign the partitions not assigned yet, each where its archive ends."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        new = [p for p in self._partitions() if p not in self.next_offset]
        if not new:
            return
        for p in new:
            self.next_offset[p] = resume.get(p, 0)
            self.metrics.next_offset.labels(self.topic, str(p)).set(self.next_offset[p])
            log.info("archiving %s partition %d from offset %d", self.topic, p, self.next_offset[p])
        self.consumer.incremental_assign([
            TopicPartition(self.topic, p, resume.get(p, OFFSET_BEGINNING))
            for p in new
        ])  # fmt: skip

    def close(self, flush: bool = True) -> None:
        """Stop: the open files closed into place (``flush``) or discarded."""
        for p in list(self.open):
            if flush:
                self._close_file(p)
            else:
                self.open.pop(p).discard()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool], until_end: bool = False) -> int:
        """Archive until ``should_stop()``; ``until_end``: until every partition's end as of
        the start (its files then closed). Returns the records archived."""
        self.start()
        ends = self.ends() if until_end else {}
        archived = 0
        refreshed = active = self.clock()
        try:
            while not should_stop():
                if until_end and all(self.next_offset[p] >= end for p, end in ends.items()):
                    break
                polled = self.poll()
                archived += polled
                if polled:
                    active = self.clock()
                elif until_end and self.clock() - active > IDLE_TIMEOUT_S:
                    behind = {p: (self.next_offset[p], e) for p, e in ends.items()
                              if self.next_offset[p] < e}  # fmt: skip
                    raise ArchiveError(
                        f"no record for {IDLE_TIMEOUT_S:.0f} s; partitions (next, end) short "
                        f"of their end: {behind}"
                    )
                if not until_end and self.clock() - refreshed > PARTITIONS_REFRESH_S:
                    refreshed = self.clock()
                    self._assign({})
        except BaseException:
            self.close(flush=False)  # what was read is read again at the next start
            raise
        self.close(flush=True)
        return archived

    def ends(self) -> dict[int, int]:
        """Per partition holding records, the offset after its last one now (the high
        watermark). A partition Kafka holds nothing of has nothing to archive (a gap before
        its next record is recorded with that record)."""
        from confluent_kafka import TopicPartition

        ends = {}
        for p in self.next_offset:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=30
            )
            if high > low:
                ends[p] = high
        return ends

    def poll(self) -> int:
        """One read from Kafka into the open files; files due are closed. Returns records."""
        from confluent_kafka import KafkaError

        messages = self.consumer.consume(num_messages=POLL_RECORDS, timeout=POLL_TIMEOUT_S)
        added = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal() or not error.retriable():
                    raise ArchiveError(f"reading {self.topic}: {error}")
                log.warning("reading %s: %s (retried)", self.topic, error)
                continue
            self.add(message.partition(), message.offset(), message.timestamp()[1],
                     message.key(), message.value() or b"")  # fmt: skip
            added += 1
        self.roll_due()
        return added

    def add(
        self, partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes
    ) -> None:
        expected = self.next_offset.get(partition, 0)
        if offset < expected:
            raise ArchiveError(
                f"{self.topic} partition {partition}: offset {offset} is before the archive's "
                f"next ({expected}): the topic was recreated? Archive it into another "
                f"archive.dir"
            )
        day = layout.day_of(max(timestamp_ms, self.high_ts.get(partition, 0)))
        self.high_ts[partition] = max(timestamp_ms, self.high_ts.get(partition, 0))
        current = self.open.get(partition)
        if current is not None and current.day != day:
            self._close_file(partition)
            current = None
        if current is None:
            current = self.open[partition] = OpenFile(
                partition,
                day,
                layout.partition_dir(self.root, self.topic, day, partition),
                offset,
                self.clock(),
                writers=self.writers,
            )
        if offset > expected:
            log.warning("%s partition %d: offsets %d-%d were gone from Kafka when read "
                        "(retention): recorded as a gap", self.topic, partition, expected,
                        offset - 1)  # fmt: skip
            current.gaps.append((expected, offset))
            self.metrics.gap_offsets.labels(self.topic, str(partition)).inc(offset - expected)
        if not current.add(offset, timestamp_ms, key, value):
            self.metrics.undecodable.labels(self.topic, str(partition)).inc()
        self.next_offset[partition] = offset + 1
        if len(current.rows) >= self.config.row_group_records:
            current.write_rows()
        if current.records >= self.config.roll_records:
            self._close_file(partition)

    def roll_due(self) -> None:
        now = self.clock()
        for p, current in list(self.open.items()):
            if now - current.opened_at >= self.config.roll_seconds:
                self._close_file(p)

    def _close_file(self, partition: int) -> None:
        from confluent_kafka import TopicPartition

        current = self.open.pop(partition)
        closed = current.close(self.root, self.topic)
        self.closed_files += 1
        labels = (self.topic, str(partition))
        self.metrics.records.labels(*labels).inc(current.records)
        self.metrics.files.labels(*labels).inc()
        self.metrics.next_offset.labels(*labels).set(closed.last + 1)
        log.info("archived %s", closed.path)
        if self.consumer is None:
            return
        try:  # for lag monitoring only: the files say where the archive is
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, partition, closed.last + 1)],
                asynchronous=True,
            )
        except Exception as exc:  # a failed commit costs a lag reading, no data
            log.warning("committing %s partition %d: %s", self.topic, partition, exc)


def status(root: Path, topic: str) -> Iterator[dict[str, Any]]:
    """Per partition: files, offsets, records, bytes on disk and recorded gaps."""
    for partition, files in layout.archived_files(root, topic).items():
        records = sum(pq.ParquetFile(f.path).metadata.num_rows for f in files)
        yield {
            "partition": partition,
            "files": len(files),
            "first": files[0].first,
            "last": files[-1].last,
            "records": records,
            "bytes": sum(f.path.stat().st_size for f in files),
            "gaps": layout.read_gaps(root, topic, partition),
        }
