"""The Kraken connector: routing of recorded frames, and against the in-process simulator
with a list instead of Kafka and the job's compiled core on the other end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Route
from connectors.kraken import KrakenConnector
from jobs.offline import CoreRun
from jobs.sinks.redis_books import book_key
from schemas.codec import RawEnvelope, encode_envelope
from simulator import testing
from simulator.server import SimulatorServer
from simulator.testing import http_json, pointed_at, running_simulator, wait_until
from tests.unit.core_driver import BOOK_FIELDS, PREFIX, Core, core_settings, envelope, levels
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "kraken"
PAIRS = {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USD", "BTC/USDT": "BTC-USDT"}


class ListSink(testing.ListSink):
    """The shared test sink, with a filter for this exchange's envelopes."""

    def of(self, symbol: str, kind: str | None = None) -> list[RawEnvelope]:
        """A pair's envelopes; ``kind``: "snapshot" or "update" book frames only."""
        return [
            e for e in self.envelopes
            if e.symbol == symbol and (kind is None or (
                e.channel == "depth" and frame(e)["type"] == kind))
        ]


def frame(envelope: RawEnvelope) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(envelope.payload, parse_float=Decimal)
    return decoded


def base_settings(pairs: dict[str, str] = PAIRS, **kraken: Any) -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    lifecycle = dataclasses.replace(
        settings.connectors, backoff_initial_s=0.02, backoff_max_s=0.2
    )
    config = dataclasses.replace(
        settings.exchanges.kraken, symbols=pairs, message_interval_ms=10, **kraken
    )
    sim = dataclasses.replace(settings.simulator, kraken_symbols=tuple(pairs))
    return dataclasses.replace(
        settings,
        connectors=lifecycle,
        simulator=sim,
        exchanges=dataclasses.replace(settings.exchanges, kraken=config),
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


class Running:
    """A connector task against a simulator; stopped (and awaited) on exit."""

    def __init__(self, sim: SimulatorServer, settings: Settings) -> None:
        self.sink = ListSink()
        self.connector = KrakenConnector(pointed_at(settings, sim), self.sink, random.Random(1))
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self.connector.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.connector.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    def synced(self, connections: int = 1) -> bool:
        """Every pair has had a book snapshot on each of ``connections`` connections."""
        return all(
            len({e.connection_id for e in self.sink.of(p, "snapshot")}) >= connections
            for p in self.connector.symbols
        )


class Job:
    """The job's side of the pipeline, its compiled core, fed with the envelopes as they
    arrive (one frame per bundle: each processed at once)."""

    def __init__(self, sink: ListSink) -> None:
        self.sink = sink
        self.run = CoreRun(core_settings(top_n=25), bundle_frames=1)
        self._done = 0

    def catch_up(self) -> None:
        new = self.sink.envelopes[self._done :]
        self.run.feed((encode_envelope(e), e.receive_time_ns // 1_000_000) for e in new)
        self._done += len(new)

    @property
    def resyncs(self) -> list[tuple[tuple[str, str], str]]:
        """The resync requests sent to the connectors: ((exchange, symbol), reason)."""
        self.catch_up()
        records = [json.loads(r) for r in self.run.records.get("control", [])]
        return [((r["exchange"], r["symbol"]), r["reason"]) for r in records]

    def book(self, symbol: str) -> dict[str, str]:
        """The pair's book as the job last published it to Redis."""
        self.catch_up()
        args = self.run.redis.get(book_key(PREFIX, "kraken", symbol))
        assert args is not None, f"no book of {symbol} published"
        return dict(zip(BOOK_FIELDS, args, strict=True))

    def status(self, symbol: str) -> str:
        self.catch_up()
        if book_key(PREFIX, "kraken", symbol) not in self.run.redis:
            return "RESYNCING"  # never published: not (yet) LIVE
        return self.book(symbol)["status"]


# --- pure parts -----------------------------------------------------------------------------


def test_requests_are_krakens_subscribe_messages() -> None:
    connector = KrakenConnector(base_settings(), ListSink())
    assert json.loads(connector.request("subscribe", "book", ["BTC/USD"])) == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25},
        "req_id": 1,
    }
    assert json.loads(connector.request("unsubscribe", "trade", ["ETH/USD"])) == {
        "method": "unsubscribe", "params": {"channel": "trade", "symbol": ["ETH/USD"]},
        "req_id": 2,
    }


def test_documented_frames_are_routed_by_pair_and_control_frames_consumed() -> None:
    connector = KrakenConnector(base_settings({**PAIRS, "MATIC/USD": "MATIC-USD"}), ListSink())
    dispatch = connector.dispatch
    conn: Any = None  # the connection is not looked at
    snapshot = (FIXTURES / "doc_book_snapshot.json").read_bytes()
    update = (FIXTURES / "doc_book_update.json").read_bytes()
    trade = (FIXTURES / "doc_trade.json").read_bytes()
    assert dispatch(conn, snapshot, 0) == [(Route("BTC/USD", "depth"), snapshot)]
    assert dispatch(conn, update, 0) == [(Route("MATIC/USD", "depth"), update)]
    assert dispatch(conn, trade, 0) == [(Route("MATIC/USD", "trade"), trade)]
    assert connector.route(trade) == Route("MATIC/USD", "trade")
    for name in ("heartbeat", "status", "subscribe_ack", "subscribe_error"):
        control = (FIXTURES / f"doc_{name}.json").read_bytes()
        assert dispatch(conn, control, 0) == [], name
        assert connector.route(control) is None
    assert connector.control == {
        "heartbeat": 1, "status": 1, "subscribe": 1, "subscribe error": 1}
    assert connector.rejected == ["subscribe XYZ/USD: Currency pair not supported XYZ/USD"]
    # unknown pairs and channels, and garbage, are dead letters
    unknown = KrakenConnector(base_settings(), ListSink())
    assert unknown.dispatch(conn, update, 0) is None
    assert unknown.dispatch(conn, b'{"channel":"ticker","type":"update","data":[]}', 0) is None
    assert unknown.dispatch(conn, b"not json", 0) is None
    assert unknown.dispatch(conn, b'{"channel":"trade","type":"snapshot","data":[]}', 0) == []


def test_a_frame_with_several_pairs_is_split_with_each_element_byte_for_byte() -> None:
    connector = KrakenConnector(base_settings(), ListSink())
    raw = (FIXTURES / "multi_pair_trade_snapshot.json").read_bytes()
    parts = connector.dispatch(None, raw, 0)  # type: ignore[arg-type]  # conn unused
    assert parts is not None
    assert [route for route, _ in parts] == [Route("BTC/USD", "trade"), Route("ETH/USD", "trade")]
    btc, eth = (payload for _, payload in parts)
    assert btc.startswith(b'{"channel":"trade","type":"snapshot","data":[{"symbol":"BTC/USD"')
    assert b'"qty":0.01000000' in btc and b'"qty":0.00500000' in btc  # exact number text
    elements = json.loads(raw)["data"]
    assert json.loads(btc)["data"] == [elements[0], elements[2]]  # order kept
    assert json.loads(eth)["data"] == [elements[1]]
    # received after the trades' times (the job rejects event times from the future)
    rx_ms = 1_800_000_000_000
    out = Core("BTC-USD").process(envelope("BTC-USD", "kraken", "BTC/USD", "trade", btc, rx_ms))
    assert [t["trade_id"] for t in out.of("trades")] == ["71283911", "71283912"]
    assert out.of("trades")[0]["size"] == Decimal("0.01")


# --- against the simulator ------------------------------------------------------------------


def test_envelopes_per_pair_rebuild_the_true_books_in_the_job() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=100, depth_levels=40) as sim,
            Running(sim, settings) as r,
        ):
            await wait_until(r.synced, what="a snapshot per pair")
            await wait_until(lambda: len(r.sink.envelopes) > 300, what="300 envelopes")
            await http_json(f"{sim.http_url}/_sim/pause", "POST")
            truths = {}
            for pair in PAIRS:
                _, truths[pair] = await http_json(f"{sim.http_url}/_sim/kraken/book?symbol={pair}")

                def caught_up(p: str = pair) -> bool:
                    last = frame(r.sink.of(p, "update")[-1])["data"][0]
                    return bool(last["checksum"] == truths[p]["checksum"])

                await wait_until(caught_up, what=f"{pair} updates up to the pause")
            _, conns = await http_json(f"{sim.http_url}/_sim/connections")
        sink, connector = r.sink, r.connector
        assert sink.dead_letters == []
        assert {e.connection_id for e in sink.envelopes} == {sink.envelopes[0].connection_id}
        assert [e.connection_seq for e in sink.envelopes] == list(range(len(sink.envelopes)))
        for env in sink.envelopes:
            assert (env.exchange, env.instrument) == ("kraken", PAIRS[env.symbol])
            assert env.kafka_key == f"kraken:{env.symbol}".encode()
            body = frame(env)
            assert body["channel"] == {"depth": "book", "trade": "trade"}[env.channel]
            assert {d["symbol"] for d in body["data"]} == {env.symbol}
        assert connector.control["status"] == 1
        assert connector.control["subscribe"] == 2 * len(PAIRS)  # one ack per pair and channel
        assert connector.stats.frames == len(sink.envelopes) + sum(connector.control.values())
        (conn_log,) = conns
        assert conn_log["messages_received"] == 2  # one book and one trade request: 3 pairs
        job = Job(sink)
        job.catch_up()
        assert job.resyncs == []
        for pair in PAIRS:
            first_book = next(e for e in sink.of(pair) if e.channel == "depth")
            assert first_book is sink.of(pair, "snapshot")[0]
            book = job.book(pair)
            assert book["status"] == "LIVE"
            assert levels(book["bids"]) == truths[pair]["bids"][:25]
            assert levels(book["asks"]) == truths[pair]["asks"][:25]

    run(scenario)


