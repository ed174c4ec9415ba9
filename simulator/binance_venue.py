"""Binance spot protocol on top of ``BinanceMarket``: stream paths, REST depth, weight limits.

Served under ``/binance``: ``/binance/stream?streams=a/b`` (combined), ``/binance/ws/a/b`` (raw),
``/binance/api/v3/depth``, ``/binance/api/v3/ping``, ``/binance/api/v3/time``.
Times in frames are the model's event times: a depth event's ``E``, a trade's ``E`` and ``T``
(the same); REST snapshots carry none, as on Binance.
Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from simulator.binance import BinanceMarket, DepthDiff, depth_update_event, trade_event
from simulator.book import Side, truth_rows
from simulator.market import LatentMarket, fair_of, fair_reply
from simulator.venue import HttpError, HttpReply, OutFrame, Subscription, int_query

INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
MISSING_SYMBOL = {
    "code": -1102,
    "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
}
DEPTH_STREAM_SUFFIXES = ("@depth", "@depth@100ms", "@depth@1000ms")
MAX_DEPTH_LIMIT = 5000


def depth_weight(limit: int) -> int:
    """REST weight of ``GET /api/v3/depth`` by limit (5 / 25 / 50 / 250)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


class BinanceVenue:
    """The Binance spot venue: one ``BinanceMarket`` per symbol."""

    name = "binance"

    def __init__(
        self,
        symbols: tuple[str, ...],
        seed: int,
        depth_levels: int,
        max_changes: int,
        trade_probability: float,
        rest_weight_limit_1m: int,
        id_offset: int = 0,
        latent: LatentMarket | None = None,
        sweep_scale: float = 1.0,
    ) -> None:
        self.latent = latent or LatentMarket(seed)  # the one market, shared by every venue
        self.markets = {
            s: BinanceMarket(
                s, seed, depth_levels, max_changes, trade_probability, id_offset=id_offset,
                latent=self.latent, sweep_scale=sweep_scale,
            )
            for s in symbols
        }
        self.rest_weight_limit_1m = rest_weight_limit_1m
        self._weight_minute = -1
        self._weight_used = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.markets)

    # --- market ---------------------------------------------------------------------------

    def step(self, symbol: str, now_ms: int) -> list[OutFrame]:
        market = self.markets[symbol]
        frames = []
        for event in market.step(now_ms):
            if isinstance(event, DepthDiff):
                body = depth_update_event(symbol, market.spec, event)
                frames.append(OutFrame(symbol, "depth", event.final_update_id, orjson.dumps(body)))
            else:
                body = trade_event(symbol, market.spec, event)
                frames.append(OutFrame(symbol, "trade", event.trade_id, orjson.dumps(body)))
        return frames

    # --- WebSocket ------------------------------------------------------------------------

    def _stream_key(self, name: str) -> tuple[str, str]:
        sym, _, kind = name.partition("@")
        symbol = sym.upper()
        # stream names are lower case on Binance; upper case gets no data there, an error here
        if sym != sym.lower() or symbol not in self.markets:
            raise HttpError(400, INVALID_SYMBOL)
        if kind == "trade":
            return symbol, "trade"
        if "@" + kind in DEPTH_STREAM_SUFFIXES:
            return symbol, "depth"
        raise HttpError(400, {"code": 2, "msg": f"Invalid request: unknown stream {name!r}"})

    def _add_streams(self, sub: Subscription, names: list[str]) -> None:
        for name in names:
            key = self._stream_key(name)
            if sub.combined:
                sub.streams[key] = (b'{"stream":"' + name.encode() + b'","data":', b"}")
            else:
                sub.streams[key] = (b"", b"")
            sub.names[key] = name

    def ws_subscription(self, path: str, query: Mapping[str, list[str]]) -> Subscription:
        if path == "/stream":
            sub = Subscription(combined=True)
            names = [n for q in query.get("streams", []) for n in q.split("/") if n]
        elif path == "/ws" or path.startswith("/ws/"):
            sub = Subscription(combined=False)
            names = [n for n in path[len("/ws") :].split("/") if n]
        else:
            raise HttpError(404, {"code": -1000, "msg": f"Unknown path {path!r}."})
        self._add_streams(sub, names)
        return sub

    def ws_message(self, sub: Subscription, message: str | bytes) -> bytes | None:
        """Live SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS requests."""
        try:
            req = orjson.loads(message)
            method, req_id = req["method"], req.get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return orjson.dumps({"code": 3, "msg": "Invalid JSON: expected value", "id": None})
        params = req.get("params") or []
        try:
            if method == "SUBSCRIBE":
                self._add_streams(sub, list(params))
                return orjson.dumps({"result": None, "id": req_id})
            if method == "UNSUBSCRIBE":
                for name in params:
                    key = self._stream_key(name)
                    sub.streams.pop(key, None)
                    sub.names.pop(key, None)
                return orjson.dumps({"result": None, "id": req_id})
            if method == "LIST_SUBSCRIPTIONS":
                return orjson.dumps({"result": list(sub.names.values()), "id": req_id})
        except HttpError as exc:
            return orjson.dumps({**orjson.loads(exc.reply.body), "id": req_id})
        return orjson.dumps(
            {"code": 2, "msg": f"Invalid request: unknown variant {method}", "id": req_id}
        )

    # --- REST -----------------------------------------------------------------------------

    def _charge(self, weight: int, now: float) -> tuple[tuple[str, str], ...]:
        """Fixed one-minute weight window, as Binance counts it; 429 beyond the limit."""
        minute = int(now // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        if self._weight_used + weight > self.rest_weight_limit_1m:
            retry_after = max(1, int((minute + 1) * 60 - now))
            raise HttpError(
                429,
                {"code": -1003, "msg": "Too much request weight used."},
                (("Retry-After", str(retry_after)),
                 ("X-MBX-USED-WEIGHT-1M", str(self._weight_used))),
            )
        self._weight_used += weight
        return (("X-MBX-USED-WEIGHT-1M", str(self._weight_used)),)

    def http(self, method: str, path: str, query: Mapping[str, list[str]], now: float) -> HttpReply:
        if path == "/api/v3/ping":
            return HttpReply.json(200, {}, self._charge(1, now))
        if path == "/api/v3/time":
            return HttpReply.json(200, {"serverTime": int(now * 1000)}, self._charge(1, now))
        if path != "/api/v3/depth":
            raise HttpError(404, {"code": -1000, "msg": f"Unknown path {path!r}."})
        if method != "GET":
            raise HttpError(405, {"code": -1000, "msg": f"Method {method} not allowed."})
        symbol = (query.get("symbol") or [""])[0]
        if not symbol:
            raise HttpError(400, MISSING_SYMBOL)
        market = self.markets.get(symbol)
        if market is None:
            raise HttpError(400, INVALID_SYMBOL)
        raw_limit = (query.get("limit") or ["100"])[0]
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            raise HttpError(400, {"code": -1100, "msg": "Illegal characters found in parameter "
                                  "'limit'; legal range is '^[0-9]{1,20}$'."})
        limit = min(int(raw_limit), MAX_DEPTH_LIMIT)  # Binance truncates larger limits to 5000
        headers = self._charge(depth_weight(limit), now)
        return HttpReply.json(200, market.snapshot(limit), headers)

    # --- introspection --------------------------------------------------------------------

    def introspect(self, resource: str, query: Mapping[str, list[str]]) -> HttpReply:
        symbol = (query.get("symbol") or [""])[0]
        market = self.markets.get(symbol)
        if market is None:
            raise HttpError(400, INVALID_SYMBOL)
        if resource == "book":
            return HttpReply.json(200, {"symbol": symbol, **market.snapshot(), **fair_of(market)})
        if resource == "trades":
            from_id = int((query.get("from_id") or ["0"])[0])
            trades = [
                {
                    "id": t.trade_id,
                    "price": market.spec.price_text(t.price_ticks),
                    "qty": market.spec.qty_text(t.qty_lots),
                    "time": t.time_ms,
                    "is_buyer_maker": t.is_buyer_maker,
                }
                for t in market.trades
                if t.trade_id >= from_id
            ]
            return HttpReply.json(200, {"symbol": symbol, "trades": trades})
        if resource == "fair":
            return HttpReply.json(200, fair_reply(symbol, market, query))
        if resource == "truth":
            from_time = int_query(query, "from_time_ms")
            rows = truth_rows(
                market.truth, from_time, market.spec.price_text, market.spec.qty_text
            )
            return HttpReply.json(200, {"symbol": symbol, "trades": rows})
        raise HttpError(404, {"error": f"unknown resource {resource!r}"})

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for symbol, m in self.markets.items():
            bid, ask = m.book.best(Side.BID), m.book.best(Side.ASK)
            out[symbol] = {
                "last_update_id": m.last_update_id,
                "last_trade_id": m.next_trade_id - 1,
                "trade_count": len(m.trades),
                "steps": m.steps,
                "best_bid": None if bid is None else m.spec.price_text(bid),
                "best_ask": None if ask is None else m.spec.price_text(ask),
            }
        return out
