"""Kraken spot (WebSocket v2) market model and frame builders. Pure, no I/O, no wall clock.

``KrakenMarket`` evolves one pair's true book from a seed, like ``BinanceMarket``: the events
depend only on the seed, the configuration and the times, which come from the caller's
(strictly increasing per pair, as ``BinanceMarket.step`` makes them). Prices
are integers in units of the pair's price precision (``pair_decimals``: BTC/USD 45283.5 is
452835) and quantities integers in units of its lot precision (``lot_decimals``: 0.10000000 is
10000000), so the JSON numbers are written as text with exactly the pair's precision, never
through float, as Kraken prints them.

A subscription sees the top ``depth`` levels per side. ``book_update`` turns one step of the
true book into what a subscriber of a given depth receives: the changes within its view
(several for one level when it changed several times, in order) and the levels that entered
the view; levels pushed out of the view get no delete, the client truncates.

The checksum here is computed from the integers (``str(price_units) + str(qty_units)`` is the
documented "text without '.' and leading zeros"), independently of the job's compiled core
(``jobs/native/src/book/kraken.rs``), which works on the decimal text: tests check that both
agree.

Docs: https://docs.kraken.com/api/docs/websocket-v2/book
and https://docs.kraken.com/api/docs/guides/spot-ws-book-v2 (checksum)
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from simulator.book import Side, TradeTruth, TrueBook
from simulator.market import BookMaker, LatentMarket, Quote, VenueQuoter, canonical_instrument

CHECKSUM_LEVELS = 10
TRADE_SNAPSHOT_SIZE = 50  # trades in the snapshot after subscribing to ``trade``
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Levels = list[tuple[int, int]]  # (price units, qty units), best first


@dataclass(frozen=True, slots=True)
class KrakenPair:
    """Trading rules and starting point of one simulated pair (as in Kraken's AssetPairs)."""

    price_decimals: int  # pair_decimals: BTC/USD prices have 1 decimal (45283.5)
    qty_decimals: int  # lot_decimals: quantities have 8 (0.10000000)
    start_price: str  # where the mid starts
    typical_qty: str  # median resting quantity of one level

    @property
    def start_units(self) -> int:
        return int(Decimal(self.start_price).scaleb(self.price_decimals))

    @property
    def typical_units(self) -> int:
        return int(Decimal(self.typical_qty).scaleb(self.qty_decimals))

    def price_text(self, units: int) -> str:
        return fixed_text(units, self.price_decimals)

    def qty_text(self, units: int) -> str:
        return fixed_text(units, self.qty_decimals)


# Rough real-world precisions; USD and USDT pairs are different instruments.
KRAKEN_PAIRS: dict[str, KrakenPair] = {
    "BTC/USD": KrakenPair(1, 8, "62000.0", "0.5"),
    "ETH/USD": KrakenPair(2, 8, "3000.00", "6"),
    "SOL/USD": KrakenPair(2, 8, "150.00", "40"),
    "XRP/USD": KrakenPair(5, 8, "0.52000", "8000"),
    "ADA/USD": KrakenPair(6, 8, "0.450000", "9000"),
    "DOGE/USD": KrakenPair(7, 8, "0.1200000", "60000"),
    "LTC/USD": KrakenPair(2, 8, "80.00", "30"),
    "DOT/USD": KrakenPair(4, 8, "6.0000", "600"),
    "LINK/USD": KrakenPair(5, 8, "14.00000", "250"),
    "MATIC/USD": KrakenPair(4, 8, "0.5666", "5000"),
    "BTC/USDT": KrakenPair(1, 8, "62010.0", "0.3"),
    "ETH/USDT": KrakenPair(2, 8, "3001.00", "4"),
    "ETH/BTC": KrakenPair(5, 8, "0.04840", "8"),
    "BTC/EUR": KrakenPair(1, 8, "57000.0", "0.4"),
    "USDT/USD": KrakenPair(5, 2, "1.00000", "50000"),
}


def kraken_pair(symbol: str) -> KrakenPair:
    try:
        return KRAKEN_PAIRS[symbol]
    except KeyError:
        raise ValueError(
            f"no simulated Kraken pair {symbol!r}; known: {', '.join(KRAKEN_PAIRS)}"
        ) from None


def fixed_text(units: int, decimals: int) -> str:
    """Exact decimal text of a non-negative amount in units of 10**-decimals: 452835, 1 ->
    "45283.5"; 10000000, 8 -> "0.10000000"."""
    if units < 0:
        raise ValueError(f"negative amount {units}")
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


def rfc3339(time_ms: int) -> str:
    """Kraken's timestamps: RFC 3339 with microseconds, "2023-09-25T07:49:37.708000Z"."""
    return (EPOCH + timedelta(milliseconds=time_ms)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def book_checksum(bids: Levels, asks: Levels) -> int:
    """CRC32 of the top 10 asks (low -> high) then top 10 bids (high -> low), each level as
    its price then its quantity without '.' and leading zeros, which for fixed-precision
    integers is simply their decimal digits. Docs: https://docs.kraken.com/api/docs/guides/spot-ws-book-v2
    """
    text = "".join(f"{p}{q}" for p, q in asks[:CHECKSUM_LEVELS])
    text += "".join(f"{p}{q}" for p, q in bids[:CHECKSUM_LEVELS])
    return zlib.crc32(text.encode("ascii"))


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade: a taker consumed (part of) one opposite level (a sweep: several trades)."""

    trade_id: int
    price: int
    qty: int
    time_ms: int
    side: str  # the taker's side: "buy" took the best ask, "sell" hit the best bid
    ord_type: str  # "market" | "limit" (a marketable limit order)


@dataclass(frozen=True, slots=True)
class BookStep:
    """One step of the true book: the views before and after, and the changes in between."""

    time_ms: int
    seq: int  # book steps of this market so far (Kraken has no update ids; for the send log)
    changes: tuple[tuple[Side, int, int], ...]  # (side, price, qty) in order; qty 0 removes
    before: tuple[Levels, Levels]  # (bids, asks) best first
    after: tuple[Levels, Levels]

    @property
    def checksum(self) -> int:
        return book_checksum(*self.after)


def _side_update(
    changes: list[tuple[int, int]], before: Levels, after: Levels, depth: int
) -> list[tuple[int, int]]:
    """The levels a subscriber of ``depth`` receives for one side of one step.

    Its book equals the top ``depth`` before the step. It gets every change to a price in its
    view before or after the step (all of them, in order: the last one is the level's new
    quantity), plus each level that entered the view without changing. It gets nothing for
    levels pushed out of the view: after applying, it truncates them.
    """
    was = dict(before[:depth])
    now = dict(after[:depth])
    out = [(p, q) for p, q in changes if p in was or p in now]
    touched = {p for p, _ in out}
    out += [(p, q) for p, q in now.items() if p not in was and p not in touched]
    return out


def book_update(step: BookStep, depth: int) -> tuple[Levels, Levels] | None:
    """(bids, asks) of the update a ``depth`` subscriber gets, or None if its view is unchanged."""
    bids = _side_update(
        [(p, q) for s, p, q in step.changes if s is Side.BID], step.before[0], step.after[0], depth
    )
    asks = _side_update(
        [(p, q) for s, p, q in step.changes if s is Side.ASK], step.before[1], step.after[1], depth
    )
    return (bids, asks) if bids or asks else None


# --- frame builders -------------------------------------------------------------------------


def _levels_json(pair: KrakenPair, levels: Levels) -> str:
    return ",".join(
        f'{{"price":{pair.price_text(p)},"qty":{pair.qty_text(q)}}}' for p, q in levels
    )


def book_message(
    kind: str,
    symbol: str,
    pair: KrakenPair,
    bids: Levels,
    asks: Levels,
    checksum: int,
    time_ms: int,
) -> bytes:
    """A book snapshot (``kind`` "snapshot", levels best first) or update (changed levels).

    Numbers are written as text with the pair's precision, never through float.
    Example: {"channel":"book","type":"update","data":[{"symbol":"MATIC/USD",
              "bids":[{"price":0.5657,"qty":1098.39475580}],"asks":[],
              "checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/book
    """
    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":{orjson.dumps(symbol).decode()},'
        f'"bids":[{_levels_json(pair, bids)}],"asks":[{_levels_json(pair, asks)}],'
        f'"checksum":{checksum},"timestamp":"{rfc3339(time_ms)}"}}]}}'
    ).encode()


def trade_message(kind: str, symbol: str, pair: KrakenPair, trades: list[Trade]) -> bytes:
    """Trades of one pair: ``kind`` "snapshot" (recent trades after subscribing) or "update".

    Example: {"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell",
              "price":0.5117,"qty":40.00000000,"ord_type":"market","trade_id":4665906,
              "timestamp":"2023-09-25T07:49:37.708706Z"}]}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/trade
    """
    name = orjson.dumps(symbol).decode()
    data = ",".join(
        f'{{"symbol":{name},"side":"{t.side}","price":{pair.price_text(t.price)},'
        f'"qty":{pair.qty_text(t.qty)},"ord_type":"{t.ord_type}","trade_id":{t.trade_id},'
        f'"timestamp":"{rfc3339(t.time_ms)}"}}'
        for t in trades
    )
    return f'{{"channel":"trade","type":"{kind}","data":[{data}]}}'.encode()


def method_reply(
    method: str,
    result: Mapping[str, Any] | None,
    req_id: int | None,
    time_in_ms: int,
    time_out_ms: int,
    error: str | None = None,
    symbol: str | None = None,
) -> bytes:
    """The acknowledgement of a request (one per symbol for subscribe/unsubscribe).

    Example: {"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,
              "symbol":"ALGO/USD"},"success":true,"time_in":"2023-10-06T17:35:55.219022Z",
              "time_out":"2023-10-06T17:35:55.219067Z"}
    Error:   {"error":"Currency pair not supported XYZ/USD","method":"subscribe","req_id":7,
              "success":false,"symbol":"XYZ/USD","time_in":"..","time_out":".."}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/book (subscribe ack)
    """
    reply: dict[str, Any]
    if error is None:
        reply = {"method": method}
        if result is not None:
            reply["result"] = dict(result)
        reply["success"] = True
    else:
        reply = {"error": error, "method": method, "success": False}
        if symbol is not None:
            reply["symbol"] = symbol
    reply["time_in"] = rfc3339(time_in_ms)
    reply["time_out"] = rfc3339(time_out_ms)
    if req_id is not None:
        reply["req_id"] = req_id
    return orjson.dumps(reply)


def status_message(connection_id: int) -> bytes:
    """Sent once on connect.

    Example: {"channel":"status","type":"update","data":[{"version":"2.0.0","system":"online",
              "api_version":"v2","connection_id":12393906104898154338}]}
    Docs: https://docs.kraken.com/api/docs/websocket-v2/status
    """
    data = {
        "version": "2.0.0",
        "system": "online",
        "api_version": "v2",
        "connection_id": connection_id,
    }
    return orjson.dumps({"channel": "status", "type": "update", "data": [data]})


HEARTBEAT_MESSAGE = b'{"channel":"heartbeat"}'
"""About once a second without other traffic, once subscribed to any channel.
Docs: https://docs.kraken.com/api/docs/websocket-v2/heartbeat"""


# --- the model ------------------------------------------------------------------------------


class KrakenMarket:
    """The true book and trade tape of one Kraken pair, quoted around the one market.

    Each ``step`` may start with a taker order (one trade per level taken: a sweep walks the
    book), then the book is requoted around the venue's lagging reference of the shared fair
    value (``simulator.market``) and makers change 1..``max_changes`` levels (a level may
    change twice). The book holds up to ``depth_levels`` levels per side, so subscriptions
    shallower than that see levels come and go at the edge of their view. ``truth`` records,
    per trade, the book state the taker met.
    """

    def __init__(
        self,
        symbol: str,
        seed: int,
        depth_levels: int,
        max_changes: int,
        trade_probability: float,
        pair: KrakenPair | None = None,
        id_offset: int = 0,
        *,
        latent: LatentMarket | None = None,
        sweep_scale: float = 1.0,
    ) -> None:
        if depth_levels < 2 or max_changes < 1:
            raise ValueError("depth_levels must be >= 2 and max_changes >= 1")
        self.symbol = symbol
        self.pair = pair or kraken_pair(symbol)
        self.depth_levels = depth_levels
        self.max_changes = max_changes
        self.trade_probability = trade_probability
        # str seeds hash with SHA-512: stable across processes, unlike hash()
        self._rng = random.Random(f"kraken:{seed}:{symbol}")
        self.book = TrueBook()
        # Kraken's trade ids count per pair; the offset keeps them growing across restarts
        self.next_trade_id = self._rng.randrange(10**6, 10**8) + id_offset
        self.trades: list[Trade] = []
        self.truth: list[TradeTruth] = []
        self.steps = 0
        self.last_time_ms = 0  # event time of the last book step (0: none yet)
        self._typical = max(1, self.pair.typical_units)
        self.instrument = canonical_instrument("kraken", symbol)
        self.quoter = VenueQuoter(
            latent or LatentMarket(seed),
            self.instrument,
            "kraken",
            10.0 ** -self.pair.price_decimals,
            float(self.pair.start_price),
            trade_probability,
            self._rng,
            sweep_scale,
        )
        self.maker = BookMaker(self.book, self._rng, depth_levels, self._qty, 2 * CHECKSUM_LEVELS)
        self.maker.seed(self.quoter.seed_quote())
        self._view = self._levels()

    # --- public API -----------------------------------------------------------------------

    def step(self, now_ms: int) -> list[Trade | BookStep]:
        """Advance the market by one step: [Trade..., BookStep]. Times strictly increase
        between steps as in ``BinanceMarket.step``: the trades of one taker share a time and
        their book step (their effect) comes one ms after it."""
        rng = self._rng
        self.steps += 1
        trade_ms = max(now_ms - 1, self.last_time_ms + 1)
        step_ms = max(now_ms, self.last_time_ms + 1)
        quote = self.quoter.quote(trade_ms)
        changes: list[tuple[Side, int, int]] = []

        def apply(side: Side, price: int, qty: int) -> None:
            self.book.set(side, price, qty)
            changes.append((side, price, qty))

        events: list[Trade | BookStep] = []
        if rng.random() < quote.trade_probability:
            trades = self._take(trade_ms, quote, apply)
            if trades:
                events.extend(trades)
                step_ms = trade_ms + 1
        self.maker.requote(quote, apply)
        self.maker.churn(quote, apply, max(0, rng.randint(1, self.max_changes) - len(changes)))
        before, after = self._view, self._levels()
        if not self._visible(changes, before, after):
            # every step changes the top levels, as busy books do: a subscriber of any depth
            # from 2 x CHECKSUM_LEVELS up sees each step (its book time is the truth's)
            self.maker.modify(rng.choice((Side.BID, Side.ASK)), apply, near_touch=True)
            after = self._levels()
        self._view = after
        events.append(BookStep(step_ms, self.steps, tuple(changes), before, after))
        self.last_time_ms = step_ms
        return events

    def levels(self, depth: int | None = None) -> tuple[Levels, Levels]:
        """(bids, asks) best first, at most ``depth`` per side."""
        bids, asks = self._view
        return (bids, asks) if depth is None else (bids[:depth], asks[:depth])

    def checksum(self) -> int:
        return book_checksum(*self._view)

    def snapshot_message(self, depth: int, time_ms: int) -> bytes:
        """The snapshot a new ``depth`` subscription gets now."""
        bids, asks = self.levels(depth)
        return book_message("snapshot", self.symbol, self.pair, bids, asks,
                            self.checksum(), time_ms)

    def fair_value(self, time_ms: int) -> float:
        """The one market's fair value of this pair (in its quote currency)."""
        return self.quoter.fair(time_ms)

    # --- model ----------------------------------------------------------------------------

    @staticmethod
    def _visible(
        changes: list[tuple[Side, int, int]],
        before: tuple[Levels, Levels],
        after: tuple[Levels, Levels],
    ) -> bool:
        """Whether a change falls in the top 2 x CHECKSUM_LEVELS before or after the step."""
        top = 2 * CHECKSUM_LEVELS
        seen = {
            (side, p)
            for side, i in ((Side.BID, 0), (Side.ASK, 1))
            for view in (before, after)
            for p, _ in view[i][:top]
        }
        return any((side, p) in seen for side, p, _ in changes)

    def _levels(self) -> tuple[Levels, Levels]:
        return self.book.levels(Side.BID), self.book.levels(Side.ASK)

    def _qty(self, level: int = 0) -> int:
        qty = self.quoter.level_lots(self._typical, level)
        # sizes with a random number of significant digits: 0.10000000 and 1.54582015 alike
        if self._rng.random() < 0.4:
            unit = 10 ** self._rng.randint(0, max(0, len(str(qty)) - 1))
            qty = max(unit, qty // unit * unit)
        return qty

    def _take(
        self, now_ms: int, quote: Quote, apply: Callable[[Side, int, int], None]
    ) -> list[Trade]:
        """A taker order: one trade per level it takes, each recorded with the book it met."""
        take = self.maker.plan_take(quote)
        if take is None:
            return []
        side = "buy" if take.taker_buys else "sell"
        ord_type = "limit" if self._rng.random() < 0.2 else "market"
        trades = []
        for price, qty in take.fills:
            self.truth.append(TradeTruth.before(
                self.book, self.symbol, self.next_trade_id, now_ms, self.last_time_ms, side,
            ))
            trades.append(Trade(self.next_trade_id, price, qty, now_ms, side, ord_type))
            self.next_trade_id += 1
        self.maker.execute(take, apply)
        self.trades.extend(trades)
        self.quoter.traded()
        return trades
