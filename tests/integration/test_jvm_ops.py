"""The JVM operators of ``jobs/jvm`` in a local MiniCluster job in thread mode: bundles reach a
Python KeyedProcessFunction as ``bytes`` keyed by NBBO group, and its sink blobs split into
Kafka records. Needs Maven and a JDK (the operators' jar is built on demand); only the
ClickHouse sink's test needs the stack (its ClickHouse).
Pins the private PyFlink API ``jobs.jvm_ops.bundle_frames`` relies on (KeyedStream's
constructor, ``_j_data_stream``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import DataStream, KeyedProcessFunction, StreamExecutionEnvironment
from pyflink.datastream.functions import RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.java_gateway import get_gateway

from jobs import jvm_ops
from schemas.bundles import NO_TIMESTAMP
from schemas.codec import RawEnvelope, encode_envelope
from stack.flink import venv_python, worker_pythonpath
from stack.jars import flink_connector_jars
from tickflow.config import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def envelope(instrument: str, seq: int) -> bytes:
    return encode_envelope(
        RawEnvelope(
            instrument=instrument,
            exchange="coinbase",
            symbol=instrument,
            channel="l2_data",
            receive_time_ns=1_700_000_000_000_000_000 + seq,
            connection_id="c1",
            connection_seq=seq,
            payload=json.dumps({"seq": seq}).encode(),
        )
    )


def bytes_source(env: StreamExecutionEnvironment, values: list[bytes]) -> DataStream:
    """A JVM source of byte arrays (``env.from_collection`` cannot carry PRIMITIVE_ARRAY(BYTE)
    in PyFlink 2.2: its Python-to-Java element conversion fails with a ClassCastException)."""
    j_values = get_gateway().jvm.java.util.ArrayList()
    for value in values:
        j_values.add(bytearray(value))
    type_info = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    return DataStream(env._j_stream_execution_environment.fromData(j_values, type_info))


def environment() -> StreamExecutionEnvironment:
    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    # the embedded interpreter sees neither the venv's site-packages nor this tree otherwise
    conf.set_string("python.executable", str(venv_python()))
    conf.set_string("python.pythonpath", worker_pythonpath(load_settings()))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.add_jars(*(jar.as_uri() for jar in flink_connector_jars(load_settings())))
    return env


def java_bytes(value: Any) -> bytes:
    """A collected Java ``byte[]`` (a Kafka value's bytes; untyped, it arrives as a list of
    signed ints)."""
    return bytes(b & 0xFF for b in value)


class Seq(TimestampAssigner):
    """Event time = 1000 + the envelope's connection_seq (its last varint before the payload
    is not easy to reach, so the test keeps a table)."""

    def __init__(self, times: dict[bytes, int]) -> None:
        self.times = times

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return self.times[bytes(value)]


class BundleEcho(KeyedProcessFunction):
    """Yields one sink blob per bundle: a record describing the bundle on "bundles", one per
    frame on "frames", and a keyed counter written only on persist bundles."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.persisted = runtime_context.get_state(
            ValueStateDescriptor("persisted", Types.PICKLED_BYTE_ARRAY())
        )

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[bytes]:
        key = ctx.get_current_key()
        flags, frames = jvm_ops.bundle_frames_of(value)
        persist = bool(flags & jvm_ops.BUNDLE_PERSIST)
        if persist:
            self.persisted.update((self.persisted.value() or 0) + 1)
        bundle = {
            "key": key,
            "value_type": type(value).__name__,
            "key_type": type(key).__name__,
            "frames": len(frames),
            "persist": persist,
            "timestamp": ctx.timestamp(),
            "frame_timestamps": [ts for ts, _ in frames],
        }
        yield jvm_ops.sink_blob(
            rows={"trades": (len(frames), b"\x00" * len(frames))},
            records={
                "bundles": [json.dumps(bundle)],
                "frames": [json.dumps({"key": key, "raw": raw.hex()}) for _, raw in frames],
            },
        )


