"""A running pipeline slice for integration tests and verification runs: simulator ->
connectors -> Kafka -> Flink job -> Redis + ClickHouse, all real. The simulator and the
connectors run as `tickflow` processes; the job is submitted to the local Flink session cluster
with `flink run`. Each slice owns unique topics, consumer group, Redis key prefix and ClickHouse
database, so it can run beside `make run` and beside other slices, and removes them (and
cancels its job) when it ends.

Also here: the checks every user of a slice makes (a book in Redis against the simulator's true
book; a watch on the Redis book-updates channel for versions that go backwards).
Used by ``tests/integration`` and ``bench/`` (``bench.slice`` re-exports it). Needs the local
stack (``tickflow stack up``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

from jobs.sinks.book_reader import StoredBook, read_book
from jobs.sinks.clickhouse import connect, drop_database
from jobs.sinks.redis_books import book_key, redis_client
from schemas.registry import RegistryClient, register_namespace
from stack import flink
from stack.topics import ensure_topics, output_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.kafka_security import client_config

T = TypeVar("T")

SIMULATOR_OVERLAY = "config/simulator.yaml"


class SliceTimeout(AssertionError):
    """A condition a slice waited for did not come true in time (an assertion in tests)."""


def with_simulator_overlay(value: str) -> str:
    """``TICKFLOW_CONFIG`` with the simulator overlay first (added if missing)."""
    overlays = [p for p in value.split(":") if p]
    return ":".join(overlays if SIMULATOR_OVERLAY in overlays else [SIMULATOR_OVERLAY, *overlays])


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
    raise SliceTimeout(
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


def sim_post(settings: Settings, path: str) -> Any:
    """POST a simulator control endpoint; its JSON answer (non-2xx statuses raise)."""
    url = f"http://{settings.simulator.host}:{settings.simulator.port}/_sim/{path}"
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class Slice:
    settings: Settings
    job_id: str
    logs: Path


def slice_overrides(
    tag: str, sim_port: int, exchanges: tuple[str, ...], rate: float
) -> dict[str, str]:
    """The environment that gives a slice its own names and points it at its simulator."""
    overrides = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.e2e{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.e2e{tag}",
        "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.control.e2e{tag}",
        "TICKFLOW__KAFKA__NBBO_TOPIC": f"tickflow.nbbo.e2e{tag}",
        "TICKFLOW__KAFKA__MATCHED_TRADES_TOPIC": f"tickflow.matched-trades.e2e{tag}",
        "TICKFLOW__KAFKA__BARS_TOPIC": f"tickflow.bars.e2e{tag}",
        "TICKFLOW__KAFKA__TOUCHES_TOPIC": f"tickflow.touches.e2e{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-e2e{tag}",
        "TICKFLOW__REDIS__KEY_PREFIX": f"tfe2e{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_e2e{tag}",
        "TICKFLOW__SIMULATOR__PORT": str(sim_port),
        "TICKFLOW__SIMULATOR__RATE_PER_SYMBOL": str(rate),
    }
    for exchange in exchanges:
        base = f"127.0.0.1:{sim_port}/{exchange}"
        overrides[f"TICKFLOW__EXCHANGES__{exchange.upper()}__WS_URL"] = f"ws://{base}"
        if exchange == "binance":
            overrides["TICKFLOW__EXCHANGES__BINANCE__REST_URL"] = f"http://{base}"
    return overrides


@contextlib.contextmanager
def start_slice(
    logs: Path,
    exchanges: tuple[str, ...] = ("binance",),
    rate_per_symbol: float = 40,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Slice]:
    """Start simulator, connectors and job with unique names; tear everything down after.

    The environment stays patched with the slice's names for the block, so ``load_settings()``
    and subprocesses started in it see the slice. On exit: the job is cancelled, the processes
    stopped, and the slice's ClickHouse database, Redis keys, Kafka topics and consumer group
    are removed. ``environ``: more settings (``TICKFLOW__...``) for every part of the slice.
    """
    overrides = {
        **slice_overrides(uuid.uuid4().hex[:8], free_port(), exchanges, rate_per_symbol),
        **(environ or {}),
    }
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    job_id: str | None = None
    with patched_environ(overrides):
        settings = load_settings()
        kafka = settings.kafka
        topics = {kafka.raw_topic: kafka.raw_partitions, kafka.deadletter_topic: 1,
                  kafka.control_topic: 1, **{t: 1 for t in output_topics(settings)}}  # fmt: skip
        subjects: list[str] = []
        try:
            ensure_topics(settings, extra=topics)
            subjects = register_namespace(settings)
            apps = [("simulator", ["simulator", "--paused"])]
            apps += [(f"connector-{ex}", ["connector", ex]) for ex in exchanges]
            for name, args in apps:
                out = (logs / f"{name}.log").open("wb")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tickflow.cli", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ),
                )
                procs.append((proc, out))
                if name == "simulator":
                    wait_for("simulator health", lambda: sim_get(settings, "health").get("ok"), 30)
            # generate nothing until the connectors listen: then every trade must reach storage
            wait_for(
                "every connector subscribed",
                lambda: all(
                    sim_get(settings, "status")["exchanges"][ex]["connections"] for ex in exchanges
                ),
                60,
            )
            sim_post(settings, "resume")
            job_id = flink.submit_python_job(
                settings, str(settings.root / "jobs" / "pipeline.py"), []
            )
            flink.wait_job_running(settings, job_id, 240)
            yield Slice(settings, job_id, logs)
        finally:
            _teardown(settings, job_id, procs, list(topics), subjects)


def _teardown(
    settings: Settings,
    job_id: str | None,
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]],
    topics: list[str],
    subjects: Sequence[str] = (),
) -> None:
    """Every step runs even if an earlier one fails; failures are reported as warnings (an
    exception here would hide the one that ended the slice)."""

    def step(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            warnings.warn(f"slice cleanup: {what} failed: {exc!r}", stacklevel=3)

    if job_id is not None:
        step(f"cancel job {job_id}", lambda: flink.cancel_job(settings, job_id))

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise

    for proc, out in reversed(procs):
        step(f"stop pid {proc.pid}", functools.partial(stop, proc))
        out.close()
    step("drop ClickHouse database", lambda: drop_database(settings.clickhouse))
    step("delete Redis keys", lambda: _delete_redis_keys(settings))
    step("delete Kafka topics", lambda: _delete_kafka_topics(settings, topics))
    registry = RegistryClient(settings.registry)
    for subject in subjects:
        step(f"delete subject {subject}", functools.partial(registry.delete_subject, subject))


def _delete_redis_keys(settings: Settings) -> None:
    r = redis_client(settings.redis)
    for key in r.scan_iter(f"{settings.redis.key_prefix}:*"):
        r.delete(key)


def _delete_kafka_topics(settings: Settings, topics: list[str]) -> None:
    """The slice's topics, and the job's consumer group (offsets committed on checkpoints)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(settings.kafka))
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in topics if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result()
    for future in admin.delete_consumer_groups([settings.flink.consumer_group]).values():
        try:
            future.result()
        except KafkaException as exc:  # a job cancelled before its first checkpoint has none
            if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                raise


