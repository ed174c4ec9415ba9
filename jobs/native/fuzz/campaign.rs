//! The core's fuzz campaign on stable Rust: a structure-aware mutator over recorded and
//! documented frames (`tests/fixtures/<exchange>/`, `fuzz/corpus/<exchange>.jsonl`), driven
//! through the live job's entry point (`StreamBooks::process_bundle`, one frame per bundle)
//! and through the envelope decoder. Shared by `examples/fuzz.rs` (the long run, `make fuzz`)
//! and `tests/fuzz_short.rs` (a few seconds with a fixed seed, in `cargo test`).
//!
//! Per execution it checks: no panic (a panic inside the core becomes an "internal error"
//! dead letter, counted here as a crash), no execution over 1 s, and every book published
//! LIVE (its Redis write) has prices > 0, sizes > 0, strictly ordered sides, an uncrossed top,
//! and only levels the reference model has: the levels of the frames the core accepted (a
//! BTreeMap per book and side of every level an accepted frame carried, so a rejected value can
//! never be in a LIVE book).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tickflow_native::dec::{parse_dec, Dec};
use tickflow_native::envelope::{
    decode_envelope, encode_envelope, envelope_instrument, RawEnvelope,
};
use tickflow_native::events::MarketEvent;
use tickflow_native::instrument::Rules;
use tickflow_native::parse::parse_envelope;
use tickflow_native::stream::{read_bundle, write_bundle, LiveRules, StreamBooks};
use tickflow_native::validate::Limits;

pub const EXCHANGES: [&str; 3] = ["binance", "coinbase", "kraken"];
/// The instrument fuzzed envelopes name by default.
const INSTRUMENT: &str = "BTC-USD";
/// Instruments a frame campaign spreads its seeds over: a seed often starts on fresh books
/// (recorded scenarios reuse symbols and update ids), sometimes on another seed's.
const INSTRUMENTS: usize = 16;
/// Receive time of the fuzzed frames: after every fixture's event time (2023), so the
/// event-time window rejects only mutated times.
const RECEIVE_MS: i64 = 1_704_067_200_000; // 2024-01-01
/// Inputs are capped (memory and time stay bounded whatever the mutator does).
const MAX_INPUT: usize = 64 * 1024;
/// A fresh core every this many executions (its memory stays bounded).
const SESSION: u64 = 5_000;
/// An execution longer than this is a hang: 1 s in the long (release) run; a debug build
/// (the short run in `cargo test`, on a busy machine) is ~20 times slower.
pub const HANG: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(20)
} else {
    Duration::from_secs(1)
};

/// splitmix64: reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One frame of a seed: its channel, symbol and payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub channel: String,
    pub symbol: String,
    pub payload: Vec<u8>,
}

/// A seed: frames fed in order (a recorded scenario, or one documented frame).
pub type Seed = Vec<Frame>;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The exchange's own symbol in a frame (the envelope must name it).
fn symbol_of(exchange: &str, frame: &Value) -> Option<String> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    match exchange {
        "binance" => s(&frame["data"]["s"]).or_else(|| s(&frame["s"])),
        "coinbase" => {
            let event = &frame["events"][0];
            s(&event["product_id"]).or_else(|| s(&event["trades"][0]["product_id"]))
        }
        _ => s(&frame["data"][0]["symbol"]),
    }
}

fn default_symbol(exchange: &str) -> &'static str {
    match exchange {
        "binance" => "BNBBTC",
        "coinbase" => "BTC-USD",
        _ => "BTC/USD",
    }
}

/// The channel a documented frame arrives on.
fn doc_channel(exchange: &str, name: &str, frame: &Value) -> String {
    let channel = match exchange {
        "binance" if name.contains("snapshot") => "snapshot",
        "binance" if name.contains("trade") => "trade",
        "binance" => "depth",
        "coinbase" if frame["channel"] == "market_trades" => "trade",
        "coinbase" => "depth",
        _ if frame["channel"] == "trade" => "trade",
        _ => "depth",
    };
    channel.to_string()
}

