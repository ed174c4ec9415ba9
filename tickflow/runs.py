"""A pipeline run over a dataset in a namespace of its own (topics, consumer group, Redis
prefix, ClickHouse database), and everything it outputs collected and compared with another
run's: ClickHouse tables read with FINAL and the documented daily queries, every Redis key
(wall-clock fields aside), every committed record of the exactly-once result topics.

Two runs of the job over the same records must give equal outputs whatever happened in
between (kills, restores, a rescale): the tests and the failure drills compare a run with a
fault-free reference run this way.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.producer import partition_of
from jobs.backfill import run_backfill
from jobs.frames import KafkaFrames
from jobs.replay_cli import backfill_overrides
from jobs.sinks.clickhouse import COLUMNS, connect
from jobs.sinks.clickhouse import drop_database as drop_clickhouse_database
from jobs.sinks.queries import DAILY_QUERIES
from jobs.sinks.redis_books import redis_client
from stack import flink
from stack.supervisor import SupervisedJob
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import Dataset, Feeder
from tickflow.kafka_security import client_config
from tickflow.slice import _delete_kafka_topics, _delete_redis_keys

END_OF_TIME_MS = 2**63 - 1  # after every record: a time range to the end
CHECKPOINT_INTERVAL_MS = 2000  # short: a recovery is proven by the next completed checkpoint
CATCH_UP_TIMEOUT_S = 600.0
STABLE_S = 3.0  # output counts unchanged this long: everything written is visible


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


def namespace(
    name: str,
    tag: str,
    fault_file: Path,
    checkpoint_interval_ms: int | None = CHECKPOINT_INTERVAL_MS,
) -> Namespace:
    """A run's namespace; checkpoints every ``checkpoint_interval_ms`` (None: the profile's)."""
    t = f"{name}{tag}"
    environ = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.{t}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.{t}",
        "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.control.{t}",
        "TICKFLOW__KAFKA__NBBO_TOPIC": f"tickflow.nbbo.{t}",
        "TICKFLOW__KAFKA__MATCHED_TRADES_TOPIC": f"tickflow.matched-trades.{t}",
        "TICKFLOW__KAFKA__BARS_TOPIC": f"tickflow.bars.{t}",
        "TICKFLOW__KAFKA__TOUCHES_TOPIC": f"tickflow.touches.{t}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-{t}",
        "TICKFLOW__FLINK__PYTHON_FAULT_FILE": str(fault_file),
        "TICKFLOW__REDIS__KEY_PREFIX": f"tf{t}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_{t}",
        "TICKFLOW__BOOK__STALE_AFTER_MS": "0",
        "TICKFLOW__ANALYTICS__NBBO_STALE_AFTER_MS": "0",
        "TICKFLOW__FLINK__WATERMARK_IDLE_TIMEOUT_MS": "0",
    }
    if checkpoint_interval_ms is not None:
        environ["TICKFLOW__FLINK__CHECKPOINT_INTERVAL_MS"] = str(checkpoint_interval_ms)
    return Namespace(name, environ)


def topics_of(settings: Settings) -> dict[str, int]:
    """Every topic of a namespace, the raw one partitioned as the live one is."""
    return pipeline_topics(settings)


# -- progress --------------------------------------------------------------------------------


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


# -- the outputs -----------------------------------------------------------------------------


def read_committed(settings: Settings, topic: str, idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every committed record of a single-partition JSON topic (isolation.level
    read_committed: what a consumer of the exactly-once results sees)."""
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({
        **client_config(settings.kafka),
        "group.id": f"results-reader-{time.time_ns()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })  # fmt: skip
    out: list[dict[str, Any]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        while True:
            msg = consumer.poll(idle_s)
            if msg is None:
                return out
            if msg.error() is None:
                out.append(orjson.loads(msg.value() or b"{}"))
    finally:
        consumer.close()


def raw_values(settings: Settings) -> dict[int, list[bytes]]:
    """Every record of the raw topic (its value: the envelope), per partition in offset
    order."""
    with KafkaFrames(settings) as source:
        out: dict[int, list[bytes]] = {}
        for p in source.partitions():
            start, end = source.offset_range(p, 0, END_OF_TIME_MS)
            out[p] = [value for batch in source.read(p, start, end) for value in batch.values]
        return out


def first_difference(a: list[Any], b: list[Any]) -> int | None:
    """The first index where two lists differ (one ending first counts), None when equal."""
    pairs = zip(a, b, strict=False)
    return next(
        (i for i, (x, y) in enumerate(pairs) if x != y),
        None if len(a) == len(b) else min(len(a), len(b)),
    )


def raw_topic_check(settings: Settings, data: Dataset) -> dict[str, Any]:
    """The raw topic against the dataset fed into it: every record once, and in each partition
    in the order fed (a duplicated or reordered frame would part a book from the reference
    run's without any fault of the job)."""
    fed: dict[int, list[bytes]] = {}
    for _key, value, _ts, group in data.records:
        fed.setdefault(partition_of(group, settings.kafka.raw_partitions), []).append(value)
    read = raw_values(settings)
    expected = Counter(r for records in fed.values() for r in records)
    actual = Counter(r for records in read.values() for r in records)
    lost, duplicated = diff(expected, actual)
    # per partition: the first offset whose record is not the one fed there in that place
    parted = {p: first_difference(fed[p], read.get(p, [])) for p in sorted(fed)}
    return {
        "expected": sum(expected.values()),
        "actual": sum(actual.values()),
        "lost": lost,
        "duplicated": duplicated,
        "in_order": all(i is None for i in parted.values()),
        "first_out_of_place": {p: i for p, i in parted.items() if i is not None},
    }


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
            elif name in ("nbbo_history", "nbbo_summary"):
                every = {"from_ms": 0, "to_ms": 2**63 - 1}
                if name == "nbbo_summary":
                    every["interval_ms"] = 1000
                calls += [{"instrument": i, **every} for i in instruments]
            elif name == "matched_trades":
                calls += [{"exchange": e, "symbol": s, "date": day} for e, s in books]
            elif name == "matched_trades_detail":
                calls += [
                    {"exchange": e, "symbol": s, "from_ms": 0, "to_ms": END_OF_TIME_MS}
                    for e, s in books
                ]
            elif name == "trade_through_counts":
                calls += [{"instrument": i, "from_date": day, "to_date": day} for i in instruments]
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


EXAMPLES = 3  # differing rows, records and Redis fields kept in a report, per table


def examples(expected: Counter[Any], actual: Counter[Any]) -> dict[str, list[str]]:
    """The first few rows (in sort order) expected and missing, and seen but not expected:
    where two runs' outputs part, for a report to show (empty when equal)."""
    missing = sorted(map(str, (expected - actual).elements()))[:EXAMPLES]
    unexpected = sorted(map(str, (actual - expected).elements()))[:EXAMPLES]
    return {"missing": missing, "unexpected": unexpected} if missing or unexpected else {}


def redis_differences(ref: dict[str, Any], got: dict[str, Any], key: str) -> dict[str, Any]:
    """The fields of one key that differ between two runs' Redis, as (expected, actual)."""
    a, b = ref.get(key), got.get(key)
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return {"expected": a, "actual": b}
    return {f: [a.get(f), b.get(f)] for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)}


def _counts(expected: Counter[Any], actual: Counter[Any]) -> dict[str, Any]:
    lost, dup = diff(expected, actual)
    counts: dict[str, Any] = {
        "expected": sum(expected.values()),
        "actual": sum(actual.values()),
        "lost": lost,
        "duplicated": dup,
    }
    if lost or dup:
        counts["examples"] = examples(expected, actual)
    return counts


def compare(ref: Output, got: Output) -> dict[str, Any]:
    tables = {table: _counts(ref.clickhouse[table], got.clickhouse[table]) for table in COLUMNS}
    topics = {table: _counts(ref.kafka[table], got.kafka[table]) for table in ref.kafka}
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
            "examples": {k: redis_differences(ref.redis, got.redis, k) for k in redis_diff[:3]},
        },
        "kafka_output_equal": all(t["lost"] == 0 and t["duplicated"] == 0 for t in topics.values()),
        "kafka_topics": topics,
    }


