//! Per-exchange pure parsers: a raw envelope -> normalised events, the Rust twin of
//! `jobs/parse/__init__.py` (and `binance.py`, `coinbase.py`, `kraken.py`).
//!
//! The Python parsers decode with msgspec into typed structs. The parsers here use a small
//! zero-copy JSON reader (`json`) that accepts and rejects what msgspec does:
//! - strict JSON (no NaN/Infinity literals, no trailing commas, JSON whitespace only,
//!   trailing characters after the value are an error, trailing whitespace is fine);
//! - unknown fields are skipped (still checked for JSON syntax, not for UTF-8, as msgspec);
//! - a duplicated field: the last value wins (every occurrence is still type-checked);
//! - ints must be JSON integers (`1.0`, `1e3` are rejected); bools must be true/false;
//! - a tagged union finds its tag anywhere in the object; a lone tagged struct accepts a
//!   missing tag but not a wrong one.
//!
//! Checks that Python makes after msgspec has decoded (a bad `Decimal`, a timestamp, a
//! symbol) apply only to the values that survive duplicate fields: they are carried as
//! "deferred" results and raised only if the value is kept, exactly as Python does.
//!
//! Decimals follow `decimal.Decimal(text)` (`pydec`), timestamps `datetime.fromisoformat` of
//! CPython 3.11's C implementation (`isotime`), and the `sync_lost` reason formats details as
//! Python's `str()` does (`pyrepr`).

pub mod binance;
pub mod coinbase;
pub mod kraken;

use crate::envelope::RawEnvelope;
use crate::events::{MarketEvent, ParseError, SyncLost};

/// One envelope -> its events (`jobs.parse.parse_envelope`).
pub fn parse_envelope(env: &RawEnvelope<'_>) -> Result<Vec<MarketEvent>, ParseError> {
    if env.channel == "sync_lost" {
        return Ok(vec![MarketEvent::SyncLost(parse_sync_lost(env)?)]);
    }
    let events = match env.exchange {
        binance::EXCHANGE => binance::parse(env)?,
        coinbase::EXCHANGE => coinbase::parse(env)?,
        kraken::EXCHANGE => kraken::parse(env)?,
        other => {
            return Err(ParseError(format!(
                "no parser for exchange {}",
                pyrepr::str_repr(other)
            )))
        }
    };
    for event in &events {
        if event.symbol() != env.symbol {
            return Err(ParseError(format!(
                "{} frame for {} arrived keyed as {}",
                env.exchange,
                event.symbol(),
                env.symbol
            )));
        }
    }
    Ok(events)
}

/// A `sync_lost` envelope -> SyncLost; the details beside the reason are kept for people:
/// `{"reason": "sequence_num gap", "expected": 41, "got": 43}` ->
/// "sequence_num gap (expected 41, got 43)" (`jobs.parse.parse_sync_lost`).
pub fn parse_sync_lost(env: &RawEnvelope<'_>) -> Result<SyncLost, ParseError> {
    let mut marker = pyrepr::decode_marker(env.payload).map_err(|e| {
        ParseError(format!(
            "{}: cannot parse sync_lost marker: {}",
            env.exchange, e.0
        ))
    })?;
    let reason = marker
        .iter()
        .position(|(k, _)| k == "reason")
        .map(|i| marker.remove(i).1);
    let mut reason = match reason {
        Some(pyrepr::PyVal::Str(s)) => s,
        _ => {
            return Err(ParseError(format!(
                "{}: sync_lost marker without a reason: {}",
                env.exchange,
                pyrepr::dict_repr(&marker)
            )))
        }
    };
    if !marker.is_empty() {
        reason.push_str(" (");
        for (i, (k, v)) in marker.iter().enumerate() {
            if i > 0 {
                reason.push_str(", ");
            }
            reason.push_str(k);
            reason.push(' ');
            pyrepr::write_str(v, &mut reason);
        }
        reason.push(')');
    }
    Ok(SyncLost {
        exchange: env.exchange.to_string(),
        symbol: env.symbol.to_string(),
        reason,
        receive_time_ns: env.receive_time_ns,
    })
}

