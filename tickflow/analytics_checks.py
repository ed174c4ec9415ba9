"""Correctness checks of the NBBO, trade matching and bars of a run, against ground truth.

- matching: every trade the simulator made in a time range, as matched by the job
  (``matched_trades``), against the simulator's record of the book state it executed
  against (``GET /_sim/<exchange>/truth``): the state's event time and the touch (prices and
  sizes) must be equal;
- NBBO: every stored NBBO row recomputed by brute force from the touches of the book versions
  it names (``top_of_book``): best bid/ask, summed sizes, venues at the best, flags;
- windows: every stored bar in a time range against the batch recomputation in ClickHouse over
  the stored trades and touches (``jobs/sinks/queries.py``);
- late events: what the late-data table holds.
Used by ``bench/verify.py`` and ``tests/integration``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from jobs.sinks.clickhouse import connect
from jobs.sinks.queries import BAR_OUTPUT_COLUMNS, recompute_bars_sql
from tickflow.config import Settings
from tickflow.runs import read_committed
from tickflow.slice import sim_get

EXCHANGES = ("binance", "coinbase", "kraken")
FLOAT_TOLERANCE = 1e-9  # relative: averages are float in both implementations


STORED_TABLES = ("trades", "top_of_book", "nbbo", "matched_trades", "bars", "late_events")


def wait_stored(settings: Settings, timeout: float = 60.0, quiet_s: float = 2.0) -> dict[str, int]:
    """Wait until no table grows for ``quiet_s`` (the job's batches are flushed per table, so
    a check must not read one table's latest rows before another's)."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    try:
        while True:
            counts = {
                t: client.execute(f"SELECT count() FROM {db}.{t}")[0][0] for t in STORED_TABLES
            }
            if counts == last or time.monotonic() > deadline:
                return counts
            last = counts
            time.sleep(quiet_s)
    finally:
        client.disconnect()


def instruments(settings: Settings, exchanges: tuple[str, ...] = EXCHANGES) -> list[str]:
    """The canonical instruments the exchanges' symbols map to."""
    return sorted({i for ex in exchanges for i in getattr(settings.exchanges, ex).symbols.values()})


def _symbols(settings: Settings, exchange: str) -> list[str]:
    return list(getattr(settings.exchanges, exchange).symbols)


def _dec(text: Any) -> Decimal | None:
    return None if text is None or text == "" else Decimal(str(text))


