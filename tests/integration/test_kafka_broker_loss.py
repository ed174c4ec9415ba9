"""Kafka high availability (the HA profile): three brokers and three KRaft controllers in
processes of their own, every topic replicated three times with two in sync required
(acks=all). A broker, then the quorum's leading controller, is killed (SIGKILL) while the
connectors' producer sends raw frames: every frame arrives once, each book's frames in
order, none fails delivery.

The cluster is the test's own (its own ports and state directory, credentials generated
there as ``stack up`` does), so the stack's single broker is not disturbed."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.producer import KafkaSink
from schemas.codec import RawEnvelope, decode_envelope
from stack import manager
from stack.kafka import Kafka, active_controller, kill_controller, kill_node, partition_leader
from stack.supervisor import Supervisor
from stack.system import wait_until
from tests.own_components import own_components
from tickflow.config import Settings
from tickflow.kafka_security import client_config
from tickflow.slice import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKERS = ("127.0.0.1:19092", "127.0.0.1:19094", "127.0.0.1:19096")
BOOKS = [("binance", f"{base}USDT", f"{base}-USDT") for base in ("BTC", "ETH", "SOL", "XRP")]
FRAMES_PER_BOOK = 1500
SEND_INTERVAL_S = 0.002


@pytest.fixture(scope="module")
def kafka_cluster(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    environ = {
        "TICKFLOW__STATE_DIR": str(tmp_path_factory.mktemp("kafka-ha")),
        "TICKFLOW__KAFKA__BOOTSTRAP": ",".join(BROKERS),
        "TICKFLOW__KAFKA__CONTROLLER_PORT": "19093",
        "TICKFLOW__KAFKA__REPLICATION_FACTOR": "3",
        "TICKFLOW__KAFKA__MIN_INSYNC_REPLICAS": "2",
        # the broker may take a while to hand over its partitions on a loaded machine
        "TICKFLOW__KAFKA__DELIVERY_TIMEOUT_MS": "120000",
    }
    with own_components(environ, ["kafka"]) as settings:
        yield settings


def send_killing(settings: Settings, topic: str, kill: Callable[[], object]) -> None:
    """Send every book's frames to ``topic``, calling ``kill`` a third of the way; then assert
    that each arrived once, in order, and none failed."""
    sink = KafkaSink(settings.kafka, topic=topic)
    lost: list[tuple[str, str]] = []
    sink.on_lost = lambda symbol, reason: lost.append((symbol, reason))
    killed_at = FRAMES_PER_BOOK // 3
    for seq in range(FRAMES_PER_BOOK):
        if seq == killed_at:
            kill()
        for exchange, symbol, instrument in BOOKS:
            sink.send(RawEnvelope(instrument, exchange, symbol, "depth", time.time_ns(),
                                  f"conn-{symbol}", seq, b'{"seq": %d}' % seq))  # fmt: skip
        time.sleep(SEND_INTERVAL_S)
    assert sink.flush(120) == 0, "frames still queued after two minutes"
    assert sink.failed == 0 and sink.dropped == 0 and not lost, (sink.failed, lost)
    assert sink.delivered == FRAMES_PER_BOOK * len(BOOKS)
    seqs: dict[str, list[int]] = defaultdict(list)
    for _key, value in read_topic(settings, topic):
        envelope = decode_envelope(value)
        seqs[envelope.symbol].append(envelope.connection_seq)
    # every frame once, each book's in the order sent
    assert {s: v for s, v in seqs.items()} == {
        symbol: list(range(FRAMES_PER_BOOK)) for _, symbol, _ in BOOKS
    }


def test_a_killed_broker_loses_no_frame_and_reorders_none(kafka_cluster: Settings) -> None:
    settings = kafka_cluster
    kafka = Kafka(settings)
    assert len(kafka.nodes) == 3 and kafka.process_count == 6
    victim = partition_leader(settings, settings.kafka.raw_topic)
    send_killing(settings, settings.kafka.raw_topic, lambda: kill_node(settings, victim))
    print(f"broker {victim} (the raw partition's leader) killed a third of the way")


def test_the_cluster_answers_with_a_broker_down(kafka_cluster: Settings) -> None:
    """A cluster short of a broker still serves topics (two in sync of three): the stack sees
    it as not fully up, and starting it again brings the broker back."""
    kafka = Kafka(kafka_cluster)
    live = kafka.pids()
    if len(live) < kafka.process_count:  # the test above left one down
        assert not kafka.answers()
        manager.up(kafka_cluster, ["kafka"])
    assert len(kafka.pids()) == kafka.process_count and kafka.answers()
    assert Path(kafka.node_pid_file(kafka.nodes[2])).exists()


def test_a_lost_broker_is_unregistered_and_comes_back(kafka_cluster: Settings) -> None:
    """With ``kafka.unregister_lost_brokers`` the supervisor unregisters a killed broker as
    soon as its process is gone (the controllers move its partitions without waiting out its
    session), then starts it again after ``kafka.replacement_delay_ms``: no frame is lost or
    reordered, and the broker registers again and rejoins every in-sync replica set.

    Another broker is lost first, so the leader dies while the supervisor starts that one
    again: the start waits for the broker it started only, and the next round starts the
    leader."""
    settings = dataclasses.replace(
        kafka_cluster,
        kafka=dataclasses.replace(
            kafka_cluster.kafka, unregister_lost_brokers=True, replacement_delay_ms=3000
        ),
    )
    manager.up(settings, ["kafka"])  # whole, whatever the tests before left
    topic = f"{settings.kafka.raw_topic}.unregistered"
    admin = AdminClient(client_config(settings.kafka))
    admin.create_topics([NewTopic(topic, 4, 3)])[topic].result(30)
    victim = partition_leader(settings, topic)
    first = next(n.node_id for n in Kafka(settings).nodes if n.node_id != victim)
    kill_node(settings, first)
    supervisor = Supervisor(settings, names=("kafka",)).start()
    try:
        assert supervisor.watching_brokers.wait(120), supervisor.errors
        send_killing(settings, topic, lambda: kill_node(settings, victim))
        assert any(
            a.what == f"Kafka broker {victim} is gone: unregistering it (ok {victim})"
            for a in supervisor.actions
        ), [a.what for a in supervisor.actions]

        def rejoined() -> bool:
            metadata = admin.list_topics(topic, timeout=10)
            partitions = metadata.topics[topic].partitions.values()
            back = {victim, first}
            return back <= set(metadata.brokers) and all(back <= set(p.isrs) for p in partitions)

        assert wait_until(rejoined, 120), "the brokers did not register again"
        assert not supervisor.errors
    finally:
        supervisor.stop()
    assert len(Kafka(settings).pids()) == 6


def test_the_leading_controllers_loss_stops_no_write(kafka_cluster: Settings) -> None:
    """The controllers are processes of their own: killing the quorum's leader leaves every
    broker serving while the other two elect one, and no frame is lost or reordered."""
    settings = kafka_cluster
    # a topic of its own: the raw topic already holds the frames of the test above
    topic = f"{settings.kafka.raw_topic}.controller-loss"
    admin = AdminClient(client_config(settings.kafka))
    admin.create_topics([NewTopic(topic, 4, 3)])[topic].result(30)
    killed: list[int] = []
    send_killing(settings, topic, lambda: killed.append(kill_controller(settings)[0]))
    # the others elected one of themselves
    assert killed and wait_until(lambda: active_controller(settings) != killed[0], 30)
    manager.up(settings, ["kafka"])
    assert len(Kafka(settings).pids()) == 6
