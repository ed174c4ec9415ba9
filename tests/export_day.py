"""A generated trading day through the live job's compiled core (``jobs.offline.CoreRun``):
Binance and Coinbase frames of two instruments (one on both exchanges, so the NBBO has two
venues) from the evening before the day to just after its end, with bursts of activity, a
late trade, a lost connection of every book and prices that use all 18 decimals, giving rows
for every ClickHouse table as the job writes them (RowBinary, ``CoreRun.tables``).

    day = generated_day(settings)      # GeneratedDay: .tables (RowBinary, rows) and .day
"""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from jobs.offline import CoreRun
from schemas.codec import RawEnvelope, encode_envelope
from tickflow.config import Settings

DAY = date(2026, 11, 30)
DAY_MS = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp() * 1000)
HOUR_MS = 3_600_000
# (start offset from the day's start, length) of each burst of activity, ms; the first
# starts the evening before, the last ends the morning after
BURSTS = [
    (-90_000, 120_000),
    (2 * HOUR_MS, 60_000),
    (9 * HOUR_MS + 30 * 60_000, 90_000),
    (17 * HOUR_MS, 60_000),
    (24 * HOUR_MS - 45_000, 180_000),
]
STEP_MS = 700
LOST_AT_MS = 17 * HOUR_MS  # the burst before which every book loses its connection


def day_settings(settings: Settings) -> Settings:
    """One-minute bars only (a LIVE book yields a bar per window all day long)."""
    return dataclasses.replace(
        settings,
        analytics=dataclasses.replace(settings.analytics, bar_intervals_ms=(60_000,)),
    )


def _envelope(
    instrument: str, exchange: str, symbol: str, channel: str, frame: Any, rx_ms: int, seq: int
) -> tuple[bytes, int]:
    payload = json.dumps(frame).encode()
    env = RawEnvelope(instrument, exchange, symbol, channel, rx_ms * 10**6, "c1", seq, payload)
    return encode_envelope(env), rx_ms


def _rfc3339(ms: int) -> str:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _px(value: Decimal) -> str:
    return format(value, "f")


class _Binance:
    def __init__(self, instrument: str, symbol: str, mid: Decimal, tick: Decimal) -> None:
        self.instrument, self.symbol, self.mid, self.tick = instrument, symbol, mid, tick
        self.update_id = 1000
        self.trade_id = 5_000_000
        self.seq = 0

    def _env(self, channel: str, frame: Any, rx_ms: int) -> tuple[bytes, int]:
        self.seq += 1
        return _envelope(self.instrument, "binance", self.symbol, channel, frame, rx_ms, self.seq)

    def levels(self, side: int) -> list[list[str]]:
        return [[_px(self.mid + side * self.tick * i), f"{i}.25"] for i in range(1, 6)]

    def snapshot(self, rx_ms: int) -> tuple[bytes, int]:
        frame = {"lastUpdateId": self.update_id, "bids": self.levels(-1), "asks": self.levels(1)}
        return self._env("snapshot", frame, rx_ms)

    def depth(self, rng: random.Random, event_ms: int) -> tuple[bytes, int]:
        """The levels around a new mid; the old ones that are not among them at size 0."""
        old = {side: self.levels(side) for side in (-1, 1)}
        self.mid += self.tick * rng.choice((-1, 0, 1))
        sides = {}
        for side in (-1, 1):
            new = self.levels(side)
            prices = {price for price, _ in new}
            sides[side] = [[p, "0"] for p, _ in old[side] if p not in prices] + new
        first = self.update_id + 1
        self.update_id += rng.randint(1, 3)
        frame = {"e": "depthUpdate", "E": event_ms, "s": self.symbol, "U": first,
                 "u": self.update_id, "b": sides[-1], "a": sides[1]}  # fmt: skip
        return self._env("depth", frame, event_ms + 3)

    def trade(self, rng: random.Random, trade_ms: int, rx_ms: int) -> tuple[bytes, int]:
        self.trade_id += 1
        taker = rng.choice(("buy", "sell"))
        price = self.mid + (self.tick if taker == "buy" else -self.tick)
        size = Decimal(rng.randint(1, 10**8)).scaleb(-8)
        frame = {"e": "trade", "E": trade_ms, "s": self.symbol, "t": self.trade_id,
                 "p": _px(price), "q": _px(size), "T": trade_ms, "m": taker == "sell",
                 "M": True}  # fmt: skip
        return self._env("trade", frame, rx_ms)


