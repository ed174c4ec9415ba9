"""Per-exchange pure parsers: a raw envelope -> normalised events (``jobs.parse.events``)."""

from __future__ import annotations

from collections.abc import Callable

from jobs.parse import binance, coinbase, kraken
from jobs.parse.events import MarketEvent, ParseError
from schemas.codec import RawEnvelope

Parser = Callable[[RawEnvelope], list[MarketEvent]]

# exchange name -> parser of its envelopes
PARSERS: dict[str, Parser] = {
    binance.EXCHANGE: binance.parse,
    coinbase.EXCHANGE: coinbase.parse,
    kraken.EXCHANGE: kraken.parse,
}


def parse_envelope(env: RawEnvelope) -> list[MarketEvent]:
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
