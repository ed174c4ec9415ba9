"""Rendering of the stack's configuration files: Kafka, ClickHouse, Flink (no servers)."""

from __future__ import annotations

import base64
import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from stack.clickhouse import ClickHousePaths, rewrite_server_config, rewrite_users_config
from stack.flink import flatten, render_flink_config, runtime_overrides, unflatten
from stack.kafka import (
    new_cluster_id,
    render_log4j2,
    render_server_properties,
    scram_credential,
)
from stack.topics import pipeline_topics
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The default settings with an open (PLAINTEXT) broker, as before SASL."""
    base = load_settings(environ={"TICKFLOW__KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"})
    return dataclasses.replace(base, state_dir=tmp_path / "state")


@pytest.fixture
def secured(tmp_path: Path) -> Settings:
    """The default settings (SASL_SSL) with the broker's secret files in place."""
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "stores.password").write_text("store-pw\n")
    (state / "secrets" / "kafka-broker.password").write_text("broker-pw\n")
    return dataclasses.replace(load_settings(environ={}), state_dir=state)


def parse_properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


# -- Kafka ------------------------------------------------------------------------------------


def test_server_properties_single_kraft_node_on_configured_ports(settings: Settings) -> None:
    props = parse_properties(render_server_properties(settings, Path("/data/kafka")))
    kafka = settings.kafka
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == f"1@{kafka.host}:{kafka.controller_port}"
    assert props["listeners"] == (
        f"PLAINTEXT://{kafka.host}:{kafka.port},CONTROLLER://{kafka.host}:{kafka.controller_port}"
    )
    assert props["advertised.listeners"] == f"PLAINTEXT://{kafka.host}:{kafka.port}"
    assert props["log.dirs"] == "/data/kafka"


def test_server_properties_single_broker_durability_and_test_friendliness(
    settings: Settings,
) -> None:
    props = parse_properties(render_server_properties(settings, Path("/d")))
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["transaction.max.timeout.ms"] == "900000"


def test_server_properties_follow_port_overrides(tmp_path: Path) -> None:
    environ = {
        "TICKFLOW__KAFKA__BOOTSTRAP": "127.0.0.1:19092",
        "TICKFLOW__KAFKA__CONTROLLER_PORT": "19093",
        "TICKFLOW__KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",
    }
    props = parse_properties(render_server_properties(load_settings(environ=environ), tmp_path))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"


def test_server_properties_by_default_sasl_ssl_with_client_certificates(secured: Settings) -> None:
    props = parse_properties(render_server_properties(secured, Path("/d")))
    kafka, secrets = secured.kafka, secured.state_dir / "secrets"
    assert props["listeners"] == (
        f"CLIENT://{kafka.host}:{kafka.port},CONTROLLER://{kafka.host}:{kafka.controller_port}"
    )
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert props["inter.broker.listener.name"] == "CLIENT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    # the SASL_SSL listener needs its own ssl.client.auth (the broker-wide one is ignored)
    assert props["listener.name.client.ssl.client.auth"] == "required"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["ssl.keystore.location"] == str(secrets / "broker.p12")
    assert props["ssl.truststore.location"] == str(secrets / "truststore.p12")
    assert props["ssl.keystore.password"] == "store-pw"
    assert 'username="broker" password="broker-pw"' in (
        props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    )
    assert "User:broker" in props["super.users"]


def test_server_properties_refuse_protocols_the_local_broker_does_not_run(
    secured: Settings,
) -> None:
    from stack.system import StackError

    for protocol in ("SSL", "SASL_PLAINTEXT"):
        kafka = dataclasses.replace(secured.kafka, security_protocol=protocol)
        with pytest.raises(StackError, match=protocol):
            render_server_properties(dataclasses.replace(secured, kafka=kafka), Path("/d"))


