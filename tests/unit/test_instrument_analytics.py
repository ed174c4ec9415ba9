"""The NBBO, trade matching and bars as InstrumentBooks runs them on real exchange frames.

One instrument, two exchanges: Binance ``BNBBTC`` and a Coinbase product ``BNB-BTC`` (same
canonical instrument). The watermark is passed in explicitly, as Flink would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.bars import ALL
from jobs.book.levels import BookSide
from jobs.instrument import (
    END_OF_INPUT,
    NO_WATERMARK,
    AnalyticsRules,
    BookId,
    InstrumentBooks,
    LateEvent,
    Outputs,
)
from jobs.matching import BookState
from jobs.parse.events import Trade
from schemas.codec import RawEnvelope

pytestmark = pytest.mark.unit

D = Decimal
T0 = 1_700_000_000_000  # ms, a multiple of 1000
BN: BookId = ("binance", "BNBBTC")
CB: BookId = ("coinbase", "BNB-BTC")
RULES = AnalyticsRules(nbbo_stale_after_ms=10_000, bar_intervals_ms=(1000,))


def new_books(instrument: str = "BNB-BTC") -> InstrumentBooks:
    return InstrumentBooks(instrument, 10, 1000, 100, 100, RULES)


# --- frames ---------------------------------------------------------------------------------


def bn_env(channel: str, frame: dict, rx_ms: int, instrument: str = "BNB-BTC") -> RawEnvelope:
    payload = json.dumps(frame).encode()
    return RawEnvelope(instrument, "binance", "BNBBTC", channel, rx_ms * 10**6, "c1", 0, payload)


def bn_snapshot(last_id: int, bids: list, asks: list) -> dict:
    return {"lastUpdateId": last_id, "bids": bids, "asks": asks}


def bn_depth(first: int, last: int, event_ms: int, bids: list, asks: list) -> dict:
    return {"e": "depthUpdate", "E": event_ms, "s": "BNBBTC", "U": first, "u": last,
            "b": bids, "a": asks}  # fmt: skip


def bn_trade(tid: int, price: str, qty: str, trade_ms: int, taker: str = "buy") -> dict:
    return {"e": "trade", "E": trade_ms, "s": "BNBBTC", "t": tid, "p": price, "q": qty,
            "T": trade_ms, "m": taker == "sell", "M": True}  # fmt: skip


def rfc3339(ms: int) -> str:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cb_env(channel: str, msg: dict, rx_ms: int) -> RawEnvelope:
    payload = json.dumps(msg).encode()
    return RawEnvelope("BNB-BTC", "coinbase", "BNB-BTC", channel, rx_ms * 10**6, "c2", 0, payload)


def cb_l2(seq: int, ts_ms: int, bids: list, asks: list, kind: str = "update") -> dict:
    updates = [
        {"side": side, "event_time": rfc3339(ts_ms), "price_level": p, "new_quantity": q}
        for side, levels in (("bid", bids), ("offer", asks))
        for p, q in levels
    ]
    return {"channel": "l2_data", "client_id": "", "timestamp": rfc3339(ts_ms),
            "sequence_num": seq,
            "events": [{"type": kind, "product_id": "BNB-BTC", "updates": updates}]}  # fmt: skip


def cb_trade(seq: int, tid: str, price: str, size: str, trade_ms: int, taker: str) -> dict:
    maker = "SELL" if taker == "buy" else "BUY"  # market_trades names the maker's side
    trade = {"trade_id": tid, "product_id": "BNB-BTC", "price": price, "size": size,
             "side": maker, "time": rfc3339(trade_ms)}  # fmt: skip
    return {"channel": "market_trades", "client_id": "", "timestamp": rfc3339(trade_ms),
            "sequence_num": seq, "events": [{"type": "update", "trades": [trade]}]}  # fmt: skip


def live_binance(books: InstrumentBooks, rx_ms: int = T0, wm: int = NO_WATERMARK) -> Outputs:
    """Binance LIVE at ``rx_ms``: bid 1.0 x 2, ask 1.1 x 3 (update id 10)."""
    return books.process(
        bn_env("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), rx_ms), wm
    )


def advanced(books: InstrumentBooks, watermark: int) -> Outputs:
    out = Outputs()
    books.advance(watermark, out)
    return out


def test_the_end_of_a_bounded_input_finishes_what_its_events_reached_and_stops() -> None:
    """A replay's last watermark is Flink's maximum: trades still pending are matched and the
    windows up to the last event closed, and no timer is asked for again (a LIVE book would
    otherwise keep closing empty windows up to the end of time)."""
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    books.process(bn_env("trade", bn_trade(7, "1.05", "0.5", T0 + 2500), T0 + 2600), T0 + 500)
    assert books.next_event_time_ms() is not None
    out = advanced(books, END_OF_INPUT)
    assert [m.trade.trade_id for m in out.matched] == ["7"]
    assert {b.window_start_ms for b in out.bars} <= {T0, T0 + 1000}
    assert books.watermark_ms == T0 + 2500 and books.next_event_time_ms() is None


# --- matching as of the trade's time -----------------------------------------------------


def test_a_trade_after_a_later_update_is_matched_as_of_its_time_once_the_watermark_passes() -> None:
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    books.process(bn_env("depth", bn_depth(11, 11, T0 + 100, [], [["1.05", "1"]]), T0 + 100),
                  T0 - 1900)  # fmt: skip
    books.process(bn_env("depth", bn_depth(12, 12, T0 + 300, [], [["1.02", "2"]]), T0 + 300),
                  T0 - 1700)  # fmt: skip
    # the trade (T0+200) arrives after the update of T0+300: jitter
    out = books.process(bn_env("trade", bn_trade(7, "1.05", "0.5", T0 + 200), T0 + 310), T0 + 150)
    [trade] = out.trades
    assert out.matched == [] and out.late == []
    assert out.pending_added == [trade] and books.pending == [trade]
    assert books.next_event_time_ms() == T0 + 200
    assert advanced(books, T0 + 199).matched == []
    out = advanced(books, T0 + 200)
    [m] = out.matched
    assert books.pending == [] and ("binance", "BNBBTC", "7") in books.seen
    assert m.trade == trade and m.instrument == "BNB-BTC"
    assert (m.book_status, m.book_time_ms, m.book_seq) == ("LIVE", T0 + 100, 11)
    assert m.ask == (D("1.05"), D(1)) and m.bid == (D("1.0"), D(2))
    assert (m.touch, m.levels_consumed, m.size_consumed) == ("at", 1, D("0.5"))
    assert m.mid == D("1.025") and m.slippage_mid == D("0.025")
    assert m.nbbo is not None and m.nbbo.venues == ("binance:BNBBTC",)
    assert m.nbbo.ask_price == D("1.05") and m.slippage_nbbo == 0 and not m.trade_through
    # matched against the book of T0+100, not the latest one (ask 1.02, where it would
    # have been a trade through the touch)


def test_a_book_update_in_the_trades_millisecond_counts_as_before_it() -> None:
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    books.process(bn_env("depth", bn_depth(11, 11, T0 + 100, [["1.04", "1"]], []), T0 + 100),
                  T0 - 1000)  # fmt: skip
    books.process(bn_env("trade", bn_trade(8, "1.04", "1", T0 + 100, "sell"), T0 + 101), T0 - 1000)
    [m] = advanced(books, T0 + 100).matched
    assert m.bid == (D("1.04"), D(1)) and m.touch == "at" and m.book_time_ms == T0 + 100


def test_coinbase_orders_a_trade_and_an_update_of_one_millisecond_by_sequence_num() -> None:
    books = new_books()
    books.process(cb_env("depth", cb_l2(1, T0, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0))
    # two trades and an update stamped T0+100, in sequence_num order: trade, update, trade
    books.process(cb_env("trade", cb_trade(4, "11", "1.2", "1", T0 + 100, "buy"), T0 + 101))
    books.process(cb_env("depth", cb_l2(5, T0 + 100, [], [["1.15", "2"]]), T0 + 101))
    books.process(cb_env("trade", cb_trade(6, "12", "1.15", "1", T0 + 100, "buy"), T0 + 101))
    before, after = advanced(books, T0 + 100).matched
    assert before.trade.trade_id == "11" and before.ask == (D("1.2"), D(1))
    assert before.touch == "at" and before.book_seq == 1
    assert after.trade.trade_id == "12" and after.ask == (D("1.15"), D(2))
    assert after.touch == "at" and after.book_seq == 5


# --- late trades ------------------------------------------------------------------------------


def test_a_trade_sent_again_is_dropped_not_late_nor_counted_twice() -> None:
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    frame = bn_trade(1, "1.05", "2", T0 + 400)
    books.process(bn_env("trade", frame, T0 + 410), T0 + 300)
    again = books.process(bn_env("trade", frame, T0 + 420), T0 + 350)  # still on time
    assert again.duplicate_trades == 1 and again.trades == [] and again.pending_added == []
    advanced(books, T0 + 5000)
    late_again = books.process(bn_env("trade", frame, T0 + 9000), T0 + 5000)  # behind the mark
    assert late_again.duplicate_trades == 1 and late_again.late == []
    forgotten = advanced(books, T0 + 400 + 60_001)
    assert forgotten.trades_forgotten == [("binance", "BNBBTC", "1")] and not books.seen


def test_a_trade_at_or_before_the_watermark_is_late_and_in_no_bar() -> None:
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    out = books.process(bn_env("trade", bn_trade(1, "1.05", "2", T0 + 400), T0 + 410), T0 + 300)
    assert out.late == [] and len(out.pending_added) == 1
    rx = T0 + 420
    out = books.process(bn_env("trade", bn_trade(2, "1.06", "5", T0 + 300), rx), T0 + 300)
    assert len(out.late_trades) == 1 and out.trades == []  # stored all the same, as late
    assert out.late == [
        LateEvent("binance", "BNBBTC", "BNB-BTC", "trade", "2", T0 + 300, T0 + 300, rx * 10**6)
    ]
    assert out.pending_added == [] and out.matched == []
    assert [t.trade_id for t in books.pending] == ["1"]
    out = advanced(books, T0 + 999)
    assert [m.trade.trade_id for m in out.matched] == ["1"]
    bars = {b.venue: b for b in out.bars}
    assert bars["binance"].trade_count == 1 and bars["binance"].volume == D(2)
    assert bars[ALL].trade_count == 1 and bars[ALL].high == D("1.05")
    assert bars["binance"].live_ms == 1000 and bars["binance"].twa_spread == pytest.approx(0.1)


LAG_MS = 250  # the bounded out-of-orderness of the watermark

stream_step = st.one_of(
    # a book update: time step, receive latency, side, price, size (0 removes)
    st.tuples(
        st.just("depth"),
        st.integers(0, 40),
        st.integers(0, 30),
        st.sampled_from(["b", "a"]),
        st.sampled_from(["0.96", "0.97", "0.98", "0.99", "1.0", "1.1", "1.11", "1.12", "1.13"]),
        st.sampled_from(["0", "1", "2.5"]),
    ),
    # a trade: time step, how long before "now" it happened (jitter; > LAG_MS: late), side
    st.tuples(
        st.just("trade"),
        st.integers(0, 40),
        st.sampled_from([0, 1, 20, 120, 240, 400]),
        st.sampled_from(["buy", "sell"]),
    ),
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(stream_step, max_size=50))
def test_matched_trades_see_the_true_book_as_of_their_time(steps: list) -> None:
    """Random Binance streams with jittered trades, the watermark trailing the receive
    times: every trade is late iff at or before the watermark when it arrives, every other
    one is matched exactly once, against the book as it truly was at its time (all updates
    with an event time <= it), whatever the pruning did; closed bars hold exactly them."""
    books = new_books()
    live_binance(books, T0, wm=NO_WATERMARK)
    truth: dict[str, dict[Decimal, Decimal]] = {"b": {D("1.0"): D(2)}, "a": {D("1.1"): D(3)}}
    tops: list[tuple[int, tuple[Any, Any]]] = [(T0, ((D("1.0"), D(2)), (D("1.1"), D(3))))]
    now, rx = T0 + 500, T0  # trades (up to 400 ms before now) come after T0
    update_id = 10
    on_time: dict[str, Trade] = {}
    matched: list[Any] = []
    late: list[str] = []
    for n, step in enumerate(steps):
        now += step[1]
        if step[0] == "depth":
            _, _, latency, side, price, size = step
            rx = max(rx, now + latency)
            update_id += 1
            levels = [[price, size]]
            frame = bn_depth(update_id, update_id, now, levels if side == "b" else [],
                             levels if side == "a" else [])  # fmt: skip
            env = bn_env("depth", frame, rx)
            if D(size):
                truth[side][D(price)] = D(size)
            else:
                truth[side].pop(D(price), None)
            bid = max(truth["b"].items()) if truth["b"] else None
            ask = min(truth["a"].items()) if truth["a"] else None
            tops.append((now, (bid, ask)))
        else:
            _, _, jitter, side = step
            rx = max(rx, now)
            env = bn_env("trade", bn_trade(n, "1.05", "1", now - jitter, side), rx)
        watermark = rx - LAG_MS
        out = books.process(env, watermark)
        matched += out.matched
        late += [e.event_id for e in out.late]
        for t in out.pending_added:
            assert t.trade_time_ms > watermark
            on_time[t.trade_id] = t
        for t in out.trades:
            assert t.trade_id not in late and t.trade_time_ms > watermark
        for t in out.late_trades:
            assert t.trade_id in late and t.trade_time_ms <= watermark
        assert all(m.trade.trade_time_ms <= watermark for m in out.matched)
    out = advanced(books, rx + 10_000)
    matched += out.matched
    assert sorted(m.trade.trade_id for m in matched) == sorted(on_time)
    for m in matched:
        time_ms = m.trade.trade_time_ms
        in_force = [top for t, top in tops if t <= time_ms]
        assert in_force, "the first state is at T0, before every trade"
        assert (m.bid, m.ask) == in_force[-1], time_ms
        assert m.book_status == "LIVE" and m.book_time_ms <= time_ms
    closed = {b.window_start_ms: b for b in out.bars if b.venue == ALL}
    for start, bar in closed.items():
        trades = [t for t in on_time.values() if start <= t.trade_time_ms < start + 1000]
        assert bar.trade_count == len(trades)


def test_a_late_book_state_is_reported_applied_and_clamped_in_the_bars() -> None:
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    assert len(advanced(books, T0 + 1999).bars) == 4  # two 1 s windows, binance and ALL
    out = books.process(
        bn_env("depth", bn_depth(11, 11, T0 + 1500, [], [["1.2", "1"]]), T0 + 2100), T0 + 1999
    )
    [late] = out.late
    assert (late.kind, late.event_time_ms, late.watermark_ms) == ("book", T0 + 1500, T0 + 1999)
    assert out.book_views[0].seq == 11  # the book itself takes it
    bars = [b for b in advanced(books, T0 + 2999).bars if b.venue == "binance"]
    assert [(b.window_start_ms, b.live_ms) for b in bars] == [(T0 + 2000, 1000)]


@pytest.mark.timeout(20)
def test_a_book_first_seen_with_a_late_state_does_not_hang_the_bars() -> None:
    """Regression (jobs/bars.py): its first state re-opened closed windows for good."""
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    advanced(books, T0 + 2999)
    out = books.process(
        cb_env("depth", cb_l2(1, T0 + 1200, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0 + 3050),
        T0 + 2999,
    )
    assert [e.kind for e in out.late] == ["book"]
    bars = advanced(books, T0 + 3999).bars
    assert [(b.venue, b.live_ms) for b in bars] == [("binance", 1000), ("coinbase", 1000), (ALL, 0)]


# --- NBBO -----------------------------------------------------------------------------------


def test_nbbo_updates_on_change_only_and_excludes_a_resyncing_book_with_its_reason() -> None:
    books = new_books()
    out = live_binance(books, T0)
    [first] = out.nbbo
    assert first.nbbo.venues == ("binance:BNBBTC",) and first.nbbo.quote == "BTC"
    assert (first.nbbo.bid_price, first.nbbo.ask_price) == (D("1.0"), D("1.1"))
    out = books.process(
        cb_env("depth", cb_l2(1, T0 + 50, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0 + 60)
    )
    [both] = out.nbbo
    n = both.nbbo
    assert n.venues == ("binance:BNBBTC", "coinbase:BNB-BTC")
    assert (n.bid_price, n.bid_size, n.bid_venues) == (D("1.0"), D(3), ("binance", "coinbase"))
    assert (n.ask_price, n.ask_size, n.ask_venues) == (D("1.1"), D(3), ("binance",))
    assert both.version > first.version and both.event_time_ms == T0 + 50
    # a deeper level, a worse ask elsewhere: what the NBBO shows does not change
    out = books.process(bn_env("depth", bn_depth(11, 11, T0 + 70, [["0.9", "1"]], []), T0 + 70))
    assert out.book_views and out.nbbo == []
    out = books.process(
        cb_env("depth", cb_l2(2, T0 + 80, [], [["1.2", "0"], ["1.3", "1"]]), T0 + 80)
    )
    assert out.book_views and out.nbbo == []
    # a gap: Binance is RESYNCING, left out with the reason
    out = books.process(bn_env("depth", bn_depth(20, 21, T0 + 90, [["1.01", "1"]], []), T0 + 90))
    assert out.resyncs and out.resyncs[0][0] == BN
    [gap] = out.nbbo
    g = gap.nbbo
    assert g.venues == ("coinbase:BNB-BTC",)
    assert (g.excluded, g.excluded_reasons) == (("binance:BNBBTC",), ("RESYNCING",))
    assert (g.bid_price, g.bid_size, g.ask_price, g.ask_size) == (D("1.0"), D(1), D("1.3"), D(1))
    assert gap.version > both.version
    # healed: back in
    out = books.process(
        bn_env("snapshot", bn_snapshot(21, [["1.01", "1"]], [["1.1", "3"]]), T0 + 95)
    )
    [healed] = out.nbbo
    assert healed.nbbo.venues == ("binance:BNBBTC", "coinbase:BNB-BTC")
    assert healed.nbbo.bid_price == D("1.01") and healed.nbbo.excluded == ()


def test_a_silent_book_ages_out_of_the_live_nbbo_once() -> None:
    books = new_books()
    live_binance(books, T0)
    books.process(cb_env("depth", cb_l2(1, T0, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0))
    assert books.refresh_nbbo(T0 + 10_000) == []  # the bound is inclusive
    [aged] = books.refresh_nbbo(T0 + 10_001)
    assert aged.nbbo.venues == () and aged.nbbo.bid_price is None
    assert aged.nbbo.excluded_reasons == ("no update for 10001 ms",) * 2
    # still out: the growing age is no new NBBO (regression: one per timer tick)
    assert books.refresh_nbbo(T0 + 12_000) == []
    out = books.process(bn_env("depth", bn_depth(11, 11, T0 + 13_000, [], []), T0 + 13_000))
    [back] = out.nbbo
    assert back.nbbo.venues == ("binance:BNBBTC",) and back.nbbo.excluded == ("coinbase:BNB-BTC",)


def test_matching_uses_the_nbbo_as_of_the_trade_with_event_time_ages() -> None:
    books = new_books()
    live_binance(books, T0, wm=T0 - 2000)
    books.process(cb_env("depth", cb_l2(1, T0 + 10, [["1.0", "1"]], [["1.08", "1"]], "snapshot"),
                         T0 + 20), T0 - 2000)  # fmt: skip
    books.process(cb_env("trade", cb_trade(3, "5", "1.1", "1", T0 + 500, "buy"), T0 + 510), T0)
    [m] = advanced(books, T0 + 500).matched
    assert m.nbbo is not None and m.nbbo.ask_price == D("1.08")
    assert m.nbbo.ask_venues == ("coinbase",) and m.nbbo.venue_versions[0] > 0
    assert m.touch == "through" and m.slippage_nbbo == D("0.02") and m.trade_through
    # event time: a book with no update for longer than the bound before the trade is out
    books.process(cb_env("depth", cb_l2(4, T0 + 5000, [], [["1.09", "1"]]), T0 + 5000), T0 + 500)
    books.process(bn_env("trade", bn_trade(9, "1.1", "1", T0 + 10_500), T0 + 10_510), T0 + 500)
    [m] = advanced(books, T0 + 10_500).matched
    assert m.nbbo is not None and m.nbbo.venues == ("coinbase:BNB-BTC",)
    assert m.nbbo.excluded_reasons == ("no update for 10500 ms",)
    assert m.touch == "at" and m.book_time_ms == T0


# --- event timers ---------------------------------------------------------------------------


def test_next_event_time_is_the_earliest_pending_trade_or_window_close() -> None:
    books = new_books()
    assert books.next_event_time_ms() is None
    books.process(bn_env("trade", bn_trade(1, "1", "1", T0 + 1500), T0 + 1500), T0)
    assert books.next_event_time_ms() == T0 + 1500  # before its window's end (T0+1999)
    out = advanced(books, T0 + 1500)
    assert len(out.matched) == 1 and out.matched[0].book_status == "NONE"
    assert books.next_event_time_ms() == T0 + 1999
    assert len(advanced(books, T0 + 1999).bars) == 2
    assert books.next_event_time_ms() is None  # nothing left: no timer
    live_binance(books, T0 + 2500, wm=T0 + 1999)
    assert books.next_event_time_ms() == T0 + 2999
    advanced(books, T0 + 2999)
    assert books.next_event_time_ms() == T0 + 3999  # a LIVE book keeps bars coming
    assert advanced(books, NO_WATERMARK) == Outputs()  # before the first watermark: nothing


# --- state round trip -----------------------------------------------------------------------


@dataclass
class Persisted:
    """What the operator keeps in Flink state, fed from the Outputs like it does."""

    history: dict[tuple[BookId, int, int], BookState] = field(default_factory=dict)
    pending: dict[tuple[str, str, str], Trade] = field(default_factory=dict)

    def apply(self, out: Outputs) -> None:
        for book_id, state in out.history_added:
            self.history[(book_id, state.version, state.time_ms)] = state
        for book_id, states in out.history_pruned:
            for state in states:
                del self.history[(book_id, state.version, state.time_ms)]
        for trade in out.pending_added:
            self.pending[(trade.exchange, trade.symbol, trade.trade_id)] = trade
        for key in out.trades_forgotten:
            del self.pending[key]

    def restore(self, books: InstrumentBooks, live: InstrumentBooks, data: bytes) -> None:
        for book_id, tracked in live.books.items():
            levels: list[tuple[BookSide, Decimal, Decimal]] = [
                ("b", p, s) for p, s in tracked.engine.book.bids.items()
            ] + [("a", p, s) for p, s in tracked.engine.book.asks.items()]
            books.restore(book_id, tracked.meta(), levels)
        history: dict[BookId, list[BookState]] = {}
        # map state has no order: hand the states over in a scrambled one
        for (book_id, _, _), state in sorted(self.history.items(), key=lambda kv: -kv[0][2]):
            history.setdefault(book_id, []).append(state)
        books.restore_analytics(data, history, list(reversed(self.pending.values())))


Step = tuple[RawEnvelope | None, int]  # (frame or None: a timer, watermark)


def scenario() -> list[Step]:
    """Two exchanges, trades before and after book updates, late events, window closes."""
    return [
        (bn_env("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0), NO_WATERMARK),
        (
            cb_env("depth", cb_l2(1, T0 + 20, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0 + 30),
            T0 - 2000,
        ),
        (bn_env("depth", bn_depth(11, 11, T0 + 100, [], [["1.05", "1"]]), T0 + 100), T0 - 1900),
        (cb_env("trade", cb_trade(2, "1", "1.2", "0.5", T0 + 150, "buy"), T0 + 160), T0 - 1800),
        (bn_env("depth", bn_depth(12, 12, T0 + 300, [["1.01", "4"]], []), T0 + 300), T0 - 1700),
        (bn_env("trade", bn_trade(1, "1.05", "1", T0 + 200), T0 + 310), T0 + 100),
        (bn_env("trade", bn_trade(2, "1.0", "2", T0 + 250, "sell"), T0 + 320), T0 + 100),
        (cb_env("depth", cb_l2(3, T0 + 700, [["1.02", "1"]], []), T0 + 705), T0 + 210),
        (None, T0 + 260),
        (bn_env("trade", bn_trade(3, "1.0", "1", T0 + 240), T0 + 900), T0 + 260),  # late
        (bn_env("depth", bn_depth(13, 13, T0 + 1200, [], [["1.03", "1"]]), T0 + 1200), T0 + 800),
        (cb_env("trade", cb_trade(4, "2", "1.02", "1", T0 + 1300, "sell"), T0 + 1310), T0 + 900),
        (None, T0 + 999),
        (bn_env("depth", bn_depth(20, 21, T0 + 1400, [], []), T0 + 1400), T0 + 1000),  # gap
        (cb_env("trade", cb_trade(5, "3", "1.2", "1", T0 + 1500, "buy"), T0 + 1510), T0 + 1200),
        (bn_env("snapshot", bn_snapshot(25, [["1.0", "1"]], [["1.1", "1"]]), T0 + 1600), T0 + 1300),
        (bn_env("trade", bn_trade(4, "1.1", "1", T0 + 1700), T0 + 1710), T0 + 1400),
        (None, T0 + 2999),
        (cb_env("depth", cb_l2(6, T0 + 3100, [], [["1.2", "3"]]), T0 + 3100), T0 + 2999),
        (bn_env("trade", bn_trade(5, "1.1", "1", T0 + 3200), T0 + 3210), T0 + 3000),
        (None, T0 + 4999),
    ]


def run(books: InstrumentBooks, step: Step) -> Outputs:
    env, watermark = step
    if env is None:
        return advanced(books, watermark)
    return books.process(env, watermark)


def visible(out: Outputs) -> tuple[Any, ...]:
    # which book's history is pruned first depends on the order state was restored in
    pruned = sorted(out.history_pruned, key=lambda item: item[0])
    return (out.book_views, out.nbbo, out.matched, out.bars, out.late, out.pending_added,
            out.trades_forgotten, out.history_added, pruned, out.trades)  # fmt: skip


@pytest.mark.parametrize("cut", range(1, len(scenario())))
def test_state_round_trip_gives_the_same_outputs(cut: int) -> None:
    steps = scenario()
    live = new_books()
    persisted = Persisted()
    for step in steps[:cut]:
        persisted.apply(run(live, step))
    restored = new_books()
    persisted.restore(restored, live, live.analytics_state())
    assert [t.trade_id for t in restored.pending] == [t.trade_id for t in live.pending]
    assert restored.next_event_time_ms() == live.next_event_time_ms()
    for step in steps[cut:]:
        assert visible(run(restored, step)) == visible(run(live, step)), step


def test_the_scenario_exercises_everything() -> None:
    books = new_books()
    outs = [run(books, step) for step in scenario()]
    assert sum(len(o.matched) for o in outs) == 7
    assert [e.kind for o in outs for e in o.late] == ["trade"]
    assert sum(len(o.nbbo) for o in outs) >= 4
    assert {b.venue for o in outs for b in o.bars} == {"binance", "coinbase", ALL}
    assert any(o.history_pruned for o in outs)
    assert books.pending == []


def test_round_trip_keeps_the_history_order_when_a_books_time_goes_back() -> None:
    steps: list[Step] = [
        # the snapshot comes first: stamped with its receive time, T0+500
        (bn_env("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0 + 500), T0),
        # the next update was sent before that (E = T0+400): the history's time goes back
        (bn_env("depth", bn_depth(11, 11, T0 + 400, [], [["1.05", "1"]]), T0 + 510), T0),
        (bn_env("trade", bn_trade(1, "1.05", "1", T0 + 600), T0 + 610), T0),
        (None, T0 + 600),
    ]
    live = new_books()
    persisted = Persisted()
    for step in steps[:3]:
        persisted.apply(run(live, step))
    restored = new_books()
    persisted.restore(restored, live, live.analytics_state())
    [want] = run(live, steps[3]).matched
    assert want.ask == (D("1.05"), D(1))  # the delta applied: the latest state
    [have] = run(restored, steps[3]).matched
    assert have == want


def test_round_trip_keeps_a_books_own_instrument_in_a_merged_group() -> None:
    live = new_books("BNB-BTC")  # the group; this Binance book's own instrument differs
    steps: list[Step] = [
        (
            bn_env("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0, "BNB-BTCX"),
            T0 - 1000,
        ),
        (bn_env("trade", bn_trade(1, "1.1", "1", T0 + 100), T0 + 110, "BNB-BTCX"), T0 - 1000),
        (None, T0 + 100),
    ]
    persisted = Persisted()
    for step in steps[:2]:
        persisted.apply(run(live, step))
    restored = new_books("BNB-BTC")
    persisted.restore(restored, live, live.analytics_state())
    [want] = run(live, steps[2]).matched
    assert want.instrument == "BNB-BTCX"
    [have] = run(restored, steps[2]).matched
    assert have.instrument == want.instrument


def restored_after_closing_windows() -> tuple[InstrumentBooks, InstrumentBooks]:
    live = new_books()
    persisted = Persisted()
    persisted.apply(live_binance(live, T0, wm=T0 - 2000))
    persisted.apply(
        live.process(bn_env("trade", bn_trade(1, "1.1", "1", T0 + 100), T0 + 110), T0 - 2000)
    )
    out = advanced(live, T0 + 1999)
    persisted.apply(out)
    assert len(out.matched) == 1 and len(out.bars) == 4
    restored = new_books()
    persisted.restore(restored, live, live.analytics_state())
    return live, restored


@pytest.mark.timeout(20)
def test_after_a_restore_a_trade_in_a_closed_window_does_not_hang_the_bars() -> None:
    """Regression (jobs/bars.py): before the first watermark after a restore, a trade older
    than the closed windows re-opened one, and closing looped forever."""
    _, restored = restored_after_closing_windows()
    restored.process(bn_env("trade", bn_trade(2, "1.2", "1", T0 + 500), T0 + 2100), NO_WATERMARK)
    out = advanced(restored, T0 + 2999)
    assert [(b.venue, b.window_start_ms, b.trade_count) for b in out.bars] == [
        ("binance", T0 + 2000, 0),
        (ALL, T0 + 2000, 0),
    ]


def test_after_a_restore_a_trade_older_than_the_last_watermark_is_late() -> None:
    _, restored = restored_after_closing_windows()
    out = restored.process(
        bn_env("trade", bn_trade(2, "1.2", "1", T0 + 500), T0 + 2100), NO_WATERMARK
    )
    assert [e.kind for e in out.late] == ["trade"] and out.pending_added == []
