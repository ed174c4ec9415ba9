"""The batch backfill's engine (``jobs.batch.PartitionBooks``) on generated frames."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

# bench/ (the frame generator) is not an installed package; put the root on the path
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.chaos import Dataset, make_dataset  # noqa: E402
from jobs.batch import PartitionBooks  # noqa: E402
from jobs.replay_cli import backfill_overrides  # noqa: E402
from schemas.codec import decode_envelope, encode_envelope  # noqa: E402
from tickflow.config import Settings, load_settings  # noqa: E402

pytestmark = pytest.mark.unit


def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset(base_settings(), 10_000)  # ~13 s of trading


def run(settings: Settings, records: list[tuple[bytes, bytes, int, str]]) -> PartitionBooks:
    books = PartitionBooks(settings)
    for _, value, timestamp_ms, _ in records:
        books.feed(value, timestamp_ms)
    books.finish()
    return books


def counted(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, Counter[str]]:
    return {table: Counter(repr(r) for r in rs) for table, rs in rows.items()}


def test_every_table_filled_and_every_trade_matched(dataset: Dataset) -> None:
    books = run(base_settings(), dataset.records)
    rows = books.take_rows()
    assert {"trades", "book_snapshots", "top_of_book", "nbbo", "matched_trades", "bars"} <= set(
        rows
    )
    assert books.counts.frames == len(dataset.records)
    assert books.counts.dead_letters == 0 and books.counts.late == 0
    assert len(rows["matched_trades"]) == len(rows["trades"]) > 0
    assert books.counts.rows == sum(len(r) for r in rows.values())
    assert books.take_rows() == {}  # taken


def test_the_same_input_gives_the_same_rows(dataset: Dataset) -> None:
    first = run(base_settings(), dataset.records).take_rows()
    second = run(base_settings(), dataset.records).take_rows()
    assert counted(first) == counted(second)


def test_rows_come_out_as_the_watermark_passes_not_only_at_the_end(dataset: Dataset) -> None:
    books = PartitionBooks(base_settings())
    for _, value, timestamp_ms, _ in dataset.records:
        books.feed(value, timestamp_ms)
    span_ms = dataset.records[-1][2] - dataset.records[0][2]
    assert span_ms > 10_000  # longer than the out-of-orderness
    before_end = books.take_rows()
    assert before_end.get("matched_trades") and before_end.get("bars")
    assert books.watermark_ms == books._latest_ms - 5001
    books.finish()
    at_end = books.take_rows()
    total = len(before_end["matched_trades"]) + len(at_end.get("matched_trades", []))
    assert total == len(before_end["trades"]) + len(at_end.get("trades", []))


def test_bad_input_goes_to_dead_letters(dataset: Dataset) -> None:
    good = dataset.records[0][1]
    env = decode_envelope(good)
    unparsable = encode_envelope(dataclasses.replace(env, payload=b"{not json"))
    books = PartitionBooks(base_settings())
    books.feed(b"\x00garbage", dataset.records[0][2])
    books.feed(unparsable, dataset.records[0][2])
    books.finish()
    letters = [json.loads(x) for x in books.take_dead_letters()]
    assert books.counts.dead_letters == 2 and len(letters) == 2
    assert all(x["stage"] == "job" and x["error"] for x in letters)
    assert letters[1]["exchange"] == env.exchange and letters[1]["symbol"] == env.symbol


def test_a_trade_older_than_the_watermark_is_stored_late_not_matched(dataset: Dataset) -> None:
    records = dataset.records
    env = next(
        e for e in map(decode_envelope, (r[1] for r in records))
        if e.channel == "trade" and e.exchange == "binance"
    )  # fmt: skip
    frame = json.loads(env.payload)
    old_ms = records[-1][2] - 60_000
    frame["data"].update(t=1, T=old_ms, E=old_ms)
    late = encode_envelope(dataclasses.replace(env, payload=json.dumps(frame).encode()))
    books = PartitionBooks(base_settings())
    for _, value, timestamp_ms, _ in records:
        books.feed(value, timestamp_ms)
    before = books.take_rows()
    books.feed(late, records[-1][2])
    books.finish()
    rows = books.take_rows()
    assert books.counts.late == 1
    assert [r for r in rows["late_events"] if "1" in r]
    matched = len(before["matched_trades"]) + len(rows.get("matched_trades", []))
    stored = len(before["trades"]) + len(rows["trades"])
    assert stored == matched + 1  # stored, not matched


def test_backfill_settings_write_the_live_database() -> None:
    import datetime

    settings = base_settings()
    env = backfill_overrides(settings, datetime.date(2026, 11, 24), 0)
    assert env["TICKFLOW__CLICKHOUSE__DATABASE"] == settings.clickhouse.database
    assert int(env["TICKFLOW__REPLAY__TO_MS"]) == 1_795_564_800_000  # 2026-11-25T00:00Z


def test_a_partition_split_by_instrument_gives_the_whole_partitions_rows(
    dataset: Dataset,
) -> None:
    from jobs.backfill import InstrumentFilter, PartitionRange

    settings = base_settings()
    equivalents = dict(settings.analytics.quote_equivalents)
    groups = sorted({group for *_, group in dataset.records})
    assert len(groups) > 2
    whole = run(settings, dataset.records).take_rows()
    part = PartitionRange(0, 0, len(dataset.records))
    ranges = [dataclasses.replace(part, only=frozenset([g])) for g in groups[:2]]
    ranges.append(dataclasses.replace(part, others=frozenset(groups[:2])))
    merged: dict[str, list[tuple[Any, ...]]] = {}
    frames = 0
    for share in ranges:
        selects = InstrumentFilter(share, equivalents)
        books = PartitionBooks(settings)
        for key, value, timestamp_ms, group in dataset.records:
            if selects(key, value):
                assert share.label() and (group in share.only or group not in share.others)
                books.feed(value, timestamp_ms)
            else:
                books.tick(timestamp_ms)
        books.finish()
        frames += books.counts.frames
        for table, rows in books.take_rows().items():
            merged.setdefault(table, []).extend(rows)
    assert frames == len(dataset.records)
    assert counted(merged) == counted(whole)
    # undecodable: only the remainder's worker takes it (and dead-letters it)
    assert [InstrumentFilter(r, equivalents)(b"k", b"\x00garbage") for r in ranges] == [
        False,
        False,
        True,
    ]


def test_a_large_partition_is_cut_into_even_pieces_of_whole_instruments() -> None:
    from jobs.backfill import PartitionRange, split_range

    part = PartitionRange(3, 100, 1100)
    counts = Counter({"a": 5, "b": 3, "c": 2, "d": 2})
    pieces = split_range(part, counts, 2)
    assert [(p.only, p.others) for p in pieces] == [
        (frozenset("ad"), frozenset()),
        (frozenset(), frozenset("ad")),  # b, c and any instrument not sampled
    ]
    assert [round(p.work) for p in pieces] == [583, 417]
    assert all((p.partition, p.start, p.end) == (3, 100, 1100) for p in pieces)
    assert split_range(part, Counter({"a": 9}), 2) == [part]  # one instrument: whole
    assert len(split_range(part, counts, 9)) == 4  # never more pieces than instruments
