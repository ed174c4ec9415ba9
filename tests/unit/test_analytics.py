"""The NBBO, trade matching, bars, late events and the books' staleness as the compiled core
produces them, on exchange frames, with the watermark passed in as Flink would.

One instrument, two exchanges: Binance ``BNBBTC`` and a Coinbase product ``BNB-BTC`` (same
canonical instrument). What is checked is what the job writes: ClickHouse rows, Redis.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core_driver import (
    END_OF_INPUT,
    NO_WATERMARK,
    Core,
    Published,
    binance,
    bn_depth,
    bn_snapshot,
    bn_trade,
    cb_l2,
    cb_trade,
    coinbase,
    core_settings,
    levels,
)

pytestmark = pytest.mark.unit

D = Decimal
T0 = 1_700_000_000_000  # ms, a multiple of 1000
ALL = "ALL"


def live_binance(core: Core, rx_ms: int = T0, wm: int = NO_WATERMARK) -> Published:
    """Binance LIVE at ``rx_ms``: bid 1.0 x 2, ask 1.1 x 3 (update id 10)."""
    return core.process(
        binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), rx_ms), wm
    )


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["trade_id"] for r in rows]


def test_the_end_of_a_bounded_input_finishes_what_its_events_reached_and_stops() -> None:
    """A replay's last watermark is Flink's maximum: trades still pending are matched and the
    windows up to the last event closed, and no timer is asked for again (a LIVE book would
    otherwise keep closing empty windows up to the end of time)."""
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    core.process(binance("trade", bn_trade(7, "1.05", "0.5", T0 + 2500), T0 + 2600), T0 + 500)
    assert core.next_event_time_ms() is not None
    out = core.advance(END_OF_INPUT)
    assert ids(out.of("matched_trades")) == ["7"]
    assert {b["window_start_ms"] for b in out.of("bars")} <= {T0, T0 + 1000, T0 + 2000}
    assert core.next_event_time_ms() is None


# --- matching as of the trade's time -----------------------------------------------------


def test_a_trade_after_a_later_update_is_matched_as_of_its_time_once_the_watermark_passes() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    core.process(binance("depth", bn_depth(11, 11, T0 + 100, [], [["1.05", "1"]]), T0 + 100),
                 T0 - 1900)  # fmt: skip
    core.process(binance("depth", bn_depth(12, 12, T0 + 300, [], [["1.02", "2"]]), T0 + 300),
                 T0 - 1700)  # fmt: skip
    # the trade (T0+200) arrives after the update of T0+300: jitter
    out = core.process(binance("trade", bn_trade(7, "1.05", "0.5", T0 + 200), T0 + 310), T0 + 150)
    [trade] = out.of("trades")
    assert trade["on_time"] == 1 and out.of("matched_trades") == out.of("late_events") == []
    assert core.next_event_time_ms() == T0 + 200
    assert core.advance(T0 + 199).of("matched_trades") == []
    [m] = core.advance(T0 + 200).of("matched_trades")
    assert (m["trade_id"], m["instrument"]) == ("7", "BNB-BTC")
    assert (m["book_status"], m["book_time_ms"], m["book_seq"]) == ("LIVE", T0 + 100, 11)
    assert (m["ask_price"], m["ask_size"], m["bid_price"]) == (D("1.05"), D(1), D("1.0"))
    assert (m["touch"], m["levels_consumed"], m["size_consumed"]) == ("at", 1, D("0.5"))
    assert m["mid"] == D("1.025") and m["slippage_mid"] == D("0.025")
    assert m["nbbo_venues"] == ["binance:BNBBTC"] and m["nbbo_ask_price"] == D("1.05")
    assert m["slippage_nbbo"] == 0 and not m["trade_through"]
    # matched against the book of T0+100, not the latest one (ask 1.02, where it would
    # have been a trade through the touch)


def test_a_book_update_in_the_trades_millisecond_counts_as_before_it() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    core.process(binance("depth", bn_depth(11, 11, T0 + 100, [["1.04", "1"]], []), T0 + 100),
                 T0 - 1000)  # fmt: skip
    core.process(binance("trade", bn_trade(8, "1.04", "1", T0 + 100, "sell"), T0 + 101), T0 - 1000)
    [m] = core.advance(T0 + 100).of("matched_trades")
    assert (m["bid_price"], m["bid_size"]) == (D("1.04"), D(1))
    assert m["touch"] == "at" and m["book_time_ms"] == T0 + 100


def test_coinbase_orders_a_trade_and_an_update_of_one_millisecond_by_sequence_num() -> None:
    core = Core("BNB-BTC")
    core.process(coinbase("depth", cb_l2(1, T0, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0))
    # two trades and an update stamped T0+100, in sequence_num order: trade, update, trade
    core.process(coinbase("trade", cb_trade(4, "11", "1.2", "1", T0 + 100, "buy"), T0 + 101))
    core.process(coinbase("depth", cb_l2(5, T0 + 100, [], [["1.15", "2"]]), T0 + 101))
    core.process(coinbase("trade", cb_trade(6, "12", "1.15", "1", T0 + 100, "buy"), T0 + 101))
    before, after = core.advance(T0 + 100).of("matched_trades")
    assert before["trade_id"] == "11" and (before["ask_price"], before["ask_size"]) == (D("1.2"), 1)
    assert before["touch"] == "at" and before["book_seq"] == 1
    assert after["trade_id"] == "12" and (after["ask_price"], after["ask_size"]) == (D("1.15"), 2)
    assert after["touch"] == "at" and after["book_seq"] == 5


# --- late trades and duplicates --------------------------------------------------------------


def test_a_trade_sent_again_is_dropped_not_late_nor_counted_twice() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    frame = bn_trade(1, "1.05", "2", T0 + 400)
    assert len(core.process(binance("trade", frame, T0 + 410), T0 + 300).of("trades")) == 1
    again = core.process(binance("trade", frame, T0 + 420), T0 + 350)  # still on time
    assert again.of("trades") == [] and core.stream.take_counts()["duplicate_trades"] == 1
    core.advance(T0 + 5000)
    late_again = core.process(binance("trade", frame, T0 + 9000), T0 + 5000)  # behind the mark
    assert late_again.of("trades") == late_again.of("late_events") == []
    assert core.stream.take_counts()["duplicate_trades"] == 1


def test_a_trade_at_or_before_the_watermark_is_late_and_in_no_bar() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    core.process(binance("trade", bn_trade(1, "1.05", "2", T0 + 400), T0 + 410), T0 + 300)
    rx = T0 + 420
    out = core.process(binance("trade", bn_trade(2, "1.06", "5", T0 + 300), rx), T0 + 300)
    [stored] = out.of("trades")  # stored all the same, as late
    assert (stored["trade_id"], stored["on_time"]) == ("2", 0)
    [late] = out.of("late_events")
    assert (late["exchange"], late["symbol"], late["instrument"]) == (
        "binance",
        "BNBBTC",
        "BNB-BTC",
    )
    assert (late["kind"], late["event_id"], late["event_time_ms"]) == ("trade", "2", T0 + 300)
    assert (late["watermark_ms"], late["lateness_ms"]) == (T0 + 300, 0)
    assert late["receive_time_ns"] == rx * 10**6
    out = core.advance(T0 + 999)
    assert ids(out.of("matched_trades")) == ["1"]
    bars = {b["venue"]: b for b in out.of("bars")}
    assert bars["binance"]["trade_count"] == 1 and bars["binance"]["volume"] == D(2)
    assert bars[ALL]["trade_count"] == 1 and bars[ALL]["high"] == D("1.05")
    assert bars["binance"]["live_ms"] == 1000
    assert bars["binance"]["twa_spread"] == pytest.approx(0.1)


LAG_MS = 250  # the bounded out-of-orderness of the watermark

stream_step = st.one_of(
    # a book update: time step, receive latency, side, price, size (0 removes); bids below
    # the asks, as an exchange's book is (a crossed LIVE book resyncs)
    st.tuples(
        st.just("depth"),
        st.integers(0, 40),
        st.integers(0, 30),
        st.just("b"),
        st.sampled_from(["0.96", "0.97", "0.98", "0.99", "1.0"]),
        st.sampled_from(["0", "1", "2.5"]),
    ),
    st.tuples(
        st.just("depth"),
        st.integers(0, 40),
        st.integers(0, 30),
        st.just("a"),
        st.sampled_from(["1.1", "1.11", "1.12", "1.13"]),
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
    with an event time <= it); closed bars hold exactly them."""
    core = Core("BNB-BTC")
    live_binance(core, T0)
    truth: dict[str, dict[Decimal, Decimal]] = {"b": {D("1.0"): D(2)}, "a": {D("1.1"): D(3)}}
    tops: list[tuple[int, tuple[Any, Any]]] = [(T0, ((D("1.0"), D(2)), (D("1.1"), D(3))))]
    now, rx = T0 + 500, T0  # trades (up to 400 ms before now) come after T0
    update_id = 10
    on_time: dict[str, int] = {}  # trade id -> its time
    matched: list[dict[str, Any]] = []
    late: list[str] = []
    for n, step in enumerate(steps):
        now += step[1]
        if step[0] == "depth":
            _, _, latency, side, price, size = step
            rx = max(rx, now + latency)
            update_id += 1
            side_levels = [[price, size]]
            frame = bn_depth(update_id, update_id, now, side_levels if side == "b" else [],
                             side_levels if side == "a" else [])  # fmt: skip
            value = binance("depth", frame, rx)
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
            value = binance("trade", bn_trade(n, "1.05", "1", now - jitter, side), rx)
        watermark = rx - LAG_MS
        out = core.process(value, watermark)
        if core.next_event_time_ms() is not None and core.next_event_time_ms() <= watermark:
            out.rows.setdefault("matched_trades", []).extend(
                core.advance(watermark).of("matched_trades")
            )
        matched += out.of("matched_trades")
        late += [e["event_id"] for e in out.of("late_events") if e["kind"] == "trade"]
        for t in out.of("trades"):
            if t["on_time"]:
                assert t["trade_time_ms"] > watermark and t["trade_id"] not in late
                on_time[t["trade_id"]] = t["trade_time_ms"]
            else:
                assert t["trade_id"] in late and t["trade_time_ms"] <= watermark
        assert all(m["trade_time_ms"] <= watermark for m in out.of("matched_trades"))
    out = core.advance(rx + 10_000)
    matched += out.of("matched_trades")
    assert sorted(ids(matched)) == sorted(on_time)
    for m in matched:
        in_force = [top for t, top in tops if t <= m["trade_time_ms"]]
        assert in_force, "the first state is at T0, before every trade"
        bid, ask = in_force[-1]
        assert (m["bid_price"], m["bid_size"]) == (bid or (None, None))
        assert (m["ask_price"], m["ask_size"]) == (ask or (None, None))
        assert m["book_status"] == "LIVE" and m["book_time_ms"] <= m["trade_time_ms"]
    closed = {b["window_start_ms"]: b for b in out.of("bars") if b["venue"] == ALL}
    for start, bar in closed.items():
        trades = [t for t in on_time.values() if start <= t < start + 1000]
        assert bar["trade_count"] == len(trades)


