"""``tickflow job replay``: the pipeline over a time range of the raw topic, into a namespace of
its own, for backtests that must see exactly what the live job saw.

    tickflow job replay --namespace bt1 --to 2026-11-25T10:00:00Z [--from ...] [--speed 10]
                        [--source kafka|archive]
    tickflow job backfill --day 2026-11-24 [--from ...] [--engine batch|flink] [--workers N]
                          [--source kafka|archive]

The replay reads the live raw topic (nothing else of the live job is touched) and writes its
books, NBBO, matched trades and bars to the namespace: Redis prefix ``<prefix>-replay-<ns>``,
ClickHouse database ``<database>_replay_<ns>``, result topics ``<topic>.replay-<ns>`` (and its
own dead-letter and control topics: a replay's resync requests never reach the connectors).
The raw topic is partitioned by instrument, so each instrument's frames of every exchange come
back in the order the live job read them, and the NBBO and trade matching come out the same.
Start the range where books can be built: the earliest retained record (the default) or a
moment the connectors (re)connected; a book whose snapshot is before ``--from`` is rebuilt at
its next one. A book published as STALE after ``book.stale_after_ms`` of wall-clock silence is
decided live by the wall clock and is not replayed: the replay turns it off (the NBBO's own
staleness is decided by event time and is replayed).

``--source archive`` reads the range from the raw archive (``jobs/archive``) instead, for a
range Kafka no longer holds: the batch backfill reads the files directly; the replay first
produces the range again into the namespace's own raw topic ``<raw topic>.replay-<ns>`` (each
record into its partition, with its key, value and timestamp) and runs the same bounded job
over that topic.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, date, datetime, timedelta

from jobs.frames import SOURCES
from stack import flink
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings, load_settings

NAMESPACE = re.compile(r"^[a-z0-9_]{1,32}$")


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time with a zone (``2026-11-25T10:00:00Z``)."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r}: give a time zone (e.g. Z), or epoch milliseconds")
    return int(moment.timestamp() * 1000)


def replay_overrides(
    settings: Settings, namespace: str, from_ms: int, to_ms: int, speed: float
) -> dict[str, str]:
    """The environment that points a job at the range and the namespace."""
    if not NAMESPACE.match(namespace):
        raise ValueError(f"namespace {namespace!r}: 1-32 of a-z, 0-9, _")
    if to_ms <= from_ms:
        raise ValueError(f"--to ({to_ms}) must be after --from ({from_ms})")
    kafka = settings.kafka
    suffix = f"replay-{namespace}"
    env = {
        f"TICKFLOW__KAFKA__{name.upper()}": f"{getattr(kafka, name)}.{suffix}"
        for name in ("deadletter_topic", "control_topic", "nbbo_topic", "matched_trades_topic",
                     "bars_topic", "touches_topic")
    }  # fmt: skip
    env.update({
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"{settings.flink.consumer_group}-{suffix}",
        "TICKFLOW__REDIS__KEY_PREFIX": f"{settings.redis.key_prefix}-{suffix}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"{settings.clickhouse.database}_replay_{namespace}",
        "TICKFLOW__BOOK__STALE_AFTER_MS": "0",
        # every record of the range is there to read: a partition that merely waits for the
        # reader must hold the watermark back, or its records would turn late
        "TICKFLOW__FLINK__WATERMARK_IDLE_TIMEOUT_MS": "0",
        "TICKFLOW__REPLAY__FROM_MS": str(from_ms),
        "TICKFLOW__REPLAY__TO_MS": str(to_ms),
        "TICKFLOW__REPLAY__SPEED": str(speed),
    })  # fmt: skip
    return env


def archive_overrides(settings: Settings, namespace: str) -> dict[str, str]:
    """A replay from the archive reads the namespace's own copy of the raw topic."""
    return {"TICKFLOW__KAFKA__RAW_TOPIC": f"{settings.kafka.raw_topic}.replay-{namespace}"}


def republish_range(base: Settings, replay: Settings) -> dict[int, tuple[int, int, int]]:
    """The archived range of ``replay.replay`` (of ``base``'s raw topic) produced into the
    replay's own raw topic."""
    from jobs.archive.republish import republish
    from jobs.frames import archive_frames

    span = replay.replay
    return republish(base, archive_frames(base), replay.kafka.raw_topic, span.from_ms, span.to_ms)


def submit_replay(settings: Settings) -> str:
    """Create the namespace's topics and submit the replay job (settings from the overrides)."""
    topics = pipeline_topics(settings)
    topics.pop(settings.kafka.raw_topic)  # the live one: read, never created or changed here
    ensure_topics(settings, extra=topics)
    return flink.submit_python_job(settings, str(settings.root / "jobs" / "pipeline.py"), [])


