"""The simulator server in-process: Binance frames and REST, /_sim/ control, send log, faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from simulator.binance import BinanceMarket, DepthDiff, depth_update_event, trade_event
from simulator.server import SimulatorServer, id_offset
from simulator.testing import http_json, http_raw, running_simulator, wait_until
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STREAMS = "btcusdt@depth@100ms/btcusdt@trade"


def base_settings() -> Settings:
    return load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


class Reader:
    """Collects every frame of a client connection in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.closed = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)  # Binance sends text frames
                self.raw.append(message)
                self.frames.append(json.loads(message))
        except ConnectionClosed:
            pass
        self.closed = True

    def depth(self) -> list[dict[str, Any]]:
        return [f["data"] for f in self.frames if f.get("data", {}).get("e") == "depthUpdate"]

    def trades(self) -> list[dict[str, Any]]:
        return [f["data"] for f in self.frames if f.get("data", {}).get("e") == "trade"]


@asynccontextmanager
async def client(sim: SimulatorServer, path: str) -> AsyncIterator[Reader]:
    async with connect(f"{sim.ws_url}{path}", compression=None) as ws:
        reader = Reader(ws)
        yield reader


async def quiesce(sim: SimulatorServer) -> dict[str, Any]:
    """Pause and wait until every connection's queue is drained; the final status."""
    await http_json(f"{sim.http_url}/_sim/pause", "POST")

    async def drained() -> dict[str, Any] | None:
        _, status = await http_json(f"{sim.http_url}/_sim/status")
        return status if all(c["queued"] == 0 for c in status["connections"]) else None

    for _ in range(1000):
        status = await drained()
        if status:
            return status
    raise AssertionError("connections never drained")


def test_combined_stream_frames_have_binance_shape() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200, depth_levels=10) as sim,
            client(sim, f"/binance/stream?streams={STREAMS}") as reader,
        ):
            await wait_until(lambda: len(reader.depth()) >= 5 and reader.trades(), what="frames")
        for frame in reader.frames:
            assert list(frame) == ["stream", "data"]
            expected = {"depthUpdate": "btcusdt@depth@100ms", "trade": "btcusdt@trade"}
            assert frame["stream"] == expected[frame["data"]["e"]]
        raw = next(r for r in reader.raw if '"depthUpdate"' in r)
        assert raw.startswith('{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":')
        depth, trade = reader.depth()[0], reader.trades()[0]
        assert list(depth) == ["e", "E", "s", "U", "u", "b", "a"]
        assert depth["s"] == "BTCUSDT" and isinstance(depth["U"], int)
        assert list(trade) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
        assert trade["M"] is True and isinstance(trade["m"], bool)

    run(scenario)


def test_raw_stream_path_sends_unwrapped_events() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200) as sim,
            client(sim, "/binance/ws/ethusdt@trade") as reader,
        ):
            await wait_until(lambda: len(reader.frames) >= 2, what="trades")
        assert all(f["e"] == "trade" and f["s"] == "ETHUSDT" for f in reader.frames)

    run(scenario)


def test_rest_snapshot_plus_later_diffs_reproduce_the_true_book() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200, depth_levels=20) as sim,
            client(sim, f"/binance/stream?streams={STREAMS}") as reader,
        ):
            await wait_until(lambda: reader.depth(), what="first depth event")
            first_u = reader.depth()[0]["U"]
            url = f"{sim.http_url}/binance/api/v3/depth?symbol=BTCUSDT&limit=1000"
            status, snap = await http_json(url)
            assert status == 200 and snap["lastUpdateId"] >= first_u
            await wait_until(lambda: len(reader.depth()) >= 20, what="more depth events")
            await quiesce(sim)
            _, truth = await http_json(f"{sim.http_url}/_sim/binance/book?symbol=BTCUSDT")
            await wait_until(
                lambda: reader.depth()[-1]["u"] == truth["lastUpdateId"], what="last diff"
            )
        last = snap["lastUpdateId"]
        bids = {p: q for p, q in snap["bids"]}
        asks = {p: q for p, q in snap["asks"]}
        kept = [d for d in reader.depth() if d["u"] > last]
        assert kept[0]["U"] <= last + 1 <= kept[0]["u"]
        for event in kept:
            assert event["U"] == last + 1
            for levels, changes in ((bids, event["b"]), (asks, event["a"])):
                for price, qty in changes:
                    if float(qty) == 0:
                        levels.pop(price, None)
                    else:
                        levels[price] = qty
            last = event["u"]
        assert last == truth["lastUpdateId"]
        assert sorted(bids.items(), key=lambda x: -float(x[0])) == [tuple(x) for x in truth["bids"]]
        assert sorted(asks.items(), key=lambda x: float(x[0])) == [tuple(x) for x in truth["asks"]]

    run(scenario)


