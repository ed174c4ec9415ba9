"""``tickflow export`` on the local ClickHouse: a generated day (frames through the job's
compiled core, its RowBinary rows inserted twice, as an at-least-once replay would) exported
to Parquet equals the tables' FINAL rows of that day, file by file and value by value; the
manifest's counts and checksums match the files; a second export changes nothing; a changed
partition is rewritten alone and a partition without rows any more is removed; DuckDB,
polars and pandas read the files as they are.

Uses a private database ``exporttest_<random>`` (dropped afterwards) and starts only
ClickHouse, and only when it does not answer.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.export as export
from jobs.export import (
    MANIFESTS,
    PART_FILE,
    arrow_schema,
    content_digest,
    date_dir,
    export_day,
    file_sha256,
    main,
    manifest_path,
    partition_keys,
    read_manifest,
    sorting_key,
    verify,
)
from jobs.sinks.clickhouse import COLUMNS, TABLES, RowBinaryWriter, connect, ensure_schema
from stack import manager
from tests.export_day import DAY, GeneratedDay, generated_day
from tickflow.config import ClickHouseConfig, Settings, load_settings, patched_environ

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickhouse_config() -> Iterator[ClickHouseConfig]:
    """Host and port from the settings; ClickHouse alone is started if it does not answer."""
    settings: Settings = load_settings()
    started: list[str] = []
    component = manager.components(settings, ["clickhouse"])[0]
    try:
        answers = component.answers()
    except Exception:
        answers = False
    if not answers:
        started = manager.up(settings, ["clickhouse"])
    try:
        yield settings.clickhouse
    finally:
        if started:
            manager.down(settings, started)


@pytest.fixture(scope="module")
def day() -> GeneratedDay:
    return generated_day(load_settings())


@pytest.fixture(scope="module")
def config(clickhouse_config: ClickHouseConfig, day: GeneratedDay) -> Iterator[ClickHouseConfig]:
    """A private database holding the generated day's rows, each inserted twice."""
    config = dataclasses.replace(clickhouse_config, database=f"exporttest_{uuid.uuid4().hex[:10]}")
    ensure_schema(config)
    writer = RowBinaryWriter(config)
    try:
        for _ in range(2):
            for table, (data, rows) in day.tables.items():
                writer.insert(table, data, rows)
        yield config
    finally:
        writer.close()
        client = connect(config)
        client.execute(f"DROP DATABASE IF EXISTS {config.database}")
        client.disconnect()


@pytest.fixture(scope="module")
def exported(config: ClickHouseConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    export_day(config, DAY, root)
    return root


def _value(value: Any) -> Any:
    return tuple(_value(v) for v in value) if isinstance(value, list | tuple) else value


def final_rows(config: ClickHouseConfig, table: str, where: str = "") -> list[tuple[Any, ...]]:
    """The day's FINAL rows, by partition, then in the table's sorting order."""
    keys = ", ".join([*partition_keys(table), *sorting_key(table)])
    client = connect(config)
    try:
        rows = client.execute(
            f"SELECT {', '.join(COLUMNS[table])} FROM {config.database}.{table} FINAL "
            f"WHERE date = %(day)s {where} ORDER BY {keys}",
            {"day": DAY},
        )
    finally:
        client.disconnect()
    return [_value(row) for row in rows]


def count(config: ClickHouseConfig, sql: str) -> int:
    client = connect(config)
    try:
        return int(client.execute(sql.format(db=config.database))[0][0])
    finally:
        client.disconnect()


def file_rows(path: Path) -> list[tuple[Any, ...]]:
    rows = pq.read_table(path)
    return [_value(tuple(row.values())) for row in rows.to_pylist()]


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (mtime ns, size, SHA-256)."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size, file_sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_generated_day_has_rows_in_every_table_duplicates_and_neighbouring_days(
    config: ClickHouseConfig,
) -> None:
    for table in TABLES:
        on_day = count(config, f"SELECT count() FROM {{db}}.{table} WHERE date = '{DAY}'")
        final = len(final_rows(config, table))
        assert final > 0, table
        # every row twice: FINAL keeps one (and of a gap, its closed row, not its open one)
        assert on_day == (4 if table == "gaps" else 2) * final, table
    for table in ("trades", "nbbo", "bars"):  # the day before and the day after too
        days = count(config, f"SELECT uniqExact(date) FROM {{db}}.{table}")
        assert days == 3, table


