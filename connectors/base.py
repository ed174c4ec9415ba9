"""Connection lifecycle shared by every exchange connector.

``WsConnector`` connects, subscribes, stamps and forwards every frame as a ``RawEnvelope``,
watches for silent sockets (a stale timer that only data frames reset, never heartbeats),
lets websockets ping, and reconnects with capped exponential backoff and jitter, sending the
subscriptions again. An exchange subclass supplies the URL, the subscribe messages and a
cheap ``route`` (frame -> symbol and channel); everything else about the frame is left to the
Flink job's parsers. ``RestClient`` makes blocking REST calls in a worker thread and honours
``Retry-After`` on HTTP 429/418 for every later request.

Every connector moves its ``ConnectorMetrics`` (``connectors/metrics.py``) and logs with the
fields ``exchange`` (bound for its ``run`` task), ``connection_id`` (bound for each
connection's tasks) and ``symbol`` where a message concerns one book (``tickflow.logs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from connectors.metrics import ConnectorMetrics
from connectors.recorder import Recorder
from schemas.codec import RawEnvelope, sync_lost_payload
from schemas.deadletter import dead_letter_record
from tickflow.config import ConnectorConfig
from tickflow.logs import log_fields

log = logging.getLogger(__name__)

# frames held, all books together, while their books' delivery-failure markers are on their
# way (at most a delivery timeout's worth; beyond it a held book is marked lost once more)
HELD_FRAMES_MAX = 100_000


class Sink(Protocol):
    """Where envelopes go: the Kafka producer, or a list in tests."""

    def send(self, envelope: RawEnvelope) -> bool | None:
        """Hand over one envelope; False when it was dropped (the sink then reports the book
        lost through the connector's ``frames_lost``)."""
        ...

    def dead_letter(self, record: str) -> None:
        """A dead-letter record (``schemas.deadletter``) for input that cannot be routed."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    symbol: str  # the exchange's own symbol (BTCUSDT)
    channel: str  # depth | trade


@dataclass
class ConnectorStats:
    connections: int = 0  # successful WebSocket opens
    frames: int = 0  # frames received
    envelopes: int = 0  # envelopes handed to the sink (frames + snapshots)
    unroutable: int = 0  # frames with no symbol/channel (acks, unknown streams, garbage)
    stale_timeouts: int = 0  # connections dropped by the stale timer
    snapshots: int = 0
    snapshot_retries: int = 0
    snapshot_failures: int = 0  # gave up after the bounded retries: connection recycled


class Backoff:
    """Capped exponential backoff with jitter: spreads reconnect storms across clients."""

    def __init__(self, initial_s: float, max_s: float, jitter: float, rng: random.Random):
        self.initial_s, self.max_s, self.jitter, self._rng = initial_s, max_s, jitter, rng
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return delay * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


class Connection:
    """One WebSocket session: its unique id, frame counter and the tasks that die with it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.id = uuid.uuid4().hex
        self.opened = time.monotonic()
        self.last_data = self.opened
        self.frames = 0
        self.end_reason = ""  # why it ended: a RECONNECT_REASONS value, set by who ends it
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def next_seq(self) -> int:
        """Envelope counter within the connection, from 0 (snapshots take a number too)."""
        seq = self._seq
        self._seq += 1
        return seq

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def recycle(self, reason: str) -> None:
        """Close this connection so the connector reconnects (and resyncs)."""
        log.warning("closing connection %s: %s", self.id, reason, extra={"connection_id": self.id})
        self.end_reason = self.end_reason or "recycled"
        self.spawn(self.ws.close(1000, reason[:100]))


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    receive_time_ns: int  # when the body had been read


class RestClient:
    """Blocking urllib in a worker thread (no extra dependency); Retry-After aware."""

    DEFAULT_BAN_S = 60.0  # a 418/429 without Retry-After: wait a minute

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.blocked_until = 0.0  # monotonic; set by 429/418

    def _get(self, url: str) -> HttpResult:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body = resp.read()
                status, headers = resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            body, status, headers = exc.read(), exc.code, exc.headers
        return HttpResult(
            status, {k.lower(): v for k, v in headers.items()}, body, time.time_ns()
        )

    async def get(self, url: str) -> HttpResult:
        wait = self.blocked_until - time.monotonic()
        if wait > 0:
            log.info("REST blocked by Retry-After for another %.1fs", wait)
            await asyncio.sleep(wait)
        result = await asyncio.to_thread(self._get, url)
        if result.status in (418, 429):
            retry_after = _retry_after(result.headers.get("retry-after"), self.DEFAULT_BAN_S)
            self.blocked_until = max(self.blocked_until, time.monotonic() + retry_after)
            log.warning(
                "REST %d (%s) for %s: no REST requests for %.1fs",
                result.status, "IP ban" if result.status == 418 else "rate limited", url,
                retry_after,
            )
        return result


def _retry_after(raw: str | None, default: float) -> float:
    try:
        return max(0.0, float(raw)) if raw is not None else default
    except ValueError:
        return default


class WsConnector(ABC):
    """Owns the connection lifecycle; subclasses describe one exchange."""

    exchange: ClassVar[str]

    def __init__(
        self,
        lifecycle: ConnectorConfig,
        sink: Sink,
        rng: random.Random | None = None,
        metrics: ConnectorMetrics | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.sink = sink
        self.rng = rng or random.Random()
        self.stats = ConnectorStats()
        # in a registry of its own unless given one (the process's, served on /metrics)
        self.metrics = metrics if metrics is not None else ConnectorMetrics(self.exchange)
        self.connection: Connection | None = None
        self._backoff = Backoff(
            lifecycle.backoff_initial_s, lifecycle.backoff_max_s, lifecycle.backoff_jitter,
            self.rng,
        )
        self._stopping = asyncio.Event()
        self._unroutable_logged = 0
        self.recorder: Recorder | None = None  # every received frame, for replay
        # books with a frame the sink did not deliver (symbol -> why), not yet marked sync_lost
        self._lost: dict[str, str] = {}
        # books whose delivery-failure sync_lost is on its way: their frames wait here until the
        # broker has acknowledged it (a frame sent beside it could land while it times out,
        # and be applied as if continuous); symbol -> (marker number, frames)
        self._held: dict[str, tuple[int, list[tuple[Connection, str, bytes, int]]]] = {}
        self._held_frames = 0
        self._markers = 0
        self._acked: set[tuple[str, int]] = set()  # acknowledged markers: release their frames

    # --- what an exchange supplies --------------------------------------------------------

    @abstractmethod
    def url(self) -> str:
        """The WebSocket URL to connect to."""

    def subscribe_messages(self) -> list[str]:
        """Messages sent after every (re)connect; none when the URL subscribes."""
        return []

    @abstractmethod
    def route(self, frame: bytes) -> Route | None:
        """Symbol and channel of a frame, or None for frames that carry no market data."""

    @abstractmethod
    def instrument(self, symbol: str) -> str:
        """Canonical instrument of an exchange symbol."""

    def is_heartbeat(self, route: Route) -> bool:
        """Heartbeats are forwarded but do not reset the stale timer."""
        return False

    def dispatch(
        self, conn: Connection, frame: bytes, receive_time_ns: int
    ) -> list[tuple[Route, bytes]] | None:
        """What to produce for one received frame: (route, payload) pairs, by default the
        frame itself under ``route(frame)``. An exchange may split a frame that spans several
        symbols, or return [] for a frame it consumes (heartbeats it does not forward, acks,
        duplicates); None sends the frame to the dead letters."""
        route = self.route(frame)
        return None if route is None else [(route, frame)]

    def book_symbols(self) -> tuple[str, ...]:
        """Symbols whose books this connector maintains (marked lost when a connection ends)."""
        return ()

    def _books_lost(
        self, conn: Connection, reason: str, receive_time_ns: int | None = None
    ) -> None:
        """Updates stop with the connection: until the next connection's snapshot, the job must
        not serve these books as LIVE (a reconnect may also have missed updates)."""
        payload = sync_lost_payload(reason)
        now = time.time_ns() if receive_time_ns is None else receive_time_ns
        for symbol in self.book_symbols():
            self.emit(conn, symbol, "sync_lost", payload, now)

    # --- frames the sink did not deliver ---------------------------------------------------

    def frames_lost(self, symbol: str, reason: str) -> None:
        """The sink did not deliver a frame of ``symbol`` (its delivery timed out, it was purged
        behind one that did, or the producer's queue was full): the job has a hole in that book.
        Before the book's next frame goes out, a ``sync_lost`` envelope does, and the book is
        resynced (``flush_lost``). Called from the sink's delivery reports."""
        self.metrics.delivery_failures += 1
        if symbol not in self._lost:
            self._lost[symbol] = reason
            self.metrics.books_lost += 1
            log.warning(
                "%s: a frame of %s was not delivered (%s): marking the book sync_lost",
                self.exchange, symbol, reason, extra={"symbol": symbol},
            )

    def flush_lost(self) -> None:
        """``sync_lost`` for every book marked lost that has not had its next frame yet (the
        connector's main loop calls this a few times a second). Without a connection the books
        wait: the next connection marks and snapshots every book anyway."""
        if self._acked:
            self._release_held()
        conn = self.connection
        if not self._lost or conn is None:
            return
        now = time.time_ns()
        for symbol in list(self._lost):
            if not self._mark_lost(conn, symbol, now):
                return  # the sink is full: the rest wait for room

    def _mark_lost(self, conn: Connection, symbol: str, receive_time_ns: int) -> bool:
        """The ``sync_lost`` of a lost book, then its resync; False if the sink dropped it
        (the book stays lost and its frames wait behind it). With a sink that reports the
        marker's delivery (``send_marker``), the book's next frames are held until the broker
        has acknowledged it."""
        reason = self._lost.get(symbol)
        if reason is None:
            return True
        payload = sync_lost_payload(f"kafka delivery failed: {reason}")
        send_marker = getattr(self.sink, "send_marker", None)
        if send_marker is None:
            if self.emit(conn, symbol, "sync_lost", payload, receive_time_ns) is False:
                return False
        else:
            self._markers += 1
            marker = self._markers
            self._drop_held(symbol)
            self._held[symbol] = (marker, [])

            def acked(ok: bool, symbol: str = symbol, marker: int = marker) -> None:
                if ok:
                    self._acked.add((symbol, marker))
                elif self._held.get(symbol, (0, []))[0] == marker:
                    # the marker itself was lost (the sink marked the book lost again): what
                    # waited behind it goes with it, and a new marker comes first
                    self._drop_held(symbol)

            envelope = self._envelope(conn, symbol, "sync_lost", payload, receive_time_ns)
            if not send_marker(envelope, acked):
                self._drop_held(symbol)
                return False
            self.stats.envelopes += 1
        del self._lost[symbol]
        if symbol in self.book_symbols():
            self.metrics.delivery_resyncs += 1
            conn.spawn(self._resync_lost(symbol))
        return True

    def _drop_held(self, symbol: str) -> None:
        """The frames held behind a book's marker are lost (counted): a new marker follows."""
        _, frames = self._held.pop(symbol, (0, []))
        self._held_frames -= len(frames)
        self.metrics.delivery_failures += len(frames)

    def _release_held(self) -> None:
        """The frames of the books whose marker the broker acknowledged, in their order."""
        acked, self._acked = self._acked, set()
        for symbol, marker in sorted(acked, key=lambda a: a[1]):
            held = self._held.get(symbol)
            if held is None or held[0] != marker:
                continue  # a newer marker replaced it
            del self._held[symbol]
            frames = held[1]
            self._held_frames -= len(frames)
            for i, (conn, channel, payload, receive_time_ns) in enumerate(frames):
                envelope = self._envelope(conn, symbol, channel, payload, receive_time_ns)
                if self.sink.send(envelope) is False:
                    # the sink marked the book lost: the rest would follow a hole
                    self.metrics.delivery_failures += len(frames) - i - 1
                    break
                self.stats.envelopes += 1

    async def _resync_lost(self, symbol: str) -> None:
        with log_fields(exchange=self.exchange, symbol=symbol):
            try:
                await self.resync(symbol)
            except ConnectionClosed:
                pass  # the next connection brings fresh snapshots anyway
            except Exception:  # one failed resync must not end the connection
                log.exception("%s: resync of %s after a lost frame failed", self.exchange, symbol)

    async def on_open(self, conn: Connection) -> None:
        """Called once per connection after subscribing, before the first frame."""
        return None  # optional hook

    def on_frame(self, conn: Connection, route: Route, frame: bytes) -> None:
        """Called after each routed frame has been handed to the sink."""
        return None  # optional hook

    # --- lifecycle ------------------------------------------------------------------------

    async def resync(self, symbol: str) -> None:
        """Rebuild one symbol's book (a resync request from the job): a fresh snapshot or a
        resubscribe, as the exchange's protocol has it."""
        raise NotImplementedError(f"{self.exchange}: resync is not implemented")

    async def serve_resync_request(self, symbol: str) -> None:
        """A resync request from the job (``connectors.control.serve_resyncs``): counted in
        the metrics, then ``resync``."""
        self.metrics.resyncs += 1
        with log_fields(exchange=self.exchange, symbol=symbol):
            await self.resync(symbol)

    def stop(self) -> None:
        """Ask ``run`` to return: the open connection is closed, no reconnect follows."""
        self._stopping.set()
        if self.connection is not None:
            self.connection.spawn(self.connection.ws.close(1000, "shutdown"))

    async def run(self) -> None:
        """Connect and reconnect until ``stop()``."""
        with log_fields(exchange=self.exchange):
            while not self._stopping.is_set():
                delay: float | None = None
                try:
                    reason = await self._session()
                except InvalidStatus as exc:
                    reason, status = "refused", exc.response.status_code
                    log.warning(
                        "%s: WebSocket handshake refused with HTTP %d", self.exchange, status
                    )
                    if status in (418, 429):
                        delay = _retry_after(exc.response.headers.get("Retry-After"), 60.0)
                except ConnectionClosed as exc:  # while subscribing
                    reason = "closed"
                    log.warning("%s: connection closed while subscribing: %s", self.exchange, exc)
                except (OSError, TimeoutError, WebSocketException) as exc:
                    reason = "error"
                    log.warning("%s: connection failed: %r", self.exchange, exc)
                if self._stopping.is_set():
                    break
                self.metrics.reconnect(reason)
                delay = max(delay or 0.0, self._backoff.next_delay())
                log.info("%s: reconnecting in %.2fs (%s)", self.exchange, delay, reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _session(self) -> str:
        """One connection, from connect to close; why it ended (``Connection.end_reason``)."""
        cfg = self.lifecycle
        async with connect(
            self.url(),
            open_timeout=cfg.open_timeout_s,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            max_size=cfg.max_frame_bytes,
            compression=None,  # deflate costs CPU per frame; Python is the bottleneck here
        ) as ws:
            conn = Connection(ws)
            self.connection = conn
            self.stats.connections += 1
            # the connection's tasks (spawned below) inherit the field with the context
            with log_fields(connection_id=conn.id):
                log.info("%s: connected %s (connection %s)", self.exchange, self.url(), conn.id)
                try:
                    for message in self.subscribe_messages():
                        await ws.send(message)
                    await self.on_open(conn)
                    self.metrics.connected = 1
                    conn.spawn(self._stale_timer(conn))
                    await self._receive(conn)
                finally:
                    self.metrics.connected = 0
                    self.connection = None
                    await conn.cancel_tasks()
                    if not self._stopping.is_set():  # a clean shutdown is not a lost connection
                        self._books_lost(conn, f"connection {conn.id} ended")
                    if time.monotonic() - conn.opened >= cfg.backoff_reset_s:
                        self._backoff.reset()
            return conn.end_reason or "closed"

    async def _receive(self, conn: Connection) -> None:
        ws = conn.ws
        try:
            while True:
                frame = await ws.recv(decode=False)
                receive_time_ns = time.time_ns()  # as soon as the frame is ours
                self.handle_frame(conn, frame, receive_time_ns)
        except ConnectionClosed as exc:
            if not conn.end_reason:
                sent = exc.sent
                keepalive = sent is not None and sent.reason == "keepalive ping timeout"
                conn.end_reason = "ping_timeout" if keepalive else "closed"
            log.info("%s: connection %s closed: %s", self.exchange, conn.id, exc)

    def handle_frame(self, conn: Connection, frame: bytes, receive_time_ns: int) -> None:
        """One received frame: recorded, dispatched, its envelopes (or dead letter) handed to
        the sink. No network: recorded frames go through here too (``handle_recorded``)."""
        self.stats.frames += 1
        metrics = self.metrics
        metrics.bytes += len(frame)
        if self.recorder is not None:
            self.recorder.frame(receive_time_ns, frame)
        conn.frames += 1
        parts = self.dispatch(conn, frame, receive_time_ns)
        if parts is None:
            self.stats.unroutable += 1
            metrics.dead_letters += 1
            if self._unroutable_logged < 10 or self.stats.unroutable % 1000 == 0:
                self._unroutable_logged += 1
                log.warning(
                    "%s: frame without market data: %.200r", self.exchange, frame,
                    extra={"connection_id": conn.id},
                )
            self.sink.dead_letter(
                dead_letter_record(
                    "connector", f"{self.exchange}: frame without a known stream", frame,
                    exchange=self.exchange, connection_id=conn.id,
                    receive_time_ns=receive_time_ns,
                )
            )
            return
        for route, payload in parts:
            if not self.is_heartbeat(route):
                conn.last_data = time.monotonic()
                metrics.last_frame_ns = receive_time_ns
                metrics.frame(route.channel)
            self.emit(conn, route.symbol, route.channel, payload, receive_time_ns)
            self.on_frame(conn, route, payload)

    def emit(
        self, conn: Connection, symbol: str, channel: str, payload: bytes, receive_time_ns: int
    ) -> bool:
        """One envelope to the sink; False when it was dropped. A book marked lost gets its
        ``sync_lost`` first; if the sink cannot take that either, the frame is dropped too."""
        if self._acked:
            self._release_held()
        if (
            self._lost
            and channel != "sync_lost"
            and symbol in self._lost
            and not self._mark_lost(conn, symbol, receive_time_ns)
        ):
            self.metrics.delivery_failures += 1  # this frame is not sent either
            return False
        held = self._held.get(symbol)
        if held is not None:
            if self._held_frames >= HELD_FRAMES_MAX:
                # a hole behind the marker: the book is marked (and resynced) once more
                self._drop_held(symbol)
                self._lost[symbol] = "frames dropped while waiting for the broker"
                self.metrics.delivery_failures += 1
                return False
            held[1].append((conn, channel, payload, receive_time_ns))
            self._held_frames += 1
            return True
        accepted = self.sink.send(self._envelope(conn, symbol, channel, payload, receive_time_ns))
        if accepted is False:
            return False
        self.stats.envelopes += 1
        return True

    def _envelope(
        self, conn: Connection, symbol: str, channel: str, payload: bytes, receive_time_ns: int
    ) -> RawEnvelope:
        return RawEnvelope(
            instrument=self.instrument(symbol),
            exchange=self.exchange,
            symbol=symbol,
            channel=channel,
            receive_time_ns=receive_time_ns,
            connection_id=conn.id,
            connection_seq=conn.next_seq(),
            payload=payload,
        )

    # --- recordings (connectors/recorder.py), handled without a network ----------------------

    def offline_connection(self) -> Connection:
        """A connection without a socket, in the state ``on_open`` leaves a new one in but with
        nothing sent: the one recorded frames are handled on (``handle_recorded``)."""
        return Connection(cast(ClientConnection, None))  # handle_frame never touches the socket

    def handle_recorded(self, conn: Connection, frame: bytes, receive_time_ns: int) -> Connection:
        """One line of a recording, handled as the connector handled it when recording: a
        received frame (an exchange that recorded REST responses produces them here). Returns
        the connection of the next line: a recording does not mark reconnects, an exchange
        whose frames show one starts a new connection."""
        self.handle_frame(conn, frame, receive_time_ns)
        return conn

    async def _stale_timer(self, conn: Connection) -> None:
        timeout = self.lifecycle.stale_timeout_s
        while True:
            remaining = conn.last_data + timeout - time.monotonic()
            if remaining <= 0:
                self.stats.stale_timeouts += 1
                self.metrics.stale_timeouts += 1
                conn.end_reason = "stale"
                log.warning(
                    "%s: no data for %.1fs on connection %s: reconnecting",
                    self.exchange, timeout, conn.id,
                )
                # a silent peer would not answer a close handshake either
                conn.ws.transport.abort()
                return
            await asyncio.sleep(remaining)
