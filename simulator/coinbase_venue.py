"""Coinbase Advanced Trade protocol on top of ``CoinbaseMarket``: subscriptions, sequence numbers.

Served under ``/coinbase`` (the WebSocket root, like ``wss://advanced-trade-ws.coinbase.com``).
A client subscribes one channel per message:
``{"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"}`` (also
``market_trades``; ``heartbeats`` needs no products) and ``"type": "unsubscribe"`` alike.
A new level2 subscription gets the product's whole book as an in-band ``snapshot`` first and
``update`` events after it; a new market_trades subscription gets the recent trades as a
``snapshot``; every subscribe / unsubscribe is answered with a ``subscriptions`` message.
``sequence_num`` counts every message of a connection, across channels, from 0, in the order
the messages are sent: messages are built with a placeholder and the server stamps each as it
goes out (``CoinbaseSubscription.stamp``), so a message held back by a delay fault still gets
the next number when it is sent, while a dropped one uses its number up (the client sees a
gap) and a reordered one is numbered where it was due (the client sees it come late).
Message ``timestamp``s of market data are the model's event times: an ``l2_data`` update's is
its depth event's (as is every ``event_time`` in it), a ``market_trades`` update's is its
trade's ``time``; a level2 snapshot's is the time of the last update it includes.

Heartbeats ride on the market's clock: the first market step after each
``heartbeat_interval_ms`` broadcasts one to the connections subscribed to heartbeats (each
with its own ``heartbeat_counter``). A paused simulator therefore sends no heartbeats either.

Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from simulator.binance import DepthDiff
from simulator.book import Side, truth_rows
from simulator.coinbase import (
    CoinbaseMarket,
    error_message,
    heartbeats_message,
    l2_message,
    market_trades_message,
    subscriptions_message,
    trade_entry,
)
from simulator.market import LatentMarket, fair_of, fair_reply
from simulator.venue import HttpError, HttpReply, OutFrame, Subscription, int_query

# channel a client subscribes to -> OutFrame channel of its market data (the fault-injection
# and send-log name, the same as Binance's: /_sim/faults/drop?exchange=coinbase&channel=depth)
DATA_CHANNELS = {"level2": "depth", "market_trades": "trade"}
HEARTBEATS = "heartbeats"
TRADE_SNAPSHOT_SIZE = 50  # recent trades sent on a market_trades subscribe (newest first)
# messages are built with this sequence_num and stamped per connection (it is in the header,
# before any event, so the first occurrence is the right one)
_SEQ_PLACEHOLDER = b'"sequence_num":-1'
_HEADER_BYTES = 160  # channel, client_id, timestamp, sequence_num: well within this


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class CoinbaseSubscription(Subscription):
    """One connection's subscriptions and its message counters."""

    channels: dict[str, list[str]] = field(
        default_factory=lambda: {name: [] for name in DATA_CHANNELS}
    )
    heartbeats: bool = False
    next_seq: int = 0  # sequence_num of the next message on this connection
    heartbeat_counter: int = 0

    def stamp(self, payload: bytes) -> bytes:
        """Give a built message this connection's next sequence_num (error messages have
        none and use no number)."""
        if _SEQ_PLACEHOLDER not in payload[:_HEADER_BYTES]:
            return payload
        seq = b'"sequence_num":%d' % self.next_seq
        self.next_seq += 1
        return payload.replace(_SEQ_PLACEHOLDER, seq, 1)

    def render(self, frame: OutFrame) -> bytes | None:
        if frame.channel == HEARTBEATS:
            if not self.heartbeats:
                return None
            self.heartbeat_counter += 1
            # last_id of a heartbeat frame carries its time and data the simulator's uptime
            uptime_ms = int(frame.data or b"0")
            body = heartbeats_message(frame.last_id, -1, self.heartbeat_counter, uptime_ms)
            return orjson.dumps(body)
        if (frame.symbol, frame.channel) not in self.streams:
            return None
        return frame.data

    def listing(self) -> dict[str, list[str]]:
        """Channel -> products, as the ``subscriptions`` message lists them."""
        out = {name: list(products) for name, products in self.channels.items() if products}
        if self.heartbeats:
            out[HEARTBEATS] = [HEARTBEATS]
        return out


