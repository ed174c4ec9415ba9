"""KafkaSink without a broker: a delivery that fails is logged and counted, never ignored."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path

import pytest

from connectors.producer import KafkaSink, murmur2, partition_of
from schemas.codec import RawEnvelope
from tickflow.config import load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_delivery_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(environ={})
    kafka = dataclasses.replace(
        settings.kafka, bootstrap=f"127.0.0.1:{unused_port()}", security_protocol="PLAINTEXT"
    )
    # nothing listens there: the message times out in librdkafka and reports failure
    sink = KafkaSink(
        kafka, topic="tickflow.test", overrides={"message.timeout.ms": 300}, partitions=1
    )
    envelope = RawEnvelope(
        "BTC-USDT", "binance", "BTCUSDT", "trade", 1, "c0ffee", 0, b'{"stream":"x"}'
    )
    with caplog.at_level(logging.ERROR, logger="connectors.producer"):
        sink.send(envelope)
        remaining = sink.close(timeout_s=10)
    assert remaining == 0  # the message is no longer queued: it failed
    assert (sink.sent, sink.delivered, sink.failed) == (1, 0, 1)
    assert any("DELIVERY FAILED" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest.testMurmur2
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_an_instruments_frames_share_a_partition_whatever_the_exchange() -> None:
    assert partition_of("BTC-USD", 4) == (murmur2(b"BTC-USD") & 0x7FFFFFFF) % 4
    spread = {partition_of(f"COIN{i}-USD", 4) for i in range(40)}
    assert spread == {0, 1, 2, 3}


def unreachable(queue_max: int = 100_000, delivery_timeout_ms: int = 600_000) -> KafkaSink:
    """A sink whose broker nobody listens on: nothing is ever delivered."""
    settings = load_settings(environ={})
    kafka = dataclasses.replace(
        settings.kafka,
        bootstrap=f"127.0.0.1:{unused_port()}",
        security_protocol="PLAINTEXT",  # no broker, no credentials: the queue alone matters
        producer_queue_max_messages=queue_max,
        delivery_timeout_ms=delivery_timeout_ms,
    )
    return KafkaSink(kafka, topic="tickflow.test", partitions=1)


def frame(symbol: str, n: int = 0) -> RawEnvelope:
    return RawEnvelope(
        "BTC-USDT", "binance", symbol, "depth", 1 + n, "c0ffee", n, b'{"stream":"x"}'
    )


def test_a_full_queue_drops_the_frame_and_reports_its_book_without_waiting() -> None:
    # the delivery timeout is far away: only the queue bound can refuse frames
    sink = unreachable(queue_max=3)
    lost: list[tuple[str, str]] = []
    sink.on_lost = lambda symbol, reason: lost.append((symbol, reason))
    accepted = [sink.send(frame("BTCUSDT" if i % 2 else "ETHUSDT", i)) for i in range(10)]
    # send() returned for every frame (the old producer spun poll(0.1) here until the broker
    # came back, i.e. forever)
    assert accepted == [True] * 3 + [False] * 7
    assert (sink.sent, sink.dropped) == (3, 7)
    assert {symbol for symbol, _ in lost} == {"BTCUSDT", "ETHUSDT"}
    assert all(reason == "kafka producer queue full" for _, reason in lost)
    assert len(lost) == 7
    assert sink.close(timeout_s=0.5) == 3  # still queued: counted as failed at shutdown


def test_a_timed_out_delivery_reports_its_book_and_purges_the_frames_queued_behind_it() -> None:
    sink = unreachable(delivery_timeout_ms=500)
    lost: list[tuple[str, str]] = []

    def on_lost(symbol: str, reason: str) -> None:
        lost.append((symbol, reason))
        if symbol == "BTCUSDT":
            # queued after the frame that timed out, its own timeout far ahead: the purge
            # that follows the timeout takes it out of the queue at once
            assert sink.send(frame("ETHUSDT", 1))

    sink.on_lost = on_lost
    assert sink.send(frame("BTCUSDT"))
    for _ in range(200):  # each poll waits at most 0.1 s for a report
        if len(lost) >= 2:
            break
        sink.poll(0.1)
    assert lost[0][0] == "BTCUSDT"
    assert "timed out" in lost[0][1].lower(), lost
    assert lost[1] == ("ETHUSDT", "purged after a delivery timeout")
    assert (sink.failed, sink.purged) == (2, 1)
    assert sink.flush(1.0) == 0
