"""Faults injected by the simulator become the intervals of the ``gaps`` table: the
connectors run against the in-process simulator, their envelopes go through the job's core
(the offline driver, as the job drives it), its resync requests are answered as the control
topic's consumer does, and the gap rows the core writes are compared with the faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.base import WsConnector
from connectors.binance import BinanceConnector
from connectors.coinbase import CoinbaseConnector
from connectors.kraken import KrakenConnector
from jobs.backfill import PartitionRange, native_partition
from jobs.offline import CoreRun
from schemas.codec import RawEnvelope, encode_envelope
from simulator import testing
from simulator.server import SimulatorServer
from simulator.testing import http_json, pointed_at, running_simulator, wait_until
from tests.unit.core_driver import core_settings
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KRAKEN_PAIRS = {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USD"}
COINBASE_PRODUCTS = ("BTC-USD", "ETH-USD")


def base_settings() -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    lifecycle = dataclasses.replace(
        settings.connectors, backoff_initial_s=0.02, backoff_max_s=0.2
    )
    binance = dataclasses.replace(settings.exchanges.binance, snapshot_stagger_ms=20)
    kraken = dataclasses.replace(
        settings.exchanges.kraken, symbols=KRAKEN_PAIRS, message_interval_ms=10
    )
    coinbase = dataclasses.replace(
        settings.exchanges.coinbase,
        message_interval_ms=5,
        symbols={p: p for p in COINBASE_PRODUCTS},
    )
    sim = dataclasses.replace(
        settings.simulator,
        kraken_symbols=tuple(KRAKEN_PAIRS),
        coinbase_products=COINBASE_PRODUCTS,
        coinbase_depth_levels=20,
    )
    exchanges = dataclasses.replace(
        settings.exchanges, binance=binance, coinbase=coinbase, kraken=kraken
    )
    return dataclasses.replace(settings, connectors=lifecycle, simulator=sim, exchanges=exchanges)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 90))


class Pipeline:
    """A connector against the simulator, its envelopes through the core as they arrive (a
    frame per bundle), and the core's resync requests sent back to the connector."""

    def __init__(self, sim: SimulatorServer, settings: Settings, exchange: str) -> None:
        self.sink = testing.ListSink()
        pointed = pointed_at(settings, sim)
        kinds: dict[str, Callable[..., WsConnector]] = {
            "binance": BinanceConnector,
            "coinbase": CoinbaseConnector,
            "kraken": KrakenConnector,
        }
        self.connector: Any = kinds[exchange](pointed, self.sink, random.Random(1))
        self.exchange = exchange
        self.core = CoreRun(core_settings(top_n=10), bundle_frames=1)
        self._fed = 0
        self._answered = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Pipeline:
        self._tasks = [
            asyncio.create_task(self.connector.run()),
            asyncio.create_task(self._answer_resyncs()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.connector.stop()
        self._tasks[1].cancel()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)

    def catch_up(self) -> None:
        new = self.sink.envelopes[self._fed :]
        self.core.feed((encode_envelope(e), e.receive_time_ns // 1_000_000) for e in new)
        self._fed += len(new)

    async def _answer_resyncs(self) -> None:
        """What the control topic's consumer does with the job's resync requests."""
        while True:
            self.catch_up()
            control = self.core.records.get("control", [])
            for record in control[self._answered :]:
                await self.connector.resync(json.loads(record)["symbol"])
            self._answered = len(control)
            await asyncio.sleep(0.01)

    def gaps(self) -> list[dict[str, Any]]:
        """The gap rows as ``FINAL`` reads them: per interval, its closed row if written."""
        self.catch_up()
        final: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in self.core.rows("gaps"):
            key = (row["exchange"], row["symbol"], row["start_ms"], row["start_version"])
            if key not in final or row["closed"] >= final[key]["closed"]:
                final[key] = row
        return sorted(final.values(), key=lambda r: (r["start_ms"], r["symbol"]))

    def in_sync(self) -> bool:
        """Every book LIVE: each has had an interval and none is open."""
        gaps = self.gaps()
        symbols = set(self.connector.book_symbols())
        return {g["symbol"] for g in gaps} >= symbols and all(g["closed"] for g in gaps)

    def injected(self) -> list[tuple[str, str]]:
        """(symbol, kind) of every interval but the books' first sync."""
        return [(g["symbol"], g["kind"]) for g in self.gaps() if g["kind"] != "startup"]


async def fault(sim: SimulatorServer, path: str) -> dict[str, Any]:
    status, body = await http_json(f"{sim.http_url}/_sim/faults/{path}", "POST")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def check_intervals(p: Pipeline) -> None:
    """Every interval closed, its bounds the receive times of the frames that took its book
    out of sync and back, and a connector's loss starting at its ``sync_lost`` envelope."""
    lost = {
        (e.symbol, e.receive_time_ns // 1_000_000)
        for e in p.sink.envelopes
        if e.channel == "sync_lost"
    }
    received = {e.receive_time_ns // 1_000_000 for e in p.sink.envelopes}
    for g in p.gaps():
        assert g["closed"] == 1 and g["exchange"] == p.exchange, g
        assert g["start_ms"] <= g["end_ms"] and {g["start_ms"], g["end_ms"]} <= received, g
        assert g["seq_after"] is not None
        if g["kind"] == "sync_lost":
            assert (g["symbol"], g["start_ms"]) in lost, g
            assert g["reason"].startswith("connector: connection"), g


def test_binance_drop_and_disconnect_are_the_gaps_recorded() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=50) as sim,
            Pipeline(sim, settings, "binance") as p,
        ):
            await wait_until(p.in_sync, what="every book LIVE")
            assert p.injected() == []
            await fault(sim, "drop?exchange=binance&symbol=BTCUSDT&channel=depth&count=1")
            await wait_until(lambda: len(p.gaps()) == 3 and p.in_sync(), what="the drop healed")
            assert p.injected() == [("BTCUSDT", "gap")]
            body = await fault(sim, "disconnect?exchange=binance")
            assert len(body["disconnected"]) == 1
            await wait_until(lambda: len(p.gaps()) == 5 and p.in_sync(), what="reconnected")
            injected = dict(sim.faults.injected)
        assert injected.get("drop") == 1
        check_intervals(p)
        assert p.injected()[0] == ("BTCUSDT", "gap")
        assert sorted(p.injected()[1:]) == [("BTCUSDT", "sync_lost"), ("ETHUSDT", "sync_lost")]
        [gap] = [g for g in p.gaps() if g["kind"] == "gap"]
        assert gap["seq_before"] is not None and gap["seq_after"] > gap["seq_before"]

    run(scenario)


def test_kraken_checksum_and_disconnect_are_the_gaps_recorded() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=50, depth_levels=40) as sim,
            Pipeline(sim, settings, "kraken") as p,
        ):
            await wait_until(p.in_sync, what="every book LIVE")
            assert p.injected() == []
            await fault(sim, "checksum?exchange=kraken&symbol=BTC/USD&count=1")
            await wait_until(lambda: len(p.gaps()) == 3 and p.in_sync(), what="the resync")
            assert p.injected() == [("BTC/USD", "checksum")]
            body = await fault(sim, "disconnect?exchange=kraken")
            assert len(body["disconnected"]) == 1
            await wait_until(lambda: len(p.gaps()) == 5 and p.in_sync(), what="reconnected")
            injected = dict(sim.faults.injected)
        assert injected.get("checksum") == 1
        check_intervals(p)
        assert p.injected()[0] == ("BTC/USD", "checksum")
        assert sorted(p.injected()[1:]) == [("BTC/USD", "sync_lost"), ("ETH/USD", "sync_lost")]
        [mismatch] = [g for g in p.gaps() if g["kind"] == "checksum"]
        assert mismatch["reason"].startswith("checksum mismatch"), mismatch

    run(scenario)


def test_coinbase_drop_is_a_connector_loss_of_every_book_of_the_connection() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=100) as sim,
            Pipeline(sim, settings, "coinbase") as p,
        ):
            await wait_until(p.in_sync, what="every book LIVE")
            assert p.injected() == []
            await fault(sim, "drop?exchange=coinbase&symbol=ETH-USD&channel=depth&count=1")
            await wait_until(lambda: len(p.gaps()) == 4 and p.in_sync(), what="resubscribed")
            injected = dict(sim.faults.injected)
        assert injected.get("drop") == 1
        # the connector finds the hole in its sequence numbers and marks every level2 book
        assert sorted(p.injected()) == [("BTC-USD", "sync_lost"), ("ETH-USD", "sync_lost")]
        for g in p.gaps():
            assert g["closed"] == 1, g
            if g["kind"] == "sync_lost":
                assert g["reason"].startswith("connector: sequence_num gap"), g

    run(scenario)


