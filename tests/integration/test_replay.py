"""Historical replay: a live run of all three exchanges, then ``tickflow job replay`` of its
raw topic up to a moment in the run, into a namespace of its own: the replay's NBBO history and
matched trades before that moment equal the live job's, row for row."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.replay_cli import replay_overrides, submit_replay
from jobs.sinks.book_reader import read_book
from jobs.sinks.clickhouse import COLUMNS, connect
from stack import flink
from stack.supervisor import SupervisedJob, pipeline_submitter
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.kafka_security import client_config
from tickflow.runs import caught_up
from tickflow.slice import sim_post, start_slice, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXCHANGES = ("binance", "coinbase", "kraken")
LIVE_BEFORE_S = 25  # trading before the replay's end...
BTC_BOOKS = (("binance", "BTCUSDT"), ("coinbase", "BTC-USD"), ("kraken", "BTC/USD"))
LIVE_AFTER_S = 12  # ...and after it: the live watermark passes it and its trades are matched


def raw_records(settings: Settings) -> int:
    """Records in the raw topic, all partitions."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**client_config(settings.kafka), "group.id": "probe"})
    try:
        topic = settings.kafka.raw_topic
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.kafka.raw_partitions)
        )
    finally:
        consumer.close()


def replay_cut_ms(settings: Settings, to_ms: int) -> int:
    """The replay reads, in each partition, up to the first record stamped ``to_ms`` or later.
    The three connectors' records interleave in a partition slightly out of time order (more
    on a loaded machine), so a few frames stamped before ``to_ms`` can come after that record
    and are not replayed. Every frame stamped before the earliest frame left out is replayed:
    rows made by frames received before that are comparable."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.kafka.raw_topic
    consumer = Consumer({**client_config(settings.kafka), "group.id": "probe",
                         "enable.auto.commit": False})  # fmt: skip
    cut = to_ms
    try:
        wanted = [TopicPartition(topic, p, to_ms) for p in range(settings.kafka.raw_partitions)]
        for tp in consumer.offsets_for_times(wanted, timeout=10):
            end = consumer.get_watermark_offsets(tp, timeout=10)[1]
            if tp.offset < 0 or tp.offset >= end:
                continue
            consumer.assign([TopicPartition(topic, tp.partition, tp.offset)])
            for _ in range(end - tp.offset):
                msg = consumer.poll(10)
                if msg is None:
                    break
                if msg.error() is None:
                    cut = min(cut, msg.timestamp()[1])
    finally:
        consumer.close()
    return cut


def is_live(settings: Settings, exchange: str, symbol: str) -> bool:
    book = read_book(settings.redis, exchange, symbol)
    return book is not None and book.status == "LIVE"


def rows(settings: Settings, table: str, to_ms: int) -> list[tuple[Any, ...]]:
    """The table's rows made by frames received before ``to_ms`` (the replay's end is a record
    time, i.e. a receive time: a frame's own event time can be earlier)."""
    db = settings.clickhouse.database
    columns = ", ".join(COLUMNS[table])
    return sorted(
        connect(settings.clickhouse).execute(
            f"SELECT {columns} FROM {db}.{table} FINAL WHERE receive_time_ns < %(to)s",
            {"to": to_ms * 1_000_000},
        )
    )


def first_differences(live: list[tuple[Any, ...]], replayed: list[tuple[Any, ...]]) -> str:
    """Per instrument (second column): row counts and the first rows that differ."""
    text = []
    for instrument in sorted({r[1] for r in live} | {r[1] for r in replayed}):
        a = [r for r in live if r[1] == instrument]
        b = [r for r in replayed if r[1] == instrument]
        if a != b:
            diff = next(((x, y) for x, y in zip(a, b, strict=False) if x != y), None)
            text.append(f"{instrument}: live {len(a)}, replay {len(b)}, first {diff}")
    return "\n".join(text[:4])


def test_replayed_range_gives_the_live_nbbo_and_matched_trades(
    stack_settings: Settings, tmp_path: Path
) -> None:
    # a book marked STALE after wall-clock silence is not replayable (the replay turns it off);
    # on a loaded machine a lagging live job could see one
    with (
        patched_environ({"TICKFLOW__BOOK__STALE_AFTER_MS": "0"}),
        start_slice(tmp_path, exchanges=EXCHANGES, rate_per_symbol=10) as run,
    ):
        live = run.settings
        for exchange, symbol in BTC_BOOKS:
            live_book = functools.partial(is_live, live, exchange, symbol)
            wait_for(f"{exchange} {symbol} LIVE", live_book, 180)
        time.sleep(LIVE_BEFORE_S)
        to_ms = time.time_ns() // 1_000_000
        time.sleep(LIVE_AFTER_S)
        sim_post(live, "pause")
        time.sleep(2)  # the connectors' last frames into Kafka
        # the live job is behind on a loaded machine: compare once it has everything
        job = SupervisedJob([run.job_id], pipeline_submitter(live))
        caught_up(live, raw_records(live), job, print)
        cut_ms = replay_cut_ms(live, to_ms)
        print(f"replay to {to_ms}; rows compared up to {cut_ms}")
        live_nbbo = rows(live, "nbbo", cut_ms)
        live_matched = rows(live, "matched_trades", cut_ms)
        assert len(live_nbbo) > 100 and len(live_matched) > 20
        print(f"live: {len(live_nbbo)} NBBO rows, {len(live_matched)} matched trades")

        namespace = f"t{os.getpid()}"
        with patched_environ(replay_overrides(live, namespace, 0, to_ms, 0)):
            replay = load_settings()
            job_id = submit_replay(replay)
            try:
                assert flink.wait_job_finished(replay, job_id, 300) == "FINISHED"
                replayed_nbbo = rows(replay, "nbbo", cut_ms)
                assert replayed_nbbo == live_nbbo, first_differences(live_nbbo, replayed_nbbo)
                replayed_matched = rows(replay, "matched_trades", cut_ms)
                assert replayed_matched == live_matched, first_differences(
                    live_matched, replayed_matched
                )
            finally:
                with_cleanup(replay, job_id)


def with_cleanup(settings: Settings, job_id: str) -> None:
    from stack.topics import pipeline_topics
    from tickflow.slice import _delete_kafka_topics, _delete_redis_keys

    if flink.job_state(settings, job_id) not in flink.TERMINAL_STATES:
        flink.cancel_job(settings, job_id)
    connect(settings.clickhouse).execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    _delete_redis_keys(settings)
    topics = pipeline_topics(settings)
    topics.pop(settings.kafka.raw_topic)
    _delete_kafka_topics(settings, list(topics))
