"""Disaster-recovery drill: lose Flink's state, Redis and ClickHouse; recover from Kafka's
retention and the latest savepoint; measure the recovery time (RTO) and prove the data is back.

    python -m bench.dr_drill [--frames 20000]      (make dr-drill)

1. A namespace of its own (topics, consumer group, Redis prefix, ClickHouse database) and a
   deterministic dataset (``bench.chaos``) in its raw topic; the pipeline job runs over it until
   every record is consumed and checkpointed. What ClickHouse, Redis and the result topics hold
   then is "before".
2. Backup, as a deployment does it continuously: a savepoint (``flink stop --drain
   --savepointPath``: drained, so every pending trade is matched and every window closed, as a
   rebuild that reads to the end makes them), copied off the machine's Flink state directory
   (S3 on AWS; a backup directory here).
3. Disaster: the job's checkpoints and savepoint in Flink's state directory, every Redis key and
   the ClickHouse database are deleted.
4. Recovery, the runbooks' procedure (docs/runbooks/):
   - the job resubmitted from the backed-up savepoint: it continues where it stopped, and its
     exactly-once result topics go on without a duplicate;
   - the derived data that was only in the lost stores rebuilt from Kafka's retention: a bounded
     replay (``tickflow job replay``) of the raw topic up to the savepoint, writing into the
     live ClickHouse database and Redis prefix. Rows have deterministic identities
     (ReplacingMergeTree) and Redis writes are version-guarded, so the rebuild is idempotent
     and the live job's newer writes always win.
   RTO = from the start of the recovery to every table and key equal to "before".
5. Writes bench/results/dr_drill.json: RTO, each step's seconds, rows and keys compared.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos import SupervisedJob
from bench.slice import _delete_redis_keys
from jobs.replay_cli import replay_overrides, submit_replay
from jobs.sinks.clickhouse import connect
from stack import flink, manager
from stack.supervisor import SUPERVISED, pipeline_submitter
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import Feeder, make_dataset
from tickflow.runs import (
    caught_up,
    cleanup,
    collect,
    compare,
    namespace,
    output_counts,
    topics_of,
    wait,
)

RESULTS = Path(__file__).parent / "results" / "dr_drill.json"
RECOVERY_TIMEOUT_S = 900.0


def wipe(settings: Settings, job: SupervisedJob, savepoint: Path) -> None:
    """The disaster: Flink's state of the job, Redis and ClickHouse, gone."""
    for job_id in job.job_ids:
        shutil.rmtree(flink.runtime_dir(settings) / "checkpoints" / job_id, ignore_errors=True)
    shutil.rmtree(savepoint, ignore_errors=True)
    connect(settings.clickhouse).execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    _delete_redis_keys(settings)


def settled(settings: Settings) -> bool:
    """ClickHouse row counts unchanged over the last three polls."""
    history = _SETTLED.setdefault(settings.clickhouse.database, [])
    history.append(output_counts(settings))
    return len(history) >= 3 and len(set(history[-3:])) == 1


_SETTLED: dict[str, list[tuple[int, ...]]] = {}


def rebuild_overrides(settings: Settings, tag: str, to_ms: int) -> dict[str, str]:
    """A replay up to ``to_ms`` that writes the live database and Redis prefix (its result,
    dead-letter and control topics stay its own)."""
    env = replay_overrides(settings, f"dr{tag}", 0, to_ms, 0)
    env["TICKFLOW__CLICKHOUSE__DATABASE"] = settings.clickhouse.database
    env["TICKFLOW__REDIS__KEY_PREFIX"] = settings.redis.key_prefix
    return env


