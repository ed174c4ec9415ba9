//! Trade-to-book matching: every trade against its own exchange's book as of the trade's event
//! time, and against the cross-exchange NBBO at that time. The Rust twin of
//! `jobs/matching.py`. Pure, no I/O.
//!
//! "As of" = the last book state whose event time is <= the trade time. Where the exchange
//! numbers trades and book messages in one sequence (Coinbase's `sequence_num`), equal times
//! are ordered by it; elsewhere a book update stamped with the trade's own millisecond counts
//! as before the trade.
//!
//! Decimal arithmetic follows Python's default context (28 significant digits, ROUND_HALF_EVEN):
//! sums and differences of exchange numbers are exact in both; the two quotients (the mid,
//! and slippage / mid for the basis points) are computed here exactly as Python's `Decimal`
//! division rounds them (`py_div`), and the float is the correctly rounded value of that
//! rounded quotient times 10 000, as Python's `float(Decimal)` gives it.

use serde::{Deserialize, Serialize};

use crate::dec::{py_add, py_div, py_sub, Dec};
use crate::events::{BookStatus, Level, Side, Trade};
use crate::nbbo::Nbbo;

/// One published state of a book (top N levels), kept while trades may still need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BookState {
    /// event time of the state (the exchange's time of its last update)
    pub time_ms: i64,
    /// the exchange's sequence / update id of the last applied message (-1: none)
    pub seq: i64,
    pub version: i64,
    pub status: BookStatus,
    /// best first
    #[serde(with = "crate::dec::wire")]
    pub bids: Vec<Level>,
    /// best first
    #[serde(with = "crate::dec::wire")]
    pub asks: Vec<Level>,
}

impl BookState {
    pub fn live(&self) -> bool {
        self.status == BookStatus::Live
    }
}

/// Recent states of one book in arrival order (times are non-decreasing but for resyncs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BookHistory {
    states: Vec<BookState>,
    /// times non-decreasing (nearly always): prune can bisect instead of scanning
    ordered: bool,
}

impl BookHistory {
    pub fn new() -> Self {
        BookHistory {
            states: Vec::new(),
            ordered: true,
        }
    }

    /// `BookHistory(states)`
    pub fn from_states(states: Vec<BookState>) -> Self {
        let ordered = is_ordered(&states);
        BookHistory { states, ordered }
    }

    pub fn states(&self) -> &[BookState] {
        &self.states
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn append(&mut self, state: BookState) {
        if let Some(last) = self.states.last() {
            if state.time_ms < last.time_ms {
                self.ordered = false;
            }
        }
        self.states.push(state);
    }

    /// The last state (in history order) at or before `time_ms` (ties broken by `seq` when
    /// given: only a state with a lower seq counts as before).
    pub fn as_of(&self, time_ms: i64, seq: Option<i64>) -> Option<&BookState> {
        for state in self.states.iter().rev() {
            if state.time_ms < time_ms {
                return Some(state);
            }
            if state.time_ms == time_ms && seq.is_none_or(|seq| state.seq < seq) {
                return Some(state);
            }
        }
        None
    }

    /// How many states `prune(watermark_ms)` drops: those before the last state at or
    /// before the watermark.
    fn keep_from(&self, watermark_ms: i64) -> usize {
        if self.ordered {
            // bisect_right(states, watermark, key=time_ms) - 1, at least 0
            self.states
                .partition_point(|s| s.time_ms <= watermark_ms)
                .saturating_sub(1)
        } else {
            self.states
                .iter()
                .rposition(|s| s.time_ms <= watermark_ms)
                .unwrap_or(0)
        }
    }

    fn after_drop(&mut self) {
        if !self.ordered {
            self.ordered = is_ordered(&self.states);
        }
    }

    /// Drop states no trade after the watermark can need: keep the last state at or before
    /// it and everything later. Returns how many were dropped (the first ones).
    pub fn prune(&mut self, watermark_ms: i64) -> usize {
        let keep_from = self.keep_from(watermark_ms);
        if keep_from == 0 {
            return 0;
        }
        self.states.drain(..keep_from);
        self.after_drop();
        keep_from
    }

    /// `prune`, returning the dropped states (as Python's `prune` does).
    pub fn prune_dropped(&mut self, watermark_ms: i64) -> Vec<BookState> {
        let keep_from = self.keep_from(watermark_ms);
        if keep_from == 0 {
            return Vec::new();
        }
        let dropped: Vec<BookState> = self.states.drain(..keep_from).collect();
        self.after_drop();
        dropped
    }
}

fn is_ordered(states: &[BookState]) -> bool {
    states.windows(2).all(|w| w[0].time_ms <= w[1].time_ms)
}

/// Where a trade's price is against the own book's opposite best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Touch {
    At,
    Inside,
    Through,
    None,
}

