"""Trade ground truth of the simulator: strictly increasing event times per symbol, the book
each trade executed against (``/_sim/<exchange>/truth``), and the trade delay fault on the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from simulator.binance_venue import BinanceVenue
from simulator.coinbase_venue import CoinbaseVenue
from simulator.kraken_venue import BookFrame, KrakenVenue
from simulator.server import SimulatorServer
from simulator.testing import http_json, running_simulator, wait_until
from simulator.venue import OutFrame, Venue
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_696_613_755_000
SEED = 42
TRUTH_KEYS = [
    "trade_id",
    "trade_time_ms",
    "book_time_ms",
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "taker_side",
]


def base_settings() -> Settings:
    return load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def rfc3339_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


# --- the frames of one venue, read back as a client would ---------------------------------


@dataclass
class Event:
    kind: str  # "depth" | "trade"
    time_ms: int
    levels: list[tuple[str, str, str]] = field(default_factory=list)  # (bid|ask, price, qty)
    trade_id: str = ""
    price: str = ""
    taker_side: str = ""


def binance_events(frame: OutFrame) -> list[Event]:
    data = json.loads(frame.data)
    if data["e"] == "depthUpdate":
        levels = [("bid", p, q) for p, q in data["b"]] + [("ask", p, q) for p, q in data["a"]]
        return [Event("depth", data["E"], levels)]
    assert data["E"] == data["T"]
    side = "sell" if data["m"] else "buy"
    return [Event("trade", data["T"], trade_id=str(data["t"]), price=data["p"], taker_side=side)]


def coinbase_events(frame: OutFrame) -> list[Event]:
    msg = json.loads(frame.data)
    stamp = rfc3339_ms(msg["timestamp"])
    (event,) = msg["events"]
    if msg["channel"] == "l2_data":
        assert all(rfc3339_ms(u["event_time"]) == stamp for u in event["updates"])
        levels = [
            ("bid" if u["side"] == "bid" else "ask", u["price_level"], u["new_quantity"])
            for u in event["updates"]
        ]
        return [Event("depth", stamp, levels)]
    (trade,) = event["trades"]
    assert rfc3339_ms(trade["time"]) == stamp
    side = "sell" if trade["side"] == "BUY" else "buy"  # the maker's side is printed
    return [
        Event("trade", stamp, trade_id=trade["trade_id"], price=trade["price"], taker_side=side)
    ]


def kraken_events(frame: OutFrame) -> list[Event]:
    if isinstance(frame, BookFrame):
        body = frame.body(frame.market.depth_levels)  # the whole book: every change is seen
        assert body is not None
        (data,) = json.loads(body, parse_float=str)["data"]
        levels = [
            (side[:3], level["price"], level["qty"])
            for side in ("bids", "asks")
            for level in data[side]
        ]
        return [Event("depth", rfc3339_ms(data["timestamp"]), levels)]
    (data,) = json.loads(frame.data, parse_float=str)["data"]
    return [
        Event(
            "trade",
            rfc3339_ms(data["timestamp"]),
            trade_id=str(data["trade_id"]),
            price=data["price"],
            taker_side=data["side"],
        )
    ]


@dataclass
class Case:
    venue: Callable[[], Venue]
    symbol: str
    events: Callable[[OutFrame], list[Event]]


CASES = {
    "binance": Case(
        lambda: BinanceVenue(("BTCUSDT",), SEED, 20, 5, 0.5, 6000), "BTCUSDT", binance_events
    ),
    "coinbase": Case(
        lambda: CoinbaseVenue(("BTC-USD",), SEED, 20, 5, 0.5, 0), "BTC-USD", coinbase_events
    ),
    "kraken": Case(lambda: KrakenVenue(("BTC/USD",), SEED, 20, 5, 0.5), "BTC/USD", kraken_events),
}


def clock(i: int) -> int:
    """A coarse clock: three steps per tick of 2 ms, then a stall, as a busy pacer sees it."""
    return T0 + (i // 3) * 2 if i < 300 else T0 + 200


def generate(case: Case, venue: Venue, steps: int) -> list[list[Event]]:
    """The events of each step, read from the frames the venue built."""
    out = []
    for i in range(steps):
        frames = [f for f in venue.step(case.symbol, clock(i)) if f.symbol]
        out.append([e for f in frames for e in case.events(f)])
    return out


def introspect(venue: Venue, resource: str, **query: str) -> Any:
    reply = venue.introspect(resource, {k: [v] for k, v in query.items()})
    assert reply.status == 200
    return orjson.loads(reply.body)


@pytest.mark.parametrize("exchange", list(CASES))
def test_event_times_strictly_increase_and_a_trade_precedes_its_effect(exchange: str) -> None:
    case = CASES[exchange]
    steps = generate(case, case.venue(), 400)
    # one time per step's taker (its trades share it, as one order's fills do) and per depth
    times = [e.time_ms for step in steps for e in step if e.kind == "depth" or e is step[0]]
    assert all(a < b for a, b in itertools.pairwise(times))
    assert T0 - 1 <= times[0] <= T0 and times[-1] > T0 + 200  # the stalled clock stalls none
    with_trade = [s for s in steps if s[0].kind == "trade"]
    assert len(with_trade) > 100
    assert any(len(s) > 2 for s in with_trade)  # some takers walk the book
    for step in steps:
        *trades, depth = step
        assert depth.kind == "depth" and all(t.kind == "trade" for t in trades)
        assert all(t.time_ms == step[0].time_ms for t in trades)
        if not trades:
            continue
        # the depth event after the trades carries their effect, one ms later
        assert depth.time_ms == trades[0].time_ms + 1
        side = "ask" if trades[0].taker_side == "buy" else "bid"
        for trade in trades:
            assert any(s == side and Decimal(p) == Decimal(trade.price) for s, p, _ in depth.levels)


@pytest.mark.parametrize("exchange", list(CASES))
def test_event_times_never_run_ahead_of_a_clock_that_keeps_up(exchange: str) -> None:
    """No frame is stamped later than it is generated (and sent) when the pace leaves 2 ms
    per step: a trade takes the ms before its depth event rather than the one after."""
    case = CASES[exchange]
    venue = case.venue()
    for i in range(200):
        now = T0 + 2 * i
        events = [e for f in venue.step(case.symbol, now) if f.symbol for e in case.events(f)]
        assert events[-1].time_ms == now
        assert all(e.time_ms <= now for e in events)


@pytest.mark.parametrize("exchange", list(CASES))
def test_truth_is_the_touch_of_the_rebuilt_book_before_each_trade(exchange: str) -> None:
    case = CASES[exchange]
    venue = case.venue()
    start = introspect(venue, "book", symbol=case.symbol)
    # price -> (price text, qty text) per side, as a client would hold it
    book: dict[str, dict[Decimal, tuple[str, str]]] = {
        side: {Decimal(p): (p, q) for p, q in start[f"{side}s"]} for side in ("bid", "ask")
    }
    steps = generate(case, venue, 400)
    truth = introspect(venue, "truth", symbol=case.symbol)
    assert truth["symbol"] == case.symbol
    rows = iter(truth["trades"])
    book_time = 0
    trades = 0
    last_trade_time = -1
    for event in (e for step in steps for e in step):
        if event.kind == "depth":
            for side, price, qty in event.levels:
                if Decimal(qty) == 0:
                    book[side].pop(Decimal(price), None)
                else:
                    book[side][Decimal(price)] = (price, qty)
            book_time = event.time_ms
            continue
        trades += 1
        row = next(rows)
        assert list(row) == TRUTH_KEYS
        bid, ask = book["bid"][max(book["bid"])], book["ask"][min(book["ask"])]
        assert row == {
            "trade_id": event.trade_id,
            "trade_time_ms": event.time_ms,
            "book_time_ms": book_time,
            "bid_price": bid[0],
            "bid_size": bid[1],
            "ask_price": ask[0],
            "ask_size": ask[1],
            "taker_side": event.taker_side,
        }
        # a taker trades at the touch it met first, then (a sweep) further from it
        touch = Decimal(ask[0] if event.taker_side == "buy" else bid[0])
        if event.time_ms != last_trade_time:
            assert Decimal(event.price) == touch
        else:
            assert (Decimal(event.price) - touch) * (1 if event.taker_side == "buy" else -1) > 0
        last_trade_time = event.time_ms
    assert next(rows, None) is None and trades > 100
    # from_time_ms: the trades at or after that time
    middle = truth["trades"][trades // 2]
    later = introspect(
        venue, "truth", symbol=case.symbol, from_time_ms=str(middle["trade_time_ms"])
    )
    assert later["trades"] == [
        t for t in truth["trades"] if t["trade_time_ms"] >= middle["trade_time_ms"]
    ]


# --- over HTTP ------------------------------------------------------------------------------


def test_truth_endpoint_and_delay_fault_requests() -> None:
    async def scenario() -> None:
        async with running_simulator(
            base_settings(), rate_per_symbol=0, coinbase_depth_levels=20
        ) as sim:
            for exchange, symbol in (
                ("binance", "BTCUSDT"),
                ("coinbase", "BTC-USD"),
                ("kraken", "BTC/USD"),
            ):
                sim.step(exchange, symbol, 30)
                url = f"{sim.http_url}/_sim/{exchange}/truth?symbol={symbol}"
                status, body = await http_json(url)
                assert status == 200
                assert body == introspect(sim.venues[exchange], "truth", symbol=symbol)
                assert body["symbol"] == symbol and body["trades"]
                assert all(list(t) == TRUTH_KEYS for t in body["trades"])
                last = body["trades"][-1]
                status, tail = await http_json(f"{url}&from_time_ms={last['trade_time_ms']}")
                # the last taker's trades (a sweep's share one time)
                same_time = [
                    t for t in body["trades"] if t["trade_time_ms"] == last["trade_time_ms"]
                ]
                assert (status, tail["trades"]) == (200, same_time)
                status, _ = await http_json(f"{url}&from_time_ms=soon")
                assert status == 400
            status, _ = await http_json(f"{sim.http_url}/_sim/kraken/truth?symbol=NOPE/USD")
            assert status == 400

            delay = f"{sim.http_url}/_sim/faults/delay?exchange=kraken"
            for bad in (
                "&count=0",
                "&min_ms=10&max_ms=5",
                "&symbol=NOPE/USD",
                "&count=0&duration_s=-1",
                "&count=x",
            ):
                status, _ = await http_json(delay + bad, "POST")
                assert status == 400, bad
            status, body = await http_json(f"{delay}&symbol=BTC/USD&count=3", "POST")
            assert status == 200
            assert body["faults"]["delays"] == [
                {
                    "action": "delay",
                    "exchange": "kraken",
                    "symbol": "BTC/USD",
                    "channel": "trade",
                    "remaining": 3,
                    "min_ms": 0,
                    "max_ms": 4000,
                    "seconds_left": None,
                }
            ]
            status, _ = await http_json(f"{delay}&count=0&duration_s=30", "POST")
            _, pending = await http_json(f"{sim.http_url}/_sim/faults")
            timed = pending["delays"][1]
            assert (timed["symbol"], timed["remaining"]) == (None, 0)
            assert 29 < timed["seconds_left"] <= 30
            await http_json(f"{sim.http_url}/_sim/faults/clear", "POST")
            _, pending = await http_json(f"{sim.http_url}/_sim/faults")
            assert pending["delays"] == []

    run(scenario)


# --- the delay fault on the wire ------------------------------------------------------------


class Reader:
    """Every text message of a client connection, decoded, in arrival order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.frames.append(json.loads(message))
        except ConnectionClosed:
            pass


