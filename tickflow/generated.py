"""A deterministic market generated offline: the simulator's venues render each market step
for a subscribed connection, and the connectors' own ``dispatch``/``emit`` wrap every frame into
the exact raw envelopes they would produce (a REST snapshot envelope first for Binance, in-band
snapshots for Coinbase and Kraken). No sockets, no servers: the same seed-free inputs give the
same envelopes, so two runs of the pipeline over them must give the same outputs.

Used by the tests (books, backfill, scale-out and replay equal to a reference run) and by the
benchmarks and drills in ``bench/``: ``generate`` for envelopes, ``make_dataset`` for them
encoded as Kafka records, ``Feeder`` to produce those into a raw topic as the connectors do.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from connectors.__main__ import CONNECTORS
from connectors.base import Connection, Sink, WsConnector
from connectors.coinbase import SUBSCRIBED, CoinbaseConnector, subscribe_message
from connectors.kraken import KrakenConnector
from connectors.producer import partition_of
from jobs.offline import EnvelopeCollector
from schemas.codec import RawEnvelope, encode_envelope
from simulator.server import SimulatorServer
from simulator.testing import pointed_at
from simulator.venue import OutFrame, Subscription, Venue
from tickflow.config import Settings
from tickflow.instruments import nbbo_group
from tickflow.kafka_security import client_config

# exchange mixes of the throughput runs: name -> exchanges whose books are in the data set
MIXES: dict[str, tuple[str, ...]] = {
    "binance": ("binance",),
    "all": ("binance", "coinbase", "kraken"),
}
# books per exchange, as in the soak run: the configured Coinbase and Kraken sets have 10;
# Binance gets 10 too (the configuration lists 2)
SYMBOLS_PER_EXCHANGE = 10
# market steps/s per symbol in the generated data: sets the event-time spacing, hence how many
# periodic ClickHouse snapshots the job writes (one per book per event-time second)
GENERATED_STEPS_PER_S = 20.0
FRAME_SPACING_NS = 1_000  # receive times of successive generated frames: distinct, increasing
# how long the feeder waits for a topic just created to reach its producer's metadata
METADATA_WAIT_S = 60.0

def soak_settings(base: Settings, symbols: int, rate: float) -> Settings:
    """The base settings with ``symbols`` symbols on every exchange the simulator serves."""
    sim = dataclasses.replace(base.simulator, port=0, send_log_frames=10**8, rate_per_symbol=rate)
    exchanges = {}
    for f in dataclasses.fields(base.exchanges):
        config = getattr(base.exchanges, f.name)
        known = dict(config.symbols)
        extra = [s for s in soak_symbol_names(f.name, symbols) if s not in known]
        wanted = dict(list(known.items()) + [(s, canonical(f.name, s)) for s in extra])
        exchanges[f.name] = dataclasses.replace(
            config, symbols=dict(list(wanted.items())[:symbols])
        )
    # the simulator serves exactly the symbols the connectors subscribe to
    served = dataclasses.replace(
        sim,
        symbols=tuple(exchanges["binance"].symbols),
        coinbase_products=tuple(exchanges["coinbase"].symbols),
        kraken_symbols=tuple(exchanges["kraken"].symbols),
    )
    return dataclasses.replace(
        base,
        simulator=served,
        exchanges=dataclasses.replace(base.exchanges, **exchanges),
        # short stale timer: a silent socket is replaced within the run
        connectors=dataclasses.replace(base.connectors, stale_timeout_s=3.0),
    )


BASES = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "AVAX", "LINK", "DOT", "LTC", "BCH", "ATOM"]


def soak_symbol_names(exchange: str, n: int) -> list[str]:
    if exchange == "binance":
        return [f"{b}USDT" for b in BASES[:n]]
    if exchange == "coinbase":
        return [f"{b}-USD" for b in BASES[:n]]
    if exchange == "kraken":
        return [f"{b}/USD" for b in BASES[:n]]
    raise ValueError(f"no soak symbols for {exchange}")


def canonical(exchange: str, symbol: str) -> str:
    if exchange == "binance":
        return f"{symbol[:-4]}-{symbol[-4:]}"
    return symbol.replace("/", "-")


# -- offline generation: the frames of each venue, wrapped by each connector ----------------


class Clock:
    """The simulated wall clock the venues and the generator share (ms)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def reply_frames(reply: bytes | list[OutFrame] | None) -> list[bytes]:
    """What the simulator server sends for a venue's answer to a client message."""
    if reply is None:
        return []
    return [reply] if isinstance(reply, bytes) else [r.data for r in reply]


