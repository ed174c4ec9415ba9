//! Coinbase Advanced Trade market-data frames -> normalised events (`jobs/parse/coinbase.py`).
//!
//! Envelope channels: `depth` (`l2_data` messages, in-band snapshots included) and `trade`
//! (`market_trades`). A message's `sequence_num` numbers the messages of one connection.
//! `side` of a market trade is the maker's side (`SIDE_IS_MAKER`): the taker is the other one.

use std::borrow::Cow;

use super::isotime::{self, IsoError};
use super::json::{missing, Json, R};
use super::pydec::{py_decimal, PyDec};
use super::{perr, pyrepr};
use crate::dec::Dec;
use crate::envelope::RawEnvelope;
use crate::events::{BookDelta, BookSnapshot, Level, MarketEvent, ParseError, Side, Trade};
use crate::validate::plain_number;

pub const EXCHANGE: &str = "coinbase";

/// Which side a market_trades `side` names (see coinbase.py).
pub const SIDE_IS_MAKER: bool = true;

/// One envelope -> its events (the registry entry for `coinbase`).
pub fn parse(env: &RawEnvelope<'_>) -> Result<Vec<MarketEvent>, ParseError> {
    match env.channel {
        "depth" => parse_depth(env.payload, env.symbol, env.receive_time_ns),
        "trade" => parse_trades(env.payload, env.symbol, env.receive_time_ns),
        other => Err(perr(format!(
            "coinbase: unknown channel {}",
            pyrepr::str_repr(other)
        ))),
    }
}

/// RFC 3339 text -> Unix milliseconds (`datetime.fromisoformat`, aware only).
pub fn timestamp_ms(text: &str) -> Result<i64, ParseError> {
    isotime::timestamp_ms(text).map_err(|e| match e {
        IsoError::Invalid => perr(format!(
            "coinbase: bad timestamp {}",
            pyrepr::str_repr(text)
        )),
        IsoError::Naive => perr(format!(
            "coinbase: timestamp without a time zone {}",
            pyrepr::str_repr(text)
        )),
    })
}

/// `_decimal`: `Decimal(text)`, finite and not negative.
fn decimal(text: &str, what: &str) -> Result<Dec, ParseError> {
    if !plain_number(text) {
        return Err(perr(format!(
            "coinbase: bad decimal {what} {}",
            pyrepr::str_repr(text)
        )));
    }
    match py_decimal(text) {
        PyDec::Finite(d) if !d.is_sign_negative() || d.is_zero() => Ok(d),
        PyDec::Unrepresentable => Err(perr(format!(
            "coinbase: decimal {what} {} out of the Rust parser's range",
            pyrepr::str_repr(text)
        ))),
        _ => Err(perr(format!(
            "coinbase: bad decimal {what} {}",
            pyrepr::str_repr(text)
        ))),
    }
}

/// `sequence_num`: an int >= 0 (Python allows any size; here it must fit i64).
fn sequence_num(j: &mut Json<'_>) -> R<i64> {
    let text = j.int_text()?;
    if text.starts_with('-') && text != "-0" {
        return Err(perr("Expected `int` >= 0 - at `$.sequence_num`"));
    }
    text.parse::<i64>()
        .map(|v| v.max(0))
        .map_err(|_| perr(format!("sequence_num {text} does not fit 64 bits")))
}

/// Levels of one `updates` list, split by side, decimals converted (errors deferred: Python
/// converts after decoding, only the surviving value of a duplicated key counts).
struct Sides {
    bids: Vec<Level>,
    asks: Vec<Level>,
    bad: Option<ParseError>,
}