@asynccontextmanager
async def reader(sim: SimulatorServer, path: str, *requests: str) -> AsyncIterator[Reader]:
    async with connect(f"{sim.ws_url}{path}", compression=None, max_size=None) as ws:
        r = Reader(ws)
        for request in requests:
            await ws.send(request)
        yield r


async def delay(sim: SimulatorServer, query: str) -> None:
    status, _ = await http_json(f"{sim.http_url}/_sim/faults/delay?{query}", "POST")
    assert status == 200


def conn_logs(sim: SimulatorServer, exchange: str) -> list[dict[str, Any]]:
    return [c for c in sim.connections() if c["exchange"] == exchange and c["open"]]


def test_delayed_binance_trades_arrive_late_and_all_of_them_even_while_paused() -> None:
    path = "/binance/stream?streams=btcusdt@depth@100ms/btcusdt@trade"

    async def scenario() -> None:
        async with (
            running_simulator(
                base_settings(),
                paused=True,
                rate_per_symbol=0,
                trade_probability=1.0,
                sweep_scale=0.0,  # one trade per taker: trades are told apart by their time
                depth_levels=10,
            ) as sim,
            reader(sim, path) as first,
            reader(sim, path) as second,
        ):
            await wait_until(lambda: len(conn_logs(sim, "binance")) == 2, what="connections")
            await delay(sim, "exchange=binance&symbol=BTCUSDT&count=6&min_ms=20&max_ms=600")
            sim.step("binance", "BTCUSDT", 12)
            trades = sim.status()["exchanges"]["binance"]["symbols"]["BTCUSDT"]["trade_count"]
            total = 12 + trades
            await wait_until(
                lambda: (
                    sim.pending_frames() == 0 and len(first.frames) == len(second.frames) == total
                ),
                what="every frame, the delayed ones too",
            )
            assert sim.paused
            assert sim.status()["faults_injected"] == {"delay": 6}  # once per frame, not per client
            assert [(c["frames_delayed"], c["frames_sent"]) for c in conn_logs(sim, "binance")] == [
                (6, total)
            ] * 2
            _, pending = await http_json(f"{sim.http_url}/_sim/faults")
            assert pending["delays"] == []
        for r in (first, second):
            events = [f["data"] for f in r.frames]
            time_of = lambda d: d["E"] if d["e"] == "depthUpdate" else d["T"]  # noqa: E731
            generated = sorted(events, key=time_of)  # event times strictly increase
            assert len({time_of(d) for d in events}) == total  # nothing lost or duplicated
            trade_times = [d["T"] for d in generated if d["e"] == "trade"]
            arrival = {time_of(d): i for i, d in enumerate(events)}
            delayed, on_time = trade_times[:6], trade_times[6:]
            # a delayed trade arrives after its own depth event (and others generated later) ...
            assert all(arrival[t] > arrival[t + 1] for t in delayed)
            # ... the others right before it
            assert all(arrival[t + 1] == arrival[t] + 1 for t in on_time)
            # and the delayed ones out of their own order too
            assert sorted(delayed, key=arrival.__getitem__) != delayed

    run(scenario)