# --- a faulted day, by hand: the live job's core and the batch backfill's agree ---------------

DAY_START_MS = 1795996800000  # 2026-11-30 00:00:00 UTC
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def _binance(symbol: str, channel: str, payload: str, at_ms: int, connection: str) -> bytes:
    return encode_envelope(
        RawEnvelope(
            instrument={"BTCUSDT": "BTC-USDT", "ETHUSDT": "ETH-USDT"}[symbol],
            exchange="binance",
            symbol=symbol,
            channel=channel,
            receive_time_ns=at_ms * 1_000_000,
            connection_id=connection,
            connection_seq=0,
            payload=payload.encode(),
        )
    )


def faulted_day() -> tuple[list[tuple[bytes, int]], dict[tuple[str, str], tuple[int, int, int]]]:
    """Raw records (value, timestamp) of two Binance books over a day with faults in it, and
    per (symbol, kind) what the day's completeness report must say: intervals, ms out of sync
    within the day, how many are still open at its end."""
    t = DAY_START_MS
    frames: list[tuple[str, str, str, int, str]] = []

    def snapshot(symbol: str, last: int, at: int, conn: str = "c1") -> None:
        body = {"lastUpdateId": last, "bids": [["100.0", "1"]], "asks": [["101.0", "1"]]}
        frames.append((symbol, "snapshot", json.dumps(body), at, conn))

    def depth(symbol: str, first: int, last: int, at: int, conn: str = "c1") -> None:
        body = {"stream": f"{symbol.lower()}@depth@100ms", "data": {
            "e": "depthUpdate", "E": at, "s": symbol, "U": first, "u": last,
            "b": [["100.5", "1"]], "a": []}}  # fmt: skip
        frames.append((symbol, "depth", json.dumps(body), at, conn))

    def lost(symbol: str, at: int, why: str) -> None:
        frames.append((symbol, "sync_lost", json.dumps({"reason": why}), at, "c1"))

    snapshot("BTCUSDT", 100, t + 10_000)  # in sync from its first frame: a 0 ms startup
    snapshot("ETHUSDT", 500, t + 20_000)
    depth("BTCUSDT", 101, 101, t + HOUR_MS)
    depth("BTCUSDT", 105, 105, t + 2 * HOUR_MS)  # a dropped update: out of sync
    depth("BTCUSDT", 106, 106, t + 2 * HOUR_MS + 1_000)  # buffered
    snapshot("BTCUSDT", 110, t + 2 * HOUR_MS + 600_000)  # the resync: 600 s
    lost("BTCUSDT", t + 5 * HOUR_MS, "connection c1 ended")  # a lost connection
    snapshot("BTCUSDT", 200, t + 5 * HOUR_MS + 30_000, "c2")  # 30 s
    lost("ETHUSDT", t + 12 * HOUR_MS, "kafka delivery failed: timed out")  # never heals
    lost("BTCUSDT", t + DAY_MS - 60_000, "connection c2 ended")  # across midnight
    snapshot("BTCUSDT", 300, t + DAY_MS + 60_000, "c3")
    records = [(_binance(*f), f[3]) for f in frames]
    expected = {
        ("BTCUSDT", "startup"): (1, 0, 0),
        ("BTCUSDT", "gap"): (1, 600_000, 0),
        ("BTCUSDT", "sync_lost"): (2, 30_000 + 60_000, 0),
        ("ETHUSDT", "startup"): (1, 0, 0),
        ("ETHUSDT", "sync_lost"): (1, 12 * HOUR_MS, 1),  # open: until the day's end
    }
    return records, expected


