"""The simulated Kraken venue: exact v2 frames, per-depth views, requests, heartbeats, faults.

The server runs in-process without pacing and with a fake clock: frames come only from
explicit steps, so every run sees the same frames.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from simulator.kraken import (
    KRAKEN_PAIRS,
    BookStep,
    KrakenMarket,
    book_message,
    book_update,
    fixed_text,
    rfc3339,
)
from simulator.kraken import book_checksum as sim_checksum
from simulator.kraken_venue import KrakenVenue
from simulator.server import SimulatorServer
from simulator.testing import http_json, wait_until
from tests.unit.core_driver import Core, envelope
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_696_613_755_000  # fake clock start (ms)
NUMBER = re.compile(r'"(price|qty)":([0-9.]+)')


def base_settings() -> Settings:
    return load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


@asynccontextmanager
async def kraken_sim(clock: list[int], **overrides: Any) -> AsyncIterator[SimulatorServer]:
    """No pacing (frames only from ``step``) and time from ``clock[0]``."""
    settings = base_settings()
    sim = dataclasses.replace(settings.simulator, port=0, rate_per_symbol=0, **overrides)
    server = SimulatorServer(
        dataclasses.replace(settings, simulator=sim), clock_ms=lambda: clock[0]
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Client:
    """A Kraken client connection that records every frame, raw and decoded (exactly)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.raw: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self._req_ids = iter(range(1, 10**6))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)
                self.raw.append(message)
                self.frames.append(json.loads(message, parse_float=Decimal))
        except ConnectionClosed:
            pass

    async def request(self, method: str, channel: str, symbols: list[str], **params: Any) -> int:
        req_id = next(self._req_ids)
        await self.ws.send(json.dumps({
            "method": method,
            "params": {"channel": channel, "symbol": symbols, **params},
            "req_id": req_id,
        }))
        return req_id

    def replies(self, req_id: int) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("req_id") == req_id]

    def of(self, channel: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            f for f in self.frames
            if f.get("channel") == channel and (kind is None or f.get("type") == kind)
        ]


@asynccontextmanager
async def client(sim: SimulatorServer) -> AsyncIterator[Client]:
    async with connect(f"{sim.ws_url}/kraken", compression=None) as ws:
        yield Client(ws)


async def subscribed(c: Client, channel: str, symbol: str, **params: Any) -> None:
    req_id = await c.request("subscribe", channel, [symbol], **params)
    await wait_until(lambda: c.replies(req_id), what=f"{channel} ack")


def apply(book: dict[str, dict[Decimal, Decimal]], data: dict[str, Any], depth: int) -> None:
    """A naive subscriber: absolute quantities in order, then truncation to the depth."""
    for side, reverse in (("bids", True), ("asks", False)):
        levels = book[side]
        for level in data[side]:
            if level["qty"] == 0:
                levels.pop(level["price"], None)
            else:
                levels[level["price"]] = level["qty"]
        for price in sorted(levels, reverse=reverse)[depth:]:
            del levels[price]


def checksums_accepted(c: Client, symbol: str) -> list[bool]:
    """For each book frame the client got, in order: whether the job's compiled core took its
    checksum (computed there from the frame's decimal text, independently of the simulator's
    integers) without asking for a resync."""
    instrument = symbol.replace("/", "-")
    core = Core(instrument)
    accepted = []
    for raw, frame in zip(c.raw, c.frames, strict=True):
        if frame.get("channel") == "book":
            value = envelope(instrument, "kraken", symbol, "depth", raw.encode(), T0)
            accepted.append(not core.process(value).of("control"))
    return accepted


def top(book: dict[str, dict[Decimal, Decimal]], n: int) -> tuple[list[Any], list[Any]]:
    bids = sorted(book["bids"].items(), reverse=True)[:n]
    asks = sorted(book["asks"].items())[:n]
    return bids, asks


# --- pure model -----------------------------------------------------------------------------


def test_checksum_implementations_agree_for_every_pair_precision() -> None:
    """The simulator's checksum (from integers) is the one the job's core computes from the
    frame's text: a snapshot carrying it is taken as LIVE."""
    rng = random.Random(5)
    for symbol, pair in KRAKEN_PAIRS.items():
        instrument = symbol.replace("/", "-")
        for i in range(50):
            bids = sorted({rng.randrange(1, 10**6): rng.randrange(1, 10**9) for _ in range(15)}
                          .items(), reverse=True)
            asks = sorted({rng.randrange(10**6, 2 * 10**6): rng.randrange(1, 10**9)
                           for _ in range(15)}.items())
            body = book_message("snapshot", symbol, pair, bids, asks, sim_checksum(bids, asks), 0)
            core = Core(instrument)
            out = core.process(envelope(instrument, "kraken", symbol, "depth", body, T0 + i))
            assert [b["status"] for b in out.books()] == ["LIVE"], symbol


