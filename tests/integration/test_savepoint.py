"""Stop the pipeline with a savepoint while the exchange keeps trading, resume it from the
savepoint with another parallelism: the books come back equal to the truth and ClickHouse
holds every trade exactly once (nothing lost while the job was down, nothing twice)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.slice import (
    clickhouse_trades,
    equals_truth,
    patched_environ,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)
from stack import flink
from tickflow.config import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def parallelism(settings: Settings, job_id: str) -> int:
    job: dict[str, Any] = flink.rest(settings, "GET", f"/jobs/{job_id}")
    return max(int(v["parallelism"]) for v in job["vertices"])


def test_stop_with_savepoint_then_resume_with_parallelism_two(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with start_slice(tmp_path, exchanges=("binance",), rate_per_symbol=20) as run:
        settings = run.settings
        for s in SYMBOLS:
            wait_for(f"{s} LIVE and equal to the truth", lambda s=s: equals_truth(
                settings, "binance", s), 180)  # fmt: skip
        path = flink.stop_with_savepoint(settings, run.job_id)
        assert flink.job_state(settings, run.job_id) == "FINISHED"
        assert Path(path.removeprefix("file:")).exists()
        time.sleep(3)  # the exchange keeps trading into Kafka while the job is down
        with patched_environ({"TICKFLOW__FLINK__PARALLELISM": "2"}):
            resumed = flink.submit_python_job(
                load_settings(), str(settings.root / "jobs" / "pipeline.py"), [],
                from_savepoint=path,
            )  # fmt: skip
        try:
            flink.wait_job_running(settings, resumed, 240)
            assert parallelism(settings, resumed) == 2
            time.sleep(2)
            sim_post(settings, "pause")
            for s in SYMBOLS:
                wait_for(f"{s} equal to the truth after the resume", lambda s=s: equals_truth(
                    settings, "binance", s), 120)  # fmt: skip
            emitted = sorted(
                (s, str(t["id"]), Decimal(t["price"]), Decimal(t["qty"]),
                 "sell" if t["is_buyer_maker"] else "buy")
                for s in SYMBOLS
                for t in sim_get(settings, f"binance/trades?symbol={s}")["trades"]
            )  # fmt: skip
            wait_for("every trade in ClickHouse",
                     lambda: len(clickhouse_trades(settings)) >= len(emitted), 60)  # fmt: skip
            stored = clickhouse_trades(settings)
            missing = sorted(set(emitted) - set(stored))
            extra = sorted(set(stored) - set(emitted))
            assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
        finally:
            flink.cancel_job(settings, resumed)
