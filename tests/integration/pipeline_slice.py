"""A running pipeline for integration tests: simulator -> connectors -> Kafka -> Flink job ->
Redis + ClickHouse, all real. The simulator and the connectors run as `tickflow` processes; the
job is submitted to the local Flink session cluster with `flink run`. Each slice owns unique
topics, consumer group, Redis key prefix and ClickHouse database, so it can run beside
`make run` and beside other slices.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from jobs.sinks.clickhouse import connect
from stack import flink
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:  # a server still starting refuses connections
            last = None
            error = exc
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r}, error: {error!r})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_get(settings: Settings, path: str) -> Any:
    url = f"http://{settings.simulator.host}:{settings.simulator.port}/_sim/{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def sim_post(settings: Settings, path: str) -> None:
    url = f"http://{settings.simulator.host}:{settings.simulator.port}/_sim/{path}"
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


@dataclass
class Slice:
    settings: Settings
    job_id: str
    logs: Path


@contextlib.contextmanager
def start_slice(
    logs: Path, exchanges: tuple[str, ...] = ("binance",), rate_per_symbol: float = 40
) -> Iterator[Slice]:
    """Start simulator, connectors and job with unique names; tear everything down after."""
    tag = uuid.uuid4().hex[:8]
    sim_port = free_port()
    overrides = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.e2e{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.e2e{tag}",
        "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.control.e2e{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-e2e{tag}",
        "TICKFLOW__REDIS__KEY_PREFIX": f"tfe2e{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_e2e{tag}",
        "TICKFLOW__SIMULATOR__PORT": str(sim_port),
        "TICKFLOW__SIMULATOR__RATE_PER_SYMBOL": str(rate_per_symbol),
    }
    for exchange in exchanges:
        base = f"127.0.0.1:{sim_port}/{exchange}"
        overrides[f"TICKFLOW__EXCHANGES__{exchange.upper()}__WS_URL"] = f"ws://{base}"
        if exchange == "binance":
            overrides["TICKFLOW__EXCHANGES__BINANCE__REST_URL"] = f"http://{base}"
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.MonkeyPatch.context() as mp:
        for name, value in overrides.items():
            mp.setenv(name, value)
        settings = load_settings()
        kafka = settings.kafka
        ensure_topics(
            settings,
            extra={
                kafka.raw_topic: kafka.raw_partitions,
                kafka.deadletter_topic: 1,
                kafka.control_topic: 1,
            },
        )
        apps = [("simulator", ["simulator", "--paused"])]
        apps += [(f"connector-{ex}", ["connector", ex]) for ex in exchanges]
        for name, args in apps:
            out = (logs / f"{name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tickflow.cli", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ),
                )
            )
            if name == "simulator":
                wait_for("simulator health", lambda: sim_get(settings, "health").get("ok"), 30)
        # generate nothing until the connector listens: then every trade must reach storage
        wait_for(
            "every connector subscribed",
            lambda: all(
                sim_get(settings, "status")["exchanges"][ex]["connections"] for ex in exchanges
            ),
            60,
        )
        sim_post(settings, "resume")
        job_id = flink.submit_python_job(settings, str(settings.root / "jobs" / "pipeline.py"), [])
        try:
            flink.wait_job_running(settings, job_id, 240)
            yield Slice(settings, job_id, logs)
        finally:
            flink.cancel_job(settings, job_id)
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)
            client = connect(settings.clickhouse)
            client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
            r = redis.Redis(host=settings.redis.host, port=settings.redis.port)
            for key in r.scan_iter(f"{settings.redis.key_prefix}:*"):
                r.delete(key)


def clickhouse_trades(
    settings: Settings, final: bool = True
) -> list[tuple[str, str, Decimal, Decimal, str]]:
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    exists = client.execute(f"EXISTS TABLE {db}.trades")[0][0]
    if not exists:
        return []
    return client.execute(
        f"SELECT symbol, trade_id, price, size, taker_side FROM {db}.trades"
        f"{' FINAL' if final else ''} ORDER BY symbol, trade_id"
    )


def consume_all(settings: Settings, topic: str, timeout: float = 5.0) -> list[bytes]:
    """Every value in a single-partition topic, from the beginning."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
        consumer.assign([TopicPartition(topic, 0, low)])
        values: list[bytes] = []
        while len(values) < high - low:
            msg = consumer.poll(timeout)
            if msg is None:
                break
            if msg.error() is None:
                values.append(msg.value() or b"")
        return values
    finally:
        consumer.close()
