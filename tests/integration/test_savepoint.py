"""Stop the pipeline with a savepoint while the exchange keeps trading and resume it from the
savepoint: with another parallelism, with changed code that keeps every uid, and (the upgrade
from the release before the compiled core) from a drained savepoint holding state no operator
of the job takes. After each resume the books come back equal to the truth and ClickHouse
holds every trade exactly once (nothing lost while the job was down, nothing twice)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from jobs.sinks.redis_books import redis_client
from stack import flink
from tests.integration.previous_release_pipeline import NAME_PREFIX, OLD_UIDS
from tests.integration.upgraded_pipeline import PROBE, UPGRADE_KEY, UPGRADE_VERSION
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.slice import (
    clickhouse_trades,
    equals_truth,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def vertices(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    job: dict[str, Any] = flink.rest(settings, "GET", f"/jobs/{job_id}")
    return list(job["vertices"])


def parallelism(settings: Settings, job_id: str) -> int:
    return max(int(v["parallelism"]) for v in vertices(settings, job_id))


def stop_with_savepoint(settings: Settings, job_id: str) -> str:
    path = flink.stop_with_savepoint(settings, job_id)
    assert flink.job_state(settings, job_id) == "FINISHED"
    assert Path(path.removeprefix("file:")).exists()
    time.sleep(3)  # the exchange keeps trading into Kafka while the job is down
    return path


def assert_books_and_trades_exact(settings: Settings, when: str) -> None:
    """Pause the exchange; the books equal its truth and ClickHouse holds each trade once."""
    time.sleep(2)
    sim_post(settings, "pause")
    for s in SYMBOLS:
        wait_for(f"{s} equal to the truth {when}", lambda s=s: equals_truth(
            settings, "binance", s), 120)  # fmt: skip
    emitted = sorted(
        (s, str(t["id"]), Decimal(t["price"]), Decimal(t["qty"]),
         "sell" if t["is_buyer_maker"] else "buy")
        for s in SYMBOLS
        for t in sim_get(settings, f"binance/trades?symbol={s}")["trades"]
    )  # fmt: skip
    wait_for(f"every trade in ClickHouse {when}",
             lambda: len(clickhouse_trades(settings)) >= len(emitted), 60)  # fmt: skip
    stored = clickhouse_trades(settings)
    missing = sorted(set(emitted) - set(stored))
    extra = sorted(set(stored) - set(emitted))
    assert not missing and not extra, f"{when}: missing {missing[:5]}, unexpected {extra[:5]}"


def test_savepoint_resume_with_parallelism_two_then_with_changed_code(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with start_slice(tmp_path, exchanges=("binance",), rate_per_symbol=20) as run:
        settings = run.settings
        for s in SYMBOLS:
            wait_for(f"{s} LIVE and equal to the truth", lambda s=s: equals_truth(
                settings, "binance", s), 180)  # fmt: skip
        path = stop_with_savepoint(settings, run.job_id)
        with patched_environ({"TICKFLOW__FLINK__PARALLELISM": "2"}):
            current = flink.submit_python_job(
                load_settings(), str(settings.root / "jobs" / "pipeline.py"), [],
                from_savepoint=path,
            )  # fmt: skip
        try:
            flink.wait_job_running(settings, current, 240)
            assert parallelism(settings, current) == 2
            assert_books_and_trades_exact(settings, "after the rescale")

            # an upgrade: other operator code under the same uids, and a new operator
            sim_post(settings, "resume")
            path = stop_with_savepoint(settings, current)
            current = flink.submit_python_job(
                settings, str(settings.root / "tests" / "integration" / "upgraded_pipeline.py"),
                [], from_savepoint=path,
            )  # fmt: skip
            flink.wait_job_running(settings, current, 240)
            assert any(PROBE in v["name"] for v in vertices(settings, current))
            client = redis_client(settings.redis)
            mark = f"{settings.redis.key_prefix}:{UPGRADE_KEY}"
            wait_for("the upgraded code running", lambda: client.get(mark)
                     == UPGRADE_VERSION.encode(), 60)  # fmt: skip
            assert_books_and_trades_exact(settings, "after the upgrade")
        finally:
            flink.cancel_job(settings, current)


def test_a_drained_savepoint_with_state_of_removed_operators_resumes_without_it(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """The documented upgrade from the release before the compiled core (``jobs/cli.py``):
    drain the old job into a savepoint, start the new one from it with
    ``--allow-non-restored-state``. The old release's Python operators are deleted, so the
    old job is a stand-in (``previous_release_pipeline.py``): today's graph plus keyed state
    under the old operators' uids. What this proves: the source resumes at the savepoint's
    offsets and the sinks (same uids in both releases) restore, the state under the removed
    uids is dropped, and the books and trades come out exact. What it cannot prove: the old
    operators' own state (dropped either way) or a savepoint written by the old release's
    Flink and connector versions (the same as today's: 2.2, connector 5.0.0-2.2)."""
    with start_slice(tmp_path, exchanges=("binance",), rate_per_symbol=20) as run:
        settings = run.settings
        for s in SYMBOLS:
            wait_for(f"{s} LIVE and equal to the truth", lambda s=s: equals_truth(
                settings, "binance", s), 180)  # fmt: skip
        path = stop_with_savepoint(settings, run.job_id)
        old = flink.submit_python_job(
            settings, str(settings.root / "tests" / "integration" / "previous_release_pipeline.py"),
            [], from_savepoint=path,
        )  # fmt: skip
        current = old
        try:
            flink.wait_job_running(settings, old, 240)
            names = " ".join(v["name"] for v in vertices(settings, old))
            assert all(f"{NAME_PREFIX}{uid}" in names for uid in OLD_UIDS), names
            time.sleep(5)  # frames reach the old operators: their keyed state is not empty
            path = flink.stop_with_savepoint(settings, old, drain=True)
            time.sleep(3)  # the exchange keeps trading into Kafka while the job is down
            current = flink.submit_python_job(
                settings, str(settings.root / "jobs" / "pipeline.py"), [],
                from_savepoint=path, allow_non_restored_state=True,
            )  # fmt: skip
            flink.wait_job_running(settings, current, 240)
            assert not any(NAME_PREFIX in v["name"] for v in vertices(settings, current))
            assert_books_and_trades_exact(settings, "after the upgrade")
        finally:
            flink.cancel_job(settings, current)
