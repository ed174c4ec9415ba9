"""The HA profile's pieces that need no server: the overlay, which components a configuration
runs, and the Sentinel and Redis configuration files."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from jobs import warmup
from stack import manager
from stack.cli import HA_OVERLAY, with_overlay
from stack.flink import (
    BUNDLED_ZOOKEEPER,
    REPORTER_PORT_KEY,
    check_bundled_zookeeper,
    failover_overrides,
    flink_home,
    ha_overrides,
    leader_rest_address,
    reporter_port_args,
)
from stack.kafka import (
    CONTROLLER_ID_BASE,
    Kafka,
    KafkaNode,
    java_properties_text,
    kafka_controllers,
    lost_brokers,
)
from stack.redis_server import Redis, RedisReplica, render_redis_conf, render_sentinel_conf
from stack.supervisor import Supervisor
from stack.system import StackError, wait_until
from stack.zookeeper import ZooKeeper, render_zoo_cfg, zookeeper_nodes
from tickflow.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.unit


def ha_settings(tmp_path: Path, password: str = "pw") -> Settings:
    base = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    return dataclasses.replace(
        base,
        state_dir=tmp_path,
        redis=dataclasses.replace(base.redis, password=password),
    )


def test_the_overlay_comes_last_and_once() -> None:
    assert with_overlay("") == HA_OVERLAY
    assert with_overlay("config/simulator.yaml") == f"config/simulator.yaml:{HA_OVERLAY}"
    assert with_overlay(f"{HA_OVERLAY}:x.yaml") == f"x.yaml:{HA_OVERLAY}"


def test_the_default_profile_runs_no_replica_and_no_sentinel(tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(environ={}), state_dir=tmp_path)
    names = [c.name for c in manager.components(settings)]
    assert "redis-replica" not in names and "redis-sentinel" not in names
    with pytest.raises(StackError, match="--ha"):
        manager.components(settings, ["redis-sentinel"])


def test_the_ha_profile_runs_a_replica_and_three_sentinels(tmp_path: Path) -> None:
    settings = ha_settings(tmp_path)
    by_name = {c.name: c for c in manager.components(settings)}
    assert by_name["redis-replica"].ports() == {"replica": 6380}
    sentinels = by_name["redis-sentinel"]
    assert sentinels.process_count == 3
    assert list(sentinels.ports().values()) == [26379, 26380, 26381]
    assert settings.redis.sentinels() == [("127.0.0.1", p) for p in (26379, 26380, 26381)]


def test_a_sentinel_watches_the_primary_with_a_majority_and_the_password(tmp_path: Path) -> None:
    settings = ha_settings(tmp_path, password='p"w')
    conf = render_sentinel_conf(settings, 26380, tmp_path)
    assert "port 26380" in conf
    assert "sentinel monitor tickflow 127.0.0.1 6379 2" in conf  # 2 of 3
    assert "sentinel down-after-milliseconds tickflow 1000" in conf
    assert 'requirepass "p\\"w"' in conf and 'sentinel auth-pass tickflow "p\\"w"' in conf


def test_with_sentinels_either_redis_can_authenticate_to_the_other(tmp_path: Path) -> None:
    ha = render_redis_conf(ha_settings(tmp_path))
    assert 'masterauth "pw"' in ha
    assert "pw" not in ha.replace('masterauth "pw"', "")  # otherwise only the digest
    plain = dataclasses.replace(load_settings(environ={}), state_dir=tmp_path)
    single = render_redis_conf(
        dataclasses.replace(plain, redis=dataclasses.replace(plain.redis, password="pw"))
    )
    assert "masterauth" not in single


def test_a_redis_started_again_follows_the_primary_the_sentinels_name(tmp_path: Path) -> None:
    """After a failover the roles are swapped: a node started again must follow whichever the
    Sentinels promoted, not its configured role (the promoted replica, started again as the
    replica of its own replica, left the Sentinels no primary to fail over to)."""
    from stack.redis_server import Redis, RedisReplica, follow

    primary, replica = ("127.0.0.1", 6379), ("127.0.0.1", 6380)
    # the Sentinels promoted the replica: the old primary starts as its replica
    assert follow(replica, primary, None) == replica
    # the promoted replica started again still leads: it follows no one
    assert follow(replica, replica, primary) is None
    # a primary back before the Sentinels noticed it gone still leads
    assert follow(primary, primary, None) is None
    # no Sentinel answers (they start after the instances): the configured roles
    assert follow(None, replica, primary) == primary
    assert follow(None, primary, None) is None
    settings = ha_settings(tmp_path)
    # Sentinels where none listens: configure falls back to the configured roles
    silent = dataclasses.replace(settings.redis, sentinel_ports="1,2,3")
    settings = dataclasses.replace(settings, redis=silent)
    for component, replicates in ((Redis(settings), None), (RedisReplica(settings), primary)):
        component.configure()
        text = component.conf_file.read_text()
        expected = f"replicaof {replicates[0]} {replicates[1]}" if replicates else None
        assert [line for line in text.splitlines() if "replicaof" in line] == (
            [expected] if expected else []
        ), component.name


def test_the_ha_profile_runs_three_brokers_and_a_quorum_of_controllers_beside_them(
    tmp_path: Path,
) -> None:
    from stack.kafka import (
        Kafka,
        kafka_controllers,
        kafka_nodes,
        render_server_properties,
    )

    base = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    settings = dataclasses.replace(
        base,
        state_dir=tmp_path,
        kafka=dataclasses.replace(base.kafka, security_protocol="PLAINTEXT"),
    )
    nodes = kafka_nodes(settings)
    assert [(n.node_id, n.port, n.controller_port, n.roles) for n in nodes] == [
        (1, 9092, 9093, "broker"),
        (2, 9094, 9095, "broker"),
        (3, 9096, 9097, "broker"),
    ]
    controllers = kafka_controllers(settings)
    assert [(n.node_id, n.controller_port, n.roles, n.machine) for n in controllers] == [
        (101, 9093, "controller", 1),
        (102, 9095, "controller", 2),
        (103, 9097, "controller", 3),
    ]

    def props_of(node: KafkaNode) -> dict[str, str]:
        text = render_server_properties(settings, tmp_path / "d", node)
        lines = [line for line in text.splitlines() if "=" in line and line[0] != "#"]
        return dict(line.split("=", 1) for line in lines)

    props = props_of(nodes[1])
    assert props["node.id"] == "2" and props["process.roles"] == "broker"
    voters = "101@127.0.0.1:9093,102@127.0.0.1:9095,103@127.0.0.1:9097"
    assert props["controller.quorum.voters"] == voters
    # a broker reaches the controllers without listening on their listener
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9094"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    # a dead node is fenced within 2 s, not Kafka's default 9
    assert props["broker.session.timeout.ms"] == "2000"
    # a node back from a cut is not waited for by acks=all writes until it catches up
    assert props["replica.lag.time.max.ms"] == "4000"
    # the brokers follow the quorum's log: they look for a new leader as soon as it is elected
    assert props["controller.quorum.fetch.timeout.ms"] == "1000"
    assert props["controller.quorum.request.timeout.ms"] == "1000"
    assert props["controller.quorum.election.timeout.ms"] == "500"
    # and hand what they forward to it soon after, not after a connection attempt of 10 s
    assert props["socket.connection.setup.timeout.ms"] == "500"
    assert props["controller.socket.timeout.ms"] == "2500"
    controller = props_of(controllers[2])
    assert controller["node.id"] == "103" and controller["process.roles"] == "controller"
    assert controller["listeners"] == "CONTROLLER://127.0.0.1:9097"
    assert controller["controller.quorum.voters"] == voters
    assert "advertised.listeners" not in controller
    assert "inter.broker.listener.name" not in controller
    # it fences brokers and creates topics: the session and the topics' defaults are its own
    assert controller["broker.session.timeout.ms"] == "2000"
    assert controller["default.replication.factor"] == "3"
    # a leader cut off the network is replaced after 1 s without an answer
    assert controller["controller.quorum.fetch.timeout.ms"] == "1000"
    single = dataclasses.replace(
        settings.kafka, bootstrap="127.0.0.1:9092", replication_factor=1, min_insync_replicas=1
    )
    single_settings = dataclasses.replace(settings, kafka=single)
    single_props = render_server_properties(single_settings, tmp_path / "single")
    assert "process.roles=broker,controller" in single_props
    assert "broker.session.timeout.ms" not in single_props
    assert "replica.lag.time.max.ms" not in single_props
    assert "controller.quorum.fetch.timeout.ms" not in single_props
    assert Kafka(single_settings).process_count == 1
    kafka = Kafka(settings)
    assert kafka.process_count == 6 and kafka.completes_partially
    assert kafka.node_home(nodes[0]) == kafka.home  # broker 1 keeps the single node's layout
    assert kafka.node_home(nodes[2]) == kafka.home / "node-3"
    assert kafka.node_home(controllers[0]) == kafka.home / "controller"
    assert kafka.node_home(controllers[2]) == kafka.home / "node-3" / "controller"
    assert len(set(kafka.pid_files())) == 6


def test_a_cluster_whose_brokers_were_its_controllers_is_refused(tmp_path: Path) -> None:
    from stack.kafka import Kafka

    base = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    plain = dataclasses.replace(base.kafka, security_protocol="PLAINTEXT")
    kafka = Kafka(dataclasses.replace(base, state_dir=tmp_path, kafka=plain))
    kafka.data_dir.mkdir(parents=True)
    (kafka.data_dir / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(StackError, match="whose controllers ran elsewhere"):
        kafka.configure()
    # and so is one whose controllers ran beside the brokers before they moved to hosts of
    # their own (config/netns.yaml): the moved ones have no data yet
    moved = load_settings(overlays=[Path(HA_OVERLAY), Path("config/netns.yaml")], environ={})
    kafka = Kafka(
        dataclasses.replace(
            moved,
            state_dir=tmp_path,
            kafka=dataclasses.replace(moved.kafka, security_protocol="PLAINTEXT"),
        )
    )
    controller_data = kafka.home / "controller" / "data"  # where controller 101 ran beside
    controller_data.mkdir(parents=True)
    (controller_data / "meta.properties").write_text("node.id=101\n")
    with pytest.raises(StackError, match=r"before kafka\.controller_hosts moved them"):
        kafka.configure()


def test_the_active_controller_is_read_from_the_voters_quorum_state(tmp_path: Path) -> None:
    from stack.kafka import Kafka, active_controller, kafka_controllers

    base = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    settings = dataclasses.replace(base, state_dir=tmp_path)
    kafka = Kafka(settings)
    with pytest.raises(StackError, match="no controller has recorded"):
        active_controller(settings)
    # the voter that last saw an election knows the newer leader; one never heard of none
    known = [(101, 4), (102, 5), (-1, 6)]
    for node, (leader, epoch) in zip(kafka_controllers(settings), known, strict=True):
        state = kafka.node_data_dir(node) / "__cluster_metadata-0" / "quorum-state"
        state.parent.mkdir(parents=True)
        state.write_text(f'{{"leaderId":{leader},"leaderEpoch":{epoch},"votedId":-1}}')
    assert active_controller(settings) == 102


def test_the_ha_profile_runs_zookeeper_and_a_standby_jobmanager(tmp_path: Path) -> None:
    settings = ha_settings(tmp_path)
    by_name = {c.name: c for c in manager.components(settings)}
    names = list(by_name)
    assert names.index("zookeeper") < names.index("flink")  # Flink's leader election needs it
    zookeeper = by_name["zookeeper"]
    assert zookeeper.process_count == 3 and zookeeper.completes_partially
    assert zookeeper.ports() == {
        "client-1": 2181, "peer-1": 2191, "election-1": 2201,
        "client-2": 2182, "peer-2": 2192, "election-2": 2202,
        "client-3": 2183, "peer-3": 2193, "election-3": 2203,
    }  # fmt: skip
    flink_component = by_name["flink"]
    assert flink_component.process_count == 4  # two JobManagers and two TaskManagers
    assert flink_component.ports()["standby-rest"] == 8082
    assert settings.flink.rest_ports() == [8081, 8082]
    # the JobManagers take the metrics range's ends, the TaskManagers what lies between
    assert reporter_port_args(settings, "jobmanager") == ["-D", f"{REPORTER_PORT_KEY}=9249,9252"]
    assert reporter_port_args(settings, "taskmanager") == ["-D", f"{REPORTER_PORT_KEY}=9250-9251"]
    overrides = ha_overrides(settings, tmp_path)
    assert overrides["high-availability.type"] == "zookeeper"
    assert overrides["high-availability.zookeeper.quorum"] == (
        "127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183"
    )
    # a node of the ensemble lost suspends the connection only: leadership stays
    assert overrides["high-availability.zookeeper.client.tolerate-suspended-connections"]
    # a lost TaskManager noticed in seconds: its job restarts on the spare
    assert failover_overrides(settings) == {
        "heartbeat.interval": "1000 ms",
        "heartbeat.timeout": "5000 ms",
        "heartbeat.rpc-failure-threshold": 1,
        "restart-strategy.exponential-delay.initial-backoff": "100 ms",
    }
    assert overrides["high-availability.storageDir"] == (tmp_path / "ha").as_uri()
    assert overrides["high-availability.zookeeper.client.session-timeout"] == "4000 ms"
    assert overrides["high-availability.jobmanager.port"] == "6123-6124"
    nodes = zookeeper_nodes(settings)
    conf = render_zoo_cfg(settings, tmp_path / "data", nodes[1])
    assert "clientPort=2182\n" in conf and "clientPortAddress=127.0.0.1\n" in conf
    assert "minSessionTimeout=1000\n" in conf  # Flink's 4 s session is within the bounds
    # every node knows the whole ensemble
    for server in ("server.1=127.0.0.1:2191:2201", "server.2=127.0.0.1:2192:2202",
                   "server.3=127.0.0.1:2193:2203"):  # fmt: skip
        assert f"{server}\n" in conf
    assert zookeeper.node_home(nodes[0]) == zookeeper.home  # node 1: the single node's layout
    assert zookeeper.node_home(nodes[2]) == zookeeper.home / "node-3"


def test_one_zookeeper_node_runs_standalone(tmp_path: Path) -> None:
    settings = ha_settings(tmp_path)
    single = dataclasses.replace(
        settings, flink=dataclasses.replace(settings.flink, ha_zookeeper_nodes=1)
    )
    conf = render_zoo_cfg(single, tmp_path / "data")
    assert "clientPort=2181\n" in conf and "server." not in conf
    assert manager.components(single, ["zookeeper"])[0].ports() == {"client": 2181}
    overrides = ha_overrides(single, tmp_path)
    assert overrides["high-availability.zookeeper.quorum"] == "127.0.0.1:2181"
    assert not overrides["high-availability.zookeeper.client.tolerate-suspended-connections"]


def test_the_flink_settings_refuse_what_cannot_run() -> None:
    flink = load_settings(environ={}).flink
    with pytest.raises(ConfigError, match="ha_zookeeper_nodes"):
        dataclasses.replace(flink, ha_zookeeper_nodes=2)  # no majority after one loss
    with pytest.raises(ConfigError, match="taskmanagers"):
        dataclasses.replace(flink, taskmanagers=0)
    with pytest.raises(ConfigError, match="heartbeat_timeout_ms"):
        dataclasses.replace(flink, heartbeat_interval_ms=5000, heartbeat_timeout_ms=1000)


def test_the_default_profile_runs_one_jobmanager_without_zookeeper(tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(environ={}), state_dir=tmp_path)
    by_name = {c.name: c for c in manager.components(settings)}
    assert "zookeeper" not in by_name
    assert by_name["flink"].process_count == 2
    assert failover_overrides(settings) == {}  # Flink's own defaults
    assert "standby-rest" not in by_name["flink"].ports()
    assert ha_overrides(settings, tmp_path) == {}
    assert reporter_port_args(settings, "jobmanager") == ["-D", f"{REPORTER_PORT_KEY}=9249"]


def test_kafka_nodes_on_hosts_of_their_own(tmp_path: Path) -> None:
    """config/netns.yaml: each node listens at its own address, in a namespace named after it,
    where Prometheus' probes and the other nodes reach it; the rest stays on loopback."""
    from stack import netns
    from stack.kafka import (
        Kafka,
        kafka_controllers,
        kafka_nodes,
        node_host,
        node_net_host,
        render_server_properties,
    )

    overlays = [Path(HA_OVERLAY), Path("config/netns.yaml")]
    base = load_settings(overlays=overlays, environ={})
    plain = dataclasses.replace(base.kafka, security_protocol="PLAINTEXT")
    settings = dataclasses.replace(base, state_dir=tmp_path, kafka=plain)
    nodes = kafka_nodes(settings)
    assert [n.host for n in nodes] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    text = render_server_properties(settings, tmp_path / "d1", nodes[0])
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    assert props["listeners"] == "PLAINTEXT://10.77.0.11:9092"
    assert props["controller.quorum.voters"] == (
        "101@10.77.0.21:9093,102@10.77.0.22:9095,103@10.77.0.23:9097"
    )
    # each controller on a host of its own: cutting a broker's host off cuts no controller
    controllers = kafka_controllers(settings)
    assert [(c.host, c.machine) for c in controllers] == [
        ("10.77.0.21", 4),
        ("10.77.0.22", 5),
        ("10.77.0.23", 6),
    ]
    assert node_host(settings, controllers[1]) == netns.NetHost(
        "kafka-5", "10.77.0.22", "10.77.0.1/24"
    )
    kafka = Kafka(settings)
    assert kafka.node_home(controllers[0]) == kafka.home / "node-4" / "controller"
    text = render_server_properties(settings, tmp_path / "c1", controllers[0])
    assert "listeners=CONTROLLER://10.77.0.21:9093" in text.splitlines()
    # beside the brokers (the HA profile on loopback, or controller_hosts unset): the broker's
    # host, and cutting it off cuts both
    beside = dataclasses.replace(settings, kafka=dataclasses.replace(plain, controller_hosts=""))
    controller = kafka_controllers(beside)[1]
    assert node_host(beside, controller) == node_host(beside, kafka_nodes(beside)[1])
    # one address per broker, and hosts of their own only on a node network
    two = dataclasses.replace(plain, controller_hosts="10.77.0.21,10.77.0.22")
    on_loopback = dataclasses.replace(plain, node_network="")
    for odd in (two, on_loopback):
        with pytest.raises(StackError, match="controller_hosts"):
            kafka_controllers(dataclasses.replace(settings, kafka=odd))
    host = node_net_host(settings, 2)
    assert (host.namespace, host.interface()) == ("tf-10.77.0.12", "10.77.0.12/24")
    assert host.link == "tfv0a4d000c" and len(host.link) <= 15  # the kernel's limit
    assert host.argv(["java", "-version"]) == [
        "ip",
        "netns",
        "exec",
        "tf-10.77.0.12",
        "java",
        "-version",
    ]
    probes = manager.probe_targets(settings)
    assert probes["kafka"][:2] == ["10.77.0.11:9092", "10.77.0.21:9093"]
    assert probes["redis"] == ["127.0.0.1:6379"]
    assert Kafka(settings).host_of("controller-3") == "10.77.0.23"
    assert Kafka(settings).host_of("broker-3") == "10.77.0.13"
    # an address outside the bridge's subnet is refused, naming both
    with pytest.raises(StackError, match=r"10\.9\.0\.2 is not in 10\.77\.0\.0/24"):
        netns.NetHost("kafka-9", "10.9.0.2", "10.77.0.1/24").interface()
    # on loopback there is nothing to cut
    with pytest.raises(StackError, match="loopback"):
        node_net_host(ha_settings(tmp_path), 1)


