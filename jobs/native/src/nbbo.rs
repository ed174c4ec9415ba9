//! Cross-exchange best bid and offer (NBBO) of one canonical instrument: the Rust twin of
//! `jobs/nbbo.py` (and of `tickflow.instruments.nbbo_group`). Pure, no I/O.
//!
//! A book counts only if it is LIVE and not older than the staleness bound (0: no bound);
//! every other book is listed with the reason it was left out. Only comparisons and sums of
//! exchange decimals here: exact, as in Python.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::dec::{py_add, Dec};
use crate::events::{BookStatus, Level};

/// One book's touch as an NBBO input.
#[derive(Clone, Debug, PartialEq)]
pub struct VenueTop {
    pub exchange: String,
    pub symbol: String,
    pub status: BookStatus,
    pub version: i64,
    /// time since the book's last update, on the caller's clock
    pub age_ms: i64,
    pub bid: Option<Level>,
    pub ask: Option<Level>,
}

impl VenueTop {
    /// "exchange:symbol"
    pub fn venue(&self) -> String {
        let mut s = String::with_capacity(self.exchange.len() + 1 + self.symbol.len());
        s.push_str(&self.exchange);
        s.push(':');
        s.push_str(&self.symbol);
        s
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nbbo {
    pub instrument: String,
    /// the quote currency (or equivalent set, "USD+USDT") the prices are in
    pub quote: String,
    #[serde(with = "crate::dec::wire")]
    pub bid_price: Option<Dec>,
    /// summed over the venues at the best bid
    #[serde(with = "crate::dec::wire")]
    pub bid_size: Option<Dec>,
    pub bid_venues: Vec<String>,
    #[serde(with = "crate::dec::wire")]
    pub ask_price: Option<Dec>,
    #[serde(with = "crate::dec::wire")]
    pub ask_size: Option<Dec>,
    pub ask_venues: Vec<String>,
    /// books included, "exchange:symbol", sorted
    pub venues: Vec<String>,
    /// the book version each included venue was taken at
    pub venue_versions: Vec<i64>,
    pub excluded: Vec<String>,
    pub excluded_reasons: Vec<String>,
}

/// An exclusion reason for a book too old to count: `"no update for 12034 ms"`.
pub const STALE_REASON: &str = "no update for";

/// An exclusion reason without the book's age (Python's `_reason_kind`).
pub fn reason_kind(reason: &str) -> &str {
    if reason.starts_with(STALE_REASON) {
        STALE_REASON
    } else {
        reason
    }
}

/// What a subscriber sees change (Python's `Nbbo.quote_key()` tuple): prices, sizes, venues,
/// inclusion; not versions, nor the age of an excluded book. Borrows the NBBO; equality
/// compares the reasons by their kind, without allocating.
#[derive(Clone, Copy, Debug)]
pub struct QuoteKey<'a> {
    pub bid_price: Option<Dec>,
    pub bid_size: Option<Dec>,
    pub bid_venues: &'a [String],
    pub ask_price: Option<Dec>,
    pub ask_size: Option<Dec>,
    pub ask_venues: &'a [String],
    pub venues: &'a [String],
    pub excluded: &'a [String],
    /// the full reasons; compared (and to be read) through `reason_kinds`
    pub excluded_reasons: &'a [String],
}

impl<'a> QuoteKey<'a> {
    /// The tuple's last element: each exclusion reason's kind.
    pub fn reason_kinds(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.excluded_reasons.iter().map(|r| reason_kind(r))
    }
}

impl PartialEq for QuoteKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.bid_price == other.bid_price
            && self.bid_size == other.bid_size
            && self.bid_venues == other.bid_venues
            && self.ask_price == other.ask_price
            && self.ask_size == other.ask_size
            && self.ask_venues == other.ask_venues
            && self.venues == other.venues
            && self.excluded == other.excluded
            && self.excluded_reasons.len() == other.excluded_reasons.len()
            && self.reason_kinds().eq(other.reason_kinds())
    }
}

impl Nbbo {
    pub fn locked(&self) -> bool {
        // `bid_price is not None and bid_price == ask_price` (None == None cannot happen here)
        match (self.bid_price, self.ask_price) {
            (Some(b), Some(a)) => b == a,
            _ => false,
        }
    }

