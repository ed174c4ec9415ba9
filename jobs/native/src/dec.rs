//! Exact decimals: prices and sizes as the exchange wrote them (scale kept, so `to_string`
//! gives back the exchange's text, trailing zeros included), as Python's `Decimal` does.
//!
//! `rust_decimal` holds 28 significant digits, as Python's default context does; sums and
//! products of exchange numbers are exact in both. A quotient is rounded to fit (28 digits
//! here, 28 significant digits in Python): the stored `Decimal(38, 18)` keeps 18 decimals,
//! so the two agree wherever a quotient's integer part has fewer than 10 digits.

pub use rust_decimal::Decimal as Dec;

/// Parse an exchange's decimal text exactly ("0.00100000" keeps its scale).
pub fn parse_dec(text: &str) -> Option<Dec> {
    // Python's Decimal accepts exponents ("1e-8"); exchanges send plain text, but be as lenient
    text.parse::<Dec>().ok().or_else(|| Dec::from_scientific(text).ok())
}

/// A decimal as a Decimal(38, 18) column holds it: the value times 10^18, truncated toward
/// zero (what the Python ClickHouse driver does with a Decimal).
pub fn to_scaled_i128(value: Dec) -> i128 {
    let scale = value.scale();
    let mantissa = value.mantissa(); // value = mantissa / 10^scale
    if scale <= 18 {
        mantissa * 10i128.pow(18 - scale)
    } else {
        mantissa / 10i128.pow(scale - 18)
    }
}

/// A decimal as a Python float (`float(Decimal)`: correctly rounded from the decimal text).
pub fn to_f64(value: Dec) -> f64 {
    value.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_scale_and_scales_for_clickhouse() {
        let d = parse_dec("0.00100000").unwrap();
        assert_eq!(d.to_string(), "0.00100000");
        assert_eq!(to_scaled_i128(d), 1_000_000_000_000_000);
        assert_eq!(to_scaled_i128(parse_dec("-1.5").unwrap()), -1_500_000_000_000_000_000);
        assert_eq!(parse_dec("1e-8").unwrap().to_string(), "0.00000001");
        assert_eq!(to_f64(parse_dec("0.1").unwrap()), 0.1);
    }
}
