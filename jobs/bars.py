"""Event-time bars of one instrument, per exchange and across exchanges. Pure, no I/O.

Per (interval, window, venue):
- from trades: OHLC (first/last by trade time, exchange, numeric trade id), volume, notional,
  VWAP, trade count, taker buy/sell volume;
- from the book's touch over time: time-weighted spread and depth within the band (bps of the
  mid) over the time the book was LIVE with both sides, and order-flow imbalance
  (Cont, Kukanov & Stoikov 2014) summed over consecutive LIVE touches.
Venue ``ALL``: the trade figures over every exchange; depth and OFI summed over exchanges;
no spread (the cross-exchange spread is the NBBO's).

A book state holds from its event time until the book's next state. Each exchange's states
arrive in event-time order, so segments are integrated as they complete; at a window's close
(the watermark passed its end) the open segment is integrated up to the end. The same
definitions are recomputed in ClickHouse from the stored trades and top-of-book rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from jobs.parse.events import Trade

ALL = "ALL"
Level = tuple[Decimal, Decimal]
Touch = tuple[Decimal, Decimal, Decimal, Decimal]  # bid price, bid size, ask price, ask size


@dataclass(frozen=True, slots=True)
class BookSample:
    """What the bars need of one LIVE book state with both sides."""

    touch: Touch
    bid_depth: Decimal  # size within the band below the mid
    ask_depth: Decimal

    def __reduce__(self) -> tuple[Any, ...]:
        # exact decimal text: cheaper to pickle (saved with the book's clock per frame)
        return (_sample, (*(str(v) for v in self.touch), str(self.bid_depth), str(self.ask_depth)))


def _sample(
    bid: str, bid_size: str, ask: str, ask_size: str, bid_depth: str, ask_depth: str
) -> BookSample:
    touch = (Decimal(bid), Decimal(bid_size), Decimal(ask), Decimal(ask_size))
    return BookSample(touch, Decimal(bid_depth), Decimal(ask_depth))


def trade_order(trade: Trade) -> tuple[int, str, int]:
    tid = trade.trade_id
    return (trade.trade_time_ms, trade.exchange, int(tid) if tid.isdigit() else 0)


@dataclass
class BarAccumulator:
    open: Decimal | None = None
    open_key: tuple[int, str, int] = (0, "", 0)
    close: Decimal | None = None
    close_key: tuple[int, str, int] = (0, "", 0)
    high: Decimal | None = None
    low: Decimal | None = None
    volume: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    trade_count: int = 0
    buy_volume: Decimal = Decimal(0)
    sell_volume: Decimal = Decimal(0)
    live_ms: int = 0
    spread_ms: Decimal = Decimal(0)  # sum of spread * ms while LIVE
    bid_depth_ms: Decimal = Decimal(0)
    ask_depth_ms: Decimal = Decimal(0)
    ofi: Decimal = Decimal(0)
    ofi_terms: int = 0

    def add_trade(self, trade: Trade) -> None:
        key = trade_order(trade)
        price, size = trade.price, trade.size
        if self.open is None or key < self.open_key:
            self.open, self.open_key = price, key
        if self.close is None or key >= self.close_key:
            self.close, self.close_key = price, key
        self.high = price if self.high is None else max(self.high, price)
        self.low = price if self.low is None else min(self.low, price)
        self.volume += size
        self.notional += price * size
        self.trade_count += 1
        if trade.taker_side == "buy":
            self.buy_volume += size
        else:
            self.sell_volume += size

    def add_segment(self, sample: BookSample, ms: int) -> None:
        self.live_ms += ms
        self.spread_ms += (sample.touch[2] - sample.touch[0]) * ms
        self.bid_depth_ms += sample.bid_depth * ms
        self.ask_depth_ms += sample.ask_depth * ms

    def has_data(self) -> bool:
        return self.trade_count > 0 or self.live_ms > 0 or self.ofi_terms > 0

    def __reduce__(self) -> tuple[Any, ...]:
        # decimals as their exact text: ~3x cheaper to pickle than Decimal objects, and the
        # windows are saved to state on nearly every frame
        return (
            _accumulator,
            (
                tuple(_text(getattr(self, name)) for name in _ACC_DECIMALS),
                tuple(getattr(self, name) for name in _ACC_OTHERS),
            ),
        )


_ACC_DECIMALS = (
    "open", "close", "high", "low", "volume", "notional", "buy_volume", "sell_volume",
    "spread_ms", "bid_depth_ms", "ask_depth_ms", "ofi",
)  # fmt: skip
_ACC_OTHERS = ("open_key", "close_key", "trade_count", "live_ms", "ofi_terms")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)  # str -> Decimal gives it back exactly


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _accumulator(decimals: tuple[str | None, ...], others: tuple[Any, ...]) -> BarAccumulator:
    acc = BarAccumulator()
    for name, text in zip(_ACC_DECIMALS, decimals, strict=True):
        setattr(acc, name, _decimal(text))
    for name, value in zip(_ACC_OTHERS, others, strict=True):
        setattr(acc, name, value)
    return acc


@dataclass(frozen=True, slots=True)
class Bar:
    instrument: str
    venue: str
    interval_ms: int
    window_start_ms: int
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    close: Decimal | None
    volume: Decimal
    notional: Decimal
    vwap: float | None
    trade_count: int
    buy_volume: Decimal
    sell_volume: Decimal
    live_ms: int
    twa_spread: float | None
    twa_bid_depth: float | None
    twa_ask_depth: float | None
    ofi: Decimal


def ofi_term(prev: Touch, cur: Touch) -> Decimal:
    """e_n of Cont, Kukanov & Stoikov: bid-side inflow minus ask-side inflow at the touch."""
    pb, pbs, pa, pas = prev
    b, bs, a, as_ = cur
    e = Decimal(0)
    if b >= pb:
        e += bs
    if b <= pb:
        e -= pbs
    if a <= pa:
        e -= as_
    if a >= pa:
        e += pas
    return e


@dataclass
class VenueClock:
    """Integration state of one book."""

    exchange: str
    since_ms: int = 0  # integrated up to here
    sample: BookSample | None = None  # the state holding since the last update (None: not LIVE)


WindowKey = tuple[int, int, str]  # (interval, window start, venue)


@dataclass
class BarChanges:
    """What changed in an ``InstrumentBars`` since the last ``take_changes``: enough to keep a
    persisted copy (window by window, book by book) equal to it without re-saving it whole."""

    windows: dict[WindowKey, BarAccumulator]  # created or changed (current objects)
    closed: list[WindowKey]  # windows closed (gone)
    clocks: dict[tuple[str, str], VenueClock]  # books whose integration state changed
    closed_until: dict[int, int] | None  # the new value when it changed


@dataclass
class InstrumentBars:
    instrument: str
    intervals: tuple[int, ...]
    windows: dict[WindowKey, BarAccumulator] = field(default_factory=dict)
    books: dict[tuple[str, str], VenueClock] = field(default_factory=dict)
    closed_until: dict[int, int] = field(default_factory=dict)  # interval -> end of last close
    # changes since the last take_changes (not part of the state: never pickled)
    _changed: set[WindowKey] = field(default_factory=set, repr=False, compare=False)
    _closed: list[WindowKey] = field(default_factory=list, repr=False, compare=False)
    _clocks: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)
    _closed_until_changed: bool = field(default=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "intervals": self.intervals,
            "windows": self.windows,
            "books": self.books,
            "closed_until": self.closed_until,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def mark_all_changed(self) -> None:
        """Everything counts as changed (a copy persisted another way must be rewritten)."""
        self._changed = set(self.windows)
        self._clocks = set(self.books)
        self._closed_until_changed = True

    def take_changes(self) -> BarChanges:
        changes = BarChanges(
            windows={key: self.windows[key] for key in self._changed},
            closed=self._closed,
            clocks={book_id: self.books[book_id] for book_id in self._clocks},
            closed_until=dict(self.closed_until) if self._closed_until_changed else None,
        )
        self._changed = set()
        self._closed = []
        self._clocks = set()
        self._closed_until_changed = False
        return changes

    def _acc(self, interval: int, start: int, venue: str) -> BarAccumulator:
        key = (interval, start, venue)
        self._changed.add(key)  # every caller is about to change it, or creates it
        acc = self.windows.get(key)
        if acc is None:
            acc = self.windows[key] = BarAccumulator()
        return acc

    def closed_through_ms(self) -> int | None:
        """Every book is integrated up to here (the end of the last window closed): an event
        before it can only reach windows that are final."""
        return max(self.closed_until.values(), default=None)

    def on_trade(self, trade: Trade) -> None:
        """A trade that is not late (its windows are still open). A window of it that is
        already closed (a late trade the caller let through, e.g. before the first watermark
        after a restore) is final and does not take it: re-opening it would never close."""
        for interval in self.intervals:
            start = trade.trade_time_ms // interval * interval
            closed = self.closed_until.get(interval)
            if closed is not None and start < closed:
                continue
            self._acc(interval, start, trade.exchange).add_trade(trade)
            self._acc(interval, start, ALL).add_trade(trade)

    def on_book(self, book_id: tuple[str, str], time_ms: int, sample: BookSample | None) -> None:
        """A new state of a book at ``time_ms`` (its exchange's event time)."""
        self._clocks.add(book_id)
        clock = self.books.get(book_id)
        if clock is None:
            # a book first seen after windows closed starts at the integrated point, like the
            # others: integrating it into a closed window would re-open it for good
            closed = self.closed_through_ms()
            since = time_ms if closed is None else max(time_ms, closed)
            clock = self.books[book_id] = VenueClock(book_id[0], since_ms=since)
        # a state stamped before what is already integrated (a late update after a window
        # closed) takes effect from there: closed windows are final
        time_ms = max(time_ms, clock.since_ms)
        prev = clock.sample
        self._integrate(clock, time_ms)
        if prev is not None and sample is not None:
            for interval in self.intervals:
                start = time_ms // interval * interval
                acc = self._acc(interval, start, clock.exchange)
                acc.ofi += ofi_term(prev.touch, sample.touch)
                acc.ofi_terms += 1
        clock.sample = sample
        if sample is not None:
            # open this book's windows now, so a quiet LIVE book still gets its bars
            for interval in self.intervals:
                self._acc(interval, time_ms // interval * interval, clock.exchange)

    def _integrate(self, clock: VenueClock, until_ms: int) -> None:
        """Add the held state over [since, until) to every window it overlaps."""
        start_ms, sample = clock.since_ms, clock.sample
        if sample is not None and until_ms > start_ms:
            for interval in self.intervals:
                window = start_ms // interval * interval
                while window < until_ms:
                    overlap = min(until_ms, window + interval) - max(start_ms, window)
                    self._acc(interval, window, clock.exchange).add_segment(sample, overlap)
                    window += interval
        clock.since_ms = max(clock.since_ms, until_ms)

    def next_close_ms(self) -> int | None:
        """Event time at which the earliest open window can close (its last millisecond)."""
        ends = [start + interval - 1 for interval, start, _ in self.windows]
        if any(c.sample is not None for c in self.books.values()):
            # a LIVE book keeps bars coming even when nothing happens
            for interval in self.intervals:
                last = self.closed_until.get(interval)
                if last is not None:
                    ends.append(last + interval - 1)
        return min(ends) if ends else None

    def close_until(self, watermark_ms: int) -> list[Bar]:
        """Close every window whose end is at or before the watermark (no event with a time
        <= watermark can arrive any more)."""
        bars: list[Bar] = []
        while True:
            due = self.next_close_ms()
            if due is None or due > watermark_ms:
                return bars
            end = due + 1
            for book_id, clock in self.books.items():
                self._integrate(clock, end)
                self._clocks.add(book_id)
            for interval in self.intervals:
                if (end % interval) == 0 and self.closed_until.get(interval, 0) < end:
                    bars.extend(self._close(interval, end - interval))
                    self.closed_until[interval] = end
                    self._closed_until_changed = True

    def _close(self, interval: int, start: int) -> list[Bar]:
        venues = sorted(
            venue for (i, s, venue) in self.windows if i == interval and s == start and venue != ALL
        )
        accs = {v: self.windows.pop((interval, start, v)) for v in venues}
        all_acc = self.windows.pop((interval, start, ALL), None)
        for venue in [*venues, ALL] if all_acc is not None else venues:
            self._changed.discard((interval, start, venue))
            self._closed.append((interval, start, venue))
        out = [self._bar(interval, start, v, a) for v, a in accs.items() if a.has_data()]
        if not out:
            return []
        total = all_acc or BarAccumulator()
        depth_bars = [b for b in out if b.twa_bid_depth is not None]
        total_bar = self._bar(interval, start, ALL, total)
        out.append(
            replace(
                total_bar,
                live_ms=0,
                twa_spread=None,
                twa_bid_depth=sum(b.twa_bid_depth or 0.0 for b in depth_bars)
                if depth_bars
                else None,
                twa_ask_depth=sum(b.twa_ask_depth or 0.0 for b in depth_bars)
                if depth_bars
                else None,
                ofi=sum((b.ofi for b in out), Decimal(0)),
            )
        )
        return out

    def _bar(self, interval: int, start: int, venue: str, acc: BarAccumulator) -> Bar:
        live = acc.live_ms
        return Bar(
            instrument=self.instrument,
            venue=venue,
            interval_ms=interval,
            window_start_ms=start,
            open=acc.open,
            high=acc.high,
            low=acc.low,
            close=acc.close,
            volume=acc.volume,
            notional=acc.notional,
            vwap=float(acc.notional / acc.volume) if acc.volume else None,
            trade_count=acc.trade_count,
            buy_volume=acc.buy_volume,
            sell_volume=acc.sell_volume,
            live_ms=live,
            twa_spread=float(acc.spread_ms / live) if live else None,
            twa_bid_depth=float(acc.bid_depth_ms / live) if live else None,
            twa_ask_depth=float(acc.ask_depth_ms / live) if live else None,
            ofi=acc.ofi,
        )
