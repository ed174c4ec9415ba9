//! The raw envelope (`schemas/raw_envelope.avsc`, Avro binary, schemaless): the Rust twin of
//! `schemas.codec.decode_envelope` / `envelope_instrument`. Zero-copy: every field borrows
//! from the record's bytes.
//!
//! What fastavro (the Cython reader) does, and so what this does:
//! - a long is a zig-zag varint read into 64 bits with no length limit; a byte's bits are
//!   shifted by `7 * i` with the shift count taken modulo 64 (x86 semantics of the C shift),
//!   so over-long varints wrap exactly as fastavro's do;
//! - a string/bytes length is a long; a negative length or one past the end is an error;
//! - strings are strict UTF-8 (surrogates and overlong forms rejected, as Python's codec does);
//! - bytes after the record (trailing garbage) are ignored.

use std::fmt;

/// A raw exchange frame with its receive metadata (see `raw_envelope.avsc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEnvelope<'a> {
    pub instrument: &'a str,
    pub exchange: &'a str,
    pub symbol: &'a str,
    pub channel: &'a str,
    pub receive_time_ns: i64,
    pub connection_id: &'a str,
    pub connection_seq: i64,
    pub payload: &'a [u8],
}

/// A Kafka value is not a valid RawEnvelope.
#[derive(Debug, Clone)]
pub struct EnvelopeError(pub String);

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvelopeError {}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// fastavro's `read_long`: u64 accumulator, shift count modulo 64, unbounded length.
    #[inline]
    fn long(&mut self) -> Result<i64, &'static str> {
        let mut n: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let Some(&b) = self.data.get(self.pos) else {
                return Err("truncated long");
            };
            self.pos += 1;
            n |= u64::from(b & 0x7F).wrapping_shl(shift);
            if b & 0x80 == 0 {
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
            shift = shift.wrapping_add(7);
        }
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.long()?;
        if len < 0 {
            return Err("negative length");
        }
        let len = len as u64;
        let avail = (self.data.len() - self.pos) as u64;
        if len > avail {
            return Err("truncated bytes/string");
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.data[start..self.pos])
    }

    #[inline]
    fn string(&mut self) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "invalid UTF-8 in string")
    }
}

fn decode_error(data: &[u8], field: &str, why: &str) -> EnvelopeError {
    EnvelopeError(format!(
        "cannot decode RawEnvelope ({} bytes): {field}: {why}",
        data.len()
    ))
}

/// Decode one RawEnvelope (bytes after the record are ignored, as fastavro does).
pub fn decode_envelope(data: &[u8]) -> Result<RawEnvelope<'_>, EnvelopeError> {
    let mut r = Reader { data, pos: 0 };
    macro_rules! field {
        ($name:literal, $e:expr) => {
            $e.map_err(|why| decode_error(data, $name, why))?
        };
    }
    let instrument = field!("instrument", r.string());
    let exchange = field!("exchange", r.string());
    let symbol = field!("symbol", r.string());
    let channel = field!("channel", r.string());
    let receive_time_ns = field!("receive_time_ns", r.long());
    let connection_id = field!("connection_id", r.string());
    let connection_seq = field!("connection_seq", r.long());
    let payload = field!("payload", r.bytes());
    Ok(RawEnvelope {
        instrument,
        exchange,
        symbol,
        channel,
        receive_time_ns,
        connection_id,
        connection_seq,
        payload,
    })
}

/// A RawEnvelope as Avro binary (what the connectors' `schemas.codec.encode_envelope` writes):
/// for tests and the fuzz campaign, which build frames the way the raw topic holds them.
pub fn encode_envelope(env: &RawEnvelope<'_>) -> Vec<u8> {
    fn long(out: &mut Vec<u8>, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        long(out, b.len() as i64);
        out.extend_from_slice(b);
    }
    let mut out = Vec::with_capacity(64 + env.payload.len());
    for s in [env.instrument, env.exchange, env.symbol, env.channel] {
        bytes(&mut out, s.as_bytes());
    }
    long(&mut out, env.receive_time_ns);
    bytes(&mut out, env.connection_id.as_bytes());
    long(&mut out, env.connection_seq);
    bytes(&mut out, env.payload);
    out
}