fn updates(j: &mut Json<'_>) -> R<Sides> {
    let mut out = Sides {
        bids: Vec::new(),
        asks: Vec::new(),
        bad: None,
    };
    j.begin_array()?;
    let mut first = true;
    while j.next_item(&mut first)? {
        // L2Level {side, event_time, price_level, new_quantity}
        j.begin_object()?;
        let (mut side, mut event_time, mut price, mut qty): (
            _,
            _,
            Option<Cow<'_, str>>,
            Option<Cow<'_, str>>,
        ) = (None, false, None, None);
        let mut f = true;
        while let Some(key) = j.next_key(&mut f)? {
            match &*key {
                b"side" => {
                    side = Some(j.enum_value(&["bid", "offer"], "$.events[...].updates[...].side")?)
                }
                b"event_time" => {
                    j.string()?;
                    event_time = true;
                }
                b"price_level" => price = Some(j.string()?),
                b"new_quantity" => qty = Some(j.string()?),
                _ => j.skip()?,
            }
        }
        let side = side.ok_or_else(|| missing("side"))?;
        if !event_time {
            return Err(missing("event_time"));
        }
        let price = price.ok_or_else(|| missing("price_level"))?;
        let qty = qty.ok_or_else(|| missing("new_quantity"))?;
        if out.bad.is_some() {
            continue;
        }
        match (
            decimal(&price, "price_level"),
            decimal(&qty, "new_quantity"),
        ) {
            (Ok(p), Ok(q)) => if side == "bid" {
                &mut out.bids
            } else {
                &mut out.asks
            }
            .push((p, q)),
            (Err(e), _) | (_, Err(e)) => out.bad = Some(e),
        }
    }
    Ok(out)
}

/// One `l2_data` event, decoded.
struct L2Event {
    is_update: bool,
    sides: Sides,
    /// product_id differs from the envelope's symbol (checked when the message is kept)
    mismatch: Option<String>,
}

fn l2_event(j: &mut Json<'_>, symbol: &str) -> R<L2Event> {
    j.begin_object()?;
    let (mut ty, mut product, mut sides) = (None, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"type" => ty = Some(j.enum_value(&["snapshot", "update"], "$.events[...].type")?),
            b"product_id" => product = Some(j.string()?),
            b"updates" => sides = Some(updates(j)?),
            _ => j.skip()?,
        }
    }
    let ty = ty.ok_or_else(|| missing("type"))?;
    let product = product.ok_or_else(|| missing("product_id"))?;
    let sides = sides.ok_or_else(|| missing("updates"))?;
    Ok(L2Event {
        is_update: ty == "update",
        sides,
        mismatch: (product != symbol).then(|| product.into_owned()),
    })
}

/// What `l2_data` and `market_trades` messages share: `channel` (optional, but if present it
/// must be `channel`), `client_id`, `timestamp`, `sequence_num`, and `events`, read by
/// `events`; nothing may follow the object.
fn message<'a, T>(
    j: &mut Json<'a>,
    channel: &str,
    mut events: impl FnMut(&mut Json<'a>) -> R<T>,
) -> R<(Cow<'a, str>, i64, T)> {
    j.begin_object()?;
    let (mut timestamp, mut seq, mut found) = (None, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"channel" => j.tag(channel, "$.channel")?,
            b"client_id" => {
                j.string()?;
            }
            b"timestamp" => timestamp = Some(j.string()?),
            b"sequence_num" => seq = Some(sequence_num(j)?),
            b"events" => found = Some(events(j)?),
            _ => j.skip()?,
        }
    }
    j.finish()?;
    Ok((
        timestamp.ok_or_else(|| missing("timestamp"))?,
        seq.ok_or_else(|| missing("sequence_num"))?,
        found.ok_or_else(|| missing("events"))?,
    ))
}

