"""Failure drill: kill every part of the pipeline at random moments and prove the results are
exactly what a fault-free run produces.

    python -m bench.chaos [--frames 60000] [--kills 12] [--seed 7]      (make chaos)

1. A deterministic dataset: ``--frames`` raw envelopes of all three exchanges (30 books, 20
   instruments), generated offline from the simulator's venues through the connectors' own code
   (``bench.book_pipeline.generate``), Avro-encoded once; both runs consume the same bytes.
2. Reference run: the dataset into its own raw topic, the pipeline job over it with no fault,
   until its committed offsets reach the end; its ClickHouse tables, Redis keys and
   ``read_committed`` Kafka result topics are the expected output.
3. Chaos run: the same dataset fed at a steady rate into a second namespace while, at random
   moments (seeded), the TaskManager, the job's Python code, the JobManager, the Kafka broker,
   ClickHouse and Redis are killed (SIGKILL; the Python fault raises inside the task), in
   shuffled rounds. Nothing here restarts anything: ``stack.supervisor`` does, as a service
   manager would, and Flink restores the job from its last checkpoint (a new JobManager knows no
   jobs, so the supervisor resubmits it from the newest retained checkpoint). Each kill's
   recovery time is from the kill to the job RUNNING again with a checkpoint completed after
   the kill (sources, state, and the exactly-once sinks working again).
4. Compare: every ClickHouse table read with FINAL (as docs/queries.md says to) and the
   documented daily queries, every Redis key (the wall-clock ``publish_time_ns`` aside), and
   every committed record of the result topics: lost = expected and missing, duplicated = seen
   more often than expected (or not expected at all).

Determinism: the records go into the raw topic's partitions as the connectors put them, by
instrument (``connectors.producer.partition_of``), so the job reads each instrument's frames of
every exchange in the order they were produced, which the NBBO depends on; wall-clock
staleness is off in both runs (``book.stale_after_ms``, ``analytics.nbbo_stale_after_ms`` 0):
whether a book looks silent depends on when the job happens to run, which no replay can
reproduce; so does partition idleness (a partition silent for a while of wall-clock time
stops holding the watermark back, letting it run ahead at the end of the feed or during an
outage), off too (``flink.watermark_idle_timeout_ms`` 0: every partition has steady traffic).

Writes bench/results/chaos.json. Needs the local stack (started if down); kills and restarts
its services, so run it alone. Everything the run creates is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.analytics_checks import read_committed
from bench.slice import _delete_kafka_topics, _delete_redis_keys
from bench.stats import target_entry
from connectors.producer import partition_of
from jobs.sinks.clickhouse import COLUMNS, connect
from jobs.sinks.queries import DAILY_QUERIES
from jobs.sinks.redis_books import redis_client
from stack import flink, manager
from stack.supervisor import SUPERVISED, SupervisedJob, Supervisor, pipeline_submitter
from stack.system import pid_alive, read_pids
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config

RESULTS = Path(__file__).parent / "results" / "chaos.json"
TARGETS = ("taskmanager", "python", "jobmanager", "kafka", "clickhouse", "redis")
CHECKPOINT_INTERVAL_MS = 2000  # short: a recovery is proven by the next completed checkpoint
RECOVERY_TIMEOUT_S = 300.0
CATCH_UP_TIMEOUT_S = 600.0
GAP_S = (3.0, 10.0)  # random pause after a recovery before the next kill
EST_CYCLE_S = 35.0  # kill + recovery + gap, to pace the feed over the kill phase
FEED_SPAN = 1.5  # the feed lasts this many planned kill phases: faults land on live traffic
STABLE_S = 3.0  # output counts unchanged this long: everything written is visible
FIRED_TIMEOUT_S = 60.0  # the Python fault raises on the next record through the job


@dataclass
class Kill:
    target: str
    at_s: float  # seconds since the chaos run began
    recovery_s: float = 0.0
    job_id_after: str = ""
    detail: str = ""


@dataclass
class Namespace:
    """One run's own topics, consumer group, Redis prefix and ClickHouse database."""

    name: str
    environ: dict[str, str]
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        with patched_environ(self.environ):
            self.settings = load_settings()

    @contextlib.contextmanager
    def active(self) -> Iterator[Settings]:
        with patched_environ(self.environ):
            yield self.settings


