//! An exact L2 order book: two sorted sides of decimal price -> decimal size (the Rust twin of
//! `jobs/book/levels.py`). Pure, no I/O.
//!
//! Both sides are `BTreeMap`s in ascending price order: the best bid is the last key, the best
//! ask the first. Keys compare by value (`1.0 == 1.00`) and, as in Python's dict, setting an
//! existing price keeps the key first inserted (and so its text), replacing only the size.
//! The Python book's `changes` log (for state persistence) is left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dec::Dec;
use crate::events::Level;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BookSide {
    Bid,
    Ask,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrderBook {
    /// ascending: best (highest) bid last
    #[serde(with = "crate::dec::wire")]
    bids: BTreeMap<Dec, Dec>,
    /// ascending: best (lowest) ask first
    #[serde(with = "crate::dec::wire")]
    asks: BTreeMap<Dec, Dec>,
    max_levels: usize,
}

/// `(bid + ask) / 2` with Python's exact `Decimal` result: the quotient is exact, at the
/// dividend's exponent when the halved coefficient is whole, else one more decimal.
pub(crate) fn half(sum: Dec) -> Dec {
    let m = sum.mantissa();
    let s = sum.scale();
    if m % 2 == 0 {
        Dec::from_i128_with_scale(m / 2, s)
    } else if s < 28 && (m * 5).unsigned_abs() < (1u128 << 96) {
        Dec::from_i128_with_scale(m * 5, s + 1)
    } else {
        sum / Dec::from(2) // beyond 28 digits: rounded (Python rounds too; may differ)
    }
}

/// `sum(sizes, Decimal(0))`, exactly: the coefficients are added at the largest scale (Python's
/// exact sum has the smallest exponent), in an i128, without a `Dec` addition per level. A
/// sum beyond 96 bits (never, for sizes) falls back to `Dec` additions in the same order.
fn sum_sizes<'a>(levels: impl Iterator<Item = (&'a Dec, &'a Dec)> + Clone) -> Dec {
    const POW10: [i128; 29] = {
        let mut t = [1i128; 29];
        let mut i = 1;
        while i < 29 {
            t[i] = t[i - 1] * 10;
            i += 1;
        }
        t
    };
    let mut acc: i128 = 0;
    let mut scale: u32 = 0;
    let mut exact = true;
    for (_, size) in levels.clone() {
        let (m, s) = (size.mantissa(), size.scale());
        let step = if s == scale {
            Some(m)
        } else if s > scale {
            let up = acc.checked_mul(POW10[(s - scale) as usize]);
            scale = s;
            up.map(|a| {
                acc = a;
                m
            })
        } else {
            m.checked_mul(POW10[(scale - s) as usize])
        };
        match step.and_then(|m| acc.checked_add(m)) {
            Some(a) => acc = a,
            None => {
                exact = false;
                break;
            }
        }
    }
    if exact && acc.unsigned_abs() < (1u128 << 96) {
        return Dec::from_i128_with_scale(acc, scale);
    }
    let mut total = Dec::ZERO;
    for (_, &size) in levels {
        total += size;
    }
    total
}

impl OrderBook {
    pub fn new(max_levels: usize) -> Self {
        OrderBook {
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            max_levels,
        }
    }

    pub fn max_levels(&self) -> usize {
        self.max_levels
    }

