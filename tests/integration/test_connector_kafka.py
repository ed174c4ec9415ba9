"""The Binance connector produces to a real Kafka broker: keys, order, snapshots, timestamps.

Uses the session fixture ``stack_settings`` (tests/conftest.py: settings with the
simulator overlay, Kafka up) and a topic of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaException

from connectors.binance import BinanceConnector
from connectors.producer import KafkaSink
from schemas.codec import RawEnvelope, decode_envelope
from simulator.testing import pointed_at, running_simulator, wait_until
from stack.topics import ensure_topics
from tickflow.config import Settings
from tickflow.kafka_security import client_config

pytestmark = pytest.mark.integration


async def produce(settings: Settings, topic: str) -> KafkaSink:
    sink = KafkaSink(settings.kafka, topic=topic)
    async with running_simulator(settings, rate_per_symbol=100, depth_levels=20) as sim:
        connector = BinanceConnector(pointed_at(settings, sim), sink)
        task = asyncio.create_task(connector.run())
        await wait_until(
            lambda: connector.stats.snapshots >= 2 and sink.sent >= 200, 30, "200 envelopes"
        )
        connector.stop()
        await asyncio.wait_for(task, 10)
    assert sink.close(timeout_s=30) == 0
    return sink


def consume(settings: Settings, topic: str, count: int) -> list[tuple[bytes, int, RawEnvelope]]:
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": f"test-connector-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[bytes, int, RawEnvelope]] = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            _, timestamp_ms = msg.timestamp()
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            records.append((key, timestamp_ms, decode_envelope(value)))
    finally:
        consumer.close()
    return records


def test_connector_envelopes_round_trip_through_kafka(stack_settings: Settings) -> None:
    topic = f"tickflow.raw.test-connector-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack_settings, extra={topic: 2})

    sink = asyncio.run(produce(stack_settings, topic))
    assert sink.failed == 0 and sink.delivered == sink.sent

    records = consume(stack_settings, topic, sink.sent)
    assert len(records) == sink.sent
    by_key: dict[bytes, list[RawEnvelope]] = defaultdict(list)
    for key, timestamp_ms, env in records:
        assert key == env.kafka_key
        assert timestamp_ms == env.receive_time_ns // 1_000_000
        by_key[key].append(env)
    assert set(by_key) == {b"binance:BTCUSDT", b"binance:ETHUSDT"}
    for key, envs in by_key.items():
        # one key = one partition: the connector's order survives, snapshot behind first diff
        seqs = [e.connection_seq for e in envs]
        assert seqs == sorted(seqs)
        channels = [e.channel for e in envs]
        assert channels.count("snapshot") == 1
        first_depth = next(e for e in envs if e.channel == "depth")
        snapshot = envs[channels.index("snapshot")]
        assert channels.index("depth") < channels.index("snapshot")
        first_u = json.loads(first_depth.payload)["data"]["U"]
        assert json.loads(snapshot.payload)["lastUpdateId"] >= first_u
        assert {e.symbol for e in envs} == {key.decode().split(":")[1]}
