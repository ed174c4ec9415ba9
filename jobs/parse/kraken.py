"""Kraken spot WebSocket v2 frames -> normalised events. Pure functions, no I/O.

Prices and quantities are JSON numbers on the wire. They are decoded straight into ``Decimal``
from their text (msgspec reads the number token; no float in between), so ``0.10000000`` keeps
its trailing zeros: the book checksum is computed over that exact text.
Docs: https://docs.kraken.com/api/docs/websocket-v2/book
and https://docs.kraken.com/api/docs/websocket-v2/trade
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from jobs.parse.events import (
    BookDelta,
    BookSnapshot,
    MarketEvent,
    ParseError,
    Trade,
)
from schemas.codec import RawEnvelope

EXCHANGE = "kraken"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Checksum = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]  # CRC32, unsigned 32-bit
ZERO = Decimal(0)


class PriceLevel(msgspec.Struct, frozen=True):
    """One level of a book message: {"price": 45283.5, "qty": 0.10000000}."""

    price: Decimal  # price of the level, exact text of the JSON number
    qty: Decimal  # absolute quantity at the level; 0 removes it


class BookData(msgspec.Struct, frozen=True):
    """The one element of a book message's ``data``."""

    symbol: str  # pair, e.g. "BTC/USD"
    bids: list[PriceLevel]  # snapshot: best (highest) first; update: changed levels, in order
    asks: list[PriceLevel]  # snapshot: best (lowest) first; update: changed levels, in order
    checksum: Checksum  # CRC32 of the top 10 levels per side after this message
    timestamp: str | None = None  # RFC 3339, microseconds; the documented snapshot has none


class BookMessage(msgspec.Struct, frozen=True, tag_field="channel", tag="book"):
    """Book snapshot or update.

    Example: {"channel":"book","type":"update","data":[{"symbol":"MATIC/USD",
              "bids":[{"price":0.5657,"qty":1098.3947558}],"asks":[],
              "checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/book
    """

    type: Literal["snapshot", "update"]  # a snapshot replaces the book, an update changes it
    data: list[BookData]  # one element per symbol (Kraken sends one)


class TradeData(msgspec.Struct, frozen=True):
    """One trade of a trade message's ``data``."""

    symbol: str  # pair, e.g. "BTC/USD"
    side: Literal["buy", "sell"]  # the taker's side
    price: Decimal  # trade price
    qty: Decimal  # trade quantity
    ord_type: str  # the taker's order type: "market" | "limit"
    trade_id: int  # sequential per pair
    timestamp: str  # RFC 3339, microseconds


class TradeMessage(msgspec.Struct, frozen=True, tag_field="channel", tag="trade"):
    """Trades (a snapshot of recent trades after subscribing, then updates).

    Example: {"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell",
              "price":0.5117,"qty":40.0,"ord_type":"market","trade_id":4665906,
              "timestamp":"2023-09-25T07:49:37.708706Z"}]}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/trade
    """

    type: Literal["snapshot", "update"]
    data: list[TradeData]


_decoder = msgspec.json.Decoder(BookMessage | TradeMessage)


def timestamp_ms(text: str) -> int:
    """RFC 3339 -> ms since the epoch, exact: "2023-09-25T07:49:37.708706Z" -> 1695628177708."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ParseError(f"kraken: bad timestamp {text!r}") from exc
    if when.tzinfo is None:
        raise ParseError(f"kraken: timestamp without a time zone {text!r}")
    return (when - EPOCH) // timedelta(milliseconds=1)


def _levels(raw: list[PriceLevel]) -> tuple[tuple[Decimal, Decimal], ...]:
    levels = tuple((level.price, level.qty) for level in raw)
    for price, qty in levels:
        # msgspec cannot constrain Decimal fields (and accepts "NaN" strings): check here
        if not (price.is_finite() and qty.is_finite() and price > ZERO and qty >= ZERO):
            raise ParseError(f"kraken: bad level price={price} qty={qty}")
    return levels


def parse_frame(payload: bytes, receive_time_ns: int) -> list[MarketEvent]:
    """A book or trade frame -> its events (one per ``data`` element)."""
    try:
        message = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ParseError(f"kraken: cannot parse frame: {exc}") from exc
    if isinstance(message, TradeMessage):
        return [_trade(t, receive_time_ns) for t in message.data]
    events: list[MarketEvent] = []
    for book in message.data:
        # a snapshot without a timestamp (as documented) gets none: 0, like a Binance snapshot
        event_ms = timestamp_ms(book.timestamp) if book.timestamp is not None else 0
        if message.type == "snapshot":
            events.append(
                BookSnapshot(
                    exchange=EXCHANGE,
                    symbol=book.symbol,
                    last_id=0,  # no sequence numbers on Kraken's book channel
                    receive_time_ns=receive_time_ns,
                    bids=_levels(book.bids),
                    asks=_levels(book.asks),
                    event_time_ms=event_ms,
                    checksum=book.checksum,
                )
            )
        else:
            events.append(
                BookDelta(
                    exchange=EXCHANGE,
                    symbol=book.symbol,
                    first_id=0,
                    last_id=0,
                    event_time_ms=event_ms,
                    receive_time_ns=receive_time_ns,
                    bids=_levels(book.bids),
                    asks=_levels(book.asks),
                    checksum=book.checksum,
                )
            )
    return events


def _trade(data: TradeData, receive_time_ns: int) -> Trade:
    time_ms = timestamp_ms(data.timestamp)
    price, qty = data.price, data.qty
    if not (price.is_finite() and qty.is_finite() and price > ZERO and qty > ZERO):
        raise ParseError(f"kraken: bad trade {data.trade_id} price={data.price} qty={data.qty}")
    return Trade(
        exchange=EXCHANGE,
        symbol=data.symbol,
        trade_id=str(data.trade_id),
        price=price,
        size=qty,
        taker_side=data.side,  # Kraken reports the taker's side
        trade_time_ms=time_ms,
        event_time_ms=time_ms,
        receive_time_ns=receive_time_ns,
    )


def parse(env: RawEnvelope) -> list[MarketEvent]:
    """One envelope -> its events (the registry entry for ``kraken``).

    Channels: ``depth`` (book snapshots and updates), ``trade`` (``sync_lost`` markers are
    parsed for every exchange by ``jobs.parse.parse_envelope``).
    """
    if env.channel in ("depth", "trade"):
        events = parse_frame(env.payload, env.receive_time_ns)
        if any(isinstance(e, Trade) != (env.channel == "trade") for e in events):
            raise ParseError(f"kraken: a {env.channel} envelope holds another channel's frame")
        return events
    raise ParseError(f"kraken: unknown channel {env.channel!r}")
