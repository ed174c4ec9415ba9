"""Kraken spot (WebSocket v2 ``book`` channel) book rules and CRC32 checksum. Pure, no I/O.

The documented procedure (https://docs.kraken.com/api/docs/guides/spot-ws-book-v2):
1. subscribing sends a snapshot of the top ``depth`` levels per side, then updates;
2. an update holds absolute quantities (``qty`` 0 removes the level), possibly several for the
   same price, to be applied in order; after applying all levels of a message, truncate each
   side to the subscribed depth: Kraken sends no delete for levels pushed out of range;
3. every message carries a CRC32 of the top 10 levels of the resulting book; a mismatch means
   the local book is wrong: resubscribe (a fresh snapshot).
The book channel has no sequence numbers, so the checksum is the only continuity check.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from typing import Any

from jobs.book.engine import Outcome, SyncedBook
from jobs.book.levels import BookStatus
from jobs.parse.events import BookDelta, BookSnapshot, Level

DEPTHS = (10, 25, 100, 500, 1000)  # the depths a book subscription may ask for
CHECKSUM_LEVELS = 10  # the checksum covers the top 10 per side, whatever the depth
ZERO = Decimal(0)


def checksum_text(value: Decimal) -> str:
    """A price or quantity as the checksum reads it: its exact text, '.' removed, leading
    zeros stripped. ``format(.., "f")`` keeps trailing zeros and never uses an exponent
    (``str(Decimal("0.00000001"))`` would be ``1E-8``). Decimal("0.10000000") -> "10000000"."""
    return format(value, "f").replace(".", "").lstrip("0")


def level_text(price: Decimal, qty: Decimal) -> str:
    """One level's part of the checksum input: price text then quantity text."""
    return checksum_text(price) + checksum_text(qty)


def book_checksum(bids: Iterable[Level], asks: Iterable[Level]) -> int:
    """Kraken's CRC32 (unsigned) of a book: bids best (highest) first, asks best (lowest) first.

    Top 10 asks low -> high, then top 10 bids high -> low, each level as price text followed
    by quantity text (``level_text``), concatenated. Example from the guide: asks
    45285.2/0.00100000, 45286.4/1.54571953, ... give "452852100000" "452864154571953" ...
    and, with the bids, 3310070434.
    """
    parts = [level_text(p, q) for p, q in islice(asks, CHECKSUM_LEVELS)]
    parts += [level_text(p, q) for p, q in islice(bids, CHECKSUM_LEVELS)]
    return zlib.crc32("".join(parts).encode("ascii"))


def subscription_depth(levels_per_side: int) -> int:
    """The smallest subscribable depth that a snapshot with this many levels per side fits."""
    for depth in DEPTHS:
        if levels_per_side <= depth:
            return depth
    return DEPTHS[-1]


@dataclass
class KrakenBook(SyncedBook):
    """One Kraken symbol's book, kept to the subscribed depth and verified by checksum.

    ``depth``: the subscription's depth. The job builds engines without it, so by default it is
    inferred from each snapshot (the smallest documented depth that holds the snapshot's deeper
    side): exact for any book with more levels than the next-lower depth, and if a very thin
    book makes it too small, the top 10 diverge, the checksum fails and the resync's snapshot
    infers again. Pass the configured depth to pin it.
    """

    depth: int | None = None
    # the depth truncation uses: ``depth``, or the one inferred from the last snapshot
    view_depth: int = field(default=DEPTHS[-1], init=False)
    # price -> level_text, per side: most updates change one or two of the top 20 levels, and
    # formatting 20 Decimals per message would cost more than all the rest. Every level the
    # engine sets or removes is dropped from it; a miss is computed from the book.
    _texts: tuple[dict[Decimal, str], dict[Decimal, str]] = field(
        default_factory=lambda: ({}, {}), init=False, repr=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth is not None:
            if self.depth not in DEPTHS:
                raise ValueError(f"kraken book depth must be one of {DEPTHS}, got {self.depth}")
            self.view_depth = self.depth

    def on_snapshot(self, snap: BookSnapshot) -> Outcome:
        was_live = self.status is BookStatus.LIVE
        if self.depth is None:
            self.view_depth = subscription_depth(max(len(snap.bids), len(snap.asks)))
        self._texts[0].clear()
        self._texts[1].clear()
        self.book.load(snap.bids, snap.asks)
        self._truncate()
        self.last_id = snap.last_id
        self.rebuilt(snap)
        self.buffer = []
        mismatch = self._verify(snap.checksum)
        if mismatch is not None:
            self.lose_sync(f"checksum mismatch on snapshot: {mismatch}")
            return Outcome.CHECKSUM_MISMATCH
        self.status, self.reason = BookStatus.LIVE, ""
        return Outcome.APPLIED if was_live else Outcome.RESYNCED

    def on_delta(self, delta: BookDelta) -> Outcome:
        if self.status is not BookStatus.LIVE:
            # nothing to bridge: the snapshot the resubscribe brings is complete
            return Outcome.IGNORED
        set_level = self.book.set_level
        bid_texts, ask_texts = self._texts
        for price, size in delta.bids:  # in order: one message may change a level twice
            set_level("b", price, size)
            bid_texts.pop(price, None)
        for price, size in delta.asks:
            set_level("a", price, size)
            ask_texts.pop(price, None)
        self._truncate()
        self.applied += 1
        mismatch = self._verify(delta.checksum)
        if mismatch is not None:
            self.lose_sync(f"checksum mismatch: {mismatch}")
            return Outcome.CHECKSUM_MISMATCH
        return Outcome.APPLIED

    def _truncate(self) -> None:
        """Forget levels beyond the subscribed depth (recorded as changes, so state follows)."""
        book, depth = self.book, self.view_depth
        while len(book.bids) > depth:
            price = book.bids.peekitem(-1)[0]
            book.set_level("b", price, ZERO)
            self._texts[0].pop(price, None)
        while len(book.asks) > depth:
            price = book.asks.peekitem(-1)[0]
            book.set_level("a", price, ZERO)
            self._texts[1].pop(price, None)

    def _verify(self, expected: int | None) -> str | None:
        """None when the book matches the exchange's checksum (or there is none to check)."""
        if expected is None:
            return None
        actual = self.checksum()
        if actual == expected:
            return None
        return f"exchange {expected}, local {actual}"

    def checksum(self) -> int:
        """``book_checksum`` of the local book, from cached level texts."""
        bid_texts, ask_texts = self._texts
        parts = []
        for levels, texts in ((self.book.asks, ask_texts), (self.book.bids, bid_texts)):
            for price in levels.keys()[:CHECKSUM_LEVELS]:  # best first; a cheap list slice
                text = texts.get(price)
                if text is None:
                    text = texts[price] = level_text(price, levels[price])
                parts.append(text)
        return zlib.crc32("".join(parts).encode("ascii"))

    def lose_sync(self, reason: str) -> None:
        super().lose_sync(reason)
        self._texts[0].clear()
        self._texts[1].clear()

    def state(self) -> tuple[Any, ...]:
        return (*super().state(), self.view_depth)

    def restore_state(self, state: tuple[Any, ...]) -> None:
        super().restore_state(state[:-1])
        self.view_depth = state[-1]