def test_fixed_text_and_timestamps() -> None:
    assert fixed_text(452835, 1) == "45283.5"
    assert fixed_text(10000000, 8) == "0.10000000"
    assert fixed_text(7, 0) == "7"
    assert rfc3339(1695628177708) == "2023-09-25T07:49:37.708000Z"


def test_markets_are_seeded_and_never_cross() -> None:
    a, b = (KrakenMarket("SOL/USD", 7, 30, 5, 0.3) for _ in range(2))
    for now in range(2000):
        assert a.step(now) == b.step(now)
        assert not a.book.is_crossed()
    assert a.trades == b.trades and len(a.trades) > 300


def test_views_are_truncated_without_deletes() -> None:
    """Some updates of a depth-10 view push a level out with no message for it; applying
    them with truncation still gives the truth's top 10 every time."""
    market = KrakenMarket("BTC/USD", 3, 50, 5, 0.3)
    view = {p: q for p, q in market.levels(10)[0]}
    pushed_out_silently = 0
    for now in range(3000):
        step = next(e for e in market.step(now) if isinstance(e, BookStep))
        update = book_update(step, 10)
        for price, qty in (update[0] if update else []):
            view.pop(price, None) if qty == 0 else view.__setitem__(price, qty)
        before = {p for p, _ in step.before[0][:10]}
        after = {p for p, _ in step.after[0][:10]}
        sent = {p for p, _ in (update[0] if update else [])}
        pushed_out_silently += any(
            p in market.book.bids and p not in sent for p in before - after
        )
        view = dict(sorted(view.items(), reverse=True)[:10])
        assert sorted(view.items(), reverse=True) == market.levels(10)[0]
    assert pushed_out_silently > 100


def test_unknown_pairs_fail_fast() -> None:
    with pytest.raises(ValueError, match="no simulated Kraken pair 'NOPE/USD'"):
        KrakenVenue(("NOPE/USD",), 1, 10, 3, 0.3)


# --- served frames --------------------------------------------------------------------------


def test_frames_have_krakens_shape_and_each_pairs_precision() -> None:
    clock = [T0]

    async def scenario() -> None:
        async with kraken_sim(clock) as sim, client(sim) as c:
            await wait_until(lambda: c.frames, what="status")
            for symbol in ("BTC/USD", "DOGE/USD"):
                await subscribed(c, "book", symbol, depth=10)
                await subscribed(c, "trade", symbol)
            for n in range(60):
                clock[0] = T0 + 10 * n
                sim.step("kraken", "BTC/USD")
                sim.step("kraken", "DOGE/USD")
            await wait_until(lambda: len(c.of("trade")) >= 10, what="trades")
            _, truth = await http_json(f"{sim.http_url}/_sim/kraken/book?symbol=DOGE/USD")
        status = c.frames[0]
        assert (status["channel"], status["type"]) == ("status", "update")
        assert list(status["data"][0]) == ["version", "system", "api_version", "connection_id"]
        assert status["data"][0]["system"] == "online"
        ack = c.replies(1)[0]
        assert ack == {
            "method": "subscribe",
            "result": {"channel": "book", "depth": 10, "snapshot": True, "symbol": "BTC/USD"},
            "success": True,
            "time_in": "2023-10-06T17:35:55.000000Z",
            "time_out": "2023-10-06T17:35:55.000000Z",
            "req_id": 1,
        }
        assert c.replies(2)[0]["result"] == {
            "channel": "trade", "snapshot": True, "symbol": "BTC/USD"}
        snapshot = next(r for r in c.raw if '"type":"snapshot"' in r and "DOGE" in r)
        assert snapshot.startswith(
            '{"channel":"book","type":"snapshot","data":[{"symbol":"DOGE/USD","bids":[{"price":')
        (data,) = json.loads(snapshot, parse_float=Decimal)["data"]
        assert list(data) == ["symbol", "bids", "asks", "checksum", "timestamp"]
        assert len(data["bids"]) == len(data["asks"]) == 10
        update = next(f for f in c.of("book", "update"))["data"][0]
        assert list(update) == ["symbol", "bids", "asks", "checksum", "timestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", update["timestamp"])
        trade = c.of("trade", "update")[0]["data"][0]
        assert list(trade) == ["symbol", "side", "price", "qty", "ord_type", "trade_id",
                               "timestamp"]
        assert trade["side"] in ("buy", "sell") and isinstance(trade["trade_id"], int)
        # every number is written with its pair's precision: 45283.5 and 0.10000000 style
        for raw in c.raw:
            symbol = "DOGE/USD" if "DOGE/USD" in raw else "BTC/USD"
            pair = KRAKEN_PAIRS[symbol]
            for field, number in NUMBER.findall(raw):
                decimals = pair.price_decimals if field == "price" else pair.qty_decimals
                assert len(number.split(".")[1]) == decimals, (field, number, symbol)
        # the introspection book is the truth, in strings with the same precision
        assert list(truth) == [
            "symbol", "bids", "asks", "checksum", "fair_value", "fair_time_ms"
        ]
        assert all(re.fullmatch(r"\d+\.\d{7}", p) and re.fullmatch(r"\d+\.\d{8}", q)
                   for p, q in truth["bids"] + truth["asks"])
        assert truth["checksum"] == sim_checksum(
            *[[(int(p.replace(".", "")), int(q.replace(".", ""))) for p, q in truth[side]]
              for side in ("bids", "asks")])

    run(scenario)