def namespace(name: str, tag: str, fault_file: Path) -> Namespace:
    t = f"{name}{tag}"
    return Namespace(
        name,
        {
            "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.{t}",
            "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.{t}",
            "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.control.{t}",
            "TICKFLOW__KAFKA__NBBO_TOPIC": f"tickflow.nbbo.{t}",
            "TICKFLOW__KAFKA__MATCHED_TRADES_TOPIC": f"tickflow.matched-trades.{t}",
            "TICKFLOW__KAFKA__BARS_TOPIC": f"tickflow.bars.{t}",
            "TICKFLOW__KAFKA__TOUCHES_TOPIC": f"tickflow.touches.{t}",
            "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-{t}",
            "TICKFLOW__FLINK__CHECKPOINT_INTERVAL_MS": str(CHECKPOINT_INTERVAL_MS),
            "TICKFLOW__FLINK__PYTHON_FAULT_FILE": str(fault_file),
            "TICKFLOW__REDIS__KEY_PREFIX": f"tf{t}",
            "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_{t}",
            "TICKFLOW__BOOK__STALE_AFTER_MS": "0",
            "TICKFLOW__ANALYTICS__NBBO_STALE_AFTER_MS": "0",
            "TICKFLOW__FLINK__WATERMARK_IDLE_TIMEOUT_MS": "0",
        },
    )


def topics_of(settings: Settings) -> dict[str, int]:
    """Every topic of a namespace, the raw one partitioned as the live one is."""
    return pipeline_topics(settings)


# -- the dataset -------------------------------------------------------------------------------


@dataclass
class Dataset:
    records: list[tuple[bytes, bytes, int, str]]  # key, Avro envelope, timestamp ms, group
    books: int
    instruments: int


def make_dataset(settings: Settings, frames: int) -> Dataset:
    from bench.book_pipeline import MIXES, book_settings, generate
    from schemas.codec import encode_envelope

    gen = generate(book_settings(settings, MIXES["all"]), MIXES["all"], frames)
    envelopes = gen.envelopes[:frames]
    equivalents = settings.analytics.quote_equivalents
    records = [
        (
            env.kafka_key,
            encode_envelope(env),
            env.receive_time_ns // 1_000_000,
            nbbo_group(env.instrument, equivalents),
        )
        for env in envelopes
    ]
    return Dataset(
        records,
        books=len({(e.exchange, e.symbol) for e in envelopes}),
        instruments=len({e.instrument for e in envelopes}),
    )


