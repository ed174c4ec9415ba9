"""Result rows as JSON records for the exactly-once Kafka topics: one object per row, keys as
the ClickHouse columns (``jobs/sinks/clickhouse.py``), decimals and dates as strings (exact)."""

from __future__ import annotations

from typing import Any

import orjson

from jobs.sinks.clickhouse import COLUMNS


def json_record(table: str, row: tuple[Any, ...]) -> str:
    return orjson.dumps(dict(zip(COLUMNS[table], row, strict=True)), default=str).decode()
