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
Connection faults (disconnect, max connection age) and REST errors (429/418 + Retry-After)
are handled by the server with the rules kept here.
"""

from __future__ import annotations

import re
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


class FaultInjector:
    """Pending faults, consumed as matching frames and requests go by."""

    def __init__(self) -> None:
        self.frames: list[FrameRule] = []
        self.rest: list[RestFaultRule] = []
        self.injected: dict[str, int] = {}  # fault kind -> times applied

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

    def clear(self) -> None:
        self.frames.clear()
        self.rest.clear()

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

    def pending(self) -> dict[str, list[dict[str, object]]]:
        return {
            "frames": [{**vars(r), "action": r.action.value} for r in self.frames],
            "rest": [vars(r).copy() for r in self.rest],
        }


CHECKSUM_FIELD = re.compile(rb'"checksum":(\d+)')


def corrupt_checksum(payload: bytes) -> bytes:
    """The frame with each ``"checksum":N`` replaced by another valid CRC32 (N xor 1)."""
    return CHECKSUM_FIELD.sub(lambda m: b'"checksum":%d' % (int(m.group(1)) ^ 1), payload)
