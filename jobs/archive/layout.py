"""The raw archive's files: where they are, what they are named, what a row holds.

    <dir>/<topic>/date=YYYY-MM-DD/partition=P/<first offset:020d>-<last offset:020d>.parquet
    <dir>/<topic>/_gaps/partition=P.json        offsets Kafka no longer had when archived

A file holds consecutive records of one partition in offset order, one row per Kafka record
(``SCHEMA``); its name gives its first and last offset, so where the archive resumes, and
which files a range reads, follow from a directory listing. A file appears only whole
(written under a hidden temporary name, fsynced, renamed), so a listing never shows half a
file and two files never share an offset (``archived_files`` checks it). The ``date`` is the
UTC day of the highest Kafka timestamp the partition had reached when the file was opened: a
file never spans two days, and a record stamped a moment before midnight can sit in the next
day's file (the producers' records interleave slightly out of time order).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.export import replace_durably
from schemas.codec import EnvelopeError, WriterSchemaSource, decode_envelope

FORMAT_VERSION = 1
COMPRESSION = "zstd"
GAPS_DIR = "_gaps"
TMP_SUFFIX = ".tmp"  # a file being written: ".<final name>.<pid>.tmp", hidden from readers
FILE_NAME = re.compile(r"^(?P<first>\d{20})-(?P<last>\d{20})\.parquet$")

SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),  # Kafka partition
        pa.field("offset", pa.int64(), nullable=False),  # Kafka offset in the partition
        pa.field("timestamp_ms", pa.int64(), nullable=False),  # Kafka record timestamp
        pa.field("key", pa.binary()),  # Kafka key (exchange:symbol); null: none
        # the RawEnvelope's fields (schemas/raw_envelope.avsc); null when the value is not one
        pa.field("instrument", pa.string()),
        pa.field("exchange", pa.string()),
        pa.field("symbol", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("receive_time_ns", pa.int64()),
        pa.field("connection_id", pa.string()),
        pa.field("connection_seq", pa.int64()),
        pa.field("payload", pa.binary()),
        # the Kafka value itself, only when the columns above cannot give it back byte for
        # byte (not a RawEnvelope, or bytes after it); null: the value is the envelope of
        # the columns above, re-encoded
        pa.field("value", pa.binary()),
        pa.field("decode_error", pa.string()),  # why the value is not a RawEnvelope; null: it is
    ],
    metadata={"tickflow.archive.format": str(FORMAT_VERSION)},
)
ENVELOPE_FIELDS = (
    "instrument",
    "exchange",
    "symbol",
    "channel",
    "receive_time_ns",
    "connection_id",
    "connection_seq",
    "payload",
)
# what a reader needs to give every record's value back
VALUE_COLUMNS = ("offset", "timestamp_ms", *ENVELOPE_FIELDS, "value")


class ArchiveError(Exception):
    """The archive cannot be written or read as asked (the message says why)."""


# --- names ------------------------------------------------------------------------------------


def topic_dir(root: Path, topic: str) -> Path:
    return root / topic


def partition_dir(root: Path, topic: str, day: date, partition: int) -> Path:
    return topic_dir(root, topic) / f"date={day.isoformat()}" / f"partition={partition}"


def file_name(first: int, last: int) -> str:
    return f"{first:020d}-{last:020d}.parquet"


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def day_of(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, UTC).date()


@dataclass(frozen=True, order=True)
class ArchivedFile:
    """One file of the archive: a partition's records ``first`` to ``last`` (offsets)."""

    partition: int
    first: int
    last: int
    path: Path = field(compare=False)


def parse_file(path: Path) -> ArchivedFile | None:
    """The file at ``.../partition=P/<first>-<last>.parquet``; None for any other name."""
    match = FILE_NAME.match(path.name)
    partition = path.parent.name.removeprefix("partition=")
    if not match or not partition.isdigit() or not path.parent.name.startswith("partition="):
        return None
    return ArchivedFile(int(partition), int(match["first"]), int(match["last"]), path)


def archived_files(root: Path, topic: str) -> dict[int, list[ArchivedFile]]:
    """Per partition, its files in offset order (ArchiveError if two share an offset)."""
    out: dict[int, list[ArchivedFile]] = {}
    for path in topic_dir(root, topic).glob("date=*/partition=*/*.parquet"):
        found = parse_file(path)
        if found is not None:
            out.setdefault(found.partition, []).append(found)
    for partition, files in out.items():
        files.sort()
        for before, after in itertools.pairwise(files):
            if after.first <= before.last:
                raise ArchiveError(
                    f"partition {partition}: {before.path} and {after.path} overlap (two "
                    f"archivers wrote one directory?): keep one of them"
                )
    return dict(sorted(out.items()))


def next_offsets(files: dict[int, list[ArchivedFile]]) -> dict[int, int]:
    """Per partition, the first offset not archived yet: where the archiver resumes."""
    return {p: fs[-1].last + 1 for p, fs in files.items() if fs}


