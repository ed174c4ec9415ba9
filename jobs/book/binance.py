"""Binance spot book synchronisation rules. Pure, no I/O.

The documented procedure ("How to manage a local order book correctly"):
https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams#how-to-manage-a-local-order-book-correctly
1. buffer diff events until a REST snapshot arrives;
2. drop buffered events with ``u <= lastUpdateId``; the first kept one must have
   ``U <= lastUpdateId + 1 <= u``;
3. then for each event: ``u < local`` -> ignore; ``U > local + 1`` -> gap: discard the book
   and wait for a new snapshot; else apply each level (absolute size, 0 removes), local = ``u``.
The connector fetches a snapshot after every (re)connect; it arrives on the same Kafka key
after the diffs it must be merged with.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.book.engine import Outcome, SyncedBook
from jobs.book.levels import BookStatus
from jobs.parse.events import BookDelta, BookSnapshot


@dataclass
class BinanceBook(SyncedBook):
    """One Binance symbol's book with its sync state."""

    def on_delta(self, delta: BookDelta) -> Outcome:
        if self.status is not BookStatus.LIVE:
            return self.buffer_delta(delta)
        return self._apply(delta)

    def _apply(self, delta: BookDelta) -> Outcome:
        if delta.last_id <= self.last_id:
            return Outcome.IGNORED
        if delta.first_id > self.last_id + 1:
            self.lose_sync(f"gap: expected update {self.last_id + 1}, got U={delta.first_id}")
            self.buffer = [delta]
            return Outcome.GAP
        self.apply_levels(delta)
        self.last_id = delta.last_id
        self.applied += 1
        return Outcome.APPLIED

    def on_snapshot(self, snap: BookSnapshot) -> Outcome:
        if self.status is BookStatus.LIVE:
            if snap.last_id <= self.last_id:
                return Outcome.IGNORED  # our continuous stream is already past it
            self.book.load(snap.bids, snap.asks)
            self.last_id = snap.last_id
            self.rebuilt(snap)
            return Outcome.APPLIED
        pending = [d for d in self.buffer if d.last_id > snap.last_id]
        if pending and pending[0].first_id > snap.last_id + 1:
            self.reason = (
                f"snapshot lastUpdateId={snap.last_id} ends before buffered U={pending[0].first_id}"
            )
            self.buffer = pending
            return Outcome.SNAPSHOT_TOO_OLD
        self.book.load(snap.bids, snap.asks)
        self.last_id = snap.last_id
        self.rebuilt(snap)
        self.status, self.reason, self.buffer = BookStatus.LIVE, "", []
        for delta in pending:
            if self._apply(delta) is Outcome.GAP:
                self.buffer = pending[pending.index(delta) :]
                return Outcome.GAP
        return Outcome.RESYNCED
