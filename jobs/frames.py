"""Where raw frames are read back from: the raw topic in Kafka, by partition and offset range.

    source = frame_source(settings, "kafka")
    for partition in source.partitions():
        start, end = source.offset_range(partition, from_ms, to_ms)
        for batch in source.read(partition, start, end):
            ...  # batch.values: the envelopes exactly as in the raw topic

Every reader of history that runs frames through the compiled core (the backtest) reads
through a ``FrameSource``, so the same code reads whichever store holds the frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from tickflow.config import Settings


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive records of one partition, in offset order."""

    partition: int
    offsets: list[int]
    values: list[bytes]  # raw envelope bytes, exactly as in the raw topic
    timestamps: list[int]  # the Kafka record timestamps, ms


class FrameSource(Protocol):
    def partitions(self) -> list[int]: ...

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        """[start, end): the offsets of the partition's records with from_ms <= time < to_ms."""
        ...

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        """The records of offsets [start, end), in order."""
        ...


class KafkaFrames:
    """The raw topic read with the batch backfill's consumer settings and range reader."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.kafka.raw_topic

    def partitions(self) -> list[int]:
        from jobs.backfill import OFFSET_TIMEOUT_S, _consumer

        consumer = _consumer(self.settings)
        try:
            meta = consumer.list_topics(self.topic, timeout=OFFSET_TIMEOUT_S).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(
                    f"raw topic {self.topic!r} not found on {self.settings.kafka.bootstrap}"
                )
            return sorted(meta.partitions)
        finally:
            consumer.close()

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        from confluent_kafka import TopicPartition

        from jobs.backfill import OFFSET_TIMEOUT_S, _consumer

        consumer = _consumer(self.settings)
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=OFFSET_TIMEOUT_S
            )

            def offset_at(time_ms: int) -> int:
                found = consumer.offsets_for_times(
                    [TopicPartition(self.topic, partition, time_ms)], timeout=OFFSET_TIMEOUT_S
                )[0].offset
                return high if found < 0 else found  # no record at or after it: the end

            start = offset_at(from_ms) if from_ms > 0 else low
            return start, max(start, offset_at(to_ms))
        finally:
            consumer.close()

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        from confluent_kafka import TopicPartition

        from jobs.backfill import PartitionRange, _consumer, _read_range

        if end <= start:
            return
        consumer = _consumer(self.settings)
        try:
            consumer.assign([TopicPartition(self.topic, partition, start)])
            part = PartitionRange(partition, start, end)
            read_batch = self.settings.replay.batch_read_records
            for messages in _read_range(consumer, self.topic, part, read_batch):
                yield FrameBatch(
                    partition,
                    [m.offset() for m in messages],
                    [m.value() for m in messages],
                    [m.timestamp()[1] for m in messages],
                )
        finally:
            consumer.close()


def frame_source(settings: Settings, kind: str) -> FrameSource:
    """The raw frames from ``kind``: ``kafka`` (the raw topic) or ``archive``."""
    if kind == "kafka":
        return KafkaFrames(settings)
    if kind == "archive":
        raise ValueError("frame source 'archive': no raw archive is available in this build")
    raise ValueError(f"unknown frame source {kind!r}: kafka or archive")
