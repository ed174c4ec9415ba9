"""The live dashboard in a real browser: ``tickflow dashboard`` on an ephemeral port against the
running Redis (and Prometheus, when it answers on ``monitoring.prometheus_port``), books and an
NBBO written live under a key prefix of this test's own as the job writes them, the page
opened in headless Chromium: a screenshot (also saved as bench/results/dashboard.png) and the
rendered DOM, whose ``data-testid`` figures must show the rates, books and NBBO written.

Uses the stack that runs (never starts or stops it); skipped when Redis does not answer.
Chromium is the Debian package ``chromium``, installed with apt when missing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
import redis

from jobs.sinks.redis_books import redis_client
from monitoring.dashboard import Dashboard, DashboardConfig
from stack.system import ensure_packages
from tests.unit.redis_market import Book, Nbbo, publish
from tickflow.config import RedisConfig, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "bench" / "results" / "dashboard.png"
WRITES_PER_S = 4  # per book
# (exchange, symbol, instrument, status, reason, best bid, best ask)
BOOKS = [
    ("binance", "BTCUSDT", "BTC-USDT", "LIVE", "", "65010.1", "65010.2"),
    ("coinbase", "BTC-USD", "BTC-USD", "LIVE", "", "64999.5", "65000.25"),
    ("kraken", "XBT/USD", "BTC-USD", "LIVE", "", "64999.5", "65001"),
    ("kraken", "ETH/USD", "ETH-USD", "RESYNCING", "checksum mismatch", "", ""),
]
NBBO_BID, NBBO_ASK = "64999.5", "65000.25"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    ensure_packages({"chromium": ["chromium"]})
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.fail("chromium was installed but neither chromium nor chromium-browser is on PATH")


def _prometheus_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture
def redis_config() -> Iterator[RedisConfig]:
    base = load_settings().redis
    config = dataclasses.replace(base, key_prefix=f"tftest-dashui-{uuid.uuid4().hex[:10]}")
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


class _Pusher(threading.Thread):
    """Writes every book and the BTC-USD NBBO WRITES_PER_S times a second until stopped."""

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(name="dashboard-pusher", daemon=True)
        self.config = config
        self.stop = threading.Event()
        self.version = 0
        self.error: BaseException | None = None

    def _book(self, book: tuple[str, str, str, str, str, str, str]) -> Book:
        exchange, symbol, instrument, status, reason, bid, ask = book
        live = status == "LIVE"
        size = str(Decimal(self.version % 7 + 1) / 4)
        return Book(
            exchange=exchange,
            symbol=symbol,
            instrument=instrument,
            status=status,
            reason=reason,
            seq=1000 + self.version,
            version=self.version,
            bids=((bid, size), (str(Decimal(bid) - 1), "2")) if live else (),
            asks=((ask, size), (str(Decimal(ask) + 1), "3")) if live else (),
            event_time_ms=int(time.time() * 1000) - 5,
            # a frame received 30-60 ms before its book is written
            receive_time_ns=time.time_ns() - (30 + self.version % 30) * 1_000_000,
        )

    def _nbbo(self) -> Nbbo:
        return Nbbo(
            instrument="BTC-USD",
            quote="USD",
            version=self.version,
            bid_price=NBBO_BID,
            bid_size="3",
            bid_venues=("coinbase:BTC-USD", "kraken:XBT/USD"),
            ask_price=NBBO_ASK,
            ask_size="1.5",
            ask_venues=("coinbase:BTC-USD",),
            venues=("coinbase:BTC-USD", "kraken:XBT/USD"),
            excluded={"binance:BTCUSDT": "quote USDT"},
            event_time_ms=int(time.time() * 1000),
            receive_time_ns=time.time_ns() - 40_000_000,
        )

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.version += 1
                publish(self.config, *(self._book(book) for book in BOOKS), self._nbbo())
                self.stop.wait(1 / WRITES_PER_S)
        except BaseException as e:  # surfaced by the test
            self.error = e


class _TestIds(HTMLParser):
    """data-testid -> text of the element (the text of its subtree)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, testid)
        self._text: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        testid = found.get("data-testid")
        if testid is not None:
            self._text.setdefault(testid, [])
            self.attrs[testid] = {k: v or "" for k, v in found.items()}
        if tag not in ("br", "meta", "link", "input", "img"):
            self._open.append((tag, testid))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, testid = self._open.pop()
            if testid is not None:
                self.values[testid] = "".join(self._text.pop(testid, [])).strip()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, testid in self._open:
            if testid is not None and testid in self._text:
                self._text[testid].append(data)


