//! Kraken spot (WebSocket v2 `book` channel) book rules and CRC32 checksum (the Rust twin of
//! `jobs/book/kraken.py`).
//!
//! 1. subscribing sends a snapshot of the top `depth` levels per side, then updates;
//! 2. an update holds absolute quantities (0 removes the level), possibly several for the same
//!    price, applied in order; after all levels of a message, each side is truncated to the
//!    subscribed depth (Kraken sends no delete for levels pushed out of range);
//! 3. every message carries a CRC32 of the top 10 levels of the resulting book; a mismatch
//!    means the local book is wrong: resubscribe (a fresh snapshot).
//!
//! The checksum reads each decimal's exact text (`format(value, "f")` in Python: trailing
//! zeros kept, no exponent), '.' removed, leading zeros stripped. For a non-negative decimal
//! that is exactly the digits of its coefficient (`Dec::mantissa`), which is what is hashed
//! here, without formatting. The Python engine caches level texts; the cache is transparent
//! (every level it sets or removes is dropped from it), so none is needed here.

use crate::book::engine::{Exchange, Outcome, SyncedBook};
use crate::book::levels::BookSide;
use crate::dec::Dec;
use crate::events::{BookDelta, BookSnapshot, BookStatus, Level};

/// The depths a book subscription may ask for.
pub const DEPTHS: [usize; 5] = [10, 25, 100, 500, 1000];
/// The checksum covers the top 10 per side, whatever the depth.
pub const CHECKSUM_LEVELS: usize = 10;

/// A price or quantity as the checksum reads it: its exact text, '.' removed, leading zeros
/// stripped. `0.10000000` -> "10000000".
pub fn checksum_text(value: Dec) -> String {
    let mut out = Vec::with_capacity(32);
    push_checksum_text(&mut out, value);
    String::from_utf8(out).expect("ascii")
}

/// Where checksum text goes: a `Vec` (`checksum_text`) or a stack buffer (`crc_of`).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// 20 levels, 40 decimals of at most 31 bytes of text each ("-0." and 28 digits)
struct StackText {
    buf: [u8; 1280],
    len: usize,
}

impl Sink for StackText {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Appends `checksum_text(value)` to `out` (no allocation for non-negative values).
#[inline]
fn push_checksum_text(out: &mut impl Sink, value: Dec) {
    if value.is_sign_negative() {
        // "-0.05" -> "-005": the '-' stops Python's lstrip("0"); keep its literal result
        let text = value.to_string().replace('.', "");
        out.put(text.trim_start_matches('0').as_bytes());
        return;
    }
    let mut m = value.mantissa().unsigned_abs();
    if m == 0 {
        return; // "0.000" -> ""
    }
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    if m <= u64::MAX as u128 {
        let mut n = m as u64;
        while n > 0 {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    } else {
        while m > 0 {
            i -= 1;
            digits[i] = b'0' + (m % 10) as u8;
            m /= 10;
        }
    }
    out.put(&digits[i..]);
}

/// One level's part of the checksum input: price text then quantity text.
pub fn level_text(price: Dec, qty: Dec) -> String {
    let mut out = Vec::with_capacity(48);
    push_checksum_text(&mut out, price);
    push_checksum_text(&mut out, qty);
    String::from_utf8(out).expect("ascii")
}

fn crc_of<'a>(
    asks: impl Iterator<Item = (&'a Dec, &'a Dec)>,
    bids: impl Iterator<Item = (&'a Dec, &'a Dec)>,
) -> u32 {
    let mut text = StackText {
        buf: [0; 1280],
        len: 0,
    };
    for (&p, &q) in asks.take(CHECKSUM_LEVELS).chain(bids.take(CHECKSUM_LEVELS)) {
        push_checksum_text(&mut text, p);
        push_checksum_text(&mut text, q);
    }
    crc32fast::hash(&text.buf[..text.len])
}

/// Kraken's CRC32 (unsigned) of a book given best first per side: top 10 asks low -> high,
/// then top 10 bids high -> low, each level as price text then quantity text.
pub fn book_checksum(bids: &[Level], asks: &[Level]) -> u32 {
    crc_of(
        asks.iter().map(|(p, q)| (p, q)),
        bids.iter().map(|(p, q)| (p, q)),
    )
}

/// The smallest subscribable depth that a snapshot with this many levels per side fits.
pub fn subscription_depth(levels_per_side: usize) -> usize {
    for depth in DEPTHS {
        if levels_per_side <= depth {
            return depth;
        }
    }
    DEPTHS[DEPTHS.len() - 1]
}

impl SyncedBook {
    /// A Kraken book pinned to a subscription depth (`KrakenBook(depth=..)`); `None` infers it
    /// from each snapshot, as `SyncedBook::new("kraken", ..)` does.
    pub fn new_kraken(
        max_levels: usize,
        max_buffered: usize,
        depth: Option<usize>,
    ) -> Result<SyncedBook, String> {
        let mut book = SyncedBook::for_exchange(Exchange::Kraken, max_levels, max_buffered);
        if let Some(depth) = depth {
            if !DEPTHS.contains(&depth) {
                return Err(format!(
                    "kraken book depth must be one of (10, 25, 100, 500, 1000), got {depth}"
                ));
            }
            book.kraken_depth = Some(depth);
            book.view_depth = depth;
        }
        Ok(book)
    }

