"""Outages, not crashes: ClickHouse paused (SIGSTOP) and blackholed, Redis paused, the Kafka
broker down for longer than the connectors' delivery timeout, each while a slice (Binance and
Coinbase through the simulator, the job, Redis, ClickHouse) runs.

- ClickHouse paused or blackholed: the live books in Redis keep updating (versions advance,
  LIVE, leases fresh), the job never restarts, and afterwards every row is in ClickHouse once:
  the trades equal the simulator's tape, the exactly-once result topics equal the tables.
- Redis paused: the job recovers (its Redis client times out, it restores from its checkpoint)
  and nothing is lost: books equal to the truth, no version backwards, trades once.
- Kafka down: the connectors' frames time out, every book is marked ``sync_lost`` in the raw
  topic ahead of its next frame, goes RESYNCING (a gap in top_of_book) and ends LIVE and equal
  to the truth.

One slice for the module (starting a job is most of the cost); each drill starts from a LIVE
market and ends at rest with its checks. The faults come from ``tickflow.faults``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from jobs.sinks.clickhouse import connect
from jobs.sinks.redis_books import redis_client
from schemas.codec import decode_envelope
from schemas.writers import registry_writer_schemas
from stack import flink
from tickflow.config import Settings
from tickflow.faults import TcpProxy, paused, stopped
from tickflow.runs import read_committed
from tickflow.slice import (
    BookUpdates,
    Slice,
    clickhouse_trades,
    equals_truth,
    read_topic,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXCHANGES = ("binance", "coinbase")
COINBASE = ("BTC-USD", "ETH-USD")
DELIVERY_TIMEOUT_MS = 5000  # the connectors', short for the drill (default: 120 s)
PAUSE_S = 25.0  # ClickHouse paused / blackholed
REDIS_PAUSE_S = 15.0
KAFKA_DOWN_S = 20.0  # > 3 delivery timeouts
RESULT_KEYS = {  # row identity of each exactly-once result table
    "nbbo": ("instrument", "version"),
    "matched_trades": ("exchange", "symbol", "trade_id"),
    "bars": ("instrument", "interval_ms", "venue", "window_start_ms"),
}
FIGURES: dict[str, Any] = {}  # printed at the end of the module (docs/robustness.md)


@pytest.fixture(scope="module")
def proxy(stack_settings: Settings) -> Iterator[TcpProxy]:
    """Between the job's ClickHouse sink and ClickHouse's HTTP port."""
    ch = stack_settings.clickhouse
    with TcpProxy((ch.host, ch.http_port)) as running:
        yield running


@pytest.fixture(scope="module")
def running_slice(
    stack_settings: Settings, proxy: TcpProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Slice]:
    environ = {
        "TICKFLOW__KAFKA__DELIVERY_TIMEOUT_MS": str(DELIVERY_TIMEOUT_MS),
        "TICKFLOW__EXCHANGES__COINBASE__SYMBOLS": json.dumps({p: p for p in COINBASE}),
        # the job's sink talks to ClickHouse through the proxy, with short timeouts
        "TICKFLOW__CLICKHOUSE__HTTP_PORT": str(proxy.port),
        "TICKFLOW__CLICKHOUSE__INSERT_TIMEOUT_MS": "3000",
        "TICKFLOW__CLICKHOUSE__CONNECT_TIMEOUT_MS": "2000",
        "TICKFLOW__CLICKHOUSE__RETRY_MAX_BACKOFF_MS": "2000",
    }
    logs = tmp_path_factory.mktemp("outages")
    with start_slice(logs, EXCHANGES, rate_per_symbol=20, environ=environ) as running:
        yield running
    print(f"\noutage drills: {json.dumps(FIGURES, indent=1, sort_keys=True)}")


def books(settings: Settings) -> list[tuple[str, str]]:
    return [("binance", s) for s in settings.exchanges.binance.symbols] + [
        ("coinbase", s) for s in COINBASE
    ]


def hashes(settings: Settings) -> dict[tuple[str, str], dict[str, str]]:
    """Every book's Redis hash (status, version, live_until_ms, ...)."""
    r = redis_client(settings.redis, decode_responses=True, socket_timeout=10)
    prefix = settings.redis.key_prefix
    return {(ex, s): r.hgetall(f"{prefix}:book:{ex}:{s}") for ex, s in books(settings)}


def all_live(settings: Settings) -> bool:
    return all(h.get("status") == "LIVE" for h in hashes(settings).values())


def start_market(running: Slice) -> None:
    settings = running.settings
    sim_post(settings, "resume")
    flink.wait_job_running(settings, running.job_id, 240)
    wait_for("every book LIVE", lambda: all_live(settings), 240)