def test_jobmanagers_that_can_be_cut_off(tmp_path: Path) -> None:
    """config/netns.yaml: each JobManager in a cgroup of its own (named by its REST port),
    which one nftables table per JobManager cuts off in both directions; by default none."""
    from stack import cutoff
    from stack.flink import jobmanager_cgroup, jobmanager_preexec

    overlays = [Path(HA_OVERLAY), Path("config/netns.yaml")]
    assert load_settings(overlays=overlays, environ={}).flink.partitionable_jobmanagers
    assert jobmanager_preexec(ha_settings(tmp_path), 8081) is None  # the HA profile alone
    assert jobmanager_cgroup(8082) == "jobmanager-8082"
    rules = cutoff.ruleset("jobmanager-8082")
    assert rules.startswith("table inet tf_cut_jobmanager_8082 {")
    for hook in ("input", "output"):
        assert (f"type filter hook {hook} priority 0; policy accept; "
                'socket cgroupv2 level 2 "tickflow/jobmanager-8082" drop;') in rules  # fmt: skip
    hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw"
    assert cutoff.cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    with pytest.raises(StackError, match="no cgroup v2"):
        cutoff.cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")


def test_the_warm_up_imports_what_the_pipeline_operator_runs_and_emits_nothing() -> None:
    function = warmup.ImportJobCode()
    function.open(None)  # type: ignore[arg-type]
    assert {"jobs.operators", "tickflow_native"} <= set(sys.modules)
    assert list(function.flat_map(1)) == []


