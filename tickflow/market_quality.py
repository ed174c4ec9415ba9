"""How much the books of several venues look like one market: measures over samples of each
venue's top of book per instrument, pure (no I/O).

Used by ``bench/market.py`` (samples of the live demo's books and NBBOs read from Redis) and by
the offline check of the simulator (``simulator.market_check``). A sample holds until the next
one of its instrument, so fractions are of time, not of samples.

Per instrument (``quality``):
- ``crossed_fraction`` / ``locked_fraction``: of the time the NBBO had both sides, the share
  with best bid > best ask (crossed) or == (locked). The NBBO is the published one when the
  sample carries it, else the best of the venues' tops;
- ``longest_crossed_ms``: the longest spell the NBBO stayed crossed (first crossed sample to the
  first sample after it that is not);
- ``mid_diff_bps``: distribution of |mid(a) - mid(b)| / mid in bps over every pair of venues
  quoting both sides, per sample;
- ``fair_vs_mid_bps``: mean (and distribution) of |NBBO mid - fair value| / fair value in bps,
  where the sample has a fair value (the simulator's);
- ``trade_through_rate``: of the trades given, the share at a price worse than another venue's
  touch at the time (a buy above another venue's best ask, a sell below its best bid).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

BPS = 10_000


@dataclass(frozen=True, slots=True)
class Top:
    """One venue's best bid and ask (None: that side is empty or the book is not live)."""

    venue: str
    bid: Decimal | None
    ask: Decimal | None

    @property
    def mid(self) -> Decimal | None:
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class Sample:
    """The tops of every venue of one instrument at one time."""

    time_ms: int
    instrument: str
    tops: tuple[Top, ...]
    nbbo_bid: Decimal | None = None  # as published; both None: computed from ``tops``
    nbbo_ask: Decimal | None = None
    fair: Decimal | None = None  # the simulator's fair value, if known


@dataclass(frozen=True, slots=True)
class TradePrint:
    """One trade, to tell whether it traded through another venue's touch."""

    time_ms: int
    instrument: str
    venue: str
    price: Decimal
    taker_side: str  # "buy" | "sell"


def nbbo(sample: Sample) -> tuple[Decimal | None, Decimal | None]:
    """The sample's NBBO: the published one, or the best bid and ask over its venues."""
    if sample.nbbo_bid is not None or sample.nbbo_ask is not None:
        return sample.nbbo_bid, sample.nbbo_ask
    bids = [t.bid for t in sample.tops if t.bid is not None]
    asks = [t.ask for t in sample.tops if t.ask is not None]
    return (max(bids) if bids else None), (min(asks) if asks else None)


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max (nearest-rank quantiles); None without values."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 4),
        "p50": round(rank(0.50), 4),
        "p90": round(rank(0.90), 4),
        "p99": round(rank(0.99), 4),
        "max": round(ordered[-1], 4),
    }


