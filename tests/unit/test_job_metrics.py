"""The job's counters move by what the compiled core counted; books_not_live goes up and down;
every counter the core counts is one the job exports."""

from __future__ import annotations

import pytest

from jobs.metrics import COUNTERS, JobMetrics
from tests.unit.core_driver import Core, binance, bn_depth, bn_snapshot

pytestmark = pytest.mark.unit


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self.calls = 0

    def inc(self, n: int = 1) -> None:
        self.value += n
        self.calls += 1


class Group:
    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.counters: dict[str, Counter] = {}

    def add_group(self, name: str, extra: str | None = None) -> Group:
        return self.groups.setdefault(name, Group())

    def counter(self, name: str) -> Counter:
        return self.counters.setdefault(name, Counter())


def test_the_cores_counts_are_the_exported_counters() -> None:
    core = Core("BNB-BTC")
    core.process(binance("snapshot", bn_snapshot(10, [["1.0", "2"]], [["1.1", "3"]]), 1_000))
    core.process(binance("depth", bn_depth(20, 21, 1_001, [], []), 1_001))  # a gap
    counts = core.stream.take_counts()
    assert set(counts) <= set(COUNTERS)
    assert counts["gaps"] == 1 and counts["resync_requests"] == 1 and counts["frames"] == 2
    root = Group()
    metrics = JobMetrics(root)
    for name, n in counts.items():
        metrics.inc(name, n)
    metrics.flush()
    counters = root.groups["tickflow"].counters
    assert set(counters) == set(COUNTERS)
    assert counters["gaps"].value == 1 and counters["checksum_failures"].calls == 0


def test_books_not_live_follows_each_instruments_count() -> None:
    root = Group()
    metrics = JobMetrics(root)
    gauge = root.groups["tickflow"].counters["books_not_live"]
    metrics.books_not_live("BTC-USD", 2)
    metrics.books_not_live("ETH-USD", 1)
    metrics.books_not_live("BTC-USD", 0)
    metrics.books_not_live("BTC-USD", 0)
    metrics.flush()
    assert gauge.value == 1 and gauge.calls == 1


def test_buffered_counts_reach_the_counters_on_flush_in_one_call_each() -> None:
    root = Group()
    metrics = JobMetrics(root)
    counters = root.groups["tickflow"].counters
    for _ in range(3):
        metrics.inc("frames")
        metrics.inc("gaps")
        metrics.inc("trades", 0)  # nothing to add: no call into the JVM
    metrics.books_not_live("BTC-USD", 2)
    assert counters["frames"].calls == 0 and counters["gaps"].value == 0
    metrics.flush()
    assert counters["frames"].value == 3 and counters["frames"].calls == 1
    assert counters["gaps"].value == 3 and counters["books_not_live"].value == 2
    assert counters["trades"].calls == 0
    metrics.flush()
    assert counters["frames"].calls == 1  # nothing new: no call