def test_a_late_book_state_is_reported_applied_and_clamped_in_the_bars() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    assert len(core.advance(T0 + 1999).of("bars")) == 4  # two 1 s windows, binance and ALL
    out = core.process(
        binance("depth", bn_depth(11, 11, T0 + 1500, [], [["1.2", "1"]]), T0 + 2100), T0 + 1999
    )
    [late] = out.of("late_events")
    assert (late["kind"], late["event_time_ms"], late["watermark_ms"]) == (
        "book", T0 + 1500, T0 + 1999
    )  # fmt: skip
    assert [b["seq"] for b in out.books()] == ["11"]  # the book itself takes it
    bars = [b for b in core.advance(T0 + 2999).of("bars") if b["venue"] == "binance"]
    assert [(b["window_start_ms"], b["live_ms"]) for b in bars] == [(T0 + 2000, 1000)]


@pytest.mark.timeout(20)
def test_a_book_first_seen_with_a_late_state_does_not_reopen_closed_windows() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    core.advance(T0 + 2999)
    out = core.process(
        coinbase("depth", cb_l2(1, T0 + 1200, [["1.0", "1"]], [["1.2", "1"]], "snapshot"),
                 T0 + 3050),
        T0 + 2999,
    )  # fmt: skip
    assert [e["kind"] for e in out.of("late_events")] == ["book"]
    bars = core.advance(T0 + 3999).of("bars")
    assert sorted((b["venue"], b["live_ms"]) for b in bars) == [
        (ALL, 0),
        ("binance", 1000),
        ("coinbase", 1000),
    ]


