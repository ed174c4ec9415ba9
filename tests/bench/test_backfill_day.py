"""The realistic-day backfill benchmark's generation plan (``bench.backfill_day``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ is not an installed package; put the root on the path
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.backfill_day import (  # noqa: E402
    books_by_partition,
    day_env,
    only_books,
    split_partitions,
)
from tickflow.config import load_settings  # noqa: E402
from tickflow.generated import MIXES, book_settings  # noqa: E402

pytestmark = pytest.mark.unit


def test_every_book_is_in_one_partition_and_every_partition_in_one_share() -> None:
    settings = book_settings(load_settings(), MIXES["all"])
    by_partition = books_by_partition(settings)
    books = [b for bs in by_partition.values() for b in bs]
    assert len(books) == len(set(books)) == 30
    shares = split_partitions(by_partition, 2)
    assert sorted(p for share in shares for p in share) == sorted(by_partition)
    loads = [sum(len(by_partition[p]) for p in share) for share in shares]
    assert max(loads) - min(loads) <= max(len(b) for b in by_partition.values())


def test_a_share_subscribes_and_serves_only_its_books() -> None:
    settings = book_settings(load_settings(), MIXES["all"])
    mine = set(next(iter(books_by_partition(settings).values())))
    narrowed = only_books(settings, mine)
    kept = {
        (ex, s) for ex in MIXES["all"] for s in getattr(narrowed.exchanges, ex).symbols
    }  # fmt: skip
    assert kept == mine
    assert set(narrowed.simulator.symbols) == {s for ex, s in mine if ex == "binance"}
    assert set(narrowed.simulator.kraken_symbols) == {s for ex, s in mine if ex == "kraken"}


def test_the_day_has_its_own_topic_and_database() -> None:
    import datetime

    env = day_env(datetime.date(2026, 11, 24))
    assert env["TICKFLOW__KAFKA__RAW_TOPIC"] == "tickflow.raw.day20261124"
    assert env["TICKFLOW__CLICKHOUSE__DATABASE"] == "tickflow_day20261124"
