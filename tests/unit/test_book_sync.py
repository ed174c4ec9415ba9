"""Each exchange's book sync rules in the compiled core, on recorded frames: one fixture file
per scenario (``tests/fixtures/<exchange>/sync_*.json``), the documented frames, and the bad
ones. What is checked is what users see: the book's Redis hash, the resync requests sent to
the connectors, the ClickHouse rows and the dead letters."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from tests.unit.core_driver import (
    Core,
    Published,
    binance,
    bn_depth,
    bn_snapshot,
    envelope,
    levels,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
D = Decimal
# the book each exchange's fixtures are about: (instrument, symbol, receive time of step 0)
BOOKS = {
    "binance": ("BNB-BTC", "BNBBTC", 1672515782136),
    "coinbase": ("BTC-USD", "BTC-USD", 1675974770000),
    "kraken": ("BTC-USD", "BTC/USD", 1696613755440),
}
SCENARIOS = [(ex, p) for ex in BOOKS for p in sorted((FIXTURES / ex).glob("sync_*.json"))]


class Step(msgspec.Struct):
    channel: str
    frame: msgspec.Raw  # the frame's bytes as written: Kraken's checksums are over its text


class Scenario(msgspec.Struct):
    description: str
    steps: list[Step]
    expected: dict[str, object]


def fixture(exchange: str, name: str) -> bytes:
    return (FIXTURES / exchange / name).read_bytes()


def run_steps(exchange: str, steps: list[tuple[str, bytes]]) -> tuple[Core, list[Published]]:
    instrument, symbol, t0 = BOOKS[exchange]
    core = Core(instrument)
    outs = [
        core.process(envelope(instrument, exchange, symbol, channel, frame, t0 + i, seq=i))
        for i, (channel, frame) in enumerate(steps)
    ]
    return core, outs


@pytest.mark.parametrize(
    ("exchange", "path"), SCENARIOS, ids=[f"{ex}-{p.stem}" for ex, p in SCENARIOS]
)
def test_sync_scenario(exchange: str, path: Path) -> None:
    scenario = msgspec.json.decode(path.read_bytes(), type=Scenario)
    core, outs = run_steps(exchange, [(s.channel, bytes(s.frame)) for s in scenario.steps])
    expected = scenario.expected
    symbol = BOOKS[exchange][1]
    book = core.book(exchange, symbol)
    resyncs = [r for out in outs for r in out.of("control")]
    if book is None:  # never published: a reader sees no book at all, and never a LIVE one
        assert expected["status"] == "RESYNCING" and not expected["bids"], scenario.description
    else:
        assert book["status"] == expected["status"], scenario.description
        assert levels(book["bids"]) == expected["bids"]
        assert levels(book["asks"]) == expected["asks"]
        if "last_id" in expected:
            assert int(book["seq"]) == expected["last_id"]
        assert bool(book["reason"]) == (book["status"] != "LIVE")
    if expected["status"] == "RESYNCING":  # the connector is asked for a fresh snapshot
        assert resyncs and {(r["exchange"], r["symbol"]) for r in resyncs} == {(exchange, symbol)}
    for out in outs:  # never a wrong book as LIVE: not LIVE means no levels
        for written in out.books():
            if written["status"] != "LIVE":
                assert levels(written["bids"]) == levels(written["asks"]) == []


# --- Binance --------------------------------------------------------------------------------


def test_binance_documented_frames_keep_exact_decimals_and_the_taker_side() -> None:
    _, outs = run_steps("binance", [
        ("snapshot", fixture("binance", "doc_depth_snapshot.json")),
        ("trade", fixture("binance", "doc_trade.json")),
    ])  # fmt: skip
    [written] = outs[0].books()
    assert written["status"] == "LIVE" and written["seq"] == "1027024"
    # the exchange's own text, trailing zeros kept
    assert levels(written["bids"]) == [["4.00000000", "431.00000000"]]
    assert levels(written["asks"]) == [["4.00000200", "12.00000000"]]
    [trade] = outs[1].of("trades")
    assert (trade["trade_id"], trade["price"], trade["size"]) == ("12345", D("0.001"), D(100))
    # "m": true -> the buyer was the maker, so the aggressor sold
    assert trade["taker_side"] == "sell" and trade["trade_time_ms"] == 1672515782136


def test_binance_combined_stream_frames_are_taken_as_the_plain_ones() -> None:
    core, _ = run_steps("binance", [
        ("snapshot", json.dumps(bn_snapshot(156, [["0.0024", "1"]], [["0.0026", "1"]])).encode()),
        ("depth", fixture("binance", "combined_depth_update.json")),
    ])  # fmt: skip
    book = core.book("binance", "BNBBTC")
    assert book is not None and book["seq"] == "160"
    assert levels(book["bids"]) == [["0.0024", "10"]]


@pytest.mark.parametrize(
    ("channel", "payload", "error"),
    [
        ("depth", b"not json", "cannot parse"),
        ("depth", b'{"e":"kline"}', "cannot parse"),
        ("depth", b'{"e":"depthUpdate","E":1,"s":"BNBBTC","U":5,"u":4,"b":[],"a":[]}', ""),
        ("trade", b'{"e":"trade","E":1,"s":"BNBBTC","t":1,"p":"abc","q":"1","T":1,"m":true}', ""),
        ("ticker", b"{}", "unknown channel"),
        ("depth", fixture("binance", "doc_depth_update.json").replace(b"BNBBTC", b"ETHBTC"),
         "keyed as"),
    ],
)  # fmt: skip
def test_bad_binance_frames_are_dead_lettered_with_the_reason(
    channel: str, payload: bytes, error: str
) -> None:
    _, [out] = run_steps("binance", [(channel, payload)])
    [letter] = out.of("deadletter")
    assert letter["stage"] == "job" and error in letter["error"] and letter["error"]
    assert out.books() == []


def test_snapshots_once_per_event_time_second_and_only_when_live() -> None:
    core = Core("BNB-BTC")
    t0 = 1672515782136
    out = core.process(binance("depth", bn_depth(157, 160, t0, [["0.0024", "10"]], []), t0))
    assert out.of("book_snapshots") == [] and out.books() == []  # buffered, nothing known yet
    out = core.process(binance("snapshot", bn_snapshot(158, [], []), t0 + 1))
    assert [b["status"] for b in out.books()] == ["LIVE"]
    [first] = out.of("book_snapshots")
    assert first["seq"] == 160 and first["bid_prices"] == [D("0.0024")]
    counts = []
    for i, event_ms in enumerate([t0 + 364, t0 + 865], start=161):
        frame = bn_depth(i, i, event_ms, [["0.0025", str(i)]], [])
        counts.append(len(core.process(binance("depth", frame, event_ms)).of("book_snapshots")))
    assert counts == [0, 1]  # the second crosses into the next event-time second


# --- Coinbase -------------------------------------------------------------------------------


def test_coinbase_documented_frames() -> None:
    core, outs = run_steps("coinbase", [
        ("depth", fixture("coinbase", "doc_l2_snapshot.json")),
        ("depth", fixture("coinbase", "doc_l2_update.json")),
    ])  # fmt: skip
    [snapshot] = outs[0].books()
    # exact decimals as Coinbase wrote them (no trailing zeros added or lost)
    assert levels(snapshot["bids"]) == [["21921.73", "0.06317902"], ["21921.3", "0.02"]]
    assert snapshot["event_time_ms"] == "1675974770714"  # 2023-02-09T20:32:50.714964855Z
    book = core.book("coinbase", "BTC-USD")
    assert book is not None and book["seq"] == "2"  # the message's sequence_num
    assert levels(book["bids"]) == [["21921.73", "0.06317902"]]  # size 0 removed the level
    assert levels(book["asks"]) == [["21923.85", "0.1488"]]  # "offer" is the ask side


def test_coinbase_market_trades_name_the_makers_side() -> None:
    core = Core("ETH-USD")
    out = core.process(
        envelope("ETH-USD", "coinbase", "ETH-USD", "trade",
                 fixture("coinbase", "doc_market_trades.json"), 1675973975400)
    )  # fmt: skip
    [trade] = out.of("trades")
    assert (trade["trade_id"], trade["price"], trade["size"]) == (
        "000000000",
        D("1260.01"),
        D("0.3"),
    )
    # "side": "BUY" is the resting (maker) order's side: the taker sold
    assert trade["taker_side"] == "sell"
    assert trade["trade_time_ms"] == 1565815347265  # 2019-08-14T20:42:27.265Z
    assert trade["event_time_ms"] == 1675973975396  # the message timestamp, 8 digits


def test_coinbase_sync_lost_marker_names_the_gap_in_the_book_and_the_resync() -> None:
    core, outs = run_steps("coinbase", [
        ("depth", fixture("coinbase", "doc_l2_snapshot.json")),
        ("sync_lost", b'{"reason":"sequence_num gap","expected":41,"got":43}'),
    ])  # fmt: skip
    book = core.book("coinbase", "BTC-USD")
    assert book is not None and book["status"] == "RESYNCING"
    assert book["reason"].endswith("sequence_num gap (expected 41, got 43)")
    [resync] = outs[1].of("control")
    assert resync["type"] == "resync" and resync["reason"] == book["reason"]


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("depth", b"not json"),
        ("depth", fixture("coinbase", "doc_market_trades.json")),
        ("depth", fixture("coinbase", "doc_l2_update.json").replace(b'"0.1488"', b'"abc"')),
        ("depth", fixture("coinbase", "doc_l2_update.json").replace(b'"0.1488"', b'"-1"')),
        ("depth", fixture("coinbase", "doc_l2_update.json").replace(b'"offer"', b'"ask"')),
        ("depth", fixture("coinbase", "doc_l2_update.json").replace(b"51.327893447Z", b"51")),
        ("depth", b'{"channel":"l2_data","timestamp":"2023-02-09T20:32:50Z","sequence_num":1,'
                  b'"events":[]}'),
        ("trade", fixture("coinbase", "doc_l2_update.json")),
        ("depth", re.sub(rb'"sequence_num": ?\d+', b'"sequence_num":-1',
                         fixture("coinbase", "doc_l2_update.json"))),
        ("sync_lost", b'{"reason": 5}'),
        ("sync_lost", b"[1, 2"),
        ("ticker", b"{}"),
        ("trade", fixture("coinbase", "doc_market_trades.json")),  # keyed as BTC-USD
    ],
)  # fmt: skip
def test_bad_coinbase_frames_are_dead_lettered(channel: str, payload: bytes) -> None:
    _, [out] = run_steps("coinbase", [(channel, payload)])
    [letter] = out.of("deadletter")
    assert letter["error"] and letter["exchange"] == "coinbase"
    assert out.books() == [] and out.of("trades") == []


# --- Kraken ---------------------------------------------------------------------------------


def test_kraken_mismatch_asks_for_a_resync_and_ignores_updates_until_the_snapshot() -> None:
    scenario = msgspec.json.decode(
        fixture("kraken", "sync_resubscribe_snapshot_heals_mismatch.json"), type=Scenario
    )
    _, outs = run_steps("kraken", [(s.channel, bytes(s.frame)) for s in scenario.steps])
    assert outs[0].of("control") == []
    [resync] = outs[1].of("control")
    assert resync["symbol"] == "BTC/USD" and resync["reason"].startswith("checksum mismatch")
    assert outs[2].of("control") == [] and outs[2].books() == []  # ignored while RESYNCING
    assert [b["status"] for b in outs[3].books()] == ["LIVE"]


def test_kraken_snapshot_with_a_wrong_checksum_is_not_trusted() -> None:
    raw = fixture("kraken", "doc_book_snapshot.json").replace(b"3310070434", b"3310070435")
    core, [out] = run_steps("kraken", [("depth", raw)])
    book = core.book("kraken", "BTC/USD")
    assert book is None or book["status"] == "RESYNCING"
    [resync] = out.of("control")
    assert "checksum mismatch" in resync["reason"]


def test_kraken_documented_frames() -> None:
    core, outs = run_steps("kraken", [
        ("depth", fixture("kraken", "doc_book_snapshot.json")),
        ("depth", fixture("kraken", "doc_book_update.json")),
    ])  # fmt: skip
    [snapshot] = outs[0].books()
    assert snapshot["status"] == "LIVE"  # the documented checksum, 3310070434, holds
    assert levels(snapshot["bids"])[0] == ["45283.5", "0.10000000"]  # the text as sent
    book = core.book("kraken", "BTC/USD")
    assert book is not None and book["status"] == "LIVE"
    trade_core = Core("MATIC-USD")
    out = trade_core.process(
        envelope("MATIC-USD", "kraken", "MATIC/USD", "trade", fixture("kraken", "doc_trade.json"),
                 1695628177800)
    )  # fmt: skip
    [trade] = out.of("trades")
    assert (trade["trade_id"], trade["price"], trade["size"]) == ("4665906", D("0.5117"), D(40))
    assert trade["taker_side"] == "sell" and trade["trade_time_ms"] == 1695628177708
