//! Event-time bars of one instrument, per exchange and across exchanges (the Rust twin of
//! `jobs/bars.py`). Pure, no I/O.
//!
//! Per (interval, window, venue):
//! - from trades: OHLC (first/last by trade time, exchange, numeric trade id), volume, notional,
//!   VWAP, trade count, taker buy/sell volume;
//! - from the book's touch over time: time-weighted spread and depth within the band over the
//!   time the book was LIVE with both sides, and order-flow imbalance (Cont, Kukanov & Stoikov
//!   2014) summed over consecutive LIVE touches.
//!
//! Venue `ALL`: the trade figures over every exchange; depth and OFI summed over exchanges; no
//! spread. A book state holds from its event time until the book's next state; segments are
//! integrated as they complete, and at a window's close (the watermark passed its end) the open
//! segment is integrated up to the end.
//!
//! Exactness (against the Python engine, row for row):
//! - decimal sums and products are done with `Dec` in the same order and with the same scales
//!   as Python's `Decimal` (exact as long as they fit 28 significant digits, as in Python);
//! - every `float(Decimal / Decimal)` of Python is reproduced by [`py_div_to_f64`]: the quotient
//!   correctly rounded to 28 significant digits (ROUND_HALF_EVEN, Python's default context),
//!   then correctly rounded to an `f64`, as `float()` does with the decimal text;
//! - the `ALL` row's depth sums floats left to right from `0`, as Python 3.11's `sum()` does.
//!
//! Layout (not Python's, same behaviour): the open windows are kept per interval in a deque
//! sorted by window start, each holding its venues' accumulators; so `next_close_ms` is the
//! first window of each interval (plus, with a LIVE book, the closed-until chain): O(number of
//! intervals) instead of a scan of every open window.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::dec::{py_add, py_div_to_f64, py_mul, py_sub, Dec};
use crate::events::{BookId, Side, Trade};

pub const ALL: &str = "ALL";

/// bid price, bid size, ask price, ask size
pub type Touch = (Dec, Dec, Dec, Dec);

/// What the bars need of one LIVE book state with both sides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BookSample {
    /// bid, bid_size, ask, ask_size
    #[serde(with = "crate::dec::wire")]
    pub touch: (Dec, Dec, Dec, Dec),
    /// size within the band below the mid
    #[serde(with = "crate::dec::wire")]
    pub bid_depth: Dec,
    #[serde(with = "crate::dec::wire")]
    pub ask_depth: Dec,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub instrument: String,
    pub venue: String,
    pub interval_ms: i64,
    pub window_start_ms: i64,
    pub open: Option<Dec>,
    pub high: Option<Dec>,
    pub low: Option<Dec>,
    pub close: Option<Dec>,
    pub volume: Dec,
    pub notional: Dec,
    pub vwap: Option<f64>,
    pub trade_count: i64,
    pub buy_volume: Dec,
    pub sell_volume: Dec,
    pub live_ms: i64,
    pub twa_spread: Option<f64>,
    pub twa_bid_depth: Option<f64>,
    pub twa_ask_depth: Option<f64>,
    pub ofi: Dec,
}

/// The numeric part of a trade's order key: Python's `int(tid) if tid.isdigit() else 0`
/// (ids of ASCII digits; any length, compared as the integers they are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TradeIdNum {
    /// up to 38 significant digits
    Small(u128),
    /// 39 digits or more, leading zeros stripped (always greater than any `Small`)
    Big(Box<str>),
}

impl TradeIdNum {
    pub fn of(trade_id: &str) -> TradeIdNum {
        let bytes = trade_id.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return TradeIdNum::Small(0);
        }
        let digits = trade_id.trim_start_matches('0');
        if digits.len() <= 38 {
            let mut v: u128 = 0;
            for &b in digits.as_bytes() {
                v = v * 10 + u128::from(b - b'0');
            }
            TradeIdNum::Small(v)
        } else {
            TradeIdNum::Big(digits.into())
        }
    }
}

impl Ord for TradeIdNum {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (TradeIdNum::Small(a), TradeIdNum::Small(b)) => a.cmp(b),
            (TradeIdNum::Small(_), TradeIdNum::Big(_)) => Ordering::Less,
            (TradeIdNum::Big(_), TradeIdNum::Small(_)) => Ordering::Greater,
            (TradeIdNum::Big(a), TradeIdNum::Big(b)) => a
                .len()
                .cmp(&b.len())
                .then_with(|| a.as_bytes().cmp(b.as_bytes())),
        }
    }
}

impl PartialOrd for TradeIdNum {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `trade_order` of Python: (trade time, exchange, numeric trade id or 0); tuples compare as
/// Python's do (`str` by code point = UTF-8 bytes).
pub fn trade_order(trade: &Trade) -> (i64, &str, TradeIdNum) {
    (
        trade.trade_time_ms,
        trade.exchange.as_str(),
        TradeIdNum::of(&trade.trade_id),
    )
}

/// e_n of Cont, Kukanov & Stoikov: bid-side inflow minus ask-side inflow at the touch.
pub fn ofi_term(prev: &Touch, cur: &Touch) -> Dec {
    let (pb, pbs, pa, pas) = prev;
    let (b, bs, a, as_) = cur;
    let mut e = Dec::ZERO;
    if b >= pb {
        e = py_add(e, *bs);
    }
    if b <= pb {
        e = py_sub(e, *pbs);
    }
    if a <= pa {
        e = py_sub(e, *as_);
    }
    if a >= pa {
        e = py_add(e, *pas);
    }
    e
}

/// Index of the venue `ALL` (an exchange named "ALL" lands there too, as in Python's dict).
const ALL_IDX: u32 = u32::MAX;

/// A trade's order key with the exchange interned.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Key {
    time_ms: i64,
    venue: u32,
    id: TradeIdNum,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Acc {
    #[serde(with = "crate::dec::wire")]
    open: Option<Dec>,
    open_key: Option<Key>,
    #[serde(with = "crate::dec::wire")]
    close: Option<Dec>,
    close_key: Option<Key>,
    #[serde(with = "crate::dec::wire")]
    high: Option<Dec>,
    #[serde(with = "crate::dec::wire")]
    low: Option<Dec>,
    #[serde(with = "crate::dec::wire")]
    volume: Dec,
    #[serde(with = "crate::dec::wire")]
    notional: Dec,
    trade_count: i64,
    #[serde(with = "crate::dec::wire")]
    buy_volume: Dec,
    #[serde(with = "crate::dec::wire")]
    sell_volume: Dec,
    live_ms: i64,
    #[serde(with = "crate::dec::wire")]
    spread_ms: Dec,
    #[serde(with = "crate::dec::wire")]
    bid_depth_ms: Dec,
    #[serde(with = "crate::dec::wire")]
    ask_depth_ms: Dec,
    #[serde(with = "crate::dec::wire")]
    ofi: Dec,
    ofi_terms: i64,
}

fn venue_name(names: &[String], idx: u32) -> &str {
    if idx == ALL_IDX {
        ALL
    } else {
        &names[idx as usize]
    }
}

fn cmp_key(a: &Key, b: &Key, names: &[String]) -> Ordering {
    a.time_ms
        .cmp(&b.time_ms)
        .then_with(|| {
            if a.venue == b.venue {
                Ordering::Equal
            } else {
                venue_name(names, a.venue).cmp(venue_name(names, b.venue))
            }
        })
        .then_with(|| a.id.cmp(&b.id))
}

impl Acc {
    fn add_trade(&mut self, trade: &Trade, product: Dec, key: &Key, names: &[String]) {
        let (price, size) = (trade.price, trade.size);
        let take_open = match &self.open_key {
            None => true,
            Some(k) => self.open.is_none() || cmp_key(key, k, names) == Ordering::Less,
        };
        if take_open {
            self.open = Some(price);
            self.open_key = Some(key.clone());
        }
        let take_close = match &self.close_key {
            None => true,
            Some(k) => self.close.is_none() || cmp_key(key, k, names) != Ordering::Less,
        };
        if take_close {
            self.close = Some(price);
            self.close_key = Some(key.clone());
        }
        // max()/min() of Python keep the first of equal values
        self.high = Some(match self.high {
            Some(h) if (price <= h) => h,
            _ => price,
        });
        self.low = Some(match self.low {
            Some(l) if (price >= l) => l,
            _ => price,
        });
        self.volume = py_add(self.volume, size);
        self.notional = py_add(self.notional, product); // price * size (the same for every window)
        self.trade_count += 1;
        if trade.taker_side == Side::Buy {
            self.buy_volume = py_add(self.buy_volume, size);
        } else {
            self.sell_volume = py_add(self.sell_volume, size);
        }
    }

