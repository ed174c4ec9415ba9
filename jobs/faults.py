"""An injected failure of the job's Python code, for failure drills (``make chaos``).

In ``thread`` mode the Python interpreter lives inside the TaskManager, so there is no separate
Python worker process to kill; what a crashed worker does to the job is fail the task that runs
the Python function. ``PythonFault`` does exactly that, once per appearance of a marker file:
the drill creates the file, the next record raises, Flink restarts the task from its last
checkpoint. The marker is renamed first, so the restored task does not fail again.
"""

from __future__ import annotations

import os
import time

# how often the marker is looked for: a stat() per record would cost more than the check is worth
CHECK_INTERVAL_S = 0.2


class InjectedPythonFault(RuntimeError):
    """Raised on purpose by a failure drill."""


class PythonFault:
    def __init__(self, marker: str, check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.marker = marker
        self.check_interval_s = check_interval_s
        self._next_check = 0.0

    def check(self) -> None:
        """Raise once when the marker file has appeared (claimed by renaming it)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval_s
        try:
            os.rename(self.marker, f"{self.marker}.fired")
        except FileNotFoundError:
            return
        raise InjectedPythonFault(f"failure drill: {self.marker} appeared; failing this task")
