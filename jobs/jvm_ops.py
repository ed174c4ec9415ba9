"""The project's JVM operators (``jobs/jvm``, package ``io.tickflow.flink``) as PyFlink streams.

The live job crosses into Python once per bundle of frames instead of once per frame:

    raw (bytes) -> bundle_frames -> [keyed in the JVM] -> Python KeyedProcessFunction
        -> sink blob (bytes) -> topic_records({output: topic}) -> KafkaSink
                             -> clickhouse_sink

The Python function of a bundled stream receives ``value: bytes``, a frame bundle v1 (see
``schemas/bundles.py``), and ``ctx.get_current_key()`` is the NBBO group (``str``; ``""`` for frames
whose instrument could not be read). PyFlink's keyed Python operators take ``Row(key, value)``
records and hand the function field 1, so the bundler emits ``Row(key, bundle)`` and the key
selector returns ``Row(key)``: the same shapes PyFlink's own ``key_by`` builds.

The jar must be on the job's classpath: ``stack.jars.flink_connector_jars`` includes it.
``bundle_frames`` wraps the Java stream in PyFlink's ``KeyedStream`` with its constructor, which
is not public API; ``tests/integration/test_jvm_ops.py`` pins it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyflink.common.typeinfo import Types
from pyflink.datastream import DataStream, DataStreamSink, KeyedStream
from pyflink.java_gateway import get_gateway

from schemas.bundles import (  # noqa: F401  (the formats, re-exported for the job's readers)
    BUNDLE_PERSIST,
    bundle_frames_of,
    sink_blob,
    sink_blob_sections,
)
from tickflow.config import ClickHouseConfig

# the bundler's output as PyFlink sees it
BUNDLE_TYPE = Types.ROW_NAMED(
    ["key", "bundle"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())]
)


def _ops() -> Any:
    return get_gateway().jvm.io.tickflow.flink


def java_map(entries: Mapping[str, str]) -> Any:
    """``entries`` as a ``java.util.HashMap``, for a JVM operator's constructor."""
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
    operator = ops.FrameBundler(java_map(equivalents), int(max_frames), int(max_delay_ms))
    j_bundles = stream._j_data_stream.transform(
        "frame-bundler", ops.FrameBundler.outputType(), operator
    )
    bundles = DataStream(j_bundles).name("frame-bundler").uid("frame-bundler")
    j_keyed = bundles._j_data_stream.keyBy(ops.BundleKey(), ops.BundleKey.keyType())
    return KeyedStream(j_keyed, BUNDLE_TYPE, bundles)


def topic_records(blobs: DataStream, topics: Mapping[str, str], name: str) -> DataStream:
    """The records of the Kafka outputs in ``topics`` (output name -> topic) in the sink blobs,
    each a ``Tuple2(topic, value bytes)`` for one Kafka sink of them all (``topic_serializer``).
    ``name`` names the operator (and its uid)."""
    j_records = blobs._j_data_stream.flatMap(_ops().TopicRecords(java_map(topics)))
    return DataStream(j_records).name(name).uid(name)


def topic_serializer(topics: Sequence[str]) -> Any:
    """The Java ``KafkaRecordSerializationSchema`` of ``topic_records``' output: each value to
    its topic (one of ``topics``), as it is."""
    j_topics = get_gateway().jvm.java.util.ArrayList()
    for topic in topics:
        j_topics.add(topic)
    return _ops().TopicRecordSerializer(j_topics)


def clickhouse_url(config: ClickHouseConfig) -> str:
    """The server's HTTP URL; with replicas (HA) every server's, comma-separated, the primary
    first (the sink inserts into the first that takes an insert)."""
    scheme = "https" if config.secure else "http"
    return ",".join(f"{scheme}://{s.host}:{s.http_port}" for s in config.servers())


def clickhouse_sink(
    blobs: DataStream, config: ClickHouseConfig, columns: Mapping[str, Sequence[str]]
) -> DataStreamSink:
    """Inserts the RowBinary rows of the sink blobs into ClickHouse (HTTP): per table at
    ``insert_batch_rows`` rows, every ``insert_interval_ms`` and before each checkpoint barrier
    (at-least-once into ReplacingMergeTree tables). An insert ClickHouse cannot take now is
    retried while rows wait, up to ``max_pending_mb``, in the sink's checkpointed state."""
    sink = _ops().ClickHouseRowBinarySink(
        clickhouse_url(config),
        config.database,
        config.user,
        config.password,
        java_map({table: ", ".join(cols) for table, cols in columns.items()}),
        int(config.insert_batch_rows),
        int(config.insert_interval_ms),
        int(config.connect_timeout_ms),
        int(config.insert_timeout_ms),
        int(config.max_pending_mb) << 20,
        int(config.retry_max_backoff_ms),
    )
    j_sink = blobs._j_data_stream.sinkTo(sink)
    # not the Python writer's uid ("clickhouse-writer"): its keyed state of pending rows has
    # no place in this stateless sink (an upgrade drains it first)
    # its own task thread: an insert takes milliseconds to seconds (merges on the server), and
    # chained it would stall the books operator for as long
    return DataStreamSink(j_sink).name("clickhouse-sink").uid("clickhouse-sink").disable_chaining()
