"""The analytics tables and queries on the local ClickHouse 18.16 and on a current release
(chdb, embedded): every DDL and documented query runs, ensure_schema upgrades an old
top_of_book, and the SQL recomputation of the bars equals a pure-Python reference of the same
definitions (docs/queries.md) on a hand-made dataset.

Uses a private database ``h2test_<random>`` on the running server (dropped afterwards) and
starts only ClickHouse, and only when it does not answer.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import date
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

import pytest
from clickhouse_driver import Client
from clickhouse_driver.util.escape import escape_params

from jobs.sinks.clickhouse import (
    COLUMNS,
    SUMMARIES,
    TABLES,
    UPGRADES,
    bar_row,
    connect,
    ensure_schema,
    gap_row,
    late_event_row,
    matched_trade_row,
    nbbo_row,
    schema_statements,
    summary_backfill,
    summary_view,
    upgrade_statements,
    utc_date,
)
from jobs.sinks.queries import (
    ALL_VENUES,
    BAR_OUTPUT_COLUMNS,
    DAILY_QUERIES,
    books_of_day_sql,
    completeness_sql,
    final_keeps_key_order,
    gaps_sql,
    matched_trades_detail_sql,
    matched_trades_sql,
    nbbo_history_sql,
    nbbo_summary_sql,
    recompute_bars_sql,
    trade_through_counts_sql,
)
from stack import manager
from tickflow.config import ClickHouseConfig, Settings, load_settings

pytestmark = pytest.mark.integration

D = Decimal
ZERO = D(0)  # immutable: safe as a dataclass default
T0 = 1795996800000  # 2026-11-30 00:00:00 UTC
INSTRUMENT = "BTC-USDT"
FROM_MS = T0 + 10_500  # not on a window boundary: the 1 s windows start at T0 + 11 s
TO_MS = T0 + 130_700


# ------------------------------------------------------------------------ the dataset


def trade(
    exchange: str, trade_id: str, offset_ms: int, price: str, size: str, side: str,
    instrument: str = INSTRUMENT, on_time: int = 1,
) -> tuple[Any, ...]:  # fmt: skip
    symbol = SYMBOLS[exchange]
    ms = T0 + offset_ms
    return (utc_date(ms), exchange, symbol, instrument, trade_id, D(price), D(size), side, ms,
            ms, ms * 1_000_000, on_time)  # fmt: skip


def tob(
    exchange: str, offset_ms: int, version: int, status: str,
    bid: tuple[str, str] | None, ask: tuple[str, str] | None,
    depth: tuple[str | None, str | None] = (None, None),
) -> tuple[Any, ...]:  # fmt: skip
    ms = T0 + offset_ms
    bid_ = (D(bid[0]), D(bid[1])) if bid else (None, None)
    ask_ = (D(ask[0]), D(ask[1])) if ask else (None, None)
    depth_ = tuple(None if d is None else D(d) for d in depth)
    return (utc_date(ms), exchange, SYMBOLS[exchange], INSTRUMENT, ms, version, version, status,
            *bid_, *ask_, *depth_, ms * 1_000_000)  # fmt: skip


SYMBOLS = {"binance": "BTCUSDT", "kraken": "BTC/USDT"}

TRADES = [
    trade("binance", "98", 10_600, "100.3", "1", "buy"),  # window starts before FROM_MS
    trade("binance", "100", 11_000, "100.5", "0.1", "buy"),
    trade("binance", "99", 11_000, "100.4", "0.2", "sell"),  # same ms, lower id: binance open
    trade("kraken", "5", 11_000, "100.45", "0.3", "buy"),  # same ms, later exchange
    trade("binance", "101", 11_500, "100.7", "1.5", "buy"),
    trade("binance", "102", 11_999, "100.6", "0.00000001", "sell"),
    trade("kraken", "6", 11_999, "100.65", "2", "sell"),  # ALL close: kraken after binance
    trade("binance", "103", 12_000, "200", "5", "buy", on_time=0),  # late: excluded
    trade("binance", "104", 15_250, "65000.123456789", "123.45678901", "buy"),  # big product
    trade("kraken", "x2", 20_000, "100.9", "1", "buy"),  # non-numeric ids: by id text
    trade("kraken", "x1", 20_000, "100.8", "1", "sell"),
    trade("binance", "200", 61_000, "101", "0.5", "sell"),
    trade("binance", "201", 129_999, "102", "0.25", "buy"),
    trade("binance", "202", 130_000, "103", "1", "buy"),  # window ends after TO_MS
    trade("binance", "7", 11_200, "999", "9", "buy", instrument="ETH-USDT"),  # other instrument
]

LATE = [
    late_event_row(instrument=INSTRUMENT, exchange="binance", symbol="BTCUSDT", kind="trade",
                   event_id="103", event_time_ms=T0 + 12_000, watermark_ms=T0 + 12_500,
                   receive_time_ns=(T0 + 12_600) * 1_000_000),
    # same id on another exchange, and a late book event: neither excludes a trade
    late_event_row(instrument=INSTRUMENT, exchange="binance", symbol="BTCUSDT", kind="trade",
                   event_id="5", event_time_ms=T0 + 9_000, watermark_ms=T0 + 9_500,
                   receive_time_ns=(T0 + 9_600) * 1_000_000),
    late_event_row(instrument=INSTRUMENT, exchange="kraken", symbol="BTC/USDT", kind="book",
                   event_id="6", event_time_ms=T0 + 11_999, watermark_ms=T0 + 12_500,
                   receive_time_ns=(T0 + 12_600) * 1_000_000),
]  # fmt: skip

TOP_OF_BOOK = [
    tob("binance", 5_000, 1, "LIVE", ("100.0", "1"), ("100.2", "2"), ("10", "12")),
    # last binance row before the first window: its segment carries into it
    tob("binance", 9_000, 2, "LIVE", ("100.1", "1.5"), ("100.2", "1"), ("11", "12")),
    tob("binance", 11_300, 3, "LIVE", ("100.1", "2"), ("100.3", "1"), ("11", "13")),
    tob("binance", 11_300, 4, "LIVE", ("100.2", "1"), ("100.3", "3"), ("9", "14")),  # same ms
    tob("binance", 11_800, 5, "STALE", ("100.2", "1"), ("100.3", "3"), ("9", "14")),  # ignored
    tob("binance", 12_400, 6, "RESYNCING", None, None),  # gap until the next LIVE row
    tob("binance", 14_700, 7, "LIVE", ("100.3", "1"), ("100.4", "1")),  # no depth: counts 0
    tob("binance", 18_250, 8, "LIVE", ("100.2", "2"), ("100.3", "4"), ("5", "6")),  # long
    tob("binance", 135_000, 9, "LIVE", ("100.1", "2"), ("100.3", "4"), ("5", "6")),  # after
    tob("binance", 140_000, 10, "LIVE", ("100.0", "2"), ("100.3", "4"), ("5", "6")),
    tob("kraken", 2_000, 1, "LIVE", ("100.05", "3"), ("100.25", "1"), ("7", "8")),
    tob("kraken", 12_050, 2, "LIVE", ("100.05", "2.5"), ("100.15", "1"), ("7.5", "8.25")),
    tob("kraken", 12_050, 3, "LIVE", ("100.05", "2.5"), None, ("7.5", None)),  # one side
    tob("kraken", 13_000, 4, "LIVE", ("100.1", "1"), ("100.2", "1"), ("1.5", "0.5")),
    tob("kraken", 61_500, 5, "LIVE", ("100.1", "1"), ("100.15", "1"), ("1.5", "0.5")),
    tob("kraken", 61_700, 6, "LIVE", ("100.12", "0.5"), ("100.15", "2"), ("2", "1")),  # last
]

# a replay after a restore writes rows again: FINAL must show them once
# inserted after the rest: at-least-once replays, and a trade the exchange sent again after the
# watermark passed it (its on-time copy must win)
RESENT_LATE = trade("binance", "100", 11_000, "100.5", "0.1", "buy", on_time=0)
DUPLICATES = {"trades": [*TRADES[1:4], RESENT_LATE], "top_of_book": TOP_OF_BOOK[2:4]}


# ------------------------------------------------- the reference, straight from the docs


def dicts(table: str, rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS[table], row, strict=True)) for row in rows]


@dataclasses.dataclass
class Acc:
    trades: list[tuple[tuple[int, str, int, str], Decimal]] = dataclasses.field(
        default_factory=list
    )
    volume: Decimal = ZERO
    notional: Decimal = ZERO
    buy: Decimal = ZERO
    sell: Decimal = ZERO
    live_ms: int = 0
    spread_ms: Decimal = ZERO
    bid_depth_ms: Decimal = ZERO
    ask_depth_ms: Decimal = ZERO
    ofi: Decimal = ZERO
    ofi_terms: int = 0


def reference_bars(
    trades: list[dict[str, Any]],
    late: list[dict[str, Any]],
    books: list[dict[str, Any]],
    instrument: str,
    interval: int,
    from_ms: int,
    to_ms: int,
) -> dict[tuple[str, int], dict[str, Any]]:
    lo = -(-from_ms // interval) * interval
    hi = to_ms // interval * interval
    accs: dict[tuple[str, int], Acc] = defaultdict(Acc)
    for t in trades:
        ms = t["trade_time_ms"]
        if t["instrument"] != instrument or not lo <= ms < hi:
            continue
        if not t["on_time"]:  # arrived behind the watermark: in no bar
            continue
        tid = t["trade_id"]
        key = (ms, t["exchange"], int(tid) if tid.isdigit() else 0, tid)
        for venue in (t["exchange"], ALL_VENUES):
            acc = accs[(venue, ms // interval * interval)]
            acc.trades.append((key, t["price"]))
            acc.volume += t["size"]
            acc.notional += (t["price"] * t["size"]).quantize(D("1e-18"), ROUND_DOWN)
            if t["taker_side"] == "buy":
                acc.buy += t["size"]
            else:
                acc.sell += t["size"]

    per_book: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in books:
        if row["instrument"] == instrument and row["status"] != "STALE":
            per_book[(row["exchange"], row["symbol"])].append(row)
    for (exchange, _), rows in per_book.items():
        rows.sort(key=lambda r: (r["event_time_ms"], r["version"]))
        ok = [
            r["status"] == "LIVE" and r["bid_price"] is not None and r["ask_price"] is not None
            for r in rows
        ]
        for k, row in enumerate(rows):
            t = row["event_time_ms"]
            if k + 1 < len(rows) and ok[k]:
                start, end = max(t, lo), min(rows[k + 1]["event_time_ms"], hi)
                w = start // interval * interval
                while w < end:
                    overlap = min(end, w + interval) - max(start, w)
                    if overlap > 0:
                        acc = accs[(exchange, w)]
                        acc.live_ms += overlap
                        acc.spread_ms += overlap * (row["ask_price"] - row["bid_price"])
                        acc.bid_depth_ms += overlap * (row["bid_depth_10bps"] or 0)
                        acc.ask_depth_ms += overlap * (row["ask_depth_10bps"] or 0)
                    w += interval
            if k >= 1 and ok[k] and ok[k - 1] and lo <= t < hi:
                p = rows[k - 1]
                e = D(0)
                if row["bid_price"] >= p["bid_price"]:
                    e += row["bid_size"]
                if row["bid_price"] <= p["bid_price"]:
                    e -= p["bid_size"]
                if row["ask_price"] <= p["ask_price"]:
                    e -= row["ask_size"]
                if row["ask_price"] >= p["ask_price"]:
                    e += p["ask_size"]
                acc = accs[(exchange, t // interval * interval)]
                acc.ofi += e
                acc.ofi_terms += 1

    def bar(venue: str, w: int, acc: Acc) -> dict[str, Any]:
        ordered = sorted(acc.trades)
        live = acc.live_ms
        return {
            "instrument": instrument,
            "venue": venue,
            "interval_ms": interval,
            "window_start_ms": w,
            "open": ordered[0][1] if ordered else None,
            "high": max(p for _, p in ordered) if ordered else None,
            "low": min(p for _, p in ordered) if ordered else None,
            "close": ordered[-1][1] if ordered else None,
            "volume": acc.volume,
            "notional": acc.notional,
            "vwap": float(acc.notional) / float(acc.volume) if acc.volume else None,
            "trade_count": len(ordered),
            "buy_volume": acc.buy,
            "sell_volume": acc.sell,
            "live_ms": live,
            "twa_spread": float(acc.spread_ms) / live if live else None,
            "twa_bid_depth_10bps": float(acc.bid_depth_ms) / live if live else None,
            "twa_ask_depth_10bps": float(acc.ask_depth_ms) / live if live else None,
            "ofi": acc.ofi,
        }

    out: dict[tuple[str, int], dict[str, Any]] = {}
    for (venue, w), acc in accs.items():
        if venue != ALL_VENUES and (acc.trades or acc.live_ms or acc.ofi_terms):
            out[(venue, w)] = bar(venue, w, acc)
    for w in sorted({w for (_, w) in out}):
        exchanges = [b for (v, ww), b in out.items() if ww == w]
        total = bar(ALL_VENUES, w, accs.get((ALL_VENUES, w), Acc()))
        for side in ("twa_bid_depth_10bps", "twa_ask_depth_10bps"):
            values = [b[side] for b in exchanges if b[side] is not None]
            total[side] = sum(values) if values else None
        total["ofi"] = sum((b["ofi"] for b in exchanges), D(0))
        out[(ALL_VENUES, w)] = total
    return out


# ----------------------------------------------------------------- the two servers


class Server(Protocol):
    name: str
    db: str

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(
        self, table: str, rows: Sequence[tuple[Any, ...]], db: str | None = None
    ) -> None: ...


class Native:
    """The local 18.16 server through clickhouse-driver (rows passed as parameters)."""

    name = "clickhouse-18.16"

    def __init__(self, client: Client, db: str) -> None:
        self.client, self.db = client, db

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows, types = self.client.execute(sql, params or {}, with_column_types=True)
        return [dict(zip([n for n, _ in types], row, strict=True)) for row in rows]

    def insert(
        self, table: str, rows: Sequence[tuple[Any, ...]], db: str | None = None
    ) -> None:
        columns = ", ".join(COLUMNS[table])
        self.client.execute(f"INSERT INTO {db or self.db}.{table} ({columns}) VALUES", list(rows))


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, Decimal):
        return format(value, "f")  # never exponent notation: parsed exactly as a Decimal
    if isinstance(value, str | date):
        return str(escape_params({"v": value}, None)["v"])
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _parse(value: str, type_: str) -> Any:
    if type_.startswith("Nullable("):
        return None if value == "\\N" else _parse(value, type_[9:-1])
    if type_.startswith("Decimal"):
        return D(value)
    if type_.startswith(("UInt", "Int")):
        return int(value)
    if type_.startswith("Float"):
        return float(value)
    if type_ == "Date":
        return date.fromisoformat(value)
    if type_.startswith("Array("):
        # ['a','b'] / [1,2]: Python literal syntax for the String and integer arrays used here
        return list(ast.literal_eval(value))
    return value.encode().decode("unicode_escape") if "\\" in value else value


class Embedded:
    """A current ClickHouse release in process (chdb), with the same parameter substitution
    clickhouse-driver does on the client side."""

    name = "chdb"

    def __init__(self, session: Any, db: str) -> None:
        self.session, self.db = session, db

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if params:
            sql = sql % escape_params(params, None)
        text = self.session.query(sql, "TSVWithNamesAndTypes").bytes().decode()
        lines = text.splitlines()
        if not lines:
            return []
        names, types = lines[0].split("\t"), lines[1].split("\t")
        return [
            {n: _parse(v, t) for n, t, v in zip(names, types, line.split("\t"), strict=True)}
            for line in lines[2:]
        ]

    def insert(
        self, table: str, rows: Sequence[tuple[Any, ...]], db: str | None = None
    ) -> None:
        values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        columns = ", ".join(COLUMNS[table])
        self.session.query(f"INSERT INTO {db or self.db}.{table} ({columns}) VALUES {values}")


@pytest.fixture(scope="module")
def clickhouse_config() -> Iterator[ClickHouseConfig]:
    """Host and port from the settings; ClickHouse alone is started if it does not answer."""
    settings: Settings = load_settings()
    started: list[str] = []
    component = manager.components(settings, ["clickhouse"])[0]
    try:
        answers = component.answers()
    except Exception:
        answers = False
    if not answers:
        started = manager.up(settings, ["clickhouse"])
    try:
        yield settings.clickhouse
    finally:
        if started:
            manager.down(settings, started)


def _private_db() -> str:
    return f"h2test_{uuid.uuid4().hex[:12]}"


def _create_tables(server: Server, db: str) -> None:
    server.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    for statement in schema_statements(db):  # the summaries and their views too
        server.execute(statement)


def _create(server: Server, db: str) -> None:
    _create_tables(server, db)
    for table, rows in [("trades", TRADES), ("top_of_book", TOP_OF_BOOK), ("late_events", LATE)]:
        server.insert(table, rows)
    for table, rows in DUPLICATES.items():
        server.insert(table, rows)


@pytest.fixture(scope="module")
def native(clickhouse_config: ClickHouseConfig) -> Iterator[Native]:
    db = _private_db()
    client = connect(clickhouse_config)
    server = Native(client, db)
    try:
        _create(server, db)
        yield server
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


@pytest.fixture(scope="module")
def embedded() -> Iterator[Embedded]:
    chdb_session = pytest.importorskip("chdb.session")
    session = chdb_session.Session()  # temporary data directory, removed on cleanup
    db = _private_db()
    server = Embedded(session, db)
    try:
        _create(server, db)
        yield server
    finally:
        session.query(f"DROP DATABASE IF EXISTS {db}")
        session.cleanup()


@pytest.fixture(params=["native", "embedded"])
def server(request: pytest.FixtureRequest) -> Server:
    value: Server = request.getfixturevalue(request.param)
    return value


# ----------------------------------------------------------------------------- tests


EXAMPLE_PARAMS: dict[str, Any] = {
    "instrument": INSTRUMENT,
    "venue": ALL_VENUES,
    "interval_ms": 1000,
    "date": utc_date(T0),
    "from_ms": FROM_MS,
    "to_ms": TO_MS,
    "from_date": utc_date(T0),
    "to_date": utc_date(T0),
    "exchange": "binance",
    "symbol": "BTCUSDT",
}
EXAMPLE_PARAMS_BY_QUERY: dict[str, dict[str, Any]] = {  # a whole number of windows
    "nbbo_summary": {"interval_ms": 60000, "from_ms": T0, "to_ms": T0 + 120_000},
}


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        # the same sums in a different order / rounding path: equal to ~1e-15 relative
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("interval", [1000, 60000])
def test_recomputed_bars_equal_the_reference(server: Server, interval: int) -> None:
    params = {"instrument": INSTRUMENT, "from_ms": FROM_MS, "to_ms": TO_MS}
    rows = server.execute(recompute_bars_sql(interval, server.db), params)
    assert rows and all(tuple(row) == BAR_OUTPUT_COLUMNS for row in rows)
    got = {(r["venue"], r["window_start_ms"]): r for r in rows}
    assert len(got) == len(rows)
    assert [(r["venue"], r["window_start_ms"]) for r in rows] == sorted(got)

    expected = reference_bars(
        dicts("trades", TRADES), dicts("late_events", LATE), dicts("top_of_book", TOP_OF_BOOK),
        INSTRUMENT, interval, FROM_MS, TO_MS,
    )  # fmt: skip
    assert sorted(got) == sorted(expected)
    mismatches = [
        (key, column, got[key][column], expected[key][column])
        for key in expected
        for column in BAR_OUTPUT_COLUMNS
        if not _close(got[key][column], expected[key][column])
    ]
    assert not mismatches


def test_the_dataset_covers_the_cases() -> None:
    """Guards the reference test against a dataset that stopped exercising what it should."""
    bars = reference_bars(
        dicts("trades", TRADES), dicts("late_events", LATE), dicts("top_of_book", TOP_OF_BOOK),
        INSTRUMENT, 1000, FROM_MS, TO_MS,
    )  # fmt: skip
    first, last = T0 + 11_000, T0 + 129_000
    assert min(w for _, w in bars) == first and max(w for _, w in bars) == last
    assert bars[("binance", first)]["open"] == D("100.4")  # same ms: lower trade id first
    assert bars[(ALL_VENUES, first)]["close"] == D("100.65")  # same ms: later exchange last
    assert bars[("kraken", T0 + 20_000)]["open"] == D("100.8")  # "x1" before "x2"
    assert bars[("binance", T0 + 12_000)]["trade_count"] == 0  # the late trade is left out
    assert bars[("binance", first)]["live_ms"] == 1000  # carried in, zero-length, then on
    assert bars[("binance", T0 + 12_000)]["live_ms"] == 400  # RESYNCING from 12.4 s
    assert ("binance", T0 + 13_000) not in bars  # nothing at all during the gap
    assert bars[("binance", T0 + 14_000)]["live_ms"] == 300
    assert bars[("binance", first)]["ofi"] != 0  # two terms at the same ms
    assert bars[("kraken", T0 + 12_000)]["live_ms"] == 50 + 0  # one-sided book from 12.05 s
    assert bars[("kraken", T0 + 61_000)]["live_ms"] == 700  # the last row has no segment
    assert ("kraken", T0 + 62_000) not in bars
    assert bars[("binance", last)]["live_ms"] == 1000  # closed by the row after TO_MS
    assert bars[(ALL_VENUES, T0 + 40_000)]["twa_bid_depth_10bps"] == 5.0 + 1.5


def test_recomputation_ignores_windows_outside_the_range(server: Server) -> None:
    sql = recompute_bars_sql(60000, server.db)
    # shorter than one whole window
    params = {"instrument": INSTRUMENT, "from_ms": T0 + 60_001, "to_ms": T0 + 119_999}
    assert server.execute(sql, params) == []
    assert server.execute(sql, {**params, "instrument": "SOL-USDT"}) == []


def test_daily_queries_run(server: Server) -> None:
    db = server.db
    for name, (build, names) in DAILY_QUERIES.items():
        params = {**EXAMPLE_PARAMS, **EXAMPLE_PARAMS_BY_QUERY.get(name, {})}
        rows = server.execute(build(db), {n: params[n] for n in names})
        assert isinstance(rows, list), name
    bars_of_day = server.execute(DAILY_QUERIES["bars"][0](db), {
        n: EXAMPLE_PARAMS[n] for n in DAILY_QUERIES["bars"][1]})  # fmt: skip
    assert bars_of_day == []  # nothing written to bars in this dataset
    late = server.execute(
        DAILY_QUERIES["late_event_counts"][0](db),
        {"from_date": utc_date(T0), "to_date": utc_date(T0)},
    )
    assert [(r["exchange"], r["kind"], r["events"]) for r in late] == [
        ("binance", "trade", 2),
        ("kraken", "book", 1),
    ]


SAMPLE_ROWS = {
    "top_of_book": TOP_OF_BOOK[1],
    "nbbo": nbbo_row(
        instrument=INSTRUMENT, quote="USD", event_time_ms=T0, version=3, receive_time_ns=5,
        bid_price=D("100.000000000000000001"), bid_size=D("2"), bid_venues=["binance:BTCUSDT"],
        ask_price=None, ask_size=None, ask_venues=[], locked=False, crossed=True,
        venues=["binance:BTCUSDT", "kraken:BTC/USDT"], venue_versions=[2**63 + 1, 5],
        excluded=["coinbase:BTC-USD"], excluded_reasons=["RESYNCING"],
    ),
    "matched_trades": matched_trade_row(
        exchange="binance", symbol="BTCUSDT", instrument=INSTRUMENT, trade_id="42",
        trade_time_ms=T0, price=D("100.2"), size=D("0.5"), taker_side="sell",
        book_status="LIVE", book_time_ms=T0 - 3, book_version=9, book_seq=12,
        bid_price=D("100.1"), bid_size=D("2"), ask_price=D("100.2"), ask_size=D("3"),
        mid=D("100.15"), spread=D("0.1"), touch="through", levels_consumed=2,
        size_consumed=D("0.5"), slippage_mid=D("0.05"), slippage_mid_bps=4.992511233150275,
        nbbo_bid_price=None, nbbo_bid_size=None, nbbo_ask_price=D("100.2"),
        nbbo_ask_size=D("3"), nbbo_venues=["binance:BTCUSDT"], slippage_nbbo=D("0"),
        trade_through=True, receive_time_ns=11,
    ),
    "bars": bar_row(
        instrument=INSTRUMENT, venue="ALL", interval_ms=60000, window_start_ms=T0, open=D("1"),
        high=D("2"), low=D("0.5"), close=D("1.5"), volume=D("3"), notional=D("4.5"),
        vwap=1.5, trade_count=3, buy_volume=D("1"), sell_volume=D("2"), live_ms=0,
        twa_spread=None, twa_bid_depth_10bps=12.5, twa_ask_depth_10bps=None,
        ofi=D("-1.000000000000000001"),
    ),
    "late_events": LATE[0],
    "gaps": gap_row(
        exchange="binance", symbol="BTCUSDT", instrument=INSTRUMENT, start_ms=T0 + 5,
        end_ms=T0 + 900, kind="gap", reason="gap: expected 102, got 105", start_version=7,
        seq_before=101, seq_after=None, messages=3, dropped=1,
    ),
}  # fmt: skip


def test_rows_of_every_table_round_trip(server: Server) -> None:
    """The row helpers' tuples insert as they are and read back equal (through FINAL)."""
    db = _private_db()
    try:
        _create_tables(server, db)
        for table, row in SAMPLE_ROWS.items():
            server.insert(table, [row, row], db)
            columns = ", ".join(COLUMNS[table])
            got = server.execute(f"SELECT {columns} FROM {db}.{table} FINAL")
            assert [tuple(r.values()) for r in got] == [row], table
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")


