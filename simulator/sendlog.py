"""Per-connection record of what the simulator sent, so tests can compare it with what arrived."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ConnectionLog:
    conn_id: str  # "c1", "c2", ... in accept order
    exchange: str
    path: str
    remote: str
    opened_ms: int
    keep_frames: int  # full frames kept (most recent); 0 keeps counts only
    closed_ms: int | None = None
    close_reason: str | None = None
    frames_sent: int = 0
    frames_dropped: int = 0  # by fault injection
    frames_delayed: int = 0  # held back by a delay fault (and counted in frames_sent once sent)
    withheld: int = 0  # not sent because the connection was made silent
    bytes_sent: int = 0
    messages_received: int = 0
    first_ids: dict[str, dict[str, int]] = field(default_factory=dict)  # symbol -> channel -> id
    last_ids: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped_ids: list[tuple[str, str, int]] = field(default_factory=list)  # (symbol, chan, id)
    frames: deque[tuple[str, str, bytes]] = field(default_factory=deque)  # (symbol, channel, frame)

    def __post_init__(self) -> None:
        self.frames = deque(maxlen=self.keep_frames or 1)

    def sent(self, symbol: str, channel: str, last_id: int, payload: bytes) -> None:
        self.frames_sent += 1
        self.bytes_sent += len(payload)
        if symbol:  # control replies carry no symbol
            self.first_ids.setdefault(symbol, {}).setdefault(channel, last_id)
            self.last_ids.setdefault(symbol, {})[channel] = last_id
        if self.keep_frames:
            self.frames.append((symbol, channel, payload))

    def dropped(self, symbol: str, channel: str, last_id: int) -> None:
        self.frames_dropped += 1
        self.dropped_ids.append((symbol, channel, last_id))

    def to_json(self, queued: int, with_frames: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.conn_id,
            "exchange": self.exchange,
            "path": self.path,
            "remote": self.remote,
            "open": self.closed_ms is None,
            "opened_ms": self.opened_ms,
            "closed_ms": self.closed_ms,
            "close_reason": self.close_reason,
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped,
            "frames_delayed": self.frames_delayed,
            "withheld": self.withheld,
            "bytes_sent": self.bytes_sent,
            "messages_received": self.messages_received,
            "queued": queued,
            "first_ids": self.first_ids,
            "last_ids": self.last_ids,
            "dropped_ids": [list(d) for d in self.dropped_ids],
        }
        if with_frames:
            out["frames"] = [f.decode() for _, _, f in self.frames] if self.keep_frames else []
        return out
