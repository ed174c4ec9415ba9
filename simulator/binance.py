"""Binance spot market model and frame builders. Pure, no I/O, no wall clock.

``BinanceMarket`` evolves one symbol's true book from a seed, quoted around the one market's
fair value (``simulator.market``): the events (ids, prices, quantities) depend only on the seed,
the configuration and the event times relative to the first one (and the time of day, which
sets the market's activity). Event times come from the caller's ``now_ms`` (made strictly
increasing per symbol, see ``step``), so a test with a fake clock gets byte-identical frames
on every run.

Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulator.book import (
    UNITS_PER_ONE,
    InstrumentSpec,
    Side,
    TradeTruth,
    TrueBook,
    instrument_spec,
)
from simulator.market import BookMaker, LatentMarket, Quote, VenueQuoter, canonical_instrument

DOCS_STREAMS = "https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams"
DOCS_DEPTH = (
    "https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints"
    "#order-book"
)


@dataclass(frozen=True, slots=True)
class DepthDiff:
    """One diff-depth event of the true book, in integer ticks and lots."""

    event_time_ms: int
    first_update_id: int  # U: previous event's u + 1
    final_update_id: int  # u: U + number of level changes - 1
    bids: tuple[tuple[int, int], ...]  # (price ticks, new absolute lots); 0 removes the level
    asks: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade: a taker consumed (part of) one opposite level (a sweep: several trades)."""

    trade_id: int
    price_ticks: int
    qty_lots: int
    time_ms: int
    is_buyer_maker: bool  # True when the taker sold (hit the bid)


MarketEvent = DepthDiff | Trade


def depth_update_event(symbol: str, spec: InstrumentSpec, diff: DepthDiff) -> dict[str, Any]:
    """Diff depth event body (the ``data`` of ``<symbol>@depth@100ms``).

    Example: {"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,
              "b":[["0.0024","10"]],"a":[["0.0026","100"]]}
    Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams#diff-depth-stream
    """
    return {
        "e": "depthUpdate",
        "E": diff.event_time_ms,
        "s": symbol,
        "U": diff.first_update_id,
        "u": diff.final_update_id,
        "b": [[spec.price_text(p), spec.qty_text(q)] for p, q in diff.bids],
        "a": [[spec.price_text(p), spec.qty_text(q)] for p, q in diff.asks],
    }


def trade_event(symbol: str, spec: InstrumentSpec, trade: Trade) -> dict[str, Any]:
    """Trade event body (the ``data`` of ``<symbol>@trade``).

    Example: {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100",
              "T":1672515782136,"m":true,"M":true}
    Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams#trade-streams
    """
    return {
        "e": "trade",
        "E": trade.time_ms,
        "s": symbol,
        "t": trade.trade_id,
        "p": spec.price_text(trade.price_ticks),
        "q": spec.qty_text(trade.qty_lots),
        "T": trade.time_ms,
        "m": trade.is_buyer_maker,
        "M": True,
    }


def depth_snapshot(
    spec: InstrumentSpec,
    last_update_id: int,
    bids: list[tuple[int, int]],
    asks: list[tuple[int, int]],
) -> dict[str, Any]:
    """REST order book body (``GET /api/v3/depth``), levels best first.

    Example: {"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],
              "asks":[["4.00000200","12.00000000"]]}
    Docs: https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#order-book
    """
    return {
        "lastUpdateId": last_update_id,
        "bids": [[spec.price_text(p), spec.qty_text(q)] for p, q in bids],
        "asks": [[spec.price_text(p), spec.qty_text(q)] for p, q in asks],
    }


