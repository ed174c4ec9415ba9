"""Kafka in KRaft mode run from the Maven jars: by default one node, broker and controller in one
process; in the HA profile a broker per ``kafka.bootstrap`` address (every topic replicated
``kafka.replication_factor`` times) and beside each a controller in a process of its own (a
quorum of three), as Kafka advises for production."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets as random_secrets
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from stack import netns
from stack.jars import JAVA_PACKAGES, kafka_jars_dir
from stack.netns import NetHost
from stack.secrets import BROKER_CN, BROKER_USER, secrets_dir, write_private
from stack.services import Cluster, RestartHold
from stack.system import (
    StackError,
    destroy_sockets,
    ensure_packages,
    pid_alive,
    port_open,
    process_belongs_to,
    read_pids,
    spawn_daemon,
)
from tickflow.config import ConfigError, Settings, read_secret

# what the local broker can run: open, or SCRAM over TLS with client certificates required
LOCAL_PROTOCOLS = ("PLAINTEXT", "SASL_SSL")
SCRAM_ITERATIONS = 8192
# written after the storage was formatted with the SCRAM users (a data dir without it was
# formatted by an earlier release, without them)
SCRAM_MARKER = "scram-users"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as Uuid does)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def local_protocol(settings: Settings) -> str:
    protocol = settings.kafka.security_protocol
    if protocol not in LOCAL_PROTOCOLS:
        raise StackError(
            f"kafka: the local stack runs {' or '.join(LOCAL_PROTOCOLS)}, "
            f"not kafka.security_protocol {protocol}"
        )
    return protocol


# the HA profile's controllers are processes of their own, one beside each broker, with node
# id CONTROLLER_ID_BASE + the broker's. Combined in the brokers, a broker's loss took the active
# controller with it when it led the quorum: the others noticed after the quorum's fetch timeout,
# elected, and the new controller gave every broker a whole session before it fenced the dead
# one, 3.7-5.1 s of stale books in the drill against 1.7-2.2 s for a broker that did not lead
CONTROLLER_ID_BASE = 100
CONTROLLER_HEAP_MB = 256
COMBINED = "broker,controller"


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft process: a broker (``port``, its bootstrap address), a controller
    (``controller_port``), or both in one (the single node)."""

    node_id: int
    host: str
    port: int
    controller_port: int
    roles: str = COMBINED
    # which host it runs on (1..n): a broker and its controller share one
    machine: int = 1

    @property
    def is_broker(self) -> bool:
        return self.roles != "controller"

    @property
    def is_controller(self) -> bool:
        return self.roles != "broker"


def node_host(settings: Settings, node: KafkaNode) -> NetHost | None:
    """The node's host of its own when ``kafka.node_network`` is set; None on loopback."""
    network = settings.kafka.node_network
    return NetHost(f"kafka-{node.machine}", node.host, network) if network else None


def dedicated_controllers(settings: Settings) -> bool:
    """Whether the controllers run apart from the brokers: with more than one node."""
    return len(settings.kafka.addresses()) > 1


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    """The brokers, one per bootstrap address; broker i's controller listens on
    controller_port + 2i (in the broker's process with a single node)."""
    kafka = settings.kafka
    roles = "broker" if dedicated_controllers(settings) else COMBINED
    return [
        KafkaNode(i + 1, host, port, kafka.controller_port + 2 * i, roles, i + 1)
        for i, (host, port) in enumerate(kafka.addresses())
    ]


def kafka_controllers(settings: Settings) -> list[KafkaNode]:
    """The controller quorum's voters: the controllers beside the brokers or on hosts of their
    own (``kafka.controller_hosts``: machines after the brokers'), or the single node."""
    brokers = kafka_nodes(settings)
    if not dedicated_controllers(settings):
        return brokers
    own = settings.kafka.controller_addresses()
    if own and (len(own) != len(brokers) or not settings.kafka.node_network):
        raise StackError(
            f"kafka: controller_hosts names {len(own)} host(s) for {len(brokers)} broker(s); "
            "one per broker, and hosts of their own need kafka.node_network"
        )
    return [
        KafkaNode(CONTROLLER_ID_BASE + b.node_id, own[i] if own else b.host, b.controller_port,
                  b.controller_port, "controller", len(brokers) + b.machine if own else b.machine)
        for i, b in enumerate(brokers)
    ]  # fmt: skip