impl Touch {
    pub fn as_str(self) -> &'static str {
        match self {
            Touch::At => "at",
            Touch::Inside => "inside",
            Touch::Through => "through",
            Touch::None => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MatchedTrade {
    pub trade: Trade,
    pub instrument: String,
    /// LIVE | RESYNCING | STALE | NONE (no state at the trade's time)
    pub book_status: &'static str,
    pub book_time_ms: i64,
    pub book_version: i64,
    pub book_seq: i64,
    pub bid: Option<Level>,
    pub ask: Option<Level>,
    pub mid: Option<Dec>,
    pub spread: Option<Dec>,
    /// vs the own book's opposite best
    pub touch: Touch,
    /// opposite levels priced at or better than the trade
    pub levels_consumed: i64,
    /// trade size covered by those levels (capped by the trade size)
    pub size_consumed: Dec,
    /// positive: the taker paid more than the mid
    pub slippage_mid: Option<Dec>,
    pub slippage_mid_bps: Option<f64>,
    pub nbbo: Option<Nbbo>,
    /// positive: worse than the best price across exchanges
    pub slippage_nbbo: Option<Dec>,
    pub trade_through: bool,
}

fn touch(side: Side, price: Dec, opposite: Option<&Level>) -> Touch {
    let Some(&(best, _)) = opposite else {
        return Touch::None;
    };
    if price == best {
        return Touch::At;
    }
    let better_than_touch = if side == Side::Buy {
        price < best
    } else {
        price > best
    };
    if better_than_touch {
        Touch::Inside
    } else {
        Touch::Through
    }
}

fn consumed(side: Side, trade: &Trade, levels: &[Level]) -> (i64, Dec) {
    let mut count = 0i64;
    let mut available = Dec::ZERO;
    for &(price, size) in levels {
        let beyond = if side == Side::Buy {
            price > trade.price
        } else {
            price < trade.price
        };
        if beyond {
            break;
        }
        count += 1;
        available = py_add(available, size);
    }
    // min(available, trade.size): the first unless the second is smaller
    (
        count,
        if trade.size < available {
            trade.size
        } else {
            available
        },
    )
}

pub fn match_trade(
    trade: &Trade,
    instrument: &str,
    own: Option<&BookState>,
    nbbo: Option<&Nbbo>,
) -> MatchedTrade {
    match_trade_owned(trade, instrument, own, nbbo.cloned())
}

/// [`match_trade`] keeping the NBBO given (no copy).
pub fn match_trade_owned(
    trade: &Trade,
    instrument: &str,
    own: Option<&BookState>,
    nbbo: Option<Nbbo>,
) -> MatchedTrade {
    let side = trade.taker_side;
    let live_state = own.filter(|s| s.live());
    let (bids, asks): (&[Level], &[Level]) = match live_state {
        Some(s) => (&s.bids, &s.asks),
        None => (&[], &[]),
    };
    let bid = bids.first().copied();
    let ask = asks.first().copied();
    let (mut mid, mut spread, mut slip, mut slip_bps) = (None, None, None, None);
    if let (Some((bid_price, _)), Some((ask_price, _))) = (bid, ask) {
        let m = py_div(py_add(bid_price, ask_price), Dec::TWO).map(|q| q.to_dec());
        // a zero divisor cannot happen (2)
        let m = m.expect("division by 2");
        mid = Some(m);
        spread = Some(py_sub(ask_price, bid_price));
        let s = if side == Side::Buy {
            py_sub(trade.price, m)
        } else {
            py_sub(m, trade.price)
        };
        slip = Some(s);
        // float(slip / mid * BPS) if mid else None
        if !m.is_zero() {
            slip_bps = py_div(s, m).map(|q| q.times_pow10(4).to_f64());
        }
    }
    let opposite = if side == Side::Buy { asks } else { bids };
    let (levels, size) = consumed(side, trade, opposite);
    let mut slip_nbbo = None;
    if let Some(n) = &nbbo {
        let best = if side == Side::Buy {
            n.ask_price
        } else {
            n.bid_price
        };
        if let Some(best) = best {
            slip_nbbo = Some(if side == Side::Buy {
                py_sub(trade.price, best)
            } else {
                py_sub(best, trade.price)
            });
        }
    }
    MatchedTrade {
        trade: trade.clone(),
        instrument: instrument.to_string(),
        book_status: own.map_or("NONE", |s| s.status.as_str()),
        book_time_ms: own.map_or(0, |s| s.time_ms),
        book_version: own.map_or(0, |s| s.version),
        book_seq: own.map_or(0, |s| s.seq.max(0)),
        bid,
        ask,
        mid,
        spread,
        touch: touch(side, trade.price, opposite.first()),
        levels_consumed: levels,
        size_consumed: size,
        slippage_mid: slip,
        slippage_mid_bps: slip_bps,
        nbbo,
        slippage_nbbo: slip_nbbo,
        trade_through: slip_nbbo.is_some_and(|s| s > Dec::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dec::parse_dec;
    use crate::events::BookStatus::{Live, Resyncing, Stale};
    use crate::nbbo::{compute_nbbo, VenueTop};

    fn d(s: &str) -> Dec {
        parse_dec(s).unwrap()
    }

    fn st(
        time_ms: i64,
        seq: i64,
        version: i64,
        status: BookStatus,
        bids: &[Level],
        asks: &[Level],
    ) -> BookState {
        let version = if version == 0 { time_ms } else { version };
        BookState {
            time_ms,
            seq,
            version,
            status,
            bids: bids.to_vec(),
            asks: asks.to_vec(),
        }
    }

    fn at(time_ms: i64) -> BookState {
        st(time_ms, -1, 0, Live, &[], &[])
    }

    fn trade(side: Side, price: &str, size: &str) -> Trade {
        Trade {
            exchange: "binance".into(),
            symbol: "BTCUSDT".into(),
            trade_id: "42".into(),
            price: d(price),
            size: d(size),
            taker_side: side,
            trade_time_ms: 1000,
            event_time_ms: 1000,
            receive_time_ns: 0,
            sequence: -1,
        }
    }

    fn same(a: Option<&BookState>, b: Option<&BookState>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        }
    }

    #[test]
    fn as_of_picks_the_last_state_at_or_before_the_time() {
        let h = BookHistory::from_states(vec![at(100), at(200), at(300)]);
        let s = h.states();
        assert!(h.as_of(99, None).is_none());
        assert!(same(h.as_of(100, None), Some(&s[0])));
        assert!(same(h.as_of(199, None), Some(&s[0])));
        assert!(same(h.as_of(200, None), Some(&s[1])));
        assert!(same(h.as_of(299, None), Some(&s[1])));
        assert!(same(h.as_of(1_000_000_000, None), Some(&s[2])));
        assert!(BookHistory::new().as_of(100, None).is_none());
    }

    #[test]
    fn as_of_with_a_shared_sequence_orders_equal_times_by_it() {
        let h = BookHistory::from_states(vec![
            st(100, 5, 0, Live, &[], &[]),
            st(200, 10, 0, Live, &[], &[]),
            st(200, 12, 0, Live, &[], &[]),
        ]);
        let s = h.states();
        assert!(same(h.as_of(200, None), Some(&s[2])));
        assert!(same(h.as_of(200, Some(11)), Some(&s[1])));
        assert!(same(h.as_of(200, Some(12)), Some(&s[1])));
        assert!(same(h.as_of(200, Some(13)), Some(&s[2])));
        assert!(same(h.as_of(200, Some(10)), Some(&s[0])));
        assert!(same(h.as_of(201, Some(0)), Some(&s[2])));
        assert!(h.as_of(100, Some(5)).is_none());
    }

    #[test]
    fn as_of_uses_history_order_when_a_resync_sends_time_back() {
        let mut h = BookHistory::new();
        h.append(st(500, -1, 1, Live, &[], &[]));
        h.append(st(400, -1, 2, Live, &[], &[]));
        assert!(!h.ordered);
        let rebuilt = &h.states()[1];
        assert!(same(h.as_of(450, None), Some(rebuilt)));
        assert!(same(h.as_of(600, None), Some(rebuilt)));
        assert!(same(h.as_of(420, None), Some(rebuilt)));
        assert!(h.as_of(399, None).is_none());
    }

    #[test]
    fn prune_keeps_the_last_state_at_or_before_the_watermark_and_everything_later() {
        let states: Vec<BookState> = [100, 200, 200, 300, 400].iter().map(|&t| at(t)).collect();
        let mut h = BookHistory::from_states(states.clone());
        assert_eq!(h.prune(50), 0);
        assert_eq!(h.states(), &states[..]);
        assert_eq!(h.prune_dropped(250), states[..2].to_vec());
        assert_eq!(h.states(), &states[2..]);
        assert_eq!(h.prune(250), 0);
        assert_eq!(h.prune(400), 2);
        assert_eq!(h.states(), &states[4..]);
        assert_eq!(h.prune(1_000_000_000), 0);
        assert_eq!(h.states(), &states[4..]);
        let mut empty = BookHistory::new();
        assert_eq!(empty.prune(100), 0);
        assert!(empty.is_empty());
    }

    fn brute_as_of(states: &[BookState], time_ms: i64, seq: Option<i64>) -> Option<usize> {
        states.iter().rposition(|s| {
            s.time_ms < time_ms || (s.time_ms == time_ms && seq.is_none_or(|q| s.seq < q))
        })
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + self.next((hi - lo + 1) as u64) as i64
        }
    }

    fn random_history(rng: &mut Rng) -> Vec<BookState> {
        let mut t = rng.range(0, 20);
        let steps = [0, 0, 1, 3, 10, -15];
        (0..rng.range(0, 25))
            .map(|v| {
                t += steps[rng.next(6) as usize];
                st(t, rng.range(-1, 8), v + 1, Live, &[], &[])
            })
            .collect()
    }

    #[test]
    fn as_of_and_prune_equal_brute_force() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for _ in 0..3000 {
            let states = random_history(&mut rng);
            let mut h = BookHistory::new();
            for s in &states {
                h.append(s.clone());
            }
            assert_eq!(h.ordered, is_ordered(&states));
            let time_ms = rng.range(-10, 150);
            let seq = if rng.next(3) == 0 {
                None
            } else {
                Some(rng.range(-1, 9))
            };
            let got = h.as_of(time_ms, seq).map(|s| s as *const BookState);
            let want =
                brute_as_of(&states, time_ms, seq).map(|i| &h.states()[i] as *const BookState);
            assert_eq!(got, want);
            // prune changes no answer for a later trade
            let watermark = rng.range(-10, 150);
            let dropped = h.prune_dropped(watermark);
            let want_dropped = states
                .iter()
                .rposition(|s| s.time_ms <= watermark)
                .unwrap_or(0);
            assert_eq!(dropped.len(), want_dropped);
            assert_eq!([dropped, h.states().to_vec()].concat(), states);
            assert_eq!(h.ordered, is_ordered(h.states()));
            for _ in 0..5 {
                let t = rng.range(watermark + 1, watermark + 200);
                let seq = if rng.next(3) == 0 {
                    None
                } else {
                    Some(rng.range(-1, 9))
                };
                let got = h.as_of(t, seq).cloned();
                let want = brute_as_of(&states, t, seq).map(|i| states[i].clone());
                assert_eq!(got, want);
            }
        }
    }

    fn bids() -> Vec<Level> {
        vec![(d("100"), d("1")), (d("99"), d("2")), (d("98"), d("3"))]
    }
    fn asks() -> Vec<Level> {
        vec![(d("101"), d("1")), (d("102"), d("2")), (d("103"), d("5"))]
    }
    fn book() -> BookState {
        st(900, 77, 5, Live, &bids(), &asks())
    }

    #[test]
    fn touch_and_levels_consumed() {
        use Side::{Buy, Sell};
        let cases = [
            (Buy, "101", "0.5", Touch::At, 1, "0.5"),
            (Buy, "100.5", "1", Touch::Inside, 0, "0"),
            (Buy, "102.5", "10", Touch::Through, 2, "3"),
            (Buy, "103", "2", Touch::Through, 3, "2"),
            (Buy, "200", "100", Touch::Through, 3, "8"),
            (Sell, "100", "0.25", Touch::At, 1, "0.25"),
            (Sell, "100.5", "1", Touch::Inside, 0, "0"),
            (Sell, "98.5", "5", Touch::Through, 2, "3"),
            (Sell, "98", "4", Touch::Through, 3, "4"),
            (Sell, "1", "100", Touch::Through, 3, "6"),
        ];
        let b = book();
        for (side, price, size, touch, levels, consumed) in cases {
            let m = match_trade(&trade(side, price, size), "BTC-USDT", Some(&b), None);
            assert_eq!(
                (m.touch, m.levels_consumed, m.size_consumed),
                (touch, levels, d(consumed)),
                "{price}"
            );
            assert_eq!((m.bid, m.ask), (Some(bids()[0]), Some(asks()[0])));
            assert_eq!(
                (m.book_status, m.book_time_ms, m.book_version, m.book_seq),
                ("LIVE", 900, 5, 77)
            );
            assert_eq!(m.instrument, "BTC-USDT");
        }
        assert_eq!(Touch::Through.as_str(), "through");
    }

    #[test]
    fn mid_spread_and_slippage_signs() {
        use Side::{Buy, Sell};
        let b = book();
        for (side, price, slippage, bps) in [
            (Buy, "101", "0.5", 49.75124378109453f64),
            (Buy, "100.5", "0", 0.0),
            (Buy, "100.25", "-0.25", -24.875621890547265),
            (Sell, "100", "0.5", 49.75124378109453),
            (Sell, "101", "-0.5", -49.75124378109453),
        ] {
            let m = match_trade(&trade(side, price, "1"), "I", Some(&b), None);
            assert_eq!((m.mid, m.spread), (Some(d("100.5")), Some(d("1"))));
            assert_eq!(m.mid.unwrap().to_string(), "100.5");
            assert_eq!(m.slippage_mid, Some(d(slippage)));
            // Python: float(Decimal(slippage) / Decimal("100.5") * 10000)
            assert_eq!(
                m.slippage_mid_bps.unwrap().to_bits(),
                bps.to_bits(),
                "{price}"
            );
            assert!(m.nbbo.is_none() && m.slippage_nbbo.is_none() && !m.trade_through);
        }
    }

    fn nbbo(bid: Option<&str>, ask: Option<&str>) -> Nbbo {
        let lv = |p: Option<&str>| p.map(|p| (d(p), d("1")));
        let top = VenueTop {
            exchange: "x".into(),
            symbol: "S".into(),
            status: Live,
            version: 1,
            age_ms: 0,
            bid: lv(bid),
            ask: lv(ask),
        };
        compute_nbbo("I", "USD", &[top], 0)
    }

    #[test]
    fn slippage_against_the_nbbo_and_trade_through() {
        use Side::{Buy, Sell};
        let cases = [
            (Buy, "101", Some("100.2"), Some("100.8"), Some("0.2"), true),
            (Buy, "100.8", Some("100.2"), Some("100.8"), Some("0"), false),
            (
                Buy,
                "100.7",
                Some("100.2"),
                Some("100.8"),
                Some("-0.1"),
                false,
            ),
            (Sell, "100", Some("100.2"), Some("100.8"), Some("0.2"), true),
            (
                Sell,
                "100.2",
                Some("100.2"),
                Some("100.8"),
                Some("0"),
                false,
            ),
            (
                Sell,
                "100.3",
                Some("100.2"),
                Some("100.8"),
                Some("-0.1"),
                false,
            ),
            (Buy, "101", Some("100.2"), None, None, false),
            (Sell, "100", None, Some("100.8"), None, false),
        ];
        let b = book();
        for (side, price, best_bid, best_ask, slippage, through) in cases {
            let n = nbbo(best_bid, best_ask);
            let m = match_trade(&trade(side, price, "1"), "I", Some(&b), Some(&n));
            assert_eq!(m.nbbo.as_ref(), Some(&n));
            assert_eq!(m.slippage_nbbo, slippage.map(d));
            assert_eq!(m.trade_through, through);
        }
    }

    #[test]
    fn a_book_that_is_not_live_gives_no_touch() {
        for status in [Resyncing, Stale] {
            let s = st(900, 3, 9, status, &bids(), &asks());
            let n = nbbo(Some("100.2"), Some("100.8"));
            let m = match_trade(&trade(Side::Buy, "101", "1"), "I", Some(&s), Some(&n));
            assert_eq!(m.book_status, status.as_str());
            assert_eq!((m.book_time_ms, m.book_version, m.book_seq), (900, 9, 3));
            assert_eq!((m.bid, m.ask, m.mid, m.spread), (None, None, None, None));
            assert_eq!(
                (m.touch, m.levels_consumed, m.size_consumed),
                (Touch::None, 0, Dec::ZERO)
            );
            assert!(m.slippage_mid.is_none() && m.slippage_mid_bps.is_none());
            assert_eq!(m.slippage_nbbo, Some(d("0.2")));
            assert!(m.trade_through);
        }
    }

    #[test]
    fn no_state_at_the_trades_time() {
        let m = match_trade(&trade(Side::Sell, "100", "1"), "I", None, None);
        assert_eq!(
            (m.book_status, m.book_time_ms, m.book_version, m.book_seq),
            ("NONE", 0, 0, 0)
        );
        assert_eq!(
            (m.touch, m.levels_consumed, m.size_consumed),
            (Touch::None, 0, Dec::ZERO)
        );
        assert!(m.mid.is_none() && m.slippage_nbbo.is_none() && !m.trade_through);
    }

    #[test]
    fn one_sided_book_and_no_sequence() {
        let bids_only = st(900, -1, 0, Live, &bids(), &[]);
        let buy = match_trade(&trade(Side::Buy, "101", "1"), "I", Some(&bids_only), None);
        assert_eq!(
            (buy.touch, buy.levels_consumed, buy.bid),
            (Touch::None, 0, Some(bids()[0]))
        );
        assert!(buy.ask.is_none() && buy.mid.is_none() && buy.spread.is_none());
        assert_eq!(buy.book_seq, 0);
        let sell = match_trade(&trade(Side::Sell, "99.5", "2"), "I", Some(&bids_only), None);
        assert_eq!(
            (sell.touch, sell.levels_consumed, sell.size_consumed),
            (Touch::Through, 1, d("1"))
        );
    }

    #[test]
    fn match_equals_brute_force_on_random_books() {
        let mut rng = Rng(0xD1B54A32D192ED03);
        let lsizes = [d("0.5"), d("1"), d("3")];
        let tsizes = [d("0.1"), d("2"), d("10")];
        for _ in 0..3000 {
            let mut prices: Vec<i64> = Vec::new();
            for _ in 0..rng.next(7) {
                let p = rng.range(90, 110);
                if !prices.contains(&p) {
                    prices.push(p);
                }
            }
            let sizes: Vec<Dec> = (0..6).map(|_| lsizes[rng.next(3) as usize]).collect();
            let mut lv: Vec<Level> = prices
                .iter()
                .zip(&sizes)
                .map(|(&p, &s)| (Dec::from(p), s))
                .collect();
            lv.sort_by(|a, b| b.cmp(a));
            let bids: Vec<Level> = lv
                .iter()
                .copied()
                .filter(|l| l.0 < Dec::from(100))
                .collect();
            let mut asks: Vec<Level> = lv
                .iter()
                .copied()
                .filter(|l| l.0 >= Dec::from(100))
                .collect();
            asks.reverse();
            let side = if rng.next(2) == 0 {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = match rng.next(23) {
                21 => d("99.5"),
                22 => d("100.5"),
                i => Dec::from(90 + i as i64),
            };
            let size = tsizes[rng.next(3) as usize];
            let mut t = trade(side, "1", "1");
            t.price = price;
            t.size = size;
            let s = st(900, -1, 0, Live, &bids, &asks);
            let m = match_trade(&t, "I", Some(&s), None);
            let opposite = if side == Side::Buy { &asks } else { &bids };
            let reachable: Vec<&Level> = opposite
                .iter()
                .filter(|(p, _)| {
                    if side == Side::Buy {
                        *p <= price
                    } else {
                        *p >= price
                    }
                })
                .collect();
            assert_eq!(m.levels_consumed, reachable.len() as i64);
            assert_eq!(
                m.size_consumed,
                reachable.iter().map(|l| l.1).sum::<Dec>().min(size)
            );
            let want_touch = match opposite.first() {
                None => Touch::None,
                Some(&(best, _)) if best == price => Touch::At,
                Some(&(best, _)) => {
                    let worse = if side == Side::Buy {
                        price > best
                    } else {
                        price < best
                    };
                    if worse {
                        Touch::Through
                    } else {
                        Touch::Inside
                    }
                }
            };
            assert_eq!(m.touch, want_touch);
            if !bids.is_empty() && !asks.is_empty() {
                let mid = (bids[0].0 + asks[0].0) / Dec::TWO;
                assert_eq!(m.mid, Some(mid));
                assert_eq!(
                    m.slippage_mid,
                    Some(if side == Side::Buy {
                        price - mid
                    } else {
                        mid - price
                    })
                );
            } else {
                assert!(m.mid.is_none() && m.slippage_mid.is_none());
            }
        }
    }

    fn pd(a: &str, b: &str) -> (String, f64) {
        let q = py_div(d(a), d(b)).unwrap();
        let s = if q.exp == 0 {
            format!("{}{}", if q.neg { "-" } else { "" }, q.coeff)
        } else {
            format!("{}{}E{}", if q.neg { "-" } else { "" }, q.coeff, q.exp)
        };
        (s, q.to_f64())
    }

    #[test]
    fn python_division() {
        // (coefficient, exponent) as Python's Decimal gives them
        assert_eq!(pd("1", "3").0, "3333333333333333333333333333E-28");
        assert_eq!(pd("2", "3").0, "6666666666666666666666666667E-28");
        assert_eq!(pd("201", "2").0, "1005E-1");
        assert_eq!(pd("200", "2").0, "100");
        assert_eq!(pd("1.00", "4").0, "25E-2");
        assert_eq!(pd("0", "7").0, "0E0".replace("E0", ""));
        assert_eq!(pd("-1", "7").0, "-1428571428571428571428571429E-28");
        assert_eq!(
            pd("79228162514264337593543950335", "1").0,
            "7922816251426433759354395034E+1".replace('+', "")
        );
        assert_eq!(
            pd(
                "79228162514264337593543950335",
                "79228162514264337593543950334"
            )
            .0,
            "1000000000000000000000000000E-27"
        );
        assert_eq!(
            pd("0.0000000000000000000000000001", "3").0,
            "3333333333333333333333333333E-56"
        );
        assert_eq!(pd("0.5", "100.5").1, 0.004975124378109453);
        assert_eq!(pd("0", "-3").1.to_bits(), (-0.0f64).to_bits());
        // half even on an exact 29th digit
        assert_eq!(
            pd("10000000000000000000000000005", "1").0,
            "1000000000000000000000000000E1"
        );
        assert_eq!(
            pd("10000000000000000000000000015", "1").0,
            "1000000000000000000000000002E1"
        );
    }

    // --- differential check against Python (cases from a generator script; skipped if absent)

    use serde_json::Value;

    #[derive(Default, Debug)]
    struct Diff {
        cases: usize,
        nbbos: usize,
        matches: usize,
        as_ofs: usize,
        prunes: usize,
        decimals: usize,
        exact_mismatch: usize,
        trunc_mismatch: usize,
        other_mismatch: usize,
        floats: usize,
        float_some: usize,
        naive_bps_diff: usize,
        divs: usize,
        div_exact_mismatch: usize,
        div_trunc_mismatch: usize,
        div_float_mismatch: usize,
        sum_mismatch: usize,
        first_errors: Vec<String>,
    }

    impl Diff {
        fn fail(&mut self, what: String) {
            self.other_mismatch += 1;
            if self.first_errors.len() < 20 {
                self.first_errors.push(what);
            }
        }
        fn dec(&mut self, ctx: &str, got: Option<Dec>, want: &Value) {
            self.decimals += 1;
            let want = want
                .as_str()
                .map(|s| parse_dec(s).unwrap_or_else(|| panic!("bad decimal {s}")));
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    if g != w {
                        self.exact_mismatch += 1;
                    }
                    if crate::dec::to_scaled_i128(g) != crate::dec::to_scaled_i128(w) {
                        self.trunc_mismatch += 1;
                        if self.first_errors.len() < 20 {
                            self.first_errors.push(format!("{ctx}: {g} != {w}"));
                        }
                    }
                }
                (g, w) => self.fail(format!("{ctx}: {g:?} vs {w:?}")),
            }
        }
        fn eq<T: PartialEq + std::fmt::Debug>(&mut self, ctx: &str, got: T, want: T) {
            if got != want {
                self.fail(format!("{ctx}: {got:?} != {want:?}"));
            }
        }
        fn level(&mut self, ctx: &str, got: Option<Level>, want: &Value) {
            match (got, want.as_array()) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    self.dec(ctx, Some(g.0), &w[0]);
                    self.dec(ctx, Some(g.1), &w[1]);
                }
                (g, _) => self.fail(format!("{ctx}: {g:?} vs {want}")),
            }
        }
        fn nbbo(&mut self, ctx: &str, n: &Nbbo, w: &Value) {
            self.nbbos += 1;
            self.eq(
                ctx,
                n.instrument.as_str(),
                w["instrument"].as_str().unwrap(),
            );
            self.eq(ctx, n.quote.as_str(), w["quote"].as_str().unwrap());
            self.dec(ctx, n.bid_price, &w["bid_price"]);
            self.dec(ctx, n.bid_size, &w["bid_size"]);
            self.dec(ctx, n.ask_price, &w["ask_price"]);
            self.dec(ctx, n.ask_size, &w["ask_size"]);
            for (name, got) in [
                ("bid_venues", &n.bid_venues),
                ("ask_venues", &n.ask_venues),
                ("venues", &n.venues),
                ("excluded", &n.excluded),
                ("excluded_reasons", &n.excluded_reasons),
            ] {
                self.eq(&format!("{ctx} {name}"), got.clone(), strings(&w[name]));
            }
            let versions: Vec<i64> = w["venue_versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            self.eq(
                &format!("{ctx} venue_versions"),
                n.venue_versions.clone(),
                versions,
            );
            self.eq(
                &format!("{ctx} locked"),
                n.locked(),
                w["locked"].as_bool().unwrap(),
            );
            self.eq(
                &format!("{ctx} crossed"),
                n.crossed(),
                w["crossed"].as_bool().unwrap(),
            );
        }
        fn matched(&mut self, ctx: &str, m: &MatchedTrade, w: &Value) {
            self.matches += 1;
            self.eq(
                ctx,
                m.trade.trade_id.as_str(),
                w["trade_id"].as_str().unwrap(),
            );
            self.eq(
                ctx,
                m.instrument.as_str(),
                w["instrument"].as_str().unwrap(),
            );
            self.eq(
                &format!("{ctx} book_status"),
                m.book_status,
                w["book_status"].as_str().unwrap(),
            );
            self.eq(
                &format!("{ctx} book_time_ms"),
                m.book_time_ms,
                w["book_time_ms"].as_i64().unwrap(),
            );
            self.eq(
                &format!("{ctx} book_version"),
                m.book_version,
                w["book_version"].as_i64().unwrap(),
            );
            self.eq(
                &format!("{ctx} book_seq"),
                m.book_seq,
                w["book_seq"].as_i64().unwrap(),
            );
            self.level(&format!("{ctx} bid"), m.bid, &w["bid"]);
            self.level(&format!("{ctx} ask"), m.ask, &w["ask"]);
            self.dec(&format!("{ctx} mid"), m.mid, &w["mid"]);
            self.dec(&format!("{ctx} spread"), m.spread, &w["spread"]);
            self.eq(
                &format!("{ctx} touch"),
                m.touch.as_str(),
                w["touch"].as_str().unwrap(),
            );
            self.eq(
                &format!("{ctx} levels"),
                m.levels_consumed,
                w["levels_consumed"].as_i64().unwrap(),
            );
            self.dec(
                &format!("{ctx} size_consumed"),
                Some(m.size_consumed),
                &w["size_consumed"],
            );
            self.dec(
                &format!("{ctx} slippage_mid"),
                m.slippage_mid,
                &w["slippage_mid"],
            );
            self.floats += 1;
            let want_bps = w["slippage_mid_bps"]
                .as_str()
                .map(|s| s.parse::<f64>().unwrap());
            if want_bps.is_some() {
                self.float_some += 1;
            }
            self.eq(
                &format!(
                    "{ctx} slippage_mid_bps {:?} vs {:?}",
                    m.slippage_mid_bps, want_bps
                ),
                m.slippage_mid_bps.map(f64::to_bits),
                want_bps.map(f64::to_bits),
            );
            if let (Some(slip), Some(mid), Some(want)) = (m.slippage_mid, m.mid, want_bps) {
                // what plain rust_decimal arithmetic would give
                let naive: f64 = (slip / mid * Dec::from(10_000))
                    .to_string()
                    .parse()
                    .unwrap();
                if naive.to_bits() != want.to_bits() {
                    self.naive_bps_diff += 1;
                }
            }
            match (&m.nbbo, w["nbbo"].is_null()) {
                (None, true) => {}
                (Some(n), false) => self.nbbo(&format!("{ctx} nbbo"), n, &w["nbbo"]),
                _ => self.fail(format!("{ctx} nbbo presence")),
            }
            self.dec(
                &format!("{ctx} slippage_nbbo"),
                m.slippage_nbbo,
                &w["slippage_nbbo"],
            );
            self.eq(
                &format!("{ctx} trade_through"),
                m.trade_through,
                w["trade_through"].as_bool().unwrap(),
            );
        }
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    fn status(v: &Value) -> BookStatus {
        match v.as_str().unwrap() {
            "LIVE" => Live,
            "RESYNCING" => Resyncing,
            "STALE" => Stale,
            s => panic!("status {s}"),
        }
    }

    fn jlevel(v: &Value) -> Option<Level> {
        v.as_array()
            .map(|a| (d(a[0].as_str().unwrap()), d(a[1].as_str().unwrap())))
    }

    fn jlevels(v: &Value) -> Vec<Level> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| jlevel(l).unwrap())
            .collect()
    }

    fn jtop(v: &Value) -> VenueTop {
        VenueTop {
            exchange: v[0].as_str().unwrap().into(),
            symbol: v[1].as_str().unwrap().into(),
            status: status(&v[2]),
            version: v[3].as_i64().unwrap(),
            age_ms: v[4].as_i64().unwrap(),
            bid: jlevel(&v[5]),
            ask: jlevel(&v[6]),
        }
    }

    fn jtops(v: &Value) -> Vec<VenueTop> {
        v.as_array().unwrap().iter().map(jtop).collect()
    }

    fn jstate(v: &Value) -> BookState {
        BookState {
            time_ms: v[0].as_i64().unwrap(),
            seq: v[1].as_i64().unwrap(),
            version: v[2].as_i64().unwrap(),
            status: status(&v[3]),
            bids: jlevels(&v[4]),
            asks: jlevels(&v[5]),
        }
    }

    fn jtrade(v: &Value) -> Trade {
        Trade {
            exchange: v[0].as_str().unwrap().into(),
            symbol: v[1].as_str().unwrap().into(),
            trade_id: v[2].as_str().unwrap().into(),
            price: d(v[3].as_str().unwrap()),
            size: d(v[4].as_str().unwrap()),
            taker_side: if v[5].as_str().unwrap() == "buy" {
                Side::Buy
            } else {
                Side::Sell
            },
            trade_time_ms: v[6].as_i64().unwrap(),
            event_time_ms: v[7].as_i64().unwrap(),
            receive_time_ns: v[8].as_i64().unwrap(),
            sequence: v[9].as_i64().unwrap(),
        }
    }

    fn run_case(diff: &mut Diff, n: usize, case: &Value) {
        diff.cases += 1;
        let ctx = format!("case {n}");
        let stale = case["stale"].as_i64().unwrap();
        match case["kind"].as_str().unwrap() {
            "nbbo" => {
                let quote = case["quote"].as_str().unwrap();
                let n1 = compute_nbbo("BTC-USD", quote, &jtops(&case["tops"]), stale);
                let n2 = compute_nbbo("BTC-USD", quote, &jtops(&case["tops2"]), stale);
                diff.nbbo(&ctx, &n1, &case["out"]);
                diff.nbbo(&ctx, &n2, &case["out2"]);
                diff.eq(
                    &format!("{ctx} quote_key"),
                    n1.quote_key() == n2.quote_key(),
                    case["qk_eq"].as_bool().unwrap(),
                );
                diff.eq(
                    &format!("{ctx} same_quote"),
                    n1.same_quote(&n2),
                    case["qk_eq"].as_bool().unwrap(),
                );
            }
            "direct" => {
                let trade = jtrade(&case["trade"]);
                let state = (!case["state"].is_null()).then(|| jstate(&case["state"]));
                let nb = (!case["tops"].is_null())
                    .then(|| compute_nbbo("BTC-USD", "USD", &jtops(&case["tops"]), stale));
                let m = match_trade(&trade, "BTC-USDT", state.as_ref(), nb.as_ref());
                diff.matched(&ctx, &m, &case["out"]);
            }
            "scenario" => {
                let books: Vec<(String, String)> = case["books"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| (b[0].as_str().unwrap().into(), b[1].as_str().unwrap().into()))
                    .collect();
                let mut histories: Vec<BookHistory> =
                    books.iter().map(|_| BookHistory::new()).collect();
                let outs = case["outs"].as_array().unwrap();
                for (i, op) in case["ops"].as_array().unwrap().iter().enumerate() {
                    let ctx = format!("{ctx} op {i}");
                    let want = &outs[i];
                    match op[0].as_str().unwrap() {
                        "append" => {
                            histories[op[1].as_u64().unwrap() as usize].append(jstate(&op[2]))
                        }
                        "as_of" => {
                            diff.as_ofs += 1;
                            let h = &histories[op[1].as_u64().unwrap() as usize];
                            let got = h
                                .as_of(op[2].as_i64().unwrap(), op[3].as_i64())
                                .map(|s| s.version);
                            diff.eq(&format!("{ctx} as_of"), got, want.as_i64());
                        }
                        "prune" => {
                            diff.prunes += 1;
                            let wm = op[1].as_i64().unwrap();
                            let dropped: Vec<i64> =
                                histories.iter_mut().map(|h| h.prune(wm) as i64).collect();
                            let lens: Vec<i64> = histories.iter().map(|h| h.len() as i64).collect();
                            let wd: Vec<i64> = want["dropped"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_i64().unwrap())
                                .collect();
                            let wl: Vec<i64> = want["lens"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_i64().unwrap())
                                .collect();
                            diff.eq(&format!("{ctx} dropped"), dropped, wd);
                            diff.eq(&format!("{ctx} lens"), lens, wl);
                        }
                        "match" => {
                            // jobs/instrument.py Instrument.match
                            let trade = jtrade(&op[1]);
                            let time_ms = trade.trade_time_ms;
                            let mut tops = Vec::new();
                            let mut own = None;
                            for (book, h) in books.iter().zip(&histories) {
                                let seq = (book.0 == trade.exchange && trade.sequence >= 0)
                                    .then_some(trade.sequence);
                                let state = h.as_of(time_ms, seq);
                                if book.0 == trade.exchange && book.1 == trade.symbol {
                                    own = state;
                                }
                                if let Some(s) = state {
                                    tops.push(VenueTop {
                                        exchange: book.0.clone(),
                                        symbol: book.1.clone(),
                                        status: s.status,
                                        version: s.version,
                                        age_ms: time_ms - s.time_ms,
                                        bid: s.bids.first().copied(),
                                        ask: s.asks.first().copied(),
                                    });
                                }
                            }
                            let nb = compute_nbbo("BTC-USD", "USD+USDT", &tops, stale);
                            let m = match_trade(&trade, op[2].as_str().unwrap(), own, Some(&nb));
                            diff.matched(&ctx, &m, want);
                        }
                        k => panic!("op {k}"),
                    }
                }
            }
            "div" => {
                diff.divs += 1;
                let (a, b) = (
                    d(case["a"].as_str().unwrap()),
                    d(case["b"].as_str().unwrap()),
                );
                let q = py_div(a, b).unwrap();
                let out = &case["out"];
                let want_q = out["q"].as_str().unwrap();
                let want_bps: f64 = out["bps"].as_str().unwrap().parse().unwrap();
                if q.times_pow10(4).to_f64().to_bits() != want_bps.to_bits() {
                    diff.div_float_mismatch += 1;
                    diff.fail(format!(
                        "{ctx} bps {a}/{b}: {:?} vs {want_bps}",
                        q.times_pow10(4).to_f64()
                    ));
                }
                // the quotient's exact value, via its coefficient and exponent
                let text = format!("{}{}E{}", if q.neg { "-" } else { "" }, q.coeff, q.exp);
                let py = want_q.replace("E+", "E");
                let norm = |t: &str| -> (bool, String, i64) {
                    let (m, e) = t.split_once('E').unwrap_or((t, "0"));
                    let neg = m.starts_with('-');
                    let m = m.trim_start_matches('-');
                    let (ip, fp) = m.split_once('.').unwrap_or((m, ""));
                    let mut digits = format!("{ip}{fp}").trim_start_matches('0').to_string();
                    let mut e: i64 = e.parse::<i64>().unwrap() - fp.len() as i64;
                    while digits.ends_with('0') {
                        digits.pop();
                        e += 1;
                    }
                    if digits.is_empty() {
                        (false, String::new(), 0)
                    } else {
                        (neg, digits, e)
                    }
                };
                if norm(&text) != norm(&py) {
                    diff.div_exact_mismatch += 1;
                    diff.fail(format!("{ctx} q {a}/{b}: {text} vs {want_q}"));
                }
                // as a Dec (28 decimals at most), truncated to 18
                // (only where Decimal(38, 18) can hold it: below 10^20)
                if let Some(w) = parse_dec(want_q)
                    .filter(|w| w.abs() < Dec::from(100_000_000_000_000_000_000i128))
                {
                    if crate::dec::to_scaled_i128(q.to_dec()) != crate::dec::to_scaled_i128(w) {
                        diff.div_trunc_mismatch += 1;
                    }
                }
                for (name, got) in [("sum", Some(py_add(a, b))), ("diff", Some(py_sub(a, b)))] {
                    let want = parse_dec(out[name].as_str().unwrap());
                    if got != want {
                        diff.sum_mismatch += 1;
                        diff.fail(format!("{ctx} {name} {a} {b}: {got:?} vs {want:?}"));
                    }
                }
            }
            k => panic!("kind {k}"),
        }
    }

    /// Runs when NBBO_DIFF_CASES names the generator's output (JSON lines: inputs and
    /// Python's outputs); skipped otherwise.
    #[test]
    fn python_differential() {
        let Ok(path) = std::env::var("NBBO_DIFF_CASES") else {
            eprintln!("python_differential: NBBO_DIFF_CASES not set, skipped");
            return;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("python_differential: no {path}, skipped");
            return;
        };
        let mut diff = Diff::default();
        for (n, line) in text.lines().enumerate() {
            let case: Value = serde_json::from_str(line).unwrap();
            run_case(&mut diff, n, &case);
        }
        eprintln!("python_differential {path}: {diff:#?}");
        assert!(diff.cases > 0);
        assert_eq!(
            (
                diff.trunc_mismatch,
                diff.other_mismatch,
                diff.div_trunc_mismatch
            ),
            (0, 0, 0),
            "{:#?}",
            diff.first_errors
        );
    }
}