def _old_top_of_book(db: str) -> str:
    ddl = TABLES["top_of_book"].format(db=db)
    for name, _, _ in UPGRADES["top_of_book"]:
        ddl = "\n".join(line for line in ddl.splitlines() if not line.strip().startswith(name))
    return ddl


def test_ensure_schema_adds_the_depth_columns(clickhouse_config: ClickHouseConfig) -> None:
    db = _private_db()
    config = dataclasses.replace(clickhouse_config, database=db)
    client = connect(clickhouse_config)
    try:
        client.execute(f"CREATE DATABASE {db}")
        client.execute(_old_top_of_book(db))
        old_row = (utc_date(T0), "binance", "BTCUSDT", INSTRUMENT, T0, 1, 1, "LIVE",
                   D("1"), D("2"), D("3"), D("4"), T0 * 1_000_000)  # fmt: skip
        old_columns = [c for c in COLUMNS["top_of_book"] if "depth" not in c]
        client.execute(f"INSERT INTO {db}.top_of_book ({', '.join(old_columns)}) VALUES",
                       [old_row])  # fmt: skip
        ensure_schema(config)
        ensure_schema(config)  # idempotent
        columns = client.execute(
            "SELECT name FROM system.columns WHERE database = %(db)s AND table = 'top_of_book'",
            {"db": db},
        )
        assert tuple(name for (name,) in columns) == COLUMNS["top_of_book"]
        tables = {name for (name,) in client.execute(f"SHOW TABLES FROM {db}")}
        assert tables == set(TABLES) | set(SUMMARIES) | {f"{n}_mv" for n in SUMMARIES}
        got = client.execute(f"SELECT bid_depth_10bps, ask_depth_10bps FROM {db}.top_of_book")
        assert got == [(None, None)]  # old rows read the new columns as NULL
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


