"""The schema registry of the local stack (Apicurio Registry, its Confluent-compatible API):
the committed schemas registered by ``stack up``, idempotent registration, a compatible
evolution taken and readable by id, incompatible ones refused, and no anonymous access.

Subjects of their own (``test-<random>-...``) are deleted at the end."""

from __future__ import annotations

import dataclasses
import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest

from schemas.registry import (
    IncompatibleSchema,
    RegistryClient,
    RegistryError,
    check_against_registry,
    register_all,
    schema_files,
)
from tickflow.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(stack_settings: Settings) -> RegistryClient:
    return RegistryClient(stack_settings.registry)


@pytest.fixture
def subject(registry: RegistryClient, stack_settings: Settings) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}-{stack_settings.kafka.raw_topic}-value"
    registry.set_compatibility(name, stack_settings.registry.compatibility)
    yield name
    registry.delete_subject(name)


def raw_schema(stack_settings: Settings) -> str:
    return schema_files(stack_settings)[f"{stack_settings.kafka.raw_topic}-value"].read_text()


def evolved(text: str, edit: Any) -> str:
    schema = json.loads(text)
    edit(schema)
    return json.dumps(schema)


OPTIONAL = {"name": "venue_region", "type": ["null", "string"], "default": None}


def test_stack_up_registered_every_topic_with_its_rule(
    registry: RegistryClient, stack_settings: Settings
) -> None:
    files = schema_files(stack_settings)
    assert set(files) <= set(registry.subjects())
    for subject, path in files.items():
        assert registry.compatibility(subject) == stack_settings.registry.compatibility
        found = registry.lookup(subject, path.read_text())
        assert found is not None, f"{subject}: the committed schema is not registered"
        assert json.loads(registry.schema(found[0])) == json.loads(path.read_text())
    # registering again changes nothing, and the files pass the registry's check
    again = register_all(registry, stack_settings)
    assert [r.new for r in again] == [False] * len(files)
    assert check_against_registry(registry, stack_settings) == {s: [] for s in files}


def test_registering_is_idempotent(
    registry: RegistryClient, subject: str, stack_settings: Settings
) -> None:
    text = raw_schema(stack_settings)
    first = registry.register(subject, text)
    # the same schema, laid out differently: the same id, no new version
    assert registry.register(subject, json.dumps(json.loads(text), indent=4)) == first
    assert registry.versions(subject) == [1]
    assert registry.lookup(subject, text) == (first, 1)


def _write(schema: str, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), record)
    return out.getvalue()


def _read(data: bytes, writer: str, reader: str) -> Any:
    parse = fastavro.parse_schema
    return fastavro.schemaless_reader(
        io.BytesIO(data), parse(json.loads(writer)), parse(json.loads(reader))
    )


def test_a_new_field_with_a_default_is_taken_and_both_versions_read_each_other_by_id(
    registry: RegistryClient, subject: str, stack_settings: Settings
) -> None:
    """Writers name their schema by id; a reader resolves the id to the writer's schema and
    reads with its own: old and new readers and writers interoperate."""
    old = raw_schema(stack_settings)
    new = evolved(old, lambda s: s["fields"].append(OPTIONAL))
    old_id = registry.register(subject, old)
    assert registry.check(subject, new) == []
    new_id = registry.register(subject, new)
    assert new_id != old_id and registry.versions(subject) == [1, 2]
    record = {
        "instrument": "BTC-USDT", "exchange": "binance", "symbol": "BTCUSDT", "channel": "trade",
        "receive_time_ns": 1_700_000_000_000_000_000, "connection_id": "c", "connection_seq": 1,
        "payload": b"{}",
    }  # fmt: skip
    old_bytes, new_bytes = _write(old, record), _write(new, {**record, "venue_region": "eu"})
    # a new reader of an old record, an old reader of a new one: writer schemas by id
    assert _read(old_bytes, registry.schema(old_id), new) == {**record, "venue_region": None}
    assert _read(new_bytes, registry.schema(new_id), old) == record