def test_what_a_component_launches_after_comes_before_it_in_the_start_order() -> None:
    ha = load_settings(overlays=[Path(HA_OVERLAY)], environ={})
    order = [c.name for c in manager.components(ha)]
    for component in manager.components(ha):
        for needed in component.launch_after():
            assert order.index(needed) < order.index(component.name), component.name
    assert manager.components(ha)[order.index("clickhouse-replica")].launch_after() == (
        "zookeeper",
    )


def test_the_supervisor_starts_a_replacement_after_the_profiles_delay(tmp_path: Path) -> None:
    """A lost standby or spare is replaced ``flink.replacement_delay_ms`` after its loss was
    first seen (the HA profile: 15 s, so its JVM does not start while the job recovers)."""
    settings = ha_settings(tmp_path)
    assert settings.flink.replacement_delay_ms == 15000
    quick = dataclasses.replace(
        settings, flink=dataclasses.replace(settings.flink, replacement_delay_ms=200)
    )
    lines: list[str] = []
    supervisor = Supervisor(quick, log=lines.append)
    assert not supervisor._replacement_due("taskmanager", "a TaskManager")
    assert lines == [
        "supervisor: a TaskManager is lost: starting another in 0.2 s, once the job has "
        "recovered on the one left"
    ]
    assert not supervisor._replacement_due("taskmanager", "a TaskManager")  # still waiting
    time.sleep(0.25)
    assert supervisor._replacement_due("taskmanager", "a TaskManager")
    # the next loss waits again
    assert not supervisor._replacement_due("taskmanager", "a TaskManager")
    at_once = dataclasses.replace(
        settings, flink=dataclasses.replace(settings.flink, replacement_delay_ms=0)
    )
    assert Supervisor(at_once)._replacement_due("jobmanager", "a JobManager")