def matching_check(
    settings: Settings, from_ms: int, to_ms: int, exchanges: tuple[str, ...] = EXCHANGES
) -> dict[str, Any]:
    """Truth vs ``matched_trades`` for trades with from_ms <= time < to_ms."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    try:
        rows = client.execute(
            f"SELECT exchange, symbol, trade_id, book_time_ms, bid_price, bid_size, ask_price,"
            f" ask_size, taker_side, book_status FROM {db}.matched_trades FINAL"
            f" WHERE trade_time_ms >= %(f)s AND trade_time_ms < %(t)s",
            {"f": from_ms, "t": to_ms},
        )
        late = {
            (ex, sym, tid)
            for ex, sym, tid in client.execute(
                f"SELECT exchange, symbol, event_id FROM {db}.late_events FINAL"
                f" WHERE kind = 'trade'"
            )
        }
    finally:
        client.disconnect()
    matched = {(r[0], r[1], r[2]): r[3:] for r in rows}
    compared = errors = missing = late_count = 0
    examples: list[dict[str, Any]] = []
    for exchange in exchanges:
        for symbol in _symbols(settings, exchange):
            truth = sim_get(settings, f"{exchange}/truth?symbol={symbol}&from_time_ms={from_ms}")
            for t in truth["trades"]:
                if not from_ms <= t["trade_time_ms"] < to_ms:
                    continue
                key = (exchange, symbol, str(t["trade_id"]))
                if key in late:
                    late_count += 1
                    continue
                got = matched.get(key)
                if got is None:
                    missing += 1
                    if len(examples) < 10:
                        examples.append({"trade": key, "problem": "not matched"})
                    continue
                compared += 1
                book_time, bid, bid_size, ask, ask_size, side, status = got
                want = (
                    t["book_time_ms"], _dec(t["bid_price"]), _dec(t["bid_size"]),
                    _dec(t["ask_price"]), _dec(t["ask_size"]), t["taker_side"], "LIVE",
                )  # fmt: skip
                have = (book_time, bid, bid_size, ask, ask_size, side, status)
                if have != want:
                    errors += 1
                    if len(examples) < 10:
                        examples.append({"trade": key, "want": str(want), "have": str(have)})
    return {
        "trades_matched": compared,
        "matching_errors": errors,
        "matching_missing": missing,
        "matching_late_excluded": late_count,
        "matching_examples": examples,
    }


def nbbo_check(settings: Settings) -> dict[str, Any]:
    """Every NBBO row against a brute-force recomputation from the touches it names."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    try:
        tops = client.execute(
            f"SELECT exchange, symbol, version, status, bid_price, bid_size, ask_price, ask_size"
            f" FROM {db}.top_of_book FINAL ORDER BY exchange, symbol, version"
        )
        nbbos = client.execute(
            f"SELECT instrument, version, venues, venue_versions, bid_price, bid_size,"
            f" bid_venues, ask_price, ask_size, ask_venues, locked, crossed"
            f" FROM {db}.nbbo FINAL ORDER BY instrument, version"
        )
    finally:
        client.disconnect()
    by_venue: dict[str, list[tuple[int, tuple[Any, ...]]]] = defaultdict(list)
    for ex, sym, version, status, bp, bs, ap, as_ in tops:
        by_venue[f"{ex}:{sym}"].append((version, (status, bp, bs, ap, as_)))
    mismatches = 0
    examples: list[dict[str, Any]] = []
    for instrument, version, venues, versions, bp, bs, bv, ap, as_, av, locked, crossed in nbbos:
        best_bid: Decimal | None = None
        best_ask: Decimal | None = None
        bid_size = ask_size = Decimal(0)
        bid_venues: list[str] = []
        ask_venues: list[str] = []
        problem = ""
        for venue, v in zip(venues, versions, strict=True):
            state = _state_at(by_venue.get(venue, []), v)
            if state is None or state[0] not in ("LIVE", "STALE"):
                problem = f"{venue}@{v}: {state[0] if state else 'no state'}"
                break
            _, b, b_size, a, a_size = state
            exchange = venue.split(":", 1)[0]
            if b is not None:
                if best_bid is None or b > best_bid:
                    best_bid, bid_size, bid_venues = b, b_size, [exchange]
                elif b == best_bid:
                    bid_size += b_size
                    bid_venues.append(exchange)
            if a is not None:
                if best_ask is None or a < best_ask:
                    best_ask, ask_size, ask_venues = a, a_size, [exchange]
                elif a == best_ask:
                    ask_size += a_size
                    ask_venues.append(exchange)
        want = (
            best_bid, bid_size if best_bid is not None else None, bid_venues,
            best_ask, ask_size if best_ask is not None else None, ask_venues,
            int(best_bid is not None and best_bid == best_ask),
            int(best_bid is not None and best_ask is not None and best_bid > best_ask),
        )  # fmt: skip
        have = (bp, bs, list(bv), ap, as_, list(av), locked, crossed)
        if problem or want != have:
            mismatches += 1
            if len(examples) < 10:
                examples.append({
                    "nbbo": f"{instrument}@{version}", "problem": problem,
                    "want": str(want), "have": str(have),
                    # the touches around each named version, to see what went wrong
                    "around": {
                        f"{venue}@{v}": [
                            str(s) for s in by_venue.get(venue, []) if abs(s[0] - v) < 10**7
                        ][-6:]
                        for venue, v in zip(venues, versions, strict=True)
                    },
                })  # fmt: skip
    return {"nbbo_checks": len(nbbos), "nbbo_mismatches": mismatches, "nbbo_examples": examples}


