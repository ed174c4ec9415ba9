"""Avro codecs for the schemas in this folder (schemaless binary, one record per Kafka value)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parent


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


def encode_envelope(env: RawEnvelope) -> bytes:
    buf = io.BytesIO()
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


def decode_envelope(data: bytes) -> RawEnvelope:
    try:
        rec = fastavro.schemaless_reader(io.BytesIO(data), parsed_schema("raw_envelope"), None)
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

    Used as the Flink key selector: it runs once per record, so it must be cheap.
    """
    length, pos = _read_long(data, 0)
    if length < 0 or pos + length > len(data):
        raise EnvelopeError("RawEnvelope too short for its instrument field")
    return data[pos : pos + length].decode()
