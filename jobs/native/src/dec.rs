//! Exact decimals: prices and sizes as the exchange wrote them (scale kept, so `to_string`
//! gives back the exchange's text, trailing zeros included), as Python's `Decimal` does.
//!
//! `rust_decimal` and Python's default context agree on sums and products of exchange numbers
//! but not everywhere: with a zero operand `rust_decimal` drops the scale (`0.0 + 1` is `1`,
//! Python's is `1.0`), it keeps 29-digit results and rounds quotients to 28 decimal places,
//! where Python rounds every result to 28 significant digits (ROUND_HALF_EVEN). The analytics
//! therefore compute with `py_add`, `py_sub`, `py_mul` and `py_div`, which give Python's
//! results (checked against Python on hundreds of thousands of random operands), so rows and
//! floats derived from them are Python's to the bit.

use std::io::Write as _;

pub use rust_decimal::Decimal as Dec;

/// Parse an exchange's decimal text exactly ("0.00100000" keeps its scale).
pub fn parse_dec(text: &str) -> Option<Dec> {
    // Python's Decimal accepts exponents ("1e-8"); exchanges send plain text, but be as lenient
    text.parse::<Dec>()
        .ok()
        .or_else(|| Dec::from_scientific(text).ok())
}

/// A decimal as a Decimal(38, 18) column holds it: the value times 10^18, truncated toward
/// zero (what the Python ClickHouse driver does with a Decimal).
/// None when it does not fit an i128 (never wrapped).
pub fn to_scaled_i128(value: Dec) -> Option<i128> {
    let scale = value.scale();
    let mantissa = value.mantissa(); // value = mantissa / 10^scale
    if scale <= 18 {
        mantissa.checked_mul(10i128.pow(18 - scale))
    } else {
        Some(mantissa / 10i128.pow(scale - 18))
    }
}

/// The largest decimal of this sign: where an exact result would overflow `Dec`, the
/// analytics carry this instead of panicking, and its row is refused (`rows::RowError`).
fn saturated(negative: bool) -> Dec {
    if negative {
        Dec::MIN
    } else {
        Dec::MAX
    }
}

// --- Python's decimal arithmetic: sums and quotients -------------------------------------

/// Python's default context precision.
const PREC: u32 = 28;

const fn pow10(n: u32) -> u128 {
    10u128.pow(n)
}

fn digits(x: u128) -> u32 {
    if x == 0 {
        0
    } else {
        x.ilog10() + 1
    }
}

/// `q` rounded half-even given the dropped fraction: `rem` out of `unit`, `sticky` if anything
/// nonzero was dropped beyond it.
fn round_half_even(q: u128, rem: u128, unit: u128, sticky: bool) -> u128 {
    let twice = rem * 2;
    if twice > unit || (twice == unit && (sticky || q % 2 == 1)) {
        q + 1
    } else {
        q
    }
}

/// A Python-context decimal: (-1)^neg * coeff * 10^exp, coeff at most 28 digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyDec {
    pub neg: bool,
    pub coeff: u128,
    pub exp: i32,
}

impl PyDec {
    /// `self * 10^n` (Python: `* Decimal(10**n)`, exact: only zeros are rounded off)
    pub fn times_pow10(self, n: i32) -> PyDec {
        PyDec {
            exp: self.exp + n,
            ..self
        }
    }

    /// Python's `float(Decimal)`: correctly rounded from the exact decimal value.
    pub fn to_f64(self) -> f64 {
        let mut buf = [0u8; 72];
        let mut cur = &mut buf[..];
        let _ = write!(
            cur,
            "{}{}e{}",
            if self.neg { "-" } else { "" },
            self.coeff,
            self.exp
        );
        let len = 72 - cur.len();
        std::str::from_utf8(&buf[..len])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    }

