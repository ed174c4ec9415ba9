//! Binance spot market-data frames -> normalised events (`jobs/parse/binance.py`).
//!
//! Frames: a diff depth event (`depthUpdate`) or a trade event (`trade`), raw or wrapped as a
//! combined-stream frame `{"stream": ..., "data": {...}}`; envelope channel `snapshot` is a
//! REST depth body `{"lastUpdateId": ..., "bids": [[p, q], ...], "asks": [...]}`.

use std::borrow::Cow;

use super::json::{missing, Json, R};
use super::pydec::{py_decimal, PyDec};
use super::{perr, pyrepr};
use crate::dec::Dec;
use crate::envelope::RawEnvelope;
use crate::events::{BookDelta, BookSnapshot, Level, MarketEvent, ParseError, Side, Trade};
use crate::validate::plain_number;

pub const EXCHANGE: &str = "binance";

/// One envelope -> its events (the registry entry for `binance`).
pub fn parse(env: &RawEnvelope<'_>) -> Result<Vec<MarketEvent>, ParseError> {
    match env.channel {
        "snapshot" => Ok(vec![MarketEvent::Snapshot(parse_snapshot(
            env.payload,
            env.symbol,
            env.receive_time_ns,
        )?)]),
        "depth" | "trade" => Ok(vec![parse_frame(env.payload, env.receive_time_ns)?]),
        other => Err(perr(format!(
            "binance: unknown channel {}",
            pyrepr::str_repr(other)
        ))),
    }
}

/// `Decimal(text)` for Binance, which checks nothing more (Python would accept NaN and
/// Infinity and values `Dec` cannot hold: those are errors here).
#[inline]
fn decimal(text: &str) -> Result<Dec, &'static str> {
    if !plain_number(text) {
        return Err("bad decimal");
    }
    match py_decimal(text) {
        PyDec::Finite(d) => Ok(d),
        PyDec::Invalid => Err("bad decimal"),
        PyDec::NonFinite => Err("non-finite decimal (not supported by the Rust parser)"),
        PyDec::Unrepresentable => Err("decimal out of the Rust parser's range"),
    }
}

/// `list[tuple[str, str]]` decoded straight into levels; a bad decimal is kept as a deferred
/// error (Python converts after decoding: only the surviving value of a duplicated key counts).
fn levels(j: &mut Json<'_>) -> R<Result<Vec<Level>, String>> {
    j.begin_array()?;
    let mut out: Vec<Level> = Vec::new();
    let mut bad: Option<String> = None;
    let mut first = true;
    while j.next_item(&mut first)? {
        if j.peek()? != b'[' {
            return j.type_err("array");
        }
        j.begin_array()?;
        let mut f = true;
        let mut n = 0;
        let mut pair: [Option<Cow<'_, str>>; 2] = [None, None];
        while j.next_item(&mut f)? {
            let s = j.string()?;
            if n < 2 {
                pair[n] = Some(s);
            }
            n += 1;
        }
        if n != 2 {
            return Err(perr("Expected `array` of length 2"));
        }
        if bad.is_none() {
            let (p, q) = (pair[0].as_deref().unwrap(), pair[1].as_deref().unwrap());
            match (decimal(p), decimal(q)) {
                (Ok(p), Ok(q)) => out.push((p, q)),
                (Err(e), _) | (_, Err(e)) => {
                    bad = Some(format!(
                        "binance: {e} in levels [{}, {}]",
                        pyrepr::str_repr(p),
                        pyrepr::str_repr(q)
                    ));
                }
            }
        }
    }
    Ok(match bad {
        Some(e) => Err(e),
        None => Ok(out),
    })
}

struct Depth {
    e: i64,
    s: String,
    first: i64,
    last: i64,
    b: Result<Vec<Level>, String>,
    a: Result<Vec<Level>, String>,
}

struct TradeEv<'a> {
    e: i64,
    s: String,
    t: &'a str,
    p: Cow<'a, str>,
    q: Cow<'a, str>,
    tt: i64,
    m: bool,
}

