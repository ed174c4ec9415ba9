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
    run.redis                  # the last guarded write's ARGV per Redis key
"""

from __future__ import annotations

from collections.abc import Iterable

from jobs.operators import native_stream
from schemas.bundles import (
    CLICKHOUSE_ROWS,
    frame_bundle,
    sink_blob_sections,
    split_records,
)
from schemas.codec import EnvelopeError, envelope_instrument
from tickflow.config import Settings
from tickflow.instruments import nbbo_group

NO_WATERMARK = -(2**63)
END_OF_INPUT = 2**63 - 1


class CoreRun:
    """One operator instance's core fed as the job feeds it (parallelism 1)."""

    def __init__(self, settings: Settings, bundle_frames: int | None = None) -> None:
        self.settings = settings
        self.core = native_stream(settings.book, settings.analytics, settings.redis.key_prefix)
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
        persist = self.core.process_bundle(
            key, frame_bundle(frames, flags), self.watermark_ms, self.now_ms
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

    def _collect(self) -> None:
        blob = self.core.take_blob()
        if blob is not None:
            for kind, name, count, payload in sink_blob_sections(blob):
                if kind == CLICKHOUSE_ROWS:
                    data, rows = self._tables.setdefault(name, (bytearray(), [0]))
                    data += payload
                    rows[0] += count
                else:
                    self.records.setdefault(name, []).extend(split_records(payload))
        for _, keys, args in self.core.take_redis(0):
            self.redis[keys[0]] = [a.decode() for a in args]
