"""The batch backfill (the compiled core's ``NativePartition`` in worker processes) on the real
stack: raw records backfilled into ClickHouse give the rows the core produces for them in
process, every one stored once, and their dead letters; a partition split by instrument gives
the whole partition's rows; RowBinary inserts survive the server closing an idle connection."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from jobs.backfill import (
    PartitionRange,
    backfill_partition,
    native_partition,
    partition_ranges,
    split_range,
)
from jobs.core_schemas import learning
from jobs.replay_cli import backfill_overrides
from schemas.codec import decode_envelope, encode_envelope
from schemas.writers import registry_writer_schemas
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import Feeder, make_dataset
from tickflow.kafka_security import client_config
from tickflow.runs import batch_backfill, clickhouse_rows, differing, drop_database
from tickflow.slice import _delete_kafka_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def with_bad_records(records: list[tuple[bytes, bytes, int, str]]) -> list[Any]:
    """The dataset plus an undecodable record and an unparsable frame (dead letters)."""
    key, value, timestamp_ms, group = records[len(records) // 2]
    env = decode_envelope(value)
    unparsable = encode_envelope(dataclasses.replace(env, payload=b"{not json"))
    return [
        *records[: len(records) // 2],
        (key, b"\x00garbage", timestamp_ms, group),
        (key, unparsable, timestamp_ms, group),
        *records[len(records) // 2 :],
    ]


@pytest.fixture(scope="module")
def loaded(stack_settings: Settings) -> Any:
    tag = uuid.uuid4().hex[:6]
    env = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.native{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.native{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_native{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-native{tag}",
    }
    with patched_environ(env):
        settings = load_settings()
        data = make_dataset(settings, 20_000)
        records = with_bad_records(data.records)
        ensure_topics(settings)
        Feeder(settings, records).run(rate=0)
        day = datetime.fromtimestamp(records[-1][2] / 1000, UTC).date()
        try:
            yield settings, day, records
        finally:
            drop_database(settings)
            backfill_letters = backfill_overrides(settings, day, 0)[
                "TICKFLOW__KAFKA__DEADLETTER_TOPIC"
            ]
            topics = [settings.kafka.raw_topic, settings.kafka.deadletter_topic, backfill_letters]
            _delete_kafka_topics(settings, topics)


def test_the_backfill_stores_the_cores_rows_once_and_its_dead_letters(loaded: Any) -> None:
    settings, day, records = loaded
    drop_database(settings)
    report = batch_backfill(settings, day)
    # the same records through the core in this process, in offset order per partition
    expected: Counter[str] = Counter()
    by_partition: dict[int, list[Any]] = {}
    for record in records:
        by_partition.setdefault(hash_partition(settings, record[3]), []).append(record)
    for part_records in by_partition.values():
        engine = native_partition(settings, PartitionRange(0, 0, len(part_records)))
        # the undecodable record frames an id the registry lacks: learned as such
        values, stamps = [r[1] for r in part_records], [r[2] for r in part_records]
        writers = registry_writer_schemas(settings.registry)
        learning(writers, partial(engine.feed_batch, values, stamps))
        engine.finish()
        for table, _, rows in engine.take_tables(0):
            expected[table] += rows
    assert report["frames"] == len(records)
    assert report["rows_by_table"] == dict(sorted(expected.items()))
    assert report["dead_letters"] == 2
    assert report["rows"] > len(records)  # every table filled
    stored = {t: sum(c.values()) for t, c in clickhouse_rows(settings).items() if c}
    # an interval's open row and its closing row share one identity: FINAL keeps the closing
    # one, so the table holds between half and all of the rows written
    written_gaps = expected.pop("gaps", 0)
    stored_gaps = stored.pop("gaps", 0)
    assert stored_gaps <= written_gaps <= 2 * stored_gaps
    assert stored == dict(expected)
    # each bad record once, the unparsable frame with its envelope's fields
    letters = dead_letters(
        backfill_overrides(settings, day, 0)["TICKFLOW__KAFKA__DEADLETTER_TOPIC"]
    )
    assert len(letters) == 2
    assert Counter(bool(x.get("exchange")) for x in letters) == Counter({True: 1, False: 1})
    assert all(x["stage"] == "job" and x["error"] for x in letters)


def hash_partition(settings: Settings, group: str) -> int:
    """The raw-topic partition of an NBBO group's records (as the connectors produce them)."""
    from connectors.producer import partition_of

    return partition_of(group, settings.kafka.raw_partitions)


def dead_letters(topic: str) -> list[dict[str, Any]]:
    from confluent_kafka import Consumer

    consumer = Consumer({
        **client_config(load_settings().kafka),
        "group.id": f"dl-{uuid.uuid4().hex[:6]}",
        "auto.offset.reset": "earliest",
    })  # fmt: skip
    consumer.subscribe([topic])
    letters: list[dict[str, Any]] = []
    try:
        for _ in range(20):
            letters += [json.loads(m.value() or b"") for m in consumer.consume(100, timeout=1.0)]
            if len(letters) >= 2:
                break
    finally:
        consumer.close()
    return letters


def test_native_split_by_instrument_gives_the_whole_partitions_rows(loaded: Any) -> None:
    native, day, records = loaded
    drop_database(native)
    batch_backfill(native, day)
    whole = clickhouse_rows(native)
    drop_database(native)
    from jobs.sinks.clickhouse import ensure_schema

    ensure_schema(native.clickhouse)
    frames = 0
    for part in partition_ranges(native, 0, 2**62):
        counts = Counter(group for *_, group in records)
        for piece in split_range(part, counts, 3) if part.records else []:
            frames += backfill_partition(native, piece)["frames"]
    assert frames == len(records)
    assert not any(differing(whole, clickhouse_rows(native)).values())


def test_rowbinary_insert_after_the_server_closed_the_idle_connection(
    stack_settings: Settings,
) -> None:
    import struct
    import time

    from jobs.sinks.clickhouse import RowBinaryWriter, connect, ensure_schema

    tag = uuid.uuid4().hex[:6]
    with patched_environ({"TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_rowbinary{tag}"}):
        settings = load_settings()

    def text(value: str) -> bytes:
        return bytes([len(value)]) + value.encode()

    # one late_events row: date, instrument, exchange, symbol, kind, event_id, 4 x UInt64
    row = b"".join([
        struct.pack("<H", 20_000), text("BTC-USD"), text("binance"), text("BTCUSDT"),
        text("trade"), text("1"), struct.pack("<QQQQ", 5, 10, 5, 7),
    ])  # fmt: skip
    ensure_schema(settings.clickhouse)
    writer = RowBinaryWriter(settings.clickhouse)
    client = connect(settings.clickhouse)
    try:
        assert writer.insert("late_events", row, 1) == 1
        time.sleep(4)  # past the server's keep-alive timeout (3 s): it closes the connection
        assert writer.insert("late_events", row, 1) == 1
        db = settings.clickhouse.database
        assert client.execute(f"SELECT count(), any(symbol) FROM {db}.late_events") == [
            (2, "BTCUSDT")
        ]
    finally:
        writer.close()
        client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