def settle_and_check_books(settings: Settings) -> None:
    """Stop the market; every book ends LIVE and equal to the simulator's true book."""
    sim_post(settings, "pause")
    for exchange, symbol in books(settings):
        wait_for(
            f"{exchange}:{symbol} LIVE and equal to the truth",
            lambda e=exchange, s=symbol: equals_truth(settings, e, s),  # type: ignore[misc]
            180,
        )


def binance_tape(settings: Settings) -> list[tuple[str, str, Decimal, Decimal, str]]:
    return sorted(
        (s, str(t["id"]), Decimal(t["price"]), Decimal(t["qty"]),
         "sell" if t["is_buyer_maker"] else "buy")
        for s in settings.exchanges.binance.symbols
        for t in sim_get(settings, f"binance/trades?symbol={s}")["trades"]
    )  # fmt: skip


def binance_trades(settings: Settings, final: bool = True) -> list[Any]:
    symbols = set(settings.exchanges.binance.symbols)
    return [t for t in clickhouse_trades(settings, final) if t[0] in symbols]


def results_equal(settings: Settings) -> dict[str, int] | None:
    """Per result table, its rows (FINAL) if they are exactly the committed topic's records
    (no row missing, none extra, no record twice); None while they differ."""
    topics = settings.kafka.result_topics()
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    counts: dict[str, int] = {}
    try:
        for table, cols in RESULT_KEYS.items():
            records = [
                tuple(str(r[c]) for c in cols) for r in read_committed(settings, topics[table])
            ]
            stored = [
                tuple(str(v) for v in row)
                for row in client.execute(f"SELECT {', '.join(cols)} FROM {db}.{table} FINAL")
            ]
            if len(records) != len(set(records)) or sorted(records) != sorted(stored):
                return None
            counts[table] = len(stored)
    finally:
        client.disconnect()
    return counts


def check_rows_once(settings: Settings, drill: str) -> None:
    """Every Binance trade of the tape stored once; every result row once, as in Kafka."""
    tape = binance_tape(settings)
    wait_for("every trade in ClickHouse", lambda: len(binance_trades(settings)) >= len(tape), 180)
    assert binance_trades(settings) == tape  # FINAL: nothing lost, nothing twice
    counts = wait_for("ClickHouse equal to the result topics", lambda: results_equal(settings), 180)
    assert counts["nbbo"] > 0
    FIGURES.setdefault(drill, {}).update(
        trades=len(tape),
        trade_rows_physical=len(binance_trades(settings, final=False)),
        result_rows=counts,
    )


def check_books_live_while(settings: Settings, seconds: float, drill: str) -> None:
    """For ``seconds``: every book stays LIVE, its lease fresh, and its version advances."""
    before = {k: int(h["version"]) for k, h in hashes(settings).items()}
    deadline = time.monotonic() + seconds
    checks = 0
    while time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        now_ms = time.time_ns() // 1_000_000
        for key, h in hashes(settings).items():
            assert h["status"] == "LIVE", (key, h.get("status"), h.get("reason"))
            assert int(h["live_until_ms"]) >= now_ms, (key, "lease ran out")
        checks += 1
    after = {k: int(h["version"]) for k, h in hashes(settings).items()}
    advanced = {f"{k[0]}:{k[1]}": after[k] > before[k] for k in before}
    assert all(advanced.values()), advanced
    FIGURES.setdefault(drill, {}).update(live_checks=checks, books_advanced=len(advanced))


def test_clickhouse_paused_books_stay_live_and_every_row_arrives_once(
    running_slice: Slice,
) -> None:
    settings, job_id = running_slice.settings, running_slice.job_id
    start_market(running_slice)
    restarts_before = flink.job_restarts(settings, job_id)
    with paused(settings, "clickhouse"):
        check_books_live_while(settings, PAUSE_S, "clickhouse_paused")
    settle_and_check_books(settings)
    check_rows_once(settings, "clickhouse_paused")
    assert flink.job_state(settings, job_id) == "RUNNING"
    assert flink.job_restarts(settings, job_id) == restarts_before  # the job never restarted


def test_clickhouse_blackholed_books_stay_live_and_every_row_arrives_once(
    running_slice: Slice, proxy: TcpProxy
) -> None:
    settings, job_id = running_slice.settings, running_slice.job_id
    start_market(running_slice)
    restarts_before = flink.job_restarts(settings, job_id)
    proxy.blackhole()
    try:
        check_books_live_while(settings, PAUSE_S, "clickhouse_blackholed")
    finally:
        proxy.restore()
    FIGURES["clickhouse_blackholed"]["connections_swallowed"] = proxy.swallowed
    settle_and_check_books(settings)
    check_rows_once(settings, "clickhouse_blackholed")
    assert flink.job_state(settings, job_id) == "RUNNING"
    assert flink.job_restarts(settings, job_id) == restarts_before


