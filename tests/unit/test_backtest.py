"""The backtest (``jobs/backtest.py``) on generated frames held in memory: every row the core
emits delivered once as a typed event, in event-time order (the documented key, the same
whatever batches the source reads), an instrument selection, pacing on a fake clock, the fill
model, and the example strategy of docs/backtest.md."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from jobs.backfill import PartitionRange, native_partition
from jobs.backtest import (
    KIND_NAMES,
    KINDS,
    Backtest,
    Bar,
    Context,
    Event,
    FillSimulator,
    Order,
    TopOfBook,
    Trade,
    digest_rows,
    event_values,
    load_strategy,
    parse_time_ms,
)
from jobs.sinks.clickhouse import COLUMNS, final_rows, row_tuples
from tests.export_day import DAY_MS, generated_frames
from tests.memory_frames import MemoryFrames
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

pytest.importorskip("tickflow_native")

ROOT = Path(__file__).resolve().parents[2]
FROM_MS, TO_MS = DAY_MS - 100_000, DAY_MS + 60_000  # the first burst, a late trade in it


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[int, Event]] = []

    def on_event(self, event: Event, ctx: Context) -> None:
        self.seen.append((ctx.time_ms, event))


def settings(chunk: int = 1000, reorder_ms: int = 1000) -> Settings:
    base = load_settings(environ={})
    return dataclasses.replace(
        base,
        backtest=dataclasses.replace(base.backtest, chunk_records=chunk, reorder_ms=reorder_ms),
    )


@pytest.fixture(scope="module")
def frames() -> list[tuple[bytes, int]]:
    return [f for f in generated_frames() if FROM_MS <= f[1] < TO_MS]


def run(frames: list[tuple[bytes, int]], **kwargs: Any) -> tuple[Recorder, Any]:
    chunk = kwargs.pop("chunk", 1000)
    read_batch = kwargs.pop("read_batch", 333)
    source = MemoryFrames(frames, read_batch=read_batch)
    recorder = Recorder()
    result = Backtest(settings(chunk), source, FROM_MS, TO_MS, **kwargs).run(recorder)
    return recorder, result


def test_every_row_of_the_core_is_delivered_once_as_a_typed_event(
    frames: list[tuple[bytes, int]],
) -> None:
    recorder, result = run(frames)
    source = MemoryFrames(frames)
    expected: dict[str, Counter[tuple[Any, ...]]] = {}
    for partition in source.partitions():
        records = source.records[partition]
        core = native_partition(settings(), PartitionRange(partition, 0, len(records)))
        core.feed_batch([v for v, _ in records], [t for _, t in records])
        core.finish()
        for table, data, _ in core.take_tables(0):
            expected.setdefault(table, Counter()).update(map(_key, row_tuples(table, data)))
    got: dict[str, Counter[tuple[Any, ...]]] = {}
    for _, event in recorder.seen:
        got.setdefault(event.table, Counter())[_key(event_values(event))] += 1
    assert got == expected
    assert set(got) == set(COLUMNS)  # the range fills every table
    assert result.frames == len(frames) and result.dead_letters == 0
    assert result.events == {cls.kind: sum(got[cls.table].values()) for cls in KINDS}
    for cls in KINDS:
        rows = [event_values(e) for _, e in recorder.seen if isinstance(e, cls)]
        assert result.digests[cls.kind] == digest_rows(rows)
    assert result.frames_per_s > 0 and result.events_per_s > 0


def _key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


def test_event_classes_follow_the_tables_columns() -> None:
    for cls in KINDS:
        assert len(dataclasses.fields(cls)) == len(COLUMNS[cls.table]), cls
    assert KIND_NAMES == (
        "gap", "top_of_book", "book_snapshot", "nbbo", "trade", "matched_trade", "late_event",
        "bar",
    )  # fmt: skip


def test_events_come_in_event_time_order_with_the_documented_tie_break(
    frames: list[tuple[bytes, int]],
) -> None:
    recorder, result = run(frames, chunk=50)
    rank = {cls.kind: i for i, cls in enumerate(KINDS)}
    keys = [(at, rank[e.kind], e.instrument) for at, e in recorder.seen]
    assert keys == sorted(keys)
    for at, event in recorder.seen:
        # delivered at its event time, or later if the core emitted it after that time
        assert at >= event.time_ms
    late = Counter(e.kind for at, e in recorder.seen if at > e.time_ms)
    assert dict(late) == result.late_deliveries
    assert late["trade"] >= 1 and late["late_event"] == 1  # the trade a minute late
    bars = [(at, e) for at, e in recorder.seen if isinstance(e, Bar)]
    assert bars and all(at == e.time_ms == e.window_start_ms + e.interval_ms for at, e in bars[:5])


def test_the_order_does_not_depend_on_how_the_source_batches_its_reads(
    frames: list[tuple[bytes, int]],
) -> None:
    first, _ = run(frames, chunk=64, read_batch=7)
    second, _ = run(frames, chunk=64, read_batch=1000)
    assert first.seen == second.seen


def test_an_instrument_selection_gives_that_instruments_events_of_the_whole_run(
    frames: list[tuple[bytes, int]],
) -> None:
    whole, _ = run(frames)
    eth, result = run(frames, instruments=["ETH-BTC"])
    assert eth.seen and {e.instrument for _, e in eth.seen} == {"ETH-BTC"}
    assert eth.seen == [(at, e) for at, e in whole.seen if e.instrument == "ETH-BTC"]
    assert result.frames < len(frames)
    trades, _ = run(frames, kinds=["trade", "bar"])
    assert {e.kind for _, e in trades.seen} == {"trade", "bar"}


def test_gaps_collapse_as_final_shows_them(frames: list[tuple[bytes, int]]) -> None:
    recorder, _ = run(frames, kinds=["gap"])
    rows = [event_values(e) for _, e in recorder.seen]
    final = final_rows("gaps", rows)
    assert 0 < len(final) < len(rows)  # each opened interval's row replaced by its closing one
    assert all(r[COLUMNS["gaps"].index("closed")] == 1 for r in final)


def test_pacing_holds_each_event_until_its_time_at_n_times_real_time(
    frames: list[tuple[bytes, int]],
) -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    paced = Recorder()
    walls: list[float] = []

    class Timed(Recorder):
        def on_event(self, event: Event, ctx: Context) -> None:
            walls.append(now[0])
            paced.on_event(event, ctx)

    Backtest(
        settings(), MemoryFrames(frames), FROM_MS, TO_MS, speed=20.0,
        clock=lambda: now[0], sleep=sleep,
    ).run(Timed())  # fmt: skip
    first = paced.seen[0][0]
    for wall, (at, _) in zip(walls, paced.seen, strict=True):
        assert wall == pytest.approx(100.0 + (at - first) / 1000 / 20.0)
    assert sum(slept) == pytest.approx((paced.seen[-1][0] - first) / 1000 / 20.0)
    unpaced, _ = run(frames)
    assert unpaced.seen == paced.seen


def top(version: int, status: str = "LIVE", **prices: D) -> TopOfBook:
    values = {
        "bid_price": D("100.00"), "bid_size": D("2"), "ask_price": D("100.02"),
        "ask_size": D("2"), "bid_depth_10bps": D("5"), "ask_depth_10bps": D("5"), **prices,
    }  # fmt: skip
    return TopOfBook(
        date(2026, 11, 30), "binance", "BTCUSDT", "BTC-USDT", 1_000 + version, version, version,
        status, receive_time_ns=0, **values,
    )  # fmt: skip


def trade(time_ms: int, price: str, size: str) -> Trade:
    return Trade(
        date(2026, 11, 30), "binance", "BTCUSDT", "BTC-USDT", str(time_ms), D(price), D(size),
        "sell", time_ms, time_ms, 0, 1,
    )  # fmt: skip


def test_the_fill_model_takes_the_touch_then_the_band_and_rests_without_queue_position() -> None:
    sim = FillSimulator(taker_fee_bps=5, maker_fee_bps=1, depth_band_bps=10)
    sim.observe(top(1), 1_001)
    # 2 at the touch, 1 more within the band, at its far edge (mid 100.01 + 10 bps)
    sim.submit(Order("binance", "BTCUSDT", "buy", D("3")))
    edge = D("100.01") * D("1.001")
    assert [(f.price, f.size, f.liquidity) for f in sim.fills] == [
        (D("100.02"), D("2"), "taker"), (edge, D("1"), "taker"),
    ]  # fmt: skip
    assert sim.fills[0].fee == D("100.02") * 2 * D("0.0005")
    # the same book: the touch is taken, 2 left in the band; the rest of a market order goes
    market = sim.submit(Order("binance", "BTCUSDT", "buy", D("4")))
    assert sim.fills[-1].size == D("2") and sim.cancelled == {market: D("2")}
    # a limit below the touch rests; at-price and earlier trades do not fill it
    sim.observe(top(2), 1_002)
    resting = sim.submit(Order("binance", "BTCUSDT", "buy", D("1"), limit=D("99.90")))
    fills = len(sim.fills)
    sim.observe(trade(1_003, "99.90", "5"), 1_003)  # at its price: no queue position
    sim.observe(trade(1_001, "99.80", "5"), 1_004)  # printed before the order
    assert len(sim.fills) == fills
    sim.observe(trade(1_005, "99.89", "0.25"), 1_005)  # through: its size at the limit
    sim.observe(trade(1_006, "99.80", "5"), 1_006)
    assert [(f.order_id, f.price, f.size, f.liquidity) for f in sim.fills[fills:]] == [
        (resting, D("99.90"), D("0.25"), "maker"), (resting, D("99.90"), D("0.75"), "maker"),
    ]  # fmt: skip
    assert not sim.resting
    # a marketable limit takes the touch only where its limit allows
    sim.observe(top(3), 1_007)
    sim.submit(Order("binance", "BTCUSDT", "sell", D("3"), limit=D("100.00")))
    assert (sim.fills[-1].price, sim.fills[-1].size) == (D("100.00"), D("2"))
    assert sim.resting[0].remaining == D("1")
    # a book not LIVE fills nothing
    sim.observe(top(4, status="RESYNCING"), 1_008)
    dead = sim.submit(Order("binance", "BTCUSDT", "sell", D("1")))
    assert sim.cancelled[dead] == D("1")
    position = D("3") + D("2") + D("1") - D("2")
    assert sim.position["BTC-USDT"] == position
    pnl = sim.pnl()["BTC-USDT"]
    cash = -sum((f.price * f.size if f.side == "buy" else -f.price * f.size) + f.fee
                for f in sim.fills)  # fmt: skip
    assert D(str(pnl["cash"])) == cash and D(str(pnl["pnl"])) == cash + position * D("100.01")


def test_orders_are_checked() -> None:
    sim = FillSimulator(5, 1, 10)
    with pytest.raises(ValueError, match="side"):
        sim.submit(Order("binance", "BTCUSDT", "hold", D("1")))
    with pytest.raises(ValueError, match="positive"):
        sim.submit(Order("binance", "BTCUSDT", "buy", D("0")))


def test_the_documented_example_strategy_runs(frames: list[tuple[bytes, int]]) -> None:
    strategy = load_strategy(f"{ROOT}/docs/examples/nbbo_strategy.py:NbboDislocation")
    result = Backtest(settings(), MemoryFrames(frames), FROM_MS, TO_MS).run(strategy)
    assert strategy.crossings > 0 and strategy.traded > 0
    assert len(result.fills) >= 2 * strategy.traded - len(result.cancelled)
    pnl = result.pnl["BNB-BTC"]
    assert D(str(pnl["position"])) == 0 and D(str(pnl["pnl"])) > 0


def test_bad_arguments_are_refused() -> None:
    source = MemoryFrames([])
    with pytest.raises(ValueError, match="empty range"):
        Backtest(settings(), source, 10, 10)
    with pytest.raises(ValueError, match="speed"):
        Backtest(settings(), source, 0, 10, speed=0)
    with pytest.raises(ValueError, match="unknown event kind"):
        Backtest(settings(), source, 0, 10, kinds=["quote"])
    with pytest.raises(ValueError, match="want path"):
        load_strategy("nbbo_strategy.py")
    with pytest.raises(ValueError, match="no file"):
        load_strategy("missing.py:Strategy")
    assert parse_time_ms("2026-11-30T00:00Z") == DAY_MS == parse_time_ms(str(DAY_MS))
    with pytest.raises(ValueError, match="cannot read time"):
        parse_time_ms("yesterday")
