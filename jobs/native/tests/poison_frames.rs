//! Issue 16's reproducers through the live job's entry point (`StreamBooks::process_bundle`):
//! each poison frame leaves as a dead letter with its reason and its exact bytes, the books
//! stay right (or resync), nothing panics, and no frame costs more than a bounded amount.

use std::time::{Duration, Instant};

use serde_json::Value;
use tickflow_native::dec::parse_dec;
use tickflow_native::envelope::{encode_envelope, RawEnvelope};
use tickflow_native::instrument::Rules;
use tickflow_native::stream::{write_bundle, LiveRules, StreamBooks};
use tickflow_native::validate::Limits;

const KEY: &str = "BNB-BTC";
const RX_MS: i64 = 1_672_515_782_200;

fn new_core() -> StreamBooks {
    let rules = Rules {
        top_n: 10,
        snapshot_interval_ms: 1000,
        max_levels: 5000,
        max_buffered: 10_000,
        nbbo_stale_after_ms: 10_000,
        bar_intervals_ms: vec![1000, 60_000],
        depth_band_bps: parse_dec("10").unwrap(),
        trade_dedup_ms: 60_000,
    };
    let live = LiveRules {
        stale_after_ms: 30_000,
        resync_retry_ms: 10_000,
        redis_prefix: "tf".into(),
    };
    let mut core = StreamBooks::new(rules, live, Vec::new());
    core.set_limits(Limits {
        max_event_ahead_ms: Some(300_000),
        max_event_behind_ms: None,
    });
    core
}

fn envelope(exchange: &str, symbol: &str, channel: &str, payload: &[u8]) -> Vec<u8> {
    encode_envelope(&RawEnvelope {
        instrument: KEY,
        exchange,
        symbol,
        channel,
        receive_time_ns: RX_MS * 1_000_000,
        connection_id: "c1",
        connection_seq: 1,
        payload,
    })
}

fn bundle(values: &[&[u8]]) -> Vec<u8> {
    let frames: Vec<(i64, &[u8])> = values.iter().map(|v| (RX_MS, *v)).collect();
    write_bundle(0, &frames)
}

/// What one call produced: dead letters (JSON), rows per table, resync requests, the LIVE
/// books written to Redis (bids, asks).
#[derive(Default, Debug)]
struct Out {
    dead: Vec<Value>,
    rows: Vec<(String, u32)>,
    resyncs: Vec<Value>,
    books: Vec<(String, Value, Value)>,
}

impl Out {
    fn rows(&self, table: &str) -> u32 {
        self.rows
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, n)| n)
            .sum()
    }
}

fn run(core: &mut StreamBooks, key: &str, values: &[&[u8]], watermark_ms: i64) -> Out {
    core.process_bundle(key, &bundle(values), watermark_ms, RX_MS)
        .unwrap();
    take(core)
}

fn take(core: &mut StreamBooks) -> Out {
    let mut out = Out::default();
    if let Some(blob) = core.take_blob() {
        let mut pos = 1;
        while pos < blob.len() {
            let kind = blob[pos];
            let name_len = u16::from_le_bytes([blob[pos + 1], blob[pos + 2]]) as usize;
            let name = String::from_utf8(blob[pos + 3..pos + 3 + name_len].to_vec()).unwrap();
            pos += 3 + name_len;
            let count = u32::from_le_bytes(blob[pos..pos + 4].try_into().unwrap());
            let len = u32::from_le_bytes(blob[pos + 4..pos + 8].try_into().unwrap()) as usize;
            let payload = &blob[pos + 8..pos + 8 + len];
            pos += 8 + len;
            if kind == 1 {
                out.rows.push((name, count));
                continue;
            }
            let mut p = 0;
            for _ in 0..count {
                let n = u32::from_le_bytes(payload[p..p + 4].try_into().unwrap()) as usize;
                let record: Value = serde_json::from_slice(&payload[p + 4..p + 4 + n]).unwrap();
                p += 4 + n;
                match name.as_str() {
                    "deadletter" => out.dead.push(record),
                    "control" => out.resyncs.push(record),
                    _ => {}
                }
            }
        }
    }
    for (nbbo, keys, args) in core.take_redis(0) {
        if !nbbo && args[1] == b"LIVE" {
            let levels = |a: &[u8]| serde_json::from_slice::<Value>(a).unwrap();
            out.books
                .push((keys[0].clone(), levels(&args[3]), levels(&args[4])));
        }
    }
    out
}

