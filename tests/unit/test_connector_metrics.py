"""Connector metrics: moved by frames from the in-process simulator and by hand-fed frames,
served over HTTP with the names the alert rules and the dashboard use."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.__main__ import metrics_port, serve_metrics
from connectors.base import Connection, WsConnector
from connectors.binance import BinanceConnector, event_time_ms
from connectors.coinbase import CoinbaseConnector
from connectors.control import serve_resyncs
from connectors.kraken import KrakenConnector
from connectors.metrics import LATENCY_BUCKETS_S, ConnectorMetrics, MetricsServer
from schemas.control import ResyncRequest
from simulator.server import SimulatorServer
from simulator.testing import ListSink, http_json, pointed_at, running_simulator, wait_until
from tickflow.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
NAMES = (  # what monitoring/ depends on: sample names as exposed
    "tickflow_connector_frames_total",
    "tickflow_connector_bytes_total",
    "tickflow_connector_reconnects_total",
    "tickflow_connector_stale_timeouts_total",
    "tickflow_connector_dead_letters_total",
    "tickflow_connector_resyncs_total",
    "tickflow_connector_delivery_failures_total",
    "tickflow_connector_books_lost_total",
    "tickflow_connector_delivery_resyncs_total",
    "tickflow_connector_connected",
    "tickflow_connector_last_frame_timestamp_seconds",
    "tickflow_connector_exchange_latency_seconds_bucket",
    "tickflow_connector_exchange_latency_seconds_count",
    "tickflow_connector_exchange_latency_seconds_sum",
)
RECEIVED_NS = 1_700_000_000_000_000_000


def settings_for(**connector_overrides: Any) -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    lifecycle = dataclasses.replace(
        settings.connectors,
        **{"backoff_initial_s": 0.02, "backoff_max_s": 0.2, **connector_overrides},
    )
    exchanges = dataclasses.replace(
        settings.exchanges,
        binance=dataclasses.replace(settings.exchanges.binance, snapshot_stagger_ms=20),
        coinbase=dataclasses.replace(
            settings.exchanges.coinbase, message_interval_ms=5, symbols={"BTC-USD": "BTC-USD"}
        ),
        kraken=dataclasses.replace(
            settings.exchanges.kraken, message_interval_ms=10,
            symbols={"BTC/USD": "BTC-USD", "MATIC/USD": "MATIC-USD"},
        ),
    )
    return dataclasses.replace(settings, connectors=lifecycle, exchanges=exchanges)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def sample(metrics: ConnectorMetrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when it does not exist (yet)."""
    value = metrics.registry.get_sample_value(name, {"exchange": metrics.exchange, **labels})
    return 0.0 if value is None else value


def frames(metrics: ConnectorMetrics, channel: str) -> float:
    return sample(metrics, "tickflow_connector_frames_total", channel=channel)


def latency_buckets(metrics: ConnectorMetrics) -> dict[str, float]:
    """le -> cumulative count."""
    bounds = [*(str(b) for b in LATENCY_BUCKETS_S), "+Inf"]
    name = "tickflow_connector_exchange_latency_seconds_bucket"
    return {le: sample(metrics, name, le=le) for le in bounds}


class Running:
    """A connector task against a simulator; stopped (and awaited) on exit."""

    def __init__(self, cls: type[WsConnector], sim: SimulatorServer, settings: Settings) -> None:
        self.sink = ListSink()
        factory: Any = cls  # the exchange classes take the Settings, the base its lifecycle
        self.connector: WsConnector = factory(
            pointed_at(settings, sim), self.sink, random.Random(1), ConnectorMetrics(cls.exchange)
        )
        self.metrics = self.connector.metrics
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self.connector.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.connector.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)


# --- against the simulator ------------------------------------------------------------------