/// A ParseError with this text.
#[inline]
pub(crate) fn perr(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

// ---------------------------------------------------------------------------------------
// JSON reader with msgspec's acceptance rules
// ---------------------------------------------------------------------------------------

pub(crate) mod json {
    use super::{perr, pyrepr};
    use crate::events::ParseError;
    use std::borrow::Cow;

    pub type R<T> = Result<T, ParseError>;

    /// Nesting deeper than this is an error (msgspec raises RecursionError near Python's
    /// recursion limit of 1000).
    const MAX_DEPTH: u32 = 1000;

    pub struct Json<'a> {
        b: &'a [u8],
        pos: usize,
        depth: u32,
    }

    /// A JSON number's text and whether it is an integer (no fraction, no exponent).
    pub struct Num<'a> {
        pub text: &'a str,
        pub is_int: bool,
    }

    impl<'a> Json<'a> {
        pub fn new(b: &'a [u8]) -> Self {
            Json {
                b,
                pos: 0,
                depth: 0,
            }
        }

        fn err<T>(&self, what: &str) -> R<T> {
            Err(perr(format!(
                "JSON is malformed: {what} (byte {})",
                self.pos
            )))
        }

        #[inline]
        fn ws(&mut self) {
            while let Some(&c) = self.b.get(self.pos) {
                if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }

        /// The next non-whitespace byte (not consumed).
        #[inline]
        pub fn peek(&mut self) -> R<u8> {
            self.ws();
            match self.b.get(self.pos) {
                Some(&c) => Ok(c),
                None => Err(perr("Input data was truncated")),
            }
        }

        /// Only whitespace may follow the top-level value.
        pub fn finish(&mut self) -> R<()> {
            self.ws();
            if self.pos != self.b.len() {
                return self.err("trailing characters");
            }
            Ok(())
        }

        pub fn type_err<T>(&mut self, expected: &str) -> R<T> {
            let got = match self.peek()? {
                b'{' => "object",
                b'[' => "array",
                b'"' => "str",
                b't' | b'f' => "bool",
                b'n' => "null",
                b'-' | b'0'..=b'9' => "number",
                _ => return self.err("invalid character"),
            };
            Err(perr(format!("Expected `{expected}`, got `{got}`")))
        }

        // --- objects and arrays ----------------------------------------------------------

        /// Consume `{` (an error if the value is not an object).
        pub fn begin_object(&mut self) -> R<()> {
            if self.peek()? != b'{' {
                return self.type_err("object");
            }
            self.enter()?;
            self.pos += 1;
            Ok(())
        }

        fn enter(&mut self) -> R<()> {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(perr("maximum recursion depth exceeded while deserializing"));
            }
            Ok(())
        }

        /// The next key of the object (its unescaped bytes, not checked for UTF-8, as msgspec
        /// matches field names), positioned at its value; None after the closing `}`.
        pub fn next_key(&mut self, first: &mut bool) -> R<Option<Cow<'a, [u8]>>> {
            let c = self.peek()?;
            if *first {
                *first = false;
                if c == b'}' {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(None);
                }
            } else {
                match c {
                    b'}' => {
                        self.pos += 1;
                        self.depth -= 1;
                        return Ok(None);
                    }
                    b',' => {
                        self.pos += 1;
                        if self.peek()? == b'}' {
                            return self.err("trailing comma in object");
                        }
                    }
                    _ => return self.err("expected ',' or '}'"),
                }
            }
            if self.peek()? != b'"' {
                return self.err("object keys must be strings");
            }
            let key = self.raw_string()?;
            if self.peek()? != b':' {
                return self.err("expected ':'");
            }
            self.pos += 1;
            Ok(Some(key))
        }

        /// Consume `[` (an error if the value is not an array).
        pub fn begin_array(&mut self) -> R<()> {
            if self.peek()? != b'[' {
                return self.type_err("array");
            }
            self.enter()?;
            self.pos += 1;
            Ok(())
        }

        /// True when another element follows (positioned at it); false after the `]`.
        pub fn next_item(&mut self, first: &mut bool) -> R<bool> {
            let c = self.peek()?;
            if *first {
                *first = false;
                if c == b']' {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(false);
                }
                return Ok(true);
            }
            match c {
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    Ok(false)
                }
                b',' => {
                    self.pos += 1;
                    if self.peek()? == b']' {
                        return self.err("trailing comma in array");
                    }
                    Ok(true)
                }
                _ => self.err("expected ',' or ']'"),
            }
        }

        // --- scalars -----------------------------------------------------------------------

        /// A string's unescaped bytes (borrowed when it has no escapes); not checked for UTF-8.
        fn raw_string(&mut self) -> R<Cow<'a, [u8]>> {
            debug_assert_eq!(self.b[self.pos], b'"');
            self.pos += 1;
            let start = self.pos;
            // eight bytes at a time while none is a quote, a backslash or a control character
            const ONES: u64 = 0x0101_0101_0101_0101;
            const HIGH: u64 = 0x8080_8080_8080_8080;
            while let Some(chunk) = self.b.get(self.pos..self.pos + 8) {
                let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
                // below 0x20: v - 0x20 per byte borrows (exact as "any" for bytes < 0x80)
                let control = v.wrapping_sub(0x20 * ONES) & !v & HIGH != 0;
                let quote = zero_in(v ^ (u64::from(b'"') * ONES));
                if control || quote || zero_in(v ^ (u64::from(b'\\') * ONES)) {
                    break;
                }
                self.pos += 8;
            }
            // fast path: no escapes
            loop {
                match self.b.get(self.pos) {
                    None => return Err(perr("Input data was truncated")),
                    Some(b'"') => {
                        let s = &self.b[start..self.pos];
                        self.pos += 1;
                        return Ok(Cow::Borrowed(s));
                    }
                    Some(b'\\') => break,
                    Some(&c) if c < 0x20 => return self.err("invalid character"),
                    Some(_) => self.pos += 1,
                }
            }
            let mut out = self.b[start..self.pos].to_vec();
            loop {
                match self.b.get(self.pos) {
                    None => return Err(perr("Input data was truncated")),
                    Some(b'"') => {
                        self.pos += 1;
                        return Ok(Cow::Owned(out));
                    }
                    Some(b'\\') => {
                        self.pos += 1;
                        let Some(&e) = self.b.get(self.pos) else {
                            return Err(perr("Input data was truncated"));
                        };
                        self.pos += 1;
                        match e {
                            b'"' => out.push(b'"'),
                            b'\\' => out.push(b'\\'),
                            b'/' => out.push(b'/'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'n' => out.push(b'\n'),
                            b'r' => out.push(b'\r'),
                            b't' => out.push(b'\t'),
                            b'u' => {
                                let cp = self.unicode_escape()?;
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(cp.encode_utf8(&mut buf).as_bytes());
                            }
                            _ => return self.err("invalid escape character in string"),
                        }
                    }
                    Some(&c) if c < 0x20 => return self.err("invalid character"),
                    Some(&c) => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
        }

        fn hex4(&mut self) -> R<u32> {
            let Some(h) = self.b.get(self.pos..self.pos + 4) else {
                return Err(perr("Input data was truncated"));
            };
            let mut v = 0u32;
            for &c in h {
                let d = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => return self.err("invalid character in unicode escape"),
                };
                v = v * 16 + u32::from(d);
            }
            self.pos += 4;
            Ok(v)
        }

        /// After `\u`: a code point (a surrogate pair joined; a lone surrogate is an error).
        fn unicode_escape(&mut self) -> R<char> {
            let hi = self.hex4()?;
            let cp = if (0xD800..0xDC00).contains(&hi) {
                if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return self.err("unexpected end of escaped utf-16 surrogate pair");
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..0xE000).contains(&lo) {
                    return self.err("invalid utf-16 surrogate pair");
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            } else if (0xDC00..0xE000).contains(&hi) {
                return self.err("invalid utf-16 surrogate pair");
            } else {
                hi
            };
            char::from_u32(cp).map_or_else(|| self.err("invalid code point"), Ok)
        }

        /// A `str` value (UTF-8 checked).
        pub fn string(&mut self) -> R<Cow<'a, str>> {
            if self.peek()? != b'"' {
                return self.type_err("str");
            }
            match self.raw_string()? {
                Cow::Borrowed(b) => std::str::from_utf8(b)
                    .map(Cow::Borrowed)
                    .map_err(|_| perr("'utf-8' codec can't decode a string")),
                Cow::Owned(v) => String::from_utf8(v)
                    .map(Cow::Owned)
                    .map_err(|_| perr("'utf-8' codec can't decode a string")),
            }
        }

        /// A `str | None` value.
        pub fn opt_string(&mut self) -> R<Option<Cow<'a, str>>> {
            if self.peek()? == b'n' {
                self.literal(b"null")?;
                return Ok(None);
            }
            if self.peek()? != b'"' {
                return self.type_err("str | null");
            }
            self.string().map(Some)
        }

        fn literal(&mut self, lit: &[u8]) -> R<()> {
            if self.b.get(self.pos..self.pos + lit.len()) == Some(lit) {
                self.pos += lit.len();
                Ok(())
            } else if self.b.len() - self.pos < lit.len() && lit.starts_with(&self.b[self.pos..]) {
                Err(perr("Input data was truncated"))
            } else {
                self.err("invalid character")
            }
        }

        /// A tag that must be `want` (msgspec: "Invalid value 'x' - at `$.e`").
        pub fn tag(&mut self, want: &str, at: &str) -> R<()> {
            let got = self.string()?;
            if got != want {
                return Err(perr(format!(
                    "Invalid value {} - at `{at}`",
                    pyrepr::str_repr(&got)
                )));
            }
            Ok(())
        }

        /// A `Literal[...]` string: which of `allowed` it is.
        pub fn enum_value(&mut self, allowed: &[&'static str], at: &str) -> R<&'static str> {
            let got = self.string()?;
            allowed.iter().find(|a| **a == got).copied().ok_or_else(|| {
                perr(format!(
                    "Invalid enum value {} - at `{at}`",
                    pyrepr::str_repr(&got)
                ))
            })
        }

        pub fn boolean(&mut self) -> R<bool> {
            match self.peek()? {
                b't' => self.literal(b"true").map(|_| true),
                b'f' => self.literal(b"false").map(|_| false),
                _ => self.type_err("bool"),
            }
        }

        /// A JSON number (strict grammar): its text.
        pub fn number(&mut self) -> R<Num<'a>> {
            self.ws();
            let start = self.pos;
            let b = self.b;
            let mut i = self.pos;
            if b.get(i) == Some(&b'-') {
                i += 1;
            }
            match b.get(i) {
                Some(b'0') => i += 1,
                Some(b'1'..=b'9') => {
                    while matches!(b.get(i), Some(b'0'..=b'9')) {
                        i += 1;
                    }
                }
                None => return Err(perr("Input data was truncated")),
                _ => {
                    self.pos = i;
                    return self.err("invalid character");
                }
            }
            let mut is_int = true;
            if b.get(i) == Some(&b'.') {
                is_int = false;
                i += 1;
                if !matches!(b.get(i), Some(b'0'..=b'9')) {
                    self.pos = i;
                    return self.err("invalid number");
                }
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            if matches!(b.get(i), Some(b'e' | b'E')) {
                is_int = false;
                i += 1;
                if matches!(b.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
                if !matches!(b.get(i), Some(b'0'..=b'9')) {
                    self.pos = i;
                    return self.err("invalid number");
                }
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            // leading zeros ("01") end the number at "0": the next byte is then a syntax error
            // wherever it is checked, as msgspec reports "invalid number"
            if is_int && matches!(b.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.err("invalid number");
            }
            self.pos = i;
            // SAFETY-free: the bytes are ASCII
            let text = std::str::from_utf8(&b[start..i]).expect("ascii");
            Ok(Num { text, is_int })
        }

        /// An `int` value: the integer's text (any size; floats are rejected).
        pub fn int_text(&mut self) -> R<&'a str> {
            match self.peek()? {
                b'-' | b'0'..=b'9' => {}
                _ => return self.type_err("int"),
            }
            let n = self.number()?;
            if !n.is_int {
                return Err(perr("Expected `int`, got `float`"));
            }
            Ok(n.text)
        }

        /// An `int` value that must fit i64 (msgspec takes any size: larger values are a
        /// documented limit of the Rust port).
        pub fn int_i64(&mut self) -> R<i64> {
            let text = self.int_text()?;
            text.parse::<i64>()
                .map_err(|_| perr(format!("integer {text} does not fit 64 bits")))
        }

        /// Skip any value, checking its syntax (strings are not checked for UTF-8).
        pub fn skip(&mut self) -> R<()> {
            match self.peek()? {
                b'{' => {
                    self.begin_object()?;
                    let mut first = true;
                    while self.next_key(&mut first)?.is_some() {
                        self.skip()?;
                    }
                    Ok(())
                }
                b'[' => {
                    self.begin_array()?;
                    let mut first = true;
                    while self.next_item(&mut first)? {
                        self.skip()?;
                    }
                    Ok(())
                }
                b'"' => self.raw_string().map(|_| ()),
                b't' => self.literal(b"true"),
                b'f' => self.literal(b"false"),
                b'n' => self.literal(b"null"),
                b'-' | b'0'..=b'9' => self.number().map(|_| ()),
                _ => self.err("invalid character"),
            }
        }

        /// The string value of `tag` in the object starting here, looked up without moving:
        /// how msgspec picks a tagged union's member (the tag may be anywhere).
        pub fn lookahead_tag(&self, tag: &[u8]) -> R<Cow<'a, str>> {
            let mut probe = Json {
                b: self.b,
                pos: self.pos,
                depth: self.depth,
            };
            probe.begin_object()?;
            let mut first = true;
            while let Some(key) = probe.next_key(&mut first)? {
                if &*key == tag {
                    return probe.string();
                }
                probe.skip()?;
            }
            Err(perr(format!(
                "Object missing required field `{}`",
                String::from_utf8_lossy(tag)
            )))
        }
    }

    /// msgspec's error for a missing required field.
    pub fn missing(field: &str) -> ParseError {
        perr(format!("Object missing required field `{field}`"))
    }
}

