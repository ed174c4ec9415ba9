//! Kraken spot WebSocket v2 frames -> normalised events (`jobs/parse/kraken.py`).
//!
//! Prices and quantities are JSON numbers on the wire, decoded straight from their text (as
//! msgspec decodes a `Decimal` field: no float in between, so `0.10000000` keeps its trailing
//! zeros for the book checksum); a JSON string is accepted too, as `Decimal(text)`.

use super::isotime::{self, IsoError};
use super::json::{missing, Json, R};
use super::pydec::{py_decimal, PyDec};
use super::{perr, pyrepr};
use crate::dec::Dec;
use crate::envelope::RawEnvelope;
use crate::events::{BookDelta, BookSnapshot, Level, MarketEvent, ParseError, Side, Trade};
use crate::validate::plain_number;

pub const EXCHANGE: &str = "kraken";

/// One envelope -> its events (the registry entry for `kraken`): channels `depth` (book
/// snapshots and updates) and `trade`.
pub fn parse(env: &RawEnvelope<'_>) -> Result<Vec<MarketEvent>, ParseError> {
    if env.channel == "depth" || env.channel == "trade" {
        let events = parse_frame(env.payload, env.receive_time_ns)?;
        let want_trade = env.channel == "trade";
        if events
            .iter()
            .any(|e| matches!(e, MarketEvent::Trade(_)) != want_trade)
        {
            return Err(perr(format!(
                "kraken: a {} envelope holds another channel's frame",
                env.channel
            )));
        }
        return Ok(events);
    }
    Err(perr(format!(
        "kraken: unknown channel {}",
        pyrepr::str_repr(env.channel)
    )))
}

/// RFC 3339 -> ms since the epoch (`datetime.fromisoformat`, aware only).
pub fn timestamp_ms(text: &str) -> Result<i64, ParseError> {
    isotime::timestamp_ms(text).map_err(|e| match e {
        IsoError::Invalid => perr(format!("kraken: bad timestamp {}", pyrepr::str_repr(text))),
        IsoError::Naive => perr(format!(
            "kraken: timestamp without a time zone {}",
            pyrepr::str_repr(text)
        )),
    })
}

/// A decoded `Decimal` field: msgspec accepts a JSON number or string, including NaN and
/// Infinity strings (Python checks finiteness afterwards).
#[derive(Clone, Copy)]
enum KDec {
    Finite(Dec),
    NonFinite,
    /// finite for Python, but beyond what `Dec` holds
    Unrepresentable,
}

impl KDec {
    fn text(self) -> String {
        match self {
            KDec::Finite(d) => d.to_string(),
            KDec::NonFinite => "NaN/Infinity".into(),
            KDec::Unrepresentable => "<out of the Rust parser's range>".into(),
        }
    }
}

fn decimal_field(j: &mut Json<'_>) -> R<KDec> {
    let parsed = match j.peek()? {
        b'"' => {
            let text = j.string()?;
            if !plain_number(&text) {
                return Err(perr("Invalid decimal string"));
            }
            py_decimal(&text)
        }
        b'-' | b'0'..=b'9' => {
            // msgspec builds a JSON integer's Decimal from the int: "-0" loses its sign
            let n = j.number()?;
            py_decimal(if n.is_int && n.text == "-0" {
                "0"
            } else {
                n.text
            })
        }
        _ => return j.type_err("decimal"),
    };
    match parsed {
        PyDec::Finite(d) => Ok(KDec::Finite(d)),
        PyDec::NonFinite => Ok(KDec::NonFinite),
        PyDec::Unrepresentable => Ok(KDec::Unrepresentable),
        PyDec::Invalid => Err(perr("Invalid decimal string")),
    }
}