# --- checks ---------------------------------------------------------------------------------


def levels(raw: list[Any], n: int) -> list[tuple[Decimal, Decimal]]:
    """The top ``n`` levels as exact decimals (from exchange strings or JSON numbers)."""
    return [(Decimal(str(p)), Decimal(str(q))) for p, q in raw[:n]]


def equals_truth(settings: Settings, exchange: str, symbol: str) -> StoredBook | None:
    """The Redis book if it is LIVE and its top N equal the simulator's true book, else None."""
    book = read_book(settings.redis, exchange, symbol)
    if book is None or book.status != "LIVE":
        return None
    truth = sim_get(settings, f"{exchange}/book?symbol={symbol}")
    n = settings.book.top_n
    ok = levels(book.bids, n) == levels(truth["bids"], n) and levels(book.asks, n) == levels(
        truth["asks"], n
    )
    return book if ok else None


class BookUpdates:
    """Every accepted Redis book write (the ``<p>:book-updates`` channel), watched in a thread:
    per book the trail of statuses and the versions that went backwards."""

    def __init__(self, settings: Settings) -> None:
        # kept: a collected client closes its pool, and the subscription's socket with it
        self.client = redis_client(settings.redis)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"{settings.redis.key_prefix}:book-updates")
        self.writes = 0
        self.last: dict[str, int] = {}  # book -> highest version seen
        self.backwards: list[tuple[str, int, int]] = []  # (book, highest before, lower one)
        self.statuses: dict[str, list[str]] = {}  # book -> status transitions
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # surfaced by the caller: a dead monitor must not pass silently
            self.error = exc

    def _watch(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            exchange, symbol, _seq, status, version = message["data"].decode().rsplit(":", 4)
            book, v = f"{exchange}:{symbol}", int(version)
            if v < self.last.get(book, -1):
                self.backwards.append((book, self.last[book], v))
            self.last[book] = max(v, self.last.get(book, -1))
            seen = self.statuses.setdefault(book, [])
            if not seen or seen[-1] != status:
                seen.append(status)
            self.writes += 1

    def trail(self, exchange: str, symbol: str) -> list[str]:
        return self.statuses.get(f"{exchange}:{symbol}", [])

    def resynced_since(self, exchange: str, symbol: str, mark: int) -> bool:
        """The book went RESYNCING after its first ``mark`` transitions and is LIVE again."""
        trail = self.trail(exchange, symbol)
        return "RESYNCING" in trail[mark:] and trail[-1] == "LIVE"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.pubsub.close()

    def __enter__(self) -> BookUpdates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VersionProbe:
    """Every ``interval_s``: each book's version in Redis, read as any reader would (through
    the Sentinels with HA); the longest stretch with no book advancing (how long the books
    were stale through a failure), and whether any version went backwards."""

    def __init__(
        self, settings: Settings, books: Sequence[tuple[str, str]], interval_s: float = 0.1
    ) -> None:
        self.settings = settings
        self.books = tuple(books)
        self.interval_s = interval_s
        self.versions: dict[tuple[str, str], int] = {}
        self.backwards: list[str] = []
        self.longest_still_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        config = self.settings.redis
        client = redis_client(config, socket_timeout=1.0, socket_connect_timeout=1.0)
        last_advance = time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                versions = {
                    b: client.hget(book_key(config.key_prefix, *b), "version") for b in self.books
                }
            except Exception:  # the primary is gone and not yet replaced: no answer
                versions = {}
            advanced = False
            for book, stored in versions.items():
                if stored is None:
                    continue
                version, before = int(stored), self.versions.get(book, 0)
                if version < before:
                    self.backwards.append(f"{book}: {before} -> {version}")
                elif version > before:
                    advanced = True
                    self.versions[book] = version
            now = time.monotonic()
            if advanced:
                self.longest_still_s = max(self.longest_still_s, now - last_advance)
                last_advance = now

    def __enter__(self) -> VersionProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def clickhouse_trades(
    settings: Settings, final: bool = True
) -> list[tuple[str, str, Decimal, Decimal, str]]:
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    exists = client.execute(f"EXISTS TABLE {db}.trades")[0][0]
    if not exists:
        return []
    rows: list[tuple[str, str, Decimal, Decimal, str]] = client.execute(
        f"SELECT symbol, trade_id, price, size, taker_side FROM {db}.trades"
        f"{' FINAL' if final else ''} ORDER BY symbol, trade_id"
    )
    return rows


def consume_all(settings: Settings, topic: str, timeout: float = 5.0) -> list[bytes]:
    """Every value in a single-partition topic, from the beginning (what arrived within
    ``timeout`` of each poll: a short read is returned, not raised)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **client_config(settings.kafka),
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


def read_topic(
    settings: Settings, topic: str, timeout: float = 10.0
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of a topic, partition by partition, each in offset order."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[bytes | None, bytes]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        for p in sorted(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got = 0
            while got < high - low:
                msg = consumer.poll(timeout)
                if msg is None:
                    raise SliceTimeout(f"{topic}[{p}]: only {got} of {high - low} records read")
                if msg.error() is None:
                    out.append((msg.key(), msg.value() or b""))
                    got += 1
    finally:
        consumer.close()
    return out