// ---------------------------------------------------------------------------------------
// decimal.Decimal(text)
// ---------------------------------------------------------------------------------------

pub(crate) mod pydec {
    use crate::dec::Dec;

    /// What `Decimal(text)` gives, as far as `Dec` can hold it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum PyDec {
        /// a finite value (scale kept: "0.10" stays 0.10)
        Finite(Dec),
        /// Python raises InvalidOperation
        Invalid,
        /// NaN, sNaN or Infinity (Python accepts them)
        NonFinite,
        /// a finite value Python accepts but `Dec` cannot hold exactly (more than 28
        /// decimals, a coefficient beyond 96 bits, or non-ASCII digits)
        Unrepresentable,
    }

    const MAX_MANTISSA: u128 = (1u128 << 96) - 1;

    /// `Py_UNICODE_ISSPACE` on ASCII.
    #[inline]
    fn is_py_space(c: u8) -> bool {
        matches!(c, 0x09..=0x0D | 0x1C..=0x20)
    }

    /// `Decimal(text)` (CPython's `_decimal`): underscores anywhere are dropped, surrounding
    /// whitespace stripped, then `[sign] (digits [. digits] [e [sign] digits] | inf[inity] |
    /// [s]nan[digits])`, case-insensitive words.
    pub fn py_decimal(text: &str) -> PyDec {
        let bytes = text.as_bytes();
        if bytes.iter().all(|&c| c != b'_' && c.is_ascii()) {
            return parse_ascii(bytes);
        }
        // slow path: drop underscores, map Unicode whitespace to spaces
        let mut buf = Vec::with_capacity(bytes.len());
        for ch in text.chars() {
            if ch == '_' {
                continue;
            }
            if ch.is_ascii() {
                buf.push(ch as u8);
            } else if ch.is_whitespace() {
                buf.push(b' ');
            } else if ch.is_numeric() {
                // Python maps Unicode decimal digits ('١' -> 1): not supported here
                return PyDec::Unrepresentable;
            } else {
                return PyDec::Invalid;
            }
        }
        parse_ascii(&buf)
    }

    fn parse_ascii(mut s: &[u8]) -> PyDec {
        while let [c, rest @ ..] = s {
            if is_py_space(*c) {
                s = rest;
            } else {
                break;
            }
        }
        while let [rest @ .., c] = s {
            if is_py_space(*c) {
                s = rest;
            } else {
                break;
            }
        }
        let mut neg = false;
        if let [c @ (b'+' | b'-'), rest @ ..] = s {
            neg = *c == b'-';
            s = rest;
        }
        if s.is_empty() {
            return PyDec::Invalid;
        }
        if !s[0].is_ascii_digit() && s[0] != b'.' {
            return special(s);
        }
        let mut coef: u128 = 0;
        let mut overflow = false;
        let mut digits = 0usize;
        let mut frac_digits: i64 = 0;
        let mut seen_dot = false;
        let mut i = 0;
        while i < s.len() {
            let c = s[i];
            if c.is_ascii_digit() {
                digits += 1;
                if seen_dot {
                    frac_digits += 1;
                }
                if !overflow {
                    coef = coef * 10 + u128::from(c - b'0');
                    if coef > MAX_MANTISSA {
                        overflow = true;
                    }
                }
            } else if c == b'.' && !seen_dot {
                seen_dot = true;
            } else {
                break;
            }
            i += 1;
        }
        if digits == 0 {
            return PyDec::Invalid;
        }
        let mut exp: i64 = 0;
        if i < s.len() {
            if !matches!(s[i], b'e' | b'E') {
                return PyDec::Invalid;
            }
            i += 1;
            let mut eneg = false;
            if i < s.len() && matches!(s[i], b'+' | b'-') {
                eneg = s[i] == b'-';
                i += 1;
            }
            if i >= s.len() {
                return PyDec::Invalid;
            }
            let mut e: i64 = 0;
            while i < s.len() {
                let c = s[i];
                if !c.is_ascii_digit() {
                    return PyDec::Invalid;
                }
                e = e.saturating_mul(10).saturating_add(i64::from(c - b'0'));
                i += 1;
            }
            if e > 999_999_999_999_999_999 {
                // beyond mpdecimal's exponent range: InvalidOperation
                return PyDec::Invalid;
            }
            exp = if eneg { -e } else { e };
        }
        let mut scale = frac_digits - exp; // value = coef * 10^-scale
        if overflow {
            return PyDec::Unrepresentable;
        }
        if scale < 0 {
            // a positive exponent ("1E+2"): multiply it out (same value; Python keeps the
            // exponent form in str(), format(x, "f") gives the same digits)
            if coef != 0 {
                while scale < 0 {
                    coef *= 10;
                    if coef > MAX_MANTISSA {
                        return PyDec::Unrepresentable;
                    }
                    scale += 1;
                }
            }
            scale = 0;
        }
        if scale > 28 {
            return PyDec::Unrepresentable;
        }
        let mut d = Dec::from_i128_with_scale(coef as i128, scale as u32);
        if neg {
            d.set_sign_negative(true);
        }
        PyDec::Finite(d)
    }

    fn special(s: &[u8]) -> PyDec {
        let lower: Vec<u8> = s.iter().map(u8::to_ascii_lowercase).collect();
        let l = lower.as_slice();
        if l == b"inf" || l == b"infinity" {
            return PyDec::NonFinite;
        }
        let payload = if let Some(p) = l.strip_prefix(b"snan") {
            p
        } else if let Some(p) = l.strip_prefix(b"nan") {
            p
        } else {
            return PyDec::Invalid;
        };
        if payload.iter().all(u8::is_ascii_digit) {
            PyDec::NonFinite
        } else {
            PyDec::Invalid
        }
    }
}

