//! Binance spot book synchronisation rules (the Rust twin of `jobs/book/binance.py`).
//!
//! 1. buffer diff events until a REST snapshot arrives;
//! 2. drop buffered events with `u <= lastUpdateId`; the first kept one must have
//!    `U <= lastUpdateId + 1 <= u`;
//! 3. then for each event: `u <= local` -> ignore; `U > local + 1` -> gap: discard the book
//!    and wait for a new snapshot; else apply each level, local = `u`.

use std::collections::VecDeque;

use crate::book::engine::{Outcome, SyncedBook};
use crate::events::{BookDelta, BookSnapshot, BookStatus};

/// What `_apply` did; `Gap` leaves the buffer to the caller (Python sets `[delta]`).
enum Step {
    Applied,
    Ignored,
    Gap,
    /// an update id no sequence reaches (`implausible_jump`): a gap, and the update dropped
    Implausible,
}

impl SyncedBook {
    pub(crate) fn binance_on_delta(&mut self, delta: BookDelta) -> Outcome {
        if self.status != BookStatus::Live {
            return self.buffer_delta(delta);
        }
        match self.binance_apply(&delta) {
            Step::Applied => Outcome::Applied,
            Step::Ignored => Outcome::Ignored,
            Step::Gap => {
                self.buffer.clear();
                self.buffer.push_back(delta);
                Outcome::Gap
            }
            Step::Implausible => {
                self.buffer.clear();
                Outcome::Gap
            }
        }
    }

    fn binance_apply(&mut self, delta: &BookDelta) -> Step {
        if let Some(reason) = self.implausible_jump(delta.last_id) {
            self.lose_sync(reason);
            return Step::Implausible;
        }
        if delta.last_id <= self.last_id {
            return Step::Ignored;
        }
        // i128: Python ints do not overflow
        let expected = self.last_id as i128 + 1;
        if delta.first_id as i128 > expected {
            self.lose_sync(format!(
                "gap: expected update {}, got U={}",
                expected, delta.first_id
            ));
            return Step::Gap;
        }
        self.apply_levels(delta);
        self.last_id = delta.last_id;
        self.applied += 1;
        Step::Applied
    }

