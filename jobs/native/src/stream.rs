//! The live job's core: what the streaming operator does with a bundle of raw frames of one
//! instrument (an NBBO group), with its timers, and what it publishes. Pure, no I/O: the
//! operator hands in bundles, watermarks and the clock, and takes out one sink blob per call
//! (ClickHouse rows and Kafka records, already encoded), the conflated Redis writes and each
//! instrument's state as bytes for Flink's keyed state.
//!
//! Frame bundle v1 (from the JVM bundler, little-endian): `u8 version = 1`, `u8 flags` (bit 0:
//! a checkpoint barrier follows, so the state must be persisted), then per frame `i64
//! timestamp_ms`, `u32 length`, the raw Kafka value.
//!
//! Sink blob v1 (to the JVM sinks): `u8 version = 1`, then sections `u8 kind`, `u16 name_len`,
//! name, `u32 count`, `u32 payload_len`, payload. Kind 1: ClickHouse rows of table `name`
//! (RowBinary); kind 2: Kafka records of output `name`, each `u32 len` + UTF-8 JSON.

use std::collections::HashMap;
use std::rc::Rc;

use crate::envelope::decode_envelope;
use crate::instrument::{BookView, InstrumentBooks, NbboUpdate, Outputs, Rules};
use crate::nbbo::{group_quote, nbbo_group};
use crate::publish;
use crate::result_avro::ResultEncoder;
use crate::rows::{RowError, TableRows, TABLES};
use crate::validate::Limits;

pub const BUNDLE_VERSION: u8 = 1;
pub const BUNDLE_PERSIST: u8 = 1;
pub const BLOB_VERSION: u8 = 1;
const KIND_ROWS: u8 = 1;
const KIND_RECORDS: u8 = 2;

/// The Kafka outputs, in blob order: the exactly-once result topics, then dead letters and
/// resync requests.
pub const OUTPUTS: [&str; 6] = [
    "nbbo",
    "matched_trades",
    "bars",
    "top_of_book",
    "deadletter",
    "control",
];
const NBBO: usize = 0;
const MATCHED: usize = 1;
const BARS: usize = 2;
const TOP: usize = 3;
const DEADLETTER: usize = 4;
const CONTROL: usize = 5;

/// Settings beyond the core rules: processing-time housekeeping and Redis.
#[derive(Clone, Debug)]
pub struct LiveRules {
    pub stale_after_ms: i64,
    pub resync_retry_ms: i64,
    pub redis_prefix: String,
}

/// Counts for the job's metrics since the last `take_counts`.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub frames: u64,
    pub bundles: u64,
    pub dead_letters: u64,
    pub resync_requests: u64,
    pub gaps: u64,
    pub checksum_failures: u64,
    pub trades: u64,
    pub late: u64,
    pub duplicate_trades: u64,
    pub nbbo_updates: u64,
    pub matched: u64,
    pub bars: u64,
    pub book_updates: u64,
}

/// A Redis write waiting to go out: the last view of a book or the last NBBO of an
/// instrument (conflated: an older one queued for the same key is replaced).
enum RedisWrite {
    Book(Rc<BookView>),
    Nbbo(Box<NbboUpdate>),
}

impl RedisWrite {
    /// Whether this write goes to the key of the book `(exchange, symbol)`, or of the NBBO of
    /// the instrument `exchange` when `nbbo`.
    fn slot(&self) -> (bool, String, String) {
        match self {
            RedisWrite::Book(view) => (false, view.exchange.clone(), view.symbol.clone()),
            RedisWrite::Nbbo(update) => (true, update.nbbo.instrument.clone(), String::new()),
        }
    }

    fn same_key(&self, nbbo: bool, exchange: &str, symbol: &str) -> bool {
        match self {
            RedisWrite::Book(view) => !nbbo && view.exchange == exchange && view.symbol == symbol,
            RedisWrite::Nbbo(update) => nbbo && update.nbbo.instrument == exchange,
        }
    }
}

/// Queued Redis writes up to which finding a key's slot scans them rather than hashing.
const REDIS_SCAN: usize = 32;

