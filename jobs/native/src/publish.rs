//! What the streaming job publishes, encoded byte for byte as the Python job writes it, so
//! readers see no change. Pure, no I/O.
//!
//! - result-topic records: `jobs/sinks/kafka_out.py`'s `json_record(table, row)`, i.e.
//!   `orjson.dumps(dict(zip(COLUMNS[table], row)), default=str)` of the rows of
//!   `jobs/sinks/clickhouse.py` (the columns and values of rows.rs, as JSON);
//! - dead letters (`schemas/deadletter.py`) and resync requests (`schemas/control.py`):
//!   `json.dumps` (", " and ": " separators, non-ASCII escaped);
//! - the Redis writes of `jobs/sinks/redis_books.py`: the KEYS and ARGV of the guarded book
//!   and NBBO scripts, each argument the bytes redis-py sends (`str()` of an int, UTF-8 of a
//!   str, bytes as they are).
//!
//! Python's text of values: `str(Decimal)` (scale kept, exponent form below 1E-6), `str(date)`
//! (YYYY-MM-DD), orjson's floats (shortest round trip, fixed notation from 1e-5 to below 1e16,
//! NaN and infinities as null).

use std::fmt::Write as _;

use crate::bars::Bar;
use crate::dec::Dec;
use crate::envelope::RawEnvelope;
use crate::events::Level;
use crate::instrument::{BookView, LateEvent, NbboUpdate};
use crate::matching::MatchedTrade;

/// Redis versions are compared as zero-padded decimal strings of this width.
pub const VERSION_WIDTH: usize = 24;

// --- Python's text of values ----------------------------------------------------------------

const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839\
404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// The decimal digits of `n` (ASCII) at the end of `buf`.
fn digits_of(n: u128, buf: &mut [u8; 40]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    // the common case (a coefficient below 2^64) without 128-bit divisions
    while n > u128::from(u64::MAX) {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut n = n as u64;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    &buf[i..]
}

/// ASCII bytes onto a string.
fn push_ascii(out: &mut String, ascii: &[u8]) {
    out.extend(ascii.iter().map(|&b| char::from(b)));
}

/// `str(int)`.
pub fn push_i64(out: &mut String, value: i64) {
    if value < 0 {
        out.push('-');
    }
    let mut buf = [0u8; 40];
    push_ascii(out, digits_of(u128::from(value.unsigned_abs()), &mut buf));
}

fn push_zeros(out: &mut String, n: usize) {
    const ZEROS: &str = "0000000000000000000000000000000000000000";
    let mut n = n;
    while n > ZEROS.len() {
        out.push_str(ZEROS);
        n -= ZEROS.len();
    }
    out.push_str(&ZEROS[..n]);
}

/// `str(Decimal)`: Python's `to_sci_string` of the value with its scale.
pub fn push_py_dec(out: &mut String, value: Dec) {
    if value.is_sign_negative() {
        out.push('-');
    }
    let mut buf = [0u8; 40];
    let coeff = digits_of(value.mantissa().unsigned_abs(), &mut buf);
    let exp = -(value.scale() as i64); // never positive for a Dec
    let leftdigits = exp + coeff.len() as i64;
    let dotplace = if exp <= 0 && leftdigits > -6 {
        leftdigits
    } else {
        1
    };
    if dotplace <= 0 {
        out.push_str("0.");
        push_zeros(out, (-dotplace) as usize);
        push_ascii(out, coeff);
    } else if dotplace as usize >= coeff.len() {
        push_ascii(out, coeff);
        push_zeros(out, dotplace as usize - coeff.len());
    } else {
        let (int, frac) = coeff.split_at(dotplace as usize);
        push_ascii(out, int);
        out.push('.');
        push_ascii(out, frac);
    }
    if leftdigits != dotplace {
        let _ = write!(out, "E{:+}", leftdigits - dotplace);
    }
}

/// `str(Decimal)` as a String.
pub fn py_dec(value: Dec) -> String {
    let mut out = String::new();
    push_py_dec(&mut out, value);
    out
}

/// `str(utc_date(ms))`: the UTC calendar day of a time in milliseconds, YYYY-MM-DD.
pub fn push_utc_date(out: &mut String, ms: i64) {
    // days to civil date (proleptic Gregorian), H. Hinnant's algorithm
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if (0..10_000).contains(&year) {
        let digit = |n: i64| char::from(b'0' + n as u8);
        out.extend([
            digit(year / 1000),
            digit(year / 100 % 10),
            digit(year / 10 % 10),
            digit(year % 10),
        ]);
        out.extend([
            '-',
            digit(month / 10),
            digit(month % 10),
            '-',
            digit(day / 10),
            digit(day % 10),
        ]);
    } else {
        let _ = write!(out, "{year:04}-{month:02}-{day:02}");
    }
}

/// A float as orjson writes it: the shortest text that reads back to it, in fixed notation
/// when 1e-5 <= |v| < 1e16 (integers with ".0"), else d.ddde-7 / d.ddde+16; NaN and the
/// infinities as null.
pub fn push_orjson_f64(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16", "0e0"
    let sci = format!("{value:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i64 = exp.parse().expect("{:e} exponent");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if let Some(even) = even_tie(value.abs(), &digits, exp) {
        digits = even;
    }
    let length = digits.len() as i64;
    let kk = exp + 1; // 10^(kk-1) <= |v| < 10^kk
    let k = kk - length; // |v| = digits * 10^k
    if neg {
        out.push('-');
    }
    if 0 <= k && kk <= 16 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', k as usize));
        out.push_str(".0");
    } else if 0 < kk && kk <= 16 {
        out.push_str(&digits[..kk as usize]);
        out.push('.');
        out.push_str(&digits[kk as usize..]);
    } else if -5 < kk && kk <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-kk) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if length > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{:+}", kk - 1);
    }
}

