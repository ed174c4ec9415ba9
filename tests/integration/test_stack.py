"""The local stack answers, has the pipeline topics, and runs PyFlink thread-mode jobs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from stack import flink, manager
from stack.cli import main as stack_cli
from stack.system import wait_until
from stack.topics import ensure_topics, pipeline_topics
from tickflow.config import Settings

pytestmark = pytest.mark.integration

TRIVIAL_JOB = Path(__file__).with_name("pyflink_trivial_job.py")


def final_state(settings: Settings, job_id: str, timeout: float) -> str:
    assert wait_until(lambda: flink.job_state(settings, job_id) in flink.TERMINAL_STATES, timeout)
    return flink.job_state(settings, job_id)


def test_status_reports_every_component_answering(
    stack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = manager.status(stack_settings)
    # every component this configuration runs (the HA-only ones: with the HA profile)
    expected = [c.name for c in manager.components(stack_settings)]
    assert [r.name for r in rows] == expected and {"kafka", "redis", "flink"} <= set(expected)
    assert [r.name for r in rows if not r.answers] == []
    assert stack_cli(["status"]) == 0
    table = capsys.readouterr().out
    for name in expected:
        assert name in table


def test_up_again_leaves_running_components_alone(stack_settings: Settings) -> None:
    if any(not c.pids() for c in manager.components(stack_settings)):
        pytest.skip("stack not started by `tickflow stack up` from this checkout")
    pids_before = {c.name: c.pids() for c in manager.components(stack_settings)}
    assert manager.up(stack_settings, log=lambda _: None) == []
    assert {c.name: c.pids() for c in manager.components(stack_settings)} == pids_before


def test_pipeline_topics_exist_with_their_partitions(stack_settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    from tickflow.kafka_security import client_config

    admin = AdminClient(client_config(stack_settings.kafka))
    wanted = pipeline_topics(stack_settings)
    topics = admin.list_topics(timeout=30).topics
    described = {name: len(topics[name].partitions) for name in wanted if name in topics}
    assert described == wanted


def test_ensure_topics_creates_extra_topics_once(stack_settings: Settings) -> None:
    name = f"tickflow.test.stack-{uuid.uuid4().hex[:8]}"
    assert ensure_topics(stack_settings, extra={name: 3}) == [name]
    assert ensure_topics(stack_settings, extra={name: 3}) == []


def test_flink_overview_shows_a_taskmanager_with_slots(stack_settings: Settings) -> None:
    overview = flink.rest(stack_settings, "GET", "/overview")
    assert overview["taskmanagers"] >= 1
    assert overview["slots-total"] >= 1
    assert overview["flink-version"].startswith("2.2")


def test_logs_command_prints_log_paths(
    stack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack_cli(["logs", "redis", "-n", "3"]) == 0
    assert str(stack_settings.state_dir / "redis") in capsys.readouterr().out


def test_prometheus_is_a_stack_component_that_answers(
    stack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    [row] = [r for r in manager.status(stack_settings) if r.name == "prometheus"]
    assert row.answers
    assert row.ports == f"http {stack_settings.monitoring.prometheus_port}"
    assert "targets up" in row.details
    assert stack_cli(["logs", "prometheus", "-n", "3"]) == 0
    log = stack_settings.state_dir / "prometheus" / "prometheus.log"
    assert str(log) in capsys.readouterr().out


def test_flink_daemons_log_json_lines(stack_settings: Settings) -> None:
    component = manager.components(stack_settings, ["flink"])[0]
    logs = [p for p in component.log_files() if p.suffix == ".log"]
    for daemon in ("standalonesession", "taskexecutor"):
        assert any(f"-{daemon}-" in p.name for p in logs), (daemon, logs)
    for log in logs:
        lines = [line for line in log.read_text().splitlines() if line.strip()][-20:]
        assert lines, log
        for line in lines:
            record = json.loads(line)  # fails on a line the pattern layout wrote
            assert {"ts", "level", "logger", "msg", "thread"} <= set(record), line


@pytest.mark.slow
def test_two_thread_mode_jobs_in_a_row_both_succeed(stack_settings: Settings) -> None:
    """Regression: the second thread-mode job on a TaskManager failed with
    NoSuchFieldException: loadedLibraryNames (pemja loaded once per job)."""
    tag = uuid.uuid4().hex[:6]
    for run in (1, 2):
        job_id = flink.submit_python_job(
            stack_settings, str(TRIVIAL_JOB), [f"stack-test-{tag}-{run}"], detached=True
        )
        assert flink.wait_job_running(stack_settings, job_id, 180) in ("RUNNING", "FINISHED")
        assert final_state(stack_settings, job_id, 120) == "FINISHED"
    names = {j["name"] for j in flink.list_jobs(stack_settings)}
    assert {f"stack-test-{tag}-1", f"stack-test-{tag}-2"} <= names
