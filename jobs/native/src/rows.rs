//! Results as ClickHouse RowBinary rows, column for column as `jobs/sinks/clickhouse.py`'s
//! row functions and `COLUMNS` give them (the insert names those columns). Pure, no I/O.
//!
//! RowBinary: integers little-endian; Date = UInt16 days since 1970-01-01; String and Array
//! = LEB128 length then the items; Nullable = a 0/1 null byte then the value if not null;
//! Enum8 = its Int8 code; Decimal(38, 18) = Int128 of the value times 10^18, truncated
//! toward zero (as the Python driver converts a Decimal).

use crate::bars::Bar;
use crate::dec::{to_scaled_i128, Dec};
use crate::events::{Side, Trade};
use crate::instrument::{BookView, Gap, LateEvent, NbboUpdate};
use crate::matching::MatchedTrade;

pub const TABLES: [&str; 8] = [
    "trades",
    "book_snapshots",
    "top_of_book",
    "nbbo",
    "matched_trades",
    "bars",
    "late_events",
    "gaps",
];

/// One table's rows not yet inserted.
#[derive(Default)]
pub struct TableRows {
    pub data: Vec<u8>,
    pub rows: u64,
}

/// A row that cannot be stored: a value outside its column's type (the row is not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

/// The largest |value * 10^18| a Decimal(38, 18) column holds.
const MAX_SCALED: i128 = 10i128.pow(38) - 1;

/// A row being written; `.1` names the type of the first column whose value does not fit.
struct W<'a>(&'a mut Vec<u8>, Option<&'static str>);

impl W<'_> {
    fn fail(&mut self, column_type: &'static str) {
        self.1.get_or_insert(column_type);
    }
    fn date(&mut self, ms: i64) {
        let days = ms.div_euclid(86_400_000);
        if !(0..=i64::from(u16::MAX)).contains(&days) {
            self.fail("Date");
        }
        self.0.extend_from_slice(&(days as u16).to_le_bytes());
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: i64) {
        self.0.extend_from_slice(&(v as u16).to_le_bytes());
    }
    fn u32(&mut self, v: i64) {
        self.0.extend_from_slice(&(v as u32).to_le_bytes());
    }
    fn u64(&mut self, v: i64) {
        if v < 0 {
            self.fail("UInt64");
        }
        self.0.extend_from_slice(&(v as u64).to_le_bytes());
    }
    fn len(&mut self, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn dec(&mut self, v: Dec) {
        let scaled = match to_scaled_i128(v) {
            Some(x) if x.abs() <= MAX_SCALED => x,
            _ => {
                self.fail("Decimal(38, 18)");
                0
            }
        };
        self.0.extend_from_slice(&scaled.to_le_bytes());
    }
    fn opt_dec(&mut self, v: Option<Dec>) {
        match v {
            Some(v) => {
                self.u8(0);
                self.dec(v);
            }
            None => self.u8(1),
        }
    }
    fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            Some(v) => {
                self.u8(0);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
            None => self.u8(1),
        }
    }
    fn opt_u64(&mut self, v: i64) {
        if v < 0 {
            self.u8(1);
        } else {
            self.u8(0);
            self.u64(v);
        }
    }
    fn strs<S: AsRef<str>>(&mut self, items: &[S]) {
        self.len(items.len());
        for s in items {
            self.str(s.as_ref());
        }
    }
    fn decs<'b>(&mut self, n: usize, items: impl Iterator<Item = &'b Dec>) {
        self.len(n);
        for v in items {
            self.dec(*v);
        }
    }
    fn side(&mut self, side: Side) {
        self.u8(match side {
            Side::Buy => 1,
            Side::Sell => 2,
        });
    }
}

impl TableRows {
    /// Count the row written from `start`, or take it back if a value did not fit.
    fn finish(&mut self, start: usize, bad: Option<&'static str>) -> Result<(), RowError> {
        match bad {
            None => {
                self.rows += 1;
                Ok(())
            }
            Some(column_type) => {
                self.data.truncate(start);
                Err(RowError(format!(
                    "a value does not fit its {column_type} column"
                )))
            }
        }
    }

