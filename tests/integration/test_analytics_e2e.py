"""NBBO, trade matching, bars and late data through the whole pipeline, all three exchanges,
with trade arrivals jittered by up to 3 s and a few trades held back beyond the 5 s bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.sinks.book_reader import read_book
from tickflow.analytics_checks import (
    instruments,
    late_events,
    matching_check,
    nbbo_check,
    results_check,
    wait_stored,
    windows_check,
)
from tickflow.config import Settings
from tickflow.slice import Slice, sim_post, start_slice, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXCHANGES = ("binance", "coinbase", "kraken")
JITTER_MS = 3000
# well beyond the 5 s bound: the watermark is the slowest Kafka partition's, so it can trail
LATE_MS = (9000, 10000)


def all_books(settings: Settings) -> list[tuple[str, str]]:
    return [(ex, s) for ex in EXCHANGES for s in getattr(settings.exchanges, ex).symbols]


@pytest.fixture(scope="module")
def analytics_run(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Slice, int, int]]:
    logs = tmp_path_factory.mktemp("analytics")
    with start_slice(logs, exchanges=EXCHANGES, rate_per_symbol=10) as running:
        settings = running.settings
        for ex, s in all_books(settings):
            wait_for(f"{ex}:{s} LIVE", lambda ex=ex, s=s: (
                (b := read_book(settings.redis, ex, s)) is not None and b.status == "LIVE"
            ), 180)  # fmt: skip
        from_ms = int(time.time() * 1000) + 1000
        for ex in EXCHANGES:
            sim_post(settings, f"faults/delay?exchange={ex}&count=0&duration_s=15"
                               f"&min_ms=0&max_ms={JITTER_MS}")  # fmt: skip
        time.sleep(5)
        sim_post(settings, f"faults/delay?exchange=binance&count=2"
                           f"&min_ms={LATE_MS[0]}&max_ms={LATE_MS[1]}")  # fmt: skip
        time.sleep(20)
        to_ms = int(time.time() * 1000) - 8000
        sim_post(settings, "pause")  # the watermark has passed to_ms; let every table catch up
        wait_stored(settings)
        yield running, from_ms, to_ms


def _settled(check: dict[str, Any], key: str) -> dict[str, Any] | None:
    return check if check[key] == 0 else None


def test_every_trade_is_matched_to_the_book_it_executed_against(
    analytics_run: tuple[Slice, int, int],
) -> None:
    running, from_ms, to_ms = analytics_run
    result = wait_for(
        "every trade in the range matched",
        lambda: _settled(matching_check(running.settings, from_ms, to_ms), "matching_missing"),
        60,
    )
    assert result["trades_matched"] > 50
    assert result["matching_errors"] == 0, result["matching_examples"]


def test_nbbo_equals_brute_force_over_the_books_it_names(
    analytics_run: tuple[Slice, int, int],
) -> None:
    result = nbbo_check(analytics_run[0].settings)
    assert result["nbbo_checks"] > 50
    assert result["nbbo_mismatches"] == 0, result["nbbo_examples"]


def test_bars_equal_the_batch_recomputation_in_clickhouse(
    analytics_run: tuple[Slice, int, int],
) -> None:
    running, from_ms, to_ms = analytics_run
    settings = running.settings
    result = windows_check(settings, instruments(settings, EXCHANGES), from_ms, to_ms)
    assert result["window_rows_compared"] > 50
    assert result["window_mismatches"] == 0, result["window_examples"]


def test_trades_later_than_the_bound_land_in_the_late_table(
    analytics_run: tuple[Slice, int, int],
) -> None:
    result = wait_for(
        "late trades stored",
        lambda: (r := late_events(analytics_run[0].settings))["late_events_by_kind"].get("trade")
        and r,
        30,
    )
    assert result["late_events_by_kind"]["trade"] >= 1


def test_the_exactly_once_topics_hold_each_result_once(
    analytics_run: tuple[Slice, int, int],
) -> None:
    settings = analytics_run[0].settings

    def settled() -> dict[str, Any] | None:
        # the last transaction commits with the next checkpoint
        result = results_check(settings)
        complete = all(
            r["kafka_records"] > 0 and r["only_in_clickhouse"] == 0 for r in result.values()
        )
        return result if complete else None

    result = wait_for("every result committed to Kafka", settled, 60)
    print(f"exactly-once topics vs ClickHouse: {result}")
    for table, r in result.items():
        assert r["kafka_duplicates"] == 0 and r["only_in_kafka"] == 0, (table, r)