#[derive(Default)]
struct Records {
    data: Vec<u8>,
    count: u32,
    /// the record being written (its allocation reused)
    scratch: String,
    /// a result topic written as framed Avro (`set_result_schemas`); None: JSON
    avro: Option<ResultEncoder>,
}

impl Records {
    fn push(&mut self, text: &str) {
        self.data
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.data.extend_from_slice(text.as_bytes());
        self.count += 1;
    }

    /// The record `write` appends to an empty string (JSON), as it is or as framed Avro;
    /// a record its Avro schema refuses is left out, with why.
    fn push_with(&mut self, write: impl FnOnce(&mut String)) -> Result<(), String> {
        self.scratch.clear();
        write(&mut self.scratch);
        let at = self.data.len();
        self.data.extend_from_slice(&[0; 4]);
        match &self.avro {
            None => self.data.extend_from_slice(self.scratch.as_bytes()),
            Some(encoder) => {
                if let Err(why) = encoder.encode_json(&self.scratch, &mut self.data) {
                    self.data.truncate(at);
                    return Err(why);
                }
            }
        }
        let len = (self.data.len() - at - 4) as u32;
        self.data[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }
}

/// A bundle's frames: `(Kafka timestamp ms, raw value)`.
pub type Frames<'a> = Vec<(i64, &'a [u8])>;

/// A bundle that cannot be read (not what the bundler writes).
#[derive(Debug)]
pub struct BundleError(pub String);

pub struct StreamBooks {
    rules: Rules,
    live: LiveRules,
    equivalents: Vec<(String, String)>,
    books: HashMap<String, InstrumentBooks>,
    tables: Vec<TableRows>, // in TABLES order
    records: Vec<Records>,  // in OUTPUTS order
    redis: Vec<RedisWrite>,
    redis_slot: HashMap<(bool, String, String), usize>,
    pub counts: Counts,
    out: Outputs,
    limits: Limits,
}

fn section(blob: &mut Vec<u8>, kind: u8, name: &str, count: u64, payload: &[u8]) {
    blob.push(kind);
    blob.extend_from_slice(&(name.len() as u16).to_le_bytes());
    blob.extend_from_slice(name.as_bytes());
    blob.extend_from_slice(&(count as u32).to_le_bytes());
    blob.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    blob.extend_from_slice(payload);
}

/// A frame bundle of `(timestamp_ms, value)` frames, as the JVM bundler writes it (tests and
/// benchmarks; `read_bundle` reads it).
pub fn write_bundle(flags: u8, frames: &[(i64, &[u8])]) -> Vec<u8> {
    let mut bundle = vec![BUNDLE_VERSION, flags];
    for (timestamp_ms, value) in frames {
        push_frame(&mut bundle, *timestamp_ms, value);
    }
    bundle
}

/// One more frame at the end of a bundle that `write_bundle` began.
pub fn push_frame(bundle: &mut Vec<u8>, timestamp_ms: i64, value: &[u8]) {
    bundle.extend_from_slice(&timestamp_ms.to_le_bytes());
    bundle.extend_from_slice(&(value.len() as u32).to_le_bytes());
    bundle.extend_from_slice(value);
}

/// The frames of a bundle: `(timestamp_ms, value)` each, and its flags.
pub fn read_bundle(bundle: &[u8]) -> Result<(u8, Frames<'_>), BundleError> {
    if bundle.len() < 2 || bundle[0] != BUNDLE_VERSION {
        return Err(BundleError(format!(
            "frame bundle version {:?}, this build reads {BUNDLE_VERSION}",
            bundle.first()
        )));
    }
    let flags = bundle[1];
    let mut frames = Vec::new();
    let mut pos = 2;
    while pos < bundle.len() {
        if pos + 12 > bundle.len() {
            return Err(BundleError(format!("frame bundle truncated at byte {pos}")));
        }
        let timestamp = i64::from_le_bytes(bundle[pos..pos + 8].try_into().unwrap());
        let len = u32::from_le_bytes(bundle[pos + 8..pos + 12].try_into().unwrap()) as usize;
        pos += 12;
        if pos + len > bundle.len() {
            return Err(BundleError(format!("frame bundle truncated at byte {pos}")));
        }
        frames.push((timestamp, &bundle[pos..pos + len]));
        pos += len;
    }
    Ok((flags, frames))
}