    #[inline]
    fn add_segment(&mut self, sample: &BookSample, spread: Dec, ms: i64) {
        let m = Dec::from(ms);
        self.live_ms += ms;
        self.spread_ms = py_add(self.spread_ms, py_mul(spread, m));
        self.bid_depth_ms = py_add(self.bid_depth_ms, py_mul(sample.bid_depth, m));
        self.ask_depth_ms = py_add(self.ask_depth_ms, py_mul(sample.ask_depth, m));
    }

    fn has_data(&self) -> bool {
        self.trade_count > 0 || self.live_ms > 0 || self.ofi_terms > 0
    }
}

/// One open window of one interval: its venues' accumulators.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Group {
    start: i64,
    venues: Vec<Option<Acc>>, // by interned venue
    all: Option<Acc>,
}

/// The open windows of one (distinct) interval, sorted by start.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Slot {
    interval: i64,
    groups: VecDeque<Group>,
}

impl Slot {
    /// `_acc` of Python: the accumulator of (start, venue), created if missing.
    #[inline]
    fn acc(&mut self, start: i64, venue: u32) -> &mut Acc {
        // most calls are for the newest window: search from the back
        let mut pos = self.groups.len();
        while pos > 0 && self.groups[pos - 1].start > start {
            pos -= 1;
        }
        if pos == 0 || self.groups[pos - 1].start != start {
            self.groups.insert(
                pos,
                Group {
                    start,
                    venues: Vec::new(),
                    all: None,
                },
            );
            pos += 1;
        }
        let group = &mut self.groups[pos - 1];
        let slot = if venue == ALL_IDX {
            &mut group.all
        } else {
            let i = venue as usize;
            if group.venues.len() <= i {
                group.venues.resize_with(i + 1, || None);
            }
            &mut group.venues[i]
        };
        slot.get_or_insert_with(Acc::default)
    }
}

/// Integration state of one book.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Clock {
    book_id: BookId,
    venue: u32,
    since_ms: i64,
    sample: Option<BookSample>,
    #[serde(with = "crate::dec::wire")]
    spread: Dec, // the sample's ask - bid (what Python computes per segment)
    /// when the sample was taken (None after a restore: `since_ms` stands in, which can only
    /// extend the hold); not in the state, whose format stays as it was
    #[serde(skip)]
    sample_ms: Option<i64>,
}

/// How long an unchanged book state counts as live time in the bars: this many windows of
/// the shortest interval, and at least two of the longest (10 minutes with 1 s and 1 min
/// bars). Beyond it the book's quiet windows are stepped over, not walked: a watermark far
/// ahead of a quiet LIVE book (a replay after a long pause, a clock jump) costs at most this
/// many windows, not one per interval of the jump.
pub const HELD_WINDOWS: i64 = 600;

impl Clock {
    /// Where the book's held state stops counting.
    fn held_until(&self, hold_ms: i64) -> i64 {
        self.sample_ms
            .unwrap_or(self.since_ms)
            .saturating_add(hold_ms)
    }
}

/// Python's `floor(t / interval) * interval`.
#[inline]
fn floor_to(t: i64, interval: i64) -> i64 {
    t.div_euclid(interval) * interval
}

