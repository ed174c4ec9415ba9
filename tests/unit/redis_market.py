"""Books and NBBOs put in Redis as the job publishes them (the guarded writes of
``jobs/sinks/redis_books.py``, with the KEYS and ARGV the compiled core encodes), for tests of
what reads them: the dashboard, the book reader. ``test_dashboard`` also reads writes the core
made itself, so this layout cannot drift from the job's unnoticed."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson

from jobs.sinks.redis_books import VERSION_WIDTH, RedisBatch, book_key, nbbo_key, redis_client
from tickflow.config import RedisConfig

Levels = tuple[tuple[str, str], ...]  # (price, size) as the exchange wrote them, best first


@dataclasses.dataclass(frozen=True)
class Book:
    exchange: str
    symbol: str
    instrument: str
    version: int
    status: str = "LIVE"
    reason: str = ""
    seq: int = 0
    bids: Levels = ()
    asks: Levels = ()
    event_time_ms: int = 0
    receive_time_ns: int = 0

    def write(self, prefix: str) -> tuple[list[str], list[Any]]:
        keys = [
            book_key(prefix, self.exchange, self.symbol),
            f"{prefix}:books",
            f"{prefix}:book-updates",
        ]
        args: list[Any] = [
            self.seq, self.status, self.reason,
            orjson.dumps([list(level) for level in self.bids]),
            orjson.dumps([list(level) for level in self.asks]),
            self.event_time_ms, self.receive_time_ns, self.instrument, time.time_ns(),
            f"{self.exchange}:{self.symbol}:{self.seq}:{self.status}:{self.version}",
            f"{self.version:0{VERSION_WIDTH}d}",
        ]  # fmt: skip
        return keys, args


@dataclasses.dataclass(frozen=True)
class Nbbo:
    instrument: str
    quote: str
    version: int
    bid_price: str | None = None
    bid_size: str | None = None
    bid_venues: tuple[str, ...] = ()
    ask_price: str | None = None
    ask_size: str | None = None
    ask_venues: tuple[str, ...] = ()
    locked: bool = False
    crossed: bool = False
    venues: tuple[str, ...] = ()
    excluded: dict[str, str] = dataclasses.field(default_factory=dict)  # venue -> reason
    event_time_ms: int = 0
    receive_time_ns: int = 0

    def write(self, prefix: str) -> tuple[list[str], list[Any]]:
        keys = [nbbo_key(prefix, self.instrument), f"{prefix}:nbbos", f"{prefix}:nbbo-updates"]
        fields: dict[str, Any] = {
            "quote": self.quote,
            "bid_price": self.bid_price or "",
            "bid_size": self.bid_size or "",
            "bid_venues": ",".join(self.bid_venues),
            "ask_price": self.ask_price or "",
            "ask_size": self.ask_size or "",
            "ask_venues": ",".join(self.ask_venues),
            "locked": int(self.locked),
            "crossed": int(self.crossed),
            "venues": orjson.dumps(list(self.venues)),
            "excluded": orjson.dumps(self.excluded),
            "event_time_ms": self.event_time_ms,
            "receive_time_ns": self.receive_time_ns,
            "publish_time_ns": time.time_ns(),
        }
        args: list[Any] = [
            f"{self.version:0{VERSION_WIDTH}d}",
            f"{self.instrument}:{self.version}",
        ]
        for name, value in fields.items():
            args.extend((name, value))
        return keys, args


def publish(config: RedisConfig, *items: Book | Nbbo) -> list[bool]:
    """Write ``items`` in order; whether each was accepted (False: Redis had a newer one)."""
    client = redis_client(config)
    try:
        batch = RedisBatch(client)
        for item in items:
            batch.add_write(isinstance(item, Nbbo), *item.write(config.key_prefix))
        return batch.flush()
    finally:
        client.close()
