"""``tickflow export`` without a server: the Arrow types of every column, the content digest
as documented, the files and manifest a source's rows give, idempotent re-runs (nothing
rewritten), a changed partition replaced alone, an emptied one removed, leftovers of an
interrupted run cleaned, and the command's errors (bad day, unknown table, unreachable
ClickHouse: a message and a non-zero exit, no traceback). The SQL the export sends runs on a
current ClickHouse (chdb) and returns the FINAL rows."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.export as export
from jobs.export import (
    MANIFESTS,
    PART_FILE,
    Partition,
    arrow_schema,
    arrow_type,
    content_digest,
    date_dir,
    export_table,
    file_sha256,
    main,
    manifest_path,
    partition_keys,
    partitions_sql,
    read_manifest,
    rows_sql,
    sorting_key,
    verify,
)
from jobs.sinks.clickhouse import COLUMNS, TABLES, column_types
from tickflow.config import patched_environ

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 30)
D = Decimal


def test_every_column_has_an_exact_arrow_type() -> None:
    for table in TABLES:
        schema = arrow_schema(table)
        types = column_types(table)
        assert schema.names == list(COLUMNS[table])
        for f in schema:
            kind = types[f.name]
            assert f.nullable == kind.startswith("Nullable("), (table, f.name)
            if "Decimal" in kind:
                inner = f.type.value_type if pa.types.is_list(f.type) else f.type
                assert inner == pa.decimal128(38, 18), (table, f.name)
            if kind == "UInt64":  # the times: exact integers, as stored
                assert f.type == pa.uint64(), (table, f.name)
    assert arrow_type("Enum8('buy' = 1, 'sell' = 2)") == pa.string()
    assert arrow_type("Date") == pa.date32()
    assert partition_keys("trades") == ("exchange", "instrument")
    assert partition_keys("nbbo") == partition_keys("bars") == ("instrument",)
    assert sorting_key("trades") == ("exchange", "symbol", "trade_time_ms", "trade_id")
    with pytest.raises(ValueError, match="no Arrow type"):
        arrow_type("DateTime64(3)")


def test_the_content_digest_is_the_documented_text_and_not_the_encoding() -> None:
    rows = pa.table(
        {
            "price": pa.array([D("1.5"), None], pa.decimal128(38, 18)),
            "text": ["a\tb\\c", "x,y"],
            "levels": pa.array([["p,q", "r"], []], pa.list_(pa.string())),
            "day": pa.array([DAY, DAY], pa.date32()),
            "value": [0.1, None],
            "ns": pa.array([2**64 - 1, 0], pa.uint64()),
        }
    )
    text = (
        "price:decimal128(38, 18)\ttext:string\tlevels:list<string>\tday:date32[day]\t"
        "value:double\tns:uint64\n"
        "1.500000000000000000\ta\\tb\\\\c\t[p\\,q,r]\t2026-11-30\t0.1\t18446744073709551615\n"
        "\\N\tx,y\t[]\t2026-11-30\t\\N\t0\n"
    )
    assert content_digest(rows) == hashlib.sha256(text.encode()).hexdigest()
    # however the rows are chunked or stored
    chunked = pa.concat_tables([rows.slice(0, 1), rows.slice(1)])
    assert content_digest(chunked) == content_digest(rows)
    renamed = rows.cast(
        rows.schema.set(2, pa.field("levels", pa.list_(pa.field("element", pa.string()))))
    )
    assert content_digest(renamed) == content_digest(rows)
    # and it sees every value
    other = rows.set_column(0, "price", pa.array([D("1.5"), D(0)], pa.decimal128(38, 18)))
    assert content_digest(other) != content_digest(rows)


# --- files from a source ------------------------------------------------------------------


def trade(exchange: str, instrument: str, trade_id: str, price: str) -> dict:
    symbol = instrument.replace("-", "")
    return {
        "date": DAY, "exchange": exchange, "symbol": symbol, "instrument": instrument,
        "trade_id": trade_id, "price": D(price), "size": D("0.000000000000000001"),
        "taker_side": "buy", "trade_time_ms": 1796000000000 + int(trade_id),
        "event_time_ms": 1796000000000, "receive_time_ns": 1796000000000 * 10**6, "on_time": 1,
    }  # fmt: skip


class FakeSource:
    """The rows of a day, held in memory by partition."""

    database = "fake"

    def __init__(self, rows: list[dict]) -> None:
        self.data = rows

    def partitions(self, table: str, day: date) -> list[Partition]:
        keys = partition_keys(table)
        values = sorted({tuple(row[k] for k in keys) for row in self.data})
        return [Partition(tuple(zip(keys, v, strict=True))) for v in values]

    def batches(self, table: str, day: date, partition: Partition) -> Iterator[pa.RecordBatch]:
        selected = [r for r in self.data if all(r[k] == v for k, v in partition.values)]
        rows = pa.Table.from_pylist(selected, schema=arrow_schema(table))
        yield from rows.to_batches(max_chunksize=1)  # row by row: files do not depend on it


def tree(root: Path) -> dict[str, tuple[int, str]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, file_sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


ROWS = [
    trade("binance", "BTC-USDT", "1", "65000.123456789012345678"),
    trade("binance", "BTC-USDT", "2", "65000.5"),
    trade("kraken", "BTC-USDT", "3", "64999"),
    trade("binance", "ETH-USDT", "4", "3000.01"),
]


def test_files_and_manifest_then_a_rerun_writes_nothing(tmp_path: Path) -> None:
    result = export_table(FakeSource(ROWS), "trades", DAY, tmp_path)
    assert result.rows == 4 and result.manifest_written
    assert result.written == [
        "exchange=binance/instrument=BTC-USDT",
        "exchange=binance/instrument=ETH-USDT",
        "exchange=kraken/instrument=BTC-USDT",
    ]
    day_dir = tmp_path / "trades" / "date=2026-11-30"
    first = pq.read_table(day_dir / "exchange=binance/instrument=BTC-USDT" / PART_FILE)
    assert first.to_pylist() == ROWS[:2]
    manifest = read_manifest(manifest_path(tmp_path, "trades", DAY))
    assert manifest is not None
    assert manifest_path(tmp_path, "trades", DAY) == (
        tmp_path / MANIFESTS / "trades" / "date=2026-11-30.json"
    )
    assert [(f["path"], f["rows"]) for f in manifest["files"]] == [
        (f"exchange=binance/instrument=BTC-USDT/{PART_FILE}", 2),
        (f"exchange=binance/instrument=ETH-USDT/{PART_FILE}", 1),
        (f"exchange=kraken/instrument=BTC-USDT/{PART_FILE}", 1),
    ]
    assert manifest["files"][0]["partition"] == {"exchange": "binance", "instrument": "BTC-USDT"}
    assert manifest["rows"] == 4 and manifest["sorted_by"] == list(sorting_key("trades"))
    assert verify(tmp_path, "trades", DAY) == []

    before = tree(tmp_path)

    def no_writes(*args: object) -> None:
        raise AssertionError("an unchanged partition was written")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "stage_parquet", no_writes)
        again = export_table(FakeSource(ROWS), "trades", DAY, tmp_path)
    assert not again.changed and len(again.unchanged) == 3
    assert tree(tmp_path) == before


def test_a_changed_partition_is_replaced_and_an_empty_one_removed(tmp_path: Path) -> None:
    export_table(FakeSource(ROWS), "trades", DAY, tmp_path)
    before = tree(tmp_path)
    changed = [*ROWS[:3], trade("kraken", "BTC-USDT", "5", "1")]  # ETH-USDT gone
    result = export_table(FakeSource(changed), "trades", DAY, tmp_path)
    assert result.written == ["exchange=kraken/instrument=BTC-USDT"]
    assert result.removed == ["exchange=binance/instrument=ETH-USDT"]
    assert result.unchanged == ["exchange=binance/instrument=BTC-USDT"]
    after = tree(tmp_path)
    kept = f"trades/date=2026-11-30/exchange=binance/instrument=BTC-USDT/{PART_FILE}"
    assert after[kept] == before[kept]
    assert not (tmp_path / "trades/date=2026-11-30/exchange=binance/instrument=ETH-USDT").exists()
    assert verify(tmp_path, "trades", DAY) == []
    # a day without rows any more: no files, no directories, a manifest of none
    empty = export_table(FakeSource([]), "trades", DAY, tmp_path)
    assert empty.rows == 0 and len(empty.removed) == 2
    assert not (tmp_path / "trades").exists()
    manifest = read_manifest(manifest_path(tmp_path, "trades", DAY))
    assert manifest is not None and manifest["files"] == [] and manifest["rows"] == 0


def test_damaged_files_and_leftovers_of_an_interrupted_run_are_repaired(tmp_path: Path) -> None:
    export_table(FakeSource(ROWS), "trades", DAY, tmp_path)
    part = date_dir(tmp_path, "trades", DAY) / "exchange=kraken/instrument=BTC-USDT" / PART_FILE
    part.write_bytes(b"not parquet")
    leftover = part.with_name(f".{PART_FILE}.4242.tmp")
    leftover.write_bytes(b"half a file")
    stray = date_dir(tmp_path, "trades", DAY) / "exchange=okx/instrument=BTC-USDT" / PART_FILE
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"an old partition")
    notes = date_dir(tmp_path, "trades", DAY) / "NOTES.txt"  # not the export's: left alone
    notes.write_text("mine")
    assert any("bytes differ" in p for p in verify(tmp_path, "trades", DAY))
    assert any("not in the manifest" in p for p in verify(tmp_path, "trades", DAY))

    result = export_table(FakeSource(ROWS), "trades", DAY, tmp_path)
    assert result.written == ["exchange=kraken/instrument=BTC-USDT"]
    assert result.removed == ["exchange=okx/instrument=BTC-USDT"]
    assert not leftover.exists() and not stray.parent.exists() and notes.exists()
    assert pq.read_table(part).to_pylist() == [ROWS[2]]
    assert verify(tmp_path, "trades", DAY) == []


def test_the_sql_runs_on_a_current_clickhouse_and_reads_final_rows() -> None:
    chdb_session = pytest.importorskip("chdb.session")
    session = chdb_session.Session()
    try:
        session.query("CREATE DATABASE IF NOT EXISTS x")
        session.query(TABLES["trades"].format(db="x"))
        values = (
            "('2026-11-30','binance','BTCUSDT','BTC-USDT','1',1.5,2,'buy',1,1,1,1),"
            "('2026-11-30','binance','BTCUSDT','BTC-USDT','1',1.5,2,'buy',1,1,1,1),"
            "('2026-11-30','kraken','BTC/USDT','BTC-USDT','9',1.5,2,'sell',1,1,1,1),"
            "('2026-12-01','okx','BTCUSDT','BTC-USDT','1',1.5,2,'buy',1,1,1,1)"
        )
        session.query(f"INSERT INTO x.trades VALUES {values}")
        day = "'2026-11-30'"
        partitions = session.query(
            partitions_sql("x", "trades").replace("%(day)s", day), "CSV"
        ).bytes()
        assert partitions.decode().splitlines() == ['"binance","BTC-USDT"', '"kraken","BTC-USDT"']
        sql = (
            rows_sql("x", "trades")
            .replace("%(day)s", day)
            .replace("%(exchange)s", "'binance'")
            .replace("%(instrument)s", "'BTC-USDT'")
        )
        rows = json.loads(session.query(sql, "JSONCompact").bytes())["data"]
        assert len(rows) == 1 and rows[0][5] in ("1.5", "1.500000000000000000")
        # book levels: arrays of decimals, read as arrays of text
        session.query(TABLES["book_snapshots"].format(db="x"))
        session.query(
            "INSERT INTO x.book_snapshots VALUES ('2026-11-30','binance','BTCUSDT','BTC-USDT',"
            "1,1,[2.5,2.25],[1,0.000000000000000001],[3],[4],1)"
        )
        sql = (
            rows_sql("x", "book_snapshots")
            .replace("%(day)s", day)
            .replace("%(exchange)s", "'binance'")
            .replace("%(instrument)s", "'BTC-USDT'")
        )
        (row,) = json.loads(session.query(sql, "JSONCompact").bytes())["data"]
        sizes = pa.array([row[7]], pa.list_(pa.string())).cast(pa.list_(pa.decimal128(38, 18)))
        assert sizes.to_pylist() == [[D(1), D("0.000000000000000001")]]
    finally:
        session.cleanup()


# --- the command --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in [
        (["--day", "2026-13-01"], "not a date"),
        (["--day", "30/11/2026"], "not a date"),
        (["--day", "2026-11-30", "--tables", "trades,quotes"], "unknown table quotes"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--to", str(tmp_path)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unreachable_clickhouse_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {"TICKFLOW__CLICKHOUSE__PORT": str(_closed_port())}
    with patched_environ(env):
        done = subprocess.run(
            [sys.executable, "-m", "tickflow.cli", "export", "--day", "2026-11-30",
             "--to", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert "ClickHouse is unreachable at 127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()


def test_verify_reports_a_missing_manifest(tmp_path: Path) -> None:
    assert main(["--day", "2026-11-30", "--tables", "nbbo", "--to", str(tmp_path), "--verify"]) == 1
