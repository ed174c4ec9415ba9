"""The simulated venues as one market, checked offline: no sockets, no clock.

``run_offline`` steps the configured venues' markets in-process on a simulated clock, each
symbol at its venue's rate (``SimulatorConfig.rate``), samples every venue's true top of book
per canonical instrument every ``sample_ms`` together with the shared fair value, collects
the trades, and measures the result with ``tickflow.market_quality``: how often the NBBO across
venues is crossed or locked, the cross-venue mid differences, the fair value vs the NBBO mid,
the trade-through rate. ``python -m simulator.market_check --minutes 10`` prints the JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from simulator.binance import Trade as BinanceTrade
from simulator.binance_venue import BinanceVenue
from simulator.book import Side, TrueBook
from simulator.coinbase_venue import CoinbaseVenue
from simulator.kraken import Trade as KrakenTrade
from simulator.kraken_venue import KrakenVenue
from simulator.market import LatentMarket, fair_text
from tickflow.config import SimulatorConfig, load_settings
from tickflow.market_quality import Sample, Top, TradePrint, quality, summary

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed start, so runs are reproducible


@dataclass
class _Market:
    """What the check reads from one venue's market of one symbol."""

    venue: str
    symbol: str
    instrument: str
    book: TrueBook
    price: Any  # ticks -> price text
    fair: Any  # time_ms -> float


def _markets(venues: list[Any]) -> list[_Market]:
    out = []
    for venue in venues:
        for symbol, m in venue.markets.items():
            if isinstance(venue, KrakenVenue):
                price = m.pair.price_text
            elif isinstance(venue, CoinbaseVenue):
                price = m.price
            else:
                price = m.spec.price_text
            out.append(_Market(venue.name, symbol, m.instrument, m.book, price, m.fair_value))
    return out


def build_venues(config: SimulatorConfig, latent: LatentMarket) -> list[Any]:
    """The three venues as ``SimulatorServer`` builds them, sharing ``latent``."""
    return [
        BinanceVenue(
            config.symbols, config.seed, config.depth_levels, config.max_changes_per_event,
            config.trade_probability, 6000, latent=latent, sweep_scale=config.sweep_scale,
        ),
        CoinbaseVenue(
            config.coinbase_products, config.seed, config.coinbase_depth_levels,
            config.max_changes_per_event, config.trade_probability, 0, latent=latent,
            sweep_scale=config.sweep_scale, clock_ms=lambda: 0,
        ),
        KrakenVenue(
            config.kraken_symbols, config.seed, config.depth_levels,
            config.max_changes_per_event, config.trade_probability, latent=latent,
            sweep_scale=config.sweep_scale,
        ),
    ]


def _top(market: _Market) -> Top:
    bid, ask = market.book.best(Side.BID), market.book.best(Side.ASK)
    return Top(
        market.venue,
        None if bid is None else Decimal(market.price(bid)),
        None if ask is None else Decimal(market.price(ask)),
    )


def run_offline(
    config: SimulatorConfig,
    seconds: float,
    sample_ms: int = 100,
    start_ms: int = START_MS,
    only_shared: bool = True,
) -> dict[str, Any]:
    """Step every venue for ``seconds`` of simulated time; the measures per instrument, their
    summary and what was run. ``only_shared``: sample only instruments on several venues."""
    latent = LatentMarket(config.seed)
    venues = build_venues(config, latent)
    by_name = {v.name: v for v in venues}
    markets = _markets(venues)
    venues_of: dict[str, set[str]] = {}
    for m in markets:
        venues_of.setdefault(m.instrument, set()).add(m.venue)
    sampled = [
        m for m in markets if not only_shared or len(venues_of[m.instrument]) > 1
    ]
    instruments = sorted({m.instrument for m in sampled})
    # each symbol's next step, spread over its interval as the server's pacers are
    queue: list[tuple[float, int]] = []
    for i, m in enumerate(markets):
        interval = 1000.0 / config.rate(m.venue)
        queue.append((start_ms + interval * i / len(markets), i))
    heapq.heapify(queue)
    end_ms = start_ms + seconds * 1000
    samples: list[Sample] = []
    trades: list[TradePrint] = []
    seen: dict[tuple[str, str], int] = {}  # trades of each market already collected
    steps = 0
    next_sample = start_ms + sample_ms
    while queue:
        due, i = queue[0]
        while next_sample <= min(due, end_ms):
            samples.extend(_sample(sampled, instruments, latent, next_sample))
            next_sample += sample_ms
        if due >= end_ms:
            break
        heapq.heapreplace(queue, (due + 1000.0 / config.rate(markets[i].venue), i))
        m = markets[i]
        venue = by_name[m.venue]
        venue.step(m.symbol, int(due))
        steps += 1
        if m in sampled:
            trades.extend(_new_trades(venue, m, seen))
    per_instrument = quality(samples, trades)
    return {
        "seed": config.seed,
        "simulated_s": seconds,
        "sample_ms": sample_ms,
        "steps": steps,
        "rates_per_symbol": {v.name: config.rate(v.name) for v in venues},
        "summary": summary(per_instrument),
        "instruments": per_instrument,
    }


def _new_trades(venue: Any, m: _Market, seen: dict[tuple[str, str], int]) -> list[TradePrint]:
    market = venue.markets[m.symbol]
    key = (m.venue, m.symbol)
    new = market.trades[seen.get(key, 0):]
    seen[key] = len(market.trades)
    out = []
    for t in new:
        if isinstance(t, KrakenTrade):
            out.append(TradePrint(t.time_ms, m.instrument, m.venue,
                                  Decimal(m.price(t.price)), t.side))
        elif isinstance(t, BinanceTrade):
            side = "sell" if t.is_buyer_maker else "buy"
            out.append(TradePrint(t.time_ms, m.instrument, m.venue,
                                  Decimal(m.price(t.price_ticks)), side))
    return out


def _sample(
    markets: list[_Market], instruments: list[str], latent: LatentMarket, time_ms: int
) -> list[Sample]:
    tops: dict[str, list[Top]] = {i: [] for i in instruments}
    for m in markets:
        tops[m.instrument].append(_top(m))
    return [
        Sample(time_ms, i, tuple(tops[i]), fair=Decimal(fair_text(latent.price(i, time_ms))))
        for i in instruments
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.market_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes")
    parser.add_argument("--sample-ms", type=int, default=100)
    parser.add_argument(
        "--start-hour", type=float, default=0.0,
        help="UTC hour of day the run starts at (activity peaks at 15:00, lowest at 03:00)",
    )
    args = parser.parse_args(argv)
    config = load_settings().simulator
    start_ms = START_MS + int(args.start_hour * 3_600_000)
    result = run_offline(config, args.minutes * 60, args.sample_ms, start_ms)
    result["start_ms"] = start_ms
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
