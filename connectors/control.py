"""Resync requests from the job, read from the control topic.

The job asks for a fresh snapshot of one book when it finds a gap, a checksum mismatch or a
snapshot it cannot bridge; only that (exchange, symbol) is resynced, never every book, and a
symbol is resynced at most once per ``min_interval_s`` (REST and subscribe rate limits).

The record format is ``schemas.control``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

from confluent_kafka import Consumer, KafkaError

from schemas.control import ResyncRequest, parse_request
from tickflow.config import KafkaConfig
from tickflow.kafka_security import client_config
from tickflow.logs import log_fields

log = logging.getLogger(__name__)


class ControlListener:
    """Consumes the control topic on a thread and hands this exchange's requests to asyncio.

    Every connector process reads every request (its own consumer group, from the latest
    offset): a request concerns whichever process is connected to that exchange now.
    """

    def __init__(self, kafka: KafkaConfig, exchange: str) -> None:
        self.exchange = exchange
        self.topic = kafka.control_topic
        self._consumer = Consumer(
            {
                **client_config(kafka),
                "group.id": f"tickflow-connector-{exchange}-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "logger": logging.getLogger("connectors.librdkafka"),
            }
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0

    def start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ResyncRequest]) -> None:
        self._consumer.subscribe([self.topic])
        self._thread = threading.Thread(
            target=self._poll, args=(loop, queue), name="control-listener", daemon=True
        )
        self._thread.start()

    def _poll(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ResyncRequest]) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None:
                continue
            error, value = msg.error(), msg.value()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("control topic: %s", error)
                continue
            request = parse_request(value or b"")
            if request is not None and request.exchange == self.exchange:
                self.received += 1
                loop.call_soon_threadsafe(queue.put_nowait, request)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()


async def serve_resyncs(
    queue: asyncio.Queue[ResyncRequest],
    resync: Callable[[str], Awaitable[None]],
    min_interval_s: float,
) -> None:
    """Run resyncs one at a time; repeats for a symbol within ``min_interval_s`` are coalesced."""
    last: dict[str, float] = {}
    while True:
        request = await queue.get()
        with log_fields(exchange=request.exchange, symbol=request.symbol):
            since = time.monotonic() - last.get(request.symbol, float("-inf"))
            if since < min_interval_s:
                log.info("resync %s: coalesced (%.1fs after the last one)", request.symbol, since)
                continue
            last[request.symbol] = time.monotonic()
            log.warning("resync %s requested by the job: %s", request.symbol, request.reason)
            try:
                await resync(request.symbol)
            except Exception:  # one failed resync must not stop the others
                log.exception("resync %s failed", request.symbol)
