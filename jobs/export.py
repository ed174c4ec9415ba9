"""``tickflow export --day YYYY-MM-DD [--tables t1,t2] --to DIR``: a day of the ClickHouse result
tables as Hive-partitioned Parquet, for research tools (DuckDB, polars, pandas, Spark).

    DIR/<table>/date=YYYY-MM-DD/exchange=<exchange>/instrument=<instrument>/part-0.parquet
    DIR/<table>/date=YYYY-MM-DD/instrument=<instrument>/part-0.parquet     (nbbo, bars)
    DIR/_manifests/<table>/date=YYYY-MM-DD.json                            rows and checksums

Each file holds the ``FINAL`` rows of one partition (every row once, as the documented queries
read them), every column of the table in its insert order, sorted by the table's sorting key,
with exact types: Decimal(38, 18) as Arrow decimal128(38, 18), Date as date32, UIntN as
uintN (the ``*_ms`` / ``*_ns`` times stay the exact integers ClickHouse holds), Enum8 as
string, Nullable as a nullable column, Array as a list. A file is complete on its own: the
partition values are also columns in it.

The manifest lists each file with its row count, its size, the SHA-256 of its bytes and a
content digest of its rows that does not depend on the Parquet encoding (``content_digest``:
the SHA-256 of the rows as tab-separated text), so a reader can verify a file, and a re-run
can tell whether a partition changed without comparing Parquet bytes. A re-run digests each
partition's rows first and writes nothing when they are the same (not the files, not the
manifest); a changed partition's file is replaced atomically (written beside it, then renamed
over it); a partition that no longer has rows is removed. Rows are read, digested and written
``BATCH_ROWS`` at a time (a Parquet row group each), so memory does not grow with a
partition. The manifests sit outside the table directories, so a directory read (polars,
pyarrow datasets) sees Parquet files only.

docs/export.md has the layout, the types, the manifest and how to read the files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.sinks.clickhouse import COLUMNS, DECIMAL, TABLES, column_types, connect
from jobs.sinks.queries import exact_text_column
from tickflow.config import ClickHouseConfig, ConfigError, load_settings

FORMAT_VERSION = 1
PART_FILE = "part-0.parquet"
MANIFESTS = "_manifests"
TMP_SUFFIX = ".tmp"  # temporary files are hidden (leading dot) and end with this
COMPRESSION = "zstd"
DIGEST_CHUNK_ROWS = 65_536
BATCH_ROWS = 100_000  # rows read, digested and written at a time: a Parquet row group each
HTTP_TIMEOUT_S = 300

# the Hive partition keys after the date, in path order: the ones a table has
PARTITION_KEYS = ("exchange", "instrument")


class ExportError(Exception):
    """What the user must fix (a bad argument, an unreachable or incomplete server)."""


# --- types ------------------------------------------------------------------------------------


def arrow_type(kind: str) -> pa.DataType:
    """The Arrow type of a ClickHouse column type of the result tables (exact, never float for
    a decimal)."""
    if kind.startswith("Nullable("):
        return arrow_type(kind[len("Nullable(") : -1])
    if kind.startswith("Array("):
        # the item named as Parquet's LIST type names it, so a file's schema reads back equal
        return pa.list_(pa.field("element", arrow_type(kind[len("Array(") : -1])))
    if kind == DECIMAL:
        return pa.decimal128(38, 18)
    if kind.startswith("Enum8("):
        return pa.string()
    simple = {
        "Date": pa.date32(),
        "String": pa.string(),
        "UInt8": pa.uint8(),
        "UInt16": pa.uint16(),
        "UInt32": pa.uint32(),
        "UInt64": pa.uint64(),
        "Float64": pa.float64(),
    }
    if kind not in simple:
        raise ValueError(f"no Arrow type for ClickHouse type {kind}")
    return simple[kind]


def arrow_schema(table: str) -> pa.Schema:
    """The table's columns (``COLUMNS`` order) as Arrow fields; only Nullable ones are nullable."""
    types = column_types(table)
    return pa.schema(
        [
            pa.field(name, arrow_type(types[name]), nullable=types[name].startswith("Nullable("))
            for name in COLUMNS[table]
        ]
    )


