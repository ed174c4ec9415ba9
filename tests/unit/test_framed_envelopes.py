"""Raw envelopes framed with their writer schema's registry id (docs/schemas.md), with no
server: the Python codec and the compiled core read records of this build's schema and of an
evolved one (an optional field added mid-record) into the same envelopes, books, rows and
records as schemaless ones; the key readers skip the frame header; an id the core has not
learned refuses the whole bundle until it is taught; an id with no schema is a dead letter."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
import tickflow_native

from jobs.core_schemas import learning
from jobs.replay import envelope_receive_time_ns
from schemas.codec import (
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    envelope_instrument,
    frame,
    framed_id,
)
from schemas.registry import SCHEMA_DIR
from schemas.writers import WriterSchemas
from tests.unit.core_driver import Core, binance, bn_snapshot, bn_trade, cb_l2, coinbase

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
V1 = (SCHEMA_DIR / "raw_envelope.avsc").read_text()
# ids far from what a registry hands out in the other tests of this process
V1_ID, V2_ID, UNREGISTERED_ID = 910_001, 910_002, 910_003


def v2_schema() -> str:
    """V1 with an optional field after ``receive_time_ns`` (the first five keep their place)."""
    schema = json.loads(V1)
    schema["fields"].insert(
        5, {"name": "venue_region", "type": ["null", "string"], "default": None}
    )
    return json.dumps(schema)


V2 = v2_schema()
REGISTRY = {V1_ID: V1, V2_ID: V2}


def writers() -> WriterSchemas:
    return WriterSchemas(REGISTRY.get)


def as_v2(value: bytes) -> bytes:
    """A schemaless envelope rewritten by a v2 writer, framed."""
    env = decode_envelope(value)
    record: dict[str, Any] = {name: getattr(env, name) for name in env.__dataclass_fields__}
    record["venue_region"] = "ap-northeast-1"
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(V2)), record)
    return frame(V2_ID, buf.getvalue())


def frames() -> list[bytes]:
    return [
        binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0),
        coinbase("depth", cb_l2(1, T0, [["0.99", "1"]], [["1.12", "4"]], "snapshot"), T0 + 5),
        binance("trade", bn_trade(7, "1.05", "0.5", T0 + 2500), T0 + 2600),
    ]


def test_the_python_codec_reads_every_version_into_the_same_envelope() -> None:
    for value in frames():
        plain = decode_envelope(value)
        env_v1 = decode_envelope(value)
        framed_v1 = encode_envelope(env_v1, V1_ID)
        assert framed_v1 == frame(V1_ID, value)
        assert framed_id(framed_v1) == V1_ID and framed_id(value) is None
        for framed in (framed_v1, as_v2(value)):
            assert decode_envelope(framed, writers()) == plain
            assert envelope_instrument(framed) == plain.instrument
            assert envelope_receive_time_ns(framed) == plain.receive_time_ns
    framed = frame(V1_ID, frames()[0])
    with pytest.raises(EnvelopeError, match=f"schema id {V1_ID} and no schema registry"):
        decode_envelope(framed)
    with pytest.raises(EnvelopeError, match=f"no schema with id {UNREGISTERED_ID}"):
        decode_envelope(frame(UNREGISTERED_ID, frames()[0]), writers())
    with pytest.raises(EnvelopeError, match="truncated schema id"):
        decode_envelope(b"\x00\x00\x01")
    with pytest.raises(EnvelopeError, match="truncated schema id"):
        envelope_instrument(b"\x00\x00")


def _run(values: list[bytes]) -> tuple[list[Any], list[Any], list[Any]]:
    """Records, rows and Redis writes of the frames through one core (taught as it asks)."""
    core = Core("BNB-BTC")
    taught = writers()
    outputs = [learning(taught, lambda v=value: core.process(v, T0 - 2000)) for value in values]
    outputs.append(core.advance(2**63 - 1))
    records = [out.records for out in outputs]
    rows = [out.rows for out in outputs]
    # the book writes without their publish time (wall clock)
    books = [
        {k: v for k, v in b.items() if k != "publish_time_ns"} for o in outputs for b in o.books()
    ]
    return records, rows, books


def test_the_core_gives_the_same_outputs_for_schemaless_and_framed_records_of_both_versions() -> (
    None
):
    plain = frames()
    schemaless = _run(plain)
    assert schemaless[0] and schemaless[2], "the frames publish records and books"
    assert _run([frame(V1_ID, v) for v in plain]) == schemaless
    assert _run([as_v2(v) for v in plain]) == schemaless
    # mixed: old and new writers on one topic
    assert _run([as_v2(plain[0]), frame(V1_ID, plain[1]), plain[2]]) == schemaless
    assert tickflow_native.knows_writer_schema(V1_ID)
    assert tickflow_native.knows_writer_schema(V2_ID)


def test_an_id_not_learned_refuses_the_whole_bundle_until_taught() -> None:
    core = Core("BNB-BTC")
    fresh_id = 910_100
    value = frame(fresh_id, frames()[0])
    assert not tickflow_native.knows_writer_schema(fresh_id)
    with pytest.raises(tickflow_native.UnknownWriterSchemas) as refused:
        core.process(value, T0 - 2000)
    assert refused.value.args[0] == [fresh_id]
    assert core.stream.take_blob() is None, "nothing of the bundle was applied"
    taught = WriterSchemas({fresh_id: V1}.get)
    out = learning(taught, lambda: core.process(value, T0 - 2000))
    assert out.books(), "taught, the bundle is applied"


def test_an_id_the_registry_does_not_have_is_a_dead_letter() -> None:
    core = Core("BNB-BTC")
    out = learning(
        writers(), lambda: core.process(frame(UNREGISTERED_ID, frames()[0]), T0 - 2000, T0, T0)
    )
    [letter] = out.records["deadletter"]
    assert f"no schema with id {UNREGISTERED_ID}" in letter["error"]
    assert not out.books()


def test_a_writer_schema_the_core_cannot_read_is_a_dead_letter_saying_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retyped = json.loads(V1)
    retyped["fields"][6]["type"] = "string"  # connection_seq: what the registry would refuse
    bad_id = 910_200
    core = Core("BNB-BTC")
    with caplog.at_level("WARNING"):
        out = learning(
            WriterSchemas({bad_id: json.dumps(retyped)}.get),
            lambda: core.process(frame(bad_id, frames()[0]), T0 - 2000, T0, T0),
        )
    [letter] = out.records["deadletter"]
    assert f"writer schema id {bad_id} cannot be read" in letter["error"]
    assert "connection_seq" in letter["error"]
    assert f"schema id {bad_id} are dead letters" in caplog.text


# --- result records as framed Avro (kafka.result_format: avro) ------------------------------


def test_result_records_written_as_avro_read_back_as_the_json_records() -> None:
    """The same frames through a core writing JSON and one writing framed Avro: each Avro
    record (by its topic's committed schema, framed with the id given) is the JSON record, and
    an evolved reader (an optional field added) reads it with the field's default."""
    from jobs.operators import RESULT_TABLES, native_stream
    from schemas.bundles import (
        KAFKA_RECORDS,
        frame_bundle,
        sink_blob_sections,
        split_record_values,
    )
    from tests.unit.core_driver import core_settings

    settings = core_settings()
    ids = {table: 920_000 + i for i, table in enumerate(RESULT_TABLES)}
    texts = {t: (SCHEMA_DIR / "results" / f"{t}.avsc").read_text() for t in RESULT_TABLES}

    def run(avro: bool) -> dict[str, list[bytes]]:
        core = native_stream(settings.book, settings.analytics, settings.redis.key_prefix)
        if avro:
            core.set_result_schemas([(t, ids[t], texts[t]) for t in RESULT_TABLES])
        out: dict[str, list[bytes]] = {}
        for value in frames():
            ts = envelope_receive_time_ns(value) // 1_000_000
            core.process_bundle("BNB-BTC", frame_bundle([(value, ts)]), T0 - 2000, ts)
        core.advance("BNB-BTC", 2**63 - 1)
        blob = core.take_blob()
        for kind, name, _count, payload in sink_blob_sections(blob):
            if kind == KAFKA_RECORDS and name in RESULT_TABLES:
                out.setdefault(name, []).extend(split_record_values(payload))
        return out

    as_json, as_avro = run(False), run(True)
    assert set(as_json) == set(RESULT_TABLES) == set(as_avro)
    for table in RESULT_TABLES:
        committed = fastavro.parse_schema(json.loads(texts[table]))
        evolved = json.loads(texts[table])
        evolved["fields"].append({"name": "region", "type": ["null", "string"], "default": None})
        newer = fastavro.parse_schema(evolved)
        assert len(as_avro[table]) == len(as_json[table])
        for text, value in zip(as_json[table], as_avro[table], strict=True):
            assert framed_id(value) == ids[table]
            body = io.BytesIO(value[5:])
            record = fastavro.schemaless_reader(body, committed, None)
            assert record == json.loads(text)
            again = fastavro.schemaless_reader(io.BytesIO(value[5:]), committed, newer)
            assert again == {**record, "region": None}


def test_a_result_schema_the_core_cannot_encode_is_refused_at_start() -> None:
    from jobs.operators import native_stream
    from tests.unit.core_driver import core_settings

    settings = core_settings()
    core = native_stream(settings.book, settings.analytics, settings.redis.key_prefix)
    with pytest.raises(ValueError, match="deadletter is not a result output"):
        core.set_result_schemas([("deadletter", 1, V1)])
    float_field = '{"type": "record", "name": "R", "fields": [{"name": "f", "type": "float"}]}'
    with pytest.raises(ValueError, match="nbbo: type float"):
        core.set_result_schemas([("nbbo", 1, float_field)])
