"""Metrics on the running stack: Prometheus answers with the generated config and the alert
rules, Flink's Prometheus reporter serves flink_* metrics on the JobManager's and the
TaskManager's ports, and a job's Kafka source exports its lag metrics under the names the alert
rules use.

Run as a script (``flink run -py this_file.py <bootstrap> <topic> <job name>``) this module is
that job: a Kafka source into a discarding sink, no Python operator.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

THIS_FILE = Path(__file__).resolve()
# every alert monitoring/rules.yml defines
ALERTS = {
    rule["alert"]
    for group in yaml.safe_load((THIS_FILE.parents[2] / "monitoring" / "rules.yml").read_text())[
        "groups"
    ]
    for rule in group["rules"]
}
JOBMANAGER_METRIC = "flink_jobmanager_numRegisteredTaskManagers"
# what the Kafka source of a running job exports (used by monitoring/rules.yml)
KAFKA_SOURCE_METRICS = (
    "flink_taskmanager_job_task_operator_pendingRecords",
    "flink_taskmanager_job_task_operator_currentEmitEventTimeLag",
    "flink_taskmanager_job_task_operator_watermarkLag",
)


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


def metric_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def prometheus_api(settings: Any, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    url = f"http://127.0.0.1:{settings.monitoring.prometheus_port}/api/v1/{path}{query}"
    answer = json.loads(http_get(url))
    assert answer["status"] == "success", answer
    return answer["data"]


def reporter_text(port: int) -> str:
    try:
        return http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError as error:
        pytest.fail(
            f"no Prometheus reporter on port {port} ({error}): was Flink started before the "
            "reporter was configured? `tickflow stack down flink && tickflow stack up flink`"
        )


# -- Prometheus --------------------------------------------------------------------------------


def test_prometheus_is_ready(stack_settings: Any) -> None:
    port = stack_settings.monitoring.prometheus_port
    assert "Ready" in http_get(f"http://127.0.0.1:{port}/-/ready")


def test_prometheus_loaded_every_alert_rule(stack_settings: Any) -> None:
    groups = prometheus_api(stack_settings, "rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == ALERTS
    assert [rule["name"] for rule in rules if rule["health"] == "err"] == []


def test_prometheus_scrapes_the_configured_targets(stack_settings: Any) -> None:
    from stack.flink import flink_metrics_ports

    monitoring = stack_settings.monitoring
    active = prometheus_api(stack_settings, "targets", state="active")["activeTargets"]
    by_job: dict[str, set[str]] = {}
    for target in active:
        by_job.setdefault(target["labels"]["job"], set()).add(target["labels"]["instance"])
    assert by_job["flink"] == {f"127.0.0.1:{p}" for p in flink_metrics_ports(stack_settings)}
    assert by_job["connectors"] == {
        f"127.0.0.1:{port}" for port in monitoring.connector_metrics_ports.values()
    }
    assert by_job["dashboard"] == {f"127.0.0.1:{monitoring.dashboard_port}"}
    assert by_job["prometheus"] == {f"127.0.0.1:{monitoring.prometheus_port}"}
    exchanges = {t["labels"].get("exchange") for t in active if t["labels"]["job"] == "connectors"}
    assert exchanges == set(monitoring.connector_metrics_ports)
    # the blackbox exporter tries each component's ports, and every one answers
    probed = {t["labels"]["component"] for t in active if t["labels"]["job"] == "components"}
    assert {"kafka", "redis", "clickhouse", "flink", "registry"} <= probed
    deadline = time.monotonic() + 30
    while True:
        failed = prometheus_api(stack_settings, "query", query="probe_success == 0")["result"]
        down = [r["metric"]["instance"] for r in failed]
        if not down:
            break
        assert time.monotonic() < deadline, f"ports the blackbox exporter cannot reach: {down}"
        time.sleep(1)
    # the Redis exporter reads the stack's Redis, uptime included (RedisRestarted)
    assert by_job["redis"] == {f"redis://127.0.0.1:{stack_settings.redis.port}"}
    while True:
        read = prometheus_api(stack_settings, "query", query='redis_uptime_in_seconds{job="redis"}')
        if read["result"]:
            break
        assert time.monotonic() < deadline, "no Redis uptime read by the Redis exporter"
        time.sleep(1)


def test_prometheus_has_samples_from_jobmanager_and_taskmanager(stack_settings: Any) -> None:
    """At least two Flink targets (JobManager + TaskManager) are up and their metrics queryable."""
    deadline = time.monotonic() + 4 * stack_settings.monitoring.scrape_interval_s + 10
    while True:
        up = prometheus_api(stack_settings, "query", query='up{job="flink"} == 1')["result"]
        jm = prometheus_api(stack_settings, "query", query=JOBMANAGER_METRIC)
        if len(up) >= 2 and jm["result"]:
            break
        assert time.monotonic() < deadline, f"flink targets up: {up}, jobmanager series: {jm}"
        time.sleep(1)


# -- Flink's Prometheus reporter ---------------------------------------------------------------


def test_jobmanager_reporter_serves_flink_metrics(stack_settings: Any) -> None:
    from stack.flink import flink_metrics_ports

    names = metric_names(reporter_text(flink_metrics_ports(stack_settings)[0]))
    assert "flink_jobmanager_numRegisteredTaskManagers" in names
    assert "flink_jobmanager_Status_JVM_CPU_Load" in names


def test_taskmanager_reporter_serves_flink_metrics(stack_settings: Any) -> None:
    from stack.flink import flink_metrics_ports

    # the TaskManager takes the first free port after the JobManager's
    text = reporter_text(flink_metrics_ports(stack_settings)[1])
    names = metric_names(text)
    assert "flink_taskmanager_Status_JVM_CPU_Load" in names
    assert "flink_taskmanager_Status_Shuffle_Netty_AvailableMemorySegments" in names
    assert 'tm_id="' in text


@pytest.mark.slow
def test_kafka_source_exports_lag_and_pending_records(stack_settings: Any) -> None:
    from confluent_kafka import Producer

    from stack import flink
    from stack.topics import ensure_topics
    from tickflow.kafka_security import client_config

    tag = uuid.uuid4().hex[:8]
    topic = f"tickflow.test.metrics-{tag}"
    job_name = f"metrics-probe-{tag}"
    ensure_topics(stack_settings, extra={topic: 1})
    producer = Producer(client_config(stack_settings.kafka))
    for i in range(100):
        producer.produce(topic, f"frame {i}".encode())
    assert producer.flush(30) == 0

    job_id = flink.submit_python_job(
        stack_settings, str(THIS_FILE), [stack_settings.kafka.bootstrap, topic, job_name]
    )
    try:
        assert flink.wait_job_running(stack_settings, job_id, 180) == "RUNNING"
        # the reporter sanitises label values: "-" becomes "_"
        label = f'job_name="{job_name.replace("-", "_")}"'
        ports = flink.flink_metrics_ports(stack_settings)[1:]
        missing = list(KAFKA_SOURCE_METRICS)
        deadline = time.monotonic() + 90
        while missing and time.monotonic() < deadline:
            lines = []
            for port in ports:
                try:
                    lines += http_get(f"http://127.0.0.1:{port}/metrics").splitlines()
                except OSError:
                    continue  # a free port of the range
            exported = metric_names("\n".join(line for line in lines if label in line))
            missing = [name for name in KAFKA_SOURCE_METRICS if name not in exported]
            time.sleep(1)
        assert missing == [], f"not exported for {job_name}: {missing}"
    finally:
        flink.cancel_job(stack_settings, job_id)


# -- the probe job (this file, submitted with `flink run -py`) ---------------------------------


def kafka_probe_job(bootstrap: str, topic: str, job_name: str) -> None:
    """Kafka source (event time: record timestamps) into a discarding sink."""
    from pyflink.common import WatermarkStrategy
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import Sink
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
    from pyflink.java_gateway import get_gateway

    from tickflow.config import load_settings
    from tickflow.kafka_security import java_properties

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap)
        .set_topics(topic)
        .set_group_id(job_name)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_value_only_deserializer(SimpleStringSchema())
    )
    for key, value in java_properties(load_settings().kafka).items():
        builder = builder.set_property(key, value)
    source = builder.build()
    stream = env.from_source(source, WatermarkStrategy.for_monotonous_timestamps(), "probe")
    discarding = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2
    stream.sink_to(Sink(discarding.DiscardingSink()))
    env.execute(job_name)


if __name__ == "__main__":
    kafka_probe_job(*sys.argv[1:4])
