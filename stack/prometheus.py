"""Prometheus from the Debian package, run in the foreground by us (no system service).

``configure`` renders ``<state_dir>/prometheus/prometheus.yml`` from ``monitoring.*`` in
config/tickflow.yaml (see :func:`render_prometheus_config`) and checks it and the alert rules
(``monitoring/rules.yml``) with promtool, which the package ships. Prometheus scrapes, every
``monitoring.scrape_interval_s`` seconds, Flink's reporter ports, the connectors, the dashboard
and itself, evaluates the rules as often, and sends alerts to the dashboard, which implements
Alertmanager's ``POST /api/v2/alerts``. Reload after editing the rules:
``curl -X POST 127.0.0.1:<prometheus_port>/-/reload``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from stack.flink import flink_metrics_ports
from stack.redis_exporter import redis_targets
from stack.services import LOOPBACK, Component
from stack.system import StackError, disable_system_services, ensure_packages, spawn_daemon
from tickflow.config import Settings

PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMTOOL_BINARY = "/usr/bin/promtool"
PROMETHEUS_PACKAGES = {PROMETHEUS_BINARY: ["prometheus"], PROMTOOL_BINARY: ["prometheus"]}
# local history only: a few days, never more than this much disk
RETENTION_TIME = "7d"
RETENTION_SIZE = "1GB"
# Prometheus' own default; it must not exceed the scrape interval
MAX_SCRAPE_TIMEOUT_S = 10


def rules_file(settings: Settings) -> Path:
    """The alert rules, read in place from the repository (edit, then reload)."""
    return settings.root / "monitoring" / "rules.yml"


def _target(port: int | str) -> str:
    return f"{LOOPBACK}:{int(port)}"


def _exporter_job(
    name: str,
    exporter_port: int,
    interval: str,
    path: str,
    groups: list[dict[str, Any]],
    params: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A scrape job of a multi-target exporter: Prometheus asks the exporter at
    ``exporter_port`` about each target of ``groups`` (its ``?target=``), which stays the
    sample's ``instance``."""
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": path,
        **({"params": params} if params else {}),
        "static_configs": groups,
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": _target(exporter_port)},
        ],
    }


def probe_config(settings: Settings, probes: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The scrape job that has the blackbox exporter connect to every component's ports (each
    target labelled with its component); none without the exporter."""
    monitoring = settings.monitoring
    if not monitoring.blackbox_port:
        return []
    groups = [
        {"targets": addresses, "labels": {"component": name}}
        for name, addresses in probes.items()
        if addresses
    ]
    interval = f"{monitoring.probe_interval_s}s"
    tcp = {"module": ["tcp_connect"]}
    return [_exporter_job("components", monitoring.blackbox_port, interval, "/probe", groups, tcp)]


def redis_config(settings: Settings) -> list[dict[str, Any]]:
    """The scrape job that has the Redis exporter read every Redis process (each target
    labelled with its role, ``data`` or ``sentinel``); none without the exporter."""
    monitoring = settings.monitoring
    if not monitoring.redis_exporter_port:
        return []
    groups = [
        {"targets": targets, "labels": {"role": role}}
        for role, targets in redis_targets(settings).items()
        if targets
    ]
    interval = f"{monitoring.probe_interval_s}s"
    return [_exporter_job("redis", monitoring.redis_exporter_port, interval, "/scrape", groups)]


def prometheus_config(
    settings: Settings, rules: Path, probes: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """prometheus.yml as a mapping: the targets, intervals and alerting come from settings;
    ``probes``: per component, the addresses the blackbox exporter tries."""
    monitoring = settings.monitoring
    interval = f"{monitoring.scrape_interval_s}s"
    timeout = f"{min(monitoring.scrape_interval_s, MAX_SCRAPE_TIMEOUT_S)}s"
    connectors = [
        {"targets": [_target(port)], "labels": {"exchange": exchange}}
        for exchange, port in sorted(monitoring.connector_metrics_ports.items())
    ]
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": interval,  # rules run as often as samples arrive
        },
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [
                {
                    # the dashboard receives POST /api/v2/alerts and forwards to the webhook
                    "api_version": "v2",
                    "static_configs": [{"targets": [_target(monitoring.dashboard_port)]}],
                    # the dashboard's write endpoint takes only its bearer token
                    **(
                        {"authorization": {"credentials_file": monitoring.dashboard_token_file}}
                        if monitoring.dashboard_token_file
                        and Path(monitoring.dashboard_token_file).is_file()
                        else {}
                    ),
                }
            ]
        },
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [_target(monitoring.prometheus_port)]}],
            },
            {
                # JobManager on the first port, TaskManager(s) on the others; free ports
                # simply show up as down
                "job_name": "flink",
                "static_configs": [
                    {"targets": [_target(port) for port in flink_metrics_ports(settings)]}
                ],
            },
            {"job_name": "connectors", "static_configs": connectors},
            {
                "job_name": "dashboard",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [_target(monitoring.dashboard_port)]}],
            },
            *(
                [
                    {
                        "job_name": "archive",
                        "static_configs": [{"targets": [_target(settings.archive.metrics_port)]}],
                    }
                ]
                if settings.archive.metrics_port
                else []
            ),
            *probe_config(settings, probes or {}),
            *redis_config(settings),
        ],
    }


def render_prometheus_config(
    settings: Settings, rules: Path, probes: dict[str, list[str]] | None = None
) -> str:
    header = "# rendered by `tickflow stack up` from config/tickflow.yaml; edits are overwritten\n"
    return header + yaml.safe_dump(prometheus_config(settings, rules, probes), sort_keys=False)


def promtool() -> str | None:
    """promtool's path, or None when it is not installed."""
    return shutil.which("promtool") or (PROMTOOL_BINARY if Path(PROMTOOL_BINARY).exists() else None)


