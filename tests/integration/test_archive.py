"""The raw archive on the real stack: simulated frames produced into a raw topic are archived
(``tickflow archive run``), then Kafka's copy is deleted (``delete_records``): the backfill
from the archive stores the rows the backfill from Kafka stored before the deletion, and the
Flink replay from the archive gives the replay from Kafka's results. An archiver killed
(SIGKILL) while it writes, then started again, leaves every offset archived exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs.archive import layout
from jobs.backfill import run_backfill
from jobs.frames import opened_source
from jobs.replay_cli import archive_overrides, replay_overrides, republish_range, submit_replay
from jobs.sinks.clickhouse import connect
from stack import flink
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import Feeder, make_dataset
from tickflow.kafka_security import client_config
from tickflow.runs import clickhouse_rows, differing, drop_database
from tickflow.slice import _delete_kafka_topics, _delete_redis_keys

pytestmark = pytest.mark.integration

FRAMES = 12_000
REPLAY_TIMEOUT_S = 600.0


@contextmanager
def raw_namespace(tmp: Path, name: str, frames: int) -> Iterator[tuple[Settings, Any]]:
    """A raw topic, dead-letter topic, ClickHouse database and archive of the test's own,
    holding ``frames`` simulated frames of all three exchanges (as the backfill's tests make
    them); everything removed at the end."""
    tag = f"{name}{uuid.uuid4().hex[:6]}"
    env = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.{tag}",
        "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.control.{tag}",
        "TICKFLOW__KAFKA__NBBO_TOPIC": f"tickflow.nbbo.{tag}",
        "TICKFLOW__KAFKA__MATCHED_TRADES_TOPIC": f"tickflow.matched-trades.{tag}",
        "TICKFLOW__KAFKA__BARS_TOPIC": f"tickflow.bars.{tag}",
        "TICKFLOW__KAFKA__TOUCHES_TOPIC": f"tickflow.touches.{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-{tag}",
        "TICKFLOW__REDIS__KEY_PREFIX": f"tf{tag}",
        "TICKFLOW__ARCHIVE__DIR": str(tmp / "archive"),
        "TICKFLOW__ARCHIVE__CONSUMER_GROUP": f"tickflow-archive-{tag}",
        "TICKFLOW__ARCHIVE__METRICS_PORT": "0",
        # wall-clock staleness and idleness are not replayable (bench.chaos says why)
        "TICKFLOW__BOOK__STALE_AFTER_MS": "0",
        "TICKFLOW__ANALYTICS__NBBO_STALE_AFTER_MS": "0",
        "TICKFLOW__FLINK__WATERMARK_IDLE_TIMEOUT_MS": "0",
    }
    with patched_environ(env):
        settings = load_settings()
        data = make_dataset(settings, frames)
        ensure_topics(settings)
        try:
            yield settings, data
        finally:
            connect(settings.clickhouse).execute(
                f"DROP DATABASE IF EXISTS {settings.clickhouse.database}"
            )
            _delete_kafka_topics(settings, list(pipeline_topics(settings)))


def archive_cli(*args: str) -> subprocess.Popen[bytes]:
    """``tickflow archive ...`` as the demo starts it: its own process (the environment of
    the namespace inherited)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tickflow.cli", "archive", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def archive_until_end() -> str:
    proc = archive_cli("run", "--until-end")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def kafka_ends(settings: Settings) -> dict[int, tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**client_config(settings.kafka), "group.id": "probe"})
    try:
        topic = settings.kafka.raw_topic
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(settings.kafka.raw_partitions)
        }
    finally:
        consumer.close()