@pytest.mark.parametrize(
    "change",
    ["a field removed without a default", "a field's type changed", "a required field added"],
)
def test_an_incompatible_change_is_refused_with_the_reason(
    registry: RegistryClient, subject: str, stack_settings: Settings, change: str
) -> None:
    old = raw_schema(stack_settings)
    edits = {
        "a field removed without a default": lambda s: s["fields"].pop(),
        "a field's type changed": lambda s: s["fields"][6].update(type="string"),
        "a required field added": lambda s: s["fields"].append(
            {"name": "venue_region", "type": "string"}
        ),
    }
    bad = evolved(old, edits[change])
    registry.register(subject, old)
    assert registry.check(subject, bad) != []
    with pytest.raises(IncompatibleSchema) as refused:
        registry.register(subject, bad)
    message = str(refused.value)
    assert subject in message and "Incompatible" in message, message
    assert registry.versions(subject) == [1]


def test_anonymous_and_wrong_credentials_are_refused(stack_settings: Settings) -> None:
    config = stack_settings.registry
    assert config.password, "the local stack generates the registry's password"
    request = urllib.request.Request(config.url + "/apis/ccompat/v7/subjects")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(request, timeout=10)
    assert anonymous.value.code == 401
    wrong = RegistryClient(dataclasses.replace(config, password=config.password + "x"))
    with pytest.raises(RegistryError) as refused:
        wrong.subjects()
    assert refused.value.status == 401


# --- writers and readers resolving ids through this registry (docs/schemas.md) ------------


def test_old_and_new_writers_on_one_topic_give_the_core_the_same_books(
    registry: RegistryClient, subject: str, stack_settings: Settings
) -> None:
    """A v1 and a v2 writer (an optional field added) frame their records with the ids the
    registry gave their schemas; the job's core, built with v1, learns each id from the
    registry when it first meets it and publishes what the schemaless records give."""
    from jobs.core_schemas import learning
    from schemas.codec import decode_envelope, frame
    from schemas.writers import registry_writer_schemas
    from tests.unit.core_driver import Core, binance, bn_snapshot, bn_trade

    v1 = raw_schema(stack_settings)
    v2 = evolved(v1, lambda s: s["fields"].append(OPTIONAL))
    v1_id, v2_id = registry.register(subject, v1), registry.register(subject, v2)
    t0 = 1_700_000_000_000
    plain = [
        binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), t0),
        binance("trade", bn_trade(7, "1.05", "0.5", t0 + 2500), t0 + 2600),
    ]

    def v2_writer(value: bytes) -> bytes:
        env = decode_envelope(value)
        record = {**dataclasses.asdict(env), "venue_region": "eu-west-1"}
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(v2)), record)
        return frame(v2_id, buf.getvalue())

    def run(values: list[bytes]) -> list[Any]:
        core, writers = Core("BNB-BTC"), registry_writer_schemas(stack_settings.registry)
        outs = [learning(writers, lambda v=v: core.process(v, t0 - 2000)) for v in values]
        outs.append(core.advance(2**63 - 1))
        return [(o.records, o.rows) for o in outs]

    expected = run(plain)
    assert run([frame(v1_id, plain[0]), v2_writer(plain[1])]) == expected
    assert run([v2_writer(plain[0]), frame(v1_id, plain[1])]) == expected
    # and the Python codec, as the archive and the backfill's dead letters read them
    writers = registry_writer_schemas(stack_settings.registry)
    assert decode_envelope(v2_writer(plain[0]), writers) == decode_envelope(plain[0])


def test_a_writer_whose_schema_is_not_registered_does_not_start(
    registry: RegistryClient, stack_settings: Settings
) -> None:
    """Writers never register: a connector framing records with a schema the raw topic's
    subject does not hold stops before it writes anything."""
    from connectors.producer import ProducerFatalError, raw_schema_id

    framed = dataclasses.replace(
        stack_settings, kafka=dataclasses.replace(stack_settings.kafka, raw_framing="confluent")
    )
    schema_id = raw_schema_id(framed)
    assert (
        schema_id
        == registry.lookup(f"{stack_settings.kafka.raw_topic}-value", raw_schema(stack_settings))[0]
    )  # type: ignore[index]
    with pytest.raises(ProducerFatalError, match="is not registered"):
        raw_schema_id(framed, topic=f"test-{uuid.uuid4().hex[:8]}-unregistered")
    schemaless = dataclasses.replace(
        stack_settings, kafka=dataclasses.replace(stack_settings.kafka, raw_framing="schemaless")
    )
    assert raw_schema_id(schemaless) is None
