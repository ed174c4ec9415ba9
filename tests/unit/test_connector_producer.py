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