class BinanceMarket:
    """The true book and trade tape of one Binance symbol, quoted around the one market.

    The venue's quotes follow the shared fair value (``simulator.market``): each ``step`` may
    start with a taker order (one trade per level it takes: a sweep walks the book), then the
    book is requoted around the venue's lagging reference and makers change 1..``max_changes``
    levels; the depth event carries every level change of the step. Update ids increase by one
    per level change, as on Binance; trade and update ids start at seed-derived large numbers.
    ``truth`` records, per trade, the book state the taker met.
    """

    def __init__(
        self,
        symbol: str,
        seed: int,
        depth_levels: int,
        max_changes: int,
        trade_probability: float,
        spec: InstrumentSpec | None = None,
        id_offset: int = 0,
        *,
        venue: str = "binance",
        latent: LatentMarket | None = None,
        sweep_scale: float = 1.0,
    ) -> None:
        if depth_levels < 2 or max_changes < 1:
            raise ValueError("depth_levels must be >= 2 and max_changes >= 1")
        self.symbol = symbol
        self.spec = spec or instrument_spec(symbol)
        self.depth_levels = depth_levels
        self.max_changes = max_changes
        self.trade_probability = trade_probability
        # str seeds hash with SHA-512: stable across processes, unlike hash()
        self._rng = random.Random(f"{seed}:{symbol}")
        self.book = TrueBook()
        # id_offset lets a restarted simulator keep ids growing, as an exchange's always do
        self.last_update_id = self._rng.randrange(10**10, 9 * 10**10) + id_offset
        self.next_trade_id = self._rng.randrange(10**9, 5 * 10**9) + id_offset
        self.trades: list[Trade] = []
        self.truth: list[TradeTruth] = []
        self.steps = 0
        self.last_time_ms = 0  # event time of the last depth event (0: none yet)
        self.instrument = canonical_instrument(venue, symbol)
        self.quoter = VenueQuoter(
            latent or LatentMarket(seed),
            self.instrument,
            venue,
            self.spec.tick_units / UNITS_PER_ONE,
            self.spec.start_price_units / UNITS_PER_ONE,
            trade_probability,
            self._rng,
            sweep_scale,
        )
        self.maker = BookMaker(self.book, self._rng, depth_levels, self._lots)
        self.maker.seed(self.quoter.seed_quote())

    # --- public API -----------------------------------------------------------------------

    def step(self, now_ms: int) -> list[MarketEvent]:
        """Advance the market by one step: [Trade..., DepthDiff] (trades of one taker).

        Event times strictly increase per symbol between steps, so "the book as of a trade's
        time" is unambiguous: the depth event gets max(now_ms, last + 1), or with a taker
        (whose effect it contains) max(now_ms, last + 2) and the taker's trades, which share
        one time as on Binance, one millisecond less. No time exceeds ``now_ms`` while steps
        come at most one per 2 ms (the server's pacer keeps to that below 500 steps/s per
        symbol): no frame is stamped later than it is sent.
        """
        rng = self._rng
        self.steps += 1
        trade_ms = max(now_ms - 1, self.last_time_ms + 1)
        depth_ms = max(now_ms, self.last_time_ms + 1)
        quote = self.quoter.quote(trade_ms)
        changes: dict[tuple[Side, int], int] = {}  # insertion-ordered; last write per level

        def apply(side: Side, ticks: int, lots: int) -> None:
            self.book.set(side, ticks, lots)
            changes[(side, ticks)] = lots

        events: list[MarketEvent] = []
        if rng.random() < quote.trade_probability:
            trades = self._take(trade_ms, quote, apply)
            if trades:
                events.extend(trades)
                depth_ms = trade_ms + 1
        self.maker.requote(quote, apply)
        self.maker.churn(quote, apply, max(0, rng.randint(1, self.max_changes) - len(changes)))
        if not changes:
            self.maker.modify(rng.choice((Side.BID, Side.ASK)), apply)
        events.append(self._diff(depth_ms, changes))
        self.last_time_ms = depth_ms
        return events

    def snapshot(self, limit: int | None = None) -> dict[str, Any]:
        """The REST depth body for the current state (top ``limit`` levels per side)."""
        return depth_snapshot(
            self.spec,
            self.last_update_id,
            self.book.levels(Side.BID, limit),
            self.book.levels(Side.ASK, limit),
        )

    def fair_value(self, time_ms: int) -> float:
        """The one market's fair value of this instrument (in its quote currency)."""
        return self.quoter.fair(time_ms)

    # --- model ----------------------------------------------------------------------------

    def _lots(self, level: int = 0) -> int:
        return self.quoter.level_lots(self.spec.typical_level_lots, level)

    def _take(
        self, now_ms: int, quote: Quote, apply: Callable[[Side, int, int], None]
    ) -> list[Trade]:
        """A taker order: one trade per level it takes, each recorded with the book it met."""
        take = self.maker.plan_take(quote)
        if take is None:
            return []
        taker_side = "buy" if take.taker_buys else "sell"
        trades = []
        for ticks, lots in take.fills:
            self.truth.append(TradeTruth.before(
                self.book, self.symbol, self.next_trade_id, now_ms, self.last_time_ms,
                taker_side,
            ))
            trades.append(
                Trade(self.next_trade_id, ticks, lots, now_ms, is_buyer_maker=not take.taker_buys)
            )
            self.next_trade_id += 1
        self.maker.execute(take, apply)
        self.trades.extend(trades)
        self.quoter.traded()
        return trades

    def _diff(self, now_ms: int, changes: dict[tuple[Side, int], int]) -> DepthDiff:
        first = self.last_update_id + 1
        self.last_update_id += len(changes)
        return DepthDiff(
            event_time_ms=now_ms,
            first_update_id=first,
            final_update_id=self.last_update_id,
            bids=tuple((t, q) for (s, t), q in changes.items() if s is Side.BID),
            asks=tuple((t, q) for (s, t), q in changes.items() if s is Side.ASK),
        )