def run(frames: int, log: Any = print) -> dict[str, Any]:
    base = load_settings()
    manager.up(base, SUPERVISED, log=log)
    tag = uuid.uuid4().hex[:6]
    ns = namespace("dr", tag, base.state_dir / "chaos" / f"unused-{tag}")
    backup_dir = base.state_dir / "dr-backup" / tag
    data = make_dataset(base, frames)
    steps: dict[str, float] = {}
    job = SupervisedJob([], pipeline_submitter(ns.settings))
    rebuild_job: str | None = None
    rebuild_settings: Settings | None = None
    try:
        with ns.active() as settings:
            ensure_topics(settings, extra=topics_of(settings))
            Feeder(settings, data.records).run(rate=0)
            job.job_ids.append(job.submit(None))
            flink.wait_job_running(settings, job.current, 240)
            caught_up(settings, len(data.records), job, log, faults_expected=False)

            started = time.monotonic()
            # drained: the last watermark passes first, so "before" holds every trade matched
            # and every window closed, as a rebuild that reads to the end makes them
            savepoint_uri = flink.stop_with_savepoint(settings, job.current, drain=True)
            cut_ms = time.time_ns() // 1_000_000
            savepoint = Path(savepoint_uri.removeprefix("file:"))
            backup = backup_dir / savepoint.name
            shutil.copytree(savepoint, backup)
            steps["savepoint_and_backup_s"] = round(time.monotonic() - started, 1)
            log(f"backup: {savepoint} -> {backup}")
            wait("the drained job's last rows", functools.partial(settled, settings), 120, 1.0)
            before = collect(settings)
            log(f"before: {sum(output_counts(settings))} rows, {len(before.redis)} Redis keys")

            wipe(settings, job, savepoint)
            log("disaster: the job's checkpoints and savepoint, Redis keys, ClickHouse database")

            t0 = time.monotonic()
            job.job_ids.append(job.submit(backup.as_uri()))
            flink.wait_job_running(settings, job.current, 240)
            steps["job_restored_s"] = round(time.monotonic() - t0, 1)
            log(f"recovery: job {job.current} restored from the backed-up savepoint")
            with patched_environ(rebuild_overrides(settings, tag, cut_ms)):
                rebuild_settings = load_settings()
                rebuild_job = submit_replay(rebuild_settings)
                state = flink.wait_job_finished(rebuild_settings, rebuild_job, RECOVERY_TIMEOUT_S)
                if state != "FINISHED":
                    raise RuntimeError(f"the rebuild job ended {state}")
            steps["rebuild_finished_s"] = round(time.monotonic() - t0, 1)
            log(f"recovery: rebuild {rebuild_job} from Kafka retention FINISHED")
            expected = sum(sum(c.values()) for c in before.clickhouse.values())

            def all_back() -> bool:
                now = collect(settings)
                return (
                    sum(sum(c.values()) for c in now.clickhouse.values()) == expected
                    and now.redis == before.redis
                )

            wait("every row and key back", all_back, RECOVERY_TIMEOUT_S, 1.0)
            rto_s = round(time.monotonic() - t0, 1)
            after = collect(settings)
            log(f"recovered in {rto_s} s")
            flink.cancel_job(settings, job.current)
    finally:
        cleanup(ns.settings, job)
        if rebuild_settings is not None:
            topics = pipeline_topics(rebuild_settings)
            topics.pop(rebuild_settings.kafka.raw_topic)
            cleanup_topics(rebuild_settings, list(topics))
        shutil.rmtree(backup_dir, ignore_errors=True)
    result = compare(before, after)
    result["rto_s"] = rto_s
    result["steps"] = steps
    result["passed"] = (
        result["lost"] == 0
        and result["duplicated"] == 0
        and result["redis_state_equal"]
        and result["kafka_output_equal"]
        and result["queries_equal"]
    )
    result["conditions"] = {
        "frames": len(data.records),
        "books": data.books,
        "instruments": data.instruments,
        "raw_partitions": base.kafka.raw_partitions,
        "parallelism": base.flink.parallelism,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return result


def cleanup_topics(settings: Settings, topics: list[str]) -> None:
    from bench.slice import _delete_kafka_topics

    try:
        _delete_kafka_topics(settings, topics)
    except Exception as exc:  # cleanup must not hide the drill's own outcome
        print(f"cleanup: {exc!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dr_drill", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.frames)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        f"RTO {report['rto_s']} s (steps {report['steps']}); rows expected "
        f"{report['expected_rows']}, actual {report['actual_rows']}, lost {report['lost']}, "
        f"duplicated {report['duplicated']}; Redis equal {report['redis_state_equal']} "
        f"({report['redis_keys']['expected']} keys); queries equal {report['queries_equal']}"
    )
    print("PASSED" if report["passed"] else "FAILED")
    print(f"written to {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