def test_upgrade_statements_run_on_a_current_release() -> None:
    chdb_session = pytest.importorskip("chdb.session")
    session = chdb_session.Session()
    db = _private_db()
    try:
        session.query(f"CREATE DATABASE {db}")
        session.query(_old_top_of_book(db))
        for statement in upgrade_statements(db, "top_of_book", set()):
            session.query(statement)
        text = session.query(
            f"SELECT name FROM system.columns WHERE database = '{db}' AND table = 'top_of_book'"
            " ORDER BY position", "CSV",
        ).bytes().decode()  # fmt: skip
        assert tuple(line.strip('"') for line in text.split()) == COLUMNS["top_of_book"]
    finally:
        session.query(f"DROP DATABASE IF EXISTS {db}")
        session.cleanup()



# ------------------------------------------------------------------------ gaps, completeness

DAY = 86_400_000


def _gap(symbol: str, start: int, end: int, kind: str, closed: int = 1) -> tuple[Any, ...]:
    return gap_row(
        exchange="binance", symbol=symbol, instrument=INSTRUMENT, start_ms=start, end_ms=end,
        kind=kind, start_version=start, closed=closed, seq_before=1,
        seq_after=2 if closed else None,
    )  # fmt: skip


# each closed interval also as its open row (written when it opened), and twice (a replay)
GAPS = [
    _gap("BTCUSDT", T0 - 60_000, T0 - 60_000, "sync_lost", closed=0),
    _gap("BTCUSDT", T0 - 60_000, T0 + 30_000, "sync_lost"),  # from the day before: 30 s
    _gap("BTCUSDT", T0 + 3_600_000, T0 + 3_600_000, "gap", closed=0),
    _gap("BTCUSDT", T0 + 3_600_000, T0 + 4_200_000, "gap"),  # 600 s
    _gap("BTCUSDT", T0 + 7_200_000, T0 + 7_210_000, "checksum"),  # 10 s
    _gap("BTCUSDT", T0 + DAY - 5_000, T0 + DAY + 5_000, "sync_lost"),  # 5 s of it today
    _gap("ETHUSDT", T0 + DAY - 20_000, T0 + DAY - 20_000, "gap", closed=0),  # still open
    _gap("ETHUSDT", T0 + 2 * DAY, T0 + 2 * DAY + 1, "gap"),  # another day
]


