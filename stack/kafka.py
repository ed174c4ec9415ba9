"""Kafka as a single KRaft node (broker + controller) run from the Maven jars."""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from stack.jars import JAVA_PACKAGES, kafka_jars_dir
from stack.services import Component
from stack.system import StackError, ensure_packages, port_open, spawn_daemon
from tickflow.config import Settings

NODE_ID = 1


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as Uuid does)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    kafka = settings.kafka
    host, port, controller = kafka.host, kafka.port, kafka.controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.voters": f"{NODE_ID}@{host}:{controller}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        # one broker: every internal topic has a single replica
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "min.insync.replicas": 1,
        "default.replication.factor": 1,
        # fewer internal partitions: faster first start on a small machine
        "offsets.topic.num.partitions": 8,
        "transaction.state.log.num.partitions": 8,
        # topics are created explicitly (stack.topics), typos must not create new ones
        "auto.create.topics.enable": "false",
        # tests start consumers and expect assignment at once
        "group.initial.rebalance.delay.ms": 0,
        # Flink's exactly-once sink uses transactions up to the checkpoint timeout
        "transaction.max.timeout.ms": 900000,
        "num.partitions": 1,
    }
    lines = ["# rendered by `tickflow stack up` from config/tickflow.yaml; edits are overwritten"]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2(log_dir: Path) -> str:
    """Broker log4j2 configuration: a size-rolled server.log, WARN for the noisy parts."""
    return f"""\
# rendered by `tickflow stack up`
name = kafka
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = {log_dir}/server.log
appender.server.filePattern = {log_dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


def java_command(jars: Path, log4j2: Path, heap_mb: int, main: str, *args: str) -> list[str]:
    return [
        "java",
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j2}",
        "-cp",
        f"{jars}/*",
        main,
        *args,
    ]


class Kafka(Component):
    name = "kafka"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_file(self) -> Path:
        return self.log_dir / "kafka.out"

    def log_files(self) -> list[Path]:
        return [self.log_file, self.stdout_file]

    def ports(self) -> dict[str, int]:
        return {
            "broker": self.settings.kafka.port,
            "controller": self.settings.kafka.controller_port,
        }

    def install(self) -> None:
        ensure_packages(JAVA_PACKAGES)
        kafka_jars_dir(self.settings)

    def configure(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(
            render_server_properties(self.settings, self.data_dir)
        )
        (self.home / "log4j2.properties").write_text(render_log4j2(self.log_dir))
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _format_storage(self) -> None:
        """KRaft needs its log directory formatted with a cluster id once, before first start."""
        id_file = self.home / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        argv = self._java(
            # one argument: an id that starts with "-" would otherwise read as an option
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
            "--config", str(self.home / "server.properties"), "--ignore-formatted",
        )  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            raise StackError(f"kafka: StorageTool format failed:\n{done.stdout}{done.stderr}")

    def _java(self, main: str, *args: str) -> list[str]:
        jars = kafka_jars_dir(self.settings)  # cheap once resolved: a marker check
        heap_mb = self.settings.kafka.heap_mb
        return java_command(jars, self.home / "log4j2.properties", heap_mb, main, *args)

    def launch(self) -> None:
        argv = self._java("kafka.Kafka", str(self.home / "server.properties"))
        pid = spawn_daemon(argv, self.stdout_file, cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        kafka = self.settings.kafka
        if not port_open(kafka.host, kafka.port):
            return False
        from kafka import KafkaAdminClient  # slow import, only when probing

        admin = KafkaAdminClient(
            bootstrap_servers=kafka.bootstrap,
            client_id="tickflow-stack-health",
            request_timeout_ms=5000,
        )
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()
