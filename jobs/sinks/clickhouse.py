"""ClickHouse tables for trades and book snapshots, and an idempotent batch writer.

Writes from a Python operator are at-least-once (a restore replays frames since the last
checkpoint), so every row has a deterministic identity (its sorting key) and the tables are
``ReplacingMergeTree``: read them with ``FINAL`` (or let merges collapse duplicates).
The DDL sticks to what ClickHouse 18.16 (the local server) and current releases both accept:
no DateTime64, TTL or codecs; millisecond/nanosecond times as UInt64 columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clickhouse_driver import Client

from jobs.instrument import BookView
from jobs.parse.events import Trade
from tickflow.config import ClickHouseConfig

# Decimal(38, 18): exact for every price and size the exchanges quote (<= 18 decimals)
DECIMAL = "Decimal(38, 18)"

TABLES: dict[str, str] = {
    "trades": f"""
CREATE TABLE IF NOT EXISTS {{db}}.trades (
    date Date,
    exchange String,
    symbol String,
    instrument String,
    trade_id String,
    price {DECIMAL},
    size {DECIMAL},
    taker_side Enum8('buy' = 1, 'sell' = 2),
    trade_time_ms UInt64,
    event_time_ms UInt64,
    receive_time_ns UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, trade_time_ms, trade_id)
""",
    "book_snapshots": f"""
CREATE TABLE IF NOT EXISTS {{db}}.book_snapshots (
    date Date,
    exchange String,
    symbol String,
    instrument String,
    event_time_ms UInt64,
    seq UInt64,
    bid_prices Array({DECIMAL}),
    bid_sizes Array({DECIMAL}),
    ask_prices Array({DECIMAL}),
    ask_sizes Array({DECIMAL}),
    receive_time_ns UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, event_time_ms, seq)
""",
}

TABLES["top_of_book"] = f"""
CREATE TABLE IF NOT EXISTS {{db}}.top_of_book (
    date Date,
    exchange String,
    symbol String,
    instrument String,
    event_time_ms UInt64,
    version UInt64,
    seq UInt64,
    status String,
    bid_price Nullable({DECIMAL}),
    bid_size Nullable({DECIMAL}),
    ask_price Nullable({DECIMAL}),
    ask_size Nullable({DECIMAL}),
    receive_time_ns UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, event_time_ms, version)
"""

COLUMNS: dict[str, tuple[str, ...]] = {
    "trades": (
        "date",
        "exchange",
        "symbol",
        "instrument",
        "trade_id",
        "price",
        "size",
        "taker_side",
        "trade_time_ms",
        "event_time_ms",
        "receive_time_ns",
    ),
    "book_snapshots": (
        "date",
        "exchange",
        "symbol",
        "instrument",
        "event_time_ms",
        "seq",
        "bid_prices",
        "bid_sizes",
        "ask_prices",
        "ask_sizes",
        "receive_time_ns",
    ),
    "top_of_book": (
        "date",
        "exchange",
        "symbol",
        "instrument",
        "event_time_ms",
        "version",
        "seq",
        "status",
        "bid_price",
        "bid_size",
        "ask_price",
        "ask_size",
        "receive_time_ns",
    ),
}


def utc_date(ms: int) -> Any:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def trade_row(trade: Trade, instrument: str) -> tuple[Any, ...]:
    return (
        utc_date(trade.trade_time_ms),
        trade.exchange,
        trade.symbol,
        instrument,
        trade.trade_id,
        trade.price,
        trade.size,
        trade.taker_side,
        trade.trade_time_ms,
        trade.event_time_ms,
        trade.receive_time_ns,
    )


def snapshot_row(view: BookView) -> tuple[Any, ...]:
    return (
        utc_date(view.event_time_ms),
        view.exchange,
        view.symbol,
        view.instrument,
        view.event_time_ms,
        view.seq,
        [p for p, _ in view.bids],
        [s for _, s in view.bids],
        [p for p, _ in view.asks],
        [s for _, s in view.asks],
        view.receive_time_ns,
    )


def top_of_book_row(view: BookView) -> tuple[Any, ...]:
    """Best bid and ask after a change (NULL on a side that is empty or not LIVE)."""
    bid = view.bids[0] if view.bids else (None, None)
    ask = view.asks[0] if view.asks else (None, None)
    time_ms = view.event_time_ms or view.receive_time_ns // 1_000_000
    return (
        utc_date(time_ms), view.exchange, view.symbol, view.instrument, time_ms,
        view.version, max(view.seq, 0), view.status.value, bid[0], bid[1], ask[0], ask[1],
        view.receive_time_ns,
    )


def connect(config: ClickHouseConfig, database: str | None = None) -> Client:
    return Client(
        host=config.host,
        port=config.port,
        user=config.user,
        password=config.password,
        database=database or "default",
        connect_timeout=5,
        send_receive_timeout=60,
    )


def ensure_schema(config: ClickHouseConfig) -> None:
    """Create the database and tables if they do not exist (idempotent)."""
    client = connect(config)
    try:
        client.execute(f"CREATE DATABASE IF NOT EXISTS {config.database}")
        for ddl in TABLES.values():
            client.execute(ddl.format(db=config.database))
    finally:
        client.disconnect()


class ClickHouseWriter:
    """Inserts row batches; rows are passed as parameters (never inlined into SQL)."""

    def __init__(self, config: ClickHouseConfig) -> None:
        self.database = config.database
        self.client = connect(config, config.database)

    def insert(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        columns = ", ".join(COLUMNS[table])
        self.client.execute(f"INSERT INTO {self.database}.{table} ({columns}) VALUES", list(rows))
        return len(rows)

    def close(self) -> None:
        self.client.disconnect()