def _number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_dashboard_in_headless_chromium(redis_config: RedisConfig, tmp_path: Path) -> None:
    chromium = _chromium()
    settings = load_settings()
    prometheus_url = f"http://127.0.0.1:{settings.monitoring.prometheus_port}"
    prometheus_up = _prometheus_answers(prometheus_url)

    pusher = _Pusher(redis_config)
    dashboard = Dashboard(
        DashboardConfig(redis=redis_config, prometheus_url=prometheus_url, interval_s=0.5)
    )
    try:
        port = dashboard.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 10
        while not dashboard.sampler.subscribed.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        pusher.start()

        # a few seconds of live writes: rates and sampled latency for every exchange
        def ready() -> bool:
            state = dashboard.refresh()
            rates = state["rates"]["book_writes_per_s"]
            latency = state["latency"]["redis_ms"]
            return (
                all(
                    rates.get(e, 0) > 0 and latency.get(e, {}).get("count", 0) > 0
                    for e in ("binance", "coinbase", "kraken")
                )
                and len(state["nbbo"]) == 1
            )

        deadline = time.monotonic() + 20
        while not ready():
            assert pusher.error is None, pusher.error
            assert time.monotonic() < deadline, dashboard.refresh()
            time.sleep(0.25)
        if prometheus_up:
            dashboard.poll_prometheus()
            deadline = time.monotonic() + 10
            while not dashboard.prometheus_view["up"] and time.monotonic() < deadline:
                time.sleep(0.5)
                dashboard.poll_prometheus()

        browser = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,1000",
            "--virtual-time-budget=6000",
        ]
        shot = tmp_path / "dashboard.png"
        done = subprocess.run(
            [*browser, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
        )
        assert shot.exists(), f"no screenshot: {done.stderr[-2000:]}"
        assert _png_size(shot) == (1400, 1000)
        # a blank page compresses to a few KB; tables, charts and text take far more
        assert shot.stat().st_size > 40_000, shot.stat().st_size
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, RESULT)

        dom = subprocess.run(
            [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120
        )
        assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    finally:
        pusher.stop.set()
        if pusher.is_alive():
            pusher.join(5)
        dashboard.stop()
    assert pusher.error is None, pusher.error

    page = _TestIds()
    page.feed(dom.stdout)
    ids = page.values
    (tmp_path / "dom.html").write_text(dom.stdout)

    # the page rendered and then refreshed itself (polling /api/state)
    assert int(ids["updates-received"]) >= 2, ids["updates-received"]
    assert page.attrs["stream-status"]["data-mode"] == "polling"
    assert ids["prefix"] == redis_config.key_prefix
    assert page.attrs["redis-status"]["data-up"] == "1"
    assert page.attrs["prometheus-status"]["data-up"] == ("1" if prometheus_up else "0")
    if not prometheus_up:
        assert ids["connector-frames-total"] == "n/a"
        assert ids["consumer-lag"] == "n/a"

    # rates and latency: non-zero for every exchange written
    assert _number(ids["book-writes-total"]) > 0
    for exchange in ("binance", "coinbase", "kraken"):
        assert _number(ids[f"book-writes-{exchange}"]) > 0, exchange
        assert int(ids[f"redis-latency-{exchange}-count"]) > 0, exchange
        p50, p90, p99, worst = (_number(v) for v in ids[f"redis-latency-{exchange}"].split("/"))
        assert 25 <= p50 <= p90 <= p99 <= worst < 5000, ids[f"redis-latency-{exchange}"]
    assert _number(ids["redis-latency-all-p99"]) >= 25
    assert _number(ids["nbbo-updates"]) > 0
    assert (ids["books-live"], ids["books-total"]) == ("3", "4")

    # the books as written
    for exchange, symbol, _, status, reason, bid, ask in BOOKS:
        book = f"book-{exchange}:{symbol}"
        assert ids[f"{book}-status"] == status, book
        assert int(ids[f"{book}-seq"]) > 1000
        if status == "LIVE":
            assert (ids[f"{book}-bid"], ids[f"{book}-ask"]) == (bid, ask), book
            assert Decimal(ids[f"{book}-spread"]) == Decimal(ask) - Decimal(bid)
            assert float(ids[f"{book}-writes"]) > 0
        else:
            assert ids[f"{book}-reason"] == reason
            assert ids[f"{book}-bid"] == "\u2013"  # the empty-cell dash

    # the NBBO as written
    assert ids["nbbo-BTC-USD-bid"] == NBBO_BID and ids["nbbo-BTC-USD-ask"] == NBBO_ASK
    assert ids["nbbo-BTC-USD-bid-size"] == "3" and ids["nbbo-BTC-USD-ask-size"] == "1.5"
    assert ids["nbbo-BTC-USD-bid-venues"] == "coinbase:BTC-USD, kraken:XBT/USD"
    assert ids["nbbo-BTC-USD-excluded"] == "binance:BTCUSDT: quote USDT"
    assert ids["nbbo-BTC-USD-quote"] == "USD"

    # what the page shows came from the live state, not only the snapshot embedded at load
    initial = dom.stdout.split('id="initial-state" type="application/json">', 1)[1]
    embedded = json.loads(initial.split("</script>", 1)[0].replace("<\\/", "</"))
    first_seq = {f"{b['exchange']}:{b['symbol']}": b["seq"] for b in embedded["books"]}
    assert int(ids["book-coinbase:BTC-USD-seq"]) >= first_seq["coinbase:BTC-USD"]