fn b64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The one dead letter of a call: its reason contains `why`, it carries `bytes` exactly.
fn assert_dead_letter(out: &Out, why: &str, bytes: &[u8]) {
    assert_eq!(out.dead.len(), 1, "{out:?}");
    let letter = &out.dead[0];
    assert!(
        letter["error"].as_str().unwrap().contains(why),
        "{letter} lacks {why:?}"
    );
    assert_eq!(
        letter["value_b64"].as_str().unwrap(),
        b64(bytes),
        "{letter}"
    );
}

fn binance_snapshot(last: i64) -> Vec<u8> {
    format!(
        r#"{{"lastUpdateId":{last},"bids":[["0.00240000","10.0"]],"asks":[["0.00260000","5.0"]]}}"#
    )
    .into_bytes()
}

fn binance_depth(first: &str, last: &str, bids: &str) -> Vec<u8> {
    format!(r#"{{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":{first},"u":{last},"b":{bids},"a":[]}}"#).into_bytes()
}

fn binance_trade(t: &str, price: &str, size: &str) -> Vec<u8> {
    format!(r#"{{"e":"trade","E":1672515782136,"s":"BNBBTC","t":7,"p":"{price}","q":"{size}","T":{t},"m":true,"M":true}}"#)
        .into_bytes()
}

/// A core with a LIVE Binance book (snapshot at update id 100).
fn live_binance() -> StreamBooks {
    let mut core = new_core();
    let out = run(
        &mut core,
        KEY,
        &[&envelope(
            "binance",
            "BNBBTC",
            "snapshot",
            &binance_snapshot(100),
        )],
        i64::MIN,
    );
    assert_eq!(out.books.len(), 1, "{out:?}");
    core
}

#[test]
fn binance_levels_that_are_not_prices_or_sizes_are_dead_letters_and_the_book_stays() {
    for (level, why) in [
        (r#"[["NaN","1"]]"#, "bad decimal"),
        (r#"[["sNaN","1"]]"#, "bad decimal"),
        (r#"[["Infinity","1"]]"#, "bad decimal"),
        (r#"[["1e999999999","1"]]"#, "bad decimal"),
        (r#"[["0.0025","1e-999999999"]]"#, "bad decimal"),
        (r#"[["0.0025","-1"]]"#, "size -1 is negative"),
        (r#"[["0.0025"," 1"]]"#, "bad decimal"),
        (r#"[["0.0025","１２"]]"#, "bad decimal"),
        (r#"[["0","1"]]"#, "price 0 is not > 0"),
        (r#"[["-0.0025","1"]]"#, "is not > 0"),
        (
            r#"[["100000000000000000000","1"]]"#,
            "does not fit Decimal(38, 18)",
        ),
        (
            r#"[["0.0025","0.0000000000000000001"]]"#,
            "does not fit Decimal(38, 18)",
        ),
    ] {
        let mut core = live_binance();
        let payload = binance_depth("101", "101", level);
        let out = run(
            &mut core,
            KEY,
            &[&envelope("binance", "BNBBTC", "depth", &payload)],
            i64::MIN,
        );
        assert_dead_letter(&out, why, &payload);
        assert!(
            out.books.is_empty() && out.resyncs.is_empty(),
            "{level}: {out:?}"
        );
        // nothing of it was applied: the next update continues from 100
        let next = binance_depth("101", "101", r#"[["0.0025","3"]]"#);
        let out = run(
            &mut core,
            KEY,
            &[&envelope("binance", "BNBBTC", "depth", &next)],
            i64::MIN,
        );
        assert!(out.dead.is_empty(), "{out:?}");
        assert_eq!(
            out.books[0].1,
            serde_json::json!([["0.0025", "3"], ["0.00240000", "10.0"]]),
            "{level}"
        );
    }
}

#[test]
fn binance_update_id_jumps_are_gaps_not_a_frozen_live_book() {
    // u = 2**63 does not fit: a dead letter
    let mut core = live_binance();
    let payload = binance_depth("101", "9223372036854775808", "[]");
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "depth", &payload)],
        i64::MIN,
    );
    assert_dead_letter(&out, "does not fit 64 bits", &payload);
    // one message spanning 2**62 ids: rejected
    let payload = binance_depth("101", "4611686018427387904", "[]");
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "depth", &payload)],
        i64::MIN,
    );
    assert_dead_letter(&out, "implausible range", &payload);
    // a message that continues nothing we hold, far ahead: a gap, the book resyncs
    let payload = binance_depth("4611686018427387903", "4611686018427387904", "[]");
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "depth", &payload)],
        i64::MIN,
    );
    assert!(out.dead.is_empty(), "{out:?}");
    assert_eq!(out.resyncs.len(), 1, "{out:?}");
    assert!(
        out.resyncs[0]["reason"]
            .as_str()
            .unwrap()
            .contains("implausible sequence jump"),
        "{out:?}"
    );
    // a fresh snapshot makes it LIVE, and later updates apply (none IGNORED for a huge id)
    let out = run(
        &mut core,
        KEY,
        &[&envelope(
            "binance",
            "BNBBTC",
            "snapshot",
            &binance_snapshot(200),
        )],
        i64::MIN,
    );
    assert_eq!(out.books.len(), 1, "{out:?}");
    let next = binance_depth("201", "201", r#"[["0.0025","3"]]"#);
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "depth", &next)],
        i64::MIN,
    );
    assert_eq!(
        out.books[0].1[0],
        serde_json::json!(["0.0025", "3"]),
        "{out:?}"
    );
    // a snapshot at 2**62 while resyncing: the next real update is a gap, not IGNORED forever
    let mut core = new_core();
    run(
        &mut core,
        KEY,
        &[&envelope(
            "binance",
            "BNBBTC",
            "snapshot",
            &binance_snapshot(4_611_686_018_427_387_904),
        )],
        i64::MIN,
    );
    let next = binance_depth("101", "102", r#"[["0.0025","3"]]"#);
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "depth", &next)],
        i64::MIN,
    );
    assert!(
        out.resyncs
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("implausible")),
        "{out:?}"
    );
}

