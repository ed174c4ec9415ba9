"""``tickflow core FILE [FILE...]``: connector recordings (``tickflow connector <exchange>
--record FILE``) through the live job's compiled core, in one process, without servers (no
Kafka, Redis, ClickHouse or Flink): the final books, the NBBO, matched trades and bars the job
would have published for them (``jobs.offline.run_recordings``).

    tickflow core binance.tsv coinbase.tsv kraken.tsv            summary, books, last NBBO
    tickflow core session.tsv --exchange kraken --show trades,bars --limit 20
    tickflow core *.tsv --json --show all > out.jsonl             JSON lines, every record

Each FILE's exchange is told from its frames (the one connector that takes them) unless
``--exchange`` names it: once for every FILE, or once per FILE in order. Several files are
merged in receive-time order, as the raw topic would hold them, so instruments traded on
several exchanges get a cross-exchange NBBO. The configuration is the usual one
(``TICKFLOW_CONFIG``): the connectors take only the symbols it lists, so use the configuration
the recording was made with (frames of other symbols become dead letters). At the end of
input the core closes the bar windows its events reached: each instrument's last, unfinished
window has no bar.

``--json`` writes one JSON object per line: first ``{"kind": "summary", ...}`` (envelopes per
exchange and channel, ClickHouse rows per table, dead letters, resync requests), then one per
record of each ``--show`` section: ``book`` (the final Redis book: status, version, top-N bids
and asks), ``nbbo`` (every NBBO change, the result topic's records), ``matched_trade``,
``bar``, ``dead_letter``. The readable output lists the last ``--limit`` records of a section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from jobs.offline import (
    BookTop,
    CoreResult,
    Recording,
    RecordingError,
    recording_exchange,
    run_recordings,
)
from tickflow.config import ConfigError, Settings, load_settings

EXCHANGES = ("binance", "coinbase", "kraken")
SECTIONS = ("books", "nbbo", "trades", "bars", "dead_letters")
DEFAULT_SECTIONS = "books,nbbo"


def sections(text: str) -> list[str]:
    names = list(SECTIONS) if text == "all" else [s.strip() for s in text.split(",") if s]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown)} (choose from {', '.join(SECTIONS)}, all)"
        )
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickflow core",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="connector recordings")
    p.add_argument(
        "--exchange",
        action="append",
        choices=EXCHANGES,
        help="the exchange of every FILE (given once) or of each FILE in order (once per "
        "FILE); default: told from each file's frames",
    )
    p.add_argument(
        "--show",
        type=sections,
        default=sections(DEFAULT_SECTIONS),
        help=f"sections to print: {','.join(SECTIONS)} or all (default {DEFAULT_SECTIONS})",
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")
    p.add_argument(
        "--limit", type=int, default=10, help="readable output: last records per list (10)"
    )
    return p


def recordings(
    files: Sequence[Path], exchanges: Sequence[str] | None, settings: Settings
) -> list[Recording]:
    if not exchanges:
        return [Recording(path, recording_exchange(path, settings)) for path in files]
    if len(exchanges) == 1:
        return [Recording(path, exchanges[0]) for path in files]
    return [Recording(path, ex) for path, ex in zip(files, exchanges, strict=True)]


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.exchange and len(args.exchange) not in (1, len(args.files)):
        parser().error(
            f"--exchange given {len(args.exchange)} times for {len(args.files)} files: "
            "once for all, or once per file"
        )
    try:
        settings = load_settings()
        runs = recordings(args.files, args.exchange, settings)
        # unroutable frames are reported as dead letters, not logged one by one
        logging.getLogger("connectors").setLevel(logging.ERROR)
        result = run_recordings(runs, settings)
    except (RecordingError, ConfigError) as exc:
        print(f"tickflow core: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(sys.stdout, runs, result, args.show)
    else:
        write_text(sys.stdout, runs, result, args.show, args.limit)
    return 0


# --- JSON lines -----------------------------------------------------------------------------


def summary(runs: Sequence[Recording], result: CoreResult) -> dict[str, Any]:
    return {
        "recordings": [{"path": str(r.path), "exchange": r.exchange} for r in runs],
        "envelopes": dict(sorted(result.envelopes.items())),
        "table_rows": result.table_rows,
        "books": len(result.books),
        "books_live": sum(b.status == "LIVE" for b in result.books),
        "nbbo_changes": len(result.nbbo),
        "matched_trades": len(result.matched_trades),
        "bars": len(result.bars),
        "dead_letters": len(result.dead_letters),
        "resync_requests": len(result.resync_requests),
    }


def json_records(result: CoreResult, section: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, record) of one section."""
    if section == "books":
        return [("book", dataclasses.asdict(book)) for book in result.books]
    kinds: dict[str, tuple[str, list[dict[str, Any]]]] = {
        "nbbo": ("nbbo", result.nbbo),
        "trades": ("matched_trade", result.matched_trades),
        "bars": ("bar", result.bars),
        "dead_letters": ("dead_letter", result.dead_letters),
    }
    kind, records = kinds[section]
    return [(kind, record) for record in records]


