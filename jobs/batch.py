"""The books operator's logic over a bounded, ordered input, without Flink: the batch backfill.

The streaming job pays a JVM<->Python crossing, state writes and a shuffle per frame; a
rebuild from the archive needs none of them. ``PartitionBooks`` runs the same pure logic
(``InstrumentBooks``, the same row functions) over the records of one raw-topic partition in
offset order and collects ClickHouse rows per table. Every frame of an instrument is in one
partition (the connectors partition by instrument), so partitions are independent and run in
parallel processes.

Event time is the Kafka record timestamp, as in the job. The watermark is the partition's
bounded-out-of-orderness watermark (latest timestamp - out-of-orderness - 1), advanced per
record. The job's watermark is the minimum over all partitions and trails by its emission
interval, so the batch can only call a frame late that is more than the out-of-orderness
behind its own partition's latest record; on input in order within that bound (which the
job's own lateness needs too) both produce the same rows: ``bench.backfill`` checks it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from jobs.instrument import END_OF_INPUT, NO_WATERMARK, InstrumentBooks, Outputs, configured_books
from jobs.nbbo import nbbo_group
from jobs.parse.events import ParseError
from jobs.sinks.rows import analytics_rows, frame_rows
from schemas.codec import EnvelopeError, decode_envelope
from schemas.deadletter import dead_letter_record
from tickflow.config import Settings

Row = tuple[Any, ...]


@dataclass
class BatchCounts:
    frames: int = 0
    dead_letters: int = 0
    rows: int = 0
    late: int = 0


@dataclass
class PartitionBooks:
    """Every instrument of one partition; ``feed`` records in offset order, then ``finish``."""

    settings: Settings
    rows: dict[str, list[Row]] = field(default_factory=dict)  # table -> rows not yet taken
    dead_letters: list[str] = field(default_factory=list)
    counts: BatchCounts = field(default_factory=BatchCounts)

    def __post_init__(self) -> None:
        self._books: dict[str, InstrumentBooks] = {}
        self._equivalents = dict(self.settings.analytics.quote_equivalents)
        self._lag_ms = self.settings.flink.watermark_out_of_orderness_ms + 1
        self._latest_ms = NO_WATERMARK
        self.watermark_ms = NO_WATERMARK
        # (event time, instrument): when an instrument's pending trades or bars come due (the
        # job's event-time timers); stale entries are skipped when they surface
        self._timers: list[tuple[int, str]] = []
        self._timer_of: dict[str, int] = {}

    def _instrument(self, key: str) -> InstrumentBooks:
        books = self._books.get(key)
        if books is None:
            books = configured_books(key, self.settings.book, self.settings.analytics)
            self._books[key] = books
        return books

    def _add(self, rows: Any) -> None:
        for table, row in rows:
            self.rows.setdefault(table, []).append(row)
            self.counts.rows += 1

    def _schedule(self, books: InstrumentBooks) -> None:
        due = books.next_event_time_ms()
        if due is not None and due < self._timer_of.get(books.instrument, END_OF_INPUT):
            self._timer_of[books.instrument] = due
            heapq.heappush(self._timers, (due, books.instrument))

    def _fire_timers(self) -> None:
        """What the job's event-time timers do once the watermark passes them."""
        timers = self._timers
        while timers and timers[0][0] <= self.watermark_ms:
            due, key = heapq.heappop(timers)
            if self._timer_of.get(key) != due:
                continue  # superseded by an earlier one
            del self._timer_of[key]
            books = self._books[key]
            out = Outputs()
            books.advance(self.watermark_ms, out)
            self._take(out, analytics_rows(out))
            self._schedule(books)

    def _take(self, out: Outputs, rows: Any) -> None:
        self.counts.late += len(out.late)
        self._add(rows)

    def feed(self, value: bytes, timestamp_ms: int) -> None:
        """One raw record (its Kafka value and timestamp)."""
        self.counts.frames += 1
        self._process(value)
        self.tick(timestamp_ms)

    def tick(self, timestamp_ms: int) -> None:
        """A record of the partition that another worker processes (its instrument is not
        ours): it moves the partition's watermark all the same, so our rows are the ones the
        whole partition gives."""
        # as in the job, a record's own timestamp moves the watermark only after it
        if timestamp_ms > self._latest_ms:
            self._latest_ms = timestamp_ms
            watermark = timestamp_ms - self._lag_ms
            if watermark > self.watermark_ms:
                self.watermark_ms = watermark
                self._fire_timers()

    def _process(self, value: bytes) -> None:
        try:
            env = decode_envelope(value)
        except EnvelopeError as exc:
            self.counts.dead_letters += 1
            self.dead_letters.append(dead_letter_record("job", str(exc), value))
            return
        key = env.instrument
        if self._equivalents:
            key = nbbo_group(key, self._equivalents)
        books = self._instrument(key)
        try:
            out = books.process(env, self.watermark_ms)
        except ParseError as exc:
            self.counts.dead_letters += 1
            self.dead_letters.append(dead_letter_record("job", str(exc), env.payload, env))
            return
        self._take(out, frame_rows(out, env.instrument))
        self._schedule(books)

    def finish(self) -> None:
        """The input ended: what the job's last watermark makes final."""
        self.watermark_ms = END_OF_INPUT
        for books in self._books.values():
            out = Outputs()
            books.advance(END_OF_INPUT, out)
            self._take(out, analytics_rows(out))
        self._timers.clear()
        self._timer_of.clear()

    def take_rows(self) -> dict[str, list[Row]]:
        """The rows collected since the last call, by table."""
        rows, self.rows = self.rows, {}
        return rows

    def take_dead_letters(self) -> list[str]:
        letters, self.dead_letters = self.dead_letters, []
        return letters
