"""API keys: created at random, shown once, stored hashed; scopes, expiry, per-key rate limits.

A key is ``tfk_<id>_<secret>``: ``id`` (12 hex digits) names the key in lists, logs and the
store; ``secret`` is 32 random bytes (URL-safe base64). The store (``api.keys_file``, by default
``<state_dir>/secrets/api-keys.json``, 0600 in a 0700 directory) keeps the SHA-256 of the whole
key, never the key: a key of 256 random bits needs no salt or slow hash, and a stolen store does
not let anyone in. A request's key is hashed and compared in constant time.

Scopes: ``read-live`` (Redis books, NBBO, updates), ``read-history`` (ClickHouse tables),
``replay``, ``admin`` (every scope).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

SCOPES = ("read-live", "read-history", "replay", "admin")
ADMIN = "admin"
PREFIX = "tfk"
_KEY = re.compile(rf"^{PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")


class KeyRefused(Exception):
    """A key refused: ``reason`` is ``missing``, ``invalid`` or ``expired``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str = field(repr=False)
    scopes: tuple[str, ...]
    created_ms: int
    expires_ms: int = 0  # 0: never
    name: str = ""
    rate_per_s: float = 0.0  # 0: the configured api.rate_per_s
    burst: int = 0  # 0: the configured api.burst

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def expired(self, now_ms: int) -> bool:
        return bool(self.expires_ms) and now_ms >= self.expires_ms


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(SCOPES)}"
        )
    return scopes


_DURATION = re.compile(r"^(?P<n>\d+)(?P<unit>[smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: datetime | None = None) -> int:
    """``--expires``: a duration from now (``90m``, ``12h``, ``30d``, ``2w``) or an ISO 8601
    time or date (UTC unless it says otherwise), as epoch milliseconds."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip())
    if match:
        when = now + timedelta(seconds=int(match["n"]) * _UNITS[match["unit"]])
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"cannot read expiry {text!r}: a duration (30d, 12h, 90m) or an ISO 8601 time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class KeyStore:
    """The hashed keys in a JSON file. Reads again when the file changes (keys created or
    revoked with ``tickflow api keys`` apply to a running server without a restart)."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def keys(self) -> dict[str, ApiKey]:
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._keys = None, {}
                return {}
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                data = json.loads(self.path.read_text() or "{}")
                self._keys = {
                    k["id"]: ApiKey(**{**k, "scopes": tuple(k["scopes"])})
                    for k in data.get("keys", [])
                }
                self._stamp = stamp
            return dict(self._keys)

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.path.parent, 0o700)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"keys": [asdict(k) for k in keys.values()]}, out, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(
        self,
        scopes: Iterable[str],
        expires_ms: int = 0,
        name: str = "",
        rate_per_s: float = 0.0,
        burst: int = 0,
    ) -> tuple[ApiKey, str]:
        """A new key: its record and the key itself (shown once, never stored)."""
        key_id = secrets.token_hex(6)
        text = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(
            id=key_id,
            sha256=digest(text),
            scopes=parse_scopes(scopes),
            created_ms=self.now_ms(),
            expires_ms=expires_ms,
            name=name,
            rate_per_s=rate_per_s,
            burst=burst,
        )
        keys = self.keys()
        keys[key_id] = record
        self._write(keys)
        return record, text

    def revoke(self, key_id: str) -> bool:
        keys = self.keys()
        if keys.pop(key_id, None) is None:
            return False
        self._write(keys)
        return True

    def verify(self, text: str | None) -> ApiKey:
        """The key's record, or KeyRefused (missing, invalid: unknown, malformed or wrong;
        expired). The message never repeats the key."""
        if not text:
            raise KeyRefused("missing", "no API key: send 'Authorization: Bearer <key>'")
        match = _KEY.match(text.strip())
        record = self.keys().get(match["id"]) if match else None
        # hash and compare even for an unknown id: the answer takes the same time
        wanted = record.sha256 if record else "0" * 64
        if not hmac.compare_digest(digest(text.strip()), wanted) or record is None:
            raise KeyRefused("invalid", "the API key is not valid")
        if record.expired(self.now_ms()):
            raise KeyRefused("expired", f"the API key {record.id} has expired")
        return record


class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second up to ``burst``; a request takes one.
    ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key: ApiKey) -> float:
        """0 if the request may go, else the seconds until a token is there (Retry-After)."""
        rate = key.rate_per_s or self.rate_per_s
        burst = float(key.burst or self.burst)
        if rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key.id, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[key.id] = (tokens - 1, now)
                return 0.0
            self._buckets[key.id] = (tokens, now)
            return (1 - tokens) / rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
