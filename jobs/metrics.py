"""The job's own metrics, exported by Flink's metric reporters (Prometheus here) as
``flink_taskmanager_job_task_operator_tickflow_<name>``.

Each frame adds its counts with one call per non-zero metric (a call crosses into the JVM), or,
buffered, once per flush.
``books_not_live`` goes up and down: Flink exports counters as gauges, and a callable gauge
would call back into Python from the reporter's thread, which thread mode does not allow.
"""

from __future__ import annotations

from typing import Protocol

from jobs.book.engine import Outcome
from jobs.instrument import Outputs


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
    """``buffered``: counts add up here and reach Flink's counters on ``flush`` (one call per
    counter that moved, instead of several calls per frame)."""

    def __init__(self, group: MetricGroupLike, buffered: bool = False) -> None:
        tickflow = group.add_group("tickflow")
        self.counters = {name: tickflow.counter(name) for name in COUNTERS}
        self._not_live: dict[str, int] = {}
        self.buffered = buffered
        self._pending: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            if self.buffered:
                self._pending[name] = self._pending.get(name, 0) + n
            else:
                self.counters[name].inc(n)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for name, n in pending.items():
            if n:
                self.counters[name].inc(n)

    def record(self, out: Outputs) -> None:
        self.inc("book_updates", len(out.book_views))
        self.inc("trades", len(out.trades))
        self.inc("trades_matched", len(out.matched))
        self.inc("nbbo_updates", len(out.nbbo))
        self.inc("bars", len(out.bars))
        self.inc("late_events", len(out.late))
        self.inc("duplicate_trades", out.duplicate_trades)
        checksum = sum(1 for o in out.sync_failures if o is Outcome.CHECKSUM_MISMATCH)
        self.inc("checksum_failures", checksum)
        self.inc("gaps", len(out.sync_failures) - checksum)

    def books_not_live(self, instrument: str, count: int) -> None:
        """The instrument's current count; the counter moves by the difference."""
        before = self._not_live.get(instrument, 0)
        if count != before:
            self._not_live[instrument] = count
            self.inc("books_not_live", count - before)
