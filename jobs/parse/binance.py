"""Binance spot market-data frames -> normalised events. Pure functions, no I/O.

Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
and https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import msgspec

from jobs.parse.events import BookDelta, BookSnapshot, Level, MarketEvent, ParseError, Trade
from schemas.codec import RawEnvelope

EXCHANGE = "binance"


class DepthUpdate(msgspec.Struct, tag_field="e", tag="depthUpdate", frozen=True):
    """Diff depth event (``<symbol>@depth`` / ``<symbol>@depth@100ms``).

    Example: {"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,
              "b":[["0.0024","10"]],"a":[["0.0026","100"]]}
    """

    E: int  # event time, ms
    s: str  # symbol
    U: int  # first update id in event
    u: int  # final update id in event
    b: list[tuple[str, str]]  # bids to update: [price, absolute qty]; qty "0" removes
    a: list[tuple[str, str]]  # asks to update


class TradeEvent(msgspec.Struct, tag_field="e", tag="trade", frozen=True):
    """Trade event (``<symbol>@trade``).

    Example: {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100",
              "T":1672515782136,"m":true,"M":true}
    """

    E: int  # event time, ms
    s: str  # symbol
    t: int  # trade id
    p: str  # price
    q: str  # quantity
    T: int  # trade time, ms
    m: bool  # buyer is the market maker (so the taker sold)


class CombinedFrame(msgspec.Struct, frozen=True):
    """Combined-stream wrapper: {"stream": "bnbbtc@depth@100ms", "data": {...}}."""

    stream: str
    data: DepthUpdate | TradeEvent


class DepthSnapshot(msgspec.Struct, frozen=True):
    """REST ``GET /api/v3/depth`` response.

    Example: {"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],
              "asks":[["4.00000200","12.00000000"]]}
    """

    lastUpdateId: int  # last update id included in this snapshot
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


_combined_decoder = msgspec.json.Decoder(CombinedFrame)
_event_decoder = msgspec.json.Decoder(DepthUpdate | TradeEvent)
_snapshot_decoder = msgspec.json.Decoder(DepthSnapshot)


def _levels(raw: list[tuple[str, str]]) -> tuple[Level, ...]:
    try:
        return tuple((Decimal(p), Decimal(q)) for p, q in raw)
    except InvalidOperation as exc:
        raise ParseError(f"binance: bad decimal in levels {raw[:3]!r}") from exc


def parse_frame(payload: bytes, receive_time_ns: int) -> BookDelta | Trade:
    """A WebSocket frame (combined-stream wrapped or raw) -> one event."""
    try:
        # the connector always uses combined streams; raw /ws/<stream> frames carry no wrapper
        if b'"stream"' in payload[:16]:
            data = _combined_decoder.decode(payload).data
        else:
            data = _event_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ParseError(f"binance: cannot parse frame: {exc}") from exc
    if isinstance(data, DepthUpdate):
        if data.u < data.U:
            raise ParseError(f"binance: depth event with U={data.U} > u={data.u}")
        return BookDelta(
            exchange=EXCHANGE,
            symbol=data.s,
            first_id=data.U,
            last_id=data.u,
            event_time_ms=data.E,
            receive_time_ns=receive_time_ns,
            bids=_levels(data.b),
            asks=_levels(data.a),
        )
    try:
        price, size = Decimal(data.p), Decimal(data.q)
    except InvalidOperation as exc:
        raise ParseError(f"binance: bad decimal in trade {data.t}") from exc
    return Trade(
        exchange=EXCHANGE,
        symbol=data.s,
        trade_id=str(data.t),
        price=price,
        size=size,
        # buyer is maker -> the seller crossed the spread
        taker_side="sell" if data.m else "buy",
        trade_time_ms=data.T,
        event_time_ms=data.E,
        receive_time_ns=receive_time_ns,
    )


def parse_snapshot(payload: bytes, symbol: str, receive_time_ns: int) -> BookSnapshot:
    """A REST depth snapshot body -> BookSnapshot (the body does not name its symbol)."""
    try:
        snap = _snapshot_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ParseError(f"binance: cannot parse depth snapshot: {exc}") from exc
    return BookSnapshot(
        exchange=EXCHANGE,
        symbol=symbol,
        last_id=snap.lastUpdateId,
        receive_time_ns=receive_time_ns,
        bids=_levels(snap.bids),
        asks=_levels(snap.asks),
    )


def parse(env: RawEnvelope) -> list[MarketEvent]:
    """One envelope -> its events (the registry entry for ``binance``)."""
    if env.channel == "snapshot":
        return [parse_snapshot(env.payload, env.symbol, env.receive_time_ns)]
    if env.channel in ("depth", "trade"):
        return [parse_frame(env.payload, env.receive_time_ns)]
    raise ParseError(f"binance: unknown channel {env.channel!r}")
