"""The Kraken connector produces to a real Kafka broker: every market frame the simulator
sent on the connection is in Kafka exactly once, byte for byte, in order per key.

Uses the session fixture ``stack_settings`` (tests/conftest.py: settings with the
simulator overlay, Kafka up) and a topic of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException

from connectors.kraken import KrakenConnector
from connectors.producer import KafkaSink
from schemas.codec import RawEnvelope, decode_envelope
from simulator.testing import http_json, pointed_at, running_simulator, wait_until
from stack.topics import ensure_topics
from tickflow.config import Settings
from tickflow.kafka_security import client_config

pytestmark = pytest.mark.integration

PAIRS = {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USD", "BTC/USDT": "BTC-USDT"}


async def produce(settings: Settings, topic: str) -> tuple[KafkaSink, list[str]]:
    """Run the connector into ``topic``; (the sink, every frame the simulator sent it)."""
    kraken = dataclasses.replace(settings.exchanges.kraken, symbols=PAIRS, message_interval_ms=20)
    settings = dataclasses.replace(
        settings, exchanges=dataclasses.replace(settings.exchanges, kraken=kraken)
    )
    sink = KafkaSink(settings.kafka, topic=topic)
    async with running_simulator(
        settings, rate_per_symbol=50, kraken_symbols=tuple(PAIRS), send_log_frames=100_000
    ) as sim:
        connector = KrakenConnector(pointed_at(settings, sim), sink)
        task = asyncio.create_task(connector.run())
        await wait_until(lambda: sink.sent >= 400, 30, "400 envelopes")
        await http_json(f"{sim.http_url}/_sim/pause", "POST")

        async def kraken_log() -> dict[str, Any]:
            _, conns = await http_json(f"{sim.http_url}/_sim/connections?frames=1")
            (log,) = [c for c in conns if c["exchange"] == "kraken"]
            return dict(log)

        deadline = time.monotonic() + 30
        while True:  # everything sent has been received (sent frames drain after a pause)
            log = await kraken_log()
            if log["queued"] == 0 and connector.stats.frames == log["frames_sent"]:
                break
            assert time.monotonic() < deadline, "the connector never caught up"
            await asyncio.sleep(0.05)
        connector.stop()
        await asyncio.wait_for(task, 10)
    assert sink.close(timeout_s=30) == 0
    assert log["frames_dropped"] == 0 and connector.stats.connections == 1
    return sink, log["frames"]


def consume(settings: Settings, topic: str, count: int) -> list[tuple[bytes, RawEnvelope]]:
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": f"test-kraken-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[bytes, RawEnvelope]] = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            records.append((key, decode_envelope(value)))
        # nothing beyond what was produced
        extra = consumer.poll(1.0)
        assert extra is None or extra.error() is not None
    finally:
        consumer.close()
    return records


def test_every_sent_market_frame_is_in_kafka_once_and_in_order(stack_settings: Settings) -> None:
    topic = f"tickflow.raw.test-kraken-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack_settings, extra={topic: 2})

    sink, sent_frames = asyncio.run(produce(stack_settings, topic))
    assert sink.failed == 0 and sink.delivered == sink.sent

    expected: dict[bytes, list[bytes]] = defaultdict(list)
    control = 0
    for raw in sent_frames:
        message = json.loads(raw)  # only channel and symbol are looked at
        if message.get("channel") in ("book", "trade"):
            (symbol,) = {d["symbol"] for d in message["data"]}
            expected[f"kraken:{symbol}".encode()].append(raw.encode())
        else:
            control += 1  # status, acks, heartbeats: never produced
    assert control >= 1 + 2 * len(PAIRS)
    assert sum(len(v) for v in expected.values()) == sink.sent

    records = consume(stack_settings, topic, sink.sent)
    assert len(records) == sink.sent
    received: dict[bytes, list[bytes]] = defaultdict(list)
    for key, env in records:
        assert key == env.kafka_key and env.instrument == PAIRS[env.symbol]
        assert env.channel == ("depth" if env.payload.startswith(b'{"channel":"book"') else "trade")
        received[key].append(env.payload)
    assert set(received) == {f"kraken:{p}".encode() for p in PAIRS}
    for key, payloads in expected.items():
        assert received[key] == payloads, key  # exactly once, byte for byte, in order
