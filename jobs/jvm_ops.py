"""The project's JVM operators (``jobs/jvm``, package ``io.tickflow.flink``) as PyFlink streams.

The live job crosses into Python once per bundle of frames instead of once per frame:

    raw (bytes) -> bundle_frames -> [keyed in the JVM] -> Python KeyedProcessFunction
        -> sink blob (bytes) -> topic_records(name) -> KafkaSink
                             -> clickhouse_sink

The Python function of a bundled stream receives ``value: bytes``, a frame bundle v1 (see
``BUNDLE_*`` below), and ``ctx.get_current_key()`` is the NBBO group (``str``; ``""`` for frames
whose instrument could not be read). PyFlink's keyed Python operators take ``Row(key, value)``
records and hand the function field 1, so the bundler emits ``Row(key, bundle)`` and the key
selector returns ``Row(key)``: the same shapes PyFlink's own ``key_by`` builds.

The jar must be on the job's classpath: ``stack.jars.flink_connector_jars`` includes it.
``bundle_frames`` wraps the Java stream in PyFlink's ``KeyedStream`` with its constructor, which
is not public API; ``tests/integration/test_jvm_ops.py`` pins it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, DataStreamSink, KeyedStream
from pyflink.java_gateway import get_gateway

from tickflow.config import ClickHouseConfig

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
KAFKA_RECORDS = 2  # name = logical output, payload = (u32 len, UTF-8 JSON) per record
SECTION_HEADER = struct.Struct("<BH")
SECTION_COUNTS = struct.Struct("<II")
RECORD_LENGTH = struct.Struct("<I")

# the bundler's output as PyFlink sees it
BUNDLE_TYPE = Types.ROW_NAMED(
    ["key", "bundle"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())]
)


def _ops() -> Any:
    return get_gateway().jvm.io.tickflow.flink


def _java_map(entries: Mapping[str, str]) -> Any:
    j_map = get_gateway().jvm.java.util.HashMap()
    for key, value in entries.items():
        j_map.put(key, value)
    return j_map


def bundle_frames(
    stream: DataStream, equivalents: Mapping[str, str], max_frames: int, max_delay_ms: int
) -> KeyedStream:
    """Raw Kafka values (``bytes``, Avro RawEnvelope) bundled per NBBO group and keyed by it.

    A key's bundle is emitted at ``max_frames`` frames, ``max_delay_ms`` after its first frame,
    before each watermark, before each checkpoint barrier (then with ``BUNDLE_PERSIST``, also as
    an empty bundle for every key that emitted since the last barrier) and at the end of input.
    The bundle's record timestamp is its largest frame timestamp.
    """
    ops = _ops()
    operator = ops.FrameBundler(_java_map(equivalents), int(max_frames), int(max_delay_ms))
    j_bundles = stream._j_data_stream.transform(
        "frame-bundler", ops.FrameBundler.outputType(), operator
    )
    bundles = DataStream(j_bundles).name("frame-bundler").uid("frame-bundler")
    j_keyed = bundles._j_data_stream.keyBy(ops.BundleKey(), ops.BundleKey.keyType())
    return KeyedStream(j_keyed, BUNDLE_TYPE, bundles)


def topic_records(blobs: DataStream, name: str) -> DataStream:
    """The JSON records of Kafka output ``name`` in the sink blobs, as strings."""
    j_records = blobs._j_data_stream.flatMap(_ops().TopicRecords(name))
    return DataStream(j_records).name(f"{name}-records").uid(f"{name}-records")


def clickhouse_url(config: ClickHouseConfig) -> str:
    scheme = "https" if config.secure else "http"
    return f"{scheme}://{config.host}:{config.http_port}"


def clickhouse_sink(
    blobs: DataStream, config: ClickHouseConfig, columns: Mapping[str, Sequence[str]]
) -> DataStreamSink:
    """Inserts the RowBinary rows of the sink blobs into ClickHouse (HTTP): per table at
    ``insert_batch_rows`` rows, every ``insert_interval_ms`` and before each checkpoint barrier
    (at-least-once into ReplacingMergeTree tables)."""
    sink = _ops().ClickHouseRowBinarySink(
        clickhouse_url(config),
        config.database,
        config.user,
        config.password,
        _java_map({table: ", ".join(cols) for table, cols in columns.items()}),
        int(config.insert_batch_rows),
        int(config.insert_interval_ms),
    )
    j_sink = blobs._j_data_stream.sinkTo(sink)
    return DataStreamSink(j_sink).name("clickhouse-writer").uid("clickhouse-writer")


# -- the formats on the Python side -----------------------------------------------------------


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
