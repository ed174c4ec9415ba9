"""The batch backfill's engine, the compiled core's ``NativePartition`` as ``jobs.backfill``
configures it, on generated frames; and how the backfill cuts its work."""

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

from jobs.backfill import NativeEngine, PartitionRange, native_partition  # noqa: E402
from jobs.replay_cli import backfill_overrides  # noqa: E402
from jobs.sinks.clickhouse import decode_rows  # noqa: E402
from schemas.codec import decode_envelope, encode_envelope  # noqa: E402
from schemas.writers import WriterSchemas  # noqa: E402
from tickflow.config import Settings, load_settings  # noqa: E402
from tickflow.generated import Dataset, make_dataset  # noqa: E402

pytestmark = pytest.mark.unit

pytest.importorskip("tickflow_native")

WHOLE = PartitionRange(0, 0, 10**9)


def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset(base_settings(), 10_000)  # ~13 s of trading


def feed(engine: Any, records: list[tuple[bytes, bytes, int, str]]) -> None:
    engine.feed_batch([r[1] for r in records], [r[2] for r in records])


def take_rows(engine: Any) -> dict[str, list[dict[str, Any]]]:
    return {table: decode_rows(table, data) for table, data, _ in engine.take_tables(0)}


def run(settings: Settings, records: list[tuple[bytes, bytes, int, str]],
        part: PartitionRange = WHOLE) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    engine = native_partition(settings, part)
    feed(engine, records)
    engine.finish()
    return engine, take_rows(engine)


def counted(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Counter[str]]:
    return {table: Counter(repr(sorted(r.items())) for r in rs) for table, rs in rows.items()}


def test_every_table_filled_and_every_trade_matched(dataset: Dataset) -> None:
    engine, rows = run(base_settings(), dataset.records)
    assert {"trades", "book_snapshots", "top_of_book", "nbbo", "matched_trades", "bars"} <= set(
        rows
    )
    counts = engine.counts()
    assert counts["frames"] == len(dataset.records)
    assert counts["dead_letters"] == 0 and counts["late"] == 0
    assert len(rows["matched_trades"]) == len(rows["trades"]) > 0
    assert counts["rows"] == sum(len(r) for r in rows.values())
    assert engine.take_tables(0) == []  # taken


def test_the_same_input_gives_the_same_rows(dataset: Dataset) -> None:
    assert counted(run(base_settings(), dataset.records)[1]) == counted(
        run(base_settings(), dataset.records)[1]
    )


def test_rows_come_out_as_the_watermark_passes_not_only_at_the_end(dataset: Dataset) -> None:
    engine = native_partition(base_settings(), WHOLE)
    feed(engine, dataset.records)
    span_ms = dataset.records[-1][2] - dataset.records[0][2]
    assert span_ms > 10_000  # longer than the out-of-orderness
    before_end = take_rows(engine)
    assert before_end.get("matched_trades") and before_end.get("bars")
    assert engine.watermark_ms == max(r[2] for r in dataset.records) - 5001
    engine.finish()
    at_end = take_rows(engine)
    total = len(before_end["matched_trades"]) + len(at_end.get("matched_trades", []))
    assert total == len(before_end["trades"]) + len(at_end.get("trades", []))


def test_bad_input_goes_to_dead_letters(dataset: Dataset) -> None:
    good = dataset.records[0][1]
    env = decode_envelope(good)
    unparsable = encode_envelope(dataclasses.replace(env, payload=b"{not json"))
    engine = native_partition(base_settings(), WHOLE)
    engine.feed_batch([b"\x01garbage", unparsable], [dataset.records[0][2]] * 2)
    engine.finish()
    assert engine.counts()["dead_letters"] == 2
    # as the backfill's driver turns them into dead-letter records
    driver = NativeEngine.__new__(NativeEngine)
    driver.books = engine
    driver.writers = WriterSchemas(lambda _: None)
    letters = [json.loads(x) for x in driver._letters()]
    assert len(letters) == 2 and all(x["stage"] == "job" and x["error"] for x in letters)
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
    engine = native_partition(base_settings(), WHOLE)
    feed(engine, records)
    before = take_rows(engine)
    engine.feed_batch([late], [records[-1][2]])
    engine.finish()
    rows = take_rows(engine)
    assert engine.counts()["late"] == 1
    [event] = rows["late_events"]
    assert (event["kind"], event["event_id"], event["event_time_ms"]) == ("trade", "1", old_ms)
    matched = len(before["matched_trades"]) + len(rows.get("matched_trades", []))
    stored = len(before["trades"]) + len(rows["trades"])
    assert stored == matched + 1  # stored, not matched
    assert [t["on_time"] for t in rows["trades"] if t["trade_id"] == "1"] == [0]


def test_backfill_settings_write_the_live_database() -> None:
    import datetime

    settings = base_settings()
    env = backfill_overrides(settings, datetime.date(2026, 11, 24), 0)
    assert env["TICKFLOW__CLICKHOUSE__DATABASE"] == settings.clickhouse.database
    assert int(env["TICKFLOW__REPLAY__TO_MS"]) == 1_795_564_800_000  # 2026-11-25T00:00Z


def test_a_partition_split_by_instrument_gives_the_whole_partitions_rows(
    dataset: Dataset,
) -> None:
    settings = base_settings()
    groups = sorted({group for *_, group in dataset.records})
    assert len(groups) > 2
    _, whole = run(settings, dataset.records)
    part = PartitionRange(0, 0, len(dataset.records))
    ranges = [dataclasses.replace(part, only=frozenset([g])) for g in groups[:2]]
    ranges.append(dataclasses.replace(part, others=frozenset(groups[:2])))
    merged: dict[str, list[dict[str, Any]]] = {}
    frames = dead_letters = 0
    garbage = (b"k", b"\x01garbage", dataset.records[-1][2], "")
    for share in ranges:
        assert share.label()
        engine, rows = run(settings, [*dataset.records, garbage], share)
        frames += engine.counts()["frames"]
        dead_letters += engine.counts()["dead_letters"]
        for table, table_rows in rows.items():
            merged.setdefault(table, []).extend(table_rows)
    assert frames == len(dataset.records) + 1
    assert counted(merged) == counted(whole)
    assert dead_letters == 1  # undecodable: only the remainder's worker takes it


def test_a_large_partition_is_cut_into_even_pieces_of_whole_instruments() -> None:
    from jobs.backfill import split_range

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
