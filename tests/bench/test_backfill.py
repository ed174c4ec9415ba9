"""The batch backfill on the real stack: the rows it writes are the streaming job's, row for
row, over the same range of the raw topic; a second run changes nothing (idempotent)."""

from __future__ import annotations

import pytest

from bench import backfill
from tickflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_batch_backfill_equals_the_streaming_job_and_is_idempotent(
    stack_settings: Settings,
) -> None:
    report = backfill.run(frames=12_000, flink_frames=6_000, day_messages=50_000_000)
    assert report["rows_differing_from_flink"] and not any(
        report["rows_differing_from_flink"].values()
    ), report["rows_differing_from_flink"]
    assert report["equal_to_flink"], report["batch_same_range"]
    assert report["idempotent"]
    first, second = report["batch_runs"]
    assert first["frames"] == second["frames"] == 12_000
    assert first["rows_final"] == second["rows_final"] > 0
    assert second["rows_physical"] >= second["rows_final"]  # rewritten: FINAL keeps one of each
    assert first["dead_letters"] == 0 and first["late"] == 0