# --- NBBO -----------------------------------------------------------------------------------


def test_nbbo_updates_on_change_only_and_excludes_a_resyncing_book_with_its_reason() -> None:
    core = Core("BNB-BTC")
    [first] = live_binance(core, T0).of("nbbo")
    assert first["venues"] == ["binance:BNBBTC"] and first["quote"] == "BTC"
    assert (first["bid_price"], first["ask_price"]) == (D("1.0"), D("1.1"))
    out = core.process(
        coinbase("depth", cb_l2(1, T0 + 50, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0 + 60)
    )
    [both] = out.of("nbbo")
    assert both["venues"] == ["binance:BNBBTC", "coinbase:BNB-BTC"]
    assert (both["bid_price"], both["bid_size"]) == (D("1.0"), D(3))
    assert both["bid_venues"] == ["binance", "coinbase"]
    assert (both["ask_price"], both["ask_size"], both["ask_venues"]) == (D("1.1"), 3, ["binance"])
    assert both["version"] > first["version"] and both["event_time_ms"] == T0 + 50
    # the live NBBO in Redis is the latest
    nbbo = core.nbbo("BNB-BTC")
    assert nbbo is not None and nbbo["bid_size"] == "3" and nbbo["bid_venues"] == "binance,coinbase"
    # a deeper level, a worse ask elsewhere: what the NBBO shows does not change
    out = core.process(binance("depth", bn_depth(11, 11, T0 + 70, [["0.9", "1"]], []), T0 + 70))
    assert out.books() and out.of("nbbo") == []
    out = core.process(
        coinbase("depth", cb_l2(2, T0 + 80, [], [["1.2", "0"], ["1.3", "1"]]), T0 + 80)
    )
    assert out.books() and out.of("nbbo") == []
    # a gap: Binance is RESYNCING, left out with the reason
    out = core.process(binance("depth", bn_depth(20, 21, T0 + 90, [["1.01", "1"]], []), T0 + 90))
    assert [(r["exchange"], r["symbol"]) for r in out.of("control")] == [("binance", "BNBBTC")]
    [gap] = out.of("nbbo")
    assert gap["venues"] == ["coinbase:BNB-BTC"]
    assert (gap["excluded"], gap["excluded_reasons"]) == (["binance:BNBBTC"], ["RESYNCING"])
    assert (gap["bid_price"], gap["bid_size"], gap["ask_price"], gap["ask_size"]) == (
        D("1.0"), D(1), D("1.3"), D(1)
    )  # fmt: skip
    assert gap["version"] > both["version"]
    # healed: back in
    out = core.process(
        binance("snapshot", bn_snapshot(21, [["1.01", "1"]], [["1.1", "3"]]), T0 + 95)
    )
    [healed] = out.of("nbbo")
    assert healed["venues"] == ["binance:BNBBTC", "coinbase:BNB-BTC"]
    assert healed["bid_price"] == D("1.01") and healed["excluded"] == []


def test_locked_and_crossed_books_across_venues() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0)
    out = core.process(
        coinbase("depth", cb_l2(1, T0 + 10, [["1.1", "1"]], [["1.3", "1"]], "snapshot"), T0 + 10)
    )
    [locked] = out.of("nbbo")
    assert (locked["bid_price"], locked["ask_price"], locked["locked"], locked["crossed"]) == (
        D("1.1"), D("1.1"), 1, 0
    )  # fmt: skip
    out = core.process(coinbase("depth", cb_l2(2, T0 + 20, [["1.15", "1"]], []), T0 + 20))
    [crossed] = out.of("nbbo")
    assert (crossed["bid_price"], crossed["locked"], crossed["crossed"]) == (D("1.15"), 0, 1)


