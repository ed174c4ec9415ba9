"""One simulated day at realistic volume, backfilled by the batch engine and timed for real.

    make backfill-day    # both: a day is generated once (kept for the broker's retention)
    python -m bench.backfill_day generate [--day 2026-11-24] [--messages 50000000]
    python -m bench.backfill_day run [--day 2026-11-24] [--runs 1]

``generate`` writes the day once into its own raw topic (``tickflow.raw.day<YYYYMMDD>``):
every book of the three exchanges (``bench.book_pipeline``'s 30) stepped by the simulator's
venues from the day's midnight to its end at the rate that gives ``--messages`` frames, each
frame rendered for a subscribed connection, dispatched by the exchange's connector and produced
by the connectors' own ``KafkaSink``. Nothing is held in memory: the frames go to Kafka as they
are made. The books are split over worker processes by raw-topic partition, so each partition
is still written in time order. The topic stays (for the broker's 7-day retention), so ``run``
can be repeated; ``generate --if-missing`` (``make backfill-day``) makes no second day.

``run`` is ``tickflow job backfill --day D`` over that topic into the day's own ClickHouse
database (``tickflow_day<YYYYMMDD>``), timed from the command's start (partition offsets,
worker start) to the last insert. Then, in ClickHouse: per table the rows inserted, the
rows stored and the distinct row identities (``FINAL``), and a checksum over the ``FINAL``
rows. With ``--runs 2`` the second run must leave the checksums unchanged (idempotent).
Writes bench/results/backfill_day.json (target ``batch_day``: the day's minutes, measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any, cast

from bench.book_pipeline import RATE_SAMPLE_FRAMES
from bench.stats import machine, target_entry, write_results
from connectors.producer import KafkaSink, partition_of
from jobs.backfill import run_backfill
from jobs.sinks.clickhouse import connect, ensure_schema
from simulator.server import SimulatorServer
from simulator.testing import pointed_at
from stack import manager
from stack.supervisor import SUPERVISED
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import MIXES, Clock, book_settings, generate, open_wire
from tickflow.instruments import nbbo_group

DAY_MESSAGES = 50_000_000
RATE_MARGIN = 1.03  # steps per second set for this many times the messages asked for
PROGRESS_EVERY_FRAMES = 2_000_000
FLUSH_TIMEOUT_S = 300.0
DAY_MS = 86_400_000
# the batch engine that ran, as the results name it (earlier results compare by it)
ENGINE = "native"


def default_day() -> date:
    """Yesterday (UTC): a whole day in the past, well within the broker's retention."""
    return datetime.now(UTC).date() - timedelta(days=1)


def day_env(day: date) -> dict[str, str]:
    """The day's own raw topic, dead-letter topic and ClickHouse database."""
    tag = f"day{day:%Y%m%d}"
    return {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.{tag}",
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.deadletter.{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_{tag}",
    }


@contextmanager
def day_settings(day: date) -> Iterator[Settings]:
    with patched_environ(day_env(day)):
        yield load_settings()


def marker_path(settings: Settings, day: date) -> Path:
    """Where ``generate`` records what it wrote (the topic outlives the process)."""
    return settings.state_dir / "backfill-day" / f"{day:%Y%m%d}.json"


def generated_days(settings: Settings) -> list[date]:
    folder = settings.state_dir / "backfill-day"
    stems = [p.stem for p in folder.glob("*.json")]
    return sorted(date.fromisoformat(f"{s[:4]}-{s[4:6]}-{s[6:]}") for s in stems)


def day_start_ms(day: date) -> int:
    return int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp() * 1000)


# -- generation --------------------------------------------------------------------------------


def books_by_partition(settings: Settings) -> dict[int, list[tuple[str, str]]]:
    """The simulated books, (exchange, symbol), by the raw partition their frames go to."""
    equivalents = settings.analytics.quote_equivalents
    out: dict[int, list[tuple[str, str]]] = {}
    for exchange in MIXES["all"]:
        for symbol, canonical in getattr(settings.exchanges, exchange).symbols.items():
            part = partition_of(nbbo_group(canonical, equivalents), settings.kafka.raw_partitions)
            out.setdefault(part, []).append((exchange, symbol))
    return out


