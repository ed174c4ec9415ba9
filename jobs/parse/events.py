"""Normalised market events: what every exchange parser produces and the book engine consumes.

Prices and sizes stay exact: ``Decimal`` built from the exchange's own string, so
``str(price)`` gives back the exchange's text (trailing zeros included).
Every event carries the exchange's event time and our receive time.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Side = Literal["buy", "sell"]
Level = tuple[Decimal, Decimal]  # (price, size); size 0 removes the level


class ParseError(ValueError):
    """A raw frame could not be turned into events (bad JSON, wrong shape, bad number)."""


@dataclass(frozen=True, slots=True)
class BookDelta:
    """Absolute sizes for some price levels; ``first_id..last_id`` are the exchange's update ids."""

    exchange: str
    symbol: str
    first_id: int  # Binance U
    last_id: int  # Binance u
    event_time_ms: int
    receive_time_ns: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """A full (depth-limited) book; ``last_id`` is the last update id included in it."""

    exchange: str
    symbol: str
    last_id: int  # Binance lastUpdateId
    receive_time_ns: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class Trade:
    exchange: str
    symbol: str
    trade_id: str
    price: Decimal
    size: Decimal
    taker_side: Side  # normalised to the aggressor, whatever the exchange reports
    trade_time_ms: int
    event_time_ms: int
    receive_time_ns: int


MarketEvent = BookDelta | BookSnapshot | Trade