def kafka_processes(settings: Settings) -> list[KafkaNode]:
    """Every process of the cluster: the brokers, then the controllers of their own."""
    brokers = kafka_nodes(settings)
    return brokers + kafka_controllers(settings) if dedicated_controllers(settings) else brokers


def security_properties(settings: Settings, node: KafkaNode | None = None) -> dict[str, object]:
    """The broker's listeners and their security: PLAINTEXT, or clients on SASL_SSL
    (SCRAM-SHA-512, client certificates required, the stack's CA) and the controller on TLS
    with the broker's own certificate both ways."""
    kafka = settings.kafka
    node = node or kafka_nodes(settings)[0]
    host, port, controller = node.host, node.port, node.controller_port
    client = "PLAINTEXT" if local_protocol(settings) == "PLAINTEXT" else "CLIENT"
    # a broker of its own reaches the controllers over CONTROLLER without listening on it; a
    # controller of its own listens on CONTROLLER alone
    listeners = [f"{client}://{host}:{port}"] if node.is_broker else []
    listeners += [f"CONTROLLER://{host}:{controller}"] if node.is_controller else []
    broker_listener: dict[str, object] = (
        {"advertised.listeners": f"{client}://{host}:{port}", "inter.broker.listener.name": client}
        if node.is_broker
        else {}
    )
    if client == "PLAINTEXT":
        return {
            "listeners": ",".join(listeners),
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            **broker_listener,
        }
    directory = secrets_dir(settings)
    store_password = read_secret(str(directory / "stores.password"))
    broker_password = read_secret(str(directory / "kafka-broker.password"))
    if not store_password or not broker_password:
        raise StackError(f"kafka: the broker's secrets are missing from {directory}")
    mechanism = kafka.sasl_mechanism
    scram: dict[str, object] = (
        {
            "sasl.enabled.mechanisms": mechanism,
            "sasl.mechanism.inter.broker.protocol": mechanism,
            f"listener.name.client.{mechanism.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{BROKER_USER}" password="{broker_password}";'
            ),
            # A SASL_SSL listener ignores the broker-wide ssl.client.auth (KIP-684)
            "listener.name.client.ssl.client.auth": "required",
        }
        if node.is_broker
        else {}
    )
    return {
        "listeners": ",".join(listeners),
        "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SSL",
        "controller.listener.names": "CONTROLLER",
        **broker_listener,
        **scram,
        # every connection presents a certificate of the stack's CA, then (clients) SCRAM
        "ssl.client.auth": "required",
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(directory / "broker.p12"),
        "ssl.keystore.password": store_password,
        "ssl.key.password": store_password,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": str(directory / "truststore.p12"),
        "ssl.truststore.password": store_password,
        "ssl.endpoint.identification.algorithm": "https",
        # the broker's own identities (SCRAM on the client listener, its certificate on the
        # controller's); they matter once an authorizer is configured
        "super.users": f"User:{BROKER_USER};User:CN={BROKER_CN},O=tickflow",
    }


BROKER_HEARTBEAT_MS = 500
BROKER_SESSION_TIMEOUT_MS = 2000
REPLICA_LAG_TIME_MAX_MS = 4000
QUORUM_TIMEOUT_MS = 1000
QUORUM_ELECTION_TIMEOUT_MS = 500
NODE_CONNECT_TIMEOUT_MS = 500
CONTROLLER_REQUEST_TIMEOUT_MS = 2500