    /// As a `Dec`; a value needing more than 28 decimal places is rounded (half even) to 28
    /// (Python keeps 28 significant digits: the two differ only beyond the 28th decimal).
    pub fn to_dec(self) -> Dec {
        let (mut coeff, mut exp) = (self.coeff, self.exp);
        if exp > 0 {
            // an integer: exact while it fits (28 digits do)
            match u32::try_from(exp)
                .ok()
                .and_then(|e| 10u128.checked_pow(e))
                .and_then(|p| coeff.checked_mul(p))
            {
                Some(c) if c < (1u128 << 96) => {
                    coeff = c;
                    exp = 0;
                }
                _ => return if self.neg { Dec::MIN } else { Dec::MAX },
            }
        }
        let mut scale = (-exp) as u32;
        if scale > 28 {
            let drop = scale - 28;
            if drop > 38 {
                coeff = 0;
            } else {
                let unit = pow10(drop);
                coeff = round_half_even(coeff / unit, coeff % unit, unit, false);
            }
            scale = 28;
        }
        let mut d = Dec::from_i128_with_scale(coeff as i128, scale);
        d.set_sign_negative(self.neg);
        d
    }
}

/// Python's `Decimal(a) / Decimal(b)` in the default context (28 significant digits,
/// ROUND_HALF_EVEN; an exact quotient at its ideal exponent, trailing zeros stripped down to
/// it, as Python does). None when `b` is zero (Python raises).
pub fn py_div(a: Dec, b: Dec) -> Option<PyDec> {
    if b.is_zero() {
        return None;
    }
    // a zero dividend counts as +0 (Python's x - x is +0; rust_decimal may keep a sign)
    let neg = (!a.is_zero() && a.is_sign_negative()) != b.is_sign_negative();
    let (x, y) = (a.mantissa().unsigned_abs(), b.mantissa().unsigned_abs());
    // a / b = (x / y) * 10^(scale_b - scale_a); ideal exponent of an exact quotient
    let ideal = b.scale() as i32 - a.scale() as i32;
    // the digits of x / y by long division, nine at a time (x, y < 2^96: no overflow)
    let mut coeff = x / y;
    let mut rem = x % y;
    let mut frac = 0i32; // fraction digits in coeff
    let mut nd = digits(coeff);
    while rem != 0 && nd <= PREC {
        let k = if coeff == 0 {
            9
        } else {
            (PREC + 1 - nd).min(9)
        };
        let p = pow10(k);
        let r = rem * p;
        coeff = coeff * p + r / y;
        rem = r % y;
        frac += k as i32;
        nd = digits(coeff);
    }
    let mut exp = ideal - frac;
    if nd > PREC {
        let drop = nd - PREC;
        let unit = pow10(drop);
        let mut q = round_half_even(coeff / unit, coeff % unit, unit, rem != 0);
        exp += drop as i32;
        if q == pow10(PREC) {
            q /= 10;
            exp += 1;
        }
        coeff = q;
    } else if coeff == 0 {
        // Python: 0 / b is 0 at the ideal exponent (the sign: xor of the signs)
        return Some(PyDec {
            neg,
            coeff: 0,
            exp: ideal,
        });
    } else {
        // exact: strip trailing zeros down to the ideal exponent
        while exp < ideal && coeff % 10 == 0 {
            coeff /= 10;
            exp += 1;
        }
    }
    Some(PyDec { neg, coeff, exp })
}

/// Python's `a + b`: the exact sum rounded half-even to 28 significant digits (for exchange
/// numbers: the exact sum, as rust_decimal's). Exact for every pair of `Dec`s whose rounded
/// sum a `Dec` can hold.
pub fn py_add(a: Dec, b: Dec) -> Dec {
    // a: the operand with the smaller scale
    let (a, b) = if a.scale() <= b.scale() {
        (a, b)
    } else {
        (b, a)
    };
    let (sa, sb) = (a.scale(), b.scale());
    let (ma, mb) = (a.mantissa(), b.mantissa());
    // the common case, what the general one below gives then: a aligned to b's scale stays
    // below 10^37 (working scale b's, nothing cut off) and the exact sum has at most 28 digits
    if sb - sa <= 18 && ma.unsigned_abs() < pow10(19) {
        let sum = ma * pow10(sb - sa) as i128 + mb;
        if sum.unsigned_abs() < pow10(PREC) {
            return Dec::from_i128_with_scale(sum, sb);
        }
    }
    py_add_general(a, b)
}

