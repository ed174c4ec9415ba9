"""How ``tickflow demo`` restarts the job: the newest restore point wins; with none, an explicit
start position; a backlog the live job skips is named as exact offset ranges for a backfill."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobs.backfill import PartitionRange, format_offset_ranges, parse_offset_ranges
from tickflow import demo
from tickflow.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.unit


def _settings(tmp_path: Path) -> Settings:
    return load_settings(environ={"TICKFLOW__STATE_DIR": str(tmp_path)})


def _retained(directory: Path, mtime: float) -> str:
    directory.mkdir(parents=True)
    metadata = directory / "_metadata"
    metadata.write_bytes(b"x")
    os.utime(metadata, (mtime, mtime))
    return directory.as_uri()


def test_the_newest_of_the_savepoint_and_the_retained_checkpoints_is_resumed(
    tmp_path: Path,
) -> None:
    from stack import flink

    settings = _settings(tmp_path)
    checkpoints = flink.runtime_dir(settings) / "checkpoints"
    now = time.time()
    older = _retained(checkpoints / "job-a" / "chk-7", now - 300)
    # as Flink names it: file:/path (one slash)
    savepoint = "file:" + _retained(tmp_path / "savepoints" / "savepoint-1", now - 200)[7:]
    newer = _retained(checkpoints / "job-b" / "chk-3", now - 100)
    assert demo.restore_point(settings, {"job_ids": [], "savepoint": None}) is None
    assert demo.restore_point(settings, {"job_ids": ["job-a"], "savepoint": None}) == older
    history = {"job_ids": ["job-a"], "savepoint": savepoint}
    assert demo.restore_point(settings, history) == savepoint  # down's savepoint, newer
    history["job_ids"].append("job-b")  # resumed from it, then crashed after a checkpoint
    assert demo.restore_point(settings, history) == newer
    # a savepoint that is gone (its directory deleted) is not a restore point
    gone = {"job_ids": [], "savepoint": (tmp_path / "nowhere").as_uri()}
    assert demo.restore_point(settings, gone) is None


def test_history_survives_a_corrupt_file_and_keeps_the_last_job_ids(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = tmp_path / "apps" / "pipeline.history.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert demo._history(settings) == {"job_ids": [], "savepoint": None}
    demo._save_history(settings, {"job_ids": [f"j{i}" for i in range(30)], "savepoint": "s"})
    history = demo._history(settings)
    assert history["job_ids"][0] == "j10" and len(history["job_ids"]) == 20
    assert history["savepoint"] == "s"


def test_nothing_runs_so_yield_stops_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TICKFLOW__STATE_DIR", str(tmp_path))
    assert not demo.running(load_settings())
    assert demo.main(["yield"]) == 0
    assert capsys.readouterr().out == ""


def test_offset_ranges_round_trip_and_bad_ones_are_refused() -> None:
    ranges = [PartitionRange(0, 100, 200), PartitionRange(3, 5, 5)]
    assert parse_offset_ranges(format_offset_ranges(ranges)) == ranges
    assert format_offset_ranges(ranges) == "0:100-200,3:5-5"
    for bad in ("0:100", "x:1-2", "0:5-4", "-1:1-2", "0:1-2,0:3-4"):
        with pytest.raises(ValueError):
            parse_offset_ranges(bad)


def test_start_offsets_are_parsed_once_and_refused_when_malformed() -> None:
    settings = load_settings(environ={"TICKFLOW__FLINK__START_OFFSETS": "0:5, 1:7,2:0"})
    assert settings.flink.start_offsets_by_partition() == {0: 5, 1: 7, 2: 0}
    assert load_settings(environ={}).flink.start_offsets_by_partition() == {}
    for bad in ("0", "0:-1", "a:1", "0:1:2"):
        with pytest.raises(ConfigError, match="start_offsets"):
            load_settings(environ={"TICKFLOW__FLINK__START_OFFSETS": bad})
