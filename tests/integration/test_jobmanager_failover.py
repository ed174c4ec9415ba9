"""Flink high availability (the HA profile, config/ha.yaml): a ZooKeeper ensemble, a standby
JobManager and a spare TaskManager. While the job writes live books:

- the leading JobManager is killed (SIGKILL), twice: the standby is granted leadership once
  the leader's ZooKeeper session expires (the first time) or is released (the second: what it
  held deleted at once, as the HA profile's supervisor does) and takes the same job over from
  its latest checkpoint;
- the ZooKeeper ensemble's leader is killed: the two nodes left elect a new one and serve on;
- the TaskManager running the job is killed: the job restarts on the spare, which is noticed
  within two refused heartbeats, not after a new TaskManager has started.

Each time the books advance again, LIVE, with no version going backwards, and the supervisor
starts what died again (the new standby, node or spare).

The cluster is the test's own (three ZooKeeper nodes, two JobManagers and two TaskManagers on
their own ports and state directory, sharing the stack's credentials), so the stack's Flink,
which the other tests use, is not disturbed; the job reads and writes the stack's Kafka, Redis
and ClickHouse."""

from __future__ import annotations

import functools
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs import warmup
from jobs.sinks.book_reader import read_book
from stack import flink, manager
from stack.secrets import secrets_dir
from stack.supervisor import Supervisor
from stack.zookeeper import ZooKeeper
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
    # the HA profile's ensemble (client ports 12181-12183), spare and heartbeats
    "TICKFLOW__FLINK__HA_ZOOKEEPER_NODES": "3",
    "TICKFLOW__FLINK__TASKMANAGERS": "2",
    "TICKFLOW__FLINK__HEARTBEAT_INTERVAL_MS": "1000",
    "TICKFLOW__FLINK__HEARTBEAT_TIMEOUT_MS": "5000",
    # the supervisor starts the new standby or spare a while after a loss (the HA profile: 15 s)
    "TICKFLOW__FLINK__REPLACEMENT_DELAY_MS": "3000",
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


def _books_advance(probe: VersionProbe, what: str) -> float:
    """Wait until every book has moved on from where it stands now; seconds it took."""
    since, before = time.monotonic(), dict(probe.versions)
    advanced = lambda: all(probe.versions.get(b, 0) > before[b] for b in BOOKS)  # noqa: E731
    wait_for(f"every book advancing after {what}", advanced, 180)
    return time.monotonic() - since


def _fail_over(
    settings: Settings, job_id: str, probe: VersionProbe, release: bool = False
) -> int:
    """Kill the leading JobManager; wait for the standby to lead, run the job and move every
    book on; the supervisor then starts the dead one again as the new standby. With
    ``release``, the dead leader's ZooKeeper session is released at once
    (``flink.release_lost_leadership``, the supervisor's part in the HA profile) instead of
    expiring."""
    leader = wait_for("a leading JobManager", lambda: flink.leading_rest_port(settings), 30)
    (standby,) = [p for p in settings.flink.rest_ports() if p != leader]
    if release:  # the standby does not lead: nothing of its to release
        assert flink.release_lost_leadership(settings, standby) is None
        assert flink.leading_rest_port(settings) == leader
    pid = flink.kill_jobmanager(settings, leader)
    killed = time.monotonic()
    if release:
        released = flink.release_lost_leadership(settings, leader)
        assert released is not None and "ZooKeeper node(s) its session" in released, released
    wait_for("the standby leading", lambda: flink.leading_rest_port(settings) == standby, 120)
    leading_s = time.monotonic() - killed
    wait_for("the job running again under the standby",
             lambda: flink.job_state(settings, job_id) == "RUNNING", 180)  # fmt: skip
    running_s = time.monotonic() - killed
    _books_advance(probe, "the standby's takeover")
    print(f"JobManager pid {pid} (REST {leader}) killed: the standby (REST {standby}) led "
          f"{leading_s:.1f} s after and ran the job {running_s:.1f} s after")  # fmt: skip
    _supervise_until(settings, "a new standby", lambda: flink.silent_rest_ports(settings) == [])
    assert flink.leading_rest_port(settings) == standby  # the new standby does not take over
    return standby


def _supervise_until(settings: Settings, what: str, done: Callable[[], bool]) -> Supervisor:
    """Supervisor rounds on Flink until ``done``: it starts the replacement of a lost process
    once ``flink.replacement_delay_ms`` has passed, not at its first round."""
    supervisor = Supervisor(settings, names=("flink",))
    supervisor.check()
    assert not done(), f"{what} started at the first round, before the replacement delay"

    def round_done() -> bool:
        supervisor.check()
        return done()

    wait_for(what, round_done, 60)
    assert any("starting another in 3 s" in action.what for action in supervisor.actions)
    return supervisor


def _lose_zookeeper_leader(settings: Settings, job_id: str, probe: VersionProbe) -> None:
    zookeeper = ZooKeeper(settings)
    leader = wait_for("a leading ZooKeeper node", zookeeper.leader, 30)
    pid = zookeeper.node_pid(leader)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # the two nodes left elect a leader among them and serve
    wait_for("a new ZooKeeper leader", lambda: (zookeeper.leader() or leader) != leader, 60)
    took = _books_advance(probe, "the ZooKeeper leader's loss")
    wait_for("the job running", lambda: flink.job_state(settings, job_id) == "RUNNING", 180)
    print(f"ZooKeeper leader (node {leader.node_id}) killed: books advancing {took:.1f} s after")
    Supervisor(settings, names=("zookeeper",)).check()  # starts the lost node alone
    assert zookeeper.answers() and len(zookeeper.pids()) == 3


