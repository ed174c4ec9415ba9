"""The benchmark harness without servers: stats helpers, the summary's target mapping and
report, and the data generators of the Redis and ClickHouse benchmarks."""

from __future__ import annotations

import json
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

# bench/ is not an installed package; tests/unit has no __init__.py to put the root on the path
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import clickhouse_queries as chq  # noqa: E402
from bench import clickhouse_queries_api as chqa  # noqa: E402
from bench import redis_ops, serialization, summary  # noqa: E402
from bench.stats import (  # noqa: E402
    histogram,
    median,
    pct_key,
    percentile,
    summarize,
    target_entry,
    write_results,
)
from jobs.sinks.clickhouse import COLUMNS  # noqa: E402
from jobs.sinks.queries import DAILY_QUERIES  # noqa: E402
from schemas.codec import RawEnvelope  # noqa: E402
from tickflow.config import load_settings  # noqa: E402

pytestmark = pytest.mark.unit


# -- stats ---------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_summarize_and_median() -> None:
    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert s["n"] == 4 and s["min"] == 1.0 and s["max"] == 4.0 and s["p50"] == 2.0
    assert s["mean"] == 2.5 and s["p99_9"] == 4.0
    assert summarize([]) == {"n": 0}
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5
    assert pct_key(99.9) == "p99_9" and pct_key(50.0) == "p50"


def test_histogram_counts_every_sample_in_log_bins() -> None:
    samples = [0.5, 1.0, 3.0, 10.0, 99.0, 1000.0, -1.0]
    h = histogram(samples, bins_per_decade=2)
    assert sum(h["counts"]) == len(samples)
    assert len(h["edges"]) == len(h["counts"]) + 1
    assert h["edges"] == sorted(h["edges"])
    assert h["edges"][0] <= 0.5 and h["edges"][-1] > 1000.0
    assert histogram([]) == {"edges": [], "counts": []}


def test_write_results(tmp_path: Path) -> None:
    path = write_results("x", {"targets": {"t": target_entry(1.5, "ms", a=1)}}, tmp_path / "x.json")
    data = json.loads(path.read_text())
    assert data["targets"]["t"] == {"measured": 1.5, "unit": "ms", "conditions": {"a": 1}}
    assert len(data["revision"].rstrip("+")) == 12 and data["written"].endswith("Z")


# -- summary -------------------------------------------------------------------------------------


def test_every_target_has_a_source_and_a_command() -> None:
    names = [t.name for t in summary.TARGETS]
    assert len(names) == len(set(names))
    for t in summary.TARGETS:
        assert t.sources and t.unit in summary.UNITS and t.better in ("lower", "higher")
        assert all(s.command.startswith("python -m bench.") for s in t.sources)


def test_missing_results_are_not_measured() -> None:
    out = summary.summarize({})
    assert len(out["targets"]) == len(summary.TARGETS)
    for e in out["targets"]:
        assert e["measured"] is None and e["met"] is False
        assert e["note"] == f"not measured: run {e['command']}"
        assert {"name", "target", "measured", "unit", "met", "conditions", "command"} <= set(e)


def test_targets_convention_with_unit_conversion() -> None:
    files = {
        "redis_ops.json": {
            "command": "python -m bench.redis_ops --writes 10",
            "targets": {
                "book_update_p99": target_entry(4999, "us", books=3),
                "nbbo_p99": target_entry(2.5, "ms"),
            },
        },
        "backfill.json": {"targets": {"batch_day": target_entry(300, "s")}},
    }
    by_name = {e["name"]: e for e in summary.summarize(files)["targets"]}
    book = by_name["book_update_p99"]
    assert book["measured"] == pytest.approx(4.999) and book["unit"] == "ms" and book["met"]
    assert book["conditions"] == {"books": 3}
    assert book["command"] == "python -m bench.redis_ops --writes 10"
    assert by_name["nbbo_p99"]["met"] is False  # 2.5 ms against < 2 ms
    assert by_name["batch_day"]["measured"] == 5.0 and by_name["batch_day"]["met"]


def test_book_pipeline_is_the_fallback_for_throughput_and_latency() -> None:
    pipeline = {
        "command": "python -m bench.book_pipeline",
        "parallelism": 1,
        "machine": {"cpus": 2},
        "throughput": [
            {"mix": "binance", "state_backend": "hashmap", "frames_per_s": 3000},
            {"mix": "all", "state_backend": "hashmap", "frames_per_s": 2280},
            {"mix": "all", "state_backend": "rocksdb", "frames_per_s": 2010},
        ],
        "latency": [
            {"target_frames_per_s": 2000.0, "p99_ms": 2125.7},
            {"target_frames_per_s": 500.0, "p99_ms": 109.5, "p50_ms": 59.1},
        ],
    }
    by_name = {e["name"]: e for e in summary.summarize({"book_pipeline.json": pipeline})["targets"]}
    assert by_name["sustained_throughput"]["measured"] == 2280  # mix "all" preferred
    assert by_name["sustained_throughput"]["conditions"]["parallelism"] == 1
    assert by_name["e2e_latency_p99"]["measured"] == 109.5  # the lowest live rate
    assert by_name["e2e_latency_p99"]["source"] == "book_pipeline.json"
    # the lag at the highest offered rate, in seconds: 2.1 s, not met
    lag = by_name["consumer_lag_at_peak"]
    assert lag["measured"] == pytest.approx(2.126, abs=1e-3) and not lag["met"]
    assert lag["conditions"]["every_rate_p99_s"]["500.0"] == pytest.approx(0.1095, abs=1e-3)
    # a dedicated results file wins over the fallback
    newer = {"targets": {"sustained_throughput": target_entry(120_000, "msg/s")}}
    both = summary.summarize({"book_pipeline.json": pipeline, "throughput.json": newer})
    entry = next(e for e in both["targets"] if e["name"] == "sustained_throughput")
    assert entry["measured"] == 120_000 and entry["met"] and entry["source"] == "throughput.json"


