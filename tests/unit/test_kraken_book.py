"""Kraken parsing, CRC32 checksum and book engine: documented frames, scenarios, properties.

The simulator's checksum (``simulator/kraken.py``, from integers) and the engine's
(``jobs/book/kraken.py``, from decimal text) are independent implementations: every test
that feeds simulated frames to the engine checks that they agree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.book import ENGINES
from jobs.book.engine import Outcome
from jobs.book.kraken import KrakenBook, book_checksum, checksum_text, subscription_depth
from jobs.book.levels import BookStatus
from jobs.instrument import InstrumentBooks
from jobs.parse import PARSERS, parse_envelope
from jobs.parse.events import BookDelta, BookSnapshot, ParseError, SyncLost, Trade
from jobs.parse.kraken import parse, parse_frame, timestamp_ms
from schemas.codec import RawEnvelope
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

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kraken"
SCENARIOS = sorted(FIXTURES.glob("sync_*.json"))
D = Decimal


def envelope(channel: str, payload: bytes, seq: int = 0, symbol: str = "BTC/USD") -> RawEnvelope:
    return RawEnvelope(
        instrument="BTC-USD",
        exchange="kraken",
        symbol=symbol,
        channel=channel,
        receive_time_ns=1_700_000_000_000_000_000 + seq,
        connection_id="c1",
        connection_seq=seq,
        payload=payload,
    )


def text_levels(levels: tuple[tuple[Decimal, Decimal], ...] | list[tuple[Decimal, Decimal]]
                ) -> list[list[str]]:
    return [[str(p), str(q)] for p, q in levels]


# --- documented frames ----------------------------------------------------------------------


def test_documented_snapshot_checksum_matches_the_documented_value() -> None:
    (snap,) = parse_frame((FIXTURES / "doc_book_snapshot.json").read_bytes(), 7)
    assert isinstance(snap, BookSnapshot)
    assert snap.checksum == 3310070434
    assert book_checksum(snap.bids, snap.asks) == 3310070434
    # the simulator's integer implementation, on the same levels
    ints = [[(int(format(p, "f").replace(".", "")), int(format(q, "f").replace(".", "")))
             for p, q in side] for side in (snap.bids, snap.asks)]
    assert sim_checksum(ints[0], ints[1]) == 3310070434


def test_documented_snapshot_keeps_the_exact_number_text() -> None:
    (snap,) = parse_frame((FIXTURES / "doc_book_snapshot.json").read_bytes(), 7)
    assert isinstance(snap, BookSnapshot)
    assert (snap.symbol, snap.last_id, snap.event_time_ms) == ("BTC/USD", 0, 0)
    assert snap.bids[0] == (D("45283.5"), D("0.10000000"))
    assert str(snap.bids[0][1]) == "0.10000000"  # trailing zeros kept: the checksum needs them
    assert str(snap.bids[3][0]) == "45281.0"
    assert str(snap.asks[0][1]) == "0.00100000"
    assert [str(p) for p, _ in snap.asks[:3]] == ["45285.2", "45286.4", "45286.6"]
    assert checksum_text(snap.asks[0][0]) + checksum_text(snap.asks[0][1]) == "452852100000"


def test_documented_update() -> None:
    (delta,) = parse_frame((FIXTURES / "doc_book_update.json").read_bytes(), 7)
    assert isinstance(delta, BookDelta)
    assert (delta.symbol, delta.first_id, delta.last_id) == ("MATIC/USD", 0, 0)
    assert delta.bids == ((D("0.5657"), D("1098.3947558")),) and delta.asks == ()
    assert (delta.checksum, delta.receive_time_ns) == (2114181697, 7)
    assert delta.event_time_ms == timestamp_ms("2023-10-06T17:35:55.440295Z") == 1696613755440


def test_documented_trade_keeps_the_taker_side() -> None:
    (trade,) = parse_frame((FIXTURES / "doc_trade.json").read_bytes(), 7)
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.trade_id, trade.taker_side) == ("MATIC/USD", "4665906", "sell")
    assert (trade.price, str(trade.size)) == (D("0.5117"), "40.0")
    assert trade.trade_time_ms == trade.event_time_ms == 1695628177708


def test_checksum_text_is_exact_and_exponent_free() -> None:
    assert checksum_text(D("0.10000000")) == "10000000"
    assert checksum_text(D("45281.0")) == "452810"
    assert checksum_text(D("0.00000001")) == "1"  # str() would give "1E-8"
    assert checksum_text(D("1E-8")) == "1"
    assert checksum_text(D("40")) == "40"


def test_parse_registry_channels_and_errors() -> None:
    assert PARSERS["kraken"] is parse and ENGINES["kraken"] is KrakenBook
    (lost,) = parse_envelope(envelope("sync_lost", b'{"reason":"connection lost"}'))
    assert isinstance(lost, SyncLost) and lost.reason == "connection lost"
    trade = (FIXTURES / "doc_trade.json").read_bytes()
    with pytest.raises(ParseError, match="another channel"):
        parse(envelope("depth", trade))
    with pytest.raises(ParseError, match="unknown channel"):
        parse(envelope("ticker", trade))


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"channel":"heartbeat"}',
        b'{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[]}]}',
        b'{"channel":"book","type":"delta","data":[]}',
        b'{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":-1,"qty":1}],'
        b'"asks":[],"checksum":1}]}',
        b'{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":"NaN",'
        b'"qty":1}],"asks":[],"checksum":1}]}',
        b'{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],'
        b'"checksum":4294967296}]}',
        b'{"channel":"trade","type":"update","data":[{"symbol":"X","side":"bid","price":1,'
        b'"qty":1,"ord_type":"market","trade_id":1,"timestamp":"2023-09-25T07:49:37Z"}]}',
        b'{"channel":"trade","type":"update","data":[{"symbol":"X","side":"buy","price":1,'
        b'"qty":1,"ord_type":"market","trade_id":1,"timestamp":"yesterday"}]}',
    ],
)
def test_bad_frames_raise_parse_error(payload: bytes) -> None:
    with pytest.raises(ParseError):
        parse_frame(payload, 0)


# --- engine scenarios -----------------------------------------------------------------------


class Step(msgspec.Struct):
    channel: str
    frame: msgspec.Raw  # the frame's exact bytes: numbers must not go through float


class Expected(msgspec.Struct):
    status: str
    bids: list[list[str]]
    asks: list[list[str]]


class Scenario(msgspec.Struct):
    description: str
    depth: int
    steps: list[Step]
    expected: Expected


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_sync_scenario(path: Path) -> None:
    scenario = msgspec.json.decode(path.read_bytes(), type=Scenario)
    books = InstrumentBooks("BTC-USD", top_n=25, snapshot_interval_ms=1000, max_levels=5000,
                            max_buffered=100)
    for seq, step in enumerate(scenario.steps):
        books.process(envelope(step.channel, bytes(step.frame), seq))
    view = books.view(("kraken", "BTC/USD"))
    assert view.status.value == scenario.expected.status, scenario.description
    assert text_levels(view.bids) == scenario.expected.bids
    assert text_levels(view.asks) == scenario.expected.asks
    if view.status is not BookStatus.LIVE:
        assert view.reason.startswith("checksum mismatch")


def test_mismatch_asks_for_a_resync_and_updates_until_the_snapshot_are_ignored() -> None:
    scenario = msgspec.json.decode(
        (FIXTURES / "sync_resubscribe_snapshot_heals_mismatch.json").read_bytes(), type=Scenario
    )
    books = InstrumentBooks("BTC-USD", 10, 1000, 5000, 100)
    outs = [books.process(envelope(s.channel, bytes(s.frame), i))
            for i, s in enumerate(scenario.steps)]
    assert outs[0].resyncs == []
    ((book_id, reason),) = outs[1].resyncs
    assert book_id == ("kraken", "BTC/USD") and reason.startswith("checksum mismatch: exchange")
    assert outs[2].resyncs == [] and outs[2].book_views == []  # ignored while RESYNCING
    assert [v.status for v in outs[3].book_views] == [BookStatus.LIVE]


def test_a_snapshot_with_a_wrong_checksum_is_not_trusted() -> None:
    raw = (FIXTURES / "doc_book_snapshot.json").read_bytes()
    (snap,) = parse_frame(raw.replace(b"3310070434", b"3310070435"), 0)
    assert isinstance(snap, BookSnapshot)
    engine = KrakenBook(max_levels=5000, max_buffered=10)
    assert engine.on_snapshot(snap) is Outcome.CHECKSUM_MISMATCH
    assert (engine.status, len(engine.book)) == (BookStatus.RESYNCING, 0)
    assert engine.reason == "checksum mismatch on snapshot: exchange 3310070435, local 3310070434"


def test_depth_is_inferred_from_snapshots_or_pinned() -> None:
    assert [subscription_depth(n) for n in (0, 10, 11, 25, 26, 1000, 5000)] == [
        10, 10, 25, 25, 100, 1000, 1000]
    market = KrakenMarket("ETH/USD", 1, 60, 5, 0.3)
    inferred = KrakenBook(max_levels=5000, max_buffered=10)
    pinned = KrakenBook(max_levels=5000, max_buffered=10, depth=10)
    (snap,) = parse_frame(market.snapshot_message(25, 0), 0)
    assert isinstance(snap, BookSnapshot)
    assert inferred.on_snapshot(snap) is Outcome.RESYNCED and inferred.view_depth == 25
    # a book pinned shallower than the snapshot keeps its top 10: the checksum still holds
    assert pinned.on_snapshot(snap) is Outcome.RESYNCED
    assert len(pinned.book.bids) == len(pinned.book.asks) == 10
    with pytest.raises(ValueError, match="depth"):
        KrakenBook(max_levels=10, max_buffered=10, depth=20)


def test_state_round_trip_keeps_the_inferred_depth() -> None:
    (snap,) = parse_frame((FIXTURES / "doc_book_snapshot.json").read_bytes(), 1)
    assert isinstance(snap, BookSnapshot)
    engine = KrakenBook(max_levels=5000, max_buffered=10)
    engine.on_snapshot(snap)
    restored = KrakenBook(max_levels=5000, max_buffered=10)
    restored.restore_state(engine.state())
    for price, size in engine.book.bids.items():
        restored.book.restore_level("b", price, size)
    for price, size in engine.book.asks.items():
        restored.book.restore_level("a", price, size)
    assert (restored.status, restored.view_depth) == (BookStatus.LIVE, 10)
    assert restored.checksum() == engine.checksum() == 3310070434


# --- simulator truth vs engine --------------------------------------------------------------


def replay(symbol: str, depth: int, updates: int, seed: int = 42) -> tuple[int, int, int]:
    """``updates`` simulated book updates of one pair at ``depth``, as a subscriber gets them,
    through the parser and the engine. (applied, checksum mismatches, top-10 disagreements)."""
    market = KrakenMarket(symbol, seed, 50, 5, 0.3)
    engine = KrakenBook(max_levels=5000, max_buffered=10, depth=depth)
    (snap,) = parse_frame(market.snapshot_message(depth, 0), 0)
    assert isinstance(snap, BookSnapshot) and engine.on_snapshot(snap) is Outcome.RESYNCED
    applied = mismatches = disagreements = 0
    now = 0
    while applied + mismatches < updates:
        now += 1
        for event in market.step(now):
            if not isinstance(event, BookStep):
                continue
            levels = book_update(event, depth)
            if levels is None:
                continue  # nothing changed within this subscriber's view
            body = book_message("update", symbol, market.pair, levels[0], levels[1],
                                event.checksum, now)
            (delta,) = parse_frame(body, now)
            assert isinstance(delta, BookDelta)
            if engine.on_delta(delta) is Outcome.APPLIED:
                applied += 1
            else:
                mismatches += 1
                (snap,) = parse_frame(market.snapshot_message(depth, now), now)
                assert isinstance(snap, BookSnapshot)
                engine.on_snapshot(snap)
            if now % 97 == 0:  # now and then, the whole top 10 too, not only its checksum
                bids, asks = market.levels(10)
                top = engine.book.top(10)
                expected = [[(market.pair.price_text(p), market.pair.qty_text(q))
                             for p, q in side] for side in (bids, asks)]
                actual = [[(format(p, "f"), format(q, "f")) for p, q in side] for side in top]
                disagreements += expected != actual
    return applied, mismatches, disagreements


def test_engine_agrees_with_the_simulator_on_every_update() -> None:
    for symbol, depth in (("BTC/USD", 10), ("DOGE/USD", 25), ("USDT/USD", 100)):
        assert replay(symbol, depth, 4_000) == (4_000, 0, 0), symbol


def _replay_many(jobs: list[tuple[str, int, int]]) -> tuple[int, int, int, float]:
    started = time.perf_counter()
    workers = min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(replay, *zip(*jobs, strict=True)))
    applied, mismatches, disagreements = (sum(r[i] for r in results) for i in range(3))
    return applied, mismatches, disagreements, time.perf_counter() - started


def million_jobs(total: int) -> list[tuple[str, int, int]]:
    """``total`` updates spread over 10 pairs (all precisions) at depths 10 and 25."""
    pairs = list(KRAKEN_PAIRS)[:10]
    return [(p, (10, 25)[i % 2], total // len(pairs)) for i, p in enumerate(pairs)]


def test_checksums_agree_on_50k_simulated_updates() -> None:
    applied, mismatches, disagreements, _ = _replay_many(million_jobs(50_000))
    assert (applied, mismatches, disagreements) == (50_000, 0, 0)


@pytest.mark.slow
def test_checksums_agree_on_a_million_simulated_updates(
    record_property: Callable[[str, object], None],
) -> None:
    applied, mismatches, disagreements, elapsed = _replay_many(million_jobs(1_000_000))
    record_property("elapsed_s", round(elapsed, 1))  # reported, never asserted
    assert (applied, mismatches, disagreements) == (1_000_000, 0, 0)


# --- property: random books, depths and precisions ------------------------------------------


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


@settings(max_examples=300, deadline=None)
@given(
    pairs(),
    st.sampled_from([10, 25]),
    st.lists(st.tuples(st.lists(level_change, min_size=1, max_size=6), action), max_size=50),
)
def test_live_book_always_matches_the_truths_top_of_book(
    pair: KrakenPair, depth: int, steps: list
) -> None:
    """Whatever arrives, after each message it processes a LIVE engine's top 10 is the
    truth's (its checksum agrees with the simulator's: a lost update is caught as soon as it
    matters to the top 10), it never holds more than ``depth`` levels a side, and a
    resubscribe's snapshot always brings it back."""
    # price units -> qty units; bids 1..40, asks 41..80
    truth: dict[Side, dict[int, int]] = {Side.BID: {}, Side.ASK: {}}
    levels: dict[Side, list[tuple[int, int]]] = {s: [] for s in truth}

    def sorted_side(side: Side) -> list[tuple[int, int]]:
        return sorted(truth[side].items(), reverse=side is Side.BID)

    def snapshot() -> BookSnapshot:
        body = book_message("snapshot", "X/Y", pair, sorted_side(Side.BID)[:depth],
                            sorted_side(Side.ASK)[:depth],
                            sim_checksum(sorted_side(Side.BID), sorted_side(Side.ASK)), 0)
        (snap,) = parse_frame(body, 0)
        assert isinstance(snap, BookSnapshot)
        return snap

    engine = KrakenBook(max_levels=5000, max_buffered=10, depth=depth)
    engine.on_snapshot(snapshot())
    for changes, act in steps:
        before = (sorted_side(Side.BID), sorted_side(Side.ASK))
        applied_changes = []
        for side, index, qty in changes:
            price = index + 1 if side is Side.BID else index + 41
            if qty:
                truth[side][price] = qty
            else:
                truth[side].pop(price, None)
            applied_changes.append((side, price, qty))
        after = (sorted_side(Side.BID), sorted_side(Side.ASK))
        step = BookStep(0, 0, tuple(applied_changes), before, after)
        update = book_update(step, depth)
        levels = {Side.BID: after[0], Side.ASK: after[1]}
        if act == "resubscribe":
            assert engine.on_snapshot(snapshot()) in (Outcome.APPLIED, Outcome.RESYNCED)
        elif update is not None and act == "deliver":
            body = book_message("update", "X/Y", pair, update[0], update[1], step.checksum, 0)
            (delta,) = parse_frame(body, 0)
            assert isinstance(delta, BookDelta)
            engine.on_delta(delta)
        else:
            continue  # lost (or nothing to send): the engine has not seen anything new
        if engine.status is BookStatus.LIVE:
            assert engine.checksum() == sim_checksum(*after)
            top_bids, top_asks = engine.book.top(10)
            assert [(format(p, "f"), format(q, "f")) for p, q in top_bids] == [
                (pair.price_text(p), pair.qty_text(q)) for p, q in after[0][:10]]
            assert [(format(p, "f"), format(q, "f")) for p, q in top_asks] == [
                (pair.price_text(p), pair.qty_text(q)) for p, q in after[1][:10]]
            assert len(engine.book.bids) <= depth and len(engine.book.asks) <= depth
    engine.on_snapshot(snapshot())
    assert engine.status is BookStatus.LIVE
    assert engine.checksum() == sim_checksum(levels[Side.BID], levels[Side.ASK])