fn frame(exchange: &str, channel: &str, value: &Value, symbol: Option<&str>) -> Frame {
    let symbol = symbol
        .map(str::to_string)
        .or_else(|| symbol_of(exchange, value))
        .unwrap_or_else(|| default_symbol(exchange).to_string());
    Frame {
        channel: channel.to_string(),
        symbol,
        payload: serde_json::to_vec(value).unwrap(),
    }
}

/// The seeds of one exchange: every fixture (scenarios in order) and the campaign's corpus.
pub fn seeds(exchange: &str) -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let dir = manifest().join("../../tests/fixtures").join(exchange);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(steps) = value.get("steps").and_then(Value::as_array) {
            let symbol = steps.iter().find_map(|s| symbol_of(exchange, &s["frame"]));
            out.push(
                steps
                    .iter()
                    .map(|s| {
                        frame(
                            exchange,
                            s["channel"].as_str().unwrap(),
                            &s["frame"],
                            symbol.as_deref(),
                        )
                    })
                    .collect(),
            );
        } else {
            out.push(vec![frame(
                exchange,
                &doc_channel(exchange, &name, &value),
                &value,
                None,
            )]);
        }
    }
    out.extend(corpus(
        &manifest()
            .join("fuzz/corpus")
            .join(format!("{exchange}.jsonl")),
    ));
    out
}

/// `fuzz/corpus/<exchange>.jsonl`: one seed per line, `{"frames": [{"channel", "symbol",
/// "frame" (JSON) or "raw" (text)}]}`.
fn corpus(path: &Path) -> Vec<Seed> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let seed: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            seed["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| Frame {
                    channel: f["channel"].as_str().unwrap().to_string(),
                    symbol: f["symbol"].as_str().unwrap().to_string(),
                    payload: match f.get("raw") {
                        Some(raw) => raw.as_str().unwrap().as_bytes().to_vec(),
                        None => serde_json::to_vec(&f["frame"]).unwrap(),
                    },
                })
                .collect()
        })
        .collect()
}

// --- the mutator ---------------------------------------------------------------------------

/// Values the issue and the column types make interesting, as raw JSON text.
const INTERESTING: &[&str] = &[
    r#"" 1""#,
    r#""１２""#,
    r#""NaN""#,
    r#""sNaN""#,
    r#""Infinity""#,
    r#""-Infinity""#,
    r#""1e999999999""#,
    r#""1e-999999999""#,
    r#""-1""#,
    r#""0""#,
    r#""-0""#,
    r#""0.0""#,
    r#""1_0""#,
    r#""+1""#,
    r#""""#,
    r#""99999999999999999999999""#,
    r#""100000000000000000000""#,
    r#""0.0000000000000000000000000001""#,
    r#""0.0000000000000000001""#,
    r#""1e20""#,
    r#""79228162514264337593543950335""#,
    r#""1.5e3""#,
    r#""\u0000""#,
    r#""1970-01-01T00:00:00Z""#,
    r#""1969-12-31T23:59:59.999Z""#,
    r#""0001-01-01T00:00:00Z""#,
    r#""9999-12-31T23:59:59Z""#,
    r#""2150-01-01T00:00:00Z""#,
    r#""2023-12-31T23:59:59Z""#,
    r#""2024-01-02T00:00:00Z""#,
    r#""2023-02-09T20:19:35.396251Z""#,
    "0",
    "-1",
    "1",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "100000000000000000",
    "4611686018427387904",
    "18446744073709551616",
    "1e999999999",
    "1e-999999999",
    "1.5",
    "-0",
    "0.0",
    "1E+2",
    "-0.0",
    "1704067200000",
    "1704153600000",
    "1704067500001",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    r#"[["1","1"]]"#,
    r#"[{"price":1,"qty":1}]"#,
];

/// A JSON value with some leaves replaced by placeholders for raw texts (numbers serde_json
/// cannot hold, such as 1e999999999).
struct Draft {
    value: Value,
    raw: Vec<String>,
}