def test_binance_frames_move_frames_bytes_last_frame_and_latency() -> None:
    settings = settings_for()

    async def scenario() -> None:
        async with running_simulator(settings, rate_per_symbol=200, depth_levels=20) as sim:
            started_ns = time.time_ns()
            async with Running(BinanceConnector, sim, settings) as r:
                m = r.metrics
                await wait_until(
                    lambda: frames(m, "snapshot") == 2 and frames(m, "trade") > 0,
                    what="both snapshots and a trade",
                )
                assert sample(m, "tickflow_connector_connected") == 1
                # read in the loop's thread between frames: everything below is consistent
                envelopes = r.sink.envelopes
                for channel in ("depth", "trade", "snapshot"):
                    assert frames(m, channel) == sum(e.channel == channel for e in envelopes)
                ws_frames = [e for e in envelopes if e.channel in ("depth", "trade")]
                last = sample(m, "tickflow_connector_last_frame_timestamp_seconds")
                assert last == max(e.receive_time_ns for e in ws_frames) / 1e9
                assert started_ns / 1e9 <= last <= time.time()
                # every WebSocket frame carries E; REST snapshots carry none
                count = sample(m, "tickflow_connector_exchange_latency_seconds_count")
                assert count == latency_buckets(m)["+Inf"] == len(ws_frames)
                assert sample(m, "tickflow_connector_exchange_latency_seconds_sum") >= 0
                # WebSocket frames plus the two REST snapshot bodies, nothing else
                assert sample(m, "tickflow_connector_bytes_total") == sum(
                    len(e.payload) for e in envelopes
                )
                assert sample(m, "tickflow_connector_dead_letters_total") == 0
                assert sample(m, "tickflow_connector_reconnects_total", reason="closed") == 0
        assert sample(r.metrics, "tickflow_connector_connected") == 0  # stopped

    run(scenario)


@pytest.mark.parametrize("cls", [CoinbaseConnector, KrakenConnector], ids=lambda c: c.exchange)
def test_coinbase_and_kraken_frames_move_frames_and_latency(cls: type[WsConnector]) -> None:
    settings = settings_for()

    async def scenario() -> None:
        async with (
            running_simulator(
                settings, rate_per_symbol=200, coinbase_products=("BTC-USD",),
                coinbase_depth_levels=20, kraken_symbols=("BTC/USD",),
            ) as sim,
            Running(cls, sim, settings) as r,
        ):
            m = r.metrics
            await wait_until(
                lambda: sample(m, "tickflow_connector_exchange_latency_seconds_count") >= 10,
                what="frames with an event time",
            )
            assert frames(m, "depth") == sum(e.channel == "depth" for e in r.sink.envelopes)
            assert sample(m, "tickflow_connector_bytes_total") > 0
            assert sample(m, "tickflow_connector_connected") == 1

    run(scenario)


def test_silent_socket_counts_a_stale_timeout_drops_connected_and_reconnects() -> None:
    # a long first backoff keeps the connector disconnected long enough to see it
    settings = settings_for(stale_timeout_s=0.5, backoff_initial_s=1.0, backoff_jitter=0.0)

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=50) as sim,
            Running(BinanceConnector, sim, settings) as r,
        ):
            m = r.metrics
            await wait_until(lambda: frames(m, "snapshot") == 2, what="first snapshots")
            assert sample(m, "tickflow_connector_connected") == 1
            await http_json(f"{sim.http_url}/_sim/faults/silent?exchange=binance", "POST")
            await wait_until(
                lambda: sample(m, "tickflow_connector_reconnects_total", reason="stale") == 1,
                what="a stale timeout and the reconnect it causes",
            )
            assert sample(m, "tickflow_connector_stale_timeouts_total") == 1
            assert sample(m, "tickflow_connector_connected") == 0  # backing off for 1 s
            silent_since = sample(m, "tickflow_connector_last_frame_timestamp_seconds")
            await wait_until(
                lambda: frames(m, "snapshot") == 4, what="a new connection and its snapshots"
            )
            assert sample(m, "tickflow_connector_connected") == 1
            assert sample(m, "tickflow_connector_last_frame_timestamp_seconds") > silent_since
            assert sample(m, "tickflow_connector_stale_timeouts_total") == 1
            for reason in ("closed", "ping_timeout", "recycled", "refused", "error"):
                assert sample(m, "tickflow_connector_reconnects_total", reason=reason) == 0

    run(scenario)


def test_a_dropped_connection_is_a_reconnect_because_closed() -> None:
    settings = settings_for()

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=100) as sim,
            Running(BinanceConnector, sim, settings) as r,
        ):
            m = r.metrics
            await wait_until(lambda: frames(m, "snapshot") == 2, what="first snapshots")
            await http_json(f"{sim.http_url}/_sim/faults/disconnect", "POST")
            await wait_until(lambda: frames(m, "snapshot") == 4, what="second snapshots")
            assert sample(m, "tickflow_connector_reconnects_total", reason="closed") == 1
            assert sample(m, "tickflow_connector_stale_timeouts_total") == 0

    run(scenario)


