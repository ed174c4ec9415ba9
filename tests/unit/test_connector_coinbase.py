"""The Coinbase connector: routing and sequence checks on recorded frames, then against the
in-process simulator with a list instead of Kafka and the job's compiled core on the other end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Connection, Route
from connectors.coinbase import CoinbaseConnector, subscribe_message
from schemas.codec import RawEnvelope, encode_envelope
from simulator import testing
from simulator.server import SimulatorServer
from simulator.testing import http_json, running_simulator, wait_until
from tests.unit.core_driver import Core, levels, published_books
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "coinbase"
PRODUCTS = ("BTC-USD", "ETH-USD")


class ListSink(testing.ListSink):
    """The shared test sink, with a filter for this exchange's envelopes."""

    def of(self, symbol: str, channel: str | None = None) -> list[RawEnvelope]:
        return [
            e for e in self.envelopes
            if e.symbol == symbol and (channel is None or e.channel == channel)
        ]


def base_settings(products: tuple[str, ...] = PRODUCTS, **connector_overrides: Any) -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    lifecycle = dataclasses.replace(
        settings.connectors, backoff_initial_s=0.02, backoff_max_s=0.2, **connector_overrides
    )
    coinbase = dataclasses.replace(
        settings.exchanges.coinbase, message_interval_ms=5, symbols={p: p for p in products}
    )
    return dataclasses.replace(
        settings,
        connectors=lifecycle,
        exchanges=dataclasses.replace(settings.exchanges, coinbase=coinbase),
    )


def pointed_at(settings: Settings, sim: SimulatorServer) -> Settings:
    coinbase = dataclasses.replace(settings.exchanges.coinbase, ws_url=f"{sim.ws_url}/coinbase")
    return dataclasses.replace(
        settings, exchanges=dataclasses.replace(settings.exchanges, coinbase=coinbase)
    )


def simulator(settings: Settings, **overrides: Any) -> Any:
    values = {"coinbase_products": PRODUCTS, "coinbase_depth_levels": 20,
              "rate_per_symbol": 200, **overrides}
    return running_simulator(settings, **values)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Running:
    """A connector task against a simulator; stopped (and awaited) on exit."""

    def __init__(self, sim: SimulatorServer, settings: Settings) -> None:
        self.sink = ListSink()
        self.connector = CoinbaseConnector(pointed_at(settings, sim), self.sink, random.Random(1))
        self.sim = sim
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self.connector.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.connector.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    def snapshots(self, product: str) -> list[RawEnvelope]:
        return [e for e in self.sink.of(product, "depth") if b'"type":"snapshot"' in e.payload]

    async def caught_up(self) -> None:
        """Pause the market and wait until everything sent has been received."""
        await http_json(f"{self.sim.http_url}/_sim/pause", "POST")

        def received_all() -> bool:
            conns = self.sim.status()["connections"]
            sent = sum(c["frames_sent"] for c in conns if c["exchange"] == "coinbase")
            return all(c["queued"] == 0 for c in conns) and sent == self.connector.stats.frames

        await wait_until(received_all, what="every frame received")


class FakeWs:
    """The socket side of a Connection for tests that feed frames by hand."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))


def l2(seq: int, product: str = "BTC-USD", kind: str = "update") -> bytes:
    frame = json.loads(fixture("doc_l2_update.json"))
    frame["sequence_num"] = seq
    frame["events"][0].update(product_id=product, type=kind)
    return json.dumps(frame, separators=(",", ":")).encode()


def rebuild(envelopes: list[RawEnvelope]) -> dict[str, str]:
    """One product's book as the job's core publishes it from the product's envelopes."""
    books, _ = published_books(envelopes)
    ((exchange, _),) = books
    assert exchange == "coinbase"
    return next(iter(books.values()))


# --- pure parts -----------------------------------------------------------------------------


