"""Book pipeline benchmark: the real Flink job on the local stack, measured three ways.

    python -m bench.book_pipeline [--frames 100000] [--mixes binance,all]
                                  [--backends hashmap,rocksdb] [--rates 500,2000,5000]

The defaults take ~8 minutes on a 2-core machine, where the job does ~1.5-2k frames/s: a
larger --frames lengthens each of the four throughput runs by ~0.6 s per 1000 frames.

1. Throughput of the book operator. Per exchange mix, N raw envelopes are generated offline
   with the simulator's venues (the exact frames each venue sends a subscribed connection) and
   the connectors' own ``dispatch``/``emit`` (the exact envelopes they produce: a REST snapshot
   envelope first for Binance, in-band snapshots for Coinbase and Kraken), produced into a
   unique raw topic with ``KafkaSink``, then the pipeline job (jobs/pipeline.py, submitted to
   the session cluster with unique topics, consumer group, Redis prefix and ClickHouse
   database) consumes them. Timed from every task RUNNING (Flink's subtask timestamps) to the
   last Redis write, detected when every book in Redis holds the final version the job's own
   core (``jobs.offline.CoreRun``, run over the same envelopes here) says it must end at.
   -> raw frames/s and book updates/s (Redis writes). A small unreported run first warms the
   TaskManager (the first job after its restart is slower), so no backend pays for it.
2. The same for each state backend (``flink.state_backend``: hashmap, rocksdb); each run also
   waits for a completed checkpoint (REST ``/jobs/<id>/checkpoints``).
3. Latency Kafka record -> Redis write at steady live rates: simulator and connectors run as
   processes (as ``make run`` does) at a rate per symbol that gives the target frames/s; a
   subscriber on ``<p>:book-updates`` reads each written book hash right away and keeps
   ``publish_time_ns - receive_time_ns`` per (book, version) (the receive time is stamped by
   the connector and is the Kafka record timestamp). Writes overwritten before they were read
   are not sampled: the coverage is reported.

Results are printed and written to bench/results/book_pipeline.json. Needs the local stack
(`tickflow stack up`); everything the run creates (topics, consumer groups, Redis keys,
ClickHouse databases, jobs, processes) is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.stats import write_results
from connectors.producer import KafkaSink
from jobs.offline import CoreRun
from jobs.sinks.clickhouse import connect
from jobs.sinks.redis_books import book_key, redis_client
from schemas.codec import RawEnvelope, encode_envelope
from schemas.registry import register_namespace
from stack import flink
from stack.topics import ensure_topics
from tickflow.config import FLINK_STATE_BACKENDS, Settings, load_settings, patched_environ
from tickflow.generated import (
    MIXES,
    Generated,
    book_settings,
    generate,
)
from tickflow.kafka_security import client_config

RESULTS = Path(__file__).resolve().parent / "results" / "book_pipeline.json"
PIPELINE = "jobs/pipeline.py"
LIVE = "LIVE"  # a book's status in Redis when in sync
# a book's version: the receive time (ms) of the snapshot that last rebuilt it times this,
# plus the messages applied since (jobs/native/src/book/engine.rs)
VERSION_EPOCH_FACTOR = 10**6

PRELOAD_LINGER_MS = 50  # producer batching for the preload (not measured): fewer requests
WARMUP_FRAMES = 10_000  # the unreported warm-up run: a few seconds of the job

FLINK_RUNNING_TIMEOUT_S = 240.0
DONE_POLL_S = 0.1  # Redis polled this often for the final book versions
JOB_STATE_CHECK_S = 2.0  # and the job's state this often
CONSUME_TIMEOUT_S = 300.0  # a throughput run that has not finished by then failed
# a checkpoint every flink.checkpoint_interval_ms: allow a few intervals for the first one
CHECKPOINT_WAIT_INTERVALS = 4

LIVE_WARMUP_S = 5.0  # after every book is LIVE: let the startup burst (snapshots) drain
LIVE_MAX_MEASURE_S = 60.0  # stop sampling after this long even if fewer writes were sampled
LIVE_START_TIMEOUT_S = 90.0  # simulator + connectors up and every book LIVE in Redis
SIMULATOR_START_TIMEOUT_S = 30.0
# other jobs on the session cluster would share the cores: wait this long for them to end,
# then measure anyway and record them in the result
OTHER_JOBS_WAIT_S = 180.0
PROGRESS_EVERY_S = 5.0  # throughput runs record the books' progress this often
SAMPLER_POLL_S = 0.05  # pub/sub wait per read; messages waiting are read in one batch
SAMPLER_MAX_BATCH = 2_000  # messages read before their hashes are fetched (one pipeline)
PROCESS_STOP_TIMEOUT_S = 30.0
RATE_SAMPLE_FRAMES = 20_000  # generated to learn frames per step when "all" was not run
PERCENTILES = (50.0, 99.0)


BookId = tuple[str, str]  # (exchange, symbol)


@dataclasses.dataclass
class Expected:
    """What the job must end with, from its own core over the same envelopes."""

    versions: dict[BookId, str]  # final version of each book as Redis stores it (zero-padded)
    book_writes: int  # book states the core published (Redis writes before conflation)
    trades: int
    snapshots: int  # periodic ClickHouse book snapshots
    seconds: float  # time the core took here, driven as the job drives it, in one process


def expected_outcome(settings: Settings, envelopes: list[RawEnvelope]) -> Expected:
    started = time.perf_counter()
    run = CoreRun(settings)
    # the Kafka record time is the receive time (connectors/producer.py)
    run.feed((encode_envelope(env), env.receive_time_ns // 1_000_000) for env in envelopes)
    run.finish()
    seconds = time.perf_counter() - started
    book_prefix = f"{settings.redis.key_prefix}:book:"
    versions: dict[BookId, str] = {}
    not_live = []
    for key, args in run.redis.items():
        if key.startswith(book_prefix):
            exchange, symbol = key.removeprefix(book_prefix).split(":", 1)
            # the guarded write's ARGV: status second, the zero-padded version last
            versions[(exchange, symbol)] = args[10]
            if args[1] != LIVE:
                not_live.append((exchange, symbol))
    if not_live:
        raise RuntimeError(f"generated data leaves books not LIVE: {not_live}")
    counts = run.core.take_counts()
    return Expected(
        versions,
        counts.get("book_updates", 0),
        counts.get("trades", 0),
        run.tables.get("book_snapshots", (b"", 0))[1],
        seconds,
    )


# -- stack helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def environment(overrides: dict[str, str]) -> Iterator[Settings]:
    """``os.environ`` with ``overrides`` (bin/flink and the job read them) and its settings."""
    with patched_environ(overrides):
        yield load_settings()


def run_overrides(tag: str, raw_topic: str, backend: str) -> dict[str, str]:
    """Unique names for one job run (as bench/slice.py does for a slice)."""
    return {
        "TICKFLOW__KAFKA__RAW_TOPIC": raw_topic,
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.bench.dead.{tag}",
        "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.bench.control.{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-bench-{tag}",
        "TICKFLOW__FLINK__STATE_BACKEND": backend,
        "TICKFLOW__REDIS__KEY_PREFIX": f"tfbench{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_bench{tag}",
    }


def symbol_overrides(settings: Settings) -> dict[str, str]:
    """The benchmark's symbols for simulator and connector processes (JSON is YAML)."""
    sim, ex = settings.simulator, settings.exchanges
    return {
        "TICKFLOW__SIMULATOR__SYMBOLS": json.dumps(list(sim.symbols)),
        "TICKFLOW__SIMULATOR__COINBASE_PRODUCTS": json.dumps(list(sim.coinbase_products)),
        "TICKFLOW__SIMULATOR__KRAKEN_SYMBOLS": json.dumps(list(sim.kraken_symbols)),
        "TICKFLOW__EXCHANGES__BINANCE__SYMBOLS": json.dumps(dict(ex.binance.symbols)),
        "TICKFLOW__EXCHANGES__COINBASE__SYMBOLS": json.dumps(dict(ex.coinbase.symbols)),
        "TICKFLOW__EXCHANGES__KRAKEN__SYMBOLS": json.dumps(dict(ex.kraken.symbols)),
    }


