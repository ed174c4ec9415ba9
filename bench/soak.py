"""Soak: every exchange x N symbols for a while with faults switched on, connectors -> real Kafka,
checked against what the simulator sent on the wire.

    python -m bench.soak [--seconds 60] [--symbols 10] [--fault-every 1.5]

Counts (printed, and written to bench/results/soak.json):
- frames_sent: market-data frames the simulator handed to live connections (its send log);
- frames_in_kafka: envelopes of those frames in the raw and dead-letter topics;
- lost: sent frames missing from Kafka; duplicated: frames in Kafka more often than sent;
- gaps_injected: faults that break a book's continuity (drop, reorder, malformed on a book
  channel); gaps_flagged: those whose book the sync engines (the job's own pure logic, run
  over the Kafka topic: the compiled core, as ``jobs.offline.CoreRun`` drives it) flagged for a
  resync afterwards.
The simulator runs in-process (its send log is read directly); the connectors run in-process
with real Kafka producers. Needs Kafka: `tickflow stack up kafka`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from connectors.__main__ import CONNECTORS
from connectors.producer import KafkaSink
from jobs.offline import CoreRun
from schemas.codec import RawEnvelope, decode_envelope, encode_envelope
from simulator.faults import FrameAction
from simulator.server import SimulatorServer
from simulator.testing import pointed_at, wait_until
from stack.topics import ensure_topics
from tickflow.config import Settings, load_settings
from tickflow.generated import soak_settings
from tickflow.kafka_security import client_config

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
GAP_FAULTS = (FrameAction.DROP, FrameAction.REORDER, FrameAction.MALFORMED)
OTHER_FAULTS = (FrameAction.DUPLICATE, "disconnect", FrameAction.SILENT)
BOOK_CHANNEL = "depth"  # the simulator's channel name for book frames on every venue


@dataclasses.dataclass
class Fault:
    at_s: float
    kind: str
    exchange: str
    symbol: str | None


async def inject_faults(
    sim: SimulatorServer, settings: Settings, seconds: float, every: float, rng: random.Random
) -> list[Fault]:
    """Round-robin over books so each book gets at most one gap and can be judged alone."""
    books = [(ex, s) for ex in sim.venues for s in getattr(settings.exchanges, ex).symbols]
    rng.shuffle(books)
    faults: list[Fault] = []
    start = time.monotonic()
    await asyncio.sleep(min(3.0, seconds / 4))  # let every book sync first
    i = 0
    while time.monotonic() - start < seconds - 3.0 and i < len(books):
        exchange, symbol = books[i]
        kind: Any = (GAP_FAULTS + OTHER_FAULTS)[i % (len(GAP_FAULTS) + len(OTHER_FAULTS))]
        at = time.monotonic() - start
        if kind == "disconnect":
            sim.disconnect(exchange, abort=False)
            faults.append(Fault(at, "disconnect", exchange, None))
        elif kind is FrameAction.SILENT:
            sim.faults.add_frame_fault(kind, exchange, None, None, 1)
            faults.append(Fault(at, kind.value, exchange, None))
        else:
            channel = BOOK_CHANNEL if kind in GAP_FAULTS else None
            sim.faults.add_frame_fault(kind, exchange, symbol, channel, 1)
            faults.append(Fault(at, kind.value, exchange, symbol))
        i += 1
        await asyncio.sleep(every)
    return faults


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": f"soak-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[bytes | None, bytes]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got = 0
            while got < high - low:
                msg = consumer.poll(10)
                if msg is None:
                    raise RuntimeError(f"{topic}[{p}]: only {got} of {high - low} records read")
                if msg.error() is None:
                    out.append((msg.key(), msg.value() or b""))
                    got += 1
    finally:
        consumer.close()
    return out


def sent_frames(sim: SimulatorServer) -> Counter[bytes]:
    """Market-data frames the simulator sent on every connection, with multiplicity."""
    sent: Counter[bytes] = Counter()
    for log in sim.send_logs():
        for symbol, _channel, frame in log.frames:
            if symbol:
                sent[frame] += 1
    return sent


def flagged_books(
    envelopes: list[RawEnvelope], settings: Settings
) -> dict[tuple[str, str], list[float]]:
    """Run the job's core over the topic: the times (s) each book was flagged for a resync (a
    malformed frame is dead-lettered; the next frame of its book shows the gap)."""
    run = CoreRun(settings, bundle_frames=1)  # one frame a bundle: a request has its own time
    run.feed((encode_envelope(env), env.receive_time_ns // 1_000_000) for env in envelopes)
    flags: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in run.records.get("control", []):
        request = json.loads(record)
        flags[(request["exchange"], request["symbol"])].append(request["requested_at_ms"] / 1e3)
    return flags


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = soak_settings(load_settings(), args.symbols, args.rate)
    tag = uuid.uuid4().hex[:8]
    raw_topic, dead_topic = f"tickflow.soak.raw.{tag}", f"tickflow.soak.dead.{tag}"
    kafka = dataclasses.replace(settings.kafka, raw_topic=raw_topic, deadletter_topic=dead_topic)
    settings = dataclasses.replace(settings, kafka=kafka)
    ensure_topics(settings, extra={raw_topic: kafka.raw_partitions, dead_topic: 1})
    rng = random.Random(args.seed)

    sim = SimulatorServer(settings)
    await sim.start()
    pointed = pointed_at(settings, sim)
    exchanges = [ex for ex in sim.venues if ex in CONNECTORS]
    sinks = {ex: KafkaSink(kafka) for ex in exchanges}
    connectors = {
        ex: CONNECTORS[ex](pointed, sinks[ex], random.Random(args.seed)) for ex in exchanges
    }
    tasks = [asyncio.create_task(c.run()) for c in connectors.values()]
    wall_start = time.time()
    faults = await inject_faults(sim, pointed, args.seconds, args.fault_every, rng)
    remaining = args.seconds - (time.time() - wall_start)
    if remaining > 0:
        await asyncio.sleep(remaining)
    sim.pause()
    await wait_until(
        lambda: sim.pending_frames() == 0,
        within_s=30,
        what="simulator queues drained",
    )
    await asyncio.sleep(0.5)  # frames in flight on loopback reach the connectors
    for connector in connectors.values():
        connector.stop()
    await asyncio.gather(*tasks)
    undelivered = sum(sink.close(10) + sink.failed for sink in sinks.values())
    sent = sent_frames(sim)
    await sim.stop()

    raw = [decode_envelope(v) for _, v in read_topic(settings, raw_topic)]
    dead = [json.loads(v) for _, v in read_topic(settings, dead_topic)]
    in_kafka: Counter[bytes] = Counter(env.payload for env in raw if env.channel != "snapshot")
    in_kafka.update(base64.b64decode(d["value_b64"]) for d in dead)
    lost = sum(1 for frame in sent if frame not in in_kafka)
    duplicated = sum(max(0, in_kafka[frame] - n) for frame, n in sent.items())
    # order per key: envelopes of one connection and symbol keep their connection_seq order
    order_errors = 0
    last_seq: dict[tuple[str, str], int] = {}
    for env in raw:
        key = (env.connection_id, env.symbol)
        if env.connection_seq <= last_seq.get(key, -1):
            order_errors += 1
        last_seq[key] = env.connection_seq

    flags = flagged_books(raw, settings)
    gap_faults = [f for f in faults if f.kind in {k.value for k in GAP_FAULTS}]
    flagged = [
        f
        for f in gap_faults
        if f.symbol is not None
        and any(t >= wall_start + f.at_s - 0.5 for t in flags.get((f.exchange, f.symbol), []))
    ]
    result = {
        "seconds": args.seconds,
        "exchanges": exchanges,
        "symbols_per_exchange": args.symbols,
        "frames_sent": sum(sent.values()),
        "frames_in_kafka": sum(in_kafka[f] for f in sent),
        "envelopes_in_kafka": len(raw),
        "dead_letters": len(dead),
        "lost": lost,
        "duplicated": duplicated,
        # sent twice by a duplicate fault, produced once (Coinbase's connector drops repeats)
        "deduplicated_by_connector": sum(
            max(0, n - in_kafka[frame]) for frame, n in sent.items() if frame in in_kafka
        ),
        "out_of_order": order_errors,
        "undelivered": undelivered,
        "faults": Counter(f.kind for f in faults),
        "gaps_injected": len(gap_faults),
        "gaps_flagged": len(flagged),
        "unflagged": [dataclasses.asdict(f) for f in gap_faults if f not in flagged],
        "reconnects": {ex: c.stats.connections - 1 for ex, c in connectors.items()},
        "stale_timeouts": {ex: c.stats.stale_timeouts for ex, c in connectors.items()},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--symbols", type=int, default=10, help="per exchange")
    parser.add_argument("--fault-every", type=float, default=1.5, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=20.0, help="events/s per symbol")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key in (
        "frames_sent",
        "frames_in_kafka",
        "lost",
        "duplicated",
        "out_of_order",
        "gaps_injected",
        "gaps_flagged",
        "dead_letters",
        "faults",
        "reconnects",
    ):
        print(f"{key:>16}: {result[key]}")
    print(f"written to {args.out}")
    ok = (
        result["lost"] == 0
        and result["duplicated"] == 0
        and result["out_of_order"] == 0
        and result["gaps_flagged"] == result["gaps_injected"]
        and result["undelivered"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
