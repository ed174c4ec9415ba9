"""Backtest throughput: a generated range through the compiled core to a strategy at max speed.

    python -m bench.backtest [--frames 200000] [--source both|kafka|memory]

The frames are generated as ``bench.chaos`` does (all three exchanges, 30 books). ``memory``
reads them from a frame source held in memory (the core, decoding, ordering and delivery
alone); ``kafka`` produces them into a raw topic of their own first and reads them back as
``tickflow backtest`` does. The strategy does nothing but count, so the figures are the
backtest's own. Rates are frames (and events delivered) over the run's time, offsets looked up
and consumers started included; per CPU second of this process too (the machine may be
shared). Writes bench/results/backtest.json.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bench.stats import machine, write_results
from jobs.backtest import Backtest, Context, Event
from jobs.frames import FrameBatch, frame_source
from stack import manager
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.generated import Feeder, make_dataset
from tickflow.slice import _delete_kafka_topics

READ_BATCH = 10_000


class Counting:
    def __init__(self) -> None:
        self.events = 0

    def on_event(self, event: Event, ctx: Context) -> None:
        self.events += 1


class InMemory:
    """The dataset's records per partition (as the connectors partition them)."""

    def __init__(self, records: list[tuple[bytes, bytes, int, str]], partitions: int) -> None:
        from connectors.producer import partition_of

        self.records: dict[int, list[tuple[bytes, int]]] = {p: [] for p in range(partitions)}
        for _, value, timestamp_ms, group in records:
            self.records[partition_of(group, partitions)].append((value, timestamp_ms))

    def partitions(self) -> list[int]:
        return sorted(self.records)

    def offset_range(self, partition: int, from_ms: int, to_ms: int) -> tuple[int, int]:
        return 0, len(self.records[partition])  # the whole dataset is the range

    def read(self, partition: int, start: int, end: int) -> Iterator[FrameBatch]:
        records = self.records[partition]
        for i in range(start, end, READ_BATCH):
            part = records[i : min(end, i + READ_BATCH)]
            yield FrameBatch(
                partition, list(range(i, i + len(part))), [v for v, _ in part], [t for _, t in part]
            )


def timed(settings: Settings, source: Any, from_ms: int, to_ms: int) -> dict[str, Any]:
    strategy = Counting()
    cpu = time.process_time()
    result = Backtest(settings, source, from_ms, to_ms).run(strategy)
    cpu = time.process_time() - cpu
    assert strategy.events == sum(result.events.values())
    return {
        "frames": result.frames,
        "events": strategy.events,
        "events_by_kind": result.events,
        "late_deliveries": result.late_deliveries,
        "seconds": round(result.seconds, 2),
        "frames_per_s": round(result.frames_per_s),
        "events_per_s": round(result.events_per_s),
        # on a shared machine the wall clock counts other processes' time too
        "cpu_seconds": round(cpu, 2),
        "frames_per_cpu_s": round(result.frames / cpu) if cpu > 0 else 0,
        "events_per_cpu_s": round(strategy.events / cpu) if cpu > 0 else 0,
    }


def run(frames: int, sources: list[str], log: Any = print) -> dict[str, Any]:
    base = load_settings()
    data = make_dataset(base, frames)
    from_ms = min(r[2] for r in data.records)
    to_ms = max(r[2] for r in data.records) + 1
    runs: dict[str, Any] = {}
    if "memory" in sources:
        memory = InMemory(data.records, base.kafka.raw_partitions)
        runs["memory"] = timed(base, memory, from_ms, to_ms)
        log(f"memory: {runs['memory']}")
    if "kafka" in sources:
        started = manager.up(base, ["kafka"]) if not manager.stack_answers(base, ["kafka"]) else []
        tag = uuid.uuid4().hex[:6]
        with patched_environ({"TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.btbench{tag}"}):
            settings = load_settings()
        try:
            ensure_topics(settings)
            Feeder(settings, data.records).run(rate=0)
            runs["kafka"] = timed(settings, frame_source(settings, "kafka"), from_ms, to_ms)
            log(f"kafka: {runs['kafka']}")
        finally:
            _delete_kafka_topics(settings, [settings.kafka.raw_topic])
            if started:
                manager.down(base, started)
    return {
        "runs": runs,
        "conditions": {
            "frames": len(data.records), "books": data.books, "instruments": data.instruments,
            "speed": "max", "strategy": "counts events",
            "raw_partitions": base.kafka.raw_partitions,
            "chunk_records": base.backtest.chunk_records, "reorder_ms": base.backtest.reorder_ms,
            "bar_intervals_ms": list(base.analytics.bar_intervals_ms),
            "load_avg_1m": os.getloadavg()[0], **machine(),
        },
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.backtest", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--source", choices=("both", "kafka", "memory"), default="both")
    args = parser.parse_args(argv)
    sources = ["memory", "kafka"] if args.source == "both" else [args.source]
    report = run(args.frames, sources)
    path = write_results("backtest", report)
    for name, figures in report["runs"].items():
        print(f"backtest ({name}): {figures['frames']} frames, {figures['events']} events in "
              f"{figures['seconds']} s: {figures['frames_per_s']} frames/s, "
              f"{figures['events_per_s']} events/s; per CPU second: "
              f"{figures['frames_per_cpu_s']} frames, {figures['events_per_cpu_s']} events; "
              f"load {report['conditions']['load_avg_1m']:.1f}")  # fmt: skip
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
