"""The analytics state saved piece by piece (what changed per frame) and the compact pickles of
the objects saved per frame: restoring either gives the same outputs as never stopping, and
state saved by earlier versions (whole analytics value, default dataclass pickles) still loads."""

from __future__ import annotations

import copyreg
import io
import pickle
from bisect import bisect_right
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.bars import BarAccumulator, BookSample, VenueClock, WindowKey
from jobs.book.levels import BookSide, BookStatus, OrderBook
from jobs.instrument import BookId, InstrumentBooks
from jobs.matching import BookHistory, BookState
from tests.unit.test_instrument_analytics import (
    Persisted,
    new_books,
    run,
    scenario,
    visible,
)

pytestmark = pytest.mark.unit

D = Decimal
AWKWARD = [D("0.10000000"), D("1E-8"), D("-0"), D("62099.50"), D("123456789.123456789012"), D(0)]


@dataclass
class PiecewisePersisted(Persisted):
    """The operator's state as it writes it now: ``take_analytics_changes`` after every step,
    every value through pickle like Flink's pickled state."""

    summary: bytes | None = None
    windows: dict[WindowKey, bytes] = field(default_factory=dict)
    clocks: dict[BookId, bytes] = field(default_factory=dict)
    watermark_ms: int | None = None

    def save(self, books: InstrumentBooks) -> None:
        changes = books.take_analytics_changes()
        for key in changes.bars.closed:
            self.windows.pop(key, None)
        for key, acc in changes.bars.windows.items():
            self.windows[key] = pickle.dumps(acc, pickle.HIGHEST_PROTOCOL)
        for book_id, clock in changes.bars.clocks.items():
            self.clocks[book_id] = pickle.dumps(clock, pickle.HIGHEST_PROTOCOL)
        if changes.summary is not None:
            self.summary = changes.summary
        if changes.watermark_ms is not None:
            self.watermark_ms = changes.watermark_ms

    def restore_pieces(self, books: InstrumentBooks, live: InstrumentBooks) -> None:
        for book_id, tracked in live.books.items():
            levels: list[tuple[BookSide, Decimal, Decimal]] = [
                ("b", p, s) for p, s in tracked.engine.book.bids.items()
            ] + [("a", p, s) for p, s in tracked.engine.book.asks.items()]
            books.restore(book_id, tracked.meta(), levels)
        history: dict[BookId, list[BookState]] = {}
        for (book_id, _, _), state in self.history.items():
            history.setdefault(book_id, []).append(pickle.loads(pickle.dumps(state)))
        books.restore_analytics(
            self.summary,
            history,
            list(self.pending.values()),
            {k: pickle.loads(v) for k, v in self.windows.items()},
            {k: pickle.loads(v) for k, v in self.clocks.items()},
            self.watermark_ms,
        )


@pytest.mark.parametrize("cut", range(1, len(scenario())))
def test_piecewise_state_round_trip_gives_the_same_outputs(cut: int) -> None:
    steps = scenario()
    live = new_books()
    persisted = PiecewisePersisted()
    for step in steps[:cut]:
        persisted.apply(run(live, step))
        persisted.save(live)
    restored = new_books()
    persisted.restore_pieces(restored, live)
    assert restored.bars == live.bars
    assert (restored.nbbo, restored.nbbo_version) == (live.nbbo, live.nbbo_version)
    assert restored.watermark_ms == live.watermark_ms
    for step in steps[cut:]:
        assert visible(run(restored, step)) == visible(run(live, step)), step


def test_only_what_a_frame_changed_is_written() -> None:
    steps = scenario()
    live = new_books()
    for step in steps[:8]:
        run(live, step)
    live.take_analytics_changes()
    assert live.take_analytics_changes().bars.windows == {}  # nothing since
    run(live, steps[8])
    changes = live.take_analytics_changes()
    assert set(changes.bars.windows) | set(changes.bars.closed) <= set(live.bars.windows) | set(
        changes.bars.closed
    )


def test_a_whole_state_from_before_is_read_and_then_saved_in_full() -> None:
    """A savepoint of the earlier layout (one value with the bars): restored, and the first
    changes after it carry every window and clock, so the pieces are complete from then on."""
    steps = scenario()
    live = new_books()
    persisted = Persisted()
    for step in steps[:12]:
        persisted.apply(run(live, step))
    restored = new_books()
    persisted.restore(restored, live, live.analytics_state())
    changes = restored.take_analytics_changes()
    assert set(changes.bars.windows) == set(live.bars.windows)
    assert set(changes.bars.clocks) == set(live.bars.books)
    assert changes.summary is not None and changes.watermark_ms == live.watermark_ms
    for step in steps[12:]:
        assert visible(run(restored, step)) == visible(run(live, step)), step


# --- compact pickles ----------------------------------------------------------------------


