"""Latency at offered rates: a paced producer that is not the bottleneck, the live job, and
what it shows where (Redis, ClickHouse, the result topics), over a steady window.

    python -m bench.offered_latency [--rates 20000,50000,100000] [--seconds 300]
                                    [--warmup 30] [--pool-frames 1500000]
    python -m bench.offered_latency --producer-only --rates 100000 --seconds 30

Per rate, a fresh job (jobs/pipeline.py on the session cluster, unique raw and result topics,
consumer group, Redis prefix and ClickHouse database, as ``bench.book_pipeline`` does), then a
producer process offers the rate for ``--warmup`` + ``--seconds`` and the window after the
warm-up is measured. Everything the run created is removed at the end, also on failure.

The load: a pool of realistic envelopes, replayed in cycles
    The simulator's venues and the connectors' own dispatch/emit make the envelopes
    (``bench.book_pipeline.generate``: 30 books, 10 per exchange, depth and trade frames and
    each book's opening snapshot), once, in a process per half of the raw partitions; the
    pool is kept under ``.state/bench/offered_latency/`` and reused (``--regenerate``). That
    generator makes ~4-8k frames/s per core here, so the 30 M frames of 100k frames/s x 300 s
    cannot be made for a run (1-2 hours), and cannot be made ahead either: the job judges
    trades against a watermark taken from the Kafka record times, so a frame's event times
    must be its offer time, not its generation time. Hence a pool that is played in cycles
    and patched in place as each frame is produced (``bench.offered``; every field is
    fixed-width, so the pre-encoded Avro envelope keeps its layout):
    - the envelope's ``receive_time_ns`` and the Kafka record timestamp: the produce step's
      wall time (steps of ``STEP_S``: a frame's receive time is at most one step before it
      is actually handed to the client);
    - the payload's event times (Binance E/T, Coinbase and Kraken RFC 3339): the same time,
      so trades are on time against the watermark (the run reports late events to show it);
    - trade ids: + cycle x ``TRADE_ID_SHIFT``, so a replayed trade is a new trade and not a
      re-sent one that the job's deduplication would drop.
    Sequence numbers are not patched: each cycle after the first begins as a reconnect does,
    a ``sync_lost`` envelope per book (what a connector sends when a connection ends) and
    then each book's opening snapshot again, so Binance update ids, Coinbase's connection
    sequence and Kraken's checksums are consistent within every cycle.
    Limits: every book resyncs once per cycle (pool frames / rate: 15 s at 100k/s with the
    default pool, 75 s at 20k/s); all frames of one pacing step share one receive time; the
    30 books carry 100k frames/s between them (~3.3k each), where real feeds at that rate
    span many more instruments.

The producer: ``confluent_kafka``, idempotent and ``acks=all`` like the connectors, linger
``--linger-ms``, error-only delivery reports, in its own process. Every ``STEP_S`` it
produces what is due at the rate (behind: it catches up; it never runs ahead). It reports
the frames produced each second and its own CPU; achieved < 98% of the offered rate over the
window fails the run (the producer was the bottleneck, the figures do not count).

Measured in the window:
- book update latency: a subscriber on ``<p>:book-updates`` reads each written book hash at
  once and keeps, per (book, version), ``publish_time_ns - receive_time_ns`` (the job stamps
  the publish time just before its Redis round trip) and the time the subscriber saw the
  notice minus the receive time (after the write, plus the notice's delivery and this
  process's scheduling): the true "visible in Redis" time lies between the two. Writes
  overwritten before they were read are not sampled: coverage = sampled / notices.
- NBBO latency: the same over ``<p>:nbbo-updates`` (``<instrument>:<version>``) and the
  ``<p>:nbbo:<instrument>`` hashes.
- consumer lag, every second from the TaskManager's Prometheus reporter (read when asked;
  Flink's REST API caches metrics for ``metrics.fetcher.update-interval``, 10 s, and is the
  fallback for the first figure only): the source's ``currentEmitEventTimeLag`` (emit time -
  the record's timestamp, which is its offer time: the lag in time; the headline), and the
  records behind: ``pendingRecords`` where the connector reports it (the Kafka connector 5.0
  here did not in the trial runs), else the log-end offsets (asked of the broker) minus the
  source's per-partition ``currentOffset``, also as seconds at the offered rate. Committed
  group offsets move only with checkpoints, so they are not used.
- ClickHouse visibility: every second, now - max(receive_time_ns) of one book's rows in
  ``top_of_book`` and ``trades`` and one instrument's in ``nbbo`` (primary-key prefixes:
  cheap), i.e. the age of the newest visible row.
- result-topic visibility: a ``read_committed`` consumer of the run's NBBO topic, now - the
  record's ``receive_time_ns`` for every ``RESULT_STRIDE``-th record (exactly-once: visible
  when the checkpoint's transaction commits).
- checkpoints completed in the window (REST ``/jobs/<id>/checkpoints``; >= 10 required:
  ``--checkpoint-interval-ms`` overrides ``flink.checkpoint_interval_ms`` if needed), CPU
  seconds per process (broker, ClickHouse, Redis, TaskManager, JobManager, producer, this
  process) from /proc.

Results: printed and written to bench/results/offered_latency.json (``targets``:
``e2e_latency_p99`` from the 50k run, or the highest rate at or below it, and
``consumer_lag_at_peak`` from the highest rate).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import re
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from bench.backfill_day import books_by_partition, only_books, split_partitions
from bench.book_pipeline import (
    FLINK_RUNNING_TIMEOUT_S,
    check_stack,
    delete_kafka,
    environment,
    other_jobs,
    process_cpu_seconds,
    run_overrides,
    submit,
)
from bench.offered import (
    TRADE_ID,
    Pool,
    Template,
    check_trade_ids,
    frames_due,
    headline,
    lag_summary,
    make_template,
    normalize_payload,
    patched,
    rate_summary,
    seconds_until_next,
    stamps,
    window,
)
from bench.stats import fmt_summary, histogram, machine, summarize, write_results
from connectors.producer import partition_of
from jobs.sinks.clickhouse import connect
from jobs.sinks.redis_books import book_key, nbbo_key, redis_client
from schemas.codec import RawEnvelope, decode_envelope, encode_envelope, sync_lost_payload
from stack import flink
from stack.topics import ensure_topics
from tickflow.config import KafkaConfig, Settings, load_settings
from tickflow.generated import MIXES, book_settings, generate
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results" / "offered_latency.json"
POOL_FORMAT = 3  # bump when the pool's layout or generation changes
DEFAULT_RATES = ("20000", "50000", "100000")
DEFAULT_POOL_FRAMES = 1_500_000
GENERATE_WORKERS = 2  # the box's cores
STEP_S = 0.001  # the producer's pacing step
TRADE_ID_SHIFT = 10**10  # per cycle: more than the trades of any book in a pool
LINGER_MS = 5
BEHIND_LIMIT = 0.98  # achieved / offered below this: the producer was the bottleneck
MIN_CHECKPOINTS = 10

STALL_MS = 500.0  # a receive second whose worst book latency is above this is part of a stall
SAMPLE_EVERY_S = 1.0  # lag, ClickHouse and job state
RESULT_STRIDE = 20  # every n-th result record's latency is kept (all are counted)
SAMPLER_POLL_S = 0.05
SAMPLER_MAX_BATCH = 2_000
PRODUCER_READY_TIMEOUT_S = 180.0  # the pool loaded in the producer process
PRODUCER_FLUSH_TIMEOUT_S = 30.0
PRODUCER_EXTRA_S = 90.0  # beyond its run time, the producer's result must have come
SUBSCRIBE_TIMEOUT_S = 10.0
PERCENTILES_TEXT = "P50/P99/P99.9"


# -- the pool ---------------------------------------------------------------------------------


def envelope_template(env: RawEnvelope, settings: Settings) -> Template:
    payload, patches = normalize_payload(env.exchange, env.payload)
    value = encode_envelope(dataclasses.replace(env, payload=payload))
    group = nbbo_group(env.instrument, settings.analytics.quote_equivalents)
    partition = partition_of(group, settings.kafka.raw_partitions)
    return make_template(value, len(payload), patches, env.kafka_key, partition)


def generate_part(partitions: list[int], frames: int) -> dict[str, Any]:
    """The books of ``partitions``: ``frames`` envelopes as templates (a worker process)."""
    full = book_settings(load_settings(), MIXES["all"])
    mine = {b for p in partitions for b in books_by_partition(full).get(p, [])}
    settings = only_books(full, mine)
    exchanges = tuple(ex for ex in MIXES["all"] if getattr(settings.exchanges, ex).symbols)
    gen = generate(settings, exchanges, frames)
    opening_count = len(gen.envelopes) - gen.market_frames
    if gen.dead_letters:
        raise RuntimeError(f"the generator made {gen.dead_letters} dead letters")
    opening = gen.envelopes[:opening_count]
    lost: dict[tuple[str, str], RawEnvelope] = {}
    for env in opening:  # a connector's marker when a connection ends, for each of its books
        lost.setdefault(
            (env.exchange, env.symbol),
            dataclasses.replace(
                env, channel="sync_lost", payload=sync_lost_payload("connection closed")
            ),
        )
    return {
        "lost": [envelope_template(e, settings) for e in lost.values()],
        "opening": [envelope_template(e, settings) for e in opening],
        "market": [
            (e.receive_time_ns, envelope_template(e, settings))
            for e in gen.envelopes[opening_count:]
        ],
        "seconds": gen.seconds,
    }


def pool_path(settings: Settings, frames: int) -> Path:
    return settings.state_dir / "bench" / "offered_latency" / f"pool-{frames}-v{POOL_FORMAT}.pickle"


def build_pool(settings: Settings, frames: int) -> Pool:
    """The books split over worker processes by raw partition (each keeps its books' order)."""
    started = time.monotonic()
    full = book_settings(settings, MIXES["all"])
    by_partition = books_by_partition(full)
    shares = split_partitions(by_partition, GENERATE_WORKERS)
    books = sum(len(b) for b in by_partition.values())
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(shares), mp_context=ctx) as pool:
        futures = [
            pool.submit(
                generate_part, share, frames * sum(len(by_partition[p]) for p in share) // books
            )
            for share in shares
        ]
        parts = [f.result() for f in futures]
    market = [t for _, t in sorted(
        (pair for part in parts for pair in part["market"]), key=lambda pair: pair[0]
    )]  # fmt: skip
    return Pool(
        lost=[t for part in parts for t in part["lost"]],
        opening=[t for part in parts for t in part["opening"]],
        market=market,
        books=books,
        generated_seconds=round(time.monotonic() - started, 1),
    )


