"""The live job's core without servers: raw-topic records (Avro envelopes with their Kafka
timestamps) through the compiled core (``jobs/native``) as the streaming job drives it, with
bundles per instrument, a bounded-out-of-orderness watermark, event-time timers and the end
of input. For tests on recorded frames, research and debugging: what the job would write to
ClickHouse, Kafka and Redis for an input, in one process, in seconds.

    run = CoreRun(load_settings())
    run.feed(records)          # (value, timestamp_ms) pairs in offset order
    run.finish()
    run.records["nbbo"]        # the JSON records the result topic would get
    run.tables["trades"]       # the ClickHouse RowBinary rows (bytes) and their count
    run.rows("trades")         # the same rows as values, one dict per row
    run.redis                  # the last guarded write's ARGV per Redis key

Connector recordings (``tickflow connector <exchange> --record FILE``) go through it with
``run_recordings``: each file's lines are handled by its exchange's connector code on an
offline connection (the exact envelopes it produced: dead letters for unroutable frames,
Binance's recorded REST depth responses as its snapshot envelopes, Coinbase's sequence
checks), the files merged in receive-time order, each envelope with its Kafka timestamp (the
receive time in ms). ``tickflow core FILE...`` (``jobs/core_cli.py``) prints the result.

    result = run_recordings([Recording(Path("binance.tsv"), "binance"),
                             Recording(path, recording_exchange(path, settings))],
                            settings)
    result.books               # each book's final Redis state: status, version, top-N levels
    result.nbbo, result.matched_trades, result.bars     # the result topics' records (dicts)
    result.dead_letters, result.table_rows              # and ClickHouse rows per table

A recording does not mark reconnects: a file is read as one connection (a Coinbase
``sequence_num`` back at 0 starts a new one), so the ``sync_lost`` envelopes a lost Binance or
Kraken connection produced are missing; the new connection's recorded snapshots rebuild the
books as they did live (Binance: after the gap, which the core finds, marks the book).
Use the configuration the recording was made with: the connectors take only its symbols.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.base import Connection, WsConnector
from connectors.recorder import iter_recording
from jobs.core_schemas import learning
from jobs.operators import native_stream
from jobs.sinks.clickhouse import decode_rows
from schemas.bundles import (
    CLICKHOUSE_ROWS,
    frame_bundle,
    sink_blob_sections,
    split_records,
)
from schemas.codec import EnvelopeError, RawEnvelope, encode_envelope, envelope_instrument
from schemas.writers import registry_writer_schemas
from tickflow.config import Settings
from tickflow.instruments import nbbo_group

NO_WATERMARK = -(2**63)
END_OF_INPUT = 2**63 - 1


class CoreRun:
    """One operator instance's core fed as the job feeds it (parallelism 1)."""

    def __init__(
        self, settings: Settings, bundle_frames: int | None = None, keep_rows: bool = True
    ) -> None:
        self.settings = settings
        self.keep_rows = keep_rows  # False: ClickHouse rows are counted, their bytes dropped
        self.core = native_stream(settings.book, settings.analytics, settings.redis.key_prefix)
        self.writers = registry_writer_schemas(settings.registry)
        self.bundle_frames = bundle_frames or settings.flink.bundle_max_frames
        self.lag_ms = settings.flink.watermark_out_of_orderness_ms + 1
        self.equivalents = settings.analytics.quote_equivalents
        self.watermark_ms = NO_WATERMARK
        self._latest_ms = NO_WATERMARK
        self._pending: dict[str, list[tuple[bytes, int]]] = {}
        self._timers: dict[str, int] = {}
        self.instruments: set[str] = set()
        self._tables: dict[str, tuple[bytearray, list[int]]] = {}
        self.records: dict[str, list[str]] = {}
        self.redis: dict[str, list[str]] = {}
        self.now_ms = 0

    def key_of(self, value: bytes) -> str:
        try:
            return nbbo_group(envelope_instrument(value), self.equivalents)
        except (EnvelopeError, UnicodeDecodeError):
            return ""

    def feed(self, records: Iterable[tuple[bytes, int]]) -> None:
        for value, timestamp_ms in records:
            key = self.key_of(value)
            bundle = self._pending.setdefault(key, [])
            bundle.append((value, timestamp_ms))
            self.now_ms = max(self.now_ms, timestamp_ms)
            if len(bundle) >= self.bundle_frames:
                self._send(key)
            if timestamp_ms > self._latest_ms:
                self._latest_ms = timestamp_ms
                watermark = timestamp_ms - self.lag_ms
                if watermark > self.watermark_ms:
                    # the bundler sends what it holds before a watermark passes it
                    self._send_all()
                    self.watermark_ms = watermark
                    self._fire_timers()

    def _send_all(self, flags: int = 0) -> None:
        for key in list(self._pending):
            self._send(key, flags)

    def _send(self, key: str, flags: int = 0) -> None:
        frames = self._pending.pop(key, [])
        if not frames and not flags:
            return
        self.instruments.add(key)
        bundle = frame_bundle(frames, flags)
        persist = learning(
            self.writers,
            lambda: self.core.process_bundle(key, bundle, self.watermark_ms, self.now_ms),
        )
        if persist:
            self.snapshot(key)
        self._schedule(key)
        self._collect()

    def _schedule(self, key: str) -> None:
        due = self.core.next_event_time_ms(key)
        if due is not None and due < self._timers.get(key, END_OF_INPUT):
            self._timers[key] = due

    def _fire_timers(self) -> None:
        for key, due in sorted(self._timers.items(), key=lambda item: (item[1], item[0])):
            if due <= self.watermark_ms:
                del self._timers[key]
                self.core.advance(key, self.watermark_ms)
                self._schedule(key)
        self._collect()

    def housekeeping(self, now_ms: int) -> None:
        """The processing-time tick of every instrument at ``now_ms``."""
        self._send_all()
        for key in sorted(self.instruments):
            self.core.housekeeping(key, now_ms)
        self._collect()

    def snapshot(self, key: str) -> bytes | None:
        """The instrument's core state as the job persists it."""
        state: bytes | None = self.core.snapshot(key)
        return state

    def finish(self) -> None:
        """End of input: Flink's last watermark fires every instrument's timer."""
        self._send_all()
        self.watermark_ms = END_OF_INPUT
        for key in sorted(self._timers):
            self.core.advance(key, END_OF_INPUT)
        self._timers.clear()
        self._collect()

    @property
    def tables(self) -> dict[str, tuple[bytes, int]]:
        """Per ClickHouse table: its RowBinary rows so far and how many."""
        return {name: (bytes(data), rows[0]) for name, (data, rows) in self._tables.items()}

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of a ClickHouse table so far, as values by column."""
        data, _ = self._tables.get(table, (bytearray(), [0]))
        return decode_rows(table, bytes(data))

    def _collect(self) -> None:
        blob = self.core.take_blob()
        if blob is not None:
            for kind, name, count, payload in sink_blob_sections(blob):
                if kind == CLICKHOUSE_ROWS:
                    data, rows = self._tables.setdefault(name, (bytearray(), [0]))
                    if self.keep_rows:
                        data += payload
                    rows[0] += count
                else:
                    self.records.setdefault(name, []).extend(split_records(payload))
        for _, keys, args in self.core.take_redis(0):
            self.redis[keys[0]] = [a.decode() for a in args]


# --- connector recordings through the core ---------------------------------------------------


class RecordingError(ValueError):
    """A recording that cannot be read as its exchange's connector wrote it (file and line)."""