def check_stack(settings: Settings) -> None:
    try:
        flink.rest(settings, "GET", "/overview")
        redis_client(settings.redis).ping()
        connect(settings.clickhouse).execute("SELECT 1")
        AdminClient(client_config(settings.kafka)).list_topics(timeout=10)
    except Exception as exc:  # any component down: say what to do
        raise SystemExit(
            f"bench.book_pipeline: the local stack does not answer ({exc!r}); "
            "start it with `tickflow stack up`"
        ) from None


def other_jobs(settings: Settings, ours: str | None = None) -> list[str]:
    """Jobs running on the cluster besides ours: they share the machine's cores."""
    return [
        f"{j['name']} ({j['jid']})"
        for j in flink.list_jobs(settings)
        if j["state"] not in flink.TERMINAL_STATES and j["jid"] != ours
    ]


def wait_cluster_free(settings: Settings) -> list[str]:
    """Wait (bounded) until no other job runs; the jobs still running after the wait."""
    deadline = time.monotonic() + OTHER_JOBS_WAIT_S
    others = other_jobs(settings)
    if others:
        print(f"    waiting up to {OTHER_JOBS_WAIT_S:.0f} s for other jobs: {others}", flush=True)
    while others and time.monotonic() < deadline:
        time.sleep(1.0)
        others = other_jobs(settings)
    return others


