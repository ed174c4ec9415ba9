"""The live job's core (``tickflow_native.NativeStream``) driven as the job drives it
(``jobs.offline.CoreRun``): the same rows as the batch engine over the same records, whatever
the bundle size; state that round-trips through bytes mid-stream; bad input dead-lettered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ (the frame generator) is not an installed package; put the root on the path
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from jobs.backfill import native_partition  # noqa: E402
from jobs.offline import CoreRun  # noqa: E402
from schemas.bundles import frame_bundle, sink_blob_sections, split_records  # noqa: E402
from tickflow.config import Settings, load_settings  # noqa: E402
from tickflow.generated import Dataset, make_dataset  # noqa: E402

pytestmark = pytest.mark.unit

tickflow_native = pytest.importorskip("tickflow_native")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def dataset(settings: Settings) -> Dataset:
    return make_dataset(settings, 6_000)


def records(dataset: Dataset) -> list[tuple[bytes, int]]:
    return [(value, timestamp) for _, value, timestamp, _ in dataset.records]


def stream_run(settings: Settings, dataset: Dataset, bundle_frames: int) -> CoreRun:
    run = CoreRun(settings, bundle_frames=bundle_frames)
    run.feed(records(dataset))
    run.finish()
    return run


def batch_tables(settings: Settings, dataset: Dataset) -> dict[str, tuple[bytes, int]]:
    from jobs.backfill import PartitionRange

    batch = native_partition(settings, PartitionRange(0, 0, len(dataset.records)))
    values = [value for value, _ in records(dataset)]
    batch.feed_batch(values, [timestamp for _, timestamp in records(dataset)])
    batch.finish()
    return {table: (data, rows) for table, data, rows in batch.take_tables(0)}


def test_one_frame_bundles_give_the_batch_engines_rows_byte_for_byte(
    settings: Settings, dataset: Dataset
) -> None:
    run = stream_run(settings, dataset, 1)
    batch = batch_tables(settings, dataset)
    assert set(run.tables) == set(batch)
    for table, (data, rows) in batch.items():
        assert run.tables[table][1] == rows, table
        assert run.tables[table][0] == data, table
    assert len(run.records["matched_trades"]) == batch["matched_trades"][1] > 0


@pytest.mark.parametrize("bundle_frames", [7, 64])
def test_bundles_change_no_row(settings: Settings, dataset: Dataset, bundle_frames: int) -> None:
    """Frames of other instruments interleave differently, each instrument's own order and
    the watermark's passage are the same: the same rows per table."""
    one = stream_run(settings, dataset, 1)
    bundled = stream_run(settings, dataset, bundle_frames)
    for table, (_, rows) in one.tables.items():
        assert bundled.tables[table][1] == rows, table
    for output, lines in one.records.items():
        assert sorted(bundled.records[output]) == sorted(lines), output
    assert bundled.redis == one.redis


def test_state_round_trips_through_bytes_mid_stream(settings: Settings, dataset: Dataset) -> None:
    whole = stream_run(settings, dataset, 16)
    half = len(dataset.records) // 2
    first = CoreRun(settings, bundle_frames=16)
    first.feed(records(dataset)[:half])
    first._send_all()
    states = {key: first.snapshot(key) for key in first.instruments}
    second = CoreRun(settings, bundle_frames=16)
    for key, state in states.items():
        assert state is not None
        second.core.restore(key, state)
    second.watermark_ms, second._latest_ms = first.watermark_ms, first._latest_ms
    second._timers = dict(first._timers)
    second.instruments = set(first.instruments)
    second.feed(records(dataset)[half:])
    second.finish()
    for table, (_, rows) in whole.tables.items():
        got = first.tables.get(table, (b"", 0))[1] + second.tables.get(table, (b"", 0))[1]
        assert got == rows, table
    for output, lines in whole.records.items():
        joined = first.records.get(output, []) + second.records.get(output, [])
        assert sorted(joined) == sorted(lines), output


def test_bad_frames_are_dead_lettered_with_the_reason(settings: Settings) -> None:
    core = CoreRun(settings).core
    assert not core.process_bundle("BTC-USD", frame_bundle([(b"\xff\x01garbage", 1)]), 0, 1)
    sections = list(sink_blob_sections(core.take_blob()))
    assert [(kind, name, count) for kind, name, count, _ in sections] == [(2, "deadletter", 1)]
    letter = json.loads(split_records(sections[0][3])[0])
    assert letter["stage"] == "job" and letter["error"]
    assert core.take_counts()["dead_letters"] == 1


def test_a_malformed_bundle_is_refused_with_a_clear_error(settings: Settings) -> None:
    core = CoreRun(settings).core
    with pytest.raises(ValueError, match="frame bundle version"):
        core.process_bundle("BTC-USD", b"\x07\x00", 0, 1)
    with pytest.raises(ValueError, match="truncated"):
        core.process_bundle("BTC-USD", frame_bundle([(b"abc", 1)])[:-1], 0, 1)


def test_persist_flag_and_unknown_state_version(settings: Settings) -> None:
    core = CoreRun(settings).core
    assert core.process_bundle("BTC-USD", frame_bundle([], flags=1), 0, 1)
    with pytest.raises(ValueError, match="version"):
        core.restore("BTC-USD", b"\x63\x00\x00")
