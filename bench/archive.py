"""The raw archive: how fast the archiver writes, how small its files are next to Kafka's log,
and how fast a range reads back from each.

    python -m bench.archive [--frames 100000]

The frames are generated as ``bench.chaos`` does (all three exchanges, 30 books), produced
into a raw topic of the run's own (uncompressed, as the connectors produce), then archived by
``jobs.archive.Archiver`` up to the topic's end (consumer start and every file's fsync and
rename included). Bytes per frame: the archive's Parquet files (zstd) against the broker's log
segments of the same records (``<state_dir>/kafka/data/<topic>-<p>/*.log``: record batches as
stored, indexes excluded). Reading: every partition's whole range through ``jobs.frames``,
Kafka then the archive (values rebuilt byte for byte from the columns). Writes
bench/results/archive.json; everything the run creates is removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.chaos import Feeder, make_dataset
from bench.stats import machine, write_results
from jobs.archive import layout
from jobs.archive.archiver import Archiver
from jobs.frames import opened_source
from stack import manager
from stack.kafka import Kafka
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.slice import _delete_kafka_topics


def kafka_log_bytes(settings: Settings) -> int:
    """The raw topic's log segments on the broker's disk."""
    data = Kafka(settings).data_dir
    topic = settings.kafka.raw_topic
    return sum(
        path.stat().st_size
        for p in range(settings.kafka.raw_partitions)
        for path in (data / f"{topic}-{p}").glob("*.log")
    )


def read_all(settings: Settings, kind: str) -> tuple[int, float]:
    """(records, seconds) to read every partition's whole range."""
    started = time.perf_counter()
    records = 0
    with opened_source(settings, kind) as source:
        for p in source.partitions():
            start, end = source.offset_range(p, 0, 2**62)
            records += sum(len(b.offsets) for b in source.read(p, start, end))
    return records, time.perf_counter() - started


def run(frames: int, log: Any = print) -> dict[str, Any]:
    base = load_settings()
    manager.up(base, ["kafka"], log=log)
    tag = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    env = {
        "TICKFLOW__KAFKA__RAW_TOPIC": f"tickflow.raw.benchar{tag}",
        "TICKFLOW__ARCHIVE__DIR": str(work),
        "TICKFLOW__ARCHIVE__CONSUMER_GROUP": f"tickflow-archive-bench{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-bench{tag}",
        "TICKFLOW__ARCHIVE__METRICS_PORT": "0",
    }
    try:
        with patched_environ(env):
            settings = load_settings()
            data = make_dataset(settings, frames)
            ensure_topics(settings, extra={settings.kafka.raw_topic: base.kafka.raw_partitions})
            Feeder(settings, data.records).run(rate=0)
            log(f"produced {len(data.records)} frames into {settings.kafka.raw_topic}")
            archiver = Archiver(settings)
            started = time.perf_counter()
            archived = archiver.run(lambda: False, until_end=True)
            archive_s = time.perf_counter() - started
            topic_dir = layout.topic_dir(work, settings.kafka.raw_topic)
            files = list(topic_dir.glob("date=*/partition=*/*.parquet"))
            archive_bytes = sum(f.stat().st_size for f in files)
            kafka_bytes = kafka_log_bytes(settings)
            value_bytes = sum(len(r[1]) + len(r[0]) for r in data.records)
            kafka_read, kafka_s = read_all(settings, "kafka")
            archive_read, archive_read_s = read_all(settings, "archive")
            _delete_kafka_topics(settings, [settings.kafka.raw_topic])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert archived == kafka_read == archive_read == len(data.records)
    return {
        "frames": archived,
        "archiver_records_per_s": round(archived / archive_s),
        "archiver_seconds": round(archive_s, 2),
        "files": len(files),
        "archive_bytes": archive_bytes,
        "kafka_log_bytes": kafka_bytes,
        "key_and_value_bytes": value_bytes,
        "bytes_per_frame": {
            "archive_parquet_zstd": round(archive_bytes / archived, 1),
            "kafka_log": round(kafka_bytes / archived, 1),
            "key_and_value": round(value_bytes / archived, 1),
        },
        "archive_vs_kafka": round(archive_bytes / kafka_bytes, 3),
        "read_records_per_s": {
            "kafka": round(kafka_read / kafka_s),
            "archive": round(archive_read / archive_read_s),
        },
        "conditions": {
            "books": data.books,
            "instruments": data.instruments,
            "raw_partitions": base.kafka.raw_partitions,
            "kafka_compression": "none (as the connectors produce)",
            "roll_records": settings.archive.roll_records,
            "row_group_records": settings.archive.row_group_records,
            **machine(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.archive", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    args = parser.parse_args(argv)
    report = run(args.frames)
    path = write_results("archive", report)
    per = report["bytes_per_frame"]
    print(f"archive: {report['frames']} frames archived at {report['archiver_records_per_s']} "
          f"records/s into {report['files']} files; bytes per frame: Parquet zstd "
          f"{per['archive_parquet_zstd']}, Kafka log {per['kafka_log']} (key+value "
          f"{per['key_and_value']}): {report['archive_vs_kafka']:.1%} of Kafka's; read back "
          f"{report['read_records_per_s']['archive']} records/s from the archive, "
          f"{report['read_records_per_s']['kafka']} from Kafka")  # fmt: skip
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
