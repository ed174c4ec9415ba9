"""Kraken spot WebSocket v2 protocol on top of ``KrakenMarket``: requests, acks, per-depth views.

Served under ``/kraken`` (``/kraken`` or ``/kraken/v2``). A connection gets a ``status``
message, then subscribes with requests such as
``{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10},"req_id":1}``
and gets one ack per symbol, then a snapshot and updates (``book``) or trades (``trade``, a
snapshot of recent trades first). ``unsubscribe`` and ``ping`` are answered too.
What a book subscriber receives depends on its depth (``BookFrame.body``). A book update's
``timestamp`` is its step's event time and a trade's its trade time (the model's, see
``KrakenMarket.step``); a snapshot's is the time of the last step it includes.
Heartbeats ride on the market's clock, as Coinbase's do: the first market step after each
second broadcasts one, sent to each subscribed connection that got no other frame since the
previous one ("in the absence of any other channel updates"). A paused simulator sends none.
Docs: https://docs.kraken.com/api/docs/websocket-v2/book
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from simulator.book import Side, truth_rows
from simulator.kraken import (
    HEARTBEAT_MESSAGE,
    TRADE_SNAPSHOT_SIZE,
    BookStep,
    KrakenMarket,
    book_message,
    book_update,
    method_reply,
    status_message,
    trade_message,
)
from simulator.market import LatentMarket, fair_of, fair_reply
from simulator.venue import HttpError, HttpReply, OutFrame, Subscription, int_query

DEPTHS = (10, 25, 100, 500, 1000)
HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT = "heartbeat"  # channel of heartbeat frames (no symbol: not a market frame)


@dataclass(frozen=True, slots=True)
class BookFrame(OutFrame):
    """A book update of one market step. Its body depends on the subscriber's depth, so it is
    rendered on demand, once per depth (``data`` stays empty)."""

    step: BookStep
    market: KrakenMarket
    bodies: dict[int, bytes | None] = field(default_factory=dict, repr=False)

    def body(self, depth: int) -> bytes | None:
        """The update a ``depth`` subscriber receives; None when its view did not change."""
        depth = min(depth, self.market.depth_levels)  # deeper views all see the whole book
        if depth not in self.bodies:
            update = book_update(self.step, depth)
            self.bodies[depth] = None if update is None else book_message(
                "update", self.symbol, self.market.pair, update[0], update[1],
                self.step.checksum, self.step.time_ms,
            )
        return self.bodies[depth]


@dataclass
class KrakenSubscription(Subscription):
    """Kraken subscribes by request, never by URL; a book subscription has a depth."""

    depths: dict[str, int] = field(default_factory=dict)  # symbol -> subscribed book depth
    quiet: bool = True  # nothing rendered since the last heartbeat tick

    def render(self, frame: OutFrame) -> bytes | None:
        if frame.channel == HEARTBEAT:
            due = bool(self.streams) and self.quiet
            self.quiet = True
            return frame.data if due else None
        if isinstance(frame, BookFrame):
            depth = self.depths.get(frame.symbol)
            payload = None if depth is None else frame.body(depth)
        else:
            payload = super().render(frame)
        if payload is not None:
            self.quiet = False
        return payload


def _control(payload: bytes) -> OutFrame:
    """A reply to a request: no symbol, so no market fault applies to it."""
    return OutFrame("", "control", 0, payload)


class _RequestError(Exception):
    """A request Kraken rejects as a whole (bad JSON, unknown method or channel)."""


class KrakenVenue:
    """The Kraken spot venue: one ``KrakenMarket`` per pair."""

    name = "kraken"

    def __init__(
        self,
        symbols: tuple[str, ...],
        seed: int,
        depth_levels: int,
        max_changes: int,
        trade_probability: float,
        id_offset: int = 0,
        latent: LatentMarket | None = None,
        sweep_scale: float = 1.0,
        clock_ms: Callable[[], int] = lambda: 0,
    ) -> None:
        self.latent = latent or LatentMarket(seed)  # the one market, shared by every venue
        self.markets = {
            s: KrakenMarket(
                s, seed, depth_levels, max_changes, trade_probability, id_offset=id_offset,
                latent=self.latent, sweep_scale=sweep_scale,
            )
            for s in symbols
        }
        self._clock_ms = clock_ms
        # Kraken's connection ids are large unsigned 64-bit numbers
        self._connection_ids = itertools.count(12_393_906_104_898_154_338 + seed)
        self._next_heartbeat_ms = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.markets)

    # --- market ---------------------------------------------------------------------------

    def step(self, symbol: str, now_ms: int) -> list[OutFrame]:
        market = self.markets[symbol]
        frames: list[OutFrame] = []
        for event in market.step(now_ms):
            if isinstance(event, BookStep):
                frames.append(BookFrame(symbol, "depth", event.seq, b"", event, market))
            else:
                body = trade_message("update", symbol, market.pair, [event])
                frames.append(OutFrame(symbol, "trade", event.trade_id, body))
        if now_ms >= self._next_heartbeat_ms:
            # last: a connection that got this step's frames needs no heartbeat
            frames.append(OutFrame("", HEARTBEAT, now_ms, HEARTBEAT_MESSAGE))
            self._next_heartbeat_ms = now_ms + HEARTBEAT_INTERVAL_MS
        return frames

    # --- WebSocket ------------------------------------------------------------------------

    def ws_subscription(self, path: str, query: Mapping[str, list[str]]) -> Subscription:
        if path not in ("/", "/v2"):
            raise HttpError(404, {"error": f"Unknown path {path!r}"})
        return KrakenSubscription(combined=False)

    def greeting(self) -> bytes:
        """The first frame of every connection: the ``status`` message."""
        return status_message(next(self._connection_ids))

    def ws_message(self, sub: Subscription, message: str | bytes) -> list[OutFrame]:
        """subscribe / unsubscribe / ping: one reply per symbol, each subscription's snapshot
        right after its ack (attributed to its symbol, so faults and the send log see it)."""
        assert isinstance(sub, KrakenSubscription)
        out: list[OutFrame] = []
        time_in = self._clock_ms()
        req_id: int | None = None
        method = "unknown"
        try:
            try:
                req = orjson.loads(message)
                method = req["method"]
                req_id = req.get("req_id")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise _RequestError("Malformed request") from None
            if method == "ping":
                out.append(_control(method_reply("pong", None, req_id, time_in, self._clock_ms())))
                return out
            if method not in ("subscribe", "unsubscribe"):
                raise _RequestError(f"Method not found: {method}")
            params = req.get("params")
            if not isinstance(params, dict):
                raise _RequestError("Missing params")
            channel = params.get("channel")
            symbols = params.get("symbol")
            if channel not in ("book", "trade"):
                raise _RequestError(f"Channel {channel} not supported")
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                raise _RequestError("Missing field symbol")
            depth = params.get("depth", 10)
            if channel == "book" and depth not in DEPTHS:
                raise _RequestError(f"Invalid depth {depth}: must be one of {list(DEPTHS)}")
            snapshot = params.get("snapshot", True) is not False
        except _RequestError as exc:
            error = str(exc)
            out.append(_control(
                method_reply(method, None, req_id, time_in, self._clock_ms(), error=error)))
            return out
        for symbol in symbols:
            if method == "subscribe":
                self._subscribe(out, sub, channel, symbol, depth, snapshot, req_id, time_in)
            else:
                self._unsubscribe(out, sub, channel, symbol, req_id, time_in)
        return out

    def _subscribe(
        self,
        out: list[OutFrame],
        sub: KrakenSubscription,
        channel: str,
        symbol: str,
        depth: int,
        snapshot: bool,
        req_id: int | None,
        time_in: int,
    ) -> None:
        key = (symbol, "depth" if channel == "book" else "trade")
        market = self.markets.get(symbol)
        error = (
            f"Currency pair not supported {symbol}" if market is None
            else "Already subscribed" if key in sub.streams
            else None
        )
        now = self._clock_ms()
        if error is not None or market is None:
            out.append(_control(method_reply(
                "subscribe", None, req_id, time_in, now, error=error, symbol=symbol)))
            return
        result: dict[str, Any] = {"channel": channel}
        if channel == "book":
            result["depth"] = depth
        result |= {"snapshot": snapshot, "symbol": symbol}
        out.append(_control(method_reply("subscribe", result, req_id, time_in, now)))
        sub.streams[key] = (b"", b"")  # frames are sent as they are built: no wrapper
        sub.names[key] = channel
        if channel == "book":
            sub.depths[symbol] = depth
            if snapshot:
                # the snapshot is consistent with every update broadcast after it
                body = market.snapshot_message(depth, market.last_time_ms or now)
                out.append(OutFrame(symbol, "snapshot", market.steps, body))
        elif snapshot and market.trades:
            recent = market.trades[-TRADE_SNAPSHOT_SIZE:]
            body = trade_message("snapshot", symbol, market.pair, recent)
            out.append(OutFrame(symbol, "trade", recent[-1].trade_id, body))

    def _unsubscribe(
        self,
        out: list[OutFrame],
        sub: KrakenSubscription,
        channel: str,
        symbol: str,
        req_id: int | None,
        time_in: int,
    ) -> None:
        key = (symbol, "depth" if channel == "book" else "trade")
        now = self._clock_ms()
        if key not in sub.streams:
            out.append(_control(method_reply(
                "unsubscribe", None, req_id, time_in, now, error="Subscription Not Found",
                symbol=symbol)))
            return
        del sub.streams[key]
        sub.names.pop(key, None)
        result: dict[str, Any] = {"channel": channel}
        if channel == "book":
            result["depth"] = sub.depths.pop(symbol)
        result["symbol"] = symbol
        out.append(_control(method_reply("unsubscribe", result, req_id, time_in, now)))

    # --- REST -----------------------------------------------------------------------------

    def http(self, method: str, path: str, query: Mapping[str, list[str]], now: float) -> HttpReply:
        # market data comes over the WebSocket only; REST is Kraken's, not simulated here
        raise HttpError(404, {"error": ["EGeneral:Unknown method"], "result": {}})

    # --- introspection --------------------------------------------------------------------

    def introspect(self, resource: str, query: Mapping[str, list[str]]) -> HttpReply:
        symbol = (query.get("symbol") or [""])[0]
        market = self.markets.get(symbol)
        if market is None:
            raise HttpError(400, {"error": f"unknown symbol {symbol!r}"})
        pair = market.pair
        if resource == "book":
            bids, asks = market.levels()
            return HttpReply.json(200, {
                "symbol": symbol,
                "bids": [[pair.price_text(p), pair.qty_text(q)] for p, q in bids],
                "asks": [[pair.price_text(p), pair.qty_text(q)] for p, q in asks],
                "checksum": market.checksum(),
                **fair_of(market),
            })
        if resource == "trades":
            from_id = int((query.get("from_id") or ["0"])[0])
            trades = [
                {
                    "id": t.trade_id,
                    "price": pair.price_text(t.price),
                    "qty": pair.qty_text(t.qty),
                    "time": t.time_ms,
                    "taker_side": t.side,
                }
                for t in market.trades
                if t.trade_id >= from_id
            ]
            return HttpReply.json(200, {"symbol": symbol, "trades": trades})
        if resource == "fair":
            return HttpReply.json(200, fair_reply(symbol, market, query))
        if resource == "truth":
            from_time = int_query(query, "from_time_ms")
            rows = truth_rows(market.truth, from_time, pair.price_text, pair.qty_text)
            return HttpReply.json(200, {"symbol": symbol, "trades": rows})
        raise HttpError(404, {"error": f"unknown resource {resource!r}"})

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for symbol, m in self.markets.items():
            bid, ask = m.book.best(Side.BID), m.book.best(Side.ASK)
            out[symbol] = {
                "last_trade_id": m.next_trade_id - 1,
                "trade_count": len(m.trades),
                "steps": m.steps,
                "checksum": m.checksum(),
                "best_bid": None if bid is None else m.pair.price_text(bid),
                "best_ask": None if ask is None else m.pair.price_text(ask),
            }
        return out