enum Event<'a> {
    Depth(Depth),
    Trade(TradeEv<'a>),
}

/// `DepthUpdate | TradeEvent`, tagged by `e` (anywhere in the object).
fn event<'a>(j: &mut Json<'a>) -> R<Event<'a>> {
    if j.peek()? != b'{' {
        return j.type_err("object");
    }
    let tag = j.lookahead_tag(b"e")?;
    match &*tag {
        "depthUpdate" => depth(j).map(Event::Depth),
        "trade" => trade(j).map(Event::Trade),
        other => Err(perr(format!(
            "Invalid value {} - at `$.e`",
            pyrepr::str_repr(other)
        ))),
    }
}

fn depth(j: &mut Json<'_>) -> R<Depth> {
    j.begin_object()?;
    let (mut e, mut s, mut first_id, mut last_id, mut b, mut a) =
        (None, None, None, None, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"e" => j.tag("depthUpdate", "$.e")?,
            b"E" => e = Some(j.int_i64()?),
            b"s" => s = Some(j.string()?.into_owned()),
            b"U" => first_id = Some(j.int_i64()?),
            b"u" => last_id = Some(j.int_i64()?),
            b"b" => b = Some(levels(j)?),
            b"a" => a = Some(levels(j)?),
            _ => j.skip()?,
        }
    }
    Ok(Depth {
        e: e.ok_or_else(|| missing("E"))?,
        s: s.ok_or_else(|| missing("s"))?,
        first: first_id.ok_or_else(|| missing("U"))?,
        last: last_id.ok_or_else(|| missing("u"))?,
        b: b.ok_or_else(|| missing("b"))?,
        a: a.ok_or_else(|| missing("a"))?,
    })
}

fn trade<'a>(j: &mut Json<'a>) -> R<TradeEv<'a>> {
    j.begin_object()?;
    let (mut e, mut s, mut t, mut p, mut q, mut tt, mut m) =
        (None, None, None, None, None, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"e" => j.tag("trade", "$.e")?,
            b"E" => e = Some(j.int_i64()?),
            b"s" => s = Some(j.string()?.into_owned()),
            b"t" => t = Some(j.int_text()?),
            b"p" => p = Some(j.string()?),
            b"q" => q = Some(j.string()?),
            b"T" => tt = Some(j.int_i64()?),
            b"m" => m = Some(j.boolean()?),
            _ => j.skip()?,
        }
    }
    Ok(TradeEv {
        e: e.ok_or_else(|| missing("E"))?,
        s: s.ok_or_else(|| missing("s"))?,
        t: t.ok_or_else(|| missing("t"))?,
        p: p.ok_or_else(|| missing("p"))?,
        q: q.ok_or_else(|| missing("q"))?,
        tt: tt.ok_or_else(|| missing("T"))?,
        m: m.ok_or_else(|| missing("m"))?,
    })
}

