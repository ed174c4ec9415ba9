"""The disaster-recovery drill, small: Flink state, Redis and ClickHouse wiped; the job back from
the backed-up savepoint and the lost derived data rebuilt from Kafka's retention; every row, key
and result record equal to before. ``make dr-drill`` runs it with more data."""

from __future__ import annotations

import pytest

from bench import dr_drill
from tickflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_recovery_from_kafka_and_the_savepoint_restores_everything(
    stack_settings: Settings,
) -> None:
    report = dr_drill.run(frames=6000)
    assert report["expected_rows"] > 0 and report["actual_rows"] == report["expected_rows"]
    assert report["lost"] == 0 and report["duplicated"] == 0, report["tables"]
    assert report["redis_state_equal"], report["redis_keys"]
    assert report["kafka_output_equal"] and report["queries_equal"]
    assert report["rto_s"] > 0
