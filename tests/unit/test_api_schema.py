"""The query API's OpenAPI spec against the app (readers stood in for): requests generated from
the spec by schemathesis, valid and invalid ones, never a 5xx, every status and body documented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.app import build_app
from api.keys import KeyStore, RateLimiter
from tests.api_schema import run_all
from tests.export_day import DAY_MS, generated_frames
from tests.memory_frames import MemoryFrames
from tests.unit.test_api import TRADES, FakeBooksAt, FakeHistory, FakeLive
from tickflow.config import load_settings

pytestmark = pytest.mark.unit


async def one_event(limit: int | None) -> AsyncIterator[bytes]:
    yield b": subscribed\n\n"
    yield b"event: book\ndata: binance:BTCUSDT:7:LIVE:000000000000000000000001\n\n"


def test_generated_requests_get_documented_answers(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "api-keys.json")
    _, key = store.create(["admin"], rate_per_s=1e9, burst=10**9)
    # the replay endpoint's frames: the first minutes of the generated day
    frames = [f for f in generated_frames() if f[1] < DAY_MS + 60_000]
    app = build_app(
        load_settings(environ={}),
        FakeHistory({"trades": TRADES}),
        FakeLive(),
        store,
        RateLimiter(1, 1),
        stream=one_event,
        frames=lambda: MemoryFrames(frames),
        books_at=FakeBooksAt(),
    )
    counts = run_all(app, key)
    assert len(counts) == 2 * 15, counts
    assert [name for name, n in counts.items() if not n] == ["GET /v1/health negative"]
