//! A book as of a time: where a reconstruction stops, and the state it reads out.
//!
//! "As of T" is the book's exchange time: the book after every update of its sequence up to,
//! not including, its first update stamped later than T (the prefix of the exchange's
//! sequence whose event times are all <= T). The raw topic holds frames in receive order,
//! which for one book is its sequence order (one connection at a time), so the batch engine
//! stops applying a book's events at its first book event later than T and applies none of
//! that book's events after it, even one stamped <= T: in the exchange's sequence that one
//! comes after the later one, so a state including it includes the later one's changes too.
//!
//! A snapshot without an exchange time (Binance's REST snapshot, Kraken's WS snapshot) was
//! taken at the latest when it was received: it counts as stamped with its receive time, so
//! one received after T stops the book (the book at T never comes from a later snapshot).
//! This assumes our receive clock is not behind the exchange's; where it is, the next update
//! still shows it for Binance (the snapshot already contains it, below).
//!
//! The event that stops the book (the "next" event) is also what shows that nothing was
//! missed before T: applied to a copy of the book, it must follow it (`Outcome::Applied`). If
//! it does not (a sequence gap, a checksum mismatch: an update at or before T may be
//! missing), or the book already contains it (a snapshot taken after T, which the raw topic
//! delivered before the update), the book at T is not known exactly and reads as not in sync.

use crate::book::engine::Outcome;
use crate::events::{BookStatus, Level};
use crate::instrument::Gap;

/// One book's stopping point: its events stamped later than `at_ms` are not applied.
#[derive(Clone, Debug)]
pub struct Cutoff {
    pub exchange: String,
    pub symbol: String,
    /// exchange time, epoch ms
    pub at_ms: i64,
    /// the book's first event later than `at_ms`, once met
    pub halt: Option<Halt>,
}

/// The first book event of the book stamped later than the cutoff (not applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Halt {
    pub event_time_ms: i64,
    pub receive_time_ns: i64,
    pub snapshot: bool,
    /// its update ids (a snapshot: its last id twice)
    pub first_id: i64,
    pub last_id: i64,
    /// what applying it to a copy of the book would have done (None: no book yet)
    pub outcome: Option<Outcome>,
    /// the copy's status reason after it (why it would not follow the book)
    pub reason: String,
}

/// A book's full state out of the batch engine: every level it keeps, best first.
#[derive(Clone, Debug)]
pub struct BookAt {
    pub status: BookStatus,
    pub reason: String,
    pub version: i64,
    /// the last update id applied (-1: none)
    pub seq: i64,
    /// the latest exchange time of an applied book event (0: none had one)
    pub event_time_ms: i64,
    pub receive_time_ns: i64,
    /// receive time (ms) of the snapshot that last rebuilt the book (0: none)
    pub synced_ms: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    /// the book's not-in-sync interval still open, if any
    pub gap: Option<Gap>,
    /// where a cutoff stopped the book, if it did
    pub halt: Option<Halt>,
}

