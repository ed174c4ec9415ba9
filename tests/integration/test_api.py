"""The query API on the real ClickHouse and Redis: a generated day (the job's core, written
twice by the job's RowBinary writer into a private database) read back through every history
endpoint, page by page, in JSON, Arrow and Parquet, equals the tables' FINAL rows; live books
and NBBOs written by the job's Redis scripts read back with the lease honoured (EXPIRED once it
ran out); the SSE stream carries what the channels publish; and requests generated from the
OpenAPI spec get documented answers, never a 5xx."""

from __future__ import annotations

import dataclasses
import io
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from api.app import ARROW, NEXT_CURSOR, build_app, redis_events
from api.data import ClickHouseHistory, RawFrameBooks, RedisLive
from api.keys import KeyStore, RateLimiter
from jobs.sinks.clickhouse import COLUMNS, RowBinaryWriter, connect, ensure_schema
from jobs.sinks.queries import NBBO_SUMMARY_TYPES, history_order, nbbo_summary_sql
from jobs.sinks.redis_books import VERSION_WIDTH, RedisBatch, book_key, nbbo_key, redis_client
from stack import manager
from tests.api_schema import run_all
from tests.export_day import DAY_MS, generated_day, generated_frames
from tests.memory_frames import MemoryFrames
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.integration

DAY_END_MS = DAY_MS + 86_400_000
# (endpoint, table, query) over the generated day
ENDPOINTS = [
    ("trades", "trades", {"instrument": "BNB-BTC"}),
    ("trades", "trades", {"exchange": "binance", "instrument": "ETH-BTC"}),
    ("matched-trades", "matched_trades", {"exchange": "binance"}),
    ("top-of-book", "top_of_book", {"exchange": "coinbase", "instrument": "BNB-BTC"}),
    ("late-events", "late_events", {"exchange": "binance"}),
    ("nbbo", "nbbo", {"instrument": "BNB-BTC"}),
    ("bars", "bars", {"instrument": "BNB-BTC", "venue": "ALL", "interval_ms": 60000}),
]


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    """Redis, ClickHouse and Kafka of the configured stack (started alone if they do not
    answer)."""
    settings = load_settings()
    wanted = ["redis", "clickhouse", "kafka"]
    started: list[str] = []
    if not all(_answers(c) for c in manager.components(settings, wanted)):
        started = manager.up(settings, wanted)
    try:
        yield load_settings()
    finally:
        if started:
            manager.down(settings, started)


def _answers(component: Any) -> bool:
    try:
        return bool(component.answers())
    except Exception:
        return False


@pytest.fixture(scope="module")
def database(settings: Settings) -> Iterator[str]:
    config = dataclasses.replace(settings.clickhouse, database=f"apitest_{uuid.uuid4().hex[:10]}")
    ensure_schema(config)
    writer = RowBinaryWriter(config)
    try:
        day = generated_day(settings)
        for _ in range(2):  # at-least-once: FINAL must show each row once
            for table, (data, rows) in day.tables.items():
                if table in COLUMNS:  # (a newer compiled core may write tables this code lacks)
                    writer.insert(table, data, rows)
        yield config.database
    finally:
        writer.close()
        client = connect(config)
        client.execute(f"DROP DATABASE IF EXISTS {config.database}")
        client.disconnect()


@pytest.fixture(scope="module")
def prefix(settings: Settings) -> Iterator[str]:
    prefix = f"tf-apitest-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis_client(settings.redis)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def env(
    settings: Settings, database: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    redis_config = dataclasses.replace(settings.redis, key_prefix=prefix)
    store = KeyStore(Path(tmp_path_factory.mktemp("keys")) / "api-keys.json")
    _, key = store.create(["read-live", "read-history", "replay"], rate_per_s=1e9, burst=10**9)
    frames = [f for f in generated_frames() if f[1] < DAY_MS + 60_000]

    async def stream(limit: int | None) -> Any:
        async for event in redis_events(redis_config, limit):
            yield event

    app = build_app(
        dataclasses.replace(settings, redis=redis_config),
        ClickHouseHistory(settings.clickhouse, database),
        RedisLive(redis_config),
        store,
        RateLimiter(1, 1),
        stream=stream,
        # the replay endpoint's frames: the generated day's first minutes (Kafka is not needed
        # here; tests/integration/test_backtest.py replays from the real raw topic)
        frames=lambda: MemoryFrames(frames),
        # books as of a time: from the stack's raw topic (none of the generated day's frames)
        books_at=RawFrameBooks(
            dataclasses.replace(
                settings, clickhouse=dataclasses.replace(settings.clickhouse, database=database)
            )
        ),
    )
    return {
        "client": TestClient(app), "app": app, "key": key, "redis": redis_config,
        "ch": dataclasses.replace(settings.clickhouse, database=database),
    }  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, str) and value and (value[0].isdigit() or value[0] == "-"):
        try:
            return Decimal(value)  # a decimal as JSON text
        except ArithmeticError:
            return value
    return value