// ---------------------------------------------------------------------------------------
// datetime.fromisoformat (CPython 3.11, C implementation) -> Unix ms
// ---------------------------------------------------------------------------------------

pub(crate) mod isotime {
    /// Why `fromisoformat` + the parsers' check failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum IsoError {
        /// ValueError from fromisoformat
        Invalid,
        /// parsed, but naive (no time zone)
        Naive,
    }

    /// `(datetime.fromisoformat(text) - EPOCH) // timedelta(milliseconds=1)` for an aware
    /// result; a port of CPython 3.11's `_datetimemodule.c` parser (byte positions over the
    /// UTF-8 text, reads past the end see the terminating NUL, as the C code does).
    pub fn timestamp_ms(text: &str) -> Result<i64, IsoError> {
        let s = text.as_bytes();
        // fast path: "YYYY-MM-DDTHH:MM:SS[.f+]Z" (what exchanges send)
        if let Some(ms) = fast_path(s) {
            return Ok(ms);
        }
        let (y, mo, d, h, mi, sec, us, tz) = parse(text).ok_or(IsoError::Invalid)?;
        let Some(offset_us) = tz else {
            return Err(IsoError::Naive);
        };
        let days = days_from_civil(y, mo, d);
        let total_us = days as i128 * 86_400_000_000
            + i128::from(h) * 3_600_000_000
            + i128::from(mi) * 60_000_000
            + i128::from(sec) * 1_000_000
            + i128::from(us)
            - offset_us as i128;
        Ok(total_us.div_euclid(1000) as i64)
    }

    #[inline]
    fn d2(s: &[u8], i: usize) -> Option<i64> {
        let a = s[i].wrapping_sub(b'0');
        let b = s[i + 1].wrapping_sub(b'0');
        (a < 10 && b < 10).then(|| i64::from(a * 10 + b))
    }

    fn fast_path(s: &[u8]) -> Option<i64> {
        if s.len() < 20 || *s.last()? != b'Z' || s[4] != b'-' || s[7] != b'-' || s[10] != b'T' {
            return None;
        }
        if s[13] != b':' || s[16] != b':' {
            return None;
        }
        let y = d2(s, 0)? * 100 + d2(s, 2)?;
        let (mo, d, h, mi, sec) = (d2(s, 5)?, d2(s, 8)?, d2(s, 11)?, d2(s, 14)?, d2(s, 17)?);
        let mut us: i64 = 0;
        let end = s.len() - 1;
        if end > 19 {
            if s[19] != b'.' || end == 20 {
                return None;
            }
            let frac = &s[20..end];
            if !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let mut n = 0;
            for &c in frac.iter().take(6) {
                us = us * 10 + i64::from(c - b'0');
                n += 1;
            }
            while n < 6 {
                us *= 10;
                n += 1;
            }
        }
        if !(1..=9999).contains(&y)
            || !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 59
        {
            return None; // let the general path decide (it rejects these too)
        }
        let days = days_from_civil(y, mo, d);
        let total_us =
            days * 86_400_000_000 + h * 3_600_000_000 + mi * 60_000_000 + sec * 1_000_000 + us;
        Some(total_us.div_euclid(1000))
    }

    fn is_leap(y: i64) -> bool {
        y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
    }

    fn days_in_month(y: i64, m: i64) -> i64 {
        match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if is_leap(y) => 29,
            2 => 28,
            _ => 0,
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Python's ordinal (0001-01-01 is 1).
    fn ymd_to_ord(y: i64, m: i64, d: i64) -> i64 {
        days_from_civil(y, m, d) + 719_163
    }

    fn ord_to_ymd(ord: i64) -> (i64, i64, i64) {
        let z = ord - 719_163 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// (y, m, d, h, mi, s, us, Some(offset_us) | None) or None when invalid.
    #[allow(clippy::type_complexity)]
    fn parse(text: &str) -> Option<(i64, i64, i64, i64, i64, i64, i64, Option<i64>)> {
        if text.chars().count() < 7 {
            return None;
        }
        let s = text.as_bytes();
        let len = s.len();
        let at = |i: usize| -> u8 { s.get(i).copied().unwrap_or(0) };
        let is_digit = |c: u8| c.wrapping_sub(b'0') < 10;
        // parse_digits: n digits at p into var (accumulating), new position or None
        let digits = |p: usize, var: &mut i64, n: usize| -> Option<usize> {
            for k in 0..n {
                let t = at(p + k).wrapping_sub(b'0');
                if t > 9 {
                    return None;
                }
                *var = *var * 10 + i64::from(t);
            }
            Some(p + n)
        };

        // _find_isoformat_datetime_separator
        let sep: usize = if len == 7 {
            7
        } else if at(4) == b'-' {
            if at(5) == b'W' {
                if len < 8 {
                    return None;
                }
                if len > 8 && at(8) == b'-' {
                    if len == 9 {
                        return None;
                    }
                    if len > 10 && is_digit(at(10)) {
                        8
                    } else {
                        10
                    }
                } else {
                    8
                }
            } else {
                10
            }
        } else if at(4) == b'W' {
            let mut idx = 7;
            while idx < len && is_digit(at(idx)) {
                idx += 1;
            }
            if idx < 9 {
                idx
            } else if idx % 2 == 0 {
                7
            } else {
                8
            }
        } else {
            8
        };

        // parse_isoformat_date
        let (mut year, mut month, mut day) = (0i64, 0i64, 0i64);
        let mut p = digits(0, &mut year, 4)?;
        let uses_sep = at(p) == b'-';
        if uses_sep {
            p += 1;
        }
        if at(p) == b'W' {
            p += 1;
            let (mut week, mut wday) = (0i64, 0i64);
            p = digits(p, &mut week, 2)?;
            if p < sep {
                if uses_sep {
                    let c = at(p);
                    p += 1;
                    if c != b'-' {
                        return None;
                    }
                }
                digits(p, &mut wday, 1)?;
            } else {
                wday = 1;
            }
            // iso_to_ymd
            if week <= 0 || week >= 53 {
                let mut out_of_range = true;
                if week == 53 {
                    let first_weekday = ymd_to_ord(year, 1, 1).rem_euclid(7);
                    if first_weekday == 4 || (first_weekday == 3 && is_leap(year)) {
                        out_of_range = false;
                    }
                }
                if out_of_range {
                    return None;
                }
            }
            if wday <= 0 || wday >= 8 {
                return None;
            }
            let first_day = ymd_to_ord(year, 1, 1);
            let first_weekday = (first_day + 6).rem_euclid(7);
            let mut week1_monday = first_day - first_weekday;
            if first_weekday > 3 {
                week1_monday += 7;
            }
            (year, month, day) = ord_to_ymd(week1_monday + (week - 1) * 7 + wday - 1);
        } else {
            p = digits(p, &mut month, 2)?;
            if uses_sep {
                let c = at(p);
                p += 1;
                if c != b'-' {
                    return None;
                }
            }
            digits(p, &mut day, 2)?;
        }

        // time
        let (mut hour, mut minute, mut second, mut micro) = (0i64, 0i64, 0i64, 0i64);
        let mut tz: Option<i64> = None;
        if len > sep {
            // the separator may be any one character, a multi-byte one included
            let sep_len = match at(sep) {
                0xF0..=0xFF => 4,
                0xE0..=0xEF => 3,
                0xC0..=0xDF => 2,
                _ => 1,
            };
            let t0 = sep + sep_len;
            let t_end = len;
            // find the first Z, + or - (do-while: index t0 is always looked at)
            let mut tzpos = t0;
            loop {
                let c = at(tzpos);
                if c == b'Z' || c == b'+' || c == b'-' {
                    break;
                }
                tzpos += 1;
                if tzpos >= t_end {
                    break;
                }
            }
            let rv = hh_mm_ss_ff(
                &at,
                &digits,
                t0,
                tzpos,
                &mut hour,
                &mut minute,
                &mut second,
                &mut micro,
            );
            if rv < 0 {
                return None;
            }
            if tzpos == t_end {
                if rv == 1 {
                    return None;
                }
            } else if at(tzpos) == b'Z' {
                if at(tzpos + 1) != 0 {
                    return None;
                }
                tz = Some(0);
            } else {
                let sign: i64 = if at(tzpos) == b'-' { -1 } else { 1 };
                let (mut th, mut tm, mut ts, mut tus) = (0i64, 0i64, 0i64, 0i64);
                let rv = hh_mm_ss_ff(
                    &at,
                    &digits,
                    tzpos + 1,
                    t_end,
                    &mut th,
                    &mut tm,
                    &mut ts,
                    &mut tus,
                );
                if rv != 0 {
                    return None;
                }
                let offset_s = sign * (th * 3600 + tm * 60 + ts);
                let offset_us = if offset_s == 0 {
                    0 // CPython returns UTC here, dropping the microseconds
                } else {
                    offset_s * 1_000_000 + sign * tus
                };
                if offset_us.abs() >= 86_400_000_000 {
                    return None;
                }
                tz = Some(offset_us);
            }
        }

        if !(1..=9999).contains(&year)
            || !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || !(0..=23).contains(&hour)
            || !(0..=59).contains(&minute)
            || !(0..=59).contains(&second)
            || !(0..=999_999).contains(&micro)
        {
            return None;
        }
        Some((year, month, day, hour, minute, second, micro, tz))
    }

    /// parse_hh_mm_ss_ff: 0 at the end of the string, 1 when something follows, <0 on error.
    #[allow(clippy::too_many_arguments)]
    fn hh_mm_ss_ff(
        at: &dyn Fn(usize) -> u8,
        digits: &dyn Fn(usize, &mut i64, usize) -> Option<usize>,
        start: usize,
        end: usize,
        hour: &mut i64,
        minute: &mut i64,
        second: &mut i64,
        micro: &mut i64,
    ) -> i32 {
        *hour = 0;
        *minute = 0;
        *second = 0;
        *micro = 0;
        let mut p = start;
        let mut has_sep = true;
        for i in 0..3 {
            let var: &mut i64 = match i {
                0 => &mut *hour,
                1 => &mut *minute,
                _ => &mut *second,
            };
            let Some(np) = digits(p, var, 2) else {
                return -3;
            };
            p = np;
            let c = at(p);
            p += 1;
            if i == 0 {
                has_sep = c == b':';
            }
            if p >= end {
                return i32::from(c != 0);
            } else if has_sep && c == b':' {
                continue;
            } else if c == b'.' || c == b',' {
                break;
            } else if !has_sep {
                p -= 1;
            } else {
                return -4;
            }
        }
        let remains = end - p;
        let to_parse = remains.min(6);
        let Some(np) = digits(p, micro, to_parse) else {
            return -3;
        };
        p = np;
        const CORRECTION: [i64; 5] = [100_000, 10_000, 1000, 100, 10];
        if to_parse < 6 {
            // to_parse == 0 cannot happen: p < end here
            *micro *= CORRECTION[to_parse.max(1) - 1];
        }
        while at(p).wrapping_sub(b'0') < 10 {
            p += 1;
        }
        i32::from(at(p) != 0)
    }
}

// ---------------------------------------------------------------------------------------
// The sync_lost marker: a JSON object as Python values, formatted as str() does
// ---------------------------------------------------------------------------------------

pub(crate) mod pyrepr {
    use super::json::{Json, R};
    use super::perr;
    use std::fmt::Write;

    /// A decoded JSON value as msgspec gives it to Python (`dict[str, Any]`).
    #[derive(Debug, Clone, PartialEq)]
    pub enum PyVal {
        Str(String),
        /// an int's decimal text, normalised as `str(int)` prints it
        Int(String),
        Float(f64),
        Bool(bool),
        None,
        List(Vec<PyVal>),
        /// insertion order; a repeated key keeps its first place and takes the last value
        Dict(Vec<(String, PyVal)>),
    }

    /// The marker object (strings must be UTF-8, floats finite).
    pub fn decode_marker(payload: &[u8]) -> R<Vec<(String, PyVal)>> {
        let mut j = Json::new(payload);
        if j.peek()? != b'{' {
            return j.type_err("object");
        }
        let PyVal::Dict(d) = value(&mut j)? else {
            unreachable!()
        };
        j.finish()?;
        Ok(d)
    }

    fn value(j: &mut Json<'_>) -> R<PyVal> {
        Ok(match j.peek()? {
            b'{' => {
                j.begin_object()?;
                let mut items: Vec<(String, PyVal)> = Vec::new();
                let mut first = true;
                while let Some(key) = j.next_key(&mut first)? {
                    let key = String::from_utf8(key.into_owned())
                        .map_err(|_| perr("'utf-8' codec can't decode a key"))?;
                    let v = value(j)?;
                    match items.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = v,
                        None => items.push((key, v)),
                    }
                }
                PyVal::Dict(items)
            }
            b'[' => {
                j.begin_array()?;
                let mut items = Vec::new();
                let mut first = true;
                while j.next_item(&mut first)? {
                    items.push(value(j)?);
                }
                PyVal::List(items)
            }
            b'"' => PyVal::Str(j.string()?.into_owned()),
            b't' | b'f' => PyVal::Bool(j.boolean()?),
            b'n' => {
                j.opt_string()?;
                PyVal::None
            }
            _ => {
                let n = j.number()?;
                if n.is_int {
                    let t = n.text;
                    let t = if t == "-0" { "0" } else { t };
                    PyVal::Int(t.to_string())
                } else {
                    let f: f64 = n.text.parse().map_err(|_| perr("invalid number"))?;
                    if !f.is_finite() {
                        return Err(perr("Number out of range"));
                    }
                    PyVal::Float(f)
                }
            }
        })
    }

    /// `str(v)` appended to `out`.
    pub fn write_str(v: &PyVal, out: &mut String) {
        match v {
            PyVal::Str(s) => out.push_str(s),
            other => write_repr(other, out),
        }
    }

    /// `repr(v)` appended to `out`.
    pub fn write_repr(v: &PyVal, out: &mut String) {
        match v {
            PyVal::Str(s) => out.push_str(&str_repr(s)),
            PyVal::Int(t) => out.push_str(t),
            PyVal::Float(f) => out.push_str(&float_repr(*f)),
            PyVal::Bool(true) => out.push_str("True"),
            PyVal::Bool(false) => out.push_str("False"),
            PyVal::None => out.push_str("None"),
            PyVal::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(item, out);
                }
                out.push(']');
            }
            PyVal::Dict(items) => out.push_str(&dict_repr(items)),
        }
    }

    pub fn dict_repr(items: &[(String, PyVal)]) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&str_repr(k));
            out.push_str(": ");
            write_repr(v, &mut out);
        }
        out.push('}');
        out
    }

    /// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from
    /// 1e16 on.
    pub fn float_repr(f: f64) -> String {
        if f.is_nan() {
            return "nan".into();
        }
        if f.is_infinite() {
            return if f > 0.0 { "inf".into() } else { "-inf".into() };
        }
        if f == 0.0 {
            return if f.is_sign_negative() {
                "-0.0".into()
            } else {
                "0.0".into()
            };
        }
        let e = format!("{f:e}"); // e.g. "-1.2345e-5": shortest round-trip digits
        let (mant, exp) = e.split_once('e').expect("exponent");
        let exp: i32 = exp.parse().expect("exponent");
        let (neg, mant) = match mant.strip_prefix('-') {
            Some(m) => (true, m),
            None => (false, mant),
        };
        let digits: String = mant.chars().filter(|c| *c != '.').collect();
        let mut out = String::new();
        if neg {
            out.push('-');
        }
        if (-4..16).contains(&exp) {
            if exp < 0 {
                out.push_str("0.");
                for _ in 0..(-exp - 1) {
                    out.push('0');
                }
                out.push_str(&digits);
            } else {
                let int_len = exp as usize + 1;
                if digits.len() <= int_len {
                    out.push_str(&digits);
                    for _ in digits.len()..int_len {
                        out.push('0');
                    }
                    out.push_str(".0");
                } else {
                    out.push_str(&digits[..int_len]);
                    out.push('.');
                    out.push_str(&digits[int_len..]);
                }
            }
        } else {
            out.push_str(&digits[..1]);
            if digits.len() > 1 {
                out.push('.');
                out.push_str(&digits[1..]);
            }
            let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
        }
        out
    }

    /// Python's `str.isprintable()` per character, approximated: control characters,
    /// separators other than ' ', and common format characters are not printable.
    fn printable(c: char) -> bool {
        if c.is_control() {
            return false;
        }
        !matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{206f}' | '\u{3000}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
            | '\u{e000}'..='\u{f8ff}' | '\u{f0000}'..='\u{10ffff}' | '\u{600}'..='\u{605}'
            | '\u{61c}' | '\u{6dd}' | '\u{70f}' | '\u{180e}')
    }

    /// Python's `repr(str)`.
    pub fn str_repr(s: &str) -> String {
        let quote = if s.contains('\'') && !s.contains('"') {
            '"'
        } else {
            '\''
        };
        let mut out = String::with_capacity(s.len() + 2);
        out.push(quote);
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x7f => out.push(c),
                c if printable(c) => out.push(c),
                c if (c as u32) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        out.push(quote);
        out
    }
}

