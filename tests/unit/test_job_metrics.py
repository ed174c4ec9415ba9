"""The job's counters move by what each frame produced; books_not_live goes up and down."""

from __future__ import annotations

import pytest

from jobs.book.engine import Outcome
from jobs.instrument import Outputs
from jobs.metrics import COUNTERS, JobMetrics

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


def test_counts_per_frame_and_no_call_for_zero() -> None:
    root = Group()
    metrics = JobMetrics(root)
    counters = root.groups["tickflow"].counters
    assert set(counters) == set(COUNTERS)
    out = Outputs(sync_failures=[Outcome.GAP, Outcome.CHECKSUM_MISMATCH, Outcome.GAP])
    metrics.record(out)
    assert counters["gaps"].value == 2 and counters["checksum_failures"].value == 1
    assert counters["trades"].calls == 0  # nothing to add: no call into the JVM


def test_books_not_live_follows_each_instruments_count() -> None:
    root = Group()
    metrics = JobMetrics(root)
    gauge = root.groups["tickflow"].counters["books_not_live"]
    metrics.books_not_live("BTC-USD", 2)
    metrics.books_not_live("ETH-USD", 1)
    metrics.books_not_live("BTC-USD", 0)
    metrics.books_not_live("BTC-USD", 0)
    assert gauge.value == 1 and gauge.calls == 3


def test_buffered_counts_reach_the_counters_on_flush_in_one_call_each() -> None:
    root = Group()
    metrics = JobMetrics(root, buffered=True)
    counters = root.groups["tickflow"].counters
    for _ in range(3):
        metrics.inc("frames")
        metrics.record(Outputs(sync_failures=[Outcome.GAP]))
    metrics.books_not_live("BTC-USD", 2)
    assert counters["frames"].calls == 0 and counters["gaps"].value == 0
    metrics.flush()
    assert counters["frames"].value == 3 and counters["frames"].calls == 1
    assert counters["gaps"].value == 3 and counters["books_not_live"].value == 2
    metrics.flush()
    assert counters["frames"].calls == 1  # nothing new: no call
