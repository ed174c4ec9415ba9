"""The two formats between the live job's stages (the JVM operators in ``jobs/jvm`` and the
compiled core in ``jobs/native/src/stream.rs`` read and write the same bytes):

- a frame bundle: raw Kafka values of one instrument, from the JVM bundler to the core;
- a sink blob: what the core produced for one call, ClickHouse RowBinary rows per table and
  Kafka records per output, from the core to the JVM sinks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence

# frame bundle v1 (little-endian): u8 version, u8 flags, then (i64 timestamp_ms, u32 length,
# bytes) until the end
BUNDLE_VERSION = 1
BUNDLE_PERSIST = 0x01  # flag: write the key's state after this bundle (a checkpoint follows)
NO_TIMESTAMP = -(2**63)  # a frame's timestamp when its Kafka record had none
FRAME_HEADER = struct.Struct("<qI")

# sink blob v1 (little-endian): u8 version, then sections (u8 kind, u16 name_len, name,
# u32 count, u32 payload_len, payload) until the end
BLOB_VERSION = 1
CLICKHOUSE_ROWS = 1  # name = table, payload = RowBinary rows in COLUMNS order
KAFKA_RECORDS = 2  # name = logical output, payload = (u32 len, JSON or framed Avro) each
SECTION_HEADER = struct.Struct("<BH")
SECTION_COUNTS = struct.Struct("<II")
RECORD_LENGTH = struct.Struct("<I")


def frame_bundle(frames: Iterable[tuple[bytes, int]], flags: int = 0) -> bytes:
    """A frame bundle of ``(raw value, timestamp_ms)`` pairs, as the JVM bundler writes it."""
    parts = [bytes((BUNDLE_VERSION, flags))]
    for value, timestamp_ms in frames:
        parts.append(FRAME_HEADER.pack(timestamp_ms, len(value)))
        parts.append(value)
    return b"".join(parts)


def bundle_frames_of(bundle: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(flags, [(timestamp_ms, raw value), ...]) of a frame bundle; raises ValueError if
    malformed. Timestamps are ``NO_TIMESTAMP`` where the Kafka record had none."""
    if len(bundle) < 2 or bundle[0] != BUNDLE_VERSION:
        raise ValueError(f"not a frame bundle v{BUNDLE_VERSION}: {bundle[:2]!r}")
    frames: list[tuple[int, bytes]] = []
    pos, end = 2, len(bundle)
    while pos < end:
        if end - pos < FRAME_HEADER.size:
            raise ValueError(f"frame bundle truncated at {pos} of {end} bytes")
        timestamp, length = FRAME_HEADER.unpack_from(bundle, pos)
        pos += FRAME_HEADER.size
        if length > end - pos:
            raise ValueError(f"frame of {length} bytes at {pos}, {end - pos} left")
        frames.append((timestamp, bundle[pos : pos + length]))
        pos += length
    return bundle[1], frames


def sink_blob(
    rows: Mapping[str, tuple[int, bytes]] | None = None,
    records: Mapping[str, Sequence[str]] | None = None,
) -> bytes:
    """A sink blob v1: RowBinary ``rows`` (table -> (row count, bytes)) and Kafka ``records``
    (output name -> JSON texts). For tests and the Python engine; the compiled core writes its
    own."""
    parts = [bytes([BLOB_VERSION])]
    for table, (count, payload) in (rows or {}).items():
        parts.append(_section(CLICKHOUSE_ROWS, table, count, payload))
    for output, texts in (records or {}).items():
        payload = b"".join(_record(text.encode()) for text in texts)
        parts.append(_section(KAFKA_RECORDS, output, len(texts), payload))
    return b"".join(parts)


def _section(kind: int, name: str, count: int, payload: bytes) -> bytes:
    encoded = name.encode()
    return (
        SECTION_HEADER.pack(kind, len(encoded))
        + encoded
        + SECTION_COUNTS.pack(count, len(payload))
        + payload
    )


def _record(text: bytes) -> bytes:
    return RECORD_LENGTH.pack(len(text)) + text


def sink_blob_sections(blob: bytes) -> Iterator[tuple[int, str, int, bytes]]:
    """(kind, name, count, payload) of each section of a sink blob."""
    if not blob or blob[0] != BLOB_VERSION:
        raise ValueError(f"not a sink blob v{BLOB_VERSION}: {blob[:1]!r}")
    pos = 1
    while pos < len(blob):
        kind, name_len = SECTION_HEADER.unpack_from(blob, pos)
        pos += SECTION_HEADER.size
        name = blob[pos : pos + name_len].decode()
        pos += name_len
        count, payload_len = SECTION_COUNTS.unpack_from(blob, pos)
        pos += SECTION_COUNTS.size
        if payload_len > len(blob) - pos:
            raise ValueError(f"section {name!r} of {payload_len} bytes, {len(blob) - pos} left")
        yield kind, name, count, blob[pos : pos + payload_len]
        pos += payload_len


def split_record_values(payload: bytes) -> list[bytes]:
    """The Kafka values of a Kafka-records section's payload (JSON text, or framed Avro for a
    result topic written as Avro)."""
    records, pos = [], 0
    while pos < len(payload):
        (size,) = RECORD_LENGTH.unpack_from(payload, pos)
        records.append(payload[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return records


def split_records(payload: bytes) -> list[str]:
    """The JSON texts of a Kafka-records section's payload."""
    return [value.decode() for value in split_record_values(payload)]
