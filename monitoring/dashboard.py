"""``tickflow dashboard``: a live web page of the running pipeline, and the alert receiver.

One process, stdlib HTTP server (threads), on ``127.0.0.1:<monitoring.dashboard_port>``:

- ``GET /``: the page (``monitoring/static/``: plain HTML, JS and CSS, no CDN); it renders the
  snapshot embedded in the HTML, then polls ``/api/state`` every refresh (``/?stream=sse``
  follows ``/events`` instead; polling is the default because an open event stream keeps a
  headless browser's page from ever finishing loading).
- ``GET /events``: Server-Sent Events, one ``state`` event (the JSON snapshot) per refresh.
- ``GET /api/state``: the snapshot as JSON.
- ``GET /metrics``: the dashboard's own metrics (its own registry): the receive -> Redis latency
  of the books, ``tickflow_book_e2e_latency_seconds{exchange}``, and the dashboard's health.
- ``GET /healthz``: ``{"status": "ok", ...}``.
- ``POST /api/v2/alerts`` (``GET`` lists them): the Alertmanager-compatible receiver
  (:mod:`monitoring.alerts`); point Prometheus' `alerting.alertmanagers` here. It takes
  only `Authorization: Bearer <monitoring.dashboard_token>`, `Content-Type: application/json`
  and no `Origin` but its own (401, 415, 403 otherwise); the read endpoints are open.

The snapshot, refreshed every ``interval_s``:

- from Prometheus (``n/a`` when it does not answer; every query is in :data:`QUERIES`): the
  connectors' frames/s per exchange, their exchange -> receive latency quantiles, the Flink Kafka
  source's lag, the job's count of books not LIVE, and Prometheus' own alerts;
- from Redis (``<p>`` = ``redis.key_prefix``): every book ``<p>:book:<exchange>:<symbol>`` (status,
  reason, touch, age) and NBBO ``<p>:nbbo:<instrument>``;
- sampled by this process from the channel ``<p>:book-updates``: book writes/s per exchange and
  the receive -> Redis latency of recent writes (``publish_time_ns - receive_time_ns``) over a
  rolling window; ``<p>:nbbo-updates`` gives the NBBO updates/s;
- the alerts received on ``/api/v2/alerts``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hmac
import logging
import math
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.sinks.book_reader import decode_nbbo
from jobs.sinks.redis_books import LEASE_FIELD, effective_status, redis_client
from monitoring.alerts import (
    AlertPayloadError,
    AlertReceiver,
    AlertStore,
    WebhookForwarder,
    from_prometheus_api,
)
from tickflow.config import RedisConfig, load_settings
from tickflow.logs import setup_logging

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"

# --- what the dashboard reads from Prometheus: the metric names and queries, in one place ---
CONNECTOR_FRAMES_METRIC = "tickflow_connector_frames_total"  # counter{exchange}
CONNECTOR_LATENCY_METRIC = "tickflow_connector_exchange_latency_seconds"  # histogram{exchange}
# the Flink Kafka source's lag (FLIP-33): now - event time of the records it emits, in ms
CONSUMER_LAG_METRIC = "flink_taskmanager_job_task_operator_currentEmitEventTimeLag"
# jobs/metrics.py: RESYNCING or STALE books right now, per subtask
BOOKS_NOT_LIVE_METRIC = "flink_taskmanager_job_task_operator_tickflow_books_not_live"
# exported by this process on /metrics (Prometheus must scrape the dashboard for Grafana)
BOOK_E2E_METRIC = "tickflow_book_e2e_latency_seconds"
QUANTILES = (0.5, 0.9, 0.99)
E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Queries:
    """PromQL of every Prometheus figure on the page (``{q}``: the quantile)."""

    connector_rates: str = f"sum by (exchange) (rate({CONNECTOR_FRAMES_METRIC}[30s]))"
    exchange_latency: str = (
        "histogram_quantile({q}, sum by (exchange, le) "
        f"(rate({CONNECTOR_LATENCY_METRIC}_bucket[1m])))"
    )
    consumer_lag_ms: str = f"max({CONSUMER_LAG_METRIC})"
    books_not_live: str = f"sum({BOOKS_NOT_LIVE_METRIC})"


QUERIES = Queries()


# --- Prometheus' HTTP API ---


class PrometheusUnavailable(Exception):
    """Prometheus does not answer (refused, timeout, not ready)."""


class PrometheusQueryError(Exception):
    """Prometheus answered with an error for one query."""


class PrometheusClient:
    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=self.timeout_s) as r:
                body = orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise PrometheusUnavailable(f"{self.url}: HTTP {e.code}") from None
            try:
                detail = orjson.loads(e.read()).get("error", "")
            except (orjson.JSONDecodeError, AttributeError):
                detail = ""
            raise PrometheusQueryError(f"HTTP {e.code} {detail}".strip()) from None
        except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as e:
            reason = getattr(e, "reason", e)
            raise PrometheusUnavailable(f"{self.url}: {reason}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error", body) if isinstance(body, dict) else body
            raise PrometheusQueryError(str(detail))
        return body.get("data")

    def query(self, expr: str) -> list[tuple[dict[str, str], float | None]]:
        """An instant query: (labels, value) per series; NaN/Inf become None."""
        data = self._get("/api/v1/query", {"query": expr})
        kind = data.get("resultType")
        if kind == "scalar":
            return [({}, _number(data["result"][1]))]
        if kind != "vector":
            raise PrometheusQueryError(f"unexpected result type {kind!r}")
        return [(dict(s.get("metric", {})), _number(s["value"][1])) for s in data["result"]]

    def alerts(self) -> list[dict[str, Any]]:
        data = self._get("/api/v1/alerts")
        return list(data.get("alerts", []))


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return round(number, 6) if math.isfinite(number) else None


def collect_prometheus(
    client: PrometheusClient | None, queries: Queries = QUERIES
) -> dict[str, Any]:
    """Everything the page shows from Prometheus; every figure None ("n/a") when it is down."""
    view: dict[str, Any] = {
        "url": client.url if client else None,
        "up": False,
        "error": None if client else "not configured",
        "errors": {},
        "connector_rates": None,
        "exchange_latency_ms": None,
        "consumer_lag_ms": None,
        "books_not_live": None,
        "alerts": [],
        "updated_at_ms": int(time.time() * 1000),
    }
    if client is None:
        return view

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        try:
            view[name] = fn()
        except PrometheusQueryError as e:
            view["errors"][name] = str(e)

    def rates() -> dict[str, float | None]:
        return {
            labels.get("exchange", "?"): value
            for labels, value in client.query(queries.connector_rates)
        }

    def latency() -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for q in QUANTILES:
            for labels, value in client.query(queries.exchange_latency.format(q=q)):
                per = out.setdefault(labels.get("exchange", "?"), {})
                per[_quantile_name(q)] = None if value is None else round(value * 1000, 3)
        return out

    def single(expr: str) -> Callable[[], float | None]:
        def run() -> float | None:
            values = [v for _, v in client.query(expr) if v is not None]
            return max(values) if values else None

        return run

    def alerts() -> list[dict[str, Any]]:
        now = time.time()
        return [from_prometheus_api(a, now).to_json(now) for a in client.alerts()]

    try:
        attempt("connector_rates", rates)
        view["up"] = True
        attempt("exchange_latency_ms", latency)
        attempt("consumer_lag_ms", single(queries.consumer_lag_ms))
        attempt("books_not_live", single(queries.books_not_live))
        attempt("alerts", alerts)
    except PrometheusUnavailable as e:
        view["up"] = False
        view["error"] = str(e)
        for name in ("connector_rates", "exchange_latency_ms", "consumer_lag_ms"):
            view[name] = None
        view["books_not_live"] = None
        view["alerts"] = []
    view["updated_at_ms"] = int(time.time() * 1000)
    return view


def _quantile_name(q: float) -> str:
    return f"p{q * 100:g}"


# --- rolling windows of what the dashboard samples itself ---


def _stats(values: list[float]) -> dict[str, float | int | None]:
    """count, p50/p90/p99 (nearest rank), max; in milliseconds."""
    if not values:
        return {"count": 0, **{_quantile_name(q): None for q in QUANTILES}, "max": None}
    ordered = sorted(values)
    n = len(ordered)
    out: dict[str, float | int | None] = {"count": n}
    for q in QUANTILES:
        out[_quantile_name(q)] = round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000, 3)
    out["max"] = round(ordered[-1] * 1000, 3)
    return out


class LatencyWindow:
    """Latency samples (seconds) per exchange over the last ``window_s``; thread-safe."""

    def __init__(
        self, window_s: float = 60.0, max_samples: int = 100_000, histogram: Histogram | None = None
    ) -> None:
        self.window_s = window_s
        self.histogram = histogram
        self._samples: collections.deque[tuple[float, str, float]] = collections.deque(
            maxlen=max_samples
        )
        self._lock = threading.Lock()

    def add(self, exchange: str, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._samples.append((now, exchange, seconds))
        if self.histogram is not None:
            self.histogram.labels(exchange=exchange).observe(seconds)

    def summary(self, now: float | None = None) -> dict[str, dict[str, float | int | None]]:
        """``all`` and each exchange: count, p50/p90/p99, max (ms)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._samples and self._samples[0][0] < now - self.window_s:
                self._samples.popleft()
            samples = list(self._samples)
        per: dict[str, list[float]] = {}
        for _, exchange, seconds in samples:
            per.setdefault(exchange, []).append(seconds)
        out = {"all": _stats([s for _, _, s in samples])}
        out.update({exchange: _stats(values) for exchange, values in sorted(per.items())})
        return out


