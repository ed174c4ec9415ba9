"""The job writing its result topics as framed Avro (``kafka.result_format: avro``,
docs/schemas.md): every record names its topic's registered schema by id, and a consumer
with the committed schema and one with an evolved schema (an optional field added) read each
record through the writer schema the id names, the evolved one with the field's default."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from schemas.codec import FRAME_HEADER_BYTES, framed_id
from schemas.registry import SCHEMA_DIR, RegistryClient, canonical_text
from tickflow.config import Settings
from tickflow.slice import consume_all, start_slice, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the outputs a Binance book yields within seconds (trades and bars need more time)
TABLES = ("nbbo", "top_of_book")


def test_result_records_are_framed_avro_read_by_old_and_new_consumers(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with start_slice(
        tmp_path,
        exchanges=("binance",),
        rate_per_symbol=10,
        environ={"TICKFLOW__KAFKA__RESULT_FORMAT": "avro"},
    ) as run:
        settings = run.settings
        registry = RegistryClient(settings.registry)
        topics = settings.kafka.result_topics()
        for table in TABLES:
            values = wait_for(
                f"{table} records committed",
                lambda t=table: consume_all(settings, topics[t]) or None,
                120,
            )
            text = (SCHEMA_DIR / "results" / f"{table}.avsc").read_text()
            found = registry.lookup(f"{topics[table]}-value", text)
            assert found is not None
            committed = fastavro.parse_schema(json.loads(text))
            evolved = json.loads(text)
            evolved["fields"].append(
                {"name": "region", "type": ["null", "string"], "default": None}
            )
            newer = fastavro.parse_schema(evolved)
            for value in values:
                schema_id = framed_id(value)
                assert schema_id == found[0], value[:16]
                writer_text = registry.schema(schema_id)
                assert canonical_text(writer_text) == canonical_text(text)
                writer = fastavro.parse_schema(json.loads(writer_text))
                body = value[FRAME_HEADER_BYTES:]
                old = fastavro.schemaless_reader(io.BytesIO(body), writer, committed)
                new = fastavro.schemaless_reader(io.BytesIO(body), writer, newer)
                assert new == {**old, "region": None}
                assert old["instrument"] and old["date"]