def test_completeness_of_a_day(server: Server) -> None:
    db = _private_db()
    try:
        _create_tables(server, db)
        server.insert("gaps", GAPS + GAPS, db)
        params = {
            "date": utc_date(T0), "day_start_ms": T0, "day_end_ms": T0 + DAY,
            "open_until_ms": T0 + DAY, "exchange": "", "symbol": "",
        }  # fmt: skip
        rows = server.execute(completeness_sql(db), params)
        got = {
            (r["symbol"], r["kind"]): (r["gaps"], r["out_of_sync_ms"], r["still_open"])
            for r in rows
        }
        assert got == {
            ("BTCUSDT", "checksum"): (1, 10_000, 0),
            ("BTCUSDT", "gap"): (1, 600_000, 0),
            ("BTCUSDT", "sync_lost"): (2, 35_000, 0),
            ("ETHUSDT", "gap"): (1, 20_000, 1),
        }
        # an open interval counts until now on the day itself
        today = server.execute(completeness_sql(db), {
            **params, "open_until_ms": T0 + DAY - 15_000, "symbol": "ETHUSDT"})  # fmt: skip
        assert [(r["symbol"], r["out_of_sync_ms"]) for r in today] == [("ETHUSDT", 5_000)]
        intervals = server.execute(gaps_sql(db), {**params, "symbol": "BTCUSDT"})
        assert [(r["start_ms"] - T0, r["closed"]) for r in intervals] == [
            (-60_000, 1), (3_600_000, 1), (7_200_000, 1), (DAY - 5_000, 1)]  # fmt: skip
        # the day after: the rest of the interval across midnight and the open one
        after = server.execute(completeness_sql(db), {
            **params, "date": utc_date(T0 + DAY), "day_start_ms": T0 + DAY,
            "day_end_ms": T0 + 2 * DAY, "open_until_ms": T0 + 2 * DAY})  # fmt: skip
        assert {(r["symbol"], r["kind"]): r["out_of_sync_ms"] for r in after} == {
            ("BTCUSDT", "sync_lost"): 5_000, ("ETHUSDT", "gap"): DAY}  # fmt: skip
        assert server.execute(books_of_day_sql(db), params) == []  # no top-of-book rows
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")


