"""Kraken spot WebSocket v2 connector: ``book`` (configured depth) and ``trade`` per pair.

After each (re)connect the subscribe requests go out ``subscribe_batch`` pairs at a time and
``message_interval_ms`` apart, so neither many pairs nor a reconnect storm bursts Kraken's
request limits (Cloudflare also limits connection attempts per IP: the base class backs off).
Every book subscription brings its own snapshot, so a reconnect rebuilds every book and
``resync(pair)`` is an unsubscribe + subscribe of that pair's book.

Frames: ``book`` -> envelope channel ``depth`` (snapshots and updates alike: the job tells
them apart by ``type``), ``trade`` -> ``trade``, keyed by the pair in ``data``. A frame whose
``data`` holds several pairs (Kraken sends one per book message, but trade messages are lists)
is split into one frame per pair, rebuilt as ``{"channel","type","data"}`` with each pair's
``data`` elements copied byte for byte; a single-pair frame is produced exactly as received.
``heartbeat`` and ``status`` frames and request replies are control frames: counted in
``control``, never produced, no dead letter, and they do not reset the stale timer. Only
the fields needed for routing are decoded (strings and integers: no price or quantity is ever
read here, so none can pass through a float). The exchange latency metric uses the first
``timestamp`` of an update's ``data`` (snapshots are skipped: a trade snapshot's are old).
Docs: https://docs.kraken.com/api/docs/websocket-v2/book
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from typing import Any

import msgspec
import orjson
from websockets.exceptions import ConnectionClosed

from connectors.base import Connection, Route, Sink, WsConnector
from connectors.metrics import ConnectorMetrics
from tickflow.config import Settings

log = logging.getLogger(__name__)

CHANNELS = {"book": "depth", "trade": "trade"}  # Kraken channel -> envelope channel
CONTROL_CHANNELS = frozenset({"heartbeat", "status"})


class _Element(msgspec.Struct):
    """One ``data`` element, read for its pair and time (other fields are skipped, not
    parsed)."""

    symbol: str = ""
    timestamp: str = ""  # event time, "2023-10-06T17:35:55.440295Z"; none on book snapshots


class _Head(msgspec.Struct):
    """What routing needs of any frame.

    Market data: {"channel":"book","type":"update","data":[{"symbol":"BTC/USD",...}]}
    Heartbeat:   {"channel":"heartbeat"}
    Status:      {"channel":"status","type":"update","data":[{"system":"online",...}]}
    Reply:       {"method":"subscribe","result":{...},"success":true,"time_in":..,...}
    """

    channel: str = ""  # book | trade | heartbeat | status; absent on replies
    type: str = ""  # snapshot | update
    method: str = ""  # subscribe | unsubscribe | pong: a reply to a request
    data: list[_Element] = []


class _Split(msgspec.Struct):
    """A market frame to split per pair: its elements as raw JSON."""

    channel: str
    type: str  # snapshot | update
    data: list[msgspec.Raw]


class _Result(msgspec.Struct):
    channel: str = ""  # book | trade
    symbol: str = ""  # the pair this ack is for (one ack per pair)
    depth: int | None = None  # book only


class _Reply(msgspec.Struct):
    """A request's reply.

    Ack:   {"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,
            "symbol":"ALGO/USD"},"success":true,"time_in":"2023-10-06T17:35:55.219022Z",
            "time_out":"2023-10-06T17:35:55.219067Z"}
    Error: {"error":"Currency pair not supported XYZ/USD","method":"subscribe","success":false,
            "symbol":"XYZ/USD","time_in":"..","time_out":".."}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/book (subscribe ack)
    """

    method: str
    success: bool = True  # a pong carries no success field
    error: str = ""
    symbol: str = ""  # on errors
    req_id: int | None = None
    result: _Result | None = None


_head_decoder = msgspec.json.Decoder(_Head)
_split_decoder = msgspec.json.Decoder(_Split)
_element_decoder = msgspec.json.Decoder(_Element)
_reply_decoder = msgspec.json.Decoder(_Reply)


class KrakenConnector(WsConnector):
    exchange = "kraken"

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        rng: random.Random | None = None,
        metrics: ConnectorMetrics | None = None,
    ) -> None:
        super().__init__(settings.connectors, sink, rng, metrics)
        self.config = settings.exchanges.kraken
        self.symbols = tuple(self.config.symbols)
        self.control: Counter[str] = Counter()  # control frames by kind (heartbeat, subscribe...)
        self.rejected: list[str] = []  # errors of refused requests, most recent last (bounded)
        self._req_ids = itertools.count(1)
        self._next_send_at = 0.0  # monotonic: when the next request may go out
        self._send_lock = asyncio.Lock()

    def url(self) -> str:
        return self.config.ws_url

    def book_symbols(self) -> tuple[str, ...]:
        return self.symbols

    def instrument(self, symbol: str) -> str:
        return self.config.instrument(symbol)

    # --- requests -------------------------------------------------------------------------

    def request(self, method: str, channel: str, symbols: list[str]) -> str:
        """A subscribe/unsubscribe request.

        Example: {"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],
                  "depth":10},"req_id":1}
        Docs: https://docs.kraken.com/api/docs/websocket-v2/book
        """
        params: dict[str, Any] = {"channel": channel, "symbol": symbols}
        if channel == "book":
            params["depth"] = self.config.book_depth
        return orjson.dumps(
            {"method": method, "params": params, "req_id": next(self._req_ids)}
        ).decode()

    async def _send(self, conn: Connection, message: str) -> None:
        """One request, at least ``message_interval_ms`` after the previous one."""
        async with self._send_lock:
            wait = self._next_send_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await conn.ws.send(message)
            self._next_send_at = time.monotonic() + self.config.message_interval_ms / 1000.0

    async def on_open(self, conn: Connection) -> None:
        self._next_send_at = 0.0  # a new connection starts with a fresh budget
        conn.spawn(self._subscribe_all(conn))

    async def _subscribe_all(self, conn: Connection) -> None:
        """Book and trade subscriptions for every pair, in staggered batches."""
        batch = self.config.subscribe_batch
        try:
            for i in range(0, len(self.symbols), batch):
                symbols = list(self.symbols[i : i + batch])
                for channel in ("book", "trade"):
                    await self._send(conn, self.request("subscribe", channel, symbols))
        except ConnectionClosed:
            pass  # the receive loop sees it too and reconnects, which subscribes again

    async def resync(self, symbol: str) -> None:
        """Resubscribe one pair's book on the current connection: Kraken sends a fresh
        snapshot. Without a connection there is nothing to do: the next one subscribes (and
        so snapshots) every pair."""
        conn = self.connection
        fields = {"symbol": symbol}
        if symbol not in self.config.symbols:
            log.warning("kraken: resync of %r ignored: not a configured pair", symbol, extra=fields)
            return
        if conn is None:
            log.info(
                "kraken: resync %s: no connection, the next one brings a snapshot", symbol,
                extra=fields,
            )
            return
        # Kraken handles a connection's requests in order: the subscribe follows the
        # unsubscribe, and an unsubscribe that finds nothing is answered with a harmless error
        await self._send(conn, self.request("unsubscribe", "book", [symbol]))
        await self._send(conn, self.request("subscribe", "book", [symbol]))

    # --- frames ---------------------------------------------------------------------------

    def route(self, frame: bytes) -> Route | None:
        """The pair and envelope channel of a single-pair market frame; None otherwise."""
        try:
            head = _head_decoder.decode(frame)
        except msgspec.DecodeError:
            return None
        envelope_channel = CHANNELS.get(head.channel)
        pairs = {e.symbol for e in head.data}
        if envelope_channel is None or len(pairs) != 1:
            return None
        (symbol,) = pairs
        return Route(symbol, envelope_channel) if symbol in self.config.symbols else None

    def dispatch(
        self, conn: Connection, frame: bytes, receive_time_ns: int
    ) -> list[tuple[Route, bytes]] | None:
        try:
            head = _head_decoder.decode(frame)
        except msgspec.DecodeError:
            return None
        if head.method:
            self._on_reply(frame, head.method)
            return []
        if head.channel in CONTROL_CHANNELS:
            self.control[head.channel] += 1
            return []
        envelope_channel = CHANNELS.get(head.channel)
        pairs = list(dict.fromkeys(e.symbol for e in head.data))  # in order of appearance
        if envelope_channel is None or not all(p in self.config.symbols for p in pairs):
            return None  # unknown channel or pair: a dead letter
        if head.type == "update":
            for element in head.data:
                if element.timestamp:
                    self.metrics.observe_latency_iso(receive_time_ns, element.timestamp)
                    break
        if len(pairs) == 1:
            return [(Route(pairs[0], envelope_channel), frame)]
        if not pairs:
            self.control["empty " + head.channel] += 1  # e.g. a trade snapshot of no trades
            return []
        return [
            (Route(pair, envelope_channel), payload) for pair, payload in self._split(frame)
        ]

    @staticmethod
    def _split(frame: bytes) -> list[tuple[str, bytes]]:
        """One frame per pair, each with that pair's ``data`` elements exactly as received."""
        message = _split_decoder.decode(frame)
        by_pair: dict[str, list[bytes]] = {}
        for raw in message.data:
            pair = _element_decoder.decode(raw).symbol
            by_pair.setdefault(pair, []).append(bytes(raw))
        prefix = b'{"channel":%s,"type":%s,"data":[' % (
            orjson.dumps(message.channel), orjson.dumps(message.type)
        )
        return [(pair, prefix + b",".join(parts) + b"]}") for pair, parts in by_pair.items()]

    def _on_reply(self, frame: bytes, method: str) -> None:
        try:
            reply = _reply_decoder.decode(frame)
        except msgspec.DecodeError:
            log.warning("kraken: unreadable %s reply: %.200r", method, frame)
            self.control["unreadable reply"] += 1
            return
        if reply.success:
            self.control[method] += 1
            return
        self.control[f"{method} error"] += 1
        self.rejected = [*self.rejected[-99:], f"{method} {reply.symbol}: {reply.error}"]
        # unsubscribing what a failed subscribe never set up is expected during a resync
        quiet = reply.error in ("Subscription Not Found", "Already subscribed")
        (log.info if quiet else log.error)(
            "kraken: %s %s refused: %s", method, reply.symbol or "", reply.error,
            extra={"symbol": reply.symbol or None},
        )
