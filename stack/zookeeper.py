"""ZooKeeper for Flink's high-availability services (the HA profile, config/ha.yaml): it holds
which JobManager leads and where the running jobs and their latest checkpoints are, so a
standby JobManager takes them over when the leader dies.

The server is the ZooKeeper that Flink's own distribution carries (shaded into flink-dist, the
version Flink's HA client is built against), run from pyflink's ``lib/``: nothing more to
download. One node runs standalone; with ``flink.ha_zookeeper_nodes`` = 3 (the HA profile) the
nodes form an ensemble on loopback, which serves while two of three are up: the loss of one
node (the leader included) does not revoke the JobManager's leadership. A single node's loss
does, and in one drill of two its restart left both JobManagers leading.

Node *i* (from 0) listens for clients on ``ha_zookeeper_port + i``, for its peers on
``+ 10 + i`` and for leader election on ``+ 20 + i`` (2181-2183, 2191-2193, 2201-2203)."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from stack.flink import flink_home
from stack.jars import JAVA_PACKAGES
from stack.services import LOOPBACK, Cluster
from stack.system import ensure_packages, read_pids, spawn_daemon
from tickflow.config import Settings

MAIN = "org.apache.flink.shaded.zookeeper3.org.apache.zookeeper.server.quorum.QuorumPeerMain"
HEAP_MB = 128
# a tick of 500 ms lets Flink's session timeout go down to 1 s (two ticks)
TICK_MS = 500
CLASSPATH_GLOBS = ("flink-dist-*.jar", "log4j-*.jar")

LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %-5p %c{{1}} - %m%n
"""


PEER_PORT_OFFSET = 10
ELECTION_PORT_OFFSET = 20
# ticks a follower may take to connect and sync to a new leader, and to stay in sync after
INIT_LIMIT_TICKS = 10
SYNC_LIMIT_TICKS = 4


@dataclass(frozen=True)
class ZooKeeperNode:
    node_id: int  # ZooKeeper's myid, from 1
    client_port: int
    peer_port: int
    election_port: int


def zookeeper_nodes(settings: Settings) -> list[ZooKeeperNode]:
    return [
        ZooKeeperNode(i + 1, port, port + PEER_PORT_OFFSET, port + ELECTION_PORT_OFFSET)
        for i, port in enumerate(settings.flink.zookeeper_client_ports())
    ]


def render_zoo_cfg(settings: Settings, data_dir: Path, node: ZooKeeperNode | None = None) -> str:
    nodes = zookeeper_nodes(settings)
    node = node or nodes[0]
    session_ms = settings.flink.ha_session_timeout_ms
    conf = (
        f"tickTime={TICK_MS}\n"
        f"dataDir={data_dir}\n"
        f"clientPort={node.client_port}\n"
        f"clientPortAddress={LOOPBACK}\n"
        f"minSessionTimeout={2 * TICK_MS}\n"
        f"maxSessionTimeout={max(20 * TICK_MS, 2 * session_ms)}\n"
        "admin.enableServer=false\n"
        "4lw.commands.whitelist=ruok,srvr,mntr\n"
        # old snapshots and logs go: the data is only leader and job pointers
        "autopurge.snapRetainCount=3\n"
        "autopurge.purgeInterval=1\n"
    )
    if len(nodes) > 1:
        conf += f"initLimit={INIT_LIMIT_TICKS}\nsyncLimit={SYNC_LIMIT_TICKS}\n"
        conf += "".join(
            f"server.{n.node_id}={LOOPBACK}:{n.peer_port}:{n.election_port}\n" for n in nodes
        )
    return conf


def four_letter_word(port: int, word: bytes, timeout: float = 2.0) -> str:
    """ZooKeeper's own admin words (``ruok``, ``srvr``): the whole answer."""
    answer = b""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
        conn.sendall(word)
        while chunk := conn.recv(4096):
            answer += chunk
    return answer.decode(errors="replace")