def test_subscribe_messages_name_one_channel_each() -> None:
    assert json.loads(subscribe_message("subscribe", "level2", PRODUCTS)) == {
        "type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"
    }
    assert json.loads(subscribe_message("unsubscribe", "level2", ("BTC-USD",)))["type"] == (
        "unsubscribe"
    )
    assert json.loads(subscribe_message("subscribe", "heartbeats")) == {
        "type": "subscribe", "channel": "heartbeats"
    }


def test_route_documented_frames() -> None:
    connector = CoinbaseConnector(base_settings(), ListSink())
    assert connector.route(fixture("doc_l2_snapshot.json")) == Route("BTC-USD", "depth")
    assert connector.route(fixture("doc_l2_update.json")) == Route("BTC-USD", "depth")
    assert connector.route(fixture("doc_market_trades.json")) == Route("ETH-USD", "trade")
    assert connector.route(fixture("doc_heartbeats.json")) is None
    assert connector.route(fixture("doc_subscriptions.json")) is None
    assert connector.route(l2(3, "DOGE-USD")) is None  # not configured
    assert connector.route(b"not json") is None


def test_heartbeats_acks_and_garbage_without_a_session() -> None:
    sink = ListSink()
    connector = CoinbaseConnector(base_settings(), sink)
    conn = Connection(FakeWs())  # type: ignore[arg-type]  # only send() is used
    for frame in ("doc_heartbeats.json", "doc_subscriptions.json"):
        connector.handle_frame(conn, fixture(frame), 1)
    assert sink.envelopes == [] and sink.dead_letters == []
    assert (connector.cb_stats.heartbeats, connector.cb_stats.acks) == (1, 1)
    connector.handle_frame(conn, b'{"type":"error","message":"Failed to subscribe"}', 2)
    connector.handle_frame(conn, l2(5, "DOGE-USD"), 3)
    assert [d["stage"] for d in sink.dead_letters] == ["connector", "connector"]
    assert connector.stats.unroutable == 2


def test_a_frame_spanning_products_is_split_per_product() -> None:
    sink = ListSink()
    connector = CoinbaseConnector(base_settings(), sink)
    conn = Connection(FakeWs())  # type: ignore[arg-type]  # only send() is used
    frame = json.loads(l2(9))
    frame["events"].append({**frame["events"][0], "product_id": "ETH-USD"})
    # received just after the documented frames' times (the job rejects event times from the
    # future: 2023 frames received at 1970 would be)
    rx_ns = 1_675_974_800_000_000_000
    connector.handle_frame(conn, json.dumps(frame).encode(), rx_ns)
    trades = json.loads(fixture("doc_market_trades.json"))
    first = trades["events"][0]["trades"][0]
    trades["events"][0]["trades"] = [first, {**first, "trade_id": "1", "product_id": "BTC-USD"}]
    connector.handle_frame(conn, json.dumps(trades).encode(), rx_ns + 1)
    assert [(e.symbol, e.channel) for e in sink.envelopes] == [
        ("BTC-USD", "depth"), ("ETH-USD", "depth"), ("ETH-USD", "trade"), ("BTC-USD", "trade")
    ]
    for env in sink.envelopes:
        body = json.loads(env.payload)
        assert list(body) == ["channel", "client_id", "timestamp", "sequence_num", "events"]
    assert [json.loads(e.payload)["sequence_num"] for e in sink.envelopes] == [9, 9, 0, 0]
    # every part is a valid one-product frame: the job takes each without a dead letter
    for env in sink.envelopes:
        out = Core(env.instrument).process(encode_envelope(env))
        assert out.of("deadletter") == [], out.of("deadletter")
    assert connector.cb_stats.split == 2