@dataclass(frozen=True, slots=True)
class Recording:
    """A connector's ``--record`` file and the exchange whose connector wrote it."""

    path: Path
    exchange: str  # binance | coinbase | kraken


@dataclass(frozen=True, slots=True)
class BookTop:
    """A book's last Redis write: what ``<p>:book:<exchange>:<symbol>`` ends up holding."""

    exchange: str
    symbol: str  # the exchange's own symbol
    instrument: str
    status: str  # LIVE | RESYNCING | STALE
    reason: str  # why not LIVE
    seq: int  # last applied exchange update id
    version: int
    bids: list[tuple[str, str]]  # (price, size), exchange text, best first, top N; [] unless LIVE
    asks: list[tuple[str, str]]
    event_time_ms: int
    receive_time_ns: int


@dataclass
class CoreResult:
    """What the live job would have written for a set of recordings."""

    envelopes: Counter[str] = field(default_factory=Counter)  # "exchange channel" -> count
    books: list[BookTop] = field(default_factory=list)  # by exchange, symbol
    nbbo: list[dict[str, Any]] = field(default_factory=list)  # every NBBO change, in order
    matched_trades: list[dict[str, Any]] = field(default_factory=list)
    bars: list[dict[str, Any]] = field(default_factory=list)
    # unroutable frames (stage "connector", with "recording": "file:line") and unparsable
    # envelopes (stage "job")
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    resync_requests: list[dict[str, Any]] = field(default_factory=list)
    table_rows: dict[str, int] = field(default_factory=dict)  # ClickHouse rows per table

    @property
    def last_nbbo(self) -> dict[str, dict[str, Any]]:
        """The last NBBO of each instrument (NBBO group)."""
        return {record["instrument"]: record for record in self.nbbo}


