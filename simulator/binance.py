"""Binance spot market model and frame builders. Pure, no I/O, no wall clock.

``BinanceMarket`` evolves one symbol's true book from a seed: the sequence of events (ids,
prices, quantities) depends only on the seed and the configuration, never on timing. Event
times come from the caller's ``now_ms`` (made strictly increasing per symbol, see ``step``), so
a test with a fake clock gets byte-identical frames on every run.

Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from simulator.book import InstrumentSpec, Side, TradeTruth, TrueBook, instrument_spec

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
    """One trade: a taker consumed (part of) the best opposite level."""

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
    """The true book and trade tape of one Binance symbol, driven by a seeded RNG.

    Each ``step`` emits one depth event with 1..``max_changes`` level changes (add, modify,
    remove), preceded with probability ``trade_probability`` by a trade whose level change is
    the first change of that depth event. Update ids increase by one per level change, as on
    Binance; trade and update ids start at seed-derived large numbers. ``truth`` records, per
    trade, the book state it executed against.
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
        start = self.spec.start_price_units // self.spec.tick_units
        self._fair = start + self._rng.randint(-start // 100, start // 100)
        self._min_levels = max(2, depth_levels // 2)
        self._seed_book()

    # --- public API -----------------------------------------------------------------------

    def step(self, now_ms: int) -> list[MarketEvent]:
        """Advance the market by one step: [Trade?, DepthDiff].

        Event times strictly increase per symbol, so "the book as of a trade's time" is
        unambiguous: the depth event gets max(now_ms, last + 1), or with a trade (whose effect
        it contains) max(now_ms, last + 2) and the trade one millisecond less. No time exceeds
        ``now_ms`` while steps come at most one per 2 ms (the server's pacer keeps to that below
        500 steps/s per symbol): no frame is stamped later than it is sent.
        """
        rng = self._rng
        self.steps += 1
        trade_ms = max(now_ms - 1, self.last_time_ms + 1)
        depth_ms = max(now_ms, self.last_time_ms + 1)
        if rng.random() < 0.3:
            self._fair = max(self.depth_levels * 4, self._fair + rng.choice((-2, -1, 1, 2)))
        budget = rng.randint(1, self.max_changes)
        changes: dict[tuple[Side, int], int] = {}  # insertion-ordered; last write per level
        events: list[MarketEvent] = []
        if rng.random() < self.trade_probability:
            trade = self._take(trade_ms, changes)
            if trade is not None:
                events.append(trade)
                depth_ms = trade_ms + 1
        for _ in range(budget * 4):  # some attempts do nothing (e.g. an add deeper than the book)
            if len(changes) >= budget:
                break
            self._maker_change(changes, budget - len(changes))
        if not changes:
            self._modify(rng.choice((Side.BID, Side.ASK)), changes)
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

    # --- model ----------------------------------------------------------------------------

    def _lots(self) -> int:
        typical = self.spec.typical_level_lots
        return max(1, min(int(self._rng.lognormvariate(0.0, 1.0) * typical), 20 * typical))

    def _seed_book(self) -> None:
        tick = self._fair
        for _ in range(self.depth_levels):
            self.book.set(Side.BID, tick, self._lots())
            tick -= self._rng.randint(1, 2)
        tick = self._fair + 1
        for _ in range(self.depth_levels):
            self.book.set(Side.ASK, tick, self._lots())
            tick += self._rng.randint(1, 2)

    def _apply(
        self, changes: dict[tuple[Side, int], int], side: Side, ticks: int, lots: int
    ) -> None:
        self.book.set(side, ticks, lots)
        changes[(side, ticks)] = lots

    def _take(self, now_ms: int, changes: dict[tuple[Side, int], int]) -> Trade | None:
        """A taker order consumes (part of) the best level on the other side."""
        rng = self._rng
        bid, ask = self.book.best_bid(), self.book.best_ask()
        mid2 = (bid or 0) + (ask or 0)
        # takers lean towards the fair price, which is what drags the book along the walk
        p_buy = 0.5 + (0.3 if 2 * self._fair > mid2 else -0.3 if 2 * self._fair < mid2 else 0.0)
        taker_buys = rng.random() < p_buy
        maker_side = Side.ASK if taker_buys else Side.BID
        ticks = self.book.best(maker_side)
        if ticks is None:
            return None
        resting = self.book.side(maker_side)[ticks]
        can_empty = len(self.book.side(maker_side)) > 1
        if can_empty and (resting == 1 or rng.random() < 0.35):
            qty = resting
        elif resting > 1:
            qty = rng.randint(1, resting - 1)
        else:
            return None
        self.truth.append(TradeTruth.before(
            self.book, self.symbol, self.next_trade_id, now_ms, self.last_time_ms,
            "buy" if taker_buys else "sell",
        ))
        self._apply(changes, maker_side, ticks, resting - qty)
        trade = Trade(self.next_trade_id, ticks, qty, now_ms, is_buyer_maker=not taker_buys)
        self.next_trade_id += 1
        self.trades.append(trade)
        return trade

    def _maker_change(self, changes: dict[tuple[Side, int], int], room: int) -> None:
        rng = self._rng
        side = rng.choice((Side.BID, Side.ASK))
        n = len(self.book.side(side))
        if n < self.depth_levels:
            weights = (0.6, 0.3, 0.1 if n > self._min_levels else 0.0)
        else:
            weights = (0.3, 0.5, 0.2)
        op = rng.choices(("add", "modify", "remove"), weights=weights)[0]
        if op == "add":
            self._add(side, changes, room)
        elif op == "modify":
            self._modify(side, changes)
        else:
            self._remove(side, changes)

    def _add(self, side: Side, changes: dict[tuple[Side, int], int], room: int) -> None:
        levels = self.book.side(side)
        offset = min(int(self._rng.expovariate(4.0 / self.depth_levels)), 2 * self.depth_levels)
        if side is Side.BID:
            ask = self.book.best_ask()
            anchor = self._fair if ask is None else min(self._fair, ask - 1)
            ticks = max(1, anchor - offset)
        else:
            bid = self.book.best_bid()
            anchor = self._fair + 1 if bid is None else max(self._fair + 1, bid + 1)
            ticks = anchor + offset
        if ticks in levels:
            self._apply(changes, side, ticks, self._new_lots(levels[ticks]))
            return
        if len(levels) < self.depth_levels:
            self._apply(changes, side, ticks, self._lots())
            return
        # a full side makes room by dropping its deepest level (two changes)
        worst = self.book.worst(side)
        assert worst is not None
        deeper = ticks < worst if side is Side.BID else ticks > worst
        if deeper or room < 2:
            return
        self._apply(changes, side, worst, 0)
        self._apply(changes, side, ticks, self._lots())

    def _new_lots(self, current: int) -> int:
        lots = self._lots()
        return lots if lots != current else lots + 1

    def _modify(self, side: Side, changes: dict[tuple[Side, int], int]) -> None:
        levels = self.book.side(side)
        if not levels:
            return
        ticks = self._rng.choice(sorted(levels))
        self._apply(changes, side, ticks, self._new_lots(levels[ticks]))

    def _remove(self, side: Side, changes: dict[tuple[Side, int], int]) -> None:
        levels = self.book.side(side)
        if len(levels) <= self._min_levels:
            return
        # levels on the wrong side of the fair price go first: the book follows the walk
        stale = [t for t in levels if (t > self._fair if side is Side.BID else t <= self._fair)]
        ticks = self._rng.choice(sorted(stale) if stale else sorted(levels))
        self._apply(changes, side, ticks, 0)

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
