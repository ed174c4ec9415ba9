"""Serialization benchmark: per-message cost of the raw envelope and of the job taking it.

    python -m bench.serialization [--messages 20000] [--repeats 3]

Input: N raw envelopes of all three exchanges generated offline by
``bench.book_pipeline.generate`` (the simulator's venues wrapped by the connectors' own code:
the real mix of depth, trade and snapshot frames).

Timed per message (``perf_counter_ns`` around each call; the timer's own cost is reported):

1. the envelope, encode + decode, in the format the project uses and the alternatives:
   ``fastavro`` schemaless (``schemas.codec``, what connectors and job do), stdlib ``json`` and
   ``orjson`` (payload as base64: JSON has no bytes), ``msgspec`` JSON (typed struct, bytes as
   base64) and ``msgspec`` MessagePack (typed struct, bytes native); and the job's key
   selector, ``schemas.codec.envelope_instrument`` (the instrument without decoding);
2. the job taking it: the compiled core (``jobs/native``, configured as the job is) given the
   encoded envelope in a one-frame bundle (envelope decode, payload parse with exact decimals,
   the book and the analytics it feeds), over the generated mix in stream order, per
   exchange/channel, next to an untyped ``orjson.loads`` of the payload for scale;
3. the whole path a message pays: encode (connector) + the core taking it, over the generated
   mix: the figure for the "serialization < 100 us/message" target (an upper bound: the core's
   figure includes the book work, not only decoding and parsing).

The envelope cases are run ``--repeats`` times over all messages after one unreported pass;
the core's once, in stream order, on a core that has seen nothing before (a frame applies
once). P50 / P99 / P99.9 are over every timed call. Results: bench/results/serialization.json.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import msgspec
import orjson

from bench.stats import (
    fmt_summary,
    histogram,
    machine,
    summarize,
    target_entry,
    timer_overhead_ns,
    write_results,
)
from jobs.operators import native_stream
from schemas.bundles import frame_bundle
from schemas.codec import (
    SCHEMA_DIR,
    RawEnvelope,
    decode_envelope,
    encode_envelope,
    envelope_instrument,
    frame,
)
from schemas.writers import WriterSchemas
from tickflow.config import Settings, load_settings
from tickflow.instruments import nbbo_group

NAME = "serialization"
DEFAULT_MESSAGES = 20_000
DEFAULT_REPEATS = 3
TARGET_US = 100.0  # issue 7: serialization < 100 us per message


# -- the envelope formats -----------------------------------------------------------------------


class EnvelopeStruct(msgspec.Struct, array_like=False):
    """The RawEnvelope as a msgspec struct (same fields, same order)."""

    instrument: str
    exchange: str
    symbol: str
    channel: str
    receive_time_ns: int
    connection_id: str
    connection_seq: int
    payload: bytes


def to_struct(env: RawEnvelope) -> EnvelopeStruct:
    return EnvelopeStruct(
        env.instrument, env.exchange, env.symbol, env.channel, env.receive_time_ns,
        env.connection_id, env.connection_seq, env.payload,
    )


def from_struct(s: EnvelopeStruct) -> RawEnvelope:
    return RawEnvelope(
        s.instrument, s.exchange, s.symbol, s.channel, s.receive_time_ns, s.connection_id,
        s.connection_seq, s.payload,
    )


def _as_json_dict(env: RawEnvelope) -> dict[str, Any]:
    return {
        "instrument": env.instrument,
        "exchange": env.exchange,
        "symbol": env.symbol,
        "channel": env.channel,
        "receive_time_ns": env.receive_time_ns,
        "connection_id": env.connection_id,
        "connection_seq": env.connection_seq,
        "payload": base64.b64encode(env.payload).decode(),
    }


def _from_json_dict(d: dict[str, Any]) -> RawEnvelope:
    return RawEnvelope(**{**d, "payload": base64.b64decode(d["payload"])})


_msgspec_json_enc = msgspec.json.Encoder()
_msgspec_json_dec = msgspec.json.Decoder(EnvelopeStruct)
_msgpack_enc = msgspec.msgpack.Encoder()
_msgpack_dec = msgspec.msgpack.Decoder(EnvelopeStruct)


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[RawEnvelope], bytes]
    decode: Callable[[bytes], RawEnvelope]
    note: str


# framed records (Confluent's framing: docs/schemas.md) of this build's schema and of one with an
# optional field added, under ids of their own: what the local stack's connectors write
FRAMED_V1_ID, FRAMED_V2_ID = 990_001, 990_002
_V1_TEXT = (SCHEMA_DIR / "raw_envelope.avsc").read_text()
_V2_SCHEMA = json.loads(_V1_TEXT)
_V2_SCHEMA["fields"].append({"name": "venue_region", "type": ["null", "string"], "default": None})
_V2_PARSED = fastavro.parse_schema(_V2_SCHEMA)
_WRITERS = WriterSchemas({FRAMED_V1_ID: _V1_TEXT, FRAMED_V2_ID: json.dumps(_V2_SCHEMA)}.get)


def encode_v2(env: RawEnvelope) -> bytes:
    """The envelope as a writer of the evolved schema writes it, framed."""
    buf = io.BytesIO()
    fields = {name: getattr(env, name) for name in env.__dataclass_fields__}
    fastavro.schemaless_writer(buf, _V2_PARSED, {**fields, "venue_region": "eu-west-1"})
    return frame(FRAMED_V2_ID, buf.getvalue())


CODECS: tuple[Codec, ...] = (
    Codec("fastavro_schemaless", encode_envelope, decode_envelope, "schemas.codec (in use)"),
    Codec(
        "fastavro_framed",
        lambda e: encode_envelope(e, FRAMED_V1_ID),
        lambda b: decode_envelope(b, _WRITERS),
        "schemas.codec framed with a schema id (the local stack's connectors)",
    ),
    Codec(
        "json_stdlib",
        lambda e: json.dumps(_as_json_dict(e)).encode(),
        lambda b: _from_json_dict(json.loads(b)),
        "payload base64",
    ),
    Codec(
        "orjson",
        lambda e: orjson.dumps(_as_json_dict(e)),
        lambda b: _from_json_dict(orjson.loads(b)),
        "payload base64",
    ),
    Codec(
        "msgspec_json",
        lambda e: _msgspec_json_enc.encode(to_struct(e)),
        lambda b: from_struct(_msgspec_json_dec.decode(b)),
        "typed struct, payload base64",
    ),
    Codec(
        "msgspec_msgpack",
        lambda e: _msgpack_enc.encode(to_struct(e)),
        lambda b: from_struct(_msgpack_dec.decode(b)),
        "typed struct, payload bytes",
    ),
)


# -- timing -------------------------------------------------------------------------------------


def time_calls(
    fn: Callable[[Any], object], items: Sequence[Any], repeats: int, warmup: bool = True
) -> list[float]:
    """Wall time of ``fn(item)`` for every item, ``repeats`` times (after one untimed pass
    unless ``warmup`` is off), in microseconds. The garbage collector is paused while timing
    (run between passes)."""
    if warmup:
        for item in items:
            fn(item)
    clock = time.perf_counter_ns
    out: list[float] = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            for item in items:
                t0 = clock()
                fn(item)
                out.append((clock() - t0) / 1000)
        finally:
            gc.enable()
    return out


def case(samples: list[float], **extra: Any) -> dict[str, Any]:
    return {"us": summarize(samples, 3), **extra}


def roundtrip(codec: Codec) -> Callable[[RawEnvelope], RawEnvelope]:
    def run(env: RawEnvelope) -> RawEnvelope:
        return codec.decode(codec.encode(env))

    return run


class JobCore:
    """The compiled core as the job runs it, given one encoded envelope per call."""

    def __init__(self, settings: Settings) -> None:
        self.core = native_stream(settings.book, settings.analytics, settings.redis.key_prefix)
        self.equivalents = settings.analytics.quote_equivalents

    def take(self, value: bytes) -> None:
        key = nbbo_group(envelope_instrument(value), self.equivalents)
        self.core.process_bundle(key, frame_bundle([(value, 0)]), 0, 0)
        self.core.take_blob()
        self.core.take_redis(0)


def pipeline_path(settings: Settings, envelopes: list[RawEnvelope]) -> list[float]:
    """Microseconds per message from connector to job: encode, then the core taking it."""
    core = JobCore(settings)
    return time_calls(lambda env: core.take(encode_envelope(env)), envelopes, 1, warmup=False)


def generated_envelopes(settings: Settings, messages: int) -> tuple[list[RawEnvelope], float]:
    # imported here: the generator pulls in the simulator and connectors
    from tickflow.generated import MIXES, book_settings, generate

    gen = generate(book_settings(settings, MIXES["all"]), MIXES["all"], messages)
    return gen.envelopes, gen.seconds


def run(messages: int, repeats: int, command: str) -> dict[str, Any]:
    settings = load_settings()
    envelopes, gen_s = generated_envelopes(settings, messages)
    by_kind: dict[str, list[RawEnvelope]] = defaultdict(list)
    for env in envelopes:
        by_kind[f"{env.exchange}/{env.channel}"].append(env)
    sizes = sorted(len(encode_envelope(e)) for e in envelopes)
    overhead = timer_overhead_ns()
    print(
        f"{len(envelopes)} generated envelopes ({gen_s:.1f} s), "
        f"{dict(sorted((k, len(v)) for k, v in by_kind.items()))}; "
        f"timer overhead {overhead:.0f} ns per sample",
        flush=True,
    )
    result: dict[str, Any] = {
        "command": command,
        "conditions": {
            "messages": len(envelopes),
            "repeats": repeats,
            "per_kind": {k: len(v) for k, v in sorted(by_kind.items())},
            "envelope_bytes": {"p50": sizes[len(sizes) // 2], "max": sizes[-1]},
            "timer_overhead_ns": overhead,
            "timing": "perf_counter_ns per call, GC paused while timing, one warm-up pass",
            "versions": {
                "msgspec": msgspec.__version__,
                "orjson": orjson.__version__,
                "fastavro": __import__("fastavro").__version__,
            },
            "machine": machine(),
        },
        "envelope": {},
        "payload_generated": {},
    }

    print("envelope encode + decode (per message):")
    for codec in CODECS:
        sample = envelopes[0]
        if codec.decode(codec.encode(sample)) != sample:
            raise RuntimeError(f"{codec.name} does not round-trip a RawEnvelope")
        encoded = [codec.encode(e) for e in envelopes]
        sizes_c = sorted(len(b) for b in encoded)
        entry = case(
            time_calls(roundtrip(codec), envelopes, repeats),
            encode=summarize(time_calls(codec.encode, envelopes, 1), 3),
            decode=summarize(time_calls(codec.decode, encoded, 1), 3),
            bytes_p50=sizes_c[len(sizes_c) // 2],
            note=codec.note,
        )
        result["envelope"][codec.name] = entry
        print(f"  {codec.name:>20}: {fmt_summary(entry['us'], 'us')}  ({codec.note})")
    encoded = [encode_envelope(e) for e in envelopes]
    key = case(time_calls(envelope_instrument, encoded, repeats), note="the job's key selector")
    result["envelope"]["instrument_key_read"] = key
    print(f"  {'instrument_key_read':>20}: {fmt_summary(key['us'], 'us')}")

    print("the job taking it: the compiled core, one-frame bundles, in stream order:")
    core = JobCore(settings)
    taken = {id(e): us for e, us in zip(
        envelopes, time_calls(core.take, encoded, 1, warmup=False), strict=True
    )}  # fmt: skip
    for kind, envs in sorted(by_kind.items()):
        entry = case(
            [taken[id(e)] for e in envs],
            orjson_loads=summarize(time_calls(orjson.loads, [e.payload for e in envs], 1), 3),
        )
        result["payload_generated"][kind] = entry
        print(f"  {kind:>20}: {fmt_summary(entry['us'], 'us')}")

    print("the core taking schemaless and framed envelopes (same stream, a fresh core each):")
    import tickflow_native

    _WRITERS.teach(tickflow_native.learn_writer_schema, [FRAMED_V1_ID, FRAMED_V2_ID])
    result["core_framing"] = {}
    for name, values in (
        ("schemaless", encoded),
        ("framed_same_schema", [frame(FRAMED_V1_ID, v) for v in encoded]),
        ("framed_evolved_schema", [encode_v2(e) for e in envelopes]),
    ):
        entry = case(time_calls(JobCore(settings).take, values, 1, warmup=False))
        result["core_framing"][name] = entry
        print(f"  {name:>22}: {fmt_summary(entry['us'], 'us')}")

    path = pipeline_path(settings, envelopes)
    result["pipeline_path"] = case(
        path, note="encode_envelope + the compiled core taking the message, per generated message"
    )
    result["histograms"] = {
        "pipeline path (encode + core), us": histogram(path),
        "fastavro envelope encode+decode, us": histogram(
            time_calls(roundtrip(CODECS[0]), envelopes, 1)
        ),
    }
    p99 = result["pipeline_path"]["us"]["p99"]
    print(f"pipeline path per message: {fmt_summary(result['pipeline_path']['us'], 'us')}")
    result["targets"] = {
        "serialization_per_message": target_entry(
            p99,
            "us",
            what="P99 of encode (fastavro schemaless) + the compiled core taking the message "
            "(decode, parse, book) per message",
            messages=len(envelopes),
            mix=result["conditions"]["per_kind"],
            p50_us=result["pipeline_path"]["us"]["p50"],
            envelope_only_p99_us=result["envelope"]["fastavro_schemaless"]["us"]["p99"],
            cpus=result["conditions"]["machine"]["cpus"],
            load_1m=result["conditions"]["machine"]["load_1m"],
        )
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.serialization", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--out", type=Path, default=None)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    result = run(args.messages, args.repeats, " ".join(["python -m bench.serialization", *raw]))
    print(f"written to {write_results(NAME, result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