    pub(crate) fn binance_on_snapshot(&mut self, snap: &BookSnapshot) -> Outcome {
        if self.status == BookStatus::Live {
            if snap.last_id <= self.last_id {
                return Outcome::Ignored; // our continuous stream is already past it
            }
            self.book.load(&snap.bids, &snap.asks);
            self.last_id = snap.last_id;
            self.rebuilt(snap);
            return Outcome::Applied;
        }
        // pending: the buffered updates newer than the snapshot (kept in place)
        self.buffer.retain(|d| d.last_id > snap.last_id);
        if let Some(first) = self.buffer.front() {
            if first.first_id as i128 > snap.last_id as i128 + 1 {
                self.reason = format!(
                    "snapshot lastUpdateId={} ends before buffered U={}",
                    snap.last_id, first.first_id
                );
                return Outcome::SnapshotTooOld;
            }
        }
        let mut pending: VecDeque<BookDelta> = std::mem::take(&mut self.buffer);
        self.book.load(&snap.bids, &snap.asks);
        self.last_id = snap.last_id;
        self.rebuilt(snap);
        self.status = BookStatus::Live;
        self.reason.clear();
        for i in 0..pending.len() {
            match self.binance_apply(&pending[i]) {
                Step::Gap => {
                    // the gap's delta and everything after it wait for the next snapshot
                    pending.drain(..i);
                    self.buffer = pending;
                    return Outcome::Gap;
                }
                Step::Implausible => {
                    pending.drain(..=i);
                    self.buffer = pending;
                    return Outcome::Gap;
                }
                Step::Applied | Step::Ignored => {}
            }
        }
        Outcome::Resynced
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // Ok(snapshot) / Err(delta): test plumbing
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;
    use crate::book::test_util::*;
    use crate::dec::Dec;
    use crate::events::Level;

    fn levels(v: &Value) -> Vec<Level> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| (dec(&l[0]), dec(&l[1])))
            .collect()
    }

    /// A scenario step as the Binance parser makes it (channel "snapshot" or "depth").
    fn step_event(channel: &str, frame: &Value, seq: usize) -> Result<BookSnapshot, BookDelta> {
        if channel == "snapshot" {
            return Ok(BookSnapshot {
                exchange: "binance".into(),
                symbol: "BNBBTC".into(),
                last_id: int(&frame["lastUpdateId"]),
                receive_time_ns: receive_ns(seq),
                bids: levels(&frame["bids"]),
                asks: levels(&frame["asks"]),
                event_time_ms: 0,
                checksum: None,
            });
        }
        let data = if frame.get("data").is_some() {
            &frame["data"]
        } else {
            frame
        };
        Err(BookDelta {
            exchange: "binance".into(),
            symbol: "BNBBTC".into(),
            first_id: int(&data["U"]),
            last_id: int(&data["u"]),
            event_time_ms: int(&data["E"]),
            receive_time_ns: receive_ns(seq),
            bids: levels(&data["b"]),
            asks: levels(&data["a"]),
            checksum: None,
        })
    }

    /// test_binance_sync.py::test_sync_scenario, on every recorded scenario.
    #[test]
    fn sync_scenarios() {
        let names = scenarios("binance");
        assert!(names.len() >= 6, "{names:?}");
        for name in names {
            let scenario = fixture(&format!("binance/{name}"));
            let mut engine = SyncedBook::new("binance", 1000, 100).unwrap();
            for (seq, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
                match step_event(step["channel"].as_str().unwrap(), &step["frame"], seq) {
                    Ok(snap) => engine.on_snapshot(&snap),
                    Err(delta) => engine.on_delta(delta),
                };
            }
            let expected = &scenario["expected"];
            assert_eq!(
                engine.status,
                status(expected["status"].as_str().unwrap()),
                "{name}"
            );
            assert_eq!(engine.last_id, int(&expected["last_id"]), "{name}");
            let (bids, asks) = if engine.status == BookStatus::Live {
                engine.book.top(10)
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
                assert!(!engine.reason.is_empty(), "{name}");
            }
        }
    }

    fn delta(first: i64, last: i64, bids: &[(&str, &str)]) -> BookDelta {
        BookDelta {
            exchange: "binance".into(),
            symbol: "X".into(),
            first_id: first,
            last_id: last,
            event_time_ms: 0,
            receive_time_ns: 0,
            bids: bids.iter().map(|(p, s)| (d(p), d(s))).collect(),
            asks: vec![],
            checksum: None,
        }
    }

    fn snapshot(last_id: i64, receive_time_ns: i64) -> BookSnapshot {
        BookSnapshot {
            exchange: "binance".into(),
            symbol: "X".into(),
            last_id,
            receive_time_ns,
            bids: vec![(d("1"), d("1"))],
            asks: vec![(d("2"), d("1"))],
            event_time_ms: 0,
            checksum: None,
        }
    }

    #[test]
    fn outcomes_reasons_and_versions() {
        let mut engine = SyncedBook::new("binance", 100, 2).unwrap();
        assert_eq!(
            (engine.status, engine.reason.as_str()),
            (BookStatus::Resyncing, "awaiting snapshot")
        );
        assert!(SyncedBook::new("bitstamp", 1, 1).is_none());
        for i in 0..3 {
            assert_eq!(
                engine.on_delta(delta(10 + i, 10 + i, &[])),
                Outcome::Buffered
            );
        }
        assert_eq!(engine.buffer.len(), 2);
        assert_eq!(
            engine.reason,
            "buffer overflow (2 updates) awaiting snapshot"
        );
        // the oldest (10) was dropped: a snapshot at 9 cannot bridge to 11
        let out = engine.on_snapshot(&snapshot(9, 5_000_000));
        assert_eq!(out, Outcome::SnapshotTooOld);
        assert!(out.needs_resync());
        assert_eq!(
            engine.reason,
            "snapshot lastUpdateId=9 ends before buffered U=11"
        );
        assert_eq!(
            engine.on_snapshot(&snapshot(10, 5_000_000)),
            Outcome::Resynced
        );
        assert_eq!((engine.last_id, engine.version()), (12, 5_000_002));
        assert_eq!(engine.on_delta(delta(12, 12, &[])), Outcome::Ignored);
        assert_eq!(
            engine.on_delta(delta(13, 14, &[("1", "0")])),
            Outcome::Applied
        );
        assert_eq!(engine.book.best_bid(), None);
        assert_eq!(engine.on_delta(delta(16, 16, &[])), Outcome::Gap);
        assert_eq!(engine.reason, "gap: expected update 15, got U=16");
        assert_eq!(
            (engine.status, engine.book.len(), engine.buffer.len()),
            (BookStatus::Resyncing, 0, 1)
        );
        assert_eq!(engine.version(), 5_000_004);
        // an old snapshot cannot move the epoch back
        assert_eq!(engine.on_snapshot(&snapshot(15, 0)), Outcome::Resynced);
        assert_eq!(
            (engine.epoch_ms, engine.applied, engine.last_id),
            (6, 1, 16)
        );
        assert_eq!(engine.on_snapshot(&snapshot(16, 0)), Outcome::Ignored);
        assert_eq!(engine.on_snapshot(&snapshot(17, 0)), Outcome::Applied);
        assert_eq!((engine.epoch_ms, engine.applied), (7, 0));
        let lost = crate::events::SyncLost {
            exchange: "binance".into(),
            symbol: "X".into(),
            reason: "connection lost".into(),
            receive_time_ns: 0,
        };
        assert_eq!(engine.on_sync_lost(&lost), Outcome::Gap);
        assert_eq!(engine.reason, "connector: connection lost");
    }

    #[test]
    fn gap_while_replaying_the_buffer_keeps_the_rest() {
        let mut engine = SyncedBook::new("binance", 100, 100).unwrap();
        engine.on_delta(delta(5, 6, &[("1", "5")]));
        engine.on_delta(delta(7, 8, &[]));
        engine.on_delta(delta(10, 10, &[]));
        engine.on_delta(delta(11, 11, &[]));
        assert_eq!(engine.on_snapshot(&snapshot(5, 0)), Outcome::Gap);
        assert_eq!(engine.reason, "gap: expected update 9, got U=10");
        assert_eq!(
            engine.buffer.iter().map(|d| d.first_id).collect::<Vec<_>>(),
            vec![10, 11]
        );
        assert_eq!(
            (engine.last_id, engine.applied, engine.book.len()),
            (8, 3, 0)
        );
    }

    fn truth_levels(truth: &BTreeMap<Dec, Dec>, bids: bool) -> Vec<Level> {
        let mut v: Vec<Level> = truth.iter().map(|(&p, &s)| (p, s)).collect();
        if bids {
            v.reverse();
        }
        v
    }

    /// test_book_properties.py::test_live_book_always_equals_truth
    #[test]
    fn live_book_always_equals_truth() {
        let prices: Vec<Dec> = (0..40).map(|i| d(&format!("100.{i:02}"))).collect();
        let sizes: Vec<Dec> = ["0", "0.5", "1.25", "3"].iter().map(|s| d(s)).collect();
        let actions = [
            "deliver",
            "deliver",
            "deliver",
            "deliver",
            "deliver",
            "deliver",
            "deliver",
            "deliver",
            "drop",
            "dup",
            "snapshot",
            "old_snapshot",
        ];
        let mut rng = Rng(0x00b1_a2ce);
        for _ in 0..300 {
            let start_id = 1 + rng.below(1_000_000_000) as i64;
            let mut truth: [BTreeMap<Dec, Dec>; 2] = [BTreeMap::new(), BTreeMap::new()];
            let mut history: BTreeMap<i64, (Vec<Level>, Vec<Level>)> = BTreeMap::new();
            let mut engine = SyncedBook::new("binance", 1000, 1000).unwrap();
            let mut last_id = start_id;
            let snap = |history: &BTreeMap<i64, (Vec<Level>, Vec<Level>)>, at: i64| {
                let (bids, asks) = history[&at].clone();
                BookSnapshot {
                    exchange: "binance".into(),
                    symbol: "X".into(),
                    last_id: at,
                    receive_time_ns: 0,
                    bids,
                    asks,
                    event_time_ms: 0,
                    checksum: None,
                }
            };
            history.insert(last_id, (vec![], vec![]));
            for _ in 0..1 + rng.below(60) {
                let n = 1 + rng.below(4);
                let first = last_id + 1;
                let (mut bids, mut asks) = (vec![], vec![]);
                for _ in 0..n {
                    let side = rng.below(2);
                    // an exchange's book never crosses: bids below 100.20, asks from it
                    let (price, size) = (prices[side * 20 + rng.below(20)], *rng.pick(&sizes));
                    if size.is_zero() {
                        truth[side].remove(&price);
                    } else {
                        truth[side].insert(price, size);
                    }
                    if side == 0 {
                        bids.push((price, size))
                    } else {
                        asks.push((price, size))
                    }
                }
                last_id = first + n as i64 - 1;
                history.insert(
                    last_id,
                    (
                        truth_levels(&truth[0], true),
                        truth_levels(&truth[1], false),
                    ),
                );
                let delta = BookDelta {
                    exchange: "binance".into(),
                    symbol: "X".into(),
                    first_id: first,
                    last_id,
                    event_time_ms: 0,
                    receive_time_ns: 0,
                    bids,
                    asks,
                    checksum: None,
                };
                let act = *rng.pick(&actions);
                if act != "drop" {
                    engine.on_delta(delta.clone());
                    if act == "dup" {
                        engine.on_delta(delta);
                    }
                }
                if act == "snapshot" {
                    engine.on_snapshot(&snap(&history, last_id));
                } else if act == "old_snapshot" {
                    engine.on_snapshot(&snap(&history, start_id));
                }
                if engine.status == BookStatus::Live {
                    let (bids, asks) = engine.book.top(usize::MAX);
                    assert_eq!((bids, asks), history[&engine.last_id]);
                }
            }
            engine.on_snapshot(&snap(&history, last_id));
            assert_eq!(engine.status, BookStatus::Live);
            assert_eq!(engine.book.top(usize::MAX), history[&last_id]);
        }
    }
}
