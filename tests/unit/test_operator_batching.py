"""The operators' batching: the ClickHouse rows of one call in one record, the ClickHouse
batcher taking batches (and single rows of the earlier layout), Redis writes sent together
and flushed by a timer, and restored books published again."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

import jobs.operators as operators
from bench.hot_path import FakeContext, FakeRuntimeContext
from jobs.book.levels import BookStatus
from jobs.instrument import BookView
from jobs.operators import (
    DEAD_LETTERS,
    REDIS_FLUSH_MS,
    ROWS,
    ClickHouseBatcher,
    InstrumentProcessor,
    batch_rows,
)
from jobs.sinks.redis_books import RedisBatch, RedisBookWriter, RedisNbboWriter, book_key
from schemas.codec import encode_envelope
from tests.unit.test_instrument_analytics import T0, bn_depth, bn_env, bn_snapshot
from tickflow.config import RedisConfig, load_settings

pytestmark = pytest.mark.unit

D = Decimal


def test_rows_of_one_call_go_out_as_one_record_after_the_side_outputs() -> None:
    records = [("trades", (1,)), (DEAD_LETTERS, "x"), ("nbbo", (2,)), ("trades", (3,))]
    assert list(batch_rows(iter(records))) == [
        (DEAD_LETTERS, "x"),
        (ROWS, [("trades", (1,)), ("nbbo", (2,)), ("trades", (3,))]),
    ]
    assert list(batch_rows(iter([(DEAD_LETTERS, "y")]))) == [(DEAD_LETTERS, "y")]


class FakeWriter:
    def __init__(self) -> None:
        self.inserts: list[tuple[str, list[tuple[Any, ...]]]] = []

    def insert(self, table: str, rows: list[tuple[Any, ...]]) -> int:
        self.inserts.append((table, list(rows)))
        return len(rows)


class TimerContext(FakeContext):
    def time_domain(self) -> Any:
        from pyflink.datastream import TimeDomain

        return TimeDomain.PROCESSING_TIME


def inserts(op: ClickHouseBatcher) -> list[tuple[str, list[tuple[Any, ...]]]]:
    writer = op.writer
    assert isinstance(writer, FakeWriter)
    return writer.inserts


def batcher(
    runtime: FakeRuntimeContext, monkeypatch: pytest.MonkeyPatch, batch_rows_limit: int = 100
) -> ClickHouseBatcher:
    config = dataclasses.replace(load_settings().clickhouse, insert_batch_rows=batch_rows_limit)
    op = ClickHouseBatcher(config)
    # open() without ClickHouse
    monkeypatch.setattr(operators, "ensure_schema", lambda config: None)
    monkeypatch.setattr(operators, "ClickHouseWriter", lambda config: FakeWriter())
    op.open(runtime)
    return op


def test_batcher_inserts_batches_per_table_in_order_and_old_single_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = FakeRuntimeContext()
    op = batcher(runtime, monkeypatch)
    ctx = FakeContext(runtime.keyed)
    ctx.timers.now_ms = 1_000
    runtime.keyed.key = ROWS
    op.process_element((ROWS, [("trades", (1,)), ("nbbo", (2,))]), ctx)
    op.process_element((ROWS, [("trades", (3,))]), ctx)
    # one flush timer per tick (not per record), and one end-of-input timer per key
    assert ctx.timers.timers == 2
    runtime.keyed.key = "trades"  # a row of the earlier layout, keyed by its table
    op.process_element(("trades", (0,)), ctx)
    runtime.keyed.key = ROWS
    op.on_timer(1_500, TimerContext(runtime.keyed))
    runtime.keyed.key = "trades"
    op.on_timer(1_500, TimerContext(runtime.keyed))
    assert inserts(op) == [
        ("trades", [(1,), (3,)]),
        ("nbbo", [(2,)]),
        ("trades", [(0,)]),
    ]
    assert all(state.data.get(ROWS) in (None, {}) for state in runtime.states)


def test_batcher_counts_rows_not_records_and_recounts_after_a_restore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = FakeRuntimeContext()
    op = batcher(runtime, monkeypatch, batch_rows_limit=4)
    ctx = FakeContext(runtime.keyed)
    runtime.keyed.key = ROWS
    op.process_element((ROWS, [("trades", (1,)), ("trades", (2,))]), ctx)
    restored = batcher(runtime, monkeypatch, batch_rows_limit=4)  # same state, new process
    restored.process_element((ROWS, [("trades", (3,))]), ctx)
    assert inserts(restored) == []
    restored.process_element((ROWS, [("nbbo", (4,))]), ctx)
    assert inserts(restored) == [
        ("trades", [(1,), (2,), (3,)]),
        ("nbbo", [(4,)]),
    ]


# --- Redis (skipped when the local Redis does not answer) ---------------------------------


@pytest.fixture
def redis_config() -> Iterator[RedisConfig]:
    base = load_settings().redis
    config = dataclasses.replace(base, key_prefix=f"tftest-batch-{uuid.uuid4().hex[:10]}")
    client = redis.Redis(host=config.host, port=config.port, db=config.db)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis does not answer on {config.host}:{config.port}: {e}")
    try:
        yield config
    finally:
        keys = list(client.scan_iter(match=f"{config.key_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def view(version: int, bid: str = "1.0") -> BookView:
    return BookView(
        "binance", "BNBBTC", "BNB-BTC", BookStatus.LIVE, "", 10, version,
        ((D(bid), D("2")),), ((D("1.1"), D("3")),), T0, T0 * 10**6,
    )  # fmt: skip


def stored(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    fields = client.hgetall(book_key(prefix, "binance", "BNBBTC"))
    fields.pop(b"publish_time_ns", None)
    return dict(fields)


def test_a_batch_writes_what_single_writes_write_and_keeps_the_version_guard(
    redis_config: RedisConfig,
) -> None:
    single = RedisBookWriter(
        dataclasses.replace(redis_config, key_prefix=redis_config.key_prefix + "s")
    )
    books = RedisBookWriter(redis_config)
    batch = RedisBatch(books, RedisNbboWriter(books.client, redis_config.key_prefix))
    try:
        # a script unknown to Redis (as after a restart): loaded, and the writes sent again
        batch._scripts = {script: "0" * 40 for script in batch._scripts}
        for version, bid in ((5, "1.0"), (7, "1.01"), (6, "0.9")):
            batch.add_book(view(version, bid))
            single.write(view(version, bid))
        assert len(batch) == 3
        assert batch.flush() == [True, True, False]  # 6 after 7: refused
        assert len(batch) == 0 and batch.flush() == []
        want = stored(single.client, single.prefix)
        assert want[b"version"].endswith(b"7") and stored(books.client, books.prefix) == want
    finally:
        keys = list(single.client.scan_iter(match=f"{single.prefix}:*"))
        if keys:
            single.client.delete(*keys)
        single.close()
        books.close()


def operator(config: RedisConfig, runtime: FakeRuntimeContext) -> InstrumentProcessor:
    settings = load_settings()
    op = InstrumentProcessor(settings.book, config, settings.analytics, settings.monitoring)
    op.open(runtime)
    return op


def test_redis_writes_wait_for_the_flush_timer_and_restored_books_are_published_again(
    redis_config: RedisConfig,
) -> None:
    client = redis.Redis(host=redis_config.host, port=redis_config.port, db=redis_config.db)
    key = book_key(redis_config.key_prefix, "binance", "BNBBTC")
    runtime = FakeRuntimeContext()
    runtime.keyed.key = "BNB-BTC"
    op = operator(redis_config, runtime)
    ctx = FakeContext(runtime.keyed)
    ctx.timers.now_ms = T0 + 5
    snapshot = bn_env("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0)
    list(op.process_element(encode_envelope(snapshot), ctx))
    assert not client.exists(key) and ctx.timers.timers >= 1  # queued, a flush timer set
    due = T0 + 5 + REDIS_FLUSH_MS
    assert due % load_settings().book.timer_interval_ms  # never a housekeeping tick
    list(op.on_timer(due, TimerContext(runtime.keyed)))
    assert client.hget(key, "status") == b"LIVE"
    version = client.hget(key, "version")
    # a delta, then the process dies before the queued write went out
    delta = bn_env("depth", bn_depth(11, 11, T0 + 100, [], [["1.05", "1"]]), T0 + 100)
    ctx.timers.now_ms = T0 + 100
    list(op.process_element(encode_envelope(delta), ctx))
    assert client.hget(key, "version") == version
    op.redis.close()
    restored = operator(redis_config, runtime)  # the same state: as after a restore
    ctx.timers.now_ms = T0 + 200
    restored._books("BNB-BTC")
    assert len(restored.redis_batch) == 1  # the restored book, queued for the next flush
    restored._flush_redis()
    assert (client.hget(key, "version") or b"") > (version or b"")
    assert client.hget(key, "asks") == b'[["1.05","1"],["1.1","3"]]'
    restored.close()
    client.close()