def temporary_files(root: Path, topic: str) -> list[Path]:
    """Files left half-written by an archiver that stopped before renaming them."""
    return sorted(topic_dir(root, topic).glob(f"date=*/partition=*/.*{TMP_SUFFIX}"))


# --- gaps -------------------------------------------------------------------------------------


def gaps_path(root: Path, topic: str, partition: int) -> Path:
    return topic_dir(root, topic) / GAPS_DIR / f"partition={partition}.json"


def read_gaps(root: Path, topic: str, partition: int) -> list[dict[str, Any]]:
    """The partition's recorded gaps, ``{"from", "to", "reason", "recorded"}``, in order."""
    path = gaps_path(root, topic, partition)
    try:
        gaps: list[dict[str, Any]] = json.loads(path.read_text())["gaps"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{path} is not a gaps file: {exc}") from None
    return gaps


def record_gap(root: Path, topic: str, partition: int, start: int, end: int, reason: str) -> None:
    """Record that offsets [start, end) of the partition are not in the archive. Recording the
    same gap again (after a crash) changes nothing; a wider one from the same start replaces
    it (retention deleted more meanwhile)."""
    gaps = [g for g in read_gaps(root, topic, partition) if g["from"] != start]
    recorded = datetime.now(UTC).isoformat(timespec="seconds")
    gaps.append({"from": start, "to": end, "reason": reason, "recorded": recorded})
    gaps.sort(key=lambda g: int(g["from"]))
    path = gaps_path(root, topic, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        tmp.write_text(json.dumps({"partition": partition, "gaps": gaps}, indent=1) + "\n")
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- rows -------------------------------------------------------------------------------------


class Columns:
    """Records gathered as columns of ``SCHEMA`` until they are written as one row group."""

    def __init__(self, writers: WriterSchemaSource | None = None) -> None:
        self.writers = writers  # framed records' writer schemas by id
        self.data: dict[str, list[object]] = {f.name: [] for f in SCHEMA}

    def __len__(self) -> int:
        return len(self.data["offset"])

    def append(
        self, partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes
    ) -> bool:
        """Add a record; False when its value is not a RawEnvelope (kept whole, flagged)."""
        data = self.data
        data["partition"].append(partition)
        data["offset"].append(offset)
        data["timestamp_ms"].append(timestamp_ms)
        data["key"].append(key)
        try:
            env = decode_envelope(value, self.writers)
        except EnvelopeError as exc:
            for name in ENVELOPE_FIELDS:
                data[name].append(None)
            data["value"].append(value)
            data["decode_error"].append(str(exc))
            return False
        for name in ENVELOPE_FIELDS:
            data[name].append(getattr(env, name))
        data["value"].append(value)  # dropped in ``batch`` where the columns give it back
        data["decode_error"].append(None)
        return True

    def batch(self) -> pa.RecordBatch:
        """The records as a batch of ``SCHEMA``: ``value`` kept only where re-encoding the
        envelope columns does not give it back byte for byte (Avro has one encoding per
        value, but a reader ignores bytes after the record, and another writer could
        differ)."""
        batch = pa.RecordBatch.from_pydict(self.data, schema=SCHEMA)
        value = batch.column("value")
        same = pc.fill_null(pc.equal(envelope_values(batch), value), False)
        index = SCHEMA.get_field_index("value")
        kept = pc.if_else(same, pa.scalar(None, pa.binary()), value)
        return batch.set_column(index, SCHEMA.field(index), kept)


def _varints(numbers: pa.Array) -> pa.Array:
    """Each integer as an Avro long (zig-zag, then base-128 little-endian, shortest form), a
    binary array; nulls as empty values (the row is null in the joined result anyway)."""
    v = pc.fill_null(numbers.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    rest = ((v << 1) ^ (v >> 63)).view(np.uint64)
    groups = np.empty((len(v), 10), dtype=np.uint8)  # 64 bits: at most 10 groups of 7
    lengths = np.ones(len(v), dtype=np.int64)
    for i in range(10):
        groups[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest != 0
        groups[more, i] |= 0x80
        lengths += more
    data = groups[np.arange(10) < lengths[:, None]]  # row by row, each its own groups
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.Array.from_buffers(
        pa.binary(), len(v), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def envelope_values(batch: pa.RecordBatch) -> pa.Array:
    """The RawEnvelope of each row's envelope columns, Avro-encoded as ``encode_envelope``
    does (null where the row has none), for a whole batch at once."""
    parts: list[pa.Array] = []
    for name in ENVELOPE_FIELDS:
        column = batch.column(name)
        if name in ("receive_time_ns", "connection_seq"):
            parts.append(_varints(column))
            continue
        raw = column.cast(pa.binary())
        parts += (_varints(pc.binary_length(raw)), raw)
    return pc.binary_join_element_wise(*parts, b"")


def record_values(batch: pa.RecordBatch) -> list[bytes]:
    """The Kafka values of a batch of archived rows (``VALUE_COLUMNS`` at least), exactly as
    they were in the topic."""
    value = batch.column("value")
    if not value.null_count:
        return value.to_pylist()
    return pc.if_else(pc.is_null(value), envelope_values(batch), value).to_pylist()
