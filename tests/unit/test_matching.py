"""Trade-to-book matching: the book state as of a trade's time, and the trade against it.

"As of" = the last state (in history order) whose time is <= the trade's; a state stamped
with the trade's own millisecond counts as before it, unless the trade carries a sequence
number shared with the book (then only a state with a lower one does).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.book.levels import BookStatus
from jobs.matching import BookHistory, BookState, match_trade
from jobs.nbbo import Nbbo, VenueTop, compute_nbbo
from jobs.parse.events import Side, Trade

pytestmark = pytest.mark.unit

D = Decimal
LIVE = BookStatus.LIVE


def state(
    time_ms: int,
    seq: int = -1,
    version: int = 0,
    status: BookStatus = LIVE,
    bids: tuple[tuple[Decimal, Decimal], ...] = (),
    asks: tuple[tuple[Decimal, Decimal], ...] = (),
) -> BookState:
    return BookState(time_ms, seq, version or time_ms, status, bids, asks)


def trade(side: Side, price: str, size: str = "1", time_ms: int = 1000, seq: int = -1) -> Trade:
    return Trade("binance", "BTCUSDT", "42", D(price), D(size), side, time_ms, time_ms, 0, seq)


# --- as_of -----------------------------------------------------------------------------------


def test_as_of_picks_the_last_state_at_or_before_the_time() -> None:
    s1, s2, s3 = state(100), state(200), state(300)
    history = BookHistory([s1, s2, s3])
    assert history.as_of(99) is None
    assert history.as_of(100) is s1
    assert history.as_of(199) is s1
    assert history.as_of(200) is s2  # same millisecond: the update counts as before
    assert history.as_of(299) is s2
    assert history.as_of(10**9) is s3
    assert BookHistory().as_of(100) is None


def test_as_of_with_a_shared_sequence_orders_equal_times_by_it() -> None:
    s1, s2, s3 = state(100, seq=5), state(200, seq=10), state(200, seq=12)
    history = BookHistory([s1, s2, s3])
    assert history.as_of(200) is s3  # no sequence: both count as before
    assert history.as_of(200, seq=11) is s2
    assert history.as_of(200, seq=12) is s2  # equal sequence: not before
    assert history.as_of(200, seq=13) is s3
    assert history.as_of(200, seq=10) is s1  # both at 200 come after the trade
    assert history.as_of(201, seq=0) is s3  # an earlier time is before whatever the seq
    assert history.as_of(100, seq=5) is None


def test_as_of_uses_history_order_when_a_resync_sends_time_back() -> None:
    before, rebuilt = state(500, version=1), state(400, version=2)
    history = BookHistory([before, rebuilt])
    assert history.as_of(450) is rebuilt
    assert history.as_of(600) is rebuilt  # the newest applicable state, not the latest time
    assert history.as_of(420) is rebuilt
    assert history.as_of(399) is None


def test_prune_keeps_the_last_state_at_or_before_the_watermark_and_everything_later() -> None:
    states = [state(t) for t in (100, 200, 200, 300, 400)]
    history = BookHistory(list(states))
    assert history.prune(50) == [] and history.states == states  # nothing at or before
    assert history.prune(250) == states[:2]
    assert history.states == states[2:]
    assert history.prune(250) == []  # idempotent
    assert history.prune(400) == states[2:4]
    assert history.states == states[4:]
    assert history.prune(10**9) == [] and history.states == states[4:]  # the last is kept
    empty = BookHistory()
    assert empty.prune(100) == [] and empty.states == []


def brute_as_of(states: list[BookState], time_ms: int, seq: int | None) -> BookState | None:
    before = [
        s
        for s in states
        if s.time_ms < time_ms or (s.time_ms == time_ms and (seq is None or s.seq < seq))
    ]
    return before[-1] if before else None


@st.composite
def history_strategy(draw: st.DrawFn) -> list[BookState]:
    """Times mostly non-decreasing with repeats, sometimes back (a resync); random seqs."""
    states = []
    time_ms = draw(st.integers(0, 20))
    for version in range(draw(st.integers(0, 25))):
        time_ms += draw(st.sampled_from([0, 0, 1, 3, 10, -15]))
        states.append(BookState(time_ms, draw(st.integers(-1, 8)), version, LIVE, (), ()))
    return states


@settings(max_examples=400, derandomize=True, deadline=None)
@given(history_strategy(), st.integers(-10, 150), st.none() | st.integers(-1, 9))
def test_as_of_equals_brute_force(states: list[BookState], time_ms: int, seq: int | None) -> None:
    history = BookHistory(list(states))
    assert history.as_of(time_ms, seq) is brute_as_of(states, time_ms, seq)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(history_strategy(), st.integers(-10, 150), st.data())
def test_prune_changes_no_answer_for_a_later_trade(
    states: list[BookState], watermark: int, data: st.DataObject
) -> None:
    history = BookHistory(list(states))
    dropped = history.prune(watermark)
    assert dropped + history.states == states
    at_or_before = [i for i, s in enumerate(states) if s.time_ms <= watermark]
    assert len(dropped) == (at_or_before[-1] if at_or_before else 0)
    for _ in range(5):
        time_ms = data.draw(st.integers(watermark + 1, watermark + 200))
        seq = data.draw(st.none() | st.integers(-1, 9))
        assert history.as_of(time_ms, seq) is brute_as_of(states, time_ms, seq)


# --- match_trade ----------------------------------------------------------------------------

BIDS = ((D(100), D(1)), (D(99), D(2)), (D(98), D(3)))
ASKS = ((D(101), D(1)), (D(102), D(2)), (D(103), D(5)))
BOOK = state(900, seq=77, version=5, bids=BIDS, asks=ASKS)


@pytest.mark.parametrize(
    ("side", "price", "size", "touch", "levels", "consumed"),
    [
        ("buy", "101", "0.5", "at", 1, "0.5"),
        ("buy", "100.5", "1", "inside", 0, "0"),
        ("buy", "102.5", "10", "through", 2, "3"),
        ("buy", "103", "2", "through", 3, "2"),  # capped by the trade's size
        ("buy", "200", "100", "through", 3, "8"),
        ("sell", "100", "0.25", "at", 1, "0.25"),
        ("sell", "100.5", "1", "inside", 0, "0"),
        ("sell", "98.5", "5", "through", 2, "3"),
        ("sell", "98", "4", "through", 3, "4"),
        ("sell", "1", "100", "through", 3, "6"),
    ],
)
def test_touch_and_levels_consumed(
    side: Side, price: str, size: str, touch: str, levels: int, consumed: str
) -> None:
    m = match_trade(trade(side, price, size), "BTC-USDT", BOOK, None)
    assert (m.touch, m.levels_consumed, m.size_consumed) == (touch, levels, D(consumed))
    assert (m.bid, m.ask) == (BIDS[0], ASKS[0])
    assert (m.book_status, m.book_time_ms, m.book_version, m.book_seq) == ("LIVE", 900, 5, 77)
    assert m.instrument == "BTC-USDT"


@pytest.mark.parametrize(
    ("side", "price", "slippage"),
    [
        ("buy", "101", "0.5"),  # paid more than the mid
        ("buy", "100.5", "0"),
        ("buy", "100.25", "-0.25"),
        ("sell", "100", "0.5"),  # got less than the mid
        ("sell", "101", "-0.5"),
    ],
)
def test_mid_spread_and_slippage_signs(side: Side, price: str, slippage: str) -> None:
    m = match_trade(trade(side, price), "I", BOOK, None)
    assert (m.mid, m.spread) == (D("100.5"), D(1))
    assert m.slippage_mid == D(slippage)
    assert m.slippage_mid_bps == pytest.approx(float(D(slippage) / D("100.5") * 10_000))
    assert m.nbbo is None and m.slippage_nbbo is None and m.trade_through is False


def nbbo(bid: str | None, ask: str | None) -> Nbbo:
    def lv(p: str | None) -> tuple[Decimal, Decimal] | None:
        return None if p is None else (D(p), D(1))

    return compute_nbbo("I", "USD", [VenueTop("x", "S", LIVE, 1, 0, lv(bid), lv(ask))], 0)


@pytest.mark.parametrize(
    ("side", "price", "best_bid", "best_ask", "slippage", "through"),
    [
        ("buy", "101", "100.2", "100.8", "0.2", True),
        ("buy", "100.8", "100.2", "100.8", "0", False),
        ("buy", "100.7", "100.2", "100.8", "-0.1", False),
        ("sell", "100", "100.2", "100.8", "0.2", True),
        ("sell", "100.2", "100.2", "100.8", "0", False),
        ("sell", "100.3", "100.2", "100.8", "-0.1", False),
        ("buy", "101", "100.2", None, None, False),  # no NBBO ask
        ("sell", "100", None, "100.8", None, False),  # no NBBO bid
    ],
)
def test_slippage_against_the_nbbo_and_trade_through(
    side: Side,
    price: str,
    best_bid: str | None,
    best_ask: str | None,
    slippage: str | None,
    through: bool,
) -> None:
    n = nbbo(best_bid, best_ask)
    m = match_trade(trade(side, price), "I", BOOK, n)
    assert m.nbbo is n
    assert m.slippage_nbbo == (None if slippage is None else D(slippage))
    assert m.trade_through is through


@pytest.mark.parametrize("status", [BookStatus.RESYNCING, BookStatus.STALE])
def test_a_book_that_is_not_live_gives_no_touch(status: BookStatus) -> None:
    # levels kept in a non-LIVE state are not to be trusted: ignored
    resyncing = state(900, seq=3, version=9, status=status, bids=BIDS, asks=ASKS)
    m = match_trade(trade("buy", "101"), "I", resyncing, nbbo("100.2", "100.8"))
    assert m.book_status == status.value
    assert (m.book_time_ms, m.book_version, m.book_seq) == (900, 9, 3)
    assert (m.bid, m.ask, m.mid, m.spread) == (None, None, None, None)
    assert m.touch == "none" and m.levels_consumed == 0 and m.size_consumed == 0
    assert m.slippage_mid is None and m.slippage_mid_bps is None
    assert m.slippage_nbbo == D("0.2") and m.trade_through  # the NBBO still applies


def test_no_state_at_the_trades_time() -> None:
    m = match_trade(trade("sell", "100"), "I", None, None)
    assert (m.book_status, m.book_time_ms, m.book_version, m.book_seq) == ("NONE", 0, 0, 0)
    assert m.touch == "none" and m.levels_consumed == 0 and m.size_consumed == 0
    assert m.mid is None and m.slippage_nbbo is None and not m.trade_through


def test_one_sided_book_and_no_sequence() -> None:
    bids_only = state(900, seq=-1, bids=BIDS)
    buy = match_trade(trade("buy", "101"), "I", bids_only, None)
    assert buy.touch == "none" and buy.levels_consumed == 0 and buy.bid == BIDS[0]
    assert buy.ask is None and buy.mid is None and buy.spread is None
    assert buy.book_seq == 0  # -1 (no message yet) is shown as 0
    sell = match_trade(trade("sell", "99.5", "2"), "I", bids_only, None)
    assert (sell.touch, sell.levels_consumed, sell.size_consumed) == ("through", 1, D(1))


LEVEL_PRICES = [D(p) for p in range(90, 111)]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from(LEVEL_PRICES), unique=True, max_size=6),
    st.lists(st.sampled_from([D("0.5"), D(1), D(3)]), min_size=6, max_size=6),
    st.sampled_from(["buy", "sell"]),
    st.sampled_from([*LEVEL_PRICES, D("99.5"), D("100.5")]),
    st.sampled_from([D("0.1"), D(2), D(10)]),
)
def test_match_equals_brute_force_on_random_books(
    prices: list[Decimal], sizes: list[Decimal], side: Side, price: Decimal, size: Decimal
) -> None:
    # a random book with a spread: bids below 100, asks above
    bids = tuple((p, s) for p, s in sorted(zip(prices, sizes, strict=False), reverse=True)
                 if p < 100)  # fmt: skip
    asks = tuple((p, s) for p, s in sorted(zip(prices, sizes, strict=False)) if p >= 100)
    t = trade(side, str(price), str(size))
    m = match_trade(t, "I", state(900, bids=bids, asks=asks), None)
    opposite = asks if side == "buy" else bids
    reachable = [(p, s) for p, s in opposite if (p <= price if side == "buy" else p >= price)]
    assert m.levels_consumed == len(reachable)
    assert m.size_consumed == min(sum((s for _, s in reachable), D(0)), size)
    if not opposite:
        assert m.touch == "none"
    elif price == opposite[0][0]:
        assert m.touch == "at"
    else:
        worse = price > opposite[0][0] if side == "buy" else price < opposite[0][0]
        assert m.touch == ("through" if worse else "inside")
    if bids and asks:
        mid = (bids[0][0] + asks[0][0]) / 2
        assert m.mid == mid
        assert m.slippage_mid == (price - mid if side == "buy" else mid - price)
    else:
        assert m.mid is None and m.slippage_mid is None
