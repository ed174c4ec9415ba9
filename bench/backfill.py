"""Backfill: rebuild the derived tables (books, touches, NBBO, matched trades, bars) of a day
from the raw topic, timed, twice (the second run must change nothing: idempotent).

    python -m bench.backfill [--frames 200000]

The frames are generated as ``bench.chaos`` does (all three exchanges, 30 books), preloaded
into a namespace's raw topic, and ``tickflow job backfill`` (a bounded replay writing the
namespace's ClickHouse database) runs over them. The rate is frames over the job's own run time
(Flink's job duration: submission is not included); the time for one simulated day at
realistic volume (``--day-messages``, 50 million) is extrapolated from it, as the job's rate is
flat once it runs (no state grows with the day: books are bounded, analytics state is pruned
behind the watermark). Writes bench/results/backfill.json.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.chaos import (
    Feeder,
    SupervisedJob,
    cleanup,
    clickhouse_rows,
    make_dataset,
    namespace,
    physical_rows,
    topics_of,
)
from bench.slice import _delete_kafka_topics, _delete_redis_keys, patched_environ
from bench.stats import machine, target_entry, write_results
from jobs.replay_cli import backfill_overrides, submit_replay
from stack import flink, manager
from stack.supervisor import SUPERVISED, pipeline_submitter
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings

DAY_MESSAGES = 50_000_000
RUN_TIMEOUT_S = 3600.0


def backfill_once(settings: Settings, day: Any) -> tuple[float, float, Settings]:
    """One backfill of ``day``: (job run seconds, wall seconds with submission), its settings."""
    with patched_environ(backfill_overrides(settings, day, 0)):
        bf = load_settings()
        started = time.monotonic()
        job_id = submit_replay(bf)
        state = flink.wait_job_finished(bf, job_id, RUN_TIMEOUT_S)
        wall = time.monotonic() - started
        if state != "FINISHED":
            raise RuntimeError(f"backfill job {job_id} {state}: {flink.root_exception(bf, job_id)}")
        detail = flink.rest(bf, "GET", f"/jobs/{job_id}")
        return detail["duration"] / 1000.0, wall, bf


def run(frames: int, day_messages: int, log: Any = print) -> dict[str, Any]:
    base = load_settings()
    manager.up(base, SUPERVISED, log=log)
    tag = uuid.uuid4().hex[:6]
    ns = namespace("bf", tag, base.state_dir / "chaos" / f"unused-{tag}")
    data = make_dataset(base, frames)
    day = datetime.fromtimestamp(data.records[-1][2] / 1000, UTC).date()
    runs: list[dict[str, Any]] = []
    used: list[Settings] = []
    try:
        with ns.active() as settings:
            ensure_topics(settings, extra=topics_of(settings))
            Feeder(settings, data.records).run(rate=0)
            log(f"preloaded {len(data.records)} frames; backfilling {day}")
            for attempt in (1, 2):
                job_s, wall_s, bf = backfill_once(settings, day)
                used.append(bf)
                rows = clickhouse_rows(settings)
                runs.append({
                    "run": attempt, "job_s": round(job_s, 1), "wall_s": round(wall_s, 1),
                    "frames_per_s": round(len(data.records) / job_s),
                    "rows_final": sum(sum(c.values()) for c in rows.values()),
                    "rows_physical": physical_rows(settings),
                    "rows": rows,
                })  # fmt: skip
                log(f"run {attempt}: {job_s:.1f} s ({len(data.records) / job_s:.0f} frames/s), "
                    f"{runs[-1]['rows_final']} rows")  # fmt: skip
    finally:
        cleanup(ns.settings, SupervisedJob([], pipeline_submitter(ns.settings)))
        for bf in used[:1]:
            _delete_redis_keys(bf)
            topics = pipeline_topics(bf)
            topics.pop(bf.kafka.raw_topic)
            _delete_kafka_topics(bf, list(topics))
    idempotent = runs[0]["rows"] == runs[1]["rows"]
    rate = max(r["frames_per_s"] for r in runs)
    day_min = day_messages / rate / 60
    for r in runs:
        del r["rows"]
    conditions = {
        "frames": len(data.records), "books": data.books, "instruments": data.instruments,
        "day_messages": day_messages, "extrapolated": True,
        "parallelism": base.flink.parallelism, "state_backend": base.flink.state_backend,
        "python_execution_mode": base.flink.python_execution_mode,
        "load_avg_1m": os.getloadavg()[0], **machine(),
    }  # fmt: skip
    return {
        "runs": runs,
        "idempotent": idempotent,
        "frames_per_s": rate,
        "day_minutes_extrapolated": round(day_min, 1),
        "targets": {"batch_day": target_entry(round(day_min, 1), "min", **conditions)},
        "conditions": conditions,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.backfill", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--day-messages", type=int, default=DAY_MESSAGES)
    args = parser.parse_args(argv)
    report = run(args.frames, args.day_messages)
    path = write_results("backfill", report)
    print(f"backfill: {report['frames_per_s']} frames/s; a day of {args.day_messages:,} messages "
          f"would take {report['day_minutes_extrapolated']} min (target 10); idempotent "
          f"{report['idempotent']} (runs: {report['runs']})")  # fmt: skip
    print(f"written to {path}")
    return 0 if report["idempotent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
