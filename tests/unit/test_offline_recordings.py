"""Connector recordings through the live job's compiled core without servers
(``jobs.offline.run_recordings``, ``tickflow core``): a session of the three connectors
recorded against the simulator gives the simulator's true books, the touch each trade truly
executed against, a cross-exchange NBBO and bars of every trade; bad input is named by file
and line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.__main__ import CONNECTORS
from connectors.recorder import Recorder
from jobs import core_cli
from jobs.offline import (
    CoreResult,
    Recording,
    RecordingError,
    recorded_envelopes,
    recording_exchange,
    run_recording,
    run_recordings,
)
from simulator.server import SimulatorServer
from simulator.testing import ListSink, pointed_at, running_simulator, wait_until
from tickflow.config import Settings, load_settings
from tickflow.market_quality import Sample, quality

pytestmark = pytest.mark.unit

pytest.importorskip("tickflow_native")

ROOT = Path(__file__).resolve().parents[2]
# BTC-USD on Coinbase and Kraken, BTC-USDT on Binance and Kraken: cross-exchange NBBOs
COINBASE = ("BTC-USD", "ETH-USD")
KRAKEN = ("BTC/USD", "ETH/USD", "BTC/USDT")
RATE_PER_SYMBOL = 50  # market steps/s
TRADES_PER_BOOK = 15  # recorded until every book has traded this often


def session_settings() -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    ex = settings.exchanges
    exchanges = dataclasses.replace(
        ex,
        binance=dataclasses.replace(ex.binance, snapshot_stagger_ms=10),
        coinbase=dataclasses.replace(
            ex.coinbase, symbols={s: ex.coinbase.symbols[s] for s in COINBASE}
        ),
        kraken=dataclasses.replace(ex.kraken, symbols={s: ex.kraken.symbols[s] for s in KRAKEN}),
    )
    return dataclasses.replace(settings, exchanges=exchanges)


def books_of(settings: Settings) -> list[tuple[str, str]]:
    return [(ex, s) for ex in CONNECTORS for s in getattr(settings.exchanges, ex).symbols]


@dataclass
class Session:
    settings: Settings
    files: dict[str, Path]  # exchange -> recording
    truth: dict[tuple[str, str], list[dict[str, Any]]]  # (exchange, symbol) -> trades' touch
    books: dict[tuple[str, str], dict[str, Any]]  # the venue's book once everything was sent
    result: CoreResult


def introspect(sim: SimulatorServer, exchange: str, resource: str, symbol: str) -> Any:
    reply = sim.venues[exchange].introspect(resource, {"symbol": [symbol]})
    assert reply.status == 200, reply.body
    return orjson.loads(reply.body)


async def record(settings: Settings, directory: Path) -> Session:
    """Every connector records a session; the simulator is paused once every book has traded
    enough, and its truth read when every frame it sent has been received."""
    files = {ex: directory / f"{ex}.tsv" for ex in CONNECTORS}
    async with running_simulator(
        settings,
        rate_per_symbol=RATE_PER_SYMBOL,
        coinbase_products=COINBASE,
        kraken_symbols=KRAKEN,
    ) as sim:
        pointed = pointed_at(settings, sim)
        sinks = {ex: ListSink() for ex in CONNECTORS}
        connectors = {
            ex: cls(pointed, sinks[ex], random.Random(1)) for ex, cls in CONNECTORS.items()
        }
        for ex, connector in connectors.items():
            connector.recorder = Recorder(files[ex])
        tasks = [asyncio.create_task(c.run()) for c in connectors.values()]

        def traded_enough() -> bool:
            trades = Counter(
                (ex, e.symbol) for ex, sink in sinks.items() for e in sink.envelopes
                if e.channel == "trade"
            )
            return all(trades[book] >= TRADES_PER_BOOK for book in books_of(settings))

        await wait_until(traded_enough, within_s=30, what="trades on every book")
        sim.pause()

        def drained() -> bool:
            conns = [c for c in sim.status()["connections"] if c["open"]]
            received = {ex: c.stats.frames for ex, c in connectors.items()}
            return len(conns) == 3 and all(
                c["queued"] == 0 and c["frames_sent"] == received[c["exchange"]] for c in conns
            )

        await wait_until(drained, what="every sent frame received")
        truth = {b: introspect(sim, b[0], "truth", b[1])["trades"] for b in books_of(settings)}
        books = {b: introspect(sim, b[0], "book", b[1]) for b in books_of(settings)}
        for connector in connectors.values():
            connector.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for connector in connectors.values():
            assert connector.recorder is not None
            connector.recorder.close()
    recordings = [Recording(path, ex) for ex, path in files.items()]
    return Session(settings, files, truth, books, run_recordings(recordings, settings))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    directory = tmp_path_factory.mktemp("recordings")
    return asyncio.run(asyncio.wait_for(record(session_settings(), directory), 90))


def test_every_book_ends_live_with_the_simulators_true_top_levels(session: Session) -> None:
    top_n = session.settings.book.top_n
    by_book = {(b.exchange, b.symbol): b for b in session.result.books}
    assert set(by_book) == set(books_of(session.settings))
    for book_id, book in by_book.items():
        truth = session.books[book_id]
        assert (book.status, book.reason) == ("LIVE", ""), book_id
        assert book.instrument == getattr(session.settings.exchanges, book.exchange).symbols[
            book.symbol
        ]
        for side in ("bids", "asks"):
            expected = [(Decimal(p), Decimal(q)) for p, q in truth[side][:top_n]]
            got = [(Decimal(p), Decimal(q)) for p, q in getattr(book, side)]
            assert got == expected, (book_id, side)
    assert not session.result.dead_letters
    assert not session.result.resync_requests


def test_matched_trades_have_the_touch_they_truly_executed_against(session: Session) -> None:
    matched = session.result.matched_trades
    truth = {
        (ex, symbol, row["trade_id"]): row
        for (ex, symbol), rows in session.truth.items()
        for row in rows
    }
    live = [t for t in matched if t["book_status"] == "LIVE"]
    # trades before a book's first snapshot (Kraken's trade snapshot) have no book to match
    assert len(live) >= len(books_of(session.settings)) * TRADES_PER_BOOK
    for trade in live:
        row = truth[(trade["exchange"], trade["symbol"], trade["trade_id"])]
        assert trade["trade_time_ms"] == row["trade_time_ms"]
        if row["book_time_ms"]:  # 0: no depth event since the venue's first book
            assert trade["book_time_ms"] == row["book_time_ms"], (trade, row)
        assert trade["taker_side"] == row["taker_side"]
        for field in ("bid_price", "bid_size", "ask_price", "ask_size"):
            assert Decimal(trade[field]) == Decimal(row[field]), (trade["trade_id"], field)
        # the taker traded at the touch it met, or (sweeping several levels) beyond it
        touch = Decimal(row["ask_price"] if row["taker_side"] == "buy" else row["bid_price"])
        beyond = (Decimal(trade["price"]) - touch) * (1 if row["taker_side"] == "buy" else -1)
        assert (beyond, trade["touch"]) == (0, "at") or (beyond > 0 and trade["touch"] == "through")
    # every trade of the recordings is in the trades table, matched or late, exactly once
    assert session.result.table_rows["trades"] == len(matched) + session.result.table_rows.get(
        "late_events", 0
    )
    assert len({(t["exchange"], t["trade_id"]) for t in matched}) == len(matched)


def test_the_cross_exchange_nbbo_is_the_best_of_the_final_books(session: Session) -> None:
    books = {(b.exchange, b.symbol): b for b in session.result.books}
    venues = {
        "BTC-USD": [("coinbase", "BTC-USD"), ("kraken", "BTC/USD")],
        "BTC-USDT": [("binance", "BTCUSDT"), ("kraken", "BTC/USDT")],
    }
    last = session.result.last_nbbo
    for instrument, ids in venues.items():
        nbbo = last[instrument]
        assert sorted(nbbo["venues"]) == sorted(f"{ex}:{s}" for ex, s in ids)
        best_bid = max(Decimal(books[i].bids[0][0]) for i in ids)
        best_ask = min(Decimal(books[i].asks[0][0]) for i in ids)
        assert (Decimal(nbbo["bid_price"]), Decimal(nbbo["ask_price"])) == (best_bid, best_ask)
    assert session.result.table_rows["nbbo"] == len(session.result.nbbo)


def _trade_order(trade: dict[str, Any]) -> tuple[int, int]:
    trade_id = str(trade["trade_id"])
    return trade["trade_time_ms"], int(trade_id) if trade_id.isdigit() else 0


def test_bars_hold_every_matched_trade_of_their_window(session: Session) -> None:
    """Per venue and for ALL; at the end of input the core closes the windows its events
    reached, so only each instrument's last window (not yet over) has no bar."""
    matched = session.result.matched_trades
    for interval in session.settings.analytics.bar_intervals_ms:
        for venue in (*CONNECTORS, "ALL"):
            windows: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for t in matched:
                if venue in (t["exchange"], "ALL"):
                    start = t["trade_time_ms"] - t["trade_time_ms"] % interval
                    windows.setdefault((t["instrument"], start), []).append(t)
            bars = {
                (b["instrument"], b["window_start_ms"]): b
                for b in session.result.bars
                if b["venue"] == venue and b["interval_ms"] == interval
            }
            for window, bar in bars.items():
                trades = windows.get(window, [])
                assert bar["trade_count"] == len(trades), (venue, window)
                assert Decimal(bar["volume"]) == sum(Decimal(t["size"]) for t in trades)
                if trades and venue != "ALL":
                    # the core's order: trade time, then the numeric trade id (two trades of a
                    # symbol may share a millisecond)
                    ordered = sorted(trades, key=_trade_order)
                    assert (bar["open"], bar["close"]) == (
                        ordered[0]["price"], ordered[-1]["price"]
                    )
            last = {}
            for instrument, start in windows:
                last[instrument] = max(start, last.get(instrument, start))
            assert set(windows) - set(bars) <= set(last.items()), (venue, interval)
    assert session.result.table_rows["bars"] == len(session.result.bars) > 0


