"""Redis from the Debian package, run in the foreground by us (no system service)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from stack.services import LOOPBACK, Component
from stack.system import disable_system_services, ensure_packages, spawn_daemon
from tickflow.config import Settings

REDIS_PACKAGES = {"redis-server": ["redis-server"]}


def render_redis_conf(settings: Settings) -> str:
    """The default user: with a password, only its SHA-256 (``#<hex>``), never the text;
    without one, Redis' own default (no AUTH)."""
    lines = ["# rendered by `tickflow stack up`; edits are overwritten"]
    password = settings.redis.password
    if password:
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines.append(f"user default reset on #{digest} ~* &* +@all")
    return "\n".join(lines) + "\n"


def redis_command(
    settings: Settings, data_dir: Path, log_file: Path, conf: Path | None = None
) -> list[str]:
    binary = shutil.which("redis-server") or "redis-server"
    return [
        binary,
        *([str(conf)] if conf else []),
        "--bind", LOOPBACK,
        "--port", str(settings.redis.port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--daemonize", "no",
        "--logfile", str(log_file),
    ]  # fmt: skip


class Redis(Component):
    name = "redis"
    start_timeout_s = 60.0

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "redis.log"

    def log_files(self) -> list[Path]:
        return [self.log_file, self.home / "redis.out"]

    def ports(self) -> dict[str, int]:
        return {"redis": self.settings.redis.port}

    def install(self) -> None:
        if ensure_packages(REDIS_PACKAGES):
            # the package starts its own service on 6379; we run our own instance
            disable_system_services(["redis-server"])

    @property
    def conf_file(self) -> Path:
        return self.home / "redis.conf"

    def configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(render_redis_conf(self.settings))
        self.conf_file.chmod(0o600)

    def launch(self) -> None:
        argv = redis_command(self.settings, self.data_dir, self.log_file, self.conf_file)
        pid = spawn_daemon(argv, self.home / "redis.out", cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        import redis

        client = redis.Redis(
            host=self.settings.redis.host,
            port=self.settings.redis.port,
            password=self.settings.redis.password or None,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