def test_scram_credential_is_salted_not_the_password() -> None:
    import hashlib
    import re

    text = scram_credential("SCRAM-SHA-512", "tickflow", "pa55word")
    assert "pa55word" not in text
    found = re.fullmatch(
        r'SCRAM-SHA-512=\[name=tickflow,iterations=(\d+),salt="([^"]+)",saltedpassword="([^"]+)"\]',
        text,
    )
    assert found is not None
    salt = base64.b64decode(found.group(2))
    salted = hashlib.pbkdf2_hmac("sha512", b"pa55word", salt, int(found.group(1)))
    assert base64.b64decode(found.group(3)) == salted


def test_redis_conf_holds_the_password_hash_only(secured: Settings) -> None:
    import hashlib

    from stack.redis_server import render_redis_conf

    with_password = dataclasses.replace(
        secured, redis=dataclasses.replace(secured.redis, password="r3dis-secret")
    )
    text = render_redis_conf(with_password)
    assert "r3dis-secret" not in text
    assert f"#{hashlib.sha256(b'r3dis-secret').hexdigest()}" in text
    without = dataclasses.replace(secured, redis=dataclasses.replace(secured.redis, password=""))
    assert "user default" not in render_redis_conf(without)


def test_cluster_id_is_base64url_of_16_bytes() -> None:
    cluster_id = new_cluster_id()
    assert len(cluster_id) == 22 and "=" not in cluster_id
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert new_cluster_id() != cluster_id


def test_log4j2_writes_server_log_into_log_dir(tmp_path: Path) -> None:
    text = render_log4j2(tmp_path)
    assert f"fileName = {tmp_path}/server.log" in text
    assert "rootLogger.appenderRef.server.ref = server" in text


def test_pipeline_topics_from_settings(settings: Settings) -> None:
    kafka = settings.kafka
    assert pipeline_topics(settings) == {
        kafka.raw_topic: kafka.raw_partitions,
        kafka.deadletter_topic: 1,
        kafka.control_topic: 1,
        # exactly-once results: one partition each, in order
        kafka.nbbo_topic: 1,
        kafka.matched_trades_topic: 1,
        kafka.bars_topic: 1,
        kafka.touches_topic: 1,
    }


# -- ClickHouse -------------------------------------------------------------------------------

PACKAGED_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>/var/log/clickhouse-server/clickhouse-server.log</log>
        <errorlog>/var/log/clickhouse-server/clickhouse-server.err.log</errorlog>
    </logger>
    <http_port>8123</http_port>
    <tcp_port>9000</tcp_port>
    <https_port>8443</https_port>
    <mysql_port>9004</mysql_port>
    <interserver_http_port>9009</interserver_http_port>
    <listen_host>::</listen_host>
    <listen_host>0.0.0.0</listen_host>
    <path>/var/lib/clickhouse/</path>
    <tmp_path>/var/lib/clickhouse/tmp/</tmp_path>
    <user_files_path>/var/lib/clickhouse/user_files/</user_files_path>
    <users_config>users.xml</users_config>
    <remote_servers incl="clickhouse_remote_servers">
        <local><shard><replica><host>localhost</host><port>9000</port></replica></shard></local>
    </remote_servers>
    <zookeeper incl="zookeeper-servers" optional="true" />
    <macros incl="macros" optional="true" />
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    <format_schema_path>/var/lib/clickhouse/format_schemas/</format_schema_path>
</yandex>
"""

PACKAGED_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>10000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks incl="networks" replace="replace"><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default /></quotas>
</yandex>
"""


def rewritten(settings: Settings, home: Path) -> ET.Element:
    return ET.fromstring(rewrite_server_config(PACKAGED_CONFIG, settings, ClickHousePaths(home)))


def test_clickhouse_listens_on_loopback_configured_ports_only(
    settings: Settings, tmp_path: Path
) -> None:
    root = rewritten(settings, tmp_path)
    assert [e.text for e in root.findall("listen_host")] == ["127.0.0.1"]
    assert root.findtext("tcp_port") == str(settings.clickhouse.port)
    assert root.findtext("http_port") == str(settings.clickhouse.http_port)
    for extra in ("https_port", "mysql_port", "interserver_http_port"):
        assert root.find(extra) is None, extra


