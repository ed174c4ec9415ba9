//! Everything the pipeline knows about one canonical instrument, across exchanges: the Rust
//! twin of `jobs/instrument.py`'s `InstrumentBooks`, for a bounded input (the batch
//! backfill). Pure, no I/O. It keeps what the ClickHouse rows need; the streaming job's
//! state persistence, Redis views and processing-time staleness are not part of a backfill.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::as_of::{BookAt, Cutoff, Halt};
use crate::bars::{Bar, BookSample, InstrumentBars};
use crate::book::engine::{Outcome, SyncedBook};
use crate::dec::Dec;
use crate::envelope::RawEnvelope;
use crate::events::{BookId, BookStatus, Level, MarketEvent, ParseError, Trade};
use crate::matching::{match_trade_owned, BookHistory, BookState, MatchedTrade};
use crate::nbbo::{compute_nbbo, compute_nbbo_into, Nbbo, VenueTop};
use crate::parse::parse_envelope;
use crate::validate::Limits;

/// Flink's watermark before the first one.
pub const NO_WATERMARK: i64 = i64::MIN;
/// Flink's last watermark: a bounded input ended.
pub const END_OF_INPUT: i64 = i64::MAX;

type TradeKey = (String, String, String); // (exchange, symbol, trade id)

/// Settings of the books, the NBBO, matching and bars (`book` and `analytics` in the
/// configuration).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rules {
    pub top_n: usize,
    pub snapshot_interval_ms: i64,
    pub max_levels: usize,
    pub max_buffered: usize,
    pub nbbo_stale_after_ms: i64,
    pub bar_intervals_ms: Vec<i64>,
    pub depth_band_bps: Dec,
    pub trade_dedup_ms: i64,
}

/// The top of one book as published (`BookView` in instrument.py).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BookView {
    pub exchange: String,
    pub symbol: String,
    pub instrument: String,
    pub status: BookStatus,
    pub reason: String,
    pub seq: i64,
    pub version: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    pub event_time_ms: i64,
    pub receive_time_ns: i64,
    pub bid_depth: Option<Dec>,
    pub ask_depth: Option<Dec>,
}