@dataclasses.dataclass
class Wire:
    """One exchange as its connector sees it, without sockets: the venue renders each market
    frame for the connector's subscription, the connector dispatches and emits it."""

    venue: Venue
    sub: Subscription
    connector: WsConnector
    conn: Connection

    def deliver(self, frame: bytes, receive_time_ns: int) -> None:
        frame = self.sub.stamp(frame)  # per-connection numbering, as the server sends it
        parts = self.connector.dispatch(self.conn, frame, receive_time_ns)
        if parts is None:
            self.connector.sink.dead_letter(frame.decode(errors="replace"))
            return
        for route, payload in parts:
            self.connector.emit(self.conn, route.symbol, route.channel, payload, receive_time_ns)

    def step(self, symbol: str, now_ms: int, receive_time_ns: int) -> int:
        """One market step of ``symbol``; the number of frames sent to the connector."""
        sent = 0
        for frame in self.venue.step(symbol, now_ms):
            payload = self.sub.render(frame)
            if payload is not None:
                self.deliver(payload, receive_time_ns + sent * FRAME_SPACING_NS)
                sent += 1
        return sent


def open_wire(
    exchange: str, settings: Settings, venue: Venue, sink: Sink, receive_time_ns: int
) -> Wire:
    """Connect and subscribe as the exchange's connector does (``url``, ``on_open``)."""
    connector = CONNECTORS[exchange](settings, sink)
    conn = Connection(cast(Any, None))  # no socket: frames are handed over directly
    url = urlsplit(connector.url())
    _, _, path = url.path.lstrip("/").partition("/")  # path under the venue's prefix
    sub = venue.ws_subscription("/" + path, parse_qs(url.query))
    wire = Wire(venue, sub, connector, conn)
    frames: list[bytes] = []
    greeting = getattr(venue, "greeting", None)  # Kraken's status message
    if greeting is not None:
        frames.append(greeting())
    if isinstance(connector, CoinbaseConnector):  # CoinbaseConnector.on_open
        products = tuple(settings.exchanges.coinbase.symbols)
        messages = [subscribe_message("subscribe", ch, products) for ch in SUBSCRIBED]
        messages.append(subscribe_message("subscribe", "heartbeats"))
    elif isinstance(connector, KrakenConnector):  # KrakenConnector._subscribe_all
        batch = settings.exchanges.kraken.subscribe_batch
        symbols = list(settings.exchanges.kraken.symbols)
        messages = [
            connector.request("subscribe", channel, symbols[i : i + batch]).encode()
            for i in range(0, len(symbols), batch)
            for channel in ("book", "trade")
        ]
    else:  # Binance subscribes in the URL
        messages = []
    for message in messages:
        frames += reply_frames(venue.ws_message(sub, message))
    for i, frame in enumerate(frames):
        wire.deliver(frame, receive_time_ns + i * FRAME_SPACING_NS)
    if exchange == "binance":
        # BinanceConnector._snapshot: the REST depth body as a "snapshot" envelope; taken
        # before the first step, so the first diff continues it (U = lastUpdateId + 1)
        limit = settings.exchanges.binance.snapshot_limit
        for symbol in settings.exchanges.binance.symbols:
            query = {"symbol": [symbol], "limit": [str(limit)]}
            reply = venue.http("GET", "/api/v3/depth", query, receive_time_ns / 1e9)
            connector.emit(conn, symbol, "snapshot", reply.body, receive_time_ns)
    return wire


def book_settings(base: Settings, exchanges: tuple[str, ...]) -> Settings:
    """``SYMBOLS_PER_EXCHANGE`` books on each exchange of the mix (the soak run's symbols)."""
    settings = soak_settings(base, SYMBOLS_PER_EXCHANGE, GENERATED_STEPS_PER_S)
    sim = settings.simulator
    return dataclasses.replace(
        settings,
        simulator=dataclasses.replace(
            sim,
            symbols=sim.symbols if "binance" in exchanges else (),
            coinbase_products=sim.coinbase_products if "coinbase" in exchanges else (),
            kraken_symbols=sim.kraken_symbols if "kraken" in exchanges else (),
        ),
    )


@dataclasses.dataclass
class Generated:
    envelopes: list[RawEnvelope]
    steps: int  # market steps over all books
    market_frames: int  # frames of those steps that reached Kafka (no snapshots)
    dead_letters: int
    seconds: float