def produce(settings: Settings, topic: str, envelopes: list[RawEnvelope]) -> float:
    """Preload ``topic`` with ``KafkaSink`` (the connectors' producer); seconds taken."""
    started = time.perf_counter()
    sink = KafkaSink(settings.kafka, topic=topic, overrides={"linger.ms": PRELOAD_LINGER_MS})
    for env in envelopes:
        sink.send(env)
    undelivered = sink.close(settings.connectors.flush_timeout_s * 6)
    if undelivered or sink.failed or sink.delivered != len(envelopes):
        raise RuntimeError(
            f"preload of {topic}: {sink.delivered}/{len(envelopes)} delivered, {sink.failed} failed"
        )
    return time.perf_counter() - started


def topic_end_offsets(settings: Settings, topic: str) -> int:
    """Records ever written to ``topic`` (sum of the partitions' high watermarks)."""
    consumer = Consumer(
        {**client_config(settings.kafka), "group.id": f"bench-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def delete_kafka(settings: Settings, topics: list[str], groups: list[str]) -> None:
    admin = AdminClient(client_config(settings.kafka))
    futures = list(admin.delete_topics(topics, operation_timeout=30).values()) if topics else []
    if groups:
        futures += list(admin.delete_consumer_groups(groups, request_timeout=30).values())
    for future in futures:
        with contextlib.suppress(Exception):  # already gone (e.g. a group never committed)
            future.result(timeout=60)


def cleanup_run(settings: Settings, job_id: str | None) -> None:
    """Cancel the job; drop its ClickHouse database, Redis keys, topics and consumer group."""
    if job_id is not None:
        with contextlib.suppress(Exception):
            flink.cancel_job(settings, job_id)
    client = connect(settings.clickhouse)
    client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    client.disconnect()
    r = redis_client(settings.redis)
    for key in r.scan_iter(f"{settings.redis.key_prefix}:*"):
        r.delete(key)
    kafka = settings.kafka
    delete_kafka(
        settings, [kafka.deadletter_topic, kafka.control_topic], [settings.flink.consumer_group]
    )


def submit(settings: Settings) -> str:
    kafka = settings.kafka
    ensure_topics(settings, extra={kafka.deadletter_topic: 1, kafka.control_topic: 1})
    return flink.submit_python_job(settings, str(settings.root / PIPELINE), [])


def running_since_ms(settings: Settings, job_id: str) -> int:
    """When the last task of the job switched to RUNNING (Flink's subtask timestamps)."""
    latest = 0
    for vertex in flink.rest(settings, "GET", f"/jobs/{job_id}")["vertices"]:
        times = flink.rest(settings, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}/subtasktimes")
        for subtask in times.get("subtasks", []):
            latest = max(latest, int(subtask.get("timestamps", {}).get("RUNNING", 0)))
    return latest


def checkpoints(settings: Settings, job_id: str, timeout_s: float) -> dict[str, Any]:
    """Wait for a completed checkpoint; the counts, the latest one and the backend in use."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = flink.rest(settings, "GET", f"/jobs/{job_id}/checkpoints")
        if stats["counts"]["completed"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    config = flink.rest(settings, "GET", f"/jobs/{job_id}/checkpoints/config")
    latest = (stats.get("latest") or {}).get("completed") or {}
    return {
        "completed": stats["counts"]["completed"],
        "failed": stats["counts"]["failed"],
        "state_backend": config.get("state_backend"),
        "latest_state_size_bytes": latest.get("state_size", latest.get("checkpointed_size")),
        "latest_duration_ms": latest.get("end_to_end_duration"),
    }


# -- 1 + 2: throughput ------------------------------------------------------------------------


@dataclasses.dataclass
class DataSet:
    mix: str
    topic: str
    generated: Generated
    expected: Expected
    produce_seconds: float


def prepare(base: Settings, mix: str, frames: int, tag: str) -> DataSet:
    settings = book_settings(base, MIXES[mix])
    topic = f"tickflow.bench.raw.{mix}.{tag}"
    generated = generate(settings, MIXES[mix], frames)
    expected = expected_outcome(settings, generated.envelopes)
    ensure_topics(settings, extra={topic: settings.kafka.raw_partitions})
    seconds = produce(settings, topic, generated.envelopes)
    return DataSet(mix, topic, generated, expected, seconds)


def wait_consumed(
    settings: Settings, job_id: str, expected: Expected
) -> tuple[int, list[tuple[float, int]]]:
    """Poll until every book holds its final version; the last write's publish time (ns) and
    the progress: (seconds, messages applied over all books) every ``PROGRESS_EVERY_S``."""
    cfg = settings.redis
    r = redis_client(cfg)
    books = sorted(expected.versions)
    keys = [book_key(cfg.key_prefix, exchange, symbol) for exchange, symbol in books]
    started = time.monotonic()
    deadline = started + CONSUME_TIMEOUT_S
    next_state_check = next_progress = 0.0
    progress: list[tuple[float, int]] = []
    while True:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, ["version", "publish_time_ns"])
        rows = pipe.execute()
        behind = {
            key: (version or b"-").decode()
            for key, book, (version, _) in zip(keys, books, rows, strict=True)
            if version is None or version.decode() != expected.versions[book]
        }
        if not behind:
            return max(int(published) for _, published in rows), progress
        now = time.monotonic()
        if now >= next_progress:  # version = snapshot epoch * factor + messages applied since
            applied = sum(int(v) % VERSION_EPOCH_FACTOR for v, _ in rows if v is not None)
            progress.append((round(now - started, 1), applied))
            next_progress = now + PROGRESS_EVERY_S
        if now > deadline:
            raise RuntimeError(
                f"books not at their final version after {CONSUME_TIMEOUT_S:.0f} s "
                f"(key: version now): {dict(list(behind.items())[:5])}"
            )
        if now > next_state_check:  # a failing or restarting job would never get there
            state = flink.job_state(settings, job_id)
            if state != "RUNNING":
                raise RuntimeError(f"job {job_id} is {state} while consuming")
            next_state_check = now + JOB_STATE_CHECK_S
        time.sleep(DONE_POLL_S)


# the stack's processes whose CPU a throughput run records (pid files under state_dir)
PROCESS_PID_FILES = {
    "kafka": "kafka/kafka.pid",
    "clickhouse": "clickhouse/clickhouse.pid",
    "redis": "redis/redis.pid",
    "taskmanager": "flink/pid/flink-*-taskexecutor.pid",
    "jobmanager": "flink/pid/flink-*-standalonesession.pid",
}


def process_cpu_seconds(settings: Settings) -> dict[str, float]:
    """User + system CPU seconds so far of each stack process (the TaskManager's includes its
    embedded Python interpreter: thread mode)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for name, pattern in PROCESS_PID_FILES.items():
        for pid_file in settings.state_dir.glob(pattern):
            for pid in pid_file.read_text().split():
                with contextlib.suppress(OSError, ValueError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def throughput_run(data: DataSet, backend: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    overrides = run_overrides(tag, data.topic, backend)
    job_id: str | None = None
    expected = data.expected
    with environment(overrides) as settings:
        sharing = set(wait_cluster_free(settings))
        try:
            job_id = submit(settings)
            flink.wait_job_running(settings, job_id, FLINK_RUNNING_TIMEOUT_S)
            observed_running_ns = time.time_ns()
            cpu_before = process_cpu_seconds(settings)
            last_write_ns, progress = wait_consumed(settings, job_id, expected)
            cpu_after = process_cpu_seconds(settings)
            sharing.update(other_jobs(settings, job_id))
            running_ms = running_since_ms(settings, job_id)
            start_ns = running_ms * 1_000_000 if running_ms else observed_running_ns
            interval_s = settings.flink.checkpoint_interval_ms / 1000
            ckpt = checkpoints(settings, job_id, CHECKPOINT_WAIT_INTERVALS * interval_s)
            dead = topic_end_offsets(settings, settings.kafka.deadletter_topic)
        finally:
            cleanup_run(settings, job_id)
    elapsed = (last_write_ns - start_ns) / 1e9
    frames = len(data.generated.envelopes)
    return {
        "mix": data.mix,
        "state_backend": backend,
        "core": "native",  # bench/summary.py tells these runs from the earlier Python ones
        "books": len(expected.versions),
        "frames": frames,
        "book_updates": expected.book_writes,
        "trades": expected.trades,
        "seconds_running_to_last_write": round(elapsed, 3),
        "frames_per_s": round(frames / elapsed),
        "book_updates_per_s": round(expected.book_writes / elapsed),
        "dead_letters": dead,
        # CPU per frame of each process from RUNNING to the last write (the source's start,
        # before RUNNING was observed, is outside it)
        "cpu_us_per_frame": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / frames * 1e6, 2)
            for name in cpu_after
        },
        "checkpoints": ckpt,
        "offline_core_frames_per_s": round(frames / expected.seconds),
        # (seconds since the first poll, messages applied to the books so far)
        "progress": progress,
        "other_jobs_running": sorted(sharing),
        "job_id": job_id,
    }


# -- 3: latency ---------------------------------------------------------------------------------


class WriteSampler(threading.Thread):
    """Reads the hash of every book named on the book-updates channel, as soon as the message
    arrives, and keeps publish_time_ns - receive_time_ns per distinct (book, version)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="write-sampler", daemon=True)
        cfg = settings.redis
        self.client = redis_client(cfg)
        self.prefix = cfg.key_prefix
        self.measuring = threading.Event()
        self.stopping = threading.Event()
        self.subscribed = threading.Event()
        self.messages = 0  # LIVE writes announced while measuring
        # (book key, version) -> (publish time, publish time - receive time), ns
        self.samples: dict[tuple[str, bytes], tuple[int, int]] = {}

    def run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"{self.prefix}:book-updates")
        self.subscribed.set()
        try:
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=SAMPLER_POLL_S)
                if message is None:
                    continue
                batch = [message]
                while len(batch) < SAMPLER_MAX_BATCH:
                    more = pubsub.get_message(timeout=0.0)
                    if more is None:
                        break
                    batch.append(more)
                if self.measuring.is_set():
                    self._sample(batch)
        finally:
            pubsub.close()

    def _sample(self, batch: list[dict[str, Any]]) -> None:
        keys: set[str] = set()
        for message in batch:
            # <exchange>:<symbol>:<seq>:<status>:<version>
            exchange, rest = message["data"].decode().split(":", 1)
            symbol, _seq, status, _version = rest.rsplit(":", 3)
            if status == LIVE:
                self.messages += 1
                keys.add(book_key(self.prefix, exchange, symbol))
        pipe = self.client.pipeline(transaction=False)
        ordered = sorted(keys)
        for key in ordered:
            pipe.hmget(key, ["version", "status", "receive_time_ns", "publish_time_ns"])
        for key, (version, status, received, published) in zip(
            ordered, pipe.execute(), strict=True
        ):
            if status == LIVE.encode() and received and published:
                sample = (int(published), int(published) - int(received))
                self.samples.setdefault((key, version), sample)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@contextlib.contextmanager
def live_feed(
    env: dict[str, str], settings: Settings, logs: Path, rate_per_symbol: float
) -> Iterator[int]:
    """Simulator + one connector per exchange as processes (``tickflow simulator`` and
    ``tickflow connector``), on a free port; yields the wall time (ns) they were started."""
    port = free_port()
    feed = {
        **env,
        "TICKFLOW__SIMULATOR__PORT": str(port),
        "TICKFLOW__SIMULATOR__RATE_PER_SYMBOL": str(rate_per_symbol),
    }
    exchanges = list(MIXES["all"])
    for exchange in exchanges:
        base = f"127.0.0.1:{port}/{exchange}"
        feed[f"TICKFLOW__EXCHANGES__{exchange.upper()}__WS_URL"] = f"ws://{base}"
        if exchange == "binance":
            feed["TICKFLOW__EXCHANGES__BINANCE__REST_URL"] = f"http://{base}"
    procs: list[subprocess.Popen[bytes]] = []
    started_ns = time.time_ns()
    try:
        apps = [("simulator", ["simulator"])]
        apps += [(f"connector-{ex}", ["connector", ex]) for ex in exchanges]
        for name, args in apps:
            with (logs / f"{name}-{rate_per_symbol:g}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "tickflow.cli", *args],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, **feed},
                    )
                )
            if name == "simulator":
                wait_simulator(settings.simulator.host, port, procs[0])
        yield started_ns
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=PROCESS_STOP_TIMEOUT_S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_simulator(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SIMULATOR_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with {proc.returncode}")
        url = f"http://{host}:{port}/_sim/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if json.loads(resp.read()).get("ok"):
                return
        time.sleep(0.25)
    raise RuntimeError(f"the simulator did not answer within {SIMULATOR_START_TIMEOUT_S:.0f} s")


def wait_all_live(r: redis.Redis, keys: list[str], since_ns: int, timeout_s: float) -> None:
    """Every book LIVE and written since ``since_ns``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, ["status", "publish_time_ns"])
        rows = pipe.execute()
        if all(s == LIVE.encode() and p and int(p) > since_ns for s, p in rows):
            return
        time.sleep(0.25)
    raise RuntimeError(f"not every book LIVE within {timeout_s:.0f} s of starting the feed")


def latency_runs(
    base: Settings, rates: list[float], writes: int, frames_per_step: float
) -> list[dict[str, Any]]:
    """One job; per target rate a fresh simulator + connectors, then sample the writes."""
    settings = book_settings(base, MIXES["all"])
    books = [(ex, s) for ex in MIXES["all"] for s in getattr(settings.exchanges, ex).symbols]
    tag = uuid.uuid4().hex[:8]
    raw_topic = f"tickflow.bench.raw.live.{tag}"
    env = {
        **run_overrides(tag, raw_topic, base.flink.state_backend),
        **symbol_overrides(settings),
    }
    results: list[dict[str, Any]] = []
    job_id: str | None = None
    logs = base.state_dir / "bench" / f"book_pipeline-{tag}"
    logs.mkdir(parents=True, exist_ok=True)
    with environment(env) as job_settings:
        r = redis_client(job_settings.redis)
        keys = [book_key(job_settings.redis.key_prefix, ex, s) for ex, s in books]
        sampler = WriteSampler(job_settings)
        try:
            ensure_topics(job_settings, extra={raw_topic: job_settings.kafka.raw_partitions})
            register_namespace(job_settings)  # the connectors frame with its id
            job_id = submit(job_settings)
            flink.wait_job_running(job_settings, job_id, FLINK_RUNNING_TIMEOUT_S)
            sampler.start()
            sampler.subscribed.wait(10)
            for target in rates:
                rate_per_symbol = target / (len(books) * frames_per_step)
                sharing = set(other_jobs(job_settings, job_id))
                with live_feed(env, job_settings, logs, rate_per_symbol) as started_ns:
                    try:
                        wait_all_live(r, keys, started_ns, LIVE_START_TIMEOUT_S)
                    except RuntimeError as exc:
                        # still behind on the last rate's backlog: beyond what the job keeps
                        # up with, and so is every higher rate
                        results.append({
                            "target_frames_per_s": target, "books": len(books),
                            "error": str(exc), "keeps_up": False,
                        })  # fmt: skip
                        print(f"  target {target:.0f} frames/s: {exc}; higher rates skipped",
                              flush=True)  # fmt: skip
                        break
                    time.sleep(LIVE_WARMUP_S)
                    sampler.samples.clear()
                    sampler.messages = 0
                    offsets0 = topic_end_offsets(job_settings, raw_topic)
                    t0 = time.monotonic()
                    sampler.measuring.set()
                    while (
                        len(sampler.samples) < writes and time.monotonic() - t0 < LIVE_MAX_MEASURE_S
                    ):
                        time.sleep(0.2)
                    sampler.measuring.clear()
                    window = time.monotonic() - t0
                    offsets1 = topic_end_offsets(job_settings, raw_topic)
                    sharing.update(other_jobs(job_settings, job_id))
                timeline = sorted(sampler.samples.values())
                latencies = sorted(lat / 1e6 for _, lat in timeline)
                result: dict[str, Any] = {
                    "target_frames_per_s": target,
                    "rate_per_symbol": round(rate_per_symbol, 2),
                    "books": len(books),
                    "measured_s": round(window, 2),
                    "frames_per_s_into_kafka": round((offsets1 - offsets0) / window),
                    "redis_writes_per_s": round(sampler.messages / window),
                    "writes_sampled": len(latencies),
                    "coverage": round(len(latencies) / max(1, sampler.messages), 3),
                    "other_jobs_running": sorted(sharing),
                }
                if latencies:
                    for pct in PERCENTILES:
                        result[f"p{pct:g}_ms"] = round(percentile(latencies, pct), 2)
                    result["max_ms"] = round(latencies[-1], 2)
                    # a job that keeps up has the same latency at the end as at the start
                    tenth = max(1, len(timeline) // 10)
                    for name, part in (("first", timeline[:tenth]), ("last", timeline[-tenth:])):
                        ordered = sorted(lat / 1e6 for _, lat in part)
                        result[f"p50_{name}_tenth_ms"] = round(percentile(ordered, 50.0), 2)
                results.append(result)
                print_latency(result)
        finally:
            sampler.stopping.set()
            if sampler.is_alive():
                sampler.join(timeout=5)
            cleanup_run(job_settings, job_id)
            delete_kafka(job_settings, [raw_topic], [])
    return results


# -- main -------------------------------------------------------------------------------------


def print_throughput(run: dict[str, Any]) -> None:
    ckpt = run["checkpoints"]
    print(
        f"  {run['mix']:>8} {run['state_backend']:>8}: {run['frames']} frames "
        f"({run['book_updates']} book updates, {run['books']} books) in "
        f"{run['seconds_running_to_last_write']:.1f} s -> {run['frames_per_s']} frames/s, "
        f"{run['book_updates_per_s']} book updates/s; checkpoints completed {ckpt['completed']} "
        f"({ckpt['state_backend']}, {ckpt['latest_state_size_bytes']} B, "
        f"{ckpt['latest_duration_ms']} ms); dead letters {run['dead_letters']}; "
        f"CPU us/frame {run.get('cpu_us_per_frame')}",
        flush=True,
    )


def print_latency(result: dict[str, Any]) -> None:
    print(
        f"  target {result['target_frames_per_s']:g} frames/s: "
        f"{result['frames_per_s_into_kafka']} frames/s into Kafka, "
        f"{result['redis_writes_per_s']} writes/s; {result['writes_sampled']} writes sampled "
        f"(coverage {result['coverage']:.0%}): P50 {result.get('p50_ms')} ms, "
        f"P99 {result.get('p99_ms')} ms, max {result.get('max_ms')} ms; P50 first/last "
        f"tenth {result.get('p50_first_tenth_ms')}/{result.get('p50_last_tenth_ms')} ms",
        flush=True,
    )


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.book_pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="envelopes per mix")
    parser.add_argument(
        "--warmup-frames", type=int, default=WARMUP_FRAMES, help="unreported first run; 0: none"
    )
    parser.add_argument("--mixes", type=csv_list, default=list(MIXES), help="binance,all")
    parser.add_argument(
        "--backends", type=csv_list, default=list(FLINK_STATE_BACKENDS), help="hashmap,rocksdb"
    )
    parser.add_argument(
        "--rates",
        type=csv_list,
        default=["500", "1000", "2000", "5000"],
        help="live frames/s; none: skip",
    )
    parser.add_argument(
        "--latency-writes", type=int, default=20_000, help="writes to sample per rate"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    raw_args = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw_args)
    unknown = [m for m in args.mixes if m not in MIXES]
    unknown += [b for b in args.backends if b not in FLINK_STATE_BACKENDS]
    if unknown:
        parser.error(f"unknown mix or backend: {unknown}")
    rates = [] if args.rates == ["none"] else [float(r) for r in args.rates]

    base = load_settings()
    check_stack(base)
    wall = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.book_pipeline", *raw_args]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "parallelism": base.flink.parallelism,
        "python_execution_mode": base.flink.python_execution_mode,
        "checkpoint_interval_ms": base.flink.checkpoint_interval_ms,
        "throughput": [],
    }
    frames_per_step = 0.0  # market frames per step with every exchange: sets live rates
    if args.warmup_frames and args.backends:
        warmup = prepare(base, args.mixes[0], args.warmup_frames, f"warmup{tag}")
        try:
            run = throughput_run(warmup, args.backends[0])
        finally:
            delete_kafka(base, [warmup.topic], [])
        print(f"warm-up run: {run['frames']} frames, {run['frames_per_s']} frames/s", flush=True)
    print(f"throughput ({args.frames} preloaded envelopes per mix):", flush=True)
    for mix in args.mixes:
        data = prepare(base, mix, args.frames, tag)
        gen = data.generated
        if mix == "all":
            frames_per_step = gen.market_frames / gen.steps
        print(
            f"  {mix}: generated {len(gen.envelopes)} envelopes ({gen.steps} steps, "
            f"{gen.dead_letters} dead letters) in {gen.seconds:.1f} s, "
            f"produced in {data.produce_seconds:.1f} s",
            flush=True,
        )
        try:
            for backend in args.backends:
                run = throughput_run(data, backend)
                run["generated"] = {
                    "steps": gen.steps,
                    "per_exchange": Counter(e.exchange for e in gen.envelopes),
                    "per_channel": Counter(e.channel for e in gen.envelopes),
                    "dead_letters": gen.dead_letters,
                }
                result["throughput"].append(run)
                print_throughput(run)
        finally:
            delete_kafka(base, [data.topic], [])
    by_backend = {
        b: [r["frames_per_s"] for r in result["throughput"] if r["state_backend"] == b]
        for b in args.backends
    }
    if all(by_backend.values()) and len(by_backend) > 1:
        mean = {b: sum(v) / len(v) for b, v in by_backend.items()}
        result["faster_state_backend"] = max(mean, key=lambda b: mean[b])
        print(f"faster state backend here: {result['faster_state_backend']} {mean}")
    if rates:
        if not frames_per_step:
            sample = generate(book_settings(base, MIXES["all"]), MIXES["all"], RATE_SAMPLE_FRAMES)
            frames_per_step = sample.market_frames / sample.steps
        print(
            f"latency Kafka record -> Redis write (state backend {base.flink.state_backend}):",
            flush=True,
        )
        result["latency_state_backend"] = base.flink.state_backend
        result["latency"] = latency_runs(base, rates, args.latency_writes, frames_per_step)
    result["wall_seconds"] = round(time.monotonic() - wall, 1)
    write_results("book_pipeline", result, args.out)
    print(f"written to {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
