"""The compiled core (``tickflow_native.NativeStream``) driven step by step for tests, as the
books operator drives it, with the watermark and the wall clock given explicitly; and the raw
frames the tests feed it, built as the exchanges write them.

    core = Core("BNB-BTC")
    out = core.process(binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), T0))
    out.records["nbbo"]        # what the result topics get (JSON, parsed)
    out.rows["trades"]         # the ClickHouse rows (values by column)
    core.book("binance", "BNBBTC")   # the book's last Redis write (its fields)
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.offline import CoreRun
from jobs.operators import native_stream
from jobs.replay import envelope_receive_time_ns
from jobs.sinks.clickhouse import decode_rows
from jobs.sinks.redis_books import book_key, nbbo_key
from schemas.bundles import CLICKHOUSE_ROWS, frame_bundle, sink_blob_sections, split_records
from schemas.codec import RawEnvelope, encode_envelope
from tickflow.config import Settings, load_settings

NO_WATERMARK = -(2**63)
END_OF_INPUT = 2**63 - 1
PREFIX = "tf"
# the guarded book write's ARGV, in order (jobs/sinks/redis_books.py)
BOOK_FIELDS = (
    "seq", "status", "reason", "bids", "asks", "event_time_ms", "receive_time_ns", "instrument",
    "publish_time_ns", "message", "version",
)  # fmt: skip


def core_settings(**book: Any) -> Settings:
    """The configured rules with one bar interval of 1 s, the given ``book`` overrides, and
    the Redis prefix ``PREFIX``."""
    settings = _configured()
    return dataclasses.replace(
        settings,
        book=dataclasses.replace(settings.book, **book),
        analytics=dataclasses.replace(settings.analytics, bar_intervals_ms=(1000,)),
        redis=dataclasses.replace(settings.redis, key_prefix=PREFIX),
    )


@functools.cache
def _configured() -> Settings:
    return load_settings()


@dataclasses.dataclass
class Published:
    """What one call into the core produced."""

    records: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    redis: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)

    def of(self, output: str) -> list[dict[str, Any]]:
        """The rows of a ClickHouse table, or the records of a Kafka output."""
        return self.rows.get(output) or self.records.get(output) or []

    def books(self) -> list[dict[str, str]]:
        """The book writes to Redis, in order."""
        return [fields for key, fields in self.redis if ":book:" in key]


class Core:
    """One instrument (NBBO group) of the books operator's core."""

    def __init__(self, key: str, settings: Settings | None = None) -> None:
        self.key = key
        self.settings = settings or core_settings()
        self.stream = native_stream(
            self.settings.book, self.settings.analytics, self.settings.redis.key_prefix
        )
        self.redis: dict[str, dict[str, str]] = {}  # the last write per Redis key

    def process(
        self,
        value: bytes,
        watermark: int = NO_WATERMARK,
        now_ms: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Published:
        """One frame (an encoded envelope; its Kafka timestamp = its receive time unless
        ``timestamp_ms`` is given, as it must be for a value that is not an envelope)."""
        timestamp = _receive_ms(value) if timestamp_ms is None else timestamp_ms
        now = timestamp if now_ms is None else now_ms
        self.stream.process_bundle(self.key, frame_bundle([(value, timestamp)]), watermark, now)
        return self._collect()

    def advance(self, watermark: int) -> Published:
        """The event-time timer: the watermark reached ``watermark``."""
        self.stream.advance(self.key, watermark)
        return self._collect()

    def housekeeping(self, now_ms: int) -> Published:
        """The processing-time tick at ``now_ms``: STALE books, resync retries."""
        self.stream.housekeeping(self.key, now_ms)
        return self._collect()

    def next_event_time_ms(self) -> int | None:
        due: int | None = self.stream.next_event_time_ms(self.key)
        return due

    def book(self, exchange: str, symbol: str) -> dict[str, str] | None:
        return self.redis.get(book_key(self.settings.redis.key_prefix, exchange, symbol))

    def nbbo(self, instrument: str) -> dict[str, str] | None:
        return self.redis.get(nbbo_key(self.settings.redis.key_prefix, instrument))

    def _collect(self) -> Published:
        out = Published()
        blob = self.stream.take_blob()
        if blob is not None:
            for kind, name, _, payload in sink_blob_sections(blob):
                if kind == CLICKHOUSE_ROWS:
                    out.rows.setdefault(name, []).extend(decode_rows(name, payload))
                else:
                    records = [json.loads(r) for r in split_records(payload)]
                    out.records.setdefault(name, []).extend(records)
        for is_nbbo, keys, args in self.stream.take_redis(0):
            texts = [a.decode() for a in args]
            if is_nbbo:  # version, message, then name and value pairs
                fields = dict(zip(texts[2::2], texts[3::2], strict=True))
                fields["version"] = texts[0]
            else:
                fields = dict(zip(BOOK_FIELDS, texts, strict=True))
            self.redis[keys[0]] = fields
            out.redis.append((keys[0], fields))
        return out


def _receive_ms(value: bytes) -> int:
    return envelope_receive_time_ns(value) // 1_000_000  # framed or not


def envelope(
    instrument: str, exchange: str, symbol: str, channel: str, frame: Any, rx_ms: int, seq: int = 0
) -> bytes:
    """An encoded raw envelope; ``frame``: the payload's bytes, or JSON to encode."""
    payload = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
    return encode_envelope(
        RawEnvelope(instrument, exchange, symbol, channel, rx_ms * 10**6, "c1", seq, payload)
    )


def levels(side: str) -> list[list[str]]:
    """A Redis book side (JSON text) as ``[[price, size], ...]``."""
    parsed: list[list[str]] = json.loads(side)
    return parsed


# --- Binance ------------------------------------------------------------------------------


def binance(channel: str, frame: Any, rx_ms: int, instrument: str = "BNB-BTC") -> bytes:
    return envelope(instrument, "binance", "BNBBTC", channel, frame, rx_ms)


def bn_snapshot(last_id: int, bids: list, asks: list) -> dict:
    return {"lastUpdateId": last_id, "bids": bids, "asks": asks}


def bn_depth(first: int, last: int, event_ms: int, bids: list, asks: list) -> dict:
    return {"e": "depthUpdate", "E": event_ms, "s": "BNBBTC", "U": first, "u": last,
            "b": bids, "a": asks}  # fmt: skip


def bn_trade(tid: int, price: str, qty: str, trade_ms: int, taker: str = "buy") -> dict:
    return {"e": "trade", "E": trade_ms, "s": "BNBBTC", "t": tid, "p": price, "q": qty,
            "T": trade_ms, "m": taker == "sell", "M": True}  # fmt: skip


# --- Coinbase -----------------------------------------------------------------------------


def rfc3339(ms: int) -> str:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def coinbase(channel: str, msg: Any, rx_ms: int, product: str = "BNB-BTC") -> bytes:
    return envelope(product, "coinbase", product, channel, msg, rx_ms)


def cb_l2(
    seq: int, ts_ms: int, bids: list, asks: list, kind: str = "update", product: str = "BNB-BTC"
) -> dict:
    updates = [
        {"side": side, "event_time": rfc3339(ts_ms), "price_level": p, "new_quantity": q}
        for side, side_levels in (("bid", bids), ("offer", asks))
        for p, q in side_levels
    ]
    return {"channel": "l2_data", "client_id": "", "timestamp": rfc3339(ts_ms),
            "sequence_num": seq,
            "events": [{"type": kind, "product_id": product, "updates": updates}]}  # fmt: skip


def cb_trade(seq: int, tid: str, price: str, size: str, trade_ms: int, taker: str) -> dict:
    maker = "SELL" if taker == "buy" else "BUY"  # market_trades names the maker's side
    trade = {"trade_id": tid, "product_id": "BNB-BTC", "price": price, "size": size,
             "side": maker, "time": rfc3339(trade_ms)}  # fmt: skip
    return {"channel": "market_trades", "client_id": "", "timestamp": rfc3339(trade_ms),
            "sequence_num": seq, "events": [{"type": "update", "trades": [trade]}]}  # fmt: skip


# --- whole streams ------------------------------------------------------------------------


def published_books(
    envelopes: Iterable[RawEnvelope], top_n: int = 1000
) -> tuple[dict[tuple[str, str], dict[str, str]], list[dict[str, Any]]]:
    """Envelopes as the connectors produce them, through the core as the job runs it: each
    book's last Redis write (its fields, up to ``top_n`` levels a side) by (exchange, symbol),
    and the resync requests sent to the connectors."""
    run = CoreRun(core_settings(top_n=top_n), bundle_frames=1)  # each frame processed at once
    run.feed((encode_envelope(e), e.receive_time_ns // 1_000_000) for e in envelopes)
    books = {}
    for key, args in run.redis.items():
        _, kind, *book = key.split(":", 3)
        if kind == "book":
            books[(book[0], book[1])] = dict(zip(BOOK_FIELDS, args, strict=True))
    return books, [json.loads(r) for r in run.records.get("control", [])]