    pub fn trade(&mut self, t: &Trade, instrument: &str, on_time: bool) -> Result<(), RowError> {
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(t.trade_time_ms);
        w.str(&t.exchange);
        w.str(&t.symbol);
        w.str(instrument);
        w.str(&t.trade_id);
        w.dec(t.price);
        w.dec(t.size);
        w.side(t.taker_side);
        w.u64(t.trade_time_ms);
        w.u64(t.event_time_ms);
        w.u64(t.receive_time_ns);
        w.u8(on_time as u8);
        let bad = w.1;
        self.finish(start, bad)
    }

    pub fn snapshot(&mut self, v: &BookView) -> Result<(), RowError> {
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(v.event_time_ms);
        w.str(&v.exchange);
        w.str(&v.symbol);
        w.str(&v.instrument);
        w.u64(v.event_time_ms);
        w.u64(v.seq);
        w.decs(v.bids.len(), v.bids.iter().map(|(p, _)| p));
        w.decs(v.bids.len(), v.bids.iter().map(|(_, s)| s));
        w.decs(v.asks.len(), v.asks.iter().map(|(p, _)| p));
        w.decs(v.asks.len(), v.asks.iter().map(|(_, s)| s));
        w.u64(v.receive_time_ns);
        let bad = w.1;
        self.finish(start, bad)
    }

    pub fn top_of_book(&mut self, v: &BookView) -> Result<(), RowError> {
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        let time_ms = v.time_ms();
        w.date(time_ms);
        w.str(&v.exchange);
        w.str(&v.symbol);
        w.str(&v.instrument);
        w.u64(time_ms);
        w.u64(v.version);
        w.u64(v.seq.max(0));
        w.str(v.status.as_str());
        let bid = v.bids.first();
        let ask = v.asks.first();
        w.opt_dec(bid.map(|l| l.0));
        w.opt_dec(bid.map(|l| l.1));
        w.opt_dec(ask.map(|l| l.0));
        w.opt_dec(ask.map(|l| l.1));
        w.opt_dec(v.bid_depth);
        w.opt_dec(v.ask_depth);
        w.u64(v.receive_time_ns);
        let bad = w.1;
        self.finish(start, bad)
    }

    pub fn nbbo(&mut self, u: &NbboUpdate) -> Result<(), RowError> {
        let n = &u.nbbo;
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(u.event_time_ms);
        w.str(&n.instrument);
        w.str(&n.quote);
        w.u64(u.event_time_ms);
        w.u64(u.version);
        w.u64(u.receive_time_ns);
        w.opt_dec(n.bid_price);
        w.opt_dec(n.bid_size);
        w.strs(&n.bid_venues);
        w.opt_dec(n.ask_price);
        w.opt_dec(n.ask_size);
        w.strs(&n.ask_venues);
        w.u8(n.locked() as u8);
        w.u8(n.crossed() as u8);
        w.strs(&n.venues);
        w.len(n.venue_versions.len());
        for v in &n.venue_versions {
            w.u64(*v);
        }
        w.strs(&n.excluded);
        w.strs(&n.excluded_reasons);
        let bad = w.1;
        self.finish(start, bad)
    }

    pub fn matched(&mut self, m: &MatchedTrade) -> Result<(), RowError> {
        let t = &m.trade;
        let nbbo = m.nbbo.as_ref();
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(t.trade_time_ms);
        w.str(&t.exchange);
        w.str(&t.symbol);
        w.str(&m.instrument);
        w.str(&t.trade_id);
        w.u64(t.trade_time_ms);
        w.dec(t.price);
        w.dec(t.size);
        w.side(t.taker_side);
        w.str(m.book_status.as_ref());
        w.u64(m.book_time_ms);
        w.u64(m.book_version);
        w.u64(m.book_seq.max(0));
        w.opt_dec(m.bid.map(|l| l.0));
        w.opt_dec(m.bid.map(|l| l.1));
        w.opt_dec(m.ask.map(|l| l.0));
        w.opt_dec(m.ask.map(|l| l.1));
        w.opt_dec(m.mid);
        w.opt_dec(m.spread);
        w.u8(match m.touch.as_str() {
            "at" => 1,
            "inside" => 2,
            "through" => 3,
            _ => 4,
        });
        w.u16(m.levels_consumed);
        w.dec(m.size_consumed);
        w.opt_dec(m.slippage_mid);
        w.opt_f64(m.slippage_mid_bps);
        w.opt_dec(nbbo.and_then(|n| n.bid_price));
        w.opt_dec(nbbo.and_then(|n| n.bid_size));
        w.opt_dec(nbbo.and_then(|n| n.ask_price));
        w.opt_dec(nbbo.and_then(|n| n.ask_size));
        match nbbo {
            Some(n) => w.strs(&n.venues),
            None => w.len(0),
        }
        w.opt_dec(m.slippage_nbbo);
        w.u8(m.trade_through as u8);
        w.u64(t.receive_time_ns);
        let bad = w.1;
        self.finish(start, bad)
    }

