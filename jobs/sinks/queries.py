"""The researcher's queries over the ClickHouse tables, as SQL text for clickhouse-driver.

Each function returns SQL with ``%(name)s`` placeholders (run it as
``client.execute(sql, params)``); the database name is validated and inlined. Every query reads
with ``FINAL``, so an at-least-once replay never shows a row twice. docs/queries.md has
examples; ``recompute_bars_sql`` recomputes the streaming job's bars from the stored trades and
top-of-book rows.

Everything here runs on ClickHouse 18.16 (the local server) and current releases. What 18.16
lacks, and how the bar recomputation gets around it:

- no window functions / ASOF JOIN: each book's rows are collected with ``groupArray`` into one
  array sorted by (event_time_ms, version); the previous/next row comes from the same array
  shifted by one (``arrayPushFront(arrayPopBack(..))``), zipped with ``arrayMap``;
- lambdas cannot read columns of the row (only their own arguments), hence the zipping;
- ``groupArray`` over Decimal values (alone or inside a tuple) crashes 18.16 with a segfault:
  decimals travel through the arrays as exact strings (``toString``) and are parsed back
  (``toDecimal128(s, 18)``);
- Decimal(38, 18) * Decimal(38, 18) is a Decimal(38, 36) and overflows above 100: price * size
  is split as price * int(size) + int(price) * frac(size) + frac(price) * frac(size), each
  part in range, the last (< 1) truncated to 18 decimals;
- ``anyIf`` over a Nullable returns 0 instead of NULL when nothing matches: not used.

The day queries (``DAILY_QUERIES``) take ``key_ordered_final``: where the server's FINAL
already returns rows in the table's sorting-key order (``final_keeps_key_order``: 18.x) and the
query asks for that order, its ORDER BY is left out; on 18.16 it re-sorted the rows FINAL had
just merged in order, half of a day query's time (a matched-trades day 105 ms -> 55 ms).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from jobs.sinks.clickhouse import COLUMNS, DECIMAL, column_types

DEFAULT_DB = "tickflow"
ALL_VENUES = "ALL"  # the bars' venue of every exchange's trades and books together

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# what the recomputation returns: the bars table's columns but the date
BAR_OUTPUT_COLUMNS = COLUMNS["bars"][1:]


def _db(db: str) -> str:
    # the name is inlined (placeholders are values, not identifiers): accept identifiers only
    if not _IDENTIFIER.fullmatch(db):
        raise ValueError(f"not a database name: {db!r}")
    return db


def final_keeps_key_order(server_version: str) -> bool:
    """Whether ``FINAL`` on a server of this version (``SELECT version()``) returns the rows in
    the table's sorting-key order: ClickHouse 18.x merges every part a FINAL query reads in one
    stream ordered by that key (checked on 18.16 over unmerged parts and partitions by
    tests/integration/test_clickhouse_queries.py). Later releases merge ranges in parallel, out
    of order: there the ORDER BY stays (and reads in order, cheaply)."""
    major = server_version.split(".", 1)[0]
    return major.isdigit() and int(major) < 19


def _key_order(columns: str, key_ordered_final: bool) -> str:
    """The ORDER BY of a query whose order is its table's sorting key once the key's leading
    columns are fixed by the WHERE; nothing where FINAL already returns that order."""
    return "" if key_ordered_final else f"ORDER BY {columns}"


def _utc_date(ms_expr: str) -> str:
    """The UTC date of a millisecond time (the tables' partition key), as SQL."""
    return f"toDate(toDateTime(intDiv({ms_expr}, 1000), 'UTC'))"


def bars_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """Bars of one instrument, venue (exchange or 'ALL') and interval over one UTC day.

    Params: instrument, venue, interval_ms, date (datetime.date).
    """
    return f"""
SELECT window_start_ms, open, high, low, close, volume, notional, vwap, trade_count,
       buy_volume, sell_volume, live_ms, twa_spread, twa_bid_depth_10bps,
       twa_ask_depth_10bps, ofi
FROM {_db(db)}.bars FINAL
WHERE date = %(date)s AND instrument = %(instrument)s AND venue = %(venue)s
  AND interval_ms = %(interval_ms)s
{_key_order("window_start_ms", key_ordered_final)}
"""


def nbbo_history_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """NBBO changes of one instrument with from_ms <= event_time_ms < to_ms, every column:
    read it an hour at a time (a busy instrument changes its NBBO over a million times a day;
    ``nbbo_summary_sql`` has the day per second).

    Params: instrument, from_ms, to_ms.
    """
    return f"""
SELECT event_time_ms, version, bid_price, bid_size, bid_venues, ask_price, ask_size,
       ask_venues, locked, crossed, venues, venue_versions, excluded, excluded_reasons
FROM {_db(db)}.nbbo FINAL
WHERE date >= {_utc_date("%(from_ms)s")} AND date <= {_utc_date("%(to_ms)s")}
  AND instrument = %(instrument)s
  AND event_time_ms >= %(from_ms)s AND event_time_ms < %(to_ms)s
{_key_order("event_time_ms, version", key_ordered_final)}
"""


def nbbo_summary_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """The NBBO of one instrument per window of ``interval_ms`` (a multiple of 1000) with
    from_ms <= window start < to_ms, from ``nbbo_1s``: the change that ended the window (the
    last by (event_time_ms, version)), i.e. the state the NBBO was in at the window's end. A
    window without a change has no row (the state carried on).

    Params: instrument, interval_ms, from_ms, to_ms (from_ms and to_ms multiples of
    interval_ms for whole windows).
    """
    return f"""
SELECT intDiv(second_ms, %(interval_ms)s) * %(interval_ms)s AS window_start_ms, event_time_ms,
       version, bid_price, bid_size, bid_venues, ask_price, ask_size, ask_venues, locked,
       crossed
FROM {_db(db)}.nbbo_1s FINAL
WHERE date >= {_utc_date("%(from_ms)s")} AND date <= {_utc_date("%(to_ms)s")}
  AND instrument = %(instrument)s
  AND second_ms >= %(from_ms)s AND second_ms < %(to_ms)s
ORDER BY window_start_ms, event_time_ms DESC, version DESC
LIMIT 1 BY window_start_ms
"""


def trade_through_counts_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """Per UTC day and exchange, one instrument's matched trades, how many traded through the
    NBBO, and the share (from ``trade_throughs``, the matched trades narrowed).

    Params: instrument, from_date, to_date (datetime.date, inclusive).
    """
    return f"""
SELECT date, exchange, count() AS trades, sum(trade_through) AS trade_throughs,
       trade_throughs / trades AS trade_through_share
FROM {_db(db)}.trade_throughs FINAL
WHERE date >= %(from_date)s AND date <= %(to_date)s AND instrument = %(instrument)s
GROUP BY date, exchange
ORDER BY date, exchange
"""


def late_event_counts_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """Per UTC day, exchange and kind ('trade' / 'book'): late events and their lateness.

    Params: from_date, to_date (datetime.date, inclusive).
    """
    return f"""
SELECT date, exchange, kind, count() AS events, max(lateness_ms) AS max_lateness_ms,
       avg(lateness_ms) AS avg_lateness_ms
FROM {_db(db)}.late_events FINAL
WHERE date >= %(from_date)s AND date <= %(to_date)s
GROUP BY date, exchange, kind
ORDER BY date, exchange, kind
"""


def matched_trades_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """Matched trades of one exchange symbol over one UTC day, in trade order: the trade and
    how it executed (touch, levels, slippage in bps, trade-through); the book and NBBO it met
    are in ``matched_trades_detail_sql`` (an hour at a time).

    Params: exchange, symbol, date (datetime.date).
    """
    return f"""
SELECT trade_time_ms, trade_id, price, size, taker_side, touch, levels_consumed,
       slippage_mid_bps, trade_through
FROM {_db(db)}.matched_trades FINAL
WHERE date = %(date)s AND exchange = %(exchange)s AND symbol = %(symbol)s
{_key_order("trade_time_ms, trade_id", key_ordered_final)}
"""


def matched_trades_detail_sql(db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str:
    """Matched trades of one exchange symbol with from_ms <= trade_time_ms < to_ms, every
    column: the book (own exchange) and the NBBO each trade executed against.

    Params: exchange, symbol, from_ms, to_ms.
    """
    return f"""
SELECT trade_time_ms, trade_id, price, size, taker_side, book_status, book_time_ms,
       book_version, book_seq, bid_price, bid_size, ask_price, ask_size, mid, spread, touch,
       levels_consumed, size_consumed, slippage_mid, slippage_mid_bps, nbbo_bid_price,
       nbbo_bid_size, nbbo_ask_price, nbbo_ask_size, nbbo_venues, slippage_nbbo,
       trade_through, receive_time_ns
FROM {_db(db)}.matched_trades FINAL
WHERE date >= {_utc_date("%(from_ms)s")} AND date <= {_utc_date("%(to_ms)s")}
  AND exchange = %(exchange)s AND symbol = %(symbol)s
  AND trade_time_ms >= %(from_ms)s AND trade_time_ms < %(to_ms)s
{_key_order("trade_time_ms, trade_id", key_ordered_final)}
"""


def recompute_bars_sql(interval_ms: int, db: str = DEFAULT_DB) -> str:
    """The bars of one instrument recomputed from ``trades`` (the on-time ones) and
    ``top_of_book``, for the windows of ``interval_ms`` that lie entirely in [from_ms, to_ms).

    Params: instrument, from_ms, to_ms. Columns: ``BAR_OUTPUT_COLUMNS`` (the ``bars`` table
    without ``date``), ordered by venue and window. Definitions: docs/queries.md.
    """
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be positive, not {interval_ms}")
    db = _db(db)
    i = int(interval_ms)
    dec = DECIMAL
    zero = "toDecimal128(0, 18)"
    null_dec = f"CAST(NULL AS Nullable({dec}))"
    null_f64 = "CAST(NULL AS Nullable(Float64))"
    # first and last whole window, as constant expressions of the parameters
    lo = f"(intDiv(toUInt64(%(from_ms)s) + {i - 1}, {i}) * {i})"
    hi = f"(intDiv(toUInt64(%(to_ms)s), {i}) * {i})"
    book = f"""{db}.top_of_book FINAL
        WHERE instrument = %(instrument)s AND status != 'STALE'"""
    # exact price * size in range of Decimal(38, 18) (see the module docstring)
    p_int, s_int = "toDecimal128(price, 0)", "toDecimal128(size, 0)"
    notional = (
        f"price * {s_int} + {p_int} * (size - {s_int})"
        f" + toDecimal128((price - {p_int}) * (size - {s_int}), 18)"
    )
    trade_key = "(trade_time_ms, exchange, trade_num, trade_id)"

    # one row per (venue, window) with trades; each trade counts for its exchange and for ALL
    trade_bars = f"""
    SELECT
        src_venue, window_start_ms, toUInt8(0) AS is_book,
        CAST(argMin(price, {trade_key}) AS Nullable({dec})) AS t_open,
        CAST(max(price) AS Nullable({dec})) AS t_high,
        CAST(min(price) AS Nullable({dec})) AS t_low,
        CAST(argMax(price, {trade_key}) AS Nullable({dec})) AS t_close,
        sum(size) AS t_volume,
        sum(notional_part) AS t_notional,
        toUInt64(count()) AS t_count,
        sumIf(size, taker_side = 'buy') AS t_buy,
        sumIf(size, taker_side = 'sell') AS t_sell,
        toUInt64(0) AS b_live_ms,
        {null_f64} AS b_spread,
        {null_f64} AS b_bid_depth,
        {null_f64} AS b_ask_depth,
        {zero} AS b_ofi
    FROM (
        SELECT
            arrayJoin([exchange, '{ALL_VENUES}']) AS src_venue,
            intDiv(trade_time_ms, {i}) * {i} AS window_start_ms,
            exchange, trade_id, toUInt64OrZero(trade_id) AS trade_num, trade_time_ms,
            price, size, taker_side,
            {notional} AS notional_part
        FROM {db}.trades FINAL
        WHERE date >= {_utc_date(lo)} AND date <= {_utc_date(hi)}
          AND instrument = %(instrument)s
          AND trade_time_ms >= {lo} AND trade_time_ms < {hi}
          AND on_time = 1
    )
    GROUP BY src_venue, window_start_ms"""

    # Each book's rows (no STALE ones) from its last row before the first window to its first
    # row after the last one, sorted, as one array of
    # (time, version, live with both sides, bid, bid size, ask, ask size, bid depth, ask depth)
    book_rows = f"""
            SELECT exchange,
                arraySort(r -> (r.1, r.2), groupArray((event_time_ms, version, ok, bid, bid_size_s,
                    ask, ask_size_s, bid_depth, ask_depth))) AS rows
            FROM (
                SELECT exchange, symbol, event_time_ms, version,
                    toUInt8(status = 'LIVE' AND isNotNull(bid_price) AND isNotNull(ask_price))
                        AS ok,
                    ifNull(toString(bid_price), '0') AS bid,
                    ifNull(toString(bid_size), '0') AS bid_size_s,
                    ifNull(toString(ask_price), '0') AS ask,
                    ifNull(toString(ask_size), '0') AS ask_size_s,
                    ifNull(toString(bid_depth_10bps), '0') AS bid_depth,
                    ifNull(toString(ask_depth_10bps), '0') AS ask_depth
                FROM {book}
                  AND event_time_ms >= (
                      SELECT min(t) FROM (
                          SELECT max(event_time_ms) AS t FROM {book} AND event_time_ms < {lo}
                          GROUP BY exchange, symbol))
                  AND (event_time_ms < {hi} OR event_time_ms <= (
                      SELECT max(t) FROM (
                          SELECT min(event_time_ms) AS t FROM {book} AND event_time_ms >= {hi}
                          GROUP BY exchange, symbol)))
            )
            GROUP BY exchange, symbol"""

    # Row k with its predecessor p and the next row's time nt, as one contribution:
    # (segment [t_k, nt) counts, OFI term at t_k counts, segment start, end (clipped to the
    #  windows), t_k, row k's touch and depth, row p's touch)
    contributions = f"""
        SELECT exchange,
            arrayFilter(c -> c.1 OR c.2, arrayMap((r, p, nt, k) -> (
                toUInt8(r.3 AND least(nt, {hi}) > greatest(r.1, {lo})),
                toUInt8(k > 1 AND r.3 AND p.3 AND r.1 >= {lo} AND r.1 < {hi}),
                greatest(r.1, {lo}), least(nt, {hi}), r.1,
                r.4, r.5, r.6, r.7, r.8, r.9, p.4, p.5, p.6, p.7),
                rows,
                arrayPushFront(arrayPopBack(rows), rows[1]),
                arrayPushBack(arrayPopFront(arrayMap(r -> r.1, rows)), toUInt64(0)),
                arrayEnumerate(rows))) AS contribs
        FROM ({book_rows}
        )"""

    # one row per (contribution, window it touches): a segment is split over its windows,
    # an OFI term lands in the window of its row's time
    pieces = f"""
        SELECT exchange, w,
            c.1 AS is_seg, c.2 AS has_ofi, c.3 AS seg_start, c.4 AS seg_end, c.5 AS t,
            toDecimal128(c.6, 18) AS bid, toDecimal128(c.7, 18) AS bid_size,
            toDecimal128(c.8, 18) AS ask, toDecimal128(c.9, 18) AS ask_size,
            toDecimal128(c.10, 18) AS bid_depth, toDecimal128(c.11, 18) AS ask_depth,
            toDecimal128(c.12, 18) AS prev_bid, toDecimal128(c.13, 18) AS prev_bid_size,
            toDecimal128(c.14, 18) AS prev_ask, toDecimal128(c.15, 18) AS prev_ask_size,
            intDiv(if(is_seg, seg_start, t), {i}) * {i} AS first_w,
            if(is_seg, intDiv(toUInt64(seg_end - 1), {i}) * {i}, first_w) AS last_w,
            -- (UInt64 minus UInt64 is Int64 in ClickHouse: cast back for if() and range())
            toUInt64(intDiv(toUInt64(last_w - first_w), {i}) + 1) AS window_count,
            arrayJoin(arrayMap(n -> first_w + n * {i}, range(window_count))) AS w,
            least(seg_end, w + {i}) AS piece_end,
            greatest(seg_start, w) AS piece_start,
            if(is_seg AND piece_end > piece_start, toUInt64(piece_end - piece_start), toUInt64(0))
                AS overlap,
            toUInt8(has_ofi AND w = intDiv(t, {i}) * {i}) AS ofi_here,
            if(ofi_here,
               if(bid >= prev_bid, bid_size, {zero}) - if(bid <= prev_bid, prev_bid_size, {zero})
               - if(ask <= prev_ask, ask_size, {zero}) + if(ask >= prev_ask, prev_ask_size, {zero}),
               {zero}) AS ofi_term
        FROM (
            SELECT exchange, arrayJoin(contribs) AS c FROM ({contributions}
            )
        )"""

    # one row per (exchange, window) with live time or an OFI term
    book_bars = f"""
    SELECT
        exchange AS src_venue, w AS window_start_ms, toUInt8(1) AS is_book,
        {null_dec} AS t_open, {null_dec} AS t_high, {null_dec} AS t_low, {null_dec} AS t_close,
        {zero} AS t_volume, {zero} AS t_notional, toUInt64(0) AS t_count,
        {zero} AS t_buy, {zero} AS t_sell,
        sum(overlap) AS b_live_ms,
        -- numerators summed exactly (integer ms * decimal), one conversion to Float64
        if(b_live_ms = 0, {null_f64},
           toFloat64(sum(toDecimal128(overlap, 0) * (ask - bid))) / b_live_ms) AS b_spread,
        if(b_live_ms = 0, {null_f64},
           toFloat64(sum(toDecimal128(overlap, 0) * bid_depth)) / b_live_ms) AS b_bid_depth,
        if(b_live_ms = 0, {null_f64},
           toFloat64(sum(toDecimal128(overlap, 0) * ask_depth)) / b_live_ms) AS b_ask_depth,
        sum(ofi_term) AS b_ofi
    FROM ({pieces}
    )
    WHERE overlap > 0 OR ofi_here
    GROUP BY exchange, w"""

    # Merge per target venue: an exchange's trade row and book row; ALL's trade row and every
    # exchange's book row (ALL: depth and OFI summed over exchanges, no live time or spread).
    return f"""
SELECT
    toString(%(instrument)s) AS instrument,
    target AS venue,
    toUInt32({i}) AS interval_ms,
    window_start_ms,
    any(t_open) AS open,
    max(t_high) AS high,
    min(t_low) AS low,
    any(t_close) AS close,
    sum(t_volume) AS volume,
    sum(t_notional) AS notional,
    if(sum(t_volume) = 0, {null_f64}, toFloat64(sum(t_notional)) / toFloat64(sum(t_volume)))
        AS vwap,
    toUInt32(sum(t_count)) AS trade_count,
    sum(t_buy) AS buy_volume,
    sum(t_sell) AS sell_volume,
    toUInt32(if(target = '{ALL_VENUES}', 0, sum(b_live_ms))) AS live_ms,
    if(target = '{ALL_VENUES}', {null_f64}, any(b_spread)) AS twa_spread,
    sum(b_bid_depth) AS twa_bid_depth_10bps,
    sum(b_ask_depth) AS twa_ask_depth_10bps,
    sum(b_ofi) AS ofi
FROM (
    SELECT *, arrayJoin(if(is_book = 1, [src_venue, '{ALL_VENUES}'], [src_venue])) AS target
    FROM ({trade_bars}
    UNION ALL{book_bars}
    )
)
GROUP BY target, window_start_ms
ORDER BY venue, window_start_ms
"""


def exact_text_column(name: str, kind: str) -> str:
    """How a column is read for research clients: a decimal (or an array of them) as its exact
    text, which Arrow parses into decimal128(38, 18) and JSON carries as a string (the driver
    would build a Python Decimal of each value); anything else as it is."""
    if DECIMAL not in kind:
        return name
    # named as the column (read by name as JSON); no query filters or sorts on a decimal
    if kind.startswith("Array("):
        return f"arrayMap(x -> toString(x), {name}) AS {name}"
    return f"toString({name}) AS {name}"  # NULL stays NULL


# what nbbo_summary_sql returns: each column and its ClickHouse type
NBBO_SUMMARY_TYPES: dict[str, str] = {
    "window_start_ms": "UInt64",
    "event_time_ms": "UInt64",
    "version": "UInt64",
    "bid_price": f"Nullable({DECIMAL})",
    "bid_size": f"Nullable({DECIMAL})",
    "bid_venues": "Array(String)",
    "ask_price": f"Nullable({DECIMAL})",
    "ask_size": f"Nullable({DECIMAL})",
    "ask_venues": "Array(String)",
    "locked": "UInt8",
    "crossed": "UInt8",
}


def nbbo_summary_page_sql(db: str = DEFAULT_DB) -> str:
    """``nbbo_summary_sql`` for the query API: decimals as exact text, at most ``%(limit)s``
    windows (the next page starts after the last one). Params: as nbbo_summary_sql, limit."""
    selected = ", ".join(exact_text_column(n, t) for n, t in NBBO_SUMMARY_TYPES.items())
    inner = nbbo_summary_sql(db).strip()
    return f"SELECT {selected}\nFROM ({inner})\nORDER BY window_start_ms\nLIMIT %(limit)s"


# table -> its time column: the tables the query API reads by time range
HISTORY_TIME_COLUMNS: dict[str, str] = {
    "trades": "trade_time_ms",
    "matched_trades": "trade_time_ms",
    "top_of_book": "event_time_ms",
    "nbbo": "event_time_ms",
    "bars": "window_start_ms",
    "late_events": "event_time_ms",
}


def history_order(table: str, filters: Sequence[str]) -> tuple[str, ...]:
    """The order of ``history_sql``'s rows: the time column, then the rest of the table's
    identity (its sorting key) that the equality filters leave open. Unique per row, so the
    last row's values are a cursor (keyset paging)."""
    from jobs.sinks.clickhouse import TABLES

    match = re.search(r"^ORDER BY \((?P<cols>[^)]*)\)", TABLES[table], re.MULTILINE)
    if not match:
        raise ValueError(f"no ORDER BY in the DDL of {table}")
    key = [c.strip() for c in match["cols"].split(",")]
    time_col = HISTORY_TIME_COLUMNS[table]
    return (time_col, *(c for c in key if c != time_col and c not in filters))


def history_sql(
    table: str, filters: Sequence[str], after: bool = False, db: str = DEFAULT_DB
) -> str:
    """One page of a table's FINAL rows with ``from_ms <= <time column> < to_ms`` and
    ``<column> = %(<column>)s`` for each of ``filters``, every column (``COLUMNS`` order,
    decimals as exact text), in ``history_order``, at most ``%(limit)s`` rows.

    With ``after``: only rows after the cursor, params ``after_0 .. after_<n-1>`` (the
    ``history_order`` values of the previous page's last row).
    Params: from_ms, to_ms, limit, each filter (and the cursor's values).
    """
    if table not in HISTORY_TIME_COLUMNS:
        raise ValueError(f"not a history table: {table!r}")
    types = column_types(table)
    for name in filters:
        if name not in types:
            raise ValueError(f"{table} has no column {name!r}")
    time_col = HISTORY_TIME_COLUMNS[table]
    order = history_order(table, filters)
    where = [
        f"date >= {_utc_date('%(from_ms)s')}",
        f"date <= {_utc_date('%(to_ms)s')}",
        *(f"{name} = %({name})s" for name in filters),
        f"{time_col} >= %(from_ms)s",
        f"{time_col} < %(to_ms)s",
    ]
    if after:
        # (c1, .., cn) > (v1, .., vn), spelled out (no tuple comparison needed)
        terms = []
        for i, col in enumerate(order):
            equal = [f"{c} = %(after_{j})s" for j, c in enumerate(order[:i])]
            terms.append("(" + " AND ".join([*equal, f"{col} > %(after_{i})s"]) + ")")
        where.append("(" + " OR ".join(terms) + ")")
    selected = ", ".join(exact_text_column(name, types[name]) for name in COLUMNS[table])
    return (
        f"SELECT {selected}\nFROM {_db(db)}.{table} FINAL\n"
        f"WHERE {' AND '.join(where)}\n"
        f"ORDER BY {', '.join(order)}\nLIMIT %(limit)s"
    )


class DailyQuery(Protocol):
    """A day query's SQL builder. ``key_ordered_final`` (``final_keeps_key_order`` of the
    server) leaves out an ORDER BY that FINAL already satisfies; the queries that group
    (summaries, counts) sort their few grouped rows either way."""

    def __call__(self, db: str = DEFAULT_DB, *, key_ordered_final: bool = False) -> str: ...


# name -> (SQL builder, what its parameters are); docs/queries.md shows each with an example
DAILY_QUERIES: dict[str, tuple[DailyQuery, tuple[str, ...]]] = {
    "bars": (bars_sql, ("instrument", "venue", "interval_ms", "date")),
    "nbbo_summary": (nbbo_summary_sql, ("instrument", "interval_ms", "from_ms", "to_ms")),
    "nbbo_history": (nbbo_history_sql, ("instrument", "from_ms", "to_ms")),  # an hour
    "trade_through_counts": (trade_through_counts_sql, ("instrument", "from_date", "to_date")),
    "late_event_counts": (late_event_counts_sql, ("from_date", "to_date")),
    "matched_trades": (matched_trades_sql, ("exchange", "symbol", "date")),
    "matched_trades_detail": (
        matched_trades_detail_sql,
        ("exchange", "symbol", "from_ms", "to_ms"),  # an hour
    ),
}


def gaps_sql(db: str = DEFAULT_DB) -> str:
    """The intervals out of sync of the books that overlap one UTC day, in start order: each
    book's ``gaps`` rows (the closed row where both are stored); an empty exchange or symbol
    matches every one.

    Params: day_start_ms, day_end_ms (the day is [day_start_ms, day_end_ms)), date (its
    datetime.date), exchange, symbol.
    """
    return f"""
SELECT exchange, symbol, instrument, start_ms, start_version, end_ms, closed, kind, reason,
       seq_before, seq_after, messages, dropped
FROM {_db(db)}.gaps FINAL
WHERE date <= %(date)s
  AND start_ms < %(day_end_ms)s
  AND (closed = 0 OR end_ms > %(day_start_ms)s OR start_ms >= %(day_start_ms)s)
  AND (%(exchange)s = '' OR exchange = %(exchange)s)
  AND (%(symbol)s = '' OR symbol = %(symbol)s)
ORDER BY exchange, symbol, start_ms, start_version
"""


def completeness_sql(db: str = DEFAULT_DB) -> str:
    """Per book and reason kind, over one UTC day: the intervals out of sync, their time in
    the day (each clipped to the day; one still open counts until ``open_until_ms``) and how
    many are still open. ``jobs/completeness.py`` sums them per book into the day's report.

    Params: as ``gaps_sql``, and open_until_ms (now, or the day's end for a past day).
    """
    end = "least(if(closed = 1, end_ms, %(open_until_ms)s), %(day_end_ms)s)"
    start = "greatest(start_ms, %(day_start_ms)s)"
    return f"""
SELECT exchange, symbol, any(instrument) AS instrument, kind, count() AS gaps,
       sum(greatest(toInt64({end}) - toInt64({start}), 0)) AS out_of_sync_ms,
       sum(1 - closed) AS still_open
FROM {_db(db)}.gaps FINAL
WHERE date <= %(date)s
  AND start_ms < %(day_end_ms)s
  AND (closed = 0 OR end_ms > %(day_start_ms)s OR start_ms >= %(day_start_ms)s)
  AND (%(exchange)s = '' OR exchange = %(exchange)s)
  AND (%(symbol)s = '' OR symbol = %(symbol)s)
GROUP BY exchange, symbol, kind
ORDER BY exchange, symbol, kind
"""


def books_of_day_sql(db: str = DEFAULT_DB) -> str:
    """The books with a top-of-book row on one UTC day (those in sync all day included).

    Params: date, exchange, symbol (empty: every one).
    """
    return f"""
SELECT exchange, symbol, any(instrument) AS instrument
FROM {_db(db)}.top_of_book
WHERE date = %(date)s
  AND (%(exchange)s = '' OR exchange = %(exchange)s)
  AND (%(symbol)s = '' OR symbol = %(symbol)s)
GROUP BY exchange, symbol
ORDER BY exchange, symbol
"""