def ruok(port: int, timeout: float = 2.0) -> bool:
    """ZooKeeper's own health word: it answers ``imok`` when it runs (a node of an ensemble
    also when it has no quorum: see ``serving_mode``)."""
    return four_letter_word(port, b"ruok", timeout) == "imok"


def serving_mode(port: int) -> str | None:
    """``standalone``, ``leader`` or ``follower`` while the node serves requests; None when it
    does not (down, or an ensemble node without a quorum)."""
    try:
        answer = four_letter_word(port, b"srvr")
    except OSError:
        return None
    for line in answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


class ZooKeeper(Cluster[ZooKeeperNode]):
    name = "zookeeper"
    start_timeout_s = 60.0

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.flink.ha_zookeeper_port > 0

    @property
    def nodes(self) -> list[ZooKeeperNode]:
        return zookeeper_nodes(self.settings)

    @property
    def members(self) -> list[ZooKeeperNode]:
        return self.nodes

    def node_home(self, node: ZooKeeperNode) -> Path:
        """Node 1 keeps the single node's layout; the others live beside it."""
        return self.home if node.node_id == 1 else self.home / f"node-{node.node_id}"

    def node_pid_file(self, node: ZooKeeperNode) -> Path:
        return self.node_home(node) / "zookeeper.pid"

    def pid_files(self) -> list[Path]:
        return [self.node_pid_file(n) for n in self.nodes]

    def ports(self) -> dict[str, int]:
        nodes = self.nodes
        if len(nodes) == 1:
            return {"client": nodes[0].client_port}
        ports: dict[str, int] = {}
        for n in nodes:
            ports[f"client-{n.node_id}"] = n.client_port
            ports[f"peer-{n.node_id}"] = n.peer_port
            ports[f"election-{n.node_id}"] = n.election_port
        return ports

    @property
    def log_file(self) -> Path:
        return self.home / "zookeeper.log"

    def log_files(self) -> list[Path]:
        homes = [self.node_home(n) for n in self.nodes]
        return [path for h in homes for path in (h / "zookeeper.log", h / "zookeeper.out")]

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    def install(self) -> None:
        ensure_packages(JAVA_PACKAGES)

    def configure(self) -> None:
        if self.lib_dir.exists():
            shutil.rmtree(self.lib_dir)  # symlinks only
        self.lib_dir.mkdir(parents=True)
        for pattern in CLASSPATH_GLOBS:
            for jar in sorted((flink_home() / "lib").glob(pattern)):
                (self.lib_dir / jar.name).symlink_to(jar)
        for node in self.nodes:
            home = self.node_home(node)
            data = home / "data"
            data.mkdir(parents=True, exist_ok=True)
            (data / "myid").write_text(f"{node.node_id}\n")
            (home / "zoo.cfg").write_text(render_zoo_cfg(self.settings, data, node))
            (home / "log4j2.properties").write_text(LOG4J2.format(log=home / "zookeeper.log"))

    def launch_node(self, node: ZooKeeperNode) -> None:
        home = self.node_home(node)
        argv = [
            "java",
            f"-Xmx{HEAP_MB}m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
            MAIN,
            str(home / "zoo.cfg"),
        ]
        pid = spawn_daemon(argv, home / "zookeeper.out", cwd=home)
        self.node_pid_file(node).write_text(f"{pid}\n")

    def node_running(self, node: ZooKeeperNode) -> bool:
        return self.node_pid(node) is not None

    def node_pid(self, node: ZooKeeperNode) -> int | None:
        pids = [p for p in read_pids(self.node_pid_file(node)) if p in self.pids()]
        return pids[0] if pids else None

    def leader(self) -> ZooKeeperNode | None:
        """The node that leads the ensemble now (a single node: that one)."""
        for node in self.nodes:
            if serving_mode(node.client_port) in ("leader", "standalone"):
                return node
        return None

    def nodes_answer(self, nodes: list[ZooKeeperNode]) -> bool:
        """Each of ``nodes`` serves requests (an ensemble node: within a quorum)."""
        return all(serving_mode(n.client_port) is not None for n in nodes)