    pub fn bar(&mut self, b: &Bar) -> Result<(), RowError> {
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(b.window_start_ms);
        w.str(&b.instrument);
        w.str(&b.venue);
        w.u32(b.interval_ms);
        w.u64(b.window_start_ms);
        w.opt_dec(b.open);
        w.opt_dec(b.high);
        w.opt_dec(b.low);
        w.opt_dec(b.close);
        w.dec(b.volume);
        w.dec(b.notional);
        w.opt_f64(b.vwap);
        w.u32(b.trade_count);
        w.dec(b.buy_volume);
        w.dec(b.sell_volume);
        w.u32(b.live_ms);
        w.opt_f64(b.twa_spread);
        w.opt_f64(b.twa_bid_depth);
        w.opt_f64(b.twa_ask_depth);
        w.dec(b.ofi);
        let bad = w.1;
        self.finish(start, bad)
    }

    pub fn late(&mut self, e: &LateEvent) -> Result<(), RowError> {
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(e.event_time_ms);
        w.str(&e.instrument);
        w.str(&e.exchange);
        w.str(&e.symbol);
        w.str(e.kind);
        w.str(&e.event_id);
        w.u64(e.event_time_ms);
        w.u64(e.watermark_ms);
        w.u64(e.watermark_ms - e.event_time_ms);
        w.u64(e.receive_time_ns);
        let bad = w.1;
        self.finish(start, bad)
    }
}

impl TableRows {
    /// A not-in-sync interval of a book (`gaps`): unknown sequence numbers are NULL.
    pub fn gap(&mut self, g: &Gap) -> Result<(), RowError> {
        let start = self.data.len();
        let mut w = W(&mut self.data, None);
        w.date(g.start_ms);
        w.str(&g.exchange);
        w.str(&g.symbol);
        w.str(&g.instrument);
        w.u64(g.start_ms);
        w.u64(g.start_version);
        w.u64(g.end_ms);
        w.u8(g.closed as u8);
        w.str(&g.kind);
        w.str(&g.reason);
        w.opt_u64(g.seq_before);
        w.opt_u64(g.seq_after);
        w.u64(g.messages);
        w.u64(g.dropped);
        let bad = w.1;
        self.finish(start, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dec::parse_dec;

    #[test]
    fn trade_row_layout() {
        let trade = Trade {
            exchange: "binance".into(),
            symbol: "BTCUSDT".into(),
            trade_id: "7".into(),
            price: parse_dec("100.50").unwrap(),
            size: parse_dec("0.001").unwrap(),
            taker_side: Side::Sell,
            trade_time_ms: 86_400_000 * 2 + 5,
            event_time_ms: 3,
            receive_time_ns: 4,
            sequence: -1,
        };
        let mut rows = TableRows::default();
        rows.trade(&trade, "BTC-USDT", true).unwrap();
        let d = &rows.data;
        assert_eq!(&d[..2], &2u16.to_le_bytes());
        assert_eq!(d[2], 7);
        assert_eq!(&d[3..10], b"binance");
        let price_at = 2 + 8 + 8 + 9 + 2;
        assert_eq!(
            i128::from_le_bytes(d[price_at..price_at + 16].try_into().unwrap()),
            100_500_000_000_000_000_000
        );
        assert_eq!(d[price_at + 32], 2); // sell
        assert_eq!(*d.last().unwrap(), 1);
        assert_eq!(rows.rows, 1);
    }
}