#[test]
fn trade_times_out_of_the_columns_range_are_dead_letters() {
    for (t, why) in [
        ("100000000000000000", "outside 1970..2149"),
        ("-1", "outside 1970..2149"),
        ("1672602182200", "after the receive time"), // one day ahead
        ("1675107782200", "after the receive time"), // 30 days ahead
    ] {
        let mut core = live_binance();
        let payload = binance_trade(t, "0.0025", "1");
        let started = Instant::now();
        let out = run(
            &mut core,
            KEY,
            &[&envelope("binance", "BNBBTC", "trade", &payload)],
            i64::MIN,
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_dead_letter(&out, why, &payload);
        assert_eq!(out.rows("trades"), 0);
    }
}

#[test]
fn a_trade_whose_notional_overflows_is_refused_as_a_row_not_wrapped() {
    let mut core = live_binance();
    let payload = binance_trade(
        "1672515782136",
        "99999999999999999999",
        "99999999999999999999",
    );
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "trade", &payload)],
        i64::MIN,
    );
    // the trade row itself fits; the bars (price x size) cannot: refused with a reason
    assert!(out.dead.is_empty(), "{out:?}");
    let out = run(&mut core, KEY, &[], RX_MS + 120_000);
    core.advance(KEY, RX_MS + 120_000);
    let more = take(&mut core);
    let dead: Vec<&Value> = out.dead.iter().chain(more.dead.iter()).collect();
    assert!(!dead.is_empty(), "{out:?} {more:?}");
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().unwrap().contains("refused")),
        "{dead:?}"
    );
}

#[test]
fn coinbase_zero_price_and_times_before_1970_are_dead_letters() {
    let ts = "2022-12-31T19:43:00Z";
    let snapshot = format!(
        r#"{{"channel":"l2_data","timestamp":"{ts}","sequence_num":0,"events":[{{"type":"snapshot","product_id":"BTC-USD","updates":[{{"side":"bid","event_time":"{ts}","price_level":"100","new_quantity":"1"}},{{"side":"offer","event_time":"{ts}","price_level":"101","new_quantity":"1"}}]}}]}}"#
    );
    let mut core = new_core();
    let out = run(
        &mut core,
        KEY,
        &[&envelope(
            "coinbase",
            "BTC-USD",
            "depth",
            snapshot.as_bytes(),
        )],
        i64::MIN,
    );
    assert_eq!(out.books.len(), 1, "{out:?}");
    let update = |price: &str| {
        format!(
            r#"{{"channel":"l2_data","timestamp":"{ts}","sequence_num":1,"events":[{{"type":"update","product_id":"BTC-USD","updates":[{{"side":"bid","event_time":"{ts}","price_level":"{price}","new_quantity":"1"}}]}}]}}"#
        )
    };
    let payload = update("0");
    let out = run(
        &mut core,
        KEY,
        &[&envelope(
            "coinbase",
            "BTC-USD",
            "depth",
            payload.as_bytes(),
        )],
        i64::MIN,
    );
    assert_dead_letter(&out, "price 0 is not > 0", payload.as_bytes());
    let trade = format!(
        r#"{{"channel":"market_trades","timestamp":"{ts}","sequence_num":2,"events":[{{"type":"update","trades":[{{"trade_id":"1","product_id":"BTC-USD","price":"100.5","size":"1","side":"BUY","time":"1969-12-31T23:59:59Z"}}]}}]}}"#
    );
    let out = run(
        &mut core,
        KEY,
        &[&envelope("coinbase", "BTC-USD", "trade", trade.as_bytes())],
        i64::MIN,
    );
    assert_dead_letter(&out, "outside 1970..2149", trade.as_bytes());
    let old = snapshot.replace(
        r#""timestamp":"2022-12-31T19:43:00Z""#,
        r#""timestamp":"1969-07-20T20:17:00Z""#,
    );
    let out = run(
        &mut core,
        KEY,
        &[&envelope("coinbase", "BTC-USD", "depth", old.as_bytes())],
        i64::MIN,
    );
    assert_dead_letter(&out, "outside 1970..2149", old.as_bytes());
}