def test_parquet_rows_equal_the_final_rows_per_table(
    config: ClickHouseConfig, exported: Path
) -> None:
    for table in TABLES:
        expected = final_rows(config, table)
        manifest = read_manifest(manifest_path(exported, table, DAY))
        assert manifest is not None
        assert manifest["rows"] == len(expected), table
        # every book's partition: (binance, coinbase) x BNB-BTC and binance x ETH-BTC
        partitions = {tuple(f["partition"].values()) for f in manifest["files"]}
        if table != "late_events":  # the late trades are all binance BNB-BTC ones
            assert len(partitions) == (2 if table in ("nbbo", "bars") else 3), table
        got: list[tuple[Any, ...]] = []
        for entry in manifest["files"]:  # in partition order
            path = date_dir(exported, table, DAY) / entry["path"]
            rows = file_rows(path)
            got.extend(rows)
            # the file is one partition: its rows carry the partition's values
            columns = COLUMNS[table]
            for key, value in entry["partition"].items():
                assert {row[columns.index(key)] for row in rows} == {value}
            assert path.parent.as_posix().endswith(
                "/".join(f"{k}={v}" for k, v in entry["partition"].items())
            )
        assert got == expected, table  # values exact: decimals compare as Decimal, scale 18
        # every partition of the day, and nothing else, is under the table's directory
        files = sorted(date_dir(exported, table, DAY).rglob("*"))
        assert [p for p in files if p.is_file()] == sorted(
            date_dir(exported, table, DAY) / e["path"] for e in manifest["files"]
        )


def test_exact_types_in_the_files(exported: Path) -> None:
    for table in TABLES:
        for path in date_dir(exported, table, DAY).rglob(PART_FILE):
            assert pq.read_schema(path).equals(arrow_schema(table)), path
    snapshot = next(date_dir(exported, "book_snapshots", DAY).rglob(PART_FILE))
    schema = pq.read_schema(snapshot)
    assert schema.field("bid_prices").type.value_type == pa.decimal128(38, 18)
    trades = pq.read_table(next(date_dir(exported, "trades", DAY).rglob(PART_FILE)))
    assert trades.schema.field("price").type == pa.decimal128(38, 18)
    assert trades.schema.field("trade_time_ms").type == pa.uint64()
    price = trades.column("price")[0].as_py()
    assert isinstance(price, Decimal) and price.as_tuple().exponent == -18


def test_the_manifest_counts_and_checksums_match_the_files(
    config: ClickHouseConfig, exported: Path
) -> None:
    for table in TABLES:
        manifest = read_manifest(manifest_path(exported, table, DAY))
        assert manifest is not None
        assert manifest["table"] == table and manifest["date"] == DAY.isoformat()
        assert [c["name"] for c in manifest["columns"]] == list(COLUMNS[table])
        for entry in manifest["files"]:
            path = date_dir(exported, table, DAY) / entry["path"]
            assert pq.read_metadata(path).num_rows == entry["rows"]
            assert file_sha256(path) == entry["sha256"]
            assert path.stat().st_size == entry["bytes"]
            assert content_digest(pq.read_table(path)) == entry["content_sha256"]
            # the digest is the rows', not the file's: ClickHouse's rows give the same
            where = " ".join(f"AND {k} = '{v}'" for k, v in entry["partition"].items())
            rows = final_rows(config, table, where)
            names = COLUMNS[table]
            from_server = pa.Table.from_pylist(
                [dict(zip(names, row, strict=True)) for row in rows], schema=arrow_schema(table)
            )
            assert content_digest(from_server) == entry["content_sha256"]
        assert verify(exported, table, DAY) == []


