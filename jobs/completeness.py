"""The completeness report of a UTC day: per book, how long it was not in sync, why, and the
share of the day it was covered (``tickflow completeness --day D [--exchange E] [--symbol S]``).

Read from the ``gaps`` table (one row per interval a book was out of sync, written by the job
and the batch backfill: docs/queries.md, "Gaps and completeness") with
``jobs.sinks.queries.completeness_sql``; books with no interval that day come from its
top-of-book rows. An interval still open counts until now (today) or the day's end; one that
spans midnight counts in each day for its part of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from clickhouse_driver.errors import Error as ClickHouseError

from jobs.export import parse_day
from jobs.sinks.clickhouse import connect
from jobs.sinks.queries import books_of_day_sql, completeness_sql, gaps_sql
from tickflow.config import ClickHouseConfig, ConfigError, load_settings

DAY_MS = 86_400_000


@dataclass
class BookCompleteness:
    exchange: str
    symbol: str
    instrument: str
    day_ms: int  # the part of the day reported on (all of it, or until now for today)
    out_of_sync_ms: int = 0
    gaps: int = 0
    still_open: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> gaps, ms

    @property
    def covered(self) -> float:
        """The share of the reported part of the day the book was in sync."""
        if self.day_ms <= 0:
            return 1.0
        return max(0.0, 1.0 - self.out_of_sync_ms / self.day_ms)


def day_bounds(day: date) -> tuple[int, int]:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return start, start + DAY_MS


def _params(
    day: date, exchange: str | None, symbol: str | None, now_ms: int | None
) -> dict[str, Any]:
    start, end = day_bounds(day)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return {
        "date": day,
        "day_start_ms": start,
        "day_end_ms": end,
        "open_until_ms": max(start, min(now_ms, end)),
        "exchange": exchange or "",
        "symbol": symbol or "",
    }


def completeness(
    config: ClickHouseConfig,
    day: date,
    exchange: str | None = None,
    symbol: str | None = None,
    *,
    database: str | None = None,
    now_ms: int | None = None,
) -> list[BookCompleteness]:
    """The day's report, one entry per book, in (exchange, symbol) order."""
    db = database or config.database
    params = _params(day, exchange, symbol, now_ms)
    day_ms = params["open_until_ms"] - params["day_start_ms"]
    client = connect(config)
    try:
        kinds = client.execute(completeness_sql(db), params)
        books = client.execute(books_of_day_sql(db), params)
    finally:
        client.disconnect()
    report: dict[tuple[str, str], BookCompleteness] = {}
    for ex, sym, instrument in books:
        report[(ex, sym)] = BookCompleteness(ex, sym, instrument, day_ms)
    for ex, sym, instrument, kind, gaps, out_of_sync_ms, still_open in kinds:
        book = report.setdefault((ex, sym), BookCompleteness(ex, sym, instrument, day_ms))
        book.gaps += gaps
        book.out_of_sync_ms += out_of_sync_ms
        book.still_open += still_open
        book.by_kind[kind] = {"gaps": gaps, "ms": out_of_sync_ms}
    return [report[key] for key in sorted(report)]


def gaps_of_day(
    config: ClickHouseConfig,
    day: date,
    exchange: str | None = None,
    symbol: str | None = None,
    *,
    database: str | None = None,
) -> list[dict[str, Any]]:
    """The intervals behind the report, one dict per ``gaps`` row."""
    db = database or config.database
    client = connect(config)
    try:
        rows, columns = client.execute(
            gaps_sql(db), _params(day, exchange, symbol, None), with_column_types=True
        )
    finally:
        client.disconnect()
    names = [name for name, _ in columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def format_report(day: date, books: list[BookCompleteness]) -> list[str]:
    lines = [
        f"completeness of {day} (UTC)",
        f"{'exchange':<10} {'symbol':<12} {'covered':>9} {'out of sync':>12} {'gaps':>5}  reasons",
    ]
    for b in books:
        reasons = ", ".join(
            f"{kind} {v['gaps']} ({v['ms'] / 1000:.1f} s)" for kind, v in sorted(b.by_kind.items())
        )
        if b.still_open:
            reasons += f"; {b.still_open} still open"
        lines.append(
            f"{b.exchange:<10} {b.symbol:<12} {b.covered:>9.4%} "
            f"{b.out_of_sync_ms / 1000:>10.1f} s {b.gaps:>5}  {reasons or '-'}"
        )
    if not books:
        lines.append("no book has rows that day")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickflow completeness",
        description="Per book, the time of a UTC day it was not in sync (gaps, checksum "
        "mismatches, lost connections, resyncs), the intervals by reason and the share of "
        "the day covered, from the gaps table.",
        epilog="docs/queries.md, 'Gaps and completeness': the table and the query",
    )
    p.add_argument("--day", required=True, type=parse_day, help="UTC day, YYYY-MM-DD")
    p.add_argument("--exchange", help="only this exchange's books")
    p.add_argument("--symbol", help="only this symbol (the exchange's own spelling)")
    p.add_argument("--gaps", action="store_true", help="also list every interval")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument(
        "--database", help="ClickHouse database (default: clickhouse.database, `tickflow`)"
    )
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    try:
        config = load_settings().clickhouse
        books = completeness(config, args.day, args.exchange, args.symbol, database=args.database)
        gaps = (
            gaps_of_day(config, args.day, args.exchange, args.symbol, database=args.database)
            if args.gaps
            else []
        )
    except ConfigError as exc:
        print(f"tickflow completeness: configuration: {exc}", file=sys.stderr)
        return 2
    except (ClickHouseError, OSError) as exc:
        text = " ".join(str(exc).split("Stack trace:")[0].split())  # the server's, not its trace
        print(f"tickflow completeness: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    if args.json:
        out = [{**asdict(b), "covered": b.covered} for b in books]
        print(json.dumps({"day": args.day.isoformat(), "books": out, "gaps": gaps}, default=str))
        return 0
    for line in format_report(args.day, books):
        print(line)
    if gaps:
        print()
        for g in gaps:
            end = _ms(g["end_ms"]) if g["closed"] else "open"
            print(
                f"{g['exchange']:<10} {g['symbol']:<12} {_ms(g['start_ms'])} - {end:<12} "
                f"{g['kind']:<14} {g['reason']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
