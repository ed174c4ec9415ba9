"""Kafka producer for raw envelopes: idempotent, acks=all, every failed delivery counted and
reported to the connector, which marks the frame's book ``sync_lost`` and resyncs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import SCHEMA_DIR, RawEnvelope, encode_envelope
from schemas.registry import RegistryClient, RegistryError, SchemaNotRegistered, registered_id
from tickflow.config import KafkaConfig, Settings
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config

log = logging.getLogger(__name__)
# librdkafka's own log lines, through Python logging (served by poll()) instead of raw stderr
librdkafka_log = logging.getLogger("connectors.librdkafka")
# delivery reports and errors are served by whichever poll() comes next, often while a frame
# of some connection or book is handled: they concern neither
_NOT_A_CONNECTION: dict[str, object] = {"connection_id": None, "symbol": None}
PARTITIONS_TIMEOUT_S = 30.0  # the raw topic's metadata, asked before the first send
RAW_SCHEMA_FILE = SCHEMA_DIR / "raw_envelope.avsc"


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


def raw_schema_id(settings: Settings, topic: str | None = None) -> int | None:
    """The registry id the connectors frame raw envelopes with (``kafka.raw_framing``), None
    when they write schemaless ones. A writer never registers its schema (a deployment step:
    ``tickflow schemas register``, ``stack up``): one the registry does not hold under the
    raw subject, or no registry, stops the connector here, before any frame is written."""
    if settings.kafka.raw_framing != "confluent":
        return None
    subject = f"{topic or settings.kafka.raw_topic}-value"
    try:
        schema_id, version = registered_id(
            RegistryClient(settings.registry), subject, RAW_SCHEMA_FILE
        )
    except SchemaNotRegistered as error:
        raise ProducerFatalError(str(error)) from None
    except RegistryError as error:
        raise ProducerFatalError(
            f"kafka.raw_framing is confluent and the schema registry did not answer: {error}"
        ) from None
    log.info(
        "raw envelopes framed with schema id %d (%s version %d)",
        schema_id,
        subject,
        version,
        extra=_NOT_A_CONNECTION,
    )
    return schema_id


class KafkaSink:
    """``send(envelope)`` -> the raw topic, keyed ``exchange:symbol``, in the partition of the
    instrument's NBBO group (``partition_of``); framed with ``schema_id`` when one is given
    (``raw_schema_id``).

    All exchanges' frames of one instrument share a partition, so the job, keyed by instrument,
    reads them in the order they were produced, live and again on a replay: the NBBO and the
    trade matching, which depend on that order across exchanges, come out the same. (One
    book's frames stay in order too: one book, one instrument.)

    Delivery reports are served by ``poll()`` (called on every send and periodically by the
    connector's main loop); a failed delivery is logged as an error and counted in ``failed``.

    Nothing is lost silently, and nothing waits for the broker:
    - a raw frame the broker has not acknowledged within ``kafka.delivery_timeout_ms`` fails;
      the first such failure purges every frame still queued behind it (they waited through
      the same outage, and frames of the same books delivered after the hole would be applied
      as if continuous), and every book with a failed or purged frame is handed to ``on_lost``;
    - ``send`` never blocks: a frame that finds the local queue full
      (``kafka.producer_queue_max_messages``) is dropped, counted in ``dropped``, its book
      handed to ``on_lost``, and ``send`` returns False.
    ``on_lost(symbol, reason)`` is the connector's (``WsConnector.frames_lost``): it produces a
    ``sync_lost`` envelope for the book ahead of the book's next frame and resyncs the book.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        quote_equivalents: Mapping[str, str] | None = None,
        partitions: int = 0,
        schema_id: int | None = None,
    ) -> None:
        self.topic = topic or kafka.raw_topic
        # the registry id of the raw envelope's schema: framed records; None: schemaless
        self.schema_id = schema_id
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
            # 1: a leader change cannot make the producer write a frame twice (see the setting)
            "max.in.flight.requests.per.connection": kafka.producer_max_in_flight,
            # chosen, not librdkafka's 300 s default: see kafka.delivery_timeout_ms
            "delivery.timeout.ms": kafka.delivery_timeout_ms,
            "queue.buffering.max.messages": kafka.producer_queue_max_messages,
            "error_cb": self._on_error,
            "logger": librdkafka_log,
        }
        conf.update(overrides or {})
        self._producer = Producer(conf)
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0  # frames not produced: the local queue was full
        self.purged = 0  # frames purged from the queue after a delivery timed out
        self.dead_letters = 0
        self.fatal: KafkaError | None = None
        # the connector's: a raw frame of (symbol) was not delivered, for (reason)
        self.on_lost: Callable[[str, str], None] | None = None
        self._last_full_warning = 0.0
        self._last_failure_log = float("-inf")
        self._purge_due = False

    def send(self, envelope: RawEnvelope, acked: Callable[[bool], None] | None = None) -> bool:
        """Produce one envelope; False when it was dropped (queue full: its book is lost)."""
        if self.fatal is not None:
            raise ProducerFatalError(str(self.fatal))
        value = encode_envelope(envelope, self.schema_id)
        partition = partition_of(
            nbbo_group(envelope.instrument, self.quote_equivalents), self.partitions()
        )
        try:
            self._producer.produce(
                self.topic,
                value=value,
                key=envelope.kafka_key,
                partition=partition,
                # record time = receive time, so Kafka timestamps mean "when we got it"
                timestamp=envelope.receive_time_ns // 1_000_000,
                on_delivery=self._on_delivery if acked is None else self._reporting(acked),
            )
        except BufferError:
            # local queue full (broker slow or down): never wait in the event loop; the frame
            # is dropped and its book marked lost, resynced once the queue has room again
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_full_warning > 5.0:
                self._last_full_warning = now
                log.warning(
                    "kafka producer queue full: frames dropped (%d so far), their books "
                    "marked sync_lost", self.dropped, extra=_NOT_A_CONNECTION,
                )
            self._lost(envelope.kafka_key, "kafka producer queue full")
            self.poll(0)
            return False
        self.sent += 1
        self.poll(0)
        return True

    def send_marker(self, envelope: RawEnvelope, acked: Callable[[bool], None]) -> bool:
        """``send`` for a book's ``sync_lost`` after a failed delivery: ``acked(ok)`` is called
        (from ``poll``) once the broker has acknowledged it or it failed. The connector holds
        the book's next frames until then: sent beside it, a frame could be delivered while
        the marker itself times out, and be applied as if continuous."""
        return self.send(envelope, acked)

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
        """Rejected input goes to the dead-letter topic: counted and kept (dropped, counted and
        logged, only when the producer's queue is full)."""
        try:
            self._producer.produce(
                self.deadletter_topic, value=record.encode(), on_delivery=self._on_delivery
            )
        except BufferError:  # the queue is full: counted and logged, never waited for
            self.dropped += 1
            self.failed += 1
            log.error("kafka: queue full, a dead letter was dropped", extra=_NOT_A_CONNECTION)
            return
        self.dead_letters += 1
        self.poll(0)

    def poll(self, timeout_s: float = 0.0) -> int:
        served = int(self._producer.poll(timeout_s))
        if self._purge_due:
            # outside the delivery callback that asked for it
            self._purge_due = False
            before = self.purged
            self._producer.purge(in_queue=True, in_flight=False, blocking=False)
            served += int(self._producer.poll(0))  # the purged frames' reports: lost books
            log.error(
                "kafka: a frame was not delivered within delivery.timeout.ms: %d queued frames "
                "purged, their books marked sync_lost and resynced", self.purged - before,
                extra=_NOT_A_CONNECTION,
            )
        return served

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

    def _reporting(
        self, acked: Callable[[bool], None]
    ) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._on_delivery(err, msg)
            acked(err is None)

        return on_delivery

    def _lost(self, key: bytes | str | None, reason: str) -> None:
        """A raw frame of this ``exchange:symbol`` key was not delivered: tell the connector."""
        if self.on_lost is None or key is None:
            return
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        self.on_lost(text.partition(":")[2], reason)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        purged = err.code() == KafkaError._PURGE_QUEUE
        if purged:
            self.purged += 1
        elif time.monotonic() - self._last_failure_log > 5.0:  # an outage fails thousands
            self._last_failure_log = time.monotonic()
            log.error(
                "kafka: DELIVERY FAILED topic=%s key=%r: %s (failed so far: %d; logged at "
                "most every 5 s)",
                msg.topic(), msg.key(), err, self.failed,
                extra=_NOT_A_CONNECTION,
            )
        if err.fatal():
            self.fatal = err
        if msg.topic() != self.topic:
            return  # a dead letter: counted and logged; no book depends on it
        if err.code() == KafkaError._MSG_TIMED_OUT:
            # what waited behind it waited through the same outage: out of the queue, so the
            # sync_lost envelopes go ahead of those books' next frames
            self._purge_due = True
        self._lost(msg.key(), "purged after a delivery timeout" if purged else str(err))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.critical("kafka: fatal producer error: %s", err, extra=_NOT_A_CONNECTION)
        else:
            # mostly transient (broker down, reconnecting); deliveries report the real outcome
            log.error("kafka: producer error: %s", err, extra=_NOT_A_CONNECTION)
