//! Time the live job's core per frame, without Python: `StreamBooks::process_bundle` on
//! bundles of one instrument's frames, then `take_blob` and `take_redis`, as the operator
//! calls them.
//!
//! Input: a file of frames as the generator writes them (see `write_frames` in the usage
//! below), each `u16 key_len`, `i64 timestamp_ms`, `u32 value_len`, key (the NBBO group), the
//! raw Kafka value (all little-endian):
//!
//! ```text
//! PYTHONPATH=. python - 100000 /tmp/frames.bin <<'EOF'
//! import struct, sys
//! from tickflow.generated import make_dataset
//! from tickflow.config import load_settings
//! with open(sys.argv[2], "wb") as f:
//!     for _, value, ts, group in make_dataset(load_settings(), int(sys.argv[1])).records:
//!         f.write(struct.pack("<HqI", len(group), ts, len(value)) + group.encode() + value)
//! EOF
//! cargo run --release --no-default-features --example stream_bench -- /tmp/frames.bin [runs] [bundle]
//! ```
//!
//! The rules are the shipped configuration's (`config/tickflow.yaml`). Prints us per frame
//! of each run and a digest of every output byte (blobs and Redis writes), which must not
//! change when the core gets faster.

use std::collections::HashMap;
use std::time::Instant;

use tickflow_native::dec::parse_dec;
use tickflow_native::instrument::Rules;
use tickflow_native::stream::{push_frame, write_bundle, LiveRules, StreamBooks};

/// `config/tickflow.yaml`'s `flink.watermark_out_of_orderness_ms`, plus one.
const LAG_MS: i64 = 5001;

struct Bundle {
    key: String,
    data: Vec<u8>,
    frames: usize,
    watermark_ms: i64,
    now_ms: i64,
}

fn read_frames(path: &str) -> Vec<(String, i64, Vec<u8>)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let key_len = u16::from_le_bytes(data[pos..pos + 2].try_into().unwrap()) as usize;
        let ts = i64::from_le_bytes(data[pos + 2..pos + 10].try_into().unwrap());
        let len = u32::from_le_bytes(data[pos + 10..pos + 14].try_into().unwrap()) as usize;
        pos += 14;
        let key = String::from_utf8(data[pos..pos + key_len].to_vec()).unwrap();
        pos += key_len;
        frames.push((key, ts, data[pos..pos + len].to_vec()));
        pos += len;
    }
    frames
}

/// Frames grouped per key into bundles of `size`, in arrival order, each with the watermark
/// (latest timestamp minus the lag) and clock when it was sent.
fn bundles(frames: &[(String, i64, Vec<u8>)], size: usize) -> Vec<Bundle> {
    let mut pending: HashMap<&str, (Vec<u8>, usize)> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let mut latest = i64::MIN;
    let send = |key: &str, data: Vec<u8>, frames: usize, latest: i64, out: &mut Vec<Bundle>| {
        out.push(Bundle {
            key: key.to_string(),
            data,
            frames,
            watermark_ms: if latest == i64::MIN {
                latest
            } else {
                latest - LAG_MS
            },
            now_ms: latest,
        });
    };
    for (key, ts, value) in frames {
        latest = latest.max(*ts);
        let entry = pending.entry(key.as_str()).or_insert_with(|| {
            order.push(key.as_str());
            (write_bundle(0, &[]), 0)
        });
        push_frame(&mut entry.0, *ts, value);
        entry.1 += 1;
        if entry.1 >= size {
            let (data, n) = std::mem::replace(entry, (write_bundle(0, &[]), 0));
            send(key, data, n, latest, &mut out);
        }
    }
    for key in order {
        let (data, n) = pending.remove(key).unwrap();
        if n > 0 {
            send(key, data, n, latest, &mut out);
        }
    }
    out
}

fn core() -> StreamBooks {
    let rules = Rules {
        top_n: 10,
        snapshot_interval_ms: 1000,
        max_levels: 5000,
        max_buffered: 10000,
        nbbo_stale_after_ms: 10000,
        bar_intervals_ms: vec![1000, 60000],
        depth_band_bps: parse_dec("10").unwrap(),
        trade_dedup_ms: 60000,
    };
    let live = LiveRules {
        stale_after_ms: 30000,
        resync_retry_ms: 10000,
        redis_prefix: "tf".to_string(),
    };
    StreamBooks::new(rules, live, Vec::new())
}

/// CPU seconds this thread ran so far (Linux, 10 ms ticks; 0 elsewhere): on a loaded machine
/// steadier than the wall clock.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    // after the command name in parentheses: state is field 3, utime and stime 14 and 15
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

/// One pass over all bundles with a fresh core: wall and CPU seconds spent in the core, and
/// the digest.
fn run(bundles: &[Bundle], digest: bool) -> (f64, f64, u32, usize) {
    let mut core = core();
    let mut hasher = crc32fast::Hasher::new();
    let mut bytes = 0;
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    for b in bundles {
        core.process_bundle(&b.key, &b.data, b.watermark_ms, b.now_ms)
            .unwrap();
        let blob = core.take_blob();
        let redis = core.take_redis(b.now_ms * 1_000_000);
        if digest {
            if let Some(blob) = &blob {
                hasher.update(blob);
                bytes += blob.len();
            }
            for (nbbo, keys, args) in &redis {
                hasher.update(&[*nbbo as u8]);
                for k in keys {
                    hasher.update(k.as_bytes());
                }
                for a in args {
                    hasher.update(a);
                    bytes += a.len();
                }
            }
        }
        std::hint::black_box((blob, redis));
    }
    (
        start.elapsed().as_secs_f64(),
        cpu_seconds() - cpu_start,
        hasher.finalize(),
        bytes,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map_or("/tmp/frames.bin", String::as_str);
    let runs: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let size: usize = args.get(3).map_or(64, |s| s.parse().unwrap());
    let frames = read_frames(path);
    let bundles = bundles(&frames, size);
    let n: usize = bundles.iter().map(|b| b.frames).sum();
    let (_, _, digest, bytes) = run(&bundles, true);
    println!(
        "{n} frames in {} bundles; output digest {digest:08x} ({bytes} bytes)",
        bundles.len()
    );
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (secs, cpu_secs, _, _) = run(&bundles, false);
        let (us, cpu_us) = (secs * 1e6 / n as f64, cpu_secs * 1e6 / n as f64);
        println!("run {i}: {us:.3} us/frame ({cpu_us:.2} us CPU)");
        wall.push(us);
        cpu.push(cpu_us);
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    if runs > 0 {
        println!(
            "min {:.3} median {:.3} us/frame; CPU min {:.2} median {:.2} us/frame",
            wall[0],
            wall[runs / 2],
            cpu[0],
            cpu[runs / 2]
        );
    }
}
