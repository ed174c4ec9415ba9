"""One exchange's full order book as of a time, rebuilt exactly from the raw frames through the
compiled core (``tickflow_native.NativePartition``), never approximated.

    tickflow book-at --exchange binance --symbol BTCUSDT --time 2026-12-05T12:03:07.250Z
    tickflow book-at --exchange kraken --symbol BTC/USD --time 1796472187250 --json

"As of T" is the exchange's time, what a user means by "the book at 12:03:07.250": the book
after every update of its sequence up to, not including, its first update stamped later than
T. The raw topic is in receive order, which for one book is its sequence order, so the core
stops applying the book at its first book event stamped later than T, and applies none after
it, even one stamped <= T (it follows the later one in the sequence). That event, applied to
a copy of the book, must follow it: if it does not, an update at or before T is missing and
the book reads as not in sync (``jobs/native/src/as_of.rs``).

Where to start: a book is a function of its last snapshot and the updates after it, so the
core is fed from the book's last sync point before T. The ``gaps`` table (ClickHouse, written
by the live job and the backfill) holds every interval in which the book was not in sync,
each ended by a resync from a snapshot (Binance's REST snapshot, Coinbase's and Kraken's WS
snapshot): the latest interval that began at or before T is where the book last resynced,
and its start (less a margin for the partition's records being in producer order, not quite
in time order) is read from, so the core also sees the updates a Binance resync bridges from
its buffer. Without such a row (nothing stored, ClickHouse unreachable) or when it is more
than ``replay.book_at_max_scan_ms`` before T, the scan is bounded: it starts that long
before T, and a book with no snapshot in it reads as not in sync, saying so. Only the book's
instrument is processed (``only=``), without writing rows; reading stops at the book's first
event after T, or ``replay.book_at_lookahead_ms`` (receive time) after T: a book quiet that
long after T stands as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from connectors.producer import partition_of
from jobs.archive.layout import ArchiveError
from jobs.backfill import core_rules
from jobs.core_schemas import learning
from jobs.frames import FrameSource, frame_source
from schemas.writers import registry_writer_schemas
from tickflow.config import ClickHouseConfig, Settings, load_settings
from tickflow.instruments import UnknownInstrument, exchange_symbols, nbbo_group, resolve_symbol

if TYPE_CHECKING:
    from tickflow_native import BookState

# records of a partition come in producer order: a record may carry an earlier time than one
# before it by up to the producers' batching delay; reading from this much earlier covers it
ORDER_MARGIN_MS = 1_000
END_OF_TIME_MS = 2**62
MAX_TIME_MS = 4_294_967_295_999  # ClickHouse's DateTime ends in 2106, and so do the tables


class NoFrames(LookupError):
    """The raw frames hold nothing of the book at that time (none of its frames, or frames
    that do not reach that far yet)."""


@dataclass(frozen=True)
class Interval:
    """A not-in-sync interval of the book (receive time; end None: still open)."""

    start_ms: int
    end_ms: int | None
    kind: str
    reason: str


@dataclass(frozen=True)
class BookAt:
    """A book as of ``at_ms`` (exchange time). LIVE: in sync at that time, every level the
    core keeps (``book.max_levels`` a side), best first, exact decimal strings. RESYNCING: not
    in sync then (or not known exactly), no levels, ``reason`` and ``gap`` saying why."""

    exchange: str
    symbol: str
    instrument: str
    at_ms: int
    status: str
    reason: str
    version: int  # the book's version (as in Redis and top_of_book)
    seq: int  # the last update id applied (-1: none; Kraken has none: 0)
    event_time_ms: int  # the exchange time of the last book event applied (0: none)
    receive_time_ns: int  # when we received it
    synced_ms: int  # receive time of the snapshot the book was last rebuilt from
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    gap: Interval | None  # the interval the book was in at the time, when not LIVE
    next_event_time_ms: int | None  # the book's first event after the time (None: quiet)
    partition: int
    start_offset: int
    end_offset: int
    frames: int  # records read
    scan_from_ms: int  # receive time the read started at
    sync_point: str  # "gaps": located from the gaps table; "bounded": the bounded scan

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bids"] = [{"price": p, "size": s} for p, s in self.bids]
        data["asks"] = [{"price": p, "size": s} for p, s in self.asks]
        return data


def parse_time(text: str) -> int:
    """Epoch ms from ``1796472187250`` or ISO 8601 (``2026-12-05T12:03:07.250Z``; without an
    offset: UTC); ValueError for anything else."""
    text = text.strip()
    if text.isdigit():
        at_ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: epoch ms or ISO 8601 (2026-12-05T12:03:07.250Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        at_ms = round(moment.timestamp() * 1000)
    if not 0 < at_ms <= MAX_TIME_MS:
        raise ValueError(f"{text!r} is outside 1970-01-01 .. 2106-02-07")
    return at_ms


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def last_interval(
    config: ClickHouseConfig, exchange: str, symbol: str, at_ms: int
) -> Interval | None:
    """The book's latest not-in-sync interval that began at or before ``at_ms`` (FINAL: the
    closed row of a closed one); None when none is stored or ClickHouse cannot tell."""
    from clickhouse_driver import errors

    from jobs.sinks.clickhouse import connect

    sql = f"""