# -- runs --------------------------------------------------------------------------------------


def cancel_jobs(settings: Settings, job: SupervisedJob) -> None:
    """Cancel every job a run submitted (its outputs and checkpoints stay)."""
    for job_id in job.job_ids:
        with contextlib.suppress(Exception):
            flink.cancel_job(settings, job_id)


def cleanup(settings: Settings, job: SupervisedJob) -> None:
    cancel_jobs(settings, job)
    for job_id in job.job_ids:
        shutil.rmtree(flink.runtime_dir(settings) / "checkpoints" / job_id, ignore_errors=True)
    with contextlib.suppress(Exception):
        drop_clickhouse_database(settings.clickhouse)
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


def batch_backfill(settings: Settings, day: Any, to_ms: int | None = None) -> dict[str, Any]:
    env = backfill_overrides(settings, day, 0)
    if to_ms is not None:
        env["TICKFLOW__REPLAY__TO_MS"] = str(to_ms)
    with patched_environ(env):
        bf = load_settings()
        return run_backfill(bf, bf.replay.from_ms, bf.replay.to_ms, log=lambda _: None)


def drop_database(settings: Settings) -> None:
    drop_clickhouse_database(settings.clickhouse)


def differing(a: dict[str, Counter[Any]], b: dict[str, Counter[Any]]) -> dict[str, int]:
    """Per table, the rows in one and not the other (0 everywhere: equal)."""
    return {t: sum(((a[t] - b[t]) + (b[t] - a[t])).values()) for t in sorted(a)}