def promtool_check(what: str, path: Path) -> str:
    """``promtool check <what> <path>`` (what: config | rules); its output, or StackError."""
    binary = promtool()
    if binary is None:
        raise StackError("prometheus: promtool is not installed (apt-get install prometheus)")
    done = subprocess.run(
        [binary, "check", what, str(path)], capture_output=True, text=True, check=False
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise StackError(f"prometheus: `promtool check {what} {path}` failed:\n{output}")
    return output


def prometheus_command(settings: Settings, config: Path, data_dir: Path) -> list[str]:
    binary = shutil.which("prometheus") or PROMETHEUS_BINARY
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={RETENTION_TIME}",
        f"--storage.tsdb.retention.size={RETENTION_SIZE}",
        f"--web.listen-address={_target(settings.monitoring.prometheus_port)}",
        # POST /-/reload re-reads prometheus.yml and the rules (loopback only)
        "--web.enable-lifecycle",
    ]


class Prometheus(Component):
    name = "prometheus"
    start_timeout_s = 60.0

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def log_file(self) -> Path:
        return self.home / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://{_target(self.settings.monitoring.prometheus_port)}"

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.monitoring.prometheus_port}

    def install(self) -> None:
        if ensure_packages(PROMETHEUS_PACKAGES):
            # the package starts its own service on 9090 (where systemd runs); we run our own
            disable_system_services(["prometheus"])
            self.ensure_ports_free()  # e.g. a SysV-init service the package started

    def configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        from stack.manager import probe_targets  # the manager knows every component

        rules = rules_file(self.settings)
        probes = probe_targets(self.settings)
        self.config_file.write_text(render_prometheus_config(self.settings, rules, probes))
        promtool_check("rules", rules)
        promtool_check("config", self.config_file)

    def launch(self) -> None:
        argv = prometheus_command(self.settings, self.config_file, self.data_dir)
        pid = spawn_daemon(argv, self.log_file, cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def get(self, path: str, timeout: float = 2.0) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def answers(self) -> bool:
        return b"Ready" in self.get("/-/ready")

    def details(self) -> str:
        try:
            targets = json.loads(self.get("/api/v1/targets?state=active"))["data"]
            alerts = json.loads(self.get("/api/v1/alerts"))["data"]["alerts"]
        except (OSError, ValueError, KeyError):
            return ""
        active = targets["activeTargets"]
        up = sum(1 for t in active if t.get("health") == "up")
        firing = sum(1 for a in alerts if a.get("state") == "firing")
        return f"{up}/{len(active)} targets up, {firing} alert(s) firing"
