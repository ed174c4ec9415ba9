"""An exact L2 order book: two sorted sides of Decimal price -> Decimal size. Pure, no I/O."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from sortedcontainers import SortedDict

BookSide = Literal["b", "a"]  # bids, asks
LevelChange = tuple[BookSide, Decimal, Decimal | None]  # size None: level removed


class BookStatus(StrEnum):
    LIVE = "LIVE"  # in sync with the exchange after every applied message
    RESYNCING = "RESYNCING"  # known wrong or not yet built: waiting for a snapshot
    STALE = "STALE"  # in sync as far as we know, but no update for too long


class OrderBook:
    """Price levels with O(log n) updates and ordered top-N reads.

    Every change is also appended to ``changes`` so a caller can persist the book
    incrementally (write-through keyed state) instead of re-serialising it whole.
    ``max_levels`` bounds memory: the deepest levels beyond it are forgotten (they can
    only reach the top of the book after everything above them is gone).
    """

    __slots__ = ("asks", "bids", "changes", "max_levels")

    def __init__(self, max_levels: int) -> None:
        self.bids: SortedDict = SortedDict(operator.neg)  # best (highest) first
        self.asks: SortedDict = SortedDict()  # best (lowest) first
        self.max_levels = max_levels
        self.changes: list[LevelChange] = []

    def _side(self, side: BookSide) -> SortedDict:
        return self.bids if side == "b" else self.asks

    def set_level(self, side: BookSide, price: Decimal, size: Decimal) -> None:
        """Absolute size at a price; size 0 removes the level (absent levels: no-op)."""
        levels = self._side(side)
        if size:
            levels[price] = size
            self.changes.append((side, price, size))
            if len(levels) > self.max_levels:
                worst, _ = levels.popitem(-1)
                self.changes.append((side, worst, None))
        elif price in levels:
            del levels[price]
            self.changes.append((side, price, None))

    def clear(self) -> None:
        sides: tuple[BookSide, BookSide] = ("b", "a")
        for side in sides:
            levels = self._side(side)
            self.changes.extend((side, price, None) for price in levels)
            levels.clear()

    def load(
        self, bids: Iterable[tuple[Decimal, Decimal]], asks: Iterable[tuple[Decimal, Decimal]]
    ) -> None:
        """Replace the whole book (a snapshot)."""
        self.clear()
        for price, size in bids:
            self.set_level("b", price, size)
        for price, size in asks:
            self.set_level("a", price, size)

    def restore_level(self, side: BookSide, price: Decimal, size: Decimal) -> None:
        """Rebuild from persisted state: no change is recorded."""
        self._side(side)[price] = size

    def take_changes(self) -> list[LevelChange]:
        changes, self.changes = self.changes, []
        return changes

    def top(self, n: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Best ``n`` levels per side: (bids high->low, asks low->high)."""
        # a slice of the sorted keys, then plain dict lookups: ~25% faster than islice over
        # the items view (called for every book update)
        bids, asks = self.bids, self.asks
        return (
            [(price, bids[price]) for price in bids.keys()[:n]],
            [(price, asks[price]) for price in asks.keys()[:n]],
        )

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        return self.bids.peekitem(0) if self.bids else None

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        return self.asks.peekitem(0) if self.asks else None

    def mid(self) -> Decimal | None:
        bid, ask = self.best_bid(), self.best_ask()
        return None if bid is None or ask is None else (bid[0] + ask[0]) / 2

    def depth_within_bps(self, bps: Decimal) -> tuple[Decimal, Decimal]:
        """Total bid and ask size priced within ``bps`` basis points of the mid.

        Walks only the levels inside the band: O(log n + levels in band).
        """
        mid = self.mid()
        if mid is None:
            return Decimal(0), Decimal(0)
        band = mid * bps / Decimal(10_000)
        bid_floor, ask_cap = mid - band, mid + band
        # levels inside the band are a prefix of each side (best first): find its end by
        # bisection, then add the sizes best first (the same sum, in the same order)
        inside_bids = self.bids.bisect_key_right(-bid_floor)  # bids are keyed by -price
        inside_asks = self.asks.bisect_right(ask_cap)
        bids = sum(map(self.bids.__getitem__, self.bids.keys()[:inside_bids]), Decimal(0))
        asks = sum(map(self.asks.__getitem__, self.asks.keys()[:inside_asks]), Decimal(0))
        return bids, asks

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid[0] >= ask[0]

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)
