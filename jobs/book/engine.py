"""What every exchange's book engine shares: status, outcome of each event, persistence.

An engine is pure (no I/O): it takes normalised events and keeps an ``OrderBook`` in sync by
its exchange's documented rules. Per-exchange engines subclass ``SyncedBook``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jobs.book.levels import BookStatus, OrderBook
from jobs.parse.events import BookDelta, BookSnapshot, SyncLost


class Outcome(StrEnum):
    APPLIED = "applied"  # the book changed and is LIVE
    IGNORED = "ignored"  # older than the book: nothing to do
    BUFFERED = "buffered"  # kept until a snapshot arrives
    GAP = "gap"  # missing updates: the book is now RESYNCING
    CHECKSUM_MISMATCH = "checksum_mismatch"  # the book disagrees with the exchange: RESYNCING
    RESYNCED = "resynced"  # a snapshot (plus buffered updates) made the book LIVE
    SNAPSHOT_TOO_OLD = "snapshot_too_old"  # snapshot ends before the buffered updates begin


# version = epoch_ms * factor + applied. It stays monotonic across epochs as long as a book
# applies fewer than `factor` messages per millisecond between two snapshots (a billion per
# second): always. 10**6 keeps versions below 2**64 (ClickHouse UInt64) until the year 2500.
VERSION_EPOCH_FACTOR = 10**6

# outcomes after which the book must be rebuilt from a fresh snapshot (ask the connector)
NEEDS_RESYNC = frozenset({Outcome.GAP, Outcome.CHECKSUM_MISMATCH, Outcome.SNAPSHOT_TOO_OLD})


@dataclass
class SyncedBook:
    """Base of the per-exchange engines: one symbol's book and its sync state."""

    max_levels: int
    max_buffered: int
    book: OrderBook = field(init=False)
    status: BookStatus = BookStatus.RESYNCING
    reason: str = "awaiting snapshot"
    last_id: int = -1  # last applied exchange update id / sequence number (for display)
    buffer: list[BookDelta] = field(default_factory=list)
    # version = (epoch, applied): sequence numbers restart with each connection (Coinbase) or do
    # not exist (Kraken), so the monotonic version of a book counts applied messages since the
    # snapshot that last rebuilt it, whose receive time (ms) is the epoch. Both come from the
    # input, so a replay after a restore recomputes the same versions.
    epoch_ms: int = 0
    applied: int = 0

    def __post_init__(self) -> None:
        self.book = OrderBook(self.max_levels)

    def version(self) -> int:
        """Monotonic version of the published book (Redis refuses to go back to a lower one)."""
        return self.epoch_ms * VERSION_EPOCH_FACTOR + self.applied

    def rebuilt(self, snap: BookSnapshot) -> None:
        """Call when a snapshot replaced the book: a new epoch begins."""
        self.epoch_ms = max(snap.receive_time_ns // 1_000_000, self.epoch_ms + 1)
        self.applied = 0

    def on_delta(self, delta: BookDelta) -> Outcome:
        raise NotImplementedError

    def on_snapshot(self, snap: BookSnapshot) -> Outcome:
        raise NotImplementedError

    def on_sync_lost(self, event: SyncLost) -> Outcome:
        """The connector saw continuity break: distrust the book until the next snapshot."""
        self.lose_sync(f"connector: {event.reason}")
        self.buffer = []
        return Outcome.GAP

    def apply_levels(self, delta: BookDelta) -> None:
        """Absolute sizes, in message order (one message may change a level twice)."""
        for price, size in delta.bids:
            self.book.set_level("b", price, size)
        for price, size in delta.asks:
            self.book.set_level("a", price, size)

    def lose_sync(self, reason: str) -> None:
        # the RESYNCING state is a state of its own: it gets its own version (Redis accepts
        # it; history rows keyed by version do not collapse it into the last LIVE one)
        self.applied += 1
        self.status = BookStatus.RESYNCING
        self.reason = reason
        self.book.clear()

    def buffer_delta(self, delta: BookDelta) -> Outcome:
        """While not LIVE: keep a bounded buffer of updates for the next snapshot."""
        self.buffer.append(delta)
        if len(self.buffer) > self.max_buffered:
            # the oldest are dropped; bridging to the snapshot then fails loudly
            del self.buffer[: len(self.buffer) - self.max_buffered]
            self.reason = f"buffer overflow ({self.max_buffered} updates) awaiting snapshot"
        return Outcome.BUFFERED

    def state(self) -> tuple[Any, ...]:
        """Everything but the levels (persisted level by level elsewhere); picklable."""
        return (
            self.status.value,
            self.reason,
            self.last_id,
            self.buffer,
            self.epoch_ms,
            self.applied,
        )

    def restore_state(self, state: tuple[Any, ...]) -> None:
        status, self.reason, self.last_id, self.buffer, self.epoch_ms, self.applied = state
        self.status = BookStatus(status)
