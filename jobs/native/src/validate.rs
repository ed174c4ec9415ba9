//! What the core accepts from a parsed frame before any of it reaches a book, the bars or a
//! row: the edge where exchange data becomes trusted. A frame that fails here is rejected
//! whole (nothing applied) and leaves as a dead letter with the reason; see
//! docs/robustness.md.
//!
//! The checks follow from where values go:
//! - prices and sizes are stored as `Decimal(38, 18)`: at most 20 integer digits and 18
//!   decimals (a value wider than the column is rejected, never truncated or wrapped);
//!   prices are > 0, sizes >= 0 (0 removes a level);
//! - times are stored as `UInt64` milliseconds and `Date` (`UInt16` days since 1970): an event
//!   time is in [1970, 2149) and, when configured, within a window around the receive time;
//!   the receive time is in the same range;
//! - sequence ids are >= 0 and one message spans at most `MAX_SEQUENCE_JUMP` ids.

use crate::dec::Dec;
use crate::envelope::RawEnvelope;
use crate::events::{Level, MarketEvent, ParseError};

/// Update ids one message (or one step of a book's sequence) may advance by: Binance's
/// busiest books advance by thousands per 100 ms, so a jump beyond this is corrupt data,
/// not market activity (treated as a gap).
pub const MAX_SEQUENCE_JUMP: i64 = 1 << 40;

/// One past the last millisecond a `Date` column holds (65,536 days: 2149-06-07).
pub const MAX_TIME_MS: i64 = 65_536 * 86_400_000;

/// Integer digits a `Decimal(38, 18)` holds.
const MAX_INTEGER_DIGITS: u32 = 20;
/// Decimals a `Decimal(38, 18)` holds.
const MAX_SCALE: u32 = 18;

/// Configurable limits (`book.event_time_window` in config/tickflow.yaml).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// an event time may be at most this far after its frame's receive time
    pub max_event_ahead_ms: Option<i64>,
    /// an event time may be at most this far before its frame's receive time
    pub max_event_behind_ms: Option<i64>,
}

fn reject(exchange: &str, what: String) -> ParseError {
    ParseError(format!("{exchange}: rejected: {what}"))
}

/// Whether `value` fits a `Decimal(38, 18)` column exactly.
pub fn fits_column(value: Dec) -> bool {
    if value.scale() > MAX_SCALE {
        // trailing zeros beyond 18 decimals lose nothing
        let normal = value.normalize();
        if normal.scale() > MAX_SCALE {
            return false;
        }
    }
    value.abs().trunc() < Dec::from_i128_with_scale(10i128.pow(MAX_INTEGER_DIGITS), 0)
}

fn check_price(exchange: &str, what: &str, price: Dec) -> Result<(), ParseError> {
    if price <= Dec::ZERO {
        return Err(reject(exchange, format!("{what} price {price} is not > 0")));
    }
    if !fits_column(price) {
        return Err(reject(
            exchange,
            format!("{what} price {price} does not fit Decimal(38, 18)"),
        ));
    }
    Ok(())
}

fn check_size(exchange: &str, what: &str, size: Dec) -> Result<(), ParseError> {
    if size.is_sign_negative() && !size.is_zero() {
        return Err(reject(exchange, format!("{what} size {size} is negative")));
    }
    if !fits_column(size) {
        return Err(reject(
            exchange,
            format!("{what} size {size} does not fit Decimal(38, 18)"),
        ));
    }
    Ok(())
}

fn check_levels(exchange: &str, side: &str, levels: &[Level]) -> Result<(), ParseError> {
    for &(price, size) in levels {
        check_price(exchange, side, price)?;
        check_size(exchange, side, size)?;
    }
    Ok(())
}

fn check_ids(exchange: &str, first: i64, last: i64) -> Result<(), ParseError> {
    if first < 0 || last < 0 {
        return Err(reject(
            exchange,
            format!("negative update id ({first}, {last})"),
        ));
    }
    if (last as i128 - first as i128).abs() > MAX_SEQUENCE_JUMP as i128 {
        return Err(reject(
            exchange,
            format!("update ids {first}..{last} span an implausible range"),
        ));
    }
    Ok(())
}

