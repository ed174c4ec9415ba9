"""Instrument names shared by the connectors and the job."""

from __future__ import annotations

from collections.abc import Mapping


def nbbo_group(instrument: str, equivalents: Mapping[str, str]) -> str:
    """The instrument whose NBBO this one joins: ``BTC-USDT`` -> ``BTC-USD`` when the config
    declares USDT equivalent to USD; itself otherwise (USD and USDT differ by default)."""
    base, sep, quote = instrument.rpartition("-")
    if not sep or quote not in equivalents:
        return instrument
    return f"{base}-{equivalents[quote]}"
