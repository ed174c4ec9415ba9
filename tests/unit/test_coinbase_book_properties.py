"""Property test: the Coinbase book engine against a naive reference on random streams.

The stream is what one product's Kafka key receives from the connector: in-band snapshots,
updates numbered by their connection's ``sequence_num`` (shared with other products, so not
consecutive), ``sync_lost`` markers the connector puts in front of the first message after a
lost one, and new connections that number from 0 again and start with a snapshot. Whatever
happens, a LIVE book must equal the exchange's book as of the last message it was given.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.book.coinbase import CoinbaseBook
from jobs.book.levels import BookStatus
from jobs.parse.events import BookDelta, BookSnapshot, SyncLost

pytestmark = pytest.mark.unit

PRICES = [Decimal(f"100.{i:02d}") for i in range(40)]
SIZES = [Decimal("0"), Decimal("0.5"), Decimal("1.25"), Decimal("3")]

change = st.tuples(st.sampled_from(["b", "a"]), st.sampled_from(PRICES), st.sampled_from(SIZES))
update = st.tuples(
    st.just("update"),
    st.lists(change, min_size=1, max_size=4),
    st.sampled_from(["deliver"] * 6 + ["drop", "dup"]),
)
step = st.one_of(
    update,
    update,
    update,
    st.tuples(st.just("other"), st.integers(1, 5), st.just("")),  # other products' messages
    st.tuples(st.just("resubscribe"), st.just([]), st.just("")),
    st.tuples(st.just("reconnect"), st.just([]), st.just("")),
)


Levels = tuple[tuple[Decimal, Decimal], ...]


def levels(truth: dict[str, dict[Decimal, Decimal]], side: str) -> Levels:
    return tuple(sorted(truth[side].items(), reverse=(side == "b")))


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=60))
def test_live_book_always_equals_truth(steps: list) -> None:
    truth: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}
    engine = CoinbaseBook(max_levels=1000, max_buffered=1000)
    seq = 0  # sequence_num of the last message on the current connection
    gap = False  # a message was lost and the connector has not seen the next one yet
    seen: tuple[Levels, Levels] = ((), ())  # the exchange's book as of the last message fed

    def feed(event: BookDelta | BookSnapshot) -> None:
        nonlocal gap, seen
        if gap:  # the connector marks the gap in front of the next message
            engine.on_sync_lost(SyncLost("coinbase", "X", "sequence_num gap", 0))
            gap = False
        if isinstance(event, BookSnapshot):
            engine.on_snapshot(event)
        else:
            engine.on_delta(event)
        seen = (levels(truth, "b"), levels(truth, "a"))
        if engine.status is BookStatus.LIVE:
            assert (tuple(engine.book.bids.items()), tuple(engine.book.asks.items())) == seen

    def snapshot() -> BookSnapshot:
        return BookSnapshot("coinbase", "X", seq, 0, levels(truth, "b"), levels(truth, "a"))

    feed(snapshot())
    for kind, arg, fate in steps:
        if kind == "other":
            seq += arg
            if gap:  # detected on another product's message: marked all the same
                engine.on_sync_lost(SyncLost("coinbase", "X", "sequence_num gap", 0))
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
        for side, price, size in arg:
            if size:
                truth[side][price] = size
            else:
                truth[side].pop(price, None)
        delta = BookDelta(
            "coinbase", "X", seq, seq, 0, 0,
            tuple((p, s) for side, p, s in arg if side == "b"),
            tuple((p, s) for side, p, s in arg if side == "a"),
        )
        if fate == "drop":
            gap = True
            continue
        feed(delta)
        if fate == "dup":  # redelivered (absolute sizes: applying again changes nothing)
            feed(delta)
    # recovery: a resubscription's snapshot always brings the book back
    seq += 1
    feed(snapshot())
    assert engine.status is BookStatus.LIVE
