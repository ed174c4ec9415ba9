"""Fault injection: what the server does to a frame or request instead of serving it normally.

The server asks ``on_frame`` before sending each frame on each connection and ``on_rest``
before answering each REST request. Frame faults (each matched by exchange, optional symbol and
channel, and consumed one matching frame at a time):
- drop: the frame is skipped (the client sees a gap);
- duplicate: the frame is sent twice;
- reorder: the frame is held back and sent right after the next frame of the same symbol
  and channel (so that stream's order really changes);
- malformed: a truncated copy (invalid JSON) is sent instead;
- silent: the connection sends nothing more but stays open (a stale socket);
- checksum: a book update is sent with a wrong ``checksum`` (Kraken): the client's book check
  fails although its book is right (channel defaults to ``depth``: only updates carry one).
Trade delays (``on_trade``, asked once per market trade frame as it is generated): the next
``count`` trade frames of an exchange (optionally one symbol), or every one for ``duration_s``,
are each held back by a seeded-random delay, uniform in [min_ms, max_ms], on every connection
subscribed to them, so they arrive out of order with later book frames and with each other.
Connection faults (disconnect, max connection age) and REST errors (429/418 + Retry-After)
are handled by the server with the rules kept here.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from enum import Enum

from simulator.venue import HttpReply


class FrameAction(Enum):
    SEND = "send"
    DROP = "drop"  # skipped silently: the client sees a gap in update ids
    DUPLICATE = "duplicate"  # sent twice in a row
    REORDER = "reorder"  # held back, sent after the next frame of its symbol and channel
    MALFORMED = "malformed"  # a truncated copy is sent instead: not valid JSON
    SILENT = "silent"  # this frame and everything after it withheld; the socket stays open
    CHECKSUM = "checksum"  # sent with its "checksum" number changed


FRAME_FAULTS = {a.value: a for a in FrameAction if a is not FrameAction.SEND}


@dataclass
class FrameRule:
    action: FrameAction
    exchange: str
    symbol: str | None  # None: any symbol
    channel: str | None  # None: any channel
    remaining: int  # frames still to affect, counted per matching frame across connections


@dataclass
class RestFaultRule:
    exchange: str
    status: int  # 429 (rate limited) or 418 (IP banned)
    retry_after_s: int
    remaining: int


@dataclass
class DelayRule:
    exchange: str
    symbol: str | None  # None: any symbol
    remaining: int  # trade frames still to delay; 0 with ``until_s``: no count limit
    min_ms: int
    max_ms: int
    until_s: float | None  # monotonic deadline of a time-limited rule


class FaultInjector:
    """Pending faults, consumed as matching frames and requests go by."""

    def __init__(self, seed: int = 0) -> None:
        self.frames: list[FrameRule] = []
        self.rest: list[RestFaultRule] = []
        self.delays: list[DelayRule] = []
        self.injected: dict[str, int] = {}  # fault kind -> times applied
        # str seeds hash with SHA-512: the same delays on every run with the same seed
        self._delay_rng = random.Random(f"delay:{seed}")

    def add_frame_fault(
        self,
        action: FrameAction,
        exchange: str,
        symbol: str | None,
        channel: str | None,
        count: int,
    ) -> None:
        if action is FrameAction.CHECKSUM and channel is None:
            channel = "depth"  # book updates: snapshots and trades have other channels
        self.frames.append(FrameRule(action, exchange, symbol, channel, count))

    def add_drop(self, exchange: str, symbol: str | None, channel: str | None, count: int) -> None:
        self.add_frame_fault(FrameAction.DROP, exchange, symbol, channel, count)

    def add_rest_error(self, exchange: str, status: int, retry_after_s: int, count: int) -> None:
        self.rest.append(RestFaultRule(exchange, status, retry_after_s, count))

    def add_delay(
        self,
        exchange: str,
        symbol: str | None,
        count: int,
        min_ms: int,
        max_ms: int,
        duration_s: float | None,
        now_s: float,
    ) -> None:
        """``count`` trade frames (0: no limit, then ``duration_s`` is required), within
        ``duration_s`` of ``now_s`` (monotonic seconds) if given."""
        if duration_s is not None and not duration_s > 0:
            raise ValueError("duration_s must be > 0")
        if count < 0 or (count == 0 and duration_s is None):
            raise ValueError("count must be > 0, or 0 with duration_s")
        if not 0 <= min_ms <= max_ms:
            raise ValueError("need 0 <= min_ms <= max_ms")
        until = None if duration_s is None else now_s + duration_s
        self.delays.append(DelayRule(exchange, symbol, count, min_ms, max_ms, until))

    def clear(self) -> None:
        self.frames.clear()
        self.rest.clear()
        self.delays.clear()

    def on_trade(self, exchange: str, symbol: str, now_s: float) -> int | None:
        """The delay in ms for a trade frame being generated now, or None to send it as is.
        The newest matching rule applies (a few long delays can be put over a jitter)."""
        self._expire(now_s)
        for rule in reversed(self.delays):
            if rule.exchange == exchange and rule.symbol in (None, symbol):
                if rule.remaining:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self.delays.remove(rule)
                self.injected["delay"] = self.injected.get("delay", 0) + 1
                return self._delay_rng.randint(rule.min_ms, rule.max_ms)
        return None

    def _expire(self, now_s: float) -> None:
        self.delays = [r for r in self.delays if r.until_s is None or now_s < r.until_s]

    def on_frame(self, exchange: str, symbol: str, channel: str) -> FrameAction:
        for rule in self.frames:
            if (
                rule.remaining > 0
                and rule.exchange == exchange
                and rule.symbol in (None, symbol)
                and rule.channel in (None, channel)
            ):
                rule.remaining -= 1
                self.frames = [r for r in self.frames if r.remaining > 0]
                kind = rule.action.value
                self.injected[kind] = self.injected.get(kind, 0) + 1
                return rule.action
        return FrameAction.SEND

    def on_rest(self, exchange: str) -> HttpReply | None:
        for rule in self.rest:
            if rule.remaining > 0 and rule.exchange == exchange:
                rule.remaining -= 1
                self.rest = [r for r in self.rest if r.remaining > 0]
                # Binance's body for -1003 TOO_MANY_REQUESTS
                return HttpReply.json(
                    rule.status,
                    {"code": -1003, "msg": "Too much request weight used; please use the "
                     "websocket for live updates to avoid polling the API."},
                    (("Retry-After", str(rule.retry_after_s)),),
                )
        return None

    def pending(self, now_s: float | None = None) -> dict[str, list[dict[str, object]]]:
        """Pending rules; a delay rule's ``seconds_left`` is null when only its count limits it."""
        now_s = time.monotonic() if now_s is None else now_s
        self._expire(now_s)
        delays: list[dict[str, object]] = [
            {
                "action": "delay",
                "exchange": r.exchange,
                "symbol": r.symbol,
                "channel": "trade",
                "remaining": r.remaining,
                "min_ms": r.min_ms,
                "max_ms": r.max_ms,
                "seconds_left": None if r.until_s is None else round(r.until_s - now_s, 3),
            }
            for r in self.delays
        ]
        return {
            "frames": [{**vars(r), "action": r.action.value} for r in self.frames],
            "rest": [vars(r).copy() for r in self.rest],
            "delays": delays,
        }


CHECKSUM_FIELD = re.compile(rb'"checksum":(\d+)')


def corrupt_checksum(payload: bytes) -> bytes:
    """The frame with each ``"checksum":N`` replaced by another valid CRC32 (N xor 1)."""
    return CHECKSUM_FIELD.sub(lambda m: b'"checksum":%d' % (int(m.group(1)) ^ 1), payload)
