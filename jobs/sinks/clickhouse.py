"""ClickHouse tables (raw history and analytics), their schema upgrades and a RowBinary writer.

The job's writes are at-least-once (a restore replays frames since the last checkpoint), so
every row has a deterministic identity (its sorting key) and the tables are
``ReplacingMergeTree``: read them with ``FINAL`` (or let merges collapse duplicates).
The DDL sticks to what ClickHouse 18.16 (the local server) and current releases both accept:
no DateTime64, TTL or codecs; millisecond/nanosecond times as UInt64 columns.

Each table has its DDL in ``TABLES`` and its insert column order in ``COLUMNS`` (the compiled
core, ``jobs/native/src/rows.rs``, encodes its rows in that order); the ``*_row`` helpers
build an analytics row tuple in that order from named values (tests and tools that insert
rows of their own), with ``date`` (the partition key) derived from the row's own time in UTC.
``jobs/sinks/queries.py`` has the queries that read them.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError

from tickflow.config import ClickHouseConfig

log = logging.getLogger(__name__)

# Decimal(38, 18): exact for every price and size the exchanges quote (<= 18 decimals)
DECIMAL = "Decimal(38, 18)"

TAKER_SIDES = ("buy", "sell")
TOUCHES = ("at", "inside", "through", "none")
LATE_KINDS = ("trade", "book")
# why a book was out of sync (docs/queries.md, "Gaps and completeness")
GAP_KINDS = ("startup", "gap", "checksum", "sync_lost", "crossed", "internal_error", "restored")

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
    receive_time_ns UInt64,
    on_time UInt8
) ENGINE = ReplacingMergeTree(on_time)
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
    "top_of_book": f"""
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
    bid_depth_10bps Nullable({DECIMAL}),
    ask_depth_10bps Nullable({DECIMAL}),
    receive_time_ns UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, event_time_ms, version)
""",
    # cross-exchange best bid/offer of one instrument after each change of a member book
    "nbbo": f"""
