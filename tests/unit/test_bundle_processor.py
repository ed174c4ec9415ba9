"""The books operator (``BundleProcessor``) around the compiled core, on fake Flink state and
timers and the local Redis: a bundle in, one sink blob out; Redis writes sent together and
flushed by a timer; the core's state written before a checkpoint barrier, and a restored
operator publishing its books again. And ``RedisBatch``: pipelined writes as the scripts
apply them, version guard included."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from jobs.operators import REDIS_FLUSH_MS, BundleProcessor
from jobs.sinks.book_reader import read_book
from jobs.sinks.redis_books import (
    EXPIRED,
    LEASE_FIELD,
    RedisBatch,
    book_key,
    effective_status,
    nbbo_key,
    redis_client,
)
from schemas.bundles import (
    BUNDLE_PERSIST,
    CLICKHOUSE_ROWS,
    KAFKA_RECORDS,
    frame_bundle,
    sink_blob_sections,
)
from tests.unit.core_driver import binance, bn_depth, bn_snapshot, bn_trade
from tests.unit.flink_fakes import FakeContext, FakeRuntimeContext, FakeTimerService
from tickflow.config import RedisConfig, load_settings

pytestmark = pytest.mark.unit

pytest.importorskip("tickflow_native")

T0 = 1_700_000_000_000
KEY = "BNB-BTC"


@pytest.fixture
def redis_config() -> Iterator[RedisConfig]:
    """A unique key prefix on the local Redis (skipped when it does not answer)."""
    base = load_settings().redis
    config = dataclasses.replace(base, key_prefix=f"tftest-op-{uuid.uuid4().hex[:10]}")
    client = redis_client(config)
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


class Operator:
    """A BundleProcessor opened on a fake runtime (shared: a new one sees the same state)."""

    def __init__(self, config: RedisConfig, runtime: FakeRuntimeContext) -> None:
        settings = load_settings()
        self.function = BundleProcessor(
            settings.book, config, settings.analytics, settings.monitoring
        )
        self.function.open(runtime)
        runtime.keyed.key = KEY
        self.runtime = runtime
        self.timers = FakeTimerService()

    def bundle(self, frames: list[bytes], now_ms: int, flags: int = 0) -> list[bytes]:
        self.timers.now_ms = now_ms
        ctx = FakeContext(self.runtime.keyed, self.timers)
        bundle = frame_bundle([(f, now_ms) for f in frames], flags)
        return list(self.function.process_element(bundle, ctx))

    def timer(self, timestamp: int, domain: str = "processing") -> list[bytes]:
        self.timers.now_ms = max(self.timers.now_ms, timestamp)
        ctx = FakeContext(self.runtime.keyed, self.timers, domain)
        return list(self.function.on_timer(timestamp, ctx))


def test_a_bundle_gives_one_blob_and_redis_writes_wait_for_the_flush_timer(
    redis_config: RedisConfig,
) -> None:
    client = redis_client(redis_config)
    key = book_key(redis_config.key_prefix, "binance", "BNBBTC")
    op = Operator(redis_config, FakeRuntimeContext())
    snapshot = binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0)
    depth = binance("depth", bn_depth(11, 11, T0 + 1, [["1.01", "1"]], []), T0 + 1)
    [blob] = op.bundle([snapshot, depth], T0 + 5)
    rows = {name: n for kind, name, n, _ in sink_blob_sections(blob) if kind == CLICKHOUSE_ROWS}
    assert rows["top_of_book"] == 2 and rows["book_snapshots"] == 1
    assert not client.exists(key)  # queued, a flush timer set
    due = T0 + 5 + REDIS_FLUSH_MS
    assert due in op.timers.processing
    assert due % load_settings().book.timer_interval_ms  # never a housekeeping tick
    assert op.timer(due) == []
    assert client.hget(key, "status") == b"LIVE" and client.hget(key, "seq") == b"11"
    counters = op.runtime.metrics.counters
    assert counters["frames"].count == 2 and counters["bundles"].count == 1
    assert counters["book_updates"].count >= 1
    op.function.close()
    client.close()


def test_state_is_written_before_a_barrier_and_a_restored_operator_publishes_its_books(
    redis_config: RedisConfig,
) -> None:
    client = redis_client(redis_config)
    key = book_key(redis_config.key_prefix, "binance", "BNBBTC")
    runtime = FakeRuntimeContext()
    op = Operator(redis_config, runtime)
    op.bundle([binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0)], T0)
    state = runtime.named["core-state"]
    assert state.value() is None  # not yet: between barriers the core is ahead of the state
    op.bundle([binance("depth", bn_depth(11, 11, T0 + 10, [], [["1.05", "1"]]), T0 + 10)],
              T0 + 10, flags=BUNDLE_PERSIST)  # fmt: skip
    assert state.value() is not None  # the bundler flags the bundle before a barrier
    # the process dies before the queued writes went out
    op.function.redis.close()
    assert not client.exists(key)
    restored = Operator(redis_config, runtime)  # the same state: as after a restore
    # a quiet instrument: only a timer comes; the core is loaded from the state for it
    restored.timer(T0 + 1000)
    assert client.hget(key, "asks") == b'[["1.05","1"],["1.1","3"]]'
    assert client.hget(key, "seq") == b"11"
    # and its NBBO, whose hash is leased by this run: it reads live, not EXPIRED
    nbbo = nbbo_key(redis_config.key_prefix, KEY)
    assert client.hget(nbbo, "bid_price") == b"1.0"
    lease = client.hget(nbbo, LEASE_FIELD)
    assert lease is not None and int(lease) > time.time() * 1000
    restored.function.close()
    client.close()


def test_event_time_timer_matches_pending_trades(redis_config: RedisConfig) -> None:
    op = Operator(redis_config, FakeRuntimeContext())
    op.timers.watermark = T0 - 1000
    op.bundle([
        binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0),
        binance("trade", bn_trade(7, "1.1", "1", T0 + 10), T0 + 10),
    ], T0 + 10)  # fmt: skip
    assert op.timers.event == [T0 + 10]  # the trade waits for the watermark
    op.timers.watermark = T0 + 10
    [blob] = op.timer(T0 + 10, "event")
    sections = {(kind, name): n for kind, name, n, _ in sink_blob_sections(blob)}
    assert sections[(CLICKHOUSE_ROWS, "matched_trades")] == 1
    assert sections[(KAFKA_RECORDS, "matched_trades")] == 1  # the result topic's record
    op.function.close()


def test_a_batch_applies_writes_in_order_and_keeps_the_version_guard(
    redis_config: RedisConfig,
) -> None:
    import tickflow_native

    from jobs.backfill import core_rules

    settings = load_settings()
    core = tickflow_native.NativeStream(
        **core_rules(settings.book, settings.analytics),
        stale_after_ms=0,
        resync_retry_ms=10_000,
        redis_prefix=redis_config.key_prefix,
    )
    writes = []
    for update_id, bid in ((10, "1.0"), (11, "1.01")):
        frame = bn_snapshot(update_id, [[bid, "2"]], [["1.1", "3"]])
        core.process_bundle(KEY, frame_bundle([(binance("snapshot", frame, T0), T0)]), 0, T0)
        writes += [w for w in core.take_redis(T0 * 10**6) if not w[0]]
    (_, keys, older), (_, _, newer) = writes
    client = redis_client(redis_config)
    batch = RedisBatch(client)
    # a script unknown to Redis (as after a restart): loaded, and the writes sent again
    batch._scripts = {script: "0" * 40 for script in batch._scripts}
    for args in (older, newer, older):
        batch.add_write(False, keys, args)
    assert len(batch) == 3
    assert batch.flush() == [True, True, False]  # the older version after the newer: refused
    assert len(batch) == 0 and batch.flush() == []
    assert client.hget(keys[0], "seq") == b"11"
    assert client.sismember(keys[1], keys[0])
    client.close()


def test_every_hash_written_carries_a_lease_that_readers_honour(
    redis_config: RedisConfig,
) -> None:
    client = redis_client(redis_config)
    key = book_key(redis_config.key_prefix, "binance", "BNBBTC")
    op = Operator(redis_config, FakeRuntimeContext())
    op.bundle([binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0)], T0)
    before_ms = time.time_ns() // 1_000_000
    op.timer(T0 + REDIS_FLUSH_MS)
    lease = redis_config.live_lease_ms
    until = int(client.hget(key, LEASE_FIELD) or 0)
    assert before_ms + lease <= until <= time.time_ns() // 1_000_000 + lease
    assert read_book(redis_config, "binance", "BNBBTC").status == "LIVE"  # type: ignore[union-attr]
    # the job stopped renewing: past its lease the same hash reads EXPIRED
    client.hset(key, LEASE_FIELD, before_ms - 1)
    assert read_book(redis_config, "binance", "BNBBTC").status == EXPIRED  # type: ignore[union-attr]
    # the next renewal (due every fifth of the lease; made due here) covers every hash written
    op.function._lease_due_ms = 0
    op.timer(T0 + 1000)
    assert int(client.hget(key, LEASE_FIELD) or 0) >= before_ms + lease
    op.function.close()
    client.close()


def test_effective_status_is_the_stored_one_only_while_the_lease_holds() -> None:
    assert effective_status("LIVE", "1000", 1000) == "LIVE"
    assert effective_status("LIVE", "1000", 1001) == EXPIRED
    assert effective_status("LIVE", None, 10**13) == "LIVE"  # no lease: leases are off
    assert effective_status("RESYNCING", "1000", 5000) == "RESYNCING"
    assert effective_status("LIVE", "not a number", 0) == EXPIRED


def test_a_lease_shorter_than_two_ticks_is_refused(redis_config: RedisConfig) -> None:
    config = dataclasses.replace(redis_config, live_lease_ms=1500)
    with pytest.raises(ValueError, match="live_lease_ms"):
        Operator(config, FakeRuntimeContext())