def final_rows(env: dict[str, Any], table: str, filters: dict[str, Any]) -> list[tuple]:
    """The table's FINAL rows of the day with the filters, in the API's order, straight from
    ClickHouse (the driver's own types: Decimal, date)."""
    time_col = history_order(table, list(filters))[0]
    client = connect(env["ch"])
    try:
        rows = client.execute(
            f"SELECT {', '.join(COLUMNS[table])} FROM {env['ch'].database}.{table} FINAL"
        )
    finally:
        client.disconnect()
    cols = COLUMNS[table]
    order = history_order(table, list(filters))
    picked = []
    for row in rows:
        r = dict(zip(cols, row, strict=True))
        if all(r[k] == v for k, v in filters.items()) and DAY_MS <= r[time_col] < DAY_END_MS:
            picked.append(row)
    picked.sort(key=lambda row: [dict(zip(cols, row, strict=True))[c] for c in order])
    return [tuple(_plain(v) for v in row) for row in picked]


def _get(env: dict[str, Any], endpoint: str, query: dict[str, Any], **extra: Any) -> Any:
    params = {**query, "from_ms": DAY_MS, "to_ms": DAY_END_MS, **extra}
    r = env["client"].get(
        f"/v1/{endpoint}", params=params, headers={"Authorization": f"Bearer {env['key']}"}
    )
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize(("endpoint", "table", "query"), ENDPOINTS)
def test_json_pages_equal_the_final_rows(
    env: dict[str, Any], endpoint: str, table: str, query: dict[str, Any]
) -> None:
    expected = final_rows(env, table, query)
    assert expected, f"the generated day has no {table} rows for {query}"
    got: list[tuple] = []
    cursor, pages = None, 0
    limit = max(1, len(expected) // 3)  # at least three pages
    while True:
        extra = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = _get(env, endpoint, query, **extra).json()
        got += [tuple(_plain(v) for v in row.values()) for row in body["rows"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages >= 3
    date_at = COLUMNS[table].index("date")
    expected = [(*r[:date_at], r[date_at].isoformat(), *r[date_at + 1 :]) for r in expected]
    assert got == expected


@pytest.mark.parametrize(("endpoint", "table", "query"), ENDPOINTS)
def test_arrow_and_parquet_equal_the_final_rows(
    env: dict[str, Any], endpoint: str, table: str, query: dict[str, Any]
) -> None:
    expected = final_rows(env, table, query)
    whole = {"limit": 100_000}
    arrow = pa.ipc.open_stream(_get(env, endpoint, query, format="arrow", **whole).content)
    arrow = arrow.read_all()
    parquet = pq.read_table(
        io.BytesIO(_get(env, endpoint, query, format="parquet", **whole).content)
    )
    assert arrow.equals(parquet)
    got = [tuple(_plain(v) for v in row.values()) for row in arrow.to_pylist()]
    assert got == expected
    for name in ("price", "bid_price", "open"):
        if name in arrow.schema.names:
            assert arrow.schema.field(name).type == pa.decimal128(38, 18)


@pytest.mark.parametrize("interval_ms", [1000, 60000])
def test_nbbo_summary_pages_equal_the_summary_query(env: dict[str, Any], interval_ms: int) -> None:
    """/v1/nbbo-summary page by page (JSON) and whole (Arrow) is nbbo_summary_sql's answer on
    the nbbo_1s the view filled from the day written twice."""
    query = {"instrument": "BNB-BTC", "interval_ms": interval_ms}
    client = connect(env["ch"])
    try:
        expected = client.execute(nbbo_summary_sql(env["ch"].database), {
            **query, "from_ms": DAY_MS, "to_ms": DAY_END_MS})  # fmt: skip
    finally:
        client.disconnect()
    assert len(expected) >= 3
    expected = [tuple(_plain(v) for v in row) for row in expected]
    got: list[tuple] = []
    cursor, pages = None, 0
    while True:
        extra = {"limit": max(1, len(expected) // 3), **({"cursor": cursor} if cursor else {})}
        body = _get(env, "nbbo-summary", query, **extra).json()
        assert body["columns"] == list(NBBO_SUMMARY_TYPES)
        got += [tuple(_plain(v) for v in row.values()) for row in body["rows"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages >= 3 and got == expected
    arrow = pa.ipc.open_stream(_get(env, "nbbo-summary", query, format="arrow").content)
    table = arrow.read_all()
    assert [tuple(_plain(v) for v in row.values()) for row in table.to_pylist()] == expected
    assert table.schema.field("bid_price").type == pa.decimal128(38, 18)


def test_an_arrow_page_carries_the_next_cursor_in_a_header(env: dict[str, Any]) -> None:
    query = {"instrument": "BNB-BTC"}
    r = _get(env, "trades", query, limit=5, format="arrow")
    assert pa.ipc.open_stream(r.content).read_all().num_rows == 5
    rest = _get(env, "trades", query, cursor=r.headers[NEXT_CURSOR]).json()
    assert len(rest["rows"]) == len(final_rows(env, "trades", query)) - 5
    assert r.headers["content-type"] == ARROW


def _write_live(env: dict[str, Any], live_until_ms: int) -> None:
    """A book and an NBBO through the job's guarded Redis writes, with its lease."""
    prefix = env["redis"].key_prefix
    client = redis_client(env["redis"])
    batch = RedisBatch(client)
    version = str(1).zfill(VERSION_WIDTH)
    bkey = book_key(prefix, "binance", "BTCUSDT")
    batch.add_write(
        False,
        [bkey, f"{prefix}:books", f"{prefix}:book-updates"],
        ["7", "LIVE", "", '[["100.123456789012345678","1.5"]]', '[["100.2","2"]]', "1000",
         "2000", "BTC-USDT", "3000", f"binance:BTCUSDT:7:LIVE:{version}", version],
    )  # fmt: skip
    nkey = nbbo_key(prefix, "BTC-USDT")
    batch.add_write(
        True,
        [nkey, f"{prefix}:nbbos", f"{prefix}:nbbo-updates"],
        [version, f"BTC-USDT:{version}", "quote", "USDT", "bid_price", "100.123456789012345678",
         "bid_size", "1.5", "bid_venues", "binance", "ask_price", "100.2", "ask_size", "2",
         "ask_venues", "binance", "locked", "0", "crossed", "0",
         "venues", '["binance:BTCUSDT"]', "excluded", "{}", "event_time_ms", "1000",
         "receive_time_ns", "2000", "publish_time_ns", "3000"],
    )  # fmt: skip
    batch.add_lease([bkey, nkey], live_until_ms)
    batch.flush()


def test_live_books_and_nbbo_honour_the_lease(env: dict[str, Any]) -> None:
    import time

    client, headers = env["client"], {"Authorization": f"Bearer {env['key']}"}
    _write_live(env, live_until_ms=int(time.time() * 1000) + 600_000)
    book = client.get("/v1/live/books/binance/BTCUSDT", headers=headers).json()
    assert book["status"] == "LIVE" and book["seq"] == 7
    assert book["bids"] == [{"price": "100.123456789012345678", "size": "1.5"}]
    nbbo = client.get("/v1/live/nbbo/BTC-USDT", headers=headers).json()
    assert nbbo["status"] == "LIVE" and nbbo["bid_price"] == "100.123456789012345678"
    assert [b["symbol"] for b in client.get("/v1/live/books", headers=headers).json()] == [
        "BTCUSDT"
    ]
    _write_live(env, live_until_ms=1)  # the lease ran out long ago
    assert (
        client.get("/v1/live/books/binance/BTCUSDT", headers=headers).json()["status"] == "EXPIRED"
    )
    assert client.get("/v1/live/nbbo", headers=headers).json()[0]["status"] == "EXPIRED"


def test_the_stream_carries_what_the_channels_publish(env: dict[str, Any]) -> None:
    prefix = env["redis"].key_prefix
    publisher = redis_client(env["redis"])
    done = threading.Event()

    def publish() -> None:  # until the stream has its events (it subscribes first)
        while not done.wait(0.05):
            publisher.publish(f"{prefix}:nbbo-updates", "BTC-USDT:000000000000000000000009")

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        with env["client"].stream(
            "GET", "/v1/live/stream?events=2", headers={"Authorization": f"Bearer {env['key']}"}
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            text = "".join(r.iter_text())
    finally:
        done.set()
        thread.join()
    assert text.count("event: nbbo\ndata: BTC-USDT:000000000000000000000009\n\n") == 2


def test_a_book_at_a_time_without_frames_is_404(env: dict[str, Any]) -> None:
    r = env["client"].get(
        "/v1/books/binance/BTCUSDT/at",
        params={"time": "2026-11-30T12:00:00Z"},
        headers={"Authorization": f"Bearer {env['key']}"},
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"]["error"] == "not_found"


def test_generated_requests_get_documented_answers(env: dict[str, Any]) -> None:
    # the stream's requests end at their first event: keep the channel busy meanwhile
    prefix = env["redis"].key_prefix
    publisher = redis_client(env["redis"])
    done = threading.Event()

    def publish() -> None:
        while not done.wait(0.02):
            publisher.publish(f"{prefix}:book-updates", "binance:BTCUSDT:7:LIVE:1")

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        counts = run_all(env["app"], env["key"])
    finally:
        done.set()
        thread.join()
    assert [name for name, n in counts.items() if not n] == ["GET /v1/health negative"]
