"""Sustained throughput: the pipeline job on a preloaded raw topic of >= 10 M frames, measured
over a steady window of >= 60 s, with the CPU of every process of the stack.

    python -m bench.throughput [--frames 10000000] [--window-s 60] [--workers 2]
                               [--backend hashmap] [--drop-dataset]

1. The data set: the frames the simulator's venues send for 10 books on each of Binance,
   Coinbase and Kraken, wrapped by the connectors' own ``dispatch``/``emit`` (as
   ``bench.book_pipeline`` generates them), one worker process per exchange (the venues are
   independent; each worker steps only its exchange's books at the same simulated times as
   one generator would), merged by receive time and produced as the connectors produce
   (key, partition of the NBBO group, record time = receive time). Generating 10 M frames
   takes minutes, so the topic is kept (``tickflow.bench.preloaded.all.<frames>.v<N>``) with
   a note of what it holds under ``<state_dir>/bench/``, and reused by later runs while the
   broker keeps it; ``--drop-dataset`` deletes it at the end.
2. The run: the job (``jobs/pipeline.py`` with its configuration, unique Redis prefix,
   ClickHouse database, consumer group and side topics) reads the topic from the start. Every
   second: the frames the compiled core has processed (the operator's ``tickflow_frames``
   counter on the TaskManager's metrics endpoint) and the CPU of each process. Done when every
   frame was processed.
3. The steady window: from ``--skip-s`` after the first processed frame (JIT warm-up, the
   source's start) to the last second before the final 1% of the frames (the tail, where
   partitions run dry one by one); frames/s over it, the slowest and fastest 10 s within it,
   and CPU per frame of each process over it. A window shorter than ``--window-s`` is
   reported as such (the target asks for >= 60 s).

Results: printed, and bench/results/throughput.json (``targets.sustained_throughput``, read by
``bench.summary``). Needs the local stack (``tickflow stack up``); removes what the run
created (but the data set, unless asked).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import multiprocessing
import os
import platform
import struct
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.book_pipeline import (
    check_stack,
    cleanup_run,
    delete_kafka,
    environment,
    process_cpu_seconds,
    run_overrides,
    submit,
    topic_end_offsets,
    wait_cluster_free,
)
from bench.stats import write_results
from connectors.producer import partition_of
from schemas.codec import RawEnvelope, encode_envelope
from simulator.server import SimulatorServer
from simulator.testing import pointed_at
from stack import flink
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings
from tickflow.generated import (
    GENERATED_STEPS_PER_S,
    MIXES,
    Clock,
    book_settings,
    generate,
    open_wire,
)
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config

DATASET_VERSION = 1  # bump when the generator's output changes: an old topic is not reused
MIX = "all"
PILOT_FRAMES = 20_000  # generated first to learn frames per market step
RECORD_HEADER = struct.Struct("<qiHI")  # receive_time_ns, partition, key length, value length
PRODUCE_LINGER_MS = 50
SAMPLE_EVERY_S = 1.0
FLINK_RUNNING_TIMEOUT_S = 240.0
STALL_TIMEOUT_S = 120.0  # no frame processed for this long: the run failed
TAIL_FRACTION = 0.01  # the last 1% of the frames: partitions run dry one by one
SUB_WINDOW_S = 10  # the slowest and fastest stretch of this length within the window
FRAMES_METRIC = "flink_taskmanager_job_task_operator_tickflow_frames"


# -- the data set ------------------------------------------------------------------------------


class RecordFile:
    """A connector sink writing each envelope as the raw-topic record it becomes."""

    def __init__(self, out: BinaryIO, partitions: int, equivalents: dict[str, str]) -> None:
        self.out = out
        self.partitions = partitions
        self.equivalents = equivalents
        self.records = 0
        self.dead_letters = 0

    def send(self, envelope: RawEnvelope) -> None:
        value = encode_envelope(envelope)
        key = envelope.kafka_key
        partition = partition_of(nbbo_group(envelope.instrument, self.equivalents), self.partitions)
        self.out.write(
            RECORD_HEADER.pack(envelope.receive_time_ns, partition, len(key), len(value))
        )
        self.out.write(key)
        self.out.write(value)
        self.records += 1

    def dead_letter(self, record: str) -> None:
        self.dead_letters += 1


def read_records(path: Path) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(receive_time_ns, partition, key, value) of a record file, in file order."""
    with path.open("rb") as f:
        while header := f.read(RECORD_HEADER.size):
            time_ns, partition, key_len, value_len = RECORD_HEADER.unpack(header)
            yield time_ns, partition, f.read(key_len), f.read(value_len)