def test_redis_paused_the_job_recovers_without_loss(running_slice: Slice) -> None:
    settings, job_id = running_slice.settings, running_slice.job_id
    start_market(running_slice)
    restarts_before = flink.job_restarts(settings, job_id)
    with BookUpdates(settings) as updates:
        with paused(settings, "redis"):
            time.sleep(REDIS_PAUSE_S)
        flink.wait_job_running(settings, job_id, 240)
        wait_for("book writes after Redis resumed", lambda: updates.writes > 50, 240)
        settle_and_check_books(settings)
        check_rows_once(settings, "redis_paused")
        assert updates.error is None
        assert updates.backwards == []  # no book ever went back to an older version
    FIGURES["redis_paused"]["job_restarts"] = flink.job_restarts(settings, job_id) - restarts_before


def connector_counter(settings: Settings, exchange: str, name: str) -> float:
    port = settings.monitoring.connector_metrics_ports[exchange]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"tickflow_connector_{name}_total{{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def gaps_since(settings: Settings, since_ns: int) -> dict[str, int] | None:
    """Per book, its non-LIVE touches since ``since_ns``, if every book has some and is LIVE
    again after them; else None."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    try:
        rows = client.execute(
            f"SELECT exchange, symbol, countIf(status != 'LIVE'),"
            f" maxIf(version, status != 'LIVE'), maxIf(version, status = 'LIVE')"
            f" FROM {db}.top_of_book FINAL WHERE receive_time_ns >= %(t)s"
            " GROUP BY exchange, symbol",
            {"t": since_ns},
        )
    finally:
        client.disconnect()
    gaps = {f"{ex}:{s}": n for ex, s, n, last_gap, last_live in rows if n and last_live > last_gap}
    return gaps if set(gaps) == {f"{ex}:{s}" for ex, s in books(settings)} else None


def test_kafka_down_longer_than_the_delivery_timeout_marks_and_resyncs_every_book(
    running_slice: Slice,
) -> None:
    settings, job_id = running_slice.settings, running_slice.job_id
    start_market(running_slice)
    restarts_before = flink.job_restarts(settings, job_id)
    with BookUpdates(settings) as updates:
        with stopped(settings, "kafka"):
            down_ns = time.time_ns()  # the broker is gone: nothing received since got in
            time.sleep(KAFKA_DOWN_S)
        up_ns = time.time_ns()
        flink.wait_job_running(settings, job_id, 300)
        # never LIVE across the hole: each book's touches (top_of_book, the job's record of
        # every status change) go RESYNCING after the outage, then LIVE again. (Redis may not
        # show RESYNCING: a job catching up conflates a book's writes, RESYNCING then LIVE in
        # one flush, which is what Redis is for.)
        gaps = wait_for("every book through RESYNCING after the outage",
                        lambda: gaps_since(settings, down_ns), 300)  # fmt: skip
        settle_and_check_books(settings)
        assert updates.error is None
        assert updates.backwards == []

    # the raw topic: in every book, the first envelope received after the broker stopped is
    # a sync_lost of a failed delivery (frames in the hole never arrive, and none received
    # after it comes before the mark)
    per_book: dict[tuple[str, str], list[Any]] = {}
    writers = registry_writer_schemas(settings.registry)  # the connectors frame their records
    for _key, value in read_topic(settings, settings.kafka.raw_topic):
        envelope = decode_envelope(value, writers)
        per_book.setdefault((envelope.exchange, envelope.symbol), []).append(envelope)
    marked: dict[str, int] = {}
    for book in books(settings):
        envelopes = per_book[book]
        following = next(e for e in envelopes if e.receive_time_ns >= down_ns)
        assert following.channel == "sync_lost", (book, following.channel)
        assert "kafka delivery failed" in json.loads(following.payload)["reason"], following
        marked[f"{book[0]}:{book[1]}"] = sum(
            e.channel == "sync_lost" and e.receive_time_ns >= down_ns for e in envelopes
        )
    lost = {ex: connector_counter(settings, ex, "books_lost") for ex in EXCHANGES}
    assert all(n > 0 for n in lost.values()), lost
    FIGURES["kafka_down"] = {
        "down_s": round((up_ns - down_ns) / 1e9, 1),
        "sync_lost_per_book": marked,
        "not_live_touches_per_book": gaps,
        "books_lost_metric": lost,
        "delivery_failures_metric": {
            ex: connector_counter(settings, ex, "delivery_failures") for ex in EXCHANGES
        },
        "job_restarts": flink.job_restarts(settings, job_id) - restarts_before,
    }
