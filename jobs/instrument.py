"""Everything the pipeline knows about one canonical instrument, across exchanges. Pure, no I/O.

The Flink operator is keyed by instrument, so one call per raw frame parses it, updates the
right book and decides what to publish (one JVM<->Python crossing per frame). Later stages
(NBBO, trade matching) hang off the same object for the same reason.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jobs.book import ENGINES
from jobs.book.engine import NEEDS_RESYNC, Outcome, SyncedBook
from jobs.book.levels import BookSide, BookStatus, LevelChange
from jobs.parse import parse_envelope
from jobs.parse.events import BookDelta, BookSnapshot, ParseError, SyncLost, Trade
from schemas.codec import RawEnvelope

BookId = tuple[str, str]  # (exchange, exchange symbol)


@dataclass(frozen=True, slots=True)
class BookView:
    """The top of one book as published (Redis live view, ClickHouse snapshots)."""

    exchange: str
    symbol: str
    instrument: str
    status: BookStatus
    reason: str
    seq: int  # last applied exchange update id / sequence number
    version: int  # monotonic per book: Redis refuses writes with a lower one
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]
    event_time_ms: int
    receive_time_ns: int


@dataclass
class Outputs:
    book_views: list[BookView] = field(default_factory=list)  # live publication (Redis)
    snapshots: list[BookView] = field(default_factory=list)  # periodic history (ClickHouse)
    top_changes: list[BookView] = field(default_factory=list)  # best bid/ask changed (ClickHouse)
    trades: list[Trade] = field(default_factory=list)
    # (book, changed levels) to persist
    level_changes: list[tuple[BookId, list[LevelChange]]] = field(default_factory=list)
    # books that need a fresh snapshot from their connector, and why
    resyncs: list[tuple[BookId, str]] = field(default_factory=list)


@dataclass
class TrackedBook:
    engine: SyncedBook
    last_event_time_ms: int = 0
    last_receive_time_ns: int = 0
    snapshot_bucket: int = -1  # event-time bucket of the last ClickHouse snapshot
    stale: bool = False  # LIVE, but no message for longer than the staleness bound
    top: tuple[Any, ...] = ()  # best bid and ask last published to the top-of-book history
    resync_requested_ms: int = 0  # processing time of the last resync request (not persisted)

    def meta(self) -> bytes:
        """Everything but the levels (which are persisted level by level)."""
        return pickle.dumps(
            (
                self.engine.state(),
                self.last_event_time_ms,
                self.last_receive_time_ns,
                self.snapshot_bucket,
                self.stale,
                self.top,
            ),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    @classmethod
    def from_meta(cls, data: bytes, engine: SyncedBook) -> TrackedBook:
        state, ev_ms, rx_ns, bucket, stale, top = pickle.loads(data)
        engine.restore_state(state)
        return cls(engine, ev_ms, rx_ns, bucket, stale, top)


class InstrumentBooks:
    """The books of one instrument and the rules for what to publish when a frame arrives."""

    def __init__(
        self,
        instrument: str,
        top_n: int,
        snapshot_interval_ms: int,
        max_levels: int,
        max_buffered: int,
    ) -> None:
        self.instrument = instrument
        self.top_n = top_n
        self.snapshot_interval_ms = snapshot_interval_ms
        self.max_levels = max_levels
        self.max_buffered = max_buffered
        self.books: dict[BookId, TrackedBook] = {}

    def _engine(self, exchange: str) -> SyncedBook:
        engine = ENGINES.get(exchange)
        if engine is None:
            raise ParseError(f"no book engine for exchange {exchange!r}")
        return engine(max_levels=self.max_levels, max_buffered=self.max_buffered)

    def book(self, book_id: BookId) -> TrackedBook:
        tracked = self.books.get(book_id)
        if tracked is None:
            tracked = TrackedBook(self._engine(book_id[0]))
            self.books[book_id] = tracked
        return tracked

    def restore(
        self, book_id: BookId, meta: bytes, levels: list[tuple[BookSide, Decimal, Decimal]]
    ) -> None:
        tracked = TrackedBook.from_meta(meta, self._engine(book_id[0]))
        for side, price, size in levels:
            tracked.engine.book.restore_level(side, price, size)
        self.books[book_id] = tracked

    def process(self, env: RawEnvelope) -> Outputs:
        """Apply one raw frame. Raises ParseError for frames that cannot be understood."""
        out = Outputs()
        book_id = (env.exchange, env.symbol)
        for event in parse_envelope(env):
            if isinstance(event, Trade):
                out.trades.append(event)
            else:
                self._on_book_event(book_id, event, out)
        return out

    def _on_book_event(
        self, book_id: BookId, event: BookDelta | BookSnapshot | SyncLost, out: Outputs
    ) -> None:
        tracked = self.book(book_id)
        engine = tracked.engine
        was = engine.status
        if isinstance(event, BookSnapshot):
            outcome = engine.on_snapshot(event)
        elif isinstance(event, SyncLost):
            outcome = engine.on_sync_lost(event)
        else:
            outcome = engine.on_delta(event)
            tracked.last_event_time_ms = max(tracked.last_event_time_ms, event.event_time_ms)
        tracked.last_receive_time_ns = event.receive_time_ns
        out.level_changes.append((book_id, engine.book.take_changes()))
        if outcome in NEEDS_RESYNC:
            out.resyncs.append((book_id, engine.reason))
        if outcome in (Outcome.IGNORED, Outcome.BUFFERED, Outcome.SNAPSHOT_TOO_OLD) and (
            engine.status is was
        ):
            return
        tracked.stale = False
        view = self.view(book_id)
        out.book_views.append(view)
        top = (view.status, view.bids[:1], view.asks[:1])
        if top != tracked.top:
            tracked.top = top
            out.top_changes.append(view)
        if engine.status is BookStatus.LIVE and tracked.last_event_time_ms:
            bucket = tracked.last_event_time_ms // self.snapshot_interval_ms
            if bucket != tracked.snapshot_bucket:
                tracked.snapshot_bucket = bucket
                out.snapshots.append(view)

    def mark_stale(self, now_ms: int, stale_after_ms: int) -> list[BookView]:
        """LIVE books with no message for ``stale_after_ms``: now STALE (views to publish)."""
        views = []
        for book_id, tracked in self.books.items():
            silent_ms = now_ms - tracked.last_receive_time_ns // 1_000_000
            if (
                tracked.engine.status is BookStatus.LIVE
                and not tracked.stale
                and (silent_ms > stale_after_ms)
            ):
                tracked.stale = True
                views.append(self.view(book_id, now_ms))
        return views

    def due_resyncs(self, now_ms: int, retry_ms: int) -> list[tuple[BookId, str]]:
        """Books still not LIVE ``retry_ms`` after their last resync request: ask again."""
        due = []
        for book_id, tracked in self.books.items():
            if tracked.engine.status is BookStatus.LIVE:
                continue
            if not tracked.resync_requested_ms:
                # first seen waiting (e.g. for its first snapshot): start the clock
                tracked.resync_requested_ms = now_ms
            elif now_ms - tracked.resync_requested_ms >= retry_ms:
                tracked.resync_requested_ms = now_ms
                due.append(
                    (book_id, f"still {tracked.engine.status.value}: {tracked.engine.reason}")
                )
        return due

    def view(self, book_id: BookId, now_ms: int = 0) -> BookView:
        tracked = self.books[book_id]
        engine = tracked.engine
        live = engine.status is BookStatus.LIVE
        bids, asks = engine.book.top(self.top_n) if live else ([], [])
        status, reason = engine.status, engine.reason
        if live and tracked.stale:
            silent_s = (now_ms - tracked.last_receive_time_ns // 1_000_000) / 1000 if now_ms else 0
            status, reason = BookStatus.STALE, f"no message for {silent_s:.1f} s"
        return BookView(
            exchange=book_id[0],
            symbol=book_id[1],
            instrument=self.instrument,
            status=status,
            reason=reason,
            seq=engine.last_id,
            version=engine.version(),
            bids=tuple(bids),
            asks=tuple(asks),
            event_time_ms=tracked.last_event_time_ms,
            receive_time_ns=tracked.last_receive_time_ns,
        )
