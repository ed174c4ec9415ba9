"""Scale-out: the pipeline job at parallelism 2, its subtasks on two TaskManagers, gives the
outputs of parallelism 1 over the same records (every ClickHouse row, the documented daily
queries, every Redis key, every committed result record); and a job rescaled by savepoint
1 -> 2 -> 1 while records keep coming gives them too.

Both hold because a key's records never change order: the connectors put every record of an
instrument group into one raw partition, one source subtask reads a partition, and keyed
state moves between subtasks only through a savepoint (by key group)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import flink
from stack.supervisor import SupervisedJob, pipeline_submitter
from stack.topics import ensure_topics
from tickflow.config import Settings
from tickflow.generated import Dataset, Feeder, make_dataset
from tickflow.runs import (
    Namespace,
    Output,
    caught_up,
    cleanup,
    collect,
    compare,
    namespace,
    raw_topic_check,
    reference_run,
    topics_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAMES = 9_000
BOOKS_OPERATOR = "books-per-instrument"
CLICKHOUSE_SINK = "clickhouse-sink"


def log(line: str) -> None:
    print(line, flush=True)


def with_parallelism(ns: Namespace, parallelism: int) -> Namespace:
    return Namespace(ns.name, {**ns.environ, "TICKFLOW__FLINK__PARALLELISM": str(parallelism)})


@pytest.fixture(scope="module")
def two_taskmanagers(stack_settings: Settings) -> Iterator[Settings]:
    """A second TaskManager beside the stack's one, for this module's tests only."""
    added = 0
    while flink.taskmanager_count(stack_settings) < 2:
        flink.add_taskmanager(stack_settings)
        added += 1
    try:
        yield stack_settings
    finally:
        for _ in range(added):
            flink.remove_taskmanager(stack_settings)


@pytest.fixture(scope="module")
def dataset(stack_settings: Settings) -> Dataset:
    return make_dataset(stack_settings, FRAMES)


@pytest.fixture(scope="module")
def reference(
    two_taskmanagers: Settings, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Output]:
    """The job at parallelism 1 over the dataset, fault-free: what every run must end with."""
    ns = namespace("sref", uuid.uuid4().hex[:6], tmp_path_factory.mktemp("ref") / "no-fault")
    job = SupervisedJob([], pipeline_submitter(ns.settings))
    try:
        yield reference_run(ns, dataset, job, log)
    finally:
        with ns.active() as settings:
            cleanup(settings, job)


def assert_equal_outputs(reference: Output, got: Output) -> None:
    report = compare(reference, got)
    summary = {k: report[k] for k in ("expected_rows", "actual_rows", "lost", "duplicated")}
    assert report["expected_rows"] > 1000, summary
    assert report["lost"] == 0 and report["duplicated"] == 0, report["tables"]
    assert report["queries_equal"], "the documented daily queries differ"
    assert report["redis_state_equal"], report["redis_keys"]
    assert report["kafka_output_equal"], report["kafka_topics"]


def submit(settings: Settings, job: SupervisedJob, restore: str | None) -> set[str]:
    """Submit (from ``restore`` if given), wait until RUNNING; the TaskManagers the books
    operator's subtasks run on."""
    job.job_ids.append(job.submit(restore))
    flink.wait_job_running(settings, job.current, 240)
    placement = flink.job_taskmanagers(settings, job.current)
    # a vertex is named after its chain of operators
    return next(tms for name, tms in placement.items() if BOOKS_OPERATOR in name)


def test_parallelism_two_on_two_taskmanagers_gives_the_outputs_of_parallelism_one(
    reference: Output, dataset: Dataset, tmp_path: Path
) -> None:
    ns = with_parallelism(namespace("sp2", uuid.uuid4().hex[:6], tmp_path / "no-fault"), 2)
    with ns.active() as settings:
        job = SupervisedJob([], pipeline_submitter(settings))
        try:
            ensure_topics(settings, extra=topics_of(settings))
            Feeder(settings, dataset.records).run(rate=0)
            raw = raw_topic_check(settings, dataset)  # once each, in order per partition
            assert (raw["lost"], raw["duplicated"], raw["in_order"]) == (0, 0, True), raw
            placement = submit(settings, job, None)
            log(f"parallelism 2: {BOOKS_OPERATOR} on {sorted(placement)}")
            assert len(placement) == 2, placement
            caught_up(settings, len(dataset.records), job, log, faults_expected=False)
            # the ClickHouse writes are spread too: each sink subtask took its share
            sink_records = flink.subtask_records_in(settings, job.current, CLICKHOUSE_SINK)
            log(f"{CLICKHOUSE_SINK} records per subtask: {sink_records}")
            flink.cancel_job(settings, job.current)
            assert len(sink_records) == 2 and min(sink_records) > 0, sink_records
            assert_equal_outputs(reference, collect(settings))
        finally:
            cleanup(settings, job)


def test_a_job_rescaled_by_savepoint_one_two_one_gives_the_same_outputs(
    reference: Output, dataset: Dataset, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    base = namespace("sre", tag, tmp_path / "no-fault")
    records = dataset.records
    thirds = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3],
              records[2 * len(records) // 3 :]]  # fmt: skip
    job: SupervisedJob | None = None
    restore: str | None = None
    fed = 0
    steps: list[dict[str, Any]] = []
    try:
        for parallelism, part in zip((1, 2, 1), thirds, strict=True):
            with with_parallelism(base, parallelism).active() as settings:
                if job is None:
                    ensure_topics(settings, extra=topics_of(settings))
                    job = SupervisedJob([], pipeline_submitter(settings))
                else:  # the same job's ids, now submitted at another parallelism
                    job = SupervisedJob(job.job_ids, pipeline_submitter(settings))
                Feeder(settings, part).run(rate=0)
                fed += len(part)
                placement = submit(settings, job, restore)
                caught_up(settings, fed, job, log, faults_expected=False)
                tms = len(placement)
                steps.append({"parallelism": parallelism, "taskmanagers": tms, "fed": fed})
                log(f"step {steps[-1]}")
                if fed < len(records):
                    restore = flink.stop_with_savepoint(settings, job.current)
                else:
                    flink.cancel_job(settings, job.current)
                    got = collect(settings)
        assert [s["taskmanagers"] for s in steps] == [1, 2, 1], steps
        assert_equal_outputs(reference, got)
    finally:
        if job is not None:
            with base.active() as settings:
                cleanup(settings, job)