class Feeder:
    """Produces the dataset into a raw topic at a steady rate (0: as fast as possible) with an
    idempotent producer that keeps retrying while the broker is down, in order, once, into the
    partitions the connectors use (``connectors.producer.partition_of``)."""

    def __init__(self, settings: Settings, records: list[tuple[bytes, bytes, int, str]]) -> None:
        from confluent_kafka import Producer

        self.topic = settings.kafka.raw_topic
        self.partitions = settings.kafka.raw_partitions
        self.records = records
        self.producer = Producer(
            {
                **client_config(settings.kafka),
                "enable.idempotence": True,
                "message.timeout.ms": 0,  # never give up on a record: the broker comes back
                "linger.ms": 5,
            }
        )
        self.sent = 0
        self.failed: list[str] = []
        self.full_speed = threading.Event()
        self._thread: threading.Thread | None = None

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def run(self, rate: float) -> None:
        started = time.monotonic()
        for i, (key, value, ts, group) in enumerate(self.records):
            if rate and not self.full_speed.is_set():
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    self.full_speed.wait(delay)
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        value,
                        key,
                        partition=partition_of(group, self.partitions),
                        timestamp=ts,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)
            self.sent += 1
        while self.producer.flush(10):
            pass

    def start(self, rate: float) -> Feeder:
        self._thread = threading.Thread(target=self.run, args=(rate,), daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.full_speed.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the feeder sent {self.sent} records in {timeout:.0f} s")


# -- progress and recovery ---------------------------------------------------------------------


def committed_offset(settings: Settings) -> int:
    """Records of the raw topic the job has consumed and checkpointed (all partitions)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": settings.flink.consumer_group,
            "enable.auto.commit": False,
        }
    )
    try:
        topic = settings.kafka.raw_topic
        parts = [TopicPartition(topic, p) for p in range(settings.kafka.raw_partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


def output_counts(settings: Settings) -> tuple[int, ...]:
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    counts = []
    for table in COLUMNS:
        exists = client.execute(f"EXISTS TABLE {db}.{table}")[0][0]
        counts.append(client.execute(f"SELECT count() FROM {db}.{table}")[0][0] if exists else 0)
    return tuple(counts)


class JobFailed(AssertionError):
    """The job failed where it must not."""


def wait(what: str, probe: Callable[[], bool], timeout: float, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except JobFailed:
            raise
        except Exception:  # servers restart under us: keep asking
            pass
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def caught_up(
    settings: Settings,
    total: int,
    job: SupervisedJob,
    log: Callable[[str], None],
    faults_expected: bool = True,
) -> None:
    """Every record consumed and checkpointed, and ClickHouse no longer growing. Without
    faults, a job that fails at all is a bug: raised at once with its root exception."""

    def consumed() -> bool:
        if not faults_expected:
            state = flink.job_state(settings, job.current)
            if state in ("RESTARTING", "FAILING", "FAILED"):
                raise JobFailed(
                    f"job {job.current} {state} in a fault-free run: "
                    + flink.root_exception(settings, job.current)
                )
        return committed_offset(settings) >= total

    wait(f"{settings.flink.consumer_group} to commit offset {total}", consumed,
         CATCH_UP_TIMEOUT_S, 1.0)  # fmt: skip
    log(f"{job.current}: every record consumed and checkpointed")
    last: list[tuple[int, ...]] = []

    def stable() -> bool:
        counts = output_counts(settings)
        last.append(counts)
        return len(last) > int(STABLE_S) and len(set(last[-int(STABLE_S) - 1 :])) == 1

    wait("ClickHouse row counts to settle", stable, 120, 1.0)


def job_recovered(settings: Settings, job: SupervisedJob, since_ms: int) -> bool:
    detail = flink.rest(settings, "GET", f"/jobs/{job.current}")
    if detail["state"] != "RUNNING" or any(
        v["status"] != "RUNNING" for v in detail.get("vertices", [])
    ):
        return False
    latest = flink.rest(settings, "GET", f"/jobs/{job.current}/checkpoints")["latest"]
    completed = latest.get("completed") or {}
    return int(completed.get("trigger_timestamp", 0)) > since_ms


def recovered(settings: Settings, job: SupervisedJob, since_ms: int) -> bool:
    return manager.stack_answers(settings, SUPERVISED) and job_recovered(settings, job, since_ms)


# -- the kills ---------------------------------------------------------------------------------


def _sigkill_pid_file(path: Path, what: str) -> str:
    pids = [p for p in read_pids(path) if pid_alive(p)]
    if not pids:
        raise RuntimeError(f"{what}: no live pid in {path}")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return f"SIGKILL {what} pid {', '.join(map(str, pids))}"


def kill(settings: Settings, target: str, fault_file: Path) -> str:
    """Crash one part of the pipeline the way it crashes for real; what was done."""
    pid_dir = flink.runtime_dir(settings) / "pid"
    if target == "taskmanager":
        return _sigkill_pid_file(pid_dir / "flink--taskexecutor.pid", "TaskManager")
    if target == "jobmanager":
        return _sigkill_pid_file(pid_dir / "flink--standalonesession.pid", "JobManager")
    if target == "python":
        fault_file.touch()
        fired = Path(f"{fault_file}.fired")
        wait("the job's Python code to raise", fired.exists, FIRED_TIMEOUT_S, 0.1)
        fired.unlink()
        return "InjectedPythonFault raised in the job's Python key function"
    component = manager.components(settings, [target])[0]
    pids = component.pids()
    if not pids:
        raise RuntimeError(f"{target}: not running")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return f"SIGKILL {target} pid {', '.join(map(str, pids))}"


def kill_plan(kills: int, rng: random.Random) -> list[str]:
    """Shuffled rounds of every target, so each is hit and the order is random."""
    plan: list[str] = []
    while len(plan) < kills:
        rnd = list(TARGETS)
        rng.shuffle(rnd)
        plan += rnd
    return plan[:kills]


# -- the comparison ----------------------------------------------------------------------------


def clickhouse_rows(settings: Settings) -> dict[str, Counter[tuple[Any, ...]]]:
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    out: dict[str, Counter[tuple[Any, ...]]] = {}
    for table, columns in COLUMNS.items():
        rows = client.execute(f"SELECT {', '.join(columns)} FROM {db}.{table} FINAL")
        out[table] = Counter(tuple(_hashable(v) for v in row) for row in rows)
    return out


def physical_rows(settings: Settings) -> int:
    """Rows as stored (before FINAL): more than FINAL shows = replays the tables absorbed."""
    return sum(output_counts(settings))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def query_results(settings: Settings, rows: dict[str, Counter[tuple[Any, ...]]]) -> dict[str, Any]:
    """The documented daily queries, for every instrument / book and date in the data."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    cols = {t: COLUMNS[t] for t in COLUMNS}
    nbbo = [dict(zip(cols["nbbo"], r, strict=True)) for r in rows["nbbo"]]
    trades = [dict(zip(cols["matched_trades"], r, strict=True)) for r in rows["matched_trades"]]
    dates = sorted({r["date"] for r in nbbo} | {r["date"] for r in trades})
    instruments = sorted({r["instrument"] for r in nbbo})
    books = sorted({(r["exchange"], r["symbol"]) for r in trades})
    out: dict[str, Any] = {}
    for name, (sql, params) in DAILY_QUERIES.items():
        calls: list[dict[str, Any]] = []
        for day in dates:
            if name == "bars":
                calls += [
                    {"instrument": i, "venue": "ALL", "interval_ms": 60000, "date": day}
                    for i in instruments
                ]
            elif name == "nbbo_history":
                calls += [{"instrument": i, "from_ms": 0, "to_ms": 2**63 - 1} for i in instruments]
            elif name == "matched_trades":
                calls += [{"exchange": e, "symbol": s, "date": day} for e, s in books]
            else:
                calls.append({"from_date": day, "to_date": day})
        assert all(set(c) == set(params) for c in calls), name
        out[name] = [client.execute(sql(db), c) for c in calls]
    return out


def redis_state(settings: Settings) -> dict[str, Any]:
    r = redis_client(settings.redis)
    prefix = settings.redis.key_prefix
    state: dict[str, Any] = {}
    for key in r.scan_iter(f"{prefix}:*"):
        name = key.decode().removeprefix(prefix)
        kind = r.type(key).decode()
        if kind == "hash":
            fields = {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
            fields.pop("publish_time_ns", None)  # when it was written: wall clock
            fields.pop("live_until_ms", None)  # the writer's lease: wall clock too
            state[name] = fields
        elif kind == "set":
            state[name] = sorted(m.decode().removeprefix(prefix) for m in r.smembers(key))
        else:
            state[name] = kind
    return state


def kafka_records(settings: Settings) -> dict[str, Counter[str]]:
    return {
        table: Counter(json.dumps(r, sort_keys=True) for r in read_committed(settings, topic))
        for table, topic in settings.kafka.result_topics().items()
    }


@dataclass
class Output:
    clickhouse: dict[str, Counter[tuple[Any, ...]]]
    physical_rows: int
    queries: dict[str, Any]
    redis: dict[str, Any]
    kafka: dict[str, Counter[str]]


def collect(settings: Settings) -> Output:
    rows = clickhouse_rows(settings)
    return Output(
        rows,
        physical_rows(settings),
        query_results(settings, rows),
        redis_state(settings),
        kafka_records(settings),
    )


def diff(expected: Counter[Any], actual: Counter[Any]) -> tuple[int, int]:
    """(lost, duplicated): expected and missing; seen more often than expected."""
    lost = sum((expected - actual).values())
    duplicated = sum((actual - expected).values())
    return lost, duplicated


def compare(ref: Output, got: Output) -> dict[str, Any]:
    tables = {}
    for table in COLUMNS:
        lost, dup = diff(ref.clickhouse[table], got.clickhouse[table])
        tables[table] = {
            "expected": sum(ref.clickhouse[table].values()),
            "actual": sum(got.clickhouse[table].values()),
            "lost": lost,
            "duplicated": dup,
        }
    topics = {}
    for table in ref.kafka:
        lost, dup = diff(ref.kafka[table], got.kafka[table])
        topics[table] = {
            "expected": sum(ref.kafka[table].values()),
            "actual": sum(got.kafka[table].values()),
            "lost": lost,
            "duplicated": dup,
        }
    redis_diff = sorted(
        k for k in set(ref.redis) | set(got.redis) if ref.redis.get(k) != got.redis.get(k)
    )
    return {
        "expected_rows": sum(t["expected"] for t in tables.values()),
        "actual_rows": sum(t["actual"] for t in tables.values()),
        "lost": sum(t["lost"] for t in tables.values()) + sum(t["lost"] for t in topics.values()),
        "duplicated": sum(t["duplicated"] for t in tables.values())
        + sum(t["duplicated"] for t in topics.values()),
        "tables": tables,
        "queries_equal": ref.queries == got.queries,
        "queries_compared": sum(len(v) for v in ref.queries.values()),
        "physical_rows": {"reference": ref.physical_rows, "chaos": got.physical_rows},
        "redis_state_equal": not redis_diff,
        "redis_keys": {
            "expected": len(ref.redis),
            "actual": len(got.redis),
            "differing": redis_diff[:20],
        },
        "kafka_output_equal": all(t["lost"] == 0 and t["duplicated"] == 0 for t in topics.values()),
        "kafka_topics": topics,
    }


# -- the runs ----------------------------------------------------------------------------------


def cleanup(settings: Settings, job: SupervisedJob) -> None:
    for job_id in job.job_ids:
        with contextlib.suppress(Exception):
            flink.cancel_job(settings, job_id)
        shutil.rmtree(flink.runtime_dir(settings) / "checkpoints" / job_id, ignore_errors=True)
    with contextlib.suppress(Exception):
        connect(settings.clickhouse).execute(
            f"DROP DATABASE IF EXISTS {settings.clickhouse.database}"
        )
    with contextlib.suppress(Exception):
        _delete_redis_keys(settings)
    with contextlib.suppress(Exception):
        _delete_kafka_topics(settings, list(topics_of(settings)))


def reference_run(
    ns: Namespace, data: Dataset, job: SupervisedJob, log: Callable[[str], None]
) -> Output:
    """The same job over the same records with no fault: what the chaos run must end with."""
    with ns.active() as settings:
        ensure_topics(settings, extra=topics_of(settings))
        Feeder(settings, data.records).run(rate=0)
        job.job_ids.append(job.submit(None))
        flink.wait_job_running(settings, job.current, 240)
        log(f"reference: job {job.current} over {len(data.records)} records")
        caught_up(settings, len(data.records), job, log, faults_expected=False)
        flink.cancel_job(settings, job.current)
        return collect(settings)


def chaos_run(
    ns: Namespace,
    data: Dataset,
    job: SupervisedJob,
    kills: int,
    rng: random.Random,
    fault_file: Path,
    log: Callable[[str], None],
) -> tuple[Output, list[Kill], Supervisor, Feeder]:
    with ns.active() as settings:
        ensure_topics(settings, extra=topics_of(settings))
        job.job_ids.append(job.submit(None))
        flink.wait_job_running(settings, job.current, 240)
        plan = kill_plan(kills, rng)
        rate = len(data.records) / (FEED_SPAN * kills * EST_CYCLE_S)
        feeder = Feeder(settings, data.records).start(rate)
        supervisor = Supervisor(settings, job, SUPERVISED, log=log).start()
        started = time.monotonic()
        done: list[Kill] = []
        try:
            for target in plan:
                time.sleep(rng.uniform(*GAP_S))
                since_ms = time.time_ns() // 1_000_000
                at = time.monotonic()
                detail = kill(settings, target, fault_file)
                log(
                    f"kill {len(done) + 1}/{kills}: {target} ({detail}); "
                    f"fed {feeder.sent}/{len(data.records)}"
                )
                wait(
                    f"recovery from the {target} kill",
                    functools.partial(recovered, settings, job, since_ms),
                    RECOVERY_TIMEOUT_S,
                )
                item = Kill(
                    target,
                    round(at - started, 1),
                    round(time.monotonic() - at, 1),
                    job.current,
                    detail,
                )
                done.append(item)
                log(f"  recovered in {item.recovery_s} s (job {job.current})")
            log(f"kills done; feeding the rest ({feeder.sent}/{len(data.records)} so far)")
            feeder.join(CATCH_UP_TIMEOUT_S)
            caught_up(settings, len(data.records), job, log)
        finally:
            supervisor.stop()
        for job_id in job.job_ids:
            with contextlib.suppress(Exception):
                flink.cancel_job(settings, job_id)
        return collect(settings), done, supervisor, feeder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60_000)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.frames, args.kills, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    print(f"written to {args.out}")
    return 0 if report["passed"] else 1


def run(frames: int, kills: int, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    base = load_settings()
    manager.up(base, SUPERVISED, log=log)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    fault_file = base.state_dir / "chaos" / f"python-fault-{tag}"
    fault_file.parent.mkdir(parents=True, exist_ok=True)
    ref_ns = namespace("chaosref", tag, fault_file.with_name(f"unused-{tag}"))
    chaos_ns = namespace("chaos", tag, fault_file)
    started = time.monotonic()
    data = make_dataset(base, frames)
    log(
        f"dataset: {len(data.records)} records, {data.books} books, "
        f"{data.instruments} instruments ({time.monotonic() - started:.0f} s)"
    )
    ref_job = SupervisedJob([], pipeline_submitter(ref_ns.settings))
    chaos_job = SupervisedJob([], pipeline_submitter(chaos_ns.settings))
    try:
        reference = reference_run(ref_ns, data, ref_job, log)
        got, done, supervisor, feeder = chaos_run(
            chaos_ns, data, chaos_job, kills, rng, fault_file, log
        )
        result = compare(reference, got)
    finally:
        cleanup(ref_ns.settings, ref_job)
        cleanup(chaos_ns.settings, chaos_job)
    result["kills"] = [k.__dict__ for k in done]
    result["kill_count"] = len(done)
    result["passed"] = (
        len(done) >= kills
        and result["lost"] == 0
        and result["duplicated"] == 0
        and result["redis_state_equal"]
        and result["kafka_output_equal"]
        and result["queries_equal"]
        and not feeder.failed
    )
    result["targets"] = {
        "chaos_records_lost": target_entry(
            result["lost"] + result["duplicated"], "records", kills=len(done), frames=frames
        )
    }
    result["supervisor_actions"] = [a.what for a in supervisor.actions]
    result["job_submissions"] = len(chaos_job.job_ids)
    result["conditions"] = {
        "frames": len(data.records),
        "books": data.books,
        "instruments": data.instruments,
        "exchanges": ["binance", "coinbase", "kraken"],
        "seed": seed,
        "kills": kills,
        "raw_partitions": base.kafka.raw_partitions,
        "checkpoint_interval_ms": CHECKPOINT_INTERVAL_MS,
        "feed_rate_per_s": round(len(data.records) / (FEED_SPAN * kills * EST_CYCLE_S), 1),
        "parallelism": base.flink.parallelism,
        "state_backend": base.flink.state_backend,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
    }
    return result


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'kill':>4}  {'target':<12} {'at s':>7} {'recovery s':>10}  job after")
    for i, k in enumerate(report["kills"], 1):
        print(
            f"{i:>4}  {k['target']:<12} {k['at_s']:>7} {k['recovery_s']:>10}  {k['job_id_after']}"
        )
    print(f"\n{'table':<16} {'expected':>9} {'actual':>9} {'lost':>5} {'dup':>5}")
    for name, t in {
        **report["tables"],
        **{f"kafka:{k}": v for k, v in report["kafka_topics"].items()},
    }.items():
        print(f"{name:<16} {t['expected']:>9} {t['actual']:>9} {t['lost']:>5} {t['duplicated']:>5}")
    print(
        f"\nrows expected {report['expected_rows']}, actual {report['actual_rows']}, "
        f"lost {report['lost']}, duplicated {report['duplicated']}; "
        f"queries equal {report['queries_equal']} ({report['queries_compared']}); "
        f"redis equal {report['redis_state_equal']} "
        f"({report['redis_keys']['expected']} keys); "
        f"kafka equal {report['kafka_output_equal']}; "
        f"physical rows {report['physical_rows']}"
    )
    print("PASSED" if report["passed"] else "FAILED")


if __name__ == "__main__":
    raise SystemExit(main())