#[test]
fn kraken_tiny_and_huge_quantities_are_rejected_fast() {
    let snapshot = br#"{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,"qty":0.1}],"asks":[{"price":45285.2,"qty":0.001}],"checksum":1}]}"#;
    for qty in ["1e-999999999", "1e999999999", "-1", "\"NaN\""] {
        let mut core = new_core();
        run(
            &mut core,
            KEY,
            &[&envelope("kraken", "BTC/USD", "depth", snapshot)],
            i64::MIN,
        );
        let payload = format!(
            r#"{{"channel":"book","type":"update","data":[{{"symbol":"BTC/USD","bids":[{{"price":45283.4,"qty":{qty}}}],"asks":[],"checksum":1,"timestamp":"2023-01-01T00:00:00Z"}}]}}"#
        );
        let started = Instant::now();
        let out = run(
            &mut core,
            KEY,
            &[&envelope("kraken", "BTC/USD", "depth", payload.as_bytes())],
            i64::MIN,
        );
        assert!(started.elapsed() < Duration::from_millis(200), "{qty}");
        assert_dead_letter(&out, "kraken", payload.as_bytes());
    }
}

#[test]
fn instruments_and_payloads_that_are_not_utf8_are_dead_letters_with_their_bytes() {
    // the JVM bundler keys a value whose instrument is not UTF-8 as ""
    let mut value = envelope("binance", "BNBBTC", "snapshot", &binance_snapshot(1));
    value[1] = 0xFF; // the instrument's first byte
    let mut core = new_core();
    let out = run(&mut core, "", &[&value], i64::MIN);
    assert_dead_letter(&out, "invalid UTF-8", &value);
    let payload = b"{\"lastUpdateId\":1,\"bids\":[[\"0.1\xff\",\"1\"]],\"asks\":[]}";
    let out = run(
        &mut core,
        KEY,
        &[&envelope("binance", "BNBBTC", "snapshot", payload)],
        i64::MIN,
    );
    assert_dead_letter(&out, "binance", payload);
    // the job goes on: a good frame after them is applied
    let out = run(
        &mut core,
        KEY,
        &[&envelope(
            "binance",
            "BNBBTC",
            "snapshot",
            &binance_snapshot(100),
        )],
        i64::MIN,
    );
    assert_eq!(out.books.len(), 1, "{out:?}");
}

#[test]
fn a_watermark_far_ahead_of_a_live_book_costs_a_bounded_number_of_bars() {
    let mut core = live_binance();
    let started = Instant::now();
    core.advance(KEY, RX_MS + 30 * 86_400_000);
    let out = take(&mut core);
    // (the bound is the count below; the time is loose for a debug build on a busy machine)
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // the held state fills at most 600 one-second windows (and ten one-minute ones)
    assert!(out.rows("bars") <= 2 * (601 + 11), "{}", out.rows("bars"));
    // and then no more: the next advance far ahead is cheap and empty
    core.advance(KEY, RX_MS + 60 * 86_400_000);
    assert_eq!(take(&mut core).rows("bars"), 0);
}

#[test]
fn buffering_while_resyncing_costs_the_same_per_frame_at_any_buffer_size() {
    let mut core = new_core();
    let mut costs = Vec::new();
    for round in 0..2 {
        let started = Instant::now();
        for i in 0..5_000 {
            let id = (round * 5_000 + i + 1).to_string();
            let payload = binance_depth(&id, &id, r#"[["0.0025","1"]]"#);
            run(
                &mut core,
                KEY,
                &[&envelope("binance", "BNBBTC", "depth", &payload)],
                i64::MIN,
            );
        }
        costs.push(started.elapsed());
    }
    // the second 5,000 (buffer 5,000..10,000) cost about what the first did
    assert!(
        costs[1] < costs[0] * 3 + Duration::from_millis(50),
        "{costs:?}"
    );
}
