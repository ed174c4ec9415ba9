"""Prometheus' Redis exporter from the Debian package (``prometheus-redis-exporter``): every
Redis process of the stack, primary, replica and Sentinels, scraped through its multi-target
endpoint (``/scrape?target=redis://host:port``, every ``monitoring.probe_interval_s``).

A primary killed and restarted by the supervisor is back within a second, often between two
blackbox probes, so ``ComponentDown`` can miss it; its reset uptime cannot be missed
(``RedisRestarted``), and neither can a Sentinel that saw the primary down or moved it
(``RedisFailover``, monitoring/rules.yml). The targets: ``redis_targets``."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from stack.services import LOOPBACK, Component
from stack.system import disable_system_services, ensure_packages, spawn_daemon
from tickflow.config import Settings

REDIS_EXPORTER_BINARY = "/usr/bin/prometheus-redis-exporter"
REDIS_EXPORTER_PACKAGES = {REDIS_EXPORTER_BINARY: ["prometheus-redis-exporter"]}
# a refused connection fails at once; a process that accepts and says nothing, after this
CONNECTION_TIMEOUT = "900ms"


def redis_targets(settings: Settings) -> dict[str, list[str]]:
    """Per role (``data``: primary and replica, ``sentinel``), the ``redis://`` addresses the
    exporter scrapes: this configuration's processes (the replica and Sentinels with HA)."""
    redis = settings.redis
    data = [redis.port] + ([redis.replica_port] if redis.replica_port else [])
    return {
        "data": [f"redis://{redis.host}:{port}" for port in data],
        "sentinel": [f"redis://{host}:{port}" for host, port in redis.sentinels()],
    }


class RedisExporter(Component):
    name = "redis-exporter"
    start_timeout_s = 30.0

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.monitoring.redis_exporter_port > 0

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.monitoring.redis_exporter_port}

    @property
    def log_file(self) -> Path:
        return self.home / "redis-exporter.log"

    def install(self) -> None:
        if ensure_packages(REDIS_EXPORTER_PACKAGES):
            # the package starts its own service on 9121 where systemd runs; we run our own
            disable_system_services(["prometheus-redis-exporter"])
            self.ensure_ports_free()

    def configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def launch(self) -> None:
        redis = self.settings.redis
        argv = [
            REDIS_EXPORTER_BINARY,
            f"-web.listen-address={LOOPBACK}:{self.settings.monitoring.redis_exporter_port}",
            f"-redis.addr=redis://{redis.host}:{redis.port}",
            f"-connection-timeout={CONNECTION_TIMEOUT}",
            "-redis-only-metrics",
        ]
        # the password through the environment: a command line is visible to every local user
        env = {"PATH": "/usr/bin:/bin"}
        if redis.password:
            env["REDIS_PASSWORD"] = redis.password
        pid = spawn_daemon(argv, self.log_file, cwd=self.home, env=env)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        url = f"http://{LOOPBACK}:{self.settings.monitoring.redis_exporter_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