def test_each_recordings_exchange_is_told_from_its_frames(session: Session) -> None:
    for exchange, path in session.files.items():
        assert recording_exchange(path, session.settings) == exchange


def test_one_recording_alone_gives_that_exchanges_books(session: Session) -> None:
    result = run_recording(session.files["kraken"], "kraken", session.settings)
    assert {b.symbol for b in result.books} == set(KRAKEN)
    assert {b.exchange for b in result.books} == {"kraken"}
    ours = [t for t in session.result.matched_trades if t["exchange"] == "kraken"]
    assert len(result.matched_trades) == len(ours)


def test_the_command_writes_json_lines_that_parse(
    session: Session, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKFLOW_CONFIG", str(ROOT / "config" / "simulator.yaml"))
    files = [str(p) for p in session.files.values()]
    assert core_cli.main([*files, "--json", "--show", "books,nbbo,trades,bars"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["kind"] == "summary"
    summary = lines[0]
    assert [r["exchange"] for r in summary["recordings"]] == list(CONNECTORS)
    kinds = Counter(line["kind"] for line in lines[1:])
    # the configuration lists more symbols than were recorded: the same books
    assert kinds["book"] == summary["books"] == summary["books_live"] == len(
        session.result.books
    )
    assert kinds["nbbo"] == summary["nbbo_changes"] == len(session.result.nbbo)
    assert kinds["matched_trade"] == summary["matched_trades"] == len(
        session.result.matched_trades
    )
    assert kinds["bar"] == summary["bars"] == len(session.result.bars)
    assert summary["table_rows"] == session.result.table_rows
    book = next(line for line in lines if line["kind"] == "book")
    assert book["status"] == "LIVE" and book["bids"] and book["asks"]

    assert core_cli.main([*files, "--show", "all", "--limit", "3"]) == 0
    text = capsys.readouterr().out
    assert "books (" in text and "matched trades (" in text and "bars (" in text


def test_documented_binance_frames_become_the_connectors_envelopes_byte_for_byte(
    tmp_path: Path,
) -> None:
    """Binance's documented frames recorded as the connector records them (a diff, the REST
    snapshot, a trade): the same envelopes, payloads byte for byte; the book is the snapshot's
    (the diff is older than it)."""
    fixtures = ROOT / "tests" / "fixtures" / "binance"
    depth, trade = (fixtures / f"combined_{name}.json" for name in ("depth_update", "trade"))
    snapshot = (fixtures / "doc_depth_snapshot.json").read_bytes()
    t0 = 1672515782136 * 10**6
    path = tmp_path / "binance.tsv"
    recorder = Recorder(path)
    recorder.frame(t0 + 1_000_000, depth.read_bytes())
    recorder.rest(t0 + 2_000_000, "/api/v3/depth?symbol=BNBBTC&limit=1000", snapshot)
    recorder.frame(t0 + 3_000_000, trade.read_bytes())
    recorder.close()
    base = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    binance = dataclasses.replace(base.exchanges.binance, symbols={"BNBBTC": "BNB-BTC"})
    settings = dataclasses.replace(
        base, exchanges=dataclasses.replace(base.exchanges, binance=binance)
    )
    letters: list[dict[str, Any]] = []
    envelopes = list(recorded_envelopes(Recording(path, "binance"), settings, letters))
    got = [(e.instrument, e.symbol, e.channel, e.receive_time_ns, e.payload) for e in envelopes]
    assert got == [
        ("BNB-BTC", "BNBBTC", "depth", t0 + 1_000_000, depth.read_bytes()),
        ("BNB-BTC", "BNBBTC", "snapshot", t0 + 2_000_000, snapshot),
        ("BNB-BTC", "BNBBTC", "trade", t0 + 3_000_000, trade.read_bytes()),
    ]
    assert [e.connection_seq for e in envelopes] == [0, 1, 2] and not letters
    assert recording_exchange(path, settings) == "binance"
    result = run_recording(path, "binance", settings)
    (book,) = result.books
    assert (book.status, book.seq) == ("LIVE", 1027024)
    assert book.bids == [("4.00000000", "431.00000000")]
    assert book.asks == [("4.00000200", "12.00000000")]
    assert result.table_rows["trades"] == 1


def test_a_malformed_line_is_named_by_file_and_line(
    session: Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = session.files["binance"].read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"".join(lines[:5]) + b"not a record\n" + b"".join(lines[5:]))
    with pytest.raises(RecordingError, match=r"bad\.tsv:6: not a"):
        run_recording(bad, "binance", session.settings)
    assert core_cli.main([str(bad), "--exchange", "binance"]) == 2
    assert "bad.tsv:6" in capsys.readouterr().err
    # a REST record that is not one
    rest = tmp_path / "rest.tsv"
    rest.write_bytes(b'1\t{"rest":"/api/v3/depth?symbol=BTCUSDT","body"}\n')
    with pytest.raises(RecordingError, match=r"rest\.tsv:1: not a recorded REST response"):
        run_recording(rest, "binance", session.settings)
    missing = tmp_path / "missing.tsv"
    with pytest.raises(RecordingError, match=r"missing\.tsv"):
        run_recording(missing, "kraken", session.settings)


def test_a_coinbase_reconnect_in_a_recording_starts_a_new_connection(
    session: Session, tmp_path: Path
) -> None:
    """Two sessions in one file (sequence_num back at 0): the second is not dropped as
    duplicates; the first connection's books are marked lost, the second's snapshots heal."""
    once = session.files["coinbase"].read_bytes()
    later = 10 * 10**9  # the second session 10 s after the first
    again = b"".join(
        b"%d\t%s" % (int(stamp) + later, frame)
        for stamp, _, frame in (line.partition(b"\t") for line in once.splitlines(True))
    )
    path = tmp_path / "reconnected.tsv"
    path.write_bytes(once + again)
    single = run_recording(session.files["coinbase"], "coinbase", session.settings)
    twice = run_recording(path, "coinbase", session.settings)
    assert twice.envelopes["coinbase depth"] == 2 * single.envelopes["coinbase depth"]
    assert twice.envelopes["coinbase sync_lost"] == len(COINBASE)
    assert [(b.symbol, b.status, b.bids, b.asks) for b in twice.books] == [
        (b.symbol, "LIVE", b.bids, b.asks) for b in single.books
    ]


def test_unroutable_frames_are_dead_letters_naming_their_line(
    session: Session, tmp_path: Path
) -> None:
    path = tmp_path / "kraken.tsv"
    path.write_bytes(session.files["kraken"].read_bytes() + b'99\t{"channel":"book"\n')
    result = run_recording(path, "kraken", session.settings)
    (letter,) = result.dead_letters
    assert letter["stage"] == "connector"
    assert letter["recording"].endswith(f"kraken.tsv:{len(path.read_bytes().splitlines())}")


def test_the_jobs_nbbo_is_one_market_rarely_crossed(session: Session) -> None:
    """The simulator's venues quote one market: the NBBO the job computes from the recorded
    frames (every change, held until the next by event time) is seldom crossed."""
    samples = [
        Sample(
            int(r["event_time_ms"]), r["instrument"], (),
            Decimal(r["bid_price"]) if r["bid_price"] else None,
            Decimal(r["ask_price"]) if r["ask_price"] else None,
        )
        for r in session.result.nbbo
    ]
    measured = quality(samples)
    assert {"BTC-USD", "BTC-USDT"} <= set(measured)
    for instrument in ("BTC-USD", "BTC-USDT"):
        assert measured[instrument]["two_sided_s"] > 0.5
        assert measured[instrument]["crossed_fraction"] < 0.05, measured[instrument]
