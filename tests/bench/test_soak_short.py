"""A short soak in the suite: every exchange, every fault kind, connectors into the real Kafka,
compared with the simulator's send log (`make soak` is the 60-second, 10-symbol version)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import main
from tickflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_short_soak_loses_and_duplicates_nothing_and_flags_every_gap(
    stack_settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    # exit 0: lost == duplicated == out_of_order == undelivered == 0, gaps_flagged == injected
    assert main(["--seconds", "20", "--symbols", "3", "--fault-every", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames_sent"] > 1000
    assert result["gaps_injected"] >= 3
    assert set(result["faults"]) == {
        "drop",
        "reorder",
        "malformed",
        "duplicate",
        "disconnect",
        "silent",
    }