/// `list[PriceLevel]` -> levels, with `_levels`' check (finite, price > 0, qty >= 0)
/// deferred: it applies only if the list is kept.
fn levels(j: &mut Json<'_>) -> R<Result<Vec<Level>, String>> {
    j.begin_array()?;
    let mut out: Vec<Level> = Vec::new();
    let mut bad: Option<String> = None;
    let mut first = true;
    while j.next_item(&mut first)? {
        j.begin_object()?;
        let (mut price, mut qty) = (None, None);
        let mut f = true;
        while let Some(key) = j.next_key(&mut f)? {
            match &*key {
                b"price" => price = Some(decimal_field(j)?),
                b"qty" => qty = Some(decimal_field(j)?),
                _ => j.skip()?,
            }
        }
        let price = price.ok_or_else(|| missing("price"))?;
        let qty = qty.ok_or_else(|| missing("qty"))?;
        if bad.is_some() {
            continue;
        }
        match (price, qty) {
            (KDec::Finite(p), KDec::Finite(q))
                if p > Dec::ZERO && (q > Dec::ZERO || q.is_zero()) =>
            {
                out.push((p, q))
            }
            _ => {
                bad = Some(format!(
                    "kraken: bad level price={} qty={}",
                    price.text(),
                    qty.text()
                ))
            }
        }
    }
    Ok(match bad {
        Some(e) => Err(e),
        None => Ok(out),
    })
}

/// One `data` element of a book message, decoded; the timestamp and the levels' checks are
/// deferred (Python makes them after decoding).
struct Book {
    symbol: String,
    bids: Result<Vec<Level>, String>,
    asks: Result<Vec<Level>, String>,
    checksum: u32,
    timestamp: Option<String>,
}

fn book_data(j: &mut Json<'_>) -> R<Book> {
    j.begin_object()?;
    let (mut symbol, mut bids, mut asks, mut checksum, mut timestamp) =
        (None, None, None, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"symbol" => symbol = Some(j.string()?.into_owned()),
            b"bids" => bids = Some(levels(j)?),
            b"asks" => asks = Some(levels(j)?),
            b"checksum" => {
                let text = j.int_text()?;
                let v = if text == "-0" {
                    Some(0)
                } else {
                    text.parse::<u32>().ok()
                };
                checksum = Some(v.ok_or_else(|| {
                    perr(format!("Expected `int` >= 0 and <= 4294967295, got {text} - at `$.data[...].checksum`"))
                })?);
            }
            b"timestamp" => timestamp = Some(j.opt_string()?.map(|s| s.into_owned())),
            _ => j.skip()?,
        }
    }
    Ok(Book {
        symbol: symbol.ok_or_else(|| missing("symbol"))?,
        bids: bids.ok_or_else(|| missing("bids"))?,
        asks: asks.ok_or_else(|| missing("asks"))?,
        checksum: checksum.ok_or_else(|| missing("checksum"))?,
        timestamp: timestamp.flatten(),
    })
}

/// One trade of a trade message, decoded (checks deferred).
struct RawTrade {
    symbol: String,
    side: Side,
    price: KDec,
    qty: KDec,
    trade_id: String,
    timestamp: String,
}

fn trade_data(j: &mut Json<'_>) -> R<RawTrade> {
    j.begin_object()?;
    let (mut symbol, mut side, mut price, mut qty, mut ord_type, mut trade_id, mut timestamp) =
        (None, None, None, None, false, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"symbol" => symbol = Some(j.string()?.into_owned()),
            b"side" => {
                let s = j.string()?;
                side = Some(match &*s {
                    "buy" => Side::Buy,
                    "sell" => Side::Sell,
                    other => {
                        return Err(perr(format!(
                            "Invalid enum value {} - at `$.data[...].side`",
                            pyrepr::str_repr(other)
                        )))
                    }
                });
            }
            b"price" => price = Some(decimal_field(j)?),
            b"qty" => qty = Some(decimal_field(j)?),
            b"ord_type" => {
                j.string()?;
                ord_type = true;
            }
            b"trade_id" => {
                let t = j.int_text()?;
                trade_id = Some(if t == "-0" {
                    "0".to_string()
                } else {
                    t.to_string()
                });
            }
            b"timestamp" => timestamp = Some(j.string()?.into_owned()),
            _ => j.skip()?,
        }
    }
    let symbol = symbol.ok_or_else(|| missing("symbol"))?;
    let side = side.ok_or_else(|| missing("side"))?;
    let price = price.ok_or_else(|| missing("price"))?;
    let qty = qty.ok_or_else(|| missing("qty"))?;
    if !ord_type {
        return Err(missing("ord_type"));
    }
    Ok(RawTrade {
        symbol,
        side,
        price,
        qty,
        trade_id: trade_id.ok_or_else(|| missing("trade_id"))?,
        timestamp: timestamp.ok_or_else(|| missing("timestamp"))?,
    })
}

enum Message {
    /// (is_snapshot, books)
    Book(bool, Vec<Book>),
    Trade(Vec<RawTrade>),
}

