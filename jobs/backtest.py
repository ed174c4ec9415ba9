"""Backtesting: a range of raw frames through the live job's logic, its events to a strategy.

    from jobs.backtest import Backtest
    result = Backtest(settings, source=frame_source(settings, "kafka"), from_ms=..., to_ms=...,
                      instruments=["BTC-USDT"], speed=None).run(MyStrategy())
    result.events, result.digests, result.frames_per_s, result.fills, result.pnl

Each partition's records of ``[from_ms, to_ms)`` (by Kafka record time, as the batch backfill
selects them) go through the compiled core's batch driver exactly as the backfill drives it
(``jobs.backfill.native_partition``, the same rules: ``core_rules``), so the events are the
rows the job stores in ClickHouse, decoded into typed, immutable events (one class per table).
No logic of the core is repeated here: this module only orders, paces and delivers its rows.

**Event time.** Each kind's event time is the time its table is ordered by:
``top_of_book``, ``book_snapshot``, ``nbbo``, ``late_event``: ``event_time_ms`` (the exchange's
time of the book change or the late event); ``trade``, ``matched_trade``: ``trade_time_ms``;
``bar``: the end of its window (``window_start_ms + interval_ms``: a bar is known once its
window closed); ``gap``: ``end_ms`` (an open interval's row has ``end_ms = start_ms``: when the
book left LIVE; the closed one's: when it was LIVE again).

**Order.** Within a partition the core emits rows in processing order, close to but not
exactly event-time order (exchanges' clocks and latencies differ; bars come when the watermark
passes them). The rows are held in a heap until the core's watermark (Kafka record time minus
the job's out-of-orderness) is ``backtest.reorder_ms`` past them, then delivered in order. A row
emitted after its time was already released (a late trade, a frame far behind its exchange's
clock) is delivered 1 ms after the last released time: when the core could first produce it,
as live would have seen it; such deliveries are counted (``late_deliveries``). Partitions are
merged (k-way) on the key ``(delivery time, kind rank, instrument, emission index within the
partition)``: kinds at the same millisecond in ``KINDS`` order (a book's state before the
trades against it, bars last), then by instrument (each in one partition), then as the core
emitted them. Every part of the key depends only on the records of the range: frames are fed
in fixed chunks of ``backtest.chunk_records`` whatever batches the source reads, so the same
range gives the same events in the same order on every run, at any speed.

**Pacing.** ``speed=None``: as fast as the core goes. ``speed=N``: each event is held until
``(its delivery time - the first's) / N`` has passed on the wall clock (``ReplayPacer``).

**Fills** (``Context.submit``): against the book the strategy has seen, never better. A
marketable order (no limit, or a limit at or through the touch) takes the touch's size at the
touch price, then what the ``top_of_book`` row reports within the depth band
(``*_depth_10bps``) at the band's far edge (the worst price the band allows); the strategy's
own fills use that liquidity up until the book's next top-of-book change. The rest of a market
order is cancelled; of a limit order it rests. A resting order has no queue position: it fills
only when a later trade of that book (``trade_time_ms`` after the order) prints through its
price (strictly below a buy's limit, above a sell's), at its limit, up to the trade's size.
Only a LIVE book fills. Fees: ``backtest.taker_fee_bps`` / ``maker_fee_bps`` of the notional.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import importlib
import importlib.util
import operator
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

from jobs.backfill import PartitionRange, native_partition
from jobs.core_schemas import learning
from jobs.frames import FrameSource
from jobs.replay import ReplayPacer
from jobs.sinks.clickhouse import row_tuples
from schemas.writers import registry_writer_schemas
from tickflow.config import Settings
from tickflow.instruments import nbbo_group

NO_TIME = -(2**63)
END_OF_TIME = 2**63 - 1

# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopOfBook:
    """A change of a book's best bid/ask or status (table ``top_of_book``)."""

    kind: ClassVar[str] = "top_of_book"
    table: ClassVar[str] = "top_of_book"
    date: dt.date
    exchange: str
    symbol: str
    instrument: str
    event_time_ms: int
    version: int
    seq: int
    status: str  # LIVE, RESYNCING, STALE
    bid_price: Decimal | None
    bid_size: Decimal | None
    ask_price: Decimal | None
    ask_size: Decimal | None
    bid_depth_10bps: Decimal | None  # size within the depth band below the mid, touch included
    ask_depth_10bps: Decimal | None
    receive_time_ns: int

    @property
    def time_ms(self) -> int:
        return self.event_time_ms

    @property
    def mid(self) -> Decimal | None:
        if self.bid_price is None or self.ask_price is None:
            return None
        return (self.bid_price + self.ask_price) / 2


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """A book's top N levels, periodically (table ``book_snapshots``)."""

    kind: ClassVar[str] = "book_snapshot"
    table: ClassVar[str] = "book_snapshots"
    date: dt.date
    exchange: str
    symbol: str
    instrument: str
    event_time_ms: int
    seq: int
    bid_prices: list[Decimal]
    bid_sizes: list[Decimal]
    ask_prices: list[Decimal]
    ask_sizes: list[Decimal]
    receive_time_ns: int

    @property
    def time_ms(self) -> int:
        return self.event_time_ms


