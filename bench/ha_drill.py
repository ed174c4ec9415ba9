"""Availability drill of the HA profile: a fault every ~2 minutes for half an hour, the books
watched from outside, and the results compared with a fault-free run.

    python -m bench.ha_drill [--minutes 30] [--every 120] [--frames 90000] [--seed 7] [--keep]
                             [--kinds jobmanager,kafka-broker,...]         (make ha-drill)

Runs on the HA profile (``config/ha.yaml``: three Kafka nodes, Redis with a replica and
Sentinels, two ClickHouse replicas, ZooKeeper and a standby JobManager), started if down; the
default profile's stack must be down (the same ports). As ``bench.chaos`` does: a
deterministic dataset of every exchange (``tickflow.generated``), a fault-free reference run of
the job over it, then the drill run, fed at a steady rate for ``--minutes`` while, every
``--every`` seconds (+-20%, seeded), one fault of the next kind in shuffled rounds:

- ``jobmanager``: SIGKILL of the leading JobManager (the standby takes the job over);
- ``jobmanager-partition``: the leading JobManager cut off the network where it runs (every
  packet of its sockets dropped: ``stack.cutoff``) for ``PARTITION_S``, then joined again;
  only where the JobManagers can be (``flink.partitionable_jobmanagers``: config/netns.yaml);
- ``kafka-broker``: SIGKILL of the broker leading the raw topic's first partition;
- ``kafka-controller``: SIGKILL of the controller leading the KRaft quorum (a process of its
  own: the brokers keep serving while the other two elect a leader);
- ``kafka-partition``: the node leading the raw topic's first partition cut off the network
  (every packet to and from it dropped) for ``PARTITION_S``, then joined again; only where the
  nodes are hosts of their own (``kafka.node_network``: config/netns.yaml, which
  ``make ha-drill`` uses);
- ``redis-primary``: SIGKILL of the Redis primary (the Sentinels promote the replica);
- ``taskmanager``: SIGKILL of the TaskManager running the job (it restarts from its checkpoint
  on the spare);
- ``python``: the job's Python code raises once (a crashed Python worker);
- ``clickhouse``: SIGKILL of the primary ClickHouse server (the sink goes on to the replica,
  and the primary, started again, fetches what it missed);
- ``zookeeper``: SIGKILL of the ZooKeeper ensemble's leading node (two of three keep serving);
- ``paused-taskmanager``: SIGSTOP of the TaskManager running the job for ``PAUSE_S``, then
  SIGCONT.

``stack.supervisor`` starts whatever died, as a service manager would. Per fault: *failover*
is from the fault to the job RUNNING with a checkpoint completed after it and every component
answering; *stale* is how long the books stood still from a reader's side within the fault's
window (``monitoring.availability``: a stall is > 1 s in which no book or NBBO in Redis
advanced, sampled every 100 ms); *detection* is the first Prometheus alert that fired after the
fault, if any, within 30 s (a fault may heal before its alert fires). Then every ClickHouse
table (FINAL), Redis key and committed result record is compared with the reference run: lost
and duplicated.

The availability stated is at one fault of each kind per day: 1 - (the sum over kinds of the
mean stale seconds) / 86,400. Writes bench/results/ha_drill.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos import job_recovered, kill, kill_plan
from bench.stats import target_entry
from monitoring.availability import AvailabilityProbe
from stack import cutoff, flink, manager, netns
from stack.cli import with_overlay
from stack.kafka import kill_controller, kill_node, node_net_host, partition_leader
from stack.redis_server import sentinel_primary_port
from stack.supervisor import SupervisedJob, Supervisor, pipeline_submitter
from stack.system import listening_pid
from stack.topics import ensure_topics
from stack.zookeeper import ZooKeeper
from tickflow.config import Settings, load_settings
from tickflow.generated import Dataset, Feeder, make_dataset
from tickflow.runs import (
    CATCH_UP_TIMEOUT_S,
    Namespace,
    cancel_jobs,
    caught_up,
    cleanup,
    collect,
    compare,
    namespace,
    raw_topic_check,
    reference_run,
    topics_of,
    wait,
)

RESULTS = Path(__file__).parent / "results" / "ha_drill.json"
KINDS = ("jobmanager", "kafka-broker", "redis-primary", "taskmanager", "python", "clickhouse",
         "zookeeper", "paused-taskmanager", "kafka-partition", "jobmanager-partition",
         "kafka-controller")  # fmt: skip
DEFAULT_KINDS = KINDS  # ZooKeeper too: three nodes ride out the loss of one
# kinds that need what only config/netns.yaml sets up: Kafka's nodes on hosts of their own
# (kafka.node_network), JobManagers that can be cut off (flink.partitionable_jobmanagers)
NETWORK_KINDS = ("kafka-partition", "jobmanager-partition")
HA_COMPONENTS = ("kafka", "redis", "redis-replica", "redis-sentinel", "zookeeper", "clickhouse",
                 "clickhouse-replica", "flink")  # fmt: skip
# the bounds on stale books: every kind, and the losses replication must hide
STALE_TARGET_S = 10.0
STALE_TARGET_REPLICATED_S = 2.0
REPLICATED_KINDS = ("kafka-broker", "kafka-partition", "redis-primary")
AVAILABILITY_TARGET = 0.9995
PAUSE_S = 15.0
PARTITION_S = 15.0
RECOVERY_TIMEOUT_S = 300.0
# how long after a fault its alert still counts as its detection
DETECTION_WINDOW_S = 30.0
SECONDS_PER_DAY = 86_400


@dataclass
class Fault:
    kind: str
    at_s: float  # since the drill run began
    detail: str = ""
    failover_s: float = 0.0
    stale_s: float = 0.0
    detected_s: float | None = None
    detected_by: str = ""


def lasting(seconds: float, end: Callable[[], None], ended: threading.Event) -> None:
    """A fault that lasts: ``end`` runs after ``seconds`` (in a thread, so that detection and
    the books are watched meanwhile), then ``ended`` is set."""

    def run() -> None:
        try:
            time.sleep(seconds)
            end()
        finally:
            ended.set()

    threading.Thread(target=run, name="fault-end", daemon=True).start()


def inflict(
    settings: Settings, kind: str, fault_file: Path, job_id: str, healed: threading.Event
) -> str:
    """One fault of ``kind``, done the way it happens for real; what was done. TaskManager
    faults hit the one(s) running the job, not the spare. A fault that lasts (a pause, a
    partition) clears ``healed`` and sets it once it ended."""
    if kind == "jobmanager":
        leader = flink.leading_rest_port(settings)
        if leader is None:
            raise RuntimeError("no leading JobManager found in the logs")
        pid = flink.kill_jobmanager(settings, leader)
        return f"SIGKILL leading JobManager (REST {leader}) pid {pid}"
    if kind == "jobmanager-partition":
        leader = flink.leading_rest_port(settings)
        if leader is None:
            raise RuntimeError("no leading JobManager found in the logs")
        name = flink.jobmanager_cgroup(leader)
        cutoff.cut(name)
        healed.clear()
        lasting(PARTITION_S, lambda: cutoff.heal(name), healed)
        return f"leading JobManager (REST {leader}) cut off the network for {PARTITION_S:.0f} s"
    if kind == "kafka-broker":
        node = partition_leader(settings, settings.kafka.raw_topic)
        return f"SIGKILL Kafka node {node} (raw partition 0 leader) pid {kill_node(settings, node)}"
    if kind == "kafka-controller":
        controller, pid = kill_controller(settings)
        return f"SIGKILL Kafka controller {controller} (the quorum's leader) pid {pid}"
    if kind == "kafka-partition":
        node = partition_leader(settings, settings.kafka.raw_topic)
        host = node_net_host(settings, node)
        netns.partition(host)
        healed.clear()
        lasting(PARTITION_S, lambda: netns.heal(host), healed)
        return (f"Kafka node {node} (raw partition 0 leader, {host.address}) cut off the "
                f"network for {PARTITION_S:.0f} s")  # fmt: skip
    if kind == "redis-primary":
        port = sentinel_primary_port(settings)
        primary = listening_pid(port)
        if primary is None:
            raise RuntimeError(f"no Redis primary on port {port}")
        os.kill(primary, signal.SIGKILL)
        return f"SIGKILL Redis primary (port {port}) pid {primary}"
    if kind == "zookeeper":
        zookeeper = ZooKeeper(settings)
        zk_leader = zookeeper.leader()
        zk_pid = zookeeper.node_pid(zk_leader) if zk_leader else None
        if zk_leader is None or zk_pid is None:
            raise RuntimeError("no leading ZooKeeper node found")
        os.kill(zk_pid, signal.SIGKILL)
        return f"SIGKILL ZooKeeper node {zk_leader.node_id} (the ensemble's leader) pid {zk_pid}"
    if kind == "taskmanager":
        pids = [flink.kill_taskmanager(settings, pid)
                for pid in flink.job_taskmanager_pids(settings, job_id)]  # fmt: skip
        if not pids:
            raise RuntimeError(f"no TaskManager runs job {job_id}")
        return f"SIGKILL TaskManager pid {', '.join(map(str, pids))} (running the job)"
    if kind == "paused-taskmanager":
        pids = flink.job_taskmanager_pids(settings, job_id)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

        def resume() -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        healed.clear()
        lasting(PAUSE_S, resume, healed)
        return f"SIGSTOP TaskManager pid {', '.join(map(str, pids))} for {PAUSE_S:.0f} s"
    return kill(settings, kind, fault_file)  # python, clickhouse


def firing_alerts(settings: Settings) -> set[tuple[str, str]]:
    """The alerts firing now (Prometheus API), each as its name and its labels' text: a fault
    is detected by an alert *instance* new since the fault (ComponentDown for one component
    while it already fires for another, e.g. a component the drill does not run, counts); none
    while Prometheus does not answer."""
    url = f"http://127.0.0.1:{settings.monitoring.prometheus_port}/api/v1/alerts"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            alerts = json.loads(response.read())["data"]["alerts"]
    except OSError:
        return set()
    return {
        (a["labels"]["alertname"], json.dumps(a["labels"], sort_keys=True))
        for a in alerts
        if a["state"] == "firing"
    }


def recovered(settings: Settings, job: SupervisedJob, since_ms: int) -> bool:
    return manager.stack_answers(settings, HA_COMPONENTS) and job_recovered(
        settings, job, since_ms
    )


def is_ha(settings: Settings) -> bool:
    replicated = settings.kafka.replication_factor > 1
    return settings.flink.ha and bool(settings.redis.sentinels()) and replicated


def drill_run(
    ns: Namespace,
    data: Dataset,
    job: SupervisedJob,
    minutes: float,
    every_s: float,
    rng: random.Random,
    fault_file: Path,
    log: Any,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
) -> tuple[Any, list[Fault], AvailabilityProbe, Supervisor, Feeder]:
    with ns.active() as settings:
        ensure_topics(settings, extra=topics_of(settings))
        job.job_ids.append(job.submit(None))
        flink.wait_job_running(settings, job.current, 240)
        span_s = minutes * 60
        feeder = Feeder(settings, data.records).start(len(data.records) / span_s)
        supervisor = Supervisor(settings, job, HA_COMPONENTS, log=log).start()
        probe = AvailabilityProbe(settings).start()
        started = time.monotonic()
        faults: list[Fault] = []
        plan = kill_plan(max(1, int(span_s // every_s)), rng, kinds)
        healed = threading.Event()  # cleared while a lasting fault lasts
        healed.set()
        try:
            for kind in plan:
                due = started + (len(faults) + 1) * every_s + rng.uniform(-0.2, 0.2) * every_s
                if due > started + span_s:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                before = firing_alerts(settings)
                since_ms = time.time_ns() // 1_000_000
                at = time.monotonic()
                detail = inflict(settings, kind, fault_file, job.current, healed)
                fault = Fault(kind, round(at - started, 1), detail)
                log(f"fault {len(faults) + 1}/{len(plan)}: {kind} ({fault.detail}); "
                    f"fed {feeder.sent}/{len(data.records)}")  # fmt: skip

                def detected(
                    at: float = at, fault: Fault = fault, before: set[Any] = before
                ) -> bool:
                    if fault.detected_s is None:
                        new = firing_alerts(settings) - before
                        if new:
                            fault.detected_s = round(time.monotonic() - at, 1)
                            fault.detected_by = ", ".join(sorted({name for name, _ in new}))
                    return fault.detected_s is not None

                def settled(since_ms: int = since_ms, detected: Any = detected) -> bool:
                    detected()
                    return healed.is_set() and recovered(settings, job, since_ms)

                wait(f"recovery from the {kind} fault", settled, RECOVERY_TIMEOUT_S)
                fault.failover_s = round(time.monotonic() - at, 1)
                # a fault may heal before its alert fires (a Redis restarted in half a second):
                # it is still detected if the alert fires within the window
                window_s = max(0.0, at + DETECTION_WINDOW_S - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    wait(f"an alert for the {kind} fault", detected, window_s, poll=0.2)
                faults.append(fault)
                log(f"  recovered in {fault.failover_s} s"
                    + (f"; alert {fault.detected_by} after {fault.detected_s} s"
                       if fault.detected_s is not None else ""))  # fmt: skip
            log(f"faults done; feeding the rest ({feeder.sent}/{len(data.records)} so far)")
            feeder.join(CATCH_UP_TIMEOUT_S)
            ends = [started + f.at_s for f in faults[1:]] + [time.monotonic()]
            for fault, end in zip(faults, ends, strict=True):
                fault.stale_s = round(probe.stale_seconds(started + fault.at_s, end), 1)
            caught_up(settings, len(data.records), job, log)
        finally:
            probe.stop()
            supervisor.stop()
        for job_id in job.job_ids:
            with contextlib.suppress(Exception):
                flink.cancel_job(settings, job_id)
        return collect(settings), faults, probe, supervisor, feeder


def per_kind(faults: list[Fault]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        mine = [f for f in faults if f.kind == kind]
        if not mine:
            continue
        detected = [f.detected_s for f in mine if f.detected_s is not None]
        bound = STALE_TARGET_REPLICATED_S if kind in REPLICATED_KINDS else STALE_TARGET_S
        stale_max = max(f.stale_s for f in mine)
        out[kind] = {
            "faults": len(mine),
            "failover_s_mean": round(statistics.mean(f.failover_s for f in mine), 1),
            "failover_s_max": max(f.failover_s for f in mine),
            "stale_s_mean": round(statistics.mean(f.stale_s for f in mine), 1),
            "stale_s_max": stale_max,
            "stale_target_s": bound,
            "stale_met": stale_max <= bound,
            "detected": f"{len(detected)} of {len(mine)}",
            "detection_s_mean": round(statistics.mean(detected), 1) if detected else None,
            "alerts": sorted({f.detected_by for f in mine if f.detected_by}),
        }
    return out


def cancel_leftover_jobs(settings: Settings, log: Any = print) -> None:
    """Cancel every job the cluster still runs: ZooKeeper keeps the jobs of a run that was cut
    short (its cleanup could not reach Flink), the new leader recovers them at every start,
    and one whose checkpoints are gone fails and restarts every 30 s beside the drill's jobs."""
    for job in flink.list_jobs(settings):
        if job["state"] not in flink.TERMINAL_STATES:
            log(f"cancelling job {job['jid']} ({job['name']}, {job['state']}), left by an "
                "earlier run")  # fmt: skip
            flink.cancel_job(settings, job["jid"])