class RateWindow:
    """Events per second per key over the last ``window_s``; thread-safe."""

    def __init__(self, window_s: float = 10.0, max_events: int = 500_000) -> None:
        self.window_s = window_s
        self.started = time.monotonic()
        self._events: collections.deque[tuple[float, str]] = collections.deque(maxlen=max_events)
        self._lock = threading.Lock()

    def add(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.append((now, key))

    def rates(self, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._events and self._events[0][0] < now - self.window_s:
                self._events.popleft()
            keys = collections.Counter(key for _, key in self._events)
        span = max(1.0, min(self.window_s, now - self.started))
        return {key: round(count / span, 3) for key, count in sorted(keys.items())}


def parse_book_update(message: str) -> tuple[str, str, str] | None:
    """``<exchange>:<symbol>:<seq>:<status>:<version>`` -> (exchange, symbol, status)."""
    exchange, _, rest = message.partition(":")
    parts = rest.rsplit(":", 3)
    if not exchange or len(parts) != 4:
        return None
    return exchange, parts[0], parts[2]


class BookSampler:
    """Follows ``<p>:book-updates`` and ``<p>:nbbo-updates``: write rates, and every ``poll_s``
    the receive -> Redis latency of each book written since (one sample per new version)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        latency: LatencyWindow,
        book_rates: RateWindow,
        nbbo_rates: RateWindow,
        poll_s: float = 0.2,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.latency = latency
        self.book_rates = book_rates
        self.nbbo_rates = nbbo_rates
        self.poll_s = poll_s
        self.error: str | None = None
        self.subscribed = threading.Event()
        self._dirty: set[tuple[str, str]] = set()
        self._versions: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="book-sampler", daemon=True)

    @property
    def book_channel(self) -> str:
        return f"{self.prefix}:book-updates"

    @property
    def nbbo_channel(self) -> str:
        return f"{self.prefix}:nbbo-updates"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def handle(self, channel: str, data: str) -> None:
        if channel == self.book_channel:
            parsed = parse_book_update(data)
            if parsed is not None:
                exchange, symbol, _ = parsed
                self.book_rates.add(f"{exchange}:{symbol}")
                self._dirty.add((exchange, symbol))
        elif channel == self.nbbo_channel:
            self.nbbo_rates.add(data.rsplit(":", 1)[0])

    def sample(self) -> int:
        """Read the books written since the last call; the number of latency samples taken."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return 0
        books = sorted(dirty)
        pipe = self.client.pipeline(transaction=False)
        for exchange, symbol in books:
            pipe.hmget(
                f"{self.prefix}:book:{exchange}:{symbol}",
                ["version", "receive_time_ns", "publish_time_ns"],
            )
        taken = 0
        for book, (version, received, published) in zip(books, pipe.execute(), strict=True):
            if version is None or self._versions.get(book) == version:
                continue
            self._versions[book] = version
            try:
                latency_ns = int(published) - int(received)
            except (TypeError, ValueError):
                continue
            if int(received) > 0 and latency_ns >= 0:
                self.latency.add(book[0], latency_ns / 1e9)
                taken += 1
        return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.book_channel, self.nbbo_channel)
                self.subscribed.set()
                self.error = None
                next_sample = time.monotonic() + self.poll_s
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.05)
                    drained = 0
                    while message is not None and drained < 10_000:
                        if message.get("type") == "message":
                            self.handle(str(message["channel"]), str(message["data"]))
                        drained += 1
                        message = pubsub.get_message(timeout=0)
                    if time.monotonic() >= next_sample:
                        self.sample()
                        next_sample = time.monotonic() + self.poll_s
            except (redis.RedisError, OSError) as e:
                self.subscribed.clear()
                if self.error != str(e):
                    log.warning("book sampler: Redis: %s", e)
                self.error = str(e)
                self._stop.wait(1.0)
            finally:
                pubsub.close()