/// `v` exactly as `n * 10^exp`, when `n` fits 128 bits; None for a value whose exact decimal
/// has more than 18 significant digits anyway (beyond those bounds it always does).
fn exact_decimal(v: f64) -> Option<(u128, i64)> {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1 << 52) - 1);
    let (mut m, mut e2) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    if m == 0 {
        return Some((0, 0));
    }
    let zeros = m.trailing_zeros();
    m >>= zeros;
    e2 += i64::from(zeros);
    if e2 >= 0 {
        // m * 2^e2: a tie needs m divisible by 5^e2, so e2 <= 22 (m < 2^53)
        (e2 <= 74).then(|| (u128::from(m) << e2, 0))
    } else {
        // m * 5^k / 10^k, odd: beyond k = 32 it has more than 22 digits
        let k = -e2;
        (k <= 32).then(|| (u128::from(m) * 5u128.pow(k as u32), -k))
    }
}

/// Rust's shortest digits of `v` > 0 (`digits` read d.ddd, times 10^`exp`) where they are not
/// Python's repr's and orjson's: when `v` lies exactly halfway between two shortest
/// candidates those take the even one, Rust's may be the odd one. The even digits then.
fn even_tie(v: f64, digits: &str, exp: i64) -> Option<String> {
    if !digits.ends_with(['1', '3', '5', '7', '9']) {
        return None;
    }
    let (n, x) = exact_decimal(v)?;
    let exact = n.to_string();
    let n_digits = digits.len();
    // same leading power of ten, and exactly "5" then zeros after the shortest's digits
    if exact.len() as i64 - 1 + x != exp || exact.len() <= n_digits {
        return None;
    }
    let rest = &exact[n_digits..];
    if !(rest.starts_with('5') && rest[1..].bytes().all(|c| c == b'0')) {
        return None;
    }
    let low = &exact[..n_digits];
    let high = (low.parse::<u128>().ok()? + 1).to_string();
    let even = [low, high.as_str()]
        .into_iter()
        .find(|c| c.len() == n_digits && c != &digits && c.ends_with(['0', '2', '4', '6', '8']))?;
    // it must read back to v too (the interval below a power of two is narrower)
    let back: f64 = format!("{}.{}e{exp}", &even[..1], &even[1..])
        .parse()
        .ok()?;
    if back != v {
        return None;
    }
    Some(even.trim_end_matches('0').to_string()).filter(|d| !d.is_empty())
}

/// A JSON string as orjson writes it: UTF-8 kept, `"` `\` and control characters escaped.
pub fn push_orjson_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON string as `json.dumps` writes it (ensure_ascii): everything outside printable
/// ASCII escaped as \uXXXX (lowercase hex; surrogate pairs beyond the BMP).
pub fn push_ascii_json_str(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Standard base64 with padding (`base64.b64encode`).
pub fn push_base64(out: &mut String, raw: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

// --- result-topic records (orjson, compact) -------------------------------------------------

/// One JSON object in orjson's compact form, keys in the order written, appended to `out`.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, first: true }
    }
    fn key(&mut self, name: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        // the names are the columns': plain ASCII, nothing to escape
        debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
        self.out
    }
    fn date(&mut self, name: &str, ms: i64) {
        let out = self.key(name);
        out.push('"');
        push_utc_date(out, ms);
        out.push('"');
    }
    fn str(&mut self, name: &str, value: &str) {
        push_orjson_str(self.key(name), value);
    }
    fn int(&mut self, name: &str, value: i64) {
        push_i64(self.key(name), value);
    }
    fn dec(&mut self, name: &str, value: Dec) {
        let out = self.key(name);
        out.push('"');
        push_py_dec(out, value);
        out.push('"');
    }
    fn opt_dec(&mut self, name: &str, value: Option<Dec>) {
        match value {
            Some(v) => self.dec(name, v),
            None => self.key(name).push_str("null"),
        }
    }
    fn opt_f64(&mut self, name: &str, value: Option<f64>) {
        match value {
            Some(v) => push_orjson_f64(self.key(name), v),
            None => self.key(name).push_str("null"),
        }
    }
    fn strs<S: AsRef<str>>(&mut self, name: &str, items: &[S]) {
        let out = self.key(name);
        push_orjson_strs(out, items);
    }
    fn ints(&mut self, name: &str, items: &[i64]) {
        let out = self.key(name);
        out.push('[');
        for (i, v) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_i64(out, *v);
        }
        out.push(']');
    }
    fn decs<'d>(&mut self, name: &str, items: impl Iterator<Item = &'d Dec>) {
        let out = self.key(name);
        out.push('[');
        for (i, v) in items.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            push_py_dec(out, *v);
            out.push('"');
        }
        out.push(']');
    }
    fn finish(self) {
        self.out.push('}');
    }
}