# --- hand-fed frames ------------------------------------------------------------------------


def hand_fed(cls: type[WsConnector]) -> tuple[WsConnector, Connection]:
    factory: Any = cls
    connector: WsConnector = factory(settings_for(), ListSink())
    return connector, Connection(None)  # type: ignore[arg-type]  # handle_frame never uses the socket


@pytest.mark.parametrize(
    ("cls", "fixture", "event_time_ns"),
    [
        # "E":1672515782136
        (BinanceConnector, "binance/combined_depth_update.json", 1672515782136 * 10**6),
        # "timestamp":"2023-02-09T20:32:51.327893447Z" (the message's)
        (CoinbaseConnector, "coinbase/doc_l2_update.json", 1675974771327893447),
        # data[0].timestamp "2023-10-06T17:35:55.440295Z"
        (KrakenConnector, "kraken/doc_book_update.json", 1696613755440295000),
    ],
    ids=["binance", "coinbase", "kraken"],
)
def test_latency_is_receive_time_minus_the_exchanges_event_time(
    cls: type[WsConnector], fixture: str, event_time_ns: int
) -> None:
    connector, conn = hand_fed(cls)
    frame = (FIXTURES / fixture).read_bytes().strip()
    frame = frame.replace(b"bnbbtc@", b"btcusdt@")  # a configured Binance stream
    m = connector.metrics
    connector.handle_frame(conn, frame, event_time_ns + 30_000_000)  # 30 ms later
    connector.handle_frame(conn, frame, event_time_ns + 7_000_000_000)  # 7 s: beyond the buckets
    connector.handle_frame(conn, frame, event_time_ns - 5_000_000)  # clock behind: counts as 0
    assert len(connector.sink.envelopes) == 3  # type: ignore[attr-defined]
    buckets = latency_buckets(m)
    assert [buckets[le] for le in ("0.001", "0.025", "0.05", "5.0", "+Inf")] == [1, 1, 2, 2, 3]
    assert sample(m, "tickflow_connector_exchange_latency_seconds_sum") == pytest.approx(7.03)
    assert frames(m, "depth") == 3
    assert sample(m, "tickflow_connector_bytes_total") == 3 * len(frame)


def test_frames_without_an_event_time_are_not_observed() -> None:
    connector, conn = hand_fed(KrakenConnector)
    snapshot = (FIXTURES / "kraken" / "doc_book_snapshot.json").read_bytes().strip()
    trade_snapshot = (FIXTURES / "kraken" / "doc_trade.json").read_bytes().strip().replace(
        b'"type":"update"', b'"type":"snapshot"'  # a trade snapshot's times are old trades'
    )
    connector.handle_frame(conn, snapshot, RECEIVED_NS)
    connector.handle_frame(conn, trade_snapshot, RECEIVED_NS)
    m = connector.metrics
    assert frames(m, "depth") == frames(m, "trade") == 1
    assert sample(m, "tickflow_connector_exchange_latency_seconds_count") == 0


def test_unroutable_frames_count_as_dead_letters_not_frames() -> None:
    connector, conn = hand_fed(BinanceConnector)
    connector.handle_frame(conn, b"{not json", RECEIVED_NS)
    m = connector.metrics
    assert sample(m, "tickflow_connector_dead_letters_total") == 1
    assert sample(m, "tickflow_connector_bytes_total") == len(b"{not json")
    assert frames(m, "depth") == frames(m, "trade") == 0
    assert sample(m, "tickflow_connector_last_frame_timestamp_seconds") == 0


def test_binance_event_time_is_read_without_parsing() -> None:
    assert event_time_ms(b'{"stream":"x@trade","data":{"e":"trade","E":123,"s":"X"}}') == 123
    assert event_time_ms(b'{"stream":"x@trade","data":{"e":"trade"}}') is None
    assert event_time_ms(b'{"data":{"E":"soon","s":"X"}}') is None


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2023-02-09T20:32:50Z", 1675974770_000000000),
        ("2023-02-09T20:32:50.714Z", 1675974770_714000000),
        ("2023-09-25T07:49:37.708706Z", 1695628177_708706000),
        ("2023-02-09T20:32:50.714964855+00:00", None),  # only the exchanges' "Z" form
        ("2023-02-09T20:32:infZ", None),
        ("yesterday", None),
    ],
)
def test_rfc3339_event_times(timestamp: str, expected: int | None) -> None:
    got = ConnectorMetrics("coinbase").iso_ns(timestamp)
    assert got == expected if expected is None else got == pytest.approx(expected, abs=1000)


