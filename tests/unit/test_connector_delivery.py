"""A frame Kafka did not take: its book is marked ``sync_lost`` ahead of its next frame and
resynced; the event loop never waits for the broker (the producer side of this is in
test_connector_producer.py, against librdkafka with no broker)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from connectors.base import Connection
from connectors.coinbase import CoinbaseConnector
from schemas.codec import RawEnvelope
from simulator.testing import wait_until
from tests.unit.test_connector_coinbase import FakeWs, ListSink, base_settings, l2

pytestmark = pytest.mark.unit


class RefusingSink(ListSink):
    """The test sink, refusing envelopes while ``full`` as KafkaSink does with a full queue:
    ``send`` returns False and the book is reported to the connector."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.connector: CoinbaseConnector | None = None

    def send(self, envelope: RawEnvelope) -> bool:
        if self.full:
            assert self.connector is not None
            self.connector.frames_lost(envelope.symbol, "kafka producer queue full")
            return False
        super().send(envelope)
        return True


def test_a_frame_not_delivered_marks_its_book_lost_before_its_next_frame_and_resyncs_it() -> None:
    async def scenario() -> None:
        sink = RefusingSink()
        connector = CoinbaseConnector(base_settings(), sink)
        sink.connector = connector
        ws = FakeWs()
        conn = Connection(ws)  # type: ignore[arg-type]  # only send() is used
        connector.connection = conn
        await connector.on_open(conn)
        await wait_until(lambda: len(ws.sent) == 3, what="initial subscriptions")
        connector.handle_frame(conn, l2(0, "BTC-USD", "snapshot"), 1)
        connector.handle_frame(conn, l2(1, "ETH-USD", "snapshot"), 2)
        sink.full = True
        connector.handle_frame(conn, l2(2, "BTC-USD"), 3)  # dropped: BTC-USD has a hole
        connector.handle_frame(conn, l2(3, "BTC-USD"), 4)  # its sync_lost cannot go either
        sink.full = False
        connector.handle_frame(conn, l2(4, "ETH-USD"), 5)  # another book: unaffected
        connector.handle_frame(conn, l2(5, "BTC-USD"), 6)
        assert [(e.symbol, e.channel, json.loads(e.payload).get("sequence_num"))
                for e in sink.envelopes] == [
            ("BTC-USD", "depth", 0), ("ETH-USD", "depth", 1), ("ETH-USD", "depth", 4),
            ("BTC-USD", "sync_lost", None), ("BTC-USD", "depth", 5),
        ]  # fmt: skip
        lost = json.loads(sink.of("BTC-USD", "sync_lost")[0].payload)
        assert lost["reason"] == "kafka delivery failed: kafka producer queue full"
        # the book is resubscribed (a fresh snapshot), the other one is not
        await wait_until(lambda: len(ws.sent) == 5, what="resubscription")
        assert [(m["type"], m["product_ids"]) for m in ws.sent[3:]] == [
            ("unsubscribe", ["BTC-USD"]), ("subscribe", ["BTC-USD"]),
        ]
        m = connector.metrics
        assert (m.delivery_failures, m.books_lost, m.delivery_resyncs) == (3, 1, 1)
        await conn.cancel_tasks()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_quiet_lost_book_is_marked_by_the_main_loop_and_waits_without_a_connection() -> None:
    async def scenario() -> None:
        sink = RefusingSink()
        connector = CoinbaseConnector(base_settings(), sink)
        sink.connector = connector
        # a delivery report for a book with no frame since, and no connection: nothing yet
        connector.frames_lost("ETH-USD", "Local: Message timed out")
        connector.flush_lost()
        assert sink.envelopes == []
        ws = FakeWs()
        conn = Connection(ws)  # type: ignore[arg-type]
        connector.connection = conn
        sink.full = True
        connector.flush_lost()  # the sink is full: still waiting
        assert sink.envelopes == []
        sink.full = False
        connector.flush_lost()
        assert [(e.symbol, e.channel) for e in sink.envelopes] == [("ETH-USD", "sync_lost")]
        reason: dict[str, Any] = json.loads(sink.envelopes[0].payload)
        assert reason["reason"] == "kafka delivery failed: Local: Message timed out"
        connector.flush_lost()  # marked once
        assert len(sink.envelopes) == 1
        await conn.cancel_tasks()

    asyncio.run(asyncio.wait_for(scenario(), 60))


class MarkerSink(ListSink):
    """The test sink with KafkaSink's ``send_marker``: a marker's acknowledgement is the
    test's to give (``ack``), as the broker's arrives later through ``poll``."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def send_marker(self, envelope: RawEnvelope, acked: Any) -> bool:
        super().send(envelope)
        self.pending.append(acked)
        return True

    def ack(self, ok: bool) -> None:
        self.pending.pop(0)(ok)


def test_a_lost_books_frames_wait_until_its_sync_lost_is_acknowledged() -> None:
    """Sent beside its marker, a frame could be delivered while the marker times out (the
    broker back between the two), and be applied as if continuous: so the book's frames wait
    for the marker's acknowledgement; a marker that fails takes them with it."""

    async def scenario() -> None:
        sink = MarkerSink()
        connector = CoinbaseConnector(base_settings(), sink)
        ws = FakeWs()
        conn = Connection(ws)  # type: ignore[arg-type]  # only send() is used
        connector.connection = conn
        await connector.on_open(conn)
        connector.handle_frame(conn, l2(0, "BTC-USD", "snapshot"), 1)
        connector.frames_lost("BTC-USD", "timed out")
        connector.handle_frame(conn, l2(1, "BTC-USD"), 2)  # the marker goes, this one waits
        connector.handle_frame(conn, l2(2, "ETH-USD", "snapshot"), 3)  # another book: goes

        def sent() -> list[tuple[str, str, Any]]:
            return [(e.symbol, e.channel, json.loads(e.payload).get("sequence_num"))
                    for e in sink.envelopes]  # fmt: skip

        assert sent() == [("BTC-USD", "depth", 0), ("BTC-USD", "sync_lost", None),
                          ("ETH-USD", "depth", 2)]  # fmt: skip
        # the marker fails (the sink reports the book lost again): the waiting frame is lost
        # too, and the next frame brings a new marker
        connector.frames_lost("BTC-USD", "timed out")
        sink.ack(False)
        connector.handle_frame(conn, l2(3, "BTC-USD"), 4)
        connector.handle_frame(conn, l2(4, "BTC-USD"), 5)
        assert sent()[3:] == [("BTC-USD", "sync_lost", None)]
        # acknowledged: the frames that waited go, in order, before any later one
        sink.ack(True)
        connector.flush_lost()
        connector.handle_frame(conn, l2(5, "BTC-USD"), 6)
        assert sent()[4:] == [("BTC-USD", "depth", 3), ("BTC-USD", "depth", 4),
                              ("BTC-USD", "depth", 5)]  # fmt: skip
        assert connector.metrics.delivery_failures == 3  # two lost frames reported, one held
        await conn.cancel_tasks()

    asyncio.run(asyncio.wait_for(scenario(), 60))