def test_the_supervisor_warms_a_spare_again_when_its_warm_up_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm-up cut short (the JobManager failed over while it ran) leaves the spare cold: a
    job restarting there waited ~10 s for its Python imports. It is tried again
    ``WARM_RETRY_S`` later, once the job runs, until it succeeds."""
    from stack import supervisor as module
    from stack.supervisor import SupervisedJob

    outcomes: list[Exception | list[str]] = [StackError("the warm-up job FAILED"), ["w1"]]
    warmed: list[str] = []

    def warm(settings: Settings) -> list[str]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        warmed.extend(outcome)
        return outcome

    state = {"jid": "a" * 32, "state": "RESTARTING"}
    monkeypatch.setattr(module.flink, "warm_taskmanagers", warm)
    monkeypatch.setattr(module.flink, "list_jobs", lambda settings: [state])
    monkeypatch.setattr(module, "WARM_RETRY_S", 0.2)
    job = SupervisedJob(["a" * 32], submit=lambda restore: "b" * 32)
    lines: list[str] = []
    supervisor = Supervisor(ha_settings(tmp_path), job=job, names=(), log=lines.append)

    def settle() -> None:
        if supervisor._warming is not None:
            supervisor._warming.join(5)

    supervisor._cold = True
    supervisor._start_warming()
    settle()
    assert supervisor._cold and lines[-1].endswith("again in 0.2 s once the job runs")
    supervisor._warm_again_if_due()  # too early
    time.sleep(0.25)
    supervisor._warm_again_if_due()  # the job restarting: its slots may be the spare's
    settle()
    assert warmed == [] and outcomes == [["w1"]]
    state["state"] = "RUNNING"
    supervisor._warm_again_if_due()
    settle()
    assert warmed == ["w1"] and not supervisor._cold


def test_the_supervisor_fences_a_jobmanager_silent_while_the_other_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader cut off the network queues disconnects for the TaskManagers that Flink lets any
    JobManager send; delivered after the heal they restarted the job on the new leader. The
    supervisor kills it once it has been silent ``fence_silent_jobmanager_ms`` while the other
    answers: not one still starting (never answered), not the last one answering."""
    from stack import supervisor as module

    settings = ha_settings(tmp_path)
    settings = dataclasses.replace(
        settings, flink=dataclasses.replace(settings.flink, fence_silent_jobmanager_ms=200)
    )
    leader, standby = settings.flink.rest_ports()
    answers = {leader: True, standby: True}
    pids: dict[int, int | None] = {leader: 101, standby: 102}
    fenced: list[int] = []

    def fence(settings: Settings, port: int, pid: int) -> None:
        assert pid == pids[port]  # the process seen answering there, not looked up again
        fenced.append(port)
        pids[port] = None

    looked_up: list[int] = []

    def listening_pid(port: int) -> int | None:
        looked_up.append(port)
        return pids[port]

    monkeypatch.setattr(module.flink, "rest_answers", lambda port: answers[port])
    monkeypatch.setattr(module, "listening_pid", listening_pid)
    monkeypatch.setattr(module, "pid_alive", lambda pid: pid in pids.values())
    monkeypatch.setattr(module.flink, "fence_jobmanager", fence)
    released: list[int] = []

    def release(settings: Settings, port: int) -> str:
        released.append(port)
        return "deleted the 4 ZooKeeper node(s) its session 0x1 held"

    monkeypatch.setattr(module.flink, "release_lost_leadership", release)
    lines: list[str] = []
    supervisor = Supervisor(settings, names=(), log=lines.append)
    supervisor._fence_silent_jobmanagers()  # both answer
    supervisor._fence_silent_jobmanagers()
    assert looked_up == [leader, standby]  # a process's pid is looked up once
    answers[leader] = False  # cut off
    supervisor._fence_silent_jobmanagers()
    assert fenced == []  # not silent for long yet
    time.sleep(0.25)
    answers[standby] = False  # the other silent too: neither is fenced
    supervisor._fence_silent_jobmanagers()
    assert fenced == []
    answers[standby] = True
    supervisor._fence_silent_jobmanagers()
    assert fenced == [leader] and "fenced (killed, its connections reset)" in lines[-2]
    # and its leadership released, if it still held it: the standby need not wait its session
    assert released == [leader] and "the standby leads at once" in lines[-1]
    # a JobManager started again on that port and silent while it starts is left alone
    pids[leader] = 103
    time.sleep(0.25)
    supervisor._fence_silent_jobmanagers()
    supervisor._fence_silent_jobmanagers()
    assert fenced == [leader]
    # one that answered and whose process is gone (killed, crashed): released at once
    answers[leader] = True
    supervisor._fence_silent_jobmanagers()
    pids[leader] = None
    answers[leader] = False
    supervisor._fence_silent_jobmanagers()
    assert fenced == [leader] and released == [leader, leader]