CREATE TABLE IF NOT EXISTS {{db}}.nbbo (
    date Date,
    instrument String,
    quote String,
    event_time_ms UInt64,
    version UInt64,
    receive_time_ns UInt64,
    bid_price Nullable({DECIMAL}),
    bid_size Nullable({DECIMAL}),
    bid_venues Array(String),
    ask_price Nullable({DECIMAL}),
    ask_size Nullable({DECIMAL}),
    ask_venues Array(String),
    locked UInt8,
    crossed UInt8,
    venues Array(String),
    venue_versions Array(UInt64),
    excluded Array(String),
    excluded_reasons Array(String)
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (instrument, event_time_ms, version)
""",
    # every trade with the book (own exchange, and NBBO) it executed against
    "matched_trades": f"""
CREATE TABLE IF NOT EXISTS {{db}}.matched_trades (
    date Date,
    exchange String,
    symbol String,
    instrument String,
    trade_id String,
    trade_time_ms UInt64,
    price {DECIMAL},
    size {DECIMAL},
    taker_side Enum8('buy' = 1, 'sell' = 2),
    book_status String,
    book_time_ms UInt64,
    book_version UInt64,
    book_seq UInt64,
    bid_price Nullable({DECIMAL}),
    bid_size Nullable({DECIMAL}),
    ask_price Nullable({DECIMAL}),
    ask_size Nullable({DECIMAL}),
    mid Nullable({DECIMAL}),
    spread Nullable({DECIMAL}),
    touch Enum8('at' = 1, 'inside' = 2, 'through' = 3, 'none' = 4),
    levels_consumed UInt16,
    size_consumed {DECIMAL},
    slippage_mid Nullable({DECIMAL}),
    slippage_mid_bps Nullable(Float64),
    nbbo_bid_price Nullable({DECIMAL}),
    nbbo_bid_size Nullable({DECIMAL}),
    nbbo_ask_price Nullable({DECIMAL}),
    nbbo_ask_size Nullable({DECIMAL}),
    nbbo_venues Array(String),
    slippage_nbbo Nullable({DECIMAL}),
    trade_through UInt8,
    receive_time_ns UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, trade_time_ms, trade_id)
""",
    # OHLCV + book metrics per window; venue is an exchange or 'ALL' (every exchange)
    "bars": f"""
CREATE TABLE IF NOT EXISTS {{db}}.bars (
    date Date,
    instrument String,
    venue String,
    interval_ms UInt32,
    window_start_ms UInt64,
    open Nullable({DECIMAL}),
    high Nullable({DECIMAL}),
    low Nullable({DECIMAL}),
    close Nullable({DECIMAL}),
    volume {DECIMAL},
    notional {DECIMAL},
    vwap Nullable(Float64),
    trade_count UInt32,
    buy_volume {DECIMAL},
    sell_volume {DECIMAL},
    live_ms UInt32,
    twa_spread Nullable(Float64),
    twa_bid_depth_10bps Nullable(Float64),
    twa_ask_depth_10bps Nullable(Float64),
    ofi {DECIMAL}
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (instrument, interval_ms, venue, window_start_ms)
""",
    # events that arrived behind the watermark (left out of bars, kept here for audit)
    "late_events": """
CREATE TABLE IF NOT EXISTS {db}.late_events (
    date Date,
    instrument String,
    exchange String,
    symbol String,
    kind String,
    event_id String,
    event_time_ms UInt64,
    watermark_ms UInt64,
    lateness_ms UInt64,
    receive_time_ns UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, kind, event_time_ms, event_id)
""",
    # every interval in which a book was not in sync (receive time): a row when it opens
    # (closed = 0, end_ms = start_ms), replaced by the row written when it closes
    "gaps": """
CREATE TABLE IF NOT EXISTS {db}.gaps (
    date Date,
    exchange String,
    symbol String,
    instrument String,
    start_ms UInt64,
    start_version UInt64,
    end_ms UInt64,
    closed UInt8,
    kind String,
    reason String,
    seq_before Nullable(UInt64),
    seq_after Nullable(UInt64),
    messages UInt64,
    dropped UInt64
) ENGINE = ReplacingMergeTree(closed)
PARTITION BY (date, exchange)
ORDER BY (exchange, symbol, start_ms, start_version)
""",
}

# Summaries that materialized views keep beside a base table, narrower or coarser: the
# documented day queries read them instead of a day of base rows (docs/queries.md). Each is a
# ReplacingMergeTree read with FINAL like the base tables, and each view writes, for the rows
# of an insert, rows whose identity and content depend on the base rows alone, so a replay (the
# same rows again, in other blocks) writes rows that FINAL collapses into the same answer.
# (AggregatingMergeTree states were measured too: uniqExact and argMax over tuples merge at
# 1-2 s a day on 18.16.)
#
# nbbo_1s: per instrument and second, the NBBO change that ended it (the last by
# (event_time_ms, version)). ``last_key`` orders the changes within the second as
# (event_time_ms, version) do: ms within the second above bit 54, the version below it (the
# job's versions are microsecond times, < 2^54 until the year 2540). The view keeps each
# block's last change per second; of the rows of a second FINAL keeps the highest last_key,
# the second's last change, whichever blocks its changes came in.
_NBBO_1S_KEY = "bitShiftLeft(toUInt64(modulo(event_time_ms, 1000)), 54) + version"

SUMMARIES: dict[str, tuple[str, str, str]] = {
    # name -> (its base table, its DDL, the view's SELECT over the base table)
    "nbbo_1s": (
        "nbbo",
        f"""
CREATE TABLE IF NOT EXISTS {{db}}.nbbo_1s (
    date Date,
    instrument String,
    second_ms UInt64,
    last_key UInt64,
    event_time_ms UInt64,
    version UInt64,
    bid_price Nullable({DECIMAL}),
    bid_size Nullable({DECIMAL}),
    bid_venues Array(String),
    ask_price Nullable({DECIMAL}),
    ask_size Nullable({DECIMAL}),
    ask_venues Array(String),
    locked UInt8,
    crossed UInt8
) ENGINE = ReplacingMergeTree(last_key)
PARTITION BY date
ORDER BY (instrument, second_ms)
""",
        f"""
SELECT date, instrument, intDiv(event_time_ms, 1000) * 1000 AS second_ms,
    {_NBBO_1S_KEY} AS last_key, event_time_ms, version, bid_price, bid_size, bid_venues,
    ask_price, ask_size, ask_venues, locked, crossed
FROM {{db}}.nbbo
ORDER BY instrument, second_ms, last_key DESC
LIMIT 1 BY instrument, second_ms
""",
    ),
    # matched trades narrowed to what trade-through counts read, keyed by instrument first so
    # one instrument's day is a contiguous range: the base table's identity, one row per trade
    "trade_throughs": (
        "matched_trades",
        """
CREATE TABLE IF NOT EXISTS {db}.trade_throughs (
    date Date,
    instrument String,
    exchange String,
    symbol String,
    trade_time_ms UInt64,
    trade_id String,
    trade_through UInt8
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (instrument, exchange, symbol, trade_time_ms, trade_id)
""",
        """
SELECT date, instrument, exchange, symbol, trade_time_ms, trade_id, trade_through
FROM {db}.matched_trades
""",
    ),
}


# a summary new to a database is filled from its base table a day at a time; a busy day of
# NBBO changes (4 million rows) takes about a minute on 2 cores
BACKFILL_TIMEOUT_S = 1800.0


def summary_view(db: str, name: str) -> str:
    """The materialized view that feeds summary ``name`` from its base table's inserts."""
    select = SUMMARIES[name][2].format(db=db)
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}_mv TO {db}.{name} AS{select}"


def summary_backfill(db: str, name: str) -> str:
    """Fills summary ``name`` from one day of rows already in its base table (params: date).
    Harmless beside the view (or run twice): the states are idempotent."""
    select = SUMMARIES[name][2].format(db=db)
    base = f"FROM {db}.{SUMMARIES[name][0]}\n"
    select = select.replace(base, f"{base}WHERE date = %(date)s\n")
    return f"INSERT INTO {db}.{name}{select}"


def schema_statements(db: str) -> list[str]:
    """Every table's DDL, then each summary's table and view (what a new database needs)."""
    out = [ddl.format(db=db) for ddl in TABLES.values()]
    for name, (_, ddl, _) in SUMMARIES.items():
        out += [ddl.format(db=db), summary_view(db, name)]
    return out


# Columns added after a table was first released: (column, type, the column it follows).
# ensure_schema adds the missing ones to an existing table (CREATE IF NOT EXISTS does not).
UPGRADES: dict[str, tuple[tuple[str, str, str], ...]] = {
    # a table from before on_time keeps its engine: duplicates then collapse without
    # preferring the on-time copy
    "trades": (("on_time", "UInt8 DEFAULT 1", "receive_time_ns"),),
    "top_of_book": (
        ("bid_depth_10bps", f"Nullable({DECIMAL})", "ask_size"),
        ("ask_depth_10bps", f"Nullable({DECIMAL})", "bid_depth_10bps"),
    ),
}

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
        "on_time",
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
        "bid_depth_10bps",
        "ask_depth_10bps",
        "receive_time_ns",
    ),
    "nbbo": (
        "date",
        "instrument",
        "quote",
        "event_time_ms",
        "version",
        "receive_time_ns",
        "bid_price",
        "bid_size",
        "bid_venues",
        "ask_price",
        "ask_size",
        "ask_venues",
        "locked",
        "crossed",
        "venues",
        "venue_versions",
        "excluded",
        "excluded_reasons",
    ),
    "matched_trades": (
        "date",
        "exchange",
        "symbol",
        "instrument",
        "trade_id",
        "trade_time_ms",
        "price",
        "size",
        "taker_side",
        "book_status",
        "book_time_ms",
        "book_version",
        "book_seq",
        "bid_price",
        "bid_size",
        "ask_price",
        "ask_size",
        "mid",
        "spread",
        "touch",
        "levels_consumed",
        "size_consumed",
        "slippage_mid",
        "slippage_mid_bps",
        "nbbo_bid_price",
        "nbbo_bid_size",
        "nbbo_ask_price",
        "nbbo_ask_size",
        "nbbo_venues",
        "slippage_nbbo",
        "trade_through",
        "receive_time_ns",
    ),
    "bars": (
        "date",
        "instrument",
        "venue",
        "interval_ms",
        "window_start_ms",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "notional",
        "vwap",
        "trade_count",
        "buy_volume",
        "sell_volume",
        "live_ms",
        "twa_spread",
        "twa_bid_depth_10bps",
        "twa_ask_depth_10bps",
        "ofi",
    ),
    "late_events": (
        "date",
        "instrument",
        "exchange",
        "symbol",
        "kind",
        "event_id",
        "event_time_ms",
        "watermark_ms",
        "lateness_ms",
        "receive_time_ns",
    ),
    "gaps": (
        "date",
        "exchange",
        "symbol",
        "instrument",
        "start_ms",
        "start_version",
        "end_ms",
        "closed",
        "kind",
        "reason",
        "seq_before",
        "seq_after",
        "messages",
        "dropped",
    ),
}