    pub fn crossed(&self) -> bool {
        match (self.bid_price, self.ask_price) {
            (Some(b), Some(a)) => b > a,
            _ => false,
        }
    }

    pub fn quote_key(&self) -> QuoteKey<'_> {
        QuoteKey {
            bid_price: self.bid_price,
            bid_size: self.bid_size,
            bid_venues: &self.bid_venues,
            ask_price: self.ask_price,
            ask_size: self.ask_size,
            ask_venues: &self.ask_venues,
            venues: &self.venues,
            excluded: &self.excluded,
            excluded_reasons: &self.excluded_reasons,
        }
    }

    /// `self.quote_key() == other.quote_key()`
    pub fn same_quote(&self, other: &Nbbo) -> bool {
        self.quote_key() == other.quote_key()
    }
}

/// Best bid/ask over the LIVE, fresh books; O(books log books) (the sort by venue).
pub fn compute_nbbo(instrument: &str, quote: &str, tops: &[VenueTop], stale_after_ms: i64) -> Nbbo {
    let mut nbbo = Nbbo {
        instrument: String::new(),
        quote: String::new(),
        bid_price: None,
        bid_size: None,
        bid_venues: Vec::new(),
        ask_price: None,
        ask_size: None,
        ask_venues: Vec::new(),
        venues: Vec::with_capacity(tops.len()),
        venue_versions: Vec::with_capacity(tops.len()),
        excluded: Vec::new(),
        excluded_reasons: Vec::new(),
    };
    compute_nbbo_into(&mut nbbo, instrument, quote, tops, stale_after_ms);
    nbbo
}

/// Strings written over those of a reused list (their allocations kept), then the rest cut.
struct Fill<'a> {
    items: &'a mut Vec<String>,
    len: usize,
}

impl<'a> Fill<'a> {
    fn new(items: &'a mut Vec<String>) -> Self {
        Fill { items, len: 0 }
    }

    fn next(&mut self) -> &mut String {
        if self.len == self.items.len() {
            self.items.push(String::new());
        }
        let s = &mut self.items[self.len];
        s.clear();
        self.len += 1;
        s
    }

    fn push(&mut self, text: &str) {
        self.next().push_str(text);
    }

    fn push_venue(&mut self, top: &VenueTop) {
        let s = self.next();
        s.push_str(&top.exchange);
        s.push(':');
        s.push_str(&top.symbol);
    }

    /// Back to none, the allocations kept (a new best price starts the list again).
    fn restart(&mut self) {
        self.len = 0;
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        self.items.truncate(self.len);
    }
}

/// [`compute_nbbo`] written over `nbbo` (what it held overwritten, its allocations reused).
pub fn compute_nbbo_into(
    nbbo: &mut Nbbo,
    instrument: &str,
    quote: &str,
    tops: &[VenueTop],
    stale_after_ms: i64,
) {
    // sorted(tops, key=(exchange, symbol)): stable; str order = code point order = UTF-8 bytes
    let mut order: Vec<&VenueTop> = tops.iter().collect();
    order.sort_by(|a, b| {
        (a.exchange.as_str(), a.symbol.as_str()).cmp(&(b.exchange.as_str(), b.symbol.as_str()))
    });

    let mut bid_price: Option<Dec> = None;
    let mut ask_price: Option<Dec> = None;
    let mut bid_size = Dec::ZERO;
    let mut ask_size = Dec::ZERO;
    nbbo.venue_versions.clear();
    let mut bid_venues = Fill::new(&mut nbbo.bid_venues);
    let mut ask_venues = Fill::new(&mut nbbo.ask_venues);
    let mut venues = Fill::new(&mut nbbo.venues);
    let mut excluded = Fill::new(&mut nbbo.excluded);
    let mut excluded_reasons = Fill::new(&mut nbbo.excluded_reasons);

    for top in order {
        if top.status != BookStatus::Live {
            excluded.push_venue(top);
            excluded_reasons.push(top.status.as_str());
            continue;
        }
        // `if stale_after_ms and top.age_ms > stale_after_ms`
        if stale_after_ms != 0 && top.age_ms > stale_after_ms {
            excluded.push_venue(top);
            let _ = write!(excluded_reasons.next(), "{STALE_REASON} {} ms", top.age_ms);
            continue;
        }
        venues.push_venue(top);
        nbbo.venue_versions.push(top.version);
        if let Some((price, size)) = top.bid {
            match bid_price {
                Some(best) if price <= best => {
                    if price == best {
                        bid_size = py_add(bid_size, size);
                        bid_venues.push(&top.exchange);
                    }
                }
                _ => {
                    bid_price = Some(price);
                    bid_size = size;
                    bid_venues.restart();
                    bid_venues.push(&top.exchange);
                }
            }
        }
        if let Some((price, size)) = top.ask {
            match ask_price {
                Some(best) if price >= best => {
                    if price == best {
                        ask_size = py_add(ask_size, size);
                        ask_venues.push(&top.exchange);
                    }
                }
                _ => {
                    ask_price = Some(price);
                    ask_size = size;
                    ask_venues.restart();
                    ask_venues.push(&top.exchange);
                }
            }
        }
    }
    drop((bid_venues, ask_venues, venues, excluded, excluded_reasons));
    nbbo.instrument.clear();
    nbbo.instrument.push_str(instrument);
    nbbo.quote.clear();
    nbbo.quote.push_str(quote);
    nbbo.bid_price = bid_price;
    nbbo.bid_size = bid_price.map(|_| bid_size);
    nbbo.ask_price = ask_price;
    nbbo.ask_size = ask_price.map(|_| ask_size);
}