@dataclass(frozen=True, slots=True)
class Nbbo:
    """A change of an instrument's cross-exchange best bid/offer (table ``nbbo``)."""

    kind: ClassVar[str] = "nbbo"
    table: ClassVar[str] = "nbbo"
    date: dt.date
    instrument: str
    quote: str
    event_time_ms: int
    version: int
    receive_time_ns: int
    bid_price: Decimal | None
    bid_size: Decimal | None
    bid_venues: list[str]
    ask_price: Decimal | None
    ask_size: Decimal | None
    ask_venues: list[str]
    locked: int
    crossed: int
    venues: list[str]  # member books, exchange:symbol
    venue_versions: list[int]
    excluded: list[str]
    excluded_reasons: list[str]

    @property
    def time_ms(self) -> int:
        return self.event_time_ms

    @property
    def mid(self) -> Decimal | None:
        if self.bid_price is None or self.ask_price is None:
            return None
        return (self.bid_price + self.ask_price) / 2


@dataclass(frozen=True, slots=True)
class Trade:
    """A trade as the exchange reported it (table ``trades``; ``on_time`` 0: a late one)."""

    kind: ClassVar[str] = "trade"
    table: ClassVar[str] = "trades"
    date: dt.date
    exchange: str
    symbol: str
    instrument: str
    trade_id: str
    price: Decimal
    size: Decimal
    taker_side: str  # buy | sell
    trade_time_ms: int
    event_time_ms: int
    receive_time_ns: int
    on_time: int

    @property
    def time_ms(self) -> int:
        return self.trade_time_ms


@dataclass(frozen=True, slots=True)
class MatchedTrade:
    """A trade with the book and NBBO it executed against (table ``matched_trades``)."""

    kind: ClassVar[str] = "matched_trade"
    table: ClassVar[str] = "matched_trades"
    date: dt.date
    exchange: str
    symbol: str
    instrument: str
    trade_id: str
    trade_time_ms: int
    price: Decimal
    size: Decimal
    taker_side: str
    book_status: str
    book_time_ms: int
    book_version: int
    book_seq: int
    bid_price: Decimal | None
    bid_size: Decimal | None
    ask_price: Decimal | None
    ask_size: Decimal | None
    mid: Decimal | None
    spread: Decimal | None
    touch: str  # at | inside | through | none
    levels_consumed: int
    size_consumed: Decimal
    slippage_mid: Decimal | None
    slippage_mid_bps: float | None
    nbbo_bid_price: Decimal | None
    nbbo_bid_size: Decimal | None
    nbbo_ask_price: Decimal | None
    nbbo_ask_size: Decimal | None
    nbbo_venues: list[str]
    slippage_nbbo: Decimal | None
    trade_through: int
    receive_time_ns: int

    @property
    def time_ms(self) -> int:
        return self.trade_time_ms


@dataclass(frozen=True, slots=True)
class Bar:
    """OHLCV and book metrics of a window; ``venue`` an exchange or ALL (table ``bars``)."""

    kind: ClassVar[str] = "bar"
    table: ClassVar[str] = "bars"
    date: dt.date
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
    twa_bid_depth_10bps: float | None
    twa_ask_depth_10bps: float | None
    ofi: Decimal

    @property
    def time_ms(self) -> int:
        return self.window_start_ms + self.interval_ms


