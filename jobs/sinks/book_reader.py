"""Read live books and NBBOs back from Redis: ``tickflow book BTC-USDT --exchange binance`` and
``tickflow watch`` (a terminal view that refreshes in place: the NBBO of every instrument,
then every book)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import redis

from jobs.sinks.redis_books import (
    LEASE_FIELD,
    book_key,
    effective_status,
    nbbo_key,
    redis_client,
)
from tickflow.config import RedisConfig, load_settings
from tickflow.instruments import UnknownInstrument, exchange_symbols, resolve_symbol


@dataclass(frozen=True)
class StoredBook:
    exchange: str
    symbol: str
    instrument: str
    status: str
    reason: str
    seq: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    event_time_ms: int
    receive_time_ns: int
    publish_time_ns: int


def _client(config: RedisConfig) -> redis.Redis:
    return redis_client(config, decode_responses=True)


def read_book(config: RedisConfig, exchange: str, symbol: str) -> StoredBook | None:
    data = _client(config).hgetall(book_key(config.key_prefix, exchange, symbol))
    return _decode(exchange, symbol, data) if data else None


def _decode(exchange: str, symbol: str, data: dict[str, str]) -> StoredBook:
    return StoredBook(
        exchange=exchange,
        symbol=symbol,
        instrument=data.get("instrument", ""),
        status=effective_status(
            data.get("status", ""), data.get(LEASE_FIELD), time.time_ns() // 1_000_000
        ),
        reason=data.get("reason", ""),
        seq=int(data.get("seq", -1)),
        bids=[(p, s) for p, s in orjson.loads(data.get("bids", "[]"))],
        asks=[(p, s) for p, s in orjson.loads(data.get("asks", "[]"))],
        event_time_ms=int(data.get("event_time_ms", 0)),
        receive_time_ns=int(data.get("receive_time_ns", 0)),
        publish_time_ns=int(data.get("publish_time_ns", 0)),
    )


def read_all_books(config: RedisConfig) -> list[StoredBook]:
    client = _client(config)
    books = []
    for key in sorted(client.smembers(f"{config.key_prefix}:books")):
        exchange, symbol = key.split(":")[-2:]
        data = client.hgetall(key)
        if data:
            books.append(_decode(exchange, symbol, data))
    return books


@dataclass(frozen=True)
class StoredNbbo:
    """An instrument's NBBO as the job wrote it; ``live``: while the job's lease holds."""

    instrument: str
    quote: str
    live: bool
    bid_price: str | None
    bid_size: str | None
    bid_venues: list[str]
    ask_price: str | None
    ask_size: str | None
    ask_venues: list[str]
    locked: bool
    crossed: bool
    venues: list[str]
    excluded: dict[str, str]
    event_time_ms: int
    receive_time_ns: int
    publish_time_ns: int


def _json(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return default


def _int(raw: str | None, default: int = 0) -> int:
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def decode_nbbo(instrument: str, data: dict[str, str], now_ms: int) -> StoredNbbo:
    """The fields of an NBBO hash (``redis_books``' layout), tolerant of missing ones."""
    return StoredNbbo(
        instrument=instrument,
        quote=data.get("quote", ""),
        live=effective_status("LIVE", data.get(LEASE_FIELD), now_ms) == "LIVE",
        bid_price=data.get("bid_price") or None,
        bid_size=data.get("bid_size") or None,
        bid_venues=[v for v in data.get("bid_venues", "").split(",") if v],
        ask_price=data.get("ask_price") or None,
        ask_size=data.get("ask_size") or None,
        ask_venues=[v for v in data.get("ask_venues", "").split(",") if v],
        locked=data.get("locked") == "1",
        crossed=data.get("crossed") == "1",
        venues=list(_json(data.get("venues"), [])),
        excluded=dict(_json(data.get("excluded"), {})),
        event_time_ms=_int(data.get("event_time_ms")),
        receive_time_ns=_int(data.get("receive_time_ns")),
        publish_time_ns=_int(data.get("publish_time_ns")),
    )


def read_nbbo(config: RedisConfig, instrument: str) -> StoredNbbo | None:
    """One instrument's NBBO (``live`` while the job's lease holds); None if Redis has none."""
    data = _client(config).hgetall(nbbo_key(config.key_prefix, instrument))
    return decode_nbbo(instrument, data, time.time_ns() // 1_000_000) if data else None


def read_all_nbbos(config: RedisConfig) -> list[StoredNbbo]:
    client = _client(config)
    head = nbbo_key(config.key_prefix, "")
    keys = sorted(k for k in client.smembers(f"{config.key_prefix}:nbbos") if k.startswith(head))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    now_ms = time.time_ns() // 1_000_000
    return [
        decode_nbbo(key[len(head) :], data, now_ms)
        for key, data in zip(keys, pipe.execute() if keys else [], strict=True)
        if data
    ]


def render_nbbos(nbbos: list[StoredNbbo]) -> str:
    """One line per instrument: best bid and ask with their venues, spread, flags, age."""
    now_ns = time.time_ns()
    lines = [
        f"  {'instrument':<12} {'bid venues':>18} {'bid size':>14} {'bid':>12} | "
        f"{'ask':<12} {'ask size':<14} {'ask venues':<18} {'spread':>10}  {'age ms':>8}"
    ]
    for n in nbbos:
        spread = ""
        if n.bid_price and n.ask_price:
            try:
                spread = str(Decimal(n.ask_price) - Decimal(n.bid_price))
            except InvalidOperation:
                spread = "?"
        flags = [f for f, on in (("CROSSED", n.crossed), ("LOCKED", n.locked),
                                 ("EXPIRED", not n.live)) if on]  # fmt: skip
        age = f"{(now_ns - n.publish_time_ns) / 1e6:,.0f}" if n.publish_time_ns else "-"
        lines.append(
            f"  {n.instrument:<12} {','.join(n.bid_venues):>18} {n.bid_size or '':>14} "
            f"{n.bid_price or '':>12} | {n.ask_price or '':<12} {n.ask_size or '':<14} "
            f"{','.join(n.ask_venues):<18} {spread:>10}  {age:>8}  {' '.join(flags)}"
        )
    return "\n".join(lines)


def render(book: StoredBook, depth: int) -> str:
    age_ms = (time.time_ns() - book.publish_time_ns) / 1e6 if book.publish_time_ns else float("nan")
    head = (
        f"{book.exchange}:{book.symbol} ({book.instrument})  {book.status}"
        f"{'  ' + book.reason if book.reason else ''}  seq={book.seq}  age={age_ms:,.0f} ms"
    )
    lines = [head, f"  {'bid size':>18} {'bid':>16} | {'ask':<16} {'ask size':<18}"]
    for i in range(depth):
        bid = book.bids[i] if i < len(book.bids) else ("", "")
        ask = book.asks[i] if i < len(book.asks) else ("", "")
        lines.append(f"  {bid[1]:>18} {bid[0]:>16} | {ask[0]:<16} {ask[1]:<18}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tickflow book", description=__doc__.split("\n")[0])
    parser.add_argument(
        "instrument", nargs="?",
        help="a canonical instrument (BTC-USD) or the exchange's own symbol (BTC/USD, BTCUSDT)",
    )
    parser.add_argument("--exchange", default="binance")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--watch", action="store_true", help="refresh every book in place")
    parser.add_argument("--interval", type=float, default=0.5, help="watch refresh, seconds")
    parser.add_argument("--seconds", type=float, default=0, help="watch: stop after (0: never)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if not args.watch:
        if not args.instrument:
            parser.error("name an instrument, or use --watch")
        try:
            symbol = resolve_symbol(
                exchange_symbols(settings.exchanges, args.exchange), args.instrument
            )
        except UnknownInstrument as exc:
            print(f"tickflow book: {exc}", file=sys.stderr)
            return 2
        book = read_book(settings.redis, args.exchange, symbol)
        if book is None:
            print(f"no book for {args.exchange}:{symbol} in Redis", file=sys.stderr)
            return 1
        print(render(book, args.depth))
        return 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            books = read_all_books(settings.redis)
            nbbos = read_all_nbbos(settings.redis)
            screen = "\n\n".join(render(b, min(args.depth, 5)) for b in books) or "no books yet"
            if nbbos:
                screen = f"NBBO\n{render_nbbos(nbbos)}\n\nbooks\n\n{screen}"
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            sys.stdout.write(f"tickflow books  {time.strftime('%H:%M:%S')}\n\n{screen}\n\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0
