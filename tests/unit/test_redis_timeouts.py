"""The job's Redis client against a Redis that accepts connections and never answers (paused
or blackholed): its batch raises a timeout instead of holding the job forever."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from jobs.sinks.redis_books import RedisBatch, job_redis_client
from tickflow.config import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections are accepted and never answered."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in held:
            sock.close()
        server.close()


def test_a_redis_that_never_answers_fails_the_batch_with_a_timeout(silent_port: int) -> None:
    settings = load_settings(environ={})
    config = dataclasses.replace(
        settings.redis, port=silent_port, socket_connect_timeout_ms=500, socket_timeout_ms=300
    )
    client = job_redis_client(config)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.3
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 0.5
    batch = RedisBatch(client)
    batch.add_lease(["tf:book:binance:BTCUSDT"], 1)
    with pytest.raises(redis.exceptions.TimeoutError):
        batch.flush()
    client.close()
