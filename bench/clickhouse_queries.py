"""ClickHouse benchmark: the documented 1-day queries on one simulated day at realistic volume.

    python -m bench.clickhouse_queries [--instruments 20] [--scale 1.0] [--runs 5]
                                       [--client-runs 2] [--keep] [--database DB] [--api]

Data: one UTC day (``DAY``) in a unique database created by the project's own DDL
(``ensure_schema`` with the bench database in a ``ClickHouseConfig``: the tables, the
summaries and their materialized views). ``--instruments`` instruments (the first,
``BTC-USD``, is the one queried) on three exchanges; per day, at ``--scale`` 1:

- queried instrument: 500,000 trades (binance 60%, coinbase 30%, kraken 10%), as many matched
  trades, 1,500,000 NBBO changes (what BTC-USD sees across venues on an active day);
- each other instrument: a tenth of that (50,000 trades, 150,000 NBBO changes);
- bars for every instrument, 1 s and 1 min windows, for each exchange and ALL, the whole day
  (a LIVE book yields a bar per window even without trades: 351,360 rows per instrument);
- late events: 0.1% of the trades, and as many late book events.

``--scale`` below 1 (tiny test runs) scales every volume, bars to that fraction of the day.

``top_of_book`` and ``book_snapshots`` are left empty: no documented query reads them. Columns
are generated with numpy from one random-walk mid price per instrument, inserted with
clickhouse-driver in columnar batches of ``LOAD_BATCH_ROWS`` (rows as parameters; the views
fill the summaries as they go), then the views' SELECT alone is timed over the day's rows
(``view_select_s``: what they add to the inserts), and each table is merged (``OPTIMIZE ...
FINAL``: a settled day, one part per partition).

Queries: every entry of ``jobs.sinks.queries.DAILY_QUERIES`` for that day (``queries``: the
1-day ones, and the hourly NBBO history and matched-trade detail; the whole day of NBBO
changes for comparison), each timed four ways:

- cold: after ``SYSTEM DROP MARK CACHE`` and ``SYSTEM DROP UNCOMPRESSED CACHE`` (the OS page
  cache is not dropped: shared machine), over HTTP with ``FORMAT Null`` (server work without
  the transfer), median of ``--runs``;
- warm: the same right after an untimed run, median of ``--runs``;
- client: ``clickhouse-driver`` ``execute`` with the rows decoded into Python (decimals
  included), and ClickHouse's ``JSONCompact`` over HTTP parsed with orjson, warm, median of
  ``--client-runs``: what a researcher's script waits for.

With ``--api``, each query's endpoint of the query API as well, in JSON, Arrow and Parquet
(``bench.clickhouse_queries_api``): bench/results/clickhouse_queries_api.json.

The server's own ``query_duration_ms``, rows and bytes read come from ``system.query_log``
(``log_queries=1`` on these queries only). The database is dropped at the end unless
``--keep``; ``--database`` reuses one kept before (no load). Results:
bench/results/clickhouse_queries.json.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from bench.stats import machine, median, target_entry, write_results
from jobs.sinks.clickhouse import COLUMNS, SUMMARIES, connect, ensure_schema, summary_backfill
from jobs.sinks.queries import ALL_VENUES, DAILY_QUERIES, final_keeps_key_order
from tickflow.config import ClickHouseConfig, load_settings

NAME = "clickhouse_queries"
DAY = date(2026, 11, 30)
T0_MS = 1_795_996_800_000  # DAY 00:00 UTC
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SEED = 11

QUERIED = "BTC-USD"
OTHER_BASES = (
    "ETH", "SOL", "XRP", "ADA", "DOGE", "LTC", "DOT", "LINK", "AVAX", "BCH",
    "ATOM", "UNI", "XLM", "ETC", "FIL", "NEAR", "APT", "ARB", "OP", "AAVE",
)
EXCHANGES = ("binance", "coinbase", "kraken")
EXCHANGE_SHARE = (0.6, 0.3, 0.1)  # of an instrument's trades
QUERIED_TRADES_PER_DAY = 500_000
QUERIED_NBBO_PER_DAY = 1_500_000
OTHER_INSTRUMENT_FACTOR = 0.1  # the other instruments' volume relative to the queried one
LATE_SHARE = 0.001  # of the trades arrive late (and as many book events)
TRADE_THROUGH_SHARE = 0.02
BAR_INTERVALS_MS = (1_000, 60_000)
QUERIED_BASE_PRICE = 67_000.0
MID_VOL_PER_SQRT_S = 2e-4  # random-walk volatility of the mid (relative, per sqrt second)
HALF_SPREAD_BPS = 0.5
RECEIVE_LAG_MS = 40  # exchange time -> our receive time
LOAD_BATCH_ROWS = 100_000  # rows per INSERT
HTTP_TIMEOUT_S = 600
RETRIES = 5  # the shared stack may be briefly down (failure tests): rerun a timing this often
RETRY_WAIT_S = 5.0
TARGET_MS = 100.0

T = TypeVar("T")


# -- the queries --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Query:
    name: str  # our label
    documented: str  # its DAILY_QUERIES entry
    params: dict[str, Any]
    one_day: bool  # a 1-day query (the target's); False: the documented 1-hour example


def queries(exchange_symbol: str) -> list[Query]:
    day_params = {"from_date": DAY, "to_date": DAY}
    day = {"from_ms": T0_MS, "to_ms": T0_MS + DAY_MS}
    hour = {"from_ms": T0_MS + 12 * HOUR_MS, "to_ms": T0_MS + 13 * HOUR_MS}
    book = {"exchange": EXCHANGES[0], "symbol": exchange_symbol}
    out = [
        Query("bars_1s_day", "bars",
              {"instrument": QUERIED, "venue": ALL_VENUES, "interval_ms": 1000, "date": DAY}, True),
        Query("bars_1m_day", "bars",
              {"instrument": QUERIED, "venue": ALL_VENUES, "interval_ms": 60000, "date": DAY},
              True),
        Query("nbbo_summary_1s_day", "nbbo_summary",
              {"instrument": QUERIED, "interval_ms": 1000, **day}, True),
        Query("nbbo_summary_1m_day", "nbbo_summary",
              {"instrument": QUERIED, "interval_ms": 60000, **day}, True),
        Query("nbbo_history_hour", "nbbo_history", {"instrument": QUERIED, **hour}, False),
        # every change of the day: for comparison, not a documented 1-day query
        Query("nbbo_history_full_day", "nbbo_history", {"instrument": QUERIED, **day}, False),
        Query("trade_through_counts_day", "trade_through_counts",
              {"instrument": QUERIED, **day_params}, True),
        Query("late_event_counts_day", "late_event_counts", day_params, True),
        Query("matched_trades_day", "matched_trades", {**book, "date": DAY}, True),
        Query("matched_trades_detail_hour", "matched_trades_detail", {**book, **hour}, False),
    ]
    for q in out:  # the parameters each documented query takes, no more, no less
        if set(q.params) != set(DAILY_QUERIES[q.documented][1]):
            raise RuntimeError(f"{q.name}: parameters {sorted(q.params)} do not match "
                               f"{DAILY_QUERIES[q.documented][1]}")
    return out


# -- the data -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instrument:
    name: str
    base_price: float
    trades: int  # per day, all exchanges
    nbbo: int  # per day
    bar_fraction: float = 1.0  # of the day's windows with bars (< 1 only for tiny test runs)

    def symbol(self, exchange: str) -> str:
        base, quote = self.name.split("-")
        return {"binance": f"{base}{quote}", "coinbase": self.name, "kraken": f"{base}/{quote}"}[
            exchange
        ]


def instruments(count: int, scale: float) -> list[Instrument]:
    if not 1 <= count <= 1 + len(OTHER_BASES):
        raise ValueError(f"instruments must be 1..{1 + len(OTHER_BASES)}")
    bar_fraction = min(1.0, scale)
    out = [Instrument(QUERIED, QUERIED_BASE_PRICE, round(QUERIED_TRADES_PER_DAY * scale),
                      round(QUERIED_NBBO_PER_DAY * scale), bar_fraction)]
    for i, base in enumerate(OTHER_BASES[: count - 1]):
        out.append(
            Instrument(
                f"{base}-USD",
                round(QUERIED_BASE_PRICE / (10 + 7 * i), 2),
                round(QUERIED_TRADES_PER_DAY * scale * OTHER_INSTRUMENT_FACTOR),
                round(QUERIED_NBBO_PER_DAY * scale * OTHER_INSTRUMENT_FACTOR),
                bar_fraction,
            )
        )
    return out


def mid_path(rng: np.random.Generator, base_price: float) -> np.ndarray:
    """The instrument's mid price for each second of the day (a geometric random walk)."""
    steps = rng.normal(0.0, MID_VOL_PER_SQRT_S, DAY_MS // 1000)
    return np.asarray(base_price * np.exp(np.cumsum(steps)))


def cents(x: np.ndarray) -> list[float]:
    """Prices on a 0.01 tick as Python floats (the driver reads them via ``str``: exact)."""
    return list(np.round(x, 2).tolist())


def sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Trade/quote sizes with 8 decimals, mostly small, a few large."""
    return np.asarray(np.round(rng.lognormal(-3.0, 1.5, n), 8) + 1e-8)


def sorted_times(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.sort(rng.integers(T0_MS, T0_MS + DAY_MS, n, dtype=np.int64))


Columns = dict[str, list[Any]]


def trade_columns(rng: np.random.Generator, inst: Instrument, mid: np.ndarray) -> Iterator[
    tuple[Columns, Columns]
]:
    """Per exchange: the ``trades`` columns and the ``matched_trades`` columns of the same
    trades."""
    for exchange, share in zip(EXCHANGES, EXCHANGE_SHARE, strict=True):
        n = round(inst.trades * share)
        if n == 0:
            continue
        symbol = inst.symbol(exchange)
        t = sorted_times(rng, n)
        m = mid[(t - T0_MS) // 1000]
        half = m * HALF_SPREAD_BPS / 1e4
        buy = rng.random(n) < 0.5
        price = np.where(buy, m + half, m - half) + np.round(rng.normal(0, 0.3, n), 2) * half
        size = sizes(rng, n)
        ids = (np.arange(n) + 1_000_000_000).astype(str).tolist()
        side = np.where(buy, "buy", "sell").tolist()
        recv = ((t + RECEIVE_LAG_MS) * 1_000_000).tolist()
        tl = t.tolist()
        trades: Columns = {
            "date": [DAY] * n, "exchange": [exchange] * n, "symbol": [symbol] * n,
            "instrument": [inst.name] * n, "trade_id": ids, "price": cents(price),
            "size": size.tolist(), "taker_side": side, "trade_time_ms": tl,
            "event_time_ms": tl, "receive_time_ns": recv, "on_time": [1] * n,
        }
        bid, ask = cents(m - half), cents(m + half)
        bid_size, ask_size = sizes(rng, n).tolist(), sizes(rng, n).tolist()
        mids = cents(m)
        spread = cents(2 * half)
        slip = np.round(price - m, 2)
        touch = rng.choice(np.array(["at", "inside", "through", "none"]), n,
                           p=[0.85, 0.05, 0.08, 0.02]).tolist()
        through = (rng.random(n) < TRADE_THROUGH_SHARE).astype(int).tolist()
        venues = [[exchange], [EXCHANGES[0], exchange], list(EXCHANGES)]
        nbbo_venues = [venues[k] for k in rng.integers(0, len(venues), n)]
        matched: Columns = {
            "date": [DAY] * n, "exchange": [exchange] * n, "symbol": [symbol] * n,
            "instrument": [inst.name] * n, "trade_id": ids, "trade_time_ms": tl,
            "price": trades["price"], "size": trades["size"], "taker_side": side,
            "book_status": ["LIVE"] * n, "book_time_ms": (t - 3).tolist(),
            "book_version": (np.arange(n) * 3 + 7).tolist(),
            "book_seq": (np.arange(n) * 3).tolist(),
            "bid_price": bid, "bid_size": bid_size, "ask_price": ask, "ask_size": ask_size,
            "mid": mids, "spread": spread, "touch": touch,
            "levels_consumed": rng.integers(1, 4, n).tolist(), "size_consumed": trades["size"],
            "slippage_mid": slip.tolist(),
            "slippage_mid_bps": np.round(slip / m * 1e4, 4).tolist(),
            "nbbo_bid_price": bid, "nbbo_bid_size": bid_size, "nbbo_ask_price": ask,
            "nbbo_ask_size": ask_size, "nbbo_venues": nbbo_venues,
            "slippage_nbbo": slip.tolist(), "trade_through": through, "receive_time_ns": recv,
        }
        yield trades, matched


def nbbo_columns(rng: np.random.Generator, inst: Instrument, mid: np.ndarray) -> Columns:
    n = inst.nbbo
    t = sorted_times(rng, n)
    m = mid[(t - T0_MS) // 1000]
    half = m * HALF_SPREAD_BPS / 1e4
    tops = [[e] for e in EXCHANGES] + [[EXCHANGES[0], EXCHANGES[1]]]
    venues = [inst.symbol(e) for e in EXCHANGES]
    venues = [f"{e}:{s}" for e, s in zip(EXCHANGES, venues, strict=True)]
    base_versions = rng.integers(1, 1000, 3)
    return {
        "date": [DAY] * n, "instrument": [inst.name] * n, "quote": ["USD"] * n,
        "event_time_ms": t.tolist(), "version": (np.arange(n) + 1).tolist(),
        "receive_time_ns": ((t + RECEIVE_LAG_MS) * 1_000_000).tolist(),
        "bid_price": cents(m - half), "bid_size": sizes(rng, n).tolist(),
        "bid_venues": [tops[k] for k in rng.integers(0, len(tops), n)],
        "ask_price": cents(m + half), "ask_size": sizes(rng, n).tolist(),
        "ask_venues": [tops[k] for k in rng.integers(0, len(tops), n)],
        "locked": [0] * n, "crossed": [0] * n, "venues": [venues] * n,
        "venue_versions": [[int(v) + i // 3 for v in base_versions] for i in range(n)],
        "excluded": [[]] * n, "excluded_reasons": [[]] * n,
    }


def bar_columns(rng: np.random.Generator, inst: Instrument, mid: np.ndarray) -> Iterator[Columns]:
    """Bars of every window of the day for each interval and venue (exchanges and ALL)."""
    for interval in BAR_INTERVALS_MS:
        windows = max(1, round(DAY_MS // interval * inst.bar_fraction))
        starts = T0_MS + np.arange(windows, dtype=np.int64) * interval
        per_s = max(1, interval // 1000)
        m = mid[::per_s][:windows]
        for venue, share in (*zip(EXCHANGES, EXCHANGE_SHARE, strict=True), (ALL_VENUES, 1.0)):
            rate = inst.trades * share / (DAY_MS / interval)
            count = rng.poisson(rate, windows)
            traded = count > 0
            vol = np.round(count * 0.05 * rng.lognormal(0, 0.5, windows), 8)
            spread = m * 2 * HALF_SPREAD_BPS / 1e4
            o, c = m * (1 + rng.normal(0, 1e-5, windows)), m * (1 + rng.normal(0, 1e-5, windows))
            hi = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 1e-5, windows)))
            lo = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 1e-5, windows)))
            buy = np.round(vol * rng.random(windows), 8)

            def nullable(x: np.ndarray, traded: np.ndarray = traded) -> list[Any]:
                return [v if t else None for v, t in zip(cents(x), traded.tolist(), strict=True)]

            vwap = np.round((o + c) / 2, 4)
            yield {
                "date": [DAY] * windows, "instrument": [inst.name] * windows,
                "venue": [venue] * windows, "interval_ms": [interval] * windows,
                "window_start_ms": starts.tolist(), "open": nullable(o), "high": nullable(hi),
                "low": nullable(lo), "close": nullable(c), "volume": vol.tolist(),
                "notional": np.round(vol * m, 8).tolist(),
                "vwap": [v if t else None for v, t in zip(vwap.tolist(), traded.tolist(),
                                                          strict=True)],
                "trade_count": count.tolist(), "buy_volume": buy.tolist(),
                "sell_volume": np.round(vol - buy, 8).tolist(), "live_ms": [interval] * windows,
                "twa_spread": np.round(spread, 6).tolist(),
                "twa_bid_depth_10bps": np.round(rng.lognormal(1, 0.5, windows), 6).tolist(),
                "twa_ask_depth_10bps": np.round(rng.lognormal(1, 0.5, windows), 6).tolist(),
                "ofi": np.round(rng.normal(0, 1, windows), 8).tolist(),
            }


def late_columns(rng: np.random.Generator, inst: Instrument) -> Columns:
    n_trade = max(1, round(inst.trades * LATE_SHARE))
    rows: Columns = {c: [] for c in COLUMNS["late_events"]}
    for kind, n in (("trade", n_trade), ("book", n_trade)):
        t = sorted_times(rng, n)
        lateness = rng.integers(1, 20_000, n)
        ex = rng.integers(0, len(EXCHANGES), n).tolist()
        rows["date"] += [DAY] * n
        rows["instrument"] += [inst.name] * n
        rows["exchange"] += [EXCHANGES[k] for k in ex]
        rows["symbol"] += [inst.symbol(EXCHANGES[k]) for k in ex]
        rows["kind"] += [kind] * n
        rows["event_id"] += [f"{kind}-{i}" for i in range(n)]
        rows["event_time_ms"] += t.tolist()
        rows["watermark_ms"] += (t + lateness).tolist()
        rows["lateness_ms"] += lateness.tolist()
        rows["receive_time_ns"] += ((t + lateness + 5000) * 1_000_000).tolist()
    return rows


class Loader:
    """Columnar inserts in batches of ``LOAD_BATCH_ROWS``; counts rows and seconds per table."""

    def __init__(self, client: Client, db: str) -> None:
        self.client = client
        self.db = db
        self.rows: dict[str, int] = {}
        self.insert_s: dict[str, float] = {}

    def insert(self, table: str, columns: Columns) -> None:
        names = COLUMNS[table]
        if set(columns) != set(names):
            raise ValueError(f"{table}: columns {sorted(set(columns) ^ set(names))} differ")
        n = len(columns[names[0]])
        sql = f"INSERT INTO {self.db}.{table} ({', '.join(names)}) VALUES"
        started = time.perf_counter()
        for lo in range(0, n, LOAD_BATCH_ROWS):
            batch = [columns[c][lo : lo + LOAD_BATCH_ROWS] for c in names]
            self.client.execute(sql, batch, columnar=True)
        self.insert_s[table] = self.insert_s.get(table, 0.0) + time.perf_counter() - started
        self.rows[table] = self.rows.get(table, 0) + n


def load_day(client: Client, db: str, insts: list[Instrument]) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    loader = Loader(client, db)
    started = time.perf_counter()
    for inst in insts:
        mid = mid_path(rng, inst.base_price)
        for trades, matched in trade_columns(rng, inst, mid):
            loader.insert("trades", trades)
            loader.insert("matched_trades", matched)
        loader.insert("nbbo", nbbo_columns(rng, inst, mid))
        for bars in bar_columns(rng, inst, mid):
            loader.insert("bars", bars)
        loader.insert("late_events", late_columns(rng, inst))
        print(f"  {inst.name}: loaded ({sum(loader.rows.values()):,} rows so far, "
              f"{time.perf_counter() - started:.0f} s)", flush=True)
    load_s = time.perf_counter() - started
    # what the views add to the inserts above: their SELECT over the same day of base rows,
    # inserted again (harmless: FINAL collapses the rows into the same answer)
    view_s: dict[str, float] = {}
    for name in SUMMARIES:
        t0 = time.perf_counter()
        client.execute(summary_backfill(db, name), {"date": DAY})
        view_s[name] = round(time.perf_counter() - t0, 1)
    optimize_s: dict[str, float] = {}
    for table in [*loader.rows, *SUMMARIES]:
        t0 = time.perf_counter()
        client.execute(f"OPTIMIZE TABLE {db}.{table} FINAL")
        optimize_s[table] = round(time.perf_counter() - t0, 1)
    parts = client.execute(
        "SELECT table, count(), sum(rows), sum(bytes_on_disk) FROM system.parts "
        "WHERE database = %(db)s AND active GROUP BY table ORDER BY table",
        {"db": db},
    )
    return {
        "rows": loader.rows,
        "insert_s": {k: round(v, 1) for k, v in loader.insert_s.items()},
        "load_s_including_generation": round(load_s, 1),
        "views": "insert_s includes the materialized views (nbbo -> nbbo_1s, matched_trades "
                 "-> trade_throughs); view_select_s is their SELECT alone over the day's rows",
        "view_select_s": view_s,
        "optimize_final_s": optimize_s,
        "parts": {t: {"parts": p, "rows": r, "bytes_on_disk": b} for t, p, r, b in parts},
    }


# -- timing -------------------------------------------------------------------------------------


def retrying(what: str, fn: Callable[[], T]) -> T:
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except (OSError, ClickHouseError) as exc:
            if attempt == RETRIES:
                raise
            print(f"  {what}: ClickHouse unavailable ({exc!r:.120}); retrying in "
                  f"{RETRY_WAIT_S:.0f} s", flush=True)
            time.sleep(RETRY_WAIT_S)
    raise AssertionError("unreachable")


class Timer:
    def __init__(self, config: ClickHouseConfig, client: Client) -> None:
        self.config = config
        self.client = client
        self.query_ids: dict[str, list[str]] = {}
        # the queries as a researcher runs them on this server: no ORDER BY FINAL already met
        version = str(client.execute("SELECT version()")[0][0])
        self.key_ordered_final = final_keeps_key_order(version)

    def text(self, q: Query, db: str) -> str:
        builder = DAILY_QUERIES[q.documented][0]
        return builder(db, key_ordered_final=self.key_ordered_final)

    def sql(self, q: Query, db: str) -> str:
        context = self.client.connection.context
        return str(self.client.substitute_params(self.text(q, db), q.params, context))

    def drop_caches(self) -> None:
        self.client.execute("SYSTEM DROP MARK CACHE")
        self.client.execute("SYSTEM DROP UNCOMPRESSED CACHE")

    def http_ms(self, q: Query, db: str, label: str) -> float:
        """Wall time of the query over HTTP with FORMAT Null (no result transfer), in ms."""
        query_id = f"tfbench-{uuid.uuid4().hex}"
        args = urllib.parse.urlencode({"query_id": query_id, "log_queries": 1, "database": db})
        url = f"http://{self.config.host}:{self.config.http_port}/?{args}"
        body = (self.sql(q, db).rstrip() + "\nFORMAT Null").encode()
        # credentials in a header, not in the URL (which servers and proxies log)
        token = base64.b64encode(f"{self.config.user}:{self.config.password}".encode()).decode()
        request = urllib.request.Request(
            url, data=body, headers={"Authorization": f"Basic {token}"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            resp.read()
        ms = (time.perf_counter() - started) * 1000
        self.query_ids.setdefault(f"{q.name}/{label}", []).append(query_id)
        return ms

    def json_ms(self, q: Query, db: str) -> tuple[float, int]:
        """Wall time of the query over HTTP in ClickHouse's JSON format, parsed, ms; rows."""
        args = urllib.parse.urlencode({"database": db})
        url = f"http://{self.config.host}:{self.config.http_port}/?{args}"
        body = (self.sql(q, db).rstrip() + "\nFORMAT JSONCompact").encode()
        token = base64.b64encode(f"{self.config.user}:{self.config.password}".encode()).decode()
        request = urllib.request.Request(
            url, data=body, headers={"Authorization": f"Basic {token}"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            rows = orjson.loads(resp.read())["data"]
        return (time.perf_counter() - started) * 1000, len(rows)

    def client_ms(self, q: Query, db: str) -> tuple[float, int]:
        """Wall time of clickhouse-driver's execute with the rows decoded, ms; rows."""
        started = time.perf_counter()
        rows = self.client.execute(self.text(q, db), q.params)
        return (time.perf_counter() - started) * 1000, len(rows)

    def server_stats(self) -> dict[str, dict[str, Any]]:
        """From system.query_log: per query and label, the median server duration and the
        rows/bytes read and rows returned by the last run."""
        self.client.execute("SYSTEM FLUSH LOGS")
        out: dict[str, dict[str, Any]] = {}
        for label, ids in self.query_ids.items():
            rows = self.client.execute(
                "SELECT query_id, query_duration_ms, read_rows, read_bytes, result_rows, "
                "memory_usage FROM system.query_log WHERE type = 2 AND query_id IN %(ids)s",
                {"ids": tuple(ids)},
            )
            if not rows:
                continue
            last = max(rows, key=lambda r: ids.index(r[0]))
            out[label] = {
                "server_ms_median": median([r[1] for r in rows]),
                "read_rows": last[2], "read_bytes": last[3], "result_rows": last[4],
                "memory_bytes": last[5],
            }
        return out


def time_queries(
    config: ClickHouseConfig, client: Client, db: str, qs: Sequence[Query], runs: int,
    client_runs: int,
) -> dict[str, dict[str, Any]]:
    timer = Timer(config, client)
    cold: dict[str, list[float]] = {q.name: [] for q in qs}
    warm: dict[str, list[float]] = {q.name: [] for q in qs}
    via_client: dict[str, list[float]] = {q.name: [] for q in qs}
    via_json: dict[str, list[float]] = {q.name: [] for q in qs}
    returned: dict[str, int] = {}
    for r in range(runs):  # interleaved: a disturbance spreads over every query
        for q in qs:
            def one_cold(q: Query = q) -> float:
                timer.drop_caches()
                return timer.http_ms(q, db, "cold")
            cold[q.name].append(retrying(q.name, one_cold))
        print(f"  cold run {r + 1}/{runs} done", flush=True)
    for q in qs:
        retrying(q.name, lambda q=q: timer.http_ms(q, db, "warmup"))  # type: ignore[misc]
    for _ in range(runs):
        for q in qs:
            warm[q.name].append(retrying(q.name, lambda q=q: timer.http_ms(q, db, "warm")))  # type: ignore[misc]
    for _ in range(client_runs):
        for q in qs:
            ms, n = retrying(q.name, lambda q=q: timer.client_ms(q, db))  # type: ignore[misc]
            via_client[q.name].append(ms)
            returned[q.name] = n
            ms, n = retrying(q.name, lambda q=q: timer.json_ms(q, db))  # type: ignore[misc]
            via_json[q.name].append(ms)
            if n != returned[q.name]:
                raise RuntimeError(f"{q.name}: {n} rows as JSON, {returned[q.name]} natively")
    stats = timer.server_stats()
    out = {}
    for q in qs:
        out[q.name] = {
            "documented": q.documented,
            "one_day": q.one_day,
            "params": {k: str(v) for k, v in q.params.items()},
            "cold_ms_median": round(median(cold[q.name]), 1),
            "warm_ms_median": round(median(warm[q.name]), 1),
            "cold_ms": [round(x, 1) for x in cold[q.name]],
            "warm_ms": [round(x, 1) for x in warm[q.name]],
            "client_ms_median": round(median(via_client[q.name]), 1) if client_runs else None,
            "client_ms": [round(x, 1) for x in via_client[q.name]],
            "client_json_ms_median": (
                round(median(via_json[q.name]), 1) if client_runs else None
            ),
            "rows_returned": returned.get(q.name),
            "server_cold": stats.get(f"{q.name}/cold"),
            "server_warm": stats.get(f"{q.name}/warm"),
        }
    return out


def run(instruments_n: int, scale: float, runs: int, client_runs: int, keep: bool,
        command: str, database: str | None = None, api: bool = False) -> dict[str, Any]:
    """Load the day (or reuse ``database``, loaded by an earlier ``--keep`` run), time the
    queries; with ``api`` also their API endpoints (``result["api"]``)."""
    settings = load_settings()
    db = database or f"tickflow_bench_q{uuid.uuid4().hex[:8]}"
    keep = keep or database is not None
    config = dataclasses.replace(settings.clickhouse, database=db)
    insts = instruments(instruments_n, scale)
    client = connect(config)
    version = client.execute("SELECT version()")[0][0]
    result: dict[str, Any] = {
        "command": command,
        "conditions": {
            "database": db,
            "day": str(DAY),
            "instruments": len(insts),
            "exchanges": list(EXCHANGES),
            "scale": scale,
            "queried": {"instrument": QUERIED, "trades_per_day": insts[0].trades,
                        "nbbo_per_day": insts[0].nbbo},
            "other_instruments_each": (
                {"trades_per_day": insts[1].trades, "nbbo_per_day": insts[1].nbbo}
                if len(insts) > 1 else None
            ),
            "runs": runs,
            "client_runs": client_runs,
            "cold": "SYSTEM DROP MARK CACHE + DROP UNCOMPRESSED CACHE before each run; "
                    "OS page cache not dropped (shared machine)",
            "server_timing": "HTTP, FORMAT Null, wall time on loopback",
            "key_ordered_final": final_keeps_key_order(version),
            "clickhouse": version,
            "max_threads": client.execute(
                "SELECT value FROM system.settings WHERE name = 'max_threads'")[0][0],
            "machine": machine(),
        },
    }
    print(f"ClickHouse {version}: loading one day into {db} ({len(insts)} instruments, "
          f"scale {scale:g})", flush=True)
    try:
        ensure_schema(config)
        if database is None:
            result["load"] = load_day(client, db, insts)
            load = result["load"]
            print(f"loaded {sum(load['rows'].values()):,} rows in "
                  f"{load['load_s_including_generation']} s ({load['rows']}); views "
                  f"{load['view_select_s']}; OPTIMIZE FINAL {load['optimize_final_s']}",
                  flush=True)
        else:
            result["load"] = {"reused_database": db}
        qs = queries(insts[0].symbol(EXCHANGES[0]))
        result["queries"] = time_queries(settings.clickhouse, client, db, qs, runs, client_runs)
        if api:
            from bench.clickhouse_queries_api import time_api

            result["api"] = time_api(settings, db, max(1, client_runs))
    finally:
        if not keep:
            client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()
    result["kept_database"] = keep
    print(f"{'query':>28} {'rows':>9} {'cold ms':>9} {'warm ms':>9} {'server ms':>9} "
          f"{'native ms':>10} {'JSON ms':>9}")
    for name, q in result["queries"].items():
        server = (q["server_warm"] or {}).get("server_ms_median")
        print(f"{name:>28} {q['rows_returned'] or '':>9} {q['cold_ms_median']:>9} "
              f"{q['warm_ms_median']:>9} {server if server is not None else '':>9} "
              f"{q['client_ms_median'] if q['client_ms_median'] is not None else '':>10} "
              f"{q['client_json_ms_median'] if q['client_json_ms_median'] is not None else '':>9}")
    day_queries = {n: q for n, q in result["queries"].items() if q["one_day"]}
    slowest = max(day_queries, key=lambda n: day_queries[n]["cold_ms_median"])
    m = result["conditions"]["machine"]
    result["targets"] = {
        "clickhouse_day_query": target_entry(
            day_queries[slowest]["cold_ms_median"], "ms",
            what="slowest documented 1-day query, cold, median of runs (server: HTTP, "
                 "FORMAT Null); every query's cold/warm/client medians below",
            slowest=slowest,
            per_query={
                n: {"cold_ms": q["cold_ms_median"], "warm_ms": q["warm_ms_median"],
                    "client_ms": q["client_ms_median"],
                    "client_json_ms": q["client_json_ms_median"], "rows": q["rows_returned"],
                    "one_day": q["one_day"]}
                for n, q in result["queries"].items()
            },
            queried=result["conditions"]["queried"],
            instruments=len(insts),
            rows_loaded=result["load"].get("rows"),
            clickhouse=version, runs=runs, cpus=m["cpus"], load_1m=m["load_1m"],
        )
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.clickhouse_queries",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0, help="volume factor (tests: 0.001)")
    parser.add_argument("--runs", type=int, default=5, help="cold and warm runs per query")
    parser.add_argument("--client-runs", type=int, default=2, help="runs decoding the rows")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument("--database", help="reuse this database of a --keep run (no load)")
    parser.add_argument("--api", action="store_true",
                        help="also time the query API's endpoints (JSON, Arrow, Parquet); "
                             "written to bench/results/clickhouse_queries_api.json")
    parser.add_argument("--out", default=None)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    command = " ".join(["python -m bench.clickhouse_queries", *raw])
    result = run(args.instruments, args.scale, args.runs, args.client_runs, args.keep,
                 command, args.database, args.api)
    api = result.pop("api", None)
    out = Path(args.out) if args.out else None
    print(f"written to {write_results(NAME, result, out)}")
    if api is not None:
        api = {"command": command, "conditions": result["conditions"], **api}
        api_out = out.with_name(f"{out.stem}_api.json") if out else None
        print(f"written to {write_results(f'{NAME}_api', api, api_out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
