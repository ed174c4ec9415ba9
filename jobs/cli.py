"""``tickflow job submit|list|cancel``: the pipeline job on the local Flink session cluster."""

from __future__ import annotations

import argparse
import json

import stack.flink as flink
from tickflow.config import load_settings

PIPELINE = "jobs/pipeline.py"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tickflow job", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="submit the pipeline (detached) and wait for RUNNING")
    submit.add_argument("--timeout", type=float, default=180.0)
    sub.add_parser("list", help="jobs on the cluster (REST /jobs/overview)")
    cancel = sub.add_parser("cancel", help="cancel a job, or every running tickflow job")
    cancel.add_argument("job_id", nargs="?")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.command == "submit":
        job_id = flink.submit_python_job(settings, str(settings.root / PIPELINE), [])
        flink.wait_job_running(settings, job_id, args.timeout)
        print(f"job {job_id} RUNNING; Flink web UI: http://127.0.0.1:{settings.flink.rest_port}")
    elif args.command == "list":
        print(json.dumps(flink.list_jobs(settings), indent=2))
    else:
        ids = (
            [args.job_id]
            if args.job_id
            else [j["jid"] for j in flink.list_jobs(settings) if j.get("state") == "RUNNING"]
        )
        for job_id in ids:
            flink.cancel_job(settings, job_id)
            print(f"cancelled {job_id}")
    return 0