@dataclass(frozen=True, slots=True)
class LateEvent:
    """A trade or book event that arrived behind the watermark (table ``late_events``)."""

    kind: ClassVar[str] = "late_event"
    table: ClassVar[str] = "late_events"
    date: dt.date
    instrument: str
    exchange: str
    symbol: str
    late_kind: str  # trade | book (the table's column ``kind``)
    event_id: str
    event_time_ms: int
    watermark_ms: int
    lateness_ms: int
    receive_time_ns: int

    @property
    def time_ms(self) -> int:
        return self.event_time_ms


@dataclass(frozen=True, slots=True)
class Gap:
    """A book out of sync: its opening row (``closed`` 0) and its closing row (table ``gaps``)."""

    kind: ClassVar[str] = "gap"
    table: ClassVar[str] = "gaps"
    date: dt.date
    exchange: str
    symbol: str
    instrument: str
    start_ms: int
    start_version: int
    end_ms: int
    closed: int
    gap_kind: str  # startup, gap, checksum, ... (the table's column ``kind``)
    reason: str
    seq_before: int | None
    seq_after: int | None
    messages: int
    dropped: int

    @property
    def time_ms(self) -> int:
        return self.end_ms


Event = TopOfBook | BookSnapshot | Nbbo | Trade | MatchedTrade | Bar | LateEvent | Gap
# at the same millisecond: a book's state before the trades against it, bars last
KINDS: tuple[type[Event], ...] = (
    Gap, TopOfBook, BookSnapshot, Nbbo, Trade, MatchedTrade, LateEvent, Bar,
)  # fmt: skip
EVENT_OF_TABLE: dict[str, type[Event]] = {cls.table: cls for cls in KINDS}
KIND_NAMES: tuple[str, ...] = tuple(cls.kind for cls in KINDS)
_RANK = {cls.table: rank for rank, cls in enumerate(KINDS)}


def event_values(event: Event) -> tuple[Any, ...]:
    """The event's values in its table's column order (``COLUMNS``)."""
    return _VALUES[type(event)](event)


# (not dataclasses.astuple: it deep-copies every value)
_VALUES: dict[type, Callable[[Any], tuple[Any, ...]]] = {
    cls: operator.attrgetter(*(f.name for f in fields(cls))) for cls in KINDS
}