def test_coinbase_sequence_num_stays_contiguous_with_delayed_trades() -> None:
    subscribe = [
        json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": c})
        for c in ("level2", "market_trades")
    ]

    async def scenario() -> None:
        async with (
            running_simulator(
                base_settings(),
                rate_per_symbol=0,
                trade_probability=1.0,
                sweep_scale=0.0,  # one trade per taker: trades are told apart by their time
                coinbase_products=("BTC-USD",),
                coinbase_depth_levels=20,
                coinbase_heartbeat_ms=0,
            ) as sim,
            reader(sim, "/coinbase", *subscribe) as client,
        ):
            # the level2 snapshot and two acks (no trades yet: no market_trades snapshot)
            await wait_until(lambda: len(client.frames) == 3, what="snapshot and acks")
            await delay(sim, "exchange=coinbase&count=5&min_ms=50&max_ms=400")
            sim.step("coinbase", "BTC-USD", 10)
            trades = sim.status()["exchanges"]["coinbase"]["symbols"]["BTC-USD"]["trade_count"]
            total = 3 + 10 + trades
            await wait_until(
                lambda: sim.pending_frames() == 0 and len(client.frames) == total,
                what="every message",
            )
            (log,) = conn_logs(sim, "coinbase")
            assert (log["frames_delayed"], log["frames_sent"]) == (5, total)
        # numbered in sending order: no gap, although messages left in another order
        assert [f["sequence_num"] for f in client.frames] == list(range(total))
        data = client.frames[3:]
        stamps = [rfc3339_ms(f["timestamp"]) for f in data]
        assert sorted(stamps) != stamps
        assert len(set(stamps)) == len(stamps) == 10 + trades
        trade_times = sorted(
            s for s, f in zip(stamps, data, strict=True) if f["channel"] == "market_trades"
        )
        arrival = {s: i for i, s in enumerate(stamps)}
        assert all(arrival[t] > arrival[t + 1] for t in trade_times[:5])
        assert all(arrival[t] + 1 == arrival[t + 1] for t in trade_times[5:])

    run(scenario)


