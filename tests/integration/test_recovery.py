"""Kill the TaskManager mid-stream: the job restores from its last checkpoint, the books in Redis
end equal to the simulator's truth, no book version in Redis ever goes backwards, and ClickHouse
holds every trade exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from jobs.sinks.book_reader import read_book
from stack import flink
from tickflow.config import Settings
from tickflow.slice import (
    BookUpdates,
    Slice,
    clickhouse_trades,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture(scope="module")
def running_slice(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Slice]:
    with start_slice(tmp_path_factory.mktemp("recovery")) as running:
        yield running


def completed_checkpoints(settings: Settings, job_id: str) -> int:
    counts = flink.rest(settings, "GET", f"/jobs/{job_id}/checkpoints")["counts"]
    return int(counts["completed"])


def test_taskmanager_crash_restores_books_and_loses_nothing(running_slice: Slice) -> None:
    settings, job_id = running_slice.settings, running_slice.job_id
    versions = BookUpdates(settings)
    try:
        for symbol in SYMBOLS:
            wait_for(
                f"{symbol} LIVE",
                lambda s=symbol: (
                    (b := read_book(settings.redis, "binance", s)) is not None
                    and b.status == "LIVE"
                ),
                180,
            )
        wait_for("a completed checkpoint", lambda: completed_checkpoints(settings, job_id), 120)
        writes_before = versions.writes
        flink.kill_taskmanager(settings)  # mid-stream: the simulator keeps producing
        flink.start_taskmanager(settings)
        flink.wait_job_running(settings, job_id, 240)
        wait_for("writes after the restore", lambda: versions.writes > writes_before + 20, 120)

        sim_post(settings, "pause")
        for symbol in SYMBOLS:
            truth = sim_get(settings, f"binance/book?symbol={symbol}")
            book = wait_for(
                f"{symbol} at the simulator's last update",
                lambda s=symbol, w=truth["lastUpdateId"]: (
                    b
                    if (b := read_book(settings.redis, "binance", s))
                    and b.status == "LIVE"
                    and b.seq == w
                    else None
                ),
                120,
            )
            top_n = settings.book.top_n
            assert book.bids == [tuple(level) for level in truth["bids"][:top_n]]
            assert book.asks == [tuple(level) for level in truth["asks"][:top_n]]

        emitted = sorted(
            (s, str(t["id"]), Decimal(t["price"]), Decimal(t["qty"]),
             "sell" if t["is_buyer_maker"] else "buy")
            for s in SYMBOLS
            for t in sim_get(settings, f"binance/trades?symbol={s}")["trades"]
        )  # fmt: skip
        wait_for(
            "every trade in ClickHouse", lambda: len(clickhouse_trades(settings)) >= len(emitted)
        )
        assert clickhouse_trades(settings) == emitted  # FINAL: replays collapse, nothing lost
    finally:
        versions.close()
    print(f"redis writes observed: {versions.writes}; backwards versions: {versions.backwards}")
    assert versions.error is None
    assert versions.backwards == []