def event_record(event: Event) -> dict[str, Any]:
    """The event as plain values by its table's column names (decimals exact, as strings)."""
    from jobs.sinks.clickhouse import COLUMNS

    return {
        column: _plain(value)
        for column, value in zip(COLUMNS[event.table], event_values(event), strict=True)
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- digests ------------------------------------------------------------------------------------


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _canonical(value: Any) -> str:
    text = _TEXT.get(type(value))
    if text is not None:
        return text(value)
    if value is None:
        return "\\N"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


_TEXT: dict[type, Callable[[Any], str]] = {
    str: str, int: str, Decimal: _decimal_text, float: repr, dt.date: dt.date.isoformat,
}  # fmt: skip


def row_hash(values: Sequence[Any]) -> int:
    """A row's hash from its values in ``COLUMNS`` order, the same whether they were decoded
    from RowBinary or read from ClickHouse (decimals by value, whatever their scale)."""
    text = "\t".join(map(_canonical, values))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")


DIGEST_MOD = 2**128


def digest_hex(total: int) -> str:
    return f"{total % DIGEST_MOD:032x}"


def digest_rows(rows: Iterable[Sequence[Any]]) -> str:
    """An order-independent digest of a multiset of rows: the sum of their hashes."""
    return digest_hex(sum(row_hash(r) for r in rows))


# --- strategies ---------------------------------------------------------------------------------


class Strategy(Protocol):
    def on_event(self, event: Event, ctx: Context) -> None:
        """Every event, in delivery order; ``ctx`` has the time, the books seen, orders."""
        ...


@dataclass(frozen=True, slots=True)
class Order:
    exchange: str
    symbol: str
    side: str  # buy | sell
    size: Decimal
    limit: Decimal | None = None  # None: a market order (what it cannot take is cancelled)


@dataclass(frozen=True, slots=True)
class Fill:
    order_id: int
    time_ms: int  # the delivery time of the event it filled on
    exchange: str
    symbol: str
    instrument: str
    side: str
    price: Decimal
    size: Decimal
    fee: Decimal
    liquidity: str  # taker | maker


@dataclass
class _Resting:
    order_id: int
    order: Order
    instrument: str
    remaining: Decimal
    submitted_ms: int


@dataclass
class _Taken:
    """Liquidity of a book's current top-of-book row the strategy already took."""

    version: int
    touch: dict[str, Decimal] = field(
        default_factory=lambda: {"buy": Decimal(0), "sell": Decimal(0)}
    )
    band: dict[str, Decimal] = field(
        default_factory=lambda: {"buy": Decimal(0), "sell": Decimal(0)}
    )


class FillSimulator:
    """The fill model of the module docstring over the events delivered so far."""

    def __init__(self, taker_fee_bps: float, maker_fee_bps: float, depth_band_bps: int) -> None:
        self.taker_fee = Decimal(str(taker_fee_bps)) / 10_000
        self.maker_fee = Decimal(str(maker_fee_bps)) / 10_000
        self.band = Decimal(depth_band_bps) / 10_000
        self.tops: dict[tuple[str, str], TopOfBook] = {}
        self.nbbos: dict[str, Nbbo] = {}
        self._taken: dict[tuple[str, str], _Taken] = {}
        self.resting: list[_Resting] = []
        self.fills: list[Fill] = []
        self.orders = 0
        self.cancelled: dict[int, Decimal] = {}  # market orders: the size not filled
        self.position: defaultdict[str, Decimal] = defaultdict(Decimal)  # base units
        self.cash: defaultdict[str, Decimal] = defaultdict(Decimal)  # quote units, after fees
        self.fees: defaultdict[str, Decimal] = defaultdict(Decimal)
        self.marks: dict[str, Decimal] = {}  # instrument -> last mid seen
        self.now_ms = NO_TIME

    def observe(self, event: Event, at_ms: int) -> None:
        """An event before the strategy sees it: the book state, and resting orders' fills."""
        self.now_ms = at_ms
        if isinstance(event, TopOfBook):
            self.tops[(event.exchange, event.symbol)] = event
            if event.status == "LIVE" and event.mid is not None:
                self.marks.setdefault(event.instrument, event.mid)
                if event.instrument not in self.nbbos:
                    self.marks[event.instrument] = event.mid
        elif isinstance(event, Nbbo):
            self.nbbos[event.instrument] = event
            if event.mid is not None:
                self.marks[event.instrument] = event.mid
        elif isinstance(event, Trade) and self.resting:
            self._trade(event, at_ms)

    def top(self, exchange: str, symbol: str) -> TopOfBook | None:
        return self.tops.get((exchange, symbol))

    def submit(self, order: Order) -> int:
        if order.side not in ("buy", "sell"):
            raise ValueError(f"order side {order.side!r}: buy or sell")
        if order.size <= 0 or (order.limit is not None and order.limit <= 0):
            raise ValueError(f"order size and limit must be positive: {order}")
        self.orders += 1
        order_id = self.orders
        top = self.tops.get((order.exchange, order.symbol))
        remaining = order.size
        if top is not None and top.status == "LIVE":
            remaining = self._take(order_id, order, top, remaining)
        if remaining > 0:
            if order.limit is None:
                self.cancelled[order_id] = remaining
            else:
                instrument = top.instrument if top is not None else ""
                self.resting.append(_Resting(order_id, order, instrument, remaining, self.now_ms))
        return order_id

    def cancel(self, order_id: int) -> bool:
        kept = [r for r in self.resting if r.order_id != order_id]
        found = len(kept) != len(self.resting)
        self.resting = kept
        return found

    def _take(self, order_id: int, order: Order, top: TopOfBook, remaining: Decimal) -> Decimal:
        buy = order.side == "buy"
        price = top.ask_price if buy else top.bid_price
        size = top.ask_size if buy else top.bid_size
        depth = top.ask_depth_10bps if buy else top.bid_depth_10bps
        mid = top.mid
        if price is None or size is None:
            return remaining
        key = (order.exchange, order.symbol)
        taken = self._taken.get(key)
        if taken is None or taken.version != top.version:
            taken = self._taken[key] = _Taken(top.version)
        if order.limit is None or (order.limit >= price if buy else order.limit <= price):
            qty = min(remaining, size - taken.touch[order.side])
            if qty > 0:
                taken.touch[order.side] += qty
                remaining -= qty
                self._fill(order_id, order, top.instrument, price, qty, "taker")
        if remaining > 0 and depth is not None and mid is not None:
            edge = mid * (1 + self.band) if buy else mid * (1 - self.band)
            if order.limit is None or (order.limit >= edge if buy else order.limit <= edge):
                qty = min(remaining, depth - size - taken.band[order.side])
                if qty > 0:
                    taken.band[order.side] += qty
                    remaining -= qty
                    self._fill(order_id, order, top.instrument, edge, qty, "taker")
        return remaining

    def _trade(self, trade: Trade, at_ms: int) -> None:
        left = trade.size
        for resting in list(self.resting):
            order = resting.order
            if (order.exchange, order.symbol) != (trade.exchange, trade.symbol):
                continue
            if trade.trade_time_ms <= resting.submitted_ms or left <= 0:
                continue
            assert order.limit is not None
            through = (
                trade.price < order.limit if order.side == "buy" else trade.price > order.limit
            )
            if not through:
                continue
            qty = min(resting.remaining, left)
            left -= qty
            resting.remaining -= qty
            self._fill(resting.order_id, order, trade.instrument, order.limit, qty, "maker", at_ms)
            if resting.remaining <= 0:
                self.resting.remove(resting)

    def _fill(
        self,
        order_id: int,
        order: Order,
        instrument: str,
        price: Decimal,
        size: Decimal,
        liquidity: str,
        at_ms: int | None = None,
    ) -> None:
        notional = price * size
        fee = notional * (self.taker_fee if liquidity == "taker" else self.maker_fee)
        sign = 1 if order.side == "buy" else -1
        self.position[instrument] += sign * size
        self.cash[instrument] += -sign * notional - fee
        self.fees[instrument] += fee
        self.fills.append(Fill(
            order_id, self.now_ms if at_ms is None else at_ms, order.exchange, order.symbol,
            instrument, order.side, price, size, fee, liquidity,
        ))  # fmt: skip

    def pnl(self) -> dict[str, dict[str, str | None]]:
        """Per instrument traded: position, cash (fees included), fees, mark (the last mid
        seen: the NBBO's, else a book's) and PnL = cash + position x mark, in quote units."""
        out = {}
        for instrument in sorted(set(self.position) | set(self.cash)):
            mark = self.marks.get(instrument)
            position, cash = self.position[instrument], self.cash[instrument]
            pnl = cash + position * mark if mark is not None else None
            out[instrument] = {
                "position": _decimal_text(position), "cash": _decimal_text(cash),
                "fees": _decimal_text(self.fees[instrument]),
                "mark": _decimal_text(mark) if mark is not None else None,
                "pnl": _decimal_text(pnl) if pnl is not None else None,
            }  # fmt: skip
        return out


class Context:
    """What a strategy sees besides the event: the delivery time, the last top of book of each
    book and NBBO of each instrument delivered so far, and the orders it submits."""

    def __init__(self, simulator: FillSimulator) -> None:
        self._simulator = simulator
        self.time_ms = NO_TIME  # the delivery time of the current event

    def top(self, exchange: str, symbol: str) -> TopOfBook | None:
        return self._simulator.top(exchange, symbol)

    def nbbo(self, instrument: str) -> Nbbo | None:
        return self._simulator.nbbos.get(instrument)

    def submit(self, order: Order) -> int:
        """Fills at once what the seen book allows; a limit order's rest rests. Its id."""
        return self._simulator.submit(order)

    def cancel(self, order_id: int) -> bool:
        return self._simulator.cancel(order_id)

    def position(self, instrument: str) -> Decimal:
        return self._simulator.position.get(instrument, Decimal(0))

    @property
    def fills(self) -> list[Fill]:
        return self._simulator.fills


# --- the run ------------------------------------------------------------------------------------


@dataclass
class BacktestResult:
    frames: int = 0
    dead_letters: int = 0
    dead_letter_reasons: list[str] = field(default_factory=list)  # the first few
    events: dict[str, int] = field(default_factory=dict)  # per kind
    digests: dict[str, str] = field(default_factory=dict)  # per kind, order-independent
    late_deliveries: dict[str, int] = field(default_factory=dict)  # per kind
    seconds: float = 0.0
    orders: int = 0
    fills: list[Fill] = field(default_factory=list)
    cancelled: dict[int, str] = field(default_factory=dict)  # market orders' unfilled size
    resting: int = 0  # limit orders still resting at the end
    pnl: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return sum(self.events.values()) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "dead_letters": self.dead_letters,
            "dead_letter_reasons": self.dead_letter_reasons,
            "events": self.events, "digests": self.digests,
            "late_deliveries": self.late_deliveries, "seconds": round(self.seconds, 3),
            "frames_per_s": round(self.frames_per_s), "events_per_s": round(self.events_per_s),
            "orders": self.orders, "fills": len(self.fills), "resting": self.resting,
            "cancelled": self.cancelled, "pnl": self.pnl,
        }  # fmt: skip


