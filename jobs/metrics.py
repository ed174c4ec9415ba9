"""The job's own metrics, exported by Flink's metric reporters (Prometheus here) as
``flink_taskmanager_job_task_operator_tickflow_<name>``.

The compiled core counts what its frames produced (``NativeStream.take_counts``); the operator
adds those counts here with each Redis flush, one call per counter that moved (a call crosses
into the JVM).
``books_not_live`` goes up and down: Flink exports counters as gauges, and a callable gauge
would call back into Python from the reporter's thread, which thread mode does not allow.
"""

from __future__ import annotations

from typing import Protocol


class CounterLike(Protocol):
    def inc(self, n: int = 1) -> None: ...


class MetricGroupLike(Protocol):
    def add_group(self, name: str, extra: str | None = None) -> MetricGroupLike: ...

    def counter(self, name: str) -> CounterLike: ...


COUNTERS = (
    "frames",  # raw frames processed
    "bundles",  # calls into the compiled core with a bundle of frames
    "book_updates",  # book states published (Redis writes)
    "trades",
    "trades_matched",
    "nbbo_updates",
    "bars",
    "late_events",
    "duplicate_trades",  # sent again by an exchange (e.g. on a resubscribe), dropped
    "gaps",  # sequence gaps (and snapshots that could not be bridged)
    "checksum_failures",
    "resync_requests",
    "dead_letters",
    "books_not_live",  # RESYNCING or STALE right now
)


class JobMetrics:
    """Counts add up here and reach Flink's counters on ``flush`` (one call per counter that
    moved, instead of several calls per bundle)."""

    def __init__(self, group: MetricGroupLike) -> None:
        tickflow = group.add_group("tickflow")
        self.counters = {name: tickflow.counter(name) for name in COUNTERS}
        self._not_live: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            self._pending[name] = self._pending.get(name, 0) + n

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for name, n in pending.items():
            if n:
                self.counters[name].inc(n)

    def books_not_live(self, instrument: str, count: int) -> None:
        """The instrument's current count; the counter moves by the difference."""
        before = self._not_live.get(instrument, 0)
        if count != before:
            self._not_live[instrument] = count
            self.inc("books_not_live", count - before)
