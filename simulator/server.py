"""The simulator server: one port, WebSocket and HTTP, every venue under its own path prefix.

HTTP is answered from websockets' ``process_request`` hook (no web framework): a request that
is not a WebSocket upgrade gets its response there and the connection closes. Each market
symbol is stepped by its own pacing task at its venue's rate (``SimulatorConfig.rate``) in
steps/s and the frames are
broadcast to every subscribed connection through a bounded per-connection queue, so one slow
client never holds back the others (it is disconnected when its queue is full).

Control and introspection (JSON) under ``/_sim/``:
  GET  /_sim/health                    {"ok": true}
  GET  /_sim/fair                      the one market's fair value of every instrument now:
       {"time_ms", "instruments": {"BTC-USD": "62001.1234567890", ...}}; per symbol with
       GET /_sim/<exchange>/fair?symbol=S[&time_ms=T] {"symbol", "instrument", "time_ms",
       "fair_value"}
  GET  /_sim/status                    paused, per venue/symbol ids and counts, connections
  GET  /_sim/connections?frames=1      the send log of every connection (frames if kept)
  POST /_sim/pause | /_sim/resume      stop / restart generating (sent frames still drain)
  POST /_sim/step?exchange=binance&symbol=BTCUSDT&n=1   generate n steps now (any state)
  GET  /_sim/<exchange>/book?symbol=S  true full book (with the fair value as of its last
       event: "fair_value", "fair_time_ms"); /trades?symbol=S[&from_id=N] the tape
  GET  /_sim/<exchange>/truth?symbol=S[&from_time_ms=N]   per trade, the book it executed
       against: {"symbol", "trades": [{"trade_id", "trade_time_ms", "book_time_ms",
       "bid_price", "bid_size", "ask_price", "ask_size", "taker_side"}]}
  GET  /_sim/faults                    pending faults; POST /_sim/faults/clear drops them
       (frames already held back by a delay are still delivered)
  POST /_sim/faults/<kind>?exchange=binance[&symbol=S][&channel=depth|trade]&count=1
       kind: drop | duplicate | reorder | malformed | silent | checksum (simulator/faults.py)
  POST /_sim/faults/delay?exchange=binance[&symbol=S]&count=1[&min_ms=0&max_ms=4000]
       [&duration_s=D]   hold the next count trade frames (count=0: all for D seconds) back by
       a seeded-random delay each, on every connection; delivered even while paused
  POST /_sim/faults/disconnect?exchange=binance[&mode=abort|close]
  POST /_sim/faults/rest?exchange=binance&status=429&retry_after=1&count=1
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import http
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from simulator.binance_venue import BinanceVenue
from simulator.coinbase_venue import CoinbaseVenue
from simulator.faults import FRAME_FAULTS, FaultInjector, FrameAction, corrupt_checksum
from simulator.kraken_venue import KrakenVenue
from simulator.market import LatentMarket, canonical_instrument, fair_text
from simulator.sendlog import ConnectionLog
from simulator.venue import HttpError, HttpReply, OutFrame, Subscription, Venue
from tickflow.config import Settings

log = logging.getLogger(__name__)
CLOSED_LOGS_KEPT = 200


def id_offset(id_epoch_s: int) -> int:
    """Added to every update and trade id: a million ids per second of the epoch, so ids keep
    growing across simulator restarts (downstream state and Redis never see them go back).
    ``id_epoch_s`` 0 means now; a fixed value gives reproducible ids."""
    return (id_epoch_s or int(time.time())) * 1_000_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class _Item:
    symbol: str  # "" for control replies
    channel: str
    last_id: int
    payload: bytes
    due: float = 0.0  # delay fault: monotonic time before which it must not be sent


@dataclass
class _Conn:
    ws: ServerConnection
    venue: Venue
    sub: Subscription
    log: ConnectionLog
    queue: asyncio.Queue[_Item]
    dead: bool = False  # no more frames are queued (slow consumer, disconnect fault)
    in_flight: int = 0  # taken from the queue, not yet sent or dropped
    silent: bool = False  # silent-socket fault: open, but nothing more is sent
    sender: asyncio.Task[None] | None = field(default=None, repr=False)
    holders: set[asyncio.Task[None]] = field(default_factory=set, repr=False)  # delayed frames

    @property
    def pending(self) -> int:
        """Frames not yet handed to the socket: queued, held back by a delay, being sent."""
        return self.queue.qsize() + len(self.holders) + self.in_flight


def _response(reply: HttpReply) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ]
    )
    return Response(reply.status, http.HTTPStatus(reply.status).phrase, headers, reply.body)


def _arg(query: Mapping[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = query.get(name)
    return values[0] if values else default


def _int_arg(query: Mapping[str, list[str]], name: str, default: int) -> int:
    raw = _arg(query, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise HttpError(400, {"error": f"{name} must be an integer, got {raw!r}"}) from None


class SimulatorServer:
    """All simulated venues on one host/port; ``async with`` or ``start()``/``stop()``.

    ``settings.simulator.port`` 0 binds a free port (see ``port``). A venue rate <= 0
    disables its pacing: frames are then generated only by ``step()`` / ``POST /_sim/step``.
    """

    def __init__(
        self,
        settings: Settings,
        venues: list[Venue] | None = None,
        *,
        paused: bool = False,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = settings.simulator
        # the one market every venue quotes around (simulator/market.py)
        self.latent = LatentMarket(settings.simulator.seed)
        if venues is None:
            sim = settings.simulator
            venues = [
                BinanceVenue(
                    sim.symbols,
                    sim.seed,
                    sim.depth_levels,
                    sim.max_changes_per_event,
                    sim.trade_probability,
                    settings.exchanges.binance.rest_weight_limit_1m,
                    id_offset=id_offset(sim.id_epoch_s),
                    latent=self.latent,
                    sweep_scale=sim.sweep_scale,
                ),
                CoinbaseVenue(
                    sim.coinbase_products,
                    sim.seed,
                    sim.coinbase_depth_levels,
                    sim.max_changes_per_event,
                    sim.trade_probability,
                    sim.coinbase_heartbeat_ms,
                    id_offset=id_offset(sim.id_epoch_s),
                    latent=self.latent,
                    sweep_scale=sim.sweep_scale,
                    clock_ms=clock_ms,
                ),
                KrakenVenue(
                    sim.kraken_symbols,
                    sim.seed,
                    sim.depth_levels,
                    sim.max_changes_per_event,
                    sim.trade_probability,
                    id_offset=id_offset(sim.id_epoch_s),
                    latent=self.latent,
                    sweep_scale=sim.sweep_scale,
                    clock_ms=clock_ms,
                ),
            ]
        self.venues: dict[str, Venue] = {v.name: v for v in venues}
        # venues built elsewhere bring their own market: report that one's fair values
        self.latent = next(
            (m for v in venues if isinstance(m := getattr(v, "latent", None), LatentMarket)),
            self.latent,
        )
        self.faults = FaultInjector(settings.simulator.seed)
        self._clock_ms = clock_ms
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self._conns: dict[str, _Conn] = {}
        self._closed_logs: deque[ConnectionLog] = deque(maxlen=CLOSED_LOGS_KEPT)
        self._conn_ids = itertools.count(1)
        self._server: Server | None = None
        self._pacers: list[asyncio.Task[None]] = []
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,  # plain frames: cheaper on 2 cores, and Binance sends them plain
            logger=logging.getLogger("simulator.websockets"),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        pairs = [
            (v, s) for v in self.venues.values() if self.config.rate(v.name) > 0 for s in v.symbols
        ]
        for i, (venue, symbol) in enumerate(pairs):
            # spread symbols over the interval so their frames interleave
            phase = i / len(pairs)
            rate = self.config.rate(venue.name)
            self._pacers.append(asyncio.create_task(self._pace(venue, symbol, rate, phase)))
        log.info("simulator listening on %s (venues: %s)", self.http_url, ", ".join(self.venues))

    async def stop(self) -> None:
        for task in self._pacers:
            task.cancel()
        for task in self._pacers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pacers.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        async with self:
            await stop.wait()

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    # --- generation -----------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def step(self, exchange: str, symbol: str, n: int = 1) -> None:
        """Generate ``n`` steps of one symbol now and queue their frames (paused or not)."""
        venue = self.venues[exchange]
        for _ in range(n):
            self._broadcast(venue, venue.step(symbol, self._clock_ms()))

    async def _pace(self, venue: Venue, symbol: str, rate: float, phase: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        # A step uses up to 2 ms of event time (trade, then its depth event): catching up after
        # a stall faster than that would stamp frames ahead of the clock. Only a configured
        # pace above 500 steps/s per symbol lets event times run ahead.
        min_gap_ms = 2 if interval >= 0.002 else 0
        last_ms = -min_gap_ms
        next_t = loop.time() + phase * interval
        while True:
            if not self._running.is_set():
                await self._running.wait()
                next_t = loop.time()
            delay = next_t - loop.time()
            if min_gap_ms:
                delay = max(delay, (last_ms + min_gap_ms - self._clock_ms()) / 1000)
            if delay > 0:
                await asyncio.sleep(delay)
            if not self._running.is_set():
                continue  # paused while sleeping: nothing may be generated after pause()
            last_ms = self._clock_ms()
            self._broadcast(venue, venue.step(symbol, last_ms))
            next_t += interval
            if loop.time() - next_t > 1.0:
                next_t = loop.time()  # after a stall, keep the pace instead of bursting

    def _broadcast(self, venue: Venue, frames: list[OutFrame]) -> None:
        conns = [c for c in self._conns.values() if c.venue is venue and not c.dead]
        dues = [self._trade_delay(venue, frame, conns) for frame in frames]
        for conn in conns:
            for frame, due in zip(frames, dues, strict=True):
                payload = conn.sub.render(frame)
                if payload is None:
                    continue
                item = _Item(frame.symbol, frame.channel, frame.last_id, payload, due)
                try:
                    conn.queue.put_nowait(item)
                except asyncio.QueueFull:
                    log.warning("connection %s is too slow: disconnecting it", conn.log.conn_id)
                    self._kill(conn, "slow consumer", abort=False)
                    break

    def _trade_delay(self, venue: Venue, frame: OutFrame, conns: list[_Conn]) -> float:
        """When a delay fault holds this frame back: the monotonic time it is due, else 0.
        Decided once per frame, for every connection, and only for a frame someone receives."""
        if not self.faults.delays or frame.channel != "trade" or not frame.symbol:
            return 0.0
        if not any((frame.symbol, "trade") in c.sub.streams for c in conns):
            return 0.0
        now = time.monotonic()
        delay_ms = self.faults.on_trade(venue.name, frame.symbol, now)
        return 0.0 if delay_ms is None else now + delay_ms / 1000

    # --- connections ----------------------------------------------------------------------

    def _kill(self, conn: _Conn, reason: str, abort: bool) -> None:
        conn.dead = True
        conn.log.close_reason = reason
        if abort:
            # an abrupt TCP drop, as when a network path dies: no close frame
            conn.ws.transport.abort()
        else:
            asyncio.get_running_loop().create_task(conn.ws.close(1001, reason))

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        prefix, _, rest = url.path.lstrip("/").partition("/")
        venue = self.venues[prefix]
        sub = venue.ws_subscription("/" + rest, parse_qs(url.query))
        conn_log = ConnectionLog(
            conn_id=f"c{next(self._conn_ids)}",
            exchange=venue.name,
            path=ws.request.path,
            remote=str(ws.remote_address),
            opened_ms=wall_ms(),
            keep_frames=self.config.send_log_frames,
        )
        conn = _Conn(ws, venue, sub, conn_log, asyncio.Queue(self.config.send_queue_max))
        self._conns[conn_log.conn_id] = conn
        conn.sender = asyncio.create_task(self._sender(conn))
        greeting = getattr(venue, "greeting", None)  # optional first frame (Kraken's status)
        if greeting is not None:
            conn.queue.put_nowait(_Item("", "control", 0, greeting()))
        try:
            async for message in ws:
                conn_log.messages_received += 1
                reply = venue.ws_message(sub, message)
                if reply is not None and not conn.dead:
                    # several frames: e.g. in-band snapshots, attributed to their symbol
                    replies = [reply] if isinstance(reply, bytes) else reply
                    for r in replies:
                        if isinstance(r, bytes):
                            conn.queue.put_nowait(_Item("", "control", 0, r))
                        else:
                            conn.queue.put_nowait(_Item(r.symbol, r.channel, r.last_id, r.data))
        except ConnectionClosed:
            pass
        finally:
            for task in (conn.sender, *conn.holders):
                task.cancel()
            for task in (conn.sender, *conn.holders):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            conn_log.closed_ms = wall_ms()
            if conn_log.close_reason is None:
                conn_log.close_reason = f"closed by client ({ws.close_code})"
            del self._conns[conn_log.conn_id]
            self._closed_logs.append(conn_log)

    async def _sender(self, conn: _Conn) -> None:
        name = conn.venue.name
        # reordered frames, each sent right after the next frame of its own symbol and channel
        held: dict[tuple[str, str], _Item] = {}
        max_age_ms = self.config.max_connection_age_s * 1000
        try:
            while True:
                item = await conn.queue.get()
                conn.in_flight = 1
                if max_age_ms and wall_ms() - conn.log.opened_ms > max_age_ms:
                    # like Binance's 24 h limit: the server ends old connections
                    self._kill(conn, "max connection age", abort=False)
                    return
                if item.due and not conn.silent:
                    # back through the queue when due; other faults apply then
                    self._hold(conn, replace(item, due=0.0), item.due)
                    conn.in_flight = 0
                    continue
                action = FrameAction.SEND
                if item.symbol and not conn.silent:
                    action = self.faults.on_frame(name, item.symbol, item.channel)
                # numbered (Coinbase's sequence_num) where the frame leaves the sending order:
                # a dropped frame uses its number up and a reordered one arrives late with it
                if conn.silent or action is FrameAction.SILENT:
                    conn.silent = True
                    conn.log.withheld += 1
                elif action is FrameAction.DROP:
                    conn.sub.stamp(item.payload)
                    conn.log.dropped(item.symbol, item.channel, item.last_id)
                elif action is FrameAction.REORDER and (item.symbol, item.channel) not in held:
                    stamped = conn.sub.stamp(item.payload)
                    held[(item.symbol, item.channel)] = replace(item, payload=stamped)
                else:
                    payload = conn.sub.stamp(item.payload)
                    if action is FrameAction.MALFORMED:
                        payload = payload[: max(1, len(payload) // 2)]
                    elif action is FrameAction.CHECKSUM:
                        payload = corrupt_checksum(payload)
                    await self._send(conn, item, payload)
                    if action is FrameAction.DUPLICATE:
                        await self._send(conn, item, payload)
                    late = held.pop((item.symbol, item.channel), None)
                    if late is not None:
                        await self._send(conn, late, late.payload)
                conn.in_flight = 0
        except ConnectionClosed:
            pass

    def _hold(self, conn: _Conn, item: _Item, due: float) -> None:
        """Queue ``item`` on ``conn`` again at monotonic time ``due`` (a delay fault)."""
        conn.log.frames_delayed += 1
        task = asyncio.create_task(self._release(conn, item, due))
        conn.holders.add(task)
        task.add_done_callback(conn.holders.discard)

    async def _release(self, conn: _Conn, item: _Item, due: float) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if conn.dead:
            return
        try:
            conn.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("connection %s is too slow: disconnecting it", conn.log.conn_id)
            self._kill(conn, "slow consumer", abort=False)

    async def _send(self, conn: _Conn, item: _Item, payload: bytes) -> None:
        await conn.ws.send(payload, text=True)
        conn.log.sent(item.symbol, item.channel, item.last_id, payload)

    # --- HTTP -----------------------------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        try:
            if url.path.startswith("/_sim/"):
                return _response(self._control(request.method, url.path[len("/_sim/") :], query))
            prefix, _, rest = url.path.lstrip("/").partition("/")
            venue = self.venues.get(prefix)
            if venue is None:
                raise HttpError(404, {"error": f"no venue {prefix!r}"})
            if "websocket" in request.headers.get("Upgrade", "").lower():
                venue.ws_subscription("/" + rest, query)  # validate now: reject with HTTP 400
                return None
            fault = self.faults.on_rest(venue.name)
            if fault is not None:
                return _response(fault)
            return _response(venue.http(request.method, "/" + rest, query, self._clock_ms() / 1000))
        except HttpError as exc:
            return _response(exc.reply)

    def _control(self, method: str, path: str, query: Mapping[str, list[str]]) -> HttpReply:
        gets: dict[str, Callable[[], HttpReply]] = {
            "health": lambda: HttpReply.json(200, {"ok": True}),
            "fair": lambda: HttpReply.json(200, self.fair_values()),
            "status": lambda: HttpReply.json(200, self.status()),
            "connections": lambda: HttpReply.json(
                200, self.connections(with_frames=_arg(query, "frames") == "1")
            ),
            "faults": lambda: HttpReply.json(200, self.faults.pending()),
        }
        posts: dict[str, Callable[[], HttpReply]] = {
            "pause": lambda: self._ok(self.pause),
            "resume": lambda: self._ok(self.resume),
            "step": lambda: self._post_step(query),
            **{
                f"faults/{kind}": functools.partial(self._post_frame_fault, action, query)
                for kind, action in FRAME_FAULTS.items()
            },
            "faults/disconnect": lambda: self._post_disconnect(query),
            "faults/rest": lambda: self._post_rest_fault(query),
            "faults/delay": lambda: self._post_delay_fault(query),
            "faults/clear": lambda: self._ok(self.faults.clear),
        }
        if path in gets or path in posts:
            table = gets if path in gets else posts
            expected = "GET" if table is gets else "POST"
            if method != expected:
                raise HttpError(405, {"error": f"use {expected} for /_sim/{path}"})
            return table[path]()
        exchange, _, resource = path.partition("/")
        if exchange in self.venues and method == "GET":
            return self.venues[exchange].introspect(resource, query)
        raise HttpError(404, {"error": f"unknown endpoint /_sim/{path}"})

    def _ok(self, action: Callable[[], None]) -> HttpReply:
        action()
        return HttpReply.json(200, {"ok": True, "paused": self.paused})

    def _venue_arg(self, query: Mapping[str, list[str]]) -> Venue:
        name = _arg(query, "exchange", "binance")
        if name not in self.venues:
            raise HttpError(400, {"error": f"unknown exchange {name!r}"})
        return self.venues[name]

    def _post_step(self, query: Mapping[str, list[str]]) -> HttpReply:
        venue = self._venue_arg(query)
        symbol = _arg(query, "symbol")
        if symbol is not None and symbol not in venue.symbols:
            raise HttpError(400, {"error": f"unknown symbol {symbol!r}"})
        n = _int_arg(query, "n", 1)
        for s in [symbol] if symbol else list(venue.symbols):
            self.step(venue.name, s, n)
        return HttpReply.json(200, {"ok": True, "symbols": venue.status()})

    def _post_frame_fault(self, action: FrameAction, query: Mapping[str, list[str]]) -> HttpReply:
        venue = self._venue_arg(query)
        count = _int_arg(query, "count", 1)
        self.faults.add_frame_fault(
            action, venue.name, _arg(query, "symbol"), _arg(query, "channel"), count
        )
        return HttpReply.json(200, {"ok": True, "faults": self.faults.pending()})

    def _post_delay_fault(self, query: Mapping[str, list[str]]) -> HttpReply:
        venue = self._venue_arg(query)
        symbol = _arg(query, "symbol")
        if symbol is not None and symbol not in venue.symbols:
            raise HttpError(400, {"error": f"unknown symbol {symbol!r}"})
        raw_duration = _arg(query, "duration_s")
        try:
            duration = None if raw_duration is None else float(raw_duration)
            self.faults.add_delay(
                venue.name,
                symbol,
                _int_arg(query, "count", 1),
                _int_arg(query, "min_ms", 0),
                _int_arg(query, "max_ms", 4000),
                duration,
                time.monotonic(),
            )
        except ValueError as exc:
            raise HttpError(400, {"error": str(exc)}) from None
        return HttpReply.json(200, {"ok": True, "faults": self.faults.pending()})

    def _post_disconnect(self, query: Mapping[str, list[str]]) -> HttpReply:
        venue = self._venue_arg(query)
        abort = _arg(query, "mode", "abort") == "abort"
        ids = self.disconnect(venue.name, abort=abort)
        return HttpReply.json(200, {"ok": True, "disconnected": ids})

    def _post_rest_fault(self, query: Mapping[str, list[str]]) -> HttpReply:
        venue = self._venue_arg(query)
        status = _int_arg(query, "status", 429)
        if status not in (418, 429):
            raise HttpError(400, {"error": "status must be 429 or 418"})
        self.faults.add_rest_error(
            venue.name, status, _int_arg(query, "retry_after", 1), _int_arg(query, "count", 1)
        )
        return HttpReply.json(200, {"ok": True, "faults": self.faults.pending()})

    def disconnect(self, exchange: str, abort: bool = True) -> list[str]:
        """Drop every open connection of a venue; the ids of the connections dropped."""
        victims = [c for c in self._conns.values() if c.venue.name == exchange and not c.dead]
        for conn in victims:
            self._kill(conn, "fault: disconnect", abort=abort)
        return [c.log.conn_id for c in victims]

    # --- introspection --------------------------------------------------------------------

    def send_logs(self) -> list[ConnectionLog]:
        """The send logs of the closed (most recent ``CLOSED_LOGS_KEPT``) and open connections."""
        return [*self._closed_logs, *(c.log for c in self._conns.values())]

    def pending_frames(self) -> int:
        """Frames queued on open connections and not yet sent."""
        return sum(c.pending for c in self._conns.values())

    def connections(self, with_frames: bool = False) -> list[dict[str, Any]]:
        closed = [c.to_json(0, with_frames) for c in self._closed_logs]
        live = [c.log.to_json(c.pending, with_frames) for c in self._conns.values()]
        return closed + live

    def fair_values(self, time_ms: int | None = None) -> dict[str, Any]:
        """The one market's fair value of every instrument a venue lists, at ``time_ms``
        (default: now)."""
        now = self._clock_ms() if time_ms is None else time_ms
        instruments = sorted({
            canonical_instrument(name, symbol)
            for name, venue in self.venues.items() for symbol in venue.symbols
        })
        return {
            "time_ms": now,
            "instruments": {i: fair_text(self.latent.price(i, now)) for i in instruments},
        }

    def status(self) -> dict[str, Any]:
        exchanges: dict[str, Any] = {}
        for name, venue in self.venues.items():
            symbols = venue.status()
            conns = [c for c in self._conns.values() if c.venue is venue]
            for symbol, info in symbols.items():
                info["connections"] = sum(
                    1 for c in conns if any(k[0] == symbol for k in c.sub.streams)
                )
            exchanges[name] = {"symbols": symbols, "connections": len(conns)}
        return {
            "paused": self.paused,
            "faults_injected": dict(self.faults.injected),
            "seed": self.config.seed,
            "rate_per_symbol": self.config.rate_per_symbol,
            "rates": {name: self.config.rate(name) for name in self.venues},
            "exchanges": exchanges,
            "connections": [c.log.to_json(c.pending) for c in self._conns.values()],
        }