def backfill_tables(settings: Settings, records: list[tuple[bytes, int]]) -> dict[str, Any]:
    """The batch backfill's core over the records: (RowBinary, rows) per table."""
    part = PartitionRange(partition=0, start=0, end=len(records))
    books = native_partition(settings, part)
    books.feed_batch([value for value, _ in records], [ts for _, ts in records])
    books.finish()
    return {table: (data, rows) for table, data, rows in books.take_tables(0)}


def test_the_live_core_and_the_backfill_write_the_same_gap_rows() -> None:
    settings = core_settings()
    records, _ = faulted_day()
    live = CoreRun(settings)
    live.feed(records)
    live.finish()
    tables = backfill_tables(settings, records)
    assert tables["gaps"] == live.tables["gaps"]
    rows = live.rows("gaps")
    # an open row when each interval opened, a closed one when it closed (ETHUSDT's loss never)
    assert [(r["symbol"], r["kind"], r["closed"]) for r in rows] == [
        ("BTCUSDT", "startup", 0), ("BTCUSDT", "startup", 1),
        ("ETHUSDT", "startup", 0), ("ETHUSDT", "startup", 1),
        ("BTCUSDT", "gap", 0), ("BTCUSDT", "gap", 1),
        ("BTCUSDT", "sync_lost", 0), ("BTCUSDT", "sync_lost", 1),
        ("ETHUSDT", "sync_lost", 0),
        ("BTCUSDT", "sync_lost", 0), ("BTCUSDT", "sync_lost", 1),
    ]  # fmt: skip
    gap = rows[5]
    assert (gap["start_ms"] - DAY_START_MS, gap["end_ms"] - gap["start_ms"]) == (
        2 * HOUR_MS, 600_000)  # fmt: skip
    assert (gap["seq_before"], gap["seq_after"], gap["messages"]) == (101, 110, 2)
    assert rows[8]["reason"] == "connector: kafka delivery failed: timed out"
    assert rows[-1]["date"].isoformat() == "2026-11-30"  # the date it started