/// `str(int)` of a JSON integer's text.
#[inline]
pub(crate) fn int_str(text: &str) -> String {
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A WebSocket frame (combined-stream wrapped or raw) -> one event.
pub fn parse_frame(payload: &[u8], receive_time_ns: i64) -> Result<MarketEvent, ParseError> {
    let cannot = |e: ParseError| perr(format!("binance: cannot parse frame: {}", e.0));
    let mut j = Json::new(payload);
    let head = &payload[..payload.len().min(16)];
    let data = if head.windows(8).any(|w| w == b"\"stream\"") {
        // CombinedFrame {stream: str, data: DepthUpdate | TradeEvent}
        (|| -> R<Event<'_>> {
            j.begin_object()?;
            let (mut stream, mut data) = (false, None);
            let mut first = true;
            while let Some(key) = j.next_key(&mut first)? {
                match &*key {
                    b"stream" => {
                        j.string()?;
                        stream = true;
                    }
                    b"data" => data = Some(event(&mut j)?),
                    _ => j.skip()?,
                }
            }
            j.finish()?;
            if !stream {
                return Err(missing("stream"));
            }
            data.ok_or_else(|| missing("data"))
        })()
        .map_err(cannot)?
    } else {
        (|| -> R<Event<'_>> {
            let ev = event(&mut j)?;
            j.finish()?;
            Ok(ev)
        })()
        .map_err(cannot)?
    };
    match data {
        Event::Depth(d) => {
            if d.last < d.first {
                return Err(perr(format!(
                    "binance: depth event with U={} > u={}",
                    d.first, d.last
                )));
            }
            Ok(MarketEvent::Delta(BookDelta {
                exchange: EXCHANGE.to_string(),
                symbol: d.s,
                first_id: d.first,
                last_id: d.last,
                event_time_ms: d.e,
                receive_time_ns,
                bids: d.b.map_err(perr)?,
                asks: d.a.map_err(perr)?,
                checksum: None,
            }))
        }
        Event::Trade(t) => {
            let (price, size) = match (decimal(&t.p), decimal(&t.q)) {
                (Ok(p), Ok(q)) => (p, q),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(perr(format!("binance: {e} in trade {}", int_str(t.t))))
                }
            };
            Ok(MarketEvent::Trade(Trade {
                exchange: EXCHANGE.to_string(),
                symbol: t.s,
                trade_id: int_str(t.t),
                price,
                size,
                // buyer is maker -> the seller crossed the spread
                taker_side: if t.m { Side::Sell } else { Side::Buy },
                trade_time_ms: t.tt,
                event_time_ms: t.e,
                receive_time_ns,
                sequence: -1,
            }))
        }
    }
}