def write_json(
    out: TextIO, runs: Sequence[Recording], result: CoreResult, shown: Sequence[str]
) -> None:
    out.write(json.dumps({"kind": "summary", **summary(runs, result)}) + "\n")
    for section in shown:
        for kind, record in json_records(result, section):
            out.write(json.dumps({"kind": kind, **record}) + "\n")


# --- readable -------------------------------------------------------------------------------


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def level(levels: list[tuple[str, str]]) -> str:
    return f"{levels[0][0]} x {levels[0][1]}" if levels else "-"


def table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(header)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if not rows:
        out.write("  none\n")
        return
    for row in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        out.write(f"  {line.rstrip()}\n")


def book_row(book: BookTop) -> list[object]:
    return [
        book.exchange, book.symbol, book.instrument, book.status, book.reason or "", book.seq,
        level(book.bids), level(book.asks), utc(book.event_time_ms),
    ]


def last(records: Sequence[dict[str, Any]], limit: int) -> Sequence[dict[str, Any]]:
    return records[-limit:] if limit > 0 else []


def write_text(
    out: TextIO,
    runs: Sequence[Recording],
    result: CoreResult,
    shown: Sequence[str],
    limit: int,
) -> None:
    info = summary(runs, result)
    for run in runs:
        out.write(f"{run.path}: {run.exchange}\n")
    envelopes = ", ".join(f"{name} {count}" for name, count in info["envelopes"].items())
    out.write(f"envelopes: {envelopes or 'none'}\n")
    rows = ", ".join(f"{name} {count}" for name, count in info["table_rows"].items())
    out.write(f"ClickHouse rows: {rows or 'none'}\n")
    out.write(
        f"books {info['books']} ({info['books_live']} LIVE), NBBO changes "
        f"{info['nbbo_changes']}, matched trades {info['matched_trades']}, bars {info['bars']}, "
        f"dead letters {info['dead_letters']}, resync requests {info['resync_requests']}\n"
    )
    writers: dict[str, Callable[[], None]] = {
        "books": lambda: _books(out, result),
        "nbbo": lambda: _nbbo(out, result),
        "trades": lambda: _trades(out, result, limit),
        "bars": lambda: _bars(out, result, limit),
        "dead_letters": lambda: _dead_letters(out, result, limit),
    }
    for section in shown:
        out.write("\n")
        writers[section]()


def _books(out: TextIO, result: CoreResult) -> None:
    out.write("books (the final Redis book; --json for every level)\n")
    header = ["exchange", "symbol", "instrument", "status", "reason", "seq", "best bid",
              "best ask", "event time (UTC)"]
    table(out, header, [book_row(book) for book in result.books])


def _nbbo(out: TextIO, result: CoreResult) -> None:
    out.write(f"NBBO ({len(result.nbbo)} changes; the last of each instrument)\n")
    rows = [
        [
            n["instrument"], n["quote"], n["bid_price"], n["bid_size"], ",".join(n["bid_venues"]),
            n["ask_price"], n["ask_size"], ",".join(n["ask_venues"]),
            "crossed" if n["crossed"] else "locked" if n["locked"] else "",
            " ".join(n["venues"]), utc(n["event_time_ms"]),
        ]
        for _, n in sorted(result.last_nbbo.items())
    ]
    header = ["instrument", "quote", "bid", "size", "venues", "ask", "size", "venues", "",
              "books", "event time (UTC)"]
    table(out, header, rows)


def _trades(out: TextIO, result: CoreResult, limit: int) -> None:
    trades = result.matched_trades
    out.write(f"matched trades ({len(trades)}; the last {min(limit, len(trades))})\n")
    rows = [
        [
            utc(t["trade_time_ms"]), t["exchange"], t["symbol"], t["taker_side"], t["price"],
            t["size"], t["book_status"], t["bid_price"], t["ask_price"], t["touch"],
            t["slippage_mid_bps"], t["nbbo_bid_price"], t["nbbo_ask_price"],
            "yes" if t["trade_through"] else "",
        ]
        for t in last(trades, limit)
    ]
    header = ["trade time (UTC)", "exchange", "symbol", "side", "price", "size", "book", "bid",
              "ask", "touch", "slip bps", "NBBO bid", "NBBO ask", "through"]
    table(out, header, rows)


def _bars(out: TextIO, result: CoreResult, limit: int) -> None:
    bars = result.bars
    out.write(f"bars ({len(bars)}; the last {min(limit, len(bars))})\n")
    rows = [
        [
            utc(b["window_start_ms"]), b["interval_ms"], b["instrument"], b["venue"], b["open"],
            b["high"], b["low"], b["close"], b["volume"], b["trade_count"],
        ]
        for b in last(bars, limit)
    ]
    header = ["window start (UTC)", "ms", "instrument", "venue", "open", "high", "low", "close",
              "volume", "trades"]
    table(out, header, rows)


def _dead_letters(out: TextIO, result: CoreResult, limit: int) -> None:
    letters = result.dead_letters
    out.write(f"dead letters ({len(letters)}; the last {min(limit, len(letters))})\n")
    rows = [[d.get("stage"), d.get("recording", ""), d.get("error")] for d in last(letters, limit)]
    table(out, ["stage", "recording line", "error"], rows)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