def _lose_busy_taskmanager(settings: Settings, job_id: str, probe: VersionProbe) -> None:
    busy = flink.job_taskmanager_pids(settings, job_id)
    (spare,) = [p for p in flink.taskmanager_pids(settings) if p not in busy]
    for pid in busy:
        flink.kill_taskmanager(settings, pid)
    killed = time.monotonic()
    wait_for("the job running on the spare",
             lambda: flink.job_state(settings, job_id) == "RUNNING"
             and flink.job_taskmanager_pids(settings, job_id) == [spare], 180)  # fmt: skip
    running_s = time.monotonic() - killed
    took = _books_advance(probe, "the TaskManager's loss")
    print(f"TaskManager pid {busy} killed: the job ran on the spare {running_s:.1f} s after, "
          f"books advancing {took:.1f} s after that")  # fmt: skip
    # a new spare, and the job's code loaded into it
    supervisor = _supervise_until(
        settings, "a new spare", lambda: len(flink.taskmanager_pids(settings)) == 2
    )
    supervisor.stop()
    assert supervisor.errors == []
    assert len(flink.taskmanager_pids(settings)) == 2
    assert _warmed_taskmanagers(settings) >= _taskmanager_ids(settings)
    assert _kafka_warmed_taskmanagers(settings) == _taskmanager_ids(settings)


def _taskmanager_ids(settings: Settings) -> set[str]:
    return set(flink.free_slots(settings))


def _kafka_warmed_taskmanagers(settings: Settings) -> set[str]:
    """The TaskManagers whose log says a warm-up opened the pipeline's Kafka clients there
    (io.tickflow.flink.KafkaClientWarmup)."""
    port = flink.leading_rest_port(settings)
    warmed: set[str] = set()
    for taskmanager in _taskmanager_ids(settings):
        url = f"http://127.0.0.1:{port}/taskmanagers/{taskmanager}/log"
        with urllib.request.urlopen(url, timeout=10) as response:
            if b"Kafka clients opened for topic" in response.read():
                warmed.add(taskmanager)
    return warmed


def _jobmanagers_on_the_patched_leader_latch(settings: Settings) -> int:
    """The JobManagers whose log says they elect with jobs/jvm's LeaderLatch (CURATOR-696 fixed),
    not the one flink-dist bundles."""
    logs = (flink.runtime_dir(settings) / "log").glob("*standalonesession-*.log")
    return sum(b"relocated by tickflow" in log.read_bytes() for log in logs)


def _warmed_taskmanagers(settings: Settings) -> set[str]:
    """The TaskManagers a finished warm-up job (jobs/warmup.py) ran a subtask on."""
    warmed: set[str] = set()
    for job in flink.list_jobs(settings):
        if job["name"] == warmup.JOB_NAME and job["state"] == "FINISHED":
            warmed |= flink.job_taskmanager_ids(settings, job["jid"])
    return warmed


def test_the_ha_cluster_rides_out_each_of_its_losses(
    ha_flink: dict[str, str], tmp_path: Path
) -> None:
    with start_slice(
        tmp_path, exchanges=("binance",), rate_per_symbol=20, environ=ha_flink
    ) as run:
        settings = run.settings
        assert settings.flink.ha and len(settings.flink.rest_ports()) == 2
        # the stack loaded the job's code into both TaskManagers as it started them
        assert _warmed_taskmanagers(settings) == _taskmanager_ids(settings)
        assert _kafka_warmed_taskmanagers(settings) == _taskmanager_ids(settings)
        assert _jobmanagers_on_the_patched_leader_latch(settings) == 2
        for book in BOOKS:
            wait_for(f"{book} LIVE", functools.partial(_live, settings, book), 180)
        wait_for("a completed checkpoint", lambda: _completed_checkpoints(settings, run.job_id), 60)
        with VersionProbe(settings, BOOKS) as probe:
            wait_for("the probe reading every book", lambda: len(probe.versions) == len(BOOKS), 30)
            first = _fail_over(settings, run.job_id, probe)
            # the JobManager started again by the supervisor leads after the second loss
            wait_for("a checkpoint under the new leader",
                     lambda: _completed_checkpoints(settings, run.job_id), 60)  # fmt: skip
            second = _fail_over(settings, run.job_id, probe, release=True)
            assert second != first
            _lose_zookeeper_leader(settings, run.job_id, probe)
            _lose_busy_taskmanager(settings, run.job_id, probe)
            time.sleep(3)
        print(f"longest stretch with no book advancing: {probe.longest_still_s:.1f} s")
        assert not probe.backwards, probe.backwards
        assert all(_live(settings, b) for b in BOOKS)
        # the same job, recovered from ZooKeeper each time: never a new submission
        assert [j["jid"] for j in flink.list_jobs(settings) if j["state"] == "RUNNING"] == [
            run.job_id
        ]
