"""Binance book sync rules on recorded frames, one fixture file per scenario."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from jobs.book.levels import BookStatus
from jobs.instrument import InstrumentBooks
from jobs.parse.binance import parse_frame, parse_snapshot
from jobs.parse.events import BookDelta, ParseError, Trade
from schemas.codec import RawEnvelope

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
SCENARIOS = sorted(FIXTURES.glob("sync_*.json"))


def envelope(channel: str, frame: dict, seq: int) -> RawEnvelope:
    return RawEnvelope(
        instrument="BNB-BTC",
        exchange="binance",
        symbol="BNBBTC",
        channel=channel,
        receive_time_ns=1_700_000_000_000_000_000 + seq,
        connection_id="c1",
        connection_seq=seq,
        payload=json.dumps(frame).encode(),
    )


def new_books() -> InstrumentBooks:
    return InstrumentBooks(
        "BNB-BTC", top_n=10, snapshot_interval_ms=1000, max_levels=1000, max_buffered=100
    )


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_sync_scenario(path: Path) -> None:
    scenario = json.loads(path.read_text())
    books = new_books()
    for seq, step in enumerate(scenario["steps"]):
        books.process(envelope(step["channel"], step["frame"], seq))
    view = books.view(("binance", "BNBBTC"))
    expected = scenario["expected"]
    assert view.status.value == expected["status"], scenario["description"]
    assert view.seq == expected["last_id"]
    assert [[str(p), str(s)] for p, s in view.bids] == expected["bids"]
    assert [[str(p), str(s)] for p, s in view.asks] == expected["asks"]
    if view.status is not BookStatus.LIVE:
        assert view.reason


def test_documentation_depth_update() -> None:
    delta = parse_frame((FIXTURES / "doc_depth_update.json").read_bytes(), 7)
    assert isinstance(delta, BookDelta)
    assert (delta.symbol, delta.first_id, delta.last_id) == ("BNBBTC", 157, 160)
    assert delta.bids == ((Decimal("0.0024"), Decimal("10")),)
    assert delta.asks == ((Decimal("0.0026"), Decimal("100")),)
    assert (delta.event_time_ms, delta.receive_time_ns) == (1672515782136, 7)


def test_documentation_trade_taker_side() -> None:
    trade = parse_frame((FIXTURES / "doc_trade.json").read_bytes(), 7)
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.price, trade.size) == ("12345", Decimal("0.001"), Decimal("100"))
    # "m": true -> the buyer was the maker, so the aggressor sold
    assert trade.taker_side == "sell"


def test_documentation_snapshot_keeps_exact_decimals() -> None:
    snap = parse_snapshot((FIXTURES / "doc_depth_snapshot.json").read_bytes(), "BNBBTC", 1)
    assert snap.last_id == 1027024
    assert [str(p) for p, _ in snap.asks] == ["4.00000200"]
    assert [str(s) for _, s in snap.bids] == ["431.00000000"]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"e":"kline"}',
        b'{"e":"depthUpdate","E":1,"s":"X","U":5,"u":4,"b":[],"a":[]}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"abc","q":"1","T":1,"m":true}',
    ],
)
def test_bad_frames_raise_parse_error(payload: bytes) -> None:
    with pytest.raises(ParseError):
        parse_frame(payload, 0)


def test_unknown_channel_and_symbol_mismatch_are_errors() -> None:
    books = new_books()
    with pytest.raises(ParseError, match="unknown channel"):
        books.process(envelope("ticker", {}, 0))
    frame = json.loads((FIXTURES / "doc_depth_update.json").read_text())
    frame["s"] = "ETHBTC"
    with pytest.raises(ParseError, match="keyed as"):
        books.process(envelope("depth", frame, 1))


def test_snapshots_once_per_event_time_interval_and_only_when_live() -> None:
    books = new_books()
    frame = json.loads((FIXTURES / "doc_depth_update.json").read_text())
    out = books.process(envelope("depth", frame, 0))
    assert out.snapshots == [] and out.book_views == []  # buffered, nothing known yet
    out = books.process(envelope("snapshot", {"lastUpdateId": 158, "bids": [], "asks": []}, 1))
    assert [v.status for v in out.book_views] == [BookStatus.LIVE]
    assert len(out.snapshots) == 1
    for seq, (U, E) in enumerate([(161, 1672515782500), (162, 1672515783001)], start=2):
        frame.update(U=U, u=U, E=E)
        out = books.process(envelope("depth", frame, seq))
        assert len(out.snapshots) == (1 if E == 1672515783001 else 0)


def test_state_round_trip_restores_the_same_book() -> None:
    books = new_books()
    steps = json.loads((FIXTURES / "sync_new_snapshot_heals_gap.json").read_text())["steps"]
    persisted: dict[tuple[str, str, str, str], Decimal] = {}
    for seq, step in enumerate(steps):
        out = books.process(envelope(step["channel"], step["frame"], seq))
        for (ex, sym), changes in out.level_changes:
            for side, price, size in changes:
                key = (ex, sym, side, str(price))
                if size is None:
                    persisted.pop(key, None)
                else:
                    persisted[key] = size
    book_id = ("binance", "BNBBTC")
    restored = new_books()
    restored.restore(
        book_id,
        books.books[book_id].meta(),
        [(side, Decimal(price), size) for (_, _, side, price), size in persisted.items()],  # type: ignore[misc]
    )
    assert restored.view(book_id) == books.view(book_id)
