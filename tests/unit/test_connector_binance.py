"""The Binance connector against the in-process simulator, with a list instead of Kafka."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Backoff, Connection, RestClient, Route
from connectors.binance import BinanceConnector, WeightBudget, depth_weight
from schemas.codec import RawEnvelope
from simulator import testing
from simulator.server import SimulatorServer
from simulator.testing import http_json, pointed_at, running_simulator, wait_until
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "binance"


class ListSink(testing.ListSink):
    """The shared test sink, with a filter for this exchange's envelopes."""

    def of(self, symbol: str, channel: str | None = None) -> list[RawEnvelope]:
        return [
            e for e in self.envelopes
            if e.symbol == symbol and (channel is None or e.channel == channel)
        ]


def base_settings(**connector_overrides: Any) -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    lifecycle = dataclasses.replace(
        settings.connectors, backoff_initial_s=0.02, backoff_max_s=0.2, **connector_overrides
    )
    binance = dataclasses.replace(settings.exchanges.binance, snapshot_stagger_ms=20)
    return dataclasses.replace(
        settings,
        connectors=lifecycle,
        exchanges=dataclasses.replace(settings.exchanges, binance=binance),
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def data(envelope: RawEnvelope) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(envelope.payload)
    return frame["data"] if envelope.channel != "snapshot" else frame


class Running:
    """A connector task against a simulator; stopped (and awaited) on exit."""

    def __init__(self, sim: SimulatorServer, settings: Settings) -> None:
        self.sink = ListSink()
        self.connector = BinanceConnector(pointed_at(settings, sim), self.sink, random.Random(1))
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self.connector.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.connector.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)


# --- pure parts -----------------------------------------------------------------------------


def test_url_combines_depth_and_trade_streams_of_configured_symbols() -> None:
    settings = base_settings()
    connector = BinanceConnector(settings, ListSink())
    assert connector.url() == (
        "ws://127.0.0.1:8765/binance/stream?streams="
        "btcusdt@depth@100ms/btcusdt@trade/ethusdt@depth@100ms/ethusdt@trade"
    )


def test_route_reads_only_the_stream_name() -> None:
    settings = base_settings()
    binance = dataclasses.replace(
        settings.exchanges.binance, symbols={"BNBBTC": "BNB-BTC"}, depth_stream="depth@100ms"
    )
    settings = dataclasses.replace(
        settings, exchanges=dataclasses.replace(settings.exchanges, binance=binance)
    )
    connector = BinanceConnector(settings, ListSink())
    depth = (FIXTURES / "combined_depth_update.json").read_bytes()
    trade = (FIXTURES / "combined_trade.json").read_bytes()
    assert connector.route(depth) == Route("BNBBTC", "depth")
    assert connector.route(trade) == Route("BNBBTC", "trade")
    reordered = json.dumps({"data": json.loads(trade)["data"], "stream": "bnbbtc@trade"})
    assert connector.route(reordered.encode()) == Route("BNBBTC", "trade")
    assert connector.route(b'{"result":null,"id":1}') is None
    assert connector.route(b'{"stream":"xrpusdt@trade","data":{}}') is None
    assert connector.route(b"not json") is None


def test_backoff_is_capped_exponential_with_jitter() -> None:
    backoff = Backoff(0.5, 4.0, 0.5, random.Random(3))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_depth_weight_follows_the_documented_table() -> None:
    assert [depth_weight(n) for n in (100, 101, 500, 1000, 5000)] == [5, 25, 25, 50, 250]


def test_weight_budget_admits_up_to_the_limit_without_waiting() -> None:
    async def scenario() -> None:
        budget = WeightBudget(100)
        for _ in range(2):
            await asyncio.wait_for(budget.acquire(50), 1)
        with pytest.raises(TimeoutError):  # the third would exceed the minute's budget
            await asyncio.wait_for(budget.acquire(50), 0.05)

    run(scenario)


# --- against the simulator ------------------------------------------------------------------