def test_accumulator_pickle_keeps_every_decimal_exactly() -> None:
    acc = BarAccumulator()
    for f, value in zip(
        ("open", "close", "high", "low", "volume", "notional", "ofi"), AWKWARD * 2, strict=False
    ):
        setattr(acc, f, value)
    acc.open_key, acc.trade_count, acc.live_ms, acc.ofi_terms = (5, "kraken", 7), 3, 250, 2
    back = pickle.loads(pickle.dumps(acc, pickle.HIGHEST_PROTOCOL))
    assert back == acc
    assert [str(getattr(back, f.name)) for f in fields(acc)] == [
        str(getattr(acc, f.name)) for f in fields(acc)
    ]


def test_book_state_and_sample_pickles_keep_every_decimal_exactly() -> None:
    levels = tuple(zip(AWKWARD, reversed(AWKWARD), strict=True))
    state = BookState(1, -1, 10**18, BookStatus.RESYNCING, levels, levels[:2])
    back = pickle.loads(pickle.dumps(state, pickle.HIGHEST_PROTOCOL))
    assert back == state and repr(back) == repr(state)
    sample = BookSample((D("1.10"), D("1E-8"), D("1.20"), D("-0")), D("0.50"), D("3"))
    clock = VenueClock("binance", 5, sample)
    assert repr(pickle.loads(pickle.dumps(clock))) == repr(clock)


_NEWOBJ = copyreg.__dict__["__newobj__"]


class _DefaultPickler(pickle.Pickler):
    """Pickles as the classes did before they had their own ``__reduce__`` (the dataclass
    default): what state saved by the earlier version holds."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BarAccumulator):
            return _NEWOBJ, (BarAccumulator,), dict(obj.__dict__)
        if isinstance(obj, BookState | BookSample):
            cls = type(obj)
            return _NEWOBJ, (cls,), [getattr(obj, f.name) for f in fields(obj)]
        return NotImplemented


def _old_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _DefaultPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def test_pickles_of_the_earlier_layout_still_load() -> None:
    acc = BarAccumulator(open=D("1.10"), volume=D("2.500"), trade_count=2)
    assert pickle.loads(_old_pickle(acc)) == acc
    state = BookState(1, 2, 3, BookStatus.LIVE, ((D("1.0"), D("2")),), ())
    assert pickle.loads(_old_pickle(state)) == state
    sample = BookSample((D("1"), D("2"), D("3"), D("4")), D("5"), D("6"))
    assert pickle.loads(_old_pickle(sample)) == sample
    # the whole analytics value of the earlier layout, with old-style pickles inside
    live = new_books()
    for step in scenario()[:10]:
        run(live, step)
    old = pickle.loads(_old_pickle(pickle.loads(live.analytics_state())))
    assert old[0] == live.bars


# --- book depth and history pruning: the same answers as the linear scans they replace ------


def depth_by_scan(book: OrderBook, bps: Decimal) -> tuple[Decimal, Decimal]:
    mid = book.mid()
    if mid is None:
        return D(0), D(0)
    band = mid * bps / D(10_000)
    bids = sum((s for p, s in book.bids.items() if p >= mid - band), D(0))
    asks = sum((s for p, s in book.asks.items() if p <= mid + band), D(0))
    return bids, asks


prices = st.decimals(min_value=D("0.01"), max_value=D("200"), places=2)
sizes = st.decimals(min_value=D("0.001"), max_value=D("50"), places=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(prices, sizes), max_size=40),
    st.lists(st.tuples(prices, sizes), max_size=40),
    st.sampled_from([D(0), D(1), D(10), D(500), D(20_000)]),
)
def test_depth_within_bps_equals_the_scan(
    bids: list[tuple[Decimal, Decimal]], asks: list[tuple[Decimal, Decimal]], bps: Decimal
) -> None:
    book = OrderBook(1000)
    for p, s in bids:
        book.set_level("b", p, s)
    for p, s in asks:
        book.set_level("a", p + 100, s)  # mostly uncrossed; crossed books count the same way
    assert book.depth_within_bps(bps) == depth_by_scan(book, bps)


def prune_by_scan(states: list[BookState], watermark_ms: int) -> int:
    for i in range(len(states) - 1, -1, -1):
        if states[i].time_ms <= watermark_ms:
            return i
    return 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 50), max_size=30),
    st.lists(st.integers(-5, 60), min_size=1, max_size=6),
)
def test_prune_equals_the_scan(times: list[int], watermarks: list[int]) -> None:
    """Times mostly in order (bisection) and sometimes not (a resync: the scan)."""
    states = [BookState(t, i, i, BookStatus.LIVE, (), ()) for i, t in enumerate(times)]
    history = BookHistory(list(states))
    reference = list(states)
    for watermark in watermarks:
        keep = prune_by_scan(reference, watermark)
        dropped, reference = reference[:keep], reference[keep:]
        assert history.prune(watermark) == dropped
        assert history.states == reference
        history.append(BookState(watermark + 3, 99, 99, BookStatus.LIVE, (), ()))
        reference.append(history.states[-1])


def test_prune_bisects_ordered_histories() -> None:
    states = [BookState(t, 0, 0, BookStatus.LIVE, (), ()) for t in (1, 2, 2, 3, 7)]
    history = BookHistory(list(states))
    assert bisect_right([s.time_ms for s in states], 2) == 3
    assert history.prune(2) == states[:2] and history.states == states[2:]
