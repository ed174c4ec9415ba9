//! Coinbase Advanced Trade level2 book rules (the Rust twin of `jobs/book/coinbase.py`).
//!
//! - before the first snapshot (or after a loss of sync) updates are buffered, and dropped
//!   when the snapshot arrives: it is complete and newer than all of them;
//! - a snapshot always replaces the book (a new connection numbers from 0 again);
//! - when LIVE, updates are applied; one older than the book's `sequence_num` is ignored, and
//!   so is one of the same `sequence_num` unless it follows that message's snapshot (a message
//!   delivered twice: applied again it would leave the levels as they were but move the
//!   book's version one ahead of a run that met it once).
//!
//! Gaps are seen by the connector, which sends `sync_lost` (handled by the shared engine).

use crate::book::engine::{Outcome, SyncedBook};
use crate::events::{BookDelta, BookSnapshot, BookStatus};

impl SyncedBook {
    pub(crate) fn coinbase_on_delta(&mut self, delta: BookDelta) -> Outcome {
        if self.status != BookStatus::Live {
            return self.buffer_delta(delta);
        }
        // equal: more update events of the message that carried the snapshot
        if let Some(reason) = self.implausible_jump(delta.last_id) {
            self.lose_sync(reason);
            return Outcome::Gap;
        }
        // `applied` is 0 only right after a snapshot (it counts the updates since)
        if delta.last_id < self.last_id || (delta.last_id == self.last_id && self.applied > 0) {
            return Outcome::Ignored;
        }
        self.apply_levels(&delta);
        self.last_id = delta.last_id;
        self.applied += 1;
        Outcome::Applied
    }

