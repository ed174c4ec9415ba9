"""ClickHouse DDL, row helpers, RowBinary decoding and query text, without a server."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pytest

from jobs.sinks.clickhouse import (
    COLUMNS,
    TABLES,
    UPGRADES,
    bar_row,
    column_types,
    decode_rows,
    late_event_row,
    matched_trade_row,
    nbbo_row,
    replicated_ddl,
    upgrade_statements,
    utc_date,
)
from jobs.sinks.queries import (
    BAR_OUTPUT_COLUMNS,
    DAILY_QUERIES,
    final_keeps_key_order,
    recompute_bars_sql,
)

pytestmark = pytest.mark.unit

D = Decimal
LAST_MS_OF_DAY = 1795996799999  # 2026-11-29 23:59:59.999 UTC


def ddl_columns(table: str) -> tuple[str, ...]:
    body = TABLES[table].split("(", 1)[1].split(") ENGINE", 1)[0]
    return tuple(line.split()[0] for line in body.strip().splitlines())


def ddl_clause(table: str, clause: str) -> str:
    match = re.search(rf"^{clause} (.+)$", TABLES[table], re.MULTILINE)
    assert match, (table, clause)
    return match.group(1)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_ddl_columns_are_the_insert_columns(table: str) -> None:
    assert ddl_columns(table) == COLUMNS[table]
    # trades keep the on-time copy of a trade sent twice, gaps the row of a closed interval
    # over that of the same interval still open; the rest any copy (all equal)
    engine = {
        "trades": "ReplacingMergeTree(on_time)",
        "gaps": "ReplacingMergeTree(closed)",
    }.get(table, "ReplacingMergeTree()")
    assert f"ENGINE = {engine}" in TABLES[table]
    assert TABLES[table].lstrip().startswith(f"CREATE TABLE IF NOT EXISTS {{db}}.{table} (")


@pytest.mark.parametrize(
    ("table", "partition", "order"),
    [
        ("nbbo", "date", "(instrument, event_time_ms, version)"),
        ("matched_trades", "(date, exchange)", "(exchange, symbol, trade_time_ms, trade_id)"),
        ("bars", "date", "(instrument, interval_ms, venue, window_start_ms)"),
        ("late_events", "(date, exchange)", "(exchange, symbol, kind, event_time_ms, event_id)"),
        ("top_of_book", "(date, exchange)", "(exchange, symbol, event_time_ms, version)"),
        ("gaps", "(date, exchange)", "(exchange, symbol, start_ms, start_version)"),
    ],
)
def test_partition_and_identity(table: str, partition: str, order: str) -> None:
    assert ddl_clause(table, "PARTITION BY") == partition
    assert ddl_clause(table, "ORDER BY") == order


def test_ddl_avoids_what_18_16_lacks() -> None:
    for ddl in TABLES.values():
        assert not re.search(r"DateTime64|TTL|CODEC|LowCardinality", ddl)


def test_rowbinary_rows_decode_back_into_their_values() -> None:
    """The layout the compiled core writes (little-endian, varint lengths, Decimal(38, 18) as
    a scaled 128-bit integer, Nullable as a flag byte, Enum8 as its code)."""
    assert column_types("late_events")["date"] == "Date"
    taker_side = column_types("trades")["taker_side"]

    def varint_text(text: str) -> bytes:
        return bytes([len(text)]) + text.encode()

    row = (
        (20786).to_bytes(2, "little")  # days since 1970-01-01: 2026-11-29
        + varint_text("BTC-USD") + varint_text("binance") + varint_text("BTCUSDT")
        + varint_text("trade")
        + varint_text("42")
        + (LAST_MS_OF_DAY).to_bytes(8, "little") + (LAST_MS_OF_DAY + 5).to_bytes(8, "little")
        + (5).to_bytes(8, "little") + (7).to_bytes(8, "little")
    )  # fmt: skip
    [decoded] = decode_rows("late_events", row)
    assert decoded == {
        "date": date(2026, 11, 29), "instrument": "BTC-USD", "exchange": "binance",
        "symbol": "BTCUSDT", "kind": "trade", "event_id": "42",
        "event_time_ms": LAST_MS_OF_DAY, "watermark_ms": LAST_MS_OF_DAY + 5, "lateness_ms": 5,
        "receive_time_ns": 7,
    }  # fmt: skip
    price = (-1_250_000_000_000_000_000).to_bytes(16, "little", signed=True)
    assert decode_rows("bars", b"") == []
    from jobs.sinks.clickhouse import _read_value

    assert _read_value("Nullable(Decimal(38, 18))", b"\x00" + price, 0) == (D("-1.25"), 17)
    assert _read_value("Nullable(Float64)", b"\x01", 0) == (None, 1)
    assert _read_value("Array(String)", b"\x02\x01a\x00", 0) == (["a", ""], 4)
    assert _read_value(taker_side, b"\x02", 0) == ("sell", 1)
    with pytest.raises(ValueError, match="no RowBinary reader"):
        _read_value("Int256", b"", 0)


def test_utc_date_at_midnight() -> None:
    assert utc_date(LAST_MS_OF_DAY) == date(2026, 11, 29)
    assert utc_date(LAST_MS_OF_DAY + 1) == date(2026, 11, 30)


NBBO = dict(
    instrument="BTC-USDT", quote="USD", event_time_ms=LAST_MS_OF_DAY + 1, version=3,
    receive_time_ns=5, bid_price=D("100.1"), bid_size=D("2"), bid_venues=("binance:BTCUSDT",),
    ask_price=None, ask_size=None, ask_venues=(), locked=False, crossed=True,
    venues=("binance:BTCUSDT", "kraken:BTC/USD"), venue_versions=(4, 5),
    excluded=("coinbase:BTC-USD",), excluded_reasons=("RESYNCING",),
)  # fmt: skip

MATCHED = dict(
    exchange="binance", symbol="BTCUSDT", instrument="BTC-USDT", trade_id="42",
    trade_time_ms=LAST_MS_OF_DAY, price=D("100.2"), size=D("0.5"), taker_side="buy",
    book_status="LIVE", book_time_ms=LAST_MS_OF_DAY - 3, book_version=9, book_seq=-1,
    bid_price=D("100.1"), bid_size=D("2"), ask_price=D("100.2"), ask_size=D("3"),
    mid=D("100.15"), spread=D("0.1"), touch="at", levels_consumed=1, size_consumed=D("0.5"),
    slippage_mid=D("0.05"), slippage_mid_bps=4.99, nbbo_bid_price=None, nbbo_bid_size=None,
    nbbo_ask_price=D("100.2"), nbbo_ask_size=D("3"), nbbo_venues=["binance:BTCUSDT"],
    slippage_nbbo=D("0"), trade_through=0, receive_time_ns=11,
)  # fmt: skip

BAR = dict(
    instrument="BTC-USDT", venue="ALL", interval_ms=60000, window_start_ms=LAST_MS_OF_DAY - 59999,
    open=None, high=None, low=None, close=None, volume=D("0"), notional=D("0"), vwap=None,
    trade_count=0, buy_volume=D("0"), sell_volume=D("0"), live_ms=0, twa_spread=None,
    twa_bid_depth_10bps=12.5, twa_ask_depth_10bps=None, ofi=D("-1.5"),
)  # fmt: skip

LATE = dict(
    instrument="BTC-USDT", exchange="kraken", symbol="BTC/USD", kind="trade", event_id="77",
    event_time_ms=LAST_MS_OF_DAY, watermark_ms=LAST_MS_OF_DAY + 250, receive_time_ns=1,
)  # fmt: skip


def test_nbbo_row_in_column_order() -> None:
    row = dict(zip(COLUMNS["nbbo"], nbbo_row(**NBBO), strict=True))  # type: ignore[arg-type]
    assert row["date"] == date(2026, 11, 30)
    assert (row["locked"], row["crossed"]) == (0, 1)
    assert row["venues"] == ["binance:BTCUSDT", "kraken:BTC/USD"]
    assert row["venue_versions"] == [4, 5] and row["ask_venues"] == []
    for name in COLUMNS["nbbo"]:
        if name in NBBO and name not in ("locked", "crossed"):
            assert row[name] == (list(v) if isinstance(v := NBBO[name], tuple) else v), name


def test_nbbo_row_needs_parallel_venues() -> None:
    with pytest.raises(ValueError, match="parallel"):
        nbbo_row(**{**NBBO, "venue_versions": (4,)})  # type: ignore[arg-type]


def test_matched_trade_row_in_column_order() -> None:
    row = dict(zip(COLUMNS["matched_trades"], matched_trade_row(**MATCHED), strict=True))  # type: ignore[arg-type]
    assert row["date"] == date(2026, 11, 29)
    assert row["book_seq"] == 0  # no sequence yet: UInt64 column
    for name in COLUMNS["matched_trades"]:
        if name not in ("date", "book_seq"):
            assert row[name] == MATCHED[name], name


@pytest.mark.parametrize(("field", "value"), [("touch", "below"), ("taker_side", "BUY")])
def test_matched_trade_row_rejects_unknown_enum_values(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        matched_trade_row(**{**MATCHED, field: value})  # type: ignore[arg-type]


def test_bar_row_in_column_order() -> None:
    row = dict(zip(COLUMNS["bars"], bar_row(**BAR), strict=True))  # type: ignore[arg-type]
    assert row["date"] == date(2026, 11, 29)
    assert {k: v for k, v in row.items() if k != "date"} == BAR
    assert COLUMNS["bars"][1:] == BAR_OUTPUT_COLUMNS


def test_late_event_row() -> None:
    row = dict(zip(COLUMNS["late_events"], late_event_row(**LATE), strict=True))  # type: ignore[arg-type]
    assert row["lateness_ms"] == 250 and row["date"] == date(2026, 11, 29)
    explicit = late_event_row(**LATE, lateness_ms=7)  # type: ignore[arg-type]
    assert explicit[COLUMNS["late_events"].index("lateness_ms")] == 7
    with pytest.raises(ValueError, match="kind"):
        late_event_row(**{**LATE, "kind": "quote"})  # type: ignore[arg-type]


def test_upgrade_statements_add_only_missing_columns() -> None:
    old = set(COLUMNS["top_of_book"]) - {"bid_depth_10bps", "ask_depth_10bps"}
    assert upgrade_statements("tf", "top_of_book", old) == [
        "ALTER TABLE tf.top_of_book ADD COLUMN bid_depth_10bps Nullable(Decimal(38, 18))"
        " AFTER ask_size",
        "ALTER TABLE tf.top_of_book ADD COLUMN ask_depth_10bps Nullable(Decimal(38, 18))"
        " AFTER bid_depth_10bps",
    ]
    assert upgrade_statements("tf", "top_of_book", set(COLUMNS["top_of_book"])) == []
    assert upgrade_statements("tf", "trades", set(COLUMNS["trades"]) - {"on_time"}) == [
        "ALTER TABLE tf.trades ADD COLUMN on_time UInt8 DEFAULT 1 AFTER receive_time_ns"
    ]
    assert upgrade_statements("tf", "book_snapshots", set()) == []
    for table, columns in UPGRADES.items():
        assert all(name in COLUMNS[table] for name, _, _ in columns)


def all_queries() -> dict[str, tuple[str, tuple[str, ...]]]:
    queries = {name: (build("tf"), names) for name, (build, names) in DAILY_QUERIES.items()}
    for interval in (1000, 60000):
        queries[f"recompute_{interval}"] = (
            recompute_bars_sql(interval, "tf"),
            ("instrument", "from_ms", "to_ms"),
        )
    return queries


@pytest.mark.parametrize("name", sorted(all_queries()))
def test_queries_read_with_final_and_declare_their_params(name: str) -> None:
    sql, names = all_queries()[name]
    assert set(re.findall(r"%\((\w+)\)s", sql)) == set(names)
    sql % {n: 1 for n in names}  # no stray % in the text
    tables = re.findall(r"\btf\.(\w+)(\s+FINAL)?", sql)
    assert tables and all(final for _, final in tables), tables


def test_database_names_are_identifiers() -> None:
    with pytest.raises(ValueError, match="database"):
        DAILY_QUERIES["bars"][0]("tf; DROP TABLE x")
    with pytest.raises(ValueError, match="database"):
        recompute_bars_sql(1000, "a.b")
    with pytest.raises(ValueError, match="interval"):
        recompute_bars_sql(0)


def test_final_keeps_key_order_by_version() -> None:
    assert final_keeps_key_order("18.16.1")
    assert not final_keeps_key_order("19.1.6")
    assert not final_keeps_key_order("25.8.1.1")
    assert not final_keeps_key_order("")


def test_replicated_ddl_keeps_the_version_and_names_a_path_per_table() -> None:
    trades = replicated_ddl(TABLES["trades"].format(db="tf"), "tf", "trades")
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/tf/trades', '{replica}', "
        "on_time)" in trades
    )
    nbbo = replicated_ddl(TABLES["nbbo"].format(db="tf"), "tf", "nbbo")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/tf/nbbo', '{replica}')" in nbbo
    # the rest of the DDL as it was
    assert trades.replace("Replicated", "").replace(
        "'/clickhouse/tables/tf/trades', '{replica}', ", ""
    ) == TABLES["trades"].format(db="tf")
