"""Event-time bars against a brute-force reference computed millisecond by millisecond.

Reference: in each millisecond of a window, the book state in force is the last one with a
time <= that millisecond; ``live_ms`` counts the milliseconds in which it was LIVE with both
sides, the spread and depth are summed over them and averaged. OFI sums the Cont-Kukanov-
Stoikov term of every two consecutive LIVE states of a book into the window of the later one.
OHLC comes from the window's trades sorted by (time, exchange, numeric trade id).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.bars import ALL, Bar, BookSample, InstrumentBars, ofi_term
from jobs.parse.events import Side, Trade

pytestmark = pytest.mark.unit

D = Decimal
ZERO = D(0)
BASE = 1_700_000_000_000  # a multiple of 1000 (not of 1500)
INTERVALS = (1000, 1500)
SPAN_MS = 4000  # events within [BASE, BASE + SPAN_MS)
WATERMARK = BASE + 5999
EXCHANGES = ("binance", "coinbase")


def sample(
    bid: str, bid_size: str, ask: str, ask_size: str, bd: str = "1", ad: str = "1"
) -> BookSample:
    return BookSample((D(bid), D(bid_size), D(ask), D(ask_size)), D(bd), D(ad))


def trade(
    exchange: str, time_ms: int, price: str, size: str = "1", side: Side = "buy", tid: str = "1"
) -> Trade:
    return Trade(exchange, "S", tid, D(price), D(size), side, time_ms, time_ms, 0)


# --- the reference ------------------------------------------------------------------------


@dataclass
class Ref:
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal | None = None
    volume: Decimal = ZERO
    notional: Decimal = ZERO
    vwap: float | None = None
    trade_count: int = 0
    buy_volume: Decimal = ZERO
    sell_volume: Decimal = ZERO
    live_ms: int = 0
    twa_spread: float | None = None
    twa_bid_depth: float | None = None
    twa_ask_depth: float | None = None
    ofi: Decimal = ZERO
    ofi_terms: int = 0


def order_key(t: Trade) -> tuple[int, str, int]:
    return (t.trade_time_ms, t.exchange, int(t.trade_id) if t.trade_id.isdigit() else 0)


def trade_figures(ref: Ref, trades: list[Trade]) -> None:
    if not trades:
        return
    ordered = sorted(trades, key=order_key)  # stable: arrival order breaks ties
    ref.open, ref.close = ordered[0].price, ordered[-1].price
    ref.high = max(t.price for t in trades)
    ref.low = min(t.price for t in trades)
    ref.volume = sum((t.size for t in trades), D(0))
    ref.notional = sum((t.price * t.size for t in trades), D(0))
    ref.vwap = float(ref.notional / ref.volume)
    ref.trade_count = len(trades)
    ref.buy_volume = sum((t.size for t in trades if t.taker_side == "buy"), D(0))
    ref.sell_volume = sum((t.size for t in trades if t.taker_side == "sell"), D(0))


def in_force(states: list[tuple[int, BookSample | None]], ms: int) -> BookSample | None:
    held = None
    for time_ms, s in states:  # in time order
        if time_ms <= ms:
            held = s
    return held


def reference(
    trades: list[Trade],
    books: dict[str, list[tuple[int, BookSample | None]]],
    intervals: tuple[int, ...],
    watermark: int,
) -> dict[tuple[int, int, str], Ref]:
    rows: dict[tuple[int, int, str], Ref] = {}
    for interval in intervals:
        first = BASE // interval * interval - interval
        for start in range(first, watermark - interval + 2, interval):
            # only windows whose last millisecond the watermark passed are closed
            assert start + interval - 1 <= watermark
            venue_rows: dict[str, Ref] = {}
            for exchange in EXCHANGES:
                ref = Ref()
                trade_figures(
                    ref,
                    [t for t in trades if t.exchange == exchange
                     and start <= t.trade_time_ms < start + interval],
                )  # fmt: skip
                states = books.get(exchange, [])
                spread = bid_depth = ask_depth = D(0)
                for ms in range(start, start + interval):
                    held = in_force(states, ms)
                    if held is not None:
                        ref.live_ms += 1
                        spread += held.touch[2] - held.touch[0]
                        bid_depth += held.bid_depth
                        ask_depth += held.ask_depth
                if ref.live_ms:
                    ref.twa_spread = float(spread / ref.live_ms)
                    ref.twa_bid_depth = float(bid_depth / ref.live_ms)
                    ref.twa_ask_depth = float(ask_depth / ref.live_ms)
                for (_, prev), (time_ms, cur) in pairwise(states):
                    if prev is not None and cur is not None and start <= time_ms < start + interval:
                        ref.ofi += ofi_term(prev.touch, cur.touch)
                        ref.ofi_terms += 1
                if ref.trade_count or ref.live_ms or ref.ofi_terms:
                    venue_rows[exchange] = ref
            if not venue_rows:
                continue
            total = Ref()
            trade_figures(total, [t for t in trades if start <= t.trade_time_ms < start + interval])
            depths = [r for r in venue_rows.values() if r.twa_bid_depth is not None]
            if depths:
                total.twa_bid_depth = sum(r.twa_bid_depth or 0.0 for r in depths)
                total.twa_ask_depth = sum(r.twa_ask_depth or 0.0 for r in depths)
            total.ofi = sum((r.ofi for r in venue_rows.values()), D(0))
            for venue, ref in [*venue_rows.items(), (ALL, total)]:
                rows[(interval, start, venue)] = ref
    return rows


EXACT = (
    "open", "high", "low", "close", "volume", "notional", "trade_count", "buy_volume",
    "sell_volume", "live_ms", "ofi",
)  # fmt: skip
FLOATS = ("vwap", "twa_spread", "twa_bid_depth", "twa_ask_depth")


def assert_bars_equal(bars: list[Bar], want: dict[tuple[int, int, str], Ref]) -> None:
    have = {(b.interval_ms, b.window_start_ms, b.venue): b for b in bars}
    assert len(have) == len(bars), "a window closed twice"
    assert sorted(have) == sorted(want)
    for key, bar in have.items():
        ref = want[key]
        assert bar.instrument == "BTC-USD"
        for name in EXACT:
            assert getattr(bar, name) == getattr(ref, name), (key, name)
        for name in FLOATS:
            got, exp = getattr(bar, name), getattr(ref, name)
            if exp is None:
                assert got is None, (key, name)
            else:
                assert got == pytest.approx(exp, rel=1e-9, abs=1e-12), (key, name)


# --- property -------------------------------------------------------------------------------

PRICES = [D(p) for p in ("99", "99.5", "100", "100.5", "101")]
SIZES = [D(s) for s in ("0.1", "1", "2.25", "5")]

sample_strategy = st.builds(
    lambda bid, spread, bs, as_, bd, ad: BookSample((bid, bs, bid + spread, as_), bd, ad),
    st.sampled_from(PRICES),
    st.sampled_from([D("0.5"), D(1), D("1.5")]),
    st.sampled_from(SIZES),
    st.sampled_from(SIZES),
    st.sampled_from([D(0), *SIZES]),
    st.sampled_from([D(0), *SIZES]),
)


@st.composite
def book_states(draw: st.DrawFn) -> list[tuple[int, BookSample | None]]:
    """States in time order (repeated milliseconds included), LIVE or not."""
    times = sorted(draw(st.lists(st.integers(0, SPAN_MS - 1), max_size=12)))
    if times and draw(st.booleans()):
        times.append(times[-1])  # two states in one millisecond
    return [(BASE + t, draw(st.none() | sample_strategy | sample_strategy)) for t in times]


@st.composite
def trades_strategy(draw: st.DrawFn) -> list[Trade]:
    out = []
    for i in range(draw(st.integers(0, 15))):
        # numeric ids but for a few (which all order as 0), unique per exchange
        tid = draw(st.sampled_from([str(100 - i), str(100 + i), f"x{i}"]))
        out.append(
            Trade(
                draw(st.sampled_from(EXCHANGES)),
                "S",
                tid,
                draw(st.sampled_from(PRICES)),
                draw(st.sampled_from(SIZES)),
                draw(st.sampled_from(["buy", "sell"])),
                # on a coarse grid: many trades share a millisecond
                BASE
                + 100 * draw(st.integers(0, SPAN_MS // 100 - 1))
                + draw(st.sampled_from([0, 0, 99])),
                0,
                0,
            )
        )
    return out


@settings(max_examples=120, derandomize=True, deadline=None)
@given(book_states(), book_states(), trades_strategy(), st.data())
def test_bars_equal_the_millisecond_reference(
    states_a: list[tuple[int, BookSample | None]],
    states_b: list[tuple[int, BookSample | None]],
    trades: list[Trade],
    data: st.DataObject,
) -> None:
    books = {EXCHANGES[0]: states_a, EXCHANGES[1]: states_b}
    # any interleaving of the three streams that keeps each book's states in order
    streams: list[list[tuple[str, object]]] = [
        [("a", s) for s in states_a],
        [("b", s) for s in states_b],
        [("t", t) for t in trades],
    ]
    bars = InstrumentBars("BTC-USD", INTERVALS)
    while any(streams):
        pick = data.draw(st.sampled_from([s for s in streams if s]))
        kind, item = pick.pop(0)
        if kind == "t":
            assert isinstance(item, Trade)
            bars.on_trade(item)
        else:
            time_ms, s = item  # type: ignore[misc]
            exchange = EXCHANGES[0] if kind == "a" else EXCHANGES[1]
            bars.on_book((exchange, "S"), time_ms, s)
    out = bars.close_until(WATERMARK)
    assert_bars_equal(out, reference(trades, books, INTERVALS, WATERMARK))
    # windows close in order of their end; every window closed left the open set
    ends = [b.window_start_ms + b.interval_ms for b in out]
    assert ends == sorted(ends)
    assert all(start + interval - 1 > WATERMARK for interval, start, _ in bars.windows)
    assert bars.close_until(WATERMARK) == []
    due = bars.next_close_ms()
    assert due is None or due > WATERMARK


@settings(max_examples=60, derandomize=True, deadline=None)
@given(book_states(), trades_strategy(), st.lists(st.integers(0, 6000), max_size=6))
def test_closing_in_steps_equals_closing_at_once(
    states: list[tuple[int, BookSample | None]], trades: list[Trade], cuts: list[int]
) -> None:
    """The watermark may advance in any steps (events all ahead of it): same bars."""
    once = InstrumentBars("BTC-USD", INTERVALS)
    steps = InstrumentBars("BTC-USD", INTERVALS)
    for bars in (once, steps):
        for t in trades:
            bars.on_trade(t)
        for time_ms, s in states:
            bars.on_book(("binance", "S"), time_ms, s)
    out: list[Bar] = []
    for cut in sorted(cuts):
        out.extend(steps.close_until(BASE - 1000 + cut))
    out.extend(steps.close_until(WATERMARK))
    assert out == once.close_until(WATERMARK)


# --- examples -------------------------------------------------------------------------------


def test_a_window_closes_only_when_the_watermark_reaches_its_last_millisecond() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    assert bars.next_close_ms() is None and bars.close_until(BASE + 10**6) == []
    bars.on_trade(trade("binance", BASE + 10, "100", "2", "buy", "7"))
    bars.on_trade(trade("coinbase", BASE + 999, "101", "1", "sell", "3"))
    assert bars.next_close_ms() == BASE + 999
    assert bars.close_until(BASE + 998) == []
    out = bars.close_until(BASE + 999)
    assert [(b.venue, b.window_start_ms) for b in out] == [
        ("binance", BASE),
        ("coinbase", BASE),
        (ALL, BASE),
    ]
    total = out[-1]
    assert (total.open, total.close, total.high, total.low) == (D(100), D(101), D(101), D(100))
    assert (total.volume, total.buy_volume, total.sell_volume) == (D(3), D(2), D(1))
    assert total.vwap == pytest.approx(301 / 3)
    assert total.live_ms == 0 and total.twa_spread is None and total.twa_bid_depth is None
    assert bars.next_close_ms() is None and bars.windows == {}


def test_open_and_close_order_by_time_exchange_and_numeric_trade_id() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    # arrival order differs from the order of the bar; "10" > "9" numerically
    bars.on_trade(trade("coinbase", BASE + 5, "3", tid="1"))
    bars.on_trade(trade("binance", BASE + 5, "2", tid="10"))
    bars.on_trade(trade("binance", BASE + 5, "1", tid="9"))
    bars.on_trade(trade("binance", BASE + 6, "4", tid="1"))
    bars.on_trade(trade("binance", BASE + 4, "5", tid="100"))
    out = {b.venue: b for b in bars.close_until(BASE + 999)}
    assert (out[ALL].open, out[ALL].close) == (D(5), D(4))
    assert (out["coinbase"].open, out["coinbase"].close) == (D(3), D(3))
    bars.on_trade(trade("coinbase", BASE + 1005, "8", tid="1"))
    bars.on_trade(trade("binance", BASE + 1005, "6", tid="10"))
    bars.on_trade(trade("binance", BASE + 1005, "7", tid="9"))
    out = {b.venue: b for b in bars.close_until(BASE + 1999)}
    assert (out[ALL].open, out[ALL].close) == (D(7), D(8))
    assert (out["binance"].open, out["binance"].close) == (D(7), D(6))
    # ids that are not numbers all order as 0: arrival order decides between them
    bars.on_trade(trade("binance", BASE + 2005, "1", tid="abc"))
    bars.on_trade(trade("binance", BASE + 2005, "2", tid="xyz"))
    bars.on_trade(trade("binance", BASE + 2005, "3", tid="def"))
    [venue, _] = bars.close_until(BASE + 2999)
    assert (venue.open, venue.close) == (D(1), D(3))


def test_a_quiet_live_book_keeps_producing_consecutive_bars() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    s = sample("100", "1", "100.5", "2", bd="4", ad="6")
    bars.on_book(("binance", "S"), BASE + 200, s)
    assert bars.next_close_ms() == BASE + 999
    out = bars.close_until(BASE + 4999)
    assert [(b.venue, b.window_start_ms - BASE) for b in out] == [
        (v, w) for w in (0, 1000, 2000, 3000, 4000) for v in ("binance", ALL)
    ]
    venue = [b for b in out if b.venue == "binance"]
    assert [b.live_ms for b in venue] == [800, 1000, 1000, 1000, 1000]
    assert all(b.twa_spread == 0.5 and b.twa_bid_depth == 4 and b.twa_ask_depth == 6
               for b in venue)  # fmt: skip
    assert all(b.trade_count == 0 and b.open is None and b.ofi == 0 for b in out)
    assert [b.twa_bid_depth for b in out if b.venue == ALL] == [4.0] * 5
    assert bars.next_close_ms() == BASE + 5999  # the chain goes on
    # not LIVE any more: the chain stops after the window the book left in
    bars.on_book(("binance", "S"), BASE + 5250, None)
    [last, total] = bars.close_until(BASE + 99_999)
    assert (last.window_start_ms, last.live_ms) == (BASE + 5000, 250)
    assert total.venue == ALL and bars.next_close_ms() is None


def test_ofi_terms_and_the_all_row() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    a, b = ("binance", "S"), ("coinbase", "S")
    bars.on_book(a, BASE + 100, sample("100", "1", "101", "1"))
    # bid up (+new size 2), ask unchanged (+old 1 - new 3): 2 + 1 - 3 = 0
    bars.on_book(a, BASE + 300, sample("100.5", "2", "101", "3"))
    # bid down (-old 2), ask down (-new 4): -6
    bars.on_book(a, BASE + 600, sample("100", "5", "100.9", "4", bd="2"))
    bars.on_book(a, BASE + 700, None)  # not LIVE: no term into or out of it
    bars.on_book(a, BASE + 800, sample("99", "1", "102", "1"))
    bars.on_book(b, BASE + 500, sample("100", "1", "100.2", "1", bd="3", ad="5"))
    bars.on_book(b, BASE + 500, sample("100", "4", "100.2", "1", bd="3", ad="5"))  # +3
    out = {x.venue: x for x in bars.close_until(BASE + 999)}
    assert out["binance"].ofi == D(-6) and out["coinbase"].ofi == D(3)
    assert out[ALL].ofi == D(-3)
    assert out["binance"].live_ms == 600 + 200 and out["coinbase"].live_ms == 500
    # depth: time weights 200 (1) + 300 (1) + 100 (2) + 200 (1) over 800 ms
    assert out["binance"].twa_bid_depth == pytest.approx(900 / 800)
    assert out[ALL].twa_bid_depth == pytest.approx(900 / 800 + 3)
    assert out[ALL].twa_ask_depth == pytest.approx(1 + 5)
    assert out[ALL].twa_spread is None and out[ALL].live_ms == 0


def test_a_window_with_only_an_ofi_term_has_a_row_without_averages() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    bars.on_book(("binance", "S"), BASE + 999, sample("100", "1", "101", "1"))
    bars.on_book(("binance", "S"), BASE + 999, sample("100", "3", "101", "1"))
    bars.on_book(("binance", "S"), BASE + 999, None)
    [venue, total] = bars.close_until(BASE + 999)
    assert (venue.live_ms, venue.ofi, venue.twa_spread, venue.twa_bid_depth) == (
        0,
        D(2),
        None,
        None,
    )
    assert (total.venue, total.ofi, total.twa_bid_depth) == (ALL, D(2), None)


def test_a_book_never_live_and_without_trades_makes_no_row() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    bars.on_book(("binance", "S"), BASE + 10, None)
    bars.on_trade(trade("coinbase", BASE + 20, "100"))
    assert [b.venue for b in bars.close_until(BASE + 999)] == ["coinbase", ALL]


def test_a_late_state_is_clamped_to_the_integrated_point() -> None:
    bars = InstrumentBars("BTC-USD", (1000,))
    first = sample("100", "1", "101", "1")
    bars.on_book(("binance", "S"), BASE + 500, first)
    assert len(bars.close_until(BASE + 1999)) == 4
    # stamped inside a closed window: takes effect from its end, its OFI term goes there
    bars.on_book(("binance", "S"), BASE + 1500, sample("100", "2", "100.5", "3", bd="9"))
    assert all(start >= BASE + 2000 for _, start, _ in bars.windows)
    [venue, _] = bars.close_until(BASE + 2999)
    assert venue.window_start_ms == BASE + 2000 and venue.live_ms == 1000
    assert venue.twa_spread == 0.5 and venue.twa_bid_depth == 9
    assert venue.ofi == D(2 - 1 - 3)  # bid same (+new 2, -old 1), ask down (-new 3)


@pytest.mark.timeout(20)
def test_a_book_first_seen_with_a_state_before_the_closed_windows_does_not_reopen_them() -> None:
    """Regression: its integration re-opened closed windows, and close_until looped forever."""
    bars = InstrumentBars("BTC-USD", (1000, 60_000))
    bars.on_book(("binance", "S"), BASE + 100, sample("100", "1", "101", "1"))
    bars.close_until(BASE + 2999)
    assert bars.closed_through_ms() == BASE + 3000
    bars.on_book(("coinbase", "S"), BASE + 1200, sample("100", "1", "100.2", "1"))
    assert all(start + i > BASE + 2999 for i, start, _ in bars.windows)
    out = bars.close_until(BASE + 3999)
    coinbase = [b for b in out if b.venue == "coinbase"]
    assert [(b.window_start_ms, b.live_ms) for b in coinbase] == [(BASE + 3000, 1000)]


@pytest.mark.timeout(20)
def test_a_trade_in_a_closed_window_is_left_out_of_it() -> None:
    """Regression: it re-opened the window, which never closed again (close_until looped)."""
    bars = InstrumentBars("BTC-USD", (1000, 1_000_000))
    bars.on_trade(trade("binance", BASE + 10, "100"))
    assert len(bars.close_until(BASE + 999)) == 2
    bars.on_trade(trade("binance", BASE + 20, "200"))  # 1 s window closed; 1000 s window open
    assert bars.close_until(BASE + 1999) == []
    out = bars.close_until(BASE + 999_999)
    assert [(b.interval_ms, b.venue, b.trade_count, b.high) for b in out] == [
        (1_000_000, "binance", 2, D(200)),
        (1_000_000, ALL, 2, D(200)),
    ]