impl Draft {
    fn placeholder(&mut self, text: String) -> Value {
        self.raw.push(text);
        Value::String(format!("\u{1}RAW{}\u{1}", self.raw.len() - 1))
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut text = serde_json::to_string(&self.value).unwrap();
        for (i, raw) in self.raw.iter().enumerate() {
            text = text.replacen(&format!("\"\\u0001RAW{i}\\u0001\""), raw, 1);
        }
        text.into_bytes()
    }
}

/// Every leaf and container of a JSON value, as paths (indexes into objects' keys in order).
fn paths(value: &Value, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(prefix.clone());
    match value {
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(i);
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Object(map) => {
            for (i, v) in map.values().enumerate() {
                prefix.push(i);
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(value: &'a mut Value, path: &[usize]) -> &'a mut Value {
    let mut v = value;
    for &i in path {
        v = match v {
            Value::Array(items) => &mut items[i],
            Value::Object(map) => map.values_mut().nth(i).unwrap(),
            _ => unreachable!("a path goes through containers"),
        };
    }
    v
}

/// A numeric text nudged: another digit, an exponent, a sign, a big jump.
fn nudge_number(text: &str, rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => format!("{text}{}", rng.below(10)),
        1 => format!("{text}e{}", rng.below(40) as i64 - 20),
        2 => format!("-{text}"),
        3 => {
            let n: i128 = text.parse().unwrap_or(0);
            (n + [1i128, -1, 1000, 86_400_000, 2_592_000_000, 1 << 40, 1 << 62][rng.below(7)])
                .to_string()
        }
        4 => format!("{text}.{}", "0".repeat(rng.below(30)) + "1"),
        5 => format!("0.{}{text}", "0".repeat(rng.below(30))),
        6 => text.chars().rev().collect(),
        _ => text.to_string(),
    }
}

fn mutate_json(value: &Value, rng: &mut Rng) -> Vec<u8> {
    let mut draft = Draft {
        value: value.clone(),
        raw: Vec::new(),
    };
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        paths(&draft.value, &mut Vec::new(), &mut all);
        let path = rng.pick(&all).clone();
        let choice = rng.below(10);
        let target = at(&mut draft.value, &path).clone();
        let replacement = match (&target, choice) {
            (_, 0..=3) => {
                let raw = rng.pick(INTERESTING).to_string();
                Some(draft.placeholder(raw))
            }
            (Value::String(s), 4..=5) => Some(Value::String(nudge_number(s, rng))),
            (Value::Number(n), 4..=5) => Some(draft.placeholder(nudge_number(&n.to_string(), rng))),
            (Value::Array(items), 4..=7) if !items.is_empty() => {
                let mut items = items.clone();
                let i = rng.below(items.len());
                match rng.below(4) {
                    0 => {
                        items.remove(i);
                    }
                    1 => {
                        let copy = items[i].clone();
                        items.insert(i, copy)
                    }
                    2 => {
                        let j = rng.below(items.len());
                        items.swap(i, j)
                    }
                    _ => items.truncate(i),
                }
                Some(Value::Array(items))
            }
            (Value::Object(map), 4..=7) if !map.is_empty() => {
                let mut map = map.clone();
                let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
                if rng.chance(50) {
                    map.remove(&key);
                } else {
                    let v = map[&key].clone();
                    map.insert(format!("{key}{}", rng.below(3)), v);
                }
                Some(Value::Object(map))
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *at(&mut draft.value, &path) = r;
        }
    }
    draft.into_bytes()
}

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        let n = bytes.len();
        match rng.below(6) {
            0 if n > 0 => {
                let i = rng.below(n);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                let j = (i + 1 + rng.below(16)).min(n);
                bytes.drain(i..j);
            }
            2 => {
                let i = rng.below(n + 1);
                let junk: &[&[u8]] = &[
                    b"\xff",
                    b"\xc3",
                    b"\xed\xa0\x80",
                    b"\x00",
                    b"\"",
                    b"[",
                    b"{",
                    b",",
                    b"9",
                ];
                let piece = rng.pick(junk).to_vec();
                bytes.splice(i..i, piece);
            }
            3 if n > 0 => bytes.truncate(rng.below(n)),
            4 if n > 0 => {
                let i = rng.below(n);
                let j = (i + 1 + rng.below(64)).min(n);
                let piece = bytes[i..j].to_vec();
                let at = rng.below(n + 1);
                bytes.splice(at..at, piece);
            }
            _ => {}
        }
    }
    bytes.truncate(MAX_INPUT);
}

/// One input: the envelope's bytes (a seed frame, most often mutated).
fn envelope_of(
    instrument: &str,
    exchange: &str,
    frame: &Frame,
    receive_ns: i64,
    seq: i64,
    rng: &mut Rng,
    mutate: bool,
) -> Vec<u8> {
    let mut payload = frame.payload.clone();
    let (mut channel, mut symbol, mut exchange_name, mut receive) = (
        frame.channel.clone(),
        frame.symbol.clone(),
        exchange.to_string(),
        receive_ns,
    );
    if mutate {
        match rng.below(10) {
            0..=5 => {
                if let Ok(value) = serde_json::from_slice::<Value>(&payload) {
                    payload = mutate_json(&value, rng);
                }
            }
            6..=7 => mutate_bytes(&mut payload, rng),
            _ => match rng.below(5) {
                0 => {
                    channel = rng
                        .pick(&["depth", "trade", "snapshot", "sync_lost", "book", ""])
                        .to_string()
                }
                1 => {
                    symbol = rng
                        .pick(&["BNBBTC", "BTC-USD", "BTC/USD", "X", ""])
                        .to_string()
                }
                2 => {
                    exchange_name = rng
                        .pick(&["binance", "coinbase", "kraken", "nope"])
                        .to_string()
                }
                3 => {
                    receive =
                        *rng.pick(&[-1, 0, i64::MAX, i64::MIN, receive_ns + 86_400_000_000_000])
                }
                _ => {}
            },
        }
        payload.truncate(MAX_INPUT);
    }
    let env = RawEnvelope {
        instrument,
        exchange: &exchange_name,
        symbol: &symbol,
        channel: &channel,
        receive_time_ns: receive,
        connection_id: "fuzz",
        connection_seq: seq,
        payload: &payload,
    };
    let mut bytes = encode_envelope(&env);
    if mutate && rng.chance(3) {
        mutate_bytes(&mut bytes, rng); // the envelope itself damaged
    }
    bytes
}

// --- the checks -----------------------------------------------------------------------------

#[derive(Default, Debug)]
pub struct Report {
    pub target: String,
    pub executions: u64,
    pub elapsed: Duration,
    pub slowest: Duration,
    pub crashes: u64,
    pub hangs: u64,
    pub invariant_failures: u64,
    pub dead_letters: u64,
    pub live_books_checked: u64,
    /// the first findings: what failed and the input (hex)
    pub findings: Vec<String>,
    /// dead letters by the start of their reason
    pub reasons: BTreeMap<String, u64>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.crashes == 0 && self.hangs == 0 && self.invariant_failures == 0
    }

    fn finding(&mut self, what: String, input: &[u8]) {
        if self.findings.len() < 20 {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            self.findings
                .push(format!("{what}\n  input (envelope, hex): {hex}"));
        }
    }
}

/// Panics anywhere in the process (also those the core catches and dead-letters).
static PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::Relaxed);
    }));
}