def _weights(times: Sequence[int]) -> list[int]:
    """How long each sample holds: until the next one; the last one the median interval."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    last = sorted(gaps)[len(gaps) // 2] if gaps else 1
    return [*gaps, last]


def _instrument_quality(
    samples: Sequence[Sample], trades: Sequence[TradePrint]
) -> dict[str, Any]:
    samples = sorted(samples, key=lambda s: s.time_ms)
    weights = _weights([s.time_ms for s in samples])
    two_sided = crossed = locked = 0
    longest = 0
    spell_start: int | None = None
    mid_diffs: list[float] = []
    fair_diffs: list[float] = []
    venues: set[str] = set()
    for sample, weight in zip(samples, weights, strict=True):
        bid, ask = nbbo(sample)
        venues.update(t.venue for t in sample.tops)
        is_crossed = bid is not None and ask is not None and bid > ask
        if bid is not None and ask is not None:
            two_sided += weight
            crossed += weight if bid > ask else 0
            locked += weight if bid == ask else 0
            mid = (bid + ask) / 2
            if sample.fair is not None and sample.fair > 0:
                fair_diffs.append(float(abs(mid - sample.fair) / sample.fair) * BPS)
        if is_crossed and spell_start is None:
            spell_start = sample.time_ms
        elif not is_crossed and spell_start is not None:
            longest = max(longest, sample.time_ms - spell_start)
            spell_start = None
        mids = [m for t in sample.tops if (m := t.mid) is not None]
        for a, b in itertools.combinations(mids, 2):
            mid_diffs.append(float(abs(a - b) / ((a + b) / 2)) * BPS)
    if spell_start is not None:  # still crossed at the end
        longest = max(longest, samples[-1].time_ms + weights[-1] - spell_start)
    out: dict[str, Any] = {
        "samples": len(samples),
        "venues": sorted(venues),
        "duration_s": round((samples[-1].time_ms + weights[-1] - samples[0].time_ms) / 1000, 3),
        "two_sided_s": round(two_sided / 1000, 3),
        "crossed_fraction": round(crossed / two_sided, 6) if two_sided else None,
        "locked_fraction": round(locked / two_sided, 6) if two_sided else None,
        "longest_crossed_ms": longest,
        "mid_diff_bps": distribution(mid_diffs),
        "fair_vs_mid_bps": distribution(fair_diffs),
    }
    out["trades"], out["trade_throughs"], out["trade_through_rate"] = _trade_throughs(
        samples, trades
    )
    return out


def _trade_throughs(
    samples: Sequence[Sample], trades: Sequence[TradePrint]
) -> tuple[int, int, float | None]:
    """(trades, trade-throughs, rate) against the other venues' tops of the latest sample at
    or before each trade."""
    times = [s.time_ms for s in samples]
    counted = throughs = 0
    for trade in trades:
        # the latest sample at or before the trade
        i = bisect.bisect_right(times, trade.time_ms) - 1
        if i < 0:
            continue
        counted += 1
        others = [t for t in samples[i].tops if t.venue != trade.venue]
        if trade.taker_side == "buy":
            asks = [t.ask for t in others if t.ask is not None]
            throughs += bool(asks) and trade.price > min(asks)
        else:
            bids = [t.bid for t in others if t.bid is not None]
            throughs += bool(bids) and trade.price < max(bids)
    return counted, throughs, (round(throughs / counted, 6) if counted else None)


def quality(
    samples: Iterable[Sample], trades: Iterable[TradePrint] = ()
) -> dict[str, dict[str, Any]]:
    """Per instrument, the measures of the module docstring."""
    by_instrument: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_instrument[sample.instrument].append(sample)
    trades_of: dict[str, list[TradePrint]] = defaultdict(list)
    for trade in trades:
        trades_of[trade.instrument].append(trade)
    return {
        instrument: _instrument_quality(group, trades_of.get(instrument, []))
        for instrument, group in sorted(by_instrument.items())
    }


def summary(per_instrument: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Averages over the instruments quoted by more than one venue (a single venue's NBBO is
    its own book: it cannot cross)."""
    multi = {k: v for k, v in per_instrument.items() if len(v["venues"]) > 1}

    def mean(key: str) -> float | None:
        values = [v[key] for v in multi.values() if v[key] is not None]
        return round(sum(values) / len(values), 6) if values else None

    fair = [v["fair_vs_mid_bps"]["mean"] for v in per_instrument.values()
            if v["fair_vs_mid_bps"]["mean"] is not None]
    return {
        "instruments": len(per_instrument),
        "multi_venue_instruments": sorted(multi),
        "mean_crossed_fraction": mean("crossed_fraction"),
        "mean_locked_fraction": mean("locked_fraction"),
        "max_crossed_fraction": max(
            (v["crossed_fraction"] for v in multi.values() if v["crossed_fraction"] is not None),
            default=None,
        ),
        "longest_crossed_ms": max((v["longest_crossed_ms"] for v in multi.values()), default=0),
        "mean_fair_vs_mid_bps": round(sum(fair) / len(fair), 4) if fair else None,
    }


def _decimal(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


def _first_price(levels_json: str | None) -> Decimal | None:
    """The best price of a book hash's ``bids``/``asks`` field (JSON ``[[price, size], ...]``)."""
    if not levels_json:
        return None
    levels = json.loads(levels_json)
    return Decimal(levels[0][0]) if levels else None


def samples_from_redis(
    time_ms: int,
    nbbos: Mapping[str, Mapping[str, str]],
    books: Sequence[Mapping[str, str]],
    fair: Mapping[str, str],
    group_of: Callable[[str], str],
    published: bool = True,
) -> list[Sample]:
    """One sample per NBBO read from Redis (``<p>:nbbo:<instrument>`` hashes by instrument),
    with the tops of the LIVE books (``<p>:book:<exchange>:<symbol>`` hashes, with the
    ``exchange`` and ``symbol`` of their key added) whose instrument joins it (``group_of``:
    ``tickflow.instruments.nbbo_group`` with the configured equivalents) and the simulator's
    fair value (instrument -> decimal text) if known. ``published``: the NBBO as the job
    published it; else it is computed from the books."""
    tops: dict[str, list[Top]] = defaultdict(list)
    for book in books:
        if book.get("status") != "LIVE":
            continue
        venue = f"{book.get('exchange', '')}:{book.get('symbol', '')}"
        tops[group_of(book.get("instrument", ""))].append(
            Top(venue, _first_price(book.get("bids")), _first_price(book.get("asks")))
        )
    out = []
    for instrument, nbbo_hash in sorted(nbbos.items()):
        bid = _decimal(nbbo_hash.get("bid_price")) if published else None
        ask = _decimal(nbbo_hash.get("ask_price")) if published else None
        out.append(Sample(
            time_ms, instrument, tuple(tops.get(instrument, ())), bid, ask,
            _decimal(fair.get(instrument)),
        ))
    return out