def delete_kafkas_copy(settings: Settings) -> None:
    """Every record of the raw topic deleted, as retention would (``delete_records``)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(settings.kafka))
    topic = settings.kafka.raw_topic
    ends = kafka_ends(settings)
    wanted = [TopicPartition(topic, p, high) for p, (_, high) in ends.items()]
    for future in admin.delete_records(wanted, request_timeout=30).values():
        future.result()
    assert all(low == high for low, high in kafka_ends(settings).values())


def frames_of(settings: Settings, kind: str) -> dict[int, list[tuple[int, bytes, int]]]:
    """Per partition, every (offset, value, timestamp) the source holds."""
    out = {}
    with opened_source(settings, kind) as source:
        for p in source.partitions():
            start, end = source.offset_range(p, 0, 2**62)
            out[p] = [
                record
                for batch in source.read(p, start, end)
                for record in zip(batch.offsets, batch.values, batch.timestamps, strict=True)
            ]
    return out


def test_the_backfill_from_the_archive_equals_the_backfill_from_kafka_before_its_deletion(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with raw_namespace(tmp_path, "arch", FRAMES) as (settings, data):
        Feeder(settings, data.records).run(rate=0)
        from_kafka = run_backfill(settings, 0, 2**62, log=print)
        kafka_rows = clickhouse_rows(settings)
        drop_database(settings)
        print(archive_until_end())
        kafka_frames = frames_of(settings, "kafka")
        assert sum(len(f) for f in kafka_frames.values()) == FRAMES
        assert frames_of(settings, "archive") == kafka_frames  # byte for byte

        delete_kafkas_copy(settings)
        assert not any(frames_of(settings, "kafka").values())
        from_archive = run_backfill(settings, 0, 2**62, log=print, source="archive")
        assert from_archive["frames"] == from_kafka["frames"] == FRAMES
        assert from_archive["rows_by_table"] == from_kafka["rows_by_table"]
        archive_rows = clickhouse_rows(settings)
        assert sum(sum(c.values()) for c in archive_rows.values()) > FRAMES
        assert not any(differing(kafka_rows, archive_rows).values()), differing(
            kafka_rows, archive_rows
        )


def test_an_archiver_killed_while_writing_leaves_every_offset_archived_once(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with (
        raw_namespace(tmp_path, "archkill", FRAMES) as (settings, data),
        patched_environ({"TICKFLOW__ARCHIVE__ROLL_RECORDS": "700",
                         "TICKFLOW__ARCHIVE__ROW_GROUP_RECORDS": "100"}),  # fmt: skip
    ):
        root = Path(settings.archive.dir)
        topic = settings.kafka.raw_topic
        feeder = Feeder(settings, data.records).start(rate=FRAMES / 10)
        killed_mid_file = 0
        for _ in range(3):  # killed three times while the records arrive
            archiver = archive_cli("run")
            deadline = time.monotonic() + 120
            before = len(list(root.glob("*/date=*/partition=*/*.parquet")))
            while time.monotonic() < deadline:  # once it closed a file and writes the next
                closed = len(list(root.glob("*/date=*/partition=*/*.parquet")))
                if closed > before and layout.temporary_files(root, topic):
                    break
                assert archiver.poll() is None, archiver.communicate()[0].decode()
                time.sleep(0.05)
            killed_mid_file += bool(layout.temporary_files(root, topic))
            archiver.send_signal(signal.SIGKILL)
            archiver.wait(30)
        assert killed_mid_file >= 2, "killed while a file was being written"
        feeder.join(120)
        print(archive_until_end())
        assert not layout.temporary_files(root, topic)
        ends = kafka_ends(settings)
        for partition, files in layout.archived_files(root, topic).items():
            offsets = [
                offset
                for f in files
                for offset in pq.read_table(f.path, columns=["offset"])["offset"].to_pylist()
            ]
            low, high = ends[partition]
            assert offsets == list(range(low, high)), f"partition {partition}"
        assert frames_of(settings, "archive") == frames_of(settings, "kafka")
        assert all(not layout.read_gaps(root, topic, p) for p in ends)


def test_records_gone_from_kafka_before_they_were_archived_are_a_recorded_gap(
    stack_settings: Settings, tmp_path: Path
) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    with raw_namespace(tmp_path, "archgap", 2_000) as (settings, data):
        Feeder(settings, data.records).run(rate=0)
        topic = settings.kafka.raw_topic
        ends = kafka_ends(settings)
        # retention took the first 100 records of partition 0 and all of partition 1
        admin = AdminClient(client_config(settings.kafka))
        gone = [TopicPartition(topic, 0, 100), TopicPartition(topic, 1, ends[1][1])]
        for future in admin.delete_records(gone, request_timeout=30).values():
            future.result()
        archive_until_end()
        root = Path(settings.archive.dir)
        gaps = layout.read_gaps(root, topic, 0)
        assert [(g["from"], g["to"]) for g in gaps] == [(0, 100)]
        assert not layout.read_gaps(root, topic, 1)  # recorded with its next record
        files = layout.archived_files(root, topic)
        assert files[0][0].first == 100 and 1 not in files
        assert frames_of(settings, "archive") == {
            p: records for p, records in frames_of(settings, "kafka").items() if records
        }


def replay_rows(settings: Settings, namespace: str, source: str) -> dict[str, Counter[Any]]:
    """The Flink replay of the whole raw topic, from Kafka or the archive: its tables' rows."""
    env = replay_overrides(settings, namespace, 0, 2**62, 0)
    if source == "archive":
        env.update(archive_overrides(settings, namespace))
    with patched_environ(env):
        replay = load_settings()
        if source == "archive":
            copied = republish_range(settings, replay)
            print(f"republished {copied}")
        job_id = submit_replay(replay)
        try:
            state = flink.wait_job_finished(replay, job_id, REPLAY_TIMEOUT_S)
            assert state == "FINISHED", flink.root_exception(replay, job_id)
            return clickhouse_rows(replay)
        finally:
            if flink.job_state(replay, job_id) not in flink.TERMINAL_STATES:
                flink.cancel_job(replay, job_id)
            drop_database(replay)
            _delete_redis_keys(replay)
            topics = pipeline_topics(replay)
            if source == "kafka":
                topics.pop(replay.kafka.raw_topic)  # the namespace's raw topic is the test's
            _delete_kafka_topics(replay, list(topics))


@pytest.mark.slow
def test_the_replay_from_the_archive_equals_the_replay_from_kafka(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with raw_namespace(tmp_path, "archrp", FRAMES // 2) as (settings, data):
        Feeder(settings, data.records).run(rate=0)
        tag = f"{os.getpid()}{uuid.uuid4().hex[:4]}"
        from_kafka = replay_rows(settings, f"k{tag}", "kafka")
        assert sum(sum(c.values()) for c in from_kafka.values()) > FRAMES // 2
        print(archive_until_end())
        delete_kafkas_copy(settings)
        from_archive = replay_rows(settings, f"a{tag}", "archive")
        print(f"replayed rows per table: {({t: sum(c.values()) for t, c in from_kafka.items()})}")
        assert not any(differing(from_kafka, from_archive).values()), differing(
            from_kafka, from_archive
        )
