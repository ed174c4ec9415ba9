//! The core's state as bytes: what the streaming job keeps per instrument in Flink's keyed
//! state between bundles of frames. `InstrumentBooks::snapshot` then `restore` gives an
//! object that processes the next frames exactly as the original would have.
//!
//! Format: one version byte (`STATE_VERSION`), then the value in postcard (serde, varints,
//! no field names; its wire format is stable across postcard 1.x). Decimals are exact, scale
//! kept: those of the books, histories, bars and NBBO in `dec::wire`'s compact form, the few
//! declared in instrument.rs as their text (rust_decimal's `serde-str`). Nothing is left
//! out of the state or rebuilt on restore: caches (a history's `ordered` flag, the bars'
//! count of LIVE books) are written as they are.
//!
//! A change of any state type's fields or their order changes the format: bump
//! `STATE_VERSION`; a state written by another version is refused, never misread.
//!
//! Version 2 (the `gaps` table): an instrument's state is followed by its books' intervals
//! out of sync still open (`InstrumentBooks::open_gaps`). A version 1 state is still read:
//! each of its books not LIVE gets an interval from its last message on (kind `restored`).
//!
//! The bytes are a function of the state but for the order of the trade dedup map (a
//! `HashMap`, in its iteration order): two equal states may give different bytes, which
//! restore to equal states. `sorted_map` writes such a map in key order, for a field that
//! needs stable bytes (`#[serde(serialize_with = "crate::state::sorted_map")]`).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::events::BookId;
use crate::instrument::{Gap, InstrumentBooks};

/// The format of the bytes `encode` writes and `decode` reads.
pub const STATE_VERSION: u8 = 2;
/// The format before the open gaps were kept: read, never written.
pub const STATE_VERSION_1: u8 = 1;

/// `value` as state bytes: the version byte, then the value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // fails only for a type serde cannot write without a length up front; the state's
    // types are all plain derives
    postcard::to_extend(value, vec![STATE_VERSION]).expect("core state serializes")
}

/// A value from `encode`'s bytes; Err for another format version or bytes that are not one.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err("core state is empty".to_string());
    };
    if version != STATE_VERSION {
        return Err(format!(
            "core state version {version}, this build reads {STATE_VERSION}"
        ));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| format!("core state unreadable: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("core state has {} bytes after its end", rest.len()));
    }
    Ok(value)
}

/// A `HashMap` written in key order (read back as any map).
pub fn sorted_map<K, V, H, S>(map: &HashMap<K, V, H>, s: S) -> Result<S::Ok, S::Error>
where
    K: Serialize + Ord,
    V: Serialize,
    S: Serializer,
{
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    s.collect_map(entries)
}

impl InstrumentBooks {
    /// The whole state, for `restore`: the books, then their open gaps.
    pub fn snapshot(&self) -> Vec<u8> {
        encode(&(self, &self.open_gaps))
    }