def test_convert_refuses_other_dimensions() -> None:
    assert summary.convert(1500, "us", "ms") == pytest.approx(1.5)
    assert summary.convert(2, "min", "s") == 120
    with pytest.raises(ValueError):
        summary.convert(1, "ms", "msg/s")


def test_report_and_table(tmp_path: Path) -> None:
    files = {
        "redis_ops.json": {
            "targets": {"book_update_p99": target_entry(1.0, "ms")},
            "histograms": {"book write, us": histogram([100.0, 120.0, 900.0])},
        },
        "kafka_ceiling.json": {
            "targets": {"kafka_consume_ceiling": target_entry(250_000, "msg/s")},
            "series": {"consume": [[0, 0], [1, 200_000], [2, 450_000]]},
        },
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    assert summary.main(["--results", str(tmp_path)]) == 0
    written = json.loads((tmp_path / summary.SUMMARY).read_text())
    assert written["context"]["kafka_consume_ceiling"]["measured"] == 250_000
    page = (tmp_path / summary.REPORT).read_text()
    assert page.count("<svg") == 2 and "book_update_p99" in page
    text = summary.table(written)
    assert "NOT MEASURED" in text and "book_update_p99" in text
    assert summary.rates([[0, 0], [2, 100], [2, 100], [3, 250]]) == [(2.0, 50.0), (3.0, 150.0)]


# -- generators ----------------------------------------------------------------------------------


def test_book_frames_are_realistic_and_the_core_writes_one_versioned_book_each() -> None:
    settings = load_settings()
    frames = redis_ops.book_frames(books=6, count=60, top_n=settings.book.top_n)
    assert len(frames) == 60 and len({f.instrument for f in frames}) == 2  # 3 venues each
    writes = redis_ops.book_writes(settings, "tfbench", frames)
    last: dict[str, str] = {}
    for keys, args in writes:
        bids, asks = json.loads(args[3]), json.loads(args[4])
        assert args[1] == b"LIVE" and len(bids) == len(asks) == settings.book.top_n
        assert Decimal(bids[0][0]) < Decimal(asks[0][0])
        assert [Decimal(p) for p, _ in bids] == sorted((Decimal(p) for p, _ in bids), reverse=True)
        assert Decimal(bids[0][0]).as_tuple().exponent == -2  # a 0.01 tick
        version = args[10].decode()
        assert version > last.get(keys[0], "")
        last[keys[0]] = version
    assert len(last) == 6
    core = redis_ops.Core(settings, "tfbench")
    nbbos = [core.process(f)[1] for f in frames]
    assert sum(map(len, nbbos)) > 30  # most frames move an instrument's NBBO


def test_clickhouse_generators_fill_every_column() -> None:
    import numpy as np

    insts = chq.instruments(2, 0.001)
    assert insts[0].name == chq.QUERIED and insts[1].trades < insts[0].trades
    rng = np.random.default_rng(0)
    mid = chq.mid_path(rng, insts[0].base_price)
    assert len(mid) == chq.DAY_MS // 1000
    tables: dict[str, list[dict[str, list[object]]]] = {}
    for trades, matched in chq.trade_columns(rng, insts[0], mid):
        tables.setdefault("trades", []).append(trades)
        tables.setdefault("matched_trades", []).append(matched)
    tables["nbbo"] = [chq.nbbo_columns(rng, insts[0], mid)]
    tables["bars"] = list(chq.bar_columns(rng, insts[0], mid))
    tables["late_events"] = [chq.late_columns(rng, insts[0])]
    for table, batches in tables.items():
        for cols in batches:
            assert set(cols) == set(COLUMNS[table]), table
            lengths = {len(v) for v in cols.values()}
            assert len(lengths) == 1, (table, lengths)
    trades = tables["trades"][0]
    assert trades["trade_time_ms"] == sorted(trades["trade_time_ms"])
    assert all(chq.T0_MS <= t < chq.T0_MS + chq.DAY_MS for t in trades["trade_time_ms"])
    assert set(trades["date"]) == {date(2026, 11, 30)}
    # bars: a traded window has OHLC, an empty one NULLs
    bars = tables["bars"][0]
    for count, open_ in zip(bars["trade_count"], bars["open"], strict=True):
        assert (open_ is None) == (count == 0)


def test_clickhouse_queries_cover_the_documented_ones() -> None:
    qs = chq.queries("BTCUSD")
    assert {q.documented for q in qs} == set(DAILY_QUERIES)
    not_day = {"nbbo_history_hour", "nbbo_history_full_day", "matched_trades_detail_hour"}
    assert {q.name for q in qs if not q.one_day} == not_day
    assert set(chqa.ENDPOINTS) | set(chqa.NO_ENDPOINT) == {q.name for q in qs}


def test_serialization_codecs_round_trip() -> None:
    env = RawEnvelope("BTC-USD", "coinbase", "BTC-USD", "depth", 1, "c", 2, b'{"a":"\xff"}')
    for codec in serialization.CODECS:
        assert codec.decode(codec.encode(env)) == env, codec.name
    settings = load_settings()
    envelopes = [
        RawEnvelope("BTC-USD", "coinbase", "BTC-USD", "depth", 1, "c", 2, b"{}"),
        RawEnvelope("BTC-USD", "coinbase", "BTC-USD", "trade", 1, "c", 3, b"{}"),
    ]
    assert len(serialization.pipeline_path(settings, envelopes)) == 2
    samples = serialization.time_calls(len, [b"x", b"yy"], repeats=2)
    assert len(samples) == 4 and all(s >= 0 for s in samples)