def test_sequence_gaps_duplicates_and_late_messages() -> None:
    async def scenario() -> None:
        sink = ListSink()
        connector = CoinbaseConnector(base_settings(), sink)
        ws = FakeWs()
        conn = Connection(ws)  # type: ignore[arg-type]  # only send() is used
        connector.connection = conn
        await connector.on_open(conn)
        await wait_until(lambda: len(ws.sent) == 3, what="initial subscriptions")
        assert [(m["type"], m["channel"]) for m in ws.sent] == [
            ("subscribe", "level2"), ("subscribe", "market_trades"), ("subscribe", "heartbeats")
        ]
        for seq, product in ((0, "BTC-USD"), (1, "ETH-USD")):
            connector.handle_frame(conn, l2(seq, product, "snapshot"), seq)
        connector.handle_frame(conn, fixture("doc_subscriptions.json").replace(b":1,", b":2,"), 2)
        connector.handle_frame(conn, l2(3), 3)
        connector.handle_frame(conn, l2(3), 4)  # duplicate: dropped
        connector.handle_frame(conn, l2(6, "ETH-USD"), 5)  # 4 and 5 lost
        connector.handle_frame(conn, l2(5), 6)  # late: its data is kept
        connector.handle_frame(conn, l2(5), 7)  # now a duplicate
        assert [(e.symbol, e.channel, json.loads(e.payload).get("sequence_num"))
                for e in sink.envelopes] == [
            ("BTC-USD", "depth", 0), ("ETH-USD", "depth", 1), ("BTC-USD", "depth", 3),
            ("BTC-USD", "sync_lost", None), ("ETH-USD", "sync_lost", None),
            ("ETH-USD", "depth", 6), ("BTC-USD", "depth", 5),
        ]
        assert json.loads(sink.of("BTC-USD", "sync_lost")[0].payload) == {
            "reason": "sequence_num gap", "expected": 4, "got": 6
        }
        stats = connector.cb_stats
        assert (stats.gaps, stats.duplicates, stats.late, stats.sync_lost) == (1, 2, 1, 2)
        # every level2 product is resubscribed, one product at a time
        await wait_until(lambda: len(ws.sent) == 7, what="resubscriptions")
        assert [(m["type"], m["product_ids"]) for m in ws.sent[3:]] == [
            ("unsubscribe", ["BTC-USD"]), ("subscribe", ["BTC-USD"]),
            ("unsubscribe", ["ETH-USD"]), ("subscribe", ["ETH-USD"]),
        ]
        # a resync while the fresh snapshot is on its way does not ask again
        await connector.resync("BTC-USD")
        connector.handle_frame(conn, l2(7, "BTC-USD", "snapshot"), 8)
        await connector.resync("BTC-USD")  # now it does
        await wait_until(lambda: len(ws.sent) == 9, what="resync")
        assert [m["type"] for m in ws.sent[7:]] == ["unsubscribe", "subscribe"]
        assert stats.resubscribes == 3
        await conn.cancel_tasks()

    run(scenario)


def test_subscribe_messages_are_paced() -> None:
    async def scenario() -> None:
        settings = base_settings()
        slow = dataclasses.replace(settings.exchanges.coinbase, message_interval_ms=10_000)
        settings = dataclasses.replace(
            settings, exchanges=dataclasses.replace(settings.exchanges, coinbase=slow)
        )
        connector = CoinbaseConnector(settings, ListSink())
        ws = FakeWs()
        conn = Connection(ws)  # type: ignore[arg-type]  # only send() is used
        await connector.on_open(conn)
        await wait_until(lambda: ws.sent, what="the first subscription")
        with pytest.raises(TimeoutError):  # the next one waits out the interval
            await wait_until(lambda: len(ws.sent) > 1, within_s=0.2, what="a second message")
        await conn.cancel_tasks()

    run(scenario)


# --- against the simulator ------------------------------------------------------------------