fn push_orjson_strs<S: AsRef<str>>(out: &mut String, items: &[S]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_orjson_str(out, s.as_ref());
    }
    out.push(']');
}

/// The `book_snapshots` record of a view (`snapshot_row`).
pub fn snapshot_json(v: &BookView) -> String {
    let mut out = String::with_capacity(512);
    push_snapshot_json(&mut out, v);
    out
}

/// [`snapshot_json`] appended to `out`.
pub fn push_snapshot_json(out: &mut String, v: &BookView) {
    let mut o = Obj::new(out);
    o.date("date", v.event_time_ms);
    o.str("exchange", &v.exchange);
    o.str("symbol", &v.symbol);
    o.str("instrument", &v.instrument);
    o.int("event_time_ms", v.event_time_ms);
    o.int("seq", v.seq);
    o.decs("bid_prices", v.bids.iter().map(|(p, _)| p));
    o.decs("bid_sizes", v.bids.iter().map(|(_, s)| s));
    o.decs("ask_prices", v.asks.iter().map(|(p, _)| p));
    o.decs("ask_sizes", v.asks.iter().map(|(_, s)| s));
    o.int("receive_time_ns", v.receive_time_ns);
    o.finish();
}

/// The `top_of_book` record of a view (`top_of_book_row` with the view's depths).
pub fn top_of_book_json(v: &BookView) -> String {
    let mut out = String::with_capacity(512);
    push_top_of_book_json(&mut out, v);
    out
}

/// [`top_of_book_json`] appended to `out`.
pub fn push_top_of_book_json(out: &mut String, v: &BookView) {
    let time_ms = v.time_ms();
    let bid = v.bids.first();
    let ask = v.asks.first();
    let mut o = Obj::new(out);
    o.date("date", time_ms);
    o.str("exchange", &v.exchange);
    o.str("symbol", &v.symbol);
    o.str("instrument", &v.instrument);
    o.int("event_time_ms", time_ms);
    o.int("version", v.version);
    o.int("seq", v.seq.max(0));
    o.str("status", v.status.as_str());
    o.opt_dec("bid_price", bid.map(|l| l.0));
    o.opt_dec("bid_size", bid.map(|l| l.1));
    o.opt_dec("ask_price", ask.map(|l| l.0));
    o.opt_dec("ask_size", ask.map(|l| l.1));
    o.opt_dec("bid_depth_10bps", v.bid_depth);
    o.opt_dec("ask_depth_10bps", v.ask_depth);
    o.int("receive_time_ns", v.receive_time_ns);
    o.finish();
}

/// The `nbbo` record of an update (`nbbo_to_row`).
pub fn nbbo_json(u: &NbboUpdate) -> String {
    let mut out = String::with_capacity(512);
    push_nbbo_json(&mut out, u);
    out
}

/// [`nbbo_json`] appended to `out`.
pub fn push_nbbo_json(out: &mut String, u: &NbboUpdate) {
    let n = &u.nbbo;
    let mut o = Obj::new(out);
    o.date("date", u.event_time_ms);
    o.str("instrument", &n.instrument);
    o.str("quote", &n.quote);
    o.int("event_time_ms", u.event_time_ms);
    o.int("version", u.version);
    o.int("receive_time_ns", u.receive_time_ns);
    o.opt_dec("bid_price", n.bid_price);
    o.opt_dec("bid_size", n.bid_size);
    o.strs("bid_venues", &n.bid_venues);
    o.opt_dec("ask_price", n.ask_price);
    o.opt_dec("ask_size", n.ask_size);
    o.strs("ask_venues", &n.ask_venues);
    o.int("locked", i64::from(n.locked()));
    o.int("crossed", i64::from(n.crossed()));
    o.strs("venues", &n.venues);
    o.ints("venue_versions", &n.venue_versions);
    o.strs("excluded", &n.excluded);
    o.strs("excluded_reasons", &n.excluded_reasons);
    o.finish();
}

