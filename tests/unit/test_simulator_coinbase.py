"""The simulated Coinbase Advanced Trade venue: the seeded model, exact message shapes,
per-connection sequence numbers, subscriptions, heartbeats, faults and introspection."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from simulator.binance import DepthDiff
from simulator.book import Side, instrument_spec
from simulator.coinbase import CoinbaseMarket, decimal_text, rfc3339
from simulator.market import DAY_MS
from simulator.server import SimulatorServer
from simulator.testing import http_json, http_raw, running_simulator, wait_until
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HEADER = ["channel", "client_id", "timestamp", "sequence_num", "events"]
PRODUCTS = ("BTC-USD", "ETH-USD")


def base_settings() -> Settings:
    return load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def sim_overrides(**extra: Any) -> dict[str, Any]:
    return {"coinbase_products": PRODUCTS, "coinbase_depth_levels": 20, **extra}


def subscribe(channel: str, products: tuple[str, ...] = (), kind: str = "subscribe") -> str:
    message: dict[str, Any] = {"type": kind}
    if products:
        message["product_ids"] = list(products)
    message["channel"] = channel
    return json.dumps(message)


class Reader:
    """Collects every message of a client connection in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        self.error: ConnectionClosed | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)  # Coinbase sends text frames
                self.frames.append(json.loads(message))
        except ConnectionClosed as exc:
            self.error = exc
        self.closed = True

    def of(self, channel: str, product: str | None = None) -> list[dict[str, Any]]:
        out = []
        for f in self.frames:
            if f.get("channel") != channel:
                continue
            if product is None or any(
                e.get("product_id") == product
                or any(t["product_id"] == product for t in e.get("trades", []))
                for e in f["events"]
            ):
                out.append(f)
        return out


@asynccontextmanager
async def client(sim: SimulatorServer, *messages: str, **kwargs: Any) -> AsyncIterator[Reader]:
    async with connect(f"{sim.ws_url}/coinbase", compression=None, **kwargs) as ws:
        reader = Reader(ws)
        for message in messages:
            await ws.send(message)
        yield reader


async def quiesce(sim: SimulatorServer) -> None:
    """Pause and wait until every connection's queue is drained."""
    await http_json(f"{sim.http_url}/_sim/pause", "POST")

    def drained() -> bool:
        return all(c["queued"] == 0 for c in sim.status()["connections"])

    await wait_until(drained, what="send queues drained")


# --- the pure model -------------------------------------------------------------------------


def market(product: str = "BTC-USD", seed: int = 7) -> CoinbaseMarket:
    return CoinbaseMarket(product, seed, depth_levels=20, max_changes=5, trade_probability=0.5)


def test_same_seed_same_events_whatever_the_clock() -> None:
    a, b = market(), market()
    assert [a.step(1000 + i) for i in range(50)] == [b.step(1000 + i) for i in range(50)]
    # the one market's fair value starts at the first step and its daily cycle follows the
    # time of day: the same frames whole days later
    c, d = market(), market()
    assert [type(e) for i in range(20) for e in c.step(1000 + i)] == [
        type(e) for i in range(20) for e in d.step(1000 + 30 * DAY_MS + i)
    ]
    assert market(seed=8).snapshot_updates() != market().snapshot_updates()


def test_snapshot_plus_diffs_give_the_true_book() -> None:
    m = market()
    book = {(u["side"], u["price_level"]): u["new_quantity"] for u in m.snapshot_updates()}
    for i in range(300):
        for event in m.step(i):
            if isinstance(event, DepthDiff):
                for u in m.diff_updates(event):
                    if u["new_quantity"] == "0":
                        book.pop((u["side"], u["price_level"]), None)
                    else:
                        book[(u["side"], u["price_level"])] = u["new_quantity"]
    truth = {("bid", p): q for p, q in m.levels_text(Side.BID)}
    truth |= {("offer", p): q for p, q in m.levels_text(Side.ASK)}
    assert book == truth
    assert m.updates == 300 and not m.book.is_crossed()


