//! Normalised market events: what every exchange parser produces and the book engines
//! consume (the Rust twin of `jobs/parse/events.py`). Pure, no I/O.

use serde::{Deserialize, Serialize};

use crate::dec::Dec;

/// (price, size); size 0 removes the level.
pub type Level = (Dec, Dec);

/// A book: (exchange, the exchange's own symbol).
pub type BookId = (String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// `jobs.book.levels.BookStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BookStatus {
    Live,
    Resyncing,
    Stale,
}

impl BookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BookStatus::Live => "LIVE",
            BookStatus::Resyncing => "RESYNCING",
            BookStatus::Stale => "STALE",
        }
    }
}

/// Absolute sizes for some price levels (see `BookDelta` in events.py).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookDelta {
    pub exchange: String,
    pub symbol: String,
    pub first_id: i64,
    pub last_id: i64,
    pub event_time_ms: i64,
    pub receive_time_ns: i64,
    #[serde(with = "crate::dec::wire")]
    pub bids: Vec<Level>,
    #[serde(with = "crate::dec::wire")]
    pub asks: Vec<Level>,
    pub checksum: Option<u32>,
}

/// A full (depth-limited) book; `last_id` is the last update id included in it.
#[derive(Debug, Clone, PartialEq)]
pub struct BookSnapshot {
    pub exchange: String,
    pub symbol: String,
    pub last_id: i64,
    pub receive_time_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    pub event_time_ms: i64,
    pub checksum: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    pub exchange: String,
    pub symbol: String,
    pub trade_id: String,
    #[serde(with = "crate::dec::wire")]
    pub price: Dec,
    #[serde(with = "crate::dec::wire")]
    pub size: Dec,
    pub taker_side: Side,
    pub trade_time_ms: i64,
    pub event_time_ms: i64,
    pub receive_time_ns: i64,
    /// the message's place in a sequence shared with book messages, else -1
    pub sequence: i64,
}

/// The connector lost continuity for this symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncLost {
    pub exchange: String,
    pub symbol: String,
    pub reason: String,
    pub receive_time_ns: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MarketEvent {
    Delta(BookDelta),
    Snapshot(BookSnapshot),
    Trade(Trade),
    SyncLost(SyncLost),
}

impl MarketEvent {
    pub fn symbol(&self) -> &str {
        match self {
            MarketEvent::Delta(e) => &e.symbol,
            MarketEvent::Snapshot(e) => &e.symbol,
            MarketEvent::Trade(e) => &e.symbol,
            MarketEvent::SyncLost(e) => &e.symbol,
        }
    }
}
