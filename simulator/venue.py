"""What the generic server needs from one simulated exchange (mounted under ``/<name>/``).

The server owns sockets, pacing, broadcasting, the send log and fault injection; a venue owns
its protocol: which WebSocket paths it accepts, how frames are wrapped, its REST endpoints and
its introspection endpoints under ``/_sim/<name>/``. Coinbase and Kraken plug in here later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class OutFrame:
    """One event of the market, serialised once and wrapped per subscription."""

    symbol: str
    channel: str  # "depth" | "trade"
    last_id: int  # final update id (depth) or trade id (trade): what the send log records
    data: bytes  # the event body as JSON


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json;charset=UTF-8"

    @classmethod
    def json(cls, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpReply:
        return cls(status, orjson.dumps(obj), headers)


class HttpError(Exception):
    """A request the venue refuses; becomes an HTTP reply with a JSON body."""

    def __init__(self, status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(f"HTTP {status}: {body!r}")
        self.reply = HttpReply.json(status, body, headers)


@dataclass
class Subscription:
    """The streams one WebSocket connection receives: (symbol, channel) -> wrapper parts."""

    combined: bool
    # (symbol, channel) -> (prefix, suffix) around the event body, e.g. b'{"stream":"x","data":'
    streams: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # as the client wrote them

    def render(self, frame: OutFrame) -> bytes | None:
        parts = self.streams.get((frame.symbol, frame.channel))
        if parts is None:
            return None
        return parts[0] + frame.data + parts[1]

    def stamp(self, payload: bytes) -> bytes:
        """Called by the server as a frame leaves in this connection's order (sent, or lost
        to a drop fault): per-connection numbering such as Coinbase's ``sequence_num``."""
        return payload


def int_query(query: Mapping[str, list[str]], name: str, default: int = 0) -> int:
    """An integer query parameter of an introspection request; HTTP 400 if it is not one."""
    raw = (query.get(name) or [str(default)])[0]
    try:
        return int(raw)
    except ValueError:
        raise HttpError(400, {"error": f"{name} must be an integer, got {raw!r}"}) from None


class Venue(Protocol):
    """One simulated exchange."""

    name: str  # path prefix and key in /_sim/ responses

    @property
    def symbols(self) -> tuple[str, ...]: ...

    def step(self, symbol: str, now_ms: int) -> list[OutFrame]:
        """Advance one symbol's market by one step; frames in the order they must be sent."""
        ...

    def ws_subscription(self, path: str, query: Mapping[str, list[str]]) -> Subscription:
        """The streams a WebSocket request path asks for; raises HttpError if invalid."""
        ...

    def ws_message(self, sub: Subscription, message: str | bytes) -> bytes | list[OutFrame] | None:
        """Handle a client message (e.g. SUBSCRIBE); the reply to send, if any, or several
        frames rendered for this connection (e.g. in-band snapshots: their symbol and channel
        let faults and the send log treat them like market frames)."""
        ...

    def http(self, method: str, path: str, query: Mapping[str, list[str]], now: float) -> HttpReply:
        """A REST request under the venue's prefix (``path`` without it)."""
        ...

    def introspect(self, resource: str, query: Mapping[str, list[str]]) -> HttpReply:
        """``GET /_sim/<name>/<resource>``: the truth, for tests (``book``, ``trades``,
        ``truth``: per trade, the book state it executed against)."""
        ...

    def status(self) -> dict[str, dict[str, Any]]:
        """Per symbol: ids and counters for ``/_sim/status``."""
        ...
