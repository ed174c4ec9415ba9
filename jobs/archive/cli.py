"""``tickflow archive run | status``: the raw archive's process and its state.

tickflow archive run               # archive the raw topic until stopped (SIGTERM: clean)
tickflow archive run --until-end   # archive up to the topic's end now, then exit
tickflow archive status            # per partition: files, offsets, records, bytes, gaps
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from jobs.archive.archiver import Archiver, archive_root, status
from jobs.archive.layout import ArchiveError
from tickflow.config import ConfigError, load_settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickflow archive",
        description="The raw topic as Parquet beyond Kafka's retention (docs/archive.md).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume the raw topic into the archive's Parquet files")
    run.add_argument(
        "--until-end",
        action="store_true",
        help="stop at each partition's end as of the start (files closed)",
    )
    run.add_argument("--topic", help="the topic archived (default: kafka.raw_topic)")
    show = sub.add_parser("status", help="per partition: files, offsets, records, gaps")
    show.add_argument("--topic", help="default: kafka.raw_topic")
    show.add_argument("--json", action="store_true", help="one JSON object per partition")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tickflow archive: configuration: {exc}", file=sys.stderr)
        return 2
    topic = args.topic or settings.kafka.raw_topic
    root = archive_root(settings)
    if args.command == "status":
        try:
            rows = list(status(root, topic))
        except ArchiveError as exc:
            print(f"tickflow archive: {exc}", file=sys.stderr)
            return 1
        for row in rows:
            if args.json:
                print(json.dumps(row))
            else:
                gaps = sum(int(g["to"]) - int(g["from"]) for g in row["gaps"])
                print(f"partition {row['partition']}: offsets {row['first']}-{row['last']}, "
                      f"{row['records']} records in {row['files']} files, {row['bytes']} "
                      f"bytes; {len(row['gaps'])} gaps ({gaps} offsets)")  # fmt: skip
        if not rows:
            print(f"nothing archived under {root / topic}")
        return 0
    stop = threading.Event()

    def stopping(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    archiver = Archiver(settings, topic, root)
    if settings.archive.metrics_port:
        archiver.metrics.serve(settings.archive.metrics_host, settings.archive.metrics_port)
    try:
        records = archiver.run(stop.is_set, until_end=args.until_end)
    except ArchiveError as exc:
        print(f"tickflow archive: {exc}", file=sys.stderr)
        return 1
    print(f"archived {records} records of {topic} into {root / topic} "
          f"({archiver.closed_files} files)")  # fmt: skip
    return 0