/// An `l2_data` message -> a BookSnapshot per snapshot event, and one BookDelta for each run
/// of consecutive update events (they share the message's `sequence_num`).
pub fn parse_depth(
    payload: &[u8],
    symbol: &str,
    receive_time_ns: i64,
) -> Result<Vec<MarketEvent>, ParseError> {
    let mut j = Json::new(payload);
    let (timestamp, seq, events) = message(&mut j, "l2_data", |j| {
        let mut list = Vec::new();
        j.begin_array()?;
        let mut f = true;
        while j.next_item(&mut f)? {
            list.push(l2_event(j, symbol)?);
        }
        Ok(list)
    })
    .map_err(|e| perr(format!("coinbase: cannot parse l2_data message: {}", e.0)))?;
    let event_time_ms = timestamp_ms(&timestamp)?;
    let mut out: Vec<MarketEvent> = Vec::new();
    let mut pending_bids: Vec<Level> = Vec::new();
    let mut pending_asks: Vec<Level> = Vec::new();
    let delta = |bids: Vec<Level>, asks: Vec<Level>| {
        MarketEvent::Delta(BookDelta {
            exchange: EXCHANGE.to_string(),
            symbol: symbol.to_string(),
            first_id: seq,
            last_id: seq,
            event_time_ms,
            receive_time_ns,
            bids,
            asks,
            checksum: None,
        })
    };
    for event in events {
        if let Some(product) = event.mismatch {
            return Err(perr(format!(
                "coinbase: l2_data event for {product} keyed as {symbol}"
            )));
        }
        if let Some(e) = event.sides.bad {
            return Err(e);
        }
        let (mut bids, mut asks) = (event.sides.bids, event.sides.asks);
        if event.is_update {
            if pending_bids.is_empty() {
                pending_bids = bids;
            } else {
                pending_bids.append(&mut bids);
            }
            if pending_asks.is_empty() {
                pending_asks = asks;
            } else {
                pending_asks.append(&mut asks);
            }
            continue;
        }
        if !pending_bids.is_empty() || !pending_asks.is_empty() {
            out.push(delta(
                std::mem::take(&mut pending_bids),
                std::mem::take(&mut pending_asks),
            ));
        }
        out.push(MarketEvent::Snapshot(BookSnapshot {
            exchange: EXCHANGE.to_string(),
            symbol: symbol.to_string(),
            last_id: seq,
            receive_time_ns,
            bids,
            asks,
            event_time_ms,
            checksum: None,
        }));
    }
    if !pending_bids.is_empty() || !pending_asks.is_empty() {
        out.push(delta(pending_bids, pending_asks));
    }
    if out.is_empty() {
        return Err(perr("coinbase: l2_data message without events"));
    }
    Ok(out)
}

/// The aggressor's side of a market_trades `side` (see SIDE_IS_MAKER).
pub fn taker_side(side: &str) -> Side {
    let buy = side == "BUY";
    if SIDE_IS_MAKER {
        if buy {
            Side::Sell
        } else {
            Side::Buy
        } // a resting bid was hit: the taker sold
    } else if buy {
        Side::Buy
    } else {
        Side::Sell
    }
}

/// One decoded market trade: checks deferred to when the message is kept.
struct RawTrade<'a> {
    trade_id: Cow<'a, str>,
    product_id: Cow<'a, str>,
    price: Cow<'a, str>,
    size: Cow<'a, str>,
    side: &'static str,
    time: Cow<'a, str>,
}

fn market_trade<'a>(j: &mut Json<'a>) -> R<RawTrade<'a>> {
    j.begin_object()?;
    let (mut trade_id, mut product_id, mut price, mut size, mut side, mut time) =
        (None, None, None, None, None, None);
    let mut first = true;
    while let Some(key) = j.next_key(&mut first)? {
        match &*key {
            b"trade_id" => trade_id = Some(j.string()?),
            b"product_id" => product_id = Some(j.string()?),
            b"price" => price = Some(j.string()?),
            b"size" => size = Some(j.string()?),
            b"side" => {
                side = Some(j.enum_value(&["BUY", "SELL"], "$.events[...].trades[...].side")?)
            }
            b"time" => time = Some(j.string()?),
            _ => j.skip()?,
        }
    }
    Ok(RawTrade {
        trade_id: trade_id.ok_or_else(|| missing("trade_id"))?,
        product_id: product_id.ok_or_else(|| missing("product_id"))?,
        price: price.ok_or_else(|| missing("price"))?,
        size: size.ok_or_else(|| missing("size"))?,
        side: side.ok_or_else(|| missing("side"))?,
        time: time.ok_or_else(|| missing("time"))?,
    })
}