fn decode(payload: &[u8]) -> R<Message> {
    let mut j = Json::new(payload);
    if j.peek()? != b'{' {
        return j.type_err("object");
    }
    let tag = j.lookahead_tag(b"channel")?;
    let is_book = match &*tag {
        "book" => true,
        "trade" => false,
        other => {
            return Err(perr(format!(
                "Invalid value {} - at `$.channel`",
                pyrepr::str_repr(other)
            )))
        }
    };
    j.begin_object()?;
    let mut ty: Option<bool> = None;
    let mut books: Option<Vec<Book>> = None;
    let mut trades: Option<Vec<RawTrade>> = None;
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"channel" => j.tag(if is_book { "book" } else { "trade" }, "$.channel")?,
            b"type" => ty = Some(j.enum_value(&["snapshot", "update"], "$.type")? == "snapshot"),
            b"data" => {
                j.begin_array()?;
                let mut f = true;
                if is_book {
                    let mut list = Vec::with_capacity(1);
                    while j.next_item(&mut f)? {
                        list.push(book_data(&mut j)?);
                    }
                    books = Some(list);
                } else {
                    let mut list = Vec::new();
                    while j.next_item(&mut f)? {
                        list.push(trade_data(&mut j)?);
                    }
                    trades = Some(list);
                }
            }
            _ => j.skip()?,
        }
    }
    j.finish()?;
    let ty = ty.ok_or_else(|| missing("type"))?;
    Ok(if is_book {
        Message::Book(ty, books.ok_or_else(|| missing("data"))?)
    } else {
        Message::Trade(trades.ok_or_else(|| missing("data"))?)
    })
}

/// A book or trade frame -> its events (one per `data` element).
pub fn parse_frame(payload: &[u8], receive_time_ns: i64) -> Result<Vec<MarketEvent>, ParseError> {
    let message =
        decode(payload).map_err(|e| perr(format!("kraken: cannot parse frame: {}", e.0)))?;
    match message {
        Message::Trade(data) => data
            .into_iter()
            .map(|t| trade(t, receive_time_ns))
            .collect(),
        Message::Book(is_snapshot, data) => {
            let mut events = Vec::with_capacity(data.len());
            for book in data {
                // a snapshot without a timestamp (as documented) gets none: 0
                let event_ms = match &book.timestamp {
                    Some(t) => timestamp_ms(t)?,
                    None => 0,
                };
                let bids = book.bids.map_err(perr)?;
                let asks = book.asks.map_err(perr)?;
                events.push(if is_snapshot {
                    MarketEvent::Snapshot(BookSnapshot {
                        exchange: EXCHANGE.to_string(),
                        symbol: book.symbol,
                        last_id: 0, // no sequence numbers on Kraken's book channel
                        receive_time_ns,
                        bids,
                        asks,
                        event_time_ms: event_ms,
                        checksum: Some(book.checksum),
                    })
                } else {
                    MarketEvent::Delta(BookDelta {
                        exchange: EXCHANGE.to_string(),
                        symbol: book.symbol,
                        first_id: 0,
                        last_id: 0,
                        event_time_ms: event_ms,
                        receive_time_ns,
                        bids,
                        asks,
                        checksum: Some(book.checksum),
                    })
                });
            }
            Ok(events)
        }
    }
}