@pytest.mark.parametrize("depth", [10, 25])
def test_a_naive_subscriber_keeps_the_truths_book_at_its_depth(depth: int) -> None:
    clock = [T0]

    async def scenario() -> None:
        async with kraken_sim(clock, depth_levels=40) as sim, client(sim) as c:
            await subscribed(c, "book", "ETH/USD", depth=depth)
            sim.step("kraken", "ETH/USD", 400)
            _, status = await http_json(f"{sim.http_url}/_sim/status")
            steps = status["exchanges"]["kraken"]["symbols"]["ETH/USD"]["steps"]
            assert steps == 400
            _, truth = await http_json(f"{sim.http_url}/_sim/kraken/book?symbol=ETH/USD")

            def caught_up() -> bool:
                last = c.of("book")[-1]["data"][0]
                return bool(last["checksum"] == truth["checksum"])

            await wait_until(caught_up, what="last update")
        book: dict[str, dict[Decimal, Decimal]] = {"bids": {}, "asks": {}}
        for frame in c.of("book"):
            (data,) = frame["data"]
            if frame["type"] == "snapshot":
                book = {"bids": {}, "asks": {}}
            apply(book, data, depth)
            bids, asks = top(book, depth)
            assert len(bids) <= depth
        # checksums over the exact text the subscriber received
        assert all(checksums_accepted(c, "ETH/USD"))
        bids, asks = top(book, depth)
        assert [[str(p), str(q)] for p, q in bids] == truth["bids"][:depth]
        assert [[str(p), str(q)] for p, q in asks] == truth["asks"][:depth]

    run(scenario)


def test_requests_acks_and_errors() -> None:
    clock = [T0]

    async def scenario() -> None:
        async with kraken_sim(clock) as sim, client(sim) as c:
            ok = await c.request("subscribe", "book", ["BTC/USD", "NOPE/USD"], depth=25)
            bad_depth = await c.request("subscribe", "book", ["ETH/USD"], depth=20)
            again = await c.request("subscribe", "book", ["BTC/USD"])
            missing = await c.request("unsubscribe", "trade", ["BTC/USD"])
            await c.ws.send('{"method":"ping","req_id":99}')
            await c.ws.send("nonsense")
            await wait_until(lambda: c.replies(99), what="pong")
            await wait_until(lambda: len(c.frames) >= 8, what="replies")
            unsub = await c.request("unsubscribe", "book", ["BTC/USD"])
            await wait_until(lambda: c.replies(unsub), what="unsubscribe ack")
            sim.step("kraken", "BTC/USD", 20)
            _, status = await http_json(f"{sim.http_url}/_sim/status")
        acks = c.replies(ok)
        assert [a["success"] for a in acks] == [True, False]
        assert acks[0]["result"]["depth"] == 25
        assert acks[1]["error"] == "Currency pair not supported NOPE/USD"
        assert acks[1]["symbol"] == "NOPE/USD"
        assert c.replies(bad_depth)[0]["success"] is False
        assert "depth" in c.replies(bad_depth)[0]["error"].lower()
        assert c.replies(again)[0]["error"] == "Already subscribed"
        assert c.replies(missing)[0]["error"] == "Subscription Not Found"
        assert c.replies(99)[0]["method"] == "pong"
        malformed = next(f for f in c.frames if f.get("error") == "Malformed request")
        assert (malformed["method"], malformed["success"]) == ("unknown", False)
        assert c.replies(unsub)[0]["result"] == {
            "channel": "book", "depth": 25, "symbol": "BTC/USD"}
        # one snapshot (after the subscribe), no update after the unsubscribe
        assert [f["type"] for f in c.of("book")] == ["snapshot"]
        assert status["exchanges"]["kraken"]["symbols"]["BTC/USD"]["connections"] == 0

    run(scenario)


