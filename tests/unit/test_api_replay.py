"""``POST /v1/replay`` without servers (generated frames held in memory as its frame source):
the ``replay`` scope, its range and event bounds as documented 4xx, and a stream of exactly the
backtest's events in the backtest's order, ended by a line with its counts and digests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import NDJSON, build_app
from api.keys import KeyStore, RateLimiter
from jobs.backtest import Backtest, event_record
from tests.export_day import DAY_MS, generated_frames
from tests.memory_frames import MemoryFrames
from tests.unit.test_api import FakeHistory, FakeLive, assert_error, auth
from tickflow.config import load_settings

pytestmark = pytest.mark.unit

pytest.importorskip("tickflow_native")

FROM_MS, TO_MS = DAY_MS - 100_000, DAY_MS + 60_000
BODY = {"from_ms": FROM_MS, "to_ms": TO_MS, "instruments": ["bnb-btc", "ETH-BTC"]}


@pytest.fixture(scope="module")
def frames() -> list[tuple[bytes, int]]:
    return [f for f in generated_frames() if FROM_MS <= f[1] < TO_MS + 600_000]


@pytest.fixture
def env(tmp_path: Path, frames: list[tuple[bytes, int]]) -> dict[str, Any]:
    base = load_settings(environ={})
    settings = dataclasses.replace(
        base, api=dataclasses.replace(base.api, replay_max_range_ms=600_000, replay_max_events=5000)
    )
    store = KeyStore(tmp_path / "api-keys.json")
    keys = {
        scope: store.create([scope], rate_per_s=1000, burst=1000)[1]
        for scope in ("replay", "read-history")
    }
    app = build_app(
        settings, FakeHistory({}), FakeLive(), store, RateLimiter(1, 1),
        frames=lambda: MemoryFrames(frames),
    )  # fmt: skip
    return {"client": TestClient(app), "keys": keys, "settings": settings, "frames": frames}


def lines(response: Any) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in response.content.splitlines()]


def test_the_stream_is_the_backtests_events_in_its_order(env: dict[str, Any]) -> None:
    response = env["client"].post("/v1/replay", json=BODY, headers=auth(env["keys"]["replay"]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == NDJSON
    *events, end = lines(response)
    backtest = Backtest(
        env["settings"], MemoryFrames(env["frames"]), FROM_MS, TO_MS, ["BNB-BTC", "ETH-BTC"]
    )
    expected = [
        {"time_ms": at, "kind": e.kind, "event": orjson.loads(orjson.dumps(event_record(e)))}
        for at, e in backtest.events()
    ]
    assert events == expected
    assert {e["kind"] for e in events} >= {"top_of_book", "nbbo", "trade", "bar", "gap"}
    assert end == {
        "kind": "end", "events": len(events), "truncated": False,
        "counts": backtest.result.events, "digests": backtest.result.digests,
        "frames": backtest.result.frames, "late_deliveries": backtest.result.late_deliveries,
        "dead_letters": 0,
    }  # fmt: skip
    # decimals exact, as text
    top = next(e["event"] for e in events if e["kind"] == "top_of_book")
    assert top["bid_price"] == "0.008122" and top["exchange"] == "binance"


def test_kinds_instruments_and_max_events_narrow_the_stream(env: dict[str, Any]) -> None:
    body = {**BODY, "instruments": ["ETH-BTC"], "kinds": ["trade", "bar"], "max_events": 7}
    response = env["client"].post("/v1/replay", json=body, headers=auth(env["keys"]["replay"]))
    *events, end = lines(response)
    assert len(events) == 7 and end["truncated"] and end["events"] == 7
    assert end["digests"] == {}  # a cut stream has no digests of the whole
    assert {e["kind"] for e in events} <= {"trade", "bar"}
    assert {e["event"]["instrument"] for e in events} == {"ETH-BTC"}


def test_a_key_without_the_replay_scope_is_refused(env: dict[str, Any]) -> None:
    client = env["client"]
    assert_error(client.post("/v1/replay", json=BODY), 401, "missing_key")
    assert_error(
        client.post("/v1/replay", json=BODY, headers=auth(env["keys"]["read-history"])),
        403, "out_of_scope",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"to_ms": FROM_MS}, "bad_range"),
        ({"to_ms": FROM_MS + 600_001}, "bad_range"),  # longer than api.replay_max_range_ms
        ({"max_events": 5001}, "bad_limit"),
        ({"instruments": ["NOT A NAME"]}, "unknown_instrument"),
    ],
)
def test_bad_requests_get_documented_4xx(
    env: dict[str, Any], change: dict[str, Any], code: str
) -> None:
    response = env["client"].post(
        "/v1/replay", json={**BODY, **change}, headers=auth(env["keys"]["replay"])
    )
    assert_error(response, 400, code)


def test_invalid_bodies_are_422(env: dict[str, Any]) -> None:
    client, key = env["client"], env["keys"]["replay"]
    for body in ({**BODY, "instruments": []}, {**BODY, "kinds": ["quote"]}, {"from_ms": 1}):
        assert client.post("/v1/replay", json=body, headers=auth(key)).status_code == 422


def test_a_source_that_does_not_answer_is_503(tmp_path: Path) -> None:
    class Down:
        def partitions(self) -> list[int]:
            raise RuntimeError("raw topic not found")

    store = KeyStore(tmp_path / "api-keys.json")
    _, key = store.create(["replay"])
    settings = load_settings(environ={})
    sources: list[Any] = [None, Down]
    for frames in sources:
        app = build_app(settings, None, None, store, RateLimiter(100, 100), frames=frames)
        response = TestClient(app).post("/v1/replay", json=BODY, headers=auth(key))
        assert_error(response, 503, "unavailable")