def split_partitions(books: dict[int, list[tuple[str, str]]], workers: int) -> list[list[int]]:
    """Partitions over ``workers`` by number of books, largest first (one writer each)."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    load = [0] * workers
    for part in sorted(books, key=lambda p: -len(books[p])):
        i = load.index(min(load))
        shares[i].append(part)
        load[i] += len(books[part])
    return [sorted(s) for s in shares if s]


def only_books(settings: Settings, books: set[tuple[str, str]]) -> Settings:
    """The settings with just these books subscribed and served."""
    exchanges = {
        ex: dataclasses.replace(
            getattr(settings.exchanges, ex),
            symbols={
                s: c for s, c in getattr(settings.exchanges, ex).symbols.items()
                if (ex, s) in books
            },
        )
        for ex in MIXES["all"]
    }  # fmt: skip
    sim = settings.simulator
    return dataclasses.replace(
        settings,
        exchanges=dataclasses.replace(settings.exchanges, **exchanges),
        simulator=dataclasses.replace(
            sim,
            symbols=tuple(exchanges["binance"].symbols),
            coinbase_products=tuple(exchanges["coinbase"].symbols),
            kraken_symbols=tuple(exchanges["kraken"].symbols),
        ),
    )


def generate_share(
    day: date, partitions: list[int], steps_per_s: float, log_prefix: str
) -> dict[str, Any]:
    """Step the books of ``partitions`` through the day into the day's raw topic."""
    started = time.monotonic()
    with day_settings(day) as base:
        full = book_settings(base, MIXES["all"])
        mine = {b for p in partitions for b in books_by_partition(full).get(p, [])}
        settings = only_books(full, mine)
        exchanges = [ex for ex in MIXES["all"] if getattr(settings.exchanges, ex).symbols]
        books = [(ex, s) for ex in exchanges for s in getattr(settings.exchanges, ex).symbols]
        sink = KafkaSink(
            settings.kafka,
            overrides={"client.id": "tickflow-backfill-day", "linger.ms": 50},
            quote_equivalents=settings.analytics.quote_equivalents,
            partitions=settings.kafka.raw_partitions,
        )
        start_ms = day_start_ms(day)
        end_ms = start_ms + DAY_MS
        clock = Clock(start_ms)
        server = SimulatorServer(settings, paused=True, clock_ms=clock)
        pointed = pointed_at(settings, server)
        wires = {
            ex: open_wire(ex, pointed, server.venues[ex], cast(Any, sink), start_ms * 1_000_000)
            for ex in exchanges
        }
        step_ms = 1000.0 / steps_per_s
        first_ms = start_ms + 1
        tick = steps = 0
        next_report = PROGRESS_EVERY_FRAMES
        while True:
            tick_ms = first_ms + tick * step_ms
            if tick_ms + step_ms >= end_ms:
                break  # every book's step of this tick must fall within the day
            for i, (exchange, symbol) in enumerate(books):
                # books spread over the step interval, as the simulator's pacers are
                now_ms = int(tick_ms + i * step_ms / len(books))
                clock.now_ms = now_ms
                wires[exchange].step(symbol, now_ms, now_ms * 1_000_000)
                steps += 1
            tick += 1
            if sink.sent >= next_report:
                next_report += PROGRESS_EVERY_FRAMES
                at = datetime.fromtimestamp(clock.now_ms / 1000, UTC)
                print(f"{log_prefix}: {sink.sent:,} frames, simulated {at:%H:%M}, "
                      f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
        remaining = sink.close(FLUSH_TIMEOUT_S)
        if remaining or sink.failed or sink.dead_letters:
            raise RuntimeError(
                f"{log_prefix}: {sink.failed} frames not delivered, {sink.dead_letters} "
                f"dead letters (the generator's frames must all be valid)"
            )
        return {
            "partitions": partitions,
            "books": len(books),
            "frames": sink.sent,
            "steps": steps,
            "seconds": round(time.monotonic() - started, 1),
        }


def generate_day(day: date, messages: int, workers: int) -> dict[str, Any]:
    started = time.monotonic()
    with day_settings(day) as settings:
        ensure_topics(settings)
        full = book_settings(settings, MIXES["all"])
        by_partition = books_by_partition(full)
        books = sum(len(b) for b in by_partition.values())
        sample = generate(full, MIXES["all"], RATE_SAMPLE_FRAMES)
        frames_per_step = sample.market_frames / sample.steps
        steps_per_s = messages * RATE_MARGIN / (DAY_MS / 1000 * books * frames_per_step)
        shares = split_partitions(by_partition, workers)
        print(f"generating {day}: ~{messages:,} frames into {settings.kafka.raw_topic}, "
              f"{books} books at {steps_per_s:.2f} steps/s ({frames_per_step:.3f} frames "
              f"per step), partitions {shares}", flush=True)  # fmt: skip
        with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(generate_share, day, share, steps_per_s, f"partitions {share}")
                for share in shares
            ]
            results = [f.result() for f in futures]
        frames = sum(r["frames"] for r in results)
        report = {
            "day": day.isoformat(),
            "raw_topic": settings.kafka.raw_topic,
            "frames": frames,
            "books": books,
            "steps_per_s_per_book": round(steps_per_s, 3),
            "frames_per_step": round(frames_per_step, 4),
            "shares": results,
            "seconds": round(time.monotonic() - started, 1),
        }
        marker = marker_path(settings, day)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(report, indent=2) + "\n")
        print(f"generated {frames:,} frames in {report['seconds']} s; recorded in {marker}")
        return report


