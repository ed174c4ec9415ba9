//! A short run of the fuzz campaign (fixed seed, a few seconds) in `cargo test`; the long
//! run is `make fuzz` (examples/fuzz.rs, docs/robustness.md).

#[path = "../fuzz/campaign.rs"]
mod campaign;

/// Executions per target: a few seconds in a debug build.
const SHORT: u64 = 4_000;

fn assert_clean(report: &campaign::Report) {
    assert!(report.clean(), "{}: {report:#?}", report.target);
    assert_eq!(report.executions, SHORT);
}

#[test]
fn binance_frames() {
    let report = campaign::run_frames("binance", SHORT, 7);
    assert_clean(&report);
    assert!(
        report.live_books_checked > 0,
        "no LIVE book was published: {report:#?}"
    );
}

#[test]
fn coinbase_frames() {
    let report = campaign::run_frames("coinbase", SHORT, 7);
    assert_clean(&report);
    assert!(
        report.live_books_checked > 0,
        "no LIVE book was published: {report:#?}"
    );
}

#[test]
fn kraken_frames() {
    let report = campaign::run_frames("kraken", SHORT, 7);
    assert_clean(&report);
    assert!(
        report.live_books_checked > 0,
        "no LIVE book was published: {report:#?}"
    );
}

#[test]
fn envelopes() {
    assert_clean(&campaign::run_envelopes(SHORT, 7));
}
