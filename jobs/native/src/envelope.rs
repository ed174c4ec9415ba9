//! The raw envelope (`schemas/raw_envelope.avsc`, Avro binary): the Rust twin of
//! `schemas.codec.decode_envelope` / `envelope_instrument`. Zero-copy: every field borrows
//! from the record's bytes. A record is schemaless (the body alone) or framed (byte 0, the
//! writer schema's registry id, the body; `writer_schema`): the body of one written with this
//! build's schema is read as a schemaless one, any other by its writer schema's plan.
//!
//! What fastavro (the Cython reader) does, and so what this does:
//! - a long is a zig-zag varint read into 64 bits with no length limit; a byte's bits are
//!   shifted by `7 * i` with the shift count taken modulo 64 (x86 semantics of the C shift),
//!   so over-long varints wrap exactly as fastavro's do;
//! - a string/bytes length is a long; a negative length or one past the end is an error;
//! - strings are strict UTF-8 (surrogates and overlong forms rejected, as Python's codec does);
//! - bytes after the record (trailing garbage) are ignored.

use std::fmt;

use crate::writer_schema::{
    framed_id, plans, push_frame_header, Kind, Plan, Skip, Step, FRAME_HEADER, MAGIC,
};

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

    fn advance(&mut self, n: usize) -> Result<(), &'static str> {
        if n > self.data.len() - self.pos {
            return Err("truncated value of a skipped field");
        }
        self.pos += n;
        Ok(())
    }

    /// Pass over one value of a field the reader does not know.
    fn skip(&mut self, skip: &Skip) -> Result<(), &'static str> {
        match skip {
            Skip::Null => Ok(()),
            Skip::Boolean => self.advance(1),
            Skip::Varint => self.long().map(drop),
            Skip::Float => self.advance(4),
            Skip::Double => self.advance(8),
            Skip::Bytes => self.bytes().map(drop),
            Skip::Fixed(n) => self.advance(*n),
            Skip::Union(branches) => {
                let index = self.long()?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or("union branch out of range")?;
                self.skip(branch)
            }
            Skip::Record(fields) => fields.iter().try_for_each(|f| self.skip(f)),
            Skip::Array(items) => self.blocks(|r| r.skip(items)),
            Skip::Map(values) => self.blocks(|r| {
                r.bytes()?;
                r.skip(values)
            }),
        }
    }

    /// An array's or map's blocks: a count (negative: followed by the block's size in bytes),
    /// its items, until a count of 0.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), &'static str>,
    ) -> Result<(), &'static str> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?; // the block's size: the items are skipped one by one anyway
            }
            for _ in 0..count.unsigned_abs() {
                item(self)?;
            }
        }
    }
}

fn decode_error(data: &[u8], field: &str, why: &str) -> EnvelopeError {
    EnvelopeError(format!(
        "cannot decode RawEnvelope ({} bytes): {field}: {why}",
        data.len()
    ))
}

/// Decode one RawEnvelope, schemaless or framed (bytes after the record are ignored, as
/// fastavro does). A framed record's id must have been learned (`writer_schema::learn`).
pub fn decode_envelope(data: &[u8]) -> Result<RawEnvelope<'_>, EnvelopeError> {
    if data.first() != Some(&MAGIC) {
        return decode_body(data);
    }
    let Some(id) = framed_id(data) else {
        return Err(EnvelopeError(format!(
            "cannot decode RawEnvelope ({} bytes): truncated schema id",
            data.len()
        )));
    };
    let plans = plans();
    match plans.get(&id) {
        Some(Ok(plan)) if plan.identity => decode_body(&data[FRAME_HEADER..]),
        Some(Ok(plan)) => decode_planned(data, plan)
            .map_err(|why| decode_error(data, &format!("writer schema id {id}"), &why)),
        Some(Err(why)) => Err(EnvelopeError(format!(
            "cannot decode RawEnvelope ({} bytes): {why}",
            data.len()
        ))),
        None => Err(EnvelopeError(format!(
            "cannot decode RawEnvelope ({} bytes): writer schema id {id} not learned",
            data.len()
        ))),
    }
}

/// A framed record's body by its writer schema's plan: the reader's fields into their slots,
/// every other field passed over.
fn decode_planned<'a>(data: &'a [u8], plan: &Plan) -> Result<RawEnvelope<'a>, String> {
    #[derive(Clone, Copy)]
    enum Slot<'a> {
        Empty,
        Bytes(&'a [u8]),
        Long(i64),
    }
    let mut r = Reader {
        data,
        pos: FRAME_HEADER,
    };
    let mut slots = [Slot::Empty; 8];
    for step in &plan.steps {
        match step {
            Step::Read(slot) => {
                let (name, kind) = crate::writer_schema::READER_FIELDS[*slot];
                let at = |why: &str| format!("{name}: {why}");
                slots[*slot] = match kind {
                    Kind::Long => Slot::Long(r.long().map_err(at)?),
                    Kind::String => {
                        let bytes = r.bytes().map_err(at)?;
                        std::str::from_utf8(bytes).map_err(|_| at("invalid UTF-8 in string"))?;
                        Slot::Bytes(bytes)
                    }
                    Kind::Bytes => Slot::Bytes(r.bytes().map_err(at)?),
                };
            }
            Step::Skip(skip) => r.skip(skip).map_err(|why| why.to_string())?,
        }
    }
    let text = |i: usize| match slots[i] {
        // checked as UTF-8 when read
        Slot::Bytes(b) => std::str::from_utf8(b).unwrap_or_default(),
        _ => "",
    };
    let long = |i: usize| match slots[i] {
        Slot::Long(v) => v,
        _ => 0,
    };
    Ok(RawEnvelope {
        instrument: text(0),
        exchange: text(1),
        symbol: text(2),
        channel: text(3),
        receive_time_ns: long(4),
        connection_id: text(5),
        connection_seq: long(6),
        payload: match slots[7] {
            Slot::Bytes(b) => b,
            _ => &[],
        },
    })
}

