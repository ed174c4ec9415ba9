"""KafkaSink without a broker: a delivery that fails is logged and counted, never ignored."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path

import pytest

from connectors.producer import KafkaSink
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
    kafka = dataclasses.replace(settings.kafka, bootstrap=f"127.0.0.1:{unused_port()}")
    # nothing listens there: the message times out in librdkafka and reports failure
    sink = KafkaSink(kafka, topic="tickflow.test", overrides={"message.timeout.ms": 300})
    envelope = RawEnvelope(
        "BTC-USDT", "binance", "BTCUSDT", "trade", 1, "c0ffee", 0, b'{"stream":"x"}'
    )
    with caplog.at_level(logging.ERROR, logger="connectors.producer"):
        sink.send(envelope)
        remaining = sink.close(timeout_s=10)
    assert remaining == 0  # the message is no longer queued: it failed
    assert (sink.sent, sink.delivered, sink.failed) == (1, 0, 1)
    assert any("DELIVERY FAILED" in r.getMessage() for r in caplog.records)