@pytest.mark.parametrize(
    ("product", "price_decimals", "size_decimals"),
    [("BTC-USD", 2, 8), ("DOGE-USD", 5, 1), ("XRP-USD", 4, 6), ("SOL-USD", 2, 3)],
)
def test_decimal_text_follows_the_product_precision(
    product: str, price_decimals: int, size_decimals: int
) -> None:
    m = market(product)
    for i in range(50):
        m.step(i)
    for u in m.snapshot_updates():
        for text, decimals in ((u["price_level"], price_decimals),
                               (u["new_quantity"], size_decimals)):
            whole, _, frac = text.partition(".")
            assert whole.isdigit() and len(frac) <= decimals
            assert not frac.endswith("0")  # Coinbase trims trailing zeros
    spec = instrument_spec(product)
    assert spec is not instrument_spec("UNKNOWN-PRODUCT")  # from the table, not the default


def test_text_helpers() -> None:
    assert decimal_text(2_192_130, 1_000_000) == "21921.3"
    assert decimal_text(0, 1_000_000) == "0"
    assert decimal_text(2_000_000) == "0.02"
    assert decimal_text(300_000_000) == "3"
    assert rfc3339(1675974770714) == "2023-02-09T20:32:50.714Z"
    assert rfc3339(1675974770700) == "2023-02-09T20:32:50.7Z"
    assert rfc3339(1675974770000) == "2023-02-09T20:32:50Z"


# --- the venue ------------------------------------------------------------------------------


def test_level2_snapshot_then_ack_then_updates_with_documented_shapes() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200, **sim_overrides()) as sim,
            client(sim, subscribe("level2", ("BTC-USD",))) as reader,
        ):
            await wait_until(lambda: len(reader.of("l2_data")) >= 5, what="l2 updates")
        snapshot, ack = reader.frames[:2]
        assert list(snapshot) == HEADER and snapshot["client_id"] == ""
        assert (snapshot["channel"], snapshot["sequence_num"]) == ("l2_data", 0)
        (event,) = snapshot["events"]
        assert list(event) == ["type", "product_id", "updates"]
        assert (event["type"], event["product_id"]) == ("snapshot", "BTC-USD")
        sides = [u["side"] for u in event["updates"]]
        assert sides == sorted(sides) and {"bid", "offer"} == set(sides)  # bids first
        prices = {s: [float(u["price_level"]) for u in event["updates"] if u["side"] == s]
                  for s in ("bid", "offer")}
        assert prices["bid"] == sorted(prices["bid"], reverse=True)  # best first
        assert prices["offer"] == sorted(prices["offer"])
        level = event["updates"][0]
        assert list(level) == ["side", "event_time", "price_level", "new_quantity"]
        assert level["event_time"] == "1970-01-01T00:00:00Z"
        assert ack == {
            "channel": "subscriptions", "client_id": "", "timestamp": ack["timestamp"],
            "sequence_num": 1, "events": [{"subscriptions": {"level2": ["BTC-USD"]}}],
        }
        update = reader.of("l2_data")[1]
        (event,) = update["events"]
        assert (event["type"], event["product_id"]) == ("update", "BTC-USD")
        assert all(u["side"] in ("bid", "offer") for u in event["updates"])
        assert all(u["event_time"] == update["timestamp"] for u in event["updates"])
        assert not reader.of("l2_data", "ETH-USD")  # not subscribed

    run(scenario)


def test_sequence_num_counts_every_message_of_a_connection() -> None:
    async def scenario() -> None:
        overrides = sim_overrides(coinbase_heartbeat_ms=20)
        messages = (subscribe("level2", PRODUCTS), subscribe("market_trades", PRODUCTS),
                    subscribe("heartbeats"))
        async with (
            running_simulator(base_settings(), rate_per_symbol=200, **overrides) as sim,
            client(sim, *messages) as first,
            client(sim, *messages[:1]) as second,
        ):
            await wait_until(
                lambda: len(first.of("heartbeats")) >= 3 and len(first.of("market_trades"))
                and len(second.frames) >= 50,
                what="messages on every channel",
            )
        for reader in (first, second):  # each connection numbers its own messages from 0
            assert [f["sequence_num"] for f in reader.frames] == list(range(len(reader.frames)))
        assert not second.of("heartbeats")
        counters = [f["events"][0]["heartbeat_counter"] for f in first.of("heartbeats")]
        assert counters == list(range(1, len(counters) + 1))
        heartbeat = first.of("heartbeats")[0]
        assert list(heartbeat) == HEADER
        assert list(heartbeat["events"][0]) == ["current_time", "heartbeat_counter"]
        current_time = heartbeat["events"][0]["current_time"]  # Go's time.String()
        assert re.fullmatch(r"[\d-]{10} [\d:]{8}\.\d{9} \+0000 UTC m=\+\d+\.\d{9}", current_time)
        trades = first.of("market_trades")[-1]
        assert list(trades) == HEADER
        (event,) = trades["events"]
        assert list(event) == ["type", "trades"]
        assert list(event["trades"][0]) == ["trade_id", "product_id", "price", "size", "side",
                                            "time"]
        assert event["trades"][0]["side"] in ("BUY", "SELL")

    run(scenario)