    /// The instrument as `snapshot` saw it (or a version 1 state, see the module's doc).
    pub fn restore(bytes: &[u8]) -> Result<InstrumentBooks, String> {
        if bytes.first() == Some(&STATE_VERSION_1) {
            let mut v2 = bytes.to_vec();
            v2[0] = STATE_VERSION;
            let mut books: InstrumentBooks = decode(&v2)?;
            books.open_restored_gaps();
            return Ok(books);
        }
        let (mut books, open_gaps): (InstrumentBooks, Vec<(BookId, Gap)>) = decode(bytes)?;
        books.open_gaps = open_gaps;
        Ok(books)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::book::test_util::FIXTURES;
    use crate::dec::{parse_dec, Dec};
    use crate::envelope::RawEnvelope;
    use crate::events::BookStatus;
    use crate::instrument::{Outputs, Rules, END_OF_INPUT, NO_WATERMARK};
    use crate::parse::scenario_steps;

    fn rules() -> Rules {
        Rules {
            top_n: 10,
            snapshot_interval_ms: 1000,
            max_levels: 1000,
            max_buffered: 100,
            nbbo_stale_after_ms: 0,
            bar_intervals_ms: vec![86_400_000, 7 * 86_400_000],
            depth_band_bps: parse_dec("10.0").unwrap(),
            trade_dedup_ms: 1000,
        }
    }

    /// One frame of the stream: exchange, symbol, channel, payload.
    struct Frame {
        exchange: &'static str,
        symbol: &'static str,
        channel: String,
        payload: Vec<u8>,
    }

    fn read(path: &str) -> String {
        let full = format!("{FIXTURES}/{path}");
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    /// Every sync scenario of an exchange, one after the other, as frames for one book.
    fn scenario_frames(exchange: &'static str, symbol: &'static str) -> Vec<Frame> {
        let mut frames = Vec::new();
        for name in crate::book::test_util::scenarios(exchange) {
            for (channel, frame) in scenario_steps(&read(&format!("{exchange}/{name}"))) {
                frames.push(Frame {
                    exchange,
                    symbol,
                    channel,
                    payload: frame.into_bytes(),
                });
            }
        }
        frames
    }

    /// A Binance trade frame laid out as the recorded one (`binance/combined_trade.json`),
    /// with its id, price, size, side and time.
    fn binance_trade(id: i64, price: &str, size: &str, buyer_maker: bool, time_ms: i64) -> Frame {
        let recorded = read("binance/combined_trade.json");
        assert!(recorded.starts_with(r#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":"#));
        let payload = format!(
            r#"{{"stream":"bnbbtc@trade","data":{{"e":"trade","E":{time_ms},"s":"BNBBTC","t":{id},"p":"{price}","q":"{size}","T":{time_ms},"m":{buyer_maker},"M":true}}}}"#
        );
        Frame {
            exchange: "binance",
            symbol: "BNBBTC",
            channel: "trade".into(),
            payload: payload.into_bytes(),
        }
    }

    /// The recorded frames of the three exchanges interleaved, with Binance trades (one
    /// repeated: a duplicate) around the Binance book's event time, Coinbase's and Kraken's
    /// recorded trade frames (other symbols of the instrument), a frame that fails to parse,
    /// and a last trade after everything.
    fn stream() -> Vec<Frame> {
        let mut streams = [
            scenario_frames("binance", "BNBBTC"),
            scenario_frames("coinbase", "BTC-USD"),
            scenario_frames("kraken", "BTC/USD"),
        ];
        let t0 = 1672515782136;
        let prices = [
            "0.00250000",
            "0.00240000",
            "0.00260000",
            "0.00255000",
            "0.00270000",
        ];
        let mut trades: Vec<Frame> = (0..12)
            .map(|i| {
                binance_trade(
                    100 + i,
                    prices[i as usize % 5],
                    "1.50000000",
                    i % 3 == 0,
                    t0 - 500 + 90 * i,
                )
            })
            .collect();
        trades.insert(
            1,
            binance_trade(100, "0.00250000", "1.50000000", true, t0 - 500),
        );
        for s in streams.iter_mut() {
            s.reverse();
        }
        trades.reverse();
        let mut frames = Vec::new();
        while streams.iter().any(|s| !s.is_empty()) || !trades.is_empty() {
            for s in streams.iter_mut() {
                frames.extend(s.pop());
            }
            frames.extend(trades.pop());
        }
        let raw = |exchange, symbol, channel: &str, path: &str| Frame {
            exchange,
            symbol,
            channel: channel.into(),
            payload: std::fs::read(format!("{FIXTURES}/{path}")).unwrap(),
        };
        let at = frames.len() / 2;
        frames.insert(
            at,
            raw(
                "coinbase",
                "ETH-USD",
                "trade",
                "coinbase/doc_market_trades.json",
            ),
        );
        frames.insert(
            at + 3,
            raw("kraken", "MATIC/USD", "trade", "kraken/doc_trade.json"),
        );
        frames.insert(
            at + 5,
            raw(
                "kraken",
                "BTC/USD",
                "trade",
                "kraken/multi_pair_trade_snapshot.json",
            ),
        );
        frames.push(binance_trade(
            999,
            "0.00250000",
            "2.00000000",
            true,
            1_696_613_765_440,
        ));
        frames
    }

    /// The watermark the job passes with frame `i` of `n`: none at first, then sweeping
    /// from before the Binance events to past the Coinbase ones (2023-02-09).
    fn watermark(i: usize, n: usize) -> i64 {
        if i < n / 4 {
            NO_WATERMARK
        } else {
            1672515781000 + (i - n / 4) as i64 * 3_500_000_000 / n as i64
        }
    }

    fn envelope<'a>(frame: &'a Frame, i: usize) -> RawEnvelope<'a> {
        RawEnvelope {
            instrument: "BTC-USD",
            exchange: frame.exchange,
            symbol: frame.symbol,
            channel: &frame.channel,
            receive_time_ns: 1_672_515_782_000_000_000 + i as i64 * 50_000_000,
            connection_id: "c1",
            connection_seq: i as i64,
            payload: &frame.payload,
        }
    }

    /// Frames `from..to` through `books`: each frame's result and outputs, as text.
    fn run(books: &mut InstrumentBooks, frames: &[Frame], from: usize, to: usize) -> Vec<String> {
        let mut log = Vec::new();
        let mut out = Outputs::default();
        for (i, frame) in frames.iter().enumerate().take(to).skip(from) {
            out.clear();
            out.duplicate_trades = 0;
            let result = books.process(&envelope(frame, i), watermark(i, frames.len()), &mut out);
            log.push(format!("{i}: {result:?} {out:?}"));
        }
        log
    }

    fn finish(books: &mut InstrumentBooks) -> String {
        let mut out = Outputs::default();
        books.advance(END_OF_INPUT, &mut out);
        format!("end: {out:?}")
    }

    fn new_books() -> InstrumentBooks {
        InstrumentBooks::new("BTC-USD", "", rules())
    }

    #[test]
    fn restored_books_process_the_rest_as_the_original() {
        let frames = stream();
        let n = frames.len();
        let mut whole = new_books();
        let mut want = run(&mut whole, &frames, 0, n);
        want.push(finish(&mut whole));
        let want_state = whole.snapshot();
        // the stream does something of everything
        let text = want.join("\n");
        for what in [
            "status: Live",
            "status: Resyncing",
            "Err(",
            "matched: [Matched",
            "bars: [Bar",
            "late: [Late",
            "nbbo: [Nbbo",
        ] {
            assert!(text.contains(what), "no {what} in the stream's outputs");
        }
        assert!(want.iter().any(|l| l.contains("duplicate_trades: 1")));
        for split in 0..=n {
            let mut first = new_books();
            let mut got = run(&mut first, &frames, 0, split);
            let bytes = first.snapshot();
            let mut restored = InstrumentBooks::restore(&bytes).unwrap();
            // written again, the restored state has the same bytes (but for the dedup map's order)
            assert_eq!(restored.snapshot().len(), bytes.len(), "split {split}");
            drop(first);
            got.extend(run(&mut restored, &frames, split, n));
            got.push(finish(&mut restored));
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "split {split}");
            }
            assert_eq!(got.len(), want.len());
            // one trade left to dedup at the end: the bytes are the same
            assert_eq!(restored.snapshot(), want_state, "split {split}");
        }
    }

