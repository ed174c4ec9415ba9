"""The first slice end to end: simulator -> connector -> Kafka -> Flink -> Redis + ClickHouse.

Everything real: the simulator and the connector run as `tickflow` processes, the job is
submitted to the local Flink session cluster with `flink run`. The test owns unique topics,
consumer group, Redis key prefix and ClickHouse database, so it can run beside `make run`.
"""

from __future__ import annotations

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

from jobs.sinks.book_reader import read_book
from jobs.sinks.clickhouse import connect
from stack import flink
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT")
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


@pytest.fixture(scope="module")
def running_slice(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Slice]:
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
        "TICKFLOW__SIMULATOR__RATE_PER_SYMBOL": "40",
        "TICKFLOW__EXCHANGES__BINANCE__WS_URL": f"ws://127.0.0.1:{sim_port}/binance",
        "TICKFLOW__EXCHANGES__BINANCE__REST_URL": f"http://127.0.0.1:{sim_port}/binance",
    }
    logs = tmp_path_factory.mktemp("e2e")
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
        for name, args in (
            ("simulator", ["simulator", "--paused"]),
            ("connector", ["connector", "binance"]),
        ):
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
        wait_for("connector subscribed", lambda: sim_get(settings, "status")["connections"], 60)
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
    return client.execute(  # type: ignore[no-any-return]
        f"SELECT symbol, trade_id, price, size, taker_side FROM {db}.trades"
        f"{' FINAL' if final else ''} ORDER BY symbol, trade_id"
    )


def test_books_and_trades_match_the_simulator(running_slice: Slice) -> None:
    settings = running_slice.settings
    # live first: books LIVE in Redis and trades arriving in ClickHouse while traffic flows
    for symbol in SYMBOLS:
        wait_for(
            f"{symbol} LIVE in Redis",
            lambda s=symbol: (
                (b := read_book(settings.redis, "binance", s)) is not None
                and b.status == "LIVE"
                and b.bids
                and b.asks
            ),
            180,
        )
    wait_for("trades in ClickHouse", lambda: len(clickhouse_trades(settings)) > 0, 60)

    # quiescent point: stop generating, let everything drain, compare with the truth
    sim_post(settings, "pause")
    truth = {s: sim_get(settings, f"binance/book?symbol={s}") for s in SYMBOLS}
    top_n = settings.book.top_n
    for symbol in SYMBOLS:
        want_seq = truth[symbol]["lastUpdateId"]
        book = wait_for(
            f"{symbol} at update {want_seq} in Redis",
            lambda s=symbol, w=want_seq: (
                b if (b := read_book(settings.redis, "binance", s)) and b.seq == w else None
            ),
            60,
        )
        assert book.status == "LIVE"
        assert book.bids == [tuple(level) for level in truth[symbol]["bids"][:top_n]]
        assert book.asks == [tuple(level) for level in truth[symbol]["asks"][:top_n]]

    emitted = sorted(
        (
            s,
            str(t["id"]),
            Decimal(t["price"]),
            Decimal(t["qty"]),
            "sell" if t["is_buyer_maker"] else "buy",
        )
        for s in SYMBOLS
        for t in sim_get(settings, f"binance/trades?symbol={s}")["trades"]
    )
    assert emitted, "the simulator emitted no trades"
    wait_for(
        "every emitted trade in ClickHouse",
        lambda: len(clickhouse_trades(settings)) >= len(emitted),
        60,
    )
    stored = clickhouse_trades(settings)
    missing, extra = sorted(set(emitted) - set(stored)), sorted(set(stored) - set(emitted))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    assert sorted(stored) == emitted
    # fault-free run: no duplicates even before ReplacingMergeTree collapses anything
    assert len(clickhouse_trades(settings, final=False)) == len(emitted)

    # the job is visible on the cluster's REST API
    jobs = {j["jid"]: j["state"] for j in flink.list_jobs(settings)}
    assert jobs[running_slice.job_id] == "RUNNING"

    # periodic book snapshots were stored with exact decimals
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    rows = client.execute(
        f"SELECT symbol, count(), max(length(bid_prices)) FROM {db}.book_snapshots FINAL "
        "GROUP BY symbol ORDER BY symbol"
    )
    assert [r[0] for r in rows] == sorted(SYMBOLS)
    assert all(count >= 1 and depth == top_n for _, count, depth in rows)
    # top-of-book history: the last LIVE row of each symbol is the true touch
    for symbol in SYMBOLS:
        last = client.execute(
            f"SELECT bid_price, bid_size, ask_price, ask_size FROM {db}.top_of_book FINAL "
            f"WHERE symbol = '{symbol}' AND status = 'LIVE' ORDER BY version DESC LIMIT 1"
        )
        bid, ask = truth[symbol]["bids"][0], truth[symbol]["asks"][0]
        assert last == [tuple(Decimal(x) for x in (*bid, *ask))]


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


def test_gap_is_resynced_through_the_control_topic_and_bad_frames_are_dead_lettered(
    running_slice: Slice,
) -> None:
    settings = running_slice.settings
    sim_post(settings, "resume")
    # a lost depth event: the job sees U > local + 1, asks for a snapshot, the connector fetches it
    sim_post(settings, "faults/drop?exchange=binance&symbol=BTCUSDT&channel=depth&count=1")
    # a frame cut in half: routed by its stream name, rejected by the job's parser
    sim_post(settings, "faults/malformed?exchange=binance&symbol=ETHUSDT&channel=trade&count=1")

    def resync_requests() -> list[dict[str, Any]]:
        records = [json.loads(v) for v in consume_all(settings, settings.kafka.control_topic)]
        return [
            r
            for r in records
            if r["type"] == "resync" and r["symbol"] == "BTCUSDT" and r["reason"].startswith("gap")
        ]

    request = wait_for("a resync request on the control topic", resync_requests, 60)[0]
    assert request["exchange"] == "binance"
    dead = wait_for(
        "the malformed frame in the dead-letter topic",
        lambda: [json.loads(v) for v in consume_all(settings, settings.kafka.deadletter_topic)],
        60,
    )
    assert dead[0]["stage"] == "job" and dead[0]["symbol"] == "ETHUSDT"
    assert dead[0]["channel"] == "trade" and "cannot parse" in dead[0]["error"]

    # quiescent again: the resynced book equals the truth
    sim_post(settings, "pause")
    truth = sim_get(settings, "binance/book?symbol=BTCUSDT")
    book = wait_for(
        "BTCUSDT resynced to the simulator's last update",
        lambda: (
            b
            if (b := read_book(settings.redis, "binance", "BTCUSDT"))
            and b.status == "LIVE"
            and b.seq == truth["lastUpdateId"]
            else None
        ),
        60,
    )
    top_n = settings.book.top_n
    assert book.bids == [tuple(level) for level in truth["bids"][:top_n]]
    assert book.asks == [tuple(level) for level in truth["asks"][:top_n]]