# ------------------------------------------------- summaries kept by materialized views

SUMMARY_INSTRUMENTS = ("BTC-USDT", "ETH-USDT")
SUMMARY_BOOKS = (("binance", "BTCUSDT", "BTC-USDT"), ("kraken", "BTC/USDT", "BTC-USDT"),
                 ("binance", "ETHUSDT", "ETH-USDT"))  # fmt: skip


def _price(rng: random.Random, low: int) -> Decimal:
    return D(rng.randrange(low * 100, low * 100 + 300)) / 100


def generated_nbbo(seed: int = 7) -> list[tuple[Any, ...]]:
    """NBBO changes of two instruments over 12 s (and two just after midnight): several per
    second, some at the same ms, sides missing, locked and crossed ones."""
    rng = random.Random(seed)
    rows = []
    for instrument in SUMMARY_INSTRUMENTS:
        times = sorted(T0 + rng.randrange(0, 12_000) for _ in range(240))
        times += [T0 + DAY + 5, T0 + DAY + 5]  # the next day, the same ms twice
        for version, ms in enumerate(times, start=1):
            bid = None if rng.random() < 0.1 else _price(rng, 100)
            ask = None if rng.random() < 0.1 else _price(rng, 102)
            rows.append(nbbo_row(
                instrument=instrument, quote="USDT", event_time_ms=ms, version=version,
                receive_time_ns=ms * 1_000_000 + 7, bid_price=bid,
                bid_size=None if bid is None else D(rng.randrange(1, 10**8)) / 10**8,
                bid_venues=[] if bid is None else rng.choice([["binance:X"], ["kraken:Y"]]),
                ask_price=ask,
                ask_size=None if ask is None else D(rng.randrange(1, 10**8)) / 10**8,
                ask_venues=[] if ask is None else ["binance:X", "kraken:Y"][: rng.randint(1, 2)],
                locked=rng.random() < 0.05, crossed=rng.random() < 0.05,
                venues=["binance:X", "kraken:Y"], venue_versions=[version, version + 1],
            ))  # fmt: skip
    return rows


