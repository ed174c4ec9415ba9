"""Flink functions that wrap the pure logic with keyed state, timers and sink I/O."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext, TimeDomain
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from jobs.backfill import core_rules
from jobs.bars import WindowKey
from jobs.book.levels import BookSide, LevelChange
from jobs.faults import PythonFault
from jobs.instrument import (
    END_OF_INPUT,
    BookId,
    InstrumentBooks,
    Outputs,
    TradeKey,
    configured_books,
)
from jobs.matching import BookState
from jobs.metrics import JobMetrics
from jobs.parse.events import ParseError, Trade
from jobs.sinks.clickhouse import ClickHouseWriter, ensure_schema, top_of_book_row
from jobs.sinks.kafka_out import json_record
from jobs.sinks.redis_books import RedisBatch, RedisBookWriter, RedisNbboWriter
from jobs.sinks.rows import analytics_rows, frame_rows
from schemas.codec import EnvelopeError, decode_envelope
from schemas.control import resync_record
from schemas.deadletter import dead_letter_record
from tickflow.config import (
    AnalyticsConfig,
    BookConfig,
    ClickHouseConfig,
    MonitoringConfig,
    RedisConfig,
)
from tickflow.logs import setup_logging

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
RESYNC_REQUESTS = OutputTag("resync-requests", Types.STRING())
# results also published to the exactly-once Kafka topics, as JSON (table -> side output)
RESULTS = {
    table: OutputTag(f"{table}-results", Types.STRING())
    for table in ("nbbo", "matched_trades", "bars", "top_of_book")
}


# a frame bundle's version and flags bytes: a longer bundle holds frames
BUNDLE_HEADER_BYTES = 2

# Redis writes are queued and sent together (one round trip) once this many are waiting or
# the oldest has waited REDIS_FLUSH_MS (a processing-time timer flushes a quiet queue)
REDIS_BATCH_WRITES = 128
REDIS_FLUSH_MS = 20


# the main output: the ClickHouse rows of one call in one record, ``(ROWS, [(table, row)])``
# (a record per row cost a JVM<->Python crossing, a shuffle and a state write per row)
ROWS = "rows"


def batch_rows(records: Iterator[Any]) -> Iterator[Any]:
    """Side outputs as they come; the ``(table, row)`` main-output records in one batch."""
    rows = []
    for record in records:
        if isinstance(record[0], str):
            rows.append(record)
        else:
            yield record
    if rows:
        yield ROWS, rows


def _emit(rows: Iterable[tuple[str, tuple[Any, ...]]]) -> Iterator[Any]:
    """Rows to ClickHouse (main output); those with a result topic also to it (side output)."""
    for table, row in rows:
        yield table, row
        tag = RESULTS.get(table)
        if tag is not None:
            yield tag, json_record(table, row)


def _level_key(book_id: BookId, side: BookSide, price: Decimal) -> str:
    return f"{book_id[0]}|{book_id[1]}|{side}|{price}"


def _history_key(book_id: BookId, state: BookState) -> str:
    return f"{book_id[0]}|{book_id[1]}|{state.version:024d}|{state.time_ms}"


def _pending_key(trade: Trade) -> str:
    return _trade_key((trade.exchange, trade.symbol, trade.trade_id))


def _window_key(key: WindowKey) -> str:
    interval, start, venue = key
    return f"{interval}|{start}|{venue}"


def _trade_key(key: TradeKey) -> str:
    return "|".join(key)


def _dumps(value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class InstrumentProcessor(KeyedProcessFunction):
    """Keyed by canonical instrument: raw envelope in, books updated, publications out.

    State: book levels in a MapState written through level by level (re-serialising a
    1000-level book per frame would cost milliseconds), plus a small per-book meta record.
    The Python objects in ``_cache`` are only a read cache of that state: they are rebuilt
    from it after a restore, so checkpoints stay the single source of truth.
    The analytics (NBBO, matching, bars) keep the recent book states and the trades waiting
    for the watermark in map states (written through), and the bars and last NBBO in one
    value state per instrument.
    Main output: ``(table, row)`` pairs for ClickHouse; dead letters on a side output.
    """

    def __init__(
        self,
        book: BookConfig,
        redis_config: RedisConfig,
        analytics: AnalyticsConfig,
        monitoring: MonitoringConfig,
    ) -> None:
        self.book_config = book
        self.redis_config = redis_config
        self.analytics_config = analytics
        self.monitoring_config = monitoring
        self._cache: dict[str, InstrumentBooks] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        self.levels = runtime_context.get_map_state(
            MapStateDescriptor("book-levels", Types.STRING(), Types.STRING())
        )
        self.meta = runtime_context.get_map_state(
            MapStateDescriptor("book-meta", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        )
        self.history = runtime_context.get_map_state(
            MapStateDescriptor("book-history", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        )
        self.pending = runtime_context.get_map_state(
            MapStateDescriptor("pending-trades", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        )
        # the analytics: a small summary value, the bar windows and the books' bar clocks
        # one by one (only what a frame changed is written), the watermark reached
        self.analytics = runtime_context.get_state(
            ValueStateDescriptor("analytics", Types.PICKLED_BYTE_ARRAY())
        )
        self.bar_windows = runtime_context.get_map_state(
            MapStateDescriptor("bar-windows", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        )
        self.bar_clocks = runtime_context.get_map_state(
            MapStateDescriptor("bar-clocks", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        )
        self.watermark = runtime_context.get_state(ValueStateDescriptor("watermark", Types.LONG()))
        # the job's Python logs as the rest of tickflow's: JSON lines (thread mode's runtime
        # context cannot give the task name: getTaskNameWithSubtasks is missing in pemja)
        setup_logging(self.monitoring_config, job="tickflow-pipeline")
        # counts reach Flink with each Redis flush (at most REDIS_FLUSH_MS later)
        self.metrics = JobMetrics(runtime_context.get_metrics_group(), buffered=True)
        self.redis = RedisBookWriter(self.redis_config)
        self.redis_nbbo = RedisNbboWriter(self.redis.client, self.redis_config.key_prefix)
        self.redis_batch = RedisBatch(self.redis, self.redis_nbbo)
        self._redis_due_ms: int | None = None  # when the queued writes must go out
        self._cache = {}
        self._next_tick: dict[str, int] = {}
        self._next_event_timer: dict[str, int] = {}
        self._bundled: set[str] = set()  # instruments a bundle came for since open
        self._dirty: set[str] = set()  # changed since their state was last written

    def close(self) -> None:
        self._flush_redis()
        self.redis.close()

    def _queue_redis(self, ctx: KeyedProcessFunction.Context, now: int) -> None:
        """Send the queued Redis writes when enough are waiting or the oldest is due; else
        make sure a timer sends them (timers at a multiple of the housekeeping tick are
        ticks, so a flush timer never is one)."""
        batch = self.redis_batch
        if not batch:
            return
        if len(batch) >= REDIS_BATCH_WRITES or (
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
        self.redis_batch.flush()
        self.metrics.flush()

    def _books(self, instrument: str) -> InstrumentBooks:
        books = self._cache.get(instrument)
        if books is None:
            books = configured_books(instrument, self.book_config, self.analytics_config)
            levels: dict[BookId, list[tuple[BookSide, Decimal, Decimal]]] = {}
            for key, size in self.levels.items():
                exchange, symbol, side, price = key.split("|")
                book_side: BookSide = "b" if side == "b" else "a"
                levels.setdefault((exchange, symbol), []).append(
                    (book_side, Decimal(price), Decimal(size))
                )
            for key, meta in self.meta.items():
                exchange, symbol = key.split("|")
                books.restore((exchange, symbol), meta, levels.get((exchange, symbol), []))
            history: dict[BookId, list[BookState]] = {}
            for key, state in self.history.items():
                exchange, symbol = key.split("|")[:2]
                history.setdefault((exchange, symbol), []).append(state)
            windows = {}
            for key, acc in self.bar_windows.items():
                interval, start, venue = key.split("|")
                windows[(int(interval), int(start), venue)] = acc
            clocks = {}
            for key, clock in self.bar_clocks.items():
                exchange, symbol = key.split("|")
                clocks[(exchange, symbol)] = clock
            books.restore_analytics(
                self.analytics.value(),
                history,
                list(self.pending.values()),
                windows,
                clocks,
                self.watermark.value(),
            )
            # writes queued before a checkpoint may not have reached Redis before a failure:
            # publish the restored books again (version-guarded: a no-op if Redis has them)
            for book_id, tracked in books.books.items():
                if not tracked.stale:
                    self.redis_batch.add_book(books.view(book_id))
            self._cache[instrument] = books
        return books

    def _schedule_event_timer(
        self, ctx: KeyedProcessFunction.Context, books: InstrumentBooks
    ) -> None:
        """One event-time timer per instrument at the next time the watermark has work."""
        due = books.next_event_time_ms()
        registered = self._next_event_timer.get(books.instrument)
        if due is not None and (registered is None or due < registered):
            ctx.timer_service().register_event_time_timer(due)
            self._next_event_timer[books.instrument] = due

    def _apply_analytics(self, books: InstrumentBooks, out: Outputs) -> None:
        """Persist what the analytics changed and publish the NBBO (the rows are the caller's)."""
        for book_id, state in out.history_added:
            self.history.put(_history_key(book_id, state), state)
        for book_id, states in out.history_pruned:
            for state in states:
                self.history.remove(_history_key(book_id, state))
        for trade in out.pending_added:
            self.pending.put(_pending_key(trade), trade)
        for key in out.trades_forgotten:
            self.pending.remove(_trade_key(key))
        self._persist_analytics(books)
        for update in out.nbbo:
            self.redis_batch.add_nbbo(update)

    def _persist_analytics(self, books: InstrumentBooks) -> None:
        """Write what changed of the analytics state (re-pickling all the open bar windows per
        frame cost more than the rest of the frame)."""
        changes = books.take_analytics_changes()
        bars = changes.bars
        for key in bars.closed:
            self.bar_windows.remove(_window_key(key))
        if bars.windows:
            self.bar_windows.put_all({_window_key(k): acc for k, acc in bars.windows.items()})
        for book_id, clock in bars.clocks.items():
            self.bar_clocks.put(f"{book_id[0]}|{book_id[1]}", clock)
        if changes.summary is not None:
            self.analytics.update(changes.summary)
        if changes.watermark_ms is not None:
            self.watermark.update(changes.watermark_ms)

    def _schedule_tick(self, ctx: KeyedProcessFunction.Context, instrument: str, now: int) -> None:
        """One housekeeping timer per instrument and tick (timers are checkpointed with state)."""
        tick = self.book_config.timer_interval_ms
        due = (now // tick + 1) * tick
        if self._next_tick.get(instrument, 0) < due:
            ctx.timer_service().register_processing_time_timer(due)
            self._next_tick[instrument] = due

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        yield from batch_rows(self._timer_records(timestamp, ctx))

    def _timer_records(
        self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext
    ) -> Iterator[Any]:
        if (
            ctx.time_domain() == TimeDomain.PROCESSING_TIME
            and timestamp % self.book_config.timer_interval_ms
        ):
            # a Redis flush timer (maybe from before a restore: then nothing is queued)
            self._flush_redis()
            return
        yield from self._on_timer(timestamp, ctx)
        self._flush_redis()

    def _on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        instrument = ctx.get_current_key()
        books = self._books(instrument)
        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            # the watermark passed a pending trade or a window end
            self._next_event_timer.pop(instrument, None)
            out = Outputs()
            books.advance(ctx.timer_service().current_watermark(), out)
            self.metrics.record(out)
            self._apply_analytics(books, out)
            yield from _emit(analytics_rows(out))
            self._schedule_event_timer(ctx, books)
            return
        yield from self._housekeeping(timestamp, ctx, books)

    def _housekeeping(
        self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext, books: InstrumentBooks
    ) -> Iterator[Any]:
        """By wall clock: STALE books, and resync requests that went unanswered."""
        instrument = books.instrument
        cfg = self.book_config
        if cfg.stale_after_ms:
            for view in books.mark_stale(timestamp, cfg.stale_after_ms):
                self.redis_batch.add_book(view)
                self.meta.put(
                    f"{view.exchange}|{view.symbol}",
                    books.books[(view.exchange, view.symbol)].meta(),
                )
                yield from _emit(
                    [("top_of_book", top_of_book_row(view, view.bid_depth, view.ask_depth))]
                )
        # no NBBO refresh here: a venue ages out of it by event time, when a frame of the
        # instrument comes ``analytics.nbbo_stale_after_ms`` after the venue's last one (by the
        # wall clock a job catching up on a backlog would see every venue as silent, and a
        # replay could not decide as live did); an instrument gone quiet as a whole keeps its
        # last NBBO, stamped with its event time
        out = Outputs()
        self.metrics.record(out)
        self.metrics.books_not_live(instrument, books.books_not_live())
        self._apply_analytics(books, out)
        yield from _emit(analytics_rows(out))
        for (exchange, symbol), reason in books.due_resyncs(timestamp, cfg.resync_retry_ms):
            self.metrics.inc("resync_requests")
            yield RESYNC_REQUESTS, resync_record(exchange, symbol, reason, timestamp)
        self._next_tick.pop(instrument, None)
        self._schedule_tick(ctx, instrument, timestamp)

    def _persist(self, books: InstrumentBooks, book_id: BookId, changes: list[LevelChange]) -> None:
        # the last change of each level counts; the sizes set go in one call (each state call
        # crosses into the JVM)
        final: dict[str, Decimal | None] = {}
        for side, price, size in changes:
            final[_level_key(book_id, side, price)] = size
        sizes = {key: str(size) for key, size in final.items() if size is not None}
        for key, size in final.items():
            if size is None:
                self.levels.remove(key)
        if sizes:
            self.levels.put_all(sizes)
        self.meta.put(f"{book_id[0]}|{book_id[1]}", books.books[book_id].meta())

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        yield from batch_rows(self._records(value, ctx))

    def _records(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        try:
            env = decode_envelope(value)
        except EnvelopeError as exc:
            self.metrics.inc("dead_letters")
            yield DEAD_LETTERS, dead_letter_record("job", str(exc), value)
            return
        books = self._books(ctx.get_current_key())
        try:
            out = books.process(env, ctx.timer_service().current_watermark())
        except ParseError as exc:
            self.metrics.inc("dead_letters")
            yield DEAD_LETTERS, dead_letter_record("job", str(exc), env.payload, env)
            return
        self.metrics.inc("frames")
        self.metrics.inc("resync_requests", len(out.resyncs))
        self.metrics.record(out)
        self.metrics.books_not_live(books.instrument, books.books_not_live())
        for book_id, changes in out.level_changes:
            self._persist(books, book_id, changes)
        now = ctx.timer_service().current_processing_time()
        for book_id, reason in out.resyncs:
            books.books[book_id].resync_requested_ms = now
            yield RESYNC_REQUESTS, resync_record(book_id[0], book_id[1], reason, now)
        self._schedule_tick(ctx, books.instrument, now)
        for view in out.book_views:
            self.redis_batch.add_book(view)
        self._apply_analytics(books, out)
        yield from _emit(frame_rows(out, env.instrument))
        self._schedule_event_timer(ctx, books)
        self._queue_redis(ctx, now)


class ClickHouseBatcher(KeyedProcessFunction):
    """Buffers rows in keyed state and inserts them in batches, one insert per table.

    The books operator sends the rows of one call as one ``(ROWS, [(table, row), ...])``
    record (all under the key ``ROWS``); a ``(table, row)`` record (the earlier layout, one
    row per record keyed by table) is taken as well, as are such rows still in restored state.
    Rows sit in checkpointed state until inserted, so a failure between a checkpoint and an
    insert replays them instead of losing them; duplicates from such a replay collapse in the
    ReplacingMergeTree tables. A batch goes out when it is full or at the next interval tick.
    """

    def __init__(self, config: ClickHouseConfig) -> None:
        self.config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        self.pending = runtime_context.get_map_state(
            MapStateDescriptor("pending-rows", Types.LONG(), Types.PICKLED_BYTE_ARRAY())
        )
        self.count = runtime_context.get_state(ValueStateDescriptor("pending-count", Types.LONG()))
        ensure_schema(self.config)
        self.writer = ClickHouseWriter(self.config)
        # per key: pending entries and rows (a cache of the state, rebuilt after a restore),
        # and the last flush timer registered
        self._entries: dict[str, int] = {}
        self._rows: dict[str, int] = {}
        self._timer: dict[str, int] = {}
        self._end_timer: set[str] = set()

    def close(self) -> None:
        self.writer.close()

    def _counts(self, key: str) -> tuple[int, int]:
        if key not in self._entries:
            self._entries[key] = self.count.value() or 0
            self._rows[key] = sum(_row_count(v) for v in self.pending.values())
        return self._entries[key], self._rows[key]

    def process_element(self, value: tuple[str, Any], ctx: KeyedProcessFunction.Context) -> None:
        key = ctx.get_current_key()
        entries, rows = self._counts(key)
        self.pending.put(entries, value[1])
        self.count.update(entries + 1)
        self._entries[key] = entries + 1
        self._rows[key] = rows = rows + _row_count(value[1])
        if rows >= self.config.insert_batch_rows:
            self._flush(key)
        else:
            interval = self.config.insert_interval_ms
            now = ctx.timer_service().current_processing_time()
            due = (now // interval + 1) * interval
            if self._timer.get(key) != due:
                # one timer per tick (Flink also de-duplicates equal timers per key)
                ctx.timer_service().register_processing_time_timer(due)
                self._timer[key] = due
        if key not in self._end_timer:
            # a bounded input (replay, backfill) ends with the last watermark, and
            # processing-time timers still pending then never fire: this one flushes the last
            # batch (kept in state with the key's timers, so once per key is enough)
            ctx.timer_service().register_event_time_timer(END_OF_INPUT - 1)
            self._end_timer.add(key)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> None:
        self._flush(ctx.get_current_key())

    def _flush(self, key: str) -> None:
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for _, value in sorted(self.pending.items()):
            for table, row in _table_rows(key, value):
                by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            self.writer.insert(table, rows)
        self.pending.clear()
        self.count.clear()
        self._entries[key] = self._rows[key] = 0


def _row_count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def _table_rows(key: str, value: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """A pending entry as (table, row) pairs: a batch, or one row of table ``key``."""
    return value if isinstance(value, list) else [(key, value)]


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
    ) -> None:
        self.book_config = book
        self.redis_config = redis_config
        self.analytics_config = analytics
        self.monitoring_config = monitoring
        self.fault_file = fault_file

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("core-state", Types.PICKLED_BYTE_ARRAY())
        )
        setup_logging(self.monitoring_config, job="tickflow-pipeline")
        self.metrics = JobMetrics(runtime_context.get_metrics_group(), buffered=True)
        self.core = native_stream(
            self.book_config, self.analytics_config, self.redis_config.key_prefix
        )
        self.redis = RedisBookWriter(self.redis_config)
        self.redis_batch = RedisBatch(
            self.redis, RedisNbboWriter(self.redis.client, self.redis_config.key_prefix)
        )
        self.fault = PythonFault(self.fault_file) if self.fault_file else None
        self._redis_due_ms: int | None = None
        self._next_tick: dict[str, int] = {}
        self._next_event_timer: dict[str, int] = {}
        self._bundled: set[str] = set()  # instruments a bundle came for since open
        self._dirty: set[str] = set()  # changed since their state was last written

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
        if self.core.process_bundle(key, bundle, timers.current_watermark(), now) and (
            key in self._dirty
        ):
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
        for is_nbbo, keys, args in self.core.take_redis(time.time_ns()):
            self.redis_batch.add_write(is_nbbo, keys, args)
        self.redis_batch.flush()
        for name, n in self.core.take_counts().items():
            self.metrics.inc(name, n)
        self.metrics.flush()