/// A record body written with this build's schema.
fn decode_body(data: &[u8]) -> Result<RawEnvelope<'_>, EnvelopeError> {
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

/// An Avro long (zig-zag, then base-128 little-endian, shortest form) appended to `out`.
pub fn push_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A RawEnvelope as Avro binary (what the connectors' `schemas.codec.encode_envelope` writes):
/// for tests and the fuzz campaign, which build frames the way the raw topic holds them.
pub fn encode_envelope(env: &RawEnvelope<'_>) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        push_long(out, b.len() as i64);
        out.extend_from_slice(b);
    }
    let mut out = Vec::with_capacity(64 + env.payload.len());
    for s in [env.instrument, env.exchange, env.symbol, env.channel] {
        bytes(&mut out, s.as_bytes());
    }
    push_long(&mut out, env.receive_time_ns);
    bytes(&mut out, env.connection_id.as_bytes());
    push_long(&mut out, env.connection_seq);
    bytes(&mut out, env.payload);
    out
}

/// A record framed with its writer schema's registry id (Confluent's framing).
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    push_frame_header(&mut out, schema_id);
    out.extend_from_slice(body);
    out
}

/// The `instrument` field (the first) without decoding the whole record: `codec.envelope_instrument`
/// (its own varint reader: at most 10 bytes, arbitrary-precision accumulator).
/// A framed record's instrument is the first field of its body: every version of the schema
/// keeps it first (`test_the_envelope_keeps_its_first_five_fields_in_place`).
pub fn envelope_instrument(data: &[u8]) -> Result<&str, EnvelopeError> {
    let data = match data.first() {
        Some(&MAGIC) if data.len() >= FRAME_HEADER => &data[FRAME_HEADER..],
        Some(&MAGIC) => return Err(EnvelopeError("truncated schema id in RawEnvelope".into())),
        _ => data,
    };
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
    fn framed_records_are_read_by_their_writer_schema() {
        const V1: &str = include_str!("../../../schemas/raw_envelope.avsc");
        let v1: serde_json::Value = serde_json::from_str(V1).unwrap();
        let mut v2 = v1.clone();
        // v2: an optional string after `symbol`, and a map of arrays at the end
        let fields = v2["fields"].as_array_mut().unwrap();
        fields.insert(
            3,
            serde_json::json!({"name": "region", "type": ["null", "string"], "default": null}),
        );
        fields.push(serde_json::json!({"name": "hops", "default": {},
            "type": {"type": "map", "values": {"type": "array", "items": "long"}}}));
        crate::writer_schema::learn(7001, Some(V1)).unwrap();
        crate::writer_schema::learn(7002, Some(&v2.to_string())).unwrap();

        let framed = frame(7001, FASTAVRO);
        assert_eq!(decode_envelope(&framed).unwrap(), ENV);
        assert_eq!(envelope_instrument(&framed).unwrap(), "BTC-USD");

        // ENV written with v2: region = "eu" (union branch 1), hops = {"a": [1, 2]} written
        // as one block with a negative count and its byte size, then {"b": []}
        let mut body = b"\x0eBTC-USD\x10coinbase\x0eBTC-USD\x02\x04eu".to_vec();
        body.extend_from_slice(&FASTAVRO[b"\x0eBTC-USD\x10coinbase\x0eBTC-USD".len()..]);
        body.extend_from_slice(b"\x01\x0c\x02a\x04\x02\x04\x00\x02\x02b\x00\x00");
        let framed = frame(7002, &body);
        assert_eq!(decode_envelope(&framed).unwrap(), ENV);
        assert_eq!(envelope_instrument(&framed).unwrap(), "BTC-USD");
        for i in 0..framed.len() - 1 {
            assert!(decode_envelope(&framed[..i]).is_err(), "truncated at {i}");
        }
        let mut bad_branch = framed.clone();
        bad_branch[5 + 25] = 0x06; // union index 3
        assert!(decode_envelope(&bad_branch).is_err());

        let unknown = frame(7003, FASTAVRO);
        let err = decode_envelope(&unknown).unwrap_err().0;
        assert!(err.contains("writer schema id 7003 not learned"), "{err}");
        crate::writer_schema::learn(7003, None).unwrap_err();
        let err = decode_envelope(&unknown).unwrap_err().0;
        assert!(err.contains("no schema with id 7003"), "{err}");
        assert!(decode_envelope(b"\x00\x00\x01").is_err());
        assert!(envelope_instrument(b"\x00\x00\x01").is_err());
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
