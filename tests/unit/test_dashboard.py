"""The dashboard (monitoring/dashboard.py), the alert receiver (monitoring/alerts.py) and the
Grafana provisioning (docker/grafana/).

State building reads a real Redis (127.0.0.1:6379, skipped when it does not answer) under a key
prefix of its own, written by the job's own writers (jobs/sinks/redis_books.py), and removes
its keys afterwards. Prometheus is a fake HTTP server here (or a port nobody listens on); the
webhook is a local HTTP server.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import yaml

from jobs.sinks.book_reader import read_all_nbbos, render_nbbos
from jobs.sinks.redis_books import LEASE_FIELD, nbbo_key, redis_client
from monitoring import dashboard as dash
from monitoring.alerts import (
    FIRING,
    RESOLVED,
    AlertPayloadError,
    AlertReceiver,
    AlertStore,
    WebhookForwarder,
    parse_alerts,
    parse_time,
)
from tests.unit.redis_market import Book, Nbbo, publish
from tickflow.config import RedisConfig, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "docker" / "grafana"


# --- helpers ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


WRITE_TOKEN = "test-write-token"


def _post(
    url: str,
    body: bytes,
    token: str | None = WRITE_TOKEN,
    content_type: str = "application/json",
    origin: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["Origin"] = origin
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class _Server:
    """A loopback HTTP server on an ephemeral port answering with ``handle(method, path,
    query, body) -> (status, json)``; records the requests it got."""

    def __init__(self, handle: Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]):
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, url.path, query, body))
                status, value = handle(self.command, url.path, query, body)
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def redis_config() -> Iterator[RedisConfig]:
    """The configured Redis under a prefix of this test's own; its keys are removed after."""
    base = load_settings().redis
    config = dataclasses.replace(base, key_prefix=f"tftest-dash-{uuid.uuid4().hex[:10]}")
    client = redis_client(config)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis does not answer on {config.host}:{config.port}: {e}")
    try:
        yield config
    finally:
        keys = list(client.scan_iter(match=f"{config.key_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def make_dashboard() -> Iterator[Callable[..., dash.Dashboard]]:
    made: list[dash.Dashboard] = []

    def make(redis_config: RedisConfig, **kwargs: Any) -> dash.Dashboard:
        kwargs.setdefault("prometheus_url", None)
        kwargs.setdefault("interval_s", 0.2)
        d = dash.Dashboard(dash.DashboardConfig(redis=redis_config, **kwargs))
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def _view(
    exchange: str,
    symbol: str,
    instrument: str,
    version: int,
    status: str = "LIVE",
    reason: str = "",
    receive_time_ns: int | None = None,
    bid: str = "64999.5",
    ask: str = "65000.5",
) -> Book:
    live = status == "LIVE"
    return Book(
        exchange=exchange,
        symbol=symbol,
        instrument=instrument,
        status=status,
        reason=reason,
        seq=version * 10,
        version=version,
        bids=((bid, "1.5"), (str(Decimal(bid) - 1), "2")) if live else (),
        asks=((ask, "0.25"), (str(Decimal(ask) + 1), "3")) if live else (),
        event_time_ms=int(time.time() * 1000),
        receive_time_ns=receive_time_ns if receive_time_ns is not None else time.time_ns(),
    )


def _nbbo(version: int) -> Nbbo:
    return Nbbo(
        instrument="BTC-USD",
        quote="USD",
        version=version,
        bid_price="64999.5",
        bid_size="1.5",
        bid_venues=("coinbase:BTC-USD",),
        ask_price="65000.5",
        ask_size="0.25",
        ask_venues=("coinbase:BTC-USD", "kraken:XBT/USD"),
        venues=("coinbase:BTC-USD", "kraken:XBT/USD"),
        excluded={"binance:BTCUSDT": "RESYNCING"},
        event_time_ms=int(time.time() * 1000),
        receive_time_ns=time.time_ns() - 20_000_000,
    )


def _write_market(config: RedisConfig, version: int = 1) -> None:
    publish(
        config,
        _view("coinbase", "BTC-USD", "BTC-USD", version),
        _view("kraken", "XBT/USD", "BTC-USD", version, bid="64998", ask="65001"),
        _view("binance", "BTCUSDT", "BTC-USDT", version, "RESYNCING", "gap 10..12"),
        _nbbo(version),
    )


# --- state from Redis ---


def test_read_books_and_nbbo_from_redis(redis_config: RedisConfig) -> None:
    _write_market(redis_config)
    client = redis_client(redis_config, decode_responses=True)
    books = {
        (b["exchange"], b["symbol"]): b for b in dash.read_books(client, redis_config.key_prefix)
    }
    assert set(books) == {("coinbase", "BTC-USD"), ("kraken", "XBT/USD"), ("binance", "BTCUSDT")}
    coinbase = books[("coinbase", "BTC-USD")]
    assert coinbase["status"] == "LIVE"
    assert coinbase["instrument"] == "BTC-USD"
    assert coinbase["best_bid"] == ["64999.5", "1.5"]
    assert coinbase["best_ask"] == ["65000.5", "0.25"]
    assert coinbase["spread"] == "1.0"
    assert coinbase["depth"] == [2, 2]
    assert coinbase["seq"] == 10
    assert coinbase["version"] == "1"
    assert 0 <= coinbase["e2e_ms"] < 1000
    assert 0 <= coinbase["age_ms"] < 10_000
    binance = books[("binance", "BTCUSDT")]
    assert (binance["status"], binance["reason"]) == ("RESYNCING", "gap 10..12")
    assert binance["best_bid"] is None and binance["spread"] is None
    assert books[("kraken", "XBT/USD")]["best_bid"] == ["64998", "1.5"]

    (nbbo,) = dash.read_nbbos(client, redis_config.key_prefix)
    assert nbbo["instrument"] == "BTC-USD"
    assert (nbbo["bid_price"], nbbo["bid_size"], nbbo["ask_price"]) == ("64999.5", "1.5", "65000.5")
    assert nbbo["ask_venues"] == ["coinbase:BTC-USD", "kraken:XBT/USD"]
    assert nbbo["venues"] == ["coinbase:BTC-USD", "kraken:XBT/USD"]
    assert nbbo["excluded"] == {"binance:BTCUSDT": "RESYNCING"}
    assert nbbo["locked"] is False and nbbo["crossed"] is False
    assert nbbo["spread"] == "1.0"
    assert 19 <= nbbo["e2e_ms"] < 1000
    assert nbbo["live"] is True  # no lease written: leases off
    client.close()


def test_the_terminal_view_shows_the_nbbo_and_an_expired_lease(redis_config: RedisConfig) -> None:
    _write_market(redis_config)
    (nbbo,) = read_all_nbbos(redis_config)
    assert (nbbo.instrument, nbbo.bid_price, nbbo.ask_price, nbbo.live) == (
        "BTC-USD", "64999.5", "65000.5", True
    )
    line = render_nbbos([nbbo]).splitlines()[1]
    assert "BTC-USD" in line and "64999.5" in line and "1.0" in line and "EXPIRED" not in line
    client = redis_client(redis_config)
    client.hset(nbbo_key(redis_config.key_prefix, "BTC-USD"), LEASE_FIELD, 1)  # long past
    client.hset(nbbo_key(redis_config.key_prefix, "BTC-USD"), "crossed", 1)
    client.close()
    (expired,) = read_all_nbbos(redis_config)
    assert not expired.live and expired.crossed
    assert render_nbbos([expired]).splitlines()[1].endswith("CROSSED EXPIRED")


def test_the_dashboard_reads_the_books_and_nbbo_the_jobs_core_writes(
    redis_config: RedisConfig,
) -> None:
    import tickflow_native

    from jobs.backfill import core_rules
    from jobs.sinks.redis_books import RedisBatch, redis_client
    from schemas.bundles import frame_bundle
    from tests.unit.core_driver import binance, bn_depth, bn_snapshot

    settings = load_settings()
    core = tickflow_native.NativeStream(
        **core_rules(settings.book, settings.analytics),
        stale_after_ms=0,
        resync_retry_ms=10_000,
        redis_prefix=redis_config.key_prefix,
    )
    now_ms = int(time.time() * 1000)
    frames = [
        binance("snapshot", bn_snapshot(10, [["1.0", "2"], ["0.9", "1"]], [["1.1", "3"]]), now_ms),
        binance("depth", bn_depth(11, 11, now_ms, [["1.05", "0.5"]], []), now_ms),
    ]
    core.process_bundle("BNB-BTC", frame_bundle([(f, now_ms) for f in frames]), 0, now_ms)
    client = redis_client(redis_config, decode_responses=True)
    batch = RedisBatch(client)
    for is_nbbo, keys, args in core.take_redis(time.time_ns()):
        batch.add_write(is_nbbo, keys, args)
    assert batch.flush() == [True, True]
    (book,) = dash.read_books(client, redis_config.key_prefix)
    assert (book["exchange"], book["symbol"]) == ("binance", "BNBBTC")
    assert book["instrument"] == "BNB-BTC"
    assert (book["status"], book["seq"]) == ("LIVE", 11)
    assert book["best_bid"] == ["1.05", "0.5"] and book["best_ask"] == ["1.1", "3"]
    assert book["depth"] == [3, 1] and book["spread"] == "0.05"
    (nbbo,) = dash.read_nbbos(client, redis_config.key_prefix)
    assert (nbbo["instrument"], nbbo["bid_price"], nbbo["ask_price"]) == ("BNB-BTC", "1.05", "1.1")
    assert nbbo["venues"] == ["binance:BNBBTC"] and nbbo["excluded"] == {}
    client.close()


def test_state_without_prometheus_is_na(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    _write_market(redis_config)
    state = make_dashboard(redis_config).refresh()
    json.dumps(state)  # serialisable as is
    assert state["prefix"] == redis_config.key_prefix
    assert state["redis"]["up"] is True
    assert state["prometheus"]["up"] is False
    assert state["rates"]["connector_frames_per_s"] is None
    assert state["latency"]["exchange_ms"] is None
    assert state["consumer_lag_ms"] is None and state["books_not_live"] is None
    assert state["books_summary"] == {"total": 3, "LIVE": 2, "RESYNCING": 1}
    assert [n["instrument"] for n in state["nbbo"]] == ["BTC-USD"]
    assert state["alerts"] == []


def test_redis_down_still_gives_a_state(make_dashboard: Callable[..., dash.Dashboard]) -> None:
    config = RedisConfig(host="127.0.0.1", port=_free_port(), db=0, key_prefix="tftest-none")
    d = make_dashboard(config)
    port = d.start("127.0.0.1", 0)
    state = d.refresh()
    assert state["redis"]["up"] is False and state["redis"]["error"]
    assert state["books"] == [] and state["nbbo"] == []
    status, body, _ = _get(f"http://127.0.0.1:{port}/")
    assert status == 200 and b'data-testid="redis-status"' in body


def test_dashboard_http_endpoints_and_sampled_latency(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    d = make_dashboard(redis_config)
    port = d.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    _wait(d.sampler.subscribed.is_set)
    for version in range(1, 6):
        received = time.time_ns() - 50_000_000  # 50 ms before the write
        book = _view("coinbase", "BTC-USD", "BTC-USD", version, receive_time_ns=received)
        publish(redis_config, book, _nbbo(version))
        time.sleep(0.25)  # > the sampler's poll: one sample per write
    _wait(lambda: (d.latency.summary()["all"]["count"] or 0) >= 3)
    d.refresh()

    status, body, content_type = _get(f"{base}/api/state")
    assert status == 200 and content_type == "application/json"
    state = json.loads(body)
    redis_ms = state["latency"]["redis_ms"]
    assert redis_ms["coinbase"]["count"] >= 3
    assert 50 <= redis_ms["coinbase"]["p50"] < 1000
    assert redis_ms["all"]["p99"] >= redis_ms["all"]["p50"]
    assert state["rates"]["book_writes_per_s"]["coinbase"] > 0
    assert state["rates"]["nbbo_updates_per_s"] > 0
    (book,) = state["books"]
    assert book["writes_per_s"] > 0 and book["seq"] == 50

    status, body, content_type = _get(f"{base}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    text = body.decode()
    count = re.search(r'tickflow_book_e2e_latency_seconds_count\{exchange="coinbase"\} (\S+)', text)
    assert count is not None and float(count.group(1)) >= 3
    assert 'tickflow_book_e2e_latency_seconds_bucket{exchange="coinbase",le="0.025"} 0.0' in text
    assert "tickflow_dashboard_redis_up 1.0" in text
    assert "tickflow_dashboard_prometheus_up 0.0" in text

    status, body, _ = _get(f"{base}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"

    status, body, content_type = _get(f"{base}/")
    assert status == 200 and content_type.startswith("text/html")
    html = body.decode()
    assert '<script id="initial-state" type="application/json">' in html
    assert 'data-testid="nbbo"' in html and "/static/app.js" in html
    assert "<!--initial-state-->" not in html
    embedded = html.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded.replace("<\\/", "</"))["prefix"] == redis_config.key_prefix

    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, body, content_type = _get(f"{base}/static/{name}")
        assert status == 200 and content_type.startswith(kind) and body
    assert _get(f"{base}/static/../dashboard.py")[0] == 404
    assert _get(f"{base}/static/%2e%2e%2fdashboard.py")[0] == 404
    assert _get(f"{base}/nope")[0] == 404


def test_event_stream_pushes_snapshots(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    d = make_dashboard(redis_config, interval_s=0.1)
    port = d.start("127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=5) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events: list[dict[str, Any]] = []
        while len(events) < 3:
            line = r.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
        assert d.event_clients == 1
    assert all(e["prefix"] == redis_config.key_prefix for e in events)
    assert events[2]["generated_at_ms"] > events[0]["generated_at_ms"]


def test_sampler_takes_one_sample_per_version(redis_config: RedisConfig) -> None:
    client = redis_client(redis_config, decode_responses=True)
    latency = dash.LatencyWindow()
    sampler = dash.BookSampler(
        client, redis_config.key_prefix, latency, dash.RateWindow(), dash.RateWindow()
    )
    try:
        publish(
            redis_config,
            _view("kraken", "XBT/USD", "BTC-USD", 7, receive_time_ns=time.time_ns() - 10**8),
        )
        channel = sampler.book_channel
        sampler.handle(channel, "kraken:XBT/USD:70:LIVE:7")
        sampler.handle(channel, "kraken:XBT/USD:70:LIVE:7")
        assert sampler.sample() == 1
        sampler.handle(channel, "kraken:XBT/USD:70:LIVE:7")
        assert sampler.sample() == 0  # same version: already counted
        sampler.handle(channel, "garbage")
        assert sampler.sample() == 0
        summary = latency.summary()
        assert summary["kraken"]["count"] == 1
        p50 = summary["kraken"]["p50"]
        assert p50 is not None and 100 <= p50 < 1000
    finally:
        client.close()


# --- rolling windows ---


def test_latency_window_quantiles_and_expiry() -> None:
    window = dash.LatencyWindow(window_s=10)
    for i in range(1, 101):
        window.add("binance", i / 1000, now=100.0)
    window.add("kraken", 0.5, now=105.0)
    summary = window.summary(now=105.0)
    assert summary["binance"] == {"count": 100, "p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert summary["all"]["count"] == 101 and summary["all"]["max"] == 500.0
    later = window.summary(now=111.0)  # the binance samples left the window
    assert "binance" not in later and later["all"]["count"] == 1
    assert dash.LatencyWindow().summary()["all"] == {
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }


def test_rate_window() -> None:
    window = dash.RateWindow(window_s=10)
    window.started = 0.0
    for i in range(50):
        window.add("binance:BTCUSDT", now=10.0 + i * 0.1)
    window.add("kraken:XBT/USD", now=14.0)
    assert window.rates(now=15.0) == {"binance:BTCUSDT": 5.0, "kraken:XBT/USD": 0.1}
    assert window.rates(now=30.0) == {}
    assert dash._by_exchange({"binance:A": 1.5, "binance:B": 2.0, "kraken:X/Y": 1.0}) == {
        "binance": 3.5,
        "kraken": 1.0,
    }


def test_parse_book_update() -> None:
    assert dash.parse_book_update("binance:BTCUSDT:123:LIVE:0042") == ("binance", "BTCUSDT", "LIVE")
    assert dash.parse_book_update("kraken:XBT/USD:9:RESYNCING:3") == (
        "kraken",
        "XBT/USD",
        "RESYNCING",
    )
    assert dash.parse_book_update("nonsense") is None
    assert dash.parse_book_update(":a:b:c:d") is None


# --- Prometheus ---


def _fake_prometheus(up: bool = True) -> _Server:
    def handle(method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        if path == "/api/v1/alerts":
            alert = {
                "labels": {"alertname": "ConsumerLagHigh", "severity": "warning"},
                "annotations": {"summary": "lag 5 s"},
                "state": "firing",
                "activeAt": "2026-01-01T00:00:00.123456789Z",
                "value": "5000",
            }
            return 200, {"status": "success", "data": {"alerts": [alert]}}
        expr = query.get("query", "")

        def vector(*series: tuple[dict[str, str], str]) -> tuple[int, Any]:
            result = [{"metric": m, "value": [time.time(), v]} for m, v in series]
            return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}

        if expr == dash.QUERIES.connector_rates:
            return vector(({"exchange": "binance"}, "120.5"), ({"exchange": "kraken"}, "33"))
        if expr.startswith("histogram_quantile(0.5,"):
            return vector(({"exchange": "binance"}, "0.004"), ({"exchange": "kraken"}, "NaN"))
        if expr.startswith("histogram_quantile("):
            return vector(({"exchange": "binance"}, "0.02"))
        if expr == dash.QUERIES.consumer_lag_ms:
            return vector(({"subtask_index": "0"}, "250"), ({"subtask_index": "1"}, "900"))
        if expr == dash.QUERIES.books_not_live:
            return 400, {"status": "error", "errorType": "bad_data", "error": "parse error"}
        return vector()

    return _Server(handle)


def test_collect_prometheus_from_its_api() -> None:
    server = _fake_prometheus()
    try:
        view = dash.collect_prometheus(dash.PrometheusClient(server.url))
    finally:
        server.close()
    assert view["up"] is True and view["error"] is None
    assert view["connector_rates"] == {"binance": 120.5, "kraken": 33.0}
    assert view["exchange_latency_ms"] == {
        "binance": {"p50": 4.0, "p90": 20.0, "p99": 20.0},
        "kraken": {"p50": None},  # NaN: no observations
    }
    assert view["consumer_lag_ms"] == 900.0  # the worst subtask
    assert view["books_not_live"] is None and "parse error" in view["errors"]["books_not_live"]
    (alert,) = view["alerts"]
    assert (alert["name"], alert["status"], alert["source"]) == (
        "ConsumerLagHigh",
        FIRING,
        "prometheus",
    )
    queries = {q.get("query") for _, path, q, _ in server.requests if path == "/api/v1/query"}
    assert dash.QUERIES.consumer_lag_ms in queries
    assert dash.CONSUMER_LAG_METRIC in dash.QUERIES.consumer_lag_ms


def test_prometheus_down_is_na_quickly() -> None:
    started = time.monotonic()
    view = dash.collect_prometheus(dash.PrometheusClient(f"http://127.0.0.1:{_free_port()}"))
    assert time.monotonic() - started < 2
    assert view["up"] is False and view["error"]
    assert view["connector_rates"] is None and view["exchange_latency_ms"] is None
    assert view["consumer_lag_ms"] is None and view["alerts"] == []


def test_prometheus_hanging_times_out() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = dash.PrometheusClient(f"http://127.0.0.1:{listener.getsockname()[1]}", 0.3)
        started = time.monotonic()
        view = dash.collect_prometheus(client)
    assert time.monotonic() - started < 2  # gives up after the first query
    assert view["up"] is False and "timed out" in view["error"]


def test_prometheus_unavailable_503() -> None:
    server = _Server(lambda *_: (503, {"status": "error", "error": "not ready"}))
    try:
        view = dash.collect_prometheus(dash.PrometheusClient(server.url))
    finally:
        server.close()
    assert view["up"] is False and "503" in view["error"]


def test_dashboard_page_renders_with_prometheus_down(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    _write_market(redis_config)
    d = make_dashboard(redis_config, prometheus_url=f"http://127.0.0.1:{_free_port()}")
    d.poll_prometheus()
    state = d.refresh()
    assert state["prometheus"]["up"] is False and state["prometheus"]["url"]
    assert state["rates"]["connector_frames_per_s"] is None
    assert state["books_summary"]["total"] == 3
    port = d.start("127.0.0.1", 0)
    status, body, _ = _get(f"http://127.0.0.1:{port}/")
    assert status == 200 and b"n/a" in body
    assert b'"connector_frames_per_s":null' in body


def test_dashboard_merges_prometheus_alerts(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    server = _fake_prometheus()
    try:
        d = make_dashboard(redis_config, prometheus_url=server.url)
        d.poll_prometheus()
        pushed = [{"labels": {"alertname": "BookNotLive", "severity": "warning"}}]
        d.receiver.receive(json.dumps(pushed).encode())
        state = d.refresh()
    finally:
        server.close()
    assert state["prometheus"]["up"] is True
    assert state["rates"]["connector_frames_per_s"] == {"binance": 120.5, "kraken": 33.0}
    assert [(a["name"], a["source"]) for a in state["alerts"]] == [
        ("BookNotLive", "receiver"),
        ("ConsumerLagHigh", "prometheus"),
    ]


# --- alerts ---


def _alert(name: str, ends_at: str = "", **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": "critical", **labels},
        "annotations": {"summary": f"{name} summary", "description": "details"},
        "startsAt": "2026-01-01T00:00:00.123456789Z",
        "endsAt": ends_at,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
    }


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + ".5Z"


def test_parse_time() -> None:
    assert parse_time("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_time("2026-01-01T00:00:00.123456789Z") == pytest.approx(1767225600.123456)
    assert parse_time("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("") is None and parse_time("yesterday") is None


def test_parse_alerts_and_status() -> None:
    now = time.time()
    body = json.dumps(
        [
            _alert("A", _iso(now + 300)),
            _alert("B", _iso(now - 10)),
            _alert("C"),
            _alert("D", "0001-01-01T00:00:00Z"),
        ]
    ).encode()
    a, b, c, d = parse_alerts(body)
    assert [x.status(now) for x in (a, b, c, d)] == [FIRING, RESOLVED, FIRING, FIRING]
    assert a.name == "A" and a.labels["severity"] == "critical"
    assert a.to_json(now)["summary"] == "A summary"
    assert a.fingerprint == "alertname=A,severity=critical"
    for bad in (b"{}", b"not json", b"[1]", b'[{"labels": {}}]', b'[{"labels": [1]}]'):
        with pytest.raises(AlertPayloadError):
            parse_alerts(bad)


def test_alert_store_keeps_latest_per_label_set() -> None:
    store = AlertStore(capacity=3)
    now = time.time()
    store.add(parse_alerts(json.dumps([_alert("A"), _alert("B")]).encode()))
    store.add(parse_alerts(json.dumps([_alert("A", _iso(now - 1))]).encode()))  # A resolved
    store.add(parse_alerts(json.dumps([_alert("C"), _alert("D")]).encode()))
    recent = store.recent(now=now)
    assert [(x.name, x.status(now)) for x in recent] == [
        ("D", FIRING),
        ("C", FIRING),
        ("A", RESOLVED),
    ]  # B, the oldest, fell out
    assert store.received == 5


def test_write_endpoint_refuses_without_token_json_or_own_origin(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    d = make_dashboard(redis_config, write_token=WRITE_TOKEN)
    port = d.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/api/v2/alerts"
    batch = json.dumps([_alert("ConnectorDown", exchange="kraken")]).encode()
    assert _post(url, batch, token=None)[0] == 401
    assert _post(url, batch, token="wrong")[0] == 401
    assert _post(url, batch, content_type="text/plain")[0] == 415
    assert _post(url, batch, content_type="application/x-www-form-urlencoded")[0] == 415
    assert _post(url, batch, origin="https://evil.example")[0] == 403
    assert _post(url, batch, origin="null")[0] == 403
    assert d.alert_store.received == 0
    # its own page's origin, the token and JSON: accepted
    assert _post(url, batch, origin=f"http://127.0.0.1:{port}")[0] == 200
    assert d.alert_store.received == 1
    # reads stay open
    assert _get(url)[0] == 200


def test_writes_are_off_without_a_configured_token(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    d = make_dashboard(redis_config)
    port = d.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/api/v2/alerts"
    assert _post(url, b"[]", token="")[0] == 403
    assert _post(url, b"[]")[0] == 403


def test_receiver_over_http_and_webhook_forwarding(
    redis_config: RedisConfig, make_dashboard: Callable[..., dash.Dashboard]
) -> None:
    webhook = _Server(lambda *_: (200, {"ok": True}))
    try:
        d = make_dashboard(
            redis_config, alert_webhook=f"{webhook.url}/hook", write_token=WRITE_TOKEN
        )
        port = d.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        now = time.time()
        batch = [_alert("ConnectorDown", exchange="kraken"), _alert("X", _iso(now - 5))]
        status, answer = _post(f"{base}/api/v2/alerts", json.dumps(batch).encode())
        assert (status, answer) == (200, {"status": "success", "received": 2})
        assert _post(f"{base}/api/v2/alerts", b'{"not": "a list"}')[0] == 400
        assert _post(f"{base}/api/v1/nothing", b"[]")[0] == 404

        assert d.receiver.forwarder is not None and d.receiver.forwarder.flush()
        ((method, path, _, body),) = webhook.requests
        assert (method, path) == ("POST", "/hook")
        payload = json.loads(body)
        assert payload["version"] == "4" and payload["status"] == FIRING
        assert [(a["labels"]["alertname"], a["status"]) for a in payload["alerts"]] == [
            ("ConnectorDown", FIRING),
            ("X", RESOLVED),
        ]
        assert payload["commonLabels"] == {"severity": "critical"}
        assert payload["alerts"][0]["generatorURL"].startswith("http://prometheus:9090")

        status, body, _ = _get(f"{base}/api/v2/alerts")
        assert status == 200
        assert [a["name"] for a in json.loads(body)] == ["ConnectorDown", "X"]
        state = d.refresh()
        assert [(a["name"], a["status"]) for a in state["alerts"]] == [
            ("ConnectorDown", FIRING),
            ("X", RESOLVED),
        ]
        assert "tickflow_dashboard_alerts_received_total 2.0" in _get(f"{base}/metrics")[1].decode()
    finally:
        webhook.close()


def test_webhook_failures_never_block_the_receiver() -> None:
    release = threading.Event()

    def slow(*_: Any) -> tuple[int, Any]:
        release.wait(5)
        return 500, {"error": "down"}

    server = _Server(slow)
    forwarder = WebhookForwarder(server.url, timeout_s=0.5, max_pending=2)
    receiver = AlertReceiver(AlertStore(), forwarder)
    try:
        started = time.monotonic()
        for i in range(6):
            receiver.receive(json.dumps([_alert(f"A{i}")]).encode())
        assert time.monotonic() - started < 0.5  # queued (or dropped), never waited on
        assert len(receiver.store.recent()) == 6
        assert forwarder.flush(10)
        assert forwarder.failed >= 1 and forwarder.dropped >= 1
        assert forwarder.sent + forwarder.failed + forwarder.dropped == 6
    finally:
        release.set()
        receiver.close()
        server.close()

    dead = WebhookForwarder(f"http://127.0.0.1:{_free_port()}/", timeout_s=1)
    dead.submit(parse_alerts(json.dumps([_alert("Z")]).encode()))
    assert dead.flush(5) and dead.failed == 1 and dead.sent == 0
    dead.close()


# --- CLI ---


def test_cli_runs_the_dashboard(
    redis_config: RedisConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tickflow import cli

    assert cli.COMMANDS["dashboard"][0] == "monitoring.dashboard"
    monkeypatch.setenv("TICKFLOW__REDIS__HOST", redis_config.host)
    monkeypatch.setenv("TICKFLOW__REDIS__PORT", str(redis_config.port))
    argv = ["--port", "0", "--prometheus-url", "", "--prefix", redis_config.key_prefix]
    assert dash.main([*argv, "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "tickflow dashboard on http://127.0.0.1:" in out and redis_config.key_prefix in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dashboard", "--help"])
    assert exit_.value.code == 0


def test_cli_reports_a_busy_port(
    redis_config: RedisConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = ["--port", str(port), "--prometheus-url", "", "--prefix", redis_config.key_prefix]
        assert dash.main(argv) == 1
    assert "cannot listen" in capsys.readouterr().out


# --- Grafana ---

PROMQL_METRIC = re.compile(r"\b(tickflow_\w+|flink_\w+|ALERTS)\b")
# Flink's own metrics the dashboards use (the Kafka source's, FLIP-33)
FLINK_BUILTIN = {dash.CONSUMER_LAG_METRIC}


def _existing_metric_names() -> set[str]:
    """Series names the code exports: the connectors' registry, the job's counters through
    Flink's Prometheus reporter, the dashboard's own registry, Prometheus' ALERTS."""
    from connectors.metrics import ConnectorMetrics
    from jobs.metrics import COUNTERS

    names = {"ALERTS", *FLINK_BUILTIN}
    connector = ConnectorMetrics("binance")
    connector.frame("depth")
    connector.observe_latency_ms(time.time_ns(), int(time.time() * 1000))
    nowhere = RedisConfig(host="127.0.0.1", port=_free_port(), db=0, key_prefix="tftest-none")
    dashboard = dash.Dashboard(dash.DashboardConfig(redis=nowhere, prometheus_url=None))
    dashboard.latency.add("binance", 0.1)
    try:
        for registry in (connector.registry, dashboard.registry):
            for family in registry.collect():
                names.update(sample.name for sample in family.samples)
    finally:
        dashboard.stop()
    names.update(f"flink_taskmanager_job_task_operator_tickflow_{name}" for name in COUNTERS)
    return names


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_grafana_provisioning_and_dashboard() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/tickflow.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]

    dashboard = json.loads((GRAFANA / "dashboards/tickflow.json").read_text())
    assert dashboard["uid"] == "tickflow" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("frames/s", "latency", "consumer lag", "not live", "alerts"):
        assert needed in titles


def test_grafana_and_dashboard_queries_use_existing_metrics() -> None:
    existing = _existing_metric_names()
    dashboard = json.loads((GRAFANA / "dashboards/tickflow.json").read_text())
    used: set[str] = set()
    for title, expr in _exprs(dashboard):
        assert expr.count("(") == expr.count(")"), (title, expr)
        names = set(PROMQL_METRIC.findall(expr))
        assert names, f"{title}: {expr} names no metric"
        unknown = names - existing
        assert not unknown, f"{title}: {sorted(unknown)} not exported by any tickflow component"
        used |= names
    for needed in (
        dash.CONNECTOR_FRAMES_METRIC,
        dash.CONNECTOR_LATENCY_METRIC + "_bucket",
        dash.BOOK_E2E_METRIC + "_bucket",
        dash.CONSUMER_LAG_METRIC,
        dash.BOOKS_NOT_LIVE_METRIC,
        "ALERTS",
    ):
        assert needed in used, needed
    # the live page's own queries too
    for expr in dataclasses.asdict(dash.QUERIES).values():
        assert set(PROMQL_METRIC.findall(expr)) <= existing, expr