/// The `matched_trades` record of a matched trade (`matched_to_row`).
pub fn matched_json(m: &MatchedTrade) -> String {
    let mut out = String::with_capacity(512);
    push_matched_json(&mut out, m);
    out
}

/// [`matched_json`] appended to `out`.
pub fn push_matched_json(out: &mut String, m: &MatchedTrade) {
    let t = &m.trade;
    let nbbo = m.nbbo.as_ref();
    let mut o = Obj::new(out);
    o.date("date", t.trade_time_ms);
    o.str("exchange", &t.exchange);
    o.str("symbol", &t.symbol);
    o.str("instrument", &m.instrument);
    o.str("trade_id", &t.trade_id);
    o.int("trade_time_ms", t.trade_time_ms);
    o.dec("price", t.price);
    o.dec("size", t.size);
    o.str("taker_side", t.taker_side.as_str());
    o.str("book_status", m.book_status);
    o.int("book_time_ms", m.book_time_ms);
    o.int("book_version", m.book_version);
    o.int("book_seq", m.book_seq.max(0));
    o.opt_dec("bid_price", m.bid.map(|l| l.0));
    o.opt_dec("bid_size", m.bid.map(|l| l.1));
    o.opt_dec("ask_price", m.ask.map(|l| l.0));
    o.opt_dec("ask_size", m.ask.map(|l| l.1));
    o.opt_dec("mid", m.mid);
    o.opt_dec("spread", m.spread);
    o.str("touch", m.touch.as_str());
    o.int("levels_consumed", m.levels_consumed);
    o.dec("size_consumed", m.size_consumed);
    o.opt_dec("slippage_mid", m.slippage_mid);
    o.opt_f64("slippage_mid_bps", m.slippage_mid_bps);
    o.opt_dec("nbbo_bid_price", nbbo.and_then(|n| n.bid_price));
    o.opt_dec("nbbo_bid_size", nbbo.and_then(|n| n.bid_size));
    o.opt_dec("nbbo_ask_price", nbbo.and_then(|n| n.ask_price));
    o.opt_dec("nbbo_ask_size", nbbo.and_then(|n| n.ask_size));
    o.strs("nbbo_venues", nbbo.map_or(&[][..], |n| &n.venues[..]));
    o.opt_dec("slippage_nbbo", m.slippage_nbbo);
    o.int("trade_through", i64::from(m.trade_through));
    o.int("receive_time_ns", t.receive_time_ns);
    o.finish();
}

/// The `bars` record of a bar (`bar_to_row`).
pub fn bar_json(b: &Bar) -> String {
    let mut out = String::with_capacity(512);
    push_bar_json(&mut out, b);
    out
}

/// [`bar_json`] appended to `out`.
pub fn push_bar_json(out: &mut String, b: &Bar) {
    let mut o = Obj::new(out);
    o.date("date", b.window_start_ms);
    o.str("instrument", &b.instrument);
    o.str("venue", &b.venue);
    o.int("interval_ms", b.interval_ms);
    o.int("window_start_ms", b.window_start_ms);
    o.opt_dec("open", b.open);
    o.opt_dec("high", b.high);
    o.opt_dec("low", b.low);
    o.opt_dec("close", b.close);
    o.dec("volume", b.volume);
    o.dec("notional", b.notional);
    o.opt_f64("vwap", b.vwap);
    o.int("trade_count", b.trade_count);
    o.dec("buy_volume", b.buy_volume);
    o.dec("sell_volume", b.sell_volume);
    o.int("live_ms", b.live_ms);
    o.opt_f64("twa_spread", b.twa_spread);
    o.opt_f64("twa_bid_depth_10bps", b.twa_bid_depth);
    o.opt_f64("twa_ask_depth_10bps", b.twa_ask_depth);
    o.dec("ofi", b.ofi);
    o.finish();
}

/// The `late_events` record of a late event (`late_to_row`).
pub fn late_json(e: &LateEvent) -> String {
    let mut out = String::with_capacity(512);
    push_late_json(&mut out, e);
    out
}

/// [`late_json`] appended to `out`.
pub fn push_late_json(out: &mut String, e: &LateEvent) {
    let mut o = Obj::new(out);
    o.date("date", e.event_time_ms);
    o.str("instrument", &e.instrument);
    o.str("exchange", &e.exchange);
    o.str("symbol", &e.symbol);
    o.str("kind", e.kind);
    o.str("event_id", &e.event_id);
    o.int("event_time_ms", e.event_time_ms);
    o.int("watermark_ms", e.watermark_ms);
    o.int("lateness_ms", e.watermark_ms - e.event_time_ms);
    o.int("receive_time_ns", e.receive_time_ns);
    o.finish();
}

// --- dead letters and resync requests (json.dumps) -------------------------------------------

