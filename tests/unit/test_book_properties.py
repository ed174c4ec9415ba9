"""Property tests: the compiled core's books against the exchange's true book on random streams.

Whatever the transport does (drops, duplicates, stale snapshots, reconnects), a book published
LIVE must equal the truth as of the update it says it is at (its ``seq``), in the levels
published; and a fresh snapshot after the last fault must bring it back to LIVE.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import sync_lost_payload
from tests.unit.core_driver import Core, binance, bn_depth, cb_l2, coinbase, core_settings, levels

pytestmark = pytest.mark.unit

PRICES = [f"100.{i:02d}" for i in range(40)]
SIZES = ["0", "0.5", "1.25", "3"]
TOP_N = 10  # levels published per side: fewer than a side can hold, so the cut is checked
T0 = 1_700_000_000_000

# an exchange's book never crosses (a crossed LIVE book resyncs): bids below 100.20, asks from it
change = st.one_of(
    st.tuples(st.just("b"), st.sampled_from(PRICES[:20]), st.sampled_from(SIZES)),
    st.tuples(st.just("a"), st.sampled_from(PRICES[20:]), st.sampled_from(SIZES)),
)
Truth = dict[str, dict[str, str]]
Levels = list[list[str]]


def apply(truth: Truth, changes: list[tuple[str, str, str]]) -> None:
    for side, price, size in changes:
        if Decimal(size):
            truth[side][price] = size
        else:
            truth[side].pop(price, None)


def full(truth: Truth) -> tuple[Levels, Levels]:
    """Every level a side, best first (what a snapshot holds)."""
    bids = sorted(truth["b"].items(), key=lambda kv: Decimal(kv[0]), reverse=True)
    asks = sorted(truth["a"].items(), key=lambda kv: Decimal(kv[0]))
    return [list(level) for level in bids], [list(level) for level in asks]


def top(book: tuple[Levels, Levels]) -> tuple[Levels, Levels]:
    """The published view: top N a side."""
    return book[0][:TOP_N], book[1][:TOP_N]


def sides(changes: list[tuple[str, str, str]], side: str) -> list[list[str]]:
    return [[price, size] for s, price, size in changes if s == side]


# what the transport does to each exchange update: deliver, drop, duplicate; and snapshots
action = st.sampled_from(["deliver"] * 8 + ["drop", "dup", "snapshot", "old_snapshot"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.lists(change, min_size=1, max_size=4), action), min_size=1, max_size=60),
    st.integers(1, 10**9),
)
def test_binance_live_book_always_equals_truth(steps: list, start_id: int) -> None:
    core = Core("BNB-BTC", core_settings(top_n=TOP_N))
    truth: Truth = {"b": {}, "a": {}}
    history: dict[int, tuple[Levels, Levels]] = {start_id: full(truth)}
    last_id = start_id
    rx = T0

    def feed(channel: str, frame: dict) -> None:
        nonlocal rx
        rx += 1
        core.process(binance(channel, frame, rx))
        book = core.book("binance", "BNBBTC")
        if book is not None and book["status"] == "LIVE":
            assert (levels(book["bids"]), levels(book["asks"])) == top(history[int(book["seq"])])

    def snapshot(at: int) -> dict:
        bids, asks = history[at]
        return {"lastUpdateId": at, "bids": bids, "asks": asks}

    feed("snapshot", snapshot(start_id))
    for changes, act in steps:
        first = last_id + 1
        apply(truth, changes)
        last_id = first + len(changes) - 1
        history[last_id] = full(truth)
        delta = bn_depth(first, last_id, rx, sides(changes, "b"), sides(changes, "a"))
        if act != "drop":
            feed("depth", delta)
            if act == "dup":
                feed("depth", delta)
        if act == "snapshot":
            feed("snapshot", snapshot(last_id))
        elif act == "old_snapshot":
            feed("snapshot", snapshot(start_id))
    # recovery: a snapshot of the current truth always brings the book back
    feed("snapshot", snapshot(last_id))
    book = core.book("binance", "BNBBTC")
    assert book is not None and book["status"] == "LIVE" and int(book["seq"]) == last_id


coinbase_update = st.tuples(
    st.just("update"),
    st.lists(change, min_size=1, max_size=4),
    st.sampled_from(["deliver"] * 6 + ["drop", "dup"]),
)
coinbase_step = st.one_of(
    coinbase_update,
    coinbase_update,
    coinbase_update,
    st.tuples(st.just("other"), st.integers(1, 5), st.just("")),  # other products' messages
    st.tuples(st.just("resubscribe"), st.just([]), st.just("")),
    st.tuples(st.just("reconnect"), st.just([]), st.just("")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(coinbase_step, min_size=1, max_size=60))
def test_coinbase_live_book_always_equals_truth(steps: list) -> None:
    """The stream one product's Kafka key gets from the connector: in-band snapshots, updates
    numbered by their connection's ``sequence_num`` (shared with other products, so not
    consecutive), ``sync_lost`` markers in front of the first message after a lost one, and
    new connections that number from 0 again and start with a snapshot. A LIVE book equals
    the exchange's book as of the last message it was given."""
    core = Core("BNB-BTC", core_settings(top_n=TOP_N))
    truth: Truth = {"b": {}, "a": {}}
    seq = 0  # sequence_num of the last message on the current connection
    gap = False  # a message was lost and the connector has not seen the next one yet
    rx = T0

    def send(channel: str, payload: bytes | dict) -> None:
        nonlocal rx
        rx += 1
        core.process(coinbase(channel, payload, rx))

    def feed(message: dict) -> None:
        nonlocal gap
        if gap:  # the connector marks the gap in front of the next message
            send("sync_lost", sync_lost_payload("sequence_num gap"))
            gap = False
        send("depth", message)
        book = core.book("coinbase", "BNB-BTC")
        if book is not None and book["status"] == "LIVE":
            assert (levels(book["bids"]), levels(book["asks"])) == top(full(truth))

    def snapshot() -> dict:
        bids, asks = full(truth)
        return cb_l2(seq, rx, bids, asks, "snapshot")

    feed(snapshot())
    for kind, arg, fate in steps:
        if kind == "other":
            seq += arg
            if gap:  # detected on another product's message: marked all the same
                send("sync_lost", sync_lost_payload("sequence_num gap"))
                gap = False
            continue
        if kind == "reconnect":
            seq, gap = 0, False  # a new connection: numbering restarts, snapshot first
            feed(snapshot())
            continue
        seq += 1
        if kind == "resubscribe":
            feed(snapshot())
            continue
        apply(truth, arg)
        message = cb_l2(seq, rx, sides(arg, "b"), sides(arg, "a"))
        if fate == "drop":
            gap = True
            continue
        feed(message)
        if fate == "dup":  # redelivered (absolute sizes: applying again changes nothing)
            feed(message)
    # recovery: a resubscription's snapshot always brings the book back
    seq += 1
    feed(snapshot())
    book = core.book("coinbase", "BNB-BTC")
    assert book is not None and book["status"] == "LIVE"
    assert json.loads(book["bids"]) == top(full(truth))[0]