def utc_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    # fail in the job with the offending value, not later in the driver with an Enum error
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    return value


def nbbo_row(
    *,
    instrument: str,
    quote: str,
    event_time_ms: int,
    version: int,
    receive_time_ns: int,
    bid_price: Decimal | None,
    bid_size: Decimal | None,
    bid_venues: Sequence[str],
    ask_price: Decimal | None,
    ask_size: Decimal | None,
    ask_venues: Sequence[str],
    locked: int,  # 0/1 or bool
    crossed: int,
    venues: Sequence[str],
    venue_versions: Sequence[int],
    excluded: Sequence[str] = (),
    excluded_reasons: Sequence[str] = (),
) -> tuple[Any, ...]:
    """One NBBO change; ``venues`` ("exchange:symbol") and ``venue_versions`` are parallel."""
    if len(venues) != len(venue_versions) or len(excluded) != len(excluded_reasons):
        raise ValueError("venues/venue_versions and excluded/excluded_reasons must be parallel")
    return (
        utc_date(event_time_ms), instrument, quote, event_time_ms, version, receive_time_ns,
        bid_price, bid_size, list(bid_venues), ask_price, ask_size, list(ask_venues),
        int(locked), int(crossed), list(venues), list(venue_versions), list(excluded),
        list(excluded_reasons),
    )