    /// Kraken: the depth truncation uses (pinned, or inferred from the last snapshot).
    pub fn view_depth(&self) -> usize {
        self.view_depth
    }

    pub(crate) fn kraken_on_snapshot(&mut self, snap: &BookSnapshot) -> Outcome {
        let was_live = self.status == BookStatus::Live;
        if self.kraken_depth.is_none() {
            self.view_depth = subscription_depth(snap.bids.len().max(snap.asks.len()));
        }
        self.book.load(&snap.bids, &snap.asks);
        self.kraken_truncate();
        self.last_id = snap.last_id;
        self.rebuilt(snap);
        self.buffer.clear();
        if let Some(mismatch) = self.kraken_verify(snap.checksum) {
            self.lose_sync(format!("checksum mismatch on snapshot: {mismatch}"));
            return Outcome::ChecksumMismatch;
        }
        self.status = BookStatus::Live;
        self.reason.clear();
        if was_live {
            Outcome::Applied
        } else {
            Outcome::Resynced
        }
    }

    pub(crate) fn kraken_on_delta(&mut self, delta: &BookDelta) -> Outcome {
        if self.status != BookStatus::Live {
            // nothing to bridge: the snapshot the resubscribe brings is complete
            return Outcome::Ignored;
        }
        self.apply_levels(delta); // in order: one message may change a level twice
        self.kraken_truncate();
        self.applied += 1;
        if let Some(mismatch) = self.kraken_verify(delta.checksum) {
            self.lose_sync(format!("checksum mismatch: {mismatch}"));
            return Outcome::ChecksumMismatch;
        }
        Outcome::Applied
    }

    /// Forget levels beyond the subscribed depth.
    fn kraken_truncate(&mut self) {
        let depth = self.view_depth;
        while self.book.bid_count() > depth {
            self.book.pop_worst(BookSide::Bid);
        }
        while self.book.ask_count() > depth {
            self.book.pop_worst(BookSide::Ask);
        }
    }

    /// None when the book matches the exchange's checksum (or there is none to check).
    fn kraken_verify(&self, expected: Option<u32>) -> Option<String> {
        let expected = expected?;
        let actual = self.checksum();
        if actual == expected {
            return None;
        }
        Some(format!("exchange {expected}, local {actual}"))
    }