def backfill_overrides(settings: Settings, day: date, from_ms: int) -> dict[str, str]:
    """A replay through the end of ``day`` that writes the live ClickHouse database: the rows
    come out with the identities the live job gives them (ReplacingMergeTree keeps one), so a
    backfill fills what is missing and rewrites what is there with the same values. Its Redis
    books (as of the day's end) stay under the replay's own prefix: the live ones are newer."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    end_ms = int((start + timedelta(days=1)).timestamp() * 1000)
    env = replay_overrides(settings, f"backfill_{day:%Y%m%d}", from_ms, end_ms, 0)
    env["TICKFLOW__CLICKHOUSE__DATABASE"] = settings.clickhouse.database
    return env


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser("replay", help="replay a time range of the raw topic into a namespace")
    replay.add_argument("--namespace", required=True, help="names its topics, keys and database")
    replay.add_argument("--to", required=True, help="end (exclusive): ISO 8601 or epoch ms")
    replay.add_argument(
        "--from",
        dest="from_",
        default="0",
        help="start: ISO 8601 or epoch ms (default: the earliest retained)",
    )
    replay.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="N x real time by record time (default 0: as fast as it goes)",
    )
    replay.add_argument("--into-live-database", action="store_true",
                        help="write the live ClickHouse database (a rebuild)")  # fmt: skip
    replay.add_argument("--source", choices=SOURCES, default="kafka",
                        help="read the range from Kafka (default) or the raw archive")
    replay.add_argument("--wait", action="store_true", help="wait until the replay finished")
    replay.add_argument("--timeout", type=float, default=3600.0)  # fmt: skip
    backfill = sub.add_parser(
        "backfill", help="rebuild a day of derived tables in the live database from the raw topic"
    )
    span = backfill.add_mutually_exclusive_group(required=True)
    span.add_argument("--day", type=date.fromisoformat, help="YYYY-MM-DD (UTC)")
    span.add_argument("--offsets", help="raw-topic offset ranges, partition:start-end,... (a "
                      "backlog a live job skipped); batch engine, live database")  # fmt: skip
    backfill.add_argument("--from", dest="from_", default="0",
                          help="start reading here (default: the earliest retained record, so "
                               "every book is built from its snapshot)")
    backfill.add_argument(
        "--engine",
        choices=("batch", "flink"),
        default="batch",
        help="batch: the job's logic in worker processes, no Flink (fast; the default); "
        "flink: the streaming job over the bounded range",
    )
    backfill.add_argument("--source", choices=SOURCES, default="kafka",
                          help="read the range from Kafka (default) or the raw archive "
                               "(batch engine)")  # fmt: skip
    backfill.add_argument("--workers", type=int, default=0,
                          help="batch engine: processes (default: replay.batch_workers, "
                               "0 = one per core)")  # fmt: skip
    backfill.add_argument("--wait", action="store_true",
                          help="flink engine: wait until it finished (batch always waits)")
    backfill.add_argument("--timeout", type=float, default=3600.0)  # fmt: skip


def backfill_offsets(settings: Settings, spec: str, workers: int, source: str = "kafka") -> int:
    """The batch backfill of explicit offset ranges into the live database."""
    from jobs.backfill import parse_offset_ranges, run_backfill_ranges

    try:
        ranges = parse_offset_ranges(spec)
    except ValueError as e:
        raise SystemExit(f"tickflow job backfill --offsets: {e}") from None
    report = run_backfill_ranges(settings, ranges, workers, source=source)
    print(f"backfill {spec}: {report['frames']} frames -> {report['rows']} rows "
          f"{report['rows_by_table']} in ClickHouse {settings.clickhouse.database}, "
          f"{report['dead_letters']} dead letters, {report['late']} late; "
          f"{report['seconds']} s")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    """``replay`` or ``backfill``."""
    from jobs.archive.layout import ArchiveError

    try:
        return _run(args)
    except ArchiveError as exc:  # nothing archived, overlapping files: the message says
        raise SystemExit(f"tickflow job {args.command} --source archive: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    import os

    base = load_settings()
    if args.command == "backfill" and args.source == "archive" and args.engine == "flink":
        raise SystemExit("tickflow job backfill --source archive: the batch engine reads the "
                         "archive; for the streaming job use `tickflow job replay --source "
                         "archive --into-live-database`")  # fmt: skip
    if args.command == "backfill" and args.offsets:
        return backfill_offsets(base, args.offsets, args.workers, args.source)
    if args.command == "backfill":
        env = backfill_overrides(base, args.day, parse_time_ms(args.from_))
        args.namespace = f"backfill_{args.day:%Y%m%d}"
    else:
        env = replay_overrides(
            base, args.namespace, parse_time_ms(args.from_), parse_time_ms(args.to), args.speed
        )
        if args.into_live_database:
            env["TICKFLOW__CLICKHOUSE__DATABASE"] = base.clickhouse.database
        if args.source == "archive":
            env.update(archive_overrides(base, args.namespace))
    os.environ.update(env)  # the Flink client and the job read the same settings
    settings = load_settings()
    if args.command == "backfill" and args.engine == "batch":
        from jobs.backfill import run_backfill

        replay = settings.replay
        report = run_backfill(
            settings, replay.from_ms, replay.to_ms, args.workers, source=args.source
        )
        print(f"backfill {args.day} from {args.source}: {report['frames']} frames -> "
              f"{report['rows']} rows "
              f"{report['rows_by_table']} in ClickHouse {settings.clickhouse.database}, "
              f"{report['dead_letters']} dead letters ({settings.kafka.deadletter_topic}), "
              f"{report['late']} late; {report['seconds']} s, {report['frames_per_s']} "
              f"frames/s with {report['workers']} workers")  # fmt: skip
        return 0
    if args.command == "replay" and args.source == "archive":
        copied = republish_range(base, settings)
        print(f"archive -> {settings.kafka.raw_topic}: "
              + ", ".join(f"partition {p} offsets {a}-{b} ({n} records)"
                          for p, (a, b, n) in copied.items()))  # fmt: skip
    job_id = submit_replay(settings)
    print(f"{args.command} job {job_id}: Redis {settings.redis.key_prefix}:*, ClickHouse "
          f"{settings.clickhouse.database}, topics *.replay-{args.namespace}")  # fmt: skip
    if args.wait:
        state = flink.wait_job_finished(settings, job_id, args.timeout)
        print(f"{args.command} job {job_id} {state}")
        return 0 if state == "FINISHED" else 1
    return 0