def test_kraken_delay_for_a_duration_and_held_trades_survive_clear() -> None:
    subscribe = [
        json.dumps(
            {
                "method": "subscribe",
                "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 1000},
            }
        ),  # every step seen
        json.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}}),
    ]

    async def scenario() -> None:
        async with (
            running_simulator(
                base_settings(),
                rate_per_symbol=0,
                trade_probability=1.0,
                kraken_symbols=("BTC/USD",),
            ) as sim,
            reader(sim, "/kraken/v2", *subscribe) as client,
        ):

            def of(channel: str) -> list[dict[str, Any]]:
                return [
                    d
                    for f in client.frames
                    if f.get("channel") == channel and f.get("type") == "update"
                    for d in f["data"]
                ]

            def trade_count() -> int:
                status = sim.status()["exchanges"]["kraken"]["symbols"]["BTC/USD"]
                return int(status["trade_count"])

            await wait_until(
                lambda: any(f.get("type") == "snapshot" for f in client.frames),
                what="book snapshot",
            )
            await delay(sim, "exchange=kraken&count=0&duration_s=60&min_ms=800&max_ms=1000")
            sim.step("kraken", "BTC/USD", 5)
            held = trade_count()
            await wait_until(lambda: len(of("book")) == 5, what="book updates")
            assert of("trade") == []  # all held back
            await http_json(f"{sim.http_url}/_sim/faults/clear", "POST")
            sim.step("kraken", "BTC/USD", 5)  # after clear: sent at once
            await wait_until(
                lambda: sim.pending_frames() == 0 and len(of("trade")) == trade_count(),
                what="every trade",
            )
            ids = [t["trade_id"] for t in of("trade")]
            assert sorted(ids) == list(range(min(ids), min(ids) + len(ids)))  # all, once
            assert sorted(ids[-held:]) == sorted(ids)[:held]  # the held ones came last
            assert sim.status()["faults_injected"] == {"delay": held}
            (log,) = conn_logs(sim, "kraken")
            assert log["frames_delayed"] == held

            # a time-limited rule ends by itself
            await delay(sim, "exchange=kraken&count=0&duration_s=0.2")
            await wait_until(lambda: sim.faults.pending()["delays"] == [], what="expiry")
            sim.step("kraken", "BTC/USD", 3)
            await wait_until(
                lambda: sim.pending_frames() == 0 and len(of("trade")) == trade_count(),
                what="the new trades",
            )
            assert conn_logs(sim, "kraken")[0]["frames_delayed"] == held

    run(scenario)
