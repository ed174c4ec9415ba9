//! The core's fuzz campaign, the long run (`make fuzz`; see docs/robustness.md):
//!
//! `cargo run --release --no-default-features --example fuzz -- [EXECUTIONS] [SEED] [TARGET...]`
//!
//! TARGET: binance, coinbase, kraken (frames through `StreamBooks`) or envelope (damaged
//! envelopes and bundles); all four by default. Exits 1 on any crash, hang or LIVE book that
//! breaks the invariants, printing the inputs.

#[path = "../fuzz/campaign.rs"]
mod campaign;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let executions: u64 = args
        .first()
        .map_or(1_000_000, |a| a.parse().expect("EXECUTIONS"));
    let seed: u64 = args.get(1).map_or(1, |a| a.parse().expect("SEED"));
    let mut targets: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
    if targets.is_empty() {
        targets = vec!["binance", "coinbase", "kraken", "envelope"];
    }
    let mut clean = true;
    for target in targets {
        let report = match target {
            "envelope" => campaign::run_envelopes(executions, seed),
            exchange => campaign::run_frames(exchange, executions, seed),
        };
        println!(
            "{:<9} executions {:>9}  time {:>7.1} s  ({:>6.0}/s)  slowest {:>8.3} ms  crashes {}  hangs {}  \
             invariant failures {}  LIVE books checked {}  dead letters {}",
            report.target,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.executions as f64 / report.elapsed.as_secs_f64(),
            report.slowest.as_secs_f64() * 1000.0,
            report.crashes,
            report.hangs,
            report.invariant_failures,
            report.live_books_checked,
            report.dead_letters,
        );
        if std::env::var_os("FUZZ_REASONS").is_some() {
            let mut reasons: Vec<_> = report.reasons.iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(a.1));
            for (reason, n) in reasons.iter().take(15) {
                println!("  {n:>8}  {reason}");
            }
        }
        for finding in &report.findings {
            println!("  FINDING {finding}");
        }
        clean &= report.clean();
    }
    if !clean {
        std::process::exit(1);
    }
}
