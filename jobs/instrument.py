"""Everything the pipeline knows about one canonical instrument, across exchanges. Pure, no I/O.

The Flink operator is keyed by instrument, so one call per raw frame parses it, updates the
right book, the cross-exchange NBBO, the bars, and matches trades (one JVM<->Python crossing
per frame for all of them).

Event time: ``watermark_ms`` (from Flink: receive time minus the bounded out-of-orderness)
says which trades are late and which windows may close. A trade is matched once the
watermark passes its time: every book update up to it has then arrived, even for a trade
that came after later book updates.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jobs.bars import (
    Bar,
    BarAccumulator,
    BarChanges,
    BookSample,
    InstrumentBars,
    VenueClock,
    WindowKey,
)
from jobs.book import ENGINES
from jobs.book.engine import NEEDS_RESYNC, Outcome, SyncedBook
from jobs.book.levels import BookSide, BookStatus, LevelChange
from jobs.matching import BookHistory, BookState, MatchedTrade, match_trade
from jobs.nbbo import Nbbo, VenueTop, compute_nbbo, group_quote
from jobs.parse import parse_envelope
from jobs.parse.events import BookDelta, BookSnapshot, ParseError, SyncLost, Trade
from schemas.codec import RawEnvelope
from tickflow.config import AnalyticsConfig, BookConfig

BookId = tuple[str, str]  # (exchange, exchange symbol)
TradeKey = tuple[str, str, str]  # (exchange, exchange symbol, trade id)
NO_WATERMARK = -(2**63)  # Flink's watermark before the first one
END_OF_INPUT = 2**63 - 1  # Flink's last watermark: a bounded input (replay, backfill) ended
# first element of the analytics summary state (``summary_state``); the older whole-state
# format (``analytics_state``) starts with the InstrumentBars
SUMMARY_V2 = "summary-v2"


@dataclass(frozen=True, slots=True)
class AnalyticsRules:
    """Settings of the NBBO, matching and bars (``analytics`` in the configuration)."""

    quote: str = ""  # the NBBO's quote; "" = the instrument's own
    nbbo_stale_after_ms: int = 10_000
    bar_intervals_ms: tuple[int, ...] = (1000, 60_000)
    depth_band_bps: Decimal = Decimal(10)
    trade_dedup_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class NbboUpdate:
    nbbo: Nbbo
    version: int  # monotonic per instrument
    event_time_ms: int  # of the book state that changed it
    receive_time_ns: int


@dataclass(frozen=True, slots=True)
class LateEvent:
    exchange: str
    symbol: str
    instrument: str
    kind: str  # trade | book
    event_id: str
    event_time_ms: int
    watermark_ms: int
    receive_time_ns: int


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
    # size within the analytics band of the mid (None unless LIVE with both sides)
    bid_depth: Decimal | None = None
    ask_depth: Decimal | None = None

    @property
    def time_ms(self) -> int:
        """The state's time: the exchange's event time, or our receive time before any."""
        return self.event_time_ms or self.receive_time_ns // 1_000_000


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
    sync_failures: list[Outcome] = field(default_factory=list)  # gaps, checksum mismatches
    nbbo: list[NbboUpdate] = field(default_factory=list)
    matched: list[MatchedTrade] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    # state changes to persist: book states added to / pruned from the history, trades
    # that started / stopped waiting for the watermark
    history_added: list[tuple[BookId, BookState]] = field(default_factory=list)
    history_pruned: list[tuple[BookId, list[BookState]]] = field(default_factory=list)
    pending_added: list[Trade] = field(default_factory=list)
    # trades no longer remembered (matched, and older than the dedup horizon)
    trades_forgotten: list[TradeKey] = field(default_factory=list)
    late_trades: list[Trade] = field(default_factory=list)  # stored, not matched, in no bar
    duplicate_trades: int = 0  # sent again by the exchange (e.g. on a resubscribe): dropped


@dataclass
class AnalyticsChanges:
    """The analytics state that changed since the last ``take_analytics_changes``: what the
    operator writes to state instead of re-saving everything per frame."""

    bars: BarChanges
    summary: bytes | None  # ``summary_state()`` when it changed
    watermark_ms: int | None  # when it changed


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
        rules: AnalyticsRules | None = None,
    ) -> None:
        self.instrument = instrument
        self.top_n = top_n
        self.snapshot_interval_ms = snapshot_interval_ms
        self.max_levels = max_levels
        self.max_buffered = max_buffered
        self.rules = rules or AnalyticsRules()
        self.quote = self.rules.quote or instrument.rpartition("-")[2]
        self.books: dict[BookId, TrackedBook] = {}
        self.book_instruments: dict[BookId, str] = {}  # a book's own instrument (its rows)
        self.history: dict[BookId, BookHistory] = {}
        self.pending: list[Trade] = []  # trades waiting for the watermark, by time
        # trades taken (pending or matched) within the dedup horizon, oldest first roughly:
        # an exchange re-sends recent trades (Coinbase on every subscribe)
        self.seen: dict[TradeKey, int] = {}
        self._seen_order: deque[tuple[int, TradeKey]] = deque()
        self.bars = InstrumentBars(instrument, self.rules.bar_intervals_ms)
        self.nbbo: Nbbo | None = None
        self.nbbo_version = 0
        # the highest watermark seen: after a restore, Flink's starts again from nothing,
        # but what was late before stays late
        self.watermark_ms = NO_WATERMARK
        self.input_ended = False
        # what changed since take_analytics_changes (bars track their own)
        self._summary_changed = False
        self._watermark_changed = False

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

    def process(self, env: RawEnvelope, watermark_ms: int = NO_WATERMARK) -> Outputs:
        """Apply one raw frame. Raises ParseError for frames that cannot be understood."""
        watermark_ms = max(watermark_ms, self.watermark_ms)
        out = Outputs()
        book_id = (env.exchange, env.symbol)
        if book_id not in self.book_instruments:
            self.book_instruments[book_id] = env.instrument
            self._summary_changed = True
        for event in parse_envelope(env):
            if isinstance(event, Trade):
                self._on_trade(event, env.instrument, watermark_ms, out)
            else:
                self._on_book_event(book_id, event, out, watermark_ms)
        if out.book_views:
            self._update_nbbo(env.receive_time_ns, out)
        self.advance(watermark_ms, out)
        return out

    # --- trades, matching, bars -----------------------------------------------------------

    def _on_trade(self, trade: Trade, instrument: str, watermark_ms: int, out: Outputs) -> None:
        key = (trade.exchange, trade.symbol, trade.trade_id)
        if key in self.seen:
            out.duplicate_trades += 1
            return
        self._remember(key, trade.trade_time_ms)
        if trade.trade_time_ms <= watermark_ms:
            # its windows are closed and its books may be pruned: stored, counted, not matched
            out.late_trades.append(trade)
            out.late.append(
                LateEvent(
                    trade.exchange, trade.symbol, instrument, "trade", trade.trade_id,
                    trade.trade_time_ms, watermark_ms, trade.receive_time_ns,
                )
            )
            return
        out.trades.append(trade)
        self.bars.on_trade(trade)
        self._add_pending(trade)
        out.pending_added.append(trade)

    def _remember(self, key: TradeKey, time_ms: int) -> None:
        self.seen[key] = time_ms
        self._seen_order.append((time_ms, key))

    def _forget_until(self, horizon_ms: int, out: Outputs) -> None:
        order = self._seen_order
        while order and order[0][0] < horizon_ms:
            time_ms, key = order.popleft()
            if self.seen.get(key) == time_ms:
                del self.seen[key]
                out.trades_forgotten.append(key)

    def _add_pending(self, trade: Trade) -> None:
        pending = self.pending
        i = len(pending)
        while i and pending[i - 1].trade_time_ms > trade.trade_time_ms:
            i -= 1
        pending.insert(i, trade)

    def advance(self, watermark_ms: int, out: Outputs) -> None:
        """Everything the watermark makes final: trades up to it matched, windows closed,
        book history no later trade can need dropped."""
        if watermark_ms >= END_OF_INPUT:
            # closing every window up to the end of time would never finish (a LIVE book keeps
            # bars coming): what an ended input makes final is what its events reached
            self.input_ended = True
            watermark_ms = self.latest_event_ms()
        watermark_ms = max(watermark_ms, self.watermark_ms)
        if watermark_ms == NO_WATERMARK:
            return
        if watermark_ms != self.watermark_ms:
            self.watermark_ms = watermark_ms
            self._watermark_changed = True
        done = 0
        for trade in self.pending:
            if trade.trade_time_ms > watermark_ms:
                break
            out.matched.append(self.match(trade))
            done += 1
        del self.pending[:done]
        self._forget_until(watermark_ms - self.rules.trade_dedup_ms, out)
        out.bars.extend(self.bars.close_until(watermark_ms))
        for book_id, history in self.history.items():
            # every trade still pending is later than the watermark
            dropped = history.prune(watermark_ms)
            if dropped:
                out.history_pruned.append((book_id, dropped))

    def latest_event_ms(self) -> int:
        """The latest event time seen: a book message or a trade."""
        times = [t.last_receive_time_ns // 1_000_000 for t in self.books.values()]
        times += [trade.trade_time_ms for trade in self.pending]
        return max(times, default=NO_WATERMARK)

    def next_event_time_ms(self) -> int | None:
        """The event time at which ``advance`` has work (a timer there keeps an idle
        instrument's trades and bars moving); none once the input ended."""
        if self.input_ended:
            return None
        times = [self.pending[0].trade_time_ms] if self.pending else []
        close = self.bars.next_close_ms()
        if close is not None:
            times.append(close)
        return min(times) if times else None

    def match(self, trade: Trade) -> MatchedTrade:
        """The trade against its book and the NBBO as of its time (history must cover it)."""
        time_ms = trade.trade_time_ms
        tops = []
        own: BookState | None = None
        for book_id, history in self.history.items():
            seq = trade.sequence if book_id[0] == trade.exchange and trade.sequence >= 0 else None
            state = history.as_of(time_ms, seq)
            if book_id == (trade.exchange, trade.symbol):
                own = state
            if state is not None:
                tops.append(
                    VenueTop(
                        book_id[0], book_id[1], state.status, state.version,
                        time_ms - state.time_ms,
                        state.bids[0] if state.bids else None,
                        state.asks[0] if state.asks else None,
                    )
                )
        nbbo = compute_nbbo(self.instrument, self.quote, tops, self.rules.nbbo_stale_after_ms)
        instrument = self.book_instruments.get((trade.exchange, trade.symbol), self.instrument)
        return match_trade(trade, instrument, own, nbbo)

    def _update_nbbo(self, receive_time_ns: int, out: Outputs, now_ms: int = 0) -> None:
        """The live NBBO (ages by receive time); emitted when what it shows changed."""
        now_ms = now_ms or receive_time_ns // 1_000_000
        tops = []
        for (exchange, symbol), tracked in self.books.items():
            status = tracked.engine.status
            if status is BookStatus.LIVE and tracked.stale:
                status = BookStatus.STALE
            book = tracked.engine.book
            tops.append(
                VenueTop(
                    exchange, symbol, status, tracked.engine.version(),
                    now_ms - tracked.last_receive_time_ns // 1_000_000,
                    book.best_bid(), book.best_ask(),
                )
            )
        nbbo = compute_nbbo(self.instrument, self.quote, tops, self.rules.nbbo_stale_after_ms)
        if self.nbbo is not None and nbbo.quote_key() == self.nbbo.quote_key():
            return
        self.nbbo = nbbo
        # monotonic, and the same on a replay of the same input
        self.nbbo_version = max(self.nbbo_version + 1, receive_time_ns // 1000)
        self._summary_changed = True
        time_ms = max((v.time_ms for v in out.book_views), default=now_ms)
        out.nbbo.append(NbboUpdate(nbbo, self.nbbo_version, time_ms, receive_time_ns))

    def analytics_state(self) -> bytes:
        """The small, whole-instrument part of the analytics state (bars, last NBBO, the
        watermark reached, each book's own instrument)."""
        return pickle.dumps(
            (self.bars, self.nbbo, self.nbbo_version, self.watermark_ms, self.book_instruments),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def summary_state(self) -> bytes:
        """The whole-instrument analytics state but the bar windows and the books' bar clocks
        (persisted one by one) and the watermark (persisted on its own)."""
        return pickle.dumps(
            (
                SUMMARY_V2,
                self.nbbo,
                self.nbbo_version,
                self.book_instruments,
                self.bars.closed_until,
            ),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def take_analytics_changes(self) -> AnalyticsChanges:
        """What to write so that the persisted analytics (``summary_state``, bar windows, bar
        clocks, watermark) equal the live ones again; restore with ``restore_analytics``."""
        bars = self.bars.take_changes()
        summary = None
        if self._summary_changed or bars.closed_until is not None:
            summary = self.summary_state()
        watermark = self.watermark_ms if self._watermark_changed else None
        self._summary_changed = self._watermark_changed = False
        return AnalyticsChanges(bars, summary, watermark)

    def restore_analytics(
        self,
        data: bytes | None,
        history: dict[BookId, list[BookState]],
        pending: list[Trade],
        windows: dict[WindowKey, BarAccumulator] | None = None,
        clocks: dict[BookId, VenueClock] | None = None,
        watermark_ms: int | None = None,
    ) -> None:
        """From ``analytics_state`` (the whole state in one value), or from ``summary_state``
        with the bar windows, bar clocks and watermark saved beside it."""
        if watermark_ms is not None:
            self.watermark_ms = max(self.watermark_ms, watermark_ms)
        if data is not None:
            state = pickle.loads(data)
            if state[0] == SUMMARY_V2:
                _, nbbo, version, instruments, closed_until = state
                self.bars = InstrumentBars(
                    self.instrument,
                    self.rules.bar_intervals_ms,
                    windows=dict(windows or {}),
                    books=dict(clocks or {}),
                    closed_until=closed_until,
                )
            else:
                bars, nbbo, version, watermark, instruments = state
                self.bars = bars
                self.watermark_ms = max(self.watermark_ms, watermark)
                # saved whole, to be saved piece by piece from now on: all of it is new
                self.bars.mark_all_changed()
                self._summary_changed = self._watermark_changed = True
            self.nbbo, self.nbbo_version = nbbo, version
            self.book_instruments.update(instruments)
        for book_id, states in history.items():
            # versions grow in arrival order (state times may step back after a snapshot)
            self.history[book_id] = BookHistory(sorted(states, key=lambda st: st.version))
        # the stored trades are those remembered: matched already if behind the watermark
        for trade in sorted(pending, key=lambda t: t.trade_time_ms):
            self._remember((trade.exchange, trade.symbol, trade.trade_id), trade.trade_time_ms)
            if trade.trade_time_ms > self.watermark_ms:
                self._add_pending(trade)

    def _on_book_event(
        self,
        book_id: BookId,
        event: BookDelta | BookSnapshot | SyncLost,
        out: Outputs,
        watermark_ms: int = NO_WATERMARK,
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
        if not isinstance(event, SyncLost):
            tracked.last_event_time_ms = max(tracked.last_event_time_ms, event.event_time_ms)
        tracked.last_receive_time_ns = event.receive_time_ns
        out.level_changes.append((book_id, engine.book.take_changes()))
        if outcome in NEEDS_RESYNC:
            out.resyncs.append((book_id, engine.reason))
            out.sync_failures.append(outcome)
        if outcome in (Outcome.IGNORED, Outcome.BUFFERED, Outcome.SNAPSHOT_TOO_OLD) and (
            engine.status is was
        ):
            return
        tracked.stale = False
        view = self.view(book_id)
        out.book_views.append(view)
        self._record_state(book_id, view, out, watermark_ms)
        top = (view.status, view.bids[:1], view.asks[:1], view.bid_depth, view.ask_depth)
        if top != tracked.top:
            tracked.top = top
            out.top_changes.append(view)
        if engine.status is BookStatus.LIVE and tracked.last_event_time_ms:
            bucket = tracked.last_event_time_ms // self.snapshot_interval_ms
            if bucket != tracked.snapshot_bucket:
                tracked.snapshot_bucket = bucket
                out.snapshots.append(view)

    def _record_state(
        self, book_id: BookId, view: BookView, out: Outputs, watermark_ms: int
    ) -> None:
        """A new state of a book: into its history (for matching) and the bars."""
        time_ms = view.time_ms
        if time_ms <= watermark_ms and watermark_ms != NO_WATERMARK:
            # applied to the book all the same (the book must stay right); the bars take
            # it from the last closed window on
            out.late.append(
                LateEvent(
                    book_id[0], book_id[1], self.book_instruments.get(book_id, self.instrument),
                    "book", str(view.version), time_ms, watermark_ms, view.receive_time_ns,
                )
            )
        state = BookState(time_ms, view.seq, view.version, view.status, view.bids, view.asks)
        self.history.setdefault(book_id, BookHistory()).append(state)
        out.history_added.append((book_id, state))
        sample = None
        if view.bid_depth is not None and view.ask_depth is not None:
            (bid, bid_size), (ask, ask_size) = view.bids[0], view.asks[0]
            sample = BookSample((bid, bid_size, ask, ask_size), view.bid_depth, view.ask_depth)
        self.bars.on_book(book_id, time_ms, sample)

    def refresh_nbbo(self, now_ms: int) -> list[NbboUpdate]:
        """Re-evaluate the live NBBO without a new message (books may have aged out)."""
        out = Outputs()
        self._update_nbbo(now_ms * 1_000_000, out, now_ms)
        return out.nbbo

    def books_not_live(self) -> int:
        return sum(
            1 for t in self.books.values() if t.engine.status is not BookStatus.LIVE or t.stale
        )

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
        bid_depth = ask_depth = None
        if bids and asks:
            bid_depth, ask_depth = engine.book.depth_within_bps(self.rules.depth_band_bps)
        status, reason = engine.status, engine.reason
        if live and tracked.stale:
            silent_s = (now_ms - tracked.last_receive_time_ns // 1_000_000) / 1000 if now_ms else 0
            status, reason = BookStatus.STALE, f"no message for {silent_s:.1f} s"
        return BookView(
            exchange=book_id[0],
            symbol=book_id[1],
            instrument=self.book_instruments.get(book_id, self.instrument),
            status=status,
            reason=reason,
            seq=engine.last_id,
            version=engine.version(),
            bids=tuple(bids),
            asks=tuple(asks),
            event_time_ms=tracked.last_event_time_ms,
            receive_time_ns=tracked.last_receive_time_ns,
            bid_depth=bid_depth,
            ask_depth=ask_depth,
        )


def configured_books(
    instrument: str, book: BookConfig, analytics: AnalyticsConfig
) -> InstrumentBooks:
    """An instrument's empty books with the configured limits and analytics rules."""
    return InstrumentBooks(
        instrument,
        book.top_n,
        book.snapshot_interval_ms,
        book.max_levels,
        book.max_buffered_updates,
        AnalyticsRules(
            quote=group_quote(instrument, analytics.quote_equivalents),
            nbbo_stale_after_ms=analytics.nbbo_stale_after_ms,
            bar_intervals_ms=analytics.bar_intervals_ms,
            depth_band_bps=Decimal(analytics.depth_band_bps),
            trade_dedup_ms=analytics.trade_dedup_ms,
        ),
    )
