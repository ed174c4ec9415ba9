"""Flink high availability (the HA profile, config/ha.yaml): ZooKeeper HA services and a
standby JobManager. The leading JobManager is killed (SIGKILL) while the job writes live
books: the standby is granted leadership once the leader's ZooKeeper session expires, takes
the same job over from its latest checkpoint, and the books advance again, LIVE, with no
version going backwards.

The cluster is the test's own (ZooKeeper, two JobManagers and a TaskManager on their own ports
and state directory, sharing the stack's credentials), so the stack's Flink, which the other
tests use, is not disturbed; the job reads and writes the stack's Kafka, Redis and ClickHouse."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.sinks.book_reader import read_book
from stack import flink, manager
from stack.secrets import secrets_dir
from stack.supervisor import Supervisor
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.slice import VersionProbe, start_slice, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOKS = (("binance", "BTCUSDT"), ("binance", "ETHUSDT"))
COMPONENTS = ["zookeeper", "flink"]
CLUSTER_ENVIRON = {
    "TICKFLOW__FLINK__REST_PORT": "18081",
    "TICKFLOW__FLINK__STANDBY_REST_PORT": "18082",
    "TICKFLOW__FLINK__RPC_PORT": "16123",
    "TICKFLOW__FLINK__HA_ZOOKEEPER_PORT": "12181",
    "TICKFLOW__MONITORING__FLINK_METRICS_PORTS": "19249-19252",
}


@pytest.fixture
def ha_flink(stack_settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    """ZooKeeper and a Flink cluster with a standby JobManager of the test's own; the
    environment that points a slice at it."""
    state_dir = tmp_path / "flink-ha"
    state_dir.mkdir()
    # the stack's credentials: the job and the slice reach the stack's Kafka, Redis, ClickHouse
    (state_dir / "secrets").symlink_to(secrets_dir(stack_settings))
    environ = {**CLUSTER_ENVIRON, "TICKFLOW__STATE_DIR": str(state_dir)}
    with patched_environ(environ):
        settings = load_settings()
        try:
            manager.up(settings, COMPONENTS)
            yield environ
        finally:
            manager.down(settings, list(reversed(COMPONENTS)))


def _live(settings: Settings, book: tuple[str, str]) -> bool:
    stored = read_book(settings.redis, *book)
    return stored is not None and stored.status == "LIVE"


def _completed_checkpoints(settings: Settings, job_id: str) -> int:
    counts = flink.rest(settings, "GET", f"/jobs/{job_id}/checkpoints")["counts"]
    return int(counts["completed"])


def _fail_over(settings: Settings, job_id: str, probe: VersionProbe) -> int:
    """Kill the leading JobManager; wait for the standby to lead, run the job and move every
    book on; the supervisor then starts the dead one again as the new standby."""
    leader = wait_for("a leading JobManager", lambda: flink.leading_rest_port(settings), 30)
    (standby,) = [p for p in settings.flink.rest_ports() if p != leader]
    pid = flink.kill_jobmanager(settings, leader)
    killed = time.monotonic()
    wait_for("the standby leading", lambda: flink.leading_rest_port(settings) == standby, 120)
    leading_s = time.monotonic() - killed
    wait_for("the job running again under the standby",
             lambda: flink.job_state(settings, job_id) == "RUNNING", 180)  # fmt: skip
    running_s = time.monotonic() - killed
    resumed = dict(probe.versions)
    advanced = lambda: all(probe.versions.get(b, 0) > resumed[b] for b in BOOKS)  # noqa: E731
    wait_for("every book advancing under the standby", advanced, 180)
    print(f"JobManager pid {pid} (REST {leader}) killed: the standby (REST {standby}) led "
          f"{leading_s:.1f} s after and ran the job {running_s:.1f} s after")  # fmt: skip
    Supervisor(settings, names=("flink",)).check()
    assert flink.silent_rest_ports(settings) == []
    assert flink.leading_rest_port(settings) == standby  # the new standby does not take over
    return standby


def test_the_standby_jobmanager_takes_the_job_over_twice(
    ha_flink: dict[str, str], tmp_path: Path
) -> None:
    with start_slice(
        tmp_path, exchanges=("binance",), rate_per_symbol=20, environ=ha_flink
    ) as run:
        settings = run.settings
        assert settings.flink.ha and len(settings.flink.rest_ports()) == 2
        for book in BOOKS:
            wait_for(f"{book} LIVE", functools.partial(_live, settings, book), 180)
        wait_for("a completed checkpoint", lambda: _completed_checkpoints(settings, run.job_id), 60)
        with VersionProbe(settings, BOOKS) as probe:
            wait_for("the probe reading every book", lambda: len(probe.versions) == len(BOOKS), 30)
            first = _fail_over(settings, run.job_id, probe)
            # the JobManager started again by the supervisor leads after the second loss
            wait_for("a checkpoint under the new leader",
                     lambda: _completed_checkpoints(settings, run.job_id), 60)  # fmt: skip
            second = _fail_over(settings, run.job_id, probe)
            assert second != first
            time.sleep(3)
        print(f"longest stretch with no book advancing: {probe.longest_still_s:.1f} s")
        assert not probe.backwards, probe.backwards
        assert all(_live(settings, b) for b in BOOKS)
        # the same job, recovered from ZooKeeper each time: never a new submission
        assert [j["jid"] for j in flink.list_jobs(settings) if j["state"] == "RUNNING"] == [
            run.job_id
        ]