/// The `instrument` field (the first) without decoding the whole record: `codec.envelope_instrument`
/// (its own varint reader: at most 10 bytes, arbitrary-precision accumulator).
pub fn envelope_instrument(data: &[u8]) -> Result<&str, EnvelopeError> {
    let mut acc: u128 = 0;
    let mut shift: u32 = 0;
    let mut pos = 0usize;
    let length: i128 = loop {
        if pos >= data.len() || shift > 63 {
            return Err(EnvelopeError("truncated varint in RawEnvelope".into()));
        }
        let b = data[pos];
        pos += 1;
        acc |= u128::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            break ((acc >> 1) as i128) ^ -((acc & 1) as i128);
        }
        shift += 7;
    };
    if length < 0 || pos as i128 + length > data.len() as i128 {
        return Err(EnvelopeError(
            "RawEnvelope too short for its instrument field".into(),
        ));
    }
    let bytes = &data[pos..pos + length as usize];
    std::str::from_utf8(bytes)
        .map_err(|e| EnvelopeError(format!("RawEnvelope instrument is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(v: i64, out: &mut Vec<u8>) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (n & 0x7F) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn encode(env: &RawEnvelope<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in [env.instrument, env.exchange, env.symbol, env.channel] {
            zigzag(s.len() as i64, &mut out);
            out.extend_from_slice(s.as_bytes());
        }
        zigzag(env.receive_time_ns, &mut out);
        zigzag(env.connection_id.len() as i64, &mut out);
        out.extend_from_slice(env.connection_id.as_bytes());
        zigzag(env.connection_seq, &mut out);
        zigzag(env.payload.len() as i64, &mut out);
        out.extend_from_slice(env.payload);
        out
    }

    const ENV: RawEnvelope<'static> = RawEnvelope {
        instrument: "BTC-USD",
        exchange: "coinbase",
        symbol: "BTC-USD",
        channel: "depth",
        receive_time_ns: 1_700_000_000_000_000_000,
        connection_id: "c1",
        connection_seq: 5,
        payload: b"{\"a\":1}",
    };

    /// What fastavro writes for ENV (`encode_envelope`), byte for byte.
    const FASTAVRO: &[u8] = b"\x0eBTC-USD\x10coinbase\x0eBTC-USD\ndepth\x80\x80\xd0\xe2\xc6\xbf\xce\x97/\x04c1\n\x0e{\"a\":1}";

    #[test]
    fn decodes_what_fastavro_wrote() {
        assert_eq!(encode(&ENV), FASTAVRO);
        assert_eq!(decode_envelope(FASTAVRO).unwrap(), ENV);
        assert_eq!(envelope_instrument(FASTAVRO).unwrap(), "BTC-USD");
        let neg = RawEnvelope {
            receive_time_ns: -3,
            connection_seq: i64::MIN,
            ..ENV
        };
        assert_eq!(decode_envelope(&encode(&neg)).unwrap(), neg);
    }

    #[test]
    fn truncation_and_bad_utf8_are_errors_trailing_bytes_ignored() {
        for i in 0..FASTAVRO.len() {
            assert!(decode_envelope(&FASTAVRO[..i]).is_err(), "truncated at {i}");
        }
        let mut trailing = FASTAVRO.to_vec();
        trailing.extend_from_slice(b"garbage");
        assert_eq!(decode_envelope(&trailing).unwrap(), ENV);
        let mut bad = FASTAVRO.to_vec();
        bad[4] = 0xFF;
        assert!(decode_envelope(&bad).is_err());
        assert!(envelope_instrument(&bad).is_err());
        let mut surrogate = b"\x06\xed\xa0\x80".to_vec();
        surrogate.extend_from_slice(&FASTAVRO[8..]);
        assert!(decode_envelope(&surrogate).is_err());
        let mut neg_len = FASTAVRO.to_vec();
        neg_len[0] = 0x01; // zig-zag -1
        assert!(decode_envelope(&neg_len).is_err());
        assert!(envelope_instrument(&neg_len).is_err());
        assert!(envelope_instrument(b"").is_err());
        assert!(envelope_instrument(b"\x0eBTC").is_err());
        assert!(envelope_instrument(&[0x80; 11]).is_err());
    }

    #[test]
    fn over_long_varints_wrap_as_fastavro_does() {
        // probed with fastavro 1.13.1 (Cython reader)
        let head = b"\x0eBTC-USD\x10coinbase\x0eBTC-USD\ndepth".to_vec();
        let tail = b"\x04c1\n\x0e{\"a\":1}";
        let cases: [(&[u8], i64); 4] = [
            (
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                i64::MIN,
            ),
            (
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02],
                0,
            ),
            (
                &[
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02,
                ],
                64,
            ),
            (
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MAX,
            ),
        ];
        for (varint, want) in cases {
            let mut data = head.clone();
            data.extend_from_slice(varint);
            data.extend_from_slice(tail);
            assert_eq!(decode_envelope(&data).unwrap().receive_time_ns, want);
        }
        // a non-minimal length varint is fine
        let mut data = b"\x8e\x00BTC-USD".to_vec();
        data.extend_from_slice(&FASTAVRO[8..]);
        assert_eq!(decode_envelope(&data).unwrap(), ENV);
        assert_eq!(envelope_instrument(&data).unwrap(), "BTC-USD");
    }
}
