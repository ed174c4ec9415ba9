"""Coinbase Advanced Trade market model and message builders. Pure, no I/O, no wall clock.

``CoinbaseMarket`` evolves one product's true book from a seed. The price and size dynamics
are those of ``simulator.binance.BinanceMarket`` (reused, not copied) with Coinbase's quoting
profile around the one market's fair value: this module only maps its events to Coinbase's
messages. Times come from the caller's
``now_ms`` (strictly increasing per product, see ``BinanceMarket.step``), so a fake clock gives
byte-identical messages on every run.

Every message has ``channel``, ``client_id``, ``timestamp``, ``sequence_num`` and ``events``.
``sequence_num`` counts the messages of one connection, so the builders here take it as an
argument (the venue builds with -1 and the server stamps it as each message goes out).

Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels
"""

from __future__ import annotations

import time
from typing import Any

from simulator.binance import BinanceMarket, DepthDiff, Trade
from simulator.book import (
    InstrumentSpec,
    Side,
    TradeTruth,
    TrueBook,
    instrument_spec,
    units_text,
)
from simulator.market import LatentMarket

DOCS_CHANNELS = (
    "https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels"
)
# event_time of every level in a snapshot, as in Coinbase's documented example
SNAPSHOT_EVENT_TIME = "1970-01-01T00:00:00Z"
SIDE_TEXT = {Side.BID: "bid", Side.ASK: "offer"}  # Coinbase calls the ask side "offer"

MarketEvent = DepthDiff | Trade


def decimal_text(count: int, unit: int = 1) -> str:
    """``count`` steps of ``unit`` (1e-8) as Coinbase prints decimals, without trailing zeros:
    "21921.3", "0.02", "0"."""
    text = units_text(count * unit).rstrip("0").rstrip(".")
    return text or "0"