def run(
    minutes: float,
    every_s: float,
    frames: int,
    seed: int,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
    log: Any = print,
    keep: bool = False,
) -> dict[str, Any]:
    if not is_ha(load_settings()):  # else a configuration of HA ports of its own
        os.environ["TICKFLOW_CONFIG"] = with_overlay(os.environ.get("TICKFLOW_CONFIG", ""))
    base = load_settings()
    if not is_ha(base):
        raise SystemExit("bench.ha_drill: the HA profile did not load (config/ha.yaml)")
    unable = {"kafka-partition": not base.kafka.node_network,
              "jobmanager-partition": not base.flink.partitionable_jobmanagers}  # fmt: skip
    if cut := {k for k in kinds if unable.get(k)}:
        if kinds != DEFAULT_KINDS:
            raise SystemExit(f"bench.ha_drill: {', '.join(sorted(cut))} needs the network set "
                             "up by config/netns.yaml")  # fmt: skip
        kinds = tuple(k for k in kinds if k not in cut)
        log(f"no {', '.join(sorted(cut))} faults in this configuration (config/netns.yaml)")
    # Prometheus and the exporters: the alerts (ComponentDown, RedisRestarted, JobRestarted, ...)
    manager.up(base, [*HA_COMPONENTS, "blackbox", "redis-exporter", "prometheus"], log=log)
    cancel_leftover_jobs(base, log)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    fault_file = base.state_dir / "chaos" / f"python-fault-{tag}"
    fault_file.parent.mkdir(parents=True, exist_ok=True)
    # the profile's checkpoint interval, as deployed: the chaos drill's 2 s (a recovery proven
    # sooner) made every checkpoint's work (an insert per ClickHouse table and partition,
    # replicated through ZooKeeper; a Kafka transaction) 2.5 times as frequent
    ref_ns = namespace("haref", tag, fault_file.with_name(f"unused-{tag}"), None)
    drill_ns = namespace("hadrill", tag, fault_file, None)
    started = time.monotonic()
    data = make_dataset(base, frames)
    log(f"dataset: {len(data.records)} records, {data.books} books, {data.instruments} "
        f"instruments ({time.monotonic() - started:.0f} s)")  # fmt: skip
    ref_job = SupervisedJob([], pipeline_submitter(ref_ns.settings))
    drill_job = SupervisedJob([], pipeline_submitter(drill_ns.settings))
    try:
        reference = reference_run(ref_ns, data, ref_job, log)
        got, faults, probe, supervisor, feeder = drill_run(
            drill_ns, data, drill_job, minutes, every_s, rng, fault_file, log, kinds
        )
        result = compare(reference, got)
        # the records both runs read: fed once each and in order, or the comparison is moot
        result["raw_topics"] = {ns.name: raw_topic_check(ns.settings, data)
                                for ns in (ref_ns, drill_ns)}  # fmt: skip
    finally:
        for ns, job in ((ref_ns, ref_job), (drill_ns, drill_job)):
            if keep:  # to read the runs' outputs side by side after a failed drill
                cancel_jobs(ns.settings, job)
                kept = ns.settings
                topics = ", ".join(topics_of(kept))
                log(f"kept: ClickHouse database {kept.clickhouse.database}, Redis keys "
                    f"{kept.redis.key_prefix}:*, topics {topics}")  # fmt: skip
            else:
                cleanup(ns.settings, job)
    by_kind = per_kind(faults)
    stale_per_day = sum(k["stale_s_mean"] for k in by_kind.values())
    availability = 1 - stale_per_day / SECONDS_PER_DAY
    result.update({
        "faults": [f.__dict__ for f in faults],
        "per_kind": by_kind,
        "availability_one_fault_of_each_kind_per_day": round(availability, 6),
        "stale_s_per_day_at_that_rate": round(stale_per_day, 1),
        "probe": {"samples": probe.samples, "failed_reads": probe.failed_reads,
                  "stalls": len(probe.stalls), "backwards": probe.backwards[:10],
                  # each stall as [start, seconds], start since the probe (and faults) began
                  "stall_spans_s": [[round(st.start - probe.started, 1), round(st.seconds, 1)]
                                    for st in probe.stalls],
                  "whole_run_availability": round(probe.availability(), 6)},
        "supervisor_actions": [a.what for a in supervisor.actions],
        "job_submissions": len(drill_job.job_ids),
    })  # fmt: skip
    result["passed"] = (
        result["lost"] == 0
        and result["duplicated"] == 0
        and result["redis_state_equal"]
        and result["kafka_output_equal"]
        and not probe.backwards
        and not feeder.failed
        and all(
            r["lost"] == 0 and r["duplicated"] == 0 and r["in_order"]
            for r in result["raw_topics"].values()
        )
    )
    result["targets"] = {
        "ha_availability": target_entry(
            round(availability * 100, 4), "%", faults=len(faults), kinds=len(by_kind)
        ),
        "ha_records_lost": target_entry(
            result["lost"] + result["duplicated"], "records", faults=len(faults)
        ),
    }
    result["conditions"] = {
        "minutes": minutes,
        "every_s": every_s,
        "frames": len(data.records),
        "books": data.books,
        "instruments": data.instruments,
        "seed": seed,
        "kinds": list(kinds),
        "profile": "config/ha.yaml",
        "flink_ha_session_timeout_ms": base.flink.ha_session_timeout_ms,
        "checkpoint_interval_ms": drill_ns.settings.flink.checkpoint_interval_ms,
        "clickhouse_insert_interval_ms": drill_ns.settings.clickhouse.insert_interval_ms,
        "redis_sentinel_down_after_ms": base.redis.sentinel_down_after_ms,
        "kafka_replication": [base.kafka.replication_factor, base.kafka.min_insync_replicas],
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
    }
    return result


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'kind':<20} {'faults':>6} {'failover s':>10} {'stale s max':>11} {'bound':>6} "
          f"{'detected':>9}  alerts")  # fmt: skip
    for kind, k in report["per_kind"].items():
        print(f"{kind:<20} {k['faults']:>6} {k['failover_s_max']:>10} {k['stale_s_max']:>11} "
              f"{k['stale_target_s']:>6} {k['detected']:>9}  {', '.join(k['alerts'])}")  # fmt: skip
    print(f"\nrows lost {report['lost']}, duplicated {report['duplicated']}; redis equal "
          f"{report['redis_state_equal']}; kafka equal {report['kafka_output_equal']}; "
          f"availability at one fault of each kind a day "
          f"{report['availability_one_fault_of_each_kind_per_day']:.4%} "
          f"(target {AVAILABILITY_TARGET:.2%})")  # fmt: skip
    print("PASSED" if report["passed"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ha_drill", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--frames", type=int, default=90_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="fault kinds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep", action="store_true", help="keep both runs' outputs (ClickHouse, Redis, Kafka)"
    )
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    report = run(args.minutes, args.every, args.frames, args.seed, kinds, keep=args.keep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    print(f"written to {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