def test_frames_become_envelopes_per_product_and_rebuild_the_true_book() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with simulator(settings, coinbase_heartbeat_ms=20, send_log_frames=100_000) as sim:
            async with Running(sim, settings) as r:
                await wait_until(
                    lambda: all(r.snapshots(p) for p in PRODUCTS)
                    and r.connector.cb_stats.heartbeats >= 3 and len(r.sink.envelopes) > 100,
                    what="snapshots, heartbeats and updates",
                )
                await r.caught_up()
                truths = {p: (await http_json(f"{sim.http_url}/_sim/coinbase/book?symbol={p}"))[1]
                          for p in PRODUCTS}
            (log,) = [c for c in sim.connections(with_frames=True) if c["exchange"] == "coinbase"]
        sink = r.sink
        assert {e.channel for e in sink.envelopes} == {"depth", "trade"}  # no heartbeats
        assert [e.connection_seq for e in sink.envelopes] == list(range(len(sink.envelopes)))
        for product in PRODUCTS:
            envs = sink.of(product)
            assert {(e.exchange, e.instrument, e.kafka_key) for e in envs} == {
                ("coinbase", product, f"coinbase:{product}".encode())
            }
            depth = sink.of(product, "depth")
            assert b'"type":"snapshot"' in depth[0].payload  # the book starts with a snapshot
            book = rebuild(envs)
            assert book["status"] == "LIVE"
            assert levels(book["bids"]) == truths[product]["bids"]
            assert levels(book["asks"]) == truths[product]["asks"]
        # byte for byte what the simulator sent, minus heartbeats and acknowledgements
        market = [f.encode() for f in log["frames"]
                  if '"channel":"l2_data"' in f or '"channel":"market_trades"' in f]
        assert [e.payload for e in sink.envelopes] == market

    run(scenario)


def test_dropped_message_marks_every_book_and_resubscribes_level2() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with simulator(settings) as sim, Running(sim, settings) as r:
            await wait_until(lambda: all(r.snapshots(p) for p in PRODUCTS), what="first sync")
            drop = "/_sim/faults/drop?exchange=coinbase&symbol=ETH-USD&channel=depth&count=1"
            await http_json(f"{sim.http_url}{drop}", "POST")
            await wait_until(
                lambda: all(len(r.snapshots(p)) == 2 for p in PRODUCTS), what="fresh snapshots"
            )
            await r.caught_up()
            stats = r.connector.cb_stats
            assert (stats.gaps, stats.sync_lost, stats.resubscribes) == (1, 2, 2)
            (conn,) = sim.status()["connections"]
            assert conn["messages_received"] == 3 + 4  # subscriptions + 2 x (unsub + sub)
            for product in PRODUCTS:
                envs = r.sink.of(product)
                lost = [i for i, e in enumerate(envs) if e.channel == "sync_lost"]
                assert len(lost) == 1
                assert envs.index(r.snapshots(product)[1]) > lost[0]
                _, truth = await http_json(f"{sim.http_url}/_sim/coinbase/book?symbol={product}")
                book = rebuild(envs)
                assert book["status"] == "LIVE"
                assert levels(book["bids"]) == truth["bids"]
                assert levels(book["asks"]) == truth["asks"]

    run(scenario)


def test_duplicated_and_reordered_messages_are_produced_once() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with simulator(settings, send_log_frames=100_000) as sim:
            async with Running(sim, settings) as r:
                await wait_until(lambda: all(r.snapshots(p) for p in PRODUCTS), what="sync")
                for fault in ("duplicate", "reorder"):
                    url = f"/_sim/faults/{fault}?exchange=coinbase&channel=trade&count=1"
                    await http_json(f"{sim.http_url}{url}", "POST")
                await wait_until(lambda: sim.faults.pending()["frames"] == [], what="faults")
                # the held message goes out after the next trade of its own product
                await wait_until(
                    lambda: r.connector.cb_stats.late == 1, within_s=30, what="the late message"
                )
                await r.caught_up()
            (log,) = [c for c in sim.connections(with_frames=True) if c["exchange"] == "coinbase"]
        stats = r.connector.cb_stats
        assert (stats.duplicates, stats.late, stats.gaps) == (1, 1, 1)
        seqs = [json.loads(e.payload)["sequence_num"] for e in r.sink.envelopes
                if e.channel != "sync_lost"]
        assert len(seqs) == len(set(seqs))  # nothing produced twice
        sent = {json.loads(f)["sequence_num"] for f in log["frames"]
                if '"channel":"l2_data"' in f or '"channel":"market_trades"' in f}
        assert set(seqs) == sent  # and nothing lost: the late message was kept

    run(scenario)