def matched_trade_row(
    *,
    exchange: str,
    symbol: str,
    instrument: str,
    trade_id: str,
    trade_time_ms: int,
    price: Decimal,
    size: Decimal,
    taker_side: str,
    book_status: str,
    book_time_ms: int,
    book_version: int,
    book_seq: int,
    bid_price: Decimal | None,
    bid_size: Decimal | None,
    ask_price: Decimal | None,
    ask_size: Decimal | None,
    mid: Decimal | None,
    spread: Decimal | None,
    touch: str,
    levels_consumed: int,
    size_consumed: Decimal,
    slippage_mid: Decimal | None,
    slippage_mid_bps: float | None,
    nbbo_bid_price: Decimal | None,
    nbbo_bid_size: Decimal | None,
    nbbo_ask_price: Decimal | None,
    nbbo_ask_size: Decimal | None,
    nbbo_venues: Sequence[str],
    slippage_nbbo: Decimal | None,
    trade_through: int,  # 0/1 or bool
    receive_time_ns: int,
) -> tuple[Any, ...]:
    return (
        utc_date(trade_time_ms), exchange, symbol, instrument, trade_id, trade_time_ms, price,
        size, _check("taker_side", taker_side, TAKER_SIDES), book_status, book_time_ms,
        book_version, max(book_seq, 0), bid_price, bid_size, ask_price, ask_size, mid, spread,
        _check("touch", touch, TOUCHES), levels_consumed, size_consumed, slippage_mid,
        slippage_mid_bps, nbbo_bid_price, nbbo_bid_size, nbbo_ask_price, nbbo_ask_size,
        list(nbbo_venues), slippage_nbbo, int(trade_through), receive_time_ns,
    )