impl BookView {
    /// The exchange's event time, or our receive time before any.
    pub fn time_ms(&self) -> i64 {
        if self.event_time_ms != 0 {
            self.event_time_ms
        } else {
            self.receive_time_ns.div_euclid(1_000_000)
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NbboUpdate {
    pub nbbo: Nbbo,
    pub version: i64,
    pub event_time_ms: i64,
    pub receive_time_ns: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LateEvent {
    pub exchange: String,
    pub symbol: String,
    pub instrument: String,
    pub kind: &'static str, // trade | book
    pub event_id: String,
    pub event_time_ms: i64,
    pub watermark_ms: i64,
    pub receive_time_ns: i64,
}

/// A span in which a book was not in sync: from the frame that took it out of LIVE (or its
/// first frame, before its first snapshot) to the frame that made it LIVE again, in receive
/// time. A row of the `gaps` table when it opens (`closed` false, `end_ms` = `start_ms`) and
/// again when it closes; (exchange, symbol, start_ms, start_version) is its identity, the same
/// on a replay of the same input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub exchange: String,
    pub symbol: String,
    pub instrument: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// the book's version once out of sync (monotonic per book)
    pub start_version: i64,
    pub closed: bool,
    /// startup | gap | checksum | sync_lost | crossed | internal_error | restored
    pub kind: String,
    /// why, as the book's status reason gave it when it left LIVE
    pub reason: String,
    /// the last update id applied in sync before it (-1: none or not known)
    pub seq_before: i64,
    /// the update id the book was in sync at again (-1: not yet)
    pub seq_after: i64,
    /// book messages received while out of sync
    pub messages: i64,
    /// updates dropped from the full buffer awaiting a snapshot
    pub dropped: i64,
}

/// What one frame (or one watermark advance) produced, for the ClickHouse rows.
#[derive(Default, Debug)]
pub struct Outputs {
    pub trades: Vec<Trade>,
    pub late_trades: Vec<Trade>,
    // shared: one view is often a top change, a snapshot and a Redis write at once
    pub snapshots: Vec<Rc<BookView>>,
    pub top_changes: Vec<Rc<BookView>>,
    pub nbbo: Vec<NbboUpdate>,
    pub matched: Vec<MatchedTrade>,
    pub bars: Vec<Bar>,
    pub late: Vec<LateEvent>,
    pub duplicate_trades: u64,
    /// every view a frame published (the live books: Redis)
    pub book_views: Vec<Rc<BookView>>,
    /// books that need a fresh snapshot from their connector, and why
    pub resyncs: Vec<(BookId, String)>,
    /// gaps (and snapshots too old to bridge) and checksum mismatches
    pub gaps: u64,
    pub checksum_failures: u64,
    /// not-in-sync intervals opened or closed: rows of the `gaps` table
    pub gap_rows: Vec<Gap>,
    /// the latest view's time of this frame's book changes (the NBBO's event time)
    views_time_ms: Option<i64>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.trades.clear();
        self.late_trades.clear();
        self.snapshots.clear();
        self.top_changes.clear();
        self.nbbo.clear();
        self.matched.clear();
        self.bars.clear();
        self.late.clear();
        self.duplicate_trades = 0;
        self.book_views.clear();
        self.resyncs.clear();
        self.gaps = 0;
        self.checksum_failures = 0;
        self.gap_rows.clear();
        self.views_time_ms = None;
    }
}

type Top = (
    BookStatus,
    Option<Level>,
    Option<Level>,
    Option<Dec>,
    Option<Dec>,
);

#[derive(Serialize, Deserialize)]
struct TrackedBook {
    engine: SyncedBook,
    last_event_time_ms: i64,
    last_receive_time_ns: i64,
    snapshot_bucket: i64,
    top: Option<Top>,
    /// LIVE, but no message for longer than the staleness bound (processing time)
    stale: bool,
    /// processing time of the last resync request (0: none yet)
    resync_requested_ms: i64,
}

/// The books of one instrument (an NBBO group) and the rules for what to publish.
#[derive(Serialize, Deserialize)]
pub struct InstrumentBooks {
    pub instrument: String,
    quote: String,
    rules: Rules,
    // insertion-ordered, as Python's dicts: the NBBO lists venues in this order
    books: Vec<(BookId, TrackedBook)>,
    book_instruments: Vec<(BookId, String)>,
    history: Vec<(BookId, BookHistory)>,
    pending: VecDeque<Trade>, // waiting for the watermark, by time
    #[serde(serialize_with = "crate::state::sorted_map")]
    seen: HashMap<TradeKey, i64>,
    seen_order: VecDeque<(i64, TradeKey)>,
    bars: InstrumentBars,
    nbbo: Option<Nbbo>,
    nbbo_version: i64,
    pub watermark_ms: i64,
    input_ended: bool,
    /// the NBBO being computed (its allocations reused; not state)
    #[serde(skip)]
    next_nbbo: Option<Nbbo>,
    /// the books' tops it is computed from (likewise)
    #[serde(skip)]
    tops: Vec<VenueTop>,
    /// what a frame must satisfy to be applied: configuration, set again after a restore
    #[serde(skip)]
    limits: Limits,
    /// each book's not-in-sync interval still open (state: written after the rest by
    /// `snapshot` in state.rs, format version 2)
    #[serde(skip)]
    pub(crate) open_gaps: Vec<(BookId, Gap)>,
    /// a reconstruction's stopping point for one book (`as_of`; not state)
    #[serde(skip)]
    cutoff: Option<Cutoff>,
}

fn position<T>(items: &[(BookId, T)], exchange: &str, symbol: &str) -> Option<usize> {
    items
        .iter()
        .position(|((e, s), _)| e == exchange && s == symbol)
}

impl InstrumentBooks {
    pub fn new(instrument: &str, quote: &str, rules: Rules) -> Self {
        let quote = if quote.is_empty() {
            instrument
                .rsplit('-')
                .next()
                .unwrap_or(instrument)
                .to_string()
        } else {
            quote.to_string()
        };
        let bars = InstrumentBars::new(instrument, &rules.bar_intervals_ms);
        InstrumentBooks {
            instrument: instrument.to_string(),
            quote,
            rules,
            books: Vec::new(),
            book_instruments: Vec::new(),
            history: Vec::new(),
            pending: VecDeque::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            bars,
            nbbo: None,
            nbbo_version: 0,
            watermark_ms: NO_WATERMARK,
            input_ended: false,
            next_nbbo: None,
            tops: Vec::new(),
            limits: Limits::default(),
            open_gaps: Vec::new(),
            cutoff: None,
        }
    }

    /// The limits frames are checked against (`validate`); not part of the state.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    fn book_instrument(&self, exchange: &str, symbol: &str) -> &str {
        match position(&self.book_instruments, exchange, symbol) {
            Some(i) => &self.book_instruments[i].1,
            None => &self.instrument,
        }
    }

    /// `process` with a panic caught: a bug must not stop the job on one frame, it leaves as
    /// a dead letter like a bad frame (`internal error: ...`).
    pub fn process_guarded(
        &mut self,
        env: &RawEnvelope<'_>,
        watermark_ms: i64,
        out: &mut Outputs,
    ) -> Result<(), ParseError> {
        // usually empty: no allocation
        let gaps_before = self.open_gaps.clone();
        catch_unwind(AssertUnwindSafe(|| self.process(env, watermark_ms, out))).unwrap_or_else(
            |panic| {
                // the frame's book may be half-updated: what the frame produced is dropped and
                // the book discarded and resynced, never published from a broken state (its
                // gap rows too: the open intervals are as before the frame)
                let text = panic_text(&*panic);
                out.clear();
                self.open_gaps = gaps_before;
                let discarded = catch_unwind(AssertUnwindSafe(|| {
                    self.discard_book(env.exchange, env.symbol, &text, watermark_ms, out)
                }))
                .unwrap_or(false);
                let then = if discarded { "; its book resyncs" } else { "" };
                Err(ParseError(format!("internal error: {text}{then}")))
            },
        )
    }

    /// After a caught panic while applying a frame of the book: it is discarded (RESYNCING)
    /// and a snapshot is asked for, as after a gap; false when there is no such book.
    fn discard_book(
        &mut self,
        exchange: &str,
        symbol: &str,
        panic: &str,
        watermark_ms: i64,
        out: &mut Outputs,
    ) -> bool {
        let Some(index) = position(&self.books, exchange, symbol) else {
            return false;
        };
        let tracked = &mut self.books[index].1;
        let seq_before = tracked.engine.last_id;
        tracked.engine.lose_sync(format!("internal error: {panic}"));
        tracked.engine.buffer.clear();
        tracked.stale = false;
        let time_ms = tracked.last_receive_time_ns.div_euclid(1_000_000);
        out.resyncs.push((
            (exchange.to_string(), symbol.to_string()),
            tracked.engine.reason.clone(),
        ));
        // the open intervals are as before the frame: one opens unless the book was out of
        // sync already
        if position(&self.open_gaps, exchange, symbol).is_none() {
            self.open_gap(index, "internal_error", time_ms, seq_before, out);
        }
        out.gaps += 1;
        let view = Rc::new(self.view(index, 0));
        out.book_views.push(Rc::clone(&view));
        // matching and the bars see the book gone, not its last LIVE state
        self.record_state(&view, out, watermark_ms);
        self.update_nbbo(view.receive_time_ns, out);
        true
    }

    /// `advance` with a panic caught: Err(the panic's message).
    pub fn advance_guarded(&mut self, watermark_ms: i64, out: &mut Outputs) -> Result<(), String> {
        catch_unwind(AssertUnwindSafe(|| self.advance(watermark_ms, out)))
            .map_err(|panic| panic_text(&*panic))
    }

    /// Apply one raw frame; Err for a frame that cannot be understood (nothing applied).
    pub fn process(
        &mut self,
        env: &RawEnvelope<'_>,
        watermark_ms: i64,
        out: &mut Outputs,
    ) -> Result<(), ParseError> {
        let watermark_ms = watermark_ms.max(self.watermark_ms);
        if position(&self.book_instruments, env.exchange, env.symbol).is_none() {
            self.book_instruments.push((
                (env.exchange.to_string(), env.symbol.to_string()),
                env.instrument.to_string(),
            ));
        }
        let events = parse_envelope(env)?;
        self.limits.check(env, &events)?;
        let mut book_changed = false;
        for event in events {
            if self.cut_off(env.exchange, &event) {
                continue;
            }
            match event {
                MarketEvent::Trade(trade) => {
                    self.on_trade(trade, env.instrument, watermark_ms, out)
                }
                other => {
                    book_changed |=
                        self.on_book_event(env.exchange, env.symbol, other, out, watermark_ms)?
                }
            }
        }
        if book_changed {
            self.update_nbbo(env.receive_time_ns, out);
        }
        #[cfg(test)]
        if env.connection_id == PANIC_AFTER_APPLYING {
            panic!("injected after the frame was applied");
        }
        self.advance(watermark_ms, out);
        Ok(())
    }

    // --- a book as of a time (as_of.rs) ----------------------------------------------------

    /// Stop applying `exchange`'s `symbol` book at its first book event stamped later than
    /// `at_ms` (exchange time).
    pub fn set_cutoff(&mut self, exchange: &str, symbol: &str, at_ms: i64) {
        self.cutoff = Some(Cutoff {
            exchange: exchange.to_string(),
            symbol: symbol.to_string(),
            at_ms,
            halt: None,
        });
    }

    /// Whether the cutoff holds this event back: the book's first book event stamped later
    /// than it (tried on a copy of the book, to see whether it follows) and every event of
    /// the book after that one, whatever its time.
    fn cut_off(&mut self, exchange: &str, event: &MarketEvent) -> bool {
        let Some(cutoff) = self.cutoff.as_mut() else {
            return false;
        };
        if cutoff.exchange != exchange || cutoff.symbol != event.symbol() {
            return false;
        }
        if cutoff.halt.is_some() {
            return true;
        }
        let (event_time_ms, receive_time_ns, snapshot, first_id, last_id) = match event {
            MarketEvent::Delta(d) => (
                d.event_time_ms,
                d.receive_time_ns,
                false,
                d.first_id,
                d.last_id,
            ),
            MarketEvent::Snapshot(s) => (
                s.event_time_ms,
                s.receive_time_ns,
                true,
                s.last_id,
                s.last_id,
            ),
            MarketEvent::Trade(_) | MarketEvent::SyncLost(_) => return false,
        };
        // a snapshot without an exchange time (Binance's REST snapshot, Kraken's) was taken
        // at the latest when it arrived: one that arrived after the cutoff may hold later
        // changes, so it counts as stamped with its receive time
        let event_time_ms = if event_time_ms == 0 && snapshot {
            receive_time_ns.div_euclid(1_000_000)
        } else {
            event_time_ms
        };
        if event_time_ms <= cutoff.at_ms {
            return false;
        }
        let (outcome, reason) = match position(&self.books, exchange, &cutoff.symbol) {
            Some(i) => {
                let mut copy = self.books[i].1.engine.clone();
                let outcome = match event {
                    MarketEvent::Delta(d) => copy.on_delta(d.clone()),
                    MarketEvent::Snapshot(s) => copy.on_snapshot(s),
                    _ => unreachable!("book events only"),
                };
                (Some(outcome), copy.reason)
            }
            None => (None, String::new()),
        };
        cutoff.halt = Some(Halt {
            event_time_ms,
            receive_time_ns,
            snapshot,
            first_id,
            last_id,
            outcome,
            reason,
        });
        true
    }

    /// Whether the cutoff's book met its first event later than the cutoff.
    pub fn halted(&self) -> bool {
        self.cutoff.as_ref().is_some_and(|c| c.halt.is_some())
    }

    /// A book's full state: every level kept, best first, its open interval and where a
    /// cutoff stopped it (as is: `BookAt::settled` gives the state as of the cutoff).
    pub fn book_at(&self, exchange: &str, symbol: &str) -> Option<BookAt> {
        let index = position(&self.books, exchange, symbol)?;
        let tracked = &self.books[index].1;
        let engine = &tracked.engine;
        let halt = self
            .cutoff
            .as_ref()
            .filter(|c| c.exchange == exchange && c.symbol == symbol)
            .and_then(|c| c.halt.clone());
        Some(BookAt {
            status: engine.status,
            reason: engine.reason.clone(),
            version: engine.version(),
            seq: engine.last_id,
            event_time_ms: tracked.last_event_time_ms,
            receive_time_ns: tracked.last_receive_time_ns,
            synced_ms: engine.epoch_ms,
            bids: engine
                .book
                .bids_best_first()
                .map(|(&p, &s)| (p, s))
                .collect(),
            asks: engine
                .book
                .asks_best_first()
                .map(|(&p, &s)| (p, s))
                .collect(),
            gap: position(&self.open_gaps, exchange, symbol).map(|i| self.open_gaps[i].1.clone()),
            halt,
        })
    }

    // --- trades, matching, bars ---------------------------------------------------------

    fn on_trade(&mut self, trade: Trade, instrument: &str, watermark_ms: i64, out: &mut Outputs) {
        let key = (
            trade.exchange.clone(),
            trade.symbol.clone(),
            trade.trade_id.clone(),
        );
        if self.seen.contains_key(&key) {
            out.duplicate_trades += 1;
            return;
        }
        self.seen.insert(key.clone(), trade.trade_time_ms);
        self.seen_order.push_back((trade.trade_time_ms, key));
        if trade.trade_time_ms <= watermark_ms {
            // its windows are closed and its books may be pruned: stored, counted, not matched
            out.late.push(LateEvent {
                exchange: trade.exchange.clone(),
                symbol: trade.symbol.clone(),
                instrument: instrument.to_string(),
                kind: "trade",
                event_id: trade.trade_id.clone(),
                event_time_ms: trade.trade_time_ms,
                watermark_ms,
                receive_time_ns: trade.receive_time_ns,
            });
            out.late_trades.push(trade);
            return;
        }
        self.bars.on_trade(&trade);
        // after the last trade not later than it (stable, as instrument.py's insert)
        let mut i = self.pending.len();
        while i > 0 && self.pending[i - 1].trade_time_ms > trade.trade_time_ms {
            i -= 1;
        }
        self.pending.insert(i, trade.clone());
        out.trades.push(trade);
    }

    fn forget_until(&mut self, horizon_ms: i64) {
        while let Some((time_ms, _)) = self.seen_order.front() {
            if *time_ms >= horizon_ms {
                break;
            }
            let (time_ms, key) = self.seen_order.pop_front().unwrap();
            if self.seen.get(&key) == Some(&time_ms) {
                self.seen.remove(&key);
            }
        }
    }

    /// Everything the watermark makes final: trades up to it matched, windows closed, book
    /// history no later trade can need dropped.
    pub fn advance(&mut self, watermark_ms: i64, out: &mut Outputs) {
        let mut watermark_ms = watermark_ms;
        if watermark_ms == END_OF_INPUT {
            // closing every window up to the end of time would never finish: what an ended
            // input makes final is what its events reached
            self.input_ended = true;
            watermark_ms = self.latest_event_ms();
        }
        let watermark_ms = watermark_ms.max(self.watermark_ms);
        if watermark_ms == NO_WATERMARK {
            return;
        }
        self.watermark_ms = watermark_ms;
        while self
            .pending
            .front()
            .is_some_and(|t| t.trade_time_ms <= watermark_ms)
        {
            let trade = self.pending.pop_front().unwrap();
            let matched = self.match_trade(&trade);
            out.matched.push(matched);
        }
        self.forget_until(watermark_ms.saturating_sub(self.rules.trade_dedup_ms));
        out.bars.extend(self.bars.close_until(watermark_ms));
        for (_, history) in self.history.iter_mut() {
            // every trade still pending is later than the watermark
            history.prune(watermark_ms);
        }
    }

    /// The latest event time seen: a book message or a trade.
    fn latest_event_ms(&self) -> i64 {
        let books = self
            .books
            .iter()
            .map(|(_, t)| t.last_receive_time_ns.div_euclid(1_000_000));
        let trades = self.pending.iter().map(|t| t.trade_time_ms);
        books.chain(trades).max().unwrap_or(NO_WATERMARK)
    }

    /// The event time at which `advance` has work; none once the input ended.
    pub fn next_event_time_ms(&self) -> Option<i64> {
        if self.input_ended {
            return None;
        }
        let first = self.pending.front().map(|t| t.trade_time_ms);
        match (first, self.bars.next_close_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The trade against its book and the NBBO as of its time.
    fn match_trade(&self, trade: &Trade) -> MatchedTrade {
        let time_ms = trade.trade_time_ms;
        let mut tops = Vec::with_capacity(self.history.len());
        let mut own: Option<&BookState> = None;
        for ((exchange, symbol), history) in &self.history {
            let seq = if *exchange == trade.exchange && trade.sequence >= 0 {
                Some(trade.sequence)
            } else {
                None
            };
            let state = history.as_of(time_ms, seq);
            if *exchange == trade.exchange && *symbol == trade.symbol {
                own = state;
            }
            if let Some(state) = state {
                tops.push(VenueTop {
                    exchange: exchange.clone(),
                    symbol: symbol.clone(),
                    status: state.status,
                    version: state.version,
                    age_ms: time_ms - state.time_ms,
                    bid: state.bids.first().copied(),
                    ask: state.asks.first().copied(),
                });
            }
        }
        let nbbo = compute_nbbo(
            &self.instrument,
            &self.quote,
            &tops,
            self.rules.nbbo_stale_after_ms,
        );
        let instrument = self.book_instrument(&trade.exchange, &trade.symbol);
        match_trade_owned(trade, instrument, own, Some(nbbo))
    }

    /// The live NBBO (ages by receive time); emitted when what it shows changed.
    fn update_nbbo(&mut self, receive_time_ns: i64, out: &mut Outputs) {
        let now_ms = receive_time_ns.div_euclid(1_000_000);
        // each book's top written over the last call's (the books only ever grow, in order)
        let tops = &mut self.tops;
        for (i, ((exchange, symbol), tracked)) in self.books.iter().enumerate() {
            let (status, version) = (tracked.engine.status, tracked.engine.version());
            let age_ms = now_ms - tracked.last_receive_time_ns.div_euclid(1_000_000);
            let (bid, ask) = (
                tracked.engine.book.best_bid(),
                tracked.engine.book.best_ask(),
            );
            match tops.get_mut(i) {
                Some(top) if top.exchange == *exchange && top.symbol == *symbol => {
                    (top.status, top.version, top.age_ms, top.bid, top.ask) =
                        (status, version, age_ms, bid, ask);
                }
                _ => {
                    tops.truncate(i);
                    let (exchange, symbol) = (exchange.clone(), symbol.clone());
                    tops.push(VenueTop {
                        exchange,
                        symbol,
                        status,
                        version,
                        age_ms,
                        bid,
                        ask,
                    });
                }
            }
        }
        tops.truncate(self.books.len());
        let (tops, stale_after_ms) = (&self.tops, self.rules.nbbo_stale_after_ms);
        let nbbo = match self.next_nbbo.as_mut() {
            Some(next) => {
                compute_nbbo_into(next, &self.instrument, &self.quote, tops, stale_after_ms);
                next
            }
            None => self.next_nbbo.insert(compute_nbbo(
                &self.instrument,
                &self.quote,
                tops,
                stale_after_ms,
            )),
        };
        if let Some(last) = &self.nbbo {
            if nbbo.quote_key() == last.quote_key() {
                return;
            }
        }
        // the new one kept, the one it replaces written over next time
        let new = self.next_nbbo.take();
        self.next_nbbo = std::mem::replace(&mut self.nbbo, new);
        let nbbo = self.nbbo.clone().expect("just set");
        // monotonic, and the same on a replay of the same input
        self.nbbo_version = (self.nbbo_version + 1).max(receive_time_ns.div_euclid(1000));
        let time_ms = out.views_time_ms.unwrap_or(now_ms);
        out.nbbo.push(NbboUpdate {
            nbbo,
            version: self.nbbo_version,
            event_time_ms: time_ms,
            receive_time_ns,
        });
    }

    // --- books ---------------------------------------------------------------------------

    /// A book event; true when it published a new view of the book.
    fn on_book_event(
        &mut self,
        exchange: &str,
        symbol: &str,
        event: MarketEvent,
        out: &mut Outputs,
        watermark_ms: i64,
    ) -> Result<bool, ParseError> {
        let index = match position(&self.books, exchange, symbol) {
            Some(i) => i,
            None => {
                let engine =
                    SyncedBook::new(exchange, self.rules.max_levels, self.rules.max_buffered)
                        .ok_or_else(|| {
                            ParseError(format!("no book engine for exchange '{exchange}'"))
                        })?;
                self.books.push((
                    (exchange.to_string(), symbol.to_string()),
                    TrackedBook {
                        engine,
                        last_event_time_ms: 0,
                        last_receive_time_ns: 0,
                        snapshot_bucket: -1,
                        top: None,
                        stale: false,
                        resync_requested_ms: 0,
                    },
                ));
                let index = self.books.len() - 1;
                // not in sync from its first message until its first snapshot
                let time_ms = event_receive_ns(&event).div_euclid(1_000_000);
                self.open_gap(index, "startup", time_ms, -1, out);
                index
            }
        };
        let tracked = &mut self.books[index].1;
        let was = tracked.engine.status;
        let (seq_before, buffered_before) = (tracked.engine.last_id, tracked.engine.buffer.len());
        let is_delta = matches!(event, MarketEvent::Delta(_));
        let sync_lost = matches!(event, MarketEvent::SyncLost(_));
        let (outcome, event_time_ms, receive_time_ns) = match event {
            MarketEvent::Snapshot(snap) => (
                tracked.engine.on_snapshot(&snap),
                Some(snap.event_time_ms),
                snap.receive_time_ns,
            ),
            MarketEvent::SyncLost(lost) => (
                tracked.engine.on_sync_lost(&lost),
                None,
                lost.receive_time_ns,
            ),
            MarketEvent::Delta(delta) => {
                let (t, r) = (delta.event_time_ms, delta.receive_time_ns);
                (tracked.engine.on_delta(delta), Some(t), r)
            }
            MarketEvent::Trade(_) => unreachable!("trades are not book events"),
        };
        if let Some(t) = event_time_ms {
            tracked.last_event_time_ms = tracked.last_event_time_ms.max(t);
        }
        tracked.last_receive_time_ns = receive_time_ns;
        let now = tracked.engine.status;
        let time_ms = receive_time_ns.div_euclid(1_000_000);
        if was == BookStatus::Live && now != BookStatus::Live {
            let kind = if sync_lost {
                "sync_lost"
            } else if outcome == Outcome::ChecksumMismatch {
                "checksum"
            } else if tracked.engine.reason.starts_with("crossed book") {
                "crossed"
            } else {
                "gap"
            };
            self.open_gap(index, kind, time_ms, seq_before, out);
        } else if was != BookStatus::Live {
            let engine = &self.books[index].1.engine;
            let dropped = if is_delta && outcome == Outcome::Buffered {
                (buffered_before + 1).saturating_sub(engine.buffer.len()) as i64
            } else {
                0
            };
            let last_id = engine.last_id;
            self.gap_message(index, dropped);
            if now == BookStatus::Live {
                self.close_gap(index, time_ms, last_id, out);
            }
        }
        let tracked = &mut self.books[index].1;
        if outcome.needs_resync() {
            out.resyncs.push((
                (exchange.to_string(), symbol.to_string()),
                tracked.engine.reason.clone(),
            ));
            if outcome == Outcome::ChecksumMismatch {
                out.checksum_failures += 1;
            } else {
                out.gaps += 1;
            }
        }
        if matches!(
            outcome,
            Outcome::Ignored | Outcome::Buffered | Outcome::SnapshotTooOld
        ) && tracked.engine.status == was
        {
            return Ok(false);
        }
        tracked.stale = false;
        let view = Rc::new(self.view(index, 0));
        out.book_views.push(Rc::clone(&view));
        out.views_time_ms = Some(
            out.views_time_ms
                .map_or(view.time_ms(), |t| t.max(view.time_ms())),
        );
        self.record_state(&view, out, watermark_ms);
        let tracked = &mut self.books[index].1;
        let top: Top = (
            view.status,
            view.bids.first().copied(),
            view.asks.first().copied(),
            view.bid_depth,
            view.ask_depth,
        );
        let snapshot_due = if view.status == BookStatus::Live && tracked.last_event_time_ms != 0 {
            let bucket = tracked
                .last_event_time_ms
                .div_euclid(self.rules.snapshot_interval_ms);
            let due = bucket != tracked.snapshot_bucket;
            tracked.snapshot_bucket = bucket;
            due
        } else {
            false
        };
        let top_changed = tracked.top.as_ref() != Some(&top);
        if top_changed {
            tracked.top = Some(top);
        }
        match (top_changed, snapshot_due) {
            (true, true) => {
                out.top_changes.push(Rc::clone(&view));
                out.snapshots.push(view);
            }
            (true, false) => out.top_changes.push(view),
            (false, true) => out.snapshots.push(view),
            (false, false) => {}
        }
        Ok(true)
    }

    // --- not-in-sync intervals (the gaps table) --------------------------------------------

    /// The book at `index` is out of sync from `time_ms` on (it was LIVE, or had no snapshot
    /// yet): its interval opens, and its open row goes out.
    fn open_gap(
        &mut self,
        index: usize,
        kind: &str,
        time_ms: i64,
        seq_before: i64,
        out: &mut Outputs,
    ) {
        let view_instrument = {
            let ((exchange, symbol), _) = &self.books[index];
            self.book_instrument(exchange, symbol).to_string()
        };
        let ((exchange, symbol), tracked) = &self.books[index];
        let gap = Gap {
            exchange: exchange.clone(),
            symbol: symbol.clone(),
            instrument: view_instrument,
            start_ms: time_ms,
            end_ms: time_ms,
            start_version: tracked.engine.version(),
            closed: false,
            kind: kind.to_string(),
            reason: tracked.engine.reason.clone(),
            seq_before,
            seq_after: -1,
            messages: 0,
            dropped: 0,
        };
        out.gap_rows.push(gap.clone());
        let id = (exchange.clone(), symbol.clone());
        match position(&self.open_gaps, exchange, symbol) {
            Some(i) => self.open_gaps[i] = (id, gap),
            None => self.open_gaps.push((id, gap)),
        }
    }

    /// A book message while out of sync (and updates it pushed out of the full buffer).
    fn gap_message(&mut self, index: usize, dropped: i64) {
        let ((exchange, symbol), _) = &self.books[index];
        if let Some(i) = position(&self.open_gaps, exchange, symbol) {
            let gap = &mut self.open_gaps[i].1;
            gap.messages += 1;
            gap.dropped += dropped;
        }
    }

    /// The book is LIVE again at `time_ms`, in sync at update id `seq_after`: its interval
    /// closes, and its closed row goes out.
    fn close_gap(&mut self, index: usize, time_ms: i64, seq_after: i64, out: &mut Outputs) {
        let ((exchange, symbol), _) = &self.books[index];
        if let Some(i) = position(&self.open_gaps, exchange, symbol) {
            let (_, mut gap) = self.open_gaps.remove(i);
            gap.end_ms = time_ms.max(gap.start_ms);
            gap.seq_after = seq_after;
            gap.closed = true;
            out.gap_rows.push(gap);
        }
    }

    /// A state from before open intervals were kept (format version 1): each book not LIVE
    /// has one from its last message on (kind `restored`); no open row goes out for it.
    pub(crate) fn open_restored_gaps(&mut self) {
        for index in 0..self.books.len() {
            let ((exchange, symbol), tracked) = &self.books[index];
            if tracked.engine.status == BookStatus::Live
                || position(&self.open_gaps, exchange, symbol).is_some()
            {
                continue;
            }
            let mut out = Outputs::default();
            let time_ms = tracked.last_receive_time_ns.div_euclid(1_000_000);
            let seq_before = tracked.engine.last_id;
            self.open_gap(index, "restored", time_ms, seq_before, &mut out);
        }
    }

    /// The intervals still open, per book (tests, tools).
    pub fn open_gaps(&self) -> Vec<Gap> {
        self.open_gaps.iter().map(|(_, g)| g.clone()).collect()
    }

    // --- processing time: staleness and resync retries (the live job only) ---------------

    /// LIVE books with no message for `stale_after_ms`: now STALE (their views to publish).
    pub fn mark_stale(&mut self, now_ms: i64, stale_after_ms: i64) -> Vec<BookView> {
        let mut views = Vec::new();
        for index in 0..self.books.len() {
            let tracked = &mut self.books[index].1;
            let silent_ms = now_ms - tracked.last_receive_time_ns.div_euclid(1_000_000);
            if tracked.engine.status == BookStatus::Live
                && !tracked.stale
                && silent_ms > stale_after_ms
            {
                tracked.stale = true;
                views.push(self.view(index, now_ms));
            }
        }
        views
    }

    /// Books still not LIVE `retry_ms` after their last resync request: ask again. Also
    /// whether a book's retry clock started (state changed even with none due).
    pub fn due_resyncs(&mut self, now_ms: i64, retry_ms: i64) -> (Vec<(BookId, String)>, bool) {
        let mut due = Vec::new();
        let mut started = false;
        for (book_id, tracked) in self.books.iter_mut() {
            if tracked.engine.status == BookStatus::Live {
                continue;
            }
            if tracked.resync_requested_ms == 0 {
                // first seen waiting (e.g. for its first snapshot): start the clock
                tracked.resync_requested_ms = now_ms;
                started = true;
            } else if now_ms - tracked.resync_requested_ms >= retry_ms {
                tracked.resync_requested_ms = now_ms;
                let engine = &tracked.engine;
                due.push((
                    book_id.clone(),
                    format!("still {}: {}", engine.status.as_str(), engine.reason),
                ));
            }
        }
        (due, started)
    }

    /// A resync of the book was requested at `now_ms` (processing time).
    pub fn resync_requested(&mut self, book_id: &BookId, now_ms: i64) {
        if let Some(i) = position(&self.books, &book_id.0, &book_id.1) {
            self.books[i].1.resync_requested_ms = now_ms;
        }
    }

    /// Books not LIVE or STALE.
    pub fn books_not_live(&self) -> usize {
        self.books
            .iter()
            .filter(|(_, t)| t.engine.status != BookStatus::Live || t.stale)
            .count()
    }

    /// The views of the books that are not STALE (published again after a restore: the
    /// writes queued before a checkpoint may not have reached Redis).
    pub fn fresh_views(&self) -> Vec<BookView> {
        (0..self.books.len())
            .filter(|&i| !self.books[i].1.stale)
            .map(|i| self.view(i, 0))
            .collect()
    }

    /// The last NBBO published, to publish again after a restore (with the books' views).
    /// Its times are not state: they are taken from its version, which is its receive time
    /// in us unless two came within one us; the write is version-guarded, so where Redis has
    /// this NBBO it only takes the hash back into this run's leases.
    pub fn last_nbbo(&self) -> Option<NbboUpdate> {
        let nbbo = self.nbbo.clone()?;
        let receive_time_ns = self.nbbo_version.saturating_mul(1000);
        Some(NbboUpdate {
            nbbo,
            version: self.nbbo_version,
            event_time_ms: receive_time_ns.div_euclid(1_000_000),
            receive_time_ns,
        })
    }

    /// A new state of a book: into its history (for matching) and the bars.
    fn record_state(&mut self, view: &BookView, out: &mut Outputs, watermark_ms: i64) {
        let time_ms = view.time_ms();
        if time_ms <= watermark_ms && watermark_ms != NO_WATERMARK {
            // applied to the book all the same; the bars take it from the last closed window
            out.late.push(LateEvent {
                exchange: view.exchange.clone(),
                symbol: view.symbol.clone(),
                instrument: view.instrument.clone(),
                kind: "book",
                event_id: view.version.to_string(),
                event_time_ms: time_ms,
                watermark_ms,
                receive_time_ns: view.receive_time_ns,
            });
        }
        let state = BookState {
            time_ms,
            seq: view.seq,
            version: view.version,
            status: view.status,
            bids: view.bids.clone(),
            asks: view.asks.clone(),
        };
        let index = match position(&self.history, &view.exchange, &view.symbol) {
            Some(i) => i,
            None => {
                self.history.push((
                    (view.exchange.clone(), view.symbol.clone()),
                    BookHistory::new(),
                ));
                self.history.len() - 1
            }
        };
        self.history[index].1.append(state);
        let sample = match (view.bid_depth, view.ask_depth) {
            (Some(bid_depth), Some(ask_depth)) => {
                let (bid, bid_size) = view.bids[0];
                let (ask, ask_size) = view.asks[0];
                Some(BookSample {
                    touch: (bid, bid_size, ask, ask_size),
                    bid_depth,
                    ask_depth,
                })
            }
            _ => None,
        };
        self.bars
            .on_book_of(&view.exchange, &view.symbol, time_ms, sample);
    }

    /// A book's view; `now_ms` (processing time) words a STALE book's reason.
    fn view(&self, index: usize, now_ms: i64) -> BookView {
        let ((exchange, symbol), tracked) = &self.books[index];
        let engine = &tracked.engine;
        let live = engine.status == BookStatus::Live;
        let (status, reason) = if live && tracked.stale {
            let silent_s = if now_ms != 0 {
                (now_ms - tracked.last_receive_time_ns.div_euclid(1_000_000)) as f64 / 1000.0
            } else {
                0.0
            };
            (BookStatus::Stale, format!("no message for {silent_s:.1} s"))
        } else {
            (engine.status, engine.reason.clone())
        };
        let (bids, asks) = if live {
            engine.book.top(self.rules.top_n)
        } else {
            (Vec::new(), Vec::new())
        };
        let (bid_depth, ask_depth) = if !bids.is_empty() && !asks.is_empty() {
            let (b, a) = engine.book.depth_within_bps(self.rules.depth_band_bps);
            (Some(b), Some(a))
        } else {
            (None, None)
        };
        BookView {
            exchange: exchange.clone(),
            symbol: symbol.clone(),
            instrument: self.book_instrument(exchange, symbol).to_string(),
            status,
            reason,
            seq: engine.last_id,
            version: engine.version(),
            bids,
            asks,
            event_time_ms: tracked.last_event_time_ms,
            receive_time_ns: tracked.last_receive_time_ns,
            bid_depth,
            ask_depth,
        }
    }
}

/// A book event's receive time.
fn event_receive_ns(event: &MarketEvent) -> i64 {
    match event {
        MarketEvent::Delta(e) => e.receive_time_ns,
        MarketEvent::Snapshot(e) => e.receive_time_ns,
        MarketEvent::Trade(e) => e.receive_time_ns,
        MarketEvent::SyncLost(e) => e.receive_time_ns,
    }
}

/// A frame from this connection panics once applied (tests of the recovery only).
#[cfg(test)]
pub(crate) const PANIC_AFTER_APPLYING: &str = "test:panic-after-applying";

/// A panic's message, for its dead letter.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod gap_tests {
    use super::*;
    use crate::book::test_util::FIXTURES;
    use crate::dec::parse_dec;
    use crate::parse::scenario_steps;

    fn books() -> InstrumentBooks {
        let rules = Rules {
            top_n: 10,
            snapshot_interval_ms: 1000,
            max_levels: 1000,
            max_buffered: 3,
            nbbo_stale_after_ms: 0,
            bar_intervals_ms: vec![60_000],
            depth_band_bps: parse_dec("10").unwrap(),
            trade_dedup_ms: 1000,
        };
        InstrumentBooks::new("BTC-USD", "USD", rules)
    }

    /// One frame of `exchange`'s `symbol` received at `at_ms`; the gap rows it produced.
    fn feed(
        books: &mut InstrumentBooks,
        (exchange, symbol): (&str, &str),
        channel: &str,
        payload: &str,
        at_ms: i64,
        connection: &str,
    ) -> Vec<Gap> {
        let env = RawEnvelope {
            instrument: "BTC-USD",
            exchange,
            symbol,
            channel,
            receive_time_ns: at_ms * 1_000_000,
            connection_id: connection,
            connection_seq: 1,
            payload: payload.as_bytes(),
        };
        let mut out = Outputs::default();
        let _ = books.process_guarded(&env, NO_WATERMARK, &mut out);
        out.gap_rows
    }

    const BINANCE: (&str, &str) = ("binance", "BTCUSDT");

    fn snapshot(last: i64) -> String {
        format!(r#"{{"lastUpdateId":{last},"bids":[["100.0","1"]],"asks":[["101.0","1"]]}}"#)
    }

    fn depth(first: i64, last: i64) -> String {
        format!(
            r#"{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":{first},"u":{last},"b":[["100.5","1"]],"a":[]}}"#
        )
    }

    /// A book's first snapshot, at 1000 ms: its startup interval opens and closes.
    fn live_binance(books: &mut InstrumentBooks) {
        let rows = feed(books, BINANCE, "snapshot", &snapshot(100), 1000, "c1");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].kind.as_str(), rows[0].closed), ("startup", false));
        let closed = &rows[1];
        assert_eq!((closed.kind.as_str(), closed.closed), ("startup", true));
        assert_eq!((closed.start_ms, closed.end_ms), (1000, 1000));
        assert_eq!((closed.seq_before, closed.seq_after), (-1, 100));
        assert!(books.open_gaps().is_empty());
    }