def generated_matched_trades(seed: int = 8) -> list[tuple[Any, ...]]:
    """Matched trades of three books over two hours (and a few the next day), some trading
    through, the same trade id on two books at the same ms."""
    rng = random.Random(seed)
    rows = []
    for exchange, symbol, instrument in SUMMARY_BOOKS:
        times = sorted(T0 + 3_000_000 + rng.randrange(0, 1_200_000) for _ in range(150))
        times += [T0 + DAY + 1_000] * 3
        for k, ms in enumerate(times):
            price = _price(rng, 100)
            rows.append(matched_trade_row(
                exchange=exchange, symbol=symbol, instrument=instrument, trade_id=str(1000 + k),
                trade_time_ms=ms, price=price, size=D("0.5"), taker_side="buy",
                book_status="LIVE", book_time_ms=ms - 1, book_version=k, book_seq=k,
                bid_price=price, bid_size=D(1), ask_price=price + 1, ask_size=D(1), mid=price,
                spread=D(1), touch="at", levels_consumed=1, size_consumed=D("0.5"),
                slippage_mid=D(0), slippage_mid_bps=0.0, nbbo_bid_price=price,
                nbbo_bid_size=D(1), nbbo_ask_price=price + 1, nbbo_ask_size=D(1),
                nbbo_venues=[f"{exchange}:{symbol}"], slippage_nbbo=D(0),
                trade_through=rng.random() < 0.2, receive_time_ns=ms * 1_000_000,
            ))  # fmt: skip
    return rows


