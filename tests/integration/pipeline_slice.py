"""A running pipeline for integration tests: simulator -> connectors -> Kafka -> Flink job ->
Redis + ClickHouse, all real, with unique topics, consumer group, Redis key prefix and
ClickHouse database per slice. The machinery lives in ``bench/slice.py`` (``bench/verify.py``
runs the same slice); the tests import it from here.
"""

from __future__ import annotations

from bench.slice import (
    BookUpdates,
    Slice,
    SliceTimeout,
    clickhouse_trades,
    consume_all,
    equals_truth,
    free_port,
    levels,
    read_topic,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)

__all__ = [
    "BookUpdates",
    "Slice",
    "SliceTimeout",
    "clickhouse_trades",
    "consume_all",
    "equals_truth",
    "free_port",
    "levels",
    "read_topic",
    "sim_get",
    "sim_post",
    "start_slice",
    "wait_for",
]
