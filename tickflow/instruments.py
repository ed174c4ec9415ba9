"""Instrument names shared by the connectors and the job."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from tickflow.config import ExchangesConfig


def nbbo_group(instrument: str, equivalents: Mapping[str, str]) -> str:
    """The instrument whose NBBO this one joins: ``BTC-USDT`` -> ``BTC-USD`` when the config
    declares USDT equivalent to USD; itself otherwise (USD and USDT differ by default)."""
    base, sep, quote = instrument.rpartition("-")
    if not sep or quote not in equivalents:
        return instrument
    return f"{base}-{equivalents[quote]}"


class UnknownInstrument(ValueError):
    """A name that is neither a canonical instrument nor a symbol of the exchange."""


def exchange_symbols(exchanges: ExchangesConfig, exchange: str) -> Mapping[str, str]:
    """The configured ``exchange symbol -> canonical instrument`` map of one exchange;
    UnknownInstrument for an exchange that is not configured."""
    names = [f.name for f in dataclasses.fields(exchanges)]
    if exchange not in names:
        raise UnknownInstrument(f"unknown exchange {exchange!r}; known: {', '.join(names)}")
    symbols: Mapping[str, str] = getattr(exchanges, exchange).symbols
    return symbols


def resolve_symbol(symbols: Mapping[str, str], name: str) -> str:
    """The exchange's own symbol for what a user typed: a canonical instrument (``BTC-USD``),
    or the exchange's symbol itself (``BTC/USD`` on Kraken, ``BTCUSDT`` on Binance), in any
    letter case. ``symbols`` maps exchange symbol -> canonical instrument, as configured."""
    if name in symbols:
        return name
    wanted = name.upper()
    for symbol, canonical in symbols.items():
        if wanted in (symbol.upper(), canonical.upper()):
            return symbol
    known = ", ".join(f"{c} ({s})" if c != s else c for s, c in symbols.items())
    raise UnknownInstrument(f"{name!r} is not configured; known: {known}")