# -- the timed backfill ------------------------------------------------------------------------


def table_checks(settings: Settings) -> dict[str, dict[str, int]]:
    """Per table: rows stored, distinct row identities (FINAL) and a checksum of those rows."""
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    out: dict[str, dict[str, int]] = {}
    for (table,) in client.execute(f"SHOW TABLES FROM {db}"):
        engine = client.execute(
            "SELECT engine FROM system.tables WHERE database = %(db)s AND name = %(t)s",
            {"db": db, "t": table},
        )[0][0]
        if "MergeTree" not in engine:
            continue  # views
        (stored,) = client.execute(f"SELECT count() FROM {db}.{table}")[0]
        final = "FINAL" if "Replacing" in engine else ""
        columns = client.execute(
            "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s",
            {"db": db, "t": table},
        )
        # as text: ClickHouse 18.16 hashes no Decimal
        row = ", ".join(f"toString({name})" for (name,) in columns)
        distinct, checksum = client.execute(
            f"SELECT count(), sum(cityHash64({row})) FROM {db}.{table} {final}"
        )[0]
        out[table] = {"stored": stored, "final": distinct, "checksum": int(checksum)}
    return out


def run_day(day: date, runs: int, workers: int) -> dict[str, Any]:
    with day_settings(day) as settings:
        marker = marker_path(settings, day)
        if not marker.exists():
            raise SystemExit(f"no generated day {day}: run `python -m bench.backfill_day "
                             f"generate --day {day}` first")  # fmt: skip
        generated = json.loads(marker.read_text())
        connect(settings.clickhouse).execute(
            f"DROP DATABASE IF EXISTS {settings.clickhouse.database}"
        )
        ensure_schema(settings.clickhouse)
        start = day_start_ms(day)
        reports: list[dict[str, Any]] = []
        checks: list[dict[str, dict[str, int]]] = []
        for attempt in range(1, runs + 1):
            report = run_backfill(settings, start, start + DAY_MS, workers, log=print)
            report["run"] = attempt
            reports.append(report)
            print(f"run {attempt}: {report['frames']:,} frames in {report['seconds']} s "
                  f"= {report['seconds'] / 60:.1f} min ({report['frames_per_s']:,} frames/s), "
                  f"{report['rows']:,} rows", flush=True)  # fmt: skip
            checks.append(table_checks(settings))
    first = reports[0]
    unique = all(checks[0][t]["final"] == n for t, n in first["rows_by_table"].items())
    idempotent = None
    if runs > 1:
        idempotent = all(
            {t: (c["final"], c["checksum"]) for t, c in check.items()}
            == {t: (c["final"], c["checksum"]) for t, c in checks[0].items()}
            for check in checks[1:]
        )
    minutes = min(r["seconds"] for r in reports) / 60
    conditions = {
        "frames": first["frames"], "books": generated["books"], "day": day.isoformat(),
        "extrapolated": False, "engine": ENGINE, "workers": first["workers"],
        "raw_partitions": settings.kafka.raw_partitions,
        "load_avg_1m": os.getloadavg()[0], **machine(),
    }  # fmt: skip
    return {
        "day": day.isoformat(),
        "engine": ENGINE,
        "generated": {k: generated[k] for k in ("frames", "books", "seconds", "shares")},
        "runs": reports,
        "minutes": round(minutes, 1),
        "frames_per_s": max(r["frames_per_s"] for r in reports),
        "rows_unique": unique,
        "idempotent": idempotent,
        "tables": checks[-1],
        "targets": {"batch_day": target_entry(round(minutes, 1), "min", **conditions)},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def compare_with_reference(report: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Whether this run's tables (FINAL rows and checksums) are an earlier run's of the day."""
    if reference["day"] != report["day"]:
        raise SystemExit(f"reference is of {reference['day']}, not {report['day']}")
    # the distinct rows and their checksum; rows stored before merges depend on the runs made
    def identity(tables: dict[str, dict[str, int]], table: str) -> tuple[int, int] | None:
        found = tables.get(table)
        return None if found is None else (found["final"], found["checksum"])

    ours, theirs = report["tables"], reference["tables"]
    differing = sorted(
        t for t in ours.keys() | theirs.keys() if identity(ours, t) != identity(theirs, t)
    )
    return {
        # results before the engine was named came from the Python engine, since deleted
        "engine": reference.get("engine", "python"),
        "minutes": reference["minutes"],
        "revision": reference.get("revision"),
        "equal": not differing,
        "differing": differing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.backfill_day", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("generate", "run"))
    parser.add_argument(
        "--day",
        dest="day_given",
        type=date.fromisoformat,
        default=None,
        help="default: generate yesterday; run the latest generated day",
    )
    parser.add_argument("--messages", type=int, default=DAY_MESSAGES)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--if-missing", action="store_true", help="generate: unless done")
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="run: a results file of an earlier run of the same day (e.g. by the other engine) "
        "whose tables (FINAL counts and checksums) these must equal",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes; default: generate one per raw partition, run one per core",
    )
    args = parser.parse_args(argv)
    args.day = args.day_given or default_day()
    base = load_settings()
    manager.up(base, SUPERVISED, log=print)
    days = generated_days(base)
    if args.step == "generate":
        if args.if_missing and (args.day in days or (days and args.day_given is None)):
            print(f"already generated: {', '.join(map(str, days))}")
            return 0
        # one writer per partition by default: the shares are as even as the books' spread
        generate_day(args.day, args.messages, args.workers or base.kafka.raw_partitions)
        return 0
    day = args.day if args.day_given is not None or not days else days[-1]
    report = run_day(day, args.runs, args.workers or os.cpu_count() or 1)
    if args.reference is not None:
        report["reference"] = compare_with_reference(report, json.loads(args.reference.read_text()))
        report["reference"]["file"] = str(args.reference)
    path = write_results("backfill_day", report)
    print(f"backfill of {day}: {report['runs'][0]['frames']:,} frames in "
          f"{report['minutes']} min (target 10); rows unique {report['rows_unique']}; "
          f"idempotent {report['idempotent']}")  # fmt: skip
    print(f"written to {path}")
    if "reference" in report:
        ref = report["reference"]
        print(f"tables equal to {ref['file']} ({ref['engine']} engine, {ref['minutes']} min): "
              f"{ref['equal']} {ref['differing'] or ''}")  # fmt: skip
    ok = report["rows_unique"] and report["idempotent"] is not False
    return 0 if ok and report.get("reference", {}).get("equal", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
