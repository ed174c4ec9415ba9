"""The simulator's true order book: integer ticks and lots, exact decimal text. Pure, no I/O.

Prices and quantities are kept as integers (ticks of the instrument's tick size, lots of its
step size) so the random walk never accumulates float error and every exchange's decimal text
is produced exactly. Shared by every exchange simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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
