"""The simulator's true order book: integer ticks and lots, exact decimal text. Pure, no I/O.

Prices and quantities are kept as integers (ticks of the instrument's tick size, lots of its
step size) so the random walk never accumulates float error and every exchange's decimal text
is produced exactly. Shared by every exchange simulator.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

UNITS_PER_ONE = 100_000_000  # Binance prints every price and quantity with 8 decimals


class Side(Enum):
    BID = "bid"
    ASK = "ask"


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """Trading rules and starting point of one simulated instrument (units of 1e-8)."""

    tick_units: int  # price tick size, e.g. 0.01 -> 1_000_000
    lot_units: int  # quantity step size, e.g. 0.00001 -> 1_000
    start_price_units: int  # where the mid starts
    typical_level_lots: int  # median resting quantity of one level

    def price_text(self, ticks: int) -> str:
        return units_text(ticks * self.tick_units)

    def qty_text(self, lots: int) -> str:
        return units_text(lots * self.lot_units)


# Rough real-world rules so frames look like the exchange's; unknown symbols get DEFAULT_SPEC.
INSTRUMENTS: dict[str, InstrumentSpec] = {
    "BTCUSDT": InstrumentSpec(1_000_000, 1_000, 27_000 * UNITS_PER_ONE, 50_000),
    "ETHUSDT": InstrumentSpec(1_000_000, 10_000, 1_800 * UNITS_PER_ONE, 50_000),
    "BNBUSDT": InstrumentSpec(100_000, 100_000, 250 * UNITS_PER_ONE, 5_000),
    # Coinbase products (quote_increment, base_increment of GET /api/v3/brokerage/products).
    # Start prices leave >= 4000 ticks below the mid, so deep simulated books stay positive.
    "BTC-USD": InstrumentSpec(1_000_000, 1, 27_000 * UNITS_PER_ONE, 5_000_000),
    "BTC-USDT": InstrumentSpec(1_000_000, 1, 27_000 * UNITS_PER_ONE, 5_000_000),
    "ETH-USD": InstrumentSpec(1_000_000, 1, 1_800 * UNITS_PER_ONE, 100_000_000),
    "ETH-BTC": InstrumentSpec(1_000, 1, 6_600_000, 100_000_000),
    "SOL-USD": InstrumentSpec(1_000_000, 100_000, 60 * UNITS_PER_ONE, 20_000),
    "LTC-USD": InstrumentSpec(1_000_000, 1, 70 * UNITS_PER_ONE, 500_000_000),
    "AVAX-USD": InstrumentSpec(1_000_000, 1, 45 * UNITS_PER_ONE, 2_000_000_000),
    "LINK-USD": InstrumentSpec(100_000, 1_000_000, 7 * UNITS_PER_ONE, 10_000),
    "DOT-USD": InstrumentSpec(100_000, 1, 5 * UNITS_PER_ONE, 10_000_000_000),
    "XRP-USD": InstrumentSpec(10_000, 100, 50_000_000, 2_000_000_000),
    "ADA-USD": InstrumentSpec(10_000, 1, 45_000_000, 200_000_000_000),
    "DOGE-USD": InstrumentSpec(1_000, 10_000_000, 7_000_000, 50_000),
}
DEFAULT_SPEC = InstrumentSpec(1_000_000, 100_000, 100 * UNITS_PER_ONE, 10_000)


def instrument_spec(symbol: str) -> InstrumentSpec:
    return INSTRUMENTS.get(symbol, DEFAULT_SPEC)


def units_text(units: int) -> str:
    """Fixed 8-decimal text of a non-negative amount in 1e-8 units: 150000000 -> "1.50000000"."""
    if units < 0:
        raise ValueError(f"negative amount {units}")
    whole, frac = divmod(units, UNITS_PER_ONE)
    return f"{whole}.{frac:08d}"


class TrueBook:
    """Price level -> resting quantity per side. Levels with quantity 0 do not exist."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def side(self, side: Side) -> dict[int, int]:
        return self.bids if side is Side.BID else self.asks

    def set(self, side: Side, ticks: int, lots: int) -> None:
        """Absolute quantity at a level; 0 removes it (the exchanges' own diff semantics)."""
        levels = self.side(side)
        if lots:
            levels[ticks] = lots
        else:
            levels.pop(ticks, None)

    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None

    def best(self, side: Side) -> int | None:
        return self.best_bid() if side is Side.BID else self.best_ask()

    def worst(self, side: Side) -> int | None:
        levels = self.side(side)
        if not levels:
            return None
        return min(levels) if side is Side.BID else max(levels)

    def levels(self, side: Side, limit: int | None = None) -> list[tuple[int, int]]:
        """(ticks, lots) best first, at most ``limit`` of them."""
        levels = self.side(side)
        ordered = sorted(levels.items(), reverse=side is Side.BID)
        return ordered if limit is None else ordered[:limit]

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid >= ask


@dataclass(frozen=True, slots=True)
class TradeTruth:
    """The book state one trade executed against: the true touch just before the taker came.

    Prices and sizes are in the model's integer units (rendered as text by the venue); None
    when that side of the book was empty. ``book_time_ms`` is the event time of the last depth
    event emitted before the trade (0 if none yet): the state the taker hit, which is what a
    consumer matching the trade to "the book as of the trade's event time" must find.
    """

    symbol: str
    trade_id: int
    trade_time_ms: int
    book_time_ms: int
    bid_price: int | None
    bid_size: int | None
    ask_price: int | None
    ask_size: int | None
    taker_side: str  # "buy" | "sell"

    @classmethod
    def before(
        cls, book: TrueBook, symbol: str, trade_id: int, time_ms: int, book_time_ms: int,
        taker_side: str,
    ) -> TradeTruth:
        """The record of a trade about to execute against ``book`` (not yet changed by it)."""
        bid, ask = book.best_bid(), book.best_ask()
        return cls(
            symbol, trade_id, time_ms, book_time_ms,
            bid, None if bid is None else book.bids[bid],
            ask, None if ask is None else book.asks[ask],
            taker_side,
        )


def truth_rows(
    records: list[TradeTruth],
    from_time_ms: int,
    price_text: Callable[[int], str],
    qty_text: Callable[[int], str],
) -> list[dict[str, Any]]:
    """The ``/_sim/<exchange>/truth`` rows of trades at or after ``from_time_ms``, with the
    venue's own decimal text (what its frames carry)."""
    start = bisect.bisect_left(records, from_time_ms, key=lambda r: r.trade_time_ms)
    return [
        {
            "trade_id": str(r.trade_id),
            "trade_time_ms": r.trade_time_ms,
            "book_time_ms": r.book_time_ms,
            "bid_price": None if r.bid_price is None else price_text(r.bid_price),
            "bid_size": None if r.bid_size is None else qty_text(r.bid_size),
            "ask_price": None if r.ask_price is None else price_text(r.ask_price),
            "ask_size": None if r.ask_size is None else qty_text(r.ask_size),
            "taker_side": r.taker_side,
        }
        for r in records[start:]
    ]