T_FIXED = 1_700_000_000_000  # the one market depends on times: the model gets the server's


def test_served_frames_are_the_seeded_models_frames() -> None:
    settings = base_settings()

    async def scenario() -> list[dict[str, Any]]:
        # rate 0: no pacing, frames only from explicit steps
        async with (
            running_simulator(
                settings, clock_ms=lambda: T_FIXED, rate_per_symbol=0, depth_levels=10,
                id_epoch_s=7,
            ) as sim,
            client(sim, f"/binance/stream?streams={STREAMS}") as reader,
        ):
            await wait_until(
                lambda: sim.status()["exchanges"]["binance"]["symbols"]["BTCUSDT"]["connections"],
                what="subscription",
            )
            status, body = await http_json(
                f"{sim.http_url}/_sim/step?exchange=binance&symbol=BTCUSDT&n=30", "POST"
            )
            assert status == 200
            last_u = body["symbols"]["BTCUSDT"]["last_update_id"]
            await wait_until(lambda: reader.depth() and reader.depth()[-1]["u"] == last_u)
            return [f["data"] for f in reader.frames]

    served = asyncio.run(scenario())
    sim_cfg = settings.simulator
    model = BinanceMarket("BTCUSDT", sim_cfg.seed, 10, sim_cfg.max_changes_per_event,
                          sim_cfg.trade_probability, id_offset=id_offset(7))
    expected = []
    for _ in range(30):
        for event in model.step(T_FIXED):
            if isinstance(event, DepthDiff):
                expected.append(depth_update_event("BTCUSDT", model.spec, event))
            else:
                expected.append(trade_event("BTCUSDT", model.spec, event))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("E", "T")}  # noqa: E731
    assert [strip(d) for d in served] == [strip(d) for d in expected]


def test_rest_errors_and_limits() -> None:
    async def scenario() -> None:
        # A fixed clock: the weight window must not roll over to a new minute mid-test.
        async with running_simulator(
            base_settings(), clock_ms=lambda: 1_700_000_010_000, rate_per_symbol=0, depth_levels=30
        ) as sim:
            base = f"{sim.http_url}/binance/api/v3/depth"
            assert await http_json(f"{base}?symbol=NOPE") == (
                400, {"code": -1121, "msg": "Invalid symbol."})
            status, body = await http_json(base)
            assert status == 400 and body["code"] == -1102
            status, body = await http_json(f"{base}?symbol=BTCUSDT&limit=abc")
            assert status == 400 and body["code"] == -1100
            status, headers, raw = await http_raw(f"{base}?symbol=BTCUSDT&limit=5")
            snap = json.loads(raw)
            assert status == 200 and len(snap["bids"]) == len(snap["asks"]) == 5
            assert headers["Content-Type"].startswith("application/json")
            assert headers["X-MBX-USED-WEIGHT-1M"] == "5"
            _, headers, raw = await http_raw(f"{base}?symbol=BTCUSDT&limit=6000")
            assert headers["X-MBX-USED-WEIGHT-1M"] == "255"  # truncated to 5000: weight 250
            assert len(json.loads(raw)["bids"]) == 30  # the whole true book
            assert (await http_json(f"{sim.http_url}/binance/api/v3/ping"))[0] == 200
            assert (await http_json(f"{sim.http_url}/nope/api"))[0] == 404
            assert (await http_json(f"{sim.http_url}/_sim/pause"))[0] == 405  # needs POST

    run(scenario)


def test_rest_weight_limit_answers_429_with_retry_after() -> None:
    settings = base_settings()
    binance = settings.exchanges.binance.__class__(
        **{**vars(settings.exchanges.binance), "rest_weight_limit_1m": 10}
    )
    settings = settings.__class__(
        **{**vars(settings), "exchanges": settings.exchanges.__class__(binance=binance)}
    )

    async def scenario() -> None:
        async with running_simulator(settings, rate_per_symbol=0) as sim:
            url = f"{sim.http_url}/binance/api/v3/depth?symbol=BTCUSDT&limit=100"
            statuses = [(await http_raw(url))[:2] for _ in range(3)]
        assert [s for s, _ in statuses] == [200, 200, 429]
        assert 1 <= int(statuses[2][1]["Retry-After"]) <= 60

    run(scenario)


