"""ZooKeeper for Flink's high-availability services (the HA profile, config/ha.yaml): it holds
which JobManager leads and where the running jobs and their latest checkpoints are, so a
standby JobManager takes them over when the leader dies.

The server is the ZooKeeper that Flink's own distribution carries (shaded into flink-dist, the
version Flink's HA client is built against), run standalone from pyflink's ``lib/``: nothing
more to download."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from stack.flink import flink_home
from stack.jars import JAVA_PACKAGES
from stack.services import LOOPBACK, Component
from stack.system import ensure_packages, spawn_daemon
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


def render_zoo_cfg(settings: Settings, data_dir: Path) -> str:
    session_ms = settings.flink.ha_session_timeout_ms
    return (
        f"tickTime={TICK_MS}\n"
        f"dataDir={data_dir}\n"
        f"clientPort={settings.flink.ha_zookeeper_port}\n"
        f"clientPortAddress={LOOPBACK}\n"
        f"minSessionTimeout={2 * TICK_MS}\n"
        f"maxSessionTimeout={max(20 * TICK_MS, 2 * session_ms)}\n"
        "admin.enableServer=false\n"
        "4lw.commands.whitelist=ruok,srvr,mntr\n"
        # old snapshots and logs go: the data is only leader and job pointers
        "autopurge.snapRetainCount=3\n"
        "autopurge.purgeInterval=1\n"
    )


def ruok(port: int, timeout: float = 2.0) -> bool:
    """ZooKeeper's own health word: it answers ``imok`` when it serves requests."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
        conn.sendall(b"ruok")
        return conn.recv(8) == b"imok"


class ZooKeeper(Component):
    name = "zookeeper"
    start_timeout_s = 60.0

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.flink.ha_zookeeper_port > 0

    def ports(self) -> dict[str, int]:
        return {"client": self.settings.flink.ha_zookeeper_port}

    @property
    def log_file(self) -> Path:
        return self.home / "zookeeper.log"

    def log_files(self) -> list[Path]:
        return [self.log_file, self.home / "zookeeper.out"]

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    def install(self) -> None:
        ensure_packages(JAVA_PACKAGES)

    def configure(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        if self.lib_dir.exists():
            shutil.rmtree(self.lib_dir)  # symlinks only
        self.lib_dir.mkdir()
        for pattern in CLASSPATH_GLOBS:
            for jar in sorted((flink_home() / "lib").glob(pattern)):
                (self.lib_dir / jar.name).symlink_to(jar)
        (self.home / "zoo.cfg").write_text(render_zoo_cfg(self.settings, self.home / "data"))
        (self.home / "log4j2.properties").write_text(LOG4J2.format(log=self.log_file))

    def launch(self) -> None:
        argv = [
            "java",
            f"-Xmx{HEAP_MB}m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
            MAIN,
            str(self.home / "zoo.cfg"),
        ]
        pid = spawn_daemon(argv, self.home / "zookeeper.out", cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        return ruok(self.settings.flink.ha_zookeeper_port)
