"""Kafka ceiling: how fast this machine's broker takes and gives raw envelopes, without Flink.

    python -m bench.kafka_ceiling [--messages 500000] [--unique 50000] [--repeats 2]

Input: ``--unique`` raw envelopes of all three exchanges generated offline by
``bench.book_pipeline.generate`` (the simulator's venues wrapped by the connectors' code),
Avro-encoded once and cycled to ``--messages`` records keyed ``exchange:symbol`` as the
connectors key them. On a unique topic with ``kafka.raw_partitions`` partitions:

1. produce: one confluent-kafka producer with the connectors' settings (idempotent,
   ``acks=all``, ``kafka.producer_max_in_flight`` requests in flight, murmur2 partitioner)
   but ``linger.ms`` ``PRODUCE_LINGER_MS`` (a bulk load): every record delivered,
   messages/s and MB/s from the first ``produce`` to the end of ``flush``; first with
   librdkafka's default of 5 requests in flight, the baseline;
2. consume: a confluent-kafka consumer in a fresh group reading the topic from the start with
   ``consume(CONSUME_BATCH)`` and nothing else per record: messages/s and MB/s from the first
   record to the last (the group join before it is reported apart) -- the ceiling any
   consumer on this machine (Flink's included) works under;
3. consume + decode: the same with ``schemas.codec.decode_envelope`` per record (a Python
   consumer that looks at every envelope).

Each consume runs ``--repeats`` times (a fresh group each) and the median is reported, with
the records read over time. The topic and the groups are deleted at the end. Results:
bench/results/kafka_ceiling.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.stats import machine, median, target_entry, write_results
from schemas.codec import decode_envelope, encode_envelope
from tickflow.config import Settings, load_settings
from tickflow.kafka_security import client_config

NAME = "kafka_ceiling"
DEFAULT_MESSAGES = 500_000
DEFAULT_UNIQUE = 50_000
DEFAULT_REPEATS = 2
PRODUCE_LINGER_MS = 20
CONSUME_BATCH = 10_000  # records per consume() call
CONSUME_POLL_S = 1.0
CONSUME_TIMEOUT_S = 300.0  # a consume that has not read everything by then failed
SERIES_EVERY_S = 0.5  # records read so far, this often (throughput over time)
TOPIC_TIMEOUT_S = 60.0
RETRIES = 3  # the shared broker may be briefly down (failure tests): rerun a phase this often
RETRY_WAIT_S = 10.0


def envelopes(settings: Settings, unique: int) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """(key, value) of ``unique`` generated envelopes; records per exchange."""
    from tickflow.generated import MIXES, book_settings, generate

    gen = generate(book_settings(settings, MIXES["all"]), MIXES["all"], unique)
    per_exchange: dict[str, int] = {}
    for env in gen.envelopes:
        per_exchange[env.exchange] = per_exchange.get(env.exchange, 0) + 1
    return [(env.kafka_key, encode_envelope(env)) for env in gen.envelopes], per_exchange


def create_topic(settings: Settings, topic: str, partitions: int) -> None:
    admin = AdminClient(client_config(settings.kafka))
    future = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
    future.result(timeout=TOPIC_TIMEOUT_S)
    deadline = time.monotonic() + TOPIC_TIMEOUT_S
    while topic not in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} not listed after {TOPIC_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def delete(settings: Settings, topic: str, groups: list[str]) -> None:
    admin = AdminClient(client_config(settings.kafka))
    futures = list(admin.delete_topics([topic], operation_timeout=30).values())
    if groups:
        futures += list(admin.delete_consumer_groups(groups, request_timeout=30).values())
    for future in futures:
        with contextlib.suppress(Exception):  # a group that never committed is not there
            future.result(timeout=60)


def produce(
    settings: Settings, topic: str, records: list[tuple[bytes, bytes]], n: int, in_flight: int
) -> dict[str, Any]:
    failed: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer({
        **client_config(settings.kafka),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": PRODUCE_LINGER_MS,
        "max.in.flight.requests.per.connection": in_flight,
        "partitioner": "murmur2_random",
    })
    size = 0
    started = time.perf_counter()
    for i in range(n):
        key, value = records[i % len(records)]
        size += len(key) + len(value)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    undelivered = producer.flush(TOPIC_TIMEOUT_S * 5)
    seconds = time.perf_counter() - started
    if undelivered or failed:
        raise RuntimeError(f"produce: {undelivered} undelivered, {len(failed)} failed {failed[:3]}")
    return {
        "messages": n,
        "bytes": size,
        "seconds": round(seconds, 3),
        "messages_per_s": round(n / seconds),
        "mb_per_s": round(size / seconds / 1e6, 2),
        "linger_ms": PRODUCE_LINGER_MS,
        "max_in_flight": in_flight,
    }


def consume(
    settings: Settings, topic: str, n: int, group: str, work: Callable[[bytes], object] | None
) -> dict[str, Any]:
    consumer = Consumer({
        **client_config(settings.kafka),
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    count = size = 0
    series: list[tuple[float, int]] = []
    subscribed = time.perf_counter()
    first = last = 0.0
    next_point = 0.0
    try:
        consumer.subscribe([topic])
        deadline = subscribed + CONSUME_TIMEOUT_S
        while count < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"consume: {count}/{n} records after {CONSUME_TIMEOUT_S} s")
            batch = consumer.consume(CONSUME_BATCH, CONSUME_POLL_S)
            if not batch:
                continue
            now = time.perf_counter()
            if not first:
                first = now
            for msg in batch:
                err = msg.error()
                if err is not None:
                    raise KafkaException(err)
                value = msg.value() or b""
                size += len(value) + len(msg.key() or b"")
                if work is not None:
                    work(value)
            count += len(batch)
            last = time.perf_counter()
            if last - first >= next_point:  # at least SERIES_EVERY_S apart
                series.append((round(last - first, 3), count))
                next_point = last - first + SERIES_EVERY_S
    finally:
        consumer.close()
    seconds = last - first
    if series[-1][1] != count:
        series.append((round(seconds, 3), count))
    return {
        "messages": count,
        "bytes": size,
        "seconds_first_to_last": round(seconds, 3),
        "group_join_s": round(first - subscribed, 3),
        "messages_per_s": round(count / seconds) if seconds else None,
        "mb_per_s": round(size / seconds / 1e6, 2) if seconds else None,
        "series": series,
    }


def retrying(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except (KafkaException, RuntimeError) as exc:
            if attempt == RETRIES:
                raise
            print(f"  {what} disturbed ({exc!r:.160}); again in {RETRY_WAIT_S:.0f} s", flush=True)
            time.sleep(RETRY_WAIT_S)
    raise AssertionError("unreachable")


def run(messages: int, unique: int, repeats: int, command: str) -> dict[str, Any]:
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    topic = f"tickflow.bench.ceiling.{tag}"
    baseline = f"{topic}.in-flight-5"
    partitions = settings.kafka.raw_partitions
    records, per_exchange = envelopes(settings, unique)
    sizes = sorted(len(v) for _, v in records)
    result: dict[str, Any] = {
        "command": command,
        "conditions": {
            "topic": topic,
            "partitions": partitions,
            "messages": messages,
            "unique_envelopes": len(records),
            "per_exchange_unique": per_exchange,
            "value_bytes": {"p50": sizes[len(sizes) // 2], "max": sizes[-1]},
            "broker": settings.kafka.bootstrap,
            "confluent_kafka": __import__("confluent_kafka").version()[0],
            "librdkafka": __import__("confluent_kafka").libversion()[0],
            "machine": machine(),
        },
    }
    groups: list[str] = []
    print(f"{len(records)} unique envelopes (p50 {sizes[len(sizes) // 2]} B); "
          f"{messages} records into {topic} ({partitions} partitions)", flush=True)
    try:
        create_topic(settings, topic, partitions)
        create_topic(settings, baseline, partitions)
        # the connectors' requests in flight, and librdkafka's default (5) as the baseline
        # (into a topic of its own): what writing each frame once across a leader change costs
        in_flight = settings.kafka.producer_max_in_flight
        for key, value, into in (("produce_in_flight_5", 5, baseline),
                                 ("produce", in_flight, topic)):  # fmt: skip
            prod = produce(settings, into, records, messages, value)
            result[key] = prod
            print(f"produce ({value} in flight): {prod['messages_per_s']:,} msg/s, "
                  f"{prod['mb_per_s']} MB/s", flush=True)  # fmt: skip
        for label, work in (("consume", None), ("consume_decode", decode_envelope)):
            runs = []
            for r in range(repeats):
                group = f"tickflow-bench-ceiling-{tag}-{label}-{r}"
                groups.append(group)
                runs.append(retrying(label, lambda g=group, w=work: consume(  # type: ignore[misc]
                    settings, topic, messages, g, w)))
                print(f"  {label} run {r + 1}: {runs[-1]['messages_per_s']:,} msg/s, "
                      f"{runs[-1]['mb_per_s']} MB/s (group join {runs[-1]['group_join_s']} s)",
                      flush=True)
            result[label] = {
                "messages_per_s_median": median([x["messages_per_s"] for x in runs]),
                "mb_per_s_median": round(median([x["mb_per_s"] for x in runs]), 2),
                "runs": runs,
            }
    finally:
        delete(settings, baseline, [])
        delete(settings, topic, groups)
    consume_rate = result["consume"]["messages_per_s_median"]
    print(f"ceiling: consume {consume_rate:,.0f} msg/s "
          f"({result['consume']['mb_per_s_median']} MB/s); with decode "
          f"{result['consume_decode']['messages_per_s_median']:,.0f} msg/s; produce "
          f"{result['produce']['messages_per_s']:,} msg/s")
    # throughput over time of the first plain consume (for the report)
    result["series"] = {
        "Kafka consume (records/s)": result["consume"]["runs"][0]["series"],
    }
    m = result["conditions"]["machine"]
    result["targets"] = {
        "kafka_consume_ceiling": target_entry(
            consume_rate, "msg/s",
            what="raw Kafka consume rate of this machine (confluent-kafka, no processing), "
                 "median of runs",
            mb_per_s=result["consume"]["mb_per_s_median"],
            consume_decode_msg_per_s=result["consume_decode"]["messages_per_s_median"],
            produce_msg_per_s=result["produce"]["messages_per_s"],
            produce_in_flight=in_flight,
            produce_msg_per_s_in_flight_5=result["produce_in_flight_5"]["messages_per_s"],
            messages=messages, partitions=partitions,
            value_bytes_p50=result["conditions"]["value_bytes"]["p50"],
            cpus=m["cpus"], load_1m=m["load_1m"],
        )
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kafka_ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--unique", type=int, default=DEFAULT_UNIQUE)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--out", type=Path, default=None)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    result = run(args.messages, args.unique, args.repeats,
                 " ".join(["python -m bench.kafka_ceiling", *raw]))
    print(f"written to {write_results(NAME, result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
