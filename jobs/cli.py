"""``tickflow job submit|stop|list|cancel|replay``: the pipeline job on the local Flink cluster.

    tickflow job stop [JOB_ID] [--savepoint-dir file:///path]   savepoint, then stop
    tickflow job submit --from-savepoint file:///path/savepoint-xxxx    resume from it
    tickflow job replay --namespace bt1 --to 2026-11-25T10:00:00Z [--from T] [--speed N]
    tickflow job backfill --day 2026-11-24 [--from T] [--engine batch|flink]   derived tables of
        a day, idempotently (batch: the job's logic in worker processes; flink: the job, bounded)
(``TICKFLOW__FLINK__PARALLELISM=2 tickflow job submit --from-savepoint ...`` resumes with
another parallelism: state is redistributed by key group; every operator has a stable uid.)

Upgrading from a release whose job ran the Python operators (before the compiled core): their
state does not map onto the core's, so drain the old job and start the new one from the
savepoint without that state; the source resumes at the savepoint's offsets and the books
resync from fresh snapshots (``book.resync_retry_ms``):

    tickflow job stop --drain            # every pending trade matched, rows flushed
    tickflow job submit --from-savepoint file:///... --allow-non-restored-state

(``tests/integration/test_savepoint.py`` runs this path from a savepoint shaped as that
release's: today's graph plus keyed state under the removed operators' uids.)
"""

from __future__ import annotations

import argparse
import json

import jobs.replay_cli as replay_cli
import stack.flink as flink
from tickflow.config import Settings, load_settings

PIPELINE = "jobs/pipeline.py"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tickflow job", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="submit the pipeline (detached) and wait for RUNNING")
    submit.add_argument("--timeout", type=float, default=180.0)
    submit.add_argument("--from-savepoint", help="savepoint or retained checkpoint to resume")
    submit.add_argument(
        "--allow-non-restored-state",
        action="store_true",
        help="resume although the savepoint holds state no operator of this job takes",
    )
    stop = sub.add_parser("stop", help="take a savepoint and stop (every running job if none)")
    stop.add_argument("job_id", nargs="?")
    stop.add_argument("--savepoint-dir", help="target directory URI (default: the stack's)")
    stop.add_argument(
        "--drain",
        action="store_true",
        help="let the last watermark pass first (an upgrade that cannot keep the state)",
    )
    sub.add_parser("list", help="jobs on the cluster (REST /jobs/overview)")
    cancel = sub.add_parser("cancel", help="cancel a job, or every running tickflow job")
    cancel.add_argument("job_id", nargs="?")
    replay_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command in ("replay", "backfill"):
        return replay_cli.run(args)
    settings = load_settings()
    if args.command == "submit":
        job_id = flink.submit_python_job(
            settings,
            str(settings.root / PIPELINE),
            [],
            from_savepoint=args.from_savepoint,
            allow_non_restored_state=args.allow_non_restored_state,
        )
        flink.wait_job_running(settings, job_id, args.timeout)
        print(f"job {job_id} RUNNING; Flink web UI: http://127.0.0.1:{settings.flink.rest_port}")
    elif args.command == "stop":
        for job_id in _job_ids(settings, args.job_id):
            path = flink.stop_with_savepoint(
                settings, job_id, args.savepoint_dir, drain=args.drain
            )
            print(f"stopped {job_id}; savepoint {path}")
            print(f"resume: tickflow job submit --from-savepoint {path}")
    elif args.command == "list":
        print(json.dumps(flink.list_jobs(settings), indent=2))
    else:
        for job_id in _job_ids(settings, args.job_id):
            flink.cancel_job(settings, job_id)
            print(f"cancelled {job_id}")
    return 0


def _job_ids(settings: Settings, job_id: str | None) -> list[str]:
    if job_id:
        return [job_id]
    return [j["jid"] for j in flink.list_jobs(settings) if j.get("state") == "RUNNING"]