/// Python's `str.rpartition(sep)` for a one-character separator.
fn rpartition(s: &str, sep: char) -> (&str, bool, &str) {
    match s.rfind(sep) {
        Some(i) => (&s[..i], true, &s[i + sep.len_utf8()..]),
        None => ("", false, s),
    }
}

/// The value `dict(equivalents)[key]` would give: the last pair with that key wins.
fn lookup<'a>(equivalents: &'a [(String, String)], key: &str) -> Option<&'a str> {
    equivalents
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The instrument whose NBBO this one joins: `BTC-USDT` -> `BTC-USD` when the config declares
/// USDT equivalent to USD; itself otherwise. `equivalents` is the mapping's items (quote ->
/// target); a repeated key counts as a dict built from the pairs would (the last one).
pub fn nbbo_group(instrument: &str, equivalents: &[(String, String)]) -> String {
    let (base, sep, quote) = rpartition(instrument, '-');
    if !sep {
        return instrument.to_string();
    }
    match lookup(equivalents, quote) {
        None => instrument.to_string(),
        Some(target) => {
            let mut s = String::with_capacity(base.len() + 1 + target.len());
            s.push_str(base);
            s.push('-');
            s.push_str(target);
            s
        }
    }
}

/// The quote(s) an NBBO group's prices are in: "USD", or "USD+USDT" when merged.
pub fn group_quote(group: &str, equivalents: &[(String, String)]) -> String {
    let quote = rpartition(group, '-').2;
    let mut merged: Vec<&str> = vec![quote];
    for (i, (q, _)) in equivalents.iter().enumerate() {
        // each key once, with its dict value (the last pair's)
        if equivalents[i + 1..].iter().any(|(k, _)| k == q) {
            continue;
        }
        if lookup(equivalents, q) == Some(quote) {
            merged.push(q.as_str());
        }
    }
    merged.sort_unstable();
    merged.dedup();
    merged.join("+")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dec::parse_dec;

    const STALE_MS: i64 = 1000;

    fn d(s: &str) -> Dec {
        parse_dec(s).unwrap()
    }

    fn lv(x: Option<(&str, &str)>) -> Option<Level> {
        x.map(|(p, s)| (d(p), d(s)))
    }

    fn top(exchange: &str, bid: Option<(&str, &str)>, ask: Option<(&str, &str)>) -> VenueTop {
        top_full(exchange, bid, ask, BookStatus::Live, 0, "S")
    }

    fn top_full(
        exchange: &str,
        bid: Option<(&str, &str)>,
        ask: Option<(&str, &str)>,
        status: BookStatus,
        age_ms: i64,
        symbol: &str,
    ) -> VenueTop {
        VenueTop {
            exchange: exchange.into(),
            symbol: symbol.into(),
            status,
            version: 7,
            age_ms,
            bid: lv(bid),
            ask: lv(ask),
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equal_prices_across_venues_sum_sizes_and_list_every_venue() {
        let nbbo = compute_nbbo(
            "BTC-USD",
            "USD",
            &[
                top("kraken", Some(("100", "1")), Some(("101", "1"))),
                top("binance", Some(("100.0", "2")), Some(("102", "1"))),
                top("coinbase", Some(("99", "5")), Some(("101", "0.5"))),
            ],
            STALE_MS,
        );
        assert_eq!(
            (nbbo.bid_price, nbbo.bid_size),
            (Some(d("100")), Some(d("3")))
        );
        assert_eq!(nbbo.bid_price.unwrap().to_string(), "100.0"); // the first venue's text
        assert_eq!(nbbo.bid_venues, strs(&["binance", "kraken"]));
        assert_eq!(
            (nbbo.ask_price, nbbo.ask_size),
            (Some(d("101")), Some(d("1.5")))
        );
        assert_eq!(nbbo.ask_venues, strs(&["coinbase", "kraken"]));
        assert!(!nbbo.locked() && !nbbo.crossed());
        assert_eq!(nbbo.venues, strs(&["binance:S", "coinbase:S", "kraken:S"]));
        assert_eq!(nbbo.venue_versions, vec![7, 7, 7]);
    }

    #[test]
    fn locked_crossed_and_one_sided() {
        let locked = compute_nbbo(
            "I",
            "Q",
            &[
                top("a", Some(("100", "1")), None),
                top("b", None, Some(("100", "2"))),
            ],
            0,
        );
        assert!(locked.locked() && !locked.crossed());
        assert_eq!(
            (locked.bid_venues.clone(), locked.ask_venues.clone()),
            (strs(&["a"]), strs(&["b"]))
        );
        let crossed = compute_nbbo(
            "I",
            "Q",
            &[
                top("a", Some(("101", "1")), None),
                top("b", None, Some(("100", "2"))),
            ],
            0,
        );
        assert!(crossed.crossed() && !crossed.locked());
        let empty = compute_nbbo("I", "Q", &[top("a", None, None)], 0);
        assert!(empty.bid_price.is_none() && empty.bid_size.is_none() && empty.ask_size.is_none());
        assert!(!empty.locked() && !empty.crossed());
        assert_eq!(empty.venues, strs(&["a:S"]));
        let none = compute_nbbo("I", "Q", &[], 0);
        assert!(none.venues.is_empty() && none.excluded.is_empty() && !none.locked());
    }

    #[test]
    fn staleness_bound_is_inclusive_and_zero_disables_it() {
        let tops = [
            top_full(
                "a",
                Some(("100", "1")),
                None,
                BookStatus::Live,
                STALE_MS,
                "S",
            ),
            top_full(
                "b",
                Some(("101", "1")),
                None,
                BookStatus::Live,
                STALE_MS + 1,
                "S",
            ),
            top_full("c", Some(("102", "1")), None, BookStatus::Resyncing, 0, "S"),
            top_full("d", Some(("103", "1")), None, BookStatus::Stale, 0, "S"),
        ];
        let nbbo = compute_nbbo("I", "Q", &tops, STALE_MS);
        assert_eq!(nbbo.venues, strs(&["a:S"]));
        assert_eq!(nbbo.bid_price, Some(d("100")));
        assert_eq!(nbbo.excluded, strs(&["b:S", "c:S", "d:S"]));
        assert_eq!(
            nbbo.excluded_reasons,
            strs(&["no update for 1001 ms", "RESYNCING", "STALE"])
        );
        let unbounded = compute_nbbo("I", "Q", &tops, 0);
        assert_eq!(unbounded.venues, strs(&["a:S", "b:S"]));
        assert_eq!(unbounded.bid_price, Some(d("101")));
        // input order does not matter
        let mut rev = tops.to_vec();
        rev.reverse();
        assert_eq!(compute_nbbo("I", "Q", &rev, STALE_MS), nbbo);
    }

    #[test]
    fn quote_key_ignores_versions_and_the_growing_age_of_an_excluded_book() {
        let fresh = top("a", Some(("100", "1")), Some(("101", "1")));
        let aged = |age| top_full("b", Some(("100", "1")), None, BookStatus::Live, age, "S");
        let one = compute_nbbo("I", "Q", &[fresh.clone(), aged(2000)], STALE_MS);
        let two = compute_nbbo("I", "Q", &[fresh.clone(), aged(3000)], STALE_MS);
        assert_ne!(one.excluded_reasons, two.excluded_reasons);
        assert_eq!(one.quote_key(), two.quote_key());
        assert!(one.same_quote(&two));
        let resyncing = compute_nbbo(
            "I",
            "Q",
            &[
                fresh.clone(),
                top_full("b", None, None, BookStatus::Resyncing, 0, "S"),
            ],
            STALE_MS,
        );
        assert_ne!(resyncing.quote_key(), one.quote_key());
        let mut newer_top = fresh.clone();
        newer_top.version = 8;
        let newer = compute_nbbo("I", "Q", &[newer_top], STALE_MS);
        let older = compute_nbbo("I", "Q", &[fresh], STALE_MS);
        assert_ne!(newer.venue_versions, older.venue_versions);
        assert_eq!(newer.quote_key(), older.quote_key());
    }

    type Eqs = [(String, String)];

    fn eqs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn nbbo_groups() {
        let usdt = eqs(&[("USDT", "USD")]);
        let cases: [(&str, &Eqs, &str); 8] = [
            ("BTC-USDT", &[], "BTC-USDT"),
            ("BTC-USD", &[], "BTC-USD"),
            ("BTC-USDT", &usdt, "BTC-USD"),
            ("BTC-USD", &usdt, "BTC-USD"),
            ("ETH-BTC", &usdt, "ETH-BTC"),
            ("USDT-EUR", &usdt, "USDT-EUR"),
            ("BTCUSDT", &usdt, "BTCUSDT"),
            ("WBTC-ETH-USDT", &usdt, "WBTC-ETH-USD"),
        ];
        for (instrument, equivalents, group) in cases {
            assert_eq!(nbbo_group(instrument, equivalents), group, "{instrument}");
        }
        assert_eq!(nbbo_group("-USDT", &usdt), "-USD");
    }

    #[test]
    fn group_quotes() {
        let cases = [
            ("BTC-USD", eqs(&[]), "USD"),
            ("BTC-USDT", eqs(&[]), "USDT"),
            ("BTC-USD", eqs(&[("USDT", "USD")]), "USD+USDT"),
            (
                "BTC-USD",
                eqs(&[("USDT", "USD"), ("USDC", "USD")]),
                "USD+USDC+USDT",
            ),
            ("ETH-BTC", eqs(&[("USDT", "USD")]), "BTC"),
            ("BTCUSD", eqs(&[("USDT", "BTCUSD")]), "BTCUSD+USDT"),
            ("BTC-USD", eqs(&[("USD", "USD")]), "USD"),
            // a repeated key: the last pair wins, as in dict(pairs)
            ("BTC-USD", eqs(&[("USDT", "USD"), ("USDT", "EUR")]), "USD"),
            (
                "BTC-USD",
                eqs(&[("USDT", "EUR"), ("USDT", "USD")]),
                "USD+USDT",
            ),
        ];
        for (group, equivalents, quote) in cases {
            assert_eq!(
                group_quote(group, &equivalents),
                quote,
                "{group} {equivalents:?}"
            );
        }
        let equivalents = eqs(&[("USDT", "USD"), ("USDC", "USD")]);
        for instrument in ["BTC-USD", "BTC-USDT", "BTC-USDC"] {
            let group = nbbo_group(instrument, &equivalents);
            assert_eq!(group, "BTC-USD");
            let q = instrument.rsplit('-').next().unwrap();
            assert!(group_quote(&group, &equivalents).split('+').any(|x| x == q));
        }
    }

    /// Brute force, as in test_nbbo.py, over deterministic pseudo-random inputs.
    #[test]
    fn nbbo_equals_brute_force() {
        let prices = ["99.5", "99.50", "100", "100.25", "100.5", "101"];
        let sizes = ["0.001", "1", "2.5", "7"];
        let exchanges = ["binance", "coinbase", "kraken", "okx"];
        let symbols = ["BTCUSD", "BTC-USD", "XBT/USD"];
        let ages = [0, 1, STALE_MS - 1, STALE_MS, STALE_MS + 1, 5 * STALE_MS];
        let statuses = [
            BookStatus::Live,
            BookStatus::Live,
            BookStatus::Live,
            BookStatus::Resyncing,
            BookStatus::Stale,
        ];
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for _ in 0..2000 {
            let mut tops: Vec<VenueTop> = Vec::new();
            for _ in 0..next(9) {
                let (e, s) = (exchanges[next(4)], symbols[next(3)]);
                if tops.iter().any(|t| t.exchange == e && t.symbol == s) {
                    continue;
                }
                let mut level = || {
                    if next(4) == 0 {
                        None
                    } else {
                        Some((d(prices[next(6)]), d(sizes[next(4)])))
                    }
                };
                let (bid, ask) = (level(), level());
                tops.push(VenueTop {
                    exchange: e.into(),
                    symbol: s.into(),
                    status: statuses[next(5)],
                    version: next(1_000_000) as i64,
                    age_ms: ages[next(6)],
                    bid,
                    ask,
                });
            }
            let stale = if next(2) == 0 { 0 } else { STALE_MS };
            let nbbo = compute_nbbo("BTC-USD", "USD", &tops, stale);
            let name = |t: &VenueTop| format!("{}:{}", t.exchange, t.symbol);
            let mut counted: Vec<&VenueTop> = tops
                .iter()
                .filter(|t| t.status == BookStatus::Live && (stale == 0 || t.age_ms <= stale))
                .collect();
            counted.sort_by_key(|t| name(t));
            let best_bid = counted.iter().filter_map(|t| t.bid.map(|b| b.0)).max();
            let best_ask = counted.iter().filter_map(|t| t.ask.map(|a| a.0)).min();
            let at_bid: Vec<_> = counted
                .iter()
                .filter(|t| t.bid.is_some() && t.bid.map(|b| b.0) == best_bid)
                .collect();
            let at_ask: Vec<_> = counted
                .iter()
                .filter(|t| t.ask.is_some() && t.ask.map(|a| a.0) == best_ask)
                .collect();
            assert_eq!(nbbo.bid_price, best_bid);
            assert_eq!(nbbo.ask_price, best_ask);
            let sum = |v: &[&&VenueTop], bid: bool| {
                if v.is_empty() {
                    None
                } else {
                    Some(
                        v.iter()
                            .map(|t| {
                                if bid {
                                    t.bid.unwrap().1
                                } else {
                                    t.ask.unwrap().1
                                }
                            })
                            .sum::<Dec>(),
                    )
                }
            };
            assert_eq!(nbbo.bid_size, sum(&at_bid, true));
            assert_eq!(nbbo.ask_size, sum(&at_ask, false));
            assert_eq!(
                nbbo.bid_venues,
                at_bid
                    .iter()
                    .map(|t| t.exchange.clone())
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                nbbo.ask_venues,
                at_ask
                    .iter()
                    .map(|t| t.exchange.clone())
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                nbbo.venues,
                counted.iter().map(|t| name(t)).collect::<Vec<_>>()
            );
            assert_eq!(
                nbbo.venue_versions,
                counted.iter().map(|t| t.version).collect::<Vec<_>>()
            );
            let mut excl: Vec<(String, String)> = tops
                .iter()
                .filter(|t| !counted.iter().any(|c| std::ptr::eq(*c, *t)))
                .map(|t| {
                    let r = if t.status != BookStatus::Live {
                        t.status.as_str().to_string()
                    } else {
                        format!("no update for {} ms", t.age_ms)
                    };
                    (name(t), r)
                })
                .collect();
            excl.sort();
            let got: Vec<(String, String)> = nbbo
                .excluded
                .iter()
                .cloned()
                .zip(nbbo.excluded_reasons.iter().cloned())
                .collect();
            assert_eq!(got, excl);
            assert_eq!(nbbo.locked(), best_bid.is_some() && best_bid == best_ask);
            assert_eq!(
                nbbo.crossed(),
                matches!((best_bid, best_ask), (Some(b), Some(a)) if b > a)
            );
            let mut rev = tops.clone();
            rev.reverse();
            assert_eq!(compute_nbbo("BTC-USD", "USD", &rev, stale), nbbo);
        }
    }
}