def test_frames_become_envelopes_and_a_snapshot_follows_each_first_depth_event() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with running_simulator(settings, rate_per_symbol=200, depth_levels=20) as sim:
            before_ns = time.time_ns()
            async with Running(sim, settings) as r:
                await wait_until(lambda: r.connector.stats.snapshots == 2, what="2 snapshots")
            sink = r.sink
        after_ns = time.time_ns()
        assert {e.connection_id for e in sink.envelopes} == {sink.envelopes[0].connection_id}
        assert [e.connection_seq for e in sink.envelopes] == list(range(len(sink.envelopes)))
        for symbol, instrument in (("BTCUSDT", "BTC-USDT"), ("ETHUSDT", "ETH-USDT")):
            envs = sink.of(symbol)
            assert {(e.exchange, e.instrument) for e in envs} == {("binance", instrument)}
            assert all(e.kafka_key == f"binance:{symbol}".encode() for e in envs)
            for e in envs:
                assert before_ns <= e.receive_time_ns <= after_ns
                if e.channel != "snapshot":
                    frame = json.loads(e.payload)
                    assert frame["stream"] == f"{symbol.lower()}@" + (
                        "depth@100ms" if e.channel == "depth" else "trade")
                    # received after the simulator stamped it (same machine clock)
                    assert e.receive_time_ns >= frame["data"]["E"] * 1_000_000
            (snapshot,) = sink.of(symbol, "snapshot")
            first_depth = sink.of(symbol, "depth")[0]
            assert first_depth.connection_seq < snapshot.connection_seq
            assert data(snapshot)["lastUpdateId"] >= data(first_depth)["U"]

    run(scenario)


def apply_binance_sync(envelopes: list[RawEnvelope]) -> tuple[int, dict[str, str], dict[str, str]]:
    """Binance's documented procedure over one connection's envelopes of one symbol."""
    snapshot = next(e for e in envelopes if e.channel == "snapshot")
    snap = data(snapshot)
    last = snap["lastUpdateId"]
    bids = {p: q for p, q in snap["bids"]}
    asks = {p: q for p, q in snap["asks"]}
    diffs = [data(e) for e in envelopes if e.channel == "depth" and data(e)["u"] > last]
    if diffs:
        assert diffs[0]["U"] <= last + 1 <= diffs[0]["u"]
    for event in diffs:
        assert event["U"] == last + 1, "gap"
        for levels, changes in ((bids, event["b"]), (asks, event["a"])):
            for price, qty in changes:
                if float(qty) == 0:
                    levels.pop(price, None)
                else:
                    levels[price] = qty
        last = event["u"]
    return last, bids, asks


def test_envelopes_are_enough_to_rebuild_the_true_book() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=200, depth_levels=20) as sim,
            Running(sim, settings) as r,
        ):
            await wait_until(lambda: r.connector.stats.snapshots == 2, what="snapshots")
            await http_json(f"{sim.http_url}/_sim/pause", "POST")
            for symbol in ("BTCUSDT", "ETHUSDT"):
                _, truth = await http_json(f"{sim.http_url}/_sim/binance/book?symbol={symbol}")

                def caught_up(s: str = symbol, final: int = truth["lastUpdateId"]) -> bool:
                    return bool(data(r.sink.of(s, "depth")[-1])["u"] == final)

                await wait_until(caught_up, what=f"{symbol} diffs up to the pause")
                last, bids, asks = apply_binance_sync(r.sink.of(symbol))
                assert last == truth["lastUpdateId"]
                assert bids == {p: q for p, q in truth["bids"]}
                assert asks == {p: q for p, q in truth["asks"]}

    run(scenario)


def test_reconnect_after_a_dropped_connection_resyncs_with_a_new_snapshot() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=200, depth_levels=20) as sim,
            Running(sim, settings) as r,
        ):
            await wait_until(lambda: r.connector.stats.snapshots == 2, what="first sync")
            _, body = await http_json(f"{sim.http_url}/_sim/faults/disconnect", "POST")
            assert len(body["disconnected"]) == 1
            await wait_until(lambda: r.connector.stats.snapshots == 4, what="second sync")
            stats = r.connector.stats
        assert stats.connections == 2
        envs = r.sink.envelopes
        first_id = envs[0].connection_id
        second = [e for e in envs if e.connection_id != first_id]
        assert second and second[0].connection_seq == 0
        assert len({e.connection_id for e in envs}) == 2
        assert all(e.connection_id == second[0].connection_id for e in second)  # no mixing
        for symbol in ("BTCUSDT", "ETHUSDT"):
            snaps = [e for e in second if e.symbol == symbol and e.channel == "snapshot"]
            depth = [e for e in second if e.symbol == symbol and e.channel == "depth"]
            assert len(snaps) == 1
            assert depth[0].connection_seq < snaps[0].connection_seq
            assert data(snaps[0])["lastUpdateId"] >= data(depth[0])["U"]

    run(scenario)