/// `_integrate` of Python: add the held state over [since, until) to every window it overlaps.
fn integrate(
    slots: &mut [Slot],
    slot_of: &[usize],
    clock: &mut Clock,
    until_ms: i64,
    hold_ms: i64,
) {
    let start_ms = clock.since_ms;
    let held_until = until_ms.min(clock.held_until(hold_ms));
    if let Some(sample) = &clock.sample {
        let until_ms = held_until;
        if until_ms > start_ms {
            for &s in slot_of {
                let slot = &mut slots[s];
                let interval = slot.interval;
                let mut window = floor_to(start_ms, interval);
                while window < until_ms {
                    let overlap = until_ms.min(window + interval) - start_ms.max(window);
                    slot.acc(window, clock.venue)
                        .add_segment(sample, clock.spread, overlap);
                    window += interval;
                }
            }
        }
    }
    clock.since_ms = clock.since_ms.max(until_ms);
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstrumentBars {
    pub instrument: String,
    intervals: Vec<i64>,
    /// per position in `intervals`, its slot (equal intervals share one, as Python's keys do)
    slot_of: Vec<usize>,
    slots: Vec<Slot>,
    books: Vec<Clock>,  // in order of first sight (Python's dict order)
    names: Vec<String>, // interned exchange names
    live_books: usize,  // books whose sample is not None
    /// interval -> end of the last window closed
    pub closed_until: BTreeMap<i64, i64>,
}

impl InstrumentBars {
    /// How long a book's unchanged state counts (`HELD_WINDOWS`).
    fn hold_ms(&self) -> i64 {
        let shortest = self.intervals.iter().copied().min().unwrap_or(0);
        let longest = self.intervals.iter().copied().max().unwrap_or(0);
        shortest
            .saturating_mul(HELD_WINDOWS)
            .max(longest.saturating_mul(2))
    }
}

impl InstrumentBars {
    pub fn new(instrument: &str, intervals_ms: &[i64]) -> Self {
        let mut slots: Vec<Slot> = Vec::new();
        let mut slot_of = Vec::with_capacity(intervals_ms.len());
        for &interval in intervals_ms {
            assert!(interval > 0, "bar intervals must be positive");
            let s = match slots.iter().position(|s| s.interval == interval) {
                Some(s) => s,
                None => {
                    slots.push(Slot {
                        interval,
                        groups: VecDeque::new(),
                    });
                    slots.len() - 1
                }
            };
            slot_of.push(s);
        }
        InstrumentBars {
            instrument: instrument.to_string(),
            intervals: intervals_ms.to_vec(),
            slot_of,
            slots,
            books: Vec::new(),
            names: Vec::new(),
            live_books: 0,
            closed_until: BTreeMap::new(),
        }
    }

    pub fn intervals(&self) -> &[i64] {
        &self.intervals
    }

    fn venue_idx(&mut self, name: &str) -> u32 {
        if name == ALL {
            return ALL_IDX;
        }
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_string());
                (self.names.len() - 1) as u32
            }
        }
    }

    /// Every book is integrated up to here (the end of the last window closed).
    pub fn closed_through_ms(&self) -> Option<i64> {
        self.closed_until.values().copied().max()
    }

    /// The open windows as Python's `windows` keys: (interval, start, venue), sorted.
    pub fn open_windows(&self) -> Vec<(i64, i64, String)> {
        let mut out = Vec::new();
        for slot in &self.slots {
            for g in &slot.groups {
                for (i, a) in g.venues.iter().enumerate() {
                    if a.is_some() {
                        out.push((slot.interval, g.start, self.names[i].clone()));
                    }
                }
                if g.all.is_some() {
                    out.push((slot.interval, g.start, ALL.to_string()));
                }
            }
        }
        out.sort();
        out
    }

    /// A trade that is not late. A window of it that is already closed is final and does not
    /// take it.
    pub fn on_trade(&mut self, trade: &Trade) {
        let venue = self.venue_idx(&trade.exchange);
        let key = Key {
            time_ms: trade.trade_time_ms,
            venue,
            id: TradeIdNum::of(&trade.trade_id),
        };
        let product = py_mul(trade.price, trade.size);
        for (pos, &s) in self.slot_of.iter().enumerate() {
            let interval = self.intervals[pos];
            let start = floor_to(trade.trade_time_ms, interval);
            if let Some(&closed) = self.closed_until.get(&interval) {
                if start < closed {
                    continue;
                }
            }
            let slot = &mut self.slots[s];
            slot.acc(start, venue)
                .add_trade(trade, product, &key, &self.names);
            slot.acc(start, ALL_IDX)
                .add_trade(trade, product, &key, &self.names);
        }
    }

    /// A new state of a book at `time_ms` (its exchange's event time).
    pub fn on_book(&mut self, book_id: &BookId, time_ms: i64, sample: Option<BookSample>) {
        self.on_book_of(&book_id.0, &book_id.1, time_ms, sample);
    }

    /// [`Self::on_book`] of the book `(exchange, symbol)`.
    pub fn on_book_of(
        &mut self,
        exchange: &str,
        symbol: &str,
        time_ms: i64,
        sample: Option<BookSample>,
    ) {
        let bi = match self
            .books
            .iter()
            .position(|c| c.book_id.0 == exchange && c.book_id.1 == symbol)
        {
            Some(bi) => bi,
            None => {
                // a book first seen after windows closed starts at the integrated point
                let since = match self.closed_through_ms() {
                    None => time_ms,
                    Some(closed) => time_ms.max(closed),
                };
                let venue = self.venue_idx(exchange);
                self.books.push(Clock {
                    book_id: (exchange.to_string(), symbol.to_string()),
                    venue,
                    since_ms: since,
                    sample: None,
                    spread: Dec::ZERO,
                    sample_ms: None,
                });
                self.books.len() - 1
            }
        };
        let hold_ms = self.hold_ms();
        let clock = &mut self.books[bi];
        // a state stamped before what is already integrated takes effect from there
        let time_ms = time_ms.max(clock.since_ms);
        integrate(&mut self.slots, &self.slot_of, clock, time_ms, hold_ms);
        let venue = clock.venue;
        if let (Some(prev), Some(cur)) = (&clock.sample, &sample) {
            let term = ofi_term(&prev.touch, &cur.touch);
            for (pos, &s) in self.slot_of.iter().enumerate() {
                let start = floor_to(time_ms, self.intervals[pos]);
                let acc = self.slots[s].acc(start, venue);
                acc.ofi = py_add(acc.ofi, term);
                acc.ofi_terms += 1;
            }
        }
        let was_live = clock.sample.is_some();
        match sample {
            Some(s) => {
                clock.spread = py_sub(s.touch.2, s.touch.0);
                clock.sample = Some(s);
                clock.sample_ms = Some(time_ms);
                if !was_live {
                    self.live_books += 1;
                }
                // open this book's windows now, so a quiet LIVE book still gets its bars
                for (pos, &s) in self.slot_of.iter().enumerate() {
                    let start = floor_to(time_ms, self.intervals[pos]);
                    self.slots[s].acc(start, venue);
                }
            }
            None => {
                clock.sample = None;
                if was_live {
                    self.live_books -= 1;
                }
            }
        }
    }

    /// Event time at which the earliest open window can close (its last millisecond).
    pub fn next_close_ms(&self) -> Option<i64> {
        let mut best: Option<i64> = None;
        let mut consider = |end: i64| {
            best = Some(match best {
                Some(b) if b <= end => b,
                _ => end,
            })
        };
        for slot in &self.slots {
            if let Some(g) = slot.groups.front() {
                consider(g.start + slot.interval - 1);
            }
        }
        if self.live_books > 0 {
            // a LIVE book keeps bars coming even when nothing happens, while its state holds
            // (per book: from its integration point, as long as its state holds; windows no
            // book holds and without a group of their own are empty: stepped over)
            let hold_ms = self.hold_ms();
            for &interval in &self.intervals {
                if let Some(&last) = self.closed_until.get(&interval) {
                    for clock in self.books.iter().filter(|c| c.sample.is_some()) {
                        let start = last.max(floor_to(clock.since_ms, interval));
                        if start < clock.held_until(hold_ms) {
                            consider(start.saturating_add(interval - 1));
                        }
                    }
                }
            }
        }
        best
    }

    /// Close every window whose end is at or before the watermark.
    pub fn close_until(&mut self, watermark_ms: i64) -> Vec<Bar> {
        let mut bars = Vec::new();
        loop {
            let due = match self.next_close_ms() {
                Some(due) if due <= watermark_ms => due,
                _ => return bars,
            };
            let end = due + 1;
            let hold_ms = self.hold_ms();
            for clock in &mut self.books {
                integrate(&mut self.slots, &self.slot_of, clock, end, hold_ms);
            }
            for pos in 0..self.intervals.len() {
                let interval = self.intervals[pos];
                if end.rem_euclid(interval) == 0
                    && self.closed_until.get(&interval).copied().unwrap_or(0) < end
                {
                    self.close(pos, end - interval, &mut bars);
                    self.closed_until.insert(interval, end);
                }
            }
        }
    }

    fn close(&mut self, pos: usize, start: i64, bars: &mut Vec<Bar>) {
        let interval = self.intervals[pos];
        let slot = &mut self.slots[self.slot_of[pos]];
        let group = match slot.groups.iter().position(|g| g.start == start) {
            Some(i) => slot.groups.remove(i).expect("group"),
            None => return,
        };
        let mut venues: Vec<(u32, Acc)> = group
            .venues
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (i as u32, a)))
            .collect();
        venues.sort_by(|a, b| self.names[a.0 as usize].cmp(&self.names[b.0 as usize]));
        let first = bars.len();
        for (v, acc) in &venues {
            if acc.has_data() {
                bars.push(self.bar(interval, start, &self.names[*v as usize], acc));
            }
        }
        if bars.len() == first {
            return;
        }
        let total = group.all.unwrap_or_default();
        let mut total_bar = self.bar(interval, start, ALL, &total);
        let out = &bars[first..];
        let mut any_depth = false;
        let (mut bid, mut ask) = (0.0f64, 0.0f64); // Python 3.11 sum(): left to right from 0
        for b in out {
            if let Some(d) = b.twa_bid_depth {
                any_depth = true;
                bid += d;
                ask += b.twa_ask_depth.unwrap_or(0.0);
            }
        }
        let mut ofi = Dec::ZERO;
        for b in out {
            ofi = py_add(ofi, b.ofi);
        }
        total_bar.live_ms = 0;
        total_bar.twa_spread = None;
        total_bar.twa_bid_depth = if any_depth { Some(bid) } else { None };
        total_bar.twa_ask_depth = if any_depth { Some(ask) } else { None };
        total_bar.ofi = ofi;
        bars.push(total_bar);
    }

    fn bar(&self, interval: i64, start: i64, venue: &str, acc: &Acc) -> Bar {
        let live = acc.live_ms;
        let twa = |sum: Dec| {
            if live != 0 {
                Some(py_div_to_f64(sum, Dec::from(live)))
            } else {
                None
            }
        };
        Bar {
            instrument: self.instrument.clone(),
            venue: venue.to_string(),
            interval_ms: interval,
            window_start_ms: start,
            open: acc.open,
            high: acc.high,
            low: acc.low,
            close: acc.close,
            volume: acc.volume,
            notional: acc.notional,
            vwap: if acc.volume.is_zero() {
                None
            } else {
                Some(py_div_to_f64(acc.notional, acc.volume))
            },
            trade_count: acc.trade_count,
            buy_volume: acc.buy_volume,
            sell_volume: acc.sell_volume,
            live_ms: live,
            twa_spread: twa(acc.spread_ms),
            twa_bid_depth: twa(acc.bid_depth_ms),
            twa_ask_depth: twa(acc.ask_depth_ms),
            ofi: acc.ofi,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scenarios of tests/unit/test_bars.py, the millisecond reference as a randomized
    //! property, and (when $BARS_DIFF names a recording) the differential replay of the Python
    //! engine's calls and outputs.
    use super::*;
    use crate::dec::{parse_dec, to_scaled_i128};

    const BASE: i64 = 1_700_000_000_000; // a multiple of 1000 (not of 1500)
    const INTERVALS: [i64; 2] = [1000, 1500];
    const SPAN_MS: i64 = 4000;
    const WATERMARK: i64 = BASE + 5999;
    const EXCHANGES: [&str; 2] = ["binance", "coinbase"];

    fn d(s: &str) -> Dec {
        parse_dec(s).unwrap()
    }

    fn sample6(bid: &str, bs: &str, ask: &str, as_: &str, bd: &str, ad: &str) -> BookSample {
        BookSample {
            touch: (d(bid), d(bs), d(ask), d(as_)),
            bid_depth: d(bd),
            ask_depth: d(ad),
        }
    }

    fn sample(bid: &str, bs: &str, ask: &str, as_: &str) -> BookSample {
        sample6(bid, bs, ask, as_, "1", "1")
    }

    fn trade(ex: &str, t: i64, price: &str, size: &str, side: Side, tid: &str) -> Trade {
        Trade {
            exchange: ex.to_string(),
            symbol: "S".to_string(),
            trade_id: tid.to_string(),
            price: d(price),
            size: d(size),
            taker_side: side,
            trade_time_ms: t,
            event_time_ms: t,
            receive_time_ns: 0,
            sequence: -1,
        }
    }

    fn t1(ex: &str, t: i64, price: &str, tid: &str) -> Trade {
        trade(ex, t, price, "1", Side::Buy, tid)
    }

    fn bid(ex: &str) -> BookId {
        (ex.to_string(), "S".to_string())
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12f64.max(1e-9 * b.abs())
    }

    // --- examples -------------------------------------------------------------------------

    #[test]
    fn a_window_closes_only_when_the_watermark_reaches_its_last_millisecond() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        assert_eq!(bars.next_close_ms(), None);
        assert!(bars.close_until(BASE + 1_000_000).is_empty());
        bars.on_trade(&trade("binance", BASE + 10, "100", "2", Side::Buy, "7"));
        bars.on_trade(&trade("coinbase", BASE + 999, "101", "1", Side::Sell, "3"));
        assert_eq!(bars.next_close_ms(), Some(BASE + 999));
        assert!(bars.close_until(BASE + 998).is_empty());
        let out = bars.close_until(BASE + 999);
        let keys: Vec<_> = out
            .iter()
            .map(|b| (b.venue.as_str(), b.window_start_ms))
            .collect();
        assert_eq!(
            keys,
            vec![("binance", BASE), ("coinbase", BASE), (ALL, BASE)]
        );
        let total = out.last().unwrap();
        assert_eq!(
            (total.open, total.close, total.high, total.low),
            (
                Some(d("100")),
                Some(d("101")),
                Some(d("101")),
                Some(d("100"))
            )
        );
        assert_eq!(
            (total.volume, total.buy_volume, total.sell_volume),
            (d("3"), d("2"), d("1"))
        );
        assert!(approx(total.vwap.unwrap(), 301.0 / 3.0));
        assert!(total.live_ms == 0 && total.twa_spread.is_none() && total.twa_bid_depth.is_none());
        assert_eq!(bars.next_close_ms(), None);
        assert!(bars.open_windows().is_empty());
    }

    #[test]
    fn open_and_close_order_by_time_exchange_and_numeric_trade_id() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        bars.on_trade(&t1("coinbase", BASE + 5, "3", "1"));
        bars.on_trade(&t1("binance", BASE + 5, "2", "10"));
        bars.on_trade(&t1("binance", BASE + 5, "1", "9"));
        bars.on_trade(&t1("binance", BASE + 6, "4", "1"));
        bars.on_trade(&t1("binance", BASE + 4, "5", "100"));
        let out: BTreeMap<String, Bar> = bars
            .close_until(BASE + 999)
            .into_iter()
            .map(|b| (b.venue.clone(), b))
            .collect();
        assert_eq!(
            (out[ALL].open, out[ALL].close),
            (Some(d("5")), Some(d("4")))
        );
        assert_eq!(
            (out["coinbase"].open, out["coinbase"].close),
            (Some(d("3")), Some(d("3")))
        );
        bars.on_trade(&t1("coinbase", BASE + 1005, "8", "1"));
        bars.on_trade(&t1("binance", BASE + 1005, "6", "10"));
        bars.on_trade(&t1("binance", BASE + 1005, "7", "9"));
        let out: BTreeMap<String, Bar> = bars
            .close_until(BASE + 1999)
            .into_iter()
            .map(|b| (b.venue.clone(), b))
            .collect();
        assert_eq!(
            (out[ALL].open, out[ALL].close),
            (Some(d("7")), Some(d("8")))
        );
        assert_eq!(
            (out["binance"].open, out["binance"].close),
            (Some(d("7")), Some(d("6")))
        );
        bars.on_trade(&t1("binance", BASE + 2005, "1", "abc"));
        bars.on_trade(&t1("binance", BASE + 2005, "2", "xyz"));
        bars.on_trade(&t1("binance", BASE + 2005, "3", "def"));
        let out = bars.close_until(BASE + 2999);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].open, out[0].close), (Some(d("1")), Some(d("3"))));
    }

    #[test]
    fn a_quiet_live_book_keeps_producing_consecutive_bars() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        let s = sample6("100", "1", "100.5", "2", "4", "6");
        bars.on_book(&bid("binance"), BASE + 200, Some(s));
        assert_eq!(bars.next_close_ms(), Some(BASE + 999));
        let out = bars.close_until(BASE + 4999);
        let keys: Vec<_> = out
            .iter()
            .map(|b| (b.venue.clone(), b.window_start_ms - BASE))
            .collect();
        let want: Vec<_> = [0, 1000, 2000, 3000, 4000]
            .iter()
            .flat_map(|&w| [("binance".to_string(), w), (ALL.to_string(), w)])
            .collect();
        assert_eq!(keys, want);
        let venue: Vec<&Bar> = out.iter().filter(|b| b.venue == "binance").collect();
        assert_eq!(
            venue.iter().map(|b| b.live_ms).collect::<Vec<_>>(),
            [800, 1000, 1000, 1000, 1000]
        );
        assert!(venue.iter().all(|b| b.twa_spread == Some(0.5)
            && b.twa_bid_depth == Some(4.0)
            && b.twa_ask_depth == Some(6.0)));
        assert!(out
            .iter()
            .all(|b| b.trade_count == 0 && b.open.is_none() && b.ofi.is_zero()));
        let all: Vec<_> = out
            .iter()
            .filter(|b| b.venue == ALL)
            .map(|b| b.twa_bid_depth)
            .collect();
        assert_eq!(all, vec![Some(4.0); 5]);
        assert_eq!(bars.next_close_ms(), Some(BASE + 5999));
        bars.on_book(&bid("binance"), BASE + 5250, None);
        let out = bars.close_until(BASE + 99_999);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].window_start_ms, out[0].live_ms), (BASE + 5000, 250));
        assert_eq!(out[1].venue, ALL);
        assert_eq!(bars.next_close_ms(), None);
    }

    #[test]
    fn ofi_terms_and_the_all_row() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        let (a, b) = (bid("binance"), bid("coinbase"));
        bars.on_book(&a, BASE + 100, Some(sample("100", "1", "101", "1")));
        bars.on_book(&a, BASE + 300, Some(sample("100.5", "2", "101", "3")));
        bars.on_book(
            &a,
            BASE + 600,
            Some(sample6("100", "5", "100.9", "4", "2", "1")),
        );
        bars.on_book(&a, BASE + 700, None);
        bars.on_book(&a, BASE + 800, Some(sample("99", "1", "102", "1")));
        bars.on_book(
            &b,
            BASE + 500,
            Some(sample6("100", "1", "100.2", "1", "3", "5")),
        );
        bars.on_book(
            &b,
            BASE + 500,
            Some(sample6("100", "4", "100.2", "1", "3", "5")),
        );
        let out: BTreeMap<String, Bar> = bars
            .close_until(BASE + 999)
            .into_iter()
            .map(|b| (b.venue.clone(), b))
            .collect();
        assert_eq!(out["binance"].ofi, d("-6"));
        assert_eq!(out["coinbase"].ofi, d("3"));
        assert_eq!(out[ALL].ofi, d("-3"));
        assert_eq!(out["binance"].live_ms, 800);
        assert_eq!(out["coinbase"].live_ms, 500);
        assert!(approx(out["binance"].twa_bid_depth.unwrap(), 900.0 / 800.0));
        assert!(approx(out[ALL].twa_bid_depth.unwrap(), 900.0 / 800.0 + 3.0));
        assert!(approx(out[ALL].twa_ask_depth.unwrap(), 1.0 + 5.0));
        assert!(out[ALL].twa_spread.is_none() && out[ALL].live_ms == 0);
    }

    #[test]
    fn a_window_with_only_an_ofi_term_has_a_row_without_averages() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        bars.on_book(
            &bid("binance"),
            BASE + 999,
            Some(sample("100", "1", "101", "1")),
        );
        bars.on_book(
            &bid("binance"),
            BASE + 999,
            Some(sample("100", "3", "101", "1")),
        );
        bars.on_book(&bid("binance"), BASE + 999, None);
        let out = bars.close_until(BASE + 999);
        assert_eq!(out.len(), 2);
        let (venue, total) = (&out[0], &out[1]);
        assert_eq!(
            (
                venue.live_ms,
                venue.ofi,
                venue.twa_spread,
                venue.twa_bid_depth
            ),
            (0, d("2"), None, None)
        );
        assert_eq!(
            (total.venue.as_str(), total.ofi, total.twa_bid_depth),
            (ALL, d("2"), None)
        );
    }

    #[test]
    fn a_book_never_live_and_without_trades_makes_no_row() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        bars.on_book(&bid("binance"), BASE + 10, None);
        bars.on_trade(&t1("coinbase", BASE + 20, "100", "1"));
        let venues: Vec<_> = bars
            .close_until(BASE + 999)
            .into_iter()
            .map(|b| b.venue)
            .collect();
        assert_eq!(venues, ["coinbase", ALL]);
    }

    #[test]
    fn a_late_state_is_clamped_to_the_integrated_point() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000]);
        bars.on_book(
            &bid("binance"),
            BASE + 500,
            Some(sample("100", "1", "101", "1")),
        );
        assert_eq!(bars.close_until(BASE + 1999).len(), 4);
        bars.on_book(
            &bid("binance"),
            BASE + 1500,
            Some(sample6("100", "2", "100.5", "3", "9", "1")),
        );
        assert!(bars
            .open_windows()
            .iter()
            .all(|(_, start, _)| *start >= BASE + 2000));
        let out = bars.close_until(BASE + 2999);
        assert_eq!(out.len(), 2);
        let venue = &out[0];
        assert_eq!((venue.window_start_ms, venue.live_ms), (BASE + 2000, 1000));
        assert_eq!(
            (venue.twa_spread, venue.twa_bid_depth),
            (Some(0.5), Some(9.0))
        );
        assert_eq!(venue.ofi, d("-2"));
    }

    #[test]
    fn a_book_first_seen_with_a_state_before_the_closed_windows_does_not_reopen_them() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000, 60_000]);
        bars.on_book(
            &bid("binance"),
            BASE + 100,
            Some(sample("100", "1", "101", "1")),
        );
        bars.close_until(BASE + 2999);
        assert_eq!(bars.closed_through_ms(), Some(BASE + 3000));
        bars.on_book(
            &bid("coinbase"),
            BASE + 1200,
            Some(sample("100", "1", "100.2", "1")),
        );
        assert!(bars
            .open_windows()
            .iter()
            .all(|(i, start, _)| start + i > BASE + 2999));
        let out = bars.close_until(BASE + 3999);
        let coinbase: Vec<_> = out
            .iter()
            .filter(|b| b.venue == "coinbase")
            .map(|b| (b.window_start_ms, b.live_ms))
            .collect();
        assert_eq!(coinbase, [(BASE + 3000, 1000)]);
    }

    #[test]
    fn a_trade_in_a_closed_window_is_left_out_of_it() {
        let mut bars = InstrumentBars::new("BTC-USD", &[1000, 1_000_000]);
        bars.on_trade(&t1("binance", BASE + 10, "100", "1"));
        assert_eq!(bars.close_until(BASE + 999).len(), 2);
        bars.on_trade(&t1("binance", BASE + 20, "200", "1"));
        assert!(bars.close_until(BASE + 1999).is_empty());
        let out: Vec<_> = bars
            .close_until(BASE + 999_999)
            .into_iter()
            .map(|b| (b.interval_ms, b.venue, b.trade_count, b.high))
            .collect();
        assert_eq!(
            out,
            [
                (1_000_000, "binance".to_string(), 2, Some(d("200"))),
                (1_000_000, ALL.to_string(), 2, Some(d("200"))),
            ]
        );
    }

    #[test]
    fn trade_ids_order_as_python_ints() {
        assert!(TradeIdNum::of("10") > TradeIdNum::of("9"));
        assert_eq!(TradeIdNum::of("007"), TradeIdNum::of("7"));
        assert_eq!(TradeIdNum::of("x1"), TradeIdNum::Small(0));
        assert_eq!(TradeIdNum::of(""), TradeIdNum::Small(0));
        assert_eq!(TradeIdNum::of("-1"), TradeIdNum::Small(0));
        let big = "1".repeat(40);
        let bigger = "2".repeat(40);
        assert!(TradeIdNum::of(&big) > TradeIdNum::of(&"9".repeat(38)));
        assert!(TradeIdNum::of(&bigger) > TradeIdNum::of(&big));
        assert!(TradeIdNum::of(&"1".repeat(41)) > TradeIdNum::of(&bigger));
        let t = t1("binance", 5, "1", "42");
        assert_eq!(trade_order(&t), (5, "binance", TradeIdNum::Small(42)));
    }

    #[test]
    fn quotients_round_like_python_decimal() {
        // values checked against Python: float(Decimal(a) / Decimal(b))
        assert_eq!(py_div_to_f64(d("301"), d("3")), 100.33333333333333);
        assert_eq!(py_div_to_f64(d("1"), d("3")), 1.0 / 3.0);
        assert_eq!(
            py_div_to_f64(d("0"), d("-5")).to_bits(),
            (-0.0f64).to_bits()
        );
        assert_eq!(py_div_to_f64(d("0.0"), d("5")).to_bits(), 0.0f64.to_bits());
        assert_eq!(py_div_to_f64(d("-2"), d("8")), -0.25);
        assert_eq!(py_div_to_f64(d("2"), d("3")), 0.6666666666666666);
    }

    #[test]
    fn sums_and_products_match_python_decimal() {
        // (op, a, b, str(Decimal(a) op Decimal(b))) from Python 3.11
        let cases = [
            ("add", "0.0", "1", "1.0"),
            ("add", "0", "0.000", "0.000"),
            ("add", "5", "-5.00", "0.00"),
            (
                "add",
                "1234567890.123456789012345678",
                "0.0000000005",
                "1234567890.123456789512345678",
            ),
            ("mul", "0", "1.5", "0.0"),
            ("mul", "0.00", "-1.5", "0.000"), // Python: -0.000 (equal)
            (
                "mul",
                "123456789012345.6789",
                "98765432109876.54321",
                "12193263113702179522374638010",
            ), // 1.219326311370217952237463801E+28
            (
                "mul",
                "1.2345678901234",
                "1.2345678901234567",
                "1.524157875323813455266597557",
            ),
        ];
        for (op, a, b, want) in cases {
            let got = if op == "add" {
                py_add(d(a), d(b))
            } else {
                py_mul(d(a), d(b))
            };
            assert_eq!(got.to_string(), want, "{a} {op} {b}");
        }
        assert_eq!(py_sub(d("5"), d("0.000")).to_string(), "5.000");
    }

    /// Rough cost per call (run with `--release --ignored --nocapture`).
    #[test]
    #[ignore]
    fn timing() {
        let mut rng = Rng(1);
        let mut bars = InstrumentBars::new("BTC-USDT", &[1000, 60_000]);
        let books: Vec<BookId> = ["binance", "coinbase", "kraken"]
            .iter()
            .map(|e| bid(e))
            .collect();
        let samples: Vec<BookSample> = (0..64)
            .map(|i| {
                let b = Dec::new(6_500_000 + i, 2);
                sample6(
                    &b.to_string(),
                    "0.51200000",
                    &(b + Dec::new(1, 2)).to_string(),
                    "1.20000000",
                    "12.34500000",
                    "9.87600000",
                )
            })
            .collect();
        let trades: Vec<Trade> = (0..64)
            .map(|i| {
                trade(
                    "binance",
                    0,
                    &Dec::new(6_500_000 + i, 2).to_string(),
                    "0.00123000",
                    Side::Buy,
                    "1",
                )
            })
            .collect();
        let n = 5_000_000;
        let mut now = 1_700_000_000_000i64;
        let (mut book_ns, mut trade_ns, mut next_ns, mut close_ns) = (0u128, 0u128, 0u128, 0u128);
        let (mut nb, mut nt) = (0u64, 0u64);
        let mut sink = 0i64;
        for i in 0..n {
            now += (rng.below(3)) as i64;
            let t0 = std::time::Instant::now();
            if rng.below(4) == 0 {
                let mut t = trades[(i % 64) as usize].clone();
                t.trade_time_ms = now;
                t.trade_id = i.to_string();
                let t0 = std::time::Instant::now();
                bars.on_trade(&t);
                trade_ns += t0.elapsed().as_nanos();
                nt += 1;
            } else {
                let b = &books[rng.below(3) as usize];
                let s = samples[rng.below(64) as usize].clone();
                bars.on_book(b, now, Some(s));
                book_ns += t0.elapsed().as_nanos();
                nb += 1;
            }
            let t1 = std::time::Instant::now();
            sink += bars.next_close_ms().unwrap_or(0);
            sink += bars.next_close_ms().unwrap_or(0);
            next_ns += t1.elapsed().as_nanos();
            if i % 100 == 0 {
                let t2 = std::time::Instant::now();
                sink += bars.close_until(now - 50).len() as i64;
                close_ns += t2.elapsed().as_nanos();
            }
        }
        eprintln!(
            "on_book {:.0} ns, on_trade {:.0} ns, 2x next_close_ms {:.0} ns, close_until {:.0} ns/call ({sink})",
            book_ns as f64 / nb as f64,
            trade_ns as f64 / nt as f64,
            next_ns as f64 / n as f64,
            close_ns as f64 / (n / 100) as f64
        );
    }

    // --- the millisecond reference (randomized) --------------------------------------------

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    const PRICES: [&str; 5] = ["99", "99.5", "100", "100.5", "101"];
    const SIZES: [&str; 4] = ["0.1", "1", "2.25", "5"];
    const DEPTHS: [&str; 5] = ["0", "0.1", "1", "2.25", "5"];

    fn random_sample(rng: &mut Rng) -> Option<BookSample> {
        if rng.below(3) == 0 {
            return None;
        }
        let bid = d(rng.pick(&PRICES));
        let spread = d(rng.pick(&["0.5", "1", "1.5"]));
        Some(BookSample {
            touch: (bid, d(rng.pick(&SIZES)), bid + spread, d(rng.pick(&SIZES))),
            bid_depth: d(rng.pick(&DEPTHS)),
            ask_depth: d(rng.pick(&DEPTHS)),
        })
    }

    fn random_states(rng: &mut Rng) -> Vec<(i64, Option<BookSample>)> {
        let n = rng.below(13) as usize;
        let mut times: Vec<i64> = (0..n).map(|_| rng.below(SPAN_MS as u64) as i64).collect();
        times.sort();
        if !times.is_empty() && rng.below(2) == 0 {
            times.push(*times.last().unwrap());
        }
        times
            .into_iter()
            .map(|t| (BASE + t, random_sample(rng)))
            .collect()
    }

    fn random_trades(rng: &mut Rng) -> Vec<Trade> {
        let n = rng.below(16);
        (0..n)
            .map(|i| {
                let tid = match rng.below(3) {
                    0 => (100 - i).to_string(),
                    1 => (100 + i).to_string(),
                    _ => format!("x{i}"),
                };
                let t =
                    BASE + 100 * rng.below((SPAN_MS / 100) as u64) as i64 + rng.pick(&[0, 0, 99]);
                let side = if rng.below(2) == 0 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                trade(
                    rng.pick(&EXCHANGES),
                    t,
                    rng.pick(&PRICES),
                    rng.pick(&SIZES),
                    side,
                    &tid,
                )
            })
            .collect()
    }

    #[derive(Debug, Default, Clone)]
    struct Ref {
        open: Option<Dec>,
        high: Option<Dec>,
        low: Option<Dec>,
        close: Option<Dec>,
        volume: Dec,
        notional: Dec,
        vwap: Option<f64>,
        trade_count: i64,
        buy_volume: Dec,
        sell_volume: Dec,
        live_ms: i64,
        twa_spread: Option<f64>,
        twa_bid_depth: Option<f64>,
        twa_ask_depth: Option<f64>,
        ofi: Dec,
        ofi_terms: i64,
    }

    fn trade_figures(r: &mut Ref, trades: &[&Trade]) {
        if trades.is_empty() {
            return;
        }
        let mut ordered = trades.to_vec();
        ordered.sort_by(|a, b| trade_order(a).cmp(&trade_order(b))); // stable
        r.open = Some(ordered[0].price);
        r.close = Some(ordered.last().unwrap().price);
        r.high = trades.iter().map(|t| t.price).max();
        r.low = trades.iter().map(|t| t.price).min();
        r.volume = trades.iter().map(|t| t.size).sum();
        r.notional = trades.iter().map(|t| t.price * t.size).sum();
        r.vwap = Some(py_div_to_f64(r.notional, r.volume));
        r.trade_count = trades.len() as i64;
        r.buy_volume = trades
            .iter()
            .filter(|t| t.taker_side == Side::Buy)
            .map(|t| t.size)
            .sum();
        r.sell_volume = trades
            .iter()
            .filter(|t| t.taker_side == Side::Sell)
            .map(|t| t.size)
            .sum();
    }

    fn reference(
        trades: &[Trade],
        books: &[Vec<(i64, Option<BookSample>)>; 2],
        intervals: &[i64],
        watermark: i64,
    ) -> BTreeMap<(i64, i64, String), Ref> {
        let mut rows = BTreeMap::new();
        for &interval in intervals {
            let first = BASE.div_euclid(interval) * interval - interval;
            let mut start = first;
            while start + interval - 1 <= watermark {
                let end = start + interval;
                let mut venue_rows: Vec<(String, Ref)> = Vec::new();
                for (e, exchange) in EXCHANGES.iter().enumerate() {
                    let mut r = Ref::default();
                    let ts: Vec<&Trade> = trades
                        .iter()
                        .filter(|t| {
                            t.exchange == *exchange
                                && start <= t.trade_time_ms
                                && t.trade_time_ms < end
                        })
                        .collect();
                    trade_figures(&mut r, &ts);
                    let states = &books[e];
                    let (mut sp, mut bd, mut ad) = (Dec::ZERO, Dec::ZERO, Dec::ZERO);
                    for ms in start..end {
                        let mut held = None;
                        for (t, s) in states {
                            if *t <= ms {
                                held = s.as_ref();
                            }
                        }
                        if let Some(h) = held {
                            r.live_ms += 1;
                            sp += h.touch.2 - h.touch.0;
                            bd += h.bid_depth;
                            ad += h.ask_depth;
                        }
                    }
                    if r.live_ms > 0 {
                        let l = Dec::from(r.live_ms);
                        r.twa_spread = Some(py_div_to_f64(sp, l));
                        r.twa_bid_depth = Some(py_div_to_f64(bd, l));
                        r.twa_ask_depth = Some(py_div_to_f64(ad, l));
                    }
                    for w in states.windows(2) {
                        if let ((_, Some(p)), (t, Some(c))) = (&w[0], &w[1]) {
                            if start <= *t && *t < end {
                                r.ofi += ofi_term(&p.touch, &c.touch);
                                r.ofi_terms += 1;
                            }
                        }
                    }
                    if r.trade_count > 0 || r.live_ms > 0 || r.ofi_terms > 0 {
                        venue_rows.push((exchange.to_string(), r));
                    }
                }
                if !venue_rows.is_empty() {
                    let mut total = Ref::default();
                    let ts: Vec<&Trade> = trades
                        .iter()
                        .filter(|t| start <= t.trade_time_ms && t.trade_time_ms < end)
                        .collect();
                    trade_figures(&mut total, &ts);
                    let depths: Vec<&Ref> = venue_rows
                        .iter()
                        .map(|(_, r)| r)
                        .filter(|r| r.twa_bid_depth.is_some())
                        .collect();
                    if !depths.is_empty() {
                        total.twa_bid_depth =
                            Some(depths.iter().map(|r| r.twa_bid_depth.unwrap()).sum());
                        total.twa_ask_depth =
                            Some(depths.iter().map(|r| r.twa_ask_depth.unwrap()).sum());
                    }
                    total.ofi = venue_rows.iter().map(|(_, r)| r.ofi).sum();
                    for (v, r) in venue_rows {
                        rows.insert((interval, start, v), r);
                    }
                    rows.insert((interval, start, ALL.to_string()), total);
                }
                start += interval;
            }
        }
        rows
    }

    fn float_eq(got: Option<f64>, want: Option<f64>) -> bool {
        match (got, want) {
            (None, None) => true,
            (Some(g), Some(w)) => approx(g, w),
            _ => false,
        }
    }

    fn assert_bars_equal(bars: &[Bar], want: &BTreeMap<(i64, i64, String), Ref>) {
        let have: BTreeMap<(i64, i64, String), &Bar> = bars
            .iter()
            .map(|b| ((b.interval_ms, b.window_start_ms, b.venue.clone()), b))
            .collect();
        assert_eq!(have.len(), bars.len(), "a window closed twice");
        assert_eq!(
            have.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (key, b) in &have {
            let r = &want[key];
            assert_eq!(b.instrument, "BTC-USD");
            assert_eq!(
                (
                    b.open,
                    b.high,
                    b.low,
                    b.close,
                    b.volume,
                    b.notional,
                    b.trade_count
                ),
                (
                    r.open,
                    r.high,
                    r.low,
                    r.close,
                    r.volume,
                    r.notional,
                    r.trade_count
                ),
                "{key:?}"
            );
            assert_eq!(
                (b.buy_volume, b.sell_volume, b.live_ms, b.ofi),
                (r.buy_volume, r.sell_volume, r.live_ms, r.ofi),
                "{key:?}"
            );
            assert!(float_eq(b.vwap, r.vwap), "{key:?} vwap");
            assert!(float_eq(b.twa_spread, r.twa_spread), "{key:?} spread");
            assert!(
                float_eq(b.twa_bid_depth, r.twa_bid_depth),
                "{key:?} bid depth"
            );
            assert!(
                float_eq(b.twa_ask_depth, r.twa_ask_depth),
                "{key:?} ask depth"
            );
        }
    }

    #[test]
    fn bars_equal_the_millisecond_reference() {
        let mut rng = Rng(12345);
        for _ in 0..300 {
            let books = [random_states(&mut rng), random_states(&mut rng)];
            let trades = random_trades(&mut rng);
            let mut bars = InstrumentBars::new("BTC-USD", &INTERVALS);
            // any interleaving of the three streams that keeps each book's states in order
            let (mut ia, mut ib, mut it) = (0, 0, 0);
            loop {
                let mut open = Vec::new();
                if ia < books[0].len() {
                    open.push(0)
                }
                if ib < books[1].len() {
                    open.push(1)
                }
                if it < trades.len() {
                    open.push(2)
                }
                if open.is_empty() {
                    break;
                }
                match rng.pick(&open) {
                    0 => {
                        let (t, s) = &books[0][ia];
                        bars.on_book(&bid(EXCHANGES[0]), *t, s.clone());
                        ia += 1
                    }
                    1 => {
                        let (t, s) = &books[1][ib];
                        bars.on_book(&bid(EXCHANGES[1]), *t, s.clone());
                        ib += 1
                    }
                    _ => {
                        bars.on_trade(&trades[it]);
                        it += 1
                    }
                }
            }
            let out = bars.close_until(WATERMARK);
            assert_bars_equal(&out, &reference(&trades, &books, &INTERVALS, WATERMARK));
            let ends: Vec<i64> = out
                .iter()
                .map(|b| b.window_start_ms + b.interval_ms)
                .collect();
            let mut sorted = ends.clone();
            sorted.sort();
            assert_eq!(ends, sorted);
            assert!(bars
                .open_windows()
                .iter()
                .all(|(i, s, _)| s + i - 1 > WATERMARK));
            assert!(bars.close_until(WATERMARK).is_empty());
            assert!(bars.next_close_ms().is_none_or(|due| due > WATERMARK));
        }
    }

    #[test]
    fn closing_in_steps_equals_closing_at_once() {
        let mut rng = Rng(777);
        for _ in 0..200 {
            let states = random_states(&mut rng);
            let trades = random_trades(&mut rng);
            let mut cuts: Vec<i64> = (0..rng.below(7)).map(|_| rng.below(6001) as i64).collect();
            cuts.sort();
            let mut once = InstrumentBars::new("BTC-USD", &INTERVALS);
            let mut steps = InstrumentBars::new("BTC-USD", &INTERVALS);
            for bars in [&mut once, &mut steps] {
                for t in &trades {
                    bars.on_trade(t);
                }
                for (t, s) in &states {
                    bars.on_book(&bid("binance"), *t, s.clone());
                }
            }
            let mut out = Vec::new();
            for cut in cuts {
                out.extend(steps.close_until(BASE - 1000 + cut));
            }
            out.extend(steps.close_until(WATERMARK));
            assert_eq!(out, once.close_until(WATERMARK));
        }
    }

    // --- differential replay against the Python engine ----------------------------------------

    /// Replays the calls recorded by the Python driver (JSON lines; path in $BARS_DIFF, skipped
    /// when unset) and compares every output: decimals
    /// truncated to 18 decimals (and, reported apart, value and scale before truncation),
    /// floats bit for bit, next_close_ms and closed_until equal.
    #[test]
    fn differential_replay_of_the_python_engine() {
        use serde_json::Value;
        let Ok(path) = std::env::var("BARS_DIFF") else {
            eprintln!("BARS_DIFF not set: differential replay skipped");
            return;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("differential replay skipped: no {path}");
            return;
        };
        let mut bars: Option<InstrumentBars> = None;
        let (mut calls, mut nbars, mut ndec, mut nfloat) = (0u64, 0u64, 0u64, 0u64);
        let (mut trunc_diff, mut value_diff, mut scale_diff, mut float_diff, mut other_diff) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut examples: Vec<String> = Vec::new();
        let note = |examples: &mut Vec<String>, msg: String| {
            if examples.len() < 20 {
                examples.push(msg);
            }
        };
        for (lineno, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line).unwrap();
            calls += 1;
            let op = v["op"].as_str().unwrap();
            match op {
                "new" => {
                    let iv: Vec<i64> = v["intervals"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect();
                    bars = Some(InstrumentBars::new(v["instrument"].as_str().unwrap(), &iv));
                }
                "trade" => {
                    let side = if v["side"] == "buy" {
                        Side::Buy
                    } else {
                        Side::Sell
                    };
                    let t = trade(
                        v["ex"].as_str().unwrap(),
                        v["t"].as_i64().unwrap(),
                        v["p"].as_str().unwrap(),
                        v["q"].as_str().unwrap(),
                        side,
                        v["id"].as_str().unwrap(),
                    );
                    bars.as_mut().unwrap().on_trade(&t);
                }
                "book" => {
                    let s = v["s"].as_array().map(|a| {
                        let x: Vec<Dec> = a.iter().map(|x| d(x.as_str().unwrap())).collect();
                        BookSample {
                            touch: (x[0], x[1], x[2], x[3]),
                            bid_depth: x[4],
                            ask_depth: x[5],
                        }
                    });
                    let id = (
                        v["ex"].as_str().unwrap().to_string(),
                        v["sym"].as_str().unwrap().to_string(),
                    );
                    bars.as_mut()
                        .unwrap()
                        .on_book(&id, v["t"].as_i64().unwrap(), s);
                }
                "next" => {
                    let got = bars.as_ref().unwrap().next_close_ms();
                    if got != v["r"].as_i64() {
                        other_diff += 1;
                        note(
                            &mut examples,
                            format!("line {lineno}: next_close_ms {got:?} != {}", v["r"]),
                        );
                    }
                }
                "close" => {
                    let b = bars.as_mut().unwrap();
                    let got = b.close_until(v["wm"].as_i64().unwrap());
                    let want = v["bars"].as_array().unwrap();
                    let cu: Vec<(i64, i64)> = v["cu"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_i64().unwrap(), p[1].as_i64().unwrap()))
                        .collect();
                    let got_cu: Vec<(i64, i64)> =
                        b.closed_until.iter().map(|(k, v)| (*k, *v)).collect();
                    if cu != got_cu {
                        other_diff += 1;
                        note(
                            &mut examples,
                            format!("line {lineno}: closed_until {got_cu:?} != {cu:?}"),
                        );
                    }
                    if got.len() != want.len() {
                        other_diff += 1;
                        note(
                            &mut examples,
                            format!("line {lineno}: {} bars != {}", got.len(), want.len()),
                        );
                        continue;
                    }
                    for (g, w) in got.iter().zip(want) {
                        nbars += 1;
                        let w = w.as_array().unwrap();
                        let ids = (
                            w[0].as_str().unwrap(),
                            w[1].as_str().unwrap(),
                            w[2].as_i64().unwrap(),
                            w[3].as_i64().unwrap(),
                            w[11].as_i64().unwrap(),
                            w[14].as_i64().unwrap(),
                        );
                        if (
                            g.instrument.as_str(),
                            g.venue.as_str(),
                            g.interval_ms,
                            g.window_start_ms,
                            g.trade_count,
                            g.live_ms,
                        ) != ids
                        {
                            other_diff += 1;
                            note(
                                &mut examples,
                                format!("line {lineno}: bar identity {g:?} != {w:?}"),
                            );
                            continue;
                        }
                        let decs: [(&str, Option<Dec>, &Value); 10] = [
                            ("open", g.open, &w[4]),
                            ("high", g.high, &w[5]),
                            ("low", g.low, &w[6]),
                            ("close", g.close, &w[7]),
                            ("volume", Some(g.volume), &w[8]),
                            ("notional", Some(g.notional), &w[9]),
                            ("buy_volume", Some(g.buy_volume), &w[12]),
                            ("sell_volume", Some(g.sell_volume), &w[13]),
                            ("ofi", Some(g.ofi), &w[18]),
                            ("-", None, &Value::Null),
                        ];
                        for (name, got, want) in decs {
                            if name == "-" {
                                continue;
                            }
                            ndec += 1;
                            let Ok(want) = want
                                .as_str()
                                .map(|t| {
                                    parse_dec(t)
                                        .or_else(|| {
                                            // Python's zero beyond 28 decimals ("0E-30"): equal to a Dec zero
                                            let (m, e) = t.split_once('E')?;
                                            (m.trim_start_matches('-') == "0"
                                                && e.parse::<i32>().ok()? < -28)
                                                .then(|| {
                                                    scale_diff += 1;
                                                    Dec::from_i128_with_scale(0, 28)
                                                })
                                        })
                                        .ok_or(t)
                                })
                                .transpose()
                            else {
                                trunc_diff += 1;
                                note(
                                    &mut examples,
                                    format!("line {lineno}: {name} {got:?} != {want} (not a Dec)"),
                                );
                                continue;
                            };
                            match (got, want) {
                                (None, None) => {}
                                (Some(g), Some(w)) => {
                                    if to_scaled_i128(g) != to_scaled_i128(w) {
                                        trunc_diff += 1;
                                        note(
                                            &mut examples,
                                            format!("line {lineno}: {name} {g} != {w} (truncated)"),
                                        );
                                    }
                                    if g != w {
                                        value_diff += 1;
                                        note(
                                            &mut examples,
                                            format!("line {lineno}: {name} {g} != {w} (value)"),
                                        );
                                    } else if g.scale() != w.scale() {
                                        scale_diff += 1;
                                        note(
                                            &mut examples,
                                            format!("line {lineno}: {name} {g} != {w} (scale)"),
                                        );
                                    }
                                }
                                _ => {
                                    trunc_diff += 1;
                                    note(
                                        &mut examples,
                                        format!("line {lineno}: {name} {got:?} != {want:?}"),
                                    );
                                }
                            }
                        }
                        let floats = [
                            ("vwap", g.vwap, &w[10]),
                            ("twa_spread", g.twa_spread, &w[15]),
                            ("twa_bid_depth", g.twa_bid_depth, &w[16]),
                            ("twa_ask_depth", g.twa_ask_depth, &w[17]),
                        ];
                        for (name, got, want) in floats {
                            nfloat += 1;
                            let want = want.as_str().map(|s| s.parse::<f64>().unwrap());
                            if got.map(f64::to_bits) != want.map(f64::to_bits) {
                                float_diff += 1;
                                note(
                                    &mut examples,
                                    format!("line {lineno}: {name} {got:?} != {want:?}"),
                                );
                            }
                        }
                    }
                }
                "div" => {
                    // float(Decimal(a) / Decimal(b)) for operands Dec holds exactly
                    let (ta, tb) = (v["a"].as_str().unwrap(), v["b"].as_str().unwrap());
                    let (Some(a), Some(b)) = (parse_dec(ta), parse_dec(tb)) else {
                        continue;
                    };
                    let sig = |t: &str| {
                        let mantissa = t.split(['e', 'E']).next().unwrap();
                        let digits: String =
                            mantissa.chars().filter(char::is_ascii_digit).collect();
                        digits.trim_start_matches('0').len()
                    };
                    if sig(ta) > 28 || sig(tb) > 28 {
                        continue; // not a value Dec holds
                    }
                    nfloat += 1;
                    let want: f64 = v["r"].as_str().unwrap().parse().unwrap();
                    let got = py_div_to_f64(a, b);
                    if got.to_bits() != want.to_bits() {
                        float_diff += 1;
                        note(
                            &mut examples,
                            format!("line {lineno}: {ta} / {tb}: {got:?} != {want:?}"),
                        );
                    }
                }
                _ => panic!("unknown op {op}"),
            }
        }
        eprintln!(
            "differential replay of {path}: {calls} calls, {nbars} bars, {ndec} decimals, \
             {nfloat} floats; differences: truncated decimals {trunc_diff}, decimal values \
             {value_diff}, decimal scales {scale_diff}, floats {float_diff}, other {other_diff}"
        );
        for e in &examples {
            eprintln!("  {e}");
        }
        if std::env::var_os("BARS_DIFF_REPORT_ONLY").is_none() {
            assert_eq!(
                (trunc_diff, value_diff, scale_diff, float_diff, other_diff),
                (0, 0, 0, 0, 0)
            );
        }
    }
}
