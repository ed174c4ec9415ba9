"""``tickflow stack up|down|status|logs|supervise``: the local Kafka, Redis, ClickHouse, Flink,
Prometheus and schema registry."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from stack import manager
from stack.supervisor import SupervisedJob, Supervisor, pipeline_submitter
from stack.system import StackError, tail
from tickflow.config import ConfigError, Settings, load_settings

HA_OVERLAY = "config/ha.yaml"


def with_overlay(value: str, overlay: str = HA_OVERLAY) -> str:
    """A TICKFLOW_CONFIG value with ``overlay`` last (once)."""
    overlays = [p for p in value.split(":") if p and p != overlay]
    return ":".join([*overlays, overlay])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickflow stack",
        description="Local stack on 127.0.0.1; data, logs and pids under <state_dir>/<component>/. "
        "Configuration: config/tickflow.yaml plus TICKFLOW_CONFIG overlays.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    names = manager.COMPONENT_NAMES
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument(
        "--ha",
        action="store_true",
        help=f"the high-availability profile: adds the {HA_OVERLAY} overlay (a Redis replica "
        "and Sentinels); give the job and every client the same TICKFLOW_CONFIG",
    )
    up = commands.add_parser(
        "up", parents=[profile], help="start what is not running, wait until it answers"
    )
    only = f"only these ({', '.join(names)}); default all"
    up.add_argument("components", nargs="*", metavar="component", help=only)
    down = commands.add_parser("down", parents=[profile], help="stop the processes `up` started")
    down.add_argument("components", nargs="*", metavar="component", help=only)
    commands.add_parser(
        "status", parents=[profile], help="table of components; exit 0 only if all answer"
    )
    logs = commands.add_parser(
        "logs", parents=[profile], help="print log file paths and their last lines"
    )
    logs.add_argument("component", nargs="?", choices=names)
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines per log (default 40)")
    supervise = commands.add_parser(
        "supervise",
        parents=[profile],
        help="restart components that die, and resubmit the pipeline job if lost",
    )
    supervise.add_argument(
        "--job",
        help="the pipeline job to keep running (resubmitted from "
        "its newest retained checkpoint when the cluster loses it)",
    )
    supervise.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    return parser


def print_status(settings: Settings) -> int:
    rows = manager.status(settings)
    header = ("component", "port(s)", "pid", "answers", "details")
    table = [header] + [
        (r.name, r.ports, r.pids, "yes" if r.answers else "no", r.details) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0 if all(r.answers for r in rows) else 1


def print_logs(settings: Settings, component: str | None, lines: int) -> int:
    for item in manager.components(settings, [component] if component else None):
        for path in item.log_files():
            exists = path.exists()
            print(f"==> {item.name}: {path}{'' if exists else ' (not created yet)'}")
            if exists:
                print(tail(path, lines))
            print()
    return 0


def supervise(settings: Settings, job_id: str | None, interval_s: float) -> int:
    """Run the supervisor in the foreground until interrupted."""
    job = SupervisedJob([job_id], pipeline_submitter(settings)) if job_id else None
    supervisor = Supervisor(settings, job)
    print(f"supervising {', '.join(supervisor.names)}" + (f" and job {job_id}" if job else ""))
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run(interval_s)
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.ha:  # in the environment: the processes the stack starts read it too
        os.environ["TICKFLOW_CONFIG"] = with_overlay(os.environ.get("TICKFLOW_CONFIG", ""))
    try:
        settings = load_settings()
        if args.command == "up":
            started = time.monotonic()
            manager.up(settings, args.components or None)
            print(f"stack up ({time.monotonic() - started:.1f} s)")
            # with the credentials a first `up` generated (the settings above have none)
            return print_status(load_settings())
        if args.command == "down":
            manager.down(settings, args.components or None)
            return 0
        if args.command == "status":
            return print_status(settings)
        if args.command == "supervise":
            return supervise(settings, args.job, args.interval)
        return print_logs(settings, args.component, args.lines)
    except (StackError, ConfigError) as error:
        print(f"tickflow stack {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