def test_unsubscribe_stops_a_product_and_errors_are_reported() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200, **sim_overrides()) as sim,
            client(sim, subscribe("level2", PRODUCTS)) as reader,
        ):
            await wait_until(lambda: len(reader.of("l2_data", "BTC-USD")) >= 3, what="updates")
            await reader.ws.send(subscribe("level2", ("BTC-USD",), "unsubscribe"))
            await reader.ws.send(subscribe("level2", ("NOPE-USD",)))
            await reader.ws.send(subscribe("level3", ("BTC-USD",)))
            await reader.ws.send("not json")
            await wait_until(lambda: len([f for f in reader.frames if "type" in f]) == 3,
                             what="errors")
            acks = reader.of("subscriptions")
            assert acks[-1]["events"] == [{"subscriptions": {"level2": ["ETH-USD"]}}]
            after = reader.frames.index(acks[-1])
            count = len(reader.frames)
            await wait_until(lambda: len(reader.frames) > count + 10, what="more updates")
        later = reader.frames[after + 1 :]
        assert all(f.get("events", [{}])[0].get("product_id") != "BTC-USD" for f in later)
        errors = [f for f in reader.frames if "type" in f]
        assert [e["type"] for e in errors] == ["error"] * 3
        assert "NOPE-USD" in errors[0]["reason"] and "level3" in errors[1]["reason"]
        assert all("sequence_num" not in e for e in errors)
        numbered = [f["sequence_num"] for f in reader.frames if "sequence_num" in f]
        assert numbered == list(range(len(numbered)))

    run(scenario)


def test_snapshot_plus_updates_rebuild_the_true_book() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=300, **sim_overrides()) as sim,
            client(sim, subscribe("level2", PRODUCTS)) as reader,
        ):
            await wait_until(lambda: len(reader.frames) >= 200, what="updates")
            await quiesce(sim)
            (sent,) = [c["frames_sent"] for c in sim.status()["connections"]]
            await wait_until(lambda: len(reader.frames) == sent, what="every frame read")
            for product in PRODUCTS:
                _, truth = await http_json(f"{sim.http_url}/_sim/coinbase/book?symbol={product}")
                assert list(truth) == [
                    "symbol", "bids", "asks", "sequence_num", "fair_value", "fair_time_ms"
                ]
                book: dict[str, dict[str, str]] = {"bid": {}, "offer": {}}
                frames = reader.of("l2_data", product)
                for frame in frames:
                    for update in frame["events"][0]["updates"]:
                        levels = book[update["side"]]
                        if update["new_quantity"] == "0":
                            levels.pop(update["price_level"], None)
                        else:
                            levels[update["price_level"]] = update["new_quantity"]
                assert book["bid"] == dict(truth["bids"])
                assert book["offer"] == dict(truth["asks"])
                # one update per market step since the start: the count matches the truth's
                assert len(frames) - 1 <= truth["sequence_num"]

    run(scenario)


def test_trades_introspection_matches_the_wire_with_taker_sides() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=300, **sim_overrides()) as sim,
            client(sim, subscribe("market_trades", ("ETH-USD",))) as reader,
        ):
            await wait_until(lambda: len(reader.of("market_trades")) >= 5, what="trades")
            await quiesce(sim)
            _, tape = await http_json(f"{sim.http_url}/_sim/coinbase/trades?symbol=ETH-USD")
        wire = {t["trade_id"]: t for f in reader.of("market_trades") for e in f["events"]
                for t in e["trades"]}
        assert tape["symbol"] == "ETH-USD"
        by_id = {t["id"]: t for t in tape["trades"]}
        assert set(wire) <= set(by_id)
        for trade_id, t in wire.items():
            truth = by_id[trade_id]
            assert list(truth) == ["id", "price", "qty", "time", "taker_side"]
            assert (t["price"], t["size"]) == (truth["price"], truth["qty"])
            # the wire names the maker's side: the taker is on the other one
            assert truth["taker_side"] == ("sell" if t["side"] == "BUY" else "buy")
            assert t["time"] == rfc3339(truth["time"])

    run(scenario)