def test_websocket_handshake_with_unknown_symbol_is_refused() -> None:
    async def scenario() -> None:
        async with running_simulator(base_settings(), rate_per_symbol=0) as sim:
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"{sim.ws_url}/binance/stream?streams=nopeusdt@trade"):
                    pass
            assert info.value.response.status_code == 400
            assert json.loads(bytes(info.value.response.body)) == {
                "code": -1121, "msg": "Invalid symbol."}

    run(scenario)


def test_live_subscribe_and_list_subscriptions() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200) as sim,
            client(sim, "/binance/stream") as reader,
        ):
            await reader.ws.send(json.dumps(
                {"method": "SUBSCRIBE", "params": ["ethusdt@depth"], "id": 1}))
            await reader.ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            await wait_until(lambda: len(reader.depth()) >= 2, what="depth after SUBSCRIBE")
        assert {"result": None, "id": 1} in reader.frames
        assert {"result": ["ethusdt@depth"], "id": 2} in reader.frames
        assert {f["stream"] for f in reader.frames if "stream" in f} == {"ethusdt@depth"}

    run(scenario)


def test_pause_status_trades_and_send_log_agree_with_the_client() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=200) as sim,
            client(sim, f"/binance/stream?streams={STREAMS}") as reader,
        ):
            await wait_until(lambda: len(reader.trades()) >= 3, what="trades")
            status = await quiesce(sim)
            assert status["paused"] is True
            btc = status["exchanges"]["binance"]["symbols"]["BTCUSDT"]
            await wait_until(lambda: reader.depth()[-1]["u"] == btc["last_update_id"])
            # nothing is generated while paused
            again = (await http_json(f"{sim.http_url}/_sim/status"))[1]
            assert again["exchanges"]["binance"]["symbols"]["BTCUSDT"] == btc
            _, tape = await http_json(f"{sim.http_url}/_sim/binance/trades?symbol=BTCUSDT")
            _, conns = await http_json(f"{sim.http_url}/_sim/connections")
            frames, depth, trades = list(reader.frames), reader.depth(), reader.trades()
            resumed = await http_json(f"{sim.http_url}/_sim/resume", "POST")
        assert resumed == (200, {"ok": True, "paused": False})
        assert btc["connections"] == 1 and btc["trade_count"] == len(tape["trades"])
        received = {t["t"]: t for t in trades}
        for t in tape["trades"]:
            if t["id"] in received:
                r = received[t["id"]]
                assert (r["p"], r["q"], r["T"], r["m"]) == (
                    t["price"], t["qty"], t["time"], t["is_buyer_maker"])
        assert max(received) == btc["last_trade_id"] == tape["trades"][-1]["id"]
        (log,) = [c for c in conns if c["open"]]
        assert log["frames_sent"] == len(frames)
        assert log["last_ids"]["BTCUSDT"] == {"depth": depth[-1]["u"], "trade": trades[-1]["t"]}
        assert log["first_ids"]["BTCUSDT"]["depth"] == depth[0]["u"]

    run(scenario)


def test_drop_fault_leaves_a_gap_and_is_logged() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=0, send_log_frames=100) as sim,
            client(sim, f"/binance/stream?streams={STREAMS}") as reader,
        ):
            await wait_until(lambda: sim.status()["exchanges"]["binance"]["connections"])
            step = f"{sim.http_url}/_sim/step?symbol=BTCUSDT&n=1"
            await http_json(step, "POST")
            await wait_until(lambda: len(reader.depth()) == 1, what="first diff")
            drop = "/_sim/faults/drop?exchange=binance&symbol=BTCUSDT&channel=depth&count=1"
            assert (await http_json(f"{sim.http_url}{drop}", "POST"))[0] == 200
            for _ in range(2):
                await http_json(step, "POST")
            await wait_until(lambda: len(reader.depth()) == 2, what="two of three diffs")
            _, conns = await http_json(f"{sim.http_url}/_sim/connections?frames=1")
        first, second = reader.depth()
        assert second["U"] > first["u"] + 1  # the dropped event is a gap
        (log,) = conns
        assert log["frames_dropped"] == 1
        (dropped,) = log["dropped_ids"]
        assert dropped == ["BTCUSDT", "depth", second["U"] - 1]
        assert log["frames"] == reader.raw

    run(scenario)


