"""Kafka producer for raw envelopes: idempotent, acks=all, every failed delivery counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import RawEnvelope, encode_envelope
from tickflow.config import KafkaConfig
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config

log = logging.getLogger(__name__)
# librdkafka's own log lines, through Python logging (served by poll()) instead of raw stderr
librdkafka_log = logging.getLogger("connectors.librdkafka")
# delivery reports and errors are served by whichever poll() comes next, often while a frame
# of some connection or book is handled: they concern neither
_NOT_A_CONNECTION: dict[str, object] = {"connection_id": None, "symbol": None}
PARTITIONS_TIMEOUT_S = 30.0  # the raw topic's metadata, asked before the first send


class ProducerFatalError(RuntimeError):
    """The idempotent producer hit a fatal error: ordering/exactly-once can no longer hold."""


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed int32."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length & ~3
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(group: str, partitions: int) -> int:
    """The raw-topic partition of an NBBO group, as Kafka's default partitioner would place a
    record keyed by it."""
    return (murmur2(group.encode()) & 0x7FFFFFFF) % partitions


class KafkaSink:
    """``send(envelope)`` -> the raw topic, keyed ``exchange:symbol``, in the partition of the
    instrument's NBBO group (``partition_of``).

    All exchanges' frames of one instrument share a partition, so the job, keyed by instrument,
    reads them in the order they were produced, live and again on a replay: the NBBO and the
    trade matching, which depend on that order across exchanges, come out the same. (One
    book's frames stay in order too: one book, one instrument.)

    Delivery reports are served by ``poll()`` (called on every send and periodically by the
    connector's main loop); a failed delivery is logged as an error and counted in ``failed``.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        quote_equivalents: Mapping[str, str] | None = None,
        partitions: int = 0,
    ) -> None:
        self.topic = topic or kafka.raw_topic
        self.quote_equivalents = dict(quote_equivalents or {})
        self._partitions = partitions  # of the topic; 0: from the broker on the first send
        self.deadletter_topic = kafka.deadletter_topic
        conf: dict[str, Any] = {
            **client_config(kafka),
            "client.id": "tickflow-connector",
            # no duplicates or reordering on retries: one book's frames stay in order
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": kafka.producer_linger_ms,
            "error_cb": self._on_error,
            "logger": librdkafka_log,
        }
        conf.update(overrides or {})
        self._producer = Producer(conf)
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.dead_letters = 0
        self.fatal: KafkaError | None = None
        self._last_full_warning = 0.0

    def send(self, envelope: RawEnvelope) -> None:
        if self.fatal is not None:
            raise ProducerFatalError(str(self.fatal))
        value = encode_envelope(envelope)
        partition = partition_of(
            nbbo_group(envelope.instrument, self.quote_equivalents), self.partitions()
        )
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=value,
                    key=envelope.kafka_key,
                    partition=partition,
                    # record time = receive time, so Kafka timestamps mean "when we got it"
                    timestamp=envelope.receive_time_ns // 1_000_000,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                # local queue full (broker slow or down): block briefly rather than drop
                now = time.monotonic()
                if now - self._last_full_warning > 5.0:
                    self._last_full_warning = now
                    log.warning(
                        "kafka producer queue full: waiting for the broker",
                        extra=_NOT_A_CONNECTION,
                    )
                self._producer.poll(0.1)
        self.sent += 1
        self._producer.poll(0)

    def partitions(self) -> int:
        """Partitions of the raw topic (asked once: topics are never repartitioned here)."""
        if not self._partitions:
            metadata = self._producer.list_topics(self.topic, timeout=PARTITIONS_TIMEOUT_S)
            topic = metadata.topics[self.topic]
            if topic.error is not None or not topic.partitions:
                raise KafkaException(topic.error or f"{self.topic}: no partitions")
            self._partitions = len(topic.partitions)
        return self._partitions

    def dead_letter(self, record: str) -> None:
        """Rejected input goes to the dead-letter topic: counted and kept, never dropped."""
        self._producer.produce(
            self.deadletter_topic, value=record.encode(), on_delivery=self._on_delivery
        )
        self.dead_letters += 1
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; the number still undelivered."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float) -> int:
        """Flush on shutdown; undelivered envelopes are logged and counted as failed."""
        remaining = self.flush(timeout_s)
        if remaining:
            self.failed += remaining
            log.error(
                "kafka: %d envelope(s) NOT delivered to %s at shutdown (flush timed out)",
                remaining, self.topic,
            )
        log.info(
            "kafka: sent %d, delivered %d, failed %d", self.sent, self.delivered, self.failed
        )
        return remaining

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        log.error(
            "kafka: DELIVERY FAILED topic=%s key=%r: %s (failed so far: %d)",
            msg.topic(), msg.key(), err, self.failed,
            extra=_NOT_A_CONNECTION,
        )
        if err.fatal():
            self.fatal = err

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.critical("kafka: fatal producer error: %s", err, extra=_NOT_A_CONNECTION)
        else:
            # mostly transient (broker down, reconnecting); deliveries report the real outcome
            log.error("kafka: producer error: %s", err, extra=_NOT_A_CONNECTION)
