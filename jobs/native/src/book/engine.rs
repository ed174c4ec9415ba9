//! What every exchange's book engine shares: status, outcome of each event, version (the Rust
//! twin of `jobs/book/engine.py`). Pure, no I/O.
//!
//! One `SyncedBook` type serves every exchange: `Exchange` picks the rules (binance.rs,
//! coinbase.rs, kraken.rs). Python's state persistence (`state`/`restore_state`) is left out.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::book::kraken::DEPTHS;
use crate::book::levels::{BookSide, OrderBook};
use crate::events::{BookDelta, BookSnapshot, BookStatus, SyncLost};
use crate::validate::MAX_SEQUENCE_JUMP;

/// `jobs.book.engine.Outcome`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// the book changed and is LIVE
    Applied,
    /// older than the book: nothing to do
    Ignored,
    /// kept until a snapshot arrives
    Buffered,
    /// missing updates: the book is now RESYNCING
    Gap,
    /// the book disagrees with the exchange: RESYNCING
    ChecksumMismatch,
    /// a snapshot (plus buffered updates) made the book LIVE
    Resynced,
    /// snapshot ends before the buffered updates begin
    SnapshotTooOld,
}

impl Outcome {
    /// After these the book must be rebuilt from a fresh snapshot (ask the connector).
    pub fn needs_resync(self) -> bool {
        matches!(
            self,
            Outcome::Gap | Outcome::ChecksumMismatch | Outcome::SnapshotTooOld
        )
    }

    /// The Python enum's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Ignored => "ignored",
            Outcome::Buffered => "buffered",
            Outcome::Gap => "gap",
            Outcome::ChecksumMismatch => "checksum_mismatch",
            Outcome::Resynced => "resynced",
            Outcome::SnapshotTooOld => "snapshot_too_old",
        }
    }
}

/// version = epoch_ms * factor + applied (see engine.py).
pub const VERSION_EPOCH_FACTOR: i64 = 1_000_000;

/// Which exchange's sync rules a book follows (`jobs.book.ENGINES`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Exchange {
    Binance,
    Coinbase,
    Kraken,
}

impl Exchange {
    pub fn from_name(name: &str) -> Option<Exchange> {
        match name {
            "binance" => Some(Exchange::Binance),
            "coinbase" => Some(Exchange::Coinbase),
            "kraken" => Some(Exchange::Kraken),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Exchange::Binance => "binance",
            Exchange::Coinbase => "coinbase",
            Exchange::Kraken => "kraken",
        }
    }
}

/// One symbol's book and its sync state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncedBook {
    pub book: OrderBook,
    pub status: BookStatus,
    pub reason: String,
    /// last applied exchange update id / sequence number (for display); -1 before any
    pub last_id: i64,
    /// updates kept while not LIVE, for the next snapshot (oldest first)
    pub buffer: VecDeque<BookDelta>,
    /// receive time (ms) of the snapshot that last rebuilt the book: the version's epoch
    pub epoch_ms: i64,
    /// messages applied (and losses of sync) since that snapshot
    pub applied: i64,
    pub max_levels: usize,
    pub max_buffered: usize,
    pub exchange: Exchange,
    /// Kraken: the subscription depth when pinned, else inferred from each snapshot
    pub(crate) kraken_depth: Option<usize>,
    /// Kraken: the depth truncation uses
    pub(crate) view_depth: usize,
}

impl SyncedBook {
    /// A book following `exchange`'s rules ("binance" | "coinbase" | "kraken"), else None.
    pub fn new(exchange: &str, max_levels: usize, max_buffered: usize) -> Option<SyncedBook> {
        Exchange::from_name(exchange)
            .map(|ex| SyncedBook::for_exchange(ex, max_levels, max_buffered))
    }

    pub fn for_exchange(exchange: Exchange, max_levels: usize, max_buffered: usize) -> SyncedBook {
        SyncedBook {
            book: OrderBook::new(max_levels),
            status: BookStatus::Resyncing,
            reason: String::from("awaiting snapshot"),
            last_id: -1,
            buffer: VecDeque::new(),
            epoch_ms: 0,
            applied: 0,
            max_levels,
            max_buffered,
            exchange,
            kraken_depth: None,
            view_depth: DEPTHS[DEPTHS.len() - 1],
        }
    }