def test_disconnect_fault_and_rest_429_fault() -> None:
    async def scenario() -> None:
        async with (
            running_simulator(base_settings(), rate_per_symbol=100) as sim,
            client(sim, f"/binance/stream?streams={STREAMS}") as reader,
        ):
            await wait_until(lambda: reader.frames, what="a frame")
            _, body = await http_json(f"{sim.http_url}/_sim/faults/disconnect", "POST")
            assert body["disconnected"] == ["c1"]
            await wait_until(lambda: reader.closed, what="client sees the drop")
            rest = "/_sim/faults/rest?exchange=binance&status=429&retry_after=7&count=1"
            await http_json(f"{sim.http_url}{rest}", "POST")
            depth = f"{sim.http_url}/binance/api/v3/depth?symbol=BTCUSDT"
            status, headers, _ = await http_raw(depth)
            assert (status, headers["Retry-After"]) == (429, "7")
            assert (await http_raw(depth))[0] == 200  # count=1: only the next request
            _, conns = await http_json(f"{sim.http_url}/_sim/connections")
        assert conns[0]["open"] is False and conns[0]["close_reason"] == "fault: disconnect"

    run(scenario)


def test_ids_keep_growing_across_restarts() -> None:
    # a restarted simulator must not reuse update ids: downstream books would ignore them
    first = BinanceMarket("BTCUSDT", 42, 10, 3, 0.2, id_offset=id_offset(1_000))
    for _ in range(500):
        first.step(0)
    restarted = BinanceMarket("BTCUSDT", 42, 10, 3, 0.2, id_offset=id_offset(1_001))
    assert restarted.last_update_id > first.last_update_id
    assert restarted.next_trade_id > first.next_trade_id


def test_per_venue_rates_from_the_configuration_and_the_environment() -> None:
    root = Path(__file__).resolve().parents[2]
    sim = load_settings(
        overlays=[root / "config" / "simulator.yaml"],
        environ={
            "TICKFLOW__SIMULATOR__RATE_PER_SYMBOL": "0",
            "TICKFLOW__SIMULATOR__KRAKEN_RATE_PER_SYMBOL": "200",
        },
    ).simulator
    assert (sim.rate("binance"), sim.rate("coinbase"), sim.rate("kraken")) == (0, 0, 200)
    default = load_settings(environ={}).simulator
    assert {default.rate(v) for v in ("binance", "coinbase", "kraken")} == {
        default.rate_per_symbol
    }

    async def scenario() -> None:
        # only Kraken is paced: the other venues generate nothing by themselves
        async with running_simulator(
            base_settings(), rate_per_symbol=0, kraken_rate_per_symbol=200,
            kraken_symbols=("BTC/USD",),
        ) as server:
            steps = lambda v, s: server.status()["exchanges"][v]["symbols"][s]["steps"]  # noqa: E731
            await wait_until(lambda: steps("kraken", "BTC/USD") >= 20, what="kraken steps")
            assert steps("binance", "BTCUSDT") == steps("coinbase", "BTC-USD") == 0
            assert server.status()["rates"] == {"binance": 0, "coinbase": 0, "kraken": 200}

    run(scenario)


def test_fair_values_are_served_for_every_instrument() -> None:
    async def scenario() -> None:
        clock = lambda: 1_700_000_000_000  # noqa: E731
        async with running_simulator(base_settings(), clock_ms=clock, rate_per_symbol=0) as sim:
            sim.step("kraken", "BTC/USD", 5)
            status, body = await http_json(f"{sim.http_url}/_sim/fair")
            assert status == 200 and body["time_ms"] == clock()
            fair = body["instruments"]
            assert {"BTC-USD", "BTC-USDT", "ETH-USD", "SOL-USD"} <= set(fair)
            # one market: USD and USDT within a few bps, the venues' tops around the fair value
            assert abs(float(fair["BTC-USDT"]) / float(fair["BTC-USD"]) - 1) < 20e-4
            status, one = await http_json(f"{sim.http_url}/_sim/kraken/fair?symbol=BTC/USD")
            assert status == 200 and one["instrument"] == "BTC-USD"
            # the true book carries the fair value as of its last event
            _, book = await http_json(f"{sim.http_url}/_sim/kraken/book?symbol=BTC/USD")
            assert (book["fair_value"], book["fair_time_ms"]) == (
                one["fair_value"], one["time_ms"]
            )
            kraken = sim.status()["exchanges"]["kraken"]["symbols"]["BTC/USD"]
            coinbase = sim.status()["exchanges"]["coinbase"]["symbols"]["BTC-USD"]
            for top in (kraken, coinbase):
                mid = (float(top["best_bid"]) + float(top["best_ask"])) / 2
                assert abs(mid / float(one["fair_value"]) - 1) < 10e-4

    run(scenario)