/// A `market_trades` message -> one Trade per trade (snapshot trades included).
pub fn parse_trades(
    payload: &[u8],
    symbol: &str,
    receive_time_ns: i64,
) -> Result<Vec<MarketEvent>, ParseError> {
    let mut j = Json::new(payload);
    let (timestamp, seq, events) = message(&mut j, "market_trades", |j| {
        // list[MarketTradesEvent {type, trades}]: kept as one flat list
        let mut trades: Vec<RawTrade<'_>> = Vec::new();
        j.begin_array()?;
        let mut f = true;
        while j.next_item(&mut f)? {
            j.begin_object()?;
            let (mut ty, mut list) = (false, None);
            let mut g = true;
            while let Some(key) = j.next_key(&mut g)? {
                match &*key {
                    b"type" => {
                        j.enum_value(&["snapshot", "update"], "$.events[...].type")?;
                        ty = true;
                    }
                    b"trades" => {
                        let mut ts = Vec::new();
                        j.begin_array()?;
                        let mut h = true;
                        while j.next_item(&mut h)? {
                            ts.push(market_trade(j)?);
                        }
                        list = Some(ts);
                    }
                    _ => j.skip()?,
                }
            }
            if !ty {
                return Err(missing("type"));
            }
            trades.extend(list.ok_or_else(|| missing("trades"))?);
        }
        Ok(trades)
    })
    .map_err(|e| {
        perr(format!(
            "coinbase: cannot parse market_trades message: {}",
            e.0
        ))
    })?;
    let event_time_ms = timestamp_ms(&timestamp)?;
    let mut out = Vec::with_capacity(events.len());
    for t in events {
        if t.product_id != symbol {
            return Err(perr(format!(
                "coinbase: trade of {} keyed as {symbol}",
                t.product_id
            )));
        }
        let price = decimal(&t.price, "price")?;
        let size = decimal(&t.size, "size")?;
        let trade_time_ms = timestamp_ms(&t.time)?;
        out.push(MarketEvent::Trade(Trade {
            exchange: EXCHANGE.to_string(),
            symbol: symbol.to_string(),
            trade_id: t.trade_id.into_owned(),
            price,
            size,
            taker_side: taker_side(t.side),
            trade_time_ms,
            event_time_ms,
            receive_time_ns,
            sequence: seq,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_envelope;

    const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/coinbase/"
    );

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIX}{name}")).expect(name)
    }

    fn fixture_str(name: &str) -> String {
        String::from_utf8(fixture(name)).unwrap()
    }

    fn d(s: &str) -> Dec {
        s.parse().unwrap()
    }

    fn env<'a>(channel: &'a str, payload: &'a [u8], symbol: &'a str, seq: i64) -> RawEnvelope<'a> {
        RawEnvelope {
            instrument: symbol,
            exchange: "coinbase",
            symbol,
            channel,
            receive_time_ns: 1_700_000_000_000_000_000 + seq,
            connection_id: "c1",
            connection_seq: seq,
            payload,
        }
    }

    fn texts(levels: &[Level]) -> Vec<(String, String)> {
        levels
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn documentation_l2_snapshot() {
        let payload = fixture("doc_l2_snapshot.json");
        let out = parse(&env("depth", &payload, "BTC-USD", 7)).unwrap();
        let [MarketEvent::Snapshot(snap)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (snap.exchange.as_str(), snap.symbol.as_str(), snap.last_id),
            ("coinbase", "BTC-USD", 0)
        );
        assert_eq!(
            texts(&snap.bids),
            [
                ("21921.73".into(), "0.06317902".into()),
                ("21921.3".into(), "0.02".into())
            ]
        );
        assert!(snap.asks.is_empty());
        assert_eq!(snap.event_time_ms, 1675974770714);
        assert_eq!(snap.receive_time_ns, 1_700_000_000_000_000_007);
    }

    #[test]
    fn documentation_l2_update() {
        let payload = fixture("doc_l2_update.json");
        let out = parse(&env("depth", &payload, "BTC-USD", 0)).unwrap();
        let [MarketEvent::Delta(delta)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((delta.first_id, delta.last_id), (2, 2));
        assert_eq!(delta.bids, vec![(d("21921.3"), d("0"))]);
        assert_eq!(delta.asks, vec![(d("21923.85"), d("0.1488"))]);
        assert_eq!(delta.event_time_ms, 1675974771327);
    }

    #[test]
    fn documentation_market_trades_taker_side() {
        let payload = fixture("doc_market_trades.json");
        let out = parse(&env("trade", &payload, "ETH-USD", 0)).unwrap();
        let [MarketEvent::Trade(t)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (t.symbol.as_str(), t.trade_id.as_str()),
            ("ETH-USD", "000000000")
        );
        assert_eq!((t.price, t.size), (d("1260.01"), d("0.3")));
        assert_eq!(t.taker_side, Side::Sell);
        assert_eq!(t.trade_time_ms, 1565815347265);
        assert_eq!(t.event_time_ms, 1675973975396);
        assert_eq!(t.sequence, 0);
    }

    #[test]
    fn sync_lost_marker() {
        let payload = br#"{"reason":"sequence_num gap","expected":41,"got":43}"#;
        let out = parse_envelope(&env("sync_lost", payload, "BTC-USD", 0)).unwrap();
        let [MarketEvent::SyncLost(lost)] = &out[..] else {
            panic!()
        };
        assert_eq!(lost.symbol, "BTC-USD");
        assert_eq!(lost.reason, "sequence_num gap (expected 41, got 43)");
        let e = parse_envelope(&env("sync_lost", br#"{"expected": 1}"#, "BTC-USD", 0)).unwrap_err();
        assert!(e.0.contains("without a reason"));
    }

    #[test]
    fn timestamps() {
        for (text, ms) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2019-08-14T20:42:27.265Z", 1565815347265),
            ("2023-02-09T20:19:35.39625135Z", 1675973975396),
            ("2023-02-09T20:32:50.714964855Z", 1675974770714),
        ] {
            assert_eq!(timestamp_ms(text).unwrap(), ms);
        }
    }

    #[test]
    fn bad_frames_raise_parse_error() {
        let update = fixture_str("doc_l2_update.json");
        let trades = fixture_str("doc_market_trades.json");
        let neg_seq = |s: &str| {
            let i = s.find("\"sequence_num\"").unwrap();
            let j = i + s[i..].find(',').unwrap();
            format!("{}\"sequence_num\":-1{}", &s[..i], &s[j..])
        };
        let cases: Vec<(&str, String, &str)> = vec![
            ("depth", "not json".into(), "cannot parse l2_data"),
            ("depth", trades.clone(), "cannot parse l2_data"),
            ("depth", update.replace("\"0.1488\"", "\"abc\""), "bad decimal"),
            ("depth", update.replace("\"0.1488\"", "\"-1\""), "bad decimal"),
            ("depth", update.replace("\"offer\"", "\"ask\""), "cannot parse"),
            ("depth", update.replace("51.327893447Z", "51"), "timestamp"),
            ("depth", r#"{"channel":"l2_data","timestamp":"2023-02-09T20:32:50Z","sequence_num":1,"events":[]}"#.into(), "without events"),
            ("trade", update.clone(), "cannot parse market_trades"),
            ("depth", neg_seq(&update), "cannot parse l2_data"),
            ("trade", neg_seq(&trades), "cannot parse market_trades"),
            ("trade", trades.replace("\"BUY\"", "\"buy\""), "cannot parse"),
            ("sync_lost", r#"{"reason": 5}"#.into(), "without a reason"),
            ("sync_lost", "[1, 2".into(), "cannot parse sync_lost"),
            ("ticker", "{}".into(), "unknown channel"),
            // more msgspec strictness and Python checks
            ("depth", update.replace("\"0.1488\"", "\"NaN\""), "bad decimal"),
            ("depth", update.replace("\"l2_data\"", "\"level2\""), "cannot parse"),
            ("depth", update.replace("\"client_id\":\"\"", "\"client_id\":null"), "cannot parse"),
            ("depth", r#"{"channel":"l2_data","timestamp":"2023-02-09T20:32:50Z","sequence_num":1,"events":[{"type":"update","product_id":"BTC-USD","updates":[]}]}"#.into(), "without events"),
        ];
        for (channel, payload, message) in cases {
            let symbol = if payload.contains("ETH-USD") {
                "ETH-USD"
            } else {
                "BTC-USD"
            };
            let e =
                parse_envelope(&env(channel, payload.as_bytes(), symbol, 0)).expect_err(&payload);
            assert!(e.0.contains(message), "{payload}: {e}");
        }
    }

    #[test]
    fn frame_keyed_under_another_product_is_an_error() {
        let update = fixture("doc_l2_update.json");
        let e = parse_envelope(&env("depth", &update, "ETH-USD", 0)).unwrap_err();
        assert!(e.0.contains("keyed as ETH-USD"), "{e}");
        let trades = fixture("doc_market_trades.json");
        let e = parse_envelope(&env("trade", &trades, "BTC-USD", 0)).unwrap_err();
        assert!(e.0.contains("keyed as BTC-USD"), "{e}");
    }

    #[test]
    fn update_events_of_one_message_become_one_delta() {
        let mut frame: serde_json::Value =
            serde_json::from_slice(&fixture("doc_l2_update.json")).unwrap();
        let mut extra = frame["events"][0].clone();
        extra["updates"] = serde_json::json!([{"side": "bid", "event_time": "2023-02-09T20:32:51Z",
                                               "price_level": "21921.3", "new_quantity": "0.5"}]);
        frame["events"].as_array_mut().unwrap().push(extra);
        let payload = serde_json::to_vec(&frame).unwrap();
        let out = parse(&env("depth", &payload, "BTC-USD", 0)).unwrap();
        let [MarketEvent::Delta(delta)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            texts(&delta.bids),
            [
                ("21921.3".into(), "0".into()),
                ("21921.3".into(), "0.5".into())
            ]
        );
    }

    #[test]
    fn snapshots_split_update_runs() {
        let lvl = |p: &str| {
            format!(r#"{{"side":"bid","event_time":"x","price_level":"{p}","new_quantity":"1"}}"#)
        };
        let ev = |ty: &str, p: &str| {
            format!(
                r#"{{"type":"{ty}","product_id":"BTC-USD","updates":[{}]}}"#,
                lvl(p)
            )
        };
        let payload = format!(
            r#"{{"timestamp":"2023-02-09T20:32:50Z","sequence_num":9,"events":[{},{},{},{},{}]}}"#,
            ev("update", "1"),
            ev("update", "2"),
            ev("snapshot", "3"),
            ev("update", "4"),
            ev("snapshot", "5")
        );
        let out = parse(&env("depth", payload.as_bytes(), "BTC-USD", 0)).unwrap();
        let kinds: Vec<String> = out
            .iter()
            .map(|e| match e {
                MarketEvent::Delta(d) => format!("D{}", d.bids.len()),
                MarketEvent::Snapshot(s) => format!("S{}", s.bids.len()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kinds, ["D2", "S1", "D1", "S1"]);
        // an empty trades message is no error: no events
        let empty = br#"{"channel":"market_trades","timestamp":"2023-02-09T20:32:50Z","sequence_num":1,"events":[{"type":"update","trades":[]}]}"#;
        assert_eq!(parse(&env("trade", empty, "BTC-USD", 0)).unwrap(), vec![]);
        // heartbeats / subscriptions frames are not l2_data / market_trades messages
        for name in ["doc_heartbeats.json", "doc_subscriptions.json"] {
            let p = fixture(name);
            assert!(parse(&env("depth", &p, "BTC-USD", 0)).is_err());
            assert!(parse(&env("trade", &p, "BTC-USD", 0)).is_err());
        }
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
                let (channel, payload) = (channel.as_str(), frame.as_bytes());
                let events = parse_envelope(&env(channel, payload, "BTC-USD", 0)).unwrap();
                assert!(!events.is_empty(), "{name}");
            }
        }
    }
}
