"""Kraken books in the compiled core against the simulator's truth.

The simulator's CRC32 checksum (``simulator/kraken.py``, from integers) and the core's (from
the frame's decimal text) are independent implementations: a book the core keeps LIVE has
passed the simulator's checksum on every update, and its published top 10 is the truth's.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.book import Side
from simulator.kraken import (
    KRAKEN_PAIRS,
    BookStep,
    KrakenMarket,
    KrakenPair,
    book_message,
    book_update,
)
from simulator.kraken import book_checksum as sim_checksum
from tests.unit.core_driver import Core, envelope, levels

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def kraken(symbol: str, frame: bytes, rx_ms: int) -> bytes:
    return envelope(symbol.replace("/", "-"), "kraken", symbol, "depth", frame, rx_ms)


def published(book: dict[str, str], side: str) -> list[tuple[Decimal, Decimal]]:
    """A side of a book's Redis hash as decimals (the text is the decimal as Python's str
    renders it, 0.0000001 -> 1E-7, as the job published it before the core)."""
    return [(Decimal(p), Decimal(q)) for p, q in levels(book[side])]


def replay(symbol: str, depth: int, updates: int, seed: int = 42) -> tuple[int, int, int]:
    """``updates`` simulated book updates of one pair at ``depth``, as a subscriber gets them,
    through the core. (updates sent, resync requests, top-10 disagreements with the truth)."""
    market = KrakenMarket(symbol, seed, 50, 5, 0.3)
    core = Core(symbol.replace("/", "-"))
    core.process(kraken(symbol, market.snapshot_message(depth, T0), T0))
    sent = resyncs = disagreements = 0
    now = T0
    while sent < updates:
        now += 1
        for event in market.step(now):
            if not isinstance(event, BookStep):
                continue
            update = book_update(event, depth)
            if update is None:
                continue  # nothing changed within this subscriber's view
            body = book_message("update", symbol, market.pair, *update, event.checksum, now)
            out = core.process(kraken(symbol, body, now))
            sent += 1
            if out.of("control"):  # a checksum mismatch: the connector would resubscribe
                resyncs += 1
                core.process(kraken(symbol, market.snapshot_message(depth, now), now))
            if now % 97 == 0:  # now and then, the whole top 10 too, not only its checksum
                book = core.book("kraken", symbol)
                bids, asks = market.levels(10)
                expected = [[(Decimal(market.pair.price_text(p)), Decimal(market.pair.qty_text(q)))
                             for p, q in side] for side in (bids, asks)]  # fmt: skip
                actual = [published(book, side) for side in ("bids", "asks")] if book else None
                disagreements += expected != actual
    return sent, resyncs, disagreements


def test_the_core_agrees_with_the_simulator_on_every_update() -> None:
    for symbol, depth in (("BTC/USD", 10), ("DOGE/USD", 25), ("USDT/USD", 100)):
        assert replay(symbol, depth, 4_000) == (4_000, 0, 0), symbol


def test_checksums_agree_on_30k_simulated_updates_of_every_precision() -> None:
    pairs = list(KRAKEN_PAIRS)[:10]
    for i, symbol in enumerate(pairs):
        assert replay(symbol, (10, 25)[i % 2], 3_000) == (3_000, 0, 0), symbol


@st.composite
def pairs(draw: st.DrawFn) -> KrakenPair:
    return KrakenPair(draw(st.integers(0, 4)), draw(st.integers(0, 8)), "1", "1")


level_change = st.tuples(
    st.sampled_from([Side.BID, Side.ASK]),
    st.integers(0, 39),  # price index within the side's range
    st.sampled_from([0, 0, 1, 7, 10, 123456, 10**8, 250000000]),  # qty units; 0 removes
)
# what happens to each exchange message on its way: delivered, lost, or a resubscribe
action = st.sampled_from(["deliver"] * 10 + ["drop", "resubscribe"])


@settings(max_examples=150, deadline=None)
@given(
    pairs(),
    st.sampled_from([10, 25]),
    st.lists(st.tuples(st.lists(level_change, min_size=1, max_size=6), action), max_size=50),
)
def test_live_book_always_matches_the_truths_top_of_book(
    pair: KrakenPair, depth: int, steps: list
) -> None:
    """Whatever arrives, after each message a book published LIVE shows the truth's top 10
    (a lost update is caught as soon as it matters to the top 10), and a resubscribe's
    snapshot always brings it back."""
    # price units -> qty units; bids 1..40, asks 41..80
    truth: dict[Side, dict[int, int]] = {Side.BID: {}, Side.ASK: {}}
    core = Core("X-Y")
    rx = T0

    def sorted_side(side: Side) -> list[tuple[int, int]]:
        return sorted(truth[side].items(), reverse=side is Side.BID)

    def top10(side: list[tuple[int, int]]) -> list[tuple[Decimal, Decimal]]:
        return [(Decimal(pair.price_text(p)), Decimal(pair.qty_text(q))) for p, q in side[:10]]

    def send(body: bytes) -> None:
        nonlocal rx
        rx += 1
        core.process(kraken("X/Y", body, rx))

    def snapshot() -> bytes:
        bids, asks = sorted_side(Side.BID), sorted_side(Side.ASK)
        return book_message("snapshot", "X/Y", pair, bids[:depth], asks[:depth],
                            sim_checksum(bids, asks), 0)  # fmt: skip

    send(snapshot())
    for changes, act in steps:
        before = (sorted_side(Side.BID), sorted_side(Side.ASK))
        applied = []
        for side, index, qty in changes:
            price = index + 1 if side is Side.BID else index + 41
            if qty:
                truth[side][price] = qty
            else:
                truth[side].pop(price, None)
            applied.append((side, price, qty))
        after = (sorted_side(Side.BID), sorted_side(Side.ASK))
        step = BookStep(0, 0, tuple(applied), before, after)
        update = book_update(step, depth)
        if act == "resubscribe":
            send(snapshot())
        elif update is not None and act == "deliver":
            send(book_message("update", "X/Y", pair, update[0], update[1], step.checksum, 0))
        else:
            continue  # lost (or nothing to send): the core has not seen anything new
        book = core.book("kraken", "X/Y")
        if book is not None and book["status"] == "LIVE":
            assert (published(book, "bids"), published(book, "asks")) == (
                top10(after[0]),
                top10(after[1]),
            )
    send(snapshot())
    book = core.book("kraken", "X/Y")
    assert book is not None and book["status"] == "LIVE"
    assert published(book, "bids") == top10(sorted_side(Side.BID))