/// Test helper: a scenario fixture's steps as (channel, compact frame text), the frames cut
/// out of the file's bytes in key order (serde_json would sort keys and round numbers).
#[cfg(test)]
pub(crate) fn scenario_steps(text: &str) -> Vec<(String, String)> {
    let scenario: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut rest = text;
    let mut out = Vec::new();
    for step in scenario["steps"].as_array().unwrap() {
        let channel = step["channel"].as_str().unwrap().to_string();
        let at = rest.find("\"frame\"").unwrap();
        rest = &rest[at + 7..];
        let start = rest.find('{').unwrap();
        let (mut depth, mut in_str, mut esc) = (0, false, false);
        let mut frame = String::new();
        let mut end = start;
        for (i, c) in rest[start..].char_indices() {
            if in_str {
                frame.push(c);
                if esc {
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else if c == '"' {
                    in_str = false;
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                c if c.is_whitespace() => continue,
                _ => {}
            }
            frame.push(c);
            if depth == 0 {
                end = start + i + 1;
                break;
            }
        }
        rest = &rest[end..];
        out.push((channel, frame));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::isotime::{timestamp_ms, IsoError};
    use super::pydec::{py_decimal, PyDec};
    use super::pyrepr::{float_repr, str_repr};
    use super::*;

    /// A quote, backslash or control character found wherever it falls in the 8-byte steps
    /// of the string scan, non-ASCII text passed through.
    #[test]
    fn strings_read_whatever_the_position_of_what_ends_them() {
        for len in 0..24 {
            let text = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let plain = format!("\"{text}\"");
            assert_eq!(json::Json::new(plain.as_bytes()).string().unwrap(), text);
            let escaped = format!("\"{text}\\n{text}\\\"\"");
            assert_eq!(
                json::Json::new(escaped.as_bytes()).string().unwrap(),
                format!("{text}\n{text}\"")
            );
            let control = format!("\"{text}\u{1}{text}\"");
            assert!(json::Json::new(control.as_bytes()).string().is_err());
            let truncated = format!("\"{text}");
            assert!(json::Json::new(truncated.as_bytes()).string().is_err());
        }
    }

    fn env<'a>(
        exchange: &'a str,
        channel: &'a str,
        symbol: &'a str,
        payload: &'a [u8],
    ) -> RawEnvelope<'a> {
        RawEnvelope {
            instrument: "BTC-USD",
            exchange,
            symbol,
            channel,
            receive_time_ns: 1_700_000_000_000_000_000,
            connection_id: "c1",
            connection_seq: 0,
            payload,
        }
    }

    fn reason(payload: &[u8]) -> Result<String, ParseError> {
        match parse_envelope(&env("coinbase", "sync_lost", "BTC-USD", payload))?.as_slice() {
            [MarketEvent::SyncLost(s)] => Ok(s.reason.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sync_lost_reason_keeps_the_details_in_order() {
        let r = reason(br#"{"reason":"sequence_num gap","expected":41,"got":43}"#).unwrap();
        assert_eq!(r, "sequence_num gap (expected 41, got 43)");
        assert_eq!(
            reason(br#"{"reason":"connection lost"}"#).unwrap(),
            "connection lost"
        );
        // the reason anywhere; a repeated key keeps its first place and its last value
        let r = reason(br#"{"b":1,"reason":"r","a":2,"b":3}"#).unwrap();
        assert_eq!(r, "r (b 3, a 2)");
        // values as str() prints them (probed with CPython 3.11 + msgspec 0.22)
        let r = reason(
            br#"{"reason":"r","a":0.1,"b":1E+2,"c":12345678901234567890.0,"d":-1.5e-7,"e":"it's","f":["a'b","a\"b","\n\u0001\u00e9\u2028"],"g":null,"h":true,"i":-0,"j":123456789012345678901234567890,"k":{"x":1,"x":2.5},"l":1e16,"m":1e-5,"n":0.0001,"o":-0.0}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            "r (a 0.1, b 100.0, c 1.2345678901234567e+19, d -1.5e-07, e it's, \
             f [\"a'b\", 'a\"b', '\\n\\x01é\\u2028'], g None, h True, i 0, \
             j 123456789012345678901234567890, k {'x': 2.5}, l 1e+16, m 1e-05, n 0.0001, o -0.0)"
        );
        for bad in [
            &br#"{"expected": 1}"#[..],
            br#"{"reason": 5}"#,
            b"[1, 2",
            b"[1]",
            br#"{"reason":"r","x":1e400}"#,
            b"{\"reason\":\"r\",\"x\":\"\xff\"}",
            br#"{"reason":"r"} x"#,
        ] {
            assert!(reason(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let e = reason(br#"{"expected": 1}"#).unwrap_err();
        assert!(e.0.contains("without a reason"), "{e}");
        assert!(reason(b"[1, 2")
            .unwrap_err()
            .0
            .contains("cannot parse sync_lost"));
        // any exchange, even one without a parser
        let out = parse_envelope(&env("nyse", "sync_lost", "IBM", br#"{"reason":"x"}"#)).unwrap();
        assert_eq!(out[0].symbol(), "IBM");
    }

    #[test]
    fn unknown_exchange_is_an_error() {
        let e = parse_envelope(&env("nyse", "depth", "IBM", b"{}")).unwrap_err();
        assert_eq!(e.0, "no parser for exchange 'nyse'");
    }

    #[test]
    fn float_and_str_repr_like_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e300, "1.5e+300"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(float_repr(f), s);
        }
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(str_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(str_repr("\u{7f}\u{a0}é"), "'\\x7f\\xa0é'");
    }

    fn dec(text: &str) -> String {
        match py_decimal(text) {
            PyDec::Finite(d) => d.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn decimals_follow_python_decimal_syntax() {
        for (text, want) in [
            ("0.00100000", "0.00100000"),
            ("1_000", "1000"),
            (" 1.5 ", "1.5"),
            ("1__0", "10"),
            ("_1", "1"),
            ("1._5", "1.5"),
            ("+1.5", "1.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1e5", "100000"),
            ("1E+2", "100"),
            ("1.50e1", "15.0"),
            ("1e-8", "0.00000001"),
            ("\x1c1\x1f", "1"),
            ("\x0b1\x0c", "1"),
            ("\u{a0}1\u{3000}", "1"),
            ("-0.00", "-0.00"),
            ("0e999", "0"),
            ("0.1e1", "1"),
            ("1.e5", "100000"),
            ("1e+_5", "100000"),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
        ] {
            assert_eq!(dec(text), want, "{text:?}");
        }
        for text in [
            "",
            "_",
            "1 000",
            "0x10",
            "1e",
            "e5",
            "1.2.3",
            "- 1",
            "\u{0}1",
            "1\u{0}",
            "abc",
            "1e999999999999999999999",
            "0e999999999999999999999",
            ".",
            "ÿ",
        ] {
            assert_eq!(py_decimal(text), PyDec::Invalid, "{text:?}");
        }
        for text in ["inf", "-Infinity", "nan", "NaN12", "sNaN", "Inf_", "INF"] {
            assert_eq!(py_decimal(text), PyDec::NonFinite, "{text:?}");
        }
        for text in ["1e-29", "1E+400", "79228162514264337593543950336", "١"] {
            assert_eq!(py_decimal(text), PyDec::Unrepresentable, "{text:?}");
        }
        assert!(matches!(py_decimal("-0"), PyDec::Finite(d) if d.is_sign_negative()));
    }

    #[test]
    fn timestamps_like_fromisoformat() {
        for (text, ms) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2019-08-14T20:42:27.265Z", 1565815347265),
            ("2023-02-09T20:19:35.39625135Z", 1675973975396),
            ("2023-02-09T20:32:50.714964855Z", 1675974770714),
            ("2023-09-25T07:49:37.708706Z", 1695628177708),
            ("1969-12-31T23:59:59.9995Z", -1),
            ("2023-02-09T21:32:50.714+01:00", 1675974770714),
            ("2023-02-09 20:32:50,714+00:00", 1675974770714),
            ("20230209T203250.714Z", 1675974770714),
            ("2023-02-09T20:32:50.Z", 1675974770000),
            ("2023-02-09T20:32:50:123Z", 1675974770123),
            ("2023-02-09T20Z", 1675972800000),
            ("2023-W06-4T20Z", 1675972800000),
            ("2023W064T20Z", 1675972800000),
            ("2023-02-09T20:32:50.714-00:00:00.5", 1675974770714),
            ("2023-02-09\u{e9}20:32:50Z", 1675974770000),
        ] {
            assert_eq!(timestamp_ms(text), Ok(ms), "{text}");
        }
        for text in [
            "2023-02-09T20:32:51",
            "2023-02-09",
            "2023-02-09T20:32:50.714",
        ] {
            assert_eq!(timestamp_ms(text), Err(IsoError::Naive), "{text}");
        }
        for text in [
            "",
            "yesterday",
            "2023-02-09T24:00:00Z",
            "2023-02-30T00:00:00Z",
            "2023-02-09T20:32:50ZZ",
            "2023-02-09T20:32:50+24:00",
            "0000-01-01T00:00Z",
            "2023-02-09T20:32:5Z",
            "2023-02-09X20:32:50+1",
            "2023-13-09T00:00Z",
        ] {
            assert_eq!(timestamp_ms(text), Err(IsoError::Invalid), "{text}");
        }
    }
}
