"""The first slice end to end: simulator -> connector -> Kafka -> Flink -> Redis + ClickHouse."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from bench.slice import (
    Slice,
    clickhouse_trades,
    consume_all,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)
from jobs.sinks.book_reader import read_all_books, read_book
from jobs.sinks.clickhouse import connect
from jobs.sinks.redis_books import EXPIRED, redis_client
from monitoring.dashboard import read_nbbos
from stack import flink
from tickflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture(scope="module")
def running_slice(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Slice]:
    with start_slice(tmp_path_factory.mktemp("e2e")) as running:
        yield running


def test_books_and_trades_match_the_simulator(running_slice: Slice) -> None:
    settings = running_slice.settings
    # live first: books LIVE in Redis and trades arriving in ClickHouse while traffic flows
    for symbol in SYMBOLS:
        wait_for(
            f"{symbol} LIVE in Redis",
            lambda s=symbol: (
                (b := read_book(settings.redis, "binance", s)) is not None
                and b.status == "LIVE"
                and b.bids
                and b.asks
            ),
            180,
        )
    wait_for("trades in ClickHouse", lambda: len(clickhouse_trades(settings)) > 0, 60)

    # quiescent point: stop generating, let everything drain, compare with the truth
    sim_post(settings, "pause")
    truth = {s: sim_get(settings, f"binance/book?symbol={s}") for s in SYMBOLS}
    top_n = settings.book.top_n
    for symbol in SYMBOLS:
        want_seq = truth[symbol]["lastUpdateId"]
        book = wait_for(
            f"{symbol} at update {want_seq} in Redis",
            lambda s=symbol, w=want_seq: (
                b if (b := read_book(settings.redis, "binance", s)) and b.seq == w else None
            ),
            60,
        )
        assert book.status == "LIVE"
        assert book.bids == [tuple(level) for level in truth[symbol]["bids"][:top_n]]
        assert book.asks == [tuple(level) for level in truth[symbol]["asks"][:top_n]]

    emitted = sorted(
        (
            s,
            str(t["id"]),
            Decimal(t["price"]),
            Decimal(t["qty"]),
            "sell" if t["is_buyer_maker"] else "buy",
        )
        for s in SYMBOLS
        for t in sim_get(settings, f"binance/trades?symbol={s}")["trades"]
    )
    assert emitted, "the simulator emitted no trades"
    wait_for(
        "every emitted trade in ClickHouse",
        lambda: len(clickhouse_trades(settings)) >= len(emitted),
        60,
    )
    stored = clickhouse_trades(settings)
    missing, extra = sorted(set(emitted) - set(stored)), sorted(set(stored) - set(emitted))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    assert sorted(stored) == emitted
    # fault-free run: no duplicates even before ReplacingMergeTree collapses anything
    assert len(clickhouse_trades(settings, final=False)) == len(emitted)

    # the job is visible on the cluster's REST API
    jobs = {j["jid"]: j["state"] for j in flink.list_jobs(settings)}
    assert jobs[running_slice.job_id] == "RUNNING"

    # periodic book snapshots were stored with exact decimals
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    rows = client.execute(
        f"SELECT symbol, count(), max(length(bid_prices)) FROM {db}.book_snapshots FINAL "
        "GROUP BY symbol ORDER BY symbol"
    )
    assert [r[0] for r in rows] == sorted(SYMBOLS)
    assert all(count >= 1 and depth == top_n for _, count, depth in rows)
    # top-of-book history: the last LIVE row of each symbol is the true touch
    for symbol in SYMBOLS:
        bid, ask = truth[symbol]["bids"][0], truth[symbol]["asks"][0]
        want = [tuple(Decimal(x) for x in (*bid, *ask))]
        # each table is flushed on its own: the touches may land after the trades
        wait_for(f"{symbol}: last LIVE touch stored", lambda s=symbol, w=want: client.execute(
            f"SELECT bid_price, bid_size, ask_price, ask_size FROM {db}.top_of_book FINAL "
            f"WHERE symbol = '{s}' AND status = 'LIVE' ORDER BY version DESC LIMIT 1"
        ) == w, 30)  # fmt: skip


def test_gap_is_resynced_through_the_control_topic_and_bad_frames_are_dead_lettered(
    running_slice: Slice,
) -> None:
    settings = running_slice.settings
    sim_post(settings, "resume")
    # a lost depth event: the job sees U > local + 1, asks for a snapshot, the connector fetches it
    sim_post(settings, "faults/drop?exchange=binance&symbol=BTCUSDT&channel=depth&count=1")
    # a frame cut in half: routed by its stream name, rejected by the job's parser
    sim_post(settings, "faults/malformed?exchange=binance&symbol=ETHUSDT&channel=trade&count=1")

    def resync_requests() -> list[dict[str, Any]]:
        records = [json.loads(v) for v in consume_all(settings, settings.kafka.control_topic)]
        return [
            r
            for r in records
            if r["type"] == "resync" and r["symbol"] == "BTCUSDT" and r["reason"].startswith("gap")
        ]

    request = wait_for("a resync request on the control topic", resync_requests, 60)[0]
    assert request["exchange"] == "binance"
    dead = wait_for(
        "the malformed frame in the dead-letter topic",
        lambda: [json.loads(v) for v in consume_all(settings, settings.kafka.deadletter_topic)],
        60,
    )
    assert dead[0]["stage"] == "job" and dead[0]["symbol"] == "ETHUSDT"
    assert dead[0]["channel"] == "trade" and "cannot parse" in dead[0]["error"]

    # quiescent again: the resynced book equals the truth
    sim_post(settings, "pause")
    truth = sim_get(settings, "binance/book?symbol=BTCUSDT")
    book = wait_for(
        "BTCUSDT resynced to the simulator's last update",
        lambda: (
            b
            if (b := read_book(settings.redis, "binance", "BTCUSDT"))
            and b.status == "LIVE"
            and b.seq == truth["lastUpdateId"]
            else None
        ),
        60,
    )
    top_n = settings.book.top_n
    assert book.bids == [tuple(level) for level in truth["bids"][:top_n]]
    assert book.asks == [tuple(level) for level in truth["asks"][:top_n]]


def test_a_stopped_job_leaves_every_book_and_nbbo_reading_expired_within_its_lease(
    running_slice: Slice,
) -> None:
    """Runs last in this module: it stops the slice's job. A reader of Redis must be able to
    tell a dead pipeline from a quiet market, from Redis alone, within the lease."""
    settings = running_slice.settings
    sim_post(settings, "resume")
    client = redis_client(settings.redis, decode_responses=True)
    lease_ms = settings.redis.live_lease_ms
    assert lease_ms > 0
    wait_for(
        "every book LIVE and every NBBO live under a lease",
        lambda: (
            (books := read_all_books(settings.redis))
            and all(b.status == "LIVE" for b in books)
            and all(n["live"] for n in read_nbbos(client, settings.redis.key_prefix))
        ),
        120,
    )
    flink.cancel_job(settings, running_slice.job_id)
    stopped = time.monotonic()
    wait_for(
        "every book EXPIRED and every NBBO not live",
        lambda: (
            all(b.status == EXPIRED for b in read_all_books(settings.redis))
            and not any(n["live"] for n in read_nbbos(client, settings.redis.key_prefix))
        ),
        lease_ms / 1000 + 10,
    )
    # a lease is renewed every fifth of it, so it ends at most a lease after the last renewal
    assert time.monotonic() - stopped <= lease_ms / 1000 + 2
    assert read_nbbos(client, settings.redis.key_prefix), "the NBBOs were listed all along"