def test_a_silent_book_ages_out_of_the_live_nbbo_by_event_time_once() -> None:
    """A venue leaves the NBBO when a frame of the instrument comes more than
    ``analytics.nbbo_stale_after_ms`` (event time) after the venue's last one: by the wall
    clock, a job catching up on a backlog would see every venue as silent."""
    core = Core("BNB-BTC")
    live_binance(core, T0)
    core.process(coinbase("depth", cb_l2(1, T0, [["1.0", "1"]], [["1.2", "1"]], "snapshot"), T0))
    assert core.housekeeping(T0 + 60_000).of("nbbo") == []  # not by the wall clock

    def binance_frame(update_id: int, event_ms: int) -> Published:
        return core.process(binance("depth", bn_depth(update_id, update_id, event_ms, [], []),
                                    event_ms))  # fmt: skip

    assert binance_frame(11, T0 + 10_000).of("nbbo") == []  # the bound is inclusive
    [aged] = binance_frame(12, T0 + 10_001).of("nbbo")
    assert aged["venues"] == ["binance:BNBBTC"] and aged["excluded"] == ["coinbase:BNB-BTC"]
    assert aged["excluded_reasons"] == ["no update for 10001 ms"]
    assert (aged["bid_size"], aged["ask_price"]) == (D(2), D("1.1"))
    # still out: the growing age is no new NBBO
    assert binance_frame(13, T0 + 12_000).of("nbbo") == []
    out = core.process(coinbase("depth", cb_l2(2, T0 + 13_000, [["0.99", "1"]], []), T0 + 13_000))
    [back] = out.of("nbbo")
    assert back["venues"] == ["binance:BNBBTC", "coinbase:BNB-BTC"] and back["excluded"] == []


