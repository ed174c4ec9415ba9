"""Coinbase frames parsed from recorded documentation examples; level2 book rules on scripted
scenarios, one fixture file per scenario."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from jobs.book.coinbase import CoinbaseBook
from jobs.book.engine import Outcome
from jobs.book.levels import BookStatus
from jobs.instrument import InstrumentBooks
from jobs.parse import parse_envelope
from jobs.parse.coinbase import parse, timestamp_ms
from jobs.parse.events import BookDelta, BookSnapshot, ParseError, SyncLost, Trade
from schemas.codec import RawEnvelope

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "coinbase"
SCENARIOS = sorted(FIXTURES.glob("sync_*.json"))


def envelope(channel: str, payload: bytes, symbol: str = "BTC-USD", seq: int = 0) -> RawEnvelope:
    return RawEnvelope(
        instrument=symbol,
        exchange="coinbase",
        symbol=symbol,
        channel=channel,
        receive_time_ns=1_700_000_000_000_000_000 + seq,
        connection_id="c1",
        connection_seq=seq,
        payload=payload,
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def new_books() -> InstrumentBooks:
    return InstrumentBooks(
        "BTC-USD", top_n=10, snapshot_interval_ms=1000, max_levels=1000, max_buffered=100
    )


# --- documented frames ----------------------------------------------------------------------


def test_documentation_l2_snapshot() -> None:
    (snap,) = parse(envelope("depth", fixture("doc_l2_snapshot.json"), seq=7))
    assert isinstance(snap, BookSnapshot)
    assert (snap.exchange, snap.symbol, snap.last_id) == ("coinbase", "BTC-USD", 0)
    # exact decimals as Coinbase wrote them (no trailing zeros added or lost)
    assert [(str(p), str(s)) for p, s in snap.bids] == [
        ("21921.73", "0.06317902"), ("21921.3", "0.02")
    ]
    assert snap.asks == ()
    assert snap.event_time_ms == 1675974770714  # 2023-02-09T20:32:50.714964855Z
    assert snap.receive_time_ns == 1_700_000_000_000_000_007


def test_documentation_l2_update() -> None:
    (delta,) = parse(envelope("depth", fixture("doc_l2_update.json")))
    assert isinstance(delta, BookDelta)
    assert (delta.first_id, delta.last_id) == (2, 2)  # the message's sequence_num
    assert delta.bids == ((Decimal("21921.3"), Decimal("0")),)
    assert delta.asks == ((Decimal("21923.85"), Decimal("0.1488")),)  # "offer" is the ask side
    assert delta.event_time_ms == 1675974771327


def test_documentation_market_trades_taker_side() -> None:
    (trade,) = parse(envelope("trade", fixture("doc_market_trades.json"), symbol="ETH-USD"))
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.trade_id) == ("ETH-USD", "000000000")
    assert (trade.price, trade.size) == (Decimal("1260.01"), Decimal("0.3"))
    # "side": "BUY" is the resting (maker) order's side: the taker sold
    assert trade.taker_side == "sell"
    assert trade.trade_time_ms == 1565815347265  # 2019-08-14T20:42:27.265Z
    assert trade.event_time_ms == 1675973975396  # the message timestamp


def test_sync_lost_marker() -> None:
    payload = b'{"reason":"sequence_num gap","expected":41,"got":43}'
    (event,) = parse_envelope(envelope("sync_lost", payload))
    assert isinstance(event, SyncLost)
    assert event.symbol == "BTC-USD"
    assert event.reason == "sequence_num gap (expected 41, got 43)"
    with pytest.raises(ParseError, match="without a reason"):
        parse_envelope(envelope("sync_lost", b'{"expected": 1}'))


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2019-08-14T20:42:27.265Z", 1565815347265),
        ("2023-02-09T20:19:35.39625135Z", 1675973975396),  # 8 digits: Go trims zeros
        ("2023-02-09T20:32:50.714964855Z", 1675974770714),  # 9 digits: truncated to ms
    ],
)
def test_timestamps(text: str, ms: int) -> None:
    assert timestamp_ms(text) == ms


@pytest.mark.parametrize(
    ("channel", "payload", "message"),
    [
        ("depth", b"not json", "cannot parse l2_data"),
        ("depth", fixture("doc_market_trades.json"), "cannot parse l2_data"),
        ("depth", fixture("doc_l2_update.json").replace(b'"0.1488"', b'"abc"'), "bad decimal"),
        ("depth", fixture("doc_l2_update.json").replace(b'"0.1488"', b'"-1"'), "bad decimal"),
        ("depth", fixture("doc_l2_update.json").replace(b'"offer"', b'"ask"'), "cannot parse"),
        ("depth", fixture("doc_l2_update.json").replace(b'51.327893447Z', b'51'), "timestamp"),
        ("depth", b'{"channel":"l2_data","timestamp":"2023-02-09T20:32:50Z","sequence_num":1,'
                  b'"events":[]}', "without events"),
        ("trade", fixture("doc_l2_update.json"), "cannot parse market_trades"),
        # a negative message number is malformed (and would not fit the stored UInt64 seq)
        ("depth", re.sub(rb'"sequence_num": ?\d+', b'"sequence_num":-1',
                         fixture("doc_l2_update.json")), "cannot parse l2_data"),
        ("trade", re.sub(rb'"sequence_num": ?\d+', b'"sequence_num":-1',
                         fixture("doc_market_trades.json")), "cannot parse market_trades"),
        ("trade", fixture("doc_market_trades.json").replace(b'"BUY"', b'"buy"'), "cannot parse"),
        ("sync_lost", b'{"reason": 5}', "without a reason"),
        ("sync_lost", b"[1, 2", "cannot parse sync_lost"),
        ("ticker", b"{}", "unknown channel"),
    ],
)
def test_bad_frames_raise_parse_error(channel: str, payload: bytes, message: str) -> None:
    symbol = "ETH-USD" if b"ETH-USD" in payload else "BTC-USD"
    with pytest.raises(ParseError, match=message):
        parse_envelope(envelope(channel, payload, symbol=symbol))


def test_frame_keyed_under_another_product_is_an_error() -> None:
    with pytest.raises(ParseError, match="keyed as ETH-USD"):
        parse_envelope(envelope("depth", fixture("doc_l2_update.json"), symbol="ETH-USD"))
    with pytest.raises(ParseError, match="keyed as BTC-USD"):
        parse_envelope(envelope("trade", fixture("doc_market_trades.json")))


def test_update_events_of_one_message_become_one_delta() -> None:
    frame = json.loads(fixture("doc_l2_update.json"))
    frame["events"].append({**frame["events"][0], "updates": [
        {"side": "bid", "event_time": "2023-02-09T20:32:51Z", "price_level": "21921.3",
         "new_quantity": "0.5"}
    ]})
    (delta,) = parse(envelope("depth", json.dumps(frame).encode()))
    assert isinstance(delta, BookDelta)
    # in message order, so the later size for the same price wins when applied
    assert [(str(p), str(s)) for p, s in delta.bids] == [("21921.3", "0"), ("21921.3", "0.5")]


# --- book engine ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_sync_scenario(path: Path) -> None:
    scenario = json.loads(path.read_text())
    books = new_books()
    for seq, step in enumerate(scenario["steps"]):
        books.process(envelope(step["channel"], json.dumps(step["frame"]).encode(), seq=seq))
    view = books.view(("coinbase", "BTC-USD"))
    expected = scenario["expected"]
    assert view.status.value == expected["status"], scenario["description"]
    assert view.seq == expected["last_id"]
    assert [[str(p), str(s)] for p, s in view.bids] == expected["bids"]
    assert [[str(p), str(s)] for p, s in view.asks] == expected["asks"]
    if view.status is not BookStatus.LIVE:
        assert view.reason


def test_outcomes_versions_and_resync_request() -> None:
    books = new_books()
    book_id = ("coinbase", "BTC-USD")
    out = books.process(envelope("depth", fixture("doc_l2_update.json"), seq=0))
    assert out.book_views == []  # buffered before any snapshot: nothing to publish
    out = books.process(envelope("depth", fixture("doc_l2_snapshot.json"), seq=1))
    assert [v.status for v in out.book_views] == [BookStatus.LIVE]
    first = out.book_views[0].version
    out = books.process(envelope("depth", fixture("doc_l2_update.json"), seq=2))
    assert out.book_views[0].version == first + 1  # one applied message
    lost = b'{"reason":"sequence_num gap","expected":3,"got":5}'
    out = books.process(envelope("sync_lost", lost, seq=3))
    assert [v.status for v in out.book_views] == [BookStatus.RESYNCING]
    assert out.resyncs == [(book_id, "connector: sequence_num gap (expected 3, got 5)")]


def test_engine_outcomes() -> None:
    book = CoinbaseBook(max_levels=100, max_buffered=2)
    level = ((Decimal("1"), Decimal("2")),)
    delta = BookDelta("coinbase", "X", 5, 5, 0, 0, level, ())
    assert book.on_delta(delta) is Outcome.BUFFERED
    for _ in range(3):
        book.on_delta(delta)
    assert len(book.buffer) == 2 and "overflow" in book.reason  # bounded while waiting
    snap = BookSnapshot("coinbase", "X", 7, 1_000_000, (), level)
    assert book.on_snapshot(snap) is Outcome.RESYNCED
    assert book.buffer == [] and book.status is BookStatus.LIVE
    assert book.on_delta(delta) is Outcome.IGNORED  # 5 < 7: older than the snapshot
    assert book.on_delta(BookDelta("coinbase", "X", 9, 9, 0, 0, level, ())) is Outcome.APPLIED
    assert book.on_snapshot(BookSnapshot("coinbase", "X", 1, 2_000_000, (), ())) is (
        Outcome.APPLIED  # a snapshot always replaces a LIVE book (e.g. a new connection)
    )
    assert (book.last_id, book.applied, len(book.book)) == (1, 0, 0)