def test_trade_snapshot_holds_the_recent_tape() -> None:
    clock = [T0]

    async def scenario() -> None:
        async with kraken_sim(clock) as sim:
            sim.step("kraken", "BTC/USD", 300)
            async with client(sim) as c:
                await subscribed(c, "trade", "BTC/USD")
                await wait_until(lambda: c.of("trade"), what="trade snapshot")
            _, tape = await http_json(f"{sim.http_url}/_sim/kraken/trades?symbol=BTC/USD")
            _, later = await http_json(
                f"{sim.http_url}/_sim/kraken/trades?symbol=BTC/USD"
                f"&from_id={tape['trades'][-1]['id']}")
        (snapshot,) = c.of("trade")
        assert snapshot["type"] == "snapshot" and len(snapshot["data"]) == 50
        recent = tape["trades"][-50:]
        assert [t["trade_id"] for t in snapshot["data"]] == [t["id"] for t in recent]
        for sent, true in zip(snapshot["data"], recent, strict=True):
            assert (str(sent["price"]), str(sent["qty"]), sent["side"]) == (
                true["price"], true["qty"], true["taker_side"])
        assert list(tape["trades"][0]) == ["id", "price", "qty", "time", "taker_side"]
        assert later["trades"] == tape["trades"][-1:]

    run(scenario)


def test_heartbeats_go_once_a_second_to_quiet_subscribed_connections() -> None:
    clock = [T0]

    async def scenario() -> None:
        async with (
            kraken_sim(clock) as sim,
            client(sim) as quiet,
            client(sim) as busy,
            client(sim) as idle,
        ):
            await subscribed(quiet, "book", "BTC/USD")
            await subscribed(busy, "book", "ETH/USD", depth=1000)
            await wait_until(lambda: idle.frames, what="status")
            for n in range(25):  # 2.4 s of market time in steps of 100 ms
                clock[0] = T0 + 100 * n
                sim.step("kraken", "ETH/USD")
            await wait_until(lambda: len(busy.of("book")) == 26, what="busy's updates")
            await wait_until(lambda: len(quiet.of("heartbeat")) == 3, what="heartbeats")
        assert quiet.raw[-3:] == ['{"channel":"heartbeat"}'] * 3  # at 0, 1 and 2 s
        assert busy.of("heartbeat") == []  # it got updates: no heartbeat needed
        assert idle.of("heartbeat") == []  # no subscription, no heartbeat

    run(scenario)


def test_checksum_fault_corrupts_exactly_one_update() -> None:
    clock = [T0]

    async def scenario() -> None:
        async with kraken_sim(clock) as sim, client(sim) as c:
            await subscribed(c, "book", "BTC/USD", depth=1000)
            sim.step("kraken", "BTC/USD", 5)
            fault = "/_sim/faults/checksum?exchange=kraken&symbol=BTC/USD&count=1"
            status, body = await http_json(f"{sim.http_url}{fault}", "POST")
            assert status == 200
            assert body["faults"]["frames"][0]["channel"] == "depth"  # updates only
            sim.step("kraken", "BTC/USD", 5)
            await wait_until(lambda: len(c.of("book")) == 11, what="11 book frames")
            _, status_body = await http_json(f"{sim.http_url}/_sim/status")
        accepted = checksums_accepted(c, "BTC/USD")
        # the first update after the fault; the core then ignores updates until a snapshot
        assert [i for i, ok in enumerate(accepted) if not ok] == [6]
        assert status_body["faults_injected"] == {"checksum": 1}

    run(scenario)


def test_served_updates_are_the_seeded_models() -> None:
    clock = [T0]

    async def scenario() -> list[str]:
        async with kraken_sim(clock, id_epoch_s=7) as sim, client(sim) as c:
            await subscribed(c, "book", "SOL/USD", depth=10)
            sim.step("kraken", "SOL/USD", 40)
            await wait_until(lambda: len(c.of("book")) > 30, what="updates")
            status = sim.status()["exchanges"]["kraken"]["symbols"]["SOL/USD"]
            await wait_until(
                lambda: c.of("book")[-1]["data"][0]["checksum"] == status["checksum"])
            return [r for r in c.raw if r.startswith('{"channel":"book","type":"update"')]

    served = asyncio.run(scenario())
    settings = base_settings().simulator
    model = KrakenMarket("SOL/USD", settings.seed, settings.depth_levels,
                         settings.max_changes_per_event, settings.trade_probability)
    expected = []
    for _ in range(40):
        for event in model.step(T0):
            if isinstance(event, BookStep) and (update := book_update(event, 10)):
                expected.append(book_message("update", "SOL/USD", model.pair, *update,
                                             event.checksum, event.time_ms).decode())
    assert served == expected
