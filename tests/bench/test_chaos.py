"""The failure drill, short: each part of the pipeline killed once (TaskManager, the job's
Python code, JobManager, Kafka broker, ClickHouse, Redis) while a deterministic dataset flows;
the supervisor and Flink recover by themselves, and ClickHouse, Redis and the exactly-once
Kafka topics end equal to a fault-free run of the same data: nothing lost, nothing twice.
``make chaos`` runs the long version (12 kills, 60,000 frames)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import chaos
from tickflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_one_kill_of_each_part_loses_and_duplicates_nothing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    report = chaos.run(frames=8000, kills=len(chaos.TARGETS), seed=11)
    (tmp_path / "chaos.json").write_text(json.dumps(report, indent=2, default=str))
    chaos.print_report(report)
    assert sorted(k["target"] for k in report["kills"]) == sorted(chaos.TARGETS)
    assert report["expected_rows"] > 0 and report["actual_rows"] == report["expected_rows"]
    assert report["lost"] == 0 and report["duplicated"] == 0, report["tables"]
    assert report["redis_state_equal"], report["redis_keys"]
    assert report["kafka_output_equal"], report["kafka_topics"]
    assert report["queries_equal"]
    assert report["passed"]