def test_resync_requests_served_are_counted_and_coalesced_ones_are_not() -> None:
    connector, _ = hand_fed(BinanceConnector)

    async def scenario() -> None:
        queue: asyncio.Queue[ResyncRequest] = asyncio.Queue()
        for symbol in ("BTCUSDT", "BTCUSDT", "ETHUSDT"):  # the second within the interval
            queue.put_nowait(ResyncRequest("binance", symbol, "gap"))
        task = asyncio.create_task(serve_resyncs(queue, connector.serve_resync_request, 60.0))
        await wait_until(queue.empty, what="requests taken")
        await asyncio.sleep(0)
        task.cancel()

    run(scenario)
    assert sample(connector.metrics, "tickflow_connector_resyncs_total") == 2


def test_every_connector_has_its_own_registry() -> None:
    one, _ = hand_fed(BinanceConnector)
    two, conn = hand_fed(BinanceConnector)
    two.handle_frame(conn, b"{not json", RECEIVED_NS)
    assert sample(one.metrics, "tickflow_connector_dead_letters_total") == 0
    assert sample(two.metrics, "tickflow_connector_dead_letters_total") == 1


# --- the HTTP endpoint ----------------------------------------------------------------------


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def test_metrics_endpoint_serves_every_name_with_its_type() -> None:
    connector, conn = hand_fed(BinanceConnector)
    frame = (FIXTURES / "binance" / "combined_depth_update.json").read_bytes().strip()
    connector.handle_frame(conn, frame.replace(b"bnbbtc@", b"btcusdt@"), 1672515782136 * 10**6)
    server = MetricsServer(connector.metrics.registry, 0)  # any free port, on loopback
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        body = scrape(server.url)
    finally:
        server.close()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = {s.name: s for f in families.values() for s in f.samples}
    for name in NAMES:
        assert name in samples, name
    types = {name: families[name].type for name in families}
    assert types == {
        "tickflow_connector_frames": "counter",
        "tickflow_connector_bytes": "counter",
        "tickflow_connector_reconnects": "counter",
        "tickflow_connector_stale_timeouts": "counter",
        "tickflow_connector_dead_letters": "counter",
        "tickflow_connector_delivery_failures": "counter",
        "tickflow_connector_books_lost": "counter",
        "tickflow_connector_delivery_resyncs": "counter",
        "tickflow_connector_resyncs": "counter",
        "tickflow_connector_connected": "gauge",
        "tickflow_connector_last_frame_timestamp_seconds": "gauge",
        "tickflow_connector_exchange_latency_seconds": "histogram",
    }
    by_channel = {
        s.labels["channel"]: s.value for s in families["tickflow_connector_frames"].samples
        if s.name == "tickflow_connector_frames_total" and s.labels["exchange"] == "binance"
    }
    assert by_channel == {"depth": 1, "trade": 0}  # depth and trade exist from the start
    reasons = {
        s.labels["reason"] for s in families["tickflow_connector_reconnects"].samples
        if s.name == "tickflow_connector_reconnects_total"
    }
    assert reasons == {"stale", "closed", "ping_timeout", "recycled", "refused", "error"}
    assert samples["tickflow_connector_last_frame_timestamp_seconds"].value == 1672515782.136


def test_metrics_port_comes_from_the_monitoring_section() -> None:
    settings = settings_for()
    assert [metrics_port(settings, ex) for ex in ("binance", "coinbase", "kraken")] == [
        9101, 9102, 9103,
    ]
    monitoring = dataclasses.replace(settings.monitoring, connector_metrics_ports={})
    with pytest.raises(ConfigError, match="connector_metrics_ports"):
        metrics_port(dataclasses.replace(settings, monitoring=monitoring), "binance")


def test_a_metrics_port_in_use_is_logged_and_the_connector_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert serve_metrics(ConnectorMetrics("binance"), port) is None
    assert f"metrics NOT served, port {port}" in caplog.text