SELECT start_ms, end_ms, closed, kind, reason
FROM {config.database}.gaps FINAL
WHERE exchange = %(exchange)s AND symbol = %(symbol)s
  AND date <= toDate(toDateTime(intDiv(%(at_ms)s, 1000), 'UTC'))
  AND start_ms <= %(at_ms)s
ORDER BY start_ms DESC, start_version DESC
LIMIT 1"""
    params = {"exchange": exchange, "symbol": symbol, "at_ms": at_ms}
    try:
        client = connect(config)
    except (errors.Error, OSError, EOFError):
        return None
    try:
        rows = client.execute(sql, params)
    except (errors.Error, OSError, EOFError):
        return None  # no such table yet, or no answer: the bounded scan
    finally:
        client.disconnect()
    if not rows:
        return None
    start_ms, end_ms, closed, kind, reason = rows[0]
    return Interval(int(start_ms), int(end_ms) if closed else None, kind, reason)


def _core(settings: Settings, group: str) -> Any:
    try:
        import tickflow_native
    except ImportError as exc:
        raise RuntimeError(
            "the compiled core is not installed: `make venv` builds it (jobs/native, needs cargo)"
        ) from exc
    return tickflow_native.NativePartition(
        **core_rules(settings.book, settings.analytics),
        out_of_orderness_ms=settings.flink.watermark_out_of_orderness_ms,
        only=[group],
        others=[],
        write_rows=False,
    )


def _rebuild(
    settings: Settings,
    source: FrameSource,
    group: str,
    cutoff: tuple[str, str, int],
    offsets: tuple[int, int, int],
) -> tuple[BookState | None, bool, int]:
    """The book's state after the records at ``offsets`` (partition, start, end) with its
    ``cutoff`` (exchange, symbol, time), whether the cutoff was met, and the records read."""
    exchange, symbol, at_ms = cutoff
    partition, start, end = offsets
    core = _core(settings, group)
    writers = registry_writer_schemas(settings.registry)
    try:
        core.hold_book(exchange, symbol, at_ms)
        frames = 0
        batches = source.read(partition, start, end)
        try:
            for batch in batches:
                learning(writers, partial(core.feed_batch, batch.values, batch.timestamps))
                core.take_dead_letters()  # refused as the live job refused them
                frames += len(batch.values)
                if core.halted:
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        return core.book(exchange, symbol), core.halted, frames
    finally:
        # the core may be used by one thread only (the API runs this in a worker thread): it
        # goes here, not with a traceback that another thread drops
        del core


Locate = Callable[[str, str, int], Interval | None]


def book_at(
    settings: Settings,
    source: FrameSource,
    exchange: str,
    symbol: str,
    at_ms: int,
    locate: Locate | None = None,
) -> BookAt:
    """``exchange``'s book of ``symbol`` (its own symbol or the canonical instrument) as of
    ``at_ms`` (exchange time, epoch ms). ``locate(exchange, symbol, at_ms)`` gives the book's
    latest not-in-sync interval begun by then (default: ``last_interval`` in ClickHouse).
    UnknownInstrument for a book that is not configured, NoFrames when the raw frames hold
    nothing of it at that time."""
    symbols = exchange_symbols(settings.exchanges, exchange)
    symbol = resolve_symbol(symbols, symbol)
    instrument = symbols[symbol]
    group = nbbo_group(instrument, settings.analytics.quote_equivalents)
    partitions = source.partitions()
    partition = partitions[partition_of(group, len(partitions))]
    replay = settings.replay
    if locate is None:

        def locate(exchange: str, symbol: str, at_ms: int) -> Interval | None:
            return last_interval(settings.clickhouse, exchange, symbol, at_ms)

    interval = locate(exchange, symbol, at_ms)
    bound_ms = max(at_ms - replay.book_at_max_scan_ms, 0)
    if interval is not None and interval.start_ms - ORDER_MARGIN_MS >= bound_ms:
        scan_from_ms, sync_point = interval.start_ms - ORDER_MARGIN_MS, "gaps"
    else:
        scan_from_ms, sync_point = bound_ms, "bounded"
    to_ms = at_ms + replay.book_at_lookahead_ms
    start, end = source.offset_range(partition, scan_from_ms, to_ms)
    state, halted, frames = _rebuild(
        settings, source, group, (exchange, symbol, at_ms), (partition, start, end)
    )
    where = f"{exchange}:{symbol} (partition {partition})"
    if state is None:
        raise NoFrames(
            f"no frames of {where} received between {iso(scan_from_ms)} and {iso(to_ms)}"
        )
    if not halted:
        later, end_of_data = source.offset_range(partition, to_ms, END_OF_TIME_MS)
        if later >= end_of_data:
            raise NoFrames(
                f"the raw frames of {where} do not reach {iso(to_ms)} yet: the book as of "
                f"{iso(at_ms)} is known once the frames received up to "
                f"{replay.book_at_lookahead_ms} ms after it are stored"
            )
    status, reason = state["status"], state["reason"]
    halt = state["halt"]
    gap: Interval | None = None
    if status != "LIVE":
        if interval is not None and (interval.end_ms is None or interval.end_ms > at_ms):
            gap = interval  # the stored interval the time falls in
        elif state["gap"] is not None:
            core_gap = state["gap"]
            gap = Interval(core_gap["start_ms"], None, core_gap["kind"], core_gap["reason"])
        elif halt is not None:
            # in sync until the update after the time showed one missing: the interval that
            # update began, if stored
            after = locate(exchange, symbol, halt["receive_time_ns"] // 1_000_000)
            gap = after if after != interval else None
        if sync_point == "bounded" and state["synced_ms"] == 0:
            known = f"; its last resync began {iso(interval.start_ms)}" if interval else ""
            reason = (
                f"no snapshot of the book in the {replay.book_at_max_scan_ms / 1000:.0f} s of "
                f"frames read before the time (book_at_max_scan_ms){known}"
            )
    return BookAt(
        exchange=exchange,
        symbol=symbol,
        instrument=instrument,
        at_ms=at_ms,
        status=status,
        reason=reason,
        version=state["version"],
        seq=state["seq"],
        event_time_ms=state["event_time_ms"],
        receive_time_ns=state["receive_time_ns"],
        synced_ms=state["synced_ms"],
        bids=list(state["bids"]),
        asks=list(state["asks"]),
        gap=gap,
        next_event_time_ms=halt["event_time_ms"] if halt else None,
        partition=partition,
        start_offset=start,
        end_offset=end,
        frames=frames,
        scan_from_ms=scan_from_ms,
        sync_point=sync_point,
    )


# --- the command -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickflow book-at",
        description="One exchange's full order book as of a time (exchange time), rebuilt "
        "exactly from the raw frames through the compiled core.",
    )
    p.add_argument("--exchange", required=True, help="binance, coinbase, kraken")
    p.add_argument("--symbol", required=True, help="the exchange's symbol or the instrument")
    p.add_argument("--time", required=True, help="ISO 8601 (2026-12-05T12:03:07.250Z) or ms")
    p.add_argument("--source", choices=("kafka", "archive"), default="kafka",
                   help="where the raw frames are read (default: kafka)")  # fmt: skip
    p.add_argument("--levels", type=int, default=20, help="levels a side printed (0: all)")
    p.add_argument("--json", action="store_true", help="the whole book as JSON")
    return p


def render(book: BookAt, levels: int) -> str:
    head = (
        f"{book.exchange} {book.symbol} ({book.instrument}) as of {iso(book.at_ms)}: {book.status}"
    )
    lines = [head]
    if book.status != "LIVE":
        lines.append(f"  not in sync: {book.reason}")
        if book.gap is not None:
            end = iso(book.gap.end_ms) if book.gap.end_ms is not None else "open"
            lines.append(f"  interval {iso(book.gap.start_ms)} - {end} ({book.gap.kind})")
        return "\n".join(lines)
    lines.append(
        f"  version {book.version}, update {book.seq}, last event {iso(book.event_time_ms)}, "
        f"{len(book.bids)} bids / {len(book.asks)} asks"
    )
    shown = levels or max(len(book.bids), len(book.asks))
    lines.append(f"  {'bid size':>20} {'bid':>16} | {'ask':<16} {'ask size':<20}")
    for i in range(min(shown, max(len(book.bids), len(book.asks)))):
        bid = book.bids[i] if i < len(book.bids) else ("", "")
        ask = book.asks[i] if i < len(book.asks) else ("", "")
        lines.append(f"  {bid[1]:>20} {bid[0]:>16} | {ask[0]:<16} {ask[1]:<20}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        at_ms = parse_time(args.time)
    except ValueError as exc:
        print(f"tickflow book-at: {exc}", file=sys.stderr)
        return 2
    settings = load_settings()
    started = time.perf_counter()
    try:
        source = frame_source(settings, args.source)
    except ValueError as exc:
        print(f"tickflow book-at: {exc}", file=sys.stderr)
        return 2
    try:
        book = book_at(settings, source, args.exchange, args.symbol, at_ms)
    except UnknownInstrument as exc:
        print(f"tickflow book-at: {exc}", file=sys.stderr)
        return 2
    except (NoFrames, ArchiveError) as exc:
        print(f"tickflow book-at: {exc}", file=sys.stderr)
        return 1
    finally:
        close = getattr(source, "close", None)  # a source's own connections, if it keeps any
        if close is not None:
            close()
    if args.json:
        print(json.dumps(book.as_json(), indent=1))
    else:
        print(render(book, args.levels))
        took_ms = (time.perf_counter() - started) * 1000
        print(
            f"  ({book.frames} frames of partition {book.partition} read from "
            f"{iso(book.scan_from_ms)}, sync point: {book.sync_point}, {took_ms:.0f} ms)"
        )
    return 0