def generate_exchange(exchange: str, ticks: int, start_ms: int, path: str) -> tuple[int, int]:
    """One exchange's part of the data set (a worker process): its books stepped at the times
    one generator of the whole mix would step them. (records, dead letters)"""
    settings = book_settings(load_settings(), MIXES[MIX])
    books = [(ex, s) for ex in MIXES[MIX] for s in getattr(settings.exchanges, ex).symbols]
    clock = Clock(start_ms)
    server = SimulatorServer(settings, paused=True, clock_ms=clock)
    pointed = pointed_at(settings, server)
    step_ms = 1000.0 / GENERATED_STEPS_PER_S
    with open(path, "wb", buffering=1 << 20) as out:
        sink = RecordFile(
            out, settings.kafka.raw_partitions, dict(settings.analytics.quote_equivalents)
        )
        wire = open_wire(exchange, pointed, server.venues[exchange], sink, start_ms * 1_000_000)
        first_ms = start_ms + 1
        for tick in range(ticks):
            tick_ms = first_ms + tick * step_ms
            for i, (book_exchange, symbol) in enumerate(books):
                if book_exchange == exchange:
                    now_ms = int(tick_ms + i * step_ms / len(books))
                    clock.now_ms = now_ms
                    wire.step(symbol, now_ms, now_ms * 1_000_000)
    return sink.records, sink.dead_letters


def dataset_topic(frames: int) -> str:
    return f"tickflow.bench.preloaded.{MIX}.{frames}.v{DATASET_VERSION}"


def dataset_note(settings: Settings, topic: str) -> Path:
    return settings.state_dir / "bench" / f"{topic}.json"


def existing_dataset(settings: Settings, topic: str) -> dict[str, Any] | None:
    """The note of a data set the broker still holds in full, or None."""
    note = dataset_note(settings, topic)
    if not note.exists():
        return None
    data: dict[str, Any] = json.loads(note.read_text())
    admin = AdminClient(client_config(settings.kafka))
    if topic not in admin.list_topics(timeout=10).topics:
        return None
    if topic_end_offsets(settings, topic) != data["records"]:
        return None
    return data