def test_a_second_export_changes_nothing(config: ClickHouseConfig, exported: Path) -> None:
    before = tree(exported)
    manifests = {t: manifest_path(exported, t, DAY).read_bytes() for t in TABLES}
    results = export_day(config, DAY, exported)
    assert [r.changed for r in results] == [False] * len(TABLES)
    assert all(not r.written and not r.removed and r.unchanged for r in results)
    assert tree(exported) == before  # same files, bytes and mtimes; nothing stray
    assert {t: manifest_path(exported, t, DAY).read_bytes() for t in TABLES} == manifests


def test_rows_read_in_small_batches_give_the_same_rows_and_digests(
    config: ClickHouseConfig, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "BATCH_ROWS", 100)  # a row group per 100 rows
    export_day(config, DAY, tmp_path, ["book_snapshots", "bars"])
    for table in ("book_snapshots", "bars"):
        whole = read_manifest(manifest_path(exported, table, DAY))
        batched = read_manifest(manifest_path(tmp_path, table, DAY))
        assert whole is not None and batched is not None
        digests = [(f["path"], f["rows"], f["content_sha256"]) for f in whole["files"]]
        assert [(f["path"], f["rows"], f["content_sha256"]) for f in batched["files"]] == digests
        for entry in batched["files"]:
            path = date_dir(tmp_path, table, DAY) / entry["path"]
            groups = pq.ParquetFile(path).metadata.num_row_groups
            assert groups == -(-entry["rows"] // 100)
            assert file_rows(path) == file_rows(date_dir(exported, table, DAY) / entry["path"])
        assert verify(tmp_path, table, DAY) == []


def test_duckdb_polars_and_pandas_read_the_files_as_they_are(
    config: ClickHouseConfig, exported: Path
) -> None:
    expected = final_rows(config, "trades")
    total = sum((row[COLUMNS["trades"].index("price")] for row in expected), Decimal(0))
    files = f"{exported}/trades/**/*.parquet"

    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(
        f"SELECT count(*), sum(price), min(typeof(price)) FROM read_parquet('{files}') "
        f"WHERE date = DATE '{DAY}'"
    ).fetchall()[0]
    assert got[0] == len(expected) and Decimal(got[1]) == total
    assert got[2] == "DECIMAL(38,18)"
    levels = duckdb.sql(
        f"SELECT bid_prices[1] FROM read_parquet('{exported}/book_snapshots/**/*.parquet') "
        f"ORDER BY exchange, instrument, event_time_ms, seq LIMIT 1"
    ).fetchall()[0]
    snapshots = final_rows(config, "book_snapshots")
    assert levels[0] == snapshots[0][COLUMNS["book_snapshots"].index(
        "bid_prices")][0]  # fmt: skip

    polars = pytest.importorskip("polars")
    frame = polars.read_parquet(files)
    assert frame.height == len(expected)
    assert str(frame.schema["price"]).lower().startswith("decimal")
    assert frame["trade_time_ms"].dtype == polars.UInt64
    assert Counter(frame["exchange"].to_list()) == Counter(
        row[COLUMNS["trades"].index("exchange")] for row in expected
    )

    pandas = pytest.importorskip("pandas")
    df = pandas.read_parquet(exported / "trades", partitioning=None)
    assert len(df) == len(expected)
    assert sum(df["price"]) == total  # Decimal objects, exact
    one = next((exported / "nbbo").rglob(PART_FILE))
    assert len(pandas.read_parquet(one)) == pq.read_metadata(one).num_rows


def test_the_command_exports_and_reruns_quietly(
    config: ClickHouseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "TICKFLOW__CLICKHOUSE__DATABASE": config.database,
        "TICKFLOW__CLICKHOUSE__PORT": str(config.port),
    }
    with patched_environ(env):
        args = ["--day", DAY.isoformat(), "--tables", "nbbo,late_events", "--to", str(tmp_path)]
        assert main(args) == 0
        first = capsys.readouterr().out
        assert "nbbo" in first and "written" in first
        assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFESTS, "late_events", "nbbo"]
        before = tree(tmp_path)
        assert main(args) == 0
        assert capsys.readouterr().out.count("unchanged") == 2
        assert tree(tmp_path) == before
        assert main(["--day", DAY.isoformat(), "--tables", "nbbo", "--to", str(tmp_path),
                     "--verify"]) == 0  # fmt: skip


