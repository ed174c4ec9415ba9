"""Helpers for tests that run the simulator in-process on a free port."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from schemas.codec import RawEnvelope, decode_envelope, encode_envelope
from simulator.server import SimulatorServer, wall_ms
from tickflow.config import Settings


class ListSink:
    """Stands in for the Kafka producer in connector tests: envelopes are round-tripped through
    Avro (so what is kept is what the job would decode) and dead letters are kept as records."""

    def __init__(self) -> None:
        self.envelopes: list[RawEnvelope] = []
        self.dead_letters: list[dict[str, Any]] = []

    def send(self, envelope: RawEnvelope) -> bool:
        self.envelopes.append(decode_envelope(encode_envelope(envelope)))
        return True

    def dead_letter(self, record: str) -> None:
        self.dead_letters.append(json.loads(record))

@asynccontextmanager
async def running_simulator(
    settings: Settings,
    *,
    paused: bool = False,
    clock_ms: Callable[[], int] = wall_ms,
    **overrides: Any,
) -> AsyncIterator[SimulatorServer]:
    """A started simulator on a free port; ``overrides`` replace ``simulator`` config values."""
    sim = dataclasses.replace(settings.simulator, port=0, **overrides)
    server = SimulatorServer(
        dataclasses.replace(settings, simulator=sim), paused=paused, clock_ms=clock_ms
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def pointed_at(settings: Settings, server: SimulatorServer) -> Settings:
    """``settings`` with every exchange's connector URLs pointing at ``server``."""
    pointed = {}
    for f in dataclasses.fields(settings.exchanges):
        config = getattr(settings.exchanges, f.name)
        urls = {"ws_url": f"{server.ws_url}/{f.name}"}
        if any(g.name == "rest_url" for g in dataclasses.fields(config)):
            urls["rest_url"] = f"{server.http_url}/{f.name}"
        pointed[f.name] = dataclasses.replace(config, **urls)
    exchanges = dataclasses.replace(settings.exchanges, **pointed)
    return dataclasses.replace(settings, exchanges=exchanges)


def _http(url: str, method: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def http_json(url: str, method: str = "GET") -> tuple[int, Any]:
    """(status, decoded JSON body); in a thread, since the server shares the event loop."""
    status, _, body = await asyncio.to_thread(_http, url, method)
    return status, json.loads(body)


async def http_raw(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_http, url, method)


async def wait_until(
    predicate: Callable[[], Any], within_s: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.005)