/// One JSON object as `json.dumps` writes it: `{"a": 1, "b": "x"}`.
struct AsciiObj {
    out: String,
    first: bool,
}

impl AsciiObj {
    fn new() -> Self {
        AsciiObj {
            out: String::from("{"),
            first: true,
        }
    }
    fn key(&mut self, name: &str) -> &mut String {
        if !self.first {
            self.out.push_str(", ");
        }
        self.first = false;
        push_ascii_json_str(&mut self.out, name);
        self.out.push_str(": ");
        &mut self.out
    }
    fn str(&mut self, name: &str, value: &str) {
        push_ascii_json_str(self.key(name), value);
    }
    fn int(&mut self, name: &str, value: i64) {
        let _ = write!(self.key(name), "{value}");
    }
    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// `dead_letter_record(stage, error, raw, env)`: why an input was rejected, the bytes as
/// base64, and where they came from when the envelope could be read.
pub fn dead_letter_json(stage: &str, error: &str, raw: &[u8], env: Option<&RawEnvelope>) -> String {
    let mut o = AsciiObj::new();
    o.str("stage", stage);
    o.str("error", error);
    let out = o.key("value_b64");
    out.push('"');
    push_base64(out, raw);
    out.push('"');
    if let Some(env) = env {
        o.str("exchange", env.exchange);
        o.str("symbol", env.symbol);
        o.str("channel", env.channel);
        o.str("connection_id", env.connection_id);
        o.int("connection_seq", env.connection_seq);
        o.int("receive_time_ns", env.receive_time_ns);
    }
    o.finish()
}

/// `resync_record(exchange, symbol, reason, requested_at_ms)`: a control-topic request for a
/// fresh snapshot.
pub fn resync_json(exchange: &str, symbol: &str, reason: &str, requested_at_ms: i64) -> String {
    let mut o = AsciiObj::new();
    o.str("type", "resync");
    o.str("exchange", exchange);
    o.str("symbol", symbol);
    o.str("reason", reason);
    o.int("requested_at_ms", requested_at_ms);
    o.finish()
}

// --- Redis writes ---------------------------------------------------------------------------

/// `encode_levels`: `[["price","size"],...]`, best first.
pub fn encode_levels(levels: &[Level]) -> Vec<u8> {
    let mut out = String::with_capacity(2 + levels.len() * 24);
    out.push('[');
    for (i, (price, size)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("[\"");
        push_py_dec(&mut out, *price);
        out.push_str("\",\"");
        push_py_dec(&mut out, *size);
        out.push_str("\"]");
    }
    out.push(']');
    out.into_bytes()
}

fn padded_version(version: i64) -> Vec<u8> {
    format!("{version:0width$}", width = VERSION_WIDTH).into_bytes()
}

/// `RedisBookWriter.book_args(view)`: KEYS and ARGV of the guarded write of one view
/// (`publish_time_ns`: what Python takes from `time.time_ns()`).
pub fn book_args(
    prefix: &str,
    view: &BookView,
    publish_time_ns: i64,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let status = view.status.as_str();
    let keys = vec![
        format!("{prefix}:book:{}:{}", view.exchange, view.symbol),
        format!("{prefix}:books"),
        format!("{prefix}:book-updates"),
    ];
    let args = vec![
        view.seq.to_string().into_bytes(),
        status.as_bytes().to_vec(),
        view.reason.as_bytes().to_vec(),
        encode_levels(&view.bids),
        encode_levels(&view.asks),
        view.event_time_ms.to_string().into_bytes(),
        view.receive_time_ns.to_string().into_bytes(),
        view.instrument.as_bytes().to_vec(),
        publish_time_ns.to_string().into_bytes(),
        format!(
            "{}:{}:{}:{}:{}",
            view.exchange, view.symbol, view.seq, status, view.version
        )
        .into_bytes(),
        padded_version(view.version),
    ];
    (keys, args)
}

/// `RedisNbboWriter.nbbo_args(update)`: KEYS and ARGV of the guarded write of one NBBO
/// update (`publish_time_ns`: what Python takes from `time.time_ns()`).
pub fn nbbo_args(
    prefix: &str,
    update: &NbboUpdate,
    publish_time_ns: i64,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let n = &update.nbbo;
    let text = |v: Option<Dec>| v.map(py_dec).unwrap_or_default().into_bytes();
    let mut venues = String::new();
    push_orjson_strs(&mut venues, &n.venues);
    // dict(zip(excluded, reasons)): a repeated venue keeps its first place and last reason
    let mut excluded: Vec<(&str, &str)> = Vec::with_capacity(n.excluded.len());
    for (venue, reason) in n.excluded.iter().zip(&n.excluded_reasons) {
        match excluded.iter_mut().find(|(v, _)| v == venue) {
            Some(entry) => entry.1 = reason,
            None => excluded.push((venue, reason)),
        }
    }
    let mut excluded_json = String::from("{");
    for (i, (venue, reason)) in excluded.iter().enumerate() {
        if i > 0 {
            excluded_json.push(',');
        }
        push_orjson_str(&mut excluded_json, venue);
        excluded_json.push(':');
        push_orjson_str(&mut excluded_json, reason);
    }
    excluded_json.push('}');
    let fields: [(&str, Vec<u8>); 14] = [
        ("quote", n.quote.as_bytes().to_vec()),
        ("bid_price", text(n.bid_price)),
        ("bid_size", text(n.bid_size)),
        ("bid_venues", n.bid_venues.join(",").into_bytes()),
        ("ask_price", text(n.ask_price)),
        ("ask_size", text(n.ask_size)),
        ("ask_venues", n.ask_venues.join(",").into_bytes()),
        (
            "locked",
            if n.locked() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ),
        (
            "crossed",
            if n.crossed() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ),
        ("venues", venues.into_bytes()),
        ("excluded", excluded_json.into_bytes()),
        (
            "event_time_ms",
            update.event_time_ms.to_string().into_bytes(),
        ),
        (
            "receive_time_ns",
            update.receive_time_ns.to_string().into_bytes(),
        ),
        ("publish_time_ns", publish_time_ns.to_string().into_bytes()),
    ];
    let mut args = Vec::with_capacity(2 + 2 * fields.len());
    args.push(padded_version(update.version));
    args.push(format!("{}:{}", n.instrument, update.version).into_bytes());
    for (name, value) in fields {
        args.push(name.as_bytes().to_vec());
        args.push(value);
    }
    let keys = vec![
        format!("{prefix}:nbbo:{}", n.instrument),
        format!("{prefix}:nbbos"),
        format!("{prefix}:nbbo-updates"),
    ];
    (keys, args)
}

#[cfg(test)]
mod tests {
    //! Against `tests/fixtures/publish/expected.json`: inputs and what the Python functions
    //! wrote for them (`make_expected.py` beside it).