    pub(crate) fn coinbase_on_snapshot(&mut self, snap: &BookSnapshot) -> Outcome {
        let was_live = self.status == BookStatus::Live;
        self.book.load(&snap.bids, &snap.asks);
        self.last_id = snap.last_id;
        self.rebuilt(snap);
        // buffered updates are older than this complete snapshot
        self.status = BookStatus::Live;
        self.reason.clear();
        self.buffer.clear();
        if was_live {
            Outcome::Applied
        } else {
            Outcome::Resynced
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // Ok(snapshot) / Err(delta): test plumbing
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;
    use crate::book::engine::Outcome;
    use crate::book::test_util::*;
    use crate::dec::Dec;
    use crate::events::{Level, SyncLost};

    enum Event {
        Delta(BookDelta),
        Snapshot(BookSnapshot),
        Lost(SyncLost),
    }

    /// A scenario step as the Coinbase parser makes it: an `l2_data` message gives a snapshot
    /// per snapshot event and one delta for the update events after it (same sequence_num).
    fn step_events(channel: &str, frame: &Value, seq: usize) -> Vec<Event> {
        if channel == "sync_lost" {
            let mut reason = frame["reason"].as_str().unwrap().to_string();
            let details: Vec<String> = frame
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "reason")
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap()))
                .collect();
            if !details.is_empty() {
                reason += &format!(" ({})", details.join(", "));
            }
            return vec![Event::Lost(SyncLost {
                exchange: "coinbase".into(),
                symbol: "BTC-USD".into(),
                reason,
                receive_time_ns: receive_ns(seq),
            })];
        }
        let sequence = int(&frame["sequence_num"]);
        let sides = |updates: &[&Value]| {
            let (mut bids, mut asks): (Vec<Level>, Vec<Level>) = (vec![], vec![]);
            for u in updates {
                let level = (dec(&u["price_level"]), dec(&u["new_quantity"]));
                if u["side"] == "bid" {
                    bids.push(level)
                } else {
                    asks.push(level)
                }
            }
            (bids, asks)
        };
        let mut out = vec![];
        let mut pending: Vec<&Value> = vec![];
        let flush = |pending: &mut Vec<&Value>, out: &mut Vec<Event>| {
            if !pending.is_empty() {
                let (bids, asks) = sides(pending);
                out.push(Event::Delta(BookDelta {
                    exchange: "coinbase".into(),
                    symbol: "BTC-USD".into(),
                    first_id: sequence,
                    last_id: sequence,
                    event_time_ms: 0,
                    receive_time_ns: receive_ns(seq),
                    bids,
                    asks,
                    checksum: None,
                }));
                pending.clear();
            }
        };
        for event in frame["events"].as_array().unwrap() {
            let updates = event["updates"].as_array().unwrap();
            if event["type"] == "update" {
                pending.extend(updates.iter());
                continue;
            }
            flush(&mut pending, &mut out);
            let (bids, asks) = sides(&updates.iter().collect::<Vec<_>>());
            out.push(Event::Snapshot(BookSnapshot {
                exchange: "coinbase".into(),
                symbol: "BTC-USD".into(),
                last_id: sequence,
                receive_time_ns: receive_ns(seq),
                bids,
                asks,
                event_time_ms: 0,
                checksum: None,
            }));
        }
        flush(&mut pending, &mut out);
        out
    }

    fn feed(engine: &mut SyncedBook, event: Event) -> Outcome {
        match event {
            Event::Delta(d) => engine.on_delta(d),
            Event::Snapshot(s) => engine.on_snapshot(&s),
            Event::Lost(l) => engine.on_sync_lost(&l),
        }
    }

    /// test_coinbase_sync.py::test_sync_scenario, on every recorded scenario.
    #[test]
    fn sync_scenarios() {
        let names = scenarios("coinbase");
        assert!(names.len() >= 6, "{names:?}");
        for name in names {
            let scenario = fixture(&format!("coinbase/{name}"));
            let mut engine = SyncedBook::new("coinbase", 1000, 100).unwrap();
            for (seq, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
                for event in step_events(step["channel"].as_str().unwrap(), &step["frame"], seq) {
                    feed(&mut engine, event);
                }
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

    /// test_coinbase_sync.py::test_outcomes_versions_and_resync_request, on the engine.
    #[test]
    fn outcomes_versions_and_sync_lost_reason() {
        let mut engine = SyncedBook::new("coinbase", 1000, 100).unwrap();
        let update = fixture("coinbase/doc_l2_update.json");
        let snapshot = fixture("coinbase/doc_l2_snapshot.json");
        let mut outs = vec![];
        for (seq, frame) in [&update, &snapshot, &update].into_iter().enumerate() {
            for event in step_events("depth", frame, seq) {
                outs.push((feed(&mut engine, event), engine.version()));
            }
        }
        assert_eq!(outs[0].0, Outcome::Buffered);
        assert_eq!(outs[1].0, Outcome::Resynced);
        assert_eq!(outs[2], (Outcome::Applied, outs[1].1 + 1));
        assert_eq!(outs[1].1, 1_700_000_000_000 * 1_000_000);
        let lost = step_events(
            "sync_lost",
            &parse_json_exact(r#"{"reason":"sequence_num gap","expected":3,"got":5}"#),
            3,
        );
        for event in lost {
            let out = feed(&mut engine, event);
            assert!(out.needs_resync());
        }
        assert_eq!(engine.status, BookStatus::Resyncing);
        assert_eq!(
            engine.reason,
            "connector: sequence_num gap (expected 3, got 5)"
        );
        assert_eq!(engine.version(), outs[2].1 + 1);
    }

    /// test_coinbase_sync.py::test_engine_outcomes
    #[test]
    fn engine_outcomes() {
        let mut engine = SyncedBook::new("coinbase", 100, 2).unwrap();
        let level = vec![(d("1"), d("2"))];
        let ask_level = vec![(d("1.5"), d("2"))];
        let delta = |id: i64| BookDelta {
            exchange: "coinbase".into(),
            symbol: "X".into(),
            first_id: id,
            last_id: id,
            event_time_ms: 0,
            receive_time_ns: 0,
            bids: level.clone(),
            asks: vec![],
            checksum: None,
        };
        let snap = |id: i64, t: i64, asks: Vec<Level>| BookSnapshot {
            exchange: "coinbase".into(),
            symbol: "X".into(),
            last_id: id,
            receive_time_ns: t,
            bids: vec![],
            asks,
            event_time_ms: 0,
            checksum: None,
        };
        assert_eq!(engine.on_delta(delta(5)), Outcome::Buffered);
        for _ in 0..3 {
            engine.on_delta(delta(5));
        }
        assert!(engine.buffer.len() == 2 && engine.reason.contains("overflow"));
        assert_eq!(
            engine.on_snapshot(&snap(7, 1_000_000, ask_level.clone())),
            Outcome::Resynced
        );
        assert!(engine.buffer.is_empty() && engine.status == BookStatus::Live);
        assert_eq!(engine.on_delta(delta(5)), Outcome::Ignored);
        // the update events of the snapshot's own message, once
        assert_eq!(engine.on_delta(delta(7)), Outcome::Applied);
        assert_eq!(engine.on_delta(delta(7)), Outcome::Ignored);
        assert_eq!(engine.on_delta(delta(9)), Outcome::Applied);
        // a message delivered twice in a row: the version moves once
        let version = engine.version();
        assert_eq!(engine.on_delta(delta(9)), Outcome::Ignored);
        assert_eq!(engine.version(), version);
        assert_eq!(
            engine.on_snapshot(&snap(1, 2_000_000, vec![])),
            Outcome::Applied
        );
        assert_eq!(
            (engine.last_id, engine.applied, engine.book.len()),
            (1, 0, 0)
        );
    }

    fn levels(truth: &BTreeMap<Dec, Dec>, bids: bool) -> Vec<Level> {
        let mut v: Vec<Level> = truth.iter().map(|(&p, &s)| (p, s)).collect();
        if bids {
            v.reverse();
        }
        v
    }

    /// test_coinbase_book_properties.py::test_live_book_always_equals_truth
    #[test]
    fn live_book_always_equals_truth() {
        let prices: Vec<Dec> = (0..40).map(|i| d(&format!("100.{i:02}"))).collect();
        let sizes: Vec<Dec> = ["0", "0.5", "1.25", "3"].iter().map(|s| d(s)).collect();
        let fates = [
            "deliver", "deliver", "deliver", "deliver", "deliver", "deliver", "drop", "dup",
        ];
        let lost = || SyncLost {
            exchange: "coinbase".into(),
            symbol: "X".into(),
            reason: "sequence_num gap".into(),
            receive_time_ns: 0,
        };
        let mut rng = Rng(0xc0ff_ee11);
        for _ in 0..300 {
            let mut truth: [BTreeMap<Dec, Dec>; 2] = [BTreeMap::new(), BTreeMap::new()];
            let mut engine = SyncedBook::new("coinbase", 1000, 1000).unwrap();
            let mut seq: i64 = 0;
            let mut gap = false;
            let snapshot = |truth: &[BTreeMap<Dec, Dec>; 2], seq: i64| BookSnapshot {
                exchange: "coinbase".into(),
                symbol: "X".into(),
                last_id: seq,
                receive_time_ns: 0,
                bids: levels(&truth[0], true),
                asks: levels(&truth[1], false),
                event_time_ms: 0,
                checksum: None,
            };
            let feed = |engine: &mut SyncedBook,
                        gap: &mut bool,
                        truth: &[BTreeMap<Dec, Dec>; 2],
                        event: Result<BookSnapshot, BookDelta>| {
                if *gap {
                    engine.on_sync_lost(&lost());
                    *gap = false;
                }
                match event {
                    Ok(s) => engine.on_snapshot(&s),
                    Err(d) => engine.on_delta(d),
                };
                if engine.status == BookStatus::Live {
                    assert_eq!(
                        engine.book.top(usize::MAX),
                        (levels(&truth[0], true), levels(&truth[1], false))
                    );
                }
            };
            feed(&mut engine, &mut gap, &truth, Ok(snapshot(&truth, seq)));
            for _ in 0..1 + rng.below(60) {
                match rng.below(6) {
                    0..=2 => {
                        seq += 1;
                        let (mut bids, mut asks) = (vec![], vec![]);
                        for _ in 0..1 + rng.below(4) {
                            let side = rng.below(2);
                            // an exchange's book never crosses: bids below 100.20, asks from it
                            let (price, size) =
                                (prices[side * 20 + rng.below(20)], *rng.pick(&sizes));
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
                        let delta = BookDelta {
                            exchange: "coinbase".into(),
                            symbol: "X".into(),
                            first_id: seq,
                            last_id: seq,
                            event_time_ms: 0,
                            receive_time_ns: 0,
                            bids,
                            asks,
                            checksum: None,
                        };
                        match *rng.pick(&fates) {
                            "drop" => gap = true,
                            "dup" => {
                                feed(&mut engine, &mut gap, &truth, Err(delta.clone()));
                                feed(&mut engine, &mut gap, &truth, Err(delta));
                            }
                            _ => feed(&mut engine, &mut gap, &truth, Err(delta)),
                        }
                    }
                    3 => {
                        seq += 1 + rng.below(5) as i64; // other products' messages
                        if gap {
                            engine.on_sync_lost(&lost());
                            gap = false;
                        }
                    }
                    4 => {
                        seq += 1; // resubscribe
                        feed(&mut engine, &mut gap, &truth, Ok(snapshot(&truth, seq)));
                    }
                    _ => {
                        seq = 0; // reconnect: numbering restarts, snapshot first
                        gap = false;
                        feed(&mut engine, &mut gap, &truth, Ok(snapshot(&truth, seq)));
                    }
                }
            }
            seq += 1;
            feed(&mut engine, &mut gap, &truth, Ok(snapshot(&truth, seq)));
            assert_eq!(engine.status, BookStatus::Live);
        }
    }
}