/// (instrument, exchange, symbol)
type Book = (String, String, String);

/// The reference model: per book and side, every (price, size) an accepted frame carried.
#[derive(Default)]
struct Reference {
    levels: HashMap<Book, [BTreeMap<Dec, BTreeSet<Dec>>; 2]>,
}

impl Reference {
    fn accept(&mut self, value: &[u8]) {
        let Ok(env) = decode_envelope(value) else {
            return;
        };
        let Ok(events) = parse_envelope(&env) else {
            return;
        };
        for event in events {
            let (exchange, symbol, bids, asks) = match &event {
                MarketEvent::Delta(d) => (&d.exchange, &d.symbol, &d.bids, &d.asks),
                MarketEvent::Snapshot(s) => (&s.exchange, &s.symbol, &s.bids, &s.asks),
                _ => continue,
            };
            let book = self
                .levels
                .entry((env.instrument.to_string(), exchange.clone(), symbol.clone()))
                .or_default();
            for (side, levels) in [bids, asks].into_iter().enumerate() {
                for &(price, size) in levels {
                    book[side].entry(price).or_default().insert(size);
                }
            }
        }
    }

    fn has(&self, book: &Book, side: usize, price: Dec, size: Dec) -> bool {
        self.levels
            .get(book)
            .and_then(|b| b[side].get(&price))
            .is_some_and(|sizes| sizes.contains(&size))
    }
}