/// A REST depth snapshot body -> BookSnapshot (the body does not name its symbol).
pub fn parse_snapshot(
    payload: &[u8],
    symbol: &str,
    receive_time_ns: i64,
) -> Result<BookSnapshot, ParseError> {
    let mut j = Json::new(payload);
    let (last, bids, asks) = (|| -> R<_> {
        j.begin_object()?;
        let (mut last, mut bids, mut asks) = (None, None, None);
        let mut first = true;
        while let Some(key) = j.next_key(&mut first)? {
            match &*key {
                b"lastUpdateId" => last = Some(j.int_i64()?),
                b"bids" => bids = Some(levels(&mut j)?),
                b"asks" => asks = Some(levels(&mut j)?),
                _ => j.skip()?,
            }
        }
        j.finish()?;
        Ok((
            last.ok_or_else(|| missing("lastUpdateId"))?,
            bids.ok_or_else(|| missing("bids"))?,
            asks.ok_or_else(|| missing("asks"))?,
        ))
    })()
    .map_err(|e| perr(format!("binance: cannot parse depth snapshot: {}", e.0)))?;
    Ok(BookSnapshot {
        exchange: EXCHANGE.to_string(),
        symbol: symbol.to_string(),
        last_id: last,
        receive_time_ns,
        bids: bids.map_err(perr)?,
        asks: asks.map_err(perr)?,
        event_time_ms: 0,
        checksum: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_envelope;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/binance/");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIX}{name}")).expect(name)
    }

    fn d(s: &str) -> Dec {
        s.parse().unwrap()
    }

    fn env<'a>(channel: &'a str, payload: &'a [u8]) -> RawEnvelope<'a> {
        RawEnvelope {
            instrument: "BNB-BTC",
            exchange: "binance",
            symbol: "BNBBTC",
            channel,
            receive_time_ns: 7,
            connection_id: "c1",
            connection_seq: 0,
            payload,
        }
    }

    #[test]
    fn documentation_depth_update() {
        for name in ["doc_depth_update.json", "combined_depth_update.json"] {
            let MarketEvent::Delta(delta) = parse_frame(&fixture(name), 7).unwrap() else {
                panic!()
            };
            assert_eq!(
                (delta.symbol.as_str(), delta.first_id, delta.last_id),
                ("BNBBTC", 157, 160)
            );
            assert_eq!(delta.bids, vec![(d("0.0024"), d("10"))]);
            assert_eq!(delta.asks, vec![(d("0.0026"), d("100"))]);
            assert_eq!(
                (delta.event_time_ms, delta.receive_time_ns),
                (1672515782136, 7)
            );
            assert_eq!((delta.exchange.as_str(), delta.checksum), ("binance", None));
        }
    }

    #[test]
    fn documentation_trade_taker_side() {
        for name in ["doc_trade.json", "combined_trade.json"] {
            let MarketEvent::Trade(t) = parse_frame(&fixture(name), 7).unwrap() else {
                panic!()
            };
            assert_eq!(
                (t.trade_id.as_str(), t.price, t.size),
                ("12345", d("0.001"), d("100"))
            );
            // "m": true -> the buyer was the maker, so the aggressor sold
            assert_eq!(t.taker_side, Side::Sell);
            assert_eq!(
                (t.trade_time_ms, t.event_time_ms, t.sequence),
                (1672515782136, 1672515782136, -1)
            );
        }
    }

    #[test]
    fn documentation_snapshot_keeps_exact_decimals() {
        let snap = parse_snapshot(&fixture("doc_depth_snapshot.json"), "BNBBTC", 1).unwrap();
        assert_eq!(snap.last_id, 1027024);
        let asks: Vec<String> = snap.asks.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(asks, ["4.00000200"]);
        let bids: Vec<String> = snap.bids.iter().map(|(_, s)| s.to_string()).collect();
        assert_eq!(bids, ["431.00000000"]);
        assert_eq!(
            (snap.event_time_ms, snap.checksum, snap.symbol.as_str()),
            (0, None, "BNBBTC")
        );
    }

    #[test]
    fn bad_frames_raise_parse_error() {
        for payload in [
            &b"not json"[..],
            br#"{"e":"kline"}"#,
            br#"{"e":"depthUpdate","E":1,"s":"X","U":5,"u":4,"b":[],"a":[]}"#,
            br#"{"e":"trade","E":1,"s":"X","t":1,"p":"abc","q":"1","T":1,"m":true}"#,
            // msgspec's strictness
            br#"{"e":"depthUpdate","E":1.0,"s":"X","U":1,"u":2,"b":[],"a":[]}"#,
            br#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["1","2","3"]],"a":[]}"#,
            br#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]} x"#,
            br#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[],"e":"trade"}"#,
            br#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[],"z":NaN}"#,
            br#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[],"z":[1,]}"#,
            br#"{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","T":1,"m":1}"#,
            br#"{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","T":1}"#,
            br#"{"e":"trade","E":01,"s":"X","t":1,"p":"1","q":"1","T":1,"m":true}"#,
            b"\xef\xbb\xbf{\"e\":\"trade\",\"E\":1,\"s\":\"X\",\"t\":1,\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":true}",
            b"{\"e\":\"trade\",\"E\":1,\"s\":\"X\xff\",\"t\":1,\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":true}",
            b"{\"e\":\"trade\",\"E\":1,\"s\":\"X\t\",\"t\":1,\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":true}",
            br#"{"e":"trade","E":1,"s":"X\ud800","t":1,"p":"1","q":"1","T":1,"m":true}"#,
            br#"{"stream":"x","data":{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","T":1,"m":true}} 1"#,
            br#"{"stream":"x"}"#,
            br#"[1]"#,
            b"",
        ] {
            assert!(parse_frame(payload, 0).is_err(), "{}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn accepted_like_msgspec() {
        // the tag anywhere, a duplicated field (last wins), escapes, unknown fields
        let MarketEvent::Delta(dl) = parse_frame(
            br#" {"E":1,"E":2,"s":"X\u0041","U":1,"u":2,"b":[],"a":[["10","2.50"]],"z":{"y":[null,true,-1.5e-3,"\u00e9"]},"e":"depthUpdate"} "#,
            0,
        )
        .unwrap() else { panic!() };
        assert_eq!((dl.event_time_ms, dl.symbol.as_str()), (2, "XA"));
        assert_eq!(dl.asks[0].0.to_string(), "10");
        assert_eq!(dl.asks[0].1.to_string(), "2.50");
        // issue 16: what Decimal() is lenient about is not a price or size here
        for level in [
            r#"["1_0","1"]"#,
            r#"[" 1","1"]"#,
            r#"["1","１２"]"#,
            r#"["NaN","1"]"#,
            r#"["sNaN","1"]"#,
            r#"["Infinity","1"]"#,
            r#"["1e999999999","1"]"#,
            r#"["1","1e-999999999"]"#,
            r#"["+1","1"]"#,
        ] {
            let frame =
                format!(r#"{{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[{level}],"a":[]}}"#);
            assert!(parse_frame(frame.as_bytes(), 0).is_err(), "{level}");
        }
        // a bad decimal in a value overwritten by a later duplicate is never converted
        let ok = parse_frame(
            br#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["abc","1"]],"b":[],"a":[]}"#,
            0,
        );
        assert!(ok.is_ok());
        // unknown fields are not checked for UTF-8; trade ids any size, "-0" -> "0"
        let MarketEvent::Trade(t) = parse_frame(
            b"{\"e\":\"trade\",\"E\":1,\"s\":\"X\",\"t\":123456789012345678901234567890,\"p\":\"1\",\"q\":\"1\",\"T\":1,\"m\":false,\"z\":\"\xff\"}",
            0,
        )
        .unwrap() else { panic!() };
        assert_eq!(
            (t.trade_id.as_str(), t.taker_side),
            ("123456789012345678901234567890", Side::Buy)
        );
        let MarketEvent::Trade(t) = parse_frame(
            br#"{"e":"trade","E":1,"s":"X","t":-0,"p":"1","q":"1","T":1,"m":false}"#,
            0,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(t.trade_id, "0");
        // "stream" beyond the first 16 bytes: parsed as a raw event (and fails)
        assert!(parse_frame(
            br#"{"data":{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","T":1,"m":true},"stream":"x"}"#,
            0
        )
        .is_err());
    }

    #[test]
    fn unknown_channel_and_symbol_mismatch_are_errors() {
        let e = parse_envelope(&env("ticker", b"{}")).unwrap_err();
        assert!(e.0.contains("unknown channel"), "{e}");
        let frame = String::from_utf8(fixture("doc_depth_update.json")).unwrap();
        let frame = frame.replace("\"BNBBTC\"", "\"ETHBTC\"");
        let e = parse_envelope(&env("depth", frame.as_bytes())).unwrap_err();
        assert!(e.0.contains("keyed as"), "{e}");
        let snap = parse_envelope(&env(
            "snapshot",
            br#"{"lastUpdateId":158,"bids":[],"asks":[]}"#,
        ))
        .unwrap();
        assert!(
            matches!(&snap[..], [MarketEvent::Snapshot(s)] if s.last_id == 158 && s.symbol == "BNBBTC")
        );
    }

    /// The sync scenarios' frames all parse (their book outcomes are the engine's tests).
    #[test]
    fn scenario_frames_parse() {
        for entry in std::fs::read_dir(FIX).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if !name.starts_with("sync_") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (channel, frame) in crate::parse::scenario_steps(&text) {
                let (channel, payload) = (channel.as_str(), frame.as_bytes());
                let events = parse_envelope(&env(channel, payload)).unwrap();
                assert_eq!(events.len(), 1, "{name}");
            }
        }
    }
}