def rfc3339(ms: int) -> str:
    """Go's RFC 3339 with nanoseconds, trailing zeros trimmed: 1675974770714 ->
    "2023-02-09T20:32:50.714Z" (Coinbase's servers are written in Go)."""
    secs, milli = divmod(ms, 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    frac = f".{milli:03d}".rstrip("0").rstrip(".")
    return f"{base}{frac}Z"


def _message(channel: str, ts_ms: int, sequence_num: int, events: list[Any]) -> dict[str, Any]:
    return {
        "channel": channel,
        "client_id": "",
        "timestamp": rfc3339(ts_ms),
        "sequence_num": sequence_num,
        "events": events,
    }


def level(side: Side, event_time: str, price: str, qty: str) -> dict[str, str]:
    """One entry of an ``l2_data`` event's ``updates``."""
    return {"side": SIDE_TEXT[side], "event_time": event_time, "price_level": price,
            "new_quantity": qty}


def l2_message(
    ts_ms: int, sequence_num: int, product: str, kind: str, updates: list[dict[str, str]]
) -> dict[str, Any]:
    """A ``level2`` channel message (arrives on channel ``l2_data``); kind snapshot | update.

    Example: {"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z",
              "sequence_num":0,"events":[{"type":"snapshot","product_id":"BTC-USD",
              "updates":[{"side":"bid","event_time":"1970-01-01T00:00:00Z",
              "price_level":"21921.73","new_quantity":"0.06317902"}]}]}
    ``new_quantity`` is the absolute size at the level; "0" removes it. The snapshot is the
    whole book; updates follow on the same connection.
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels#level2-channel
    """
    event = {"type": kind, "product_id": product, "updates": updates}
    return _message("l2_data", ts_ms, sequence_num, [event])


def trade_entry(product: str, spec: InstrumentSpec, trade: Trade) -> dict[str, str]:
    """One entry of a ``market_trades`` event's ``trades``.

    ``side`` is the MAKER's side, as on Coinbase's Exchange ``match`` messages (and as
    Coinbase's public trades are read by NautilusTrader): "BUY" when the resting order was a
    bid, i.e. the taker sold. Coinbase's Advanced Trade docs do not say which side it is; the
    job's parser (``jobs/native/src/parse/coinbase.rs``) turns it into the taker's side.
    """
    return {
        "trade_id": str(trade.trade_id),
        "product_id": product,
        "price": decimal_text(trade.price_ticks, spec.tick_units),
        "size": decimal_text(trade.qty_lots, spec.lot_units),
        "side": "BUY" if trade.is_buyer_maker else "SELL",
        "time": rfc3339(trade.time_ms),
    }


def market_trades_message(
    ts_ms: int, sequence_num: int, kind: str, trades: list[dict[str, str]]
) -> dict[str, Any]:
    """A ``market_trades`` message; kind snapshot (recent trades, on subscribe) | update.

    Example: {"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z",
              "sequence_num":0,"events":[{"type":"snapshot","trades":[{"trade_id":"000000000",
              "product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY",
              "time":"2019-08-14T20:42:27.265Z"}]}]}
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels#market-trades-channel
    """
    return _message("market_trades", ts_ms, sequence_num, [{"type": kind, "trades": trades}])


def heartbeats_message(
    ts_ms: int, sequence_num: int, counter: int, uptime_ms: int
) -> dict[str, Any]:
    """A ``heartbeats`` message (one per second on a connection subscribed to heartbeats).

    Example: {"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:26.122969572Z",
              "sequence_num":0,"events":[{"current_time":
              "2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105",
              "heartbeat_counter":"3049"}]}
    ``current_time`` is Go's ``time.String()`` (with the monotonic clock reading ``m=+``).
    ``heartbeat_counter`` is sent as an integer: the prose docs show a string, Coinbase's
    AsyncAPI spec (checked against production) an integer.
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels#heartbeats-channel
    """
    secs, milli = divmod(ts_ms, 1000)
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
    current = f"{clock}.{milli:03d}000000 +0000 UTC m=+{uptime_ms / 1000:.9f}"
    event = {"current_time": current, "heartbeat_counter": counter}
    return _message("heartbeats", ts_ms, sequence_num, [event])


def subscriptions_message(
    ts_ms: int, sequence_num: int, subscriptions: dict[str, list[str]]
) -> dict[str, Any]:
    """The ``subscriptions`` message sent after every subscribe / unsubscribe: everything the
    connection is subscribed to now (channel -> product ids; heartbeats -> ["heartbeats"]).

    Example: {"channel":"subscriptions","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z",
              "sequence_num":1,"events":[{"subscriptions":{"level2":["BTC-USD"],
              "heartbeats":["heartbeats"]}}]}
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview
    """
    return _message("subscriptions", ts_ms, sequence_num, [{"subscriptions": subscriptions}])


def error_message(message: str, reason: str) -> dict[str, str]:
    """What a refused subscribe gets (no ``sequence_num``).

    Example: {"type":"error","message":"Failed to subscribe","reason":"..."}
    Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview
    """
    return {"type": "error", "message": message, "reason": reason}


class CoinbaseMarket:
    """The true book and trade tape of one Coinbase product, driven by a seeded RNG.

    Each ``step`` emits one level2 update, preceded now and then by a taker's trades (see
    ``BinanceMarket``, whose model of the one market it reuses with Coinbase's quoting profile).
    """

    def __init__(
        self,
        product: str,
        seed: int,
        depth_levels: int,
        max_changes: int,
        trade_probability: float,
        spec: InstrumentSpec | None = None,
        id_offset: int = 0,
        *,
        latent: LatentMarket | None = None,
        sweep_scale: float = 1.0,
    ) -> None:
        self.product = product
        self.spec = spec or instrument_spec(product)
        self._model = BinanceMarket(
            product, seed, depth_levels, max_changes, trade_probability, self.spec, id_offset,
            venue="coinbase", latent=latent, sweep_scale=sweep_scale,
        )
        self.updates = 0  # level2 updates generated so far: the book's own sequence

    @property
    def book(self) -> TrueBook:
        return self._model.book

    @property
    def trades(self) -> list[Trade]:
        return self._model.trades

    @property
    def truth(self) -> list[TradeTruth]:
        return self._model.truth

    @property
    def steps(self) -> int:
        return self._model.steps

    @property
    def last_time_ms(self) -> int:
        """Event time of the last level2 update (0: none yet)."""
        return self._model.last_time_ms

    @property
    def last_trade_id(self) -> int:
        return self._model.next_trade_id - 1

    @property
    def instrument(self) -> str:
        return self._model.instrument

    def fair_value(self, time_ms: int) -> float:
        return self._model.fair_value(time_ms)

    def step(self, now_ms: int) -> list[MarketEvent]:
        """Advance the market by one step: [Trade..., DepthDiff]."""
        events = self._model.step(now_ms)
        self.updates += 1
        return events

    def price(self, ticks: int) -> str:
        return decimal_text(ticks, self.spec.tick_units)

    def qty(self, lots: int) -> str:
        return decimal_text(lots, self.spec.lot_units)

    def snapshot_updates(self) -> list[dict[str, str]]:
        """The whole book as snapshot ``updates``: bids best first, then offers best first."""
        return [
            level(side, SNAPSHOT_EVENT_TIME, self.price(t), self.qty(q))
            for side in (Side.BID, Side.ASK)
            for t, q in self.book.levels(side)
        ]

    def diff_updates(self, diff: DepthDiff) -> list[dict[str, str]]:
        """A depth diff as update ``updates`` (absolute quantities, "0" removes)."""
        when = rfc3339(diff.event_time_ms)
        return [level(Side.BID, when, self.price(t), self.qty(q)) for t, q in diff.bids] + [
            level(Side.ASK, when, self.price(t), self.qty(q)) for t, q in diff.asks
        ]

    def levels_text(self, side: Side) -> list[list[str]]:
        """[[price, size], ...] best first, for introspection."""
        return [[self.price(t), self.qty(q)] for t, q in self.book.levels(side)]
