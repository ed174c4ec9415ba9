"""Redis from the Debian package, run in the foreground by us (no system service)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from stack.services import LOOPBACK, Component, RestartHold
from stack.system import StackError, disable_system_services, ensure_packages, spawn_daemon
from tickflow.config import Settings

if TYPE_CHECKING:
    import redis

REDIS_PACKAGES = {"redis-server": ["redis-server"]}


def render_redis_conf(settings: Settings) -> str:
    """The default user: with a password, only its SHA-256 (``#<hex>``), never the text;
    without one, Redis' own default (no AUTH). With Sentinels (HA) either instance can become
    the other's replica, which needs the password itself to authenticate (``masterauth``)."""
    lines = ["# rendered by `tickflow stack up`; edits are overwritten"]
    password = settings.redis.password
    if password:
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines.append(f"user default reset on #{digest} ~* &* +@all")
        if settings.redis.sentinels():
            lines.append(f"masterauth {_quoted(password)}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_sentinel_conf(settings: Settings, port: int, data_dir: Path) -> str:
    """One Sentinel of ``redis.sentinel_service``: a majority of the Sentinels must miss the
    primary for ``sentinel_down_after_ms`` before the replica is promoted. The password (when
    set) guards the Sentinel itself and lets it command both Redis instances."""
    redis = settings.redis
    quorum = len(redis.sentinels()) // 2 + 1
    service = redis.sentinel_service
    lines = [
        "# rendered by `tickflow stack up`; the Sentinel rewrites it as it learns the topology",
        f"port {port}",
        f"bind {LOOPBACK}",
        f"dir {data_dir}",
        "daemonize no",
        f"sentinel monitor {service} {redis.host} {redis.port} {quorum}",
        f"sentinel down-after-milliseconds {service} {redis.sentinel_down_after_ms}",
        f"sentinel failover-timeout {service} {max(3 * redis.sentinel_down_after_ms, 3000)}",
        f"sentinel parallel-syncs {service} 1",
        "sentinel resolve-hostnames no",
    ]
    if redis.password:
        lines += [
            f"requirepass {_quoted(redis.password)}",
            f"sentinel auth-pass {service} {_quoted(redis.password)}",
            f"sentinel sentinel-pass {_quoted(redis.password)}",
        ]
    return "\n".join(lines) + "\n"


def redis_command(
    settings: Settings,
    data_dir: Path,
    log_file: Path,
    conf: Path | None = None,
    port: int | None = None,
) -> list[str]:
    binary = shutil.which("redis-server") or "redis-server"
    return [
        binary,
        *([str(conf)] if conf else []),
        "--bind", LOOPBACK,
        "--port", str(port or settings.redis.port),
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

    @property
    def own_port(self) -> int:
        return self.settings.redis.port

    def configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(render_redis_conf(self.settings))
        self.conf_file.chmod(0o600)
        primary = self.primary_to_follow()
        if primary is not None:
            with self.conf_file.open("a") as conf:
                conf.write(f"replicaof {primary[0]} {primary[1]}\n")

    def primary_to_follow(self) -> tuple[str, int] | None:
        """The instance to start as a replica of: the one the Sentinels name the primary, once
        they answer (a node started again after a failover follows the promoted one; with its
        configured role, a promoted replica started again as the replica of its own replica,
        and the Sentinels had no primary left to fail over to); else the configured role."""
        redis = self.settings.redis
        primary = sentinel_primary(self.settings) if redis.sentinels() else None
        return follow(primary, (redis.host, self.own_port), self.configured_primary())

    def configured_primary(self) -> tuple[str, int] | None:
        """Whom this instance replicates before any failover: the primary, no one."""
        return None

    def restart_hold(self) -> RestartHold | None:
        """A lost primary that the Sentinels still name is started again once they have
        promoted the replica (it then follows that one), at most ``redis.failover_wait_ms``
        later (no replica to promote: it comes back as the primary). Started at once, it came
        back as a primary with what its append-only file held, beside the replica being
        promoted: two primaries, and the Sentinels failed over again or made the restarted one
        a replica ten seconds later; the writes the other took in between were lost (a drill
        saw the books' versions go backwards and a quiet book end behind)."""
        redis = self.settings.redis
        if not redis.sentinels() or sentinel_primary(self.settings) != (redis.host, self.own_port):
            return None
        until = "or once the Sentinels have promoted the replica"
        return RestartHold(f"the Redis primary ({self.name})", redis.failover_wait_ms / 1000, until,
                           on_loss=lambda: force_failover(self.settings))  # fmt: skip

    def launch(self) -> None:
        argv = redis_command(self.settings, self.data_dir, self.log_file, self.conf_file)
        pid = spawn_daemon(argv, self.home / "redis.out", cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        return _pings(self.settings, self.settings.redis.port)


def _pings(settings: Settings, port: int) -> bool:
    import redis

    client = redis.Redis(
        host=settings.redis.host,
        port=port,
        password=settings.redis.password or None,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


class RedisReplica(Redis):
    """HA: a replica of the primary (``redis.replica_port``). Either instance may be the
    primary after a failover: the Sentinels decide, and reconfigure the other as its replica."""

    name = "redis-replica"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.redis.replica_port > 0

    def ports(self) -> dict[str, int]:
        return {"replica": self.settings.redis.replica_port}

    @property
    def own_port(self) -> int:
        return self.settings.redis.replica_port

    def configured_primary(self) -> tuple[str, int] | None:
        return (self.settings.redis.host, self.settings.redis.port)

    def launch(self) -> None:
        port = self.settings.redis.replica_port
        argv = redis_command(self.settings, self.data_dir, self.log_file, self.conf_file, port)
        pid = spawn_daemon(argv, self.home / "redis.out", cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        return _pings(self.settings, self.settings.redis.replica_port)


class RedisSentinels(Component):
    """HA: the Sentinels (``redis.sentinel_ports``) that watch the primary, promote the replica
    when a majority of them misses it, and tell every client where the primary is."""

    name = "redis-sentinel"
    start_timeout_s = 60.0

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.redis.sentinels())

    @property
    def process_count(self) -> int:  # type: ignore[override]
        return len(self.settings.redis.sentinels())

    @property
    def log_file(self) -> Path:
        return self.home / "sentinel.out"

    def ports(self) -> dict[str, int]:
        sentinels = self.settings.redis.sentinels()
        return {f"sentinel-{i + 1}": port for i, (_, port) in enumerate(sentinels)}

    def install(self) -> None:
        Redis(self.settings).install()

    def _dir(self, port: int) -> Path:
        return self.home / str(port)

    def pid_files(self) -> list[Path]:
        return [self._dir(port) / "sentinel.pid" for _, port in self.settings.redis.sentinels()]

    def log_files(self) -> list[Path]:
        return [self._dir(port) / "sentinel.out" for _, port in self.settings.redis.sentinels()]

    def configure(self) -> None:
        for _, port in self.settings.redis.sentinels():
            directory = self._dir(port)
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"
            # a fresh topology each start: the primary is the configured one again
            conf.write_text(render_sentinel_conf(self.settings, port, directory))
            conf.chmod(0o600)

    def launch(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        for _, port in self.settings.redis.sentinels():
            directory = self._dir(port)
            argv = [binary, str(directory / "sentinel.conf"), "--sentinel"]
            pid = spawn_daemon(argv, directory / "sentinel.out", cwd=directory)
            (directory / "sentinel.pid").write_text(f"{pid}\n")

    def answers(self) -> bool:
        return all(_pings(self.settings, port) for _, port in self.settings.redis.sentinels())


def follow(
    primary: tuple[str, int] | None,
    own: tuple[str, int],
    configured: tuple[str, int] | None,
) -> tuple[str, int] | None:
    """Whom an instance at ``own`` replicates when it starts: the Sentinels' ``primary``
    unless that is itself (then no one: it still leads); without an answer, its
    ``configured`` primary."""
    if primary is None:
        return configured
    return None if primary == own else primary


def _sentinel_client(settings: Settings, host: str, port: int) -> redis.Redis:
    import redis

    return redis.Redis(
        host=host,
        port=port,
        password=settings.redis.password or None,
        socket_timeout=1,
        socket_connect_timeout=1,
    )


def sentinel_primary(settings: Settings) -> tuple[str, int] | None:
    """The primary's address as the first Sentinel that answers names it; None when none does
    (the Sentinels start after the instances they watch)."""
    import redis

    for host, port in settings.redis.sentinels():
        sentinel = _sentinel_client(settings, host, port)
        try:
            address = sentinel.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", settings.redis.sentinel_service
            )
        except redis.RedisError:
            continue
        finally:
            sentinel.close()
        if address:
            return (address[0].decode() if isinstance(address[0], bytes) else address[0],
                    int(address[1]))  # fmt: skip
    return None


def force_failover(settings: Settings) -> str:
    """Have a Sentinel promote the replica now (SENTINEL FAILOVER: no agreement asked): for a
    primary whose process is gone, which the Sentinels would otherwise notice only after
    ``sentinel_down_after_ms``, agree on and elect a leader for (up to a second each); what
    the Sentinel said."""
    import redis

    said = "no Sentinel answered"
    for host, port in settings.redis.sentinels():
        sentinel = _sentinel_client(settings, host, port)
        try:
            sentinel.execute_command("SENTINEL", "FAILOVER", settings.redis.sentinel_service)
            return f"Sentinel {port} fails over to the replica"
        except redis.ResponseError as exc:
            return f"Sentinel {port}: {exc}"  # e.g. INPROG: one is under way already
        except redis.RedisError as exc:
            said = f"Sentinel {port}: {exc}"
        finally:
            sentinel.close()
    return said


def sentinel_primary_port(settings: Settings) -> int:
    """The primary's port as the first Sentinel that answers names it (the HA profile)."""
    primary = sentinel_primary(settings)
    if primary is None:
        raise StackError("redis: no Sentinel names a primary")
    return primary[1]