def test_matching_uses_the_nbbo_as_of_the_trade_with_event_time_ages() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0, wm=T0 - 2000)
    core.process(coinbase("depth", cb_l2(1, T0 + 10, [["1.0", "1"]], [["1.08", "1"]], "snapshot"),
                          T0 + 20), T0 - 2000)  # fmt: skip
    core.process(coinbase("trade", cb_trade(3, "5", "1.1", "1", T0 + 500, "buy"), T0 + 510), T0)
    [m] = core.advance(T0 + 500).of("matched_trades")
    assert m["nbbo_ask_price"] == D("1.08") and m["nbbo_venues"] == [
        "binance:BNBBTC", "coinbase:BNB-BTC"
    ]  # fmt: skip
    assert m["touch"] == "through" and m["slippage_nbbo"] == D("0.02") and m["trade_through"]
    # event time: a book with no update for longer than the bound before the trade is out
    core.process(coinbase("depth", cb_l2(4, T0 + 5000, [], [["1.09", "1"]]), T0 + 5000), T0 + 500)
    core.process(binance("trade", bn_trade(9, "1.1", "1", T0 + 10_500), T0 + 10_510), T0 + 500)
    [m] = core.advance(T0 + 10_500).of("matched_trades")
    assert m["nbbo_venues"] == ["coinbase:BNB-BTC"]
    assert m["touch"] == "at" and m["book_time_ms"] == T0


# --- event timers ---------------------------------------------------------------------------


def test_next_event_time_is_the_earliest_pending_trade_or_window_close() -> None:
    core = Core("BNB-BTC")
    assert core.next_event_time_ms() is None
    core.process(binance("trade", bn_trade(1, "1", "1", T0 + 1500), T0 + 1500), T0)
    assert core.next_event_time_ms() == T0 + 1500  # before its window's end (T0+1999)
    [m] = core.advance(T0 + 1500).of("matched_trades")
    assert m["book_status"] == "NONE"
    assert core.next_event_time_ms() == T0 + 1999
    assert len(core.advance(T0 + 1999).of("bars")) == 2
    assert core.next_event_time_ms() is None  # nothing left: no timer
    live_binance(core, T0 + 2500, wm=T0 + 1999)
    assert core.next_event_time_ms() == T0 + 2999
    core.advance(T0 + 2999)
    assert core.next_event_time_ms() == T0 + 3999  # a LIVE book keeps bars coming


# --- staleness and resync retries (the processing-time tick) ---------------------------------


def test_live_book_turns_stale_when_silent_and_live_again_on_the_next_message() -> None:
    core = Core("BNB-BTC", core_settings(stale_after_ms=1000))
    live_binance(core, T0)
    assert core.housekeeping(T0 + 500).books() == []
    out = core.housekeeping(T0 + 1500)
    [stale] = out.books()
    assert stale["status"] == "STALE" and "no message for 1.5 s" in stale["reason"]
    assert levels(stale["bids"]) == [["1.0", "2"]]  # a stale book keeps its levels
    [touch] = out.of("top_of_book")
    assert touch["status"] == "STALE"
    assert core.stream.books_not_live("BNB-BTC") == 1
    assert core.housekeeping(T0 + 2500).books() == []  # said once
    out = core.process(binance("depth", bn_depth(11, 11, T0 + 3000, [["1.0", "4"]], []), T0 + 3000))
    assert [b["status"] for b in out.books()] == ["LIVE"]
    assert core.stream.books_not_live("BNB-BTC") == 0