impl StreamBooks {
    pub fn new(rules: Rules, live: LiveRules, equivalents: Vec<(String, String)>) -> Self {
        StreamBooks {
            rules,
            live,
            equivalents,
            books: HashMap::new(),
            tables: TABLES.iter().map(|_| TableRows::default()).collect(),
            records: OUTPUTS.iter().map(|_| Records::default()).collect(),
            redis: Vec::new(),
            redis_slot: HashMap::new(),
            counts: Counts::default(),
            out: Outputs::default(),
            limits: Limits::default(),
        }
    }

    /// Write these result outputs (`OUTPUTS` names) as framed Avro: `(output, registry id,
    /// schema JSON)` each; the others stay JSON.
    pub fn set_result_schemas(&mut self, schemas: &[(String, u32, String)]) -> Result<(), String> {
        for (output, id, schema) in schemas {
            let index = OUTPUTS[..DEADLETTER]
                .iter()
                .position(|o| o == output)
                .ok_or_else(|| format!("{output} is not a result output"))?;
            let encoder =
                ResultEncoder::new(*id, schema).map_err(|why| format!("{output}: {why}"))?;
            self.records[index].avro = Some(encoder);
        }
        Ok(())
    }

    /// What every frame must satisfy (`validate`), for the instruments held and to come.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        for books in self.books.values_mut() {
            books.set_limits(limits);
        }
    }

    fn group(&self, instrument: &str) -> String {
        if self.equivalents.is_empty() {
            instrument.to_string()
        } else {
            nbbo_group(instrument, &self.equivalents)
        }
    }

    /// Whether the instrument's state is here (else restore it or start it empty).
    pub fn has(&self, key: &str) -> bool {
        self.books.contains_key(key)
    }

    fn books_of(&mut self, key: &str) -> &mut InstrumentBooks {
        if !self.books.contains_key(key) {
            let quote = group_quote(key, &self.equivalents);
            let mut books = InstrumentBooks::new(key, &quote, self.rules.clone());
            books.set_limits(self.limits);
            self.books.insert(key.to_string(), books);
        }
        self.books.get_mut(key).unwrap()
    }

    /// The instrument's whole state as bytes (Flink keyed state).
    pub fn snapshot(&self, key: &str) -> Option<Vec<u8>> {
        self.books.get(key).map(InstrumentBooks::snapshot)
    }

    /// The instrument's state from `snapshot` bytes; its books' views and its NBBO are
    /// queued for Redis again (writes queued before a checkpoint may not have reached Redis
    /// before a failure; version-guarded, so a no-op where Redis has them, but the hashes
    /// are this run's again, and their liveness leases renewed).
    pub fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), String> {
        let mut books = InstrumentBooks::restore(state)?;
        books.set_limits(self.limits);
        for view in books.fresh_views() {
            self.queue_book(Rc::new(view));
        }
        if let Some(update) = books.last_nbbo() {
            self.queue(true, RedisWrite::Nbbo(Box::new(update)));
        }
        self.books.insert(key.to_string(), books);
        Ok(())
    }

    /// The writer schema ids a bundle's framed frames name that have not been learned
    /// (`writer_schema::learn`): the shell fetches them before `process_bundle`.
    pub fn unknown_writer_ids(bundle: &[u8]) -> Result<Vec<u32>, BundleError> {
        let (_, frames) = read_bundle(bundle)?;
        Ok(crate::writer_schema::unknown_ids(
            frames.iter().map(|(_, value)| *value),
        ))
    }

    /// One bundle of frames of instrument `key` at `watermark_ms` (event time) and `now_ms`
    /// (processing time); whether the state must be persisted now (a barrier follows).
    pub fn process_bundle(
        &mut self,
        key: &str,
        bundle: &[u8],
        watermark_ms: i64,
        now_ms: i64,
    ) -> Result<bool, BundleError> {
        let (flags, frames) = read_bundle(bundle)?;
        self.counts.bundles += 1;
        for (_, value) in frames {
            self.process_frame(key, value, watermark_ms, now_ms);
        }
        Ok(flags & BUNDLE_PERSIST != 0)
    }

    fn process_frame(&mut self, key: &str, value: &[u8], watermark_ms: i64, now_ms: i64) {
        let env = match decode_envelope(value) {
            Ok(env) => env,
            Err(err) => {
                self.dead_letter(&publish::dead_letter_json("job", &err.0, value, None));
                return;
            }
        };
        let group = self.group(env.instrument);
        if group != key {
            let reason = format!(
                "frame of {} (group {group}) reached instrument {key:?}",
                env.instrument
            );
            self.dead_letter(&publish::dead_letter_json(
                "job",
                &reason,
                env.payload,
                Some(&env),
            ));
            return;
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let books = self.books_of(key);
        let result = books.process_guarded(&env, watermark_ms, &mut out);
        match &result {
            Ok(()) => self.counts.frames += 1,
            Err(err) => self.dead_letter(&publish::dead_letter_json(
                "job",
                &err.0,
                env.payload,
                Some(&env),
            )),
        }
        // a refused frame produced nothing, unless a caught panic discarded its book: then
        // its RESYNCING view and resync request go out
        let books = self.books_of(key);
        for (book_id, _) in &out.resyncs {
            books.resync_requested(book_id, now_ms);
        }
        for reason in self.take(&out, Some(env.instrument), now_ms) {
            self.dead_letter(&publish::dead_letter_json(
                "job",
                &reason,
                env.payload,
                Some(&env),
            ));
        }
        self.out = out;
    }

    fn dead_letter(&mut self, record: &str) {
        self.counts.dead_letters += 1;
        self.records[DEADLETTER].push(record);
    }

    /// The watermark passed the instrument's next event time (its event-time timer).
    pub fn advance(&mut self, key: &str, watermark_ms: i64) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let books = self.books_of(key);
        if let Err(panic) = books.advance_guarded(watermark_ms, &mut out) {
            let reason = format!("internal error advancing {key:?} to {watermark_ms}: {panic}");
            self.dead_letter(&publish::dead_letter_json("job", &reason, b"", None));
            out.clear();
        }
        for reason in self.take(&out, None, 0) {
            let reason = format!("{key}: {reason}");
            self.dead_letter(&publish::dead_letter_json("job", &reason, b"", None));
        }
        self.out = out;
    }

    /// The event time at which the instrument's `advance` has work.
    pub fn next_event_time_ms(&self, key: &str) -> Option<i64> {
        self.books
            .get(key)
            .and_then(InstrumentBooks::next_event_time_ms)
    }

    /// By wall clock: LIVE books silent too long become STALE; resync requests that went
    /// unanswered are sent again. The number of books not LIVE, and whether the state changed.
    pub fn housekeeping(&mut self, key: &str, now_ms: i64) -> (usize, bool) {
        let (stale_after_ms, retry_ms) = (self.live.stale_after_ms, self.live.resync_retry_ms);
        let books = self.books_of(key);
        let views = if stale_after_ms > 0 {
            books.mark_stale(now_ms, stale_after_ms)
        } else {
            Vec::new()
        };
        let (due, started) = books.due_resyncs(now_ms, retry_ms);
        let not_live = books.books_not_live();
        let changed = started || !views.is_empty() || !due.is_empty();
        for view in views {
            let refused = match self.tables[2].top_of_book(&view) {
                Ok(()) => self.records[TOP]
                    .push_with(|s| publish::push_top_of_book_json(s, &view))
                    .err()
                    .map(|why| format!("record of top_of_book refused: {why}")),
                Err(err) => Some(format!("row of top_of_book refused: {}", err.0)),
            };
            if let Some(reason) = refused {
                self.dead_letter(&publish::dead_letter_json("job", &reason, b"", None));
            }
            self.queue_book(Rc::new(view));
        }
        for ((exchange, symbol), reason) in due {
            self.resync(&exchange, &symbol, &reason, now_ms);
        }
        (not_live, changed)
    }

    fn resync(&mut self, exchange: &str, symbol: &str, reason: &str, now_ms: i64) {
        self.counts.resync_requests += 1;
        self.records[CONTROL].push(&publish::resync_json(exchange, symbol, reason, now_ms));
    }

    fn queue_book(&mut self, view: Rc<BookView>) {
        self.queue(false, RedisWrite::Book(view));
    }

    /// Conflated: replaces a queued write to the same key, else queued last.
    fn queue(&mut self, nbbo: bool, write: RedisWrite) {
        let (a, b) = match &write {
            RedisWrite::Book(view) => (view.exchange.as_str(), view.symbol.as_str()),
            RedisWrite::Nbbo(update) => (update.nbbo.instrument.as_str(), ""),
        };
        // few keys per bundle: a scan; an index once many are queued (e.g. after a restore)
        let found = if self.redis.len() <= REDIS_SCAN {
            self.redis.iter().position(|w| w.same_key(nbbo, a, b))
        } else {
            if self.redis_slot.is_empty() {
                for (i, w) in self.redis.iter().enumerate() {
                    self.redis_slot.insert(w.slot(), i);
                }
            }
            self.redis_slot
                .get(&(nbbo, a.to_string(), b.to_string()))
                .copied()
        };
        match found {
            Some(i) => self.redis[i] = write,
            None => {
                if !self.redis_slot.is_empty() {
                    self.redis_slot
                        .insert((nbbo, a.to_string(), b.to_string()), self.redis.len());
                }
                self.redis.push(write);
            }
        }
    }

    /// Rows, records and Redis writes of what a frame (its own instrument given) or a
    /// watermark advance produced.
    /// A row that cannot be stored is left out with its record; why, for a dead letter, is
    /// in the returned list.
    fn take(&mut self, out: &Outputs, instrument: Option<&str>, now_ms: i64) -> Vec<String> {
        let [trades, snapshots, tops, nbbo, matched, bars, late, gaps] = &mut self.tables[..]
        else {
            unreachable!("one TableRows per table")
        };
        let mut refused: Vec<String> = Vec::new();
        let mut records_refused: Vec<String> = Vec::new();
        let mut row = |table: &str, result: Result<(), RowError>| match result {
            Ok(()) => true,
            Err(err) => {
                refused.push(format!("row of {table} refused: {}", err.0));
                false
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
                if row("top_of_book", tops.top_of_book(view)) {
                    self.records[TOP]
                        .push_with(|s| publish::push_top_of_book_json(s, view))
                        .unwrap_or_else(|why| {
                            records_refused.push(format!("record of top_of_book refused: {why}"))
                        });
                }
            }
        }
        for update in &out.nbbo {
            if row("nbbo", nbbo.nbbo(update)) {
                self.records[NBBO]
                    .push_with(|s| publish::push_nbbo_json(s, update))
                    .unwrap_or_else(|why| {
                        records_refused.push(format!("record of nbbo refused: {why}"))
                    });
            }
        }
        for m in &out.matched {
            if row("matched_trades", matched.matched(m)) {
                self.records[MATCHED]
                    .push_with(|s| publish::push_matched_json(s, m))
                    .unwrap_or_else(|why| {
                        records_refused.push(format!("record of matched_trades refused: {why}"))
                    });
            }
        }
        for bar in &out.bars {
            if row("bars", bars.bar(bar)) {
                self.records[BARS]
                    .push_with(|s| publish::push_bar_json(s, bar))
                    .unwrap_or_else(|why| {
                        records_refused.push(format!("record of bars refused: {why}"))
                    });
            }
        }
        for event in &out.late {
            row("late_events", late.late(event));
        }
        for gap in &out.gap_rows {
            row("gaps", gaps.gap(gap));
        }
        refused.append(&mut records_refused);
        let c = &mut self.counts;
        c.trades += (out.trades.len() + out.late_trades.len()) as u64;
        c.late += out.late.len() as u64;
        c.duplicate_trades += out.duplicate_trades;
        c.nbbo_updates += out.nbbo.len() as u64;
        c.matched += out.matched.len() as u64;
        c.bars += out.bars.len() as u64;
        c.gaps += out.gaps;
        c.checksum_failures += out.checksum_failures;
        c.book_updates += out.book_views.len() as u64;
        for ((exchange, symbol), reason) in &out.resyncs {
            self.resync(exchange, symbol, reason, now_ms);
        }
        for view in &out.book_views {
            self.queue_book(Rc::clone(view));
        }
        if let Some(update) = out.nbbo.last() {
            self.queue(true, RedisWrite::Nbbo(Box::new(update.clone())));
        }
        refused
    }

    /// Everything produced since the last call as one sink blob (None when nothing was).
    pub fn take_blob(&mut self) -> Option<Vec<u8>> {
        let size: usize = self.tables.iter().map(|t| t.data.len()).sum::<usize>()
            + self.records.iter().map(|r| r.data.len()).sum::<usize>();
        if size == 0 {
            return None;
        }
        let mut blob = Vec::with_capacity(size + 1 + 24 * (TABLES.len() + OUTPUTS.len()));
        blob.push(BLOB_VERSION);
        for (table, rows) in TABLES.iter().zip(self.tables.iter_mut()) {
            if rows.rows > 0 {
                section(&mut blob, KIND_ROWS, table, rows.rows, &rows.data);
                rows.data.clear();
                rows.rows = 0;
            }
        }
        for (name, records) in OUTPUTS.iter().zip(self.records.iter_mut()) {
            if records.count > 0 {
                section(
                    &mut blob,
                    KIND_RECORDS,
                    name,
                    records.count as u64,
                    &records.data,
                );
                records.data.clear();
                records.count = 0;
            }
        }
        Some(blob)
    }

    pub fn redis_pending(&self) -> usize {
        self.redis.len()
    }

    /// The queued Redis writes, oldest first: `(is_nbbo, KEYS, ARGV)` of each guarded write.
    pub fn take_redis(&mut self, publish_time_ns: i64) -> Vec<(bool, Vec<String>, Vec<Vec<u8>>)> {
        self.redis_slot.clear();
        let prefix = &self.live.redis_prefix;
        self.redis
            .drain(..)
            .map(|write| match write {
                RedisWrite::Book(view) => {
                    let (keys, args) = publish::book_args(prefix, &view, publish_time_ns);
                    (false, keys, args)
                }
                RedisWrite::Nbbo(update) => {
                    let (keys, args) = publish::nbbo_args(prefix, &update, publish_time_ns);
                    (true, keys, args)
                }
            })
            .collect()
    }

    /// Books not LIVE, per instrument held here.
    pub fn books_not_live(&self, key: &str) -> usize {
        self.books
            .get(key)
            .map_or(0, InstrumentBooks::books_not_live)
    }

    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dec::parse_dec;
    use crate::events::BookStatus;

    fn core() -> StreamBooks {
        let rules = Rules {
            top_n: 10,
            snapshot_interval_ms: 1000,
            max_levels: 5000,
            max_buffered: 10000,
            nbbo_stale_after_ms: 10000,
            bar_intervals_ms: vec![1000],
            depth_band_bps: parse_dec("10").unwrap(),
            trade_dedup_ms: 60000,
        };
        let live = LiveRules {
            stale_after_ms: 30000,
            resync_retry_ms: 10000,
            redis_prefix: "tf".into(),
        };
        StreamBooks::new(rules, live, Vec::new())
    }

    fn view(exchange: &str, symbol: &str, seq: i64) -> Rc<BookView> {
        Rc::new(BookView {
            exchange: exchange.into(),
            symbol: symbol.into(),
            instrument: "BTC-USD".into(),
            status: BookStatus::Live,
            reason: String::new(),
            seq,
            version: seq,
            bids: Vec::new(),
            asks: Vec::new(),
            event_time_ms: 0,
            receive_time_ns: 0,
            bid_depth: None,
            ask_depth: None,
        })
    }

    fn binance(channel: &str, connection: &str, payload: &str) -> Vec<u8> {
        crate::envelope::encode_envelope(&crate::envelope::RawEnvelope {
            instrument: "BNB-BTC",
            exchange: "binance",
            symbol: "BNBBTC",
            channel,
            receive_time_ns: 1_672_515_782_200_000_000,
            connection_id: connection,
            connection_seq: 1,
            payload: payload.as_bytes(),
        })
    }

    /// The statuses of the queued book writes, oldest first (the queue emptied).
    fn book_statuses(core: &mut StreamBooks) -> Vec<BookStatus> {
        let statuses = core
            .redis
            .iter()
            .filter_map(|w| match w {
                RedisWrite::Book(view) => Some(view.status),
                RedisWrite::Nbbo(_) => None,
            })
            .collect();
        core.redis.clear();
        statuses
    }

    /// A panic while a frame is applied is caught: the frame is a dead letter, and its book,
    /// maybe half-updated, is discarded and resynced instead of published as it is.
    #[test]
    fn a_caught_panic_discards_and_resyncs_the_frames_book() {
        let mut core = core();
        let snapshot = r#"{"lastUpdateId":100,"bids":[["0.0024","10"]],"asks":[["0.0026","5"]]}"#;
        let frames = [(0, binance("snapshot", "c1", snapshot))];
        let frames: Vec<(i64, &[u8])> = frames.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        core.process_bundle("BNB-BTC", &write_bundle(0, &frames), i64::MIN, 0)
            .unwrap();
        assert_eq!(book_statuses(&mut core), vec![BookStatus::Live]);
        let depth = r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":101,"u":101,"b":[["0.0025","1"]],"a":[]}"#;
        let value = binance("depth", crate::instrument::PANIC_AFTER_APPLYING, depth);
        let frames: Vec<(i64, &[u8])> = vec![(0, value.as_slice())];
        core.process_bundle("BNB-BTC", &write_bundle(0, &frames), i64::MIN, 5)
            .unwrap();
        assert_eq!(core.records[DEADLETTER].count, 1);
        let letter = String::from_utf8_lossy(&core.records[DEADLETTER].data).into_owned();
        assert!(
            letter
                .contains("internal error: injected after the frame was applied; its book resyncs"),
            "{letter}"
        );
        assert_eq!(core.records[CONTROL].count, 1, "a resync request");
        assert_eq!(book_statuses(&mut core), vec![BookStatus::Resyncing]);
        assert_eq!(core.books_not_live("BNB-BTC"), 1);
    }

    /// The last write per key, in the order the keys were first queued, whether the queue is
    /// scanned (few writes) or indexed (many).
    #[test]
    fn redis_writes_conflate_per_key_with_few_and_many_queued() {
        for books in [3, REDIS_SCAN + 20] {
            let mut core = core();
            for round in 0..3 {
                for i in 0..books {
                    core.queue_book(view("ex", &format!("S{i}"), round * 1000 + i as i64));
                }
                // an NBBO's key is not a book's, even with the same first part
                let mut update = NbboUpdate {
                    nbbo: crate::nbbo::compute_nbbo("ex", "USD", &[], 0),
                    version: round,
                    event_time_ms: 0,
                    receive_time_ns: 0,
                };
                update.nbbo.instrument = "ex".into();
                core.queue(true, RedisWrite::Nbbo(Box::new(update)));
            }
            assert_eq!(core.redis_pending(), books + 1);
            let writes = core.take_redis(0);
            for (i, (nbbo, keys, args)) in writes.iter().enumerate() {
                if i < books {
                    assert!(!nbbo);
                    assert_eq!(keys[0], format!("tf:book:ex:S{i}"));
                    assert_eq!(args[0], (2000 + i).to_string().into_bytes());
                } else {
                    assert!(nbbo);
                    assert_eq!(keys[0], "tf:nbbo:ex");
                    assert_eq!(args[1], b"ex:2".to_vec());
                }
            }
            assert_eq!(core.redis_pending(), 0);
            core.queue_book(view("ex", "S0", 1));
            assert_eq!(core.redis_pending(), 1);
        }
    }
}
