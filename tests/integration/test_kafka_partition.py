"""A Kafka broker cut off the network (not killed): three KRaft nodes, each a host of its own
(a network namespace on a bridge, ``stack.netns``), replicated three times with two in sync
required. The raw partition's leader is cut off while the connectors' producer sends: its
connections are not closed, they go silent. The producer gives up on it after
``kafka.request_timeout_ms`` and finds the new leader (``kafka.metadata_max_age_ms``), so
frames are acknowledged again before the node comes back; once it does it rejoins, and every
frame arrives once, each book's in order.

The cluster is the test's own (its own ports, addresses, namespaces and state directory).
Needs root for the namespaces (CI runs as root)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest

from connectors.producer import KafkaSink
from schemas.codec import RawEnvelope, decode_envelope
from stack import netns
from stack.kafka import Kafka, node_net_host, partition_leader
from stack.supervisor import Supervisor
from tests.own_components import own_components
from tickflow.config import Settings
from tickflow.slice import read_topic

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

GATEWAY = "10.78.0.1/24"  # not config/netns.yaml's subnet: both may run at once
BROKERS = ("10.78.0.11:19292", "10.78.0.12:19294", "10.78.0.13:19296")
BOOKS = [("binance", f"{base}USDT", f"{base}-USDT") for base in ("BTC", "ETH", "SOL")]
SEND_INTERVAL_S = 0.01
BEFORE_S, CUT_S, AFTER_S = 3.0, 20.0, 3.0
# a fenced node is killed and unregistered within a few seconds of the cut
FENCED_CUT_S, FENCE_WAIT_S = 12.0, 8.0


@pytest.fixture(scope="module")
def kafka_cluster(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    environ = {
        "TICKFLOW__STATE_DIR": str(tmp_path_factory.mktemp("kafka-netns")),
        "TICKFLOW__KAFKA__BOOTSTRAP": ",".join(BROKERS),
        "TICKFLOW__KAFKA__CONTROLLER_PORT": "19293",
        "TICKFLOW__KAFKA__NODE_NETWORK": GATEWAY,
        "TICKFLOW__KAFKA__REPLICATION_FACTOR": "3",
        "TICKFLOW__KAFKA__MIN_INSYNC_REPLICAS": "2",
        # the HA profile's clients (config/ha.yaml)
        "TICKFLOW__KAFKA__REQUEST_TIMEOUT_MS": "2500",
        "TICKFLOW__KAFKA__METADATA_MAX_AGE_MS": "1000",
        "TICKFLOW__KAFKA__DELIVERY_TIMEOUT_MS": "120000",
    }
    with own_components(environ, ["kafka"]) as settings:
        yield settings
    hosts = [node_net_host(settings, n.node_id) for n in Kafka(settings).nodes]
    assert not any(h.namespace in netns.namespaces() for h in hosts)


def _send_through_a_cut(
    settings: Settings,
    victim: netns.NetHost,
    cut_s: float,
    fenced: Callable[[], bool] | None = None,
) -> None:
    """Send frames of every book every 10 ms while ``victim`` is cut off for ``cut_s``, then
    check: nothing lost or failed, frames acknowledged while it was still cut off, every frame
    once, each book's in order, and the node back in the cluster. ``fenced`` is asked once the
    node has been cut off for ``FENCE_WAIT_S``."""
    sink = KafkaSink(settings.kafka)
    lost: list[tuple[str, str]] = []
    sink.on_lost = lambda symbol, reason: lost.append((symbol, reason))
    seq = 0
    delivered_at_cut = delivered_before_heal = 0
    started = time.monotonic()
    cut = healed = asked = False
    try:
        while (elapsed := time.monotonic() - started) < BEFORE_S + cut_s + AFTER_S:
            if not cut and elapsed >= BEFORE_S:
                netns.partition(victim)
                assert netns.partitioned(victim)
                cut, delivered_at_cut = True, sink.delivered
            if fenced and cut and not asked and elapsed >= BEFORE_S + FENCE_WAIT_S:
                assert fenced(), "the node cut off was not fenced"
                asked = True
            if cut and not healed and elapsed >= BEFORE_S + cut_s:
                delivered_before_heal = sink.delivered
                netns.heal(victim)
                healed = True
            for exchange, symbol, instrument in BOOKS:
                sink.send(RawEnvelope(instrument, exchange, symbol, "depth", time.time_ns(),
                                      f"conn-{symbol}", seq, b'{"seq": %d}' % seq))  # fmt: skip
            seq += 1
            time.sleep(SEND_INTERVAL_S)
    finally:
        netns.heal(victim)
    assert sink.flush(120) == 0, "frames still queued after two minutes"
    assert sink.failed == 0 and sink.dropped == 0 and not lost, (sink.failed, lost)
    assert sink.delivered == seq * len(BOOKS)
    # the producer left the silent node for the new leader: frames were acknowledged while it
    # was still cut off
    assert delivered_before_heal > delivered_at_cut, (delivered_at_cut, delivered_before_heal)
    seqs: dict[str, list[int]] = defaultdict(list)
    for _key, value in read_topic(settings, settings.kafka.raw_topic):
        envelope = decode_envelope(value)
        seqs[envelope.symbol].append(envelope.connection_seq)
    # every frame once, each book's in the order sent (the topic holds every test's frames)
    for _, symbol, _ in BOOKS:
        assert seqs[symbol][-seq:] == list(range(seq)), symbol
    # the node came back and rejoined
    kafka = Kafka(settings)
    deadline = time.monotonic() + 120
    while not kafka.answers():
        assert time.monotonic() < deadline, "the cut-off node did not rejoin"
        time.sleep(1)
    print(f"node at {victim.address} cut off for {cut_s:.0f} s: {delivered_at_cut} frames "
          f"acknowledged before, {delivered_before_heal - delivered_at_cut} during")  # fmt: skip


def test_a_broker_cut_off_loses_no_frame_and_is_left_before_it_returns(
    kafka_cluster: Settings,
) -> None:
    settings = kafka_cluster
    victim = node_net_host(settings, partition_leader(settings, settings.kafka.raw_topic))
    _send_through_a_cut(settings, victim, CUT_S)


def test_the_supervisor_fences_a_broker_cut_off_and_it_rejoins_once_healed(
    kafka_cluster: Settings,
) -> None:
    """With the HA profile's supervisor: the leader cut off refuses connections while the
    others accept them, so it is fenced (its processes killed, with its host's controller) and
    unregistered while still cut off; no frame is lost, and the node the supervisor starts
    again joins once the link is back."""
    settings = dataclasses.replace(
        kafka_cluster,
        kafka=dataclasses.replace(
            kafka_cluster.kafka,
            fence_silent_broker_ms=500,
            unregister_lost_brokers=True,
            # started again while still cut off: it registers once the link is back
            replacement_delay_ms=2000,
        ),
    )
    node_id = partition_leader(settings, settings.kafka.raw_topic)
    victim = node_net_host(settings, node_id)
    supervisor = Supervisor(settings, names=("kafka",)).start()
    try:
        assert supervisor.watching_brokers.wait(60), supervisor.errors

        def fenced() -> bool:
            done = " | ".join(a.what for a in supervisor.actions)
            return (
                f"Kafka broker {node_id} has refused connections" in done
                and f"Kafka broker {node_id} is gone: unregistering it (ok" in done
            )

        _send_through_a_cut(settings, victim, FENCED_CUT_S, fenced)
    finally:
        supervisor.stop()