    #[test]
    fn a_sequence_gap_opens_an_interval_its_resync_closes() {
        let mut books = books();
        live_binance(&mut books);
        assert!(feed(&mut books, BINANCE, "depth", &depth(101, 101), 1100, "c1").is_empty());
        // 102..104 missing
        let rows = feed(&mut books, BINANCE, "depth", &depth(105, 105), 1200, "c1");
        assert_eq!(rows.len(), 1);
        let open = &rows[0];
        assert_eq!((open.kind.as_str(), open.closed), ("gap", false));
        assert_eq!(
            (open.start_ms, open.end_ms, open.seq_before),
            (1200, 1200, 101)
        );
        assert_eq!(
            (open.exchange.as_str(), open.symbol.as_str()),
            ("binance", "BTCUSDT")
        );
        assert_eq!(open.instrument, "BTC-USD");
        // buffered while out of sync: 105 and 5 more updates into a buffer of 3, 3 pushed out
        for (i, id) in (106..111).enumerate() {
            let at = 1300 + i as i64;
            assert!(feed(&mut books, BINANCE, "depth", &depth(id, id), at, "c1").is_empty());
        }
        let rows = feed(&mut books, BINANCE, "snapshot", &snapshot(107), 2500, "c1");
        assert_eq!(rows.len(), 1, "{rows:?}");
        let closed = &rows[0];
        assert!(closed.closed);
        assert_eq!((closed.start_ms, closed.end_ms), (1200, 2500));
        assert_eq!((closed.seq_before, closed.seq_after), (101, 110));
        // the 5 updates and the snapshot
        assert_eq!((closed.messages, closed.dropped), (6, 3));
        assert_eq!(closed.start_version, open.start_version);
    }