def run(values: list[bytes], times: dict[bytes, int] | None, output: str) -> list[dict[str, Any]]:
    env = environment()
    raw = bytes_source(env, values)
    if times is not None:
        raw = raw.assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(
                Duration.of_millis(0)
            ).with_timestamp_assigner(Seq(times))
        )
    keyed = jvm_ops.bundle_frames(raw, {"USDT": "USD"}, max_frames=3, max_delay_ms=60_000)
    blobs = keyed.process(BundleEcho(), output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
    records = jvm_ops.topic_records(blobs, {output: f"{output}-topic"}, "records")
    with records.execute_and_collect() as results:
        out = [java_bytes(value) for topic, value in results if topic == f"{output}-topic"]
    return [json.loads(r) for r in out]


def test_bundles_reach_python_keyed_by_nbbo_group() -> None:
    instruments = ["BTC-USD", "ETH-USD", "BTC-USDT", "BTC-USD", "ETH-USD", "BTC-USD"]
    values = [envelope(inst, seq) for seq, inst in enumerate(instruments)]
    values.append(b"\xff\xff garbage")
    bundles = run(values, None, "bundles")
    assert {b["value_type"] for b in bundles} == {"bytes"}
    assert {b["key_type"] for b in bundles} == {"str"}
    # BTC-USD + BTC-USDT fill a bundle of 3 at the 4th BTC frame; the source's final watermark
    # flushes the rest; the end of input then flags every key that emitted (empty bundles)
    by_key = [(b["key"], b["frames"], b["persist"]) for b in bundles]
    assert by_key == [
        ("BTC-USD", 3, False),
        ("BTC-USD", 1, False),
        ("ETH-USD", 2, False),
        ("", 1, False),
        ("BTC-USD", 0, True),
        ("ETH-USD", 0, True),
        ("", 0, True),
    ]
    assert all(ts == NO_TIMESTAMP for b in bundles for ts in b["frame_timestamps"])
    assert all(b["timestamp"] == NO_TIMESTAMP for b in bundles)  # ctx.timestamp()

    frames = run(values, None, "frames")
    assert sorted(bytes.fromhex(f["raw"]) for f in frames) == sorted(values)
    btc = [bytes.fromhex(f["raw"]) for f in frames if f["key"] == "BTC-USD"]
    assert btc == [values[0], values[2], values[3], values[5]]  # in order within the key
    assert [bytes.fromhex(f["raw"]) for f in frames if f["key"] == ""] == [values[-1]]


def test_bundle_timestamps_and_watermark_flushes() -> None:
    values = [envelope("BTC-USD", seq) for seq in range(4)]
    times = {v: 1000 + 10 * i for i, v in enumerate(values)}
    bundles = run(values, times, "bundles")
    assert sum(b["frames"] for b in bundles) == 4
    for b in bundles:
        if b["frames"]:
            assert b["timestamp"] == max(b["frame_timestamps"])
    assert [ts for b in bundles for ts in b["frame_timestamps"]] == sorted(times.values())


def test_topic_records_carry_their_topics_and_skip_other_outputs() -> None:
    env = environment()
    blobs = bytes_source(
        env,
        [
            jvm_ops.sink_blob(records={"nbbo": ['{"a": 1}', '{"b": "€"}'], "bars": ["{}"]}),
            jvm_ops.sink_blob(rows={"trades": (1, b"\x01")}),
            jvm_ops.sink_blob(records={"nbbo": ['{"c": 3}']}),
        ],
    )
    topics = {"nbbo": "tickflow.nbbo", "deadletter": "tickflow.deadletter"}
    with jvm_ops.topic_records(blobs, topics, "records").execute_and_collect() as results:
        records = [(topic, java_bytes(value)) for topic, value in results]
    assert records == [
        ("tickflow.nbbo", b'{"a": 1}'),
        ("tickflow.nbbo", '{"b": "€"}'.encode()),
        ("tickflow.nbbo", b'{"c": 3}'),
    ]


def test_clickhouse_sink_inserts_rowbinary(stack_settings: Settings) -> None:
    """Through the stack's ClickHouse (the session fixture starts it when it is down)."""
    import uuid

    from clickhouse_driver import Client

    config = stack_settings.clickhouse
    client = Client(host=config.host, port=config.port, user=config.user, password=config.password)
    # a scratch table; in "default" when the server is not the stack's (no tickflow database)
    known = "SELECT count() FROM system.databases WHERE name = %(name)s"
    if not client.execute(known, {"name": config.database})[0][0]:
        config = dataclasses.replace(config, database="default")
    table = f"jvm_ops_test_{uuid.uuid4().hex[:8]}"
    client.execute(f"CREATE TABLE {config.database}.{table} (a UInt32, s String) ENGINE = Memory")
    try:
        rows = b"".join(
            i.to_bytes(4, "little") + bytes([len(f"r{i}")]) + f"r{i}".encode() for i in range(5)
        )
        env = environment()
        blobs = bytes_source(
            env,
            [jvm_ops.sink_blob(rows={table: (5, rows)}), jvm_ops.sink_blob(records={"x": ["{}"]})],
        )
        jvm_ops.clickhouse_sink(blobs, config, {table: ("a", "s")})
        env.execute("clickhouse-sink-test")
        got = client.execute(f"SELECT a, s FROM {config.database}.{table} ORDER BY a")
        assert got == [(i, f"r{i}") for i in range(5)]
    finally:
        client.execute(f"DROP TABLE IF EXISTS {config.database}.{table}")