Key = tuple[int, int, str, int]  # delivery time, kind rank, instrument, emission index
MAX_REASONS = 20


class Backtest:
    """``[from_ms, to_ms)`` of the raw frames in ``source`` through the core, delivered in
    event-time order (module docstring). ``instruments``: the NBBO groups they belong to
    (None: every instrument); ``kinds``: the event kinds decoded and delivered (None: all)."""

    def __init__(
        self,
        settings: Settings,
        source: FrameSource,
        from_ms: int,
        to_ms: int,
        instruments: Sequence[str] | None = None,
        speed: float | None = None,
        kinds: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if to_ms <= from_ms:
            raise ValueError(f"an empty range: to_ms {to_ms} is not after from_ms {from_ms}")
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive (None: as fast as possible), not {speed}")
        unknown = sorted(set(kinds or ()) - set(KIND_NAMES))
        if unknown:
            raise ValueError(f"unknown event kind(s) {unknown}: {', '.join(KIND_NAMES)}")
        self.settings = settings
        self.source = source
        self.from_ms, self.to_ms = from_ms, to_ms
        equivalents = settings.analytics.quote_equivalents
        self.groups = frozenset(nbbo_group(i, equivalents) for i in instruments or ())
        self.tables = {cls.table for cls in KINDS if kinds is None or cls.kind in kinds}
        self.speed = speed
        self.clock, self.sleep = clock, sleep
        self.chunk = max(1, settings.backtest.chunk_records)
        self.reorder_ms = settings.backtest.reorder_ms
        self.result = BacktestResult()
        self._ranges: list[PartitionRange] | None = None

    def prepare(self) -> list[PartitionRange]:
        """Each partition's offsets of the range (looked up once, before the first event)."""
        if self._ranges is None:
            ranges = []
            for partition in self.source.partitions():
                start, end = self.source.offset_range(partition, self.from_ms, self.to_ms)
                if end > start:
                    ranges.append(PartitionRange(partition, start, end, only=self.groups))
            self._ranges = ranges
        return self._ranges

    def events(self) -> Generator[tuple[int, Event], None, None]:
        """(delivery time ms, event) in delivery order, paced if a speed is given; the
        result's counts, digests and rates are complete once it is exhausted."""
        result = self.result = BacktestResult()
        started = time.monotonic()
        streams = [self._partition(part) for part in self.prepare()]
        self._ranges = None  # a second run looks the offsets up again
        pacer = ReplayPacer(self.speed, self.clock, self.sleep) if self.speed else None
        sums: Counter[str] = Counter()
        events: Counter[str] = Counter()
        for (at_ms, *_), event in heapq.merge(*streams, key=lambda item: item[0]):
            if pacer is not None:
                pacer.hold_until(at_ms * 1_000_000)
            events[event.kind] += 1
            sums[event.kind] += row_hash(event_values(event))
            yield at_ms, event
        result.events = {k: events[k] for k in KIND_NAMES if k in events}
        result.digests = {k: digest_hex(sums[k]) for k in result.events}
        result.seconds = time.monotonic() - started

    def run(self, strategy: Strategy) -> BacktestResult:
        """Every event to ``strategy.on_event`` (after the fill model has seen it)."""
        backtest = self.settings.backtest
        simulator = FillSimulator(
            backtest.taker_fee_bps, backtest.maker_fee_bps, self.settings.analytics.depth_band_bps
        )
        ctx = Context(simulator)
        for at_ms, event in self.events():
            ctx.time_ms = at_ms
            simulator.observe(event, at_ms)
            strategy.on_event(event, ctx)
        result = self.result
        result.orders = simulator.orders
        result.fills = list(simulator.fills)
        result.cancelled = {i: _decimal_text(s) for i, s in simulator.cancelled.items()}
        result.resting = len(simulator.resting)
        result.pnl = simulator.pnl()
        return result

    def _partition(self, part: PartitionRange) -> Iterator[tuple[Key, Event]]:
        """One partition's events, in key order (module docstring)."""
        core = native_partition(self.settings, part)
        writers = registry_writer_schemas(self.settings.registry)
        heap: list[tuple[Key, Event]] = []
        released = NO_TIME  # every key up to this time was delivered
        emitted = 0
        late = Counter[str]()

        def collect() -> None:
            nonlocal emitted
            for table, data, _ in core.take_tables(0):
                if table not in self.tables:
                    continue
                cls = EVENT_OF_TABLE[table]
                rank = _RANK[table]
                for values in row_tuples(table, data):
                    event = cls(*values)
                    at = event.time_ms
                    if at <= released:
                        at = released + 1  # the earliest it can still go in order
                        late[cls.kind] += 1
                    heapq.heappush(heap, ((at, rank, event.instrument, emitted), event))
                    emitted += 1
            for reason, _, _ in core.take_dead_letters():
                self.result.dead_letters += 1
                if len(self.result.dead_letter_reasons) < MAX_REASONS:
                    self.result.dead_letter_reasons.append(f"partition {part.partition}: {reason}")

        def release(bound: int) -> Iterator[tuple[Key, Event]]:
            nonlocal released
            while heap and heap[0][0][0] <= bound:
                yield heapq.heappop(heap)
            released = max(released, bound)

        values: list[bytes] = []
        stamps: list[int] = []
        for batch in self.source.read(part.partition, part.start, part.end):
            values += batch.values
            stamps += batch.timestamps
            while len(values) >= self.chunk:
                chunk = partial(core.feed_batch, values[: self.chunk], stamps[: self.chunk])
                learning(writers, chunk)
                del values[: self.chunk], stamps[: self.chunk]
                collect()
                yield from release(core.watermark_ms - self.reorder_ms)
        if values:
            learning(writers, partial(core.feed_batch, values, stamps))
        core.finish()
        collect()
        yield from release(END_OF_TIME)
        self.result.frames += core.counts()["frames"]
        for kind, n in late.items():
            self.result.late_deliveries[kind] = self.result.late_deliveries.get(kind, 0) + n


# --- the command line ---------------------------------------------------------------------------


def load_strategy(spec: str) -> Any:
    """``path/to/file.py:Class`` or ``package.module:Class``: an instance of the class."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"--strategy {spec!r}: want path/to/file.py:Class or module:Class")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"--strategy: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"backtest_strategy_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"--strategy: {target} has no {name}")
    return cls()


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time or date (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: epoch ms or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from jobs.frames import frame_source
    from tickflow.config import ConfigError, load_settings

    parser = argparse.ArgumentParser(
        prog="tickflow backtest", description="raw frames through the job's core to a strategy"
    )
    parser.add_argument("--from", dest="from_", required=True, help="epoch ms or ISO 8601 (UTC)")
    parser.add_argument("--to", required=True, help="epoch ms or ISO 8601, exclusive")
    parser.add_argument("--strategy", required=True, help="path/to/file.py:Class or module:Class")
    parser.add_argument("--speed", type=float, help="N x real time by event time (default: max)")
    parser.add_argument("--source", default="kafka", choices=("kafka", "archive"))
    parser.add_argument("--instruments", help="comma-separated (default: every instrument)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        strategy = load_strategy(args.strategy)
        backtest = Backtest(
            settings,
            frame_source(settings, args.source),
            parse_time_ms(args.from_),
            parse_time_ms(args.to),
            instruments=args.instruments.split(",") if args.instruments else None,
            speed=args.speed,
        )
    except (ConfigError, ValueError) as exc:
        print(f"tickflow backtest: {exc}", file=sys.stderr)
        return 2
    result = backtest.run(strategy)
    print(json.dumps(result.summary(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