impl BookAt {
    /// The state as of the cutoff: a LIVE book whose next event does not follow it is not
    /// known exactly, and reads as not in sync with no levels (never a wrong book).
    pub fn settled(mut self) -> BookAt {
        if self.status != BookStatus::Live {
            self.bids.clear();
            self.asks.clear();
            return self;
        }
        let Some(halt) = &self.halt else {
            return self;
        };
        let doubt = match halt.outcome {
            // a snapshot replaces the book: it shows nothing about the updates before it
            Some(Outcome::Applied) | Some(Outcome::Resynced) | None => None,
            Some(Outcome::Ignored) => Some(format!(
                "the book already contains update {}-{} stamped {} ms, after the cutoff \
                 (its snapshot was taken later than the cutoff): its state at the cutoff \
                 is not known",
                halt.first_id, halt.last_id, halt.event_time_ms
            )),
            Some(_) => Some(format!(
                "the first update after the cutoff ({}-{}, stamped {} ms) does not follow \
                 the book ({}): an update at or before the cutoff is missing",
                halt.first_id, halt.last_id, halt.event_time_ms, halt.reason
            )),
        };
        if let Some(reason) = doubt {
            self.status = BookStatus::Resyncing;
            self.reason = reason;
            self.bids.clear();
            self.asks.clear();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dec::parse_dec;
    use crate::envelope::{encode_envelope, RawEnvelope};
    use crate::instrument::Rules;
    use crate::partition::{PartitionBooks, Selection};

    const SYMBOL: &str = "BTCUSDT";

    fn engine(top_n: usize) -> PartitionBooks {
        let rules = Rules {
            top_n,
            snapshot_interval_ms: 1000,
            max_levels: 1000,
            max_buffered: 100,
            nbbo_stale_after_ms: 5000,
            bar_intervals_ms: vec![60_000],
            depth_band_bps: parse_dec("10").unwrap(),
            trade_dedup_ms: 1000,
        };
        let selection = Selection {
            only: vec!["BTC-USDT".into()],
            others: Vec::new(),
        };
        let mut books = PartitionBooks::new(rules, Vec::new(), 200, selection);
        books.write_rows = false;
        books
    }

    /// One Binance frame received at `receive_ms` (also its Kafka timestamp).
    fn feed(
        books: &mut PartitionBooks,
        symbol: &str,
        channel: &str,
        payload: &str,
        receive_ms: i64,
    ) {
        let value = encode_envelope(&RawEnvelope {
            instrument: "BTC-USDT",
            exchange: "binance",
            symbol,
            channel,
            receive_time_ns: receive_ms * 1_000_000,
            connection_id: "c1",
            connection_seq: 1,
            payload: payload.as_bytes(),
        });
        books.feed(&value, receive_ms);
    }

    fn snapshot(books: &mut PartitionBooks, last: i64, receive_ms: i64) {
        let payload = format!(
            r#"{{"lastUpdateId":{last},"bids":[["100.00","1"],["99.50","2"],["99.00","3"]],"asks":[["101.00","1"],["101.50","2"],["102.00","3"]]}}"#
        );
        feed(books, SYMBOL, "snapshot", &payload, receive_ms);
    }

    /// Update `id` stamped `event_ms`: the bid at 100.00 gets size `id`.
    fn depth(books: &mut PartitionBooks, id: i64, event_ms: i64, receive_ms: i64) {
        let payload = format!(
            r#"{{"e":"depthUpdate","E":{event_ms},"s":"{SYMBOL}","U":{id},"u":{id},"b":[["100.00","{id}"]],"a":[]}}"#
        );
        feed(books, SYMBOL, "depth", &payload, receive_ms);
    }

    fn texts(levels: &[Level]) -> Vec<(String, String)> {
        levels
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    fn pairs(levels: &[(&str, &str)]) -> Vec<(String, String)> {
        levels
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn every_level_is_read_out_not_only_the_top_n() {
        let mut books = engine(1);
        snapshot(&mut books, 100, 1000);
        depth(&mut books, 101, 1100, 1101);
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Live);
        assert_eq!(
            texts(&book.bids),
            pairs(&[("100.00", "101"), ("99.50", "2"), ("99.00", "3")])
        );
        assert_eq!(
            texts(&book.asks),
            pairs(&[("101.00", "1"), ("101.50", "2"), ("102.00", "3")])
        );
        assert_eq!(
            (book.seq, book.event_time_ms, book.synced_ms),
            (101, 1100, 1000)
        );
        assert!(book.gap.is_none() && book.halt.is_none());
        assert!(books.book_at("binance", "ETHUSDT").is_none());
    }

    #[test]
    fn the_book_stops_before_its_first_update_stamped_after_the_cutoff() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        snapshot(&mut books, 100, 1000);
        depth(&mut books, 101, 1100, 1101);
        depth(&mut books, 102, 1250, 1251); // at the cutoff: applied
        assert!(!books.halted());
        depth(&mut books, 103, 1300, 1301);
        assert!(books.halted());
        depth(&mut books, 104, 1400, 1401);
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Live);
        assert_eq!((book.seq, book.event_time_ms), (102, 1250));
        assert_eq!(texts(&book.bids)[0], ("100.00".into(), "102".into()));
        let halt = book.halt.unwrap();
        assert_eq!((halt.event_time_ms, halt.first_id), (1300, 103));
        assert_eq!(halt.outcome, Some(Outcome::Applied));
    }

    /// Receive order is the exchange's sequence: an update stamped at or before the cutoff
    /// that arrives after one stamped later comes after it in the sequence, so the book as of
    /// the cutoff is the one before the later-stamped update, without either.
    #[test]
    fn an_update_stamped_before_the_cutoff_after_a_later_one_is_not_applied() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        snapshot(&mut books, 100, 1000);
        depth(&mut books, 101, 1100, 1101);
        depth(&mut books, 102, 1300, 1301); // stamped after the cutoff
        depth(&mut books, 103, 1200, 1302); // stamped before it, but later in the sequence
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Live);
        assert_eq!((book.seq, book.event_time_ms), (101, 1100));
        assert_eq!(texts(&book.bids)[0], ("100.00".into(), "101".into()));
        assert_eq!(book.halt.unwrap().event_time_ms, 1300);
        // without the cutoff the same frames give the book after update 103
        let mut all = engine(10);
        snapshot(&mut all, 100, 1000);
        for (id, event_ms) in [(101, 1100), (102, 1300), (103, 1200)] {
            depth(&mut all, id, event_ms, event_ms + 1);
        }
        assert_eq!(all.book_at("binance", SYMBOL).unwrap().seq, 103);
    }

    #[test]
    fn another_books_later_frames_do_not_stop_the_held_book() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        snapshot(&mut books, 100, 1000);
        let other = r#"{"e":"depthUpdate","E":9000,"s":"BTCUSDC","U":1,"u":1,"b":[],"a":[]}"#;
        feed(&mut books, "BTCUSDC", "depth", other, 1050);
        depth(&mut books, 101, 1100, 1101);
        assert!(!books.halted());
        assert_eq!(books.book_at("binance", SYMBOL).unwrap().seq, 101);
    }

    #[test]
    fn a_gap_right_after_the_cutoff_leaves_the_book_unknown_not_wrong() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        snapshot(&mut books, 100, 1000);
        depth(&mut books, 101, 1100, 1101);
        depth(&mut books, 103, 1300, 1301); // 102 is missing: it may be stamped <= 1250
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Resyncing);
        assert!(book.reason.contains("is missing"), "{}", book.reason);
        assert!(book.bids.is_empty() && book.asks.is_empty());
        assert_eq!(book.halt.unwrap().outcome, Some(Outcome::Gap));
    }

    #[test]
    fn a_snapshot_taken_after_the_cutoff_leaves_the_book_unknown() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        depth(&mut books, 101, 1100, 1101); // buffered, awaiting the snapshot
                                            // REST, no exchange time; received before the cutoff by our clock, yet it contains
                                            // update 102, stamped after it (the exchange's clock ahead of ours)
        snapshot(&mut books, 102, 1240);
        depth(&mut books, 102, 1300, 1320); // already in the book
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Resyncing);
        assert!(book.reason.contains("already contains"), "{}", book.reason);
        assert!(book.bids.is_empty());
    }

    #[test]
    fn a_snapshot_received_after_the_cutoff_stops_the_book() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        depth(&mut books, 101, 1100, 1101); // buffered, awaiting the snapshot
        snapshot(&mut books, 100, 1260); // would bridge to 101, but taken after the cutoff
        assert!(books.halted());
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Resyncing);
        assert_eq!(book.reason, "awaiting snapshot");
        assert_eq!(book.gap.unwrap().kind, "startup");
        let halt = book.halt.unwrap();
        assert!(halt.snapshot);
        assert_eq!(
            (halt.event_time_ms, halt.outcome),
            (1260, Some(Outcome::Resynced))
        );
    }

    #[test]
    fn a_cutoff_inside_a_gap_reads_not_in_sync_with_the_open_interval() {
        let mut books = engine(10);
        books.hold_book("binance", SYMBOL, 1250);
        snapshot(&mut books, 100, 1000);
        depth(&mut books, 101, 1100, 1101);
        depth(&mut books, 103, 1150, 1151); // gap
        depth(&mut books, 104, 1200, 1201);
        depth(&mut books, 105, 1300, 1301);
        snapshot(&mut books, 106, 1400); // after the halt: not applied
        let book = books.book_at("binance", SYMBOL).unwrap();
        assert_eq!(book.status, BookStatus::Resyncing);
        assert!(book.bids.is_empty() && book.asks.is_empty());
        let gap = book.gap.unwrap();
        assert_eq!(
            (gap.kind.as_str(), gap.start_ms, gap.seq_before),
            ("gap", 1151, 101)
        );
    }
}
