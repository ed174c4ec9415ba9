"""Avro codecs for the schemas in this folder (one record per Kafka value).

A raw envelope is schemaless (the Avro body alone) or framed with its writer schema's registry
id (Confluent's framing: byte 0, the id as 4 bytes big-endian, the body; docs/schemas.md). A
schemaless body starts with its instrument's length, never 0, so the first byte tells them
apart. A framed record is read with the schema its id names (``schemas.writers``), by Avro's
resolution rules, into this build's ``RawEnvelope``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol, cast

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = 0  # the first byte of a framed record
FRAME_HEADER_BYTES = 5  # magic byte and schema id


class WriterSchemaSource(Protocol):
    """Parsed writer schemas by registry id (``schemas.writers.WriterSchemas``)."""

    def parsed(self, schema_id: int) -> Any: ...


@cache
def parsed_schema(name: str) -> Any:
    """The parsed Avro schema ``schemas/<name>.avsc``."""
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))


@dataclass(frozen=True, slots=True)
class RawEnvelope:
    """A raw exchange frame with its receive metadata (see ``raw_envelope.avsc``)."""

    instrument: str
    exchange: str
    symbol: str
    channel: str
    receive_time_ns: int
    connection_id: str
    connection_seq: int
    payload: bytes

    @property
    def kafka_key(self) -> bytes:
        """Kafka record key: exchange and exchange symbol, so one book stays in one partition."""
        return f"{self.exchange}:{self.symbol}".encode()


def sync_lost_payload(reason: str, **detail: object) -> bytes:
    """Payload of a ``sync_lost`` envelope: a connector's marker that continuity broke for a
    symbol (a sequence gap, the connection ended) and its book must wait for a new snapshot.

    Example: {"reason": "sequence_num gap", "expected": 41, "got": 43}
    """
    return json.dumps({"reason": reason, **detail}).encode()


class EnvelopeError(ValueError):
    """A Kafka value is not a valid RawEnvelope."""


def frame(schema_id: int, body: bytes) -> bytes:
    """A record framed with its writer schema's registry id."""
    return bytes((MAGIC,)) + schema_id.to_bytes(4, "big") + body


def framed_id(data: bytes) -> int | None:
    """The writer schema id of a framed record, None for a schemaless one."""
    if len(data) >= FRAME_HEADER_BYTES and data[0] == MAGIC:
        return int.from_bytes(data[1:FRAME_HEADER_BYTES], "big")
    return None


def encode_envelope(env: RawEnvelope, schema_id: int | None = None) -> bytes:
    """The envelope as Avro binary, framed with ``schema_id`` (the id of this build's
    ``raw_envelope.avsc`` in the registry) when one is given."""
    buf = io.BytesIO()
    if schema_id is not None:
        buf.write(frame(schema_id, b""))
    fastavro.schemaless_writer(
        buf,
        parsed_schema("raw_envelope"),
        {
            "instrument": env.instrument,
            "exchange": env.exchange,
            "symbol": env.symbol,
            "channel": env.channel,
            "receive_time_ns": env.receive_time_ns,
            "connection_id": env.connection_id,
            "connection_seq": env.connection_seq,
            "payload": env.payload,
        },
    )
    return buf.getvalue()


def decode_envelope(data: bytes, writers: WriterSchemaSource | None = None) -> RawEnvelope:
    """A schemaless or framed envelope; a framed one needs ``writers`` to resolve its id."""
    reader = parsed_schema("raw_envelope")
    writer, body = reader, data
    if data[:1] == bytes((MAGIC,)):
        schema_id = framed_id(data)
        if schema_id is None:
            raise EnvelopeError(
                f"cannot decode RawEnvelope ({len(data)} bytes): truncated schema id"
            )
        if writers is None:
            raise EnvelopeError(
                f"cannot decode RawEnvelope ({len(data)} bytes): framed with writer schema id"
                f" {schema_id} and no schema registry to resolve it"
            )
        writer, body = writers.parsed(schema_id), data[FRAME_HEADER_BYTES:]
    try:
        rec = fastavro.schemaless_reader(
            io.BytesIO(body), writer, None if writer is reader else reader
        )
        return RawEnvelope(**cast(dict[str, Any], rec))
    except Exception as exc:  # fastavro raises several types on truncated/garbled input
        raise EnvelopeError(f"cannot decode RawEnvelope ({len(data)} bytes): {exc!r}") from exc


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro zig-zag varint at ``pos``: (value, next position)."""
    shift = acc = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise EnvelopeError("truncated varint in RawEnvelope")
        byte = data[pos]
        pos += 1
        acc |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7


def envelope_instrument(data: bytes) -> str:
    """The ``instrument`` field (the first) without decoding the whole record.

    Used as the Flink key selector: it runs once per record, so it must be cheap. A framed
    record's instrument is its body's first field too: every version of the schema keeps it
    first.
    """
    start = 0
    if data[:1] == bytes((MAGIC,)):
        if len(data) < FRAME_HEADER_BYTES:
            raise EnvelopeError("truncated schema id in RawEnvelope")
        start = FRAME_HEADER_BYTES
    length, pos = _read_long(data, start)
    if length < 0 or pos + length > len(data):
        raise EnvelopeError("RawEnvelope too short for its instrument field")
    return data[pos : pos + length].decode()
