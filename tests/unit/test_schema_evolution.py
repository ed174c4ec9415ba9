"""The topics' Avro schemas and their evolution rules, with no server: the committed ``.avsc``
files against every version in their git history (what CI refuses), the rule checker on the
changes it must take and refuse, old and new readers and writers of an evolved envelope, and
the result schemas against what the compiled core writes to the result topics."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from jobs.operators import RESULT_TABLES
from jobs.sinks.clickhouse import COLUMNS, TABLES
from schemas.cli import main
from schemas.registry import (
    SCHEMA_DIR,
    canonical_text,
    check_against_git,
    rule_violations,
    schema_files,
)
from tests.unit.core_driver import (
    END_OF_INPUT,
    Core,
    binance,
    bn_snapshot,
    bn_trade,
    cb_l2,
    coinbase,
)
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
RAW = (SCHEMA_DIR / "raw_envelope.avsc").read_text()


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings()


def evolved(text: str, edit: Any) -> str:
    """The schema with ``edit`` applied to its parsed JSON."""
    schema = json.loads(text)
    edit(schema)
    return json.dumps(schema)


def add_field(field: dict[str, Any]) -> Any:
    return lambda s: s["fields"].append(field)


def drop_field(name: str) -> Any:
    return lambda s: s.update(fields=[f for f in s["fields"] if f["name"] != name])


def retype(name: str, new_type: Any) -> Any:
    def edit(s: dict[str, Any]) -> None:
        for f in s["fields"]:
            if f["name"] == name:
                f["type"] = new_type

    return edit


OPTIONAL = {"name": "venue_region", "type": ["null", "string"], "default": None}


def test_every_topic_has_a_subject_and_a_committed_schema(settings: Settings) -> None:
    files = schema_files(settings)
    kafka = settings.kafka
    assert set(files) == {
        f"{kafka.raw_topic}-value",
        *(f"{topic}-value" for topic in kafka.result_topics().values()),
    }
    for path in files.values():
        fastavro.parse_schema(json.loads(path.read_text()))  # valid Avro


def test_the_committed_schemas_keep_the_rule_against_their_git_history(settings: Settings) -> None:
    """CI's check: each schema file as it is now against every version committed before it,
    under registry.compatibility. A change it refuses fails here, before any registry."""
    assert settings.registry.compatibility == "FULL_TRANSITIVE"
    results = check_against_git(settings, "HEAD")
    assert results == {subject: [] for subject in schema_files(settings)}


def test_the_envelope_keeps_its_first_five_fields_in_place() -> None:
    """Readers of a framed record of any version read these without decoding it: the key
    selectors the instrument (``envelope_instrument``, InstrumentKeys.java), the replay pacer
    the receive time (``envelope_receive_time_ns``). A field is added after them."""
    fields = [(f["name"], f["type"]) for f in json.loads(RAW)["fields"][:5]]
    assert fields == [
        ("instrument", "string"), ("exchange", "string"), ("symbol", "string"),
        ("channel", "string"), ("receive_time_ns", "long"),
    ]  # fmt: skip


def test_an_optional_field_with_a_default_keeps_every_rule() -> None:
    new = evolved(RAW, add_field(OPTIONAL))
    for level in ("BACKWARD", "FORWARD", "FULL", "FULL_TRANSITIVE"):
        assert rule_violations(new, [RAW], level) == []
    # and removing it again, later
    assert rule_violations(RAW, [RAW, new], "FULL_TRANSITIVE") == []


def test_a_field_added_without_a_default_is_refused_backward() -> None:
    new = evolved(RAW, add_field({"name": "venue_region", "type": "string"}))
    [problem] = rule_violations(new, [RAW], "FULL")
    assert "the new schema cannot read version 1 of 1" in problem
    assert "venue_region" in problem
    assert rule_violations(new, [RAW], "FORWARD") == []


def test_a_field_removed_without_a_default_is_refused_forward() -> None:
    new = evolved(RAW, drop_field("connection_seq"))
    [problem] = rule_violations(new, [RAW], "FULL")
    assert "version 1 of 1 cannot read the new one" in problem
    assert "connection_seq" in problem
    assert rule_violations(new, [RAW], "BACKWARD") == []


def test_a_changed_type_is_refused() -> None:
    new = evolved(RAW, retype("connection_seq", "string"))
    problems = rule_violations(new, [RAW], "FULL")
    assert len(problems) == 2 and all("connection_seq" in p for p in problems)
    # a promotion (long -> double) reads old data, but old readers cannot read the new
    widened = evolved(RAW, retype("connection_seq", "double"))
    assert rule_violations(widened, [RAW], "BACKWARD") == []
    assert rule_violations(widened, [RAW], "FULL") != []


def test_transitive_rules_compare_with_every_earlier_version() -> None:
    """v2 adds a required field (FORWARD-only), v3 gives it a default: v3 is fine next to v2
    alone, but under FULL_TRANSITIVE it must also be read by v1's readers, and it is."""
    v2 = evolved(RAW, add_field({"name": "venue_region", "type": "string"}))
    v3 = evolved(RAW, add_field({**OPTIONAL, "type": "string", "default": ""}))
    assert rule_violations(v3, [RAW, v2], "FULL") == []
    assert rule_violations(v3, [RAW, v2], "FULL_TRANSITIVE") == []
    v4 = evolved(RAW, drop_field("payload"))
    assert rule_violations(v4, [RAW, v3], "FULL") != []
    assert rule_violations(v4, [RAW, v3], "NONE") == []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