def bar_row(
    *,
    instrument: str,
    venue: str,
    interval_ms: int,
    window_start_ms: int,
    open: Decimal | None,
    high: Decimal | None,
    low: Decimal | None,
    close: Decimal | None,
    volume: Decimal,
    notional: Decimal,
    vwap: float | None,
    trade_count: int,
    buy_volume: Decimal,
    sell_volume: Decimal,
    live_ms: int,
    twa_spread: float | None,
    twa_bid_depth_10bps: float | None,
    twa_ask_depth_10bps: float | None,
    ofi: Decimal,
) -> tuple[Any, ...]:
    """One bar; ``venue`` is an exchange or "ALL". See docs/queries.md for the definitions."""
    return (
        utc_date(window_start_ms), instrument, venue, interval_ms, window_start_ms, open, high,
        low, close, volume, notional, vwap, trade_count, buy_volume, sell_volume, live_ms,
        twa_spread, twa_bid_depth_10bps, twa_ask_depth_10bps, ofi,
    )


def late_event_row(
    *,
    instrument: str,
    exchange: str,
    symbol: str,
    kind: str,
    event_id: str,
    event_time_ms: int,
    watermark_ms: int,
    receive_time_ns: int,
    lateness_ms: int | None = None,
) -> tuple[Any, ...]:
    """An event behind the watermark; ``event_id`` is the trade id for kind "trade".

    ``lateness_ms`` defaults to how far the event is behind the watermark.
    """
    if lateness_ms is None:
        lateness_ms = max(watermark_ms - event_time_ms, 0)
    return (
        utc_date(event_time_ms), instrument, exchange, symbol, _check("kind", kind, LATE_KINDS),
        event_id, event_time_ms, watermark_ms, lateness_ms, receive_time_ns,
    )


def gap_row(
    *,
    exchange: str,
    symbol: str,
    instrument: str,
    start_ms: int,
    end_ms: int,
    kind: str,
    reason: str = "",
    start_version: int = 0,
    closed: int = 1,
    seq_before: int | None = None,
    seq_after: int | None = None,
    messages: int = 0,
    dropped: int = 0,
) -> tuple[Any, ...]:
    """An interval in which a book was not in sync (``closed`` 0: still open at ``end_ms``)."""
    return (
        utc_date(start_ms), exchange, symbol, instrument, start_ms, start_version, end_ms,
        int(closed), _check("kind", kind, GAP_KINDS), reason, seq_before, seq_after, messages,
        dropped,
    )


def connect(
    config: ClickHouseConfig, database: str | None = None, timeout_s: float = 60
) -> Client:
    """A client of the primary server that goes on to the replica (HA) when the primary does
    not answer."""
    servers = config.servers()
    alt_hosts = ",".join(f"{s.host}:{s.port}" for s in servers[1:])
    return Client(
        host=config.host,
        port=config.port,
        user=config.user,
        password=config.password,
        secure=config.secure,
        database=database or "default",
        connect_timeout=5,
        send_receive_timeout=timeout_s,
        **({"alt_hosts": alt_hosts} if alt_hosts else {}),
    )


_ENGINE = re.compile(r"ENGINE = ReplacingMergeTree\((?P<version>\w*)\)")