def _wait_mutations(config: ClickHouseConfig, table: str) -> None:
    deadline = time.monotonic() + 60
    while count(
        config,
        f"SELECT count() FROM system.mutations WHERE database = '{{db}}' AND table = '{table}' "
        "AND is_done = 0",
    ):
        if time.monotonic() > deadline:
            pytest.fail(f"the DELETE mutation of {table} did not finish")
        time.sleep(0.2)


def test_a_changed_partition_is_rewritten_alone_and_an_empty_one_removed(
    config: ClickHouseConfig, exported: Path
) -> None:
    before = tree(exported)
    client = connect(config)
    try:
        # a trade more in one partition; every row of another partition deleted
        client.execute(
            f"INSERT INTO {config.database}.trades ({', '.join(COLUMNS['trades'])}) VALUES",
            [(DAY, "binance", "BNBBTC", "BNB-BTC", "t-extra", Decimal("0.008"), Decimal("1.5"),
              "buy", 1796000000000, 1796000000000, 1796000000000 * 10**6, 1)],
        )  # fmt: skip
        client.execute(f"ALTER TABLE {config.database}.trades DELETE WHERE instrument = 'ETH-BTC'")
    finally:
        client.disconnect()
    _wait_mutations(config, "trades")
    (result,) = export_day(config, DAY, exported, ["trades"])
    assert result.written == ["exchange=binance/instrument=BNB-BTC"]
    assert result.removed == ["exchange=binance/instrument=ETH-BTC"]
    assert result.unchanged == ["exchange=coinbase/instrument=BNB-BTC"]
    after = tree(exported)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    prefix = f"trades/date={DAY}"
    assert changed == {
        f"{prefix}/exchange=binance/instrument=BNB-BTC/{PART_FILE}",
        f"{prefix}/exchange=binance/instrument=ETH-BTC/{PART_FILE}",
        f"{MANIFESTS}/trades/date={DAY}.json",
    }
    assert not (exported / prefix / "exchange=binance/instrument=ETH-BTC").exists()
    assert verify(exported, "trades", DAY) == []
    expected = final_rows(config, "trades")
    manifest = read_manifest(manifest_path(exported, "trades", DAY))
    assert manifest is not None
    got = [
        row
        for entry in manifest["files"]
        for row in file_rows(date_dir(exported, "trades", DAY) / entry["path"])
    ]
    assert got == expected


def test_a_missing_database_or_table_is_one_line_and_exit_1(
    config: ClickHouseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"nosuchdb_{uuid.uuid4().hex[:8]}"
    with patched_environ({"TICKFLOW__CLICKHOUSE__PORT": str(config.port)}):
        assert main(["--day", DAY.isoformat(), "--to", str(tmp_path), "--database", missing]) == 1
        assert f"ClickHouse has no database {missing}" in capsys.readouterr().err
        client = connect(config)
        try:
            client.execute(f"CREATE DATABASE {missing}")
            client.execute(TABLES["trades"].format(db=missing))
            args = ["--day", DAY.isoformat(), "--to", str(tmp_path), "--database", missing]
            assert main([*args, "--tables", "trades,nbbo"]) == 1
            assert f"ClickHouse has no table {missing}.nbbo" in capsys.readouterr().err
            assert main([*args, "--tables", "trades"]) == 0  # a table without rows that day
        finally:
            client.execute(f"DROP DATABASE IF EXISTS {missing}")
            client.disconnect()
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == [
        f"{MANIFESTS}/trades/date={DAY}.json"
    ]