    /// Monotonic version of the published book.
    #[inline]
    pub fn version(&self) -> i64 {
        self.epoch_ms * VERSION_EPOCH_FACTOR + self.applied
    }

    pub fn on_delta(&mut self, delta: BookDelta) -> Outcome {
        let outcome = match self.exchange {
            Exchange::Binance => self.binance_on_delta(delta),
            Exchange::Coinbase => self.coinbase_on_delta(delta),
            Exchange::Kraken => self.kraken_on_delta(&delta),
        };
        self.uncrossed(outcome)
    }

    pub fn on_snapshot(&mut self, snap: &BookSnapshot) -> Outcome {
        let outcome = match self.exchange {
            Exchange::Binance => self.binance_on_snapshot(snap),
            Exchange::Coinbase => self.coinbase_on_snapshot(snap),
            Exchange::Kraken => self.kraken_on_snapshot(snap),
        };
        self.uncrossed(outcome)
    }

    /// A LIVE book whose best bid is at or above its best ask is out of sync with the
    /// exchange (no exchange's own book crosses): never published LIVE, resynced instead.
    fn uncrossed(&mut self, outcome: Outcome) -> Outcome {
        if self.status != BookStatus::Live || !self.book.is_crossed() {
            return outcome;
        }
        let (bid, ask) = (self.book.best_bid(), self.book.best_ask());
        let text =
            |l: Option<crate::events::Level>| l.map(|(p, _)| p.to_string()).unwrap_or_default();
        self.lose_sync(format!(
            "crossed book: best bid {} >= best ask {}",
            text(bid),
            text(ask)
        ));
        self.buffer.clear();
        Outcome::Gap
    }

    /// The connector saw continuity break: distrust the book until the next snapshot.
    pub fn on_sync_lost(&mut self, event: &SyncLost) -> Outcome {
        let mut reason = String::with_capacity(11 + event.reason.len());
        reason.push_str("connector: ");
        reason.push_str(&event.reason);
        self.lose_sync(reason);
        self.buffer.clear();
        Outcome::Gap
    }

    /// Call when a snapshot replaced the book: a new epoch begins.
    pub(crate) fn rebuilt(&mut self, snap: &BookSnapshot) {
        // Python's `//` floors
        self.epoch_ms = snap
            .receive_time_ns
            .div_euclid(1_000_000)
            .max(self.epoch_ms + 1);
        self.applied = 0;
    }

    /// Absolute sizes, in message order (one message may change a level twice).
    #[inline]
    pub(crate) fn apply_levels(&mut self, delta: &BookDelta) {
        for &(price, size) in &delta.bids {
            self.book.set_level(BookSide::Bid, price, size);
        }
        for &(price, size) in &delta.asks {
            self.book.set_level(BookSide::Ask, price, size);
        }
    }

    /// Why `id` cannot follow the LIVE book's last id: a jump of more than
    /// `MAX_SEQUENCE_JUMP` either way is corrupt data, not a sequence. Taken as continuous, a
    /// huge id would make every later update and snapshot look old (ignored: the book frozen
    /// but LIVE); as a gap, the book resyncs.
    pub(crate) fn implausible_jump(&self, id: i64) -> Option<String> {
        if self.last_id < 0
            || (id as i128 - self.last_id as i128).abs() <= MAX_SEQUENCE_JUMP as i128
        {
            return None;
        }
        Some(format!(
            "implausible sequence jump: local update id {}, got {id}",
            self.last_id
        ))
    }

    /// The RESYNCING state gets its own version; the book is discarded.
    pub(crate) fn lose_sync(&mut self, reason: String) {
        self.applied += 1;
        self.status = BookStatus::Resyncing;
        self.reason = reason;
        self.book.clear();
    }

    /// While not LIVE: keep a bounded buffer of updates for the next snapshot.
    pub(crate) fn buffer_delta(&mut self, delta: BookDelta) -> Outcome {
        self.buffer.push_back(delta);
        if self.buffer.len() > self.max_buffered {
            // the oldest are dropped; bridging to the snapshot then fails loudly
            let excess = self.buffer.len() - self.max_buffered;
            self.buffer.drain(..excess);
            self.reason = format!(
                "buffer overflow ({} updates) awaiting snapshot",
                self.max_buffered
            );
        }
        Outcome::Buffered
    }
}