def test_clickhouse_paths_move_into_the_state_dir(settings: Settings, tmp_path: Path) -> None:
    root = rewritten(settings, tmp_path)
    assert root.findtext("path") == f"{tmp_path}/data/"
    assert root.findtext("tmp_path") == f"{tmp_path}/data/tmp/"
    assert root.findtext("user_files_path") == f"{tmp_path}/data/user_files/"
    assert root.findtext("format_schema_path") == f"{tmp_path}/data/format_schemas/"
    assert root.findtext("users_config") == f"{tmp_path}/users.xml"
    assert root.findtext("logger/log") == f"{tmp_path}/logs/clickhouse-server.log"
    assert root.findtext("logger/errorlog") == f"{tmp_path}/logs/clickhouse-server.err.log"
    assert root.findtext("timezone") == "UTC"


def test_clickhouse_drops_metrika_includes_and_zookeeper_ddl(
    settings: Settings, tmp_path: Path
) -> None:
    root = rewritten(settings, tmp_path)
    assert all("incl" not in e.attrib for e in root.iter())
    assert root.find("zookeeper") is None and root.find("macros") is None
    assert root.find("distributed_ddl") is None
    assert root.find("remote_servers/local") is not None  # content kept, only incl dropped


def test_clickhouse_replicas_share_the_zookeeper_ensemble_each_with_its_own_ports(
    tmp_path: Path,
) -> None:
    ha = load_settings(
        environ={
            "TICKFLOW_CONFIG": "config/tickflow.yaml:config/ha.yaml",
            "TICKFLOW__KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",
        }
    )
    ch = ha.clickhouse
    assert ch.replicated
    roots = [
        ET.fromstring(rewrite_server_config(PACKAGED_CONFIG, ha, ClickHousePaths(tmp_path), i))
        for i in (0, 1)
    ]
    for root, server, interserver, name in zip(
        roots,
        ch.servers(),
        (ch.interserver_port, ch.replica_interserver_port),
        ("r1", "r2"),
        strict=True,
    ):
        assert root.findtext("tcp_port") == str(server.port)
        assert root.findtext("http_port") == str(server.http_port)
        assert root.findtext("interserver_http_port") == str(interserver)
        assert root.findtext("interserver_http_host") == "127.0.0.1"
        assert root.findtext("macros/replica") == name
        nodes = [(n.findtext("host"), int(n.findtext("port") or 0))
                 for n in root.findall("zookeeper/node")]  # fmt: skip
        assert nodes == [("127.0.0.1", p) for p in ha.flink.zookeeper_client_ports()]
    assert [s.port for s in ch.servers()] == [ch.port, ch.replica_port]
    assert not any(s.replicated for s in ch.servers())  # each a single server


def test_clickhouse_rewrite_of_the_installed_package_config(
    settings: Settings, tmp_path: Path
) -> None:
    packaged = Path("/etc/clickhouse-server/config.xml")
    if not packaged.exists():
        pytest.skip("clickhouse-server not installed")
    text = rewrite_server_config(packaged.read_text(), settings, ClickHousePaths(tmp_path))
    root = ET.fromstring(text)
    assert [e.text for e in root.findall("listen_host")] == ["127.0.0.1"]
    assert "/var/lib/clickhouse" not in text and "/var/log/" not in text


def test_users_restricted_to_loopback_with_configured_password_as_its_hash() -> None:
    import hashlib

    text = rewrite_users_config(PACKAGED_USERS, "default", "secret")
    assert "secret" not in text
    root = ET.fromstring(text)
    default = root.find("users/default")
    assert default is not None
    assert [ip.text for ip in default.findall("networks/ip")] == ["127.0.0.1", "::1"]
    assert default.find("password") is None
    assert default.findtext("password_sha256_hex") == hashlib.sha256(b"secret").hexdigest()


def test_users_other_than_ours_get_a_password_nobody_knows() -> None:
    root = ET.fromstring(rewrite_users_config(PACKAGED_USERS, "tickflow", "secret"))
    default = root.find("users/default")
    assert default is not None and default.find("password") is None
    assert len(default.findtext("password_sha256_hex") or "") == 64


