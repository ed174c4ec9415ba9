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
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import target_entry
from stack import flink, manager
from stack.supervisor import SUPERVISED, SupervisedJob, Supervisor, pipeline_submitter
from stack.system import pid_alive, read_pids
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings
from tickflow.generated import Dataset, Feeder, make_dataset
from tickflow.runs import (
    CATCH_UP_TIMEOUT_S,
    CHECKPOINT_INTERVAL_MS,
    Namespace,
    Output,
    caught_up,
    cleanup,
    collect,
    compare,
    namespace,
    reference_run,
    topics_of,
    wait,
)

RESULTS = Path(__file__).parent / "results" / "chaos.json"
TARGETS = ("taskmanager", "python", "jobmanager", "kafka", "clickhouse", "redis")
RECOVERY_TIMEOUT_S = 300.0
GAP_S = (3.0, 10.0)  # random pause after a recovery before the next kill
EST_CYCLE_S = 35.0  # kill + recovery + gap, to pace the feed over the kill phase
FEED_SPAN = 1.5  # the feed lasts this many planned kill phases: faults land on live traffic
FIRED_TIMEOUT_S = 60.0  # the Python fault raises on the next record through the job


@dataclass
class Kill:
    target: str
    at_s: float  # seconds since the chaos run began
    recovery_s: float = 0.0
    job_id_after: str = ""
    detail: str = ""


# -- progress and recovery ---------------------------------------------------------------------


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
        pids = [flink.kill_taskmanager(settings, pid) for pid in flink.taskmanager_pids(settings)]
        if not pids:
            raise RuntimeError("TaskManager: not running")
        return f"SIGKILL TaskManager pid {', '.join(map(str, pids))}"
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


def kill_plan(kills: int, rng: random.Random, targets: tuple[str, ...] = TARGETS) -> list[str]:
    """Shuffled rounds of every target, so each is hit and the order is random."""
    plan: list[str] = []
    while len(plan) < kills:
        rnd = list(targets)
        rng.shuffle(rnd)
        plan += rnd
    return plan[:kills]


# -- the comparison ----------------------------------------------------------------------------


# -- the runs ----------------------------------------------------------------------------------


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
