"""The raw archive without a server: every fixture's envelope comes back from the archive's
columns byte for byte (and a value that cannot is kept whole, flagged if it is no envelope);
file names, resume offsets, overlap and leftover detection; gaps recorded once; files rolled
at N records and at a new day; ``ArchiveFrames`` reading a range and finding offsets by time
as Kafka's ``offsets_for_times`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.archive import layout
from jobs.archive.archiver import Archiver
from jobs.archive.layout import ArchiveError, Columns
from jobs.frames import ArchiveFrames, frame_source
from schemas.codec import RawEnvelope, encode_envelope
from tickflow.config import Settings, load_settings, patched_environ

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DAY_MS = 1_764_892_800_000  # 2025-12-05T00:00:00Z


def fixture_payloads() -> list[tuple[str, bytes]]:
    """Every fixture file's bytes, and each scripted step's frame as the connectors store it
    (compact JSON)."""
    out = []
    for path in sorted(FIXTURES.glob("*/*.json")):
        raw = path.read_bytes()
        out.append((path.name, raw))
        doc = json.loads(raw)
        steps = doc.get("steps", []) if isinstance(doc, dict) else []
        for i, step in enumerate(steps):
            if isinstance(step, dict) and "frame" in step:
                frame = json.dumps(step["frame"], separators=(",", ":")).encode()
                out.append((f"{path.name}#{i}", frame))
    return out


def envelopes() -> list[RawEnvelope]:
    out = []
    for seq, (name, payload) in enumerate(fixture_payloads()):
        receive_time_ns = 1_764_930_000_123_456_789 + seq
        out.append(
            RawEnvelope("BTC-USD", "binance", "BTCUSDT", "depth", receive_time_ns,
                        f"conn-{name}", seq, payload)
        )  # fmt: skip
    # the extremes of each field
    out += [
        # not "": an empty instrument's length byte is 0, a framed record's first byte
        RawEnvelope("-", "", "", "", 0, "", 0, b""),
        RawEnvelope("ÉTH-€", "krâken", "ETH/€", "trade", -1, "ünïcode", -(2**63), b"\x00\xff"),
        RawEnvelope("A" * 300, "b", "c", "d", 2**63 - 1, "x" * 1000, 2**63 - 1, b"p" * 100_000),
    ]
    return out


def test_every_fixtures_envelope_comes_back_byte_for_byte_from_its_columns() -> None:
    envs = envelopes()
    assert len(envs) > 60
    values = [encode_envelope(env) for env in envs]
    rows = Columns()
    for offset, value in enumerate(values):
        assert rows.append(0, offset, DAY_MS + offset, b"k", value)
    batch = rows.batch()
    assert layout.envelope_values(batch).to_pylist() == values  # what encode_envelope gives
    assert batch.column("value").null_count == len(values)  # rebuilt, not stored twice
    assert batch.column("decode_error").null_count == len(values)
    assert layout.record_values(batch) == values
    assert batch.column("payload").to_pylist() == [env.payload for env in envs]


def test_a_record_that_looks_framed_without_a_registry_is_kept_whole_and_flagged() -> None:
    empty = encode_envelope(RawEnvelope("", "", "", "", 0, "", 0, b""))  # starts with byte 0
    rows = Columns()
    assert not rows.append(0, 0, DAY_MS, b"k", empty)
    batch = rows.batch()
    assert layout.record_values(batch) == [empty]
    assert "no schema registry" in batch.column("decode_error")[0].as_py()


def test_a_value_its_columns_cannot_give_back_is_kept_whole_and_garbage_is_flagged() -> None:
    good = encode_envelope(envelopes()[0])
    trailing = good + b"\x00extra"  # decodes (a reader stops at the record's end)
    garbage = b"\x00garbage"
    not_utf8 = b"\x02\xff\xfe" + good[2:]
    rows = Columns()
    assert rows.append(1, 10, DAY_MS, None, trailing)
    assert not rows.append(1, 11, DAY_MS, b"k", garbage)
    assert not rows.append(1, 12, DAY_MS, b"k", not_utf8)
    assert not rows.append(1, 13, DAY_MS, b"k", b"")
    batch = rows.batch()
    assert layout.record_values(batch) == [trailing, garbage, not_utf8, b""]
    errors = batch.column("decode_error").to_pylist()
    assert errors[0] is None and all(errors[1:])
    assert batch.column("instrument").to_pylist()[1:] == [None, None, None]
    assert batch.column("key").to_pylist() == [None, b"k", b"k", b"k"]


def test_file_names_parse_and_give_where_each_partition_resumes(tmp_path: Path) -> None:
    assert layout.file_name(0, 41) == "00000000000000000000-00000000000000000041.parquet"
    for partition, first, last, day in ((0, 0, 9, "2025-12-05"), (0, 10, 19, "2025-12-06"),
                                        (3, 5, 5, "2025-12-05")):  # fmt: skip
        d = tmp_path / "raw" / f"date={day}" / f"partition={partition}"
        d.mkdir(parents=True, exist_ok=True)
        (d / layout.file_name(first, last)).write_bytes(b"")
    leftover = tmp_path / "raw" / "date=2025-12-06" / "partition=0" / ".x.parquet.1.tmp"
    leftover.write_bytes(b"")
    (tmp_path / "raw" / "date=2025-12-06" / "partition=0" / "notes.parquet").write_bytes(b"")
    files = layout.archived_files(tmp_path, "raw")
    assert {p: [(f.first, f.last) for f in fs] for p, fs in files.items()} == {
        0: [(0, 9), (10, 19)],
        3: [(5, 5)],
    }
    assert layout.next_offsets(files) == {0: 20, 3: 6}
    assert layout.temporary_files(tmp_path, "raw") == [leftover]
    overlapping = tmp_path / "raw" / "date=2025-12-06" / "partition=3"
    overlapping.mkdir(parents=True)
    (overlapping / layout.file_name(4, 8)).write_bytes(b"")
    with pytest.raises(ArchiveError, match="overlap"):
        layout.archived_files(tmp_path, "raw")


def test_a_gap_recorded_again_after_a_crash_is_recorded_once(tmp_path: Path) -> None:
    layout.record_gap(tmp_path, "raw", 2, 0, 100, "not in Kafka when read")
    layout.record_gap(tmp_path, "raw", 2, 500, 510, "not in Kafka when read")
    layout.record_gap(tmp_path, "raw", 2, 0, 120, "not in Kafka when read")  # wider: replaces
    gaps = layout.read_gaps(tmp_path, "raw", 2)
    assert [(g["from"], g["to"]) for g in gaps] == [(0, 120), (500, 510)]
    assert layout.read_gaps(tmp_path, "raw", 1) == []


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    with patched_environ({"TICKFLOW__ARCHIVE__DIR": str(tmp_path / "archive"),
                          "TICKFLOW__ARCHIVE__ROLL_RECORDS": "25",
                          "TICKFLOW__ARCHIVE__ROW_GROUP_RECORDS": "10",
                          "TICKFLOW__ARCHIVE__READ_BATCH_RECORDS": "7"}):  # fmt: skip
        return load_settings()


def archive_records(
    settings: Settings, records: list[tuple[int, int, int, bytes]], clock: list[float]
) -> Archiver:
    """``records`` (partition, offset, timestamp ms, value) through an archiver without Kafka
    (offsets then committed nowhere), its files closed at the end."""
    archiver = Archiver(settings, clock=lambda: clock[0])
    for partition, offset, timestamp_ms, value in records:
        archiver.next_offset.setdefault(partition, 0)
        archiver.add(partition, offset, timestamp_ms, b"key", value)
        archiver.roll_due()
    archiver.close()
    return archiver


def test_files_roll_at_n_records_at_a_new_day_and_after_t_seconds(settings: Settings) -> None:
    values = [encode_envelope(envelopes()[i % 20]) for i in range(100)]
    # partition 0: 60 records, the day turns at offset 40 (a record stamped a moment before
    # midnight after it stays in the new day's file); partition 1: 5 records, then 20 s pass
    records = [(0, o, DAY_MS - 40 + o, values[o]) for o in range(60)]
    records.insert(42, (0, 42, DAY_MS - 10, values[42]))
    del records[43]
    clock = [0.0]
    archiver = archive_records(settings, records, clock)
    root = Path(settings.archive.dir)
    files = layout.archived_files(root, settings.kafka.raw_topic)
    assert [(f.first, f.last, f.path.parent.parent.name) for f in files[0]] == [
        (0, 24, "date=2025-12-04"),  # 25 records
        (25, 39, "date=2025-12-04"),  # the day turns
        (40, 59, "date=2025-12-05"),
    ]
    assert archiver.closed_files == 3
    assert pq.ParquetFile(files[0][0].path).metadata.num_row_groups == 3  # 10 + 10 + 5
    source = frame_source(settings, "archive")
    read = [b for b in source.read(0, 0, 60)]
    assert [o for b in read for o in b.offsets] == list(range(60))
    assert [v for b in read for v in b.values] == [r[3] for r in records]
    assert [t for b in read for t in b.timestamps] == [r[2] for r in records]
    assert max(len(b.offsets) for b in read) <= 7

    clock[0] = 0.0
    archiver = Archiver(settings, clock=lambda: clock[0])
    archiver.next_offset[1] = 0
    for offset in range(5):
        archiver.add(1, offset, DAY_MS + offset, None, values[offset])
    archiver.roll_due()
    assert not layout.archived_files(root, settings.kafka.raw_topic).get(1)
    clock[0] = settings.archive.roll_seconds
    archiver.roll_due()
    files = layout.archived_files(root, settings.kafka.raw_topic)
    assert [(f.first, f.last) for f in files[1]] == [(0, 4)]


def test_offsets_gone_from_kafka_are_a_recorded_gap(settings: Settings) -> None:
    value = encode_envelope(envelopes()[0])
    records = [(2, o, DAY_MS + o, value) for o in (*range(100, 110), *range(150, 160))]
    archive_records(settings, records, [0.0])
    root = Path(settings.archive.dir)
    gaps = layout.read_gaps(root, settings.kafka.raw_topic, 2)
    assert [(g["from"], g["to"]) for g in gaps] == [(0, 100), (110, 150)]
    source = frame_source(settings, "archive")
    assert [o for b in source.read(2, 105, 155) for o in b.offsets] == [
        *range(105, 110),
        *range(150, 155),
    ]


def test_an_offset_before_the_archives_end_stops_the_archiver(settings: Settings) -> None:
    archiver = Archiver(settings)
    archiver.next_offset[0] = 10
    with pytest.raises(ArchiveError, match="recreated"):
        archiver.add(0, 3, DAY_MS, None, b"x")


def test_offset_range_is_kafkas_offsets_for_times(settings: Settings) -> None:
    """The first offset, in offset order, stamped at or after the time; else the end."""
    value = encode_envelope(envelopes()[0])
    stamps = [DAY_MS + t for t in (0, 5, 3, 10, 9, 20, 15, 30, 31, 29, 40, 50, 45, 60, 70)]
    stamps = stamps * 4  # 60 records over 3 files, the same times again in each file
    records = [(0, o, ts + (o // 15) * 100, value) for o, ts in enumerate(stamps)]
    archive_records(settings, records, [0.0])
    source = ArchiveFrames(Path(settings.archive.dir), settings.kafka.raw_topic)

    def reference(time_ms: int) -> int:
        return next((o for _, o, ts, _ in records if ts >= time_ms), len(records))

    for time_ms in range(DAY_MS - 5, DAY_MS + 500, 3):
        assert source.offset_range(0, time_ms, time_ms)[0] == reference(time_ms), time_ms
    assert source.offset_range(0, 0, DAY_MS + 10_000) == (0, 60)
    assert source.partitions() == [0]
    assert source.offset_range(3, DAY_MS, DAY_MS + 10) == (0, 0)


def test_an_empty_archive_says_so(settings: Settings) -> None:
    with pytest.raises(ArchiveError, match="nothing archived"):
        frame_source(settings, "archive").partitions()
    with pytest.raises(ValueError, match="frame source"):
        frame_source(settings, "s3")