SUMMARY_NBBO = generated_nbbo()
SUMMARY_TRADES = generated_matched_trades()


def _insert_replayed(server: Server, table: str, rows: list[tuple[Any, ...]], db: str) -> None:
    """Every row in blocks of 100, then a replay of a stretch of them in other blocks."""
    for lo in range(0, len(rows), 100):
        server.insert(table, rows[lo : lo + 100], db)
    replay = rows[70:330]
    server.insert(table, replay[:33], db)
    server.insert(table, list(reversed(replay[33:])), db)


def reference_nbbo_summary(
    rows: list[tuple[Any, ...]], instrument: str, interval: int, from_ms: int, to_ms: int
) -> list[dict[str, Any]]:
    """docs/queries.md's definition of ``nbbo_summary_sql`` over the distinct rows."""
    windows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in dicts("nbbo", rows):
        w = r["event_time_ms"] // interval * interval
        if r["instrument"] == instrument and from_ms <= w < to_ms:
            windows[w].append(r)

    out = []
    for w, changes in sorted(windows.items()):
        last = max(changes, key=lambda r: (r["event_time_ms"], r["version"]))
        out.append({
            "window_start_ms": w,
            **{k: last[k] for k in ("event_time_ms", "version", "bid_price", "bid_size",
                                    "bid_venues", "ask_price", "ask_size", "ask_venues",
                                    "locked", "crossed")},
        })  # fmt: skip
    return out


def reference_trade_throughs(
    rows: list[tuple[Any, ...]], instrument: str
) -> list[tuple[date, str, int, int]]:
    counts: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in {row[:6]: row for row in rows}.values():  # one per identity
        t = dict(zip(COLUMNS["matched_trades"], r, strict=True))
        if t["instrument"] == instrument:
            counts[(t["date"], t["exchange"])][0] += 1
            counts[(t["date"], t["exchange"])][1] += t["trade_through"]
    return [(d, e, n, tt) for (d, e), (n, tt) in sorted(counts.items())]


