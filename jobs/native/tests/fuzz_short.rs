//! A short run of the fuzz campaign (fixed seed, a few seconds) in `cargo test`; the long
//! run is `make fuzz` (examples/fuzz.rs, docs/robustness.md).

#[path = "../fuzz/campaign.rs"]
mod campaign;

/// Executions per target: seconds in a debug build.
const SHORT: u64 = 1_500;

/// One test, the targets in turn: the campaign counts panics process-wide.
#[test]
fn short_campaign_finds_nothing() {
    for exchange in campaign::EXCHANGES {
        let report = campaign::run_frames(exchange, SHORT, 7);
        assert!(report.clean(), "{exchange}: {report:#?}");
        assert_eq!(report.executions, SHORT);
        assert!(
            report.live_books_checked > 0,
            "{exchange}: no LIVE book was published: {report:#?}"
        );
    }
    let report = campaign::run_envelopes(SHORT, 7);
    assert!(report.clean(), "{}: {report:#?}", report.target);
}
