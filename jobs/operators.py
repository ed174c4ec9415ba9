"""The live job's Python operator: Flink's keyed state and timers around the compiled core
(``jobs/native``), and the Redis writes it asks for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext, TimeDomain
from pyflink.datastream.state import ValueStateDescriptor

from jobs.backfill import core_rules
from jobs.core_schemas import learning
from jobs.faults import PythonFault
from jobs.metrics import JobMetrics
from jobs.sinks.redis_books import RedisBatch, job_redis_client
from schemas.writers import registry_writer_schemas
from tickflow.config import (
    AnalyticsConfig,
    BookConfig,
    MonitoringConfig,
    RedisConfig,
    RegistryConfig,
)
from tickflow.logs import setup_logging

# the tables whose rows also go to an exactly-once Kafka result topic (JSON, or framed Avro)
RESULT_TABLES = ("nbbo", "matched_trades", "bars", "top_of_book")

# a frame bundle's version and flags bytes: a longer bundle holds frames
BUNDLE_HEADER_BYTES = 2

# Redis writes are queued and sent together (one round trip) once this many are waiting or
# the oldest has waited REDIS_FLUSH_MS (a processing-time timer flushes a quiet queue)
REDIS_BATCH_WRITES = 128
REDIS_FLUSH_MS = 20


def native_stream(book: BookConfig, analytics: AnalyticsConfig, redis_prefix: str) -> Any:
    """The compiled core (``jobs/native``) configured as the job is."""
    try:
        import tickflow_native
    except ImportError as exc:  # pragma: no cover - the image and `make venv` install it
        raise RuntimeError(
            "the job's compiled core is not installed: `make venv` builds it (jobs/native, "
            "needs cargo); images install its wheel"
        ) from exc
    return tickflow_native.NativeStream(
        **core_rules(book, analytics),
        stale_after_ms=book.stale_after_ms,
        resync_retry_ms=book.resync_retry_ms,
        redis_prefix=redis_prefix,
    )


class BundleProcessor(KeyedProcessFunction):
    """Keyed by instrument (NBBO group) in the JVM: one call per bundle of raw frames, every
    frame's work in the compiled core (decode, parse, book sync, NBBO, matching, bars, late
    events, the rows and records to publish).

    Input: a frame bundle from the JVM bundler, keyed there. Output: one sink blob per call
    (ClickHouse RowBinary rows and Kafka records, split by the JVM sinks). Redis writes,
    conflated per book and NBBO, go out from here in one pipelined round trip.

    State: each instrument's whole core state, as bytes, in one value state, written only when
    it changed and the bundler says a checkpoint barrier follows (before a barrier it flags a
    bundle of every instrument it has seen since it started); between barriers the core's
    memory is ahead of Flink's state, and a restore replays up to it from the checkpointed
    source offsets. A timer of an instrument no bundle has come for since this operator started
    (after a restore, a quiet one) writes its state at once: no flagged bundle may come for it.
    """

    def __init__(
        self,
        book: BookConfig,
        redis_config: RedisConfig,
        analytics: AnalyticsConfig,
        monitoring: MonitoringConfig,
        fault_file: str = "",
        registry: RegistryConfig | None = None,
        result_schemas: list[tuple[str, int, str]] | None = None,
    ) -> None:
        self.registry_config = registry or RegistryConfig()
        # (output, registry id, schema): result topics written as framed Avro, not JSON
        self.result_schemas = list(result_schemas or [])
        self.book_config = book
        self.redis_config = redis_config
        self.analytics_config = analytics
        self.monitoring_config = monitoring
        self.fault_file = fault_file

    def open(self, runtime_context: RuntimeContext) -> None:
        lease, tick = self.redis_config.live_lease_ms, self.book_config.timer_interval_ms
        if 0 < lease < 2 * tick:
            raise ValueError(
                f"redis.live_lease_ms ({lease}) must be at least twice book.timer_interval_ms"
                f" ({tick}): leases are renewed on the housekeeping tick"
            )
        self.state = runtime_context.get_state(
            ValueStateDescriptor("core-state", Types.PICKLED_BYTE_ARRAY())
        )
        setup_logging(self.monitoring_config, job="tickflow-pipeline")
        self.metrics = JobMetrics(runtime_context.get_metrics_group())
        self.core = native_stream(
            self.book_config, self.analytics_config, self.redis_config.key_prefix
        )
        self.core.set_result_schemas(self.result_schemas)
        # framed raw records' writer schemas, fetched from the registry when a bundle first
        # names an id; a registry that does not answer then fails the task, which restores
        # and meets the bundle again
        self.writers = registry_writer_schemas(self.registry_config)
        # a Redis that does not answer fails the job (it restores from its checkpoint and
        # replays into Redis, version-guarded) instead of holding it forever
        self.redis = job_redis_client(self.redis_config)
        failover_wait_s = (
            self.redis_config.failover_wait_ms / 1000 if self.redis_config.sentinels() else 0.0
        )
        self.redis_batch = RedisBatch(self.redis, failover_wait_s)
        self.fault = PythonFault(self.fault_file) if self.fault_file else None
        self._redis_due_ms: int | None = None
        self._next_tick: dict[str, int] = {}
        self._next_event_timer: dict[str, int] = {}
        self._bundled: set[str] = set()  # instruments a bundle came for since open
        self._dirty: set[str] = set()  # changed since their state was last written
        self._leased: set[str] = set()  # the book and NBBO hashes this subtask has written
        self._lease_due_ms = 0  # when every lease is renewed next

    def close(self) -> None:
        self._flush_redis()
        self.redis.close()

    def _load(self, key: str) -> None:
        """The instrument's core state from Flink's state, once per key and run."""
        if not self.core.has(key):
            state = self.state.value()
            if state is not None:
                self.core.restore(key, state)

    def _persist(self, key: str) -> None:
        self._dirty.discard(key)
        state = self.core.snapshot(key)
        if state is not None:
            self.state.update(state)

    def _changed(self, key: str) -> None:
        """A timer changed the instrument's state: written with its next flagged bundle."""
        if key in self._bundled:
            self._dirty.add(key)
        else:
            self._persist(key)

    def process_element(self, bundle: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[bytes]:
        if self.fault is not None:
            self.fault.check()
        key = ctx.get_current_key()
        self._load(key)
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        if len(bundle) > BUNDLE_HEADER_BYTES:
            self._dirty.add(key)
        self._bundled.add(key)
        watermark = timers.current_watermark()
        persist = learning(
            self.writers, lambda: self.core.process_bundle(key, bundle, watermark, now)
        )
        if persist and key in self._dirty:
            self._persist(key)
        self.metrics.books_not_live(key, self.core.books_not_live(key))
        self._schedule_event_timer(ctx, key)
        self._schedule_tick(ctx, key, now)
        self._queue_redis(ctx, now)
        blob = self.core.take_blob()
        if blob is not None:
            yield blob

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[bytes]:
        key = ctx.get_current_key()
        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            # the watermark passed a pending trade or a window end
            self._load(key)
            self._next_event_timer.pop(key, None)
            self.core.advance(key, ctx.timer_service().current_watermark())
            self._changed(key)
            self._schedule_event_timer(ctx, key)
        elif timestamp % self.book_config.timer_interval_ms == 0:
            # the housekeeping tick: STALE books, unanswered resync requests
            self._load(key)
            not_live, changed = self.core.housekeeping(key, timestamp)
            self.metrics.books_not_live(key, not_live)
            if changed:
                self._changed(key)
            self._next_tick.pop(key, None)
            self._schedule_tick(ctx, key, timestamp)
        # else: a Redis flush timer (maybe from before a restore: then nothing is queued)
        self._flush_redis()
        blob = self.core.take_blob()
        if blob is not None:
            yield blob

    def _schedule_event_timer(self, ctx: KeyedProcessFunction.Context, key: str) -> None:
        """One event-time timer per instrument at the next time the watermark has work."""
        due = self.core.next_event_time_ms(key)
        registered = self._next_event_timer.get(key)
        if due is not None and (registered is None or due < registered):
            ctx.timer_service().register_event_time_timer(due)
            self._next_event_timer[key] = due

    def _schedule_tick(self, ctx: KeyedProcessFunction.Context, key: str, now: int) -> None:
        """One housekeeping timer per instrument and tick (timers are checkpointed)."""
        tick = self.book_config.timer_interval_ms
        due = (now // tick + 1) * tick
        if self._next_tick.get(key, 0) < due:
            ctx.timer_service().register_processing_time_timer(due)
            self._next_tick[key] = due

    def _queue_redis(self, ctx: KeyedProcessFunction.Context, now: int) -> None:
        """Send the conflated Redis writes when enough are waiting or the oldest is due; else
        make sure a timer sends them (never at a tick's multiple: that is a tick)."""
        pending = self.core.redis_pending
        if not pending:
            return
        if pending >= REDIS_BATCH_WRITES or (
            self._redis_due_ms is not None and now >= self._redis_due_ms
        ):
            self._flush_redis()
        elif self._redis_due_ms is None:
            due = now + REDIS_FLUSH_MS
            if due % self.book_config.timer_interval_ms == 0:
                due += 1
            self._redis_due_ms = due
            ctx.timer_service().register_processing_time_timer(due)

    def _flush_redis(self) -> None:
        self._redis_due_ms = None
        now_ns = time.time_ns()
        new: list[str] = []
        for is_nbbo, keys, args in self.core.take_redis(now_ns):
            self.redis_batch.add_write(is_nbbo, keys, args)
            if keys[0] not in self._leased:
                self._leased.add(keys[0])
                new.append(keys[0])
        self._renew_leases(now_ns // 1_000_000, new)
        self.redis_batch.flush()
        for name, n in self.core.take_counts().items():
            self.metrics.inc(name, n)
        self.metrics.flush()

    def _renew_leases(self, now_ms: int, new: list[str]) -> None:
        """The lease on every hash written here, every fifth of the lease (timers run this at
        least every housekeeping tick); a hash written for the first time gets one at once."""
        lease = self.redis_config.live_lease_ms
        if lease <= 0:
            return
        if now_ms >= self._lease_due_ms:
            self._lease_due_ms = now_ms + lease // 5
            self.redis_batch.add_lease(sorted(self._leased), now_ms + lease)
        elif new:
            self.redis_batch.add_lease(new, now_ms + lease)
