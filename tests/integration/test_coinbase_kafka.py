"""The Coinbase connector produces to a real Kafka broker: what the simulator sent on the
connection is in Kafka exactly once and in order per key (heartbeats and acknowledgements
aside), including across a dropped message (sync_lost + resubscription) and a reconnect.

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

import pytest
from confluent_kafka import Consumer, KafkaException

from connectors.coinbase import CoinbaseConnector
from connectors.producer import KafkaSink
from schemas.codec import RawEnvelope, decode_envelope
from simulator.testing import http_json, running_simulator, wait_until
from stack.topics import ensure_topics
from tickflow.config import Settings
from tickflow.kafka_security import client_config

pytestmark = pytest.mark.integration

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
MARKET_CHANNELS = ('"channel":"l2_data"', '"channel":"market_trades"')


def coinbase_settings(settings: Settings, ws_url: str) -> Settings:
    coinbase = dataclasses.replace(
        settings.exchanges.coinbase,
        ws_url=ws_url,
        message_interval_ms=20,
        symbols={p: p for p in PRODUCTS},
    )
    return dataclasses.replace(
        settings, exchanges=dataclasses.replace(settings.exchanges, coinbase=coinbase)
    )


async def produce(settings: Settings, topic: str) -> tuple[KafkaSink, list[dict]]:
    """Run the connector through a dropped message and a reconnect; the send logs."""
    sink = KafkaSink(settings.kafka, topic=topic)
    async with running_simulator(
        settings,
        rate_per_symbol=100,
        coinbase_products=PRODUCTS,
        coinbase_depth_levels=50,
        send_log_frames=100_000,
    ) as sim:
        connector = CoinbaseConnector(coinbase_settings(settings, f"{sim.ws_url}/coinbase"), sink)
        stats = connector.cb_stats
        task = asyncio.create_task(connector.run())
        await wait_until(
            lambda: stats.snapshots >= len(PRODUCTS) and sink.sent >= 200, 30, "first sync"
        )
        drop = "/_sim/faults/drop?exchange=coinbase&symbol=ETH-USD&channel=depth&count=1"
        await http_json(f"{sim.http_url}{drop}", "POST")
        await wait_until(lambda: stats.snapshots >= 2 * len(PRODUCTS), 30, "resubscriptions")
        # a clean close: every frame logged as sent was delivered before it
        disconnect = "/_sim/faults/disconnect?exchange=coinbase&mode=close"
        await http_json(f"{sim.http_url}{disconnect}", "POST")
        await wait_until(
            lambda: stats.connections == 2 and stats.snapshots >= 3 * len(PRODUCTS), 30, "reconnect"
        )
        sent_before = sink.sent
        await wait_until(lambda: sink.sent >= sent_before + 100, 30, "traffic after reconnect")
        await http_json(f"{sim.http_url}/_sim/pause", "POST")

        def received_all() -> bool:
            conns = sim.status()["connections"]
            sent = sum(c["frames_sent"] for c in sim.connections() if c["exchange"] == "coinbase")
            return all(c["queued"] == 0 for c in conns) and sent == connector.stats.frames

        await wait_until(received_all, 30, "every frame received")
        connector.stop()
        await asyncio.wait_for(task, 10)
        logs = [c for c in sim.connections(with_frames=True) if c["exchange"] == "coinbase"]
    assert sink.close(timeout_s=30) == 0
    assert stats.gaps == 1 and stats.sync_lost == len(PRODUCTS)
    return sink, logs


def consume(settings: Settings, topic: str, count: int) -> list[tuple[bytes, int, RawEnvelope]]:
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": f"test-coinbase-{uuid.uuid4().hex[:8]}",
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


def product_of(frame: dict) -> str:
    event = frame["events"][0]
    return str(event["product_id"] if "product_id" in event else event["trades"][0]["product_id"])


def test_what_the_simulator_sent_is_in_kafka_once_and_in_order(stack_settings: Settings) -> None:
    topic = f"tickflow.raw.test-coinbase-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack_settings, extra={topic: 2})

    sink, logs = asyncio.run(produce(stack_settings, topic))
    assert sink.failed == 0 and sink.delivered == sink.sent

    records = consume(stack_settings, topic, sink.sent)
    assert len(records) == sink.sent
    by_key: dict[bytes, list[RawEnvelope]] = defaultdict(list)
    for key, timestamp_ms, env in records:
        assert key == env.kafka_key == f"coinbase:{env.symbol}".encode()
        assert timestamp_ms == env.receive_time_ns // 1_000_000
        by_key[key].append(env)
    assert set(by_key) == {f"coinbase:{p}".encode() for p in PRODUCTS}

    # what each connection sent, per product, in order (heartbeats and acks are not produced)
    sent: dict[str, list[bytes]] = defaultdict(list)
    assert len(logs) == 2
    for log in sorted(logs, key=lambda c: int(c["id"][1:])):
        for frame in log["frames"]:
            if any(channel in frame for channel in MARKET_CHANNELS):
                sent[product_of(json.loads(frame))].append(frame.encode())
    for product in PRODUCTS:
        envs = by_key[f"coinbase:{product}".encode()]
        # exactly once and in order: the same payloads, byte for byte
        assert [e.payload for e in envs if e.channel != "sync_lost"] == sent[product]
        # two markers: the gap (ahead of the resubscription's snapshot), then the lost
        # connection (ahead of the new connection's snapshot)
        channels = [e.channel for e in envs]
        lost = [i for i, c in enumerate(channels) if c == "sync_lost"]
        snapshots = [
            i
            for i, e in enumerate(envs)
            if b'"type":"snapshot"' in e.payload and e.channel == "depth"
        ]
        assert len(lost) == 2 and len(snapshots) == 3
        assert snapshots[0] < lost[0] < snapshots[1] < lost[1] < snapshots[2]
        # the connector's order within each connection survives
        for conn_id in {e.connection_id for e in envs}:
            seqs = [e.connection_seq for e in envs if e.connection_id == conn_id]
            assert seqs == sorted(seqs)