def test_resync_is_asked_again_only_after_the_retry_interval() -> None:
    core = Core("BNB-BTC", core_settings(resync_retry_ms=10_000))
    # waiting for its first snapshot
    out = core.process(binance("depth", bn_depth(5, 6, T0, [], []), T0), now_ms=500)
    assert out.of("control") == []  # buffered, the connector sends the snapshot unasked
    assert core.housekeeping(1_000).of("control") == []  # the clock starts
    assert core.housekeeping(5_000).of("control") == []
    [again] = core.housekeeping(11_000).of("control")
    assert (again["exchange"], again["symbol"]) == ("binance", "BNBBTC")
    assert again["reason"].startswith("still RESYNCING")
    assert core.housekeeping(12_000).of("control") == []


def test_top_of_book_rows_only_when_the_touch_changes() -> None:
    core = Core("BNB-BTC")
    live_binance(core, T0)
    out = core.process(binance("depth", bn_depth(11, 11, T0 + 1, [["0.9", "1"]], []), T0 + 1))
    assert out.books() and out.of("top_of_book") == []  # a deeper level changed
    out = core.process(binance("depth", bn_depth(12, 12, T0 + 2, [["1.0", "5"]], []), T0 + 2))
    [row] = out.of("top_of_book")
    assert (row["exchange"], row["symbol"], row["instrument"]) == ("binance", "BNBBTC", "BNB-BTC")
    touch = (row["status"], row["bid_price"], row["bid_size"], row["ask_price"], row["ask_size"])
    assert touch == ("LIVE", D("1.0"), D(5), D("1.1"), D(3))
    out = core.process(binance("depth", bn_depth(20, 21, T0 + 3, [], []), T0 + 3))  # a gap
    [row] = out.of("top_of_book")
    assert (row["status"], row["bid_price"], row["ask_price"]) == ("RESYNCING", None, None)


# --- state ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 3, 5, 7])
def test_state_round_trip_gives_the_same_outputs(cut: int) -> None:
    """The instrument's state as bytes, restored into a new core mid-stream: the rest of the
    stream gives the same rows and Redis writes as never stopping."""
    steps: list[tuple[bytes | None, int]] = [
        (binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0), NO_WATERMARK),
        (coinbase("depth", cb_l2(1, T0 + 20, [["1.0", "1"]], [["1.2", "1"]], "snapshot"),
                  T0 + 30), T0 - 2000),
        (binance("depth", bn_depth(11, 11, T0 + 100, [], [["1.05", "1"]]), T0 + 100), T0 - 1900),
        (coinbase("trade", cb_trade(2, "1", "1.2", "0.5", T0 + 150, "buy"), T0 + 160), T0 - 1800),
        (binance("trade", bn_trade(1, "1.05", "1", T0 + 200), T0 + 310), T0 + 100),
        (None, T0 + 260),
        (binance("trade", bn_trade(3, "1.0", "1", T0 + 240), T0 + 900), T0 + 260),  # late
        (binance("depth", bn_depth(20, 21, T0 + 1400, [], []), T0 + 1400), T0 + 1000),  # gap
        (binance("trade", bn_trade(4, "1.1", "1", T0 + 1700), T0 + 1710), T0 + 1400),
        (None, T0 + 2999),
    ]  # fmt: skip

    def run(core: Core, step: tuple[bytes | None, int]) -> Published:
        value, watermark = step
        return core.advance(watermark) if value is None else core.process(value, watermark)

    live = Core("BNB-BTC")
    for step in steps[:cut]:
        run(live, step)
    state = live.stream.snapshot("BNB-BTC")
    assert state is not None
    restored = Core("BNB-BTC")
    restored.stream.restore("BNB-BTC", state)
    assert restored.next_event_time_ms() == live.next_event_time_ms()
    for step in steps[cut:]:
        want, have = run(live, step), run(restored, step)
        assert (have.rows, have.records) == (want.rows, want.records), step
    # a restored core publishes its books again (writes queued before a failure may not have
    # reached Redis; the version guard makes a repeat a no-op): Redis ends the same
    assert restored.redis.items() <= live.redis.items()
    assert {k for k in live.redis if ":book:" in k} <= set(restored.redis)
