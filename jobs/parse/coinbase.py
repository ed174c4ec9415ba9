"""Coinbase Advanced Trade market-data frames -> normalised events. Pure functions, no I/O.

Envelope channels (``connectors/coinbase.py``): ``depth`` (``l2_data`` messages, in-band
snapshots included), ``trade`` (``market_trades``) and ``sync_lost`` (the connector's marker
for a ``sequence_num`` gap on its connection). A message's ``sequence_num`` numbers the
messages of one WebSocket connection across every channel and product, so it orders a book's
messages within a connection but says nothing across connections and cannot reveal gaps per
product: the connector checks continuity, the engine trusts its ``sync_lost`` markers.

Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

import msgspec

from jobs.parse.events import (
    BookDelta,
    BookSnapshot,
    Level,
    MarketEvent,
    ParseError,
    Side,
    Trade,
)
from schemas.codec import RawEnvelope

# counts from 0: a negative one is bad input (and would not fit the stored UInt64 seq)
SequenceNum = Annotated[int, msgspec.Meta(ge=0)]

EXCHANGE = "coinbase"

# Which side a market_trades ``side`` names. Coinbase's Exchange feed documents ``match.side``
# as the maker's order side; the Advanced Trade docs do not say, and public clients read it as
# the maker's side too (NautilusTrader: "Coinbase reports the maker side on public market
# trades"). The simulator emits the maker's side. Flip this if recordings show otherwise.
SIDE_IS_MAKER = True

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class L2Level(msgspec.Struct, frozen=True):
    """One entry of an ``l2_data`` event's ``updates``."""

    side: Literal["bid", "offer"]  # offer = ask
    event_time: str  # RFC 3339; "1970-01-01T00:00:00Z" for snapshot levels
    price_level: str  # price, decimal text
    new_quantity: str  # absolute size now at this price; "0" removes the level


class L2Event(msgspec.Struct, frozen=True):
    type: Literal["snapshot", "update"]  # snapshot: the whole book (first after subscribing)
    product_id: str  # e.g. "BTC-USD"
    updates: list[L2Level]


class L2Message(msgspec.Struct, frozen=True, tag_field="channel", tag="l2_data"):
    """A level2 channel message (channel ``l2_data``).

    Example: {"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z",
              "sequence_num":0,"events":[{"type":"snapshot","product_id":"BTC-USD",
              "updates":[{"side":"bid","event_time":"1970-01-01T00:00:00Z",
              "price_level":"21921.73","new_quantity":"0.06317902"}]}]}
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels#level2-channel
    """

    timestamp: str  # RFC 3339 with up to 9 fractional digits: when Coinbase sent it
    sequence_num: SequenceNum  # message number on this connection, every channel, from 0
    events: list[L2Event]
    client_id: str = ""  # always "" on public channels (absent in some production frames)


class MarketTrade(msgspec.Struct, frozen=True):
    trade_id: str  # decimal digits, per product
    product_id: str
    price: str  # decimal text
    size: str  # base quantity, decimal text
    side: Literal["BUY", "SELL"]  # the maker's side (see SIDE_IS_MAKER)
    time: str  # RFC 3339 trade time


class MarketTradesEvent(msgspec.Struct, frozen=True):
    type: Literal["snapshot", "update"]  # snapshot: recent trades sent on subscribe
    trades: list[MarketTrade]


class MarketTradesMessage(msgspec.Struct, frozen=True, tag_field="channel", tag="market_trades"):
    """A market_trades channel message.

    Example: {"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z",
              "sequence_num":0,"events":[{"type":"snapshot","trades":[{"trade_id":"000000000",
              "product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY",
              "time":"2019-08-14T20:42:27.265Z"}]}]}
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels#market-trades-channel
    """

    timestamp: str  # when Coinbase sent it
    sequence_num: SequenceNum  # message number on this connection
    events: list[MarketTradesEvent]
    client_id: str = ""


_depth_decoder = msgspec.json.Decoder(L2Message)
_trades_decoder = msgspec.json.Decoder(MarketTradesMessage)