    /// Absolute size at a price; size 0 removes the level (absent levels: no-op). Beyond
    /// `max_levels` the worst level of the side is forgotten (possibly the one just set).
    #[inline]
    pub fn set_level(&mut self, side: BookSide, price: Dec, size: Dec) {
        match side {
            BookSide::Bid => {
                if !size.is_zero() {
                    self.bids.insert(price, size);
                    if self.bids.len() > self.max_levels {
                        self.bids.pop_first(); // the lowest bid is the worst
                    }
                } else {
                    self.bids.remove(&price);
                }
            }
            BookSide::Ask => {
                if !size.is_zero() {
                    self.asks.insert(price, size);
                    if self.asks.len() > self.max_levels {
                        self.asks.pop_last(); // the highest ask is the worst
                    }
                } else {
                    self.asks.remove(&price);
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    /// Replace the whole book (a snapshot): each level through `set_level`, in order.
    pub fn load(&mut self, bids: &[Level], asks: &[Level]) {
        self.clear();
        for &(price, size) in bids {
            self.set_level(BookSide::Bid, price, size);
        }
        for &(price, size) in asks {
            self.set_level(BookSide::Ask, price, size);
        }
    }

    /// Best `n` levels per side: (bids high->low, asks low->high).
    pub fn top(&self, n: usize) -> (Vec<Level>, Vec<Level>) {
        let bids = self
            .bids
            .iter()
            .rev()
            .take(n)
            .map(|(&p, &s)| (p, s))
            .collect();
        let asks = self.asks.iter().take(n).map(|(&p, &s)| (p, s)).collect();
        (bids, asks)
    }

    /// Bids best (highest) first, without allocating.
    pub fn bids_best_first(&self) -> impl DoubleEndedIterator<Item = (&Dec, &Dec)> + '_ {
        self.bids.iter().rev()
    }

    /// Asks best (lowest) first, without allocating.
    pub fn asks_best_first(&self) -> impl DoubleEndedIterator<Item = (&Dec, &Dec)> + '_ {
        self.asks.iter()
    }

    pub fn bid_count(&self) -> usize {
        self.bids.len()
    }

    pub fn ask_count(&self) -> usize {
        self.asks.len()
    }

    #[inline]
    pub fn best_bid(&self) -> Option<Level> {
        self.bids.last_key_value().map(|(&p, &s)| (p, s))
    }

    #[inline]
    pub fn best_ask(&self) -> Option<Level> {
        self.asks.first_key_value().map(|(&p, &s)| (p, s))
    }

    /// `(best bid + best ask) / 2`, exactly as Python's `Decimal` computes it (same scale).
    pub fn mid(&self) -> Option<Dec> {
        let (bid, _) = self.best_bid()?;
        let (ask, _) = self.best_ask()?;
        Some(half(bid + ask))
    }

    /// Total bid and ask size priced within `bps` basis points of the mid (bounds inclusive:
    /// bids >= mid - band, asks <= mid + band, band = mid * bps / 10000), summed best first
    /// from 0, as the Python book does.
    pub fn depth_within_bps(&self, bps: Dec) -> (Dec, Dec) {
        let Some(mid) = self.mid() else {
            return (Dec::ZERO, Dec::ZERO);
        };
        let product = mid * bps;
        // dividing by 10^4 is exact: move the decimal point when the scale allows
        let band = if product.scale() + 4 <= 28 {
            Dec::from_i128_with_scale(product.mantissa(), product.scale() + 4)
        } else {
            product / Dec::from(10_000)
        };
        let bid_floor = mid - band;
        let ask_cap = mid + band;
        // each side's levels inside the band, best first (the bisection's prefix)
        let bids = sum_sizes(self.bids.range(bid_floor..).rev());
        let asks = sum_sizes(self.asks.range(..=ask_cap));
        (bids, asks)
    }

    pub fn is_crossed(&self) -> bool {
        match (self.best_bid(), self.best_ask()) {
            (Some((bid, _)), Some((ask, _))) => bid >= ask,
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// The worst price of a side (Kraken's truncation), if any.
    pub(crate) fn pop_worst(&mut self, side: BookSide) -> Option<Level> {
        match side {
            BookSide::Bid => self.bids.pop_first(),
            BookSide::Ask => self.asks.pop_last(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::test_util::{d, Rng};

    fn prices() -> Vec<Dec> {
        (0..40).map(|i| d(&format!("100.{i:02}"))).collect()
    }

    fn sizes() -> Vec<Dec> {
        ["0", "0.5", "1.25", "3"].iter().map(|s| d(s)).collect()
    }

    fn random_changes(rng: &mut Rng, n: usize) -> Vec<(BookSide, Dec, Dec)> {
        let (prices, sizes) = (prices(), sizes());
        (0..n)
            .map(|_| {
                let side = if rng.below(2) == 0 {
                    BookSide::Bid
                } else {
                    BookSide::Ask
                };
                (side, *rng.pick(&prices), *rng.pick(&sizes))
            })
            .collect()
    }

    #[test]
    fn set_level_adds_replaces_removes_and_keeps_the_first_key_text() {
        let mut book = OrderBook::new(10);
        book.set_level(BookSide::Bid, d("1.0"), d("2"));
        book.set_level(BookSide::Bid, d("1.00"), d("3.50")); // same price: size replaced
        assert_eq!(book.len(), 1);
        let (bids, _) = book.top(5);
        assert_eq!(
            (bids[0].0.to_string(), bids[0].1.to_string()),
            ("1.0".into(), "3.50".into())
        );
        book.set_level(BookSide::Ask, d("2"), d("0")); // absent: no-op
        book.set_level(BookSide::Bid, d("1"), d("0.000")); // zero in any scale removes
        assert_eq!(book.len(), 0);
        assert_eq!(book.best_bid(), None);
        assert_eq!(book.mid(), None);
        assert_eq!(book.depth_within_bps(d("10")), (Dec::ZERO, Dec::ZERO));
    }

    #[test]
    fn max_levels_forgets_the_worst_level_even_the_new_one() {
        let mut book = OrderBook::new(2);
        for p in ["10", "11", "12"] {
            book.set_level(BookSide::Bid, d(p), d("1"));
            book.set_level(BookSide::Ask, d(p), d("1"));
        }
        let (bids, asks) = book.top(10);
        assert_eq!(
            bids.iter().map(|l| l.0).collect::<Vec<_>>(),
            vec![d("12"), d("11")]
        );
        assert_eq!(
            asks.iter().map(|l| l.0).collect::<Vec<_>>(),
            vec![d("10"), d("11")]
        );
        book.set_level(BookSide::Bid, d("9"), d("1")); // worse than both: dropped at once
        book.set_level(BookSide::Ask, d("13"), d("1"));
        assert_eq!(book.top(10), (bids, asks));
        assert!(book.is_crossed());
    }

    #[test]
    fn mid_has_python_decimal_scale() {
        // Python: (Decimal(a) + Decimal(b)) / 2
        for (bid, ask, mid) in [
            ("100.00", "100.02", "100.01"),
            ("100.00", "100.01", "100.005"),
            ("1", "2", "1.5"),
            ("2", "4", "3"),
            ("2.0", "4.00", "3.00"),
            ("0.00240000", "0.00250000", "0.00245000"),
            ("45283.5", "45285.2", "45284.35"),
        ] {
            let mut book = OrderBook::new(10);
            book.set_level(BookSide::Bid, d(bid), d("1"));
            book.set_level(BookSide::Ask, d(ask), d("1"));
            assert_eq!(book.mid().unwrap().to_string(), mid);
        }
    }

    #[test]
    fn depth_within_bps_bounds_are_inclusive() {
        let mut book = OrderBook::new(100);
        // mid 100, 10 bps -> band 0.1: bids >= 99.9, asks <= 100.1
        for (p, s) in [("99.95", "1"), ("99.9", "2"), ("99.89", "4")] {
            book.set_level(BookSide::Bid, d(p), d(s));
        }
        for (p, s) in [("100.05", "1.5"), ("100.10", "2.25"), ("100.11", "4")] {
            book.set_level(BookSide::Ask, d(p), d(s));
        }
        let mid = book.mid().unwrap();
        assert_eq!(mid, d("100"));
        let (bids, asks) = book.depth_within_bps(d("10"));
        assert_eq!(
            (bids.to_string(), asks.to_string()),
            ("3".into(), "3.75".into())
        );
    }

    /// test_book_properties.py::test_order_book_top_n_and_bound
    #[test]
    fn top_n_is_sorted_positive_and_bounded() {
        let mut rng = Rng(0x5eed_1234);
        for _ in 0..300 {
            let max_levels = 1 + rng.below(20);
            let n = rng.below(201);
            let mut book = OrderBook::new(max_levels);
            for (side, price, size) in random_changes(&mut rng, n) {
                book.set_level(side, price, size);
                assert!(book.bid_count() <= max_levels && book.ask_count() <= max_levels);
            }
            let (bids, asks) = book.top(5);
            assert!(bids.len() <= 5 && asks.len() <= 5);
            assert!(bids.windows(2).all(|w| w[0].0 > w[1].0));
            assert!(asks.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(bids.iter().chain(&asks).all(|l| l.1 > Dec::ZERO));
        }
    }

    /// test_book_properties.py::test_depth_within_bps_matches_a_full_scan
    #[test]
    fn depth_within_bps_matches_a_full_scan() {
        let mut rng = Rng(0xdead_beef);
        for _ in 0..300 {
            let bps = *rng.pick(&[d("1"), d("10"), d("50")]);
            let n = rng.below(121);
            let mut book = OrderBook::new(1000);
            for (side, price, size) in random_changes(&mut rng, n) {
                book.set_level(side, price, size);
            }
            let (bids, asks) = book.depth_within_bps(bps);
            let Some(mid) = book.mid() else {
                assert_eq!((bids, asks), (Dec::ZERO, Dec::ZERO));
                continue;
            };
            let band = mid * bps / Dec::from(10_000);
            let (all_bids, all_asks) = book.top(usize::MAX);
            let scan_bids: Dec = all_bids
                .iter()
                .filter(|l| l.0 >= mid - band)
                .map(|l| l.1)
                .sum();
            let scan_asks: Dec = all_asks
                .iter()
                .filter(|l| l.0 <= mid + band)
                .map(|l| l.1)
                .sum();
            assert_eq!((bids, asks), (scan_bids, scan_asks));
        }
    }

    /// A rough timing: `cargo test --release --no-default-features -- --ignored --nocapture
    /// timing_of_the_hot_operations`.
    #[test]
    #[ignore]
    fn timing_of_the_hot_operations() {
        use std::time::Instant;
        let mut rng = Rng(42);
        // 1000 levels a side around 62000.0, updates mostly near the top
        let bid_prices: Vec<Dec> = (0..1500).map(|i| Dec::new(620_000 - i, 1)).collect();
        let ask_prices: Vec<Dec> = (0..1500).map(|i| Dec::new(620_001 + i, 1)).collect();
        let sizes: Vec<Dec> = (0..64)
            .map(|i| Dec::new(i * 1_234_567 % 100_000_000, 8))
            .collect();
        let mut book = OrderBook::new(1000);
        for i in 0..1000 {
            book.set_level(BookSide::Bid, bid_prices[i], d("1.00000000"));
            book.set_level(BookSide::Ask, ask_prices[i], d("1.00000000"));
        }
        let n = 2_000_000;
        let ops: Vec<(BookSide, Dec, Dec)> = (0..n)
            .map(|_| {
                let depth = (rng.below(1000) * rng.below(1000)) / 1000; // skewed to the top
                let side = if rng.below(2) == 0 {
                    BookSide::Bid
                } else {
                    BookSide::Ask
                };
                let price = if side == BookSide::Bid {
                    bid_prices[depth]
                } else {
                    ask_prices[depth]
                };
                (side, price, *rng.pick(&sizes))
            })
            .collect();
        let start = Instant::now();
        for &(side, price, size) in &ops {
            book.set_level(side, price, size);
        }
        let set_ns = start.elapsed().as_nanos() as f64 / n as f64;
        let start = Instant::now();
        let mut total = 0usize;
        for _ in 0..n / 10 {
            total += std::hint::black_box(book.top(10)).0.len();
        }
        let top_ns = start.elapsed().as_nanos() as f64 / (n / 10) as f64;
        let start = Instant::now();
        let bps = Dec::from(10);
        for _ in 0..n / 10 {
            std::hint::black_box(book.depth_within_bps(bps));
        }
        let depth_ns = start.elapsed().as_nanos() as f64 / (n / 10) as f64;
        let (db, da) = book.depth_within_bps(bps);
        eprintln!(
            "set_level {set_ns:.0} ns, top(10) {top_ns:.0} ns, depth_within_bps(10) {depth_ns:.0} ns \
             ({} levels, {total} top levels, depth {db}/{da})",
            book.len()
        );
    }
}