fn trade(t: RawTrade, receive_time_ns: i64) -> Result<MarketEvent, ParseError> {
    let time_ms = timestamp_ms(&t.timestamp)?;
    let (price, size) = match (t.price, t.qty) {
        (KDec::Finite(p), KDec::Finite(q)) if p > Dec::ZERO && q > Dec::ZERO => (p, q),
        (p, q) => {
            return Err(perr(format!(
                "kraken: bad trade {} price={} qty={}",
                t.trade_id,
                p.text(),
                q.text()
            )))
        }
    };
    Ok(MarketEvent::Trade(Trade {
        exchange: EXCHANGE.to_string(),
        symbol: t.symbol,
        trade_id: t.trade_id,
        price,
        size,
        taker_side: t.side, // Kraken reports the taker's side
        trade_time_ms: time_ms,
        event_time_ms: time_ms,
        receive_time_ns,
        sequence: -1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::kraken::{book_checksum, checksum_text};
    use crate::parse::parse_envelope;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/kraken/");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIX}{name}")).expect(name)
    }

    fn d(s: &str) -> Dec {
        s.parse().unwrap()
    }

    fn env<'a>(channel: &'a str, payload: &'a [u8]) -> RawEnvelope<'a> {
        RawEnvelope {
            instrument: "BTC-USD",
            exchange: "kraken",
            symbol: "BTC/USD",
            channel,
            receive_time_ns: 1_700_000_000_000_000_000,
            connection_id: "c1",
            connection_seq: 0,
            payload,
        }
    }

    #[test]
    fn documented_snapshot_checksum_matches_the_documented_value() {
        let out = parse_frame(&fixture("doc_book_snapshot.json"), 7).unwrap();
        let [MarketEvent::Snapshot(snap)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(snap.checksum, Some(3310070434));
        assert_eq!(book_checksum(&snap.bids, &snap.asks), 3310070434);
    }

    #[test]
    fn documented_snapshot_keeps_the_exact_number_text() {
        let out = parse_frame(&fixture("doc_book_snapshot.json"), 7).unwrap();
        let [MarketEvent::Snapshot(snap)] = &out[..] else {
            panic!()
        };
        assert_eq!(
            (snap.symbol.as_str(), snap.last_id, snap.event_time_ms),
            ("BTC/USD", 0, 0)
        );
        assert_eq!(snap.bids[0], (d("45283.5"), d("0.10000000")));
        assert_eq!(snap.bids[0].1.to_string(), "0.10000000");
        assert_eq!(snap.bids[3].0.to_string(), "45281.0");
        assert_eq!(snap.asks[0].1.to_string(), "0.00100000");
        let asks: Vec<String> = snap.asks[..3].iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(asks, ["45285.2", "45286.4", "45286.6"]);
        assert_eq!(
            checksum_text(snap.asks[0].0) + &checksum_text(snap.asks[0].1),
            "452852100000"
        );
    }

    #[test]
    fn documented_update() {
        let out = parse_frame(&fixture("doc_book_update.json"), 7).unwrap();
        let [MarketEvent::Delta(delta)] = &out[..] else {
            panic!()
        };
        assert_eq!(
            (delta.symbol.as_str(), delta.first_id, delta.last_id),
            ("MATIC/USD", 0, 0)
        );
        assert_eq!(delta.bids, vec![(d("0.5657"), d("1098.3947558"))]);
        assert!(delta.asks.is_empty());
        assert_eq!(
            (delta.checksum, delta.receive_time_ns),
            (Some(2114181697), 7)
        );
        assert_eq!(delta.event_time_ms, 1696613755440);
        assert_eq!(
            timestamp_ms("2023-10-06T17:35:55.440295Z").unwrap(),
            1696613755440
        );
    }

    #[test]
    fn documented_trade_keeps_the_taker_side() {
        let out = parse_frame(&fixture("doc_trade.json"), 7).unwrap();
        let [MarketEvent::Trade(t)] = &out[..] else {
            panic!()
        };
        assert_eq!(
            (t.symbol.as_str(), t.trade_id.as_str(), t.taker_side),
            ("MATIC/USD", "4665906", Side::Sell)
        );
        assert_eq!(
            (t.price, t.size.to_string().as_str()),
            (d("0.5117"), "40.0")
        );
        assert_eq!(
            (t.trade_time_ms, t.event_time_ms, t.sequence),
            (1695628177708, 1695628177708, -1)
        );
    }

    #[test]
    fn multi_pair_trade_snapshot_gives_one_trade_per_element() {
        let out = parse_frame(&fixture("multi_pair_trade_snapshot.json"), 0).unwrap();
        let ids: Vec<&str> = out
            .iter()
            .map(|e| match e {
                MarketEvent::Trade(t) => t.trade_id.as_str(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(ids, ["71283911", "43020115", "71283912"]);
        // keyed as BTC/USD: the other pair's trade is a symbol mismatch
        let p = fixture("multi_pair_trade_snapshot.json");
        assert!(parse_envelope(&env("trade", &p))
            .unwrap_err()
            .0
            .contains("keyed as"));
    }

    #[test]
    fn parse_registry_channels_and_errors() {
        let out = parse_envelope(&env("sync_lost", br#"{"reason":"connection lost"}"#)).unwrap();
        assert!(matches!(&out[..], [MarketEvent::SyncLost(l)] if l.reason == "connection lost"));
        let trade = fixture("doc_trade.json");
        assert!(parse(&env("depth", &trade))
            .unwrap_err()
            .0
            .contains("another channel"));
        assert!(parse(&env("ticker", &trade))
            .unwrap_err()
            .0
            .contains("unknown channel"));
        let book = fixture("doc_book_update.json");
        assert!(parse(&env("trade", &book))
            .unwrap_err()
            .0
            .contains("another channel"));
        // an empty data list: no events, no error
        assert_eq!(
            parse(&env(
                "trade",
                br#"{"channel":"book","type":"update","data":[]}"#
            ))
            .unwrap(),
            vec![]
        );
    }

    #[test]
    fn bad_frames_raise_parse_error() {
        for payload in [
            &b"not json"[..],
            br#"{"channel":"heartbeat"}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[]}]}"#,
            br#"{"channel":"book","type":"delta","data":[]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":-1,"qty":1}],"asks":[],"checksum":1}]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":"NaN","qty":1}],"asks":[],"checksum":1}]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":4294967296}]}"#,
            br#"{"channel":"trade","type":"update","data":[{"symbol":"X","side":"bid","price":1,"qty":1,"ord_type":"market","trade_id":1,"timestamp":"2023-09-25T07:49:37Z"}]}"#,
            br#"{"channel":"trade","type":"update","data":[{"symbol":"X","side":"buy","price":1,"qty":1,"ord_type":"market","trade_id":1,"timestamp":"yesterday"}]}"#,
            // more msgspec / Python checks
            br#"{"channel":"trade","type":"update","data":[{"symbol":"X","side":"buy","price":1,"qty":0,"ord_type":"market","trade_id":1,"timestamp":"2023-09-25T07:49:37Z"}]}"#,
            br#"{"channel":"trade","type":"update","data":[{"symbol":"X","side":"buy","price":1,"qty":1,"ord_type":"market","trade_id":1.0,"timestamp":"2023-09-25T07:49:37Z"}]}"#,
            br#"{"channel":"trade","type":"update","data":[{"symbol":"X","side":"buy","price":true,"qty":1,"ord_type":"market","trade_id":1,"timestamp":"2023-09-25T07:49:37Z"}]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":"abc","qty":1}],"asks":[],"checksum":1}]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":-1}]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":1,"timestamp":5}]}"#,
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":1,"timestamp":"2023-09-25T07:49:37"}]}"#,
            br#"{"type":"update","data":[]}"#,
            br#"{"channel":"ticker","type":"update","data":[]}"#,
            br#"{"channel":"book","type":"update","data":[],"channel":"trade"}"#,
        ] {
            assert!(parse_frame(payload, 0).is_err(), "{}", String::from_utf8_lossy(payload));
        }
        for name in [
            "doc_heartbeat.json",
            "doc_status.json",
            "doc_subscribe_ack.json",
            "doc_subscribe_error.json",
        ] {
            assert!(parse_frame(&fixture(name), 0).is_err(), "{name}");
        }
    }

    #[test]
    fn accepted_like_msgspec() {
        // tag last, duplicated type (last wins), strings as decimals, null timestamp, -0 qty
        let out = parse_frame(
            br#"{"type":"update","data":[{"symbol":"X","bids":[{"price":"10","qty":-0.0},{"price":1,"qty":-0},{"qty":1E+2,"price":0.1e1}],"asks":[],"checksum":0,"timestamp":null}],"type":"snapshot","channel":"book"}"#,
            0,
        )
        .unwrap();
        let [MarketEvent::Snapshot(s)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(s.event_time_ms, 0);
        assert_eq!(s.bids[0].0.to_string(), "10");
        assert!(s.bids[0].1.is_zero() && s.bids[0].1.is_sign_negative());
        assert!(s.bids[1].1.is_zero() && !s.bids[1].1.is_sign_negative());
        assert_eq!(s.bids[2], (d("1"), d("100")));
        // a bad level in a list overwritten by a duplicate key is never checked
        assert!(parse_frame(
            br#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":-1,"qty":1}],"bids":[],"asks":[],"checksum":1}]}"#,
            0
        )
        .is_ok());
    }

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
                let channel = channel.as_str();
                let events = parse_envelope(&env(channel, frame.as_bytes())).unwrap();
                for e in &events {
                    match e {
                        MarketEvent::Snapshot(s) => assert!(s.checksum.is_some()),
                        MarketEvent::Delta(dl) => assert!(dl.checksum.is_some()),
                        _ => panic!("{name}"),
                    }
                }
            }
        }
    }
}
