"""The schema registry: Apicurio Registry from its Maven Central distribution, on Java 17, with
its data in an H2 file under ``<state_dir>/registry/data`` and HTTP basic auth (one user,
``registry.username``, whose password the stack generates). Its Confluent-compatible API
(``/apis/ccompat/v7``) is what ``schemas/registry.py`` speaks."""

from __future__ import annotations

import hashlib
from pathlib import Path

from stack.jars import JAVA_PACKAGES, registry_app_dir, registry_runner_jar
from stack.secrets import write_private
from stack.services import Component
from stack.system import ensure_packages, port_open, spawn_daemon
from tickflow.config import Settings

# Quarkus's embedded user store keeps MD5("user:realm:password"), never the password
REALM = "Quarkus"
ROLE = "sr-admin"


def password_digest(username: str, password: str) -> str:
    """What Quarkus's embedded store compares (its format, not ours to pick)."""
    return hashlib.md5(f"{username}:{REALM}:{password}".encode()).hexdigest()


def render_application_properties(settings: Settings, home: Path) -> str:
    """Quarkus reads ``config/application.properties`` in its working directory: the
    listener, the storage, the log file and, with a password, basic auth for every API."""
    registry = settings.registry
    props: dict[str, object] = {
        "quarkus.http.host": registry.host,
        "quarkus.http.port": registry.port,
        "apicurio.storage.kind": "sql",
        "apicurio.storage.sql.kind": "h2",
        # a file, not the default in-memory database: subjects, ids and rules survive restarts
        "apicurio.datasource.url": f"jdbc:h2:file:{home / 'data' / 'registry'}",
        "apicurio.storage.snapshot.location": str(home / "tmp"),
        # no OpenID Connect server here
        "quarkus.oidc.tenant-enabled": "false",
        "quarkus.http.access-log.enabled": "false",
        "quarkus.log.console.enable": "false",
        "quarkus.log.file.enable": "true",
        "quarkus.log.file.path": str(home / "registry.log"),
        "quarkus.log.file.rotation.max-file-size": "50M",
        "quarkus.log.file.rotation.max-backup-index": 3,
        # it logs every request's principal and roles at INFO
        'quarkus.log.category."io.apicurio.registry.auth".level': "WARN",
    }
    if registry.password:
        props |= {
            "quarkus.http.auth.basic": "true",
            "quarkus.security.users.embedded.enabled": "true",
            "quarkus.security.users.embedded.plain-text": "false",
            "quarkus.security.users.embedded.realm-name": REALM,
            f"quarkus.security.users.embedded.users.{registry.username}": password_digest(
                registry.username, registry.password
            ),
            f"quarkus.security.users.embedded.roles.{registry.username}": ROLE,
            # anonymous requests are refused (401), reads included
            "apicurio.auth.anonymous-read-access.enabled": "false",
        }
    lines = ["# rendered by `tickflow stack up` from config/tickflow.yaml; edits are overwritten"]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


class SchemaRegistry(Component):
    name = "registry"
    start_timeout_s = 180.0

    @property
    def log_file(self) -> Path:
        return self.home / "registry.log"

    @property
    def stdout_file(self) -> Path:
        return self.home / "registry.out"

    def log_files(self) -> list[Path]:
        return [self.log_file, self.stdout_file]

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.registry.port}

    def install(self) -> None:
        ensure_packages(JAVA_PACKAGES)
        registry_app_dir(self.settings)

    @property
    def conf_file(self) -> Path:
        return self.home / "config" / "application.properties"

    def configure(self) -> None:
        for sub in ("data", "tmp", "config"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        # it holds the password's digest: the owner's alone
        write_private(self.conf_file, render_application_properties(self.settings, self.home))

    def command(self) -> list[str]:
        heap_mb = self.settings.registry.heap_mb
        return [
            "java",
            f"-Xms{heap_mb // 2}m",
            f"-Xmx{heap_mb}m",
            "-XX:+UseSerialGC",
            f"-Djava.io.tmpdir={self.home / 'tmp'}",
            "-jar",
            str(registry_runner_jar(registry_app_dir(self.settings))),
        ]

    def launch(self) -> None:
        pid = spawn_daemon(self.command(), self.stdout_file, cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        registry = self.settings.registry
        if not port_open(registry.host, registry.port):
            return False
        from schemas.registry import RegistryClient

        RegistryClient(registry).subjects()  # authenticated: the credentials work too
        return True

    def details(self) -> str:
        from schemas.registry import RegistryClient

        return f"{len(RegistryClient(self.settings.registry).subjects())} subjects"