    #[test]
    fn a_connector_sync_lost_opens_an_interval() {
        let mut books = books();
        live_binance(&mut books);
        let lost = r#"{"reason":"connection lost"}"#;
        let rows = feed(&mut books, BINANCE, "sync_lost", lost, 3000, "c1");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "sync_lost");
        assert_eq!(rows[0].reason, "connector: connection lost");
        assert_eq!(rows[0].seq_before, 100);
        // a second loss while out of sync: the same interval
        assert!(feed(&mut books, BINANCE, "sync_lost", lost, 3100, "c2").is_empty());
        let rows = feed(&mut books, BINANCE, "snapshot", &snapshot(200), 4000, "c2");
        assert_eq!((rows[0].start_ms, rows[0].end_ms), (3000, 4000));
        assert_eq!((rows[0].kind.as_str(), rows[0].messages), ("sync_lost", 2));
    }

    #[test]
    fn a_checksum_mismatch_opens_an_interval_the_new_snapshot_closes() {
        let path = format!("{FIXTURES}/kraken/sync_resubscribe_snapshot_heals_mismatch.json");
        let text = std::fs::read_to_string(path).unwrap();
        let mut books = books();
        let mut rows = Vec::new();
        for (i, (channel, frame)) in scenario_steps(&text).into_iter().enumerate() {
            let at = 1000 * (i as i64 + 1);
            rows.extend(feed(
                &mut books,
                ("kraken", "BTC/USD"),
                &channel,
                &frame,
                at,
                "c1",
            ));
        }
        let kinds: Vec<(&str, bool)> = rows.iter().map(|g| (g.kind.as_str(), g.closed)).collect();
        assert_eq!(
            kinds,
            [
                ("startup", false),
                ("startup", true),
                ("checksum", false),
                ("checksum", true)
            ]
        );
        assert!(rows[2].reason.contains("checksum"), "{}", rows[2].reason);
        assert!(rows[3].end_ms > rows[3].start_ms);
        assert!(books.open_gaps().is_empty());
    }

    #[test]
    fn a_crossed_book_opens_an_interval() {
        let mut books = books();
        live_binance(&mut books);
        let crossing =
            r#"{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":101,"u":101,"b":[["102.0","1"]],"a":[]}"#;
        let rows = feed(&mut books, BINANCE, "depth", crossing, 1500, "c1");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].kind.as_str(), rows[0].start_ms), ("crossed", 1500));
        assert!(
            rows[0].reason.starts_with("crossed book"),
            "{}",
            rows[0].reason
        );
    }

    #[test]
    fn a_caught_panic_opens_an_interval_and_drops_the_frames_rows() {
        let mut books = books();
        live_binance(&mut books);
        let rows = feed(
            &mut books,
            BINANCE,
            "depth",
            &depth(101, 101),
            1500,
            PANIC_AFTER_APPLYING,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].kind.as_str(), rows[0].closed),
            ("internal_error", false)
        );
        assert!(rows[0].reason.starts_with("internal error"));
        // out of sync already: a panic there opens none
        let rows = feed(
            &mut books,
            BINANCE,
            "depth",
            &depth(102, 102),
            1600,
            PANIC_AFTER_APPLYING,
        );
        assert!(rows.is_empty(), "{rows:?}");
        assert_eq!(books.open_gaps().len(), 1);
    }

    #[test]
    fn the_same_input_gives_the_same_rows_and_open_intervals_survive_a_restore() {
        let steps: Vec<(&str, String, i64)> = vec![
            ("snapshot", snapshot(100), 1000),
            ("depth", depth(101, 101), 1100),
            ("depth", depth(105, 105), 1200),
            ("depth", depth(106, 106), 1300),
            ("snapshot", snapshot(106), 2000),
        ];
        let run = |restore_after: Option<usize>| {
            let mut books = books();
            let mut rows = Vec::new();
            for (i, (channel, payload, at)) in steps.iter().enumerate() {
                rows.extend(feed(&mut books, BINANCE, channel, payload, *at, "c1"));
                if restore_after == Some(i) {
                    books = InstrumentBooks::restore(&books.snapshot()).unwrap();
                }
            }
            rows
        };
        let once = run(None);
        assert_eq!(once.len(), 4);
        assert_eq!(once, run(None));
        // restored while the gap is open: its closing row is the same
        assert_eq!(once, run(Some(2)));
        // a version 1 state (no open intervals kept): one from the book's last message on
        let mut books = books();
        for (channel, payload, at) in &steps[..3] {
            feed(&mut books, BINANCE, channel, payload, *at, "c1");
        }
        let mut v1 = crate::state::encode(&books);
        v1[0] = crate::state::STATE_VERSION_1;
        let mut restored = InstrumentBooks::restore(&v1).unwrap();
        let [gap] = &restored.open_gaps()[..] else {
            panic!("one open interval")
        };
        assert_eq!((gap.kind.as_str(), gap.start_ms), ("restored", 1200));
        let rows = feed(
            &mut restored,
            BINANCE,
            "snapshot",
            &snapshot(106),
            2000,
            "c1",
        );
        assert_eq!((rows[0].kind.as_str(), rows[0].end_ms), ("restored", 2000));
    }
}
