"""The pure parts of ``bench.offered_latency``: no servers, no clocks of their own.

- Templates: a pre-encoded raw envelope (Avro, ``schemas/codec.py``) whose time fields and
  trade ids are patched in place at produce time. Every patched field is fixed-width, so the
  Avro lengths never change: the envelope's ``receive_time_ns`` (a zig-zag varint of 9 bytes
  for any time between 2011 and 2116), the payload's event times (Binance 13-digit ms,
  Coinbase RFC 3339 with 9-digit nanoseconds, Kraken with 6-digit microseconds) and trade ids
  (16 digits in the simulator's numbering).
- Pacing: how many frames are due after a given time at a fixed rate.
- Summaries of per-second series (lag, achieved rate) and of a steady window.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import summarize, target_entry
from schemas.codec import _read_long

# patch kinds: what goes into the bytes at an offset of a template
RECEIVE_TIME = 0  # the envelope's receive_time_ns: 9-byte zig-zag varint
EPOCH_MS = 1  # Binance "E" / "T": 13 ASCII digits
RFC3339_NANOS = 2  # Coinbase: 2026-12-05T02:11:30.119000000Z
RFC3339_MICROS = 3  # Kraken: 2026-12-05T02:11:30.119000Z
TRADE_ID = 4  # the original id + the cycle's shift, same number of digits

HEADLINE_RATE = 50_000.0  # the latency target is at 50k frames/s offered

RECEIVE_TIME_WIDTH = 9
# time fields' widths, by kind
STAMP_WIDTH = {RECEIVE_TIME: RECEIVE_TIME_WIDTH, EPOCH_MS: 13, RFC3339_NANOS: 30,
               RFC3339_MICROS: 27}  # fmt: skip

# time fields in each exchange's payloads (the simulator's venues write exactly these)
_BINANCE_MS = re.compile(rb'"[ET]":(\d{13})(?=[,}])')
_COINBASE_TIME = re.compile(
    rb'"(?:timestamp|event_time|time)":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z)"'
)
_KRAKEN_TIME = re.compile(rb'"timestamp":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)"')
_TRADE_IDS = {
    "binance": re.compile(rb'"t":(\d+)(?=[,}])'),
    "coinbase": re.compile(rb'"trade_id":"(\d+)"'),
    "kraken": re.compile(rb'"trade_id":(\d+)(?=[,}])'),
}
# Coinbase's in-band snapshots stamp every level with the epoch: a constant, not a time
_COINBASE_EPOCH = b"1970-01-01T00:00:00Z"
_NANOS_PLACEHOLDER = b"2000-01-01T00:00:00.000000000Z"


def zigzag_varint(value: int) -> bytes:
    """Avro's encoding of a long."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def receive_time_offset(value: bytes) -> int:
    """Where ``receive_time_ns`` starts in an encoded RawEnvelope (after four strings:
    instrument, exchange, symbol, channel); its encoding must be ``RECEIVE_TIME_WIDTH``."""
    pos = 0
    for _ in range(4):
        length, pos = _read_long(value, pos)
        pos += length
    _, end = _read_long(value, pos)
    if end - pos != RECEIVE_TIME_WIDTH:
        raise ValueError(f"receive_time_ns takes {end - pos} bytes, not {RECEIVE_TIME_WIDTH}")
    return pos