def build_dataset(settings: Settings, frames: int, workers: int) -> dict[str, Any]:
    """Generate ``frames`` frames (about) in worker processes and produce them; its note."""
    topic = dataset_topic(frames)
    mix_settings = book_settings(settings, MIXES[MIX])
    books = sum(len(getattr(mix_settings.exchanges, ex).symbols) for ex in MIXES[MIX])
    started = time.perf_counter()
    pilot = generate(mix_settings, MIXES[MIX], PILOT_FRAMES)
    frames_per_tick = pilot.market_frames / (pilot.steps / books)
    ticks = math.ceil(frames / frames_per_tick)
    # the data ends about now: event time close to processing time, as live
    simulated_ms = int(ticks * 1000.0 / GENERATED_STEPS_PER_S)
    start_ms = time.time_ns() // 1_000_000 - simulated_ms - 60_000
    print(
        f"  generating ~{frames} frames: {ticks} steps of {books} books "
        f"({frames_per_tick:.1f} frames per step of all books), {workers} workers",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tickflow-dataset-") as tmp:
        paths = {ex: str(Path(tmp) / f"{ex}.records") for ex in MIXES[MIX]}
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            counts = pool.starmap(
                generate_exchange, [(ex, ticks, start_ms, paths[ex]) for ex in MIXES[MIX]]
            )
        generated_s = time.perf_counter() - started
        records = sum(c[0] for c in counts)
        dead = sum(c[1] for c in counts)
        if dead:
            raise RuntimeError(f"generated data has {dead} dead letters")
        print(f"  generated {records} records in {generated_s:.0f} s; producing", flush=True)
        ensure_topics(settings, extra={topic: settings.kafka.raw_partitions})
        produce_started = time.perf_counter()
        produced = produce_merged(settings, topic, [Path(p) for p in paths.values()])
    note = {
        "topic": topic,
        "records": produced,
        "books": books,
        "steps_per_book": ticks,
        "simulated_seconds": simulated_ms / 1000,
        "generated_seconds": round(generated_s, 1),
        "produced_seconds": round(time.perf_counter() - produce_started, 1),
        "dataset_version": DATASET_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = dataset_note(settings, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(note, indent=2) + "\n")
    return note


def produce_merged(settings: Settings, topic: str, paths: list[Path]) -> int:
    """The record files merged by receive time into ``topic``; records delivered."""
    failed: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer(
        {
            **client_config(settings.kafka),
            "enable.idempotence": True,  # one book's frames stay in order
            "acks": "all",
            "linger.ms": PRODUCE_LINGER_MS,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    sent = 0
    for time_ns, partition, key, value in heapq.merge(*map(read_records, paths)):
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, partition=partition,
                    timestamp=time_ns // 1_000_000, on_delivery=on_delivery,
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    if producer.flush(300):
        raise RuntimeError(f"preload of {topic}: records left undelivered")
    if failed:
        raise RuntimeError(f"preload of {topic}: {len(failed)} failed, e.g. {failed[0]}")
    return sent


# -- the run -----------------------------------------------------------------------------------


def metrics_ports(settings: Settings) -> list[int]:
    low, _, high = settings.monitoring.flink_metrics_ports.partition("-")
    return list(range(int(low), int(high or low) + 1))


def frames_processed(settings: Settings) -> int:
    """The compiled core's processed frames over the job's subtasks (the Prometheus endpoints
    of Flink's processes: the TaskManagers export the operator's counter)."""
    total = 0
    for port in metrics_ports(settings):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            continue  # no process on this port of the range
        for line in text.splitlines():
            if line.startswith(FRAMES_METRIC + "{"):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def sample_run(settings: Settings, job_id: str, records: int) -> list[dict[str, Any]]:
    """Every second until every frame was processed: time, frames processed, CPU seconds."""
    samples: list[dict[str, Any]] = []
    last_progress = time.monotonic()
    last_frames = -1
    while True:
        now = time.monotonic()
        frames = frames_processed(settings)
        samples.append({"t": now, "frames": frames, "cpu": process_cpu_seconds(settings)})
        if frames >= records:
            return samples
        if frames > last_frames:
            last_frames, last_progress = frames, now
        elif now - last_progress > STALL_TIMEOUT_S:
            raise RuntimeError(f"no progress for {STALL_TIMEOUT_S:.0f} s at {frames}/{records}")
        if len(samples) % 10 == 0:
            state = flink.job_state(settings, job_id)
            if state != "RUNNING":
                raise RuntimeError(f"job {job_id} is {state} at {frames}/{records} frames")
            print(f"    {frames}/{records} frames", flush=True)
        time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - now)))


def steady_window(
    samples: list[dict[str, Any]], records: int, skip_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first and last sample of the steady window."""
    first_active = next(s for s in samples if s["frames"] > 0)
    start = next(s for s in samples if s["t"] >= first_active["t"] + skip_s)
    tail_from = records * (1 - TAIL_FRACTION)
    end = [s for s in samples if s["frames"] <= tail_from][-1]
    if end["t"] <= start["t"]:
        raise RuntimeError("the run was too short for a steady window: use more --frames")
    return start, end


def summarise(samples: list[dict[str, Any]], records: int, skip_s: float) -> dict[str, Any]:
    start, end = steady_window(samples, records, skip_s)
    seconds = end["t"] - start["t"]
    frames = end["frames"] - start["frames"]
    inside = [s for s in samples if start["t"] <= s["t"] <= end["t"]]
    stretches = [
        (b["frames"] - a["frames"]) / (b["t"] - a["t"])
        for a, b in zip(inside, inside[SUB_WINDOW_S:], strict=False)
    ]
    cpu = {
        name: round((end["cpu"][name] - start["cpu"].get(name, 0.0)) / frames * 1e6, 2)
        for name in end["cpu"]
    }
    return {
        "window_seconds": round(seconds, 1),
        "window_frames": frames,
        "frames_per_s": round(frames / seconds),
        f"slowest_{SUB_WINDOW_S}s_frames_per_s": round(min(stretches)) if stretches else None,
        f"fastest_{SUB_WINDOW_S}s_frames_per_s": round(max(stretches)) if stretches else None,
        "cpu_us_per_frame": cpu,
        "cpu_us_per_frame_total": round(sum(cpu.values()), 2),
        "cores_used": {k: round(v * frames / seconds / 1e6, 2) for k, v in cpu.items()},
    }


def throughput_run(
    base: Settings, topic: str, records: int, backend: str, skip_s: float
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    job_id: str | None = None
    with environment(run_overrides(tag, topic, backend)) as settings:
        sharing = wait_cluster_free(settings)
        try:
            job_id = submit(settings)
            flink.wait_job_running(settings, job_id, FLINK_RUNNING_TIMEOUT_S)
            samples = sample_run(settings, job_id, records)
            dead = topic_end_offsets(settings, settings.kafka.deadletter_topic)
        finally:
            cleanup_run(settings, job_id)
    result = summarise(samples, records, skip_s)
    t0 = samples[0]["t"]
    result.update(
        {
            "records": records,
            "seconds_to_last_frame": round(samples[-1]["t"] - t0, 1),
            "dead_letters": dead,
            "state_backend": backend,
            "other_jobs_running": sharing,
            "job_id": job_id,
            # (seconds since RUNNING, frames processed), for the report's plot
            "progress": [(round(s["t"] - t0, 1), s["frames"]) for s in samples],
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--frames", type=int, default=10_000_000)
    parser.add_argument("--window-s", type=float, default=60.0, help="steady window required")
    parser.add_argument("--skip-s", type=float, default=15.0, help="warm-up left out")
    parser.add_argument("--workers", type=int, default=min(3, os.cpu_count() or 1))
    parser.add_argument("--backend", default="hashmap")
    parser.add_argument("--drop-dataset", action="store_true")
    parser.add_argument(
        "--prepare-only", action="store_true", help="build (or check) the data set, no run"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    base = load_settings()
    check_stack(base)
    topic = dataset_topic(args.frames)
    note = existing_dataset(base, topic)
    if note is None:
        note = build_dataset(base, args.frames, args.workers)
    else:
        print(f"  reusing {topic}: {note['records']} records", flush=True)
    if args.prepare_only:
        return 0
    try:
        run = throughput_run(base, topic, note["records"], args.backend, args.skip_s)
    finally:
        if args.drop_dataset:
            delete_kafka(base, [topic], [])
            with contextlib.suppress(FileNotFoundError):
                dataset_note(base, topic).unlink()
    long_enough = run["window_seconds"] >= args.window_s
    print(
        f"  {run['frames_per_s']} frames/s over a steady window of {run['window_seconds']} s "
        f"({run['window_frames']} frames{'' if long_enough else ', SHORTER than required'}); "
        f"slowest {SUB_WINDOW_S} s {run[f'slowest_{SUB_WINDOW_S}s_frames_per_s']}, "
        f"fastest {run[f'fastest_{SUB_WINDOW_S}s_frames_per_s']}; dead letters "
        f"{run['dead_letters']}\n  CPU us/frame {run['cpu_us_per_frame']} "
        f"(total {run['cpu_us_per_frame_total']}); cores {run['cores_used']}",
        flush=True,
    )
    flink_conf = base.flink
    result = {
        "dataset": note,
        "run": run,
        "parallelism": flink_conf.parallelism,
        "python_execution_mode": flink_conf.python_execution_mode,
        "checkpoint_interval_ms": flink_conf.checkpoint_interval_ms,
        "bundle_max_frames": flink_conf.bundle_max_frames,
        "bundle_max_delay_ms": flink_conf.bundle_max_delay_ms,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "targets": {
            "sustained_throughput": {
                "measured": run["frames_per_s"] if long_enough else None,
                "unit": "msg/s",
                "conditions": {
                    "what": "Flink job frames/s over a steady window of a preloaded raw topic "
                    "(all three exchanges), Kafka -> compiled core -> Redis + ClickHouse + "
                    "result topics",
                    "window_seconds": run["window_seconds"],
                    "records": note["records"],
                    "cpu_us_per_frame": run["cpu_us_per_frame"],
                    "parallelism": flink_conf.parallelism,
                    "state_backend": args.backend,
                },
            }
        },
    }
    print(f"written to {write_results('throughput', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
