"""Coinbase Advanced Trade level2 book rules. Pure, no I/O.

A level2 subscription starts with an in-band ``snapshot`` of the whole book, then ``update``
messages with absolute quantities ("0" removes a level), on the same connection and so on the
same Kafka key, in order. There is no REST snapshot to bridge to, hence:
- before the first snapshot (or after a loss of sync) updates are buffered, and dropped when
  the snapshot arrives: it is complete and newer than all of them;
- a snapshot always replaces the book (after a reconnect it comes from a new connection, whose
  ``sequence_num`` starts again at 0, so it cannot be compared with the old one);
- when LIVE, updates are applied; one older than the book's ``sequence_num`` is ignored.
Gaps cannot be seen here (``sequence_num`` spans every product of a connection): the connector
sees them and sends ``sync_lost``, which the base class handles.
Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels#level2-channel
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.book.engine import Outcome, SyncedBook
from jobs.book.levels import BookStatus
from jobs.parse.events import BookDelta, BookSnapshot


@dataclass
class CoinbaseBook(SyncedBook):
    """One Coinbase product's book with its sync state."""

    def on_delta(self, delta: BookDelta) -> Outcome:
        if self.status is not BookStatus.LIVE:
            return self.buffer_delta(delta)
        # equal: more update events of the message that carried the snapshot
        if delta.last_id < self.last_id:
            return Outcome.IGNORED
        self.apply_levels(delta)
        self.last_id = delta.last_id
        self.applied += 1
        return Outcome.APPLIED

    def on_snapshot(self, snap: BookSnapshot) -> Outcome:
        was_live = self.status is BookStatus.LIVE
        self.book.load(snap.bids, snap.asks)
        self.last_id = snap.last_id
        self.rebuilt(snap)
        # buffered updates are older than this complete snapshot
        self.status, self.reason, self.buffer = BookStatus.LIVE, "", []
        return Outcome.APPLIED if was_live else Outcome.RESYNCED