    use serde_json::Value;

    use super::*;
    use crate::dec::parse_dec;
    use crate::events::{BookStatus, Side, Trade};
    use crate::matching::Touch;
    use crate::nbbo::Nbbo;

    const EXPECTED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/publish/expected.json"
    );

    fn fixture() -> Value {
        let text = std::fs::read_to_string(EXPECTED).unwrap_or_else(|e| panic!("{EXPECTED}: {e}"));
        serde_json::from_str(&text).expect("fixture JSON")
    }

    fn s(v: &Value) -> &str {
        v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
    }
    fn i(v: &Value) -> i64 {
        v.as_i64().unwrap_or_else(|| panic!("not an i64: {v}"))
    }
    /// Python's `Decimal(text)`: `parse_dec` drops the sign of a zero ("-0.00"), Python's
    /// keeps it (and prints it), so the sign is put back.
    fn dec(v: &Value) -> Dec {
        let mut d = parse_dec(s(v)).unwrap_or_else(|| panic!("not a decimal: {v}"));
        if s(v).starts_with('-') {
            d.set_sign_negative(true);
        }
        d
    }
    fn opt_dec(v: &Value) -> Option<Dec> {
        (!v.is_null()).then(|| dec(v))
    }
    fn opt_f64(v: &Value) -> Option<f64> {
        v.as_u64().map(f64::from_bits)
    }
    fn level(v: &Value) -> Level {
        (dec(&v[0]), dec(&v[1]))
    }
    fn levels(v: &Value) -> Vec<Level> {
        v.as_array().unwrap().iter().map(level).collect()
    }
    fn strs(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| s(x).to_string())
            .collect()
    }
    fn cases<'a>(fx: &'a Value, name: &str) -> &'a [Value] {
        let cases = fx[name].as_array().unwrap_or_else(|| panic!("no {name}"));
        assert!(!cases.is_empty(), "{name}");
        cases
    }
    fn b64(bytes: &[u8]) -> String {
        let mut out = String::new();
        push_base64(&mut out, bytes);
        out
    }
    fn unbase64(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("base64 {c}"),
        };
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(4) {
            let n = chunk.iter().take_while(|&&c| c != b'=').count();
            let mut acc = 0u32;
            for (k, &c) in chunk[..n].iter().enumerate() {
                acc |= u32::from(value(c)) << (18 - 6 * k);
            }
            out.extend_from_slice(&acc.to_be_bytes()[1..n]);
        }
        out
    }

    fn status(v: &Value) -> BookStatus {
        match s(v) {
            "LIVE" => BookStatus::Live,
            "RESYNCING" => BookStatus::Resyncing,
            "STALE" => BookStatus::Stale,
            other => panic!("status {other}"),
        }
    }

    fn view(v: &Value) -> BookView {
        BookView {
            exchange: s(&v["exchange"]).into(),
            symbol: s(&v["symbol"]).into(),
            instrument: s(&v["instrument"]).into(),
            status: status(&v["status"]),
            reason: s(&v["reason"]).into(),
            seq: i(&v["seq"]),
            version: i(&v["version"]),
            bids: levels(&v["bids"]),
            asks: levels(&v["asks"]),
            event_time_ms: i(&v["event_time_ms"]),
            receive_time_ns: i(&v["receive_time_ns"]),
            bid_depth: opt_dec(&v["bid_depth"]),
            ask_depth: opt_dec(&v["ask_depth"]),
        }
    }

    fn nbbo(v: &Value) -> Nbbo {
        Nbbo {
            instrument: s(&v["instrument"]).into(),
            quote: s(&v["quote"]).into(),
            bid_price: opt_dec(&v["bid_price"]),
            bid_size: opt_dec(&v["bid_size"]),
            bid_venues: strs(&v["bid_venues"]),
            ask_price: opt_dec(&v["ask_price"]),
            ask_size: opt_dec(&v["ask_size"]),
            ask_venues: strs(&v["ask_venues"]),
            venues: strs(&v["venues"]),
            venue_versions: v["venue_versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(i)
                .collect(),
            excluded: strs(&v["excluded"]),
            excluded_reasons: strs(&v["excluded_reasons"]),
        }
    }

    fn trade(v: &Value) -> Trade {
        Trade {
            exchange: s(&v["exchange"]).into(),
            symbol: s(&v["symbol"]).into(),
            trade_id: s(&v["trade_id"]).into(),
            price: dec(&v["price"]),
            size: dec(&v["size"]),
            taker_side: if s(&v["taker_side"]) == "buy" {
                Side::Buy
            } else {
                Side::Sell
            },
            trade_time_ms: i(&v["trade_time_ms"]),
            event_time_ms: i(&v["event_time_ms"]),
            receive_time_ns: i(&v["receive_time_ns"]),
            sequence: i(&v["sequence"]),
        }
    }

    fn matched(v: &Value) -> MatchedTrade {
        MatchedTrade {
            trade: trade(&v["trade"]),
            instrument: s(&v["instrument"]).into(),
            book_status: match s(&v["book_status"]) {
                "LIVE" => "LIVE",
                "RESYNCING" => "RESYNCING",
                "STALE" => "STALE",
                "NONE" => "NONE",
                other => panic!("book status {other}"),
            },
            book_time_ms: i(&v["book_time_ms"]),
            book_version: i(&v["book_version"]),
            book_seq: i(&v["book_seq"]),
            bid: (!v["bid"].is_null()).then(|| level(&v["bid"])),
            ask: (!v["ask"].is_null()).then(|| level(&v["ask"])),
            mid: opt_dec(&v["mid"]),
            spread: opt_dec(&v["spread"]),
            touch: match s(&v["touch"]) {
                "at" => Touch::At,
                "inside" => Touch::Inside,
                "through" => Touch::Through,
                "none" => Touch::None,
                other => panic!("touch {other}"),
            },
            levels_consumed: i(&v["levels_consumed"]),
            size_consumed: dec(&v["size_consumed"]),
            slippage_mid: opt_dec(&v["slippage_mid"]),
            slippage_mid_bps: opt_f64(&v["slippage_mid_bps"]),
            nbbo: (!v["nbbo"].is_null()).then(|| nbbo(&v["nbbo"])),
            slippage_nbbo: opt_dec(&v["slippage_nbbo"]),
            trade_through: v["trade_through"].as_bool().unwrap(),
        }
    }

    fn bar(v: &Value) -> Bar {
        Bar {
            instrument: s(&v["instrument"]).into(),
            venue: s(&v["venue"]).into(),
            interval_ms: i(&v["interval_ms"]),
            window_start_ms: i(&v["window_start_ms"]),
            open: opt_dec(&v["open"]),
            high: opt_dec(&v["high"]),
            low: opt_dec(&v["low"]),
            close: opt_dec(&v["close"]),
            volume: dec(&v["volume"]),
            notional: dec(&v["notional"]),
            vwap: opt_f64(&v["vwap"]),
            trade_count: i(&v["trade_count"]),
            buy_volume: dec(&v["buy_volume"]),
            sell_volume: dec(&v["sell_volume"]),
            live_ms: i(&v["live_ms"]),
            twa_spread: opt_f64(&v["twa_spread"]),
            twa_bid_depth: opt_f64(&v["twa_bid_depth"]),
            twa_ask_depth: opt_f64(&v["twa_ask_depth"]),
            ofi: dec(&v["ofi"]),
        }
    }

    fn assert_redis(what: &str, (keys, args): (Vec<String>, Vec<Vec<u8>>), want: &Value) {
        assert_eq!(keys, strs(&want["keys"]), "{what} keys");
        let want_args = want["args_b64"].as_array().unwrap();
        assert_eq!(args.len(), want_args.len(), "{what} ARGV length");
        for (n, (got, want)) in args.iter().zip(want_args).enumerate() {
            assert_eq!(
                b64(got),
                s(want),
                "{what} ARGV[{n}]: {:?} vs {:?}",
                String::from_utf8_lossy(got),
                String::from_utf8_lossy(&unbase64(s(want)))
            );
        }
    }

    #[test]
    fn python_text_of_decimals_floats_and_dates() {
        let fx = fixture();
        for case in cases(&fx, "decimals") {
            assert_eq!(
                py_dec(dec(&case[0])),
                s(&case[1]),
                "str(Decimal({}))",
                case[0]
            );
        }
        for case in cases(&fx, "floats") {
            let value = f64::from_bits(case[0].as_u64().unwrap());
            let mut out = String::new();
            push_orjson_f64(&mut out, value);
            assert_eq!(out, s(&case[1]), "orjson.dumps({value:e})");
        }
        for case in cases(&fx, "dates") {
            let mut out = String::new();
            push_utc_date(&mut out, i(&case[0]));
            assert_eq!(out, s(&case[1]), "utc_date({})", case[0]);
        }
    }

    #[test]
    fn book_views_as_records_and_redis_writes() {
        let fx = fixture();
        let (prefix, publish_time_ns) = (s(&fx["prefix"]), i(&fx["publish_time_ns"]));
        for case in cases(&fx, "views") {
            let v = view(&case["input"]);
            assert_eq!(top_of_book_json(&v), s(&case["top_of_book"]));
            assert_eq!(snapshot_json(&v), s(&case["snapshot"]));
            assert_redis(
                "book",
                book_args(prefix, &v, publish_time_ns),
                &case["redis"],
            );
        }
    }

    #[test]
    fn nbbo_updates_as_records_and_redis_writes() {
        let fx = fixture();
        let (prefix, publish_time_ns) = (s(&fx["prefix"]), i(&fx["publish_time_ns"]));
        for case in cases(&fx, "nbbo") {
            let input = &case["input"];
            let update = NbboUpdate {
                nbbo: nbbo(&input["nbbo"]),
                version: i(&input["version"]),
                event_time_ms: i(&input["event_time_ms"]),
                receive_time_ns: i(&input["receive_time_ns"]),
            };
            assert_eq!(nbbo_json(&update), s(&case["json"]));
            assert_redis(
                "nbbo",
                nbbo_args(prefix, &update, publish_time_ns),
                &case["redis"],
            );
        }
    }

    #[test]
    fn matched_trades_bars_and_late_events_as_records() {
        let fx = fixture();
        for case in cases(&fx, "matched") {
            assert_eq!(matched_json(&matched(&case["input"])), s(&case["json"]));
        }
        for case in cases(&fx, "bars") {
            assert_eq!(bar_json(&bar(&case["input"])), s(&case["json"]));
        }
        for case in cases(&fx, "late") {
            let v = &case["input"];
            let event = LateEvent {
                exchange: s(&v["exchange"]).into(),
                symbol: s(&v["symbol"]).into(),
                instrument: s(&v["instrument"]).into(),
                kind: if s(&v["kind"]) == "trade" {
                    "trade"
                } else {
                    "book"
                },
                event_id: s(&v["event_id"]).into(),
                event_time_ms: i(&v["event_time_ms"]),
                watermark_ms: i(&v["watermark_ms"]),
                receive_time_ns: i(&v["receive_time_ns"]),
            };
            assert_eq!(late_json(&event), s(&case["json"]));
        }
    }

    #[test]
    fn dead_letters_and_resync_requests() {
        let fx = fixture();
        for case in cases(&fx, "dead_letters") {
            let v = &case["input"];
            let raw = unbase64(s(&v["raw_b64"]));
            assert_eq!(b64(&raw), s(&v["raw_b64"]));
            let e = &v["env"];
            let env = (!e.is_null()).then(|| RawEnvelope {
                instrument: s(&e["instrument"]),
                exchange: s(&e["exchange"]),
                symbol: s(&e["symbol"]),
                channel: s(&e["channel"]),
                receive_time_ns: i(&e["receive_time_ns"]),
                connection_id: s(&e["connection_id"]),
                connection_seq: i(&e["connection_seq"]),
                payload: &raw,
            });
            let got = dead_letter_json(s(&v["stage"]), s(&v["error"]), &raw, env.as_ref());
            assert_eq!(got, s(&case["json"]));
        }
        for case in cases(&fx, "resyncs") {
            let v = &case["input"];
            let got = resync_json(
                s(&v["exchange"]),
                s(&v["symbol"]),
                s(&v["reason"]),
                i(&v["requested_at_ms"]),
            );
            assert_eq!(got, s(&case["json"]));
        }
    }
}