def load_pool(settings: Settings, frames: int, regenerate: bool) -> tuple[Pool, Path]:
    path = pool_path(settings, frames)
    if path.exists() and not regenerate:
        return read_pool(path), path
    print(f"generating a pool of {frames:,} frames into {path} (once) ...", flush=True)
    pool = build_pool(settings, frames)
    verify_pool(pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        pickle.dump(pool, out, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    print(f"  {len(pool.market):,} market frames, {len(pool.opening)} opening, "
          f"{pool.books} books, in {pool.generated_seconds:.0f} s", flush=True)  # fmt: skip
    return pool, path


def read_pool(path: Path) -> Pool:
    with path.open("rb") as f:
        pool = pickle.load(f)
    if not isinstance(pool, Pool):
        raise RuntimeError(f"{path} is not a pool of this version: remove it or --regenerate")
    return pool


def verify_pool(pool: Pool, samples: int = 2_000) -> None:
    """Patched templates decode to the envelope with the patched receive time, payload times
    and trade ids (what the producer sends)."""
    t_ns = time.time_ns()
    stamp = stamps(t_ns)
    ms = str(t_ns // 1_000_000).encode()
    step = max(1, len(pool.market) // samples)
    for t in pool.lost + pool.opening + pool.market[::step]:
        env = decode_envelope(patched(t, stamp, TRADE_ID_SHIFT))
        if env.receive_time_ns != t_ns:
            raise RuntimeError(f"patched receive time {env.receive_time_ns} != {t_ns}")
        original = decode_envelope(t.value)
        if len(env.payload) != len(original.payload):
            raise RuntimeError("a patch changed the payload's length")
        for _, kind, trade_id in t.patches:
            if kind == TRADE_ID and str(trade_id + TRADE_ID_SHIFT).encode() not in env.payload:
                raise RuntimeError(f"trade id {trade_id} not shifted in {env.payload[:200]!r}")
        market = env.channel in ("depth", "trade")
        if env.exchange == "binance" and market and ms not in env.payload:
            raise RuntimeError(f"event time not patched: {env.payload[:200]!r}")


# -- the producer (its own process) -------------------------------------------------------------


def producer_config(kafka: KafkaConfig, linger_ms: float, errors: list[str]) -> dict[str, Any]:
    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    return {
        **client_config(kafka),
        "client.id": "tickflow-bench-offered",
        "enable.idempotence": True,  # as the connectors' KafkaSink
        "acks": "all",
        "linger.ms": linger_ms,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 2_097_151,
        "delivery.report.only.error": True,  # one Python callback per failure, not per frame
        "on_delivery": on_delivery,
    }


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def producer_main(
    pipe: Pipe, path: str, kafka: KafkaConfig, topic: str, rate: float, seconds: float,
    linger_ms: float, warmup_s: float,
) -> None:
    """Load the pool, say ready, wait for go, offer ``rate`` for ``seconds``; send the stats."""
    try:
        pool = read_pool(Path(path))
        errors: list[str] = []
        producer = Producer(producer_config(kafka, linger_ms, errors))
        producer.list_topics(topic, timeout=30)  # metadata before the clock starts
        pipe.send({"ready": True, "pid": os.getpid()})
        pipe.recv()  # go
        stats = offer(producer, pool, topic, rate, seconds, warmup_s)
        stats["undelivered"] = producer.flush(PRODUCER_FLUSH_TIMEOUT_S)
        stats["delivery_errors"] = len(errors)
        stats["first_errors"] = errors[:5]
        pipe.send(stats)
    except BaseException as exc:  # the parent must hear about it, not wait
        pipe.send({"error": repr(exc)})
        raise


def offer(
    producer: Producer, pool: Pool, topic: str, rate: float, seconds: float, warmup_s: float
) -> dict[str, Any]:
    produce, poll = producer.produce, producer.poll
    cycle = 0
    frames = pool.cycle(0)
    cycle_starts = [time.time()]  # wall times: each cycle re-opens every book (snapshots)
    index = produced = 0
    progress: list[tuple[float, int]] = [(0.0, 0)]  # (seconds since start, produced)
    next_mark = 1.0
    max_behind = 0
    cpu_at: dict[str, float] = {}
    wall_start = time.time()
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        if elapsed >= next_mark:
            progress.append((round(elapsed, 3), produced))
            next_mark += 1.0
            if "window_start" not in cpu_at and elapsed >= warmup_s:
                cpu_at["window_start"] = cpu_seconds()
        due = frames_due(rate, elapsed)
        n = due - produced
        if n <= 0:
            time.sleep(seconds_until_next(rate, produced, elapsed, STEP_S))
            continue
        max_behind = max(max_behind, n)
        now_ns = time.time_ns()
        stamp = stamps(now_ns)
        cache: dict[tuple[int, ...], tuple[bytes, ...]] = {}
        ts_ms = now_ns // 1_000_000
        shift = cycle * TRADE_ID_SHIFT
        for _ in range(n):
            if index == len(frames):
                cycle += 1
                cycle_starts.append(time.time())
                frames, index = pool.cycle(cycle), 0
                shift = cycle * TRADE_ID_SHIFT
            t = frames[index]
            index += 1
            value = patched(t, stamp, shift, cache)
            while True:
                try:
                    produce(topic, value, t.key, partition=t.partition, timestamp=ts_ms)
                    break
                except BufferError:  # the client's queue is full: the broker is behind
                    poll(0.005)
        produced += n
        poll(0)
    progress.append((round(time.perf_counter() - t0, 3), produced))
    cpu_at["end"] = cpu_seconds()
    return {
        "wall_start": wall_start,
        "progress": progress,
        "produced": produced,
        "cycles_started": cycle + 1,
        "cycle_starts": cycle_starts,
        "max_behind_frames": max_behind,
        "cpu_window_s": round(cpu_at["end"] - cpu_at.get("window_start", 0.0), 2),
    }


class ProducerProcess:
    """The producer in its own process: ``start`` (pool loaded), ``go``, ``result``."""

    def __init__(
        self, path: Path, settings: Settings, topic: str, rate: float, seconds: float,
        linger_ms: float, warmup_s: float,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.seconds = seconds
        self.process = ctx.Process(
            target=producer_main,
            args=(
                child, str(path), settings.kafka, topic, rate, seconds, linger_ms,
                warmup_s,
            ),
            name="offered-producer",
            daemon=True,
        )
        self.pid = 0

    def start(self) -> None:
        self.process.start()
        reply = self._recv(PRODUCER_READY_TIMEOUT_S)
        self.pid = int(reply["pid"])

    def go(self) -> None:
        self.pipe.send("go")

    def result(self) -> dict[str, Any]:
        return self._recv(self.seconds + PRODUCER_EXTRA_S)

    def _recv(self, timeout_s: float) -> dict[str, Any]:
        if not self.pipe.poll(timeout_s):
            raise RuntimeError(f"the producer process did not answer within {timeout_s:.0f} s")
        reply: dict[str, Any] = self.pipe.recv()
        if "error" in reply:
            raise RuntimeError(f"the producer process failed: {reply['error']}")
        return reply

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)


# -- samplers (threads of this process) ---------------------------------------------------------


class RedisSampler(threading.Thread):
    """Book and NBBO notices: per written (key, version), publish - receive and seen -
    receive (ns -> ms), while ``measuring`` is set."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="redis-sampler", daemon=True)
        cfg = settings.redis
        self.client = redis_client(cfg)
        self.prefix = cfg.key_prefix
        self.measuring = threading.Event()
        self.stopping = threading.Event()
        self.subscribed = threading.Event()
        self.notices = {"book": 0, "nbbo": 0}
        self.not_live = 0  # book notices of a RESYNCING/STALE write (resyncs per cycle)
        self.stamped: dict[str, array[float]] = {"book": array("f"), "nbbo": array("f")}
        self.worst_by_second: dict[int, float] = {}  # receive second -> worst book publish lag
        self.seen: dict[str, array[float]] = {"book": array("f"), "nbbo": array("f")}
        self._last_version: dict[str, bytes] = {}
        self.error: str | None = None

    def run(self) -> None:
        try:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(f"{self.prefix}:book-updates", f"{self.prefix}:nbbo-updates")
            self.subscribed.set()
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=SAMPLER_POLL_S)
                if message is None:
                    continue
                seen_ns = time.time_ns()
                batch = [message]
                while len(batch) < SAMPLER_MAX_BATCH:
                    more = pubsub.get_message(timeout=0.0)
                    if more is None:
                        break
                    batch.append(more)
                if self.measuring.is_set():
                    self._sample(batch, seen_ns)
            pubsub.close()
        except Exception as exc:  # reported with the results, not lost in a thread
            self.error = repr(exc)

    def _sample(self, batch: list[dict[str, Any]], seen_ns: int) -> None:
        keys: dict[str, str] = {}  # key -> "book" | "nbbo"
        for message in batch:
            data = message["data"].decode()
            if message["channel"].endswith(b":nbbo-updates"):
                self.notices["nbbo"] += 1
                instrument = data.rsplit(":", 1)[0]
                keys[nbbo_key(self.prefix, instrument)] = "nbbo"
                continue
            exchange, rest = data.split(":", 1)  # <exchange>:<symbol>:<seq>:<status>:<version>
            symbol, _seq, status, _version = rest.rsplit(":", 3)
            if status != "LIVE":
                self.not_live += 1
                continue
            self.notices["book"] += 1
            keys[book_key(self.prefix, exchange, symbol)] = "book"
        pipe = self.client.pipeline(transaction=False)
        ordered = list(keys)
        for key in ordered:
            pipe.hmget(key, ["version", "receive_time_ns", "publish_time_ns"])
        for key, (version, received, published) in zip(ordered, pipe.execute(), strict=True):
            if not (version and received and published) or self._last_version.get(key) == version:
                continue
            self._last_version[key] = version
            kind = keys[key]
            publish_ms = (int(published) - int(received)) / 1e6
            self.stamped[kind].append(publish_ms)
            if kind == "book":
                second = int(received) // 1_000_000_000
                if publish_ms > self.worst_by_second.get(second, 0.0):
                    self.worst_by_second[second] = publish_ms
            self.seen[kind].append((seen_ns - int(received)) / 1e6)


class Poller(threading.Thread):
    """Calls ``sample()`` every ``SAMPLE_EVERY_S`` until stopped; keeps (wall time, value)."""

    def __init__(
        self, name: str, sample: Callable[[], Any], close: Callable[[], None] | None = None
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.sample = sample
        self.close = close
        self.stopping = threading.Event()
        self.samples: list[tuple[float, Any]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_EVERY_S):
            try:
                self.samples.append((time.time(), self.sample()))
            except Exception as exc:  # a slow or failing poll is a gap, not the end
                if len(self.errors) < 5:
                    self.errors.append(repr(exc))
        if self.close is not None:
            with contextlib.suppress(Exception):
                self.close()


def prometheus_lines(settings: Settings, job_id: str) -> list[tuple[str, float]]:
    """(line without the value, value) of the job's metrics on the TaskManager's Prometheus
    reporter (pull: gauges read when asked, unlike the REST API's cache, which
    ``metrics.fetcher.update-interval`` refreshes only every 10 s by default)."""
    out: list[tuple[str, float]] = []
    for port in flink.flink_metrics_ports(settings):
        with contextlib.suppress(OSError), urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=3
        ) as resp:
            for line in resp.read().decode().splitlines():
                if job_id in line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out.append((name, float(value)))
    return out


def source_metrics(
    settings: Settings, job_id: str, topic: str
) -> Callable[[], dict[str, float]]:
    """A sampler of the Kafka source's lag: ``currentEmitEventTimeLag`` (ms, the worst
    subtask), ``pendingRecords`` where the connector reports it, and the log-end offsets
    minus the source's per-partition ``currentOffset``; from the TaskManager's Prometheus
    reporter, else (emit lag only) from the REST API."""
    names: dict[str, Any] = {}
    consumer = Consumer({**client_config(settings.kafka),
                         "group.id": f"tickflow-bench-offsets-{uuid.uuid4().hex[:8]}"})  # fmt: skip
    partitions = [TopicPartition(topic, p) for p in range(settings.kafka.raw_partitions)]
    topic_label = topic.replace(".", "_")  # how the reporter spells it in a metric name

    def from_rest() -> dict[str, float]:
        if not names:
            job = flink.rest(settings, "GET", f"/jobs/{job_id}")
            source = next(v for v in job["vertices"] if "Source" in v["name"])
            listed = flink.rest(settings, "GET", f"/jobs/{job_id}/vertices/{source['id']}/metrics")
            names["vertex"] = source["id"]
            names["ids"] = [m["id"] for m in listed if m["id"].endswith("currentEmitEventTimeLag")]
            if not names["ids"]:
                raise RuntimeError("the source reports no currentEmitEventTimeLag")
        values = flink.rest(
            settings, "GET",
            f"/jobs/{job_id}/vertices/{names['vertex']}/metrics?get={','.join(names['ids'])}",
        )
        return {"currentEmitEventTimeLag": max(float(m["value"]) for m in values)}

    def sample() -> dict[str, float]:
        end = sum(consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in partitions)
        out: dict[str, float] = {}
        offsets: list[float] = []
        for name, value in prometheus_lines(settings, job_id):
            metric = name.split("{", 1)[0]
            if metric.endswith("currentEmitEventTimeLag"):
                out["currentEmitEventTimeLag"] = max(out.get("currentEmitEventTimeLag", value),
                                                     value)  # fmt: skip
            elif metric.endswith("pendingRecords"):
                out["pendingRecords"] = out.get("pendingRecords", 0.0) + value
            elif metric.endswith("currentOffset") and (topic in name or topic_label in name):
                offsets.append(value)
        if len(offsets) == len(partitions):  # the offset of the last record emitted
            out["offset_lag_records"] = max(0.0, end - sum(offsets) - len(partitions))
        if "currentEmitEventTimeLag" not in out:
            out.update(from_rest())
            out["from_rest"] = 1.0
        return out

    return sample


def clickhouse_ages(
    settings: Settings,
) -> tuple[Callable[[], dict[str, float]], Callable[[], None]]:
    """A sampler of now - newest receive time visible, ms, per table (one book's rows)."""
    ex = settings.exchanges
    symbol = next(iter(ex.binance.symbols))
    instrument = next(iter(ex.coinbase.symbols.values()))
    db = settings.clickhouse.database
    where = f"exchange = 'binance' AND symbol = '{symbol}'"
    queries = {
        "top_of_book": f"SELECT max(receive_time_ns) FROM {db}.top_of_book WHERE {where}",
        "trades": f"SELECT max(receive_time_ns) FROM {db}.trades WHERE {where}",
        "nbbo": f"SELECT max(receive_time_ns) FROM {db}.nbbo WHERE instrument = '{instrument}'",
    }
    client = connect(settings.clickhouse)

    def sample() -> dict[str, float]:
        out = {}
        for table, sql in queries.items():
            newest = client.execute(sql)[0][0]
            if newest:
                out[table] = (time.time_ns() - int(newest)) / 1e6
        return out

    return sample, client.disconnect


class ResultConsumer(threading.Thread):
    """The run's NBBO result topic, read_committed: now - receive time of every
    ``RESULT_STRIDE``-th record while measuring, and every record counted."""

    RECEIVE_TIME = re.compile(rb'"receive_time_ns":(\d+)')

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        super().__init__(name="result-consumer", daemon=True)
        self.consumer = Consumer({
            **client_config(settings.kafka),
            "group.id": group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })  # fmt: skip
        self.topic = topic
        self.measuring = threading.Event()
        self.stopping = threading.Event()
        self.latencies: array[float] = array("f")
        self.records = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.consumer.subscribe([self.topic])
            seen = 0
            while not self.stopping.is_set():
                messages = self.consumer.consume(1000, 0.2)
                now_ns = time.time_ns()
                if not self.measuring.is_set():
                    continue
                for message in messages:
                    if message.error():
                        continue
                    self.records += 1
                    seen += 1
                    if seen % RESULT_STRIDE:
                        continue
                    match = self.RECEIVE_TIME.search(message.value() or b"")
                    if match:
                        self.latencies.append((now_ns - int(match.group(1))) / 1e6)
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.consumer.close()


# -- one rate ---------------------------------------------------------------------------------


def result_topic_overrides(tag: str) -> dict[str, str]:
    return {
        f"TICKFLOW__KAFKA__{name.upper()}_TOPIC": f"tickflow.bench.{name}.{tag}"
        for name in ("nbbo", "matched_trades", "bars", "touches")
    }


def checkpoint_counts(settings: Settings, job_id: str) -> dict[str, Any]:
    stats = flink.rest(settings, "GET", f"/jobs/{job_id}/checkpoints")
    latest = (stats.get("latest") or {}).get("completed") or {}
    return {
        "completed": stats["counts"]["completed"],
        "failed": stats["counts"]["failed"],
        "latest_duration_ms": latest.get("end_to_end_duration"),
        "latest_state_size_bytes": latest.get("state_size", latest.get("checkpointed_size")),
    }


def checkpoint_history(settings: Settings, job_id: str) -> Callable[[], dict[int, list[int]]]:
    """The recent checkpoints: id -> [trigger wall ms, end-to-end ms] (REST keeps the last few,
    so it is polled)."""

    def sample() -> dict[int, list[int]]:
        stats = flink.rest(settings, "GET", f"/jobs/{job_id}/checkpoints")
        return {
            int(c["id"]): [int(c["trigger_timestamp"]), int(c.get("end_to_end_duration") or 0)]
            for c in stats.get("history") or []
            if c.get("status") == "COMPLETED"
        }

    return sample


def stall_spells(
    worst_by_second: dict[int, float],
    cycle_starts: Sequence[float],
    checkpoints: dict[int, list[int]],
    start: float,
    end: float,
    threshold_ms: float = STALL_MS,
) -> list[dict[str, Any]]:
    """Runs of receive seconds whose worst book latency exceeds ``threshold_ms``, each with the
    producer cycle that began last before it (a cycle re-opens every book) and the checkpoints
    triggered from a second before it to its end: what a stall lines up with."""
    slow = sorted(s for s, ms in worst_by_second.items() if ms > threshold_ms and start <= s < end)
    spells: list[list[int]] = []
    for second in slow:
        if spells and second - spells[-1][-1] <= 1:
            spells[-1].append(second)
        else:
            spells.append([second])
    out = []
    for spell in spells:
        first, last = spell[0], spell[-1]
        before = [c for c in cycle_starts if c <= first + 1]
        out.append({
            "at_s": round(first - start, 1),
            "seconds": last - first + 1,
            "worst_ms": round(max(worst_by_second[s] for s in spell), 1),
            "since_cycle_start_s": round(first - before[-1], 1) if before else None,
            "checkpoints": [
                {"at_s": round(t / 1000 - start, 1), "ms": ms}
                for t, ms in sorted(checkpoints.values())
                if first - 1 <= t / 1000 <= last + 1
            ],
        })  # fmt: skip
    return out


def table_counts(settings: Settings) -> dict[str, int]:
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    out = {}
    for table in ("trades", "late_events", "top_of_book", "nbbo"):
        with contextlib.suppress(Exception):
            out[table] = int(client.execute(f"SELECT count() FROM {db}.{table}")[0][0])
    client.disconnect()
    return out


def retried(call: Callable[[], T], attempts: int = 4, pause_s: float = 2.0) -> T:
    """``call()``, again after a failure (the REST API of a loaded cluster times out now and
    then); the last failure is raised."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def cleanup(
    settings: Settings, job_id: str | None, topics: list[str], groups: list[str]
) -> list[str]:
    """Cancel the job; drop its ClickHouse database, Redis keys, topics and consumer groups.
    Each step on its own (one that fails or times out does not skip the others); what
    failed, for the results."""
    def cancel() -> None:
        if job_id is not None:
            flink.cancel_job(settings, job_id)

    def drop_database() -> None:
        client = connect(settings.clickhouse)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        finally:
            client.disconnect()

    def redis_keys() -> None:
        cfg = settings.redis
        r = redis_client(cfg)
        for key in r.scan_iter(f"{cfg.key_prefix}:*", count=1000):
            r.delete(key)

    kafka = settings.kafka
    steps: list[tuple[str, Callable[[], None]]] = [
        ("cancel the job", cancel),
        ("drop the ClickHouse database", drop_database),
        ("delete the Redis keys", redis_keys),
        ("delete the topics and groups", lambda: delete_kafka(
            settings, [*topics, kafka.deadletter_topic, kafka.control_topic],
            [settings.flink.consumer_group, *groups],
        )),
    ]  # fmt: skip
    failed = []
    for name, step in steps:
        try:
            retried(step, attempts=2)
        except Exception as exc:
            failed.append(f"{name}: {exc!r}")
            print(f"  cleanup: could not {name}: {exc!r}", flush=True)
    return failed


def sleep_until(wall_time: float, check: Callable[[], None]) -> None:
    """Sleep until ``wall_time``, calling ``check`` every few seconds (raises to abort)."""
    while (left := wall_time - time.time()) > 0:
        time.sleep(min(left, 5.0))
        check()


def offered_run(
    base: Settings, pool: Pool, path: Path, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    raw_topic = f"tickflow.bench.raw.offered.{tag}"
    overrides = {
        **run_overrides(tag, raw_topic, base.flink.state_backend),
        **result_topic_overrides(tag),
    }
    if args.checkpoint_interval_ms:
        overrides["TICKFLOW__FLINK__CHECKPOINT_INTERVAL_MS"] = str(args.checkpoint_interval_ms)
    total_s = args.warmup + args.seconds
    result: dict[str, Any] = {"offered_frames_per_s": rate, "warmup_s": args.warmup,
                              "window_s": args.seconds}  # fmt: skip
    job_id: str | None = None
    results_group = f"tickflow-bench-offered-{tag}"
    producer: ProducerProcess | None = None
    threads: list[Any] = []
    with environment(overrides) as settings:
        try:
            ensure_topics(settings, extra={raw_topic: settings.kafka.raw_partitions})
            sharing = set(retried(lambda: other_jobs(settings)))
            job_id = submit(settings)
            retried(lambda: flink.wait_job_running(settings, str(job_id), FLINK_RUNNING_TIMEOUT_S))
            result["job_id"] = job_id
            result["checkpoint_interval_ms"] = settings.flink.checkpoint_interval_ms
            sampler = RedisSampler(settings)
            results_reader = ResultConsumer(settings, settings.kafka.nbbo_topic, results_group)
            lag = Poller("lag-poller", source_metrics(settings, job_id, raw_topic))
            ages = Poller("clickhouse-poller", *clickhouse_ages(settings))
            checkpoints = Poller("checkpoint-poller", checkpoint_history(settings, job_id))
            threads = [sampler, results_reader, lag, ages, checkpoints]
            for thread in threads:
                thread.start()
            if not sampler.subscribed.wait(SUBSCRIBE_TIMEOUT_S):
                raise RuntimeError("the Redis subscriber did not subscribe")
            producer = ProducerProcess(
                path, settings, raw_topic, rate, total_s, args.linger_ms, args.warmup
            )
            producer.start()

            def check_job() -> None:
                state = retried(lambda: flink.job_state(settings, str(job_id)))
                if state != "RUNNING":
                    raise RuntimeError(f"job {job_id} is {state}: {flink.root_exception(settings, str(job_id))}")  # noqa: E501

            producer.go()
            start = time.time()
            window_start, window_end = start + args.warmup, start + total_s
            sleep_until(window_start, check_job)
            sampler.measuring.set()
            results_reader.measuring.set()
            cpu0 = {**process_cpu_seconds(settings), "bench": cpu_seconds()}
            ckpt0 = retried(lambda: checkpoint_counts(settings, str(job_id)))
            sleep_until(window_end, check_job)
            sampler.measuring.clear()
            results_reader.measuring.clear()
            cpu1 = {**process_cpu_seconds(settings), "bench": cpu_seconds()}
            ckpt1 = retried(lambda: checkpoint_counts(settings, str(job_id)))
            sharing.update(retried(lambda: other_jobs(settings, job_id)))
            produced = producer.result()
            result["tables"] = table_counts(settings)
        finally:
            for thread in threads:
                thread.stopping.set()
            for thread in threads:
                thread.join(timeout=10)
            if producer is not None:
                producer.stop()
            result["cleanup_failed"] = cleanup(
                settings, job_id, [raw_topic, *settings.kafka.result_topics().values()],
                [results_group],
            )
    window_s = window_end - window_start
    wall0 = float(produced["wall_start"])
    progress = [(wall0 + t, c) for t, c in produced["progress"]]
    offer_stats = rate_summary(progress, rate, window_start, window_end)
    keeps_up = (offer_stats.get("achieved_over_offered") or 0.0) >= BEHIND_LIMIT
    cpu = {name: round(cpu1[name] - cpu0.get(name, 0.0), 2) for name in cpu1}
    cpu["producer"] = produced["cpu_window_s"]
    lag_samples = [m for m in window(lag.samples, window_start, window_end) if m]
    # records behind: the connector's pendingRecords, else log-end offsets - currentOffset
    pending = [m.get("pendingRecords", m.get("offset_lag_records")) for m in lag_samples]
    pending = [p for p in pending if p is not None]
    emit_lag = [m["currentEmitEventTimeLag"] / 1000 for m in lag_samples
                if "currentEmitEventTimeLag" in m]  # fmt: skip
    emit_lag_from_rest = sum(1 for m in lag_samples if "from_rest" in m)
    pending_source = (
        "pendingRecords" if any("pendingRecords" in m for m in lag_samples)
        else "log-end offsets - source currentOffset"
    )
    age_samples = window(ages.samples, window_start, window_end)
    result.update({
        "producer": {
            **offer_stats,
            "keeps_up": keeps_up,
            "max_behind_frames": produced["max_behind_frames"],
            "cycles_started": produced["cycles_started"],
            "undelivered": produced["undelivered"],
            "delivery_errors": produced["delivery_errors"],
            "first_errors": produced["first_errors"],
            "cpu_cores": round(produced["cpu_window_s"] / window_s, 3),
            "linger_ms": args.linger_ms,
        },
        "book_update_ms": {
            "publish_minus_receive": summarize(sampler.stamped["book"]),
            "seen_minus_receive": summarize(sampler.seen["book"]),
            "notices": sampler.notices["book"],
            "notices_per_s": round(sampler.notices["book"] / window_s),
            "coverage": round(len(sampler.stamped["book"]) / max(1, sampler.notices["book"]), 3),
            "not_live_notices": sampler.not_live,
        },
        "nbbo_ms": {
            "publish_minus_receive": summarize(sampler.stamped["nbbo"]),
            "seen_minus_receive": summarize(sampler.seen["nbbo"]),
            "notices": sampler.notices["nbbo"],
            "notices_per_s": round(sampler.notices["nbbo"] / window_s),
            "coverage": round(len(sampler.stamped["nbbo"]) / max(1, sampler.notices["nbbo"]), 3),
        },
        "consumer_lag": {
            "pending_records": lag_summary(pending, 0),
            "pending_seconds_at_offered_rate": lag_summary([p / rate for p in pending]),
            "pending_records_from": pending_source,
            "emit_event_time_lag_s": lag_summary(emit_lag),
            "emit_lag_samples_from_rest": emit_lag_from_rest,
            "samples": len(lag_samples),
        },
        "clickhouse_visibility_ms": {
            table: summarize([a[table] for a in age_samples if table in a], 1)
            for table in ("top_of_book", "trades", "nbbo")
        },
        "result_topic_visibility_ms": {
            **summarize(results_reader.latencies, 1),
            "records": results_reader.records,
            "records_per_s": round(results_reader.records / window_s),
            "stride": RESULT_STRIDE,
        },
        "checkpoints": {
            "completed_in_window": ckpt1["completed"] - ckpt0["completed"],
            "failed_in_window": ckpt1["failed"] - ckpt0["failed"],
            "enough": ckpt1["completed"] - ckpt0["completed"] >= MIN_CHECKPOINTS,
            "latest_duration_ms": ckpt1["latest_duration_ms"],
            "latest_state_size_bytes": ckpt1["latest_state_size_bytes"],
        },
        "cpu_seconds": cpu,
        "cpu_cores": {name: round(s / window_s, 3) for name, s in cpu.items()},
        "other_jobs_running": sorted(sharing),
        "sampler_errors": [e for e in (sampler.error, results_reader.error) if e]
        + lag.errors + ages.errors,
        "histograms": {
            "book": histogram(sampler.stamped["book"]),
            "nbbo": histogram(sampler.stamped["nbbo"]),
        },
        "stalls": stall_spells(
            sampler.worst_by_second,
            produced["cycle_starts"],
            {k: v for _, history in checkpoints.samples for k, v in history.items()},
            window_start,
            window_end,
        ),
    })  # fmt: skip
    return result


def producer_only(
    base: Settings, pool: Pool, path: Path, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """The producer alone against Kafka (no job): what it achieves and costs."""
    topic = f"tickflow.bench.raw.offered-only.{uuid.uuid4().hex[:8]}"
    ensure_topics(base, extra={topic: base.kafka.raw_partitions})
    producer = ProducerProcess(path, base, topic, rate, args.warmup + args.seconds,
                               args.linger_ms, args.warmup)  # fmt: skip
    try:
        producer.start()
        producer.go()
        produced = producer.result()
    finally:
        producer.stop()
        delete_kafka(base, [topic], [])
    wall0 = float(produced["wall_start"])
    progress = [(wall0 + t, c) for t, c in produced["progress"]]
    stats = rate_summary(progress, rate, wall0 + args.warmup, wall0 + args.warmup + args.seconds)
    return {
        "offered_frames_per_s": rate,
        "producer": {
            **stats,
            "keeps_up": (stats.get("achieved_over_offered") or 0.0) >= BEHIND_LIMIT,
            "cpu_cores": round(produced["cpu_window_s"] / args.seconds, 3),
            "max_behind_frames": produced["max_behind_frames"],
            "undelivered": produced["undelivered"],
            "delivery_errors": produced["delivery_errors"],
            "linger_ms": args.linger_ms,
        },
    }


# -- main -------------------------------------------------------------------------------------


def print_run(run: dict[str, Any]) -> None:
    p = run["producer"]
    print(f"  offered {run['offered_frames_per_s']:,.0f} frames/s: producer achieved "
          f"{p.get('achieved_per_s')} /s ({p.get('achieved_over_offered')}), slowest second "
          f"{p.get('slowest_second_per_s')}, CPU {p.get('cpu_cores')} cores"
          + ("" if p.get("keeps_up") else "  ** PRODUCER FELL BEHIND: figures invalid **"),
          flush=True)  # fmt: skip
    if "book_update_ms" not in run:
        return
    b, n = run["book_update_ms"], run["nbbo_ms"]
    print(f"    book update, receive -> publish: {fmt_summary(b['publish_minus_receive'], 'ms')}"
          f"; -> seen {fmt_summary(b['seen_minus_receive'], 'ms')}; {b['notices_per_s']}"
          f" writes/s, coverage {b['coverage']:.0%}, not-LIVE notices {b['not_live_notices']}")
    print(f"    NBBO, receive -> publish: {fmt_summary(n['publish_minus_receive'], 'ms')}; "
          f"-> seen {fmt_summary(n['seen_minus_receive'], 'ms')}; {n['notices_per_s']}/s, "
          f"coverage {n['coverage']:.0%}")
    lag = run["consumer_lag"]
    print(f"    consumer lag: emit - offer time {fmt_summary(lag['emit_event_time_lag_s'], 's')};"
          f" records behind ({lag['pending_records_from']}) "
          f"{fmt_summary(lag['pending_records'], 'records')} = "
          f"{fmt_summary(lag['pending_seconds_at_offered_rate'], 's')} at the offered rate")
    ages = ", ".join(f"{t} {fmt_summary(s, 'ms')}"
                     for t, s in run["clickhouse_visibility_ms"].items())  # fmt: skip
    print(f"    ClickHouse newest row age: {ages}")
    print(f"    result topic (NBBO, read_committed): "
          f"{fmt_summary(run['result_topic_visibility_ms'], 'ms')}, "
          f"{run['result_topic_visibility_ms']['records_per_s']} records/s")
    c = run["checkpoints"]
    print(f"    checkpoints in window {c['completed_in_window']} (failed {c['failed_in_window']},"
          f" interval {run['checkpoint_interval_ms']} ms){'' if c['enough'] else '  ** < 10 **'}"
          f"; tables {run.get('tables')}; CPU cores {run['cpu_cores']}", flush=True)
    for spell in run.get("stalls", []):
        print(f"    stall at {spell['at_s']} s for {spell['seconds']} s, worst "
              f"{spell['worst_ms']} ms; {spell['since_cycle_start_s']} s after a pool cycle began;"
              f" checkpoints {spell['checkpoints']}")
    if run["sampler_errors"]:
        print(f"    sampler errors: {run['sampler_errors']}")


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="bench.offered_latency", description=doc.split("\n")[0])
    parser.add_argument("--rates", default=",".join(DEFAULT_RATES), help="frames/s: 20000,50000")
    parser.add_argument("--seconds", type=float, default=300.0, help="measured window per rate")
    parser.add_argument("--warmup", type=float, default=30.0, help="offered, not measured")
    parser.add_argument("--pool-frames", type=int, default=DEFAULT_POOL_FRAMES)
    parser.add_argument("--regenerate", action="store_true", help="make the pool again")
    parser.add_argument("--linger-ms", type=float, default=LINGER_MS)
    parser.add_argument("--checkpoint-interval-ms", type=int, default=0,
                        help="override flink.checkpoint_interval_ms (0: the configured one)")
    parser.add_argument("--producer-only", action="store_true",
                        help="no job: the producer alone against Kafka")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    raw_args = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw_args)
    rates = sorted(float(r) for r in args.rates.split(",") if r.strip())

    base = load_settings()
    check_stack(base)
    started = time.monotonic()
    pool, path = load_pool(base, args.pool_frames, args.regenerate)
    max_cycles = int(max(rates) * (args.warmup + args.seconds) / len(pool.market)) + 2
    check_trade_ids(pool.market + pool.opening, max_cycles * TRADE_ID_SHIFT)
    market_frames, opening_frames = len(pool.market), len(pool.opening)
    # the producer process loads its own copy
    pool = dataclasses.replace(pool, opening=[], market=pool.market[:1], lost=[])
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.offered_latency", *raw_args]),
        "machine": machine(),
        "parallelism": base.flink.parallelism,
        "state_backend": base.flink.state_backend,
        "pool": {"path": str(path), "market_frames": market_frames,
                 "opening_frames": opening_frames, "books": pool.books,
                 "generated_seconds": pool.generated_seconds},
        "runs": [],
    }
    failed = False
    for rate in rates:
        cycle_s = market_frames / rate
        alone = " - the producer alone" if args.producer_only else ""
        print(f"offering {rate:,.0f} frames/s for {args.warmup:g} + {args.seconds:g} s "
              f"(a pool cycle every {cycle_s:.0f} s){alone}", flush=True)  # fmt: skip
        measure = producer_only if args.producer_only else offered_run
        try:
            run = measure(base, pool, path, rate, args)
        except Exception as exc:  # the next rate still runs; the failure is in the results
            where = traceback.extract_tb(exc.__traceback__)[-3:]
            trace = " <- ".join(f"{f.name} ({Path(f.filename).name}:{f.lineno})"
                                for f in reversed(where))  # fmt: skip
            run = {"offered_frames_per_s": rate, "error": f"{exc!r} in {trace}", "producer": {}}
            print(f"  FAILED: {run['error']}", flush=True)
            failed = True
        run["cycle_s"] = round(cycle_s, 1)
        result["runs"].append(run)
        if "error" not in run:
            print_run(run)
            failed |= not run["producer"].get("keeps_up", False)
    if not args.producer_only:
        result["targets"] = headline(result["runs"])
        result["histograms"] = {
            f"book update, receive -> publish, ms, {r['offered_frames_per_s']:g}/s": h
            for r in result["runs"] for h in [r.get("histograms", {}).get("book")] if h
        }  # fmt: skip
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    write_results("offered_latency", result, args.out)
    print(f"written to {args.out} ({result['wall_seconds']:.0f} s)")
    if failed:
        print("a run failed or its producer fell behind (see above): the figures do not count")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
