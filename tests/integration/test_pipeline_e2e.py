"""The first slice end to end: simulator -> connector -> Kafka -> Flink -> Redis + ClickHouse."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Producer

from connectors.producer import partition_of
from jobs.sinks.book_reader import read_all_books, read_book
from jobs.sinks.clickhouse import connect
from jobs.sinks.redis_books import EXPIRED, redis_client
from monitoring.dashboard import read_nbbos
from schemas.codec import RawEnvelope, encode_envelope
from stack import flink
from tickflow.config import Settings
from tickflow.kafka_security import client_config
from tickflow.slice import (
    Slice,
    clickhouse_trades,
    consume_all,
    sim_get,
    sim_post,
    start_slice,
    wait_for,
)

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


def poison_frames(seq: int, now_ms: int) -> list[tuple[str, bytes, bytes, str]]:
    """Issue 16's reproducers as the connectors would have sent them: (what, Kafka value,
    the bytes its dead letter must carry, a reason the letter must give). Depth frames
    continue the live BTCUSDT book from update ``seq``: rejected whole, they leave no hole."""

    def value(exchange: str, symbol: str, channel: str, instrument: str, payload: str) -> bytes:
        return encode_envelope(
            RawEnvelope(
                instrument, exchange, symbol, channel, now_ms * 10**6, "poison", 0,
                payload.encode(),
            )
        )  # fmt: skip

    def depth(bids: str, first: int = seq + 1, last: int = seq + 1, event_ms: int = now_ms) -> str:
        return (
            f'{{"e":"depthUpdate","E":{event_ms},"s":"BTCUSDT","U":{first},"u":{last},'
            f'"b":{bids},"a":[]}}'
        )

    def trade(t: int, price: str = "60000.01", qty: str = "0.5") -> str:
        return (
            f'{{"e":"trade","E":{now_ms},"s":"BTCUSDT","t":{10**15 + abs(t) % 10**6},'
            f'"p":"{price}","q":"{qty}","T":{t},"m":true,"M":true}}'
        )

    day_ms = 86_400_000
    frames: list[tuple[str, str, str, str, str, str, str]] = [
        # (what, exchange, symbol, channel, instrument, payload, reason)
        ("NaN price", "binance", "BTCUSDT", "depth", "BTC-USDT", depth('[["NaN","1"]]'),
         "bad decimal"),
        ("sNaN price", "binance", "BTCUSDT", "depth", "BTC-USDT", depth('[["sNaN","1"]]'),
         "bad decimal"),
        ("price 1e999999999", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth('[["1e999999999","1"]]'), "bad decimal"),
        ("negative size", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth('[["60000","-1"]]'), "is negative"),
        ("size with a space", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth('[["60000"," 1"]]'), "bad decimal"),
        ("full-width digits", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth('[["60000","\uff11\uff12"]]'), "bad decimal"),
        ("price 0", "binance", "BTCUSDT", "depth", "BTC-USDT", depth('[["0","1"]]'),
         "is not > 0"),
        ("price wider than Decimal(38, 18)", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth('[["123456789012345678901","1"]]'), "does not fit Decimal(38, 18)"),
        ("u = 2**63", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth("[]", last=2**63), "does not fit 64 bits"),
        ("event time a day ahead", "binance", "BTCUSDT", "depth", "BTC-USDT",
         depth('[["60000","1"]]', event_ms=now_ms + day_ms), "after the receive time"),
        ("trade time 10**17", "binance", "BTCUSDT", "trade", "BTC-USDT", trade(10**17),
         "outside 1970..2149"),
        ("trade time -1", "binance", "BTCUSDT", "trade", "BTC-USDT", trade(-1),
         "outside 1970..2149"),
        ("coinbase trade before 1970", "coinbase", "BTC-USD", "trade", "BTC-USD",
         '{"channel":"market_trades","timestamp":"2026-01-01T00:00:00Z","sequence_num":2,'
         '"events":[{"type":"update","trades":[{"trade_id":"1","product_id":"BTC-USD",'
         '"price":"100.5","size":"1","side":"BUY","time":"1969-12-31T23:59:59Z"}]}]}',
         "outside 1970..2149"),
        ("kraken qty 1e-999999999", "kraken", "BTC/USD", "depth", "BTC-USD",
         '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":'
         '[{"price":45283.4,"qty":1e-999999999}],"asks":[],"checksum":1,'
         '"timestamp":"2026-01-01T00:00:00Z"}]}', "kraken"),
    ]  # fmt: skip
    poisons = [
        (what, value(exchange, symbol, channel, instrument, payload), payload.encode(), reason)
        for what, exchange, symbol, channel, instrument, payload, reason in frames
    ]
    # an instrument that is not UTF-8: keyed as unreadable in the JVM, the whole value kept
    good = value("binance", "BTCUSDT", "depth", "BTC-USDT", depth("[]"))
    assert good[1:9] == b"BTC-USDT"
    unreadable = good[:1] + b"\xff" + good[2:]
    poisons.append(("instrument not UTF-8", unreadable, unreadable, "invalid UTF-8"))
    return poisons


def test_poison_frames_are_dead_letters_and_the_job_never_restarts(
    running_slice: Slice,
) -> None:
    """Each poison frame of issue 16, written into the raw topic of the running job: each lands
    in the dead letters with its reason and its exact bytes, the job never fails or restarts,
    and the books go on to equal the truth."""
    settings = running_slice.settings
    sim_post(settings, "resume")
    for symbol in SYMBOLS:
        wait_for(
            f"{symbol} LIVE in Redis",
            lambda s=symbol: (b := read_book(settings.redis, "binance", s)) and b.status == "LIVE",
            120,
        )
    # a quiet moment, so that the depth poisons continue the book exactly where it is
    sim_post(settings, "pause")
    seq = sim_get(settings, "binance/book?symbol=BTCUSDT")["lastUpdateId"]
    wait_for(
        f"BTCUSDT at update {seq}",
        lambda: (b := read_book(settings.redis, "binance", "BTCUSDT")) and b.seq == seq,
        60,
    )
    letters_before = len(consume_all(settings, settings.kafka.deadletter_topic))
    poisons = poison_frames(seq, int(time.time() * 1000))
    producer = Producer(client_config(settings.kafka))
    partition = partition_of("BTC-USDT", settings.kafka.raw_partitions)
    for _, value, _, _ in poisons:
        # as the connector would send them: the BTC-USDT partition, the book's key
        producer.produce(
            settings.kafka.raw_topic, value=value, key=b"binance:BTCUSDT", partition=partition
        )
    assert producer.flush(30) == 0

    def letters() -> list[dict[str, Any]] | None:
        values = consume_all(settings, settings.kafka.deadletter_topic)[letters_before:]
        found = [json.loads(v) for v in values]
        return found if len(found) >= len(poisons) else None

    found = wait_for("a dead letter for every poison frame", letters, 90)
    by_bytes = {base64.b64decode(letter["value_b64"]): letter for letter in found}
    for what, _, carried, reason in poisons:
        letter = by_bytes.get(carried)
        assert letter is not None, f"{what}: no dead letter carries its bytes"
        assert letter["stage"] == "job", (what, letter)
        assert reason in letter["error"], (what, letter["error"])

    # the market goes on: the books take the next real updates and end equal to the truth
    sim_post(settings, "resume")
    time.sleep(3)
    sim_post(settings, "pause")
    top_n = settings.book.top_n
    for symbol in SYMBOLS:
        truth = sim_get(settings, f"binance/book?symbol={symbol}")
        book = wait_for(
            f"{symbol} at the simulator's last update",
            lambda s=symbol, w=truth["lastUpdateId"]: (
                b if (b := read_book(settings.redis, "binance", s)) and b.seq == w else None
            ),
            60,
        )
        assert book.status == "LIVE"
        assert book.bids == [tuple(level) for level in truth["bids"][:top_n]]
        assert book.asks == [tuple(level) for level in truth["asks"][:top_n]]
    # and the job never failed: no restart, nothing in its exception history
    assert flink.job_state(settings, running_slice.job_id) == "RUNNING"
    assert flink.job_restarts(settings, running_slice.job_id) == 0
    history = flink.rest(settings, "GET", f"/jobs/{running_slice.job_id}/exceptions")
    assert history["exceptionHistory"]["entries"] == []


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
