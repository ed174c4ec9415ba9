"""Read live books back from Redis: ``tickflow book BTC-USDT --exchange binance`` and
``tickflow watch`` (a terminal view of every book that refreshes in place)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import orjson
import redis

from jobs.sinks.redis_books import book_key, redis_client
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
        status=data.get("status", ""),
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
            screen = "\n\n".join(render(b, min(args.depth, 5)) for b in books) or "no books yet"
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            sys.stdout.write(f"tickflow books  {time.strftime('%H:%M:%S')}\n\n{screen}\n\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0