def _state_at(
    states: list[tuple[int, tuple[Any, ...]]], version: int
) -> tuple[Any, ...] | None:
    """The touch in force at ``version``: the last change at or before it."""
    lo, hi = 0, len(states)
    while lo < hi:
        mid = (lo + hi) // 2
        if states[mid][0] <= version:
            lo = mid + 1
        else:
            hi = mid
    return states[lo - 1][1] if lo else None


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return abs(a - b) <= FLOAT_TOLERANCE * max(abs(a), abs(b), 1e-300)
    return bool(a == b)


# compared per (venue, window) of one instrument and interval
BAR_COLUMNS = tuple(c for c in BAR_OUTPUT_COLUMNS if c not in ("instrument", "interval_ms"))


def windows_check(
    settings: Settings, instruments: list[str], from_ms: int, to_ms: int
) -> dict[str, Any]:
    """Stored bars vs the batch recomputation, for windows inside [from_ms, to_ms)."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    compared = mismatches = 0
    examples: list[dict[str, Any]] = []
    cols = ", ".join(BAR_COLUMNS)
    try:
        for interval in settings.analytics.bar_intervals_ms:
            lo = -(-from_ms // interval) * interval
            hi = to_ms // interval * interval
            if hi <= lo:
                continue
            for instrument in instruments:
                params = {"instrument": instrument, "from_ms": lo, "to_ms": hi}
                stored = client.execute(
                    f"SELECT {cols} FROM {db}.bars FINAL WHERE instrument = %(instrument)s"
                    f" AND interval_ms = %(interval)s AND window_start_ms >= %(from_ms)s"
                    f" AND window_start_ms + %(interval)s <= %(to_ms)s",
                    {**params, "interval": interval},
                )
                batch = client.execute(
                    f"SELECT {cols} FROM ({recompute_bars_sql(interval, db)})", params
                )
                have = {(r[0], r[1]): r for r in stored}
                want = {(r[0], r[1]): r for r in batch}
                for key in sorted(have.keys() | want.keys()):
                    compared += 1
                    a, b = have.get(key), want.get(key)
                    if a is None or b is None or not all(
                        _close(x, y) for x, y in zip(a, b, strict=True)
                    ):
                        mismatches += 1
                        if len(examples) < 10:
                            examples.append({
                                "bar": f"{instrument}/{interval}/{key}",
                                "stored": str(a), "recomputed": str(b),
                            })  # fmt: skip
    finally:
        client.disconnect()
    return {
        "window_rows_compared": compared,
        "window_mismatches": mismatches,
        "window_examples": examples,
    }


def late_events(settings: Settings) -> dict[str, Any]:
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    try:
        rows = client.execute(
            f"SELECT kind, count() FROM {db}.late_events FINAL GROUP BY kind ORDER BY kind"
        )
    finally:
        client.disconnect()
    counts = {kind: n for kind, n in rows}
    return {"late_events": sum(counts.values()), "late_events_by_kind": counts}


def results_check(settings: Settings) -> dict[str, Any]:
    """The exactly-once topics against ClickHouse: the same rows, none twice."""
    topics = settings.kafka.result_topics()
    keys = {  # each table's row identity
        "nbbo": ("instrument", "version"),
        "matched_trades": ("exchange", "symbol", "trade_id"),
        "bars": ("instrument", "interval_ms", "venue", "window_start_ms"),
    }
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    out: dict[str, Any] = {}
    try:
        for table, cols in keys.items():
            records = read_committed(settings, topics[table])
            got = [tuple(str(r[c]) for c in cols) for r in records]
            stored = {
                tuple(str(v) for v in row)
                for row in client.execute(f"SELECT {', '.join(cols)} FROM {db}.{table} FINAL")
            }
            out[table] = {
                "kafka_records": len(got),
                "kafka_duplicates": len(got) - len(set(got)),
                "clickhouse_rows": len(stored),
                "only_in_kafka": len(set(got) - stored),
                "only_in_clickhouse": len(stored - set(got)),
            }
    finally:
        client.disconnect()
    return out
