"""Raw records held in memory as a ``jobs.frames.FrameSource``: each in the partition the
connectors would produce it to, in the order given, read in batches of ``read_batch``."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from connectors.producer import partition_of
from jobs.frames import FrameBatch
from schemas.codec import EnvelopeError, envelope_instrument
from tickflow.instruments import nbbo_group


class MemoryFrames:
    def __init__(
        self, records: list[tuple[bytes, int]], partitions: int = 4, read_batch: int = 333
    ) -> None:
        self.read_batch = read_batch
        self.records: dict[int, list[tuple[bytes, int]]] = {p: [] for p in range(partitions)}
        for value, timestamp_ms in records:
            try:
                group = nbbo_group(envelope_instrument(value), {})
            except (EnvelopeError, UnicodeDecodeError):
                group = ""
            self.records[partition_of(group, partitions)].append((value, timestamp_ms))

    def partitions(self) -> list[int]:
        return sorted(self.records)

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        # as Kafka's offsets_for_times: the first offset with a timestamp at or after the time
        stamps = [t for _, t in self.records[partition]]
        first_at = [max(stamps[: i + 1]) for i in range(len(stamps))]
        start = bisect.bisect_left(first_at, from_ms)
        return start, max(start, bisect.bisect_left(first_at, to_ms))

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        records = self.records[partition]
        for i in range(start, end, self.read_batch):
            part = records[i : min(end, i + self.read_batch)]
            yield FrameBatch(
                partition, list(range(i, i + len(part))), [v for v, _ in part], [t for _, t in part]
            )