def test_snapshot_is_retried_after_http_429() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with running_simulator(settings, rate_per_symbol=200) as sim:
            fault = "/_sim/faults/rest?exchange=binance&status=429&retry_after=0&count=1"
            await http_json(f"{sim.http_url}{fault}", "POST")
            async with Running(sim, settings) as r:
                await wait_until(lambda: r.connector.stats.snapshots == 2, what="snapshots")
        assert r.connector.stats.snapshot_retries == 1
        assert r.connector.stats.snapshot_failures == 0
        assert len(r.sink.of("BTCUSDT", "snapshot")) == len(r.sink.of("ETHUSDT", "snapshot")) == 1

    run(scenario)


def test_rest_client_honours_retry_after_for_later_requests() -> None:
    async def scenario() -> None:
        async with running_simulator(base_settings(), rate_per_symbol=0) as sim:
            fault = "/_sim/faults/rest?exchange=binance&status=418&retry_after=30&count=1"
            await http_json(f"{sim.http_url}{fault}", "POST")
            client = RestClient(timeout_s=5)
            url = f"{sim.http_url}/binance/api/v3/depth?symbol=BTCUSDT&limit=5"
            result = await client.get(url)
            assert result.status == 418
            assert client.blocked_until - time.monotonic() > 25
            with pytest.raises(TimeoutError):  # the next request waits out the ban
                await asyncio.wait_for(client.get(url), 0.1)

    run(scenario)


def test_silent_socket_is_dropped_by_the_stale_timer_and_reconnected() -> None:
    settings = base_settings(stale_timeout_s=0.2)

    async def scenario() -> None:
        # rate 0: the simulator accepts the connection and then says nothing
        async with (
            running_simulator(settings, rate_per_symbol=0) as sim,
            Running(sim, settings) as r,
        ):
            stats = r.connector.stats
            await wait_until(
                lambda: stats.stale_timeouts >= 2 and stats.connections >= 3,
                what="stale timeouts and reconnects",
            )
        # no market data; each lost connection marks the books it carried
        assert {e.channel for e in r.sink.envelopes} == {"sync_lost"}
        assert {e.symbol for e in r.sink.envelopes} == {"BTCUSDT", "ETHUSDT"}

    run(scenario)


def test_stop_ends_run_without_reconnecting() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with running_simulator(settings, rate_per_symbol=100) as sim:
            async with Running(sim, settings) as r:
                await wait_until(lambda: r.sink.envelopes, what="an envelope")
            assert r.connector.connection is None
            assert r.connector.stats.connections == 1
            await wait_until(
                lambda: sim.status()["exchanges"]["binance"]["connections"] == 0,
                what="server sees the close",
            )
            (log,) = sim.connections()
            assert log["close_reason"] == "closed by client (1000)"

    run(scenario)


def test_frames_that_cannot_be_routed_go_to_dead_letters() -> None:
    sink = ListSink()
    connector = BinanceConnector(base_settings(), sink)
    conn = Connection(None)  # type: ignore[arg-type]  # handle_frame never touches the socket
    connector.handle_frame(conn, b"{not json", 123)
    connector.handle_frame(conn, b'{"stream":"dogeusdt@trade","data":{}}', 124)
    assert sink.envelopes == []
    assert [d["stage"] for d in sink.dead_letters] == ["connector", "connector"]
    assert base64.b64decode(sink.dead_letters[0]["value_b64"]) == b"{not json"
    assert sink.dead_letters[1]["receive_time_ns"] == 124
    assert connector.stats.unroutable == 2


def test_socket_gone_silent_mid_stream_is_replaced_and_resynced() -> None:
    settings = base_settings(stale_timeout_s=0.5)

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=50) as sim,
            Running(sim, settings) as r,
        ):
            await wait_until(lambda: r.connector.stats.snapshots == 2, what="first snapshots")
            await http_json(f"{sim.http_url}/_sim/faults/silent?exchange=binance", "POST")
            await wait_until(
                lambda: r.connector.stats.stale_timeouts == 1 and r.connector.stats.snapshots == 4,
                what="stale timeout, reconnect and new snapshots",
            )
        connections = [e.connection_id for e in r.sink.envelopes]
        assert len(set(connections)) == 2
        second = [e for e in r.sink.envelopes if e.connection_id == connections[-1]]
        assert {e.symbol for e in second if e.channel == "snapshot"} == {"BTCUSDT", "ETHUSDT"}

    run(scenario)
