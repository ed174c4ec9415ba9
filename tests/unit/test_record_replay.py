"""A connector session recorded, replayed by the simulator, recorded again: the same frames."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest

from connectors.binance import BinanceConnector
from connectors.recorder import Recorder, read_recording
from schemas.codec import RawEnvelope
from simulator.replay import ReplayServer
from simulator.testing import pointed_at, running_simulator, wait_until
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


class Envelopes:
    def __init__(self) -> None:
        self.items: list[RawEnvelope] = []

    def send(self, envelope: RawEnvelope) -> None:
        self.items.append(envelope)

    def dead_letter(self, record: str) -> None:
        raise AssertionError(f"unexpected dead letter {record}")


def settings_for_test() -> Settings:
    settings = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    binance = dataclasses.replace(settings.exchanges.binance, snapshot_stagger_ms=10)
    return dataclasses.replace(
        settings, exchanges=dataclasses.replace(settings.exchanges, binance=binance)
    )


async def record_session(
    settings: Settings, path: Path, done: object, sink: Envelopes
) -> BinanceConnector:
    connector = BinanceConnector(settings, sink, random.Random(1))
    connector.recorder = Recorder(path)
    task = asyncio.create_task(connector.run())
    await wait_until(done, what="recorded frames")  # type: ignore[arg-type]
    connector.stop()
    await asyncio.wait_for(task, 10)
    connector.recorder.close()
    return connector


def test_recording_replays_frame_for_frame(tmp_path: Path) -> None:
    settings = settings_for_test()
    first, second = tmp_path / "live.tsv", tmp_path / "replayed.tsv"

    async def scenario() -> None:
        live = Envelopes()
        async with running_simulator(settings, rate_per_symbol=100) as sim:
            await record_session(
                pointed_at(settings, sim),
                first,
                lambda: (
                    sum(e.channel == "snapshot" for e in live.items) == 2 and len(live.items) > 60
                ),
                live,
            )
        # recorded pacing: the snapshot requests must come while the stream plays, as they did
        replay = ReplayServer(first, "binance", "127.0.0.1", 0, speed=1)
        await replay.start()
        try:
            replayed = Envelopes()
            sim_settings = dataclasses.replace(
                settings,
                exchanges=dataclasses.replace(
                    settings.exchanges,
                    binance=dataclasses.replace(
                        settings.exchanges.binance,
                        ws_url=f"ws://127.0.0.1:{replay.port}/binance",
                        rest_url=f"http://127.0.0.1:{replay.port}/binance",
                    ),
                ),
            )
            ws_frames = len(replay.frames)
            await record_session(
                sim_settings,
                second,
                lambda: (
                    sum(e.channel != "snapshot" for e in replayed.items) == ws_frames
                    and sum(e.channel == "snapshot" for e in replayed.items) == 2
                ),
                replayed,
            )
        finally:
            await replay.stop()
        assert [
            (e.symbol, e.channel, e.payload) for e in replayed.items if e.channel != "snapshot"
        ] == [(e.symbol, e.channel, e.payload) for e in live.items if e.channel != "snapshot"]
        snapshots = {e.symbol: e.payload for e in live.items if e.channel == "snapshot"}
        assert {e.symbol: e.payload for e in replayed.items if e.channel == "snapshot"} == snapshots

    asyncio.run(asyncio.wait_for(scenario(), 60))
    recorded = read_recording(first)
    assert all(stamp > 0 and b"\n" not in frame for stamp, frame in recorded)
    assert sum(frame.startswith(b'{"rest":') for _, frame in recorded) == 2


def test_bad_recording_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(b'1\t{"a":1}\nnot a record\n')
    with pytest.raises(ValueError, match=r"bad\.tsv:2"):
        read_recording(path)