fn levels_of(text: &[u8]) -> Result<Vec<(Dec, Dec)>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("levels not JSON: {e}"))?;
    value
        .as_array()
        .ok_or("levels not an array")?
        .iter()
        .map(|l| {
            let p = l[0]
                .as_str()
                .and_then(parse_dec)
                .ok_or(format!("bad price {l}"))?;
            let s = l[1]
                .as_str()
                .and_then(parse_dec)
                .ok_or(format!("bad size {l}"))?;
            Ok((p, s))
        })
        .collect()
}

/// Why a published LIVE book is wrong, if it is.
fn check_live_book(
    book: &Book,
    bids: &[(Dec, Dec)],
    asks: &[(Dec, Dec)],
    reference: &Reference,
) -> Option<String> {
    for (side, levels) in [bids, asks].into_iter().enumerate() {
        for (i, &(price, size)) in levels.iter().enumerate() {
            if price <= Dec::ZERO || size <= Dec::ZERO {
                return Some(format!("{book:?}: level {price} x {size} published LIVE"));
            }
            if i > 0 {
                let prev = levels[i - 1].0;
                let ordered = if side == 0 {
                    prev > price
                } else {
                    prev < price
                };
                if !ordered {
                    return Some(format!("{book:?}: side {side} out of order at {price}"));
                }
            }
            if !reference.has(book, side, price, size) {
                return Some(format!(
                    "{book:?}: level {price} x {size} (side {side}) not in any accepted frame"
                ));
            }
        }
    }
    if let (Some(bid), Some(ask)) = (bids.first(), asks.first()) {
        if bid.0 >= ask.0 {
            return Some(format!(
                "{book:?}: crossed LIVE book: bid {} >= ask {}",
                bid.0, ask.0
            ));
        }
    }
    None
}

/// The dead letters' reasons in a sink blob.
fn dead_letter_reasons(blob: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 1;
    while pos + 3 <= blob.len() {
        let kind = blob[pos];
        let name_len = u16::from_le_bytes([blob[pos + 1], blob[pos + 2]]) as usize;
        let name = &blob[pos + 3..pos + 3 + name_len];
        pos += 3 + name_len;
        let count = u32::from_le_bytes(blob[pos..pos + 4].try_into().unwrap());
        let len = u32::from_le_bytes(blob[pos + 4..pos + 8].try_into().unwrap()) as usize;
        pos += 8;
        let payload = &blob[pos..pos + len];
        pos += len;
        if kind == 2 && name == b"deadletter" {
            let mut p = 0;
            for _ in 0..count {
                let n = u32::from_le_bytes(payload[p..p + 4].try_into().unwrap()) as usize;
                let record: Value = serde_json::from_slice(&payload[p + 4..p + 4 + n]).unwrap();
                out.push(record["error"].as_str().unwrap_or("").to_string());
                p += 4 + n;
            }
        }
    }
    out
}