def timestamp_ms(text: str) -> int:
    """RFC 3339 text (``Z``, up to 9 fractional digits) -> Unix milliseconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ParseError(f"coinbase: bad timestamp {text!r}") from exc
    if when.tzinfo is None:
        raise ParseError(f"coinbase: timestamp without a time zone {text!r}")
    return (when - _EPOCH) // _MS


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ParseError(f"coinbase: bad decimal {what} {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise ParseError(f"coinbase: bad decimal {what} {text!r}")
    return value


def _sides(updates: list[L2Level]) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    bids: list[Level] = []
    asks: list[Level] = []
    for u in updates:
        level = (_decimal(u.price_level, "price_level"), _decimal(u.new_quantity, "new_quantity"))
        (bids if u.side == "bid" else asks).append(level)
    return tuple(bids), tuple(asks)


def parse_depth(payload: bytes, symbol: str, receive_time_ns: int) -> list[MarketEvent]:
    """An ``l2_data`` message -> a BookSnapshot per snapshot event, and one BookDelta for the
    update events that follow (they share the message's ``sequence_num``)."""
    try:
        msg = _depth_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ParseError(f"coinbase: cannot parse l2_data message: {exc}") from exc
    event_time_ms = timestamp_ms(msg.timestamp)
    out: list[MarketEvent] = []
    pending: list[L2Level] = []  # consecutive update events, merged into one delta

    def flush() -> None:
        if pending:
            bids, asks = _sides(pending)
            out.append(
                BookDelta(
                    exchange=EXCHANGE,
                    symbol=symbol,
                    first_id=msg.sequence_num,
                    last_id=msg.sequence_num,
                    event_time_ms=event_time_ms,
                    receive_time_ns=receive_time_ns,
                    bids=bids,
                    asks=asks,
                )
            )
            pending.clear()

    for event in msg.events:
        if event.product_id != symbol:
            raise ParseError(f"coinbase: l2_data event for {event.product_id} keyed as {symbol}")
        if event.type == "update":
            pending.extend(event.updates)
            continue
        flush()
        bids, asks = _sides(event.updates)
        out.append(
            BookSnapshot(
                exchange=EXCHANGE,
                symbol=symbol,
                last_id=msg.sequence_num,
                receive_time_ns=receive_time_ns,
                bids=bids,
                asks=asks,
                event_time_ms=event_time_ms,
            )
        )
    flush()
    if not out:
        raise ParseError("coinbase: l2_data message without events")
    return out


def taker_side(side: str) -> Side:
    """The aggressor's side of a market_trades ``side`` (see SIDE_IS_MAKER)."""
    if SIDE_IS_MAKER:
        return "sell" if side == "BUY" else "buy"  # a resting bid was hit: the taker sold
    return "buy" if side == "BUY" else "sell"


def parse_trades(payload: bytes, symbol: str, receive_time_ns: int) -> list[MarketEvent]:
    """A ``market_trades`` message -> one Trade per trade (snapshot trades included: they are
    real trades, and storage is keyed by trade id)."""
    try:
        msg = _trades_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ParseError(f"coinbase: cannot parse market_trades message: {exc}") from exc
    event_time_ms = timestamp_ms(msg.timestamp)
    out: list[MarketEvent] = []
    for event in msg.events:
        for t in event.trades:
            if t.product_id != symbol:
                raise ParseError(f"coinbase: trade of {t.product_id} keyed as {symbol}")
            out.append(
                Trade(
                    exchange=EXCHANGE,
                    symbol=symbol,
                    trade_id=t.trade_id,
                    price=_decimal(t.price, "price"),
                    size=_decimal(t.size, "size"),
                    taker_side=taker_side(t.side),
                    trade_time_ms=timestamp_ms(t.time),
                    event_time_ms=event_time_ms,
                    receive_time_ns=receive_time_ns,
                    sequence=msg.sequence_num,
                )
            )
    return out


def parse(env: RawEnvelope) -> list[MarketEvent]:
    """One envelope -> its events (the registry entry for ``coinbase``)."""
    if env.channel == "depth":
        return parse_depth(env.payload, env.symbol, env.receive_time_ns)
    if env.channel == "trade":
        return parse_trades(env.payload, env.symbol, env.receive_time_ns)
    raise ParseError(f"coinbase: unknown channel {env.channel!r}")