def test_heartbeats_are_not_produced_and_do_not_keep_a_silent_connection_open() -> None:
    settings = base_settings({"BTC/USD": "BTC-USD"})
    settings = dataclasses.replace(
        settings,
        connectors=dataclasses.replace(settings.connectors, stale_timeout_s=1.5),
        simulator=dataclasses.replace(settings.simulator, kraken_symbols=("BTC/USD", "ETH/USD")),
    )

    async def scenario() -> None:
        # no pacing: BTC/USD never moves, ETH/USD (not subscribed) keeps the market clock going
        async with (
            running_simulator(settings, rate_per_symbol=0) as sim,
            Running(sim, settings) as r,
        ):
            await wait_until(r.synced, what="BTC/USD snapshot")

            async def ticking() -> bool:
                sim.step("kraken", "ETH/USD")
                await asyncio.sleep(0.05)
                return r.connector.stats.connections >= 2

            deadline = asyncio.get_running_loop().time() + 20
            while not await ticking():
                assert asyncio.get_running_loop().time() < deadline, "no reconnect"
        connector = r.connector
        assert connector.control["heartbeat"] >= 1
        assert connector.stats.stale_timeouts >= 1  # heartbeats did not keep it alive
        assert all(b"heartbeat" not in e.payload for e in r.sink.envelopes)
        assert r.sink.dead_letters == []

    run(scenario)