def replicated_ddl(ddl: str, db: str, table: str) -> str:
    """``ddl`` (formatted) with its ReplacingMergeTree replicated through ZooKeeper: the
    table's parts and log under one path per database and table, each server named by its
    ``replica`` macro (stack.clickhouse.replica_name)."""

    def engine(match: re.Match[str]) -> str:
        args = [f"'/clickhouse/tables/{db}/{table}'", "'{replica}'"]
        args += [match["version"]] if match["version"] else []
        return f"ENGINE = ReplicatedReplacingMergeTree({', '.join(args)})"

    return _ENGINE.sub(engine, ddl, count=1)


# 18.16 removes a replicated table's ZooKeeper tree node by node: a drill's database took 60 s
DROP_TIMEOUT_S = 600.0


def drop_database(config: ClickHouseConfig) -> None:
    """Drops the database on every server (a replica left with its tables would hand their
    parts back to a new table at the same ZooKeeper path, and load them before ZooKeeper at
    its next start). Each server is tried whatever the others answer; raises after that if
    any refused."""
    failed: list[str] = []
    for server in config.servers():
        client = connect(server, timeout_s=DROP_TIMEOUT_S)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {config.database}")
        except Exception as error:  # reported with the server below
            failed.append(f"{server.host}:{server.port}: {error}")
        finally:
            client.disconnect()
    if failed:
        raise RuntimeError(f"DROP DATABASE {config.database} failed on " + "; ".join(failed))


def upgrade_statements(db: str, table: str, existing: set[str]) -> list[str]:
    """ALTERs that add the columns of ``UPGRADES[table]`` missing from ``existing``."""
    # no ADD COLUMN IF NOT EXISTS on 18.16: the caller reads system.columns instead
    return [
        f"ALTER TABLE {db}.{table} ADD COLUMN {name} {type_} AFTER {after}"
        for name, type_, after in UPGRADES.get(table, ())
        if name not in existing
    ]


def ensure_schema(config: ClickHouseConfig) -> None:
    """Create the database and tables if they do not exist, add missing columns, and create
    each summary with its view; a summary new to an existing database is filled from the base
    rows already there (idempotent: run it as often as you like).

    HA (a replicated pair): on each server, the replicated tables and the views (a view sees
    only the inserts into its own server); the columns and summary rows once, on the first
    server that answers, since the replicas share them. A server that does not answer is
    skipped while another does: it gets its tables when the job starts again with it up."""
    servers = config.servers()
    done = 0
    for server in servers:
        try:
            _ensure_server_schema(server, shared=not done, replicated=config.replicated)
        except (NetworkError, OSError, EOFError) as error:
            if len(servers) == 1:
                raise
            log.warning("ClickHouse at %s:%d did not answer: %s", server.host, server.port, error)
            continue
        done += 1
    if not done:
        raise NetworkError(f"no ClickHouse server of {len(servers)} answered")


def _ensure_server_schema(config: ClickHouseConfig, shared: bool, replicated: bool) -> None:
    client = connect(config, timeout_s=BACKFILL_TIMEOUT_S)
    db = config.database

    def create(ddl: str, table: str) -> None:
        text = ddl.format(db=db)
        client.execute(replicated_ddl(text, db, table) if replicated else text)

    try:
        client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        for table, ddl in TABLES.items():
            create(ddl, table)
        for table in UPGRADES if shared else ():
            rows = client.execute(
                "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(table)s",
                {"db": db, "table": table},
            )
            for statement in upgrade_statements(db, table, {name for (name,) in rows}):
                client.execute(statement)
        existing = {
            name
            for (name,) in client.execute(
                "SELECT name FROM system.tables WHERE database = %(db)s", {"db": db}
            )
        }
        for name, (_, ddl, _) in SUMMARIES.items():
            create(ddl, name)
            if f"{name}_mv" in existing:
                continue
            # the view first, then the rows already stored: a row inserted in between is in
            # both, which the idempotent states absorb; none is missed
            client.execute(summary_view(db, name))
            if not shared:
                continue
            base = SUMMARIES[name][0]
            try:
                for (day,) in client.execute(f"SELECT DISTINCT date FROM {db}.{base}"):
                    client.execute(summary_backfill(db, name), {"date": day})
            except BaseException:
                # without its view the next run fills the summary again
                client.execute(f"DROP TABLE IF EXISTS {db}.{name}_mv")
                raise
    finally:
        client.disconnect()