    /// `book_checksum` of the local book.
    pub fn checksum(&self) -> u32 {
        crc_of(self.book.asks_best_first(), self.book.bids_best_first())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // Ok(snapshot) / Err(delta): test plumbing
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::book::test_util::*;

    fn levels(v: &Value) -> Vec<Level> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| (dec(&l["price"]), dec(&l["qty"])))
            .collect()
    }

    /// A book frame's events as the Kraken parser makes them (numbers as their exact text).
    fn frame_events(frame: &Value, seq: usize) -> Vec<Result<BookSnapshot, BookDelta>> {
        let snapshot = frame["type"] == "snapshot";
        frame["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|data| {
                let checksum = Some(int(&data["checksum"]) as u32);
                let symbol = data["symbol"].as_str().unwrap().to_string();
                if snapshot {
                    Ok(BookSnapshot {
                        exchange: "kraken".into(),
                        symbol,
                        last_id: 0,
                        receive_time_ns: receive_ns(seq),
                        bids: levels(&data["bids"]),
                        asks: levels(&data["asks"]),
                        event_time_ms: 0,
                        checksum,
                    })
                } else {
                    Err(BookDelta {
                        exchange: "kraken".into(),
                        symbol,
                        first_id: 0,
                        last_id: 0,
                        event_time_ms: 0,
                        receive_time_ns: receive_ns(seq),
                        bids: levels(&data["bids"]),
                        asks: levels(&data["asks"]),
                        checksum,
                    })
                }
            })
            .collect()
    }

    fn feed(engine: &mut SyncedBook, event: Result<BookSnapshot, BookDelta>) -> Outcome {
        match event {
            Ok(snap) => engine.on_snapshot(&snap),
            Err(delta) => engine.on_delta(delta),
        }
    }

    fn documented_snapshot() -> BookSnapshot {
        frame_events(&fixture("kraken/doc_book_snapshot.json"), 7)
            .remove(0)
            .unwrap()
    }

    #[test]
    fn documented_snapshot_checksum_matches_the_documented_value() {
        let snap = documented_snapshot();
        assert_eq!(snap.checksum, Some(3310070434));
        assert_eq!(book_checksum(&snap.bids, &snap.asks), 3310070434);
        assert_eq!(snap.bids[0].1.to_string(), "0.10000000");
        assert_eq!(snap.bids[3].0.to_string(), "45281.0");
        assert_eq!(level_text(snap.asks[0].0, snap.asks[0].1), "452852100000");
    }

    #[test]
    fn checksum_text_is_exact_and_exponent_free() {
        assert_eq!(checksum_text(d("0.10000000")), "10000000");
        assert_eq!(checksum_text(d("45281.0")), "452810");
        assert_eq!(checksum_text(d("0.00000001")), "1");
        assert_eq!(checksum_text(d("1E-8")), "1");
        assert_eq!(checksum_text(d("40")), "40");
        assert_eq!(checksum_text(d("0.000")), "");
        assert_eq!(checksum_text(d("-0.05")), "-005"); // Python: format(..,"f") then lstrip("0")
        assert_eq!(
            checksum_text(d("79228162514264337593543950335")),
            "79228162514264337593543950335"
        );
        assert_eq!(
            checksum_text(d("1844674407370955161.6")),
            "18446744073709551616"
        );
    }

    /// test_kraken_book.py::test_sync_scenario, on every recorded scenario.
    #[test]
    fn sync_scenarios() {
        let names = scenarios("kraken");
        assert!(names.len() >= 6, "{names:?}");
        for name in names {
            let scenario = fixture(&format!("kraken/{name}"));
            let mut engine = SyncedBook::new("kraken", 5000, 100).unwrap();
            for (seq, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
                for event in frame_events(&step["frame"], seq) {
                    feed(&mut engine, event);
                }
            }
            let expected = &scenario["expected"];
            assert_eq!(
                engine.status,
                status(expected["status"].as_str().unwrap()),
                "{name}"
            );
            let (bids, asks) = if engine.status == BookStatus::Live {
                engine.book.top(25)
            } else {
                (vec![], vec![])
            };
            assert_eq!(
                text_levels(&bids),
                expected_levels(&expected["bids"]),
                "{name}"
            );
            assert_eq!(
                text_levels(&asks),
                expected_levels(&expected["asks"]),
                "{name}"
            );
            if engine.status != BookStatus::Live {
                assert!(engine.reason.starts_with("checksum mismatch"), "{name}");
            }
        }
    }

    /// test_mismatch_asks_for_a_resync_and_updates_until_the_snapshot_are_ignored
    #[test]
    fn mismatch_asks_for_a_resync_and_updates_until_the_snapshot_are_ignored() {
        let scenario = fixture("kraken/sync_resubscribe_snapshot_heals_mismatch.json");
        let mut engine = SyncedBook::new("kraken", 5000, 100).unwrap();
        let outs: Vec<Outcome> = scenario["steps"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .flat_map(|(seq, s)| frame_events(&s["frame"], seq))
            .map(|e| feed(&mut engine, e))
            .collect();
        assert_eq!(
            outs,
            vec![
                Outcome::Resynced,
                Outcome::ChecksumMismatch,
                Outcome::Ignored,
                Outcome::Resynced
            ]
        );
        assert!(outs[1].needs_resync());
        assert_eq!(engine.status, BookStatus::Live);
    }

    #[test]
    fn a_snapshot_with_a_wrong_checksum_is_not_trusted() {
        let mut snap = documented_snapshot();
        snap.checksum = Some(3310070435);
        let mut engine = SyncedBook::new("kraken", 5000, 10).unwrap();
        assert_eq!(engine.on_snapshot(&snap), Outcome::ChecksumMismatch);
        assert_eq!(
            (engine.status, engine.book.len()),
            (BookStatus::Resyncing, 0)
        );
        assert_eq!(
            engine.reason,
            "checksum mismatch on snapshot: exchange 3310070435, local 3310070434"
        );
        // the epoch began and the loss of sync is counted
        assert_eq!((engine.epoch_ms, engine.applied), (1_700_000_000_000, 1));
    }

    #[test]
    fn depth_is_inferred_from_snapshots_or_pinned() {
        let depths: Vec<usize> = [0, 10, 11, 25, 26, 1000, 5000]
            .map(subscription_depth)
            .to_vec();
        assert_eq!(depths, vec![10, 10, 25, 25, 100, 1000, 1000]);
        // a 25-level book whose checksum covers the top 10
        let bids: Vec<Level> = (0..25)
            .map(|i| (Dec::from(3000 - i), d("1.50000000")))
            .collect();
        let asks: Vec<Level> = (0..25)
            .map(|i| (Dec::from(3001 + i), d("2.00000000")))
            .collect();
        let snap = BookSnapshot {
            exchange: "kraken".into(),
            symbol: "ETH/USD".into(),
            last_id: 0,
            receive_time_ns: 0,
            checksum: Some(book_checksum(&bids, &asks)),
            bids,
            asks,
            event_time_ms: 0,
        };
        let mut inferred = SyncedBook::new("kraken", 5000, 10).unwrap();
        assert_eq!(inferred.view_depth(), 1000);
        assert_eq!(inferred.on_snapshot(&snap), Outcome::Resynced);
        assert_eq!(inferred.view_depth(), 25);
        let mut pinned = SyncedBook::new_kraken(5000, 10, Some(10)).unwrap();
        assert_eq!(pinned.on_snapshot(&snap), Outcome::Resynced);
        assert_eq!((pinned.book.bid_count(), pinned.book.ask_count()), (10, 10));
        assert!(SyncedBook::new_kraken(10, 10, Some(20))
            .unwrap_err()
            .contains("depth"));
    }

    /// The simulator's checksum: fixed-precision integers are their own checksum text.
    fn sim_checksum(bids: &[(u64, u64)], asks: &[(u64, u64)]) -> u32 {
        let mut text = String::new();
        for (p, q) in asks.iter().take(10).chain(bids.iter().take(10)) {
            text += &format!("{p}{q}");
        }
        crc32fast::hash(text.as_bytes())
    }

    fn fixed_text(units: u64, decimals: u32) -> String {
        if decimals == 0 {
            return units.to_string();
        }
        let pow = 10u64.pow(decimals);
        format!(
            "{}.{:0width$}",
            units / pow,
            units % pow,
            width = decimals as usize
        )
    }

    /// simulator.kraken._side_update: what a `depth` subscriber receives for one side.
    fn side_update(
        changes: &[(u64, u64)],
        before: &[(u64, u64)],
        after: &[(u64, u64)],
        depth: usize,
    ) -> Vec<(u64, u64)> {
        let was: Vec<u64> = before.iter().take(depth).map(|l| l.0).collect();
        let now: Vec<(u64, u64)> = after.iter().take(depth).copied().collect();
        let mut out: Vec<(u64, u64)> = changes
            .iter()
            .filter(|(p, _)| was.contains(p) || now.iter().any(|l| l.0 == *p))
            .copied()
            .collect();
        let touched: Vec<u64> = out.iter().map(|l| l.0).collect();
        out.extend(
            now.iter()
                .filter(|(p, _)| !was.contains(p) && !touched.contains(p)),
        );
        out
    }

    /// test_kraken_book.py::test_live_book_always_matches_the_truths_top_of_book
    #[test]
    fn live_book_always_matches_the_truths_top_of_book() {
        use std::collections::BTreeMap;
        let qtys = [0u64, 0, 1, 7, 10, 123456, 100_000_000, 250_000_000];
        let mut rng = Rng(0x0c7a_c0de);
        for _ in 0..300 {
            let (pdec, qdec) = (rng.below(5) as u32, rng.below(9) as u32);
            let depth = *rng.pick(&[10usize, 25]);
            let mut truth: [BTreeMap<u64, u64>; 2] = [BTreeMap::new(), BTreeMap::new()];
            let sorted = |t: &[BTreeMap<u64, u64>; 2]| {
                let bids: Vec<(u64, u64)> = t[0].iter().rev().map(|(&p, &q)| (p, q)).collect();
                let asks: Vec<(u64, u64)> = t[1].iter().map(|(&p, &q)| (p, q)).collect();
                (bids, asks)
            };
            let to_levels = |levels: &[(u64, u64)]| -> Vec<Level> {
                levels
                    .iter()
                    .map(|&(p, q)| (d(&fixed_text(p, pdec)), d(&fixed_text(q, qdec))))
                    .collect()
            };
            let snapshot = |t: &[BTreeMap<u64, u64>; 2]| {
                let (bids, asks) = sorted(t);
                BookSnapshot {
                    exchange: "kraken".into(),
                    symbol: "X/Y".into(),
                    last_id: 0,
                    receive_time_ns: 0,
                    bids: to_levels(&bids[..bids.len().min(depth)]),
                    asks: to_levels(&asks[..asks.len().min(depth)]),
                    event_time_ms: 0,
                    checksum: Some(sim_checksum(&bids, &asks)),
                }
            };
            let mut engine = SyncedBook::new_kraken(5000, 10, Some(depth)).unwrap();
            engine.on_snapshot(&snapshot(&truth));
            for _ in 0..rng.below(51) {
                let before = sorted(&truth);
                let mut changes: [Vec<(u64, u64)>; 2] = [vec![], vec![]];
                for _ in 0..1 + rng.below(6) {
                    let side = rng.below(2);
                    let price = rng.below(40) as u64 + if side == 0 { 1 } else { 41 };
                    let qty = *rng.pick(&qtys);
                    if qty > 0 {
                        truth[side].insert(price, qty);
                    } else {
                        truth[side].remove(&price);
                    }
                    changes[side].push((price, qty));
                }
                let after = sorted(&truth);
                let bids = side_update(&changes[0], &before.0, &after.0, depth);
                let asks = side_update(&changes[1], &before.1, &after.1, depth);
                let act = rng.below(12); // 0..9 deliver, 10 drop, 11 resubscribe
                if act == 11 {
                    let out = engine.on_snapshot(&snapshot(&truth));
                    assert!(matches!(out, Outcome::Applied | Outcome::Resynced));
                } else if act < 10 && !(bids.is_empty() && asks.is_empty()) {
                    engine.on_delta(BookDelta {
                        exchange: "kraken".into(),
                        symbol: "X/Y".into(),
                        first_id: 0,
                        last_id: 0,
                        event_time_ms: 0,
                        receive_time_ns: 0,
                        bids: to_levels(&bids),
                        asks: to_levels(&asks),
                        checksum: Some(sim_checksum(&after.0, &after.1)),
                    });
                } else {
                    continue;
                }
                if engine.status == BookStatus::Live {
                    assert_eq!(engine.checksum(), sim_checksum(&after.0, &after.1));
                    let (top_bids, top_asks) = engine.book.top(10);
                    assert_eq!(top_bids, to_levels(&after.0[..after.0.len().min(10)]));
                    assert_eq!(top_asks, to_levels(&after.1[..after.1.len().min(10)]));
                    assert_eq!(
                        text_levels(&top_bids),
                        text_levels(&to_levels(&after.0[..after.0.len().min(10)]))
                    );
                    assert!(engine.book.bid_count() <= depth && engine.book.ask_count() <= depth);
                }
            }
            engine.on_snapshot(&snapshot(&truth));
            assert_eq!(engine.status, BookStatus::Live);
            let (bids, asks) = sorted(&truth);
            assert_eq!(engine.checksum(), sim_checksum(&bids, &asks));
        }
    }

    /// A rough timing: `cargo test --release --no-default-features -- --ignored --nocapture
    /// timing_of_kraken_updates`.
    #[test]
    #[ignore]
    fn timing_of_kraken_updates() {
        let bids: Vec<Level> = (0..25)
            .map(|i| (Dec::new(452_835 - i, 1), d("0.10000000")))
            .collect();
        let asks: Vec<Level> = (0..25)
            .map(|i| (Dec::new(452_836 + i, 1), d("1.54571953")))
            .collect();
        let snap = BookSnapshot {
            exchange: "kraken".into(),
            symbol: "X".into(),
            last_id: 0,
            receive_time_ns: 0,
            checksum: Some(book_checksum(&bids, &asks)),
            bids,
            asks,
            event_time_ms: 0,
        };
        let mut engine = SyncedBook::new("kraken", 5000, 10).unwrap();
        assert_eq!(engine.on_snapshot(&snap), Outcome::Resynced);
        let mut rng = Rng(7);
        let n = 1_000_000;
        let deltas: Vec<BookDelta> = (0..n)
            .map(|_| {
                let i = rng.below(25) as i64;
                let qty = Dec::new(1 + rng.below(100_000_000) as i64, 8);
                BookDelta {
                    exchange: "kraken".into(),
                    symbol: "X".into(),
                    first_id: 0,
                    last_id: 0,
                    event_time_ms: 0,
                    receive_time_ns: 0,
                    bids: vec![(Dec::new(452_835 - i, 1), qty)],
                    asks: vec![],
                    checksum: None,
                }
            })
            .collect();
        let start = std::time::Instant::now();
        let mut sum = 0u64;
        for delta in deltas {
            engine.on_delta(delta);
            sum += engine.checksum() as u64; // what verifying a checksum costs
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        eprintln!("kraken on_delta + checksum: {ns:.0} ns ({sum})");
    }
}