def test_checksum_mismatch_then_resync_brings_a_fresh_snapshot_on_the_same_connection() -> None:
    settings = base_settings()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=100, depth_levels=40) as sim,
            Running(sim, settings) as r,
        ):
            job = Job(r.sink)
            await wait_until(r.synced, what="a snapshot per pair")
            await wait_until(lambda: job.status("BTC/USD") == "LIVE")
            fault = "/_sim/faults/checksum?exchange=kraken&symbol=BTC/USD&count=1"
            assert (await http_json(f"{sim.http_url}{fault}", "POST"))[0] == 200
            await wait_until(
                lambda: job.status("BTC/USD") == "RESYNCING",
                what="the job sees the mismatch",
            )
            ((book_id, reason),) = job.resyncs
            assert book_id == ("kraken", "BTC/USD") and reason.startswith("checksum mismatch")
            await r.connector.resync(book_id[1])  # what the control-topic consumer does
            await wait_until(lambda: len(r.sink.of("BTC/USD", "snapshot")) == 2, what="resync")
            await wait_until(lambda: job.status("BTC/USD") == "LIVE")
            await wait_until(lambda: r.connector.control["subscribe"] == 2 * len(PAIRS) + 1)
            _, status = await http_json(f"{sim.http_url}/_sim/status")
        assert r.connector.stats.connections == 1
        assert len({e.connection_id for e in r.sink.envelopes}) == 1
        assert r.connector.control["unsubscribe"] == 1
        for pair in ("ETH/USD", "BTC/USDT"):  # only the broken book was resubscribed
            assert len(r.sink.of(pair, "snapshot")) == 1
        assert status["exchanges"]["kraken"]["symbols"]["BTC/USD"]["connections"] == 1
        assert job.resyncs == [(book_id, reason)]

    run(scenario)


def test_resync_without_a_connection_or_of_an_unknown_pair_does_nothing() -> None:
    connector = KrakenConnector(base_settings(), ListSink())

    async def scenario() -> None:
        await connector.resync("BTC/USD")
        await connector.resync("NOPE/USD")

    run(scenario)
    assert connector.stats.connections == 0


def test_reconnect_resubscribes_every_pair_and_rebuilds_every_book() -> None:
    settings = base_settings(subscribe_batch=2)

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=100, depth_levels=40) as sim,
            Running(sim, settings) as r,
        ):
            await wait_until(r.synced, what="first sync")
            await wait_until(lambda: r.connector.control["subscribe"] == 2 * len(PAIRS))
            disconnect = f"{sim.http_url}/_sim/faults/disconnect?exchange=kraken"
            _, body = await http_json(disconnect, "POST")
            assert len(body["disconnected"]) == 1
            await wait_until(lambda: r.synced(2), what="second sync")
            await wait_until(lambda: r.connector.control["subscribe"] == 4 * len(PAIRS))
            _, conns = await http_json(f"{sim.http_url}/_sim/connections")
        assert r.connector.stats.connections == 2
        first_id = r.sink.envelopes[0].connection_id
        second = [e for e in r.sink.envelopes if e.connection_id != first_id]
        assert second[0].connection_seq == 0
        for pair in PAIRS:
            books = [e for e in second if e.symbol == pair and e.channel == "depth"]
            assert frame(books[0])["type"] == "snapshot"  # the new connection starts over
        # 3 pairs in batches of 2: 2 book + 2 trade requests per connection
        assert [c["messages_received"] for c in conns] == [4, 4]
        job = Job(r.sink)
        job.catch_up()
        # the ended connection marked every book; the new connection's snapshots rebuilt them
        assert {book for book, _ in job.resyncs} == {("kraken", p) for p in PAIRS}
        assert all(job.status(p) == "LIVE" for p in PAIRS)

    run(scenario)