def test_market_trades_subscribe_sends_recent_trades_first() -> None:
    async def scenario() -> None:
        async with running_simulator(base_settings(), rate_per_symbol=0, **sim_overrides()) as sim:
            sim.step("coinbase", "BTC-USD", 40)
            _, tape = await http_json(f"{sim.http_url}/_sim/coinbase/trades?symbol=BTC-USD")
            assert tape["trades"]
            async with client(sim, subscribe("market_trades", ("BTC-USD",))) as reader:
                await wait_until(lambda: len(reader.frames) == 2, what="snapshot and ack")
        snapshot, ack = reader.frames
        assert snapshot["events"][0]["type"] == "snapshot"
        ids = [t["trade_id"] for t in snapshot["events"][0]["trades"]]
        assert ids == [t["id"] for t in tape["trades"]][::-1][:50]  # newest first
        assert ack["sequence_num"] == 1

    run(scenario)


def test_drop_fault_leaves_a_sequence_gap_and_disconnect_closes() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200, **sim_overrides()) as sim,
            client(sim, subscribe("level2", ("BTC-USD",))) as reader,
        ):
            await wait_until(lambda: len(reader.frames) >= 5, what="updates")
            drop = "/_sim/faults/drop?exchange=coinbase&symbol=BTC-USD&channel=depth&count=1"
            await http_json(f"{sim.http_url}{drop}", "POST")
            await wait_until(lambda: sim.status()["connections"][0]["frames_dropped"] == 1,
                             what="a dropped frame")
            count = len(reader.frames)
            await wait_until(lambda: len(reader.frames) > count + 2, what="more frames")
            seqs = [f["sequence_num"] for f in reader.frames]
            missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
            assert len(missing) == 1  # exactly the dropped message
            _, body = await http_json(f"{sim.http_url}/_sim/faults/disconnect?exchange=coinbase",
                                      "POST")
            assert len(body["disconnected"]) == 1
            await wait_until(lambda: reader.closed, what="the connection closed")

    run(scenario)


def test_large_snapshot_needs_a_raised_frame_limit() -> None:
    async def scenario() -> None:
        overrides = sim_overrides(coinbase_depth_levels=6000)
        async with running_simulator(base_settings(), rate_per_symbol=0, **overrides) as sim:
            level2 = subscribe("level2", ("BTC-USD",))
            async with client(sim, level2) as small:  # websockets' default limit: 1 MiB
                await wait_until(lambda: small.closed, what="close on a too big frame")
            assert small.error is not None and small.error.sent is not None
            assert small.error.sent.code == 1009 and small.frames == []  # message too big
            async with client(sim, level2, max_size=16 * 2**20) as big:
                await wait_until(lambda: len(big.frames) == 2, what="the snapshot and ack")
            assert len(big.frames[0]["events"][0]["updates"]) == 12_000

    run(scenario)


def test_rest_is_not_served_and_status_lists_products() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=0, **sim_overrides()) as sim,
            client(sim, subscribe("level2", ("ETH-USD",))) as reader,
        ):
            await wait_until(lambda: len(reader.frames) == 2, what="snapshot and ack")
            status, _, body = await http_raw(f"{sim.http_url}/coinbase/api/v3/brokerage/products")
            assert status == 404 and json.loads(body)["error"] == "NOT_FOUND"
            status, _, _ = await http_raw(f"{sim.http_url}/_sim/coinbase/book?symbol=BTCUSDT")
            assert status == 400
            _, info = await http_json(f"{sim.http_url}/_sim/status")
            products = info["exchanges"]["coinbase"]["symbols"]
            assert set(products) == set(PRODUCTS)
            assert products["ETH-USD"]["connections"] == 1
            assert products["BTC-USD"]["connections"] == 0

    run(scenario)
