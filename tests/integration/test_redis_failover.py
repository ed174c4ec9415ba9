"""Redis high availability (the HA profile's topology, config/ha.yaml): a replica and three
Sentinels beside the primary. The primary is killed while the job writes live books: the
Sentinels promote the replica, the job's writes wait for it (``redis.failover_wait_ms``) instead
of failing the job, and the books keep advancing, LIVE, with no version going backwards.

The topology is the test's own (its own ports and state directory, a password generated there
as ``stack up`` does): the stack's Redis, which every other test writes to, is never demoted."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.sinks.book_reader import read_book
from jobs.sinks.redis_books import redis_client
from stack import flink, manager
from stack.redis_server import Redis, sentinel_primary_port
from tickflow.config import Settings, load_settings, patched_environ
from tickflow.slice import VersionProbe, start_slice, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOKS = (("binance", "BTCUSDT"), ("binance", "ETHUSDT"))
PRIMARY_PORT, REPLICA_PORT = 16379, 16380
SENTINEL_PORTS = "36379,36380,36381"
COMPONENTS = ["redis", "redis-replica", "redis-sentinel"]


@dataclass(frozen=True)
class RedisTopology:
    """The test's Redis (``settings``: its state directory, where its processes live) and the
    environment that points the job and every client at it."""

    settings: Settings
    environ: dict[str, str]


def replica_in_sync(settings: Settings) -> bool:
    info = redis_client(settings.redis).info("replication")
    return info.get("role") == "master" and int(info.get("connected_slaves", 0)) >= 1


@pytest.fixture
def ha_redis(stack_settings: Settings, tmp_path: Path) -> Iterator[RedisTopology]:
    """A primary, its replica and three Sentinels of the test's own, stopped afterwards."""
    state_dir = tmp_path / "redis-ha"
    redis_environ = {
        "TICKFLOW__REDIS__PORT": str(PRIMARY_PORT),
        "TICKFLOW__REDIS__REPLICA_PORT": str(REPLICA_PORT),
        "TICKFLOW__REDIS__SENTINEL_PORTS": SENTINEL_PORTS,
        "TICKFLOW__REDIS__PASSWORD_FILE": str(state_dir / "secrets" / "redis.password"),
    }
    own = {**redis_environ, "TICKFLOW__STATE_DIR": str(state_dir)}
    with patched_environ(own):
        settings = load_settings()
    try:
        with patched_environ(own):
            manager.up(settings, COMPONENTS)
            settings = load_settings()  # with the password `up` generated
        wait_for("the replica in sync", lambda: replica_in_sync(settings), 60)
        yield RedisTopology(settings, redis_environ)
    finally:
        manager.down(settings, COMPONENTS)


def test_the_job_writes_through_a_redis_failover_without_failing(
    ha_redis: RedisTopology, tmp_path: Path
) -> None:
    with (
        patched_environ(ha_redis.environ),
        start_slice(tmp_path, exchanges=("binance",), rate_per_symbol=20) as run,
    ):
        settings = run.settings
        assert settings.redis.port == PRIMARY_PORT and settings.redis.sentinels()
        for book in BOOKS:
            wait_for(f"{book} LIVE", functools.partial(_live, settings, book), 180)
        with VersionProbe(settings, BOOKS) as probe:
            wait_for("the probe reading every book", lambda: len(probe.versions) == len(BOOKS), 30)
            time.sleep(2)
            before = dict(probe.versions)
            (pid,) = Redis(ha_redis.settings).pids()
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for("the replica promoted",
                     lambda: sentinel_primary_port(settings) == REPLICA_PORT, 60)  # fmt: skip
            promoted_s = time.monotonic() - killed
            advanced = lambda: all(probe.versions.get(b, 0) > before[b] for b in BOOKS)  # noqa: E731
            wait_for("every book advanced past the failover", advanced, 60)
            time.sleep(3)
        print(f"replica promoted {promoted_s:.1f} s after the kill; longest stretch with no "
              f"book advancing {probe.longest_still_s:.1f} s")  # fmt: skip
        assert not probe.backwards, probe.backwards
        assert all(_live(settings, b) for b in BOOKS)
        # the writes waited for the new primary: the job never failed over to a restore
        assert flink.job_restarts(settings, run.job_id) == 0


def _live(settings: Settings, book: tuple[str, str]) -> bool:
    stored = read_book(settings.redis, *book)
    return stored is not None and stored.status == "LIVE"