def test_users_adds_a_missing_user() -> None:
    root = ET.fromstring(rewrite_users_config(PACKAGED_USERS, "tickflow", ""))
    user = root.find("users/tickflow")
    assert user is not None
    assert user.findtext("password") == ""
    assert user.findtext("profile") == "default"
    assert [ip.text for ip in user.findall("networks/ip")] == ["127.0.0.1", "::1"]


# -- Flink ------------------------------------------------------------------------------------


def test_flatten_and_unflatten_round_trip() -> None:
    tree = {"rest": {"port": 8081, "address": "127.0.0.1"}, "parallelism": {"default": 1}}
    assert flatten(tree) == {
        "rest.port": 8081,
        "rest.address": "127.0.0.1",
        "parallelism.default": 1,
    }
    assert unflatten(flatten(tree)) == tree


@pytest.mark.parametrize(
    "flat", [{"a.b": 1, "a.b.c": 2}, {"a.b.c": 2, "a.b": 1}], ids=["leaf-first", "prefix-first"]
)
def test_unflatten_rejects_keys_that_are_leaf_and_prefix(flat: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"a\.b"):
        unflatten(flat)


def test_flink_conf_renders_repo_config_with_runtime_values(
    settings: Settings, tmp_path: Path
) -> None:
    base = (settings.root / "flink-conf" / "config.yaml").read_text()
    python = Path("/venv/bin/python")
    overrides = runtime_overrides(settings, tmp_path, python)
    flat = flatten(yaml.safe_load(render_flink_config(base, overrides)))
    assert flat["rest.port"] == settings.flink.rest_port
    assert flat["jobmanager.rpc.port"] == settings.flink.rpc_port
    assert flat["rest.bind-address"] == "127.0.0.1"
    assert flat["parallelism.default"] == settings.flink.parallelism
    assert flat["python.execution-mode"] == settings.flink.python_execution_mode
    assert flat["env.log.dir"] == str(tmp_path / "log")
    assert flat["env.pid.dir"] == str(tmp_path / "pid")
    assert flat["io.tmp.dirs"] == str(tmp_path / "tmp")
    assert flat["python.executable"] == flat["python.client.executable"] == str(python)
    assert str(settings.root) in flat["python.pythonpath"].split(":")
    assert flat["execution.checkpointing.dir"] == (tmp_path / "checkpoints").as_uri()
    # kept from the repo's file
    assert flat["taskmanager.numberOfTaskSlots"] == 2
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in flat["env.java.opts.all"]
    assert flat["classloader.parent-first-patterns.additional"] == "pemja."


def test_flink_conf_overrides_win_over_the_base() -> None:
    rendered = render_flink_config("rest:\n  port: 1\n", {"rest.port": 2, "a.b": "x"})
    assert rendered.startswith("# rendered by")
    assert yaml.safe_load(rendered) == {"rest": {"port": 2}, "a": {"b": "x"}}


def test_registry_properties_hold_the_password_digest_not_the_password(
    settings: Settings, tmp_path: Path
) -> None:
    from stack.registry import password_digest, render_application_properties

    registry = dataclasses.replace(settings.registry, port=18085, password="s3cret-Pass")
    text = render_application_properties(dataclasses.replace(settings, registry=registry), tmp_path)
    props = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert "s3cret-Pass" not in text
    assert props["quarkus.http.host"] == "127.0.0.1" and props["quarkus.http.port"] == "18085"
    assert props["quarkus.http.auth.basic"] == "true"
    digest = password_digest("tickflow", "s3cret-Pass")
    assert props["quarkus.security.users.embedded.users.tickflow"] == digest
    assert props["apicurio.datasource.url"] == f"jdbc:h2:file:{tmp_path}/data/registry"
    # no password configured: no auth settings at all
    open_registry = dataclasses.replace(settings.registry, password="")
    open_settings = dataclasses.replace(settings, registry=open_registry)
    text = render_application_properties(open_settings, tmp_path)
    assert "quarkus.http.auth.basic" not in text