/// `py_add` of `a` (the operand with the smaller scale) and `b`, any operands.
fn py_add_general(a: Dec, b: Dec) -> Dec {
    let (sa, sb) = (a.scale(), b.scale());
    let (ma, mb) = (a.mantissa(), b.mantissa());
    // the working scale: b's, or less where a aligned to it would pass 10^37 (then |a| is
    // over 10^8 times |b|: b's last digits only decide the rounding, as a sticky bit)
    let w = sa + (sb - sa).min(37 - digits(ma.unsigned_abs()));
    let am = ma * pow10(w - sa) as i128;
    let cut = pow10(sb - w) as i128;
    let (bm, frac) = (mb / cut, mb % cut != 0);
    let sum = am + bm;
    let mut m = sum.unsigned_abs();
    if frac && (mb < 0) != (sum < 0) {
        m -= 1; // the exact value is |sum| less a fraction: m and something
    }
    if m < pow10(PREC) && !frac {
        return Dec::from_i128_with_scale(sum, w);
    }
    let drop = digits(m).saturating_sub(PREC);
    let unit = pow10(drop);
    // q <= 10^28 fits the 96-bit mantissa
    let q = round_half_even(m / unit, m % unit, unit, frac);
    let mut d = if drop <= w {
        Dec::from_i128_with_scale(q as i128, w - drop)
    } else {
        // more than 28 integer digits: an integer, where it fits
        match q
            .checked_mul(pow10(drop - w))
            .filter(|&v| v < (1u128 << 96))
        {
            Some(v) => Dec::from_i128_with_scale(v as i128, 0),
            None => return a.checked_add(b).unwrap_or_else(|| saturated(sum < 0)),
        }
    };
    d.set_sign_negative(sum < 0);
    d
}

/// Python's `a - b` (see `py_add`).
pub fn py_sub(a: Dec, b: Dec) -> Dec {
    py_add(a, -b)
}

// --- Python's decimal arithmetic: products ----------------------------------------------
//
// Python computes `a * b` exactly and rounds the result to 28 significant digits only if it
// has more; the exponent of an exact product is e1 + e2. `rust_decimal` gives the same in the
// common case; `py_mul` checks that cheaply and otherwise redoes the product Python's way
// (`0 * 1.5` is `0.0` there). The slow path is exact while the product fits 192 bits and
// Python's rounded result has 0..=28 decimals; beyond that (never with exchange numbers) it
// keeps `rust_decimal`'s result.

const TEN_POW_28: u128 = pow10(PREC);

#[inline]
fn fits_python(r: Dec, scale: u32) -> bool {
    r.scale() == scale && r.mantissa().unsigned_abs() < TEN_POW_28
}

/// An unsigned 192-bit integer (little-endian limbs): exact products of two 96-bit mantissas.
#[derive(Clone, Copy, PartialEq, Eq)]
struct U192([u64; 3]);

impl U192 {
    fn from_u128(v: u128) -> U192 {
        U192([v as u64, (v >> 64) as u64, 0])
    }

    fn to_u128(self) -> Option<u128> {
        (self.0[2] == 0).then(|| u128::from(self.0[0]) | (u128::from(self.0[1]) << 64))
    }

    fn mul_small(self, m: u64) -> Option<U192> {
        let mut out = [0u64; 3];
        let mut carry: u128 = 0;
        for (word, &limb) in out.iter_mut().zip(&self.0) {
            let t = u128::from(limb) * u128::from(m) + carry;
            *word = t as u64;
            carry = t >> 64;
        }
        (carry == 0).then_some(U192(out))
    }

    fn mul(a: u128, b: u128) -> Option<U192> {
        // a, b < 2^96 in practice; exact for anything whose product fits 192 bits
        let (a0, a1) = (a as u64, (a >> 64) as u64);
        let lo = U192::from_u128(b).mul_small(a0)?;
        let hi = U192::from_u128(b).mul_small(a1)?;
        if hi.0[2] != 0 {
            return None;
        }
        lo.add(U192([0, hi.0[0], hi.0[1]]))
    }

    fn add(self, o: U192) -> Option<U192> {
        let mut out = [0u64; 3];
        let mut carry = 0u64;
        for ((word, &a), &b) in out.iter_mut().zip(&self.0).zip(&o.0) {
            let (t, c1) = a.overflowing_add(b);
            let (t, c2) = t.overflowing_add(carry);
            *word = t;
            carry = u64::from(c1 || c2);
        }
        (carry == 0).then_some(U192(out))
    }

    /// self /= d, returns the remainder
    fn div_small(&mut self, d: u64) -> u64 {
        let mut rem: u128 = 0;
        for i in (0..3).rev() {
            let cur = (rem << 64) | u128::from(self.0[i]);
            self.0[i] = (cur / u128::from(d)) as u64;
            rem = cur % u128::from(d);
        }
        rem as u64
    }
}