def render_server_properties(
    settings: Settings, data_dir: Path, node: KafkaNode | None = None
) -> str:
    """A node's server.properties: a broker, a controller or both. A controller of its own
    gets the topic defaults too: it creates the topics and keeps their in-sync replicas."""
    kafka = settings.kafka
    nodes = kafka_nodes(settings)
    node = node or nodes[0]
    # one node: every internal topic has a single replica; a cluster: as many as the topics
    replicas = min(len(nodes), max(kafka.replication_factor, 1))
    in_sync = min(kafka.min_insync_replicas, replicas)
    props = {
        "process.roles": node.roles,
        "node.id": node.node_id,
        "controller.quorum.voters": ",".join(
            f"{n.node_id}@{n.host}:{n.controller_port}" for n in kafka_controllers(settings)
        ),
        **security_properties(settings, node),
        "log.dirs": str(data_dir),
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        "min.insync.replicas": in_sync,
        "default.replication.factor": replicas,
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
    if len(nodes) > 1:
        # a broker silent for 2 s is fenced and its partitions led by another: the default (9 s)
        # was the whole stall of a broker loss in the HA drill (bench/ha_drill.py). At 1.5 s a
        # controller newly elected fenced live brokers, again and again, before they had found
        # it (4.4 s of stale books on a controller's loss)
        props["broker.heartbeat.interval.ms"] = BROKER_HEARTBEAT_MS
        props["broker.session.timeout.ms"] = BROKER_SESSION_TIMEOUT_MS
        # a leader's high watermark also waits for a follower still counted as caught up
        # (within this long of its last catch-up) as soon as it is unfenced: with Kafka's 30 s,
        # a node back from a 15 s cut held acks=all writes ~10 s more until it caught up
        props["replica.lag.time.max.ms"] = REPLICA_LAG_TIME_MAX_MS
        # a controller quorum's leader cut off the network (with the broker on its host) is
        # replaced after 1 s without an answer, not 2 s, and the brokers, which follow the
        # quorum's log, look for the new leader after 1 s too: until they find it they can
        # neither heartbeat nor hand on an unregistration
        props["controller.quorum.fetch.timeout.ms"] = QUORUM_TIMEOUT_MS
        props["controller.quorum.request.timeout.ms"] = QUORUM_TIMEOUT_MS
        # the two left both stand at once, and a split vote waited 1-2 s before they stood
        # again
        props["controller.quorum.election.timeout.ms"] = QUORUM_ELECTION_TIMEOUT_MS
        # and a broker hands on what it forwards (a lost broker's unregistration) to the new
        # leader soon after: its connection to the lost one is given up after 0.5 s, not 10 s,
        # and a request to it after 2.5 s, not 30 s (the unregistration came 12 s after the cut)
        props["socket.connection.setup.timeout.ms"] = NODE_CONNECT_TIMEOUT_MS
        props["socket.connection.setup.timeout.max.ms"] = NODE_CONNECT_TIMEOUT_MS
        props["controller.socket.timeout.ms"] = CONTROLLER_REQUEST_TIMEOUT_MS
    lines = ["# rendered by `tickflow stack up` from config/tickflow.yaml; edits are overwritten"]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def scram_credential(mechanism: str, name: str, password: str) -> str:
    """StorageTool's ``--add-scram`` argument with a salted password, not the password: the
    command line is visible to every local user while it runs."""
    digest = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}[mechanism]
    salt = random_secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, SCRAM_ITERATIONS)
    return (
        f"{mechanism}=[name={name},iterations={SCRAM_ITERATIONS},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )


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


class Kafka(Cluster[KafkaNode]):
    """Every KRaft process, broker or controller of its own, is a node of the cluster; a
    node lost in a round of the supervisor is started after ``kafka.replacement_delay_ms``."""

    name = "kafka"

    @property
    def nodes(self) -> list[KafkaNode]:
        return kafka_nodes(self.settings)

    @property
    def processes(self) -> list[KafkaNode]:
        return kafka_processes(self.settings)

    @property
    def members(self) -> list[KafkaNode]:
        return self.processes

    def node_home(self, node: KafkaNode) -> Path:
        """Broker 1 keeps the single node's layout, the others live beside it, and each
        controller of its own in its broker's home."""
        home = self.home if node.machine == 1 else self.home / f"node-{node.machine}"
        return home if node.is_broker else home / "controller"

    def node_data_dir(self, node: KafkaNode) -> Path:
        return self.node_home(node) / "data"

    @property
    def data_dir(self) -> Path:
        return self.node_data_dir(self.nodes[0])

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def node_log_dir(self, node: KafkaNode) -> Path:
        return self.node_home(node) / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_file(self) -> Path:
        return self.log_dir / "kafka.out"

    def log_files(self) -> list[Path]:
        logs = [self.node_log_dir(node) for node in self.processes]
        return [path for d in logs for path in (d / "server.log", d / "kafka.out")]

    def pid_files(self) -> list[Path]:
        return [self.node_pid_file(n) for n in self.processes]

    def node_pid_file(self, node: KafkaNode) -> Path:
        return self.node_home(node) / "kafka.pid"

    def ports(self) -> dict[str, int]:
        nodes = self.nodes
        if len(nodes) == 1:
            return {"broker": nodes[0].port, "controller": nodes[0].controller_port}
        ports: dict[str, int] = {}
        for n in nodes:
            ports[f"broker-{n.node_id}"] = n.port
            ports[f"controller-{n.node_id}"] = n.controller_port
        return ports

    def install(self) -> None:
        ensure_packages(JAVA_PACKAGES)
        kafka_jars_dir(self.settings)

    def host_of(self, label: str) -> str:
        node_id = int(label.rsplit("-", 1)[1]) if "-" in label else 1
        if label.startswith("controller-"):  # broker N's controller, wherever it runs
            node_id += CONTROLLER_ID_BASE
            return next(n.host for n in kafka_controllers(self.settings) if n.node_id == node_id)
        return next(n.host for n in self.nodes if n.node_id == node_id)

    def configure(self) -> None:
        self._refuse_combined_era_cluster()
        for node in self.processes:
            self._configure_node(node)

    def _configure_node(self, node: KafkaNode) -> None:
        home, data_dir = self.node_home(node), self.node_data_dir(node)
        self.node_log_dir(node).mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        properties = home / "server.properties"
        # it holds the broker's store and SCRAM passwords: the owner's alone
        write_private(properties, render_server_properties(self.settings, data_dir, node))
        (home / "log4j2.properties").write_text(render_log4j2(self.node_log_dir(node)))
        if not (data_dir / "meta.properties").exists():
            self._format_storage(node)
        elif local_protocol(self.settings) == "SASL_SSL" and not self.scram_formatted():
            raise StackError(
                f"kafka: {data_dir} was formatted by an earlier release, without SCRAM "
                "users, so no client could log in to it. Start it afresh (its topics are "
                f"lost): `tickflow stack down kafka && rm -rf {data_dir}`, then "
                "`tickflow stack up`; or keep it open with "
                "TICKFLOW__KAFKA__SECURITY_PROTOCOL=PLAINTEXT (docs/security.md)"
            )

    def _refuse_combined_era_cluster(self) -> None:
        """Controllers of their own cannot join a cluster whose metadata other controllers kept
        (the brokers themselves in an earlier release's HA layout, or controllers beside the
        brokers before ``kafka.controller_hosts`` moved them): its quorum's history is theirs."""
        if not dedicated_controllers(self.settings):
            return

        def formatted(nodes: list[KafkaNode]) -> bool:
            return any((self.node_data_dir(n) / "meta.properties").exists() for n in nodes)

        if formatted(self.nodes) and not formatted(kafka_controllers(self.settings)):
            raise StackError(
                f"kafka: {self.data_dir} holds a cluster whose controllers ran elsewhere (in "
                "the brokers, an earlier release; or beside them, before kafka.controller_hosts "
                "moved them), and these controllers would start a new one. Start it afresh "
                f"(its topics are lost): `tickflow stack down kafka && rm -rf {self.home}`, then "
                "`tickflow stack up`"
            )

    def scram_formatted(self) -> bool:
        return (self.home / SCRAM_MARKER).exists()

    def _scram_arguments(self) -> list[str]:
        kafka = self.settings.kafka
        if local_protocol(self.settings) != "SASL_SSL":
            return []
        directory = secrets_dir(self.settings)
        users = {
            BROKER_USER: read_secret(str(directory / "kafka-broker.password")),
            kafka.sasl_username: kafka.sasl_password,
        }
        if not all(users.values()):
            raise ConfigError(f"kafka: SCRAM passwords missing from {directory}")
        return [
            f"--add-scram={scram_credential(kafka.sasl_mechanism, name, password)}"
            for name, password in users.items()
        ]

    def _format_storage(self, node: KafkaNode) -> None:
        """KRaft needs its log directory formatted with a cluster id once, before first start;
        with SASL the SCRAM users are written into its first metadata then (every node the
        same: whichever controller leads first writes them)."""
        id_file = self.home / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        scram = self._scram_arguments()
        home = self.node_home(node)
        argv = self._java(
            node,
            # one argument: an id that starts with "-" would otherwise read as an option
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
            "--config", str(home / "server.properties"), "--ignore-formatted", *scram,
        )  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            raise StackError(f"kafka: StorageTool format failed:\n{done.stdout}{done.stderr}")
        if scram:
            names = [BROKER_USER, self.settings.kafka.sasl_username]
            (self.home / SCRAM_MARKER).write_text("\n".join(names) + "\n")

    def _java(self, node: KafkaNode, main: str, *args: str) -> list[str]:
        jars = kafka_jars_dir(self.settings)  # cheap once resolved: a marker check
        # a controller of its own holds the cluster's metadata alone: a few MB here
        heap_mb = self.settings.kafka.heap_mb if node.is_broker else CONTROLLER_HEAP_MB
        log4j2 = self.node_home(node) / "log4j2.properties"
        return java_command(jars, log4j2, heap_mb, main, *args)

    def node_pids(self, node: KafkaNode) -> list[int]:
        """The live processes of ``node`` (a stale pid reused by another process is not one)."""
        pids = read_pids(self.node_pid_file(node))
        return [pid for pid in pids if pid_alive(pid) and process_belongs_to(pid, self.home)]

    def node_running(self, node: KafkaNode) -> bool:
        return bool(self.node_pids(node))

    def restart_hold(self) -> RestartHold | None:
        """A node lost while others run: they take its work over (lead its partitions) before
        it starts again; none left: at once."""
        if not self.pids():
            return None
        delay_s = self.settings.kafka.replacement_delay_ms / 1000
        return RestartHold("a Kafka node", delay_s, "once the others have taken its work over")

    def launch_node(self, node: KafkaNode) -> None:
        home = self.node_home(node)
        argv = self._java(node, "kafka.Kafka", str(home / "server.properties"))
        host = node_host(self.settings, node)
        if host is not None:
            # made here, where the node starts (a host left cut off by a drill is joined again)
            netns.ensure(host)
            argv = host.argv(argv)
        pid = spawn_daemon(argv, self.node_log_dir(node) / "kafka.out", cwd=home)
        self.node_pid_file(node).write_text(f"{pid}\n")

    def stop(self) -> list[int]:
        pids = super().stop()
        hosts = [h for h in (node_host(self.settings, n) for n in self.processes) if h is not None]
        for host in dict.fromkeys(hosts):
            netns.remove(host)
        if hosts:
            netns.remove_bridge_if_unused()
        return pids

    def nodes_answer(self, nodes: list[KafkaNode]) -> bool:
        """Whether each of ``nodes`` listens, and each broker among them is registered."""
        if not all(port_open(n.host, n.controller_port) for n in nodes if n.is_controller):
            return False
        brokers = [n for n in nodes if n.is_broker]
        if not all(port_open(n.host, n.port) for n in brokers):
            return False
        if not brokers:
            return True
        from confluent_kafka.admin import AdminClient

        from tickflow.kafka_security import client_config

        kafka = self.settings.kafka
        admin = AdminClient(client_config(kafka, **{"client.id": "tickflow-stack-health"}))
        return {n.node_id for n in brokers} <= set(admin.list_topics(timeout=5).brokers)


def partition_leader(settings: Settings, topic: str, partition: int = 0) -> int:
    """The node id that leads a partition now (the HA profile's drills kill it)."""
    from confluent_kafka.admin import AdminClient

    from tickflow.kafka_security import client_config

    metadata = AdminClient(client_config(settings.kafka)).list_topics(topic, timeout=10)
    return int(metadata.topics[topic].partitions[partition].leader)


def node_net_host(settings: Settings, node_id: int) -> NetHost:
    """The host of its own that node ``node_id`` runs on (to cut it off the network)."""
    node = next(n for n in kafka_nodes(settings) if n.node_id == node_id)
    host = node_host(settings, node)
    if host is None:
        raise StackError("kafka: the nodes run on loopback (kafka.node_network is not set), "
                         "which cannot be cut off; use config/netns.yaml")  # fmt: skip
    return host


def active_controller(settings: Settings) -> int:
    """The node id of the controller that leads the quorum now, as the voters last recorded it
    (each writes the leader it knows to its quorum-state file when that changes)."""
    kafka = Kafka(settings)
    known: list[tuple[int, int]] = []
    for node in kafka_controllers(settings):
        state = kafka.node_data_dir(node) / "__cluster_metadata-0" / "quorum-state"
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(state.read_text())
            if int(record.get("leaderId", -1)) >= 0:
                known.append((int(record["leaderEpoch"]), int(record["leaderId"])))
    if not known:
        raise StackError("kafka: no controller has recorded a quorum leader")
    return max(known)[1]


def kill_controller(settings: Settings) -> tuple[int, int]:
    """SIGKILL the active controller of a quorum of its own (the HA profile); its id and pid."""
    if not dedicated_controllers(settings):
        raise StackError("kafka: the controller runs inside the single broker; kill the node")
    leader = active_controller(settings)
    node = next(n for n in kafka_controllers(settings) if n.node_id == leader)
    return leader, _kill(Kafka(settings), node, f"controller {leader}")


def kill_node(settings: Settings, node_id: int) -> int:
    """SIGKILL one Kafka broker of this stack (the node, with a single one), as a crash would;
    its pid."""
    kafka = Kafka(settings)
    node = next(n for n in kafka.nodes if n.node_id == node_id)
    return _kill(kafka, node, f"node {node_id}")


def _kill(kafka: Kafka, node: KafkaNode, name: str) -> int:
    """SIGKILL the process(es) of ``node``; the first pid."""
    pids = kafka.node_pids(node)
    if not pids:
        raise StackError(f"kafka: {name} is not running")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids[0]


# how long a connection to a broker may take before it counts as refused: the kernel
# accepts it (the JVM plays no part), so only a host off the network takes longer
BROKER_CONNECT_TIMEOUT_S = 0.1


def fence_node(settings: Settings, node_id: int) -> list[int]:
    """Fence broker ``node_id``, cut off the network: SIGKILL its processes and those of the
    controller on its host (which may lead the quorum: a follower elects a new one once its
    fetch timeout passes), then reset every connection this host's clients hold to it, so
    their requests in flight fail now and are retried at the new leaders instead of waiting out
    their timeout. The pids killed."""
    kafka = Kafka(settings)
    broker = next(n for n in kafka.nodes if n.node_id == node_id)
    on_host = [c for c in kafka_controllers(settings) if c.machine == broker.machine]
    killed = []
    for node in [broker, *(c for c in on_host if c.node_id != broker.node_id)]:
        for pid in kafka.node_pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    destroy_sockets("dst", f"{broker.host}:{broker.port}")
    return killed


UNREGISTRAR_SOURCE = Path(__file__).parent / "java" / "BrokerUnregistrar.java"
UNREGISTRAR_HEAP_MB = 64


def java_properties_text(props: dict[str, str]) -> str:
    """``props`` as a Java properties file (a backslash escapes; passwords may hold one)."""
    return "".join(f"{key}={value.replace(chr(92), chr(92) * 2)}\n" for key, value in props.items())


class BrokerUnregistrar:
    """Unregisters a lost broker (the HA profile's supervisor, as soon as the broker's process
    is gone), so the controllers move its partitions at once instead of after its session
    timeout (2 s, most of a broker kill's stale books); it registers again when started. One
    warm JVM (``stack/java/BrokerUnregistrar.java``) that takes a broker id per line."""

    def __init__(self, settings: Settings) -> None:
        from tickflow.kafka_security import java_properties, java_timeouts

        self.settings = settings
        self.home = Kafka(settings).home / "unregistrar"
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        properties = self.home / "client.properties"
        props = {
            "bootstrap.servers": settings.kafka.bootstrap,
            **java_properties(settings.kafka, shaded=False),
            **java_timeouts(settings.kafka),
        }
        # it holds the client's SCRAM and store passwords: the owner's alone
        write_private(properties, java_properties_text(props))
        log4j2 = self.home / "log4j2.properties"
        log4j2.write_text(render_log4j2(self.home / "logs"))
        command = java_command(
            kafka_jars_dir(settings), log4j2, UNREGISTRAR_HEAP_MB, str(UNREGISTRAR_SOURCE),
            str(properties),
        )  # fmt: skip
        with open(self.home / "logs" / "unregistrar.out", "ab") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().strip()
        if ready != "ready":
            self.close()
            raise StackError(f"kafka: the broker unregistrar did not start ({ready or 'exited'}); "
                             f"see {self.home / 'logs'}")  # fmt: skip

    def unregister(self, node_id: int) -> str:
        """Unregister broker ``node_id``: ``"ok <id>"``, or ``"error <id> <why>"``."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{node_id}\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip() or f"error {node_id} unregistrar exited"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def lost_brokers(kafka: Kafka, alive_before: dict[int, bool]) -> list[int]:
    """The brokers whose process was alive at the last look and is gone now (a broker of the
    stack's, its controller apart); updates ``alive_before``."""
    lost = []
    for node in kafka.nodes:
        alive = kafka.node_running(node)
        if alive_before.get(node.node_id) and not alive:
            lost.append(node.node_id)
        alive_before[node.node_id] = alive
    return lost