impl Limits {
    /// `time_ms` (an exchange's event or trade time) against the column range and the window
    /// around `receive_time_ns`.
    fn check_time(
        &self,
        exchange: &str,
        what: &str,
        time_ms: i64,
        receive_time_ns: i64,
    ) -> Result<(), ParseError> {
        if !(0..MAX_TIME_MS).contains(&time_ms) {
            return Err(reject(
                exchange,
                format!("{what} {time_ms} ms is outside 1970..2149"),
            ));
        }
        let receive_ms = receive_time_ns.div_euclid(1_000_000);
        let ahead = time_ms - receive_ms;
        if let Some(max) = self.max_event_ahead_ms {
            if ahead > max {
                return Err(reject(
                    exchange,
                    format!(
                        "{what} {time_ms} ms is {ahead} ms after the receive time (limit {max} ms)"
                    ),
                ));
            }
        }
        if let Some(max) = self.max_event_behind_ms {
            if -ahead > max {
                return Err(reject(
                    exchange,
                    format!(
                        "{what} {time_ms} ms is {} ms before the receive time (limit {max} ms)",
                        -ahead
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every event of one frame, or the first reason to reject the frame.
    pub fn check(&self, env: &RawEnvelope<'_>, events: &[MarketEvent]) -> Result<(), ParseError> {
        let exchange = env.exchange;
        // the receive time is stored (UInt64 ns, Date) and makes the books' versions
        if !(0..MAX_TIME_MS * 1_000_000).contains(&env.receive_time_ns) {
            return Err(reject(
                exchange,
                format!(
                    "receive time {} ns is outside 1970..2149",
                    env.receive_time_ns
                ),
            ));
        }
        for event in events {
            match event {
                MarketEvent::Delta(d) => {
                    check_ids(exchange, d.first_id, d.last_id)?;
                    check_levels(exchange, "bid", &d.bids)?;
                    check_levels(exchange, "ask", &d.asks)?;
                    // 0: the exchange gave no time (Kraken's book updates may not)
                    if d.event_time_ms != 0 {
                        self.check_time(
                            exchange,
                            "event time",
                            d.event_time_ms,
                            d.receive_time_ns,
                        )?;
                    }
                }
                MarketEvent::Snapshot(s) => {
                    check_ids(exchange, s.last_id, s.last_id)?;
                    check_levels(exchange, "bid", &s.bids)?;
                    check_levels(exchange, "ask", &s.asks)?;
                    if s.event_time_ms != 0 {
                        self.check_time(
                            exchange,
                            "event time",
                            s.event_time_ms,
                            s.receive_time_ns,
                        )?;
                    }
                }
                MarketEvent::Trade(t) => {
                    check_price(exchange, "trade", t.price)?;
                    check_size(exchange, "trade", t.size)?;
                    self.check_time(exchange, "trade time", t.trade_time_ms, t.receive_time_ns)?;
                    if t.event_time_ms != t.trade_time_ms {
                        self.check_time(
                            exchange,
                            "event time",
                            t.event_time_ms,
                            t.receive_time_ns,
                        )?;
                    }
                }
                MarketEvent::SyncLost(_) => {}
            }
        }
        Ok(())
    }
}

/// Whether a decimal's text is written as exchanges write numbers: ASCII, an optional minus,
/// digits with at most one point, an optional exponent of at most 3 digits. Anything else
/// (" 1", "１２", "1_0", "+1", "NaN", "Infinity", "1e999999999") is not a price or a size.
pub fn plain_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i = 1;
    }
    let (mut digits, mut dot) = (0, false);
    while i < b.len() {
        match b[i] {
            b'0'..=b'9' => digits += 1,
            b'.' if !dot => dot = true,
            _ => break,
        }
        i += 1;
    }
    if digits == 0 {
        return false;
    }
    if i == b.len() {
        return true;
    }
    if !matches!(b[i], b'e' | b'E') {
        return false;
    }
    i += 1;
    if matches!(b.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let exp_digits = b.len().saturating_sub(i);
    (1..=3).contains(&exp_digits) && b[i..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dec::parse_dec;

    #[test]
    fn plain_numbers_only() {
        for ok in [
            "1", "0", "-0", "0.10", "65000.01", "1e-8", "1E+2", "-3.5", ".5", "5.",
        ] {
            assert!(plain_number(ok), "{ok:?}");
        }
        for bad in [
            " 1",
            "1 ",
            "１２",
            "1_0",
            "+1",
            "NaN",
            "sNaN",
            "nan",
            "Infinity",
            "-inf",
            "",
            "-",
            ".",
            "1e",
            "1e999999999",
            "1e-999999999",
            "0x10",
            "1.2.3",
            "1e5.0",
        ] {
            assert!(!plain_number(bad), "{bad:?}");
        }
    }

    #[test]
    fn column_range() {
        let d = |s: &str| parse_dec(s).unwrap();
        assert!(fits_column(d("99999999999999999999.99999999")));
        assert!(!fits_column(d("100000000000000000000")));
        assert!(!fits_column(d("0.0000000000000000001")));
        assert!(fits_column(d("0.1000000000000000000000"))); // zeros beyond 18 decimals
        assert!(!fits_column(d("-100000000000000000000")));
    }
}
