"""Property tests: the Binance book engine against a naive reference on random streams.

The reference is the exchange's true book after every update id. Whatever the stream does
(drops, duplicates, stale snapshots), a LIVE book must equal the truth at its update id, and
a fresh snapshot after the last fault must bring it back to LIVE.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.book.binance import BinanceBook
from jobs.book.levels import BookStatus, OrderBook
from jobs.parse.events import BookDelta, BookSnapshot

pytestmark = pytest.mark.unit

PRICES = [Decimal(f"100.{i:02d}") for i in range(40)]
SIZES = [Decimal("0"), Decimal("0.5"), Decimal("1.25"), Decimal("3")]

change = st.tuples(st.sampled_from(["b", "a"]), st.sampled_from(PRICES), st.sampled_from(SIZES))
update = st.lists(change, min_size=1, max_size=4)
# what the transport does to each exchange update: deliver, drop, duplicate; and snapshots
action = st.sampled_from(["deliver"] * 8 + ["drop", "dup", "snapshot", "old_snapshot"])


def truth_levels(
    truth: dict[str, dict[Decimal, Decimal]], side: str
) -> list[tuple[Decimal, Decimal]]:
    return sorted(truth[side].items(), reverse=(side == "b"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(update, action), min_size=1, max_size=60), st.integers(1, 10**9))
def test_live_book_always_equals_truth(steps: list, start_id: int) -> None:
    truth: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}
    history: dict[int, tuple[list, list]] = {}
    engine = BinanceBook(max_levels=1000, max_buffered=1000)
    last_id = start_id

    def snapshot(at: int) -> BookSnapshot:
        bids, asks = history[at]
        return BookSnapshot("binance", "X", at, 0, tuple(bids), tuple(asks))

    history[last_id] = (truth_levels(truth, "b"), truth_levels(truth, "a"))
    for changes, act in steps:
        first = last_id + 1
        for side, price, size in changes:
            if size:
                truth[side][price] = size
            else:
                truth[side].pop(price, None)
        last_id = first + len(changes) - 1
        history[last_id] = (truth_levels(truth, "b"), truth_levels(truth, "a"))
        delta = BookDelta(
            "binance",
            "X",
            first,
            last_id,
            0,
            0,
            tuple((p, s) for side, p, s in changes if side == "b"),
            tuple((p, s) for side, p, s in changes if side == "a"),
        )
        if act != "drop":
            engine.on_delta(delta)
            if act == "dup":
                engine.on_delta(delta)
        if act == "snapshot":
            engine.on_snapshot(snapshot(last_id))
        elif act == "old_snapshot":
            engine.on_snapshot(snapshot(start_id))
        if engine.status is BookStatus.LIVE:
            bids, asks = history[engine.last_id]
            assert list(engine.book.bids.items()) == bids
            assert list(engine.book.asks.items()) == asks
    # recovery: a snapshot of the current truth always brings the book back
    engine.on_snapshot(snapshot(last_id))
    assert engine.status is BookStatus.LIVE
    assert (list(engine.book.bids.items()), list(engine.book.asks.items())) == history[last_id]


@given(st.lists(change, max_size=200), st.integers(1, 20))
def test_order_book_top_n_and_bound(changes: list, max_levels: int) -> None:
    book = OrderBook(max_levels)
    for side, price, size in changes:
        book.set_level(side, price, size)
        assert len(book.bids) <= max_levels and len(book.asks) <= max_levels
    bids, asks = book.top(5)
    assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
    assert [p for p, _ in asks] == sorted(p for p, _ in asks)
    assert all(s > 0 for _, s in bids + asks)
    # the recorded changes replay to the same book
    replay: dict[tuple[str, Decimal], Decimal] = {}
    for side, price, size in book.take_changes():
        if size is None:
            replay.pop((side, price), None)
        else:
            replay[(side, price)] = size
    assert sorted(replay.items()) == sorted(
        [(("b", p), s) for p, s in book.bids.items()]
        + [(("a", p), s) for p, s in book.asks.items()]
    )


@given(
    st.lists(change, max_size=120), st.sampled_from([Decimal("1"), Decimal("10"), Decimal("50")])
)
def test_depth_within_bps_matches_a_full_scan(changes: list, bps: Decimal) -> None:
    book = OrderBook(1000)
    for side, price, size in changes:
        book.set_level(side, price, size)
    bids, asks = book.depth_within_bps(bps)
    mid = book.mid()
    if mid is None:
        assert (bids, asks) == (0, 0)
        return
    band = mid * bps / 10_000
    assert bids == sum((s for p, s in book.bids.items() if p >= mid - band), Decimal(0))
    assert asks == sum((s for p, s in book.asks.items() if p <= mid + band), Decimal(0))
