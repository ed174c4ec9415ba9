"""The pure Binance market model: determinism, id continuity, book invariants, frame shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.binance import (
    BinanceMarket,
    DepthDiff,
    Trade,
    depth_update_event,
    trade_event,
)
from simulator.book import Side, units_text
from simulator.market import DAY_MS

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")


def market(seed: int = 42, symbol: str = "BTCUSDT", depth: int = 20, k: int = 5) -> BinanceMarket:
    return BinanceMarket(symbol, seed, depth, k, trade_probability=0.4)


def run(m: BinanceMarket, steps: int, t0: int = 1_700_000_000_000) -> list[DepthDiff | Trade]:
    events: list[DepthDiff | Trade] = []
    for i in range(steps):
        events.extend(m.step(t0 + i))
    return events


def without_times(events: list[DepthDiff | Trade]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, DepthDiff):
            out.append(("depth", e.first_update_id, e.final_update_id, e.bids, e.asks))
        else:
            out.append(("trade", e.trade_id, e.price_ticks, e.qty_lots, e.is_buyer_maker))
    return out


def test_same_seed_same_frames() -> None:
    a, b = market(), market()
    assert a.snapshot() == b.snapshot()
    assert run(a, 300) == run(b, 300)


def test_frames_depend_on_time_since_the_start_and_time_of_day_only() -> None:
    """The one market's fair value starts where the first step is; its daily cycle follows the
    time of day: whole days later, the same frames."""
    today = run(market(), 200, t0=1_700_000_000_000)
    later = run(market(), 200, t0=1_700_000_000_000 + 40 * DAY_MS)
    assert without_times(today) == without_times(later)


def test_seed_and_symbol_change_the_market() -> None:
    base = without_times(run(market(seed=1), 50))
    assert without_times(run(market(seed=2), 50)) != base
    other = market(seed=1, symbol="ETHUSDT")
    assert other.last_update_id != market(seed=1).last_update_id


def test_ids_start_large_and_seed_derived() -> None:
    m = market(seed=7)
    assert m.last_update_id > 10**9
    assert m.next_trade_id > 10**8
    assert market(seed=8).last_update_id != m.last_update_id


def test_update_ids_are_continuous_one_per_level_change() -> None:
    m = market()
    last = m.last_update_id
    for event in run(m, 500):
        if isinstance(event, DepthDiff):
            # the maker changes, plus the requote when the quote moved (cancels, a new touch)
            changes = len(event.bids) + len(event.asks)
            assert changes >= 1
            assert event.first_update_id == last + 1
            assert event.final_update_id == event.first_update_id + changes - 1
            # one entry per price level and side within an event
            assert len({p for p, _ in event.bids}) == len(event.bids)
            assert len({p for p, _ in event.asks}) == len(event.asks)
            last = event.final_update_id
    assert m.last_update_id == last


def test_trade_ids_are_consecutive() -> None:
    trades = [e for e in run(market(), 500) if isinstance(e, Trade)]
    assert len(trades) > 50
    ids = [t.trade_id for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_takers_take_from_the_touch_and_sweeps_walk_the_book() -> None:
    m = market()
    sweeps = 0
    for i in range(2000):
        resting = {Side.BID: dict(m.book.bids), Side.ASK: dict(m.book.asks)}
        events = m.step(1_700_000_000_000 + 20 * i)
        trades = [e for e in events if isinstance(e, Trade)]
        diff = events[-1]
        assert isinstance(diff, DepthDiff) and events[: len(trades)] == trades
        if not trades:
            continue
        # one taker per step: one side, one time, consecutive ids
        (side,) = {Side.BID if t.is_buyer_maker else Side.ASK for t in trades}
        assert len({t.time_ms for t in trades}) == 1 and diff.event_time_ms == trades[0].time_ms + 1
        # the levels it took, best first, each but the last emptied
        book_side = sorted(resting[side], reverse=side is Side.BID)
        assert [t.price_ticks for t in trades] == book_side[: len(trades)]
        for t in trades[:-1]:
            assert t.qty_lots == resting[side][t.price_ticks]
        assert 1 <= trades[-1].qty_lots <= resting[side][trades[-1].price_ticks]
        sweeps += len(trades) > 1
        # the depth event's first changes are the taker's; the level ends as the book has it
        taken = (diff.bids if side is Side.BID else diff.asks)[: len(trades)]
        assert [p for p, _ in taken] == [t.price_ticks for t in trades]
        final = dict(diff.bids if side is Side.BID else diff.asks)
        assert all(final[t.price_ticks] == m.book.side(side).get(t.price_ticks, 0) for t in trades)
    assert sweeps > 10


def test_diffs_replayed_on_the_initial_snapshot_give_the_true_book() -> None:
    m = market(depth=15)
    snap = m.snapshot()
    bids = {p: q for p, q in snap["bids"]}
    asks = {p: q for p, q in snap["asks"]}
    for event in run(m, 400):
        if isinstance(event, DepthDiff):
            body = depth_update_event(m.symbol, m.spec, event)
            for levels, changes in ((bids, body["b"]), (asks, body["a"])):
                for price, qty in changes:
                    if qty == "0.00000000":
                        levels.pop(price, None)
                    else:
                        levels[price] = qty
    truth = m.snapshot()
    assert sorted(bids.items(), key=lambda pq: -float(pq[0])) == [tuple(x) for x in truth["bids"]]
    assert sorted(asks.items(), key=lambda pq: float(pq[0])) == [tuple(x) for x in truth["asks"]]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    depth=st.integers(2, 30),
    k=st.integers(1, 8),
    symbol=st.sampled_from(["BTCUSDT", "ETHUSDT", "XYZUSDT"]),
)
def test_book_is_never_crossed_nor_deeper_than_configured(
    seed: int, depth: int, k: int, symbol: str
) -> None:
    m = BinanceMarket(symbol, seed, depth, k, trade_probability=0.5)
    for i in range(300):
        m.step(i)
        assert not m.book.is_crossed()
        assert 1 <= len(m.book.bids) <= depth
        assert 1 <= len(m.book.asks) <= depth
        assert all(q > 0 for q in m.book.bids.values())
        assert all(q > 0 for q in m.book.asks.values())


def test_decimal_text_has_the_symbols_fixed_precision() -> None:
    m = market()
    for event in run(m, 200):
        if isinstance(event, DepthDiff):
            body = depth_update_event(m.symbol, m.spec, event)
            texts = [x for pair in body["b"] + body["a"] for x in pair]
        else:
            body = trade_event(m.symbol, m.spec, event)
            texts = [body["p"], body["q"]]
        assert texts and all(DECIMAL_8.match(t) for t in texts), texts
    snap = m.snapshot(limit=5)
    assert len(snap["bids"]) == len(snap["asks"]) == 5
    assert all(DECIMAL_8.match(x) for pair in snap["bids"] + snap["asks"] for x in pair)


def test_units_text() -> None:
    assert units_text(150_000_000) == "1.50000000"
    assert units_text(2_700_001_000_000) == "27000.01000000"
    assert units_text(0) == "0.00000000"


def test_frame_builders_have_the_documented_fields_in_order() -> None:
    m = market()
    trade, diff = next(evs for evs in (m.step(i) for i in range(1000)) if len(evs) == 2)
    assert isinstance(trade, Trade) and isinstance(diff, DepthDiff)
    doc_depth = json.loads((FIXTURES / "doc_depth_update.json").read_text())
    doc_trade = json.loads((FIXTURES / "doc_trade.json").read_text())
    ours_depth = depth_update_event("BTCUSDT", m.spec, diff)
    ours_trade = trade_event("BTCUSDT", m.spec, trade)
    assert list(ours_depth) == list(doc_depth)
    assert list(ours_trade) == list(doc_trade)
    assert {k: type(v) for k, v in ours_depth.items()} == {
        k: type(v) for k, v in doc_depth.items()
    }
    assert {k: type(v) for k, v in ours_trade.items()} == {
        k: type(v) for k, v in doc_trade.items()
    }
    assert list(m.snapshot()) == ["lastUpdateId", "bids", "asks"]
