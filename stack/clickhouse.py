"""ClickHouse from the Debian package (18.16 on Debian 12), with a private copy of the
packaged config rewritten to keep data, logs and every listening socket local to the stack."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stack.services import LOOPBACK, Component
from stack.system import StackError, disable_system_services, ensure_packages, spawn_daemon
from stack.zookeeper import ZooKeeper
from tickflow.config import ClickHouseConfig, Settings

PACKAGED_CONFIG_DIR = Path("/etc/clickhouse-server")
SERVER_BINARY = "/usr/sbin/clickhouse-server"
CLICKHOUSE_PACKAGES = {
    SERVER_BINARY: ["clickhouse-server", "clickhouse-client"],
    "clickhouse-client": ["clickhouse-client"],
}
# elements that open extra listening sockets (some only exist in newer releases)
EXTRA_LISTENERS = (
    "https_port",
    "tcp_port_secure",
    "interserver_http_port",
    "interserver_https_port",
    "interserver_http_host",
    "mysql_port",
    "postgresql_port",
    "grpc_port",
    "tcp_with_proxy_port",
    "prometheus",
    "listen_host",
)


@dataclass(frozen=True)
class ClickHousePaths:
    """Where one private ClickHouse instance keeps its files."""

    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def tmp(self) -> Path:
        return self.home / "data" / "tmp"

    @property
    def user_files(self) -> Path:
        return self.home / "data" / "user_files"

    @property
    def format_schemas(self) -> Path:
        return self.home / "data" / "format_schemas"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def config(self) -> Path:
        return self.home / "config.xml"

    @property
    def users(self) -> Path:
        return self.home / "users.xml"


def _set(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = parent.find(tag)
    if element is None:
        element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _dir(path: Path) -> str:
    return f"{path}/"  # ClickHouse wants directory paths with a trailing slash


def replica_name(server: int) -> str:
    """The ``{replica}`` macro of server ``server`` (0: the primary), its name in ZooKeeper."""
    return f"r{server + 1}"


def interserver_port(settings: Settings, server: int) -> int:
    """Where server ``server`` serves its parts to the other (both on this host)."""
    ch = settings.clickhouse
    return (ch.interserver_port, ch.replica_interserver_port)[server]


def _replication(root: ET.Element, settings: Settings, server: int) -> None:
    """What a server of a replicated pair needs: the ZooKeeper ensemble, its replica name, and
    the interserver port the other server fetches parts from (on loopback)."""
    zookeeper = ET.SubElement(root, "zookeeper")
    for port in settings.flink.zookeeper_client_ports():
        node = ET.SubElement(zookeeper, "node")
        _set(node, "host", LOOPBACK)
        _set(node, "port", str(port))
    _set(zookeeper, "session_timeout_ms", str(settings.flink.ha_session_timeout_ms))
    macros = ET.SubElement(root, "macros")
    _set(macros, "replica", replica_name(server))
    _set(root, "interserver_http_port", str(interserver_port(settings, server)))
    _set(root, "interserver_http_host", LOOPBACK)


def rewrite_server_config(
    xml_text: str, settings: Settings, paths: ClickHousePaths, server: int = 0
) -> str:
    """The packaged config.xml with our paths and the ports of server ``server`` (0: the
    primary, 1: the HA replica), listening on loopback only."""
    root = ET.fromstring(xml_text)
    for tag in EXTRA_LISTENERS:
        for element in root.findall(tag):
            root.remove(element)
    ports = settings.clickhouse.servers()[server]
    _set(root, "listen_host", LOOPBACK)
    _set(root, "tcp_port", str(ports.port))
    _set(root, "http_port", str(ports.http_port))
    _set(root, "path", _dir(paths.data))
    _set(root, "tmp_path", _dir(paths.tmp))
    _set(root, "user_files_path", _dir(paths.user_files))
    _set(root, "format_schema_path", _dir(paths.format_schemas))
    _set(root, "users_config", str(paths.users))
    # one timezone for DateTime rendering whatever the machine's local zone is
    _set(root, "timezone", "UTC")
    logger = root.find("logger")
    if logger is None:
        logger = ET.SubElement(root, "logger")
    _set(logger, "level", "information")
    _set(logger, "log", str(paths.logs / "clickhouse-server.log"))
    _set(logger, "errorlog", str(paths.logs / "clickhouse-server.err.log"))
    _set(logger, "size", "100M")
    _set(logger, "count", "3")
    # substitutions from /etc/metrika.xml do not exist here: drop the references, and the
    # elements that are nothing but a reference (zookeeper, macros)
    for parent in list(root.iter()):
        for element in list(parent):
            if "incl" not in element.attrib:
                continue
            if len(element) or (element.text or "").strip():
                del element.attrib["incl"]
            else:
                parent.remove(element)
    # ON CLUSTER DDL needs a cluster; the DDL worker would only log errors (each server of a
    # replicated pair gets its DDL from jobs.sinks.clickhouse.ensure_schema instead)
    for element in root.findall("distributed_ddl"):
        root.remove(element)
    if settings.clickhouse.replicated:
        _replication(root, settings, server)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def rewrite_users_config(xml_text: str, user: str, password: str) -> str:
    """The packaged users.xml with `user` reachable from loopback only, its password (from
    settings) stored as its SHA-256 (``password_sha256_hex``), never as text; every other
    user's password is a random one nobody knows (the packaged ones have none)."""
    root = ET.fromstring(xml_text)
    users = root.find("users")
    if users is None:
        users = ET.SubElement(root, "users")
    for entry in users:
        networks = entry.find("networks")
        if networks is not None:
            entry.remove(networks)
        networks = ET.SubElement(entry, "networks")
        for address in (LOOPBACK, "::1"):
            ET.SubElement(networks, "ip").text = address
    account = users.find(user)
    if account is None:
        account = ET.SubElement(users, user)
        networks = ET.SubElement(account, "networks")
        for address in (LOOPBACK, "::1"):
            ET.SubElement(networks, "ip").text = address
    for entry in users:
        for element in entry.findall("password") + entry.findall("password_sha256_hex"):
            entry.remove(element)
        if entry is not account:
            unknown = hashlib.sha256(os.urandom(32)).hexdigest()
            _set(entry, "password_sha256_hex", hashlib.sha256(unknown.encode()).hexdigest())
    if password:
        _set(account, "password_sha256_hex", hashlib.sha256(password.encode()).hexdigest())
    else:
        _set(account, "password", "")
    _set(account, "profile", "default")
    _set(account, "quota", "default")
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


