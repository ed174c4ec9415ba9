"""Coinbase Advanced Trade connector: level2 + market_trades + heartbeats on one connection.

After each (re)connect it subscribes one channel per message (level2 and market_trades for
every configured product, then heartbeats), spacing every subscribe/unsubscribe message by
``message_interval_ms`` (Coinbase allows about 8 unauthenticated messages/s per IP). Books need
no REST: a level2 subscription starts with an in-band snapshot.

Every message of a connection carries ``sequence_num`` (0, 1, 2, ... across all channels), and
the connector checks it before producing anything:
- the next number: produced;
- a jump (messages lost): a ``sync_lost`` envelope for every level2 product of the connection
  (a lost message cannot be attributed to one), then level2 is resubscribed product by product
  (unsubscribe + subscribe: a fresh snapshot each), paced; the frame itself is produced;
- a number already seen (a duplicate): dropped, never produced twice, and counted;
- a number declared lost by an earlier jump (it came late, out of order): produced, since its
  trades are real and its book update is dropped with the book's buffer at the next snapshot.
Heartbeats and ``subscriptions`` acknowledgements are counted, not produced, and do not reset
the stale timer. A frame whose events span several products is split into one frame per product
(same header and ``sequence_num``); Coinbase normally sends one product per message, which is
then produced byte for byte. The exchange latency metric uses a market-data message's
``timestamp`` (already decoded for routing).
Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed

from connectors.base import Connection, ConnectorStats, Route, Sink, WsConnector
from connectors.metrics import ConnectorMetrics
from schemas.codec import sync_lost_payload
from tickflow.config import Settings

log = logging.getLogger(__name__)

# Coinbase channel of a message -> envelope channel
CHANNELS = {"l2_data": "depth", "market_trades": "trade"}
SUBSCRIBED = ("level2", "market_trades")  # data channels subscribed for every product
LOST_RANGES_KEPT = 64  # recent gaps remembered to tell late messages from duplicates


@dataclass
class CoinbaseStats(ConnectorStats):
    heartbeats: int = 0  # heartbeats messages (not produced)
    acks: int = 0  # subscriptions messages (not produced)
    gaps: int = 0  # sequence_num jumps
    duplicates: int = 0  # sequence_num already seen: dropped
    late: int = 0  # sequence_num declared lost by an earlier jump, then received: produced
    sync_lost: int = 0  # sync_lost envelopes produced
    resubscribes: int = 0  # level2 unsubscribe + subscribe pairs queued (gaps and resyncs)
    split: int = 0  # frames split into one frame per product
    empty: int = 0  # market-data frames with no product in them (e.g. no recent trades)


@dataclass
class _Session:
    """Subscription and sequence state of one connection."""

    conn: Connection
    # (message, products whose level2 subscribe it is) in sending order
    outbox: asyncio.Queue[tuple[bytes, tuple[str, ...]]] = field(default_factory=asyncio.Queue)
    expected: int = 0  # the next sequence_num
    lost: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=LOST_RANGES_KEPT))
    queued: set[str] = field(default_factory=set)  # level2 resubscribes not yet sent
    awaiting: set[str] = field(default_factory=set)  # level2 subscribed, snapshot not yet seen


def subscribe_message(kind: str, channel: str, products: tuple[str, ...] = ()) -> bytes:
    """{"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"}; no products
    for heartbeats."""
    message: dict[str, Any] = {"type": kind}
    if products:
        message["product_ids"] = list(products)
    message["channel"] = channel
    return orjson.dumps(message)


def _sequence_num(frame: bytes) -> int | None:
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    seq = msg.get("sequence_num") if isinstance(msg, dict) else None
    return seq if isinstance(seq, int) else None


class CoinbaseConnector(WsConnector):
    exchange = "coinbase"

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        rng: random.Random | None = None,
        metrics: ConnectorMetrics | None = None,
    ) -> None:
        super().__init__(settings.connectors, sink, rng, metrics)
        self.config = settings.exchanges.coinbase
        self.products = tuple(self.config.symbols)
        self.stats = self.cb_stats = CoinbaseStats()
        self._state: _Session | None = None
        self._next_send_at = 0.0  # monotonic; spaces messages across connections too
        self._warned_products: set[str] = set()

    def url(self) -> str:
        return self.config.ws_url

    def book_symbols(self) -> tuple[str, ...]:
        return self.products

    def instrument(self, symbol: str) -> str:
        return self.config.instrument(symbol)

    # --- subscriptions --------------------------------------------------------------------

    async def on_open(self, conn: Connection) -> None:
        conn.spawn(self._send_paced(self._open_session(conn)))

    def _open_session(self, conn: Connection) -> _Session:
        """The connection's sequence state, its subscriptions queued (``_send_paced`` sends)."""
        session = _Session(conn)
        self._state = session
        for channel in SUBSCRIBED:
            completes = self.products if channel == "level2" else ()
            session.outbox.put_nowait(
                (subscribe_message("subscribe", channel, self.products), completes)
            )
        # keeps quiet subscriptions open (Coinbase closes them after 60-90 s otherwise)
        session.outbox.put_nowait((subscribe_message("subscribe", "heartbeats"), ()))
        return session

    def offline_connection(self) -> Connection:
        """With a session: recorded frames have their ``sequence_num`` checked as live."""
        conn = super().offline_connection()
        self._open_session(conn)
        return conn

    def handle_recorded(self, conn: Connection, frame: bytes, receive_time_ns: int) -> Connection:
        """``sequence_num`` 0 after others is the first message of a new connection (the
        recording's connection ended there): the old one's books are lost, as live."""
        session = self._state
        if session is not None and session.expected > 0 and _sequence_num(frame) == 0:
            self._books_lost(conn, f"connection {conn.id} ended", receive_time_ns)
            conn = self.offline_connection()
        return super().handle_recorded(conn, frame, receive_time_ns)

    async def _send_paced(self, session: _Session) -> None:
        interval = self.config.message_interval_ms / 1000.0
        with contextlib.suppress(ConnectionClosed):
            while True:
                message, completes = await session.outbox.get()
                wait = self._next_send_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                # before sending: the snapshot may be handled while send() awaits
                session.queued.difference_update(completes)
                session.awaiting.update(completes)
                await session.conn.ws.send(message.decode())
                self._next_send_at = time.monotonic() + interval

    def _resubscribe(self, session: _Session, product: str) -> None:
        """Unsubscribe + subscribe level2 for one product: a fresh snapshot follows."""
        if product in session.queued:
            return  # the queued subscribe is still ahead of us: its snapshot will do
        session.queued.add(product)
        session.outbox.put_nowait((subscribe_message("unsubscribe", "level2", (product,)), ()))
        session.outbox.put_nowait(
            (subscribe_message("subscribe", "level2", (product,)), (product,))
        )
        self.cb_stats.resubscribes += 1

    async def resync(self, symbol: str) -> None:
        """Rebuild one product's book: resubscribe its level2 (unless already under way)."""
        session = self._state
        fields = {"symbol": symbol}
        if session is None or session.conn is not self.connection:
            log.info(
                "coinbase: resync %s: not connected (a new connection subscribes anew)", symbol,
                extra=fields,
            )
            return
        if symbol not in self.config.symbols:
            log.warning("coinbase: resync of unknown product %s ignored", symbol, extra=fields)
            return
        if symbol in session.queued or symbol in session.awaiting:
            log.info(
                "coinbase: resync %s: a fresh snapshot is already on its way", symbol,
                extra=fields,
            )
            return
        self._resubscribe(session, symbol)

    # --- frames ---------------------------------------------------------------------------

    def route(self, frame: bytes) -> Route | None:
        """Product and channel of a one-product market-data frame (no sequence check)."""
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
        channel = CHANNELS.get(str(msg.get("channel"))) if isinstance(msg, dict) else None
        groups = self._by_product(msg) if channel is not None else None
        if channel is None or not groups or len(groups) != 1:
            return None
        (product,) = groups
        return Route(product, channel) if product in self.config.symbols else None

    def dispatch(
        self, conn: Connection, frame: bytes, receive_time_ns: int
    ) -> list[tuple[Route, bytes]] | None:
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(msg, dict):
            return None
        session = self._state if self._state and self._state.conn is conn else None
        seq = msg.get("sequence_num")
        if (
            session is not None
            and isinstance(seq, int)  # error messages carry none
            and not self._in_sequence(session, seq, receive_time_ns)
        ):
            return []  # a duplicate
        channel = msg.get("channel")
        if channel == "heartbeats":
            self.cb_stats.heartbeats += 1
            return []
        if channel == "subscriptions":
            self.cb_stats.acks += 1
            log.info("coinbase: subscribed to %s", msg.get("events"))
            return []
        out_channel = CHANNELS.get(str(channel))
        groups = self._by_product(msg) if out_channel is not None else None
        if groups is None or out_channel is None:
            return None  # errors and anything unknown: dead letters
        if not groups:
            self.cb_stats.empty += 1
            return []
        known = {p: events for p, events in groups.items() if p in self.config.symbols}
        for product in groups.keys() - known.keys() - self._warned_products:
            self._warned_products.add(product)
            log.warning(
                "coinbase: frame for unconfigured product %r ignored", product,
                extra={"symbol": product},
            )
        if not known:
            return None
        timestamp = msg.get("timestamp")
        if isinstance(timestamp, str):
            self.metrics.observe_latency_iso(receive_time_ns, timestamp)
        if out_channel == "depth":
            self._note_snapshots(session, known)
        if len(groups) == 1:
            return [(Route(next(iter(known)), out_channel), frame)]
        self.cb_stats.split += 1
        return [
            (Route(product, out_channel), orjson.dumps({**msg, "events": events}))
            for product, events in known.items()
        ]

    def _in_sequence(self, session: _Session, seq: int, receive_time_ns: int) -> bool:
        """Check ``sequence_num`` continuity; False drops the frame (a duplicate)."""
        expected = session.expected
        if seq == expected:
            session.expected = seq + 1
            return True
        if seq > expected:
            self.cb_stats.gaps += 1
            session.lost.append((expected, seq))
            session.expected = seq + 1
            log.warning(
                "coinbase: sequence_num gap on connection %s: expected %d, got %d",
                session.conn.id,
                expected,
                seq,
            )
            self._lose_sync(session, "sequence_num gap", expected, seq, receive_time_ns)
            return True
        for i, (first, stop) in enumerate(session.lost):
            if first <= seq < stop:
                # arrived after a later message: its loss was already handled, keep its data
                self.cb_stats.late += 1
                del session.lost[i]
                session.lost.extend(r for r in ((first, seq), (seq + 1, stop)) if r[0] < r[1])
                return True
        self.cb_stats.duplicates += 1
        log.info("coinbase: duplicate sequence_num %d dropped (expected %d)", seq, expected)
        return False

    def _lose_sync(
        self, session: _Session, reason: str, expected: int, got: int, receive_time_ns: int
    ) -> None:
        """A lost message may have been any product's update: every level2 book is suspect."""
        payload = sync_lost_payload(reason, expected=expected, got=got)
        for product in self.products:
            self.emit(session.conn, product, "sync_lost", payload, receive_time_ns)
            self.cb_stats.sync_lost += 1
        for product in self.products:
            self._resubscribe(session, product)

    def _note_snapshots(self, session: _Session | None, groups: dict[str, list[Any]]) -> None:
        for product, events in groups.items():
            if any(isinstance(e, dict) and e.get("type") == "snapshot" for e in events):
                self.stats.snapshots += 1
                if session is not None:
                    session.awaiting.discard(product)

    @staticmethod
    def _by_product(msg: dict[str, Any]) -> dict[str, list[Any]] | None:
        """The message's events per product (l2_data events name one product each; a
        market_trades event is split by its trades' products); None if malformed."""
        events = msg.get("events")
        if not isinstance(events, list):
            return None
        groups: dict[str, list[Any]] = {}
        try:
            if msg.get("channel") == "l2_data":
                for event in events:
                    groups.setdefault(event["product_id"], []).append(event)
                return groups
            for event in events:
                per: dict[str, list[Any]] = {}
                for trade in event["trades"]:
                    per.setdefault(trade["product_id"], []).append(trade)
                for product, trades in per.items():
                    groups.setdefault(product, []).append({**event, "trades": trades})
        except (KeyError, TypeError):
            return None
        return groups
