//! The books operator's logic over one raw-topic partition in offset order, without Flink:
//! the Rust twin of `jobs/batch.py`'s `PartitionBooks`, writing RowBinary rows per table.
//!
//! Event time is the Kafka record timestamp; the watermark is the partition's bounded-out-of-
//! orderness watermark, advanced per record, and event-time timers fire as the job's do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::as_of::BookAt;
use crate::envelope::{decode_envelope, envelope_instrument};
use crate::instrument::{InstrumentBooks, Outputs, Rules, END_OF_INPUT, NO_WATERMARK};
use crate::nbbo::{group_quote, nbbo_group};
use crate::rows::{RowError, TableRows, TABLES};
use crate::validate::Limits;

/// A record that goes to the dead-letter topic: why, its bytes, and whether its envelope
/// decoded (the caller then adds the envelope's fields to the letter).
pub struct DeadLetter {
    pub reason: String,
    pub value: Vec<u8>,
    pub envelope_ok: bool,
}

#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub frames: u64,
    pub dead_letters: u64,
    pub rows: u64,
    pub late: u64,
    pub duplicate_trades: u64,
}

/// Which instruments (NBBO groups) of the partition this worker processes: `only` these, or
/// all but `others` (the others are processed by other workers; their records still move
/// the partition's watermark).
#[derive(Default, Clone)]
pub struct Selection {
    pub only: Vec<String>,
    pub others: Vec<String>,
}

pub struct PartitionBooks {
    rules: Rules,
    equivalents: Vec<(String, String)>,
    lag_ms: i64,
    latest_ms: i64,
    pub watermark_ms: i64,
    books: HashMap<String, InstrumentBooks>,
    // (event time, instrument): when an instrument's pending trades or bars come due; stale
    // entries are skipped when they surface
    timers: BinaryHeap<Reverse<(i64, String)>>,
    timer_of: HashMap<String, i64>,
    selection: Selection,
    selected: HashMap<String, bool>, // instrument -> processed here
    pub tables: Vec<TableRows>,      // in TABLES order
    pub dead_letters: Vec<DeadLetter>,
    pub counts: Counts,
    out: Outputs,
    /// what every frame must satisfy (`validate`)
    pub limits: Limits,
    /// false: no rows are written (a reconstruction reads a book's state, not rows)
    pub write_rows: bool,
    /// a reconstruction's stopping point: (exchange, symbol, exchange time ms)
    cutoff: Option<(String, String, i64)>,
}

impl PartitionBooks {
    pub fn new(
        rules: Rules,
        equivalents: Vec<(String, String)>,
        out_of_orderness_ms: i64,
        selection: Selection,
    ) -> Self {
        PartitionBooks {
            rules,
            equivalents,
            lag_ms: out_of_orderness_ms + 1,
            latest_ms: NO_WATERMARK,
            watermark_ms: NO_WATERMARK,
            books: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_of: HashMap::new(),
            selection,
            selected: HashMap::new(),
            tables: TABLES.iter().map(|_| TableRows::default()).collect(),
            dead_letters: Vec::new(),
            counts: Counts::default(),
            limits: Limits::default(),
            out: Outputs::default(),
            write_rows: true,
            cutoff: None,
        }
    }

    /// Stop applying one book at its first book event stamped later than `at_ms` (exchange
    /// time; see as_of.rs). Set before the first record.
    pub fn hold_book(&mut self, exchange: &str, symbol: &str, at_ms: i64) {
        self.cutoff = Some((exchange.to_string(), symbol.to_string(), at_ms));
        for books in self.books.values_mut() {
            books.set_cutoff(exchange, symbol, at_ms);
        }
    }

    /// Whether the held book met its first event later than its cutoff: later records
    /// cannot change it.
    pub fn halted(&self) -> bool {
        self.books.values().any(|b| b.halted())
    }

    /// A book's full state (every level kept), as of the cutoff when one was set.
    pub fn book_at(&self, exchange: &str, symbol: &str) -> Option<BookAt> {
        self.books
            .values()
            .find_map(|b| b.book_at(exchange, symbol))
            .map(BookAt::settled)
    }

    fn group(&self, instrument: &str) -> String {
        if self.equivalents.is_empty() {
            instrument.to_string()
        } else {
            nbbo_group(instrument, &self.equivalents)
        }
    }

    /// Whether this worker processes the record (an undecodable one: the remainder's worker).
    fn selects(&mut self, value: &[u8]) -> bool {
        if self.selection.only.is_empty() && self.selection.others.is_empty() {
            return true;
        }
        let instrument = match envelope_instrument(value) {
            Ok(instrument) => instrument,
            Err(_) => return self.selection.only.is_empty(),
        };
        if let Some(selected) = self.selected.get(instrument) {
            return *selected;
        }
        let group = self.group(instrument);
        let selected = if self.selection.only.is_empty() {
            !self.selection.others.contains(&group)
        } else {
            self.selection.only.contains(&group)
        };
        self.selected.insert(instrument.to_string(), selected);
        selected
    }

    /// One raw record (its Kafka value and timestamp), in offset order.
    pub fn feed(&mut self, value: &[u8], timestamp_ms: i64) {
        if self.selects(value) {
            self.counts.frames += 1;
            self.process(value);
        }
        self.tick(timestamp_ms);
    }