/// `(-1)^negative * magnitude * 10^-scale` rounded to 28 significant digits (ROUND_HALF_EVEN),
/// as Python's context does, as a `Dec` if one holds it exactly.
fn round28(negative: bool, magnitude: U192, scale: u32) -> Option<Dec> {
    let mut m = magnitude;
    let mut scale = i64::from(scale);
    let (mut last, mut sticky) = (0u64, false);
    let mut dropped = false;
    while m.to_u128().is_none_or(|v| v >= TEN_POW_28) {
        sticky |= last != 0;
        last = m.div_small(10);
        scale -= 1;
        dropped = true;
    }
    let mut q = m.to_u128()?;
    if dropped && (last > 5 || (last == 5 && (sticky || q % 2 == 1))) {
        q += 1;
        if q == TEN_POW_28 {
            q /= 10;
            scale -= 1;
        }
    }
    if scale < 0 {
        q = q.checked_mul(10u128.checked_pow(u32::try_from(-scale).ok()?)?)?;
        scale = 0;
        if q >= 1u128 << 96 {
            return None;
        }
    }
    if scale > 28 {
        return None;
    }
    let v = q as i128;
    Some(Dec::from_i128_with_scale(
        if negative { -v } else { v },
        scale as u32,
    ))
}

#[cold]
fn py_mul_slow(a: Dec, b: Dec, r: Dec) -> Dec {
    let scale = a.scale() + b.scale();
    let negative = a.is_sign_negative() != b.is_sign_negative();
    match U192::mul(a.mantissa().unsigned_abs(), b.mantissa().unsigned_abs()) {
        // Python's zero keeps the exponent (and the sign: -0 is equal to 0)
        Some(p) if p.to_u128() == Some(0) => Dec::from_i128_with_scale(0, scale.min(28)),
        Some(p) => round28(negative, p, scale).unwrap_or(r),
        None => r,
    }
}

/// Python's `a * b`.
#[inline]
pub fn py_mul(a: Dec, b: Dec) -> Dec {
    let Some(r) = a.checked_mul(b) else {
        return saturated(a.is_sign_negative() != b.is_sign_negative());
    };
    if fits_python(r, a.scale() + b.scale()) {
        r
    } else {
        py_mul_slow(a, b, r)
    }
}

/// Python's `float(a / b)` for decimals `a`, `b` (b != 0) in the default context: the quotient
/// correctly rounded to 28 significant digits (ROUND_HALF_EVEN), then to the nearest double.
pub fn py_div_to_f64(a: Dec, b: Dec) -> f64 {
    py_div(a, b).expect("decimal division by zero").to_f64()
}

/// The compact serde form of decimals in the core's binary state (`crate::state`), for a
/// field of any shape of `Dec`s: `#[serde(with = "crate::dec::wire")]` on a `Dec`, an
/// `Option`, a `Vec`, a pair or quadruple, or a `BTreeMap` of them.
///
/// A decimal is written as (flags, coefficient): flags = scale | 0x80 if negative (negative
/// zero included), the coefficient as an unsigned 128-bit integer (a varint in the state's
/// format: 4 to 6 bytes for an exchange price or size, not 16). Exact: the scale is kept, so
/// "0.00100000" comes back as "0.00100000". `Dec`'s own serde form (rust_decimal's
/// `serde-str`: its text) is exact too; it serves the `Dec`s of types declared elsewhere.
pub mod wire {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Error as _, MapAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Dec;

    /// A shape of decimals with a compact form.
    pub trait Wire: Sized {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
    }