def stamps(time_ns: int) -> dict[int, bytes]:
    """Every time field's bytes for one instant (computed once per pacing step)."""
    secs, nanos = divmod(time_ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode()
    return {
        RECEIVE_TIME: zigzag_varint(time_ns),
        EPOCH_MS: b"%013d" % (time_ns // 1_000_000),
        RFC3339_NANOS: base + b".%09dZ" % nanos,
        RFC3339_MICROS: base + b".%06dZ" % (nanos // 1000),
    }


Patch = tuple[int, int, int]  # (offset in the encoded envelope, kind, original trade id or 0)


def normalize_payload(exchange: str, payload: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The payload with every time field in its fixed-width form, and where the time fields
    and trade ids are: (offset in the payload, kind, original trade id or 0).

    Coinbase trims trailing zeros of its times (Go's RFC 3339 with nanoseconds): they are
    written with all nine digits here (which Coinbase also sends), so each has one width."""
    spans: list[tuple[int, int, int, int]] = []  # (start, end, kind, trade id)
    if exchange == "binance":
        spans += [(m.start(1), m.end(1), EPOCH_MS, 0) for m in _BINANCE_MS.finditer(payload)]
    elif exchange == "coinbase":
        spans += [
            (m.start(1), m.end(1), RFC3339_NANOS, 0)
            for m in _COINBASE_TIME.finditer(payload)
            if m.group(1) != _COINBASE_EPOCH
        ]
    elif exchange == "kraken":
        spans += [(m.start(1), m.end(1), RFC3339_MICROS, 0) for m in _KRAKEN_TIME.finditer(payload)]
    ids = _TRADE_IDS.get(exchange)
    if ids is not None:
        spans += [(m.start(1), m.end(1), TRADE_ID, int(m.group(1))) for m in ids.finditer(payload)]
    spans.sort()
    out = bytearray()
    patches: list[tuple[int, int, int]] = []
    pos = 0
    for start, end, kind, trade_id in spans:
        out += payload[pos:start]
        field = payload[start:end]
        if kind == RFC3339_NANOS:
            field = _NANOS_PLACEHOLDER
        patches.append((len(out), kind, trade_id))
        out += field
        pos = end
    out += payload[pos:]
    return bytes(out), patches


@dataclass(frozen=True, slots=True)
class Template:
    """One pre-encoded envelope of the pool and what to patch in it.

    ``fmt`` is the envelope as a bytes %-format with a ``%s`` at each patched field (a
    literal ``%`` doubled): one formatting per frame instead of a slice per field."""

    value: bytes  # the envelope as generated (receive time and payload fields normalised)
    fmt: bytes
    kinds: tuple[int, ...]  # the kind of each %s, in order
    trade_ids: tuple[tuple[int, int], ...]  # (index among the %s, original trade id)
    key: bytes
    partition: int
    patches: tuple[Patch, ...]  # (offset, kind, trade id), the receive time first


def make_template(
    value: bytes, payload_len: int, payload_patches: Iterable[tuple[int, int, int]],
    key: bytes, partition: int,
) -> Template:
    """A template of an encoded envelope whose payload (its last field, ``payload_len``
    bytes) has the time fields and trade ids ``payload_patches`` (payload offsets)."""
    base = len(value) - payload_len
    patches = [(receive_time_offset(value), RECEIVE_TIME, 0)]
    patches += [(base + off, kind, tid) for off, kind, tid in payload_patches]
    fmt = bytearray()
    pos = 0
    for offset, kind, trade_id in patches:
        fmt += value[pos:offset].replace(b"%", b"%%") + b"%s"
        pos = offset + (STAMP_WIDTH[kind] if kind != TRADE_ID else len(str(trade_id)))
    fmt += value[pos:].replace(b"%", b"%%")
    return Template(
        value=value,
        fmt=bytes(fmt),
        kinds=tuple(kind for _, kind, _ in patches),
        trade_ids=tuple((i, tid) for i, (_, kind, tid) in enumerate(patches) if kind == TRADE_ID),
        key=key,
        partition=partition,
        patches=tuple(patches),
    )


@dataclass
class Pool:
    """One replay cycle: [sync_lost per book (cycles after the first)], each book's opening
    snapshot, then the market frames in time order."""

    lost: list[Template]
    opening: list[Template]
    market: list[Template]
    books: int
    generated_seconds: float

    def cycle(self, k: int) -> list[Template]:
        return (self.lost if k else []) + self.opening + self.market


def trade_id_digits(trade_id: int) -> int:
    return len(str(trade_id))


def patched(
    template: Template,
    stamp: dict[int, bytes],
    trade_shift: int,
    fields_cache: dict[tuple[int, ...], tuple[bytes, ...]] | None = None,
) -> bytes:
    """The template's envelope with every time field at ``stamp`` and every trade id shifted
    by ``trade_shift`` (a replay cycle's: its trades are new trades, not re-sent ones).

    ``fields_cache``: one per ``stamp`` (the time fields of each kind sequence, built once)."""
    kinds = template.kinds
    fields = None if fields_cache is None else fields_cache.get(kinds)
    if fields is None:
        fields = tuple(stamp.get(kind, b"") for kind in kinds)
        if fields_cache is not None:
            fields_cache[kinds] = fields
    if template.trade_ids:
        filled = list(fields)
        for index, trade_id in template.trade_ids:
            filled[index] = b"%d" % (trade_id + trade_shift)
        fields = tuple(filled)
    return template.fmt % fields


def check_trade_ids(templates: Sequence[Template], max_shift: int) -> None:
    """Every trade id keeps its number of digits up to ``max_shift`` (fixed width)."""
    for t in templates:
        for _, kind, trade_id in t.patches:
            if kind == TRADE_ID and trade_id_digits(trade_id) != trade_id_digits(
                trade_id + max_shift
            ):
                raise ValueError(f"trade id {trade_id} changes width when shifted by {max_shift}")


# -- pacing ------------------------------------------------------------------------------------


def frames_due(rate: float, elapsed_s: float) -> int:
    """Frames that should have been offered ``elapsed_s`` after the start at ``rate``/s."""
    return int(rate * max(0.0, elapsed_s))


def seconds_until_next(rate: float, produced: int, elapsed_s: float, step_s: float) -> float:
    """How long to sleep before the next frame is due (at most one pacing step)."""
    return min(step_s, max(0.0, (produced + 1) / rate - elapsed_s))


# -- summaries ---------------------------------------------------------------------------------


def per_second(cumulative: Sequence[tuple[float, int]]) -> list[float]:
    """(seconds, cumulative count) samples -> count per second of each interval."""
    out = []
    for (t0, c0), (t1, c1) in itertools.pairwise(cumulative):
        if t1 > t0:
            out.append((c1 - c0) / (t1 - t0))
    return out


def window(samples: Sequence[tuple[float, Any]], start: float, end: float) -> list[Any]:
    """The values of (time, value) samples with start <= time < end."""
    return [v for t, v in samples if start <= t < end]


def rate_summary(
    cumulative: Sequence[tuple[float, int]], offered: float, start: float, end: float
) -> dict[str, Any]:
    """The achieved rate over [start, end) of (seconds, cumulative count) samples against the
    offered rate: mean, each second's spread, and how far it fell behind."""
    inside = [(t, c) for t, c in cumulative if start <= t <= end]
    if len(inside) < 2:
        return {"seconds": 0.0}
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    achieved = (c1 - c0) / (t1 - t0)
    rates = per_second(inside)
    return {
        "seconds": round(t1 - t0, 1),
        "frames": c1 - c0,
        "achieved_per_s": round(achieved, 1),
        "achieved_over_offered": round(achieved / offered, 4) if offered else None,
        "per_second": summarize(rates, 1),
        "slowest_second_per_s": round(min(rates), 1) if rates else None,
    }


def lag_summary(samples: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """P50/P99/P99.9/max of a lag series, and its last value (a lag still growing at the end
    of the window has no steady value: the last value says so)."""
    out = summarize(samples, digits)
    if samples:
        out["last"] = round(samples[-1], digits)
    return out


def headline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's figures: P99 at 50k (or the highest rate below), lag P99 at the peak."""
    measured = [r for r in runs if r.get("book_update_ms", {}).get("seen_minus_receive", {})
                .get("p99") is not None and r["producer"].get("keeps_up")]  # fmt: skip
    targets: dict[str, Any] = {}
    at_or_below = [r for r in measured if r["offered_frames_per_s"] <= HEADLINE_RATE]
    if at_or_below:
        run = max(at_or_below, key=lambda r: r["offered_frames_per_s"])
        book = run["book_update_ms"]
        targets["e2e_latency_p99"] = target_entry(
            book["seen_minus_receive"]["p99"], "ms",
            what="Kafka record time (offer time) -> book write seen in Redis, P99, offered "
            "by a paced producer (bench.offered_latency); NBBO and ClickHouse apart",
            offered_frames_per_s=run["offered_frames_per_s"],
            p50_ms=book["seen_minus_receive"].get("p50"),
            p99_9_ms=book["seen_minus_receive"].get("p99_9"),
            publish_minus_receive_p99_ms=book["publish_minus_receive"].get("p99"),
            nbbo_p99_ms=run["nbbo_ms"]["seen_minus_receive"].get("p99"),
            every_rate_p99_ms={str(r["offered_frames_per_s"]):
                               r["book_update_ms"]["seen_minus_receive"]["p99"]
                               for r in measured},
            window_s=run["window_s"],
        )  # fmt: skip
    with_lag = [r for r in measured if r["consumer_lag"]["emit_event_time_lag_s"].get("n")]
    if with_lag:
        peak = max(with_lag, key=lambda r: r["offered_frames_per_s"])
        lag = peak["consumer_lag"]["emit_event_time_lag_s"]
        targets["consumer_lag_at_peak"] = target_entry(
            lag["p99"], "s",
            what="Kafka source currentEmitEventTimeLag (emit time - offer time), P99 of "
            "per-second samples, at the highest offered rate (bench.offered_latency)",
            offered_frames_per_s=peak["offered_frames_per_s"],
            last_s=lag.get("last"),
            records_behind_p99=peak["consumer_lag"]["pending_records"].get("p99"),
            records_behind_p99_s=peak["consumer_lag"]["pending_seconds_at_offered_rate"]
            .get("p99"),
            every_rate_p99_s={str(r["offered_frames_per_s"]):
                              r["consumer_lag"]["emit_event_time_lag_s"].get("p99")
                              for r in with_lag},
            window_s=peak["window_s"],
        )  # fmt: skip
    return targets
