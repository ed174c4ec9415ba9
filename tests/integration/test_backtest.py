"""The backtest on the real stack: a range of generated frames produced into a raw topic,
stored by the batch backfill (the job's rows in ClickHouse), then replayed by the backtest from
the same topic at max speed: its events per kind are the stored ``FINAL`` rows, table by table
(counts and order-independent digests), and its frames/s is reported."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.backfill import run_backfill
from jobs.backtest import KINDS, Backtest, Context, Event, digest_rows, event_values
from jobs.frames import frame_source
from jobs.sinks.clickhouse import COLUMNS, connect, final_rows
from schemas.codec import envelope_instrument
from stack import manager
from stack.topics import ensure_topics
from tests.export_day import DAY_MS, generated_frames
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config
from tickflow.slice import _delete_kafka_topics

pytestmark = pytest.mark.integration

pytest.importorskip("tickflow_native")

# the generated day's first burst (its late trade included) and the minutes after it
FROM_MS, TO_MS = DAY_MS - 100_000, DAY_MS + 60_000


def _answers(component: Any) -> bool:
    try:
        return bool(component.answers())
    except Exception:
        return False


@pytest.fixture(scope="module")
def stored() -> Iterator[Settings]:
    """The generated frames in a raw topic of their own (each in its instrument's partition,
    timestamped with its receive time, as the connectors produce), beyond the range on both
    sides, and the backfill of the range in a database of its own."""
    base = load_settings()
    wanted = ["kafka", "clickhouse"]
    started: list[str] = []
    if not all(_answers(c) for c in manager.components(base, wanted)):
        started = manager.up(base, wanted)
    tag = uuid.uuid4().hex[:6]
    env = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.backtest{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.backtest{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_backtest{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-backtest{tag}",
    }
    with patched_environ(env):
        settings = load_settings()
    try:
        ensure_topics(settings)
        produce(settings, [f for f in generated_frames() if f[1] < DAY_MS + 2 * 3_600_000])
        report = run_backfill(settings, FROM_MS, TO_MS, workers=1, log=lambda _: None)
        assert report["frames"] > 0 and report["dead_letters"] == 0
        yield settings
    finally:
        client = connect(settings.clickhouse)
        client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        client.disconnect()
        _delete_kafka_topics(settings, [settings.kafka.raw_topic, settings.kafka.deadletter_topic])
        if started:
            manager.down(base, started)


def produce(settings: Settings, frames: list[tuple[bytes, int]]) -> None:
    from confluent_kafka import Producer

    from connectors.producer import partition_of

    producer = Producer({**client_config(settings.kafka), "enable.idempotence": True})
    equivalents = settings.analytics.quote_equivalents
    for value, timestamp_ms in frames:
        group = nbbo_group(envelope_instrument(value), equivalents)
        partition = partition_of(group, settings.kafka.raw_partitions)
        producer.produce(
            settings.kafka.raw_topic, value, group.encode(), partition, timestamp=timestamp_ms
        )
    assert producer.flush(30) == 0


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event, ctx: Context) -> None:
        self.events.append(event)


def test_the_backtests_events_are_the_stored_rows(stored: Settings) -> None:
    settings = stored
    recorder = Recorder()
    backtest = Backtest(settings, frame_source(settings, "kafka"), FROM_MS, TO_MS)
    result = backtest.run(recorder)
    print(
        f"backtest: {result.frames} frames, {sum(result.events.values())} events in "
        f"{result.seconds:.2f} s: {result.frames_per_s:.0f} frames/s, "
        f"{result.events_per_s:.0f} events/s"
    )
    assert result.frames > 500 and result.frames_per_s > 0
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    compared = {}
    try:
        for cls in KINDS:
            table = cls.table
            rows = client.execute(f"SELECT {', '.join(COLUMNS[table])} FROM {db}.{table} FINAL")
            delivered = [event_values(e) for e in recorder.events if isinstance(e, cls)]
            assert result.events[cls.kind] == len(delivered) > 0, cls.kind
            assert result.digests[cls.kind] == digest_rows(delivered)
            # what FINAL keeps of the delivered rows (a gap's opening row is replaced by its
            # closing one; no other table repeats an identity)
            final = final_rows(table, delivered)
            if table != "gaps":
                assert len(final) == len(delivered), table
            assert (len(final), digest_rows(final)) == (len(rows), digest_rows(rows)), table
            compared[table] = len(rows)
    finally:
        client.disconnect()
    assert set(compared) == set(COLUMNS)