    /// A record's timestamp moves the watermark only after the record itself.
    fn tick(&mut self, timestamp_ms: i64) {
        if timestamp_ms > self.latest_ms {
            self.latest_ms = timestamp_ms;
            let watermark = timestamp_ms - self.lag_ms;
            if watermark > self.watermark_ms {
                self.watermark_ms = watermark;
                self.fire_timers();
            }
        }
    }

    fn schedule(&mut self, key: &str) {
        let Some(books) = self.books.get(key) else {
            return;
        };
        if let Some(due) = books.next_event_time_ms() {
            if due < *self.timer_of.get(key).unwrap_or(&END_OF_INPUT) {
                self.timer_of.insert(key.to_string(), due);
                self.timers.push(Reverse((due, key.to_string())));
            }
        }
    }

    /// What the job's event-time timers do once the watermark passes them.
    fn fire_timers(&mut self) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > self.watermark_ms {
                break;
            }
            let Reverse((due, key)) = self.timers.pop().unwrap();
            if self.timer_of.get(&key) != Some(&due) {
                continue; // superseded by an earlier one
            }
            self.timer_of.remove(&key);
            self.advance(&key, self.watermark_ms);
            self.schedule(&key);
        }
    }

    /// One instrument's books to a watermark, and the rows that makes final.
    fn advance(&mut self, key: &str, watermark_ms: i64) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let books = self
            .books
            .get_mut(key)
            .expect("an advanced instrument has books");
        let refused = match books.advance_guarded(watermark_ms, &mut out) {
            Ok(()) => self.take(&out, None),
            Err(panic) => vec![format!(
                "internal error advancing to {watermark_ms}: {panic}"
            )],
        };
        self.out = out;
        for reason in refused {
            self.counts.dead_letters += 1;
            // no frame to name: the letter carries the reason alone
            self.dead_letters.push(DeadLetter {
                reason: format!("{key}: {reason}"),
                value: Vec::new(),
                envelope_ok: false,
            });
        }
    }

    fn process(&mut self, value: &[u8]) {
        let env = match decode_envelope(value) {
            Ok(env) => env,
            Err(err) => {
                self.counts.dead_letters += 1;
                self.dead_letters.push(DeadLetter {
                    reason: err.0,
                    value: value.to_vec(),
                    envelope_ok: false,
                });
                return;
            }
        };
        let key = self.group(env.instrument);
        if !self.books.contains_key(&key) {
            let quote = group_quote(&key, &self.equivalents);
            let mut books = InstrumentBooks::new(&key, &quote, self.rules.clone());
            books.set_limits(self.limits);
            if let Some((exchange, symbol, at_ms)) = &self.cutoff {
                books.set_cutoff(exchange, symbol, *at_ms);
            }
            self.books.insert(key.clone(), books);
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let books = self.books.get_mut(&key).unwrap();
        let watermark_ms = self.watermark_ms;
        let result = books.process_guarded(&env, watermark_ms, &mut out);
        // a refused frame produced nothing, unless a caught panic discarded its book
        let mut refused = self.take(&out, Some(env.instrument));
        self.out = out;
        self.schedule(&key);
        if let Err(err) = result {
            refused.insert(0, err.0);
        }
        for reason in refused {
            self.counts.dead_letters += 1;
            self.dead_letters.push(DeadLetter {
                reason,
                value: value.to_vec(),
                envelope_ok: true,
            });
        }
    }

    /// Rows in the tables' buffers so far, all tables.
    fn rows_written(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Rows of what a frame (its own instrument given) or a watermark advance produced.
    fn take(&mut self, out: &Outputs, instrument: Option<&str>) -> Vec<String> {
        if !self.write_rows {
            return Vec::new();
        }
        let before = self.rows_written();
        let [trades, snapshots, tops, nbbo, matched, bars, late, gaps] = &mut self.tables[..]
        else {
            unreachable!("one TableRows per table")
        };
        let mut refused: Vec<String> = Vec::new();
        let mut row = |table: &str, result: Result<(), RowError>| {
            if let Err(err) = result {
                refused.push(format!("row of {table} refused: {}", err.0));
            }
        };
        if let Some(instrument) = instrument {
            for trade in &out.trades {
                row("trades", trades.trade(trade, instrument, true));
            }
            for trade in &out.late_trades {
                row("trades", trades.trade(trade, instrument, false));
            }
            for view in &out.snapshots {
                row("book_snapshots", snapshots.snapshot(view));
            }
            for view in &out.top_changes {
                row("top_of_book", tops.top_of_book(view));
            }
        }
        for update in &out.nbbo {
            row("nbbo", nbbo.nbbo(update));
        }
        for m in &out.matched {
            row("matched_trades", matched.matched(m));
        }
        for bar in &out.bars {
            row("bars", bars.bar(bar));
        }
        for event in &out.late {
            row("late_events", late.late(event));
        }
        for gap in &out.gap_rows {
            row("gaps", gaps.gap(gap));
        }
        self.counts.rows += self.rows_written() - before;
        self.counts.late += out.late.len() as u64;
        self.counts.duplicate_trades += out.duplicate_trades;
        refused
    }

    /// The input ended: what the job's last watermark makes final.
    pub fn finish(&mut self) {
        self.watermark_ms = END_OF_INPUT;
        let mut keys: Vec<String> = self.books.keys().cloned().collect();
        keys.sort();
        for key in keys {
            self.advance(&key, END_OF_INPUT);
        }
        self.timers.clear();
        self.timer_of.clear();
    }
}
