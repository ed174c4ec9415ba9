"""The server benchmarks at a tiny size on the local stack: each runs end to end, writes its
results with the figures bench.summary reads, and leaves nothing behind (Redis prefix,
ClickHouse database, Kafka topic and groups). No timing is asserted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from bench import clickhouse_queries, kafka_ceiling, redis_ops, summary
from jobs.sinks.clickhouse import connect
from jobs.sinks.redis_books import redis_client
from tickflow.config import Settings
from tickflow.kafka_security import client_config

pytestmark = pytest.mark.integration


def _target(path: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    entry = data["targets"][name]
    assert isinstance(entry["measured"], int | float) and entry["measured"] > 0
    return data


def test_redis_ops_tiny(stack_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "redis_ops.json"
    args = ["--writes", "600", "--books", "6", "--reads", "600", "--repeats", "1"]
    assert redis_ops.main([*args, "--out", str(out)]) == 0
    data = _target(out, "book_update_p99")
    _target(out, "nbbo_p99")
    # the version guard refused the replay of older versions
    assert data["book_write"]["older_replayed_accepted"] == 0
    prefix = data["conditions"]["key_prefix"]
    r = redis_client(stack_settings.redis)
    assert data["keys_deleted"] > 0
    assert not list(r.scan_iter(f"{prefix}:*"))


def test_clickhouse_queries_tiny(stack_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "clickhouse_queries.json"
    args = ["--scale", "0.0005", "--instruments", "2", "--runs", "1", "--client-runs", "1",
            "--api"]  # fmt: skip
    assert clickhouse_queries.main([*args, "--out", str(out)]) == 0
    data = _target(out, "clickhouse_day_query")
    assert set(data["queries"]) == {q.name for q in clickhouse_queries.queries("BTCUSD")}
    assert data["queries"]["matched_trades_day"]["rows_returned"] > 0
    # the API variant: each endpoint in its formats, the rows the SQL returns
    api = json.loads((tmp_path / "clickhouse_queries_api.json").read_text())
    for name, entry in api["endpoints"].items():
        rows = {entry[f]["rows"] for f in ("json", "arrow", "parquet") if f in entry}
        assert len(rows) == 1, name
        if name in ("nbbo_summary_1s_day", "bars_1m_day", "nbbo_history_hour"):
            assert rows == {data["queries"][name]["rows_returned"]}, name
    db = data["conditions"]["database"]
    client = connect(stack_settings.clickhouse)
    try:
        assert not client.execute("SELECT name FROM system.databases WHERE name = %(db)s",
                                  {"db": db})
    finally:
        client.disconnect()


def test_kafka_ceiling_tiny(stack_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "kafka_ceiling.json"
    args = ["--messages", "3000", "--unique", "600", "--repeats", "1", "--out", str(out)]
    assert kafka_ceiling.main(args) == 0
    data = _target(out, "kafka_consume_ceiling")
    assert data["consume"]["runs"][0]["messages"] == 3000
    topic = data["conditions"]["topic"]
    admin = AdminClient(client_config(stack_settings.kafka))
    deadline = time.monotonic() + 30  # topic deletion completes asynchronously
    while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.5)
    assert topic not in admin.list_topics(timeout=10).topics
    # the summary reads what these wrote
    files = summary.load_results(tmp_path)
    assert summary.summarize(files)["context"]["kafka_consume_ceiling"]["measured"] > 0
