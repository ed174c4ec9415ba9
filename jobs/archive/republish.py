"""A range of the archive produced again into a topic of its own, so that a reader of Kafka
(the Flink replay) can read it after Kafka deleted its copy: each record into its partition,
with its key, value and timestamp, in offset order."""

from __future__ import annotations

import time
from typing import Any

from jobs.archive.layout import ArchiveError
from jobs.frames import ArchiveFrames
from tickflow.config import Settings
from tickflow.kafka_security import client_config

TOPIC_TIMEOUT_S = 60.0


def recreate_topic(settings: Settings, topic: str, partitions: int) -> None:
    """``topic`` empty, with ``partitions`` partitions (deleted first if it exists)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings.kafka, **{"client.id": "tickflow-republish"}))
    if topic in admin.list_topics(timeout=TOPIC_TIMEOUT_S).topics:
        admin.delete_topics([topic], request_timeout=TOPIC_TIMEOUT_S)[topic].result()
    deadline = time.monotonic() + TOPIC_TIMEOUT_S
    while True:  # a deleted topic's name is free again once the controller finished with it
        future = admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])[topic]
        try:
            future.result()
            break
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            if time.monotonic() > deadline:
                raise ArchiveError(f"topic {topic} still being deleted after "
                                   f"{TOPIC_TIMEOUT_S:.0f} s") from None  # fmt: skip
            time.sleep(0.5)
    while topic not in admin.list_topics(timeout=TOPIC_TIMEOUT_S).topics:
        if time.monotonic() > deadline:
            raise ArchiveError(f"topic {topic} not listed {TOPIC_TIMEOUT_S:.0f} s after creation")
        time.sleep(0.2)


def republish(
    settings: Settings, frames: ArchiveFrames, topic: str, from_ms: int, to_ms: int
) -> dict[int, tuple[int, int, int]]:
    """The archived records of [from_ms, to_ms) into ``topic`` (recreated empty, partitioned
    as the raw topic). Per partition: (first offset, end offset, records produced)."""
    from confluent_kafka import Producer

    partitions = frames.partitions()
    recreate_topic(settings, topic, max(settings.kafka.raw_partitions, max(partitions) + 1))
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({
        **client_config(settings.kafka, **{"client.id": "tickflow-republish"}),
        "enable.idempotence": True,  # in order, once, into the partition named
        # once across a leader change too (kafka.producer_max_in_flight)
        "max.in.flight.requests.per.connection": settings.kafka.producer_max_in_flight,
        "linger.ms": 20,
        "message.timeout.ms": 300_000,
    })  # fmt: skip
    out: dict[int, tuple[int, int, int]] = {}
    for partition in partitions:
        start, end = frames.offset_range(partition, from_ms, to_ms)
        produced = 0
        for batch, keys in frames.read_keyed(partition, start, end):
            for value, key, timestamp in zip(batch.values, keys, batch.timestamps, strict=True):
                while True:
                    try:
                        producer.produce(topic, value, key, partition=partition,
                                         timestamp=timestamp, on_delivery=delivered)  # fmt: skip
                        break
                    except BufferError:
                        producer.poll(0.1)
                produced += 1
            producer.poll(0)
        out[partition] = (start, end, produced)
    remaining = producer.flush(TOPIC_TIMEOUT_S)
    if remaining or failures:
        raise ArchiveError(
            f"{remaining} records not delivered to {topic} in {TOPIC_TIMEOUT_S:.0f} s, "
            f"{len(failures)} refused (first: {failures[:1]})"
        )
    return out