    #[test]
    fn decimals_keep_their_scale_and_sign() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Both {
            #[serde(with = "crate::dec::wire")]
            compact: Vec<(Dec, Option<Dec>)>,
            text: Vec<Dec>,
        }
        let texts = [
            "0.00100000",
            "45283.50000000",
            "0",
            "0.0",
            "-0.25",
            "-1.5",
            "1e-28",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "100",
        ];
        let mut decs: Vec<Dec> = texts.iter().map(|t| parse_dec(t).unwrap()).collect();
        // a negative zero (a difference can be one): its text does not parse back to one, so
        // the text form (only the instrument's band and last tops: never one) gets none
        let mut negative_zero = parse_dec("0.000").unwrap();
        negative_zero.set_sign_negative(true);
        let value = Both {
            compact: decs
                .iter()
                .chain([&negative_zero])
                .map(|&d| (d, Some(d)))
                .chain([(Dec::ONE, None)])
                .collect(),
            text: decs.clone(),
        };
        let back: Both = decode(&encode(&value)).unwrap();
        decs.push(negative_zero);
        for ((c, o), d) in back.compact.iter().zip(&decs) {
            assert_eq!(c.to_string(), d.to_string());
            assert_eq!(o.unwrap().to_string(), d.to_string());
        }
        assert_eq!(back.compact.last(), Some(&(Dec::ONE, None)));
        let shown: Vec<String> = back.compact.iter().map(|d| d.0.to_string()).collect();
        assert_eq!(
            (shown[0].as_str(), shown[1].as_str()),
            ("0.00100000", "45283.50000000")
        );
        assert_eq!(shown[texts.len()], "-0.000");
        let text: Vec<String> = back.text.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            text,
            texts
                .iter()
                .map(|t| parse_dec(t).unwrap().to_string())
                .collect::<Vec<_>>()
        );
        assert_eq!(text[0], "0.00100000");
        for (a, b) in back.compact.iter().zip(&value.compact) {
            assert_eq!(
                (a.0.scale(), a.0.is_sign_negative()),
                (b.0.scale(), b.0.is_sign_negative())
            );
        }
        // a price and a size: a few bytes each, not 16
        let one = encode(&Both {
            compact: vec![(decs[1], None)],
            text: vec![],
        });
        assert!(one.len() <= 12, "{}", one.len());
        // an impossible decimal is an error, not a panic
        let mut bad = encode(&Both {
            compact: vec![(Dec::ONE, None)],
            text: vec![],
        });
        bad[2] = 29; // flags: scale 29
        assert!(decode::<Both>(&bad)
            .unwrap_err()
            .starts_with("core state unreadable"));
    }

    #[test]
    fn other_versions_and_bad_bytes_are_refused() {
        let mut books = new_books();
        let frames = stream();
        run(&mut books, &frames, 0, 20);
        let mut bytes = books.snapshot();
        assert_eq!(bytes[0], STATE_VERSION);
        assert!(InstrumentBooks::restore(&bytes).is_ok());
        bytes[0] = 3;
        let err = InstrumentBooks::restore(&bytes).err().unwrap();
        assert_eq!(err, "core state version 3, this build reads 2");
        assert_eq!(
            InstrumentBooks::restore(&[]).err().unwrap(),
            "core state is empty"
        );
        bytes[0] = STATE_VERSION;
        let cut = InstrumentBooks::restore(&bytes[..bytes.len() / 2])
            .err()
            .unwrap();
        assert!(cut.starts_with("core state unreadable"), "{cut}");
        bytes.push(0);
        let long = InstrumentBooks::restore(&bytes).err().unwrap();
        assert_eq!(long, "core state has 1 bytes after its end");
    }

    #[test]
    fn sorted_map_writes_in_key_order() {
        #[derive(Serialize)]
        struct Sorted<'a>(#[serde(serialize_with = "sorted_map")] &'a HashMap<String, i64>);
        let a: HashMap<String, i64> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let mut b: HashMap<String, i64> = HashMap::new();
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), i);
        }
        assert_eq!(encode(&Sorted(&a)), encode(&Sorted(&b)));
        let back: HashMap<String, i64> = decode(&encode(&Sorted(&a))).unwrap();
        assert_eq!(back, a);
    }

    // --- size and time of a large state ------------------------------------------------

    fn levels_json(base: f64, step: f64, n: usize, quoted: bool) -> String {
        let items: Vec<String> = (0..n)
            .map(|i| {
                let price = format!("{:.2}", base + step * i as f64);
                let size = format!("{:.8}", 0.001 * ((i * 7919) % 5000 + 1) as f64);
                if quoted {
                    format!("[\"{price}\",\"{size}\"]")
                } else {
                    format!("{{\"price\":{price},\"qty\":{size}}}")
                }
            })
            .collect();
        items.join(",")
    }

    /// An instrument with a 1000-level-per-side Binance book, a 1000-level Coinbase book and a
    /// 100-level Kraken book, `deltas` Binance updates after the snapshot (each a history
    /// state: no watermark prunes them).
    fn large_books(deltas: usize) -> InstrumentBooks {
        let mut books = new_books();
        let mut frames = Vec::new();
        let snapshot = format!(
            "{{\"lastUpdateId\":1000,\"bids\":[{}],\"asks\":[{}]}}",
            levels_json(30000.0, -0.01, 1000, true),
            levels_json(30000.01, 0.01, 1000, true)
        );
        frames.push(Frame {
            exchange: "binance",
            symbol: "BNBBTC",
            channel: "snapshot".into(),
            payload: snapshot.into_bytes(),
        });
        for i in 0..deltas {
            let u = 1001 + i;
            let delta = format!(
                "{{\"stream\":\"bnbbtc@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{},\"s\":\"BNBBTC\",\"U\":{u},\"u\":{u},\"b\":[[\"{:.2}\",\"0.50000000\"]],\"a\":[]}}}}",
                1672515782136 + i as i64,
                30000.0 - 0.01 * (i % 7) as f64
            );
            frames.push(Frame {
                exchange: "binance",
                symbol: "BNBBTC",
                channel: "depth".into(),
                payload: delta.into_bytes(),
            });
        }
        let coinbase_levels = |side: &str, base: f64, step: f64| -> Vec<String> {
            (0..1000)
                .map(|i| format!(
                    "{{\"side\":\"{side}\",\"event_time\":\"1970-01-01T00:00:00Z\",\"price_level\":\"{:.2}\",\"new_quantity\":\"{:.8}\"}}",
                    base + step * i as f64,
                    0.001 * ((i * 104729) % 3000 + 1) as f64
                ))
                .collect()
        };
        let mut updates = coinbase_levels("bid", 30000.0, -0.01);
        updates.extend(coinbase_levels("offer", 30000.02, 0.01));
        let coinbase = format!(
            "{{\"channel\":\"l2_data\",\"client_id\":\"\",\"timestamp\":\"2023-01-01T00:00:00.000714Z\",\"sequence_num\":0,\"events\":[{{\"type\":\"snapshot\",\"product_id\":\"BTC-USD\",\"updates\":[{}]}}]}}",
            updates.join(",")
        );
        frames.push(Frame {
            exchange: "coinbase",
            symbol: "BTC-USD",
            channel: "depth".into(),
            payload: coinbase.into_bytes(),
        });
        let kraken_levels = |base: f64, step: f64| -> Vec<(Dec, Dec)> {
            (0..100)
                .map(|i| {
                    let p = parse_dec(&format!("{:.1}", base + step * i as f64)).unwrap();
                    let q =
                        parse_dec(&format!("{:.8}", 0.01 * ((i * 31) % 97 + 1) as f64)).unwrap();
                    (p, q)
                })
                .collect()
        };
        let (bids, asks) = (kraken_levels(29999.9, -0.1), kraken_levels(30000.1, 0.1));
        let json = |levels: &[(Dec, Dec)]| -> String {
            levels
                .iter()
                .map(|(p, q)| format!("{{\"price\":{p},\"qty\":{q}}}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let kraken = format!(
            "{{\"channel\":\"book\",\"type\":\"snapshot\",\"data\":[{{\"symbol\":\"BTC/USD\",\"bids\":[{}],\"asks\":[{}],\"checksum\":{}}}]}}",
            json(&bids),
            json(&asks),
            crate::book::kraken::book_checksum(&bids, &asks)
        );
        frames.push(Frame {
            exchange: "kraken",
            symbol: "BTC/USD",
            channel: "depth".into(),
            payload: kraken.into_bytes(),
        });
        let mut out = Outputs::default();
        for (i, frame) in frames.iter().enumerate() {
            out.clear();
            books
                .process(&envelope(frame, i), NO_WATERMARK, &mut out)
                .unwrap();
            if frame.channel != "depth" || frame.exchange != "binance" {
                // each snapshot made its book LIVE
                let view = out.top_changes.last().expect("a new top");
                assert_eq!(
                    (view.exchange.as_str(), view.status),
                    (frame.exchange, BookStatus::Live)
                );
            }
        }
        books
    }

    #[test]
    fn large_books_round_trip() {
        let books = large_books(20);
        let bytes = books.snapshot();
        let restored = InstrumentBooks::restore(&bytes).unwrap();
        assert_eq!(restored.snapshot(), bytes);
        // the levels are in it: 4200 levels, two decimals each, a few bytes per decimal
        assert!(bytes.len() > 4200 * 2 * 4, "{} bytes", bytes.len());
    }

    /// `cargo test --release --no-default-features -- --ignored --nocapture state_size_and_time`
    #[test]
    #[ignore]
    fn state_size_and_time() {
        for deltas in [0, 100, 1000] {
            let books = large_books(deltas);
            let bytes = books.snapshot();
            let rounds = 200;
            let start = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(books.snapshot());
            }
            let write_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
            let start = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(
                    InstrumentBooks::restore(std::hint::black_box(&bytes)).unwrap(),
                );
            }
            let read_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
            println!(
                "binance 1000+1000 levels, coinbase 1000+1000, kraken 100+100, {deltas} binance updates in the history: {} bytes, snapshot {write_us:.0} us, restore {read_us:.0} us",
                bytes.len()
            );
        }
    }
}