# --- Redis: books and NBBO ---

BOOK_FIELDS = [
    "instrument",
    "status",
    "reason",
    "seq",
    "version",
    "bids",
    "asks",
    "event_time_ms",
    "receive_time_ns",
    "publish_time_ns",
    LEASE_FIELD,
]


def _int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _levels(raw: str | None) -> list[list[str]]:
    if not raw:
        return []
    try:
        levels = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return [[str(p), str(s)] for p, s in levels] if isinstance(levels, list) else []


def _spread(bid: str | None, ask: str | None) -> str | None:
    if not bid or not ask:
        return None
    try:
        return str(Decimal(ask) - Decimal(bid))
    except InvalidOperation:
        return None


def _ages(now_ns: int, receive_ns: int, publish_ns: int) -> tuple[float | None, float | None]:
    age = round((now_ns - publish_ns) / 1e6, 1) if publish_ns else None
    e2e = round((publish_ns - receive_ns) / 1e6, 3) if publish_ns and receive_ns else None
    return age, e2e


def read_books(client: redis.Redis, prefix: str, now_ns: int | None = None) -> list[dict[str, Any]]:
    """Every book in ``<p>:books``: status, touch, age (ms since it was written) and e2e latency."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    head = f"{prefix}:book:"
    keys = sorted(k for k in client.smembers(f"{prefix}:books") if str(k).startswith(head))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, BOOK_FIELDS)
    books = []
    for key, values in zip(keys, pipe.execute() if keys else [], strict=True):
        data = dict(zip(BOOK_FIELDS, values, strict=True))
        if data["status"] is None:
            continue  # listed, but gone
        exchange, _, symbol = str(key)[len(head) :].partition(":")
        bids, asks = _levels(data["bids"]), _levels(data["asks"])
        age, e2e = _ages(now_ns, _int(data["receive_time_ns"]), _int(data["publish_time_ns"]))
        best_bid = bids[0] if bids else None
        best_ask = asks[0] if asks else None
        books.append(
            {
                "exchange": exchange,
                "symbol": symbol,
                "instrument": data["instrument"] or "",
                "status": effective_status(data["status"], data[LEASE_FIELD], now_ns // 1_000_000),
                "reason": data["reason"] or "",
                "seq": _int(data["seq"], -1),
                "version": (data["version"] or "").lstrip("0") or "0",
                "best_bid": best_bid,
                "best_ask": best_ask,
                "spread": _spread(
                    best_bid[0] if best_bid else None, best_ask[0] if best_ask else None
                ),
                "depth": [len(bids), len(asks)],
                "event_time_ms": _int(data["event_time_ms"]),
                "age_ms": age,
                "e2e_ms": e2e,
            }
        )
    return books


def read_nbbos(client: redis.Redis, prefix: str, now_ns: int | None = None) -> list[dict[str, Any]]:
    """Every NBBO in ``<p>:nbbos`` (hashes ``<p>:nbbo:<instrument>``)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    head = f"{prefix}:nbbo:"
    keys = sorted(k for k in client.smembers(f"{prefix}:nbbos") if str(k).startswith(head))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    out = []
    for key, data in zip(keys, pipe.execute() if keys else [], strict=True):
        if not data:
            continue
        nbbo = decode_nbbo(str(key)[len(head) :], data, now_ns // 1_000_000)
        age, e2e = _ages(now_ns, nbbo.receive_time_ns, nbbo.publish_time_ns)
        out.append({
            **dataclasses.asdict(nbbo),
            "spread": _spread(nbbo.bid_price, nbbo.ask_price),
            "age_ms": age,
            "e2e_ms": e2e,
        })  # fmt: skip
        for field_name in ("receive_time_ns", "publish_time_ns"):
            del out[-1][field_name]
    return out


def _by_exchange(per_book: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for book, rate in per_book.items():
        exchange = book.split(":", 1)[0]
        out[exchange] = round(out.get(exchange, 0.0) + rate, 3)
    return out


# --- the dashboard ---


@dataclass(frozen=True)
class DashboardConfig:
    redis: RedisConfig
    prometheus_url: str | None  # None: no Prometheus (every Prometheus figure is n/a)
    alert_webhook: str = ""  # "" = alerts are not forwarded
    interval_s: float = 1.0  # snapshot refresh
    prometheus_interval_s: float = 2.0
    prometheus_timeout_s: float = 1.0
    latency_window_s: float = 60.0
    rate_window_s: float = 10.0
    webhook_timeout_s: float = 5.0
    queries: Queries = field(default_factory=Queries)
    # the bearer token of the write endpoints (POST /api/v2/alerts); "": writes refused
    write_token: str = field(default="", repr=False)


class _HealthCollector(Collector):
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def collect(self) -> Iterable[Metric]:
        d = self.dashboard
        prom = GaugeMetricFamily(
            "tickflow_dashboard_prometheus_up", "whether Prometheus answered the last queries"
        )
        prom.add_metric([], 1.0 if d.prometheus_view.get("up") else 0.0)
        red = GaugeMetricFamily("tickflow_dashboard_redis_up", "whether Redis answered")
        red.add_metric([], 1.0 if d.redis_up else 0.0)
        clients = GaugeMetricFamily("tickflow_dashboard_event_clients", "open /events streams")
        clients.add_metric([], float(d.event_clients))
        received = CounterMetricFamily(
            "tickflow_dashboard_alerts_received", "alerts received on /api/v2/alerts"
        )
        received.add_metric([], float(d.alert_store.received))
        forwarder = d.receiver.forwarder
        failed = CounterMetricFamily(
            "tickflow_dashboard_alert_webhook_failures", "alert batches the webhook refused"
        )
        failed.add_metric([], float(forwarder.failed + forwarder.dropped if forwarder else 0))
        yield from (prom, red, clients, received, failed)


class Dashboard:
    """The state behind the page; :meth:`start` runs the HTTP server and the samplers."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.prefix = config.redis.key_prefix
        self.redis = redis_client(
            config.redis, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.registry = CollectorRegistry()
        self.e2e_histogram = Histogram(
            BOOK_E2E_METRIC,
            "exchange frame received by a connector -> its book written to Redis "
            "(publish_time_ns - receive_time_ns), sampled from the book-updates channel",
            ["exchange"],
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self.latency = LatencyWindow(config.latency_window_s, histogram=self.e2e_histogram)
        self.book_rates = RateWindow(config.rate_window_s)
        self.nbbo_rates = RateWindow(config.rate_window_s)
        self.sampler = BookSampler(
            self.redis, self.prefix, self.latency, self.book_rates, self.nbbo_rates
        )
        self.prometheus = (
            PrometheusClient(config.prometheus_url, config.prometheus_timeout_s)
            if config.prometheus_url
            else None
        )
        self.prometheus_view: dict[str, Any] = collect_prometheus(None)
        if self.prometheus is not None:
            self.prometheus_view.update(url=self.prometheus.url, error="not queried yet")
        self.alert_store = AlertStore()
        forwarder = (
            WebhookForwarder(config.alert_webhook, config.webhook_timeout_s)
            if config.alert_webhook
            else None
        )
        self.receiver = AlertReceiver(self.alert_store, forwarder)
        self.registry.register(_HealthCollector(self))
        self.redis_up = False
        self.redis_error: str | None = None
        self.event_clients = 0
        self._snapshot_seq = 0
        self._snapshot_body = b"{}"
        self._snapshot_cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self.refresh()

    # state

    def build_state(self) -> dict[str, Any]:
        now_ns = time.time_ns()
        books: list[dict[str, Any]] = []
        nbbos: list[dict[str, Any]] = []
        try:
            books = read_books(self.redis, self.prefix, now_ns)
            nbbos = read_nbbos(self.redis, self.prefix, now_ns)
            self.redis_up, self.redis_error = True, None
        except (redis.RedisError, OSError) as e:
            self.redis_up, self.redis_error = False, str(e)
        prom = self.prometheus_view
        per_book = self.book_rates.rates()
        for book in books:
            book["writes_per_s"] = per_book.get(f"{book['exchange']}:{book['symbol']}", 0.0)
        summary = collections.Counter(b["status"] for b in books)
        now = time.time()
        alerts = [a.to_json(now) for a in self.alert_store.recent(50, now)]
        received = {(a["name"], tuple(sorted(a["labels"].items()))) for a in alerts}
        alerts += [
            a
            for a in prom.get("alerts") or []
            if (a["name"], tuple(sorted(a["labels"].items()))) not in received
        ]
        c = self.config.redis
        return {
            "generated_at_ms": now_ns // 1_000_000,
            "interval_s": self.config.interval_s,
            "prefix": self.prefix,
            "redis": {
                "up": self.redis_up,
                "error": self.redis_error or self.sampler.error,
                "address": f"{c.host}:{c.port}/{c.db}",
            },
            "prometheus": {
                k: prom.get(k) for k in ("url", "up", "error", "errors", "updated_at_ms")
            },
            "rates": {
                "connector_frames_per_s": prom.get("connector_rates"),
                "book_writes_per_s": _by_exchange(per_book),
                "nbbo_updates_per_s": round(sum(self.nbbo_rates.rates().values()), 3),
            },
            "latency": {
                "exchange_ms": prom.get("exchange_latency_ms"),
                "redis_ms": self.latency.summary(),
                "redis_window_s": self.config.latency_window_s,
            },
            "consumer_lag_ms": prom.get("consumer_lag_ms"),
            "books_not_live": prom.get("books_not_live"),
            "books_summary": {"total": len(books), **dict(sorted(summary.items()))},
            "books": books,
            "nbbo": nbbos,
            "alerts": alerts,
            "queries": dataclasses.asdict(self.config.queries),
        }

    def refresh(self) -> dict[str, Any]:
        state = self.build_state()
        body = orjson.dumps(state)
        with self._snapshot_cond:
            self._snapshot_seq += 1
            self._snapshot_body = body
            self._snapshot_cond.notify_all()
        return state

    def snapshot(self) -> tuple[int, bytes]:
        with self._snapshot_cond:
            return self._snapshot_seq, self._snapshot_body

    def wait_snapshot(self, after: int, timeout_s: float) -> tuple[int, bytes | None]:
        """The next snapshot after ``after`` (None on timeout or stop)."""
        with self._snapshot_cond:
            self._snapshot_cond.wait_for(
                lambda: self._snapshot_seq > after or self._stop.is_set(), timeout_s
            )
            if self._snapshot_seq > after and not self._stop.is_set():
                return self._snapshot_seq, self._snapshot_body
            return after, None

    def poll_prometheus(self) -> dict[str, Any]:
        view = collect_prometheus(self.prometheus, self.config.queries)
        before = self.prometheus_view
        if (view["up"], view["error"]) != (before.get("up"), before.get("error")):
            log.info("prometheus %s: %s", "up" if view["up"] else "down", view["error"] or "")
        self.prometheus_view = view
        return view

    def count_event_client(self, change: int) -> None:
        with self._snapshot_cond:
            self.event_clients += change

    # lifecycle

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _every(self, interval_s: float, fn: Callable[[], object], name: str) -> threading.Thread:
        def loop() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    fn()
                except Exception:
                    log.exception("dashboard %s failed", name)
                self._stop.wait(max(0.05, interval_s - (time.monotonic() - started)))

        thread = threading.Thread(target=loop, name=f"dashboard-{name}", daemon=True)
        thread.start()
        return thread

    def start(self, host: str = DEFAULT_HOST, port: int = 0) -> int:
        """Serve on host:port (0: an ephemeral port) from background threads; the bound port."""
        self._server = DashboardHTTPServer((host, port), self)
        self.sampler.start()
        if self.prometheus is not None:
            self._threads.append(
                self._every(self.config.prometheus_interval_s, self.poll_prometheus, "prometheus")
            )
        self._threads.append(self._every(self.config.interval_s, self.refresh, "snapshot"))
        server_thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard-http", daemon=True
        )
        server_thread.start()
        self._threads.append(server_thread)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._stop.set()
        with self._snapshot_cond:
            self._snapshot_cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.sampler.stop()
        for thread in self._threads:
            thread.join(5)
        self.receiver.close()
        self.redis.close()


# --- HTTP ---

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
INITIAL_STATE_MARKER = "<!--initial-state-->"
MAX_BODY = 4 * 1024 * 1024


class DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        super().__init__(address, DashboardHandler)


def render_index(snapshot: bytes) -> bytes:
    """index.html with the current snapshot embedded (the page renders before any request)."""
    html = (STATIC_DIR / "index.html").read_text()
    embedded = snapshot.decode().replace("</", "<\\/")
    script = f'<script id="initial-state" type="application/json">{embedded}</script>'
    return html.replace(INITIAL_STATE_MARKER, script).encode()


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardHTTPServer
    server_version = "tickflow-dashboard/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def dashboard(self) -> Dashboard:
        return self.server.dashboard

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, orjson.dumps(value), "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                self._send(200, render_index(self.dashboard.snapshot()[1]), CONTENT_TYPES[".html"])
            elif path == "/api/state":
                self._send(200, self.dashboard.snapshot()[1], "application/json")
            elif path == "/events":
                self._events()
            elif path == "/metrics":
                self._send(200, generate_latest(self.dashboard.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                d = self.dashboard
                self._json(
                    200,
                    {
                        "status": "ok",
                        "redis": d.redis_up,
                        "prometheus": bool(d.prometheus_view.get("up")),
                        "snapshot": d.snapshot()[0],
                    },
                )
            elif path == "/api/v2/alerts":
                now = time.time()
                alerts = self.dashboard.alert_store.recent(200, now)
                self._json(200, [a.to_json(now) for a in alerts])
            elif path.startswith("/static/"):
                self._static(path[len("/static/") :])
            else:
                self._json(404, {"error": f"no such page: {path}"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _write_refusal(self) -> tuple[int, str] | None:
        """Why a write request is refused, or None. A browser page of another site may send
        a POST here (no preflight for some content types): a foreign ``Origin`` is refused,
        only ``application/json`` is read, and the bearer token is required."""
        origin = self.headers.get("Origin")
        if origin is not None:
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc != self.headers.get("Host"):
                return HTTPStatus.FORBIDDEN, "cross-origin writes are refused"
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json"
        token = self.dashboard.config.write_token
        if not token:
            return HTTPStatus.FORBIDDEN, "writes are off: no monitoring.dashboard_token"
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return HTTPStatus.UNAUTHORIZED, "a valid bearer token is required"
        return None

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != "/api/v2/alerts":
            self._json(404, {"error": f"cannot POST {path}"})
            return
        refusal = self._write_refusal()
        if refusal is not None:
            status, reason = refusal
            self.close_connection = True  # the body is not read
            if status == HTTPStatus.UNAUTHORIZED:
                body = orjson.dumps({"error": reason})
                self.send_response(status)
                self.send_header("WWW-Authenticate", 'Bearer realm="tickflow"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._json(status, {"error": reason})
            return
        length = _int(self.headers.get("Content-Length"), -1)
        if length < 0 or length > MAX_BODY:
            self._json(HTTPStatus.LENGTH_REQUIRED if length < 0 else 413, {"error": "bad length"})
            return
        body = self.rfile.read(length)
        try:
            alerts = self.dashboard.receiver.receive(body)
        except AlertPayloadError as e:
            self._json(400, {"error": str(e)})
            return
        self._json(200, {"status": "success", "received": len(alerts)})

    def _static(self, name: str) -> None:
        files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        file = files.get(name)
        if file is None:
            self._json(404, {"error": f"no such file: {name}"})
            return
        content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        self._send(200, file.read_bytes(), content_type)

    def _events(self) -> None:
        d = self.dashboard
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        d.count_event_client(+1)
        try:
            seq, body = d.snapshot()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.write(b"event: state\ndata: " + body + b"\n\n")
            self.wfile.flush()
            while not d.stopped:
                seq, next_body = d.wait_snapshot(seq, 15.0)
                if d.stopped:
                    break
                if next_body is None:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    self.wfile.write(b"event: state\ndata: " + next_body + b"\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            d.count_event_client(-1)


# --- CLI ---


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickflow dashboard",
        description="Live web dashboard of the pipeline (and Prometheus' alert receiver).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, help="default: monitoring.dashboard_port")
    parser.add_argument(
        "--prometheus-url",
        help="default: http://127.0.0.1:<monitoring.prometheus_port>; '' = no Prometheus",
    )
    parser.add_argument("--prefix", help="Redis key prefix (default: redis.key_prefix)")
    parser.add_argument("--interval", type=float, default=1.0, help="refresh, seconds")
    parser.add_argument(
        "--lag-query", help=f"PromQL of the consumer lag in ms ({QUERIES.consumer_lag_ms})"
    )
    parser.add_argument("--seconds", type=float, default=0, help="stop after (0: never)")
    args = parser.parse_args(argv)
    settings = load_settings()
    monitoring = settings.monitoring
    setup_logging(settings)
    redis_config = settings.redis
    if args.prefix:
        redis_config = dataclasses.replace(redis_config, key_prefix=args.prefix)
    prometheus_url = (
        f"http://127.0.0.1:{monitoring.prometheus_port}"
        if args.prometheus_url is None
        else args.prometheus_url or None
    )
    queries = QUERIES
    if args.lag_query:
        queries = dataclasses.replace(queries, consumer_lag_ms=args.lag_query)
    config = DashboardConfig(
        redis=redis_config,
        prometheus_url=prometheus_url,
        alert_webhook=monitoring.alert_webhook,
        interval_s=args.interval,
        queries=queries,
        write_token=monitoring.dashboard_token,
    )
    dashboard = Dashboard(config)
    port = monitoring.dashboard_port if args.port is None else args.port
    try:
        bound = dashboard.start(args.host, port)
    except OSError as e:
        print(f"tickflow dashboard: cannot listen on {args.host}:{port}: {e}")
        return 1
    prefix = redis_config.key_prefix
    print(f"tickflow dashboard on http://{args.host}:{bound}/ (Redis prefix {prefix!r})")
    stop = threading.Event()
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        with _stop_on_signals(stop):
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.stop()
    return 0
