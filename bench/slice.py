"""The pipeline slice moved to ``tickflow.slice`` (tests import it from there, never from
bench/); kept so that bench/ scripts and older imports keep working."""

from tickflow.slice import *  # noqa: F403
from tickflow.slice import (  # noqa: F401
    SIMULATOR_OVERLAY,
    BookUpdates,
    Slice,
    SliceTimeout,
    _delete_kafka_topics,
    _delete_redis_keys,
    _teardown,
    clickhouse_trades,
    consume_all,
    equals_truth,
    free_port,
    levels,
    read_topic,
    sim_get,
    sim_post,
    slice_overrides,
    start_slice,
    wait_for,
    with_simulator_overlay,
)
