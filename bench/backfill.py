"""Backfill: rebuild the derived tables (books, touches, NBBO, matched trades, bars) of a day
from the raw topic, timed: the batch engine (the job's logic in worker processes) twice (the
second run must change nothing: idempotent), against the streaming job over the same range
(its rows must be the batch engine's, row for row).

    python -m bench.backfill [--frames 200000] [--flink-frames 60000]

The frames are generated as ``bench.chaos`` does (all three exchanges, 30 books) and preloaded
into a namespace's raw topic. The Flink run covers the first ``--flink-frames`` of them (it is
~20x slower); the batch engine runs over the same range first (compared with Flink's rows),
then over all of them, twice. Rates are frames over run time (Flink: the job's own duration,
submission excluded; batch: the whole command, workers' start included). One simulated day
at realistic volume (``--day-messages``, 50 million) is extrapolated from the batch rate, as
the rate is flat (no state grows with the day: books are bounded, analytics state is pruned
behind the watermark). Writes bench/results/backfill.json.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.slice import _delete_kafka_topics, _delete_redis_keys
from bench.stats import machine, target_entry, write_results
from jobs.replay_cli import backfill_overrides, submit_replay
from stack import flink, manager
from stack.supervisor import SUPERVISED, SupervisedJob, pipeline_submitter
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import Feeder, make_dataset
from tickflow.runs import (
    batch_backfill,
    cleanup,
    clickhouse_rows,
    differing,
    drop_database,
    namespace,
    physical_rows,
    topics_of,
)

DAY_MESSAGES = 50_000_000
RUN_TIMEOUT_S = 3600.0


def flink_backfill(settings: Settings, day: Any, to_ms: int) -> tuple[float, Settings]:
    """The streaming job over the day's records before ``to_ms``: (job seconds, settings)."""
    env = backfill_overrides(settings, day, 0)
    env["TICKFLOW__REPLAY__TO_MS"] = str(to_ms)
    with patched_environ(env):
        bf = load_settings()
        job_id = submit_replay(bf)
        state = flink.wait_job_finished(bf, job_id, RUN_TIMEOUT_S)
        if state != "FINISHED":
            raise RuntimeError(f"backfill job {job_id} {state}: {flink.root_exception(bf, job_id)}")
        detail = flink.rest(bf, "GET", f"/jobs/{job_id}")
        return detail["duration"] / 1000.0, bf


def run(
    frames: int, flink_frames: int, day_messages: int, log: Any = print
) -> dict[str, Any]:
    base = load_settings()
    manager.up(base, SUPERVISED, log=log)
    tag = uuid.uuid4().hex[:6]
    ns = namespace("bf", tag, base.state_dir / "chaos" / f"unused-{tag}")
    data = make_dataset(base, frames)
    day = datetime.fromtimestamp(data.records[-1][2] / 1000, UTC).date()
    flink_frames = min(flink_frames, len(data.records))
    # the Flink range ends at a record time: every record before it, none after
    split_ms = data.records[flink_frames][2] if flink_frames < len(data.records) else None
    if split_ms is not None:
        flink_frames = sum(1 for record in data.records if record[2] < split_ms)
    used: list[Settings] = []
    try:
        with ns.active() as settings:
            ensure_topics(settings, extra=topics_of(settings))
            Feeder(settings, data.records).run(rate=0)
            log(f"preloaded {len(data.records)} frames; backfilling {day}")
            end_ms = split_ms if split_ms is not None else 2**62
            flink_s, bf = flink_backfill(settings, day, end_ms)
            used.append(bf)
            flink_rows = clickhouse_rows(settings)
            flink_rate = flink_frames / flink_s
            log(f"flink: {flink_frames} frames in {flink_s:.1f} s ({flink_rate:.0f} frames/s), "
                f"{sum(sum(c.values()) for c in flink_rows.values())} rows")  # fmt: skip
            drop_database(settings)
            same_range = batch_backfill(settings, day, end_ms)
            same_rows = clickhouse_rows(settings)
            diff = differing(flink_rows, same_rows)
            log(f"batch over the same range: {same_range['frames']} frames in "
                f"{same_range['seconds']} s; rows differing from Flink's: {diff}")  # fmt: skip
            drop_database(settings)
            runs: list[dict[str, Any]] = []
            rows: list[dict[str, Counter[Any]]] = []
            for attempt in (1, 2):
                report = batch_backfill(settings, day)
                rows.append(clickhouse_rows(settings))
                report.update(
                    run=attempt,
                    rows_final=sum(sum(c.values()) for c in rows[-1].values()),
                    rows_physical=physical_rows(settings),
                )
                runs.append(report)
                log(f"batch run {attempt}: {report['frames']} frames in {report['seconds']} s "
                    f"({report['frames_per_s']} frames/s), {report['rows_final']} rows "
                    f"(physical {report['rows_physical']})")  # fmt: skip
    finally:
        cleanup(ns.settings, SupervisedJob([], pipeline_submitter(ns.settings)))
        for bf in used[:1]:
            _delete_redis_keys(bf)
            topics = pipeline_topics(bf)
            topics.pop(bf.kafka.raw_topic)
            _delete_kafka_topics(bf, list(topics))
    idempotent = rows[0] == rows[1]
    equal_to_flink = not any(diff.values()) and same_range["frames"] == flink_frames
    rate = max(r["frames_per_s"] for r in runs)
    day_min = day_messages / rate / 60
    conditions = {
        "frames": len(data.records), "books": data.books, "instruments": data.instruments,
        "day_messages": day_messages, "extrapolated": True, "engine": "batch",
        "workers": runs[0]["workers"], "raw_partitions": base.kafka.raw_partitions,
        "load_avg_1m": os.getloadavg()[0], **machine(),
    }  # fmt: skip
    return {
        "batch_runs": runs,
        "idempotent": idempotent,
        "frames_per_s": rate,
        "day_minutes_extrapolated": round(day_min, 1),
        "flink": {
            "frames": flink_frames, "job_s": round(flink_s, 1),
            "frames_per_s": round(flink_rate),
            "day_minutes_extrapolated": round(day_messages / flink_rate / 60, 1),
            "parallelism": base.flink.parallelism, "state_backend": base.flink.state_backend,
            "python_execution_mode": base.flink.python_execution_mode,
        },
        "batch_same_range": {k: same_range[k] for k in ("frames", "seconds", "frames_per_s")},
        "rows_differing_from_flink": diff,
        "equal_to_flink": equal_to_flink,
        "speedup_vs_flink": round(rate / flink_rate, 1),
        "targets": {"batch_day": target_entry(round(day_min, 1), "min", **conditions)},
        "conditions": conditions,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.backfill", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--flink-frames", type=int, default=60_000)
    parser.add_argument("--day-messages", type=int, default=DAY_MESSAGES)
    args = parser.parse_args(argv)
    report = run(args.frames, args.flink_frames, args.day_messages)
    path = write_results("backfill", report)
    print(f"backfill: batch {report['frames_per_s']} frames/s "
          f"({report['speedup_vs_flink']}x the streaming job's {report['flink']['frames_per_s']}); "
          f"a day of {args.day_messages:,} messages would take "
          f"{report['day_minutes_extrapolated']} min (target 10); idempotent "
          f"{report['idempotent']}; rows equal to the streaming job's: {report['equal_to_flink']} "
          f"{report['rows_differing_from_flink']}")  # fmt: skip
    print(f"written to {path}")
    return 0 if report["idempotent"] and report["equal_to_flink"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