class EnvelopeCollector:
    """A connector sink (``connectors.base.Sink``) that hands envelopes over as they come."""

    def __init__(self) -> None:
        self.envelopes: list[RawEnvelope] = []
        self.dead_letters: list[str] = []

    def send(self, envelope: RawEnvelope) -> None:
        self.envelopes.append(envelope)

    def dead_letter(self, record: str) -> None:
        self.dead_letters.append(record)


def _connector(exchange: str, settings: Settings, sink: EnvelopeCollector) -> WsConnector:
    from connectors.__main__ import CONNECTORS  # the connectors' registry (imports Kafka's client)

    if exchange not in CONNECTORS:
        raise ValueError(f"unknown exchange {exchange!r} (one of {', '.join(CONNECTORS)})")
    return CONNECTORS[exchange](settings, sink)


def recorded_envelopes(
    recording: Recording, settings: Settings, dead_letters: list[dict[str, Any]]
) -> Iterator[RawEnvelope]:
    """The raw envelopes the exchange's connector produced while recording, in its order, by
    the connector's own code (``WsConnector.handle_recorded``) on one offline connection;
    frames it could not route are added to ``dead_letters``. Read lazily."""
    sink = EnvelopeCollector()
    connector = _connector(recording.exchange, settings, sink)
    conn = connector.offline_connection()
    try:
        for number, receive_time_ns, frame in iter_recording(recording.path):
            try:
                conn = connector.handle_recorded(conn, frame, receive_time_ns)
            except ValueError as exc:
                raise RecordingError(f"{recording.path}:{number}: {exc}") from exc
            where = f"{recording.path}:{number}"
            dead_letters += ({**json.loads(r), "recording": where} for r in sink.dead_letters)
            sink.dead_letters.clear()
            yield from sink.envelopes
            sink.envelopes.clear()
    except OSError as exc:
        raise RecordingError(f"{recording.path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        if isinstance(exc, RecordingError):
            raise
        raise RecordingError(str(exc)) from exc  # iter_recording's "file:line: ..."


INFER_LINES = 1000  # lines read at most to tell a recording's exchange


def recording_exchange(path: Path, settings: Settings) -> str:
    """The exchange whose connector wrote a recording: the only one whose connector (with this
    configuration) takes the first line that exactly one of them takes."""
    from connectors.__main__ import CONNECTORS

    candidates: dict[str, tuple[WsConnector, EnvelopeCollector, Connection]] = {}
    for exchange in CONNECTORS:
        sink = EnvelopeCollector()
        connector = _connector(exchange, settings, sink)
        candidates[exchange] = (connector, sink, connector.offline_connection())
    with _quiet("connectors"):  # the others' warnings about frames they do not know
        return _first_taker(path, candidates)


def _first_taker(
    path: Path, candidates: dict[str, tuple[WsConnector, EnvelopeCollector, Connection]]
) -> str:
    try:
        for number, receive_time_ns, frame in iter_recording(path):
            takers = []
            for exchange, (connector, sink, conn) in candidates.items():
                sink.dead_letters.clear()
                try:
                    connector.handle_recorded(conn, frame, receive_time_ns)
                except ValueError:
                    continue
                if not sink.dead_letters:
                    takers.append(exchange)
            if len(takers) == 1:
                return takers[0]
            if number >= INFER_LINES:
                break
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise RecordingError(str(exc)) from exc
    raise RecordingError(
        f"{path}: cannot tell which exchange recorded it (no frame of its first {INFER_LINES} "
        "lines is taken by exactly one connector with this configuration): give the exchange"
    )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_recordings(
    recordings: Sequence[Recording], settings: Settings, bundle_frames: int | None = None
) -> CoreResult:
    """Recordings through the live job's core, merged in receive-time order (one Kafka topic
    of every exchange: cross-exchange NBBO), each envelope with its Kafka timestamp (the
    receive time in ms, as the connectors' producer sets it). The job's processing-time
    housekeeping (STALE books, resync retries) ticks on those timestamps too."""
    result = CoreResult()
    streams = [recorded_envelopes(r, settings, result.dead_letters) for r in recordings]
    run = CoreRun(settings, bundle_frames, keep_rows=False)
    tick_ms = settings.book.timer_interval_ms
    next_tick_ms: int | None = None
    for envelope in heapq.merge(*streams, key=lambda e: e.receive_time_ns):
        timestamp_ms = envelope.receive_time_ns // 1_000_000
        if next_tick_ms is None:
            next_tick_ms = timestamp_ms - timestamp_ms % tick_ms + tick_ms
        elif tick_ms > 0 and timestamp_ms >= next_tick_ms:
            # a quiet stretch of many ticks is one tick at its end
            tick = timestamp_ms - timestamp_ms % tick_ms
            run.housekeeping(tick)
            next_tick_ms = tick + tick_ms
        result.envelopes[f"{envelope.exchange} {envelope.channel}"] += 1
        run.feed([(encode_envelope(envelope), timestamp_ms)])
    run.finish()
    return _result(run, result)


def run_recording(path: Path, exchange: str, settings: Settings) -> CoreResult:
    """One recording through the live job's core (``run_recordings``)."""
    return run_recordings([Recording(path, exchange)], settings)


def _result(run: CoreRun, result: CoreResult) -> CoreResult:
    records = {name: [json.loads(text) for text in texts] for name, texts in run.records.items()}
    result.nbbo = records.get("nbbo", [])
    result.matched_trades = records.get("matched_trades", [])
    result.bars = records.get("bars", [])
    result.dead_letters += records.get("deadletter", [])
    result.resync_requests = records.get("control", [])
    result.table_rows = {table: rows for table, (_, rows) in sorted(run.tables.items())}
    book_prefix = f"{run.settings.redis.key_prefix}:book:"
    for key, args in sorted(run.redis.items()):
        if key.startswith(book_prefix):
            exchange, _, symbol = key[len(book_prefix) :].partition(":")
            result.books.append(_book_top(exchange, symbol, args))
    return result


def _book_top(exchange: str, symbol: str, args: list[str]) -> BookTop:
    """A book's guarded Redis write (ARGV as ``jobs/sinks/redis_books.py``'s script takes it:
    seq, status, reason, bids, asks, event time, receive time, instrument, publish time,
    update message, version)."""
    seq, status, reason, bids, asks, event_ms, receive_ns, instrument, _, _, version = args
    return BookTop(
        exchange=exchange,
        symbol=symbol,
        instrument=instrument,
        status=status,
        reason=reason,
        seq=int(seq),
        version=int(version),
        bids=[(p, s) for p, s in json.loads(bids)],
        asks=[(p, s) for p, s in json.loads(asks)],
        event_time_ms=int(event_ms),
        receive_time_ns=int(receive_ns),
    )
