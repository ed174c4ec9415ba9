"""Control-topic records: what the job asks of the connectors.

A resync request (JSON): {"type": "resync", "exchange": "binance", "symbol": "BTCUSDT",
"reason": "gap: expected update 12, got U=15", "requested_at_ms": 1700000000000}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    exchange: str
    symbol: str
    reason: str


def resync_record(exchange: str, symbol: str, reason: str, requested_at_ms: int) -> str:
    return json.dumps(
        {
            "type": "resync",
            "exchange": exchange,
            "symbol": symbol,
            "reason": reason,
            "requested_at_ms": requested_at_ms,
        }
    )


def parse_request(value: bytes) -> ResyncRequest | None:
    """A control record, or None for records of other types or malformed ones (logged)."""
    try:
        record: Any = json.loads(value)
        if record.get("type") != "resync":
            return None
        return ResyncRequest(str(record["exchange"]), str(record["symbol"]), str(record["reason"]))
    except (ValueError, KeyError, AttributeError, TypeError):
        log.error("control topic: unreadable record %.200r", value)
        return None