class _Coinbase:
    def __init__(self, product: str, mid: Decimal, tick: Decimal) -> None:
        self.product, self.mid, self.tick = product, mid, tick
        self.sequence = 0
        self.trade_id = 900_000
        self.seq = 0

    def _env(self, frame: Any, rx_ms: int, channel: str) -> tuple[bytes, int]:
        self.seq += 1
        frame["sequence_num"] = self.sequence
        self.sequence += 1
        return _envelope(self.product, "coinbase", self.product, channel, frame, rx_ms, self.seq)

    def _levels(self, mid: Decimal, ts_ms: int, quantity: str | None) -> list[dict[str, str]]:
        return [
            {"side": side, "event_time": _rfc3339(ts_ms),
             "price_level": _px(mid + sign * self.tick * i),
             "new_quantity": quantity or f"0.{i}5"}
            for side, sign in (("bid", -1), ("offer", 1))
            for i in range(1, 6)
        ]  # fmt: skip

    def l2(self, ts_ms: int, kind: str, updates: list[dict[str, str]]) -> tuple[bytes, int]:
        event = {"type": kind, "product_id": self.product, "updates": updates}
        frame = {"channel": "l2_data", "client_id": "", "timestamp": _rfc3339(ts_ms),
                 "events": [event]}  # fmt: skip
        return self._env(frame, ts_ms + 5, "depth")

    def snapshot(self, ts_ms: int) -> tuple[bytes, int]:
        return self.l2(ts_ms, "snapshot", self._levels(self.mid, ts_ms, None))

    def lost(self, rx_ms: int) -> tuple[bytes, int]:
        """The connector's ``sync_lost`` marker (not an exchange message: no sequence_num)."""
        self.seq += 1
        frame = {"reason": "connection c1 ended"}
        product = self.product
        return _envelope(product, "coinbase", product, "sync_lost", frame, rx_ms, self.seq)

    def move(self, rng: random.Random, ts_ms: int) -> tuple[bytes, int]:
        """The levels around a new mid (the old ones that are not among them removed)."""
        old = self.mid
        self.mid += self.tick * rng.choice((-1, 0, 1))
        new = self._levels(self.mid, ts_ms, None)
        prices = {level["price_level"] for level in new}
        gone = [lv for lv in self._levels(old, ts_ms, "0") if lv["price_level"] not in prices]
        return self.l2(ts_ms, "update", gone + new)

    def trade(self, rng: random.Random, trade_ms: int) -> tuple[bytes, int]:
        self.trade_id += 1
        taker = rng.choice(("buy", "sell"))
        price = self.mid + (self.tick if taker == "buy" else -self.tick)
        size = Decimal(rng.randint(1, 10**6)).scaleb(-6)
        trade = {"trade_id": str(self.trade_id), "product_id": self.product, "price": _px(price),
                 "size": _px(size), "side": "SELL" if taker == "buy" else "BUY",
                 "time": _rfc3339(trade_ms)}  # fmt: skip
        frame = {"channel": "market_trades", "client_id": "", "timestamp": _rfc3339(trade_ms),
                 "events": [{"type": "update", "trades": [trade]}]}  # fmt: skip
        return self._env(frame, trade_ms + 5, "trade")


@dataclasses.dataclass
class GeneratedDay:
    day: date
    tables: dict[str, tuple[bytes, int]]  # ClickHouse table -> (RowBinary rows, count)
    frames: int


def generated_day(settings: Settings, seed: int = 20261130) -> GeneratedDay:
    """The core's rows for the generated frames (``day_settings``), in one process."""
    frames = generated_frames(seed)
    run = CoreRun(day_settings(settings))
    run.feed(frames)
    run.finish()
    return GeneratedDay(DAY, run.tables, len(frames))


def generated_frames(seed: int = 20261130) -> list[tuple[bytes, int]]:
    """The day's raw records (envelope, Kafka timestamp ms) in receive-time order."""
    rng = random.Random(seed)
    binance = [
        _Binance("BNB-BTC", "BNBBTC", Decimal("0.008123"), Decimal("0.000001")),
        # ticks of 1e-18: prices that use every decimal of Decimal(38, 18)
        _Binance("ETH-BTC", "ETHBTC", Decimal("0.035120000000000000"), Decimal("1e-18")),
    ]
    coinbase = _Coinbase("BNB-BTC", Decimal("0.008124"), Decimal("0.000001"))
    start = DAY_MS + BURSTS[0][0]
    frames: list[tuple[bytes, int]] = [book.snapshot(start) for book in binance]
    frames.append(coinbase.snapshot(start))
    for offset, length in BURSTS:
        if offset == LOST_AT_MS:
            # every connection lost and back: each book out of sync for 10 ms (gaps rows)
            lost_ms = DAY_MS + offset + 10
            for book in binance:
                frames.append(book._env("sync_lost", {"reason": "connection c1 ended"}, lost_ms))
                frames.append(book.snapshot(lost_ms + 10))
            frames.append(coinbase.lost(lost_ms))
            frames.append(coinbase.snapshot(lost_ms + 5))
        for t in range(DAY_MS + offset + 50, DAY_MS + offset + length, STEP_MS):
            for book in binance:
                frames.append(book.depth(rng, t))
                if rng.random() < 0.4:
                    frames.append(book.trade(rng, t + 1, t + 4))
            frames.append(coinbase.move(rng, t + 2))
            if rng.random() < 0.3:
                frames.append(coinbase.trade(rng, t + 3))
        # a trade that arrives a minute after it happened: behind the watermark, late
        late_ms = DAY_MS + offset + length // 2
        frames.append(binance[0].trade(rng, late_ms - 60_000, late_ms + 10))
    frames.sort(key=lambda frame: frame[1])  # receive-time order, as the raw topic holds them
    return frames
