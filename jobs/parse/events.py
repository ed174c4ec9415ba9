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
    """Absolute sizes for some price levels.

    ``first_id..last_id``: the exchange's update ids where it has them (Binance ``U``/``u``);
    otherwise the message's own sequence number (Coinbase ``sequence_num``) or 0 (Kraken).
    ``checksum``: the exchange's CRC32 of the book after this message (Kraken), else None.
    """

    exchange: str
    symbol: str
    first_id: int
    last_id: int
    event_time_ms: int
    receive_time_ns: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int | None = None


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """A full (depth-limited) book; ``last_id`` is the last update id included in it."""

    exchange: str
    symbol: str
    last_id: int  # Binance lastUpdateId; Coinbase sequence_num; Kraken 0
    receive_time_ns: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    event_time_ms: int = 0
    checksum: int | None = None


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
    # the message's place in a sequence shared with book messages (Coinbase's per-connection
    # sequence_num), else -1: orders a trade against book updates of the same millisecond
    sequence: int = -1


@dataclass(frozen=True, slots=True)
class SyncLost:
    """The connector lost continuity for this symbol (e.g. a Coinbase ``sequence_num`` gap on
    its connection): the book is wrong until the snapshot the connector asks for arrives."""

    exchange: str
    symbol: str
    reason: str
    receive_time_ns: int


MarketEvent = BookDelta | BookSnapshot | Trade | SyncLost
