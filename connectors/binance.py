"""Binance spot connector: combined diff-depth + trade streams and REST depth snapshots.

The connector does the network half of Binance's book sync: after each (re)connect it waits
for every symbol's first depth event on the new connection, then fetches a REST snapshot
(again while ``lastUpdateId`` < that event's ``U``) and produces it as a ``snapshot``
envelope behind the diffs already produced for that symbol. Diffs are never held back; the
Flink job applies the buffer/drop rules. The exchange latency metric reads the event time
``E`` of each frame by a byte search (the frame is not parsed here).
Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import orjson

from connectors.base import Connection, RestClient, Route, Sink, WsConnector
from connectors.metrics import ConnectorMetrics
from connectors.recorder import rest_response
from tickflow.config import Settings

log = logging.getLogger(__name__)

STREAM_PREFIX = b'{"stream":"'  # every combined-stream frame starts like this
EVENT_TIME = b'"E":'  # event time (ms) of depth and trade events: the first "E" of a frame


def event_time_ms(frame: bytes) -> int | None:
    """The event time ``E`` of a combined-stream frame, without parsing it:
    {"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,...}} -> 1672515782136."""
    start = frame.find(EVENT_TIME)
    end = frame.find(b",", start)  # E is never an event's last field
    if start < 0 or end < 0:
        return None
    try:
        return int(frame[start + len(EVENT_TIME) : end])
    except ValueError:
        return None


def depth_path(symbol: str, limit: int) -> str:
    """Path and query of a depth snapshot request (under ``rest_url``)."""
    return f"/api/v3/depth?symbol={symbol}&limit={limit}"


def depth_path_symbol(path_and_query: str) -> str | None:
    """The symbol of a depth snapshot request's path and query (``depth_path``), else None."""
    url = urlsplit(path_and_query)
    symbols = parse_qs(url.query).get("symbol") if url.path == "/api/v3/depth" else None
    return symbols[0] if symbols else None


def depth_weight(limit: int) -> int:
    """REST weight of ``GET /api/v3/depth`` by limit (5 / 25 / 50 / 250)."""
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


class WeightBudget:
    """Client-side view of the REST weight used in the last minute (Binance's limit is per IP)."""

    def __init__(self, limit_per_minute: int) -> None:
        self.limit = limit_per_minute
        self._spent: deque[tuple[float, int]] = deque()  # (monotonic time, weight)

    async def acquire(self, weight: int) -> None:
        while True:
            now = time.monotonic()
            while self._spent and self._spent[0][0] <= now - 60.0:
                self._spent.popleft()
            used = sum(w for _, w in self._spent)
            if used + weight <= self.limit or not self._spent:
                self._spent.append((now, weight))
                return
            wait = self._spent[0][0] + 60.0 - now
            log.warning("binance: REST weight budget spent (%d/min): waiting %.1fs", used, wait)
            await asyncio.sleep(wait)


@dataclass
class _Sync:
    """Book-sync state of one connection."""

    conn: Connection
    awaiting_first_depth: set[str]
    jobs: asyncio.Queue[tuple[str, int | None]] = field(default_factory=asyncio.Queue)


class BinanceConnector(WsConnector):
    exchange = "binance"

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        rng: random.Random | None = None,
        metrics: ConnectorMetrics | None = None,
    ) -> None:
        super().__init__(settings.connectors, sink, rng, metrics)
        self.config = settings.exchanges.binance
        self.symbols = tuple(self.config.symbols)
        self._routes: dict[bytes, Route] = {}
        for symbol in self.symbols:
            name = symbol.lower()
            self._routes[f"{name}@{self.config.depth_stream}".encode()] = Route(symbol, "depth")
            self._routes[f"{name}@trade".encode()] = Route(symbol, "trade")
        self.rest = RestClient(settings.connectors.rest_timeout_s)
        self._weights = WeightBudget(self.config.rest_weight_limit_1m)
        self._next_rest_at = 0.0  # monotonic; spaces snapshot requests (stagger)
        self._sync: _Sync | None = None

    def url(self) -> str:
        streams = "/".join(name.decode() for name in self._routes)
        return f"{self.config.ws_url}/stream?streams={streams}"

    def book_symbols(self) -> tuple[str, ...]:
        return self.symbols

    def instrument(self, symbol: str) -> str:
        return self.config.instrument(symbol)

    def route(self, frame: bytes) -> Route | None:
        if frame.startswith(STREAM_PREFIX):
            end = frame.find(b'"', len(STREAM_PREFIX))
            return self._routes.get(frame[len(STREAM_PREFIX) : end])
        try:  # not in Binance's usual key order: parse the whole frame to find out
            stream = orjson.loads(frame).get("stream")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return self._routes.get(stream.encode()) if isinstance(stream, str) else None

    def dispatch(
        self, conn: Connection, frame: bytes, receive_time_ns: int
    ) -> list[tuple[Route, bytes]] | None:
        route = self.route(frame)
        if route is None:
            return None
        event_ms = event_time_ms(frame)
        if event_ms is not None:
            self.metrics.observe_latency_ms(receive_time_ns, event_ms)
        return [(route, frame)]

    async def on_open(self, conn: Connection) -> None:
        self._sync = _Sync(conn, set(self.symbols))
        conn.spawn(self._snapshot_worker(self._sync))

    def on_frame(self, conn: Connection, route: Route, frame: bytes) -> None:
        sync = self._sync
        if route.channel != "depth" or sync is None or sync.conn is not conn:
            return
        if route.symbol not in sync.awaiting_first_depth:
            return
        sync.awaiting_first_depth.discard(route.symbol)
        try:
            first_update_id = int(orjson.loads(frame)["data"]["U"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning(
                "binance: first depth frame of %s has no U: %.200r", route.symbol, frame,
                extra={"symbol": route.symbol},
            )
            sync.awaiting_first_depth.add(route.symbol)  # try again with the next one
            return
        sync.jobs.put_nowait((route.symbol, first_update_id))

    async def resync(self, symbol: str) -> None:
        self.request_snapshot(symbol)

    def request_snapshot(self, symbol: str) -> None:
        """Fetch and produce a fresh snapshot of one symbol on the current connection.

        For resync requests (a gap detected downstream): only that symbol's book is rebuilt.
        """
        if self._sync is not None:
            self._sync.jobs.put_nowait((symbol, None))

    async def _snapshot_worker(self, sync: _Sync) -> None:
        while True:
            symbol, first_update_id = await sync.jobs.get()
            await self._snapshot(sync.conn, symbol, first_update_id)

    def produce_snapshot(
        self, conn: Connection, symbol: str, body: bytes, receive_time_ns: int
    ) -> None:
        """A usable REST depth body as the ``snapshot`` envelope, behind the diffs so far."""
        self.emit(conn, symbol, "snapshot", body, receive_time_ns)
        self.metrics.frame("snapshot")
        self.stats.snapshots += 1

    def handle_recorded(self, conn: Connection, frame: bytes, receive_time_ns: int) -> Connection:
        """A recorded frame, or a recorded snapshot response: only usable ones were produced
        (and recorded), so each is produced again, under the symbol it was requested for."""
        response = rest_response(frame)
        if response is None:
            return super().handle_recorded(conn, frame, receive_time_ns)
        path, body = response
        symbol = depth_path_symbol(path)
        if symbol is None or symbol not in self.symbols:
            raise ValueError(f"not a depth snapshot of a configured symbol: {path}")
        self.produce_snapshot(conn, symbol, body, receive_time_ns)
        return conn

    async def _pace_rest(self, weight: int) -> None:
        """One snapshot request at a time, spaced out, within the weight budget."""
        wait = self._next_rest_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._weights.acquire(weight)
        self._next_rest_at = time.monotonic() + self.config.snapshot_stagger_ms / 1000.0

    async def _snapshot(self, conn: Connection, symbol: str, first_update_id: int | None) -> None:
        limit = self.config.snapshot_limit
        path = depth_path(symbol, limit)
        url = self.config.rest_url + path
        attempts = self.config.snapshot_max_attempts
        fields = {"symbol": symbol, "connection_id": conn.id}
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.stats.snapshot_retries += 1
                # grows like the reconnect backoff; Retry-After is handled by the RestClient
                await asyncio.sleep(
                    min(
                        self.lifecycle.backoff_max_s,
                        self.lifecycle.backoff_initial_s * 2 ** (attempt - 2),
                    )
                )
            await self._pace_rest(depth_weight(limit))
            try:
                result = await self.rest.get(url)
            except OSError as exc:  # URLError, timeouts, refused connections
                log.warning(
                    "binance: snapshot %s attempt %d failed: %r", symbol, attempt, exc,
                    extra=fields,
                )
                continue
            self.metrics.bytes += len(result.body)
            if result.status != 200:
                log.warning(
                    "binance: snapshot %s attempt %d: HTTP %d %.200r",
                    symbol,
                    attempt,
                    result.status,
                    result.body,
                    extra=fields,
                )
                continue
            try:
                last_update_id = int(orjson.loads(result.body)["lastUpdateId"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning(
                    "binance: snapshot %s is not a depth body: %.200r", symbol, result.body,
                    extra=fields,
                )
                continue
            if first_update_id is not None and last_update_id < first_update_id:
                log.info(
                    "binance: snapshot %s lastUpdateId %d < first U %d: fetching again",
                    symbol,
                    last_update_id,
                    first_update_id,
                    extra=fields,
                )
                continue
            self.produce_snapshot(conn, symbol, result.body, result.receive_time_ns)
            if self.recorder is not None:
                self.recorder.rest(result.receive_time_ns, path, result.body)
            log.info(
                "binance: snapshot %s lastUpdateId %d produced", symbol, last_update_id,
                extra=fields,
            )
            return
        self.stats.snapshot_failures += 1
        # without a snapshot the job cannot build this book; a new connection starts over
        conn.recycle(f"no usable {symbol} snapshot after {attempts} attempts")