    pub fn serialize<T: Wire, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        value.write(s)
    }

    pub fn deserialize<'de, T: Wire, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        T::read(d)
    }

    struct Out<'a, T>(&'a T);

    impl<T: Wire> Serialize for Out<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.write(s)
        }
    }

    struct In<T>(T);

    impl<'de, T: Wire> Deserialize<'de> for In<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            T::read(d).map(In)
        }
    }

    const NEGATIVE: u8 = 0x80;

    impl Wire for Dec {
        #[inline]
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let flags = self.scale() as u8 | if self.is_sign_negative() { NEGATIVE } else { 0 };
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&flags)?;
            t.serialize_element(&self.mantissa().unsigned_abs())?;
            t.end()
        }

        #[inline]
        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (flags, coefficient) = <(u8, u128)>::deserialize(d)?;
            let scale = u32::from(flags & !NEGATIVE);
            let mut value = i128::try_from(coefficient)
                .ok()
                .and_then(|c| Dec::try_from_i128_with_scale(c, scale).ok())
                .ok_or_else(|| D::Error::custom(format!("no decimal {coefficient}e-{scale}")))?;
            value.set_sign_negative(flags & NEGATIVE != 0);
            Ok(value)
        }
    }

    impl<T: Wire> Wire for Option<T> {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Some(v) => s.serialize_some(&Out(v)),
                None => s.serialize_none(),
            }
        }

        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(Option::<In<T>>::deserialize(d)?.map(|v| v.0))
        }
    }

    impl<A: Wire, B: Wire> Wire for (A, B) {
        #[inline]
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            (Out(&self.0), Out(&self.1)).serialize(s)
        }

        #[inline]
        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (a, b) = <(In<A>, In<B>)>::deserialize(d)?;
            Ok((a.0, b.0))
        }
    }

    impl<A: Wire, B: Wire, C: Wire, E: Wire> Wire for (A, B, C, E) {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            (Out(&self.0), Out(&self.1), Out(&self.2), Out(&self.3)).serialize(s)
        }

        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (a, b, c, e) = <(In<A>, In<B>, In<C>, In<E>)>::deserialize(d)?;
            Ok((a.0, b.0, c.0, e.0))
        }
    }

    impl<T: Wire> Wire for Vec<T> {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.iter().map(Out))
        }

        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(Vec::<In<T>>::deserialize(d)?
                .into_iter()
                .map(|v| v.0)
                .collect())
        }
    }

    impl<K: Wire + Ord, V: Wire> Wire for BTreeMap<K, V> {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.iter().map(|(k, v)| (Out(k), Out(v))))
        }

        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Entries<K, V>(PhantomData<(K, V)>);

            impl<'de, K: Wire + Ord, V: Wire> Visitor<'de> for Entries<K, V> {
                type Value = BTreeMap<K, V>;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a map of decimals")
                }

                fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                    // written in key order: collected, then built in bulk
                    let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                    while let Some((k, v)) = map.next_entry::<In<K>, In<V>>()? {
                        entries.push((k.0, v.0));
                    }
                    Ok(entries.into_iter().collect())
                }
            }

            d.deserialize_map(Entries(PhantomData))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The common case's shortcut in `py_add` gives what the general computation gives.
    #[test]
    fn py_add_shortcut_is_the_general_sum() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let edges: [i128; 8] = [
            0,
            1,
            -1,
            10i128.pow(19) - 1,
            10i128.pow(19),
            10i128.pow(28) - 1,
            -(10i128.pow(28) - 1),
            10i128.pow(27),
        ];
        for i in 0..200_000 {
            let mut operand = || {
                let m = match next() % 4 {
                    0 => edges[(next() % 8) as usize],
                    1 => i128::from(next() % 1_000_000_000),
                    2 => i128::from(next()) * i128::from(next() % 1_000_000),
                    _ => i128::from(next() >> (next() % 64)),
                };
                let m = m % 10i128.pow(28);
                let m = if next() % 2 == 0 { m } else { -m };
                Dec::from_i128_with_scale(m, (next() % 29) as u32)
            };
            let (a, b) = (operand(), operand());
            let (lo, hi) = if a.scale() <= b.scale() {
                (a, b)
            } else {
                (b, a)
            };
            let (got, want) = (py_add(a, b), py_add_general(lo, hi));
            assert!(
                got == want
                    && got.scale() == want.scale()
                    && got.is_sign_negative() == want.is_sign_negative(),
                "case {i}: {a} + {b}: {got} != {want}"
            );
        }
    }

    #[test]
    fn keeps_scale_and_scales_for_clickhouse() {
        let d = parse_dec("0.00100000").unwrap();
        assert_eq!(d.to_string(), "0.00100000");
        assert_eq!(to_scaled_i128(d), Some(1_000_000_000_000_000));
        assert_eq!(
            to_scaled_i128(parse_dec("-1.5").unwrap()),
            Some(-1_500_000_000_000_000_000)
        );
        assert_eq!(parse_dec("1e-8").unwrap().to_string(), "0.00000001");
    }
}