def sorting_key(table: str) -> tuple[str, ...]:
    """The table's ``ORDER BY`` columns: the identity of a row, and the order of a file."""
    match = re.search(r"^ORDER BY \((?P<cols>[^)]*)\)", TABLES[table], re.MULTILINE)
    if not match:
        raise ValueError(f"no ORDER BY in the DDL of {table}")
    return tuple(col.strip() for col in match["cols"].split(","))


def partition_keys(table: str) -> tuple[str, ...]:
    """The Hive partition keys after ``date`` that the table has (nbbo and bars: instrument)."""
    return tuple(key for key in PARTITION_KEYS if key in COLUMNS[table])


# --- the content digest -----------------------------------------------------------------------


def _escaped(text: pa.Array, list_item: bool = False) -> pa.Array:
    text = pc.replace_substring(text, "\\", "\\\\")
    text = pc.replace_substring(text, "\t", "\\t")
    text = pc.replace_substring(text, "\n", "\\n")
    if list_item:
        text = pc.replace_substring(text, ",", "\\,")
    return text


def _as_text(array: pa.Array, list_item: bool = False) -> pa.Array:
    """Every value as canonical text (null: ``\\N``)."""
    kind = array.type
    if pa.types.is_list(kind):
        items = _as_text(array.values, list_item=True)
        joined = pc.binary_join(pa.ListArray.from_arrays(array.offsets, items), ",")
        text = pc.binary_join_element_wise("[", joined, "]", "")
    elif pa.types.is_string(kind):
        text = _escaped(array, list_item)
    else:  # decimals at their full scale, integers, floats (shortest round trip), dates
        text = pc.cast(array, pa.string())
    if array.null_count:
        text = pc.if_else(pc.is_null(array), pa.scalar("\\N"), text)
    return text


def _type_name(kind: pa.DataType) -> str:
    """The type as text, lists without their item's name (``list<decimal128(38, 18)>``)."""
    if pa.types.is_list(kind):
        return f"list<{_type_name(kind.value_type)}>"
    return str(kind)


class ContentDigest:
    """``content_digest`` fed batch by batch: the same digest however the rows are cut."""

    def __init__(self, schema: pa.Schema) -> None:
        self.sha = hashlib.sha256()
        header = "\t".join(f"{f.name}:{_type_name(f.type)}" for f in schema)
        self.sha.update(header.encode() + b"\n")

    def update(self, rows: pa.Table | pa.RecordBatch) -> None:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        for batch in table.to_batches(max_chunksize=DIGEST_CHUNK_ROWS):
            if not batch.num_rows:
                continue
            texts = [_as_text(column) for column in batch.columns]
            joined = pc.binary_join_element_wise(*texts, "\t") if len(texts) > 1 else texts[0]
            lines = pc.binary_join_element_wise(joined, "\n", "")
            text = pc.binary_join(pa.ListArray.from_arrays([0, len(lines)], lines), "")[0]
            self.sha.update(text.as_buffer())

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def content_digest(table: pa.Table) -> str:
    """SHA-256 (hex) of the rows as text, independent of how they are stored: a header line
    of the column names and Arrow types, then one line per row in order, values separated by
    tabs; text with ``\\``, tab and newline escaped as in ClickHouse's TabSeparated, decimals at
    their full scale, dates ISO, floats in their shortest exact form, null ``\\N``, lists as
    ``[a,b]`` (commas inside their text escaped as ``\\,``); a list's type is written
    ``list<type>``, without its item's name."""
    digest = ContentDigest(table.schema)
    digest.update(table)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- reading ClickHouse -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """One file's rows: the values of the table's partition keys after the date."""

    values: tuple[tuple[str, str], ...]  # ((key, value), ...) in PARTITION_KEYS order

    def path(self) -> str:
        """The Hive path under the date directory: ``exchange=x/instrument=y``."""
        return "/".join(f"{key}={quote(value, safe='-_.:')}" for key, value in self.values)


def partitions_sql(db: str, table: str) -> str:
    """The day's partitions of ``table`` (params: day). No FINAL: the copies of a row share
    its partition."""
    cols = ", ".join(partition_keys(table))
    return f"SELECT DISTINCT {cols} FROM {db}.{table} WHERE date = %(day)s ORDER BY {cols}"


