"""The pure parts of the failure drills: the Python fault (and the books operator raising it), the
kill plan, the diff, how the supervisor finds the checkpoint to resubmit from; the HA drill's
fault plan and per-kind report, and the availability probe's stall accounting."""

from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from bench.chaos import TARGETS, kill_plan
from bench.ha_drill import KINDS, Fault, per_kind
from jobs.faults import InjectedPythonFault, PythonFault
from jobs.operators import BundleProcessor
from jobs.sinks.clickhouse import COLUMNS
from monitoring.availability import AvailabilityProbe, Stall
from schemas.bundles import frame_bundle
from stack.supervisor import latest_checkpoint
from tests.unit.flink_fakes import FakeContext, FakeRuntimeContext, FakeTimerService
from tickflow.config import load_settings
from tickflow.runs import Output, compare, diff, first_difference

pytestmark = pytest.mark.unit


def test_python_fault_raises_once_per_marker(tmp_path: Path) -> None:
    marker = tmp_path / "fault"
    fault = PythonFault(str(marker), check_interval_s=0)
    fault.check()  # no marker: nothing
    marker.touch()
    with pytest.raises(InjectedPythonFault):
        fault.check()
    assert not marker.exists() and Path(f"{marker}.fired").exists()
    fault.check()  # claimed: the restored task does not fail again


def test_the_books_operator_raises_the_fault_once(tmp_path: Path) -> None:
    marker = tmp_path / "fault"
    settings = load_settings()
    operator = BundleProcessor(
        settings.book, settings.redis, settings.analytics, settings.monitoring, str(marker)
    )
    runtime = FakeRuntimeContext()
    operator.open(runtime)  # Redis is not asked anything until a flush
    assert operator.fault is not None
    operator.fault.check_interval_s = 0
    runtime.keyed.key = "BTC-USD"
    ctx = FakeContext(runtime.keyed, FakeTimerService())
    marker.touch()
    with pytest.raises(InjectedPythonFault):
        list(operator.process_element(frame_bundle([]), ctx))
    assert list(operator.process_element(frame_bundle([]), ctx)) == []  # claimed: no blob


def test_kill_plan_hits_every_target_in_shuffled_rounds() -> None:
    plan = kill_plan(12, random.Random(7))
    assert len(plan) == 12
    assert sorted(plan[:6]) == sorted(TARGETS) == sorted(plan[6:])
    assert plan == kill_plan(12, random.Random(7))  # seeded: the same drill again


def test_diff_counts_lost_and_duplicated() -> None:
    expected = Counter({"a": 1, "b": 1, "c": 1})
    assert diff(expected, Counter({"a": 1, "b": 1, "c": 1})) == (0, 0)
    assert diff(expected, Counter({"a": 2, "b": 1})) == (1, 1)
    assert diff(expected, Counter({"a": 1, "b": 1, "c": 1, "x": 1})) == (0, 1)


def test_a_comparison_shows_where_two_runs_part() -> None:
    """Rows changed in place count once lost and once duplicated; the report keeps the first
    few of each side, and the fields of a Redis key that differ, so a failed drill says which
    book and which rows parted without the runs' data."""

    def output(top: list[tuple[str, int]], book: dict[str, str]) -> Output:
        tables: dict[str, Counter[tuple[object, ...]]] = {t: Counter() for t in COLUMNS}
        tables["top_of_book"] = Counter(top)
        return Output(tables, len(top), {}, {":book:x": book}, {"top_of_book": Counter()})

    ref = output([("x", 1), ("x", 2), ("y", 1)], {"seq": "2", "status": "LIVE"})
    got = output([("x", 1), ("x", 3), ("y", 1)], {"seq": "3", "status": "LIVE"})
    report = compare(ref, got)
    top = report["tables"]["top_of_book"]
    assert (top["lost"], top["duplicated"]) == (1, 1)
    assert top["examples"] == {"missing": ["('x', 2)"], "unexpected": ["('x', 3)"]}
    assert "examples" not in report["tables"]["trades"]
    assert report["redis_keys"]["examples"] == {":book:x": {"seq": ["2", "3"]}}
    assert compare(ref, ref)["redis_keys"]["examples"] == {}


def test_a_partition_read_back_parts_from_the_fed_one_where_a_record_is_out_of_place() -> None:
    fed = [b"a", b"b", b"c"]
    assert first_difference(fed, list(fed)) is None
    assert first_difference(fed, [b"a", b"b", b"b", b"c"]) == 2  # delivered twice
    assert first_difference(fed, [b"a", b"c", b"b"]) == 1
    assert first_difference(fed, [b"a", b"b"]) == 2  # the last one lost


def test_latest_checkpoint_is_the_newest_complete_one_of_any_run(tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(), state_dir=tmp_path)
    base = tmp_path / "flink" / "checkpoints"
    assert latest_checkpoint(settings, ["job1"]) is None
    for job, chk, mtime, complete in (
        ("job1", 3, 100, True),
        ("job1", 4, 300, False),  # being written when the JobManager died: no _metadata
        ("job2", 1, 200, True),
        ("other", 9, 900, True),  # another job's: not ours
    ):
        path = base / job / f"chk-{chk}"
        path.mkdir(parents=True)
        if complete:
            (path / "_metadata").write_bytes(b"x")
            os.utime(path / "_metadata", (mtime, mtime))
    assert latest_checkpoint(settings, ["job1", "job2"]) == (base / "job2" / "chk-1").as_uri()
    assert latest_checkpoint(settings, ["job1"]) == (base / "job1" / "chk-3").as_uri()


def test_the_ha_drill_plan_hits_every_kind_in_shuffled_rounds() -> None:
    plan = kill_plan(2 * len(KINDS), random.Random(3), KINDS)
    assert Counter(plan) == Counter(KINDS * 2)
    assert plan[: len(KINDS)] != list(KINDS) or plan[len(KINDS) :] != list(KINDS)


def test_the_ha_drill_reports_each_kind_against_its_bound() -> None:
    faults = [
        Fault("redis-primary", 10.0, failover_s=4.0, stale_s=1.5, detected_s=None),
        Fault("redis-primary", 250.0, failover_s=6.0, stale_s=3.0, detected_s=None),
        Fault("jobmanager", 130.0, failover_s=12.0, stale_s=8.0, detected_s=20.0,
              detected_by="BookNotLive"),
    ]  # fmt: skip
    kinds = per_kind(faults)
    assert kinds["redis-primary"]["stale_target_s"] == 2.0  # replication must hide it
    assert kinds["redis-primary"]["stale_s_max"] == 3.0 and not kinds["redis-primary"]["stale_met"]
    assert kinds["redis-primary"]["detected"] == "0 of 2"
    assert kinds["jobmanager"]["stale_met"] and kinds["jobmanager"]["alerts"] == ["BookNotLive"]
    assert set(kinds) == {"redis-primary", "jobmanager"}


def test_stalls_count_only_within_a_fault_window() -> None:
    probe = AvailabilityProbe(load_settings(), stall_s=1.0)
    probe.started = 100.0
    probe.last_advance = 100.0
    probe._close_stall(100.5)  # shorter than a stall: the books were fresh
    probe.last_advance = 110.0
    probe._close_stall(114.0)
    assert probe.stalls == [Stall(110.0, 114.0)]
    assert probe.stale_seconds(100.0, 112.0) == 2.0
    assert probe.stale_seconds(112.0, 200.0) == 2.0
    assert probe.stale_seconds(120.0, 200.0) == 0.0