def _dumps(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


class CoinbaseVenue:
    """The Coinbase Advanced Trade venue: one ``CoinbaseMarket`` per product."""

    name = "coinbase"

    def __init__(
        self,
        products: tuple[str, ...],
        seed: int,
        depth_levels: int,
        max_changes: int,
        trade_probability: float,
        heartbeat_interval_ms: int,
        id_offset: int = 0,
        latent: LatentMarket | None = None,
        sweep_scale: float = 1.0,
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.latent = latent or LatentMarket(seed)  # the one market, shared by every venue
        self.markets = {
            p: CoinbaseMarket(
                p, seed, depth_levels, max_changes, trade_probability, id_offset=id_offset,
                latent=self.latent, sweep_scale=sweep_scale,
            )
            for p in products
        }
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._clock_ms = clock_ms
        self._started_ms: int | None = None
        self._next_heartbeat_ms = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.markets)

    # --- market ---------------------------------------------------------------------------

    def step(self, symbol: str, now_ms: int) -> list[OutFrame]:
        market = self.markets[symbol]
        frames = []
        if self._started_ms is None:
            self._started_ms = now_ms
        if self.heartbeat_interval_ms > 0 and now_ms >= self._next_heartbeat_ms:
            uptime = str(now_ms - self._started_ms).encode()
            frames.append(OutFrame("", HEARTBEATS, now_ms, uptime))
            self._next_heartbeat_ms = now_ms - now_ms % self.heartbeat_interval_ms
            self._next_heartbeat_ms += self.heartbeat_interval_ms
        for event in market.step(now_ms):
            if isinstance(event, DepthDiff):
                updates = market.diff_updates(event)
                body = l2_message(event.event_time_ms, -1, symbol, "update", updates)
                frames.append(OutFrame(symbol, "depth", market.updates, _dumps(body)))
            else:
                trades = [trade_entry(symbol, market.spec, event)]
                body = market_trades_message(event.time_ms, -1, "update", trades)
                frames.append(OutFrame(symbol, "trade", event.trade_id, _dumps(body)))
        return frames

    # --- WebSocket ------------------------------------------------------------------------

    def ws_subscription(self, path: str, query: Mapping[str, list[str]]) -> Subscription:
        if path not in ("", "/"):
            raise HttpError(404, {"error": "NOT_FOUND", "message": f"Unknown path {path!r}"})
        return CoinbaseSubscription(combined=False)

    def ws_message(self, sub: Subscription, message: str | bytes) -> bytes | list[OutFrame] | None:
        """A subscribe / unsubscribe request: snapshots for new level2 and market_trades
        subscriptions, then the ``subscriptions`` message; an error message if refused."""
        assert isinstance(sub, CoinbaseSubscription)
        try:
            req = orjson.loads(message)
            kind, channel = req["type"], req["channel"]
            products = req.get("product_ids") or []
            if not isinstance(products, list):
                raise TypeError("product_ids must be a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _dumps(error_message("Failed to parse request", str(exc)))
        if kind not in ("subscribe", "unsubscribe"):
            return _dumps(error_message("Failed to parse request", f"unknown type {kind!r}"))
        if channel != HEARTBEATS and channel not in DATA_CHANNELS:
            return _dumps(error_message(f"Failed to {kind}", f"unknown channel {channel!r}"))
        unknown = [p for p in products if p not in self.markets]
        if unknown or (channel != HEARTBEATS and not products):
            reason = f"unknown product ids {unknown}" if unknown else "product_ids required"
            return _dumps(error_message(f"Failed to {kind}", reason))
        now_ms = self._clock_ms()
        frames: list[OutFrame] = []
        if channel == HEARTBEATS:
            sub.heartbeats = kind == "subscribe"
        elif kind == "subscribe":
            frames = self._subscribe(sub, channel, products, now_ms)
        else:
            for product in products:
                if product in sub.channels[channel]:
                    sub.channels[channel].remove(product)
                    sub.streams.pop((product, DATA_CHANNELS[channel]), None)
        ack = subscriptions_message(now_ms, -1, sub.listing())
        frames.append(OutFrame("", "control", 0, _dumps(ack)))
        return frames

    def _subscribe(
        self, sub: CoinbaseSubscription, channel: str, products: list[str], now_ms: int
    ) -> list[OutFrame]:
        """Add the new products (a repeated subscribe changes nothing); their snapshots."""
        frames = []
        out_channel = DATA_CHANNELS[channel]
        for product in products:
            if product in sub.channels[channel]:
                continue
            sub.channels[channel].append(product)
            sub.streams[(product, out_channel)] = (b"", b"")
            market = self.markets[product]
            if channel == "level2":
                # the state as of its last update (the clock may trail the market's times)
                when = market.last_time_ms or now_ms
                body = l2_message(when, -1, product, "snapshot", market.snapshot_updates())
                frames.append(OutFrame(product, "depth", market.updates, _dumps(body)))
            elif market.trades:
                recent = market.trades[-TRADE_SNAPSHOT_SIZE:][::-1]
                entries = [trade_entry(product, market.spec, t) for t in recent]
                body = market_trades_message(now_ms, -1, "snapshot", entries)
                last = recent[0].trade_id
                frames.append(OutFrame(product, "trade", last, _dumps(body)))
        return frames

    # --- REST -----------------------------------------------------------------------------

    def http(self, method: str, path: str, query: Mapping[str, list[str]], now: float) -> HttpReply:
        # the connector needs no REST: snapshots arrive in-band on the WebSocket
        raise HttpError(404, {"error": "NOT_FOUND", "message": f"Unknown path {path!r}"})

    # --- introspection --------------------------------------------------------------------

    def introspect(self, resource: str, query: Mapping[str, list[str]]) -> HttpReply:
        """``book``: {"symbol", "bids", "asks", "sequence_num", "fair_value", "fair_time_ms"}
        where sequence_num counts the
        product's level2 updates (connections number their messages each their own way);
        ``trades``: {"symbol", "trades": [{"id", "price", "qty", "time", "taker_side"}]};
        ``truth``: {"symbol", "trades": [{"trade_id", "trade_time_ms", "book_time_ms",
        "bid_price", "bid_size", "ask_price", "ask_size", "taker_side"}]}."""
        symbol = (query.get("symbol") or [""])[0]
        market = self.markets.get(symbol)
        if market is None:
            raise HttpError(400, {"error": f"unknown product {symbol!r}"})
        if resource == "book":
            return HttpReply.json(200, {
                "symbol": symbol,
                "bids": market.levels_text(Side.BID),
                "asks": market.levels_text(Side.ASK),
                "sequence_num": market.updates,
                **fair_of(market),
            })
        if resource == "trades":
            from_id = int((query.get("from_id") or ["0"])[0])
            trades = [
                {
                    "id": str(t.trade_id),
                    "price": market.price(t.price_ticks),
                    "qty": market.qty(t.qty_lots),
                    "time": t.time_ms,
                    "taker_side": "sell" if t.is_buyer_maker else "buy",
                }
                for t in market.trades
                if t.trade_id >= from_id
            ]
            return HttpReply.json(200, {"symbol": symbol, "trades": trades})
        if resource == "fair":
            return HttpReply.json(200, fair_reply(symbol, market, query))
        if resource == "truth":
            from_time = int_query(query, "from_time_ms")
            rows = truth_rows(market.truth, from_time, market.price, market.qty)
            return HttpReply.json(200, {"symbol": symbol, "trades": rows})
        raise HttpError(404, {"error": f"unknown resource {resource!r}"})

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for product, m in self.markets.items():
            bid, ask = m.book.best(Side.BID), m.book.best(Side.ASK)
            out[product] = {
                "sequence_num": m.updates,
                "last_trade_id": m.last_trade_id,
                "trade_count": len(m.trades),
                "steps": m.steps,
                "best_bid": None if bid is None else m.price(bid),
                "best_ask": None if ask is None else m.price(ask),
            }
        return out