fn core() -> StreamBooks {
    let rules = Rules {
        top_n: 10,
        snapshot_interval_ms: 1000,
        max_levels: 500,
        max_buffered: 200,
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

fn bundle_of(timestamp_ms: i64, value: &[u8]) -> Vec<u8> {
    write_bundle(0, &[(timestamp_ms, value)])
}

/// The frame campaign of one exchange: `executions` frames, reproducible from `seed`.
pub fn run_frames(exchange: &str, executions: u64, seed: u64) -> Report {
    count_panics();
    let seeds = seeds(exchange);
    assert!(!seeds.is_empty(), "no seeds for {exchange}");
    let mut rng = Rng::new(seed ^ exchange.len() as u64);
    let mut report = Report {
        target: exchange.to_string(),
        ..Report::default()
    };
    let started = Instant::now();
    let (mut core, mut reference) = (core(), Reference::default());
    let mut watermark = i64::MIN;
    let mut clock_ms = RECEIVE_MS;
    let (mut steps, mut step): (&Seed, usize) = (&seeds[0], 0);
    let mut instrument = INSTRUMENT.to_string();
    let mutate_percent = 5 + rng.below(30) as u64;
    while report.executions < executions {
        if report.executions.is_multiple_of(SESSION) {
            core = self::core();
            reference = Reference::default();
            watermark = i64::MIN;
        }
        if step >= steps.len() {
            steps = rng.pick(&seeds);
            step = 0;
            if rng.chance(60) {
                instrument = format!("I{}-USD", rng.below(INSTRUMENTS));
            }
        }
        let frame = &steps[step];
        step += 1;
        clock_ms += rng.below(200) as i64;
        let mutate = rng.chance(mutate_percent);
        let value = envelope_of(
            &instrument,
            exchange,
            frame,
            clock_ms * 1_000_000,
            report.executions as i64,
            &mut rng,
            mutate,
        );
        let panics_before = PANICS.load(Ordering::Relaxed);
        let mut phases = [Duration::ZERO; 2];
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            // keyed as the JVM bundler keys it ("" when the instrument cannot be read)
            let key = envelope_instrument(&value).unwrap_or("").to_string();
            core.process_bundle(&key, &bundle_of(clock_ms, &value), watermark, clock_ms)
                .unwrap();
            phases[0] = t0.elapsed();
            match rng.below(20) {
                0 => {
                    // the watermark: mostly with the clock, sometimes a jump far ahead
                    watermark = if rng.chance(2) {
                        clock_ms + 30 * 86_400_000
                    } else {
                        clock_ms - 5000
                    };
                    core.advance(&key, watermark);
                }
                1 => {
                    core.housekeeping(&key, clock_ms);
                }
                _ => {}
            }
            phases[1] = t0.elapsed();
            let blob = core.take_blob();
            let redis = core.take_redis(0);
            (blob, redis)
        }));
        let took = t0.elapsed();
        report.executions += 1;
        report.slowest = report.slowest.max(took);
        if took > HANG {
            report.hangs += 1;
            let watermark_ahead_ms = watermark.saturating_sub(clock_ms);
            report.finding(
                format!(
                    "{exchange}: one execution took {took:?} (frame {:?}, then advance/housekeeping \
                     until {:?}; watermark {watermark_ahead_ms} ms ahead of the clock)",
                    phases[0], phases[1]
                ),
                &value,
            );
        }
        let panicked = PANICS.load(Ordering::Relaxed) != panics_before;
        let Ok((blob, redis)) = result else {
            report.crashes += 1;
            report.finding(
                format!("{exchange}: panic outside the core's guard"),
                &value,
            );
            continue;
        };
        let reasons = blob.as_deref().map(dead_letter_reasons).unwrap_or_default();
        report.dead_letters += reasons.len() as u64;
        for r in &reasons {
            *report
                .reasons
                .entry(r.chars().take(90).collect())
                .or_default() += 1;
        }
        if panicked || reasons.iter().any(|r| r.contains("internal error")) {
            report.crashes += 1;
            let why = reasons
                .iter()
                .find(|r| r.contains("internal error"))
                .cloned()
                .unwrap_or_default();
            report.finding(format!("{exchange}: panic in the core: {why}"), &value);
        }
        // a row refused (also one of an advance, prefixed by its instrument) does not reject
        // the frame: only the frame's own dead letter does
        if !reasons
            .iter()
            .any(|r| !(r.contains("row of ") && r.contains(" refused: ")))
        {
            reference.accept(&value);
        }
        for (nbbo, keys, args) in &redis {
            if *nbbo || args.get(1).map(Vec::as_slice) != Some(b"LIVE".as_slice()) {
                continue;
            }
            report.live_books_checked += 1;
            let mut parts = keys[0].splitn(4, ':').skip(2);
            let book = (
                String::from_utf8_lossy(&args[7]).to_string(),
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let failure = match (levels_of(&args[3]), levels_of(&args[4])) {
                (Ok(bids), Ok(asks)) => check_live_book(&book, &bids, &asks, &reference),
                (Err(e), _) | (_, Err(e)) => Some(e),
            };
            if let Some(why) = failure {
                report.invariant_failures += 1;
                report.finding(format!("{exchange}: {why}"), &value);
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// The envelope decoder's campaign: damaged envelopes and bundles, through the decoder, the
/// key reader and the core.
pub fn run_envelopes(executions: u64, seed: u64) -> Report {
    count_panics();
    let all: Vec<(String, Seed)> = EXCHANGES
        .iter()
        .flat_map(|e| seeds(e).into_iter().map(move |s| (e.to_string(), s)))
        .collect();
    let mut rng = Rng::new(seed);
    let mut report = Report {
        target: "envelope".to_string(),
        ..Report::default()
    };
    let started = Instant::now();
    let mut core = core();
    while report.executions < executions {
        if report.executions.is_multiple_of(SESSION) {
            core = self::core();
        }
        let (exchange, seed_frames) = rng.pick(&all);
        let frame = rng.pick(seed_frames);
        let mut value = envelope_of(
            INSTRUMENT,
            exchange,
            frame,
            RECEIVE_MS * 1_000_000,
            1,
            &mut rng,
            false,
        );
        mutate_bytes(&mut value, &mut rng);
        if rng.chance(20) {
            // an over-long varint or a huge length where the instrument's length is
            let varint: &[&[u8]] = &[
                &[0xff; 11],
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
                &[0xfe, 0xff, 0xff, 0xff, 0x0f],
                &[0x01],
            ];
            let piece = rng.pick(varint).to_vec();
            value.splice(0..1.min(value.len()), piece);
        }
        let mut bundle = bundle_of(RECEIVE_MS, &value);
        if rng.chance(10) {
            mutate_bytes(&mut bundle, &mut rng); // the bundle's framing damaged too
        }
        let panics_before = PANICS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            // the key reader and the decoder may disagree on an over-long varint (the Python
            // readers they follow do): the core then dead-letters the frame as misrouted
            let _ = decode_envelope(&value);
            let key = envelope_instrument(&value).ok().map(str::to_string);
            let _ = read_bundle(&bundle);
            let _ =
                core.process_bundle(key.as_deref().unwrap_or(""), &bundle, i64::MIN, RECEIVE_MS);
            core.take_blob()
        }));
        let took = t0.elapsed();
        report.executions += 1;
        report.slowest = report.slowest.max(took);
        if took > HANG {
            report.hangs += 1;
            report.finding(format!("envelope: one execution took {took:?}"), &value);
        }
        match result {
            Err(_) => {
                report.crashes += 1;
                report.finding("envelope: panic".to_string(), &value);
            }
            Ok(blob) => {
                let reasons = blob.as_deref().map(dead_letter_reasons).unwrap_or_default();
                report.dead_letters += reasons.len() as u64;
                if PANICS.load(Ordering::Relaxed) != panics_before
                    || reasons.iter().any(|r| r.contains("internal error"))
                {
                    report.crashes += 1;
                    report.finding("envelope: panic in the core".to_string(), &value);
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}
