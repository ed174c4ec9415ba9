//! Pure book engines: exact levels and each exchange's documented sync rules (the Rust twin
//! of `jobs/book`).

pub mod binance;
pub mod coinbase;
pub mod engine;
pub mod kraken;
pub mod levels;

pub use engine::{Exchange, Outcome, SyncedBook};
pub use levels::{BookSide, OrderBook};

/// The exchanges with a book engine (`jobs.book.ENGINES`).
pub const ENGINES: [&str; 3] = ["binance", "coinbase", "kraken"];

#[cfg(test)]
pub(crate) mod test_util {
    //! Test helpers: recorded fixture frames read with numbers kept as their exact text.

    use serde_json::Value;

    use crate::dec::{parse_dec, Dec};
    use crate::events::{BookStatus, Level};

    pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

    /// JSON with every number turned into a string of its exact text (Kraken sends prices as
    /// JSON numbers; serde_json would read them as floats).
    pub fn parse_json_exact(text: &str) -> Value {
        let mut out = String::with_capacity(text.len() + 64);
        let mut in_string = false;
        let mut escaped = false;
        let mut in_number = false;
        for c in text.chars() {
            if in_string {
                out.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                continue;
            }
            let numeric = c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E');
            if in_number && !numeric {
                out.push('"');
                in_number = false;
            }
            if !in_number && (c.is_ascii_digit() || c == '-') {
                out.push('"');
                in_number = true;
            }
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
        if in_number {
            out.push('"');
        }
        serde_json::from_str(&out).expect("fixture JSON")
    }

    pub fn fixture(path: &str) -> Value {
        let full = format!("{FIXTURES}/{path}");
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        parse_json_exact(&text)
    }

    /// Sorted `sync_*.json` scenario file names of an exchange.
    pub fn scenarios(exchange: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{FIXTURES}/{exchange}"))
            .expect("fixtures dir")
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("sync_") && n.ends_with(".json"))
            .collect();
        names.sort();
        names
    }

    pub fn dec(v: &Value) -> Dec {
        parse_dec(v.as_str().expect("decimal text")).expect("decimal")
    }

    pub fn int(v: &Value) -> i64 {
        v.as_str().expect("integer text").parse().expect("integer")
    }

    pub fn d(text: &str) -> Dec {
        parse_dec(text).unwrap()
    }

    pub fn status(text: &str) -> BookStatus {
        match text {
            "LIVE" => BookStatus::Live,
            "RESYNCING" => BookStatus::Resyncing,
            "STALE" => BookStatus::Stale,
            other => panic!("status {other}"),
        }
    }

    /// `[[price, size], ...]` text pairs.
    pub fn text_levels(levels: &[Level]) -> Vec<Vec<String>> {
        levels
            .iter()
            .map(|(p, s)| vec![p.to_string(), s.to_string()])
            .collect()
    }

    pub fn expected_levels(v: &Value) -> Vec<Vec<String>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }

    /// A small deterministic PRNG (xorshift64*) for the property tests.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// The scenario test's receive time for step `seq` (as the Python tests' envelopes).
    pub fn receive_ns(seq: usize) -> i64 {
        1_700_000_000_000_000_000 + seq as i64
    }
}

/// Differential check against the Python engines: set `TICKFLOW_BOOK_DIFF` to a directory of
/// `*.jsonl` files (a config line, then one `{"ev": event, "exp": Python state}` per event,
/// written by a generator script that runs `jobs.book`); without it the test does nothing.
#[cfg(test)]
mod differential {
    use serde_json::Value;

    use super::test_util::d;
    use super::*;
    use crate::dec::Dec;
    use crate::events::{BookDelta, BookSnapshot, Level, SyncLost};

    fn levels(v: &Value) -> Vec<Level> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| (d(l[0].as_str().unwrap()), d(l[1].as_str().unwrap())))
            .collect()
    }

    fn texts(levels: &[Level]) -> Value {
        Value::from(
            levels
                .iter()
                .map(|(p, s)| vec![p.to_string(), s.to_string()])
                .collect::<Vec<_>>(),
        )
    }

    fn level(l: Option<Level>) -> Value {
        l.map_or(Value::Null, |(p, s)| {
            Value::from(vec![p.to_string(), s.to_string()])
        })
    }

    fn checksum(v: &Value) -> Option<u32> {
        v.as_u64().map(|c| c as u32)
    }

    fn run_file(path: &std::path::Path) -> usize {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let config: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        let exchange = config["exchange"].as_str().unwrap().to_string();
        let mut engine = SyncedBook::new(
            &exchange,
            config["max_levels"].as_u64().unwrap() as usize,
            config["max_buffered"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let bps = Dec::from(10);
        let mut count = 0;
        for (i, line) in lines.enumerate() {
            let row: Value = serde_json::from_str(line).unwrap();
            let ev = &row["ev"];
            let outcome = match ev["t"].as_str().unwrap() {
                "d" => engine.on_delta(BookDelta {
                    exchange: exchange.clone(),
                    symbol: "X".into(),
                    first_id: ev["f"].as_i64().unwrap(),
                    last_id: ev["l"].as_i64().unwrap(),
                    event_time_ms: 0,
                    receive_time_ns: ev["r"].as_i64().unwrap(),
                    bids: levels(&ev["b"]),
                    asks: levels(&ev["a"]),
                    checksum: checksum(&ev["c"]),
                }),
                "s" => engine.on_snapshot(&BookSnapshot {
                    exchange: exchange.clone(),
                    symbol: "X".into(),
                    last_id: ev["l"].as_i64().unwrap(),
                    receive_time_ns: ev["r"].as_i64().unwrap(),
                    bids: levels(&ev["b"]),
                    asks: levels(&ev["a"]),
                    event_time_ms: 0,
                    checksum: checksum(&ev["c"]),
                }),
                _ => engine.on_sync_lost(&SyncLost {
                    exchange: exchange.clone(),
                    symbol: "X".into(),
                    reason: ev["reason"].as_str().unwrap().into(),
                    receive_time_ns: ev["r"].as_i64().unwrap(),
                }),
            };
            let book = &engine.book;
            let (bids, asks) = book.top(10);
            let (db, da) = book.depth_within_bps(bps);
            let mut actual = serde_json::json!({
                "o": outcome.as_str(),
                "s": engine.status.as_str(),
                "r": engine.reason,
                "l": engine.last_id,
                "v": engine.version(),
                "b": texts(&bids),
                "a": texts(&asks),
                "bb": level(book.best_bid()),
                "ba": level(book.best_ask()),
                "m": book.mid().map_or(Value::Null, |m| Value::from(m.to_string())),
                "db": db.to_string(),
                "da": da.to_string(),
                "n": book.len(),
                "x": book.is_crossed(),
                "q": engine.buffer.len(),
            });
            if engine.exchange == Exchange::Kraken {
                actual["c"] = Value::from(engine.checksum());
            }
            assert_eq!(actual, row["exp"], "{} event {}: {}", path.display(), i, ev);
            count += 1;
        }
        count
    }

    #[test]
    fn matches_the_python_engines() {
        let Ok(dir) = std::env::var("TICKFLOW_BOOK_DIFF") else {
            return;
        };
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no .jsonl in {dir}");
        for path in paths {
            let n = run_file(&path);
            eprintln!("{}: {n} events agree", path.display());
        }
    }
}