def generate(settings: Settings, exchanges: tuple[str, ...], frames: int) -> Generated:
    """At least ``frames`` envelopes: subscriptions and snapshots, then market steps of every
    book in turn, ``GENERATED_STEPS_PER_S`` per book per simulated second, ending about now."""
    started = time.perf_counter()
    books = [(ex, s) for ex in exchanges for s in getattr(settings.exchanges, ex).symbols]
    # steps needed, estimated with ~1.3 frames per step (a trade on 30% of them)
    est_seconds = frames / (len(books) * GENERATED_STEPS_PER_S * 1.3)
    clock = Clock(time.time_ns() // 1_000_000 - int(est_seconds * 1000) - 60_000)
    server = SimulatorServer(settings, paused=True, clock_ms=clock)
    pointed = pointed_at(settings, server)
    sink = EnvelopeCollector()
    wires = {
        ex: open_wire(ex, pointed, server.venues[ex], sink, clock.now_ms * 1_000_000)
        for ex in exchanges
    }
    opening = len(sink.envelopes)
    step_ms = 1000.0 / GENERATED_STEPS_PER_S
    start_ms = clock.now_ms + 1
    steps = 0
    tick = 0
    while len(sink.envelopes) < frames:
        tick_ms = start_ms + tick * step_ms
        for i, (exchange, symbol) in enumerate(books):
            # books spread over the step interval, as the simulator's pacers are
            now_ms = int(tick_ms + i * step_ms / len(books))
            clock.now_ms = now_ms
            wires[exchange].step(symbol, now_ms, now_ms * 1_000_000)
            steps += 1
        tick += 1
    return Generated(
        envelopes=sink.envelopes,
        steps=steps,
        market_frames=len(sink.envelopes) - opening,
        dead_letters=len(sink.dead_letters),
        seconds=time.perf_counter() - started,
    )


# -- the dataset -------------------------------------------------------------------------------


@dataclass
class Dataset:
    records: list[tuple[bytes, bytes, int, str]]  # key, Avro envelope, timestamp ms, group
    books: int
    instruments: int


def make_dataset(settings: Settings, frames: int) -> Dataset:
    gen = generate(book_settings(settings, MIXES["all"]), MIXES["all"], frames)
    envelopes = gen.envelopes[:frames]
    equivalents = settings.analytics.quote_equivalents
    records = [
        (
            env.kafka_key,
            encode_envelope(env),
            env.receive_time_ns // 1_000_000,
            nbbo_group(env.instrument, equivalents),
        )
        for env in envelopes
    ]
    return Dataset(
        records,
        books=len({(e.exchange, e.symbol) for e in envelopes}),
        instruments=len({e.instrument for e in envelopes}),
    )


class Feeder:
    """Produces the dataset into a raw topic at a steady rate (0: as fast as possible) with an
    idempotent producer that keeps retrying while the broker is down, in order, once, into the
    partitions the connectors use (``connectors.producer.partition_of``)."""

    def __init__(self, settings: Settings, records: list[tuple[bytes, bytes, int, str]]) -> None:
        from confluent_kafka import Producer

        self.topic = settings.kafka.raw_topic
        self.partitions = settings.kafka.raw_partitions
        self.records = records
        self.producer = Producer(
            {
                **client_config(settings.kafka),
                "enable.idempotence": True,
                "message.timeout.ms": 0,  # never give up on a record: the broker comes back
                "linger.ms": 5,
                # as the connectors: a leader change cannot write a record twice
                "max.in.flight.requests.per.connection": settings.kafka.producer_max_in_flight,
            }
        )
        self.sent = 0
        self.failed: list[str] = []
        self.full_speed = threading.Event()
        self._thread: threading.Thread | None = None

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def run(self, rate: float) -> None:
        from confluent_kafka import KafkaError, KafkaException

        unknown_yet = (KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION)
        started = time.monotonic()
        for i, (key, value, ts, group) in enumerate(self.records):
            if rate and not self.full_speed.is_set():
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    self.full_speed.wait(delay)
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        value,
                        key,
                        partition=partition_of(group, self.partitions),
                        timestamp=ts,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
                except KafkaException as error:
                    # a topic just created may not be in this producer's metadata yet (a
                    # cluster of several nodes takes a moment to agree on it)
                    code = error.args[0].code()
                    if code not in unknown_yet or time.monotonic() - started > METADATA_WAIT_S:
                        raise
                    self.producer.poll(0.5)
            self.producer.poll(0)
            self.sent += 1
        while self.producer.flush(10):
            pass

    def start(self, rate: float) -> Feeder:
        self._thread = threading.Thread(target=self.run, args=(rate,), daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.full_speed.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the feeder sent {self.sent} records in {timeout:.0f} s")