class ClickHouse(Component):
    name = "clickhouse"
    start_timeout_s = 120.0
    server: ClassVar[int] = 0  # index in ClickHouseConfig.servers()

    @property
    def config(self) -> ClickHouseConfig:
        return self.settings.clickhouse.servers()[self.server]

    @property
    def paths(self) -> ClickHousePaths:
        return ClickHousePaths(self.home)

    @property
    def log_file(self) -> Path:
        return self.paths.logs / "clickhouse-server.err.log"

    def log_files(self) -> list[Path]:
        logs = self.paths.logs
        return [self.log_file, logs / "clickhouse-server.log", self.home / "clickhouse.out"]

    def ports(self) -> dict[str, int]:
        ports = {"tcp": self.config.port, "http": self.config.http_port}
        if self.settings.clickhouse.replicated:
            ports["interserver"] = interserver_port(self.settings, self.server)
        return ports

    def install(self) -> None:
        if ensure_packages(CLICKHOUSE_PACKAGES):
            disable_system_services(["clickhouse-server"])

    def configure(self) -> None:
        paths = self.paths
        for directory in (paths.tmp, paths.user_files, paths.format_schemas, paths.logs):
            directory.mkdir(parents=True, exist_ok=True)
        packaged = PACKAGED_CONFIG_DIR / "config.xml"
        if not packaged.exists():
            raise StackError(f"clickhouse: {packaged} is missing; reinstall clickhouse-server")
        ch = self.settings.clickhouse
        paths.config.write_text(
            rewrite_server_config(packaged.read_text(), self.settings, paths, self.server)
        )
        users = (PACKAGED_CONFIG_DIR / "users.xml").read_text()
        paths.users.write_text(rewrite_users_config(users, ch.user, ch.password))
        for private in (paths.users, paths.config):
            private.chmod(0o600)

    def launch_after(self) -> tuple[str, ...]:
        # 18.16 loading replicated tables before ZooKeeper answers hangs in "Loading metadata"
        # for good (seen: >10 min, no socket open); with ZooKeeper up it takes seconds
        return (ZooKeeper.name,) if self.settings.clickhouse.replicated else ()

    def launch(self) -> None:
        binary = (
            SERVER_BINARY if Path(SERVER_BINARY).exists() else shutil.which("clickhouse-server")
        )
        argv = [binary or "clickhouse-server", f"--config-file={self.paths.config}"]
        pid = spawn_daemon(argv, self.home / "clickhouse.out", cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        """A query with the configured credentials (a server still running with another
        users.xml, e.g. from before its password, does not count as answering)."""
        ch = self.config
        token = base64.b64encode(f"{ch.user}:{ch.password}".encode()).decode()
        request = urllib.request.Request(
            f"http://{ch.host}:{ch.http_port}/?query=SELECT%201",
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.read().decode().strip() == "1")


class ClickHouseReplica(ClickHouse):
    """HA: the second server (``clickhouse.replica_port``), a replica of every table through
    ZooKeeper; either server takes inserts and answers queries, and fetches what it missed
    from the other when it comes back."""

    name = "clickhouse-replica"
    server = 1

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.clickhouse.replicated
