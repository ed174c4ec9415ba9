"""ClickHouse high availability (the HA profile): two servers, every table replicated through
ZooKeeper. The primary is killed (SIGKILL) between two inserts of the batch backfill's rows:
the writer goes on to the replica, readers (native and HTTP) read every row there, and the
primary, started again, fetches what it missed until both servers hold the same rows.

The servers and their ZooKeeper are the test's own (their own ports and state directory), so
the stack's ClickHouse is not disturbed."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Iterator

import pytest

from jobs.export import json_rows_from_http
from jobs.sinks.clickhouse import (
    SUMMARIES,
    TABLES,
    RowBinaryWriter,
    connect,
    drop_database,
    ensure_schema,
    final_rows,
    row_tuples,
)
from stack import manager
from stack.clickhouse import ClickHouse
from tests.own_components import own_components
from tests.unit.core_driver import core_settings
from tests.unit.test_gaps import backfill_tables, faulted_day
from tickflow.config import ClickHouseConfig, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPONENTS = ["zookeeper", "clickhouse", "clickhouse-replica"]
CATCH_UP_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def replicated(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    environ = {
        "TICKFLOW__STATE_DIR": str(tmp_path_factory.mktemp("clickhouse-ha")),
        "TICKFLOW__FLINK__HA_ZOOKEEPER_PORT": "12281",
        "TICKFLOW__FLINK__HA_ZOOKEEPER_NODES": "1",
        "TICKFLOW__CLICKHOUSE__PORT": "19000",
        "TICKFLOW__CLICKHOUSE__HTTP_PORT": "18123",
        "TICKFLOW__CLICKHOUSE__REPLICA_PORT": "19001",
        "TICKFLOW__CLICKHOUSE__REPLICA_HTTP_PORT": "18124",
        "TICKFLOW__CLICKHOUSE__INTERSERVER_PORT": "19009",
        "TICKFLOW__CLICKHOUSE__REPLICA_INTERSERVER_PORT": "19010",
        "TICKFLOW__CLICKHOUSE__DATABASE": "replicas",
    }
    with own_components(environ, COMPONENTS) as settings:
        yield settings


def _counts(config: ClickHouseConfig, tables: list[str]) -> dict[str, int]:
    client = connect(config)
    try:
        db = config.database
        return {t: client.execute(f"SELECT count() FROM {db}.{t} FINAL")[0][0] for t in tables}
    finally:
        client.disconnect()


def _wait_equal(config: ClickHouseConfig, tables: list[str], expected: dict[str, int]) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while (counts := _counts(config, tables)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert counts == expected, config.port


def test_a_killed_server_loses_no_row_and_catches_up(replicated: Settings) -> None:
    config = replicated.clickhouse
    primary, replica = config.servers()
    ensure_schema(config)
    for server in (primary, replica):
        client = connect(server)
        engines = dict(client.execute(
            "SELECT name, engine FROM system.tables WHERE database = %(db)s",
            {"db": config.database},
        ))  # fmt: skip
        client.disconnect()
        for table in [*TABLES, *SUMMARIES]:
            assert engines[table] == "ReplicatedReplacingMergeTree", (server.port, table)

    records, _ = faulted_day()
    tables = {t: v for t, v in backfill_tables(core_settings(), records).items() if v[1]}
    expected = {t: len(final_rows(t, row_tuples(t, data))) for t, (data, _) in tables.items()}
    assert len(expected) >= 2, expected
    names = sorted(tables)
    before, after = names[: len(names) // 2], names[len(names) // 2 :]

    writer = RowBinaryWriter(config)
    try:
        for table in before:
            writer.insert(table, *tables[table])
        assert writer.current == 0
        # the replica fetches the primary's new parts (a part the primary took but the replica
        # had not fetched when it died waits on the primary's disk until it comes back)
        _wait_equal(replica, before, {t: expected[t] for t in before})
        pid = ClickHouse(replicated).pids()[0]
        os.kill(pid, signal.SIGKILL)
        while ClickHouse(replicated).pids():
            time.sleep(0.1)
        for table in after:  # and the first half again, as a replay would
            writer.insert(table, *tables[table])
        for table in before:
            writer.insert(table, *tables[table])
        assert writer.current == 1  # on the replica now
    finally:
        writer.close()

    # readers go to the replica: every row, once
    assert _counts(config, names) == expected
    http_rows = json_rows_from_http(config, f"SELECT count() AS n FROM {config.database}.gaps", {})
    assert http_rows.strip()

    manager.up(replicated, ["clickhouse"])
    _wait_equal(primary, names, expected)
    summaries = list(SUMMARIES)
    assert _counts(primary, summaries) == _counts(replica, summaries)

    # a server that does not answer does not keep the database on the others
    unreachable = dataclasses.replace(config, port=19999)
    with pytest.raises(RuntimeError, match=r"DROP DATABASE replicas failed on 127\.0\.0\.1:19999"):
        drop_database(unreachable)
    client = connect(replica)
    assert not client.execute(
        "SELECT name FROM system.databases WHERE name = %(db)s", {"db": config.database}
    )
    client.disconnect()
    drop_database(config)
    for server in (primary, replica):
        client = connect(server)
        assert not client.execute(
            "SELECT name FROM system.databases WHERE name = %(db)s", {"db": config.database}
        )
        client.disconnect()
