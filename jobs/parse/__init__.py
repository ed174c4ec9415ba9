"""Per-exchange pure parsers: a raw envelope -> normalised events (``jobs.parse.events``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from jobs.parse import binance, coinbase, kraken
from jobs.parse.events import MarketEvent, ParseError, SyncLost
from schemas.codec import RawEnvelope

Parser = Callable[[RawEnvelope], list[MarketEvent]]

# exchange name -> parser of its envelopes
PARSERS: dict[str, Parser] = {
    binance.EXCHANGE: binance.parse,
    coinbase.EXCHANGE: coinbase.parse,
    kraken.EXCHANGE: kraken.parse,
}


_sync_lost_decoder = msgspec.json.Decoder(dict[str, Any])


def parse_sync_lost(env: RawEnvelope) -> SyncLost:
    """A ``sync_lost`` envelope (``schemas.codec.sync_lost_payload``) -> SyncLost; the details
    beside the reason are kept for people: "sequence_num gap (expected 41, got 43)".

    Example payload: {"reason": "sequence_num gap", "expected": 41, "got": 43}
    """
    try:
        marker = _sync_lost_decoder.decode(env.payload)
    except msgspec.DecodeError as exc:
        raise ParseError(f"{env.exchange}: cannot parse sync_lost marker: {exc}") from exc
    reason = marker.pop("reason", None)
    if not isinstance(reason, str):
        raise ParseError(f"{env.exchange}: sync_lost marker without a reason: {marker!r}")
    if marker:
        reason += " (" + ", ".join(f"{k} {v}" for k, v in marker.items()) + ")"
    return SyncLost(env.exchange, env.symbol, reason, env.receive_time_ns)


def parse_envelope(env: RawEnvelope) -> list[MarketEvent]:
    if env.channel == "sync_lost":
        return [parse_sync_lost(env)]
    parser = PARSERS.get(env.exchange)
    if parser is None:
        raise ParseError(f"no parser for exchange {env.exchange!r}")
    events = parser(env)
    for event in events:
        if event.symbol != env.symbol:
            raise ParseError(
                f"{env.exchange} frame for {event.symbol} arrived keyed as {env.symbol}"
            )
    return events
