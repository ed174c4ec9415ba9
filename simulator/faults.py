"""Fault injection: what the server does to a frame or request instead of serving it normally.

The server asks ``on_frame`` before sending each frame on each connection and ``on_rest``
before answering each REST request, so new faults only touch this file. Implemented: drop
frames, disconnect connections, answer REST with 429 + Retry-After. To add (issue 3):
duplicate, reorder, silent socket, malformed JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from simulator.venue import HttpReply


class FrameAction(Enum):
    SEND = "send"
    DROP = "drop"  # skipped silently: the client sees a gap in update ids


@dataclass
class DropRule:
    exchange: str
    symbol: str | None  # None: any symbol
    channel: str | None  # None: any channel
    remaining: int  # frames still to drop, counted per matching frame across connections


@dataclass
class RestFaultRule:
    exchange: str
    status: int  # 429 (rate limited) or 418 (IP banned)
    retry_after_s: int
    remaining: int


class FaultInjector:
    """Pending faults, consumed as matching frames and requests go by."""

    def __init__(self) -> None:
        self.drops: list[DropRule] = []
        self.rest: list[RestFaultRule] = []

    def add_drop(self, exchange: str, symbol: str | None, channel: str | None, count: int) -> None:
        self.drops.append(DropRule(exchange, symbol, channel, count))

    def add_rest_error(self, exchange: str, status: int, retry_after_s: int, count: int) -> None:
        self.rest.append(RestFaultRule(exchange, status, retry_after_s, count))

    def clear(self) -> None:
        self.drops.clear()
        self.rest.clear()

    def on_frame(self, exchange: str, symbol: str, channel: str) -> FrameAction:
        for rule in self.drops:
            if (
                rule.remaining > 0
                and rule.exchange == exchange
                and rule.symbol in (None, symbol)
                and rule.channel in (None, channel)
            ):
                rule.remaining -= 1
                self.drops = [r for r in self.drops if r.remaining > 0]
                return FrameAction.DROP
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
            "drop": [vars(r).copy() for r in self.drops],
            "rest": [vars(r).copy() for r in self.rest],
        }