def _check_summaries(server: Server, db: str) -> None:
    """Each summary query equals its definition over the distinct base rows and what the
    base table gives with FINAL."""
    for instrument in SUMMARY_INSTRUMENTS:
        for interval, lo, hi in [(1000, T0, T0 + 2 * DAY), (5000, T0, T0 + 2 * DAY),
                                 (1000, T0 + 3000, T0 + 9000), (60000, T0, T0 + DAY)]:
            params = {"instrument": instrument, "interval_ms": interval, "from_ms": lo,
                      "to_ms": hi}  # fmt: skip
            got = server.execute(nbbo_summary_sql(db), params)
            expected = reference_nbbo_summary(SUMMARY_NBBO, instrument, interval, lo, hi)
            assert got == expected, (instrument, interval, lo)
        # the last row of each second from the full history: the same state
        history = server.execute(nbbo_history_sql(db), {
            "instrument": instrument, "from_ms": T0, "to_ms": T0 + DAY})  # fmt: skip
        last = {r["event_time_ms"] // 1000: r for r in history}
        summary = server.execute(nbbo_summary_sql(db), {
            "instrument": instrument, "interval_ms": 1000, "from_ms": T0,
            "to_ms": T0 + DAY})  # fmt: skip
        assert [(r["event_time_ms"], r["version"], r["bid_price"], r["ask_size"])
                for r in summary] == [(r["event_time_ms"], r["version"], r["bid_price"],
                                       r["ask_size"]) for _, r in sorted(last.items())]  # fmt: skip

        params = {"instrument": instrument, "from_date": utc_date(T0),
                  "to_date": utc_date(T0 + DAY)}  # fmt: skip
        got_tt = server.execute(trade_through_counts_sql(db), params)
        expected_tt = reference_trade_throughs(SUMMARY_TRADES, instrument)
        assert [(r["date"], r["exchange"], r["trades"], r["trade_throughs"]) for r in got_tt] \
            == expected_tt  # fmt: skip
        assert all(r["trade_through_share"] == r["trade_throughs"] / r["trades"] for r in got_tt)
        final = server.execute(
            f"SELECT date, exchange, count() AS n, sum(trade_through) AS tt FROM "
            f"{db}.matched_trades FINAL WHERE instrument = %(instrument)s "
            "GROUP BY date, exchange ORDER BY date, exchange", {"instrument": instrument})
        assert [(r["date"], r["exchange"], r["n"], r["tt"]) for r in final] == expected_tt


def test_summaries_equal_the_base_rows_after_replays(server: Server) -> None:
    """The views fill the summaries as the base rows arrive; a replay (the same rows again,
    in other blocks) changes no answer."""
    db = _private_db()
    try:
        _create_tables(server, db)
        _insert_replayed(server, "nbbo", SUMMARY_NBBO, db)
        _insert_replayed(server, "matched_trades", SUMMARY_TRADES, db)
        _check_summaries(server, db)
        # a whole second replay, then the parts merged: still the same
        server.insert("nbbo", SUMMARY_NBBO, db)
        server.insert("matched_trades", SUMMARY_TRADES[::-1], db)
        _check_summaries(server, db)
        for name in SUMMARIES:
            server.execute(f"OPTIMIZE TABLE {db}.{name} FINAL")
        _check_summaries(server, db)
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")


def test_summary_backfill_of_an_existing_database(server: Server) -> None:
    """A database from before the summaries: its base rows fill them (what ensure_schema
    runs), on both releases; filling twice, or beside the view, changes nothing."""
    db = _private_db()
    try:
        server.execute(f"CREATE DATABASE {db}")
        for ddl in TABLES.values():
            server.execute(ddl.format(db=db))
        _insert_replayed(server, "nbbo", SUMMARY_NBBO, db)
        _insert_replayed(server, "matched_trades", SUMMARY_TRADES, db)
        for name, (_, ddl, _) in SUMMARIES.items():
            server.execute(ddl.format(db=db))
            server.execute(summary_view(db, name))
            for _ in range(2):
                for day in (utc_date(T0), utc_date(T0 + DAY)):
                    server.execute(summary_backfill(db, name), {"date": day})
        _check_summaries(server, db)
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")


def test_ensure_schema_fills_new_summaries(clickhouse_config: ClickHouseConfig) -> None:
    db = _private_db()
    config = dataclasses.replace(clickhouse_config, database=db)
    client = connect(clickhouse_config)
    server = Native(client, db)
    try:
        client.execute(f"CREATE DATABASE {db}")
        for ddl in TABLES.values():
            client.execute(ddl.format(db=db))
        _insert_replayed(server, "nbbo", SUMMARY_NBBO, db)
        _insert_replayed(server, "matched_trades", SUMMARY_TRADES, db)
        ensure_schema(config)
        _check_summaries(server, db)
        ensure_schema(config)  # the views exist: nothing filled again
        server.insert("nbbo", SUMMARY_NBBO[:50], db)  # the view sees a replay
        _check_summaries(server, db)
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


def test_matched_trades_day_and_detail(server: Server) -> None:
    db = _private_db()
    try:
        _create_tables(server, db)
        _insert_replayed(server, "matched_trades", SUMMARY_TRADES, db)
        day = server.execute(matched_trades_sql(db), {
            "exchange": "binance", "symbol": "BTCUSDT", "date": utc_date(T0)})  # fmt: skip
        detail = server.execute(matched_trades_detail_sql(db), {
            "exchange": "binance", "symbol": "BTCUSDT", "from_ms": T0,
            "to_ms": T0 + DAY})  # fmt: skip
        assert len(day) == len(detail) == 150
        assert [{k: r[k] for k in day[0]} for r in detail] == day
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")


def generated_bars(seed: int = 9) -> list[tuple[Any, ...]]:
    """1 s bars of an instrument on two venues, every second of ten minutes."""
    rng = random.Random(seed)
    rows = []
    for venue in ("binance", ALL_VENUES):
        for k in range(600):
            price = _price(rng, 100)
            rows.append(bar_row(
                instrument=INSTRUMENT, venue=venue, interval_ms=1000,
                window_start_ms=T0 + k * 1000, open=price, high=price + 1, low=price - 1,
                close=price, volume=D(k), notional=price * k, vwap=float(price),
                trade_count=k, buy_volume=D(k), sell_volume=ZERO, live_ms=1000,
                twa_spread=0.5, twa_bid_depth_10bps=1.0, twa_ask_depth_10bps=2.0, ofi=D(k % 7),
            ))  # fmt: skip
    rng.shuffle(rows)
    return rows


def test_queries_without_the_order_by_that_final_already_gives(server: Server) -> None:
    """Where the server's FINAL returns the sorting key's order (18.x), the day queries leave
    out their ORDER BY: over parts written in shuffled blocks, replays and two partitions,
    every one returns exactly the rows, in the order, that it does with the ORDER BY."""
    version = str(server.execute("SELECT version() AS v")[0]["v"])
    assert final_keeps_key_order(version) == version.startswith("18."), version
    if not final_keeps_key_order(version):
        pytest.skip(f"ClickHouse {version} merges FINAL out of order: the ORDER BY stays")
    db = _private_db()
    try:
        _create_tables(server, db)
        _insert_replayed(server, "nbbo", SUMMARY_NBBO, db)
        _insert_replayed(server, "matched_trades", SUMMARY_TRADES, db)
        _insert_replayed(server, "bars", generated_bars(), db)
        two_days = {"from_ms": T0, "to_ms": T0 + 2 * DAY}
        cases = [
            ("bars", {"instrument": INSTRUMENT, "venue": ALL_VENUES, "interval_ms": 1000,
                      "date": utc_date(T0)}),
            ("nbbo_history", {"instrument": SUMMARY_INSTRUMENTS[0], **two_days}),
            ("matched_trades", {"exchange": "binance", "symbol": "BTCUSDT",
                                "date": utc_date(T0)}),
            ("matched_trades_detail", {"exchange": "binance", "symbol": "BTCUSDT", **two_days}),
        ]  # fmt: skip
        for name, params in cases:
            build = DAILY_QUERIES[name][0]
            ordered = server.execute(build(db), params)
            assert len(ordered) > 100, name
            for threads in (1, 2, 8):
                sql = build(db, key_ordered_final=True) + f" SETTINGS max_threads = {threads}"
                assert server.execute(sql, params) == ordered, (name, threads)
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")