# how a column is read: decimals as their exact text, which Arrow parses
_selected = exact_text_column


def _wire_type(kind: pa.DataType, json: bool = False) -> pa.DataType:
    """The Arrow type of a column as ``rows_sql`` reads it (decimals as text; in JSON, dates
    as text too)."""
    if pa.types.is_decimal(kind) or (json and pa.types.is_date(kind)):
        return pa.string()
    if pa.types.is_list(kind):
        return pa.list_(pa.field("element", _wire_type(kind.value_type, json)))
    return kind


def record_batch(schema: pa.Schema, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    """Rows as read with decimals as text (``exact_text_column``), one tuple per row in the
    schema's column order, as an Arrow batch of ``schema``: text to decimal128(38, 18) exactly
    (an error, never a rounding)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = [
        pa.array(values, type=_wire_type(f.type), from_pandas=False).cast(f.type)
        for f, values in zip(schema, columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class HttpQueryError(Exception):
    """ClickHouse refused a query over HTTP: its error ``code`` (0 if none) and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def json_rows_from_http(config: ClickHouseConfig, sql: str, params: dict[str, Any]) -> bytes:
    """``sql``'s rows as ClickHouse's JSONEachRow (one JSON object a line; 64-bit integers as
    numbers, NaN and infinities as null), over its HTTP interface. ``params`` fill the
    ``%(name)s`` placeholders as clickhouse-driver does. Raises HttpQueryError if ClickHouse
    refuses the query, OSError if no server (the primary, then an HA replica) answers."""
    import base64
    import http.client
    from urllib.parse import urlencode

    from clickhouse_driver.util.escape import escape_params

    query = (sql % escape_params(params, None)).rstrip() + "\nFORMAT JSONEachRow"
    url = "/?" + urlencode({"output_format_json_quote_64bit_integers": 0,
                            "output_format_json_quote_denormals": 0})  # fmt: skip
    token = base64.b64encode(f"{config.user}:{config.password}".encode()).decode()
    connection = http.client.HTTPSConnection if config.secure else http.client.HTTPConnection
    servers = config.servers()
    for i, server in enumerate(servers):
        conn = connection(server.host, server.http_port, timeout=HTTP_TIMEOUT_S)
        try:
            headers = {"Authorization": f"Basic {token}"}
            conn.request("POST", url, body=query.encode(), headers=headers)
            response = conn.getresponse()
            body = response.read()
            break
        except OSError:
            if i == len(servers) - 1:
                raise
        finally:
            conn.close()
    if response.status != 200:
        text = body.decode(errors="replace").strip()
        match = re.match(r"Code: (\d+)", text)
        raise HttpQueryError(int(match[1]) if match else 0, text[:500])
    return body


def arrow_from_json_rows(body: bytes, schema: pa.Schema) -> pa.Table:
    """JSONEachRow rows (the columns of ``schema``, decimals as their exact text, dates as
    text) as a table of ``schema``, parsed by pyarrow: no Python object per value, decimals
    exact (an error, never a rounding)."""
    import io

    import pyarrow.json as pa_json

    if not body.strip():
        return schema.empty_table()
    wire = pa.schema([pa.field(f.name, _wire_type(f.type, json=True)) for f in schema])
    parsed = pa_json.read_json(
        io.BytesIO(body),
        parse_options=pa_json.ParseOptions(explicit_schema=wire, unexpected_field_behavior="error"),
    )
    columns = [parsed.column(f.name).cast(f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def rows_sql(db: str, table: str) -> str:
    """One partition's FINAL rows of ``table``, every column in ``COLUMNS`` order (decimals
    as text), in the sorting key's order (params: day and the table's partition keys)."""
    types = column_types(table)
    where = " AND ".join(["date = %(day)s", *(f"{k} = %({k})s" for k in partition_keys(table))])
    selected = ", ".join(_selected(name, types[name]) for name in COLUMNS[table])
    return (
        f"SELECT {selected} FROM {db}.{table} FINAL "
        f"WHERE {where} ORDER BY {', '.join(sorting_key(table))}"
    )


class RowSource(Protocol):
    """Where ``export_table`` reads a day's rows (``Source``: ClickHouse)."""

    database: str

    def partitions(self, table: str, day: date) -> list[Partition]: ...

    def batches(self, table: str, day: date, partition: Partition) -> Iterator[pa.RecordBatch]:
        """The partition's rows in order, a batch at a time."""
        ...


class Source:
    """The FINAL rows of one day, partition by partition, from a ClickHouse database."""

    def __init__(self, config: ClickHouseConfig, database: str | None = None) -> None:
        self.config = config
        self.database = database or config.database
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.database):
            raise ExportError(f"not a database name: {self.database!r}")
        self.client = connect(config)

    def close(self) -> None:
        self.client.disconnect()

    def check_tables(self, tables: Sequence[str]) -> None:
        """Each table exists with every column the export writes (else ExportError)."""
        rows = self._execute(
            "SELECT table, name FROM system.columns WHERE database = %(db)s",
            {"db": self.database},
        )
        present: dict[str, set[str]] = {}
        for table, name in rows:
            present.setdefault(table, set()).add(name)
        if not present:
            raise ExportError(f"ClickHouse has no database {self.database} (or no table in it)")
        for table in tables:
            if table not in present:
                raise ExportError(
                    f"ClickHouse has no table {self.database}.{table} "
                    f"(a pipeline run or `tickflow job backfill` creates the tables)"
                )
            missing = [c for c in COLUMNS[table] if c not in present[table]]
            if missing:
                raise ExportError(
                    f"{self.database}.{table} lacks columns {', '.join(missing)}: an older "
                    f"schema (the job upgrades it when it starts)"
                )

    def partitions(self, table: str, day: date) -> list[Partition]:
        keys = partition_keys(table)
        rows = self._execute(partitions_sql(self.database, table), {"day": day})
        return [Partition(tuple(zip(keys, row, strict=True))) for row in rows]

    def batches(
        self, table: str, day: date, partition: Partition, rows: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The partition's FINAL rows, sorted by the table's sorting key, ``rows`` at a time
        (default ``BATCH_ROWS``)."""
        rows = rows or BATCH_ROWS
        schema = arrow_schema(table)
        params = {"day": day, **dict(partition.values)}
        chunks = self._execute_iter(rows_sql(self.database, table), params, rows)
        for chunk in chunks:
            yield record_batch(schema, chunk)

    def _execute_iter(self, sql: str, params: dict[str, Any], rows: int) -> Iterator[Any]:
        settings = {"max_block_size": rows}
        chunks = self.client.execute_iter(sql, params, settings=settings, chunk_size=rows)
        while True:
            with self._errors():
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def _execute(self, sql: str, params: dict[str, Any]) -> Any:
        with self._errors():
            return self.client.execute(sql, params)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The driver's errors as ExportError, one line."""
        from clickhouse_driver import errors

        try:
            yield
        except errors.ServerException as exc:
            message = str(exc).split("\n", 1)[0]
            raise ExportError(f"ClickHouse refused the export's query: {message}") from None
        except (errors.Error, OSError, EOFError) as exc:
            raise ExportError(
                f"ClickHouse is unreachable at {self.config.host}:{self.config.port}: "
                f"{exc.__class__.__name__}: {str(exc).strip() or 'no answer'}"
            ) from None


# --- writing ----------------------------------------------------------------------------------


@dataclass
class TableResult:
    table: str
    rows: int = 0
    written: list[str] = field(default_factory=list)  # partition paths (re)written
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # files of partitions without rows now
    manifest_written: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed or self.manifest_written)


def date_dir(root: Path, table: str, day: date) -> Path:
    return root / table / f"date={day.isoformat()}"


def manifest_path(root: Path, table: str, day: date) -> Path:
    return root / MANIFESTS / table / f"date={day.isoformat()}.json"


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def replace_durably(tmp: Path, path: Path) -> None:
    """``tmp`` (closed) fsynced and renamed over ``path``, the rename fsynced too: after a
    crash, ``path`` is either the old file or the whole new one."""
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself, durable (not on every filesystem)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Staged:
    """A partition's rows written to a temporary file beside its final name."""

    tmp: Path
    rows: int
    content_sha256: str


def stage_parquet(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch], path: Path
) -> Staged | None:
    """Stream ``batches`` into a hidden temporary file beside ``path`` (one row group each),
    digesting them on the way; None (and no file) when there are no rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    digest = ContentDigest(schema)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write_batch(batch)
                    digest.update(batch)
                    rows += batch.num_rows
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not rows:
        tmp.unlink(missing_ok=True)
        return None
    return Staged(tmp, rows, digest.hexdigest())


def write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unchanged(entry: dict[str, Any] | None, digest: str, path: Path) -> bool:
    """The manifest's file has these rows, and the file on disk is that file."""
    if entry is None or entry.get("content_sha256") != digest or not path.is_file():
        return False
    return path.stat().st_size == entry.get("bytes") and file_sha256(path) == entry.get("sha256")


def _ours(path: Path) -> bool:
    """A file an export writes under a date directory (part files, its temporary files)."""
    return path.name == PART_FILE or (path.name.startswith(".") and path.name.endswith(TMP_SUFFIX))


def _remove_stale(day_dir: Path, keep: set[Path]) -> list[str]:
    """Remove the export's files under ``day_dir`` that are not in ``keep``, then the
    directories left empty; other files are left alone."""
    removed: list[str] = []
    if not day_dir.is_dir():
        return removed
    for path in sorted(day_dir.rglob("*")):
        if path.is_file() and _ours(path) and path not in keep:
            path.unlink()
            if path.name == PART_FILE:
                removed.append(path.parent.relative_to(day_dir).as_posix())
    for directory in sorted((p for p in day_dir.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty
    for directory in (day_dir, day_dir.parent):  # the table's directory too, when empty
        with contextlib.suppress(OSError):
            directory.rmdir()
    return removed


def export_table(source: RowSource, table: str, day: date, root: Path) -> TableResult:
    """One table's day: each partition's file written unless its rows are unchanged, files of
    partitions without rows removed, the manifest written when it differs."""
    result = TableResult(table)
    day_dir = date_dir(root, table, day)
    mpath = manifest_path(root, table, day)
    previous = read_manifest(mpath) or {}
    old_files = {f.get("path"): f for f in previous.get("files", []) if isinstance(f, dict)}
    files = []
    keep: set[Path] = set()
    schema = arrow_schema(table)
    for partition in source.partitions(table, day):
        relative = f"{partition.path()}/{PART_FILE}"
        path = day_dir / relative
        entry = old_files.get(relative)
        if entry is not None and path.is_file():
            # a file from before: digest the rows first, write only if they differ from it
            digest = ContentDigest(schema)
            rows = 0
            for batch in source.batches(table, day, partition):
                digest.update(batch)
                rows += batch.num_rows
            if not rows:  # merged away since the partitions were listed
                continue
            if _unchanged(entry, digest.hexdigest(), path):
                files.append(entry)
                keep.add(path)
                result.unchanged.append(partition.path())
                result.rows += rows
                continue
        # the rows are read again: what is written is digested as it is written
        staged = stage_parquet(schema, source.batches(table, day, partition), path)
        if staged is None:
            continue
        try:
            replace_durably(staged.tmp, path)
        finally:
            staged.tmp.unlink(missing_ok=True)
        files.append(
            {
                "path": relative,
                "partition": dict(partition.values),
                "rows": staged.rows,
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
                "content_sha256": staged.content_sha256,
            }
        )
        keep.add(path)
        result.written.append(partition.path())
        result.rows += staged.rows
    result.removed = _remove_stale(day_dir, keep)
    types = column_types(table)
    manifest = {
        "format": FORMAT_VERSION,
        "table": table,
        "date": day.isoformat(),
        "database": source.database,
        "partition_keys": ["date", *partition_keys(table)],
        "sorted_by": list(sorting_key(table)),
        "columns": [
            {"name": f.name, "clickhouse": types[f.name], "arrow": str(f.type)} for f in schema
        ],
        "rows": result.rows,
        "files": files,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    if not mpath.is_file() or mpath.read_text() != text:
        write_text(text, mpath)
        result.manifest_written = True
    return result


def export_day(
    config: ClickHouseConfig,
    day: date,
    root: Path,
    tables: Sequence[str] | None = None,
    database: str | None = None,
) -> list[TableResult]:
    """Export ``tables`` (default: every result table) of ``day`` from ClickHouse to ``root``."""
    names = list(tables or TABLES)
    unknown = [name for name in names if name not in TABLES]
    if unknown:
        raise ExportError(f"unknown table {', '.join(unknown)} (tables: {', '.join(TABLES)})")
    source = Source(config, database)
    try:
        source.check_tables(names)
        return [export_table(source, name, day, root) for name in names]
    finally:
        source.close()


# --- verifying --------------------------------------------------------------------------------


def verify(root: Path, table: str, day: date) -> list[str]:
    """What does not match the manifest of ``table``'s ``day`` under ``root`` (empty: all
    good): each listed file's bytes (SHA-256, size), rows and content digest, and no other
    Parquet file in the day's directory."""
    mpath = manifest_path(root, table, day)
    manifest = read_manifest(mpath)
    if manifest is None:
        return [f"{mpath}: no manifest"]
    problems = []
    day_dir = date_dir(root, table, day)
    listed = set()
    for entry in manifest.get("files", []):
        path = day_dir / entry["path"]
        listed.add(path)
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if file_sha256(path) != entry["sha256"] or path.stat().st_size != entry["bytes"]:
            problems.append(f"{path}: bytes differ from the manifest")
        try:
            rows = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{path}: not readable as Parquet: {exc}")
            continue
        if rows.num_rows != entry["rows"]:
            problems.append(f"{path}: {rows.num_rows} rows, manifest {entry['rows']}")
        if content_digest(rows) != entry["content_sha256"]:
            problems.append(f"{path}: rows differ from the manifest's content digest")
    if day_dir.is_dir():
        for path in sorted(day_dir.rglob("*.parquet")):
            if path not in listed:
                problems.append(f"{path}: not in the manifest")
    return problems


# --- the command ------------------------------------------------------------------------------


def parse_day(text: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}: {exc}") from None


def parse_tables(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in TABLES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown table {', '.join(unknown) or repr(text)} (tables: {', '.join(TABLES)})"
        )
    return names


def parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    layout = doc.split("\n\n")[1] if doc.count("\n\n") else ""
    p = argparse.ArgumentParser(
        prog="tickflow export",
        description="A day of the ClickHouse result tables (their FINAL rows) as Hive-partitioned\n"
        "Parquet with exact decimal types, and a manifest of row counts and checksums per\n"
        "file. A re-run writes only the partitions whose rows changed.",
        epilog=f"{layout}\n\ndocs/export.md: the layout, the types, the manifest, reading "
        "the files from DuckDB, polars and pandas",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--day", required=True, type=parse_day, help="UTC day, YYYY-MM-DD")
    p.add_argument("--to", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument(
        "--tables",
        type=parse_tables,
        help=f"comma-separated (default: all of {', '.join(TABLES)})",
    )
    p.add_argument(
        "--database", help="ClickHouse database (default: clickhouse.database, `tickflow`)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the files already under DIR against their manifests; read no ClickHouse",
    )
    return p


def _summary(results: Iterable[TableResult]) -> Iterator[str]:
    for r in results:
        files = len(r.written) + len(r.unchanged)
        state = "unchanged"
        if r.changed:
            state = f"{len(r.written)} written, {len(r.unchanged)} unchanged"
            state += f", {len(r.removed)} removed"
        yield f"{r.table:<15} {r.rows:>10} rows  {files:>4} files  {state}"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    tables = args.tables or list(TABLES)
    if args.verify:
        problems = [p for t in tables for p in verify(args.to, t, args.day)]
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(tables)} tables of {args.day}: " + ("OK" if not problems else "MISMATCH"))
        return 1 if problems else 0
    # the driver logs each failed connection attempt with its traceback: the error says it
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    try:
        settings = load_settings()
        results = export_day(settings.clickhouse, args.day, args.to, tables, args.database)
    except ConfigError as exc:
        print(f"tickflow export: configuration: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"tickflow export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tickflow export: cannot write under {args.to}: {exc}", file=sys.stderr)
        return 1
    for line in _summary(results):
        print(line)
    print(f"{args.to} (manifests: {args.to / MANIFESTS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