def test_the_git_check_refuses_an_incompatible_edit_of_a_committed_file(
    settings: Settings, tmp_path: Path
) -> None:
    """The same check on a repository of its own: a compatible edit passes, committed or not;
    an incompatible one is refused in the working tree and still once committed."""
    repo = tmp_path / "repo"
    (repo / "schemas").mkdir(parents=True)
    path = repo / "schemas" / "raw_envelope.avsc"
    path.write_text(RAW)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "v1")
    local = dataclasses.replace(settings, root=repo)
    files = {"tickflow.raw-value": path}
    assert check_against_git(local, "HEAD", files) == {"tickflow.raw-value": []}
    path.write_text(evolved(RAW, add_field(OPTIONAL)))
    assert check_against_git(local, "HEAD", files) == {"tickflow.raw-value": []}
    _git(repo, "commit", "-qam", "v2: an optional field")
    path.write_text(evolved(RAW, retype("receive_time_ns", "string")))
    [subject_problems] = check_against_git(local, "HEAD", files).values()
    assert subject_problems and all("receive_time_ns" in p for p in subject_problems)
    _git(repo, "commit", "-qam", "v3: incompatible")
    assert check_against_git(local, "HEAD", files)["tickflow.raw-value"] != []


def test_the_check_command_without_a_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--against", "HEAD"]) == 0
    assert "5 schemas compatible under FULL_TRANSITIVE with the history of HEAD" in (
        capsys.readouterr().out
    )


def _write(schema: str, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), record)
    return out.getvalue()


def _read(data: bytes, writer: str, reader: str) -> Any:
    parse = fastavro.parse_schema
    return fastavro.schemaless_reader(
        io.BytesIO(data), parse(json.loads(writer)), parse(json.loads(reader))
    )


def test_old_and_new_readers_and_writers_of_an_evolved_envelope_interoperate() -> None:
    """Avro resolution with the writer's schema (what a registry id names): a new reader
    reads old records with the default, an old reader reads new records without the field."""
    new = evolved(RAW, add_field(OPTIONAL))
    old_record = {
        "instrument": "BTC-USDT", "exchange": "binance", "symbol": "BTCUSDT", "channel": "depth",
        "receive_time_ns": T0 * 10**6, "connection_id": "c1", "connection_seq": 7,
        "payload": b'{"e":"depthUpdate"}',
    }  # fmt: skip
    new_record = {**old_record, "venue_region": "eu"}
    assert _read(_write(RAW, old_record), RAW, new) == {**old_record, "venue_region": None}
    assert _read(_write(new, new_record), new, RAW) == old_record
    assert _read(_write(new, new_record), new, new) == new_record


# --- the result schemas describe what the job writes ---------------------------------------

_AVRO_OF = {"String": "string", "Date": "string", "UInt64": "long", "UInt32": "long",
            "UInt16": "int", "UInt8": "int", "Float64": "double"}  # fmt: skip


def _avro_type(clickhouse: str) -> Any:
    nullable = re.fullmatch(r"Nullable\((.*)\)", clickhouse)
    if nullable:
        return ["null", _avro_type(nullable.group(1))]
    array = re.fullmatch(r"Array\((.*)\)", clickhouse)
    if array:
        return {"type": "array", "items": _avro_type(array.group(1))}
    if clickhouse.startswith(("Decimal", "Enum8")):
        return "string"  # exact decimals and enum names as text
    return _AVRO_OF[clickhouse]


@pytest.mark.parametrize("table", RESULT_TABLES)
def test_a_result_schema_has_every_column_of_its_table_in_order(table: str) -> None:
    """A column added to a result table is added to its topic's schema too (with a default:
    the rule says so), with the type its JSON value has."""
    schema = json.loads((SCHEMA_DIR / "results" / f"{table}.avsc").read_text())
    body = TABLES[table].split("(", 1)[1].rsplit(") ENGINE", 1)[0]
    types = dict(re.findall(r"^\s+(\w+) (.+?),?$", body, re.M))
    fields = [(f["name"], f["type"]) for f in schema["fields"]]
    assert fields == [(c, _avro_type(types[c])) for c in COLUMNS[table]]


def test_what_the_core_writes_to_the_result_topics_fits_their_schemas() -> None:
    """Every record of each result topic, from a Binance and a Coinbase book and a trade, is
    a valid datum of the topic's schema, field for field (no field more or less)."""
    core = Core("BNB-BTC")
    records: dict[str, list[dict[str, Any]]] = {}
    outputs = [
        core.process(
            binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0), T0 - 2000
        ),
        core.process(
            coinbase("depth", cb_l2(1, T0, [["0.99", "1"]], [["1.12", "4"]], "snapshot"), T0 + 5)
        ),
        core.process(binance("trade", bn_trade(7, "1.05", "0.5", T0 + 2500), T0 + 2600), T0 + 500),
        core.advance(END_OF_INPUT),
    ]
    for out in outputs:
        for name, items in out.records.items():
            records.setdefault(name, []).extend(items)
    for table in RESULT_TABLES:
        assert records.get(table), f"no {table} record to check"
        schema = fastavro.parse_schema(
            json.loads((SCHEMA_DIR / "results" / f"{table}.avsc").read_text())
        )
        for record in records[table]:
            assert validate(record, schema, strict=True), record


def test_canonical_text_ignores_layout_only() -> None:
    assert canonical_text(RAW) == canonical_text(json.dumps(json.loads(RAW), indent=4))
    assert canonical_text(RAW) != canonical_text(evolved(RAW, add_field(OPTIONAL)))