class RowBinaryWriter:
    """Inserts rows already encoded as RowBinary (by the compiled batch engine, in
    ``COLUMNS`` order) over ClickHouse's HTTP interface: no per-value work in Python. With a
    replicated pair (HA), an insert the current server cannot be reached for goes to the other,
    which stays current until it fails in turn."""

    def __init__(self, config: ClickHouseConfig, timeout_s: float = 300.0) -> None:
        import http.client

        self.config = config
        self.database = config.database
        connection = http.client.HTTPSConnection if config.secure else http.client.HTTPConnection
        self.connections = [
            connection(server.host, server.http_port, timeout=timeout_s)
            for server in config.servers()
        ]
        self.current = 0
        token = base64.b64encode(f"{config.user}:{config.password}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/octet-stream",
        }

    @property
    def connection(self) -> Any:  # http.client.HTTPConnection
        return self.connections[self.current]

    def insert(self, table: str, data: bytes, rows: int) -> int:
        """``rows`` rows of ``table`` in ``data``; raises with ClickHouse's message if refused,
        and the last connection error if no server could be reached."""
        if not rows:
            return 0
        columns = ", ".join(COLUMNS[table])
        query = f"INSERT INTO {self.database}.{table} ({columns}) FORMAT RowBinary"
        url = "/?" + urlencode({"query": query})
        for attempt in range(len(self.connections)):
            try:
                status, body = self._post_with_retry(url, data)
                break
            except (ConnectionError, OSError):
                if attempt == len(self.connections) - 1:
                    raise
                self.current = (self.current + 1) % len(self.connections)
        if status != 200:
            raise RuntimeError(
                f"ClickHouse refused {rows} {table} rows ({len(data)} bytes, HTTP "
                f"{status}): {body.decode(errors='replace').strip()[:500]}"
            )
        return rows

    def _post_with_retry(self, url: str, data: bytes) -> tuple[int, bytes]:
        try:
            return self._post(url, data)
        except (ConnectionError, OSError):
            # the server closes idle keep-alive connections (after 3 s on 18.16): once more
            # on a new one; rows are idempotent (ReplacingMergeTree), so a repeat is harmless
            self.connection.close()
            return self._post(url, data)

    def _post(self, url: str, data: bytes) -> tuple[int, bytes]:
        self.connection.request("POST", url, body=data, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


def column_types(table: str) -> dict[str, str]:
    """Each column of ``table`` and its ClickHouse type, from its DDL."""
    types = {}
    for line in TABLES[table].splitlines():
        match = _COLUMN.match(line)
        if match:
            types[match["name"]] = match["type"]
    return types


_COLUMN = re.compile(r"^    (?P<name>\w+) (?P<type>.+?),?$")
_ENUM_VALUE = re.compile(r"'([^']*)' = (-?\d+)")
_DECIMAL_SCALE = Decimal(10) ** -18  # Decimal(38, 18)
_FIXED = {"UInt8": "<B", "UInt16": "<H", "UInt32": "<I", "UInt64": "<Q", "Float64": "<d"}


def decode_rows(table: str, data: bytes) -> list[dict[str, Any]]:
    """RowBinary rows of ``table`` (in ``COLUMNS`` order, as the compiled core encodes them)
    back into values: what the job would insert, for the offline driver and tests. Decimals
    come back at the column's scale (18 places)."""
    columns = COLUMNS[table]
    return [dict(zip(columns, row, strict=True)) for row in row_tuples(table, data)]


def row_tuples(table: str, data: bytes) -> list[tuple[Any, ...]]:
    """``decode_rows`` as tuples in ``COLUMNS`` order (as clickhouse-driver returns rows)."""
    read = row_reader(table)
    rows, pos, end = [], 0, len(data)
    while pos < end:
        row, pos = read(data, pos)
        rows.append(row)
    return rows


Reader = Callable[[bytes, int], tuple[Any, int]]


@functools.cache
def row_reader(table: str) -> Reader:
    """One row of ``table`` from a position: (values in ``COLUMNS`` order, the next position).
    Each column's reader is built once from its type, not re-read from the type per value."""
    types = column_types(table)
    readers = [value_reader(types[name]) for name in COLUMNS[table]]

    def read(data: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
        values = []
        for reader in readers:
            value, pos = reader(data, pos)
            values.append(value)
        return tuple(values), pos

    return read


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _read_value(kind: str, data: bytes, pos: int) -> tuple[Any, int]:
    return value_reader(kind)(data, pos)


_EPOCH = date(1970, 1, 1)


@functools.cache
def value_reader(kind: str) -> Reader:
    """The RowBinary reader of one value of a ClickHouse type."""
    if kind in _FIXED:
        unpack = struct.Struct(_FIXED[kind]).unpack_from
        size = struct.calcsize(_FIXED[kind])
        return lambda data, pos: (unpack(data, pos)[0], pos + size)
    if kind == DECIMAL:

        def decimal(data: bytes, pos: int) -> tuple[Any, int]:
            raw = int.from_bytes(data[pos : pos + 16], "little", signed=True)
            return Decimal(raw).scaleb(-18).quantize(_DECIMAL_SCALE), pos + 16

        return decimal
    if kind == "String":

        def string(data: bytes, pos: int) -> tuple[Any, int]:
            size = data[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _read_varint(data, pos)
            return data[pos : pos + size].decode(), pos + size

        return string
    if kind == "Date":
        days = struct.Struct("<H").unpack_from
        return lambda data, pos: (_EPOCH + timedelta(days=days(data, pos)[0]), pos + 2)
    if kind.startswith("Enum8("):
        names = {int(v): n for n, v in _ENUM_VALUE.findall(kind)}
        code = struct.Struct("<b").unpack_from
        return lambda data, pos: (names[code(data, pos)[0]], pos + 1)
    if kind.startswith("Nullable("):
        inner = value_reader(kind[len("Nullable(") : -1])
        return lambda data, pos: (None, pos + 1) if data[pos] else inner(data, pos + 1)
    if kind.startswith("Array("):
        item = value_reader(kind[len("Array(") : -1])

        def array(data: bytes, pos: int) -> tuple[Any, int]:
            size, pos = _read_varint(data, pos)
            items = []
            for _ in range(size):
                value, pos = item(data, pos)
                items.append(value)
            return items, pos

        return array
    raise ValueError(f"no RowBinary reader for {kind}")


_ORDER_BY = re.compile(r"ORDER BY \((?P<columns>[^)]*)\)")
_REPLACING = re.compile(r"ReplacingMergeTree\((?P<version>\w*)\)")


def identity_columns(table: str) -> tuple[str, ...]:
    """The columns of a row's identity: the table's sorting key (``ORDER BY``)."""
    match = _ORDER_BY.search(TABLES[table])
    if match is None:
        raise ValueError(f"no ORDER BY in the DDL of {table}")
    return tuple(c.strip() for c in match["columns"].split(","))


def final_rows(table: str, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What ``SELECT ... FINAL`` shows once ``rows`` (``COLUMNS`` order, in insert order) are
    in ``table``: per identity, the row with the highest version column (the engine's
    parameter, e.g. ``closed`` in ``gaps``), the last inserted among equals."""
    columns = COLUMNS[table]
    key = [columns.index(c) for c in identity_columns(table)]
    match = _REPLACING.search(TABLES[table])
    version = columns.index(match["version"]) if match and match["version"] else None
    kept: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        identity = tuple(_hashable(row[i]) for i in key)
        held = kept.get(identity)
        if held is None or version is None or row[version] >= held[version]:
            kept[identity] = row
    return list(kept.values())


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
