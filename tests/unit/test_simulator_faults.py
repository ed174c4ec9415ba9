"""Frame and connection faults of the simulator, as a client on the wire sees them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from simulator.server import SimulatorServer
from simulator.testing import http_json, running_simulator, wait_until
from tickflow.config import load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PATH = "/binance/stream?streams=btcusdt@depth@100ms"


class RawReader:
    def __init__(self) -> None:
        self.raw: list[str] = []
        self.closed = False

    def depth_ids(self) -> list[int]:
        return [json.loads(r)["data"]["U"] for r in self.raw if r.endswith("}")]


@asynccontextmanager
async def session(**overrides: Any) -> AsyncIterator[tuple[SimulatorServer, RawReader]]:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    async with running_simulator(settings, rate_per_symbol=0, depth_levels=10, **overrides) as sim:
        reader = RawReader()
        async with connect(f"{sim.ws_url}{PATH}") as ws:

            async def read() -> None:
                try:
                    async for message in ws:
                        reader.raw.append(str(message))
                except ConnectionClosed:
                    pass
                reader.closed = True

            task = asyncio.create_task(read())
            await wait_until(lambda: sim.status()["exchanges"]["binance"]["connections"])
            yield sim, reader
            task.cancel()


async def inject(sim: SimulatorServer, kind: str, count: int = 1) -> None:
    url = f"{sim.http_url}/_sim/faults/{kind}?exchange=binance&symbol=BTCUSDT&channel=depth"
    status, _ = await http_json(f"{url}&count={count}", "POST")
    assert status == 200


def step(sim: SimulatorServer, n: int) -> list[int]:
    """Generate n depth events; their first update ids, in generation order."""
    market = sim.venues["binance"].markets["BTCUSDT"]  # type: ignore[attr-defined]
    first = market.last_update_id + 1
    ids = []
    for _ in range(n):
        sim.step("binance", "BTCUSDT", 1)
        ids.append(first)
        first = market.last_update_id + 1
    return ids


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("duplicate", lambda ids: [ids[0], ids[0], ids[1], ids[2]]),
        ("reorder", lambda ids: [ids[1], ids[0], ids[2]]),
        ("drop", lambda ids: [ids[1], ids[2]]),
    ],
)
def test_frame_faults_on_the_wire(kind: str, expected: Any) -> None:
    async def scenario() -> None:
        async with session(trade_probability=0.0) as (sim, reader):
            await inject(sim, kind)
            ids = step(sim, 3)
            want = expected(ids)
            await wait_until(lambda: len(reader.raw) >= len(want), what="frames")
            assert reader.depth_ids() == want
            assert sim.status()["faults_injected"] == {kind: 1}

    run(scenario())


def test_malformed_frame_is_a_truncated_copy() -> None:
    async def scenario() -> None:
        async with session(trade_probability=0.0) as (sim, reader):
            await inject(sim, "malformed")
            step(sim, 2)
            await wait_until(lambda: len(reader.raw) >= 2, what="frames")
            with pytest.raises(json.JSONDecodeError):
                json.loads(reader.raw[0])
            assert reader.raw[0].startswith('{"stream":"btcusdt@depth@100ms"')
            assert json.loads(reader.raw[1])["data"]["e"] == "depthUpdate"

    run(scenario())


def test_silent_socket_stays_open_and_sends_nothing() -> None:
    async def scenario() -> None:
        async with session(trade_probability=0.0) as (sim, reader):
            step(sim, 1)
            await wait_until(lambda: len(reader.raw) == 1, what="first frame")
            await inject(sim, "silent")
            step(sim, 5)
            conn = await wait_until(
                lambda: [c for c in sim.connections() if c["withheld"] == 5], what="withheld"
            )
            assert conn[0]["open"] and not reader.closed
            assert len(reader.raw) == 1

    run(scenario())


def test_connections_older_than_the_limit_are_closed() -> None:
    async def scenario() -> None:
        async with session(trade_probability=0.0, max_connection_age_s=1) as (sim, reader):
            deadline = asyncio.get_running_loop().time() + 10
            while not reader.closed and asyncio.get_running_loop().time() < deadline:
                step(sim, 1)  # the age is checked as frames go out
                await asyncio.sleep(0.05)
            assert reader.closed
            assert any(c["close_reason"] == "max connection age" for c in sim.connections())

    run(scenario())


def test_the_newest_delay_rule_applies_over_an_older_one() -> None:
    from simulator.faults import FaultInjector

    faults = FaultInjector(seed=1)
    faults.add_delay("binance", None, 0, 0, 10, duration_s=60, now_s=0.0)
    faults.add_delay("binance", None, 2, 9000, 9000, duration_s=None, now_s=0.0)
    delays = [faults.on_trade("binance", "BTCUSDT", 1.0) for _ in range(4)]
    assert delays[:2] == [9000, 9000]
    assert all(d is not None and d <= 10 for d in delays[2:])