def test_the_leader_rest_address_is_read_from_flinks_connection_info() -> None:
    """A JobManager's ``leader/rest_server/connection_info`` node (Flink 2.2, read from
    ZooKeeper): Java serialization of its address and leader session id."""
    node = bytes.fromhex(
        "aced000577170015687474703a2f2f3132372e302e302e313a383038317372000e6a6176612e7574696c"
        "2e55554944bc9903f7986d852f0200024a000c6c65617374536967426974734a000b6d6f73745369674269"
        "7473787085a40bf4edbb4fa30cdb18702f75495d"
    )
    assert leader_rest_address(node) == "http://127.0.0.1:8081"
    assert leader_rest_address(b"") is None and leader_rest_address(b"not java") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and sock_destroy need root")
def test_a_killed_process_cut_off_leaves_no_connection_to_deliver_its_data_later() -> None:
    """What a process killed while cut off had not sent stays in sockets that the kernel goes
    on retransmitting, to be delivered once the network heals: ``reset_connections`` destroys
    them by the cgroup they were made in."""
    from stack import cutoff

    name = "test-reset-connections"
    try:
        directory = cutoff.ensure(name)
    except StackError as exc:
        pytest.skip(str(exc))
    server = subprocess.Popen(
        [sys.executable, "-c",
         "import os, socket, sys, time\n"
         f"open({str(directory / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True)\n"
         "a, _ = s.accept(); a.sendall(b'x' * 1000); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        import socket

        with socket.create_connection(("127.0.0.1", port)):
            listed = ["ss", "-t", "-a", "-H", "cgroup", f"/{cutoff.cgroup_path(name)}"]
            assert subprocess.run(listed, capture_output=True, text=True).stdout.strip()
            server.kill()
            server.wait(10)
            cutoff.reset_connections(name)
            assert not subprocess.run(listed, capture_output=True, text=True).stdout.strip()
    finally:
        server.kill()
        server.wait(10)
        cutoff.remove(name)


def test_the_flink_dist_bundles_the_curator_the_patched_leader_latch_replaces(
    tmp_path: Path,
) -> None:
    (flink_dist,) = flink_home().glob("lib/flink-dist-*.jar")
    check_bundled_zookeeper(flink_dist)  # the installed Flink: no error
    pom = (Path(__file__).parents[2] / "jobs/jvm/pom.xml").read_text()
    version = re.search(r"<flink.shaded.zookeeper.version>(.+)</", pom)
    assert version and BUNDLED_ZOOKEEPER.endswith(f":jar:{version.group(1)}")
    other = tmp_path / "flink-dist-9.9.9.jar"
    with zipfile.ZipFile(other, "w") as jar:
        jar.writestr("META-INF/DEPENDENCIES", "flink-shaded-zookeeper-3:jar:3.9.9-99.0")
    with pytest.raises(StackError, match="does not bundle"):
        check_bundled_zookeeper(other)


def test_the_supervisor_restarts_flink_when_no_jobmanager_answers_for_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HA: a leader election that never settles (every REST port answering "ongoing leader
    election") ends with Flink restarted, once, after ``HA_RECOVERY_GRACE_S``."""
    from stack import supervisor as module
    from stack.supervisor import SupervisedJob

    def unavailable(settings: Settings) -> list[dict[str, str]]:
        raise OSError("503: Service temporarily unavailable due to an ongoing leader election")

    restarted: list[str] = []

    class Cluster:
        def stop(self) -> None:
            restarted.append("stop")

    monkeypatch.setattr(module.flink, "list_jobs", unavailable)
    monkeypatch.setattr(
        module, "components", lambda settings, names: [Cluster()] if names == ["flink"] else []
    )
    monkeypatch.setattr(module, "up", lambda settings, names, log: restarted.append("up"))
    monkeypatch.setattr(module, "HA_RECOVERY_GRACE_S", 0.2)
    job = SupervisedJob(["a" * 32], submit=lambda restore: "b" * 32)
    supervisor = Supervisor(ha_settings(tmp_path), job=job, names=(), log=lambda line: None)
    supervisor.check()
    assert restarted == [] and job.unanswered_since is not None
    time.sleep(0.25)
    supervisor.check()
    assert restarted == ["stop", "up"]
    assert job.unanswered_since is None and job.job_ids == ["a" * 32]  # recovered, not resubmitted
    # an answer resets the clock
    monkeypatch.setattr(module.flink, "list_jobs", lambda settings: [])
    supervisor.check()
    assert job.unanswered_since is None


def test_the_supervisor_starts_a_lost_kafka_node_after_the_profiles_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost Kafka node is started again ``kafka.replacement_delay_ms`` after its loss was
    first seen (the HA profile: 10 s, so its JVM does not start while the others take over its
    partitions); a Kafka with no node left is started at once."""
    settings = ha_settings(tmp_path)
    assert settings.kafka.replacement_delay_ms == 10000
    quick = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, replacement_delay_ms=200)
    )

    class PartlyRunning(Kafka):
        alive = [11, 12, 13, 14, 15]

        def pids(self) -> list[int]:
            return self.alive

    kafka = PartlyRunning(quick)
    assert kafka.process_count == 6
    started: list[list[str]] = []
    monkeypatch.setattr("stack.supervisor.components", lambda s, names: [kafka])
    monkeypatch.setattr("stack.supervisor.up", lambda s, names, log: started.append(names))
    lines: list[str] = []
    supervisor = Supervisor(quick, names=("kafka",), log=lines.append)
    supervisor.check()
    supervisor.check()
    assert started == []
    assert lines == [
        "supervisor: a Kafka node is lost: starting another in 0.2 s, once the others have "
        "taken its work over"
    ]
    time.sleep(0.25)
    supervisor.check()
    assert started == [["kafka"]]
    # whole again: the next loss waits again; none left: started at once
    kafka.alive = [11, 12, 13, 14, 15, 16]
    supervisor.check()
    kafka.alive = [11, 12, 13, 14, 15]
    supervisor.check()
    assert started == [["kafka"]]
    kafka.alive = []
    supervisor.check()
    assert started == [["kafka"], ["kafka"]]


def test_the_supervisor_starts_a_lost_redis_primary_once_the_sentinels_promoted_the_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started while the Sentinels still name it, a lost primary came back as a second
    primary beside the one they promote, and the writes to the one demoted were lost. It waits
    until they name another, or ``redis.failover_wait_ms`` (no replica to promote); a lost
    replica, or a primary without Sentinels, is started at once. A primary whose process is
    gone is failed over at once (SENTINEL FAILOVER), once per loss."""
    settings = ha_settings(tmp_path)
    quick = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, failover_wait_ms=200)
    )
    own, replica = (quick.redis.host, quick.redis.port), (quick.redis.host, 6380)
    named = [own]
    monkeypatch.setattr("stack.redis_server.sentinel_primary", lambda s: named[0])
    forced: list[str] = []

    def force(settings: Settings) -> str:
        forced.append(settings.redis.sentinel_service)
        return "Sentinel 26379 fails over to the replica"

    monkeypatch.setattr("stack.redis_server.force_failover", force)

    class Lost(Redis):
        def pids(self) -> list[int]:
            return []

    started: list[list[str]] = []
    monkeypatch.setattr("stack.supervisor.components", lambda s, names: [Lost(quick)])
    monkeypatch.setattr("stack.supervisor.up", lambda s, names, log: started.append(names))
    lines: list[str] = []
    supervisor = Supervisor(quick, names=("redis",), log=lines.append)
    supervisor.check()
    supervisor.check()
    assert started == [] and forced == ["tickflow"]
    assert lines == [
        "supervisor: the Redis primary (redis) is gone: Sentinel 26379 fails over to the replica",
        "supervisor: the Redis primary (redis) is lost: starting another in 0.2 s, or once the "
        "Sentinels have promoted the replica",
    ]
    named[0] = replica  # promoted: it starts as that one's replica
    supervisor.check()
    assert started == [["redis"]]
    named[0] = own  # no replica promoted within the wait: it comes back as the primary
    supervisor.check()
    time.sleep(0.25)
    supervisor.check()
    assert started == [["redis"], ["redis"]] and len(forced) == 2  # once for each loss
    assert Redis(quick).restart_hold() is not None
    assert RedisReplica(quick).restart_hold() is None  # the Sentinels name the other
    no_sentinels = dataclasses.replace(
        quick, redis=dataclasses.replace(quick.redis, sentinel_ports="")
    )
    assert Redis(no_sentinels).restart_hold() is None


def test_the_supervisor_fails_a_lost_redis_primary_over_from_a_watcher_asking_again_if_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher, not the rounds, sees the primary's process gone and forces the failover:
    from a round it came once the Sentinels held the primary down, and was refused
    (NOGOODSLAVE: the replica's last INFO too old then); refused, it is asked again while the
    Sentinels still name the dead primary. Once per loss; the rounds then leave it alone."""
    from stack import supervisor as module

    settings = ha_settings(tmp_path)
    host = settings.redis.host
    named = [(host, settings.redis.port)]
    monkeypatch.setattr(module.redis_server, "sentinel_primary", lambda s: named[0])
    alive = {101: True}

    class Primary(Redis):
        def pids(self) -> list[int]:
            return [101] if alive[101] else []

    monkeypatch.setattr(module, "components",
                        lambda s, names: [Primary(settings), RedisReplica(settings)])  # fmt: skip
    monkeypatch.setattr(module, "pid_alive", lambda pid: alive.get(pid, False))
    replies = ["Sentinel 26379: NOGOODSLAVE No suitable replica to promote",
               "Sentinel 26379 fails over to the replica"]  # fmt: skip
    forced: list[str] = []

    def force(settings: Settings) -> str:
        forced.append(settings.redis.sentinel_service)
        return replies[min(len(forced), len(replies)) - 1]

    monkeypatch.setattr(module.redis_server, "force_failover", force)
    lines: list[str] = []
    supervisor = Supervisor(settings, names=("redis", "redis-replica"), log=lines.append)
    watcher = threading.Thread(target=supervisor._watch_redis_primary, daemon=True)
    watcher.start()
    try:
        assert not wait_until(lambda: bool(forced), 0.3, 0.05)  # alive: nothing forced
        alive[101] = False
        assert wait_until(lambda: bool(lines), 10, 0.05)
    finally:
        supervisor._stop.set()
        watcher.join(10)
    assert forced == ["tickflow", "tickflow"]  # refused once, then taken
    assert lines == ["supervisor: the Redis primary (port 6379, pid 101) is gone: Sentinel 26379 "
                     "fails over to the replica"]  # fmt: skip
    # the rounds leave a watched loss to the watcher
    monkeypatch.setattr(module, "up", lambda s, names, log: None)
    rounds = Supervisor(settings, names=("redis",), log=lines.append)
    rounds._losses_watched = {"redis", "redis-replica"}
    monkeypatch.setattr(module, "components", lambda s, names: [Primary(settings)])
    monkeypatch.setattr("stack.redis_server.sentinel_primary", lambda s: named[0])
    rounds.check()
    assert forced == ["tickflow", "tickflow"]


def test_the_unregistrars_properties_keep_a_backslash() -> None:
    assert java_properties_text({"a": "x", "sasl.jaas.config": 'p="b\\\\c";'}) == (
        'a=x\nsasl.jaas.config=p="b\\\\\\\\c";\n'
    )


def test_a_broker_is_lost_when_its_process_was_alive_and_is_gone(tmp_path: Path) -> None:
    settings = ha_settings(tmp_path)
    kafka = Kafka(settings)
    kafka.home.mkdir(parents=True, exist_ok=True)
    node_process = subprocess.Popen(["sleep", "60"], cwd=kafka.home)  # one of the stack's
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process
    try:
        for node in kafka.nodes:
            kafka.node_pid_file(node).parent.mkdir(parents=True, exist_ok=True)
            kafka.node_pid_file(node).write_text(f"{node_process.pid}\n")
        alive: dict[int, bool] = {}
        assert lost_brokers(kafka, alive) == [] and alive == {1: True, 2: True, 3: True}
        kafka.node_pid_file(kafka.nodes[1]).write_text(f"{dead.pid}\n")
        assert lost_brokers(kafka, alive) == [2]
        assert lost_brokers(kafka, alive) == []  # once per loss
        kafka.node_pid_file(kafka.nodes[1]).write_text(f"{node_process.pid}\n")
        assert lost_brokers(kafka, alive) == []
        # a pid reused by a process the stack did not start is no broker of it
        kafka.node_pid_file(kafka.nodes[2]).write_text(f"{os.getpid()}\n")
        assert lost_brokers(kafka, alive) == [3]
    finally:
        node_process.kill()
        node_process.wait()


def test_the_supervisor_unregisters_a_lost_broker_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ha_settings(tmp_path)
    assert settings.kafka.unregister_lost_brokers
    asked: list[int] = []

    class Unregistrar:
        def __init__(self, settings: Settings) -> None:
            pass

        def unregister(self, node_id: int) -> str:
            asked.append(node_id)
            return f"ok {node_id}"

        def close(self) -> None:
            pass

    losses = iter([[], [3], []])
    monkeypatch.setattr("stack.supervisor.BrokerUnregistrar", Unregistrar)
    monkeypatch.setattr("stack.supervisor.lost_brokers", lambda kafka, alive: next(losses, []))
    lines: list[str] = []
    supervisor = Supervisor(settings, names=("kafka",), log=lines.append)
    watch = threading.Thread(target=supervisor._watch_brokers)
    watch.start()
    assert supervisor.watching_brokers.wait(5)
    assert wait_until(lambda: asked == [3], 5)
    supervisor._stop.set()
    watch.join(5)
    assert "supervisor: Kafka broker 3 is gone: unregistering it (ok 3)" in lines


def test_a_partial_start_waits_for_the_nodes_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker lost while another is started again is not waited for (the supervisor's round
    would hang on it until the timeout); a cluster's health still needs every node."""
    kafka = Kafka(ha_settings(tmp_path))
    everyone = [n.node_id for n in kafka.processes]
    monkeypatch.setattr(Kafka, "node_running", lambda self, node: node.node_id != 2)
    monkeypatch.setattr(Kafka, "launch_node", lambda self, node: None)
    asked: list[list[int]] = []

    def nodes_answer(self: Kafka, nodes: list[KafkaNode]) -> bool:
        asked.append([n.node_id for n in nodes])
        return True

    monkeypatch.setattr(Kafka, "nodes_answer", nodes_answer)
    assert Kafka(ha_settings(tmp_path)).launched_answer() and asked == [everyone]
    kafka.launch()
    assert kafka.launched_answer() and asked[-1] == [2]
    assert kafka.answers() and asked[-1] == everyone


def test_a_partial_zookeeper_start_waits_for_the_nodes_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the ensemble: a node lost while another is started again is not waited
    for; the ensemble's health still needs every node serving."""
    zookeeper = ZooKeeper(ha_settings(tmp_path))
    ports = {n.node_id: n.client_port for n in zookeeper.nodes}
    monkeypatch.setattr(ZooKeeper, "node_pid", lambda self, node: None if node.node_id == 2 else 1)
    monkeypatch.setattr(ZooKeeper, "launch_node", lambda self, node: None)
    serving = {ports[1]: "follower", ports[2]: "leader", ports[3]: None}  # node 3 lost meanwhile
    monkeypatch.setattr("stack.zookeeper.serving_mode", lambda port: serving[port])
    zookeeper.launch()
    assert zookeeper.launched_answer()
    assert not zookeeper.answers()
    assert not ZooKeeper(ha_settings(tmp_path)).launched_answer()  # nothing launched: every node


class _Brokers:
    """The brokers' processes as the supervisor's watch sees them: node id -> pid (None: gone)."""

    def __init__(self, settings: Settings, pids: dict[int, int | None]) -> None:
        self.nodes = Kafka(settings).nodes
        self.pids = pids

    def node_pids(self, node: KafkaNode) -> list[int]:
        pid = self.pids[node.node_id]
        return [] if pid is None else [pid]


def test_the_supervisor_fences_a_broker_refusing_connections_while_another_accepts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker cut off the network leads its partitions until its session times out, and
    every acks=all write waits on it meanwhile: once it has refused connections for
    ``fence_silent_broker_ms`` while another accepts them, it is fenced. Not one still
    starting (never accepted), not when none accepts (this machine's own trouble)."""
    from stack import supervisor as module

    settings = ha_settings(tmp_path)
    settings = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, fence_silent_broker_ms=200)
    )
    brokers: Any = _Brokers(settings, {1: 11, 2: 12, 3: 13})  # as Kafka, to the watch
    accepts = {1: True, 2: True, 3: True}
    fenced: list[int] = []

    def fence(settings: Settings, node_id: int) -> list[int]:
        fenced.append(node_id)
        pid = brokers.pids[node_id]
        brokers.pids[node_id] = None
        return [pid or 0, 99]

    ports = {n.port: n.node_id for n in brokers.nodes}
    monkeypatch.setattr(module, "port_open", lambda host, port, timeout: accepts[ports[port]])
    monkeypatch.setattr(module, "fence_node", fence)
    lines: list[str] = []
    supervisor = Supervisor(settings, names=(), log=lines.append)
    watch = lambda: supervisor._fence_silent_brokers(brokers)  # noqa: E731
    watch()
    accepts[2] = False  # cut off
    watch()
    assert fenced == []  # not for long yet
    time.sleep(0.25)
    accepts[1] = accepts[3] = False  # none accepts: nothing is fenced
    watch()
    assert fenced == []
    accepts[1] = accepts[3] = True
    watch()
    assert fenced == [2] and "Kafka broker 2 has refused connections" in lines[-1]
    assert "pids [12, 99] killed" in lines[-1]
    # started again while still cut off: it never accepted, so it is left alone
    brokers.pids[2] = 22
    time.sleep(0.25)
    watch()
    watch()
    assert fenced == [2]
    # a broker that was running before the watch began counts once it accepts
    accepts[2] = True
    watch()
    accepts[2] = False
    watch()
    time.sleep(0.25)
    watch()
    assert fenced == [2, 2]
    # and the default profile's single broker, or no limit, is never fenced
    off = Supervisor(ha_settings(tmp_path), names=())
    brokers.pids[2] = 23
    off._fence_silent_brokers(brokers)
    time.sleep(0.01)
    off._fence_silent_brokers(brokers)
    assert fenced == [2, 2]


def test_a_fenced_broker_loses_its_processes_and_the_connections_to_it(tmp_path: Path) -> None:
    """``fence_node`` kills the broker and the controller on its host, not the others, and
    resets the connections this host holds to the broker's port: a client waiting on a reply
    sees its connection fail at once."""
    from stack.kafka import fence_node

    settings = ha_settings(tmp_path)
    kafka = Kafka(settings)
    kafka.home.mkdir(parents=True, exist_ok=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # broker 2 listens here
    bootstrap = ",".join(f"127.0.0.1:{port if n.node_id == 2 else n.port}" for n in kafka.nodes)
    fenced = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, bootstrap=bootstrap)
    )
    kafka = Kafka(fenced)
    broker = kafka.nodes[1]
    processes = {}
    try:
        for node in [*kafka.nodes, *kafka_controllers(fenced)]:
            processes[node.node_id] = subprocess.Popen(["sleep", "60"], cwd=kafka.home)
            kafka.node_pid_file(node).parent.mkdir(parents=True, exist_ok=True)
            kafka.node_pid_file(node).write_text(f"{processes[node.node_id].pid}\n")
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        _server, _ = listener.accept()
        killed = fence_node(fenced, broker.node_id)
        controller = CONTROLLER_ID_BASE + broker.node_id
        assert killed == [processes[broker.node_id].pid, processes[controller].pid]
        for node_id, process in processes.items():
            if node_id in (broker.node_id, controller):
                assert process.wait(5) == -signal.SIGKILL
            else:
                assert process.poll() is None
        with pytest.raises(OSError):
            client.sendall(b"x")
            client.recv(1)
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
        listener.close()
