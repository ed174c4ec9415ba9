"""bench.offered, the pure parts of the offered-rate latency benchmark: envelope templates
patched in place (receive time, payload event times, trade ids), the pacing schedule and the
summaries of rates and lags."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

# bench/ is not an installed package; tests/unit has no __init__.py to put the root on the path
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.offered import (  # noqa: E402
    EPOCH_MS,
    RECEIVE_TIME,
    RFC3339_MICROS,
    RFC3339_NANOS,
    TRADE_ID,
    check_trade_ids,
    frames_due,
    lag_summary,
    make_template,
    normalize_payload,
    patched,
    rate_summary,
    receive_time_offset,
    seconds_until_next,
    stamps,
    window,
    zigzag_varint,
)
from schemas.codec import RawEnvelope, decode_envelope, encode_envelope  # noqa: E402

pytestmark = pytest.mark.unit

BINANCE_TRADE = (
    b'{"stream":"ethusdt@trade","data":{"e":"trade","E":1796436690120,"s":"ETHUSDT",'
    b'"t":1796441080353061,"p":"1804.88000000","q":"17.22940000","T":1796436690120,'
    b'"m":true,"M":true}}'
)
COINBASE_DEPTH = (
    b'{"channel":"l2_data","client_id":"","timestamp":"2026-12-05T02:11:30.1Z",'
    b'"sequence_num":14,"events":[{"type":"update","product_id":"BTC-USD","updates":['
    b'{"side":"bid","event_time":"2026-12-05T02:11:30Z","price_level":"26954.2",'
    b'"new_quantity":"0.24656548"},{"side":"bid","event_time":"1970-01-01T00:00:00Z",'
    b'"price_level":"1","new_quantity":"5%"}]}]}'
)
KRAKEN_TRADE = (
    b'{"channel":"trade","type":"update","data":[{"symbol":"SOL/USD","side":"buy",'
    b'"price":150.44,"qty":2.87861250,"ord_type":"market","trade_id":1796436790355413,'
    b'"timestamp":"2026-12-05T02:11:30.155000Z"}]}'
)


def envelope(exchange: str, payload: bytes, receive_time_ns: int) -> RawEnvelope:
    return RawEnvelope("BTC-USD", exchange, "X", "depth", receive_time_ns, "c" * 32, 7, payload)


def template_of(exchange: str, payload: bytes):  # type: ignore[no-untyped-def]
    normalized, patches = normalize_payload(exchange, payload)
    env = envelope(exchange, normalized, 1_796_436_690_119_000_000)
    value = encode_envelope(env)
    return make_template(value, len(normalized), patches, b"key", 2), env


def test_zigzag_matches_the_avro_encoder() -> None:
    for n in (0, 1, -1, 63, 64, 2**55, 1_796_436_690_119_000_000, 2**62 - 1):
        env = envelope("binance", b"", n)
        value = encode_envelope(env)
        offset = receive_time_offset(value) if n >= 2**55 else None
        assert zigzag_varint(n) in value
        if offset is not None:
            assert value[offset : offset + 9] == zigzag_varint(n)


def test_receive_time_offset_refuses_a_short_varint() -> None:
    value = encode_envelope(envelope("binance", b"x", 12345))
    with pytest.raises(ValueError):
        receive_time_offset(value)


def test_stamps_have_fixed_widths() -> None:
    t = 1_796_436_690_119_000_123
    s = stamps(t)
    assert s[EPOCH_MS] == b"1796436690119"
    assert s[RFC3339_NANOS] == b"2026-12-05T02:11:30.119000123Z"
    assert s[RFC3339_MICROS] == b"2026-12-05T02:11:30.119000Z"
    assert s[RECEIVE_TIME] == zigzag_varint(t)
    assert {k: len(v) for k, v in stamps(10**18 * 2).items()} == {k: len(v) for k, v in s.items()}


def test_normalize_finds_times_and_trade_ids_and_fixes_widths() -> None:
    out, patches = normalize_payload("binance", BINANCE_TRADE)
    assert out == BINANCE_TRADE
    assert [k for _, k, _ in patches] == [EPOCH_MS, TRADE_ID, EPOCH_MS]
    assert [tid for _, k, tid in patches if k == TRADE_ID] == [1796441080353061]
    out, patches = normalize_payload("coinbase", COINBASE_DEPTH)
    # Coinbase's trimmed times get all nine digits; the snapshot epoch stays as it is
    assert [k for _, k, _ in patches] == [RFC3339_NANOS, RFC3339_NANOS]
    assert b"1970-01-01T00:00:00Z" in out
    for offset, _, _ in patches:
        assert out[offset + 29 : offset + 30] == b"Z"
    out, patches = normalize_payload("kraken", KRAKEN_TRADE)
    assert out == KRAKEN_TRADE
    assert sorted(k for _, k, _ in patches) == [RFC3339_MICROS, TRADE_ID]


@pytest.mark.parametrize(
    ("exchange", "payload"),
    [("binance", BINANCE_TRADE), ("coinbase", COINBASE_DEPTH), ("kraken", KRAKEN_TRADE)],
)
def test_patched_envelope_decodes_with_the_new_times_and_ids(exchange: str, payload: bytes) -> None:
    template, original = template_of(exchange, payload)
    t = 1_796_500_000_123_456_789
    shift = 3 * 10**10
    for cache in (None, {}):
        value = patched(template, stamps(t), shift, cache)
        assert len(value) == len(template.value)
        env = decode_envelope(value)
        assert env.receive_time_ns == t
        assert (env.instrument, env.connection_id, env.connection_seq) == (
            original.instrument, original.connection_id, original.connection_seq,
        )  # fmt: skip
        text = env.payload.decode()
        if exchange == "binance":
            assert '"E":1796500000123' in text and '"T":1796500000123' in text
            assert f'"t":{1796441080353061 + shift}' in text
        elif exchange == "coinbase":
            assert text.count("2026-12-05T19:46:40.123456789Z") == 2
            assert '"new_quantity":"5%"' in text  # a literal % survives the formatting
        else:
            assert '"timestamp":"2026-12-05T19:46:40.123456Z"' in text
            assert f'"trade_id":{1796436790355413 + shift}' in text


def test_trade_ids_must_keep_their_width() -> None:
    template, _ = template_of("binance", BINANCE_TRADE)
    check_trade_ids([template], 10**12)
    with pytest.raises(ValueError):
        check_trade_ids([template], 9 * 10**15)


def test_pacing_schedule() -> None:
    assert frames_due(100_000, 0.0) == 0
    assert frames_due(100_000, 0.0015) == 150
    assert frames_due(100_000, -1.0) == 0
    assert frames_due(20_000, 300.0) == 6_000_000
    # ahead of schedule: sleep until the next frame is due, never more than a step
    assert seconds_until_next(1000, 10, 0.0105, 0.001) == pytest.approx(0.0005)
    assert seconds_until_next(1, 0, 0.0, 0.001) == 0.001
    assert seconds_until_next(1000, 10, 0.02, 0.001) == 0.0  # behind: no sleep


def test_rate_summary_and_window() -> None:
    progress = [(float(t), t * 1000) for t in range(11)]
    progress[6] = (6.0, 5_500)  # one slow second, caught up in the next
    s = rate_summary(progress, 1000.0, 2.0, 10.0)
    assert s["seconds"] == 8.0 and s["frames"] == 8000
    assert s["achieved_over_offered"] == 1.0
    assert s["slowest_second_per_s"] == 500.0
    assert rate_summary(progress, 1000.0, 20.0, 30.0) == {"seconds": 0.0}
    behind = rate_summary([(0.0, 0), (10.0, 9_700)], 1000.0, 0.0, 10.0)
    assert behind["achieved_over_offered"] == 0.97
    assert window([(1.0, "a"), (2.0, "b"), (3.0, "c")], 2.0, 3.0) == ["b"]


def test_lag_summary_keeps_the_last_value() -> None:
    s = lag_summary([0.1, 0.2, 5.0, 0.3])
    assert s["p50"] == 0.2 and s["max"] == 5.0 and s["last"] == 0.3 and s["n"] == 4
    assert lag_summary([]) == {"n": 0}


def test_stamps_now_is_9_bytes() -> None:
    assert len(stamps(time.time_ns())[RECEIVE_TIME]) == 9


def run_figures(rate: float, p99_ms: float, lag_p99_s: float, keeps_up: bool = True) -> dict:
    return {
        "offered_frames_per_s": rate,
        "window_s": 300.0,
        "producer": {"keeps_up": keeps_up},
        "book_update_ms": {
            "seen_minus_receive": {"p50": 1.0, "p99": p99_ms, "p99_9": p99_ms},
            "publish_minus_receive": {"p99": p99_ms - 1},
        },
        "nbbo_ms": {"seen_minus_receive": {"p99": p99_ms}},
        "consumer_lag": {
            "pending_records": {"n": 300, "p99": lag_p99_s * rate},
            "pending_seconds_at_offered_rate": {"n": 300, "p99": lag_p99_s, "last": 0.1},
            "emit_event_time_lag_s": {"n": 300, "p99": lag_p99_s, "last": 0.1},
        },
    }


def test_headline_and_the_summary_read_it_first() -> None:
    from bench import summary
    from bench.offered import headline

    runs = [
        run_figures(20_000, 12.0, 0.05),
        run_figures(50_000, 30.0, 0.2),
        run_figures(100_000, 900.0, 40.0, keeps_up=False),  # the producer fell behind
    ]
    targets = headline(runs)
    assert targets["e2e_latency_p99"]["measured"] == 30.0
    assert targets["e2e_latency_p99"]["conditions"]["offered_frames_per_s"] == 50_000
    # the peak is the highest rate whose producer kept up
    assert targets["consumer_lag_at_peak"]["measured"] == 0.2
    book_pipeline = {"latency": [{"target_frames_per_s": 500, "p99_ms": 99.0}]}
    files = {"offered_latency.json": {"targets": targets}, "book_pipeline.json": book_pipeline}
    by_name = {e["name"]: e for e in summary.summarize(files)["targets"]}
    assert by_name["e2e_latency_p99"]["source"] == "offered_latency.json"
    assert by_name["e2e_latency_p99"]["met"] is True
    assert by_name["consumer_lag_at_peak"]["source"] == "offered_latency.json"
    assert headline([run_figures(100_000, 5.0, 0.1)]).keys() == {"consumer_lag_at_peak"}


def test_stall_spells_join_adjacent_slow_seconds_and_name_what_they_line_up_with() -> None:
    from bench.offered_latency import stall_spells

    spells = stall_spells(
        {100: 600.0, 101: 700.0, 102: 10.0, 105: 900.0, 300: 5000.0},
        cycle_starts=[90.0, 104.5],
        checkpoints={1: [100_500, 300], 2: [110_000, 20]},
        start=95.0,
        end=200.0,
    )
    assert spells == [
        {"at_s": 5.0, "seconds": 2, "worst_ms": 700.0, "since_cycle_start_s": 10.0,
         "checkpoints": [{"at_s": 5.5, "ms": 300}]},
        {"at_s": 10.0, "seconds": 1, "worst_ms": 900.0, "since_cycle_start_s": 0.5,
         "checkpoints": []},
    ]  # fmt: skip
