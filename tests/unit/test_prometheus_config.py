"""Monitoring configuration of the stack (no servers): Prometheus' generated prometheus.yml and
the alert rules (checked with promtool when installed), Flink's Prometheus reporter and its
JSON-lines daemon logs."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import manager
from stack.blackbox import Blackbox
from stack.cli import HA_OVERLAY
from stack.flink import (
    flatten,
    flink_env,
    flink_home,
    flink_metrics_ports,
    format_ports,
    parse_ports,
    render_flink_config,
    reporter_port_args,
    runtime_overrides,
)
from stack.jars import LOG4J_JSON_POM
from stack.prometheus import (
    Prometheus,
    prometheus_command,
    prometheus_config,
    promtool,
    promtool_check,
    render_prometheus_config,
    rules_file,
)
from stack.redis_exporter import RedisExporter
from stack.system import StackError
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit

ALERTS = {
    "ComponentDown",
    "JobRestarted",
    "ConnectorDown",
    "ConnectorSilent",
    "NoDataForExchange",
    "ConsumerLagHigh",
    "BookNotLive",
    "CheckpointFailures",
    "DeadLettersRising",
    "KafkaDeliveryFailures",
    "ClickHouseUnavailable",
    "ClickHouseBudgetFull",
    "RedisRestarted",
    "RedisFailover",
}
needs_promtool = pytest.mark.skipif(promtool() is None, reason="promtool is not installed")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(load_settings(environ={}), state_dir=tmp_path / "state")


def with_monitoring(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(
        settings, monitoring=dataclasses.replace(settings.monitoring, **changes)
    )


def scrape_job(config: dict[str, Any], name: str) -> dict[str, Any]:
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == name]
    assert len(jobs) == 1, name
    return jobs[0]


def targets(job: dict[str, Any]) -> list[str]:
    return [target for static in job["static_configs"] for target in static["targets"]]


# -- prometheus.yml ---------------------------------------------------------------------------


def test_prometheus_yml_scrapes_every_target_from_the_settings(settings: Settings) -> None:
    settings = with_monitoring(
        settings,
        prometheus_port=19090,
        scrape_interval_s=7,
        flink_metrics_ports="19249-19251",
        connector_metrics_ports={"binance": "19101", "kraken": "19103"},
        dashboard_port=18090,
    )
    rules = Path("/repo/monitoring/rules.yml")
    config = yaml.safe_load(render_prometheus_config(settings, rules))
    assert config["global"] == {
        "scrape_interval": "7s",
        "scrape_timeout": "7s",
        "evaluation_interval": "7s",
    }
    assert config["rule_files"] == [str(rules)]
    assert targets(scrape_job(config, "prometheus")) == ["127.0.0.1:19090"]
    flink = scrape_job(config, "flink")
    assert targets(flink) == ["127.0.0.1:19249", "127.0.0.1:19250", "127.0.0.1:19251"]
    connectors = scrape_job(config, "connectors")["static_configs"]
    assert connectors == [
        {"targets": ["127.0.0.1:19101"], "labels": {"exchange": "binance"}},
        {"targets": ["127.0.0.1:19103"], "labels": {"exchange": "kraken"}},
    ]
    dashboard = scrape_job(config, "dashboard")
    assert targets(dashboard) == ["127.0.0.1:18090"]
    assert dashboard["metrics_path"] == "/metrics"
    [alertmanager] = config["alerting"]["alertmanagers"]
    assert alertmanager["api_version"] == "v2"  # the dashboard serves POST /api/v2/alerts
    assert targets(alertmanager) == ["127.0.0.1:18090"]


def test_default_settings_scrape_the_configured_defaults(settings: Settings) -> None:
    config = prometheus_config(settings, rules_file(settings))
    monitoring = settings.monitoring
    assert targets(scrape_job(config, "flink")) == [
        f"127.0.0.1:{port}" for port in parse_ports(monitoring.flink_metrics_ports)
    ]
    assert {
        s["labels"]["exchange"]: s["targets"]
        for s in scrape_job(config, "connectors")["static_configs"]
    } == {
        exchange: [f"127.0.0.1:{port}"]
        for exchange, port in monitoring.connector_metrics_ports.items()
    }
    assert config["rule_files"] == [str(settings.root / "monitoring" / "rules.yml")]


def test_the_blackbox_exporter_tries_every_serving_port_of_every_component(
    settings: Settings,
) -> None:
    ha = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    probes = manager.probe_targets(ha)
    local = [f"127.0.0.1:{port}" for port in (9092, 9093, 9094, 9095, 9096, 9097)]
    assert probes["kafka"] == local
    assert probes["redis-sentinel"] == ["127.0.0.1:26379", "127.0.0.1:26380", "127.0.0.1:26381"]
    # not the leader-only peer ports
    assert probes["zookeeper"] == ["127.0.0.1:2181", "127.0.0.1:2182", "127.0.0.1:2183"]
    # both JobManagers' REST, no RPC or metrics
    assert probes["flink"] == ["127.0.0.1:8081", "127.0.0.1:8082"]
    assert "prometheus" not in probes and "blackbox" not in probes
    config = prometheus_config(settings, Path("r.yml"), probes)
    job = scrape_job(config, "components")
    assert job["scrape_interval"] == "1s" and job["params"] == {"module": ["tcp_connect"]}
    groups = {group["labels"]["component"]: group["targets"] for group in job["static_configs"]}
    assert groups["zookeeper"] == ["127.0.0.1:2181", "127.0.0.1:2182", "127.0.0.1:2183"]
    address = job["relabel_configs"][-1]
    assert address == {"target_label": "__address__", "replacement": "127.0.0.1:9115"}
    assert Blackbox(ha).ports() == {"http": 9115}
    off = with_monitoring(settings, blackbox_port=0)
    jobs = prometheus_config(off, Path("r.yml"))["scrape_configs"]
    assert "components" not in {job["job_name"] for job in jobs}
    assert not Blackbox.enabled(off)


def test_the_redis_exporter_reads_every_redis_process_of_the_profile(settings: Settings) -> None:
    ha = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    job = scrape_job(prometheus_config(ha, Path("r.yml")), "redis")
    assert job["scrape_interval"] == "1s" and job["metrics_path"] == "/scrape"
    groups = {group["labels"]["role"]: group["targets"] for group in job["static_configs"]}
    assert groups == {
        "data": ["redis://127.0.0.1:6379", "redis://127.0.0.1:6380"],
        "sentinel": [f"redis://127.0.0.1:{port}" for port in (26379, 26380, 26381)],
    }
    address = job["relabel_configs"][-1]
    assert address == {"target_label": "__address__", "replacement": "127.0.0.1:9121"}
    assert RedisExporter(ha).ports() == {"http": 9121}
    # the default profile: its one Redis, no Sentinels
    default = scrape_job(prometheus_config(settings, Path("r.yml")), "redis")
    assert [group["targets"] for group in default["static_configs"]] == [
        ["redis://127.0.0.1:6379"]
    ]
    off = with_monitoring(settings, redis_exporter_port=0)
    jobs = prometheus_config(off, Path("r.yml"))["scrape_configs"]
    assert "redis" not in {job["job_name"] for job in jobs}
    assert not RedisExporter.enabled(off)


def test_scrape_timeout_never_exceeds_the_interval_nor_prometheus_default(
    settings: Settings,
) -> None:
    slow = prometheus_config(with_monitoring(settings, scrape_interval_s=30), Path("r.yml"))
    assert slow["global"]["scrape_interval"] == "30s"
    assert slow["global"]["scrape_timeout"] == "10s"


def test_prometheus_runs_on_loopback_with_data_and_config_under_the_state_dir(
    settings: Settings,
) -> None:
    component = Prometheus(settings)
    assert component.ports() == {"http": settings.monitoring.prometheus_port}
    assert component.home == settings.state_dir / "prometheus"
    argv = prometheus_command(settings, component.config_file, component.data_dir)
    assert f"--web.listen-address=127.0.0.1:{settings.monitoring.prometheus_port}" in argv
    assert f"--config.file={settings.state_dir}/prometheus/prometheus.yml" in argv
    assert f"--storage.tsdb.path={settings.state_dir}/prometheus/data" in argv


def test_stack_starts_prometheus_after_flink() -> None:
    names = list(manager.COMPONENT_NAMES)
    assert names.index("prometheus") > names.index("flink")


# -- alert rules ------------------------------------------------------------------------------


def test_rules_define_every_alert_with_severity_and_texts(settings: Settings) -> None:
    groups = yaml.safe_load(rules_file(settings).read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    for metric in (  # the names Flink's reporter exports (see the header of rules.yml)
        "flink_taskmanager_job_task_operator_currentEmitEventTimeLag",
        "flink_taskmanager_job_task_operator_pendingRecords",
        "flink_taskmanager_job_task_operator_tickflow_books_not_live",
        "flink_taskmanager_job_task_operator_tickflow_dead_letters",
        "flink_jobmanager_job_numberOfFailedCheckpoints",
    ):
        assert metric in exprs


@needs_promtool
def test_promtool_accepts_the_rules(settings: Settings) -> None:
    assert "SUCCESS" in promtool_check("rules", rules_file(settings))


@needs_promtool
def test_promtool_accepts_the_generated_config(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(settings, rules_file(settings)))
    assert "SUCCESS" in promtool_check("config", config)


@needs_promtool
def test_promtool_check_failure_is_a_stack_error(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text("groups:\n- name: x\n  rules:\n  - alert: A\n    expr: rate(\n")
    with pytest.raises(StackError, match="promtool check rules"):
        promtool_check("rules", broken)


@needs_promtool
def test_alerts_fire_as_specified(settings: Settings) -> None:
    """monitoring/rules_test.yml: each alert fires after its `for:` with its labels and texts,
    and not before."""
    binary = promtool()
    assert binary is not None
    done = subprocess.run(
        [binary, "test", "rules", "rules_test.yml"],
        cwd=settings.root / "monitoring",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Flink: Prometheus reporter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("9249-9252", [9249, 9250, 9251, 9252]),
        ("9249,9251", [9249, 9251]),
        ("9249, 9260-9261", [9249, 9260, 9261]),
        ("9249", [9249]),
    ],
)
def test_parse_ports(text: str, ports: list[int]) -> None:
    assert parse_ports(text) == ports


@pytest.mark.parametrize("text", ["", "a-b", "9252-9249", "0-2", "70000"])
def test_parse_ports_rejects_nonsense(text: str) -> None:
    with pytest.raises(StackError, match="bad port range"):
        parse_ports(text)


def test_format_ports() -> None:
    assert format_ports([9250, 9251, 9252]) == "9250-9252"
    assert format_ports([9250]) == "9250"
    assert format_ports([9250, 9252]) == "9250,9252"


def test_flink_needs_a_port_for_the_jobmanager_and_one_for_taskmanagers(
    settings: Settings,
) -> None:
    with pytest.raises(StackError, match="at least two ports"):
        flink_metrics_ports(with_monitoring(settings, flink_metrics_ports="9249"))


def test_jobmanager_takes_the_first_reporter_port_taskmanagers_the_rest(
    settings: Settings,
) -> None:
    settings = with_monitoring(settings, flink_metrics_ports="9249-9252")
    assert reporter_port_args(settings, "jobmanager") == ["-D", "metrics.reporter.prom.port=9249"]
    assert reporter_port_args(settings, "taskmanager") == [
        "-D",
        "metrics.reporter.prom.port=9250-9252",
    ]


def test_flink_conf_enables_the_prometheus_reporter_on_the_range(
    settings: Settings, tmp_path: Path
) -> None:
    base = (settings.root / "flink-conf" / "config.yaml").read_text()
    settings = with_monitoring(settings, flink_metrics_ports="19249-19250")
    overrides = runtime_overrides(settings, tmp_path, Path("/venv/bin/python"))
    flat = flatten(yaml.safe_load(render_flink_config(base, overrides)))
    assert flat["metrics.reporter.prom.factory.class"] == (
        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    )
    assert flat["metrics.reporter.prom.port"] == "19249-19250"


def test_flink_daemons_load_plugins_from_the_stack(settings: Settings) -> None:
    env = flink_env(settings)
    assert env["FLINK_PLUGINS_DIR"] == str(settings.state_dir / "flink" / "plugins")


def test_the_wheel_ships_the_prometheus_reporter_plugin() -> None:
    assert sorted(flink_home().glob("plugins/metrics-prometheus/flink-metrics-prometheus-*.jar"))


# -- Flink: JSON-lines daemon logs ------------------------------------------------------------


def read_properties(path: Path) -> dict[str, str]:
    """Java .properties: ``key = value`` lines, a trailing backslash continues a line."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip() if pending else raw.lstrip()
        if not pending and (not line or line.startswith(("#", "!"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    pairs = (re.split(r"\s*[=:]\s*", line, maxsplit=1) for line in logical)
    return {key: value for key, value in pairs}


def test_daemon_logs_are_json_lines_with_the_tickflow_keys(settings: Settings) -> None:
    props = read_properties(settings.root / "flink-conf" / "log4j.properties")
    assert props["appender.main.layout.type"] == "JsonTemplateLayout"
    template = json.loads(props["appender.main.layout.eventTemplate"])
    assert list(template) == ["ts", "level", "logger", "msg", "thread", "job_id", "exc"]
    assert template["msg"] == {"$resolver": "message", "stringified": True}


@pytest.mark.parametrize("name", ["log4j-cli.properties", "log4j-console.properties"])
def test_client_and_console_logs_stay_readable(settings: Settings, name: str) -> None:
    props = read_properties(settings.root / "flink-conf" / name)
    layouts = {v for k, v in props.items() if k.endswith(".layout.type")}
    assert layouts == {"PatternLayout"}


def jar_version(lib: Path, artifact: str) -> str:
    [jar] = sorted(lib.glob(f"{artifact}-[0-9]*.jar"))
    return jar.name[len(artifact) + 1 : -len(".jar")]


def test_json_layout_matches_the_log4j_core_flink_ships() -> None:
    lib = flink_home() / "lib"
    core = jar_version(lib, "log4j-core")
    assert jar_version(lib, "log4j-layout-template-json") == core
    # the Maven fallback for a lib/ without the layout pins the same version
    pom = LOG4J_JSON_POM.read_text()
    assert f"<version>{core}</version>" in pom