def test_reconnect_after_a_dropped_connection_subscribes_again() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with simulator(settings) as sim, Running(sim, settings) as r:
            await wait_until(lambda: all(r.snapshots(p) for p in PRODUCTS), what="first sync")
            _, body = await http_json(f"{sim.http_url}/_sim/faults/disconnect?exchange=coinbase",
                                      "POST")
            assert len(body["disconnected"]) == 1
            await wait_until(lambda: all(len(r.snapshots(p)) == 2 for p in PRODUCTS),
                             what="second sync")
            stats = r.connector.cb_stats
        assert stats.connections == 2 and stats.gaps == 0  # numbering restarts per connection
        envs = r.sink.envelopes
        second = [e for e in envs if e.connection_id != envs[0].connection_id]
        assert second and second[0].connection_seq == 0
        for product in PRODUCTS:
            mine = [e for e in second if e.symbol == product and e.channel == "depth"]
            assert b'"type":"snapshot"' in mine[0].payload
            assert json.loads(mine[0].payload)["sequence_num"] < 10

    run(scenario)


def test_heartbeats_do_not_keep_a_data_less_socket_alive() -> None:
    # the connector wants BTC-USD only; the market moves ETH-USD: heartbeats, no data
    settings = base_settings(products=("BTC-USD",), stale_timeout_s=0.3)

    async def scenario() -> None:
        async with (
            simulator(settings, rate_per_symbol=0, coinbase_heartbeat_ms=20) as sim,
            Running(sim, settings) as r,
        ):
            stats = r.connector.cb_stats

            async def drive() -> None:
                while True:
                    sim.step("coinbase", "ETH-USD")
                    await asyncio.sleep(0.01)

            driver = asyncio.create_task(drive())
            try:
                await wait_until(lambda: stats.stale_timeouts >= 1 and stats.connections >= 2,
                                 what="a stale timeout despite heartbeats")
            finally:
                driver.cancel()
        assert stats.heartbeats >= 5
        # only BTC-USD snapshots, and the markers of the connections the stale timer ended
        assert {e.channel for e in r.sink.envelopes} == {"depth", "sync_lost"}
        assert all(
            b'"type":"snapshot"' in e.payload for e in r.sink.envelopes if e.channel == "depth"
        )

    run(scenario)


def test_silent_socket_is_dropped_by_the_stale_timer() -> None:
    settings = base_settings(stale_timeout_s=0.3)

    async def scenario() -> None:
        async with simulator(settings) as sim, Running(sim, settings) as r:
            await wait_until(lambda: all(r.snapshots(p) for p in PRODUCTS), what="first sync")
            await http_json(f"{sim.http_url}/_sim/faults/silent?exchange=coinbase", "POST")
            await wait_until(lambda: r.connector.stats.stale_timeouts >= 1
                             and all(len(r.snapshots(p)) == 2 for p in PRODUCTS),
                             what="stale timeout and a new connection")

    run(scenario)


def test_resync_rebuilds_one_product_only() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with simulator(settings) as sim, Running(sim, settings) as r:
            await wait_until(lambda: all(r.snapshots(p) for p in PRODUCTS), what="first sync")
            await r.connector.resync("ETH-USD")
            await r.connector.resync("NOPE-USD")  # ignored
            await wait_until(lambda: len(r.snapshots("ETH-USD")) == 2, what="fresh snapshot")
            await r.caught_up()
            _, truth = await http_json(f"{sim.http_url}/_sim/coinbase/book?symbol=ETH-USD")
            (conn,) = sim.status()["connections"]
        assert conn["messages_received"] == 3 + 2  # subscriptions + unsubscribe + subscribe
        assert len(r.snapshots("BTC-USD")) == 1
        assert r.sink.of("ETH-USD", "sync_lost") == []
        book = rebuild(r.sink.of("ETH-USD"))
        assert book["status"] == "LIVE"
        assert (levels(book["bids"]), levels(book["asks"])) == (truth["bids"], truth["asks"])

    run(scenario)
