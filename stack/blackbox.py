"""Prometheus' blackbox exporter from the Debian package: it connects to every component's
ports when Prometheus asks (``/probe?module=tcp_connect&target=...``, every
``monitoring.probe_interval_s``), so a component down fires ``ComponentDown``
(monitoring/rules.yml) within seconds, including those with no metrics of their own (Kafka,
Redis, ZooKeeper). The targets: ``stack.prometheus.probe_targets``."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from stack.services import LOOPBACK, Component
from stack.system import disable_system_services, ensure_packages, spawn_daemon
from tickflow.config import Settings

BLACKBOX_BINARY = "/usr/bin/prometheus-blackbox-exporter"
BLACKBOX_PACKAGES = {BLACKBOX_BINARY: ["prometheus-blackbox-exporter"]}
# a connection refused fails at once; a process that accepts nothing fails after this
PROBE_TIMEOUT = "900ms"

BLACKBOX_CONFIG = f"""\
# rendered by `tickflow stack up`; edits are overwritten
modules:
  tcp_connect:
    prober: tcp
    timeout: {PROBE_TIMEOUT}
    tcp:
      preferred_ip_protocol: ip4
"""


class Blackbox(Component):
    name = "blackbox"
    start_timeout_s = 30.0

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.monitoring.blackbox_port > 0

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.monitoring.blackbox_port}

    @property
    def config_file(self) -> Path:
        return self.home / "blackbox.yml"

    @property
    def log_file(self) -> Path:
        return self.home / "blackbox.log"

    def install(self) -> None:
        if ensure_packages(BLACKBOX_PACKAGES):
            # the package starts its own service on 9115 where systemd runs; we run our own
            disable_system_services(["prometheus-blackbox-exporter"])
            self.ensure_ports_free()

    def configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(BLACKBOX_CONFIG)

    def launch(self) -> None:
        argv = [
            BLACKBOX_BINARY,
            f"--config.file={self.config_file}",
            f"--web.listen-address={LOOPBACK}:{self.settings.monitoring.blackbox_port}",
        ]
        pid = spawn_daemon(argv, self.log_file, cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        url = f"http://{LOOPBACK}:{self.settings.monitoring.blackbox_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
