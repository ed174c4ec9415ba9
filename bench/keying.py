"""Keying benchmark: the book operator keyed by canonical instrument (what the job does) or by
(exchange, symbol) with a second operator keyed by instrument for the NBBO.

    python -m bench.keying [--frames 60000] [--repeats 2] [--warmup-frames 3000]

Both job graphs run on an in-process Flink MiniCluster (thread mode, parallelism 1, hashmap
state; no Kafka, Redis or ClickHouse: the point is the cost of the operator graph) over the
same input, N raw envelopes of all three exchanges generated offline by
``bench.book_pipeline.generate`` (the simulator's venues wrapped by the connectors' own code),
Avro-encoded and fed as ``byte[]`` from a JVM-side collection source:

    (a) instrument   source ─► key by instrument ─► InstrumentBooks.process ─► discard
                     (one call per frame: book, live NBBO, bars, history, matching)
    (b) book         source ─► key by exchange|symbol ─► InstrumentBooks.process of that book
                     alone (book, bars, history, matching against its own book; no NBBO)
                     ─► one touch per book view (pickled) ─► key by instrument
                     ─► latest touch per venue ─► compute_nbbo ─► discard

Both final operators emit one LONG (the NBBO version) per NBBO change into a JVM
``DiscardingSink``. Book state lives in a plain dict of ``InstrumentBooks`` per key inside the
function in both graphs (no Flink state API): only the graph differs. The watermark that
closes bars and releases trades for matching is emulated in both graphs the same way (the
highest receive time seen minus ``flink.watermark_out_of_orderness_ms``, as the job's Kafka
record-time watermark would be), because a collection source has none until its end.

The same functions also run once per graph in a plain Python loop (no Flink): the Python
work of each graph alone, so what Flink adds per frame (crossings, serialisation, shuffles)
can be told apart from what each graph computes.

Every Python function counts its calls and writes them on close(): Python calls and records
entering Python (JVM -> Python crossings) per frame are measured, not assumed. Timed: the wall
time of ``execute()`` (includes MiniCluster start and Python worker start-up) and the
processing span inside the functions (first call to last call). The graphs run interleaved
(a, b, a, b, ...) after an unreported warm-up of each; results are printed and written to
bench/results/keying.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from pyflink.common import Configuration, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    KeySelector,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.base import Sink

from jobs.book.levels import BookStatus
from jobs.instrument import AnalyticsRules, BookView, InstrumentBooks, Outputs
from jobs.nbbo import Level, Nbbo, VenueTop, compute_nbbo, group_quote, nbbo_group
from schemas.codec import EnvelopeError, decode_envelope, encode_envelope
from tickflow.config import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "keying.json"
GRAPHS = ("instrument", "book")
DEFAULT_FRAMES = 60_000
DEFAULT_REPEATS = 2
WARMUP_FRAMES = 3_000


# -- key extraction (runs in Python once per frame, like the job's key selector) -------------


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro zig-zag varint at ``pos``: (value, next position)."""
    shift = acc = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise EnvelopeError("truncated varint in RawEnvelope")
        byte = data[pos]
        pos += 1
        acc |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7


def envelope_strings(data: bytes, count: int) -> list[str]:
    """The first ``count`` string fields of a RawEnvelope (instrument, exchange, symbol, ...)
    without decoding the record."""
    fields = []
    pos = 0
    for _ in range(count):
        length, pos = _read_long(data, pos)
        if length < 0 or pos + length > len(data):
            raise EnvelopeError("RawEnvelope too short for its leading fields")
        fields.append(data[pos : pos + length].decode())
        pos += length
    return fields


def instrument_key(data: bytes, equivalents: dict[str, str]) -> str:
    """The job's key: the canonical instrument (its NBBO group under quote equivalences)."""
    instrument = envelope_strings(data, 1)[0]
    return nbbo_group(instrument, equivalents) if equivalents else instrument


def book_key(data: bytes) -> str:
    """One key per book: ``exchange|symbol``."""
    _, exchange, symbol = envelope_strings(data, 3)
    return f"{exchange}|{symbol}"


# -- per-function counters, written on close() -------------------------------------------------


class Counted:
    """Calls, records emitted and the first/last call time of one Python function; written
    to ``<stats_dir>/<role>-<pid>-<id>.json`` when Flink closes the function."""

    def __init__(self, role: str, stats_dir: str) -> None:
        self.role = role
        self.stats_dir = stats_dir
        self.calls = 0
        self.emitted = 0
        self.first_ns = 0
        self.last_ns = 0

    def reset(self) -> None:
        self.calls = self.emitted = self.first_ns = self.last_ns = 0

    def tick(self) -> None:
        now = time.time_ns()
        if not self.calls:
            self.first_ns = now
        self.last_ns = now
        self.calls += 1

    def dump(self) -> None:
        record = {
            "role": self.role,
            "calls": self.calls,
            "emitted": self.emitted,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }
        name = f"{self.role}-{os.getpid()}-{id(self)}.json"
        (Path(self.stats_dir) / name).write_text(json.dumps(record))


@dataclass(frozen=True)
class BookParams:
    """What ``InstrumentBooks`` needs, taken from the job's configuration."""

    top_n: int
    snapshot_interval_ms: int
    max_levels: int
    max_buffered: int
    nbbo_stale_after_ms: int
    bar_intervals_ms: tuple[int, ...]
    depth_band_bps: int
    equivalents: tuple[tuple[str, str], ...]
    watermark_lag_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BookParams:
        book, analytics = settings.book, settings.analytics
        return cls(
            top_n=book.top_n,
            snapshot_interval_ms=book.snapshot_interval_ms,
            max_levels=book.max_levels,
            max_buffered=book.max_buffered_updates,
            nbbo_stale_after_ms=analytics.nbbo_stale_after_ms,
            bar_intervals_ms=tuple(analytics.bar_intervals_ms),
            depth_band_bps=int(analytics.depth_band_bps),
            equivalents=tuple(sorted(analytics.quote_equivalents.items())),
            watermark_lag_ms=settings.flink.watermark_out_of_orderness_ms,
        )

    def books(self, key: str, cls: type[InstrumentBooks] = InstrumentBooks) -> InstrumentBooks:
        return cls(
            key,
            self.top_n,
            self.snapshot_interval_ms,
            self.max_levels,
            self.max_buffered,
            AnalyticsRules(
                quote=group_quote(key, dict(self.equivalents)),
                nbbo_stale_after_ms=self.nbbo_stale_after_ms,
                bar_intervals_ms=self.bar_intervals_ms,
                depth_band_bps=Decimal(self.depth_band_bps),
            ),
        )


class BookOnlyBooks(InstrumentBooks):
    """One book's ``InstrumentBooks`` in graph (b): the NBBO is the next operator's job."""

    def _update_nbbo(self, receive_time_ns: int, out: Outputs, now_ms: int = 0) -> None:
        return None


class EmulatedWatermark:
    """The watermark the job's source would give: highest receive time seen minus the lag,
    as of before the current record."""

    def __init__(self, lag_ms: int) -> None:
        self.lag_ms = lag_ms
        self.max_receive_ms: int | None = None

    def before(self, receive_time_ns: int) -> int:
        current = self.max_receive_ms
        now_ms = receive_time_ns // 1_000_000
        if current is None or now_ms > current:
            self.max_receive_ms = now_ms
        return -(2**63) if current is None else current - self.lag_ms


# a book's touch as graph (b) sends it to the NBBO operator:
# (nbbo key, exchange, symbol, status, book version, best bid, best ask, receive time ns)
Touch = tuple[str, str, str, str, int, Level | None, Level | None, int]


def touch_of(key: str, view: BookView) -> Touch:
    return (
        key,
        view.exchange,
        view.symbol,
        view.status.value,
        view.version,
        view.bids[0] if view.bids else None,
        view.asks[0] if view.asks else None,
        view.receive_time_ns,
    )


class NbboStep:
    """Graph (b)'s NBBO operator logic per key: the latest touch of each venue, the NBBO over
    them (``compute_nbbo``, aged by the touch's receive time as ``InstrumentBooks`` does), and
    a new version when what it shows changed."""

    def __init__(self, key: str, quote: str, stale_after_ms: int) -> None:
        self.key = key
        self.quote = quote
        self.stale_after_ms = stale_after_ms
        self.touches: dict[tuple[str, str], Touch] = {}
        self.nbbo: Nbbo | None = None
        self.version = 0

    def on_touch(self, touch: Touch) -> int | None:
        """The new NBBO version, or None when the NBBO did not change."""
        self.touches[(touch[1], touch[2])] = touch
        now_ms = touch[7] // 1_000_000
        tops = [
            VenueTop(ex, sym, BookStatus(status), version, now_ms - rx // 1_000_000, bid, ask)
            for _, ex, sym, status, version, bid, ask, rx in self.touches.values()
        ]
        nbbo = compute_nbbo(self.key, self.quote, tops, self.stale_after_ms)
        if self.nbbo is not None and nbbo.quote_key() == self.nbbo.quote_key():
            return None
        self.nbbo = nbbo
        self.version = max(self.version + 1, touch[7] // 1000)
        return self.version


class CountedKey(KeySelector):
    """A key selector that counts its calls (PyFlink runs it in a Python operator of its own,
    or chained into the Python operator before it)."""

    def __init__(self, role: str, stats_dir: str) -> None:
        self.counted = Counted(role, stats_dir)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.counted.reset()

    def close(self) -> None:
        self.counted.dump()


class InstrumentKey(CountedKey):
    def __init__(self, stats_dir: str, equivalents: dict[str, str]) -> None:
        super().__init__("a.key", stats_dir)
        self.equivalents = equivalents

    def get_key(self, value: bytes) -> str:
        self.counted.tick()
        return instrument_key(value, self.equivalents)


class BookKey(CountedKey):
    def __init__(self, stats_dir: str) -> None:
        super().__init__("b.book_key", stats_dir)

    def get_key(self, value: bytes) -> str:
        self.counted.tick()
        return book_key(value)


class TouchKey(CountedKey):
    def __init__(self, stats_dir: str) -> None:
        super().__init__("b.touch_key", stats_dir)

    def get_key(self, value: Touch) -> str:
        self.counted.tick()
        return value[0]


class InstrumentOperator(KeyedProcessFunction):
    """Graph (a): everything of an instrument in one call per frame."""

    def __init__(self, stats_dir: str, params: BookParams) -> None:
        self.counted = Counted("a.instrument", stats_dir)
        self.params = params

    def open(self, runtime_context: RuntimeContext) -> None:
        self.counted.reset()
        self.books: dict[str, InstrumentBooks] = {}
        self.watermark = EmulatedWatermark(self.params.watermark_lag_ms)

    def close(self) -> None:
        self.counted.dump()

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[int]:
        self.counted.tick()
        env = decode_envelope(value)
        key = ctx.get_current_key()
        books = self.books.get(key)
        if books is None:
            books = self.books[key] = self.params.books(key)
        out = books.process(env, self.watermark.before(env.receive_time_ns))
        for update in out.nbbo:
            self.counted.emitted += 1
            yield update.version


class BookOperator(KeyedProcessFunction):
    """Graph (b), first operator: one book per key; a touch out per book view."""

    def __init__(self, stats_dir: str, params: BookParams) -> None:
        self.counted = Counted("b.book", stats_dir)
        self.params = params

    def open(self, runtime_context: RuntimeContext) -> None:
        self.counted.reset()
        self.books: dict[str, InstrumentBooks] = {}
        self.watermark = EmulatedWatermark(self.params.watermark_lag_ms)
        self.equivalents = dict(self.params.equivalents)

    def close(self) -> None:
        self.counted.dump()

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[Touch]:
        self.counted.tick()
        env = decode_envelope(value)
        key = ctx.get_current_key()
        books = self.books.get(key)
        if books is None:
            group = nbbo_group(env.instrument, self.equivalents)
            books = self.books[key] = self.params.books(group, BookOnlyBooks)
        out = books.process(env, self.watermark.before(env.receive_time_ns))
        for view in out.book_views:
            self.counted.emitted += 1
            yield touch_of(books.instrument, view)


class NbboOperator(KeyedProcessFunction):
    """Graph (b), second operator: the NBBO of an instrument from its books' touches."""

    def __init__(self, stats_dir: str, params: BookParams) -> None:
        self.counted = Counted("b.nbbo", stats_dir)
        self.params = params

    def open(self, runtime_context: RuntimeContext) -> None:
        self.counted.reset()
        self.steps: dict[str, NbboStep] = {}
        self.equivalents = dict(self.params.equivalents)

    def close(self) -> None:
        self.counted.dump()

    def process_element(self, value: Touch, ctx: KeyedProcessFunction.Context) -> Iterator[int]:
        self.counted.tick()
        key = value[0]
        step = self.steps.get(key)
        if step is None:
            quote = group_quote(key, self.equivalents)
            step = self.steps[key] = NbboStep(key, quote, self.params.nbbo_stale_after_ms)
        version = step.on_touch(value)
        if version is not None:
            self.counted.emitted += 1
            yield version


# -- the two job graphs ------------------------------------------------------------------------


def create_environment(settings: Settings) -> StreamExecutionEnvironment:
    """In-process MiniCluster: thread mode, parallelism 1, hashmap state, no checkpoints;
    the embedded interpreter is this venv's (as the stack configures its cluster)."""
    from stack.flink import venv_python, worker_pythonpath

    conf = Configuration()
    conf.set_string("python.executable", str(venv_python()))
    conf.set_string("python.client.executable", str(venv_python()))
    conf.set_string("python.pythonpath", worker_pythonpath(settings))
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("state.backend.type", "hashmap")
    conf.set_string("rest.bind-port", "0")  # never the session cluster's 8081
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    return env


def byte_array_source(env: StreamExecutionEnvironment, data: list[bytes]) -> DataStream:
    """A bounded JVM-side source of ``byte[]`` records, the type the job's Kafka source gives
    (``ByteArraySchema``). ``from_collection(..., PRIMITIVE_ARRAY(BYTE()))`` cannot make one
    (the JVM unpickles each ``bytes`` as ``byte[]`` and casts it to ``Object[]``), so this is
    ``_from_collection`` with the records written raw, length-prefixed, the format
    ``PythonBridgeUtils.readPickledBytes`` reads without unpickling."""
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import invoke_method

    type_info = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    gateway = get_gateway()
    with tempfile.NamedTemporaryFile(prefix="tickflow-keying-", delete=False) as f:
        for value in data:
            f.write(struct.pack(">i", len(value)))
            f.write(value)
    try:
        j_objs = gateway.jvm.PythonBridgeUtils.readPickledBytes(f.name)
    finally:
        os.unlink(f.name)
    type_utils = gateway.jvm.org.apache.flink.streaming.api.utils.PythonTypeUtils
    j_input_format = type_utils.getCollectionInputFormat(
        j_objs, type_info, env._j_stream_execution_environment.getConfig()
    )
    jvm_source = gateway.jvm.org.apache.flink.streaming.api.functions.source.legacy
    j_source = invoke_method(
        env._j_stream_execution_environment,
        "org.apache.flink.streaming.api.environment.StreamExecutionEnvironment",
        "addSource",
        [
            jvm_source.InputFormatSourceFunction(j_input_format, type_info),
            "raw-frames",
            type_info,
            gateway.jvm.org.apache.flink.api.connector.source.Boundedness.BOUNDED,
        ],
        [
            "org.apache.flink.streaming.api.functions.source.legacy.SourceFunction",
            "java.lang.String",
            "org.apache.flink.api.common.typeinfo.TypeInformation",
            "org.apache.flink.api.connector.source.Boundedness",
        ],
    )
    j_source.forceNonParallel()
    return DataStream(j_data_stream=j_source)


def discarding_sink() -> Sink:
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    return Sink(jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())


def build_graph(
    env: StreamExecutionEnvironment,
    graph: str,
    data: list[bytes],
    params: BookParams,
    stats_dir: str,
) -> None:
    source = byte_array_source(env, data)
    if graph == "instrument":
        nbbo = source.key_by(
            InstrumentKey(stats_dir, dict(params.equivalents)), key_type=Types.STRING()
        ).process(InstrumentOperator(stats_dir, params), output_type=Types.LONG())
    elif graph == "book":
        touches = source.key_by(BookKey(stats_dir), key_type=Types.STRING()).process(
            BookOperator(stats_dir, params), output_type=Types.PICKLED_BYTE_ARRAY()
        )
        nbbo = touches.key_by(TouchKey(stats_dir), key_type=Types.STRING()).process(
            NbboOperator(stats_dir, params), output_type=Types.LONG()
        )
    else:
        raise ValueError(f"unknown graph {graph!r}")
    nbbo.sink_to(discarding_sink())


def _proc_stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on (3rd)


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds busy on the whole machine, CPU seconds of this process and its
    descendants, the Flink JVM included), both since boot; Linux only."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / tick
    parents: dict[str, str] = {}
    times: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat_fields(entry)
        if stat is None:
            continue
        parents[entry] = stat[1]  # ppid
        times[entry] = int(stat[11]) + int(stat[12])  # utime + stime
    mine = {str(os.getpid())}
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in mine and pid not in mine}
        mine |= new
        grew = bool(new)
    return busy, sum(times.get(pid, 0) for pid in mine) / tick


def graph_plan(settings: Settings, graph: str, data: list[bytes], params: BookParams) -> list[str]:
    """The graph's operators after PyFlink's Python operator chaining (from the execution
    plan of a job that is built and never run)."""
    with tempfile.TemporaryDirectory(prefix="tickflow-keying-") as stats_dir:
        env = create_environment(settings)
        build_graph(env, graph, data, params, stats_dir)
        plan = json.loads(env.get_execution_plan())
    return [
        f"{node['id']} {node['type']}"
        + "".join(f" <-{p['ship_strategy']}- {p['id']}" for p in node.get("predecessors", []))
        for node in plan["nodes"]
    ]


# records entering Python from the JVM, per graph: the roles that head a Python operator (a key
# selector after a Python function is chained into that function's operator)
OPERATOR_INPUTS = {
    "instrument": ("a.key", "a.instrument"),
    "book": ("b.book_key", "b.book", "b.nbbo"),
}


def run_graph(
    settings: Settings, graph: str, data: list[bytes], params: BookParams
) -> dict[str, Any]:
    """One job on a fresh MiniCluster; its times and its functions' counters."""
    with tempfile.TemporaryDirectory(prefix="tickflow-keying-") as stats_dir:
        env = create_environment(settings)
        build_graph(env, graph, data, params, stats_dir)
        load = os.getloadavg()[0]
        busy0, mine0 = cpu_seconds()
        started = time.perf_counter()
        env.execute(f"tickflow-bench-keying-{graph}-{uuid.uuid4().hex[:6]}")
        wall = time.perf_counter() - started
        busy1, mine1 = cpu_seconds()
        stats: dict[str, dict[str, int]] = {}
        for path in Path(stats_dir).glob("*.json"):
            record = json.loads(path.read_text())
            role = record.pop("role")
            if role in stats:
                raise RuntimeError(f"{role} closed twice (parallelism must be 1)")
            stats[role] = record
    frames = len(data)
    missing = [r for r in OPERATOR_INPUTS[graph] if r not in stats]
    if missing:
        raise RuntimeError(f"no counters from {missing}: were the functions closed?")
    first = min(s["first_ns"] for s in stats.values() if s["calls"])
    last = max(s["last_ns"] for s in stats.values() if s["calls"])
    span = (last - first) / 1e9
    calls = sum(s["calls"] for s in stats.values())
    inputs = sum(stats[r]["calls"] for r in OPERATOR_INPUTS[graph])
    final = "a.instrument" if graph == "instrument" else "b.nbbo"
    return {
        "graph": graph,
        "frames": frames,
        "wall_s": round(wall, 3),
        "frames_per_s": round(frames / wall),
        "processing_span_s": round(span, 3),
        "frames_per_s_in_span": round(frames / span) if span > 0 else None,
        "python_calls": calls,
        "python_calls_per_frame": round(calls / frames, 3),
        "jvm_to_python_records": inputs,
        "jvm_to_python_per_frame": round(inputs / frames, 3),
        "book_views": stats["b.book"]["emitted"] if graph == "book" else None,
        "nbbo_updates": stats[final]["emitted"],
        "functions": dict(sorted(stats.items())),
        "load_1m_before": round(load, 2),
        # CPU used during the run by this benchmark (client + Flink JVM) and by everything
        # else on the machine: the latter should be near 0 for a clean measurement
        "cpu_s_this_benchmark": round(mine1 - mine0, 1),
        "cpu_s_other_processes": round(max(0.0, (busy1 - busy0) - (mine1 - mine0)), 1),
    }


class _PureContext:
    """What the functions read from Flink's context, outside Flink."""

    def __init__(self) -> None:
        self.key = ""

    def get_current_key(self) -> str:
        return self.key


def run_pure(graph: str, data: list[bytes], params: BookParams) -> dict[str, Any]:
    """The same functions called in one plain Python loop (no Flink, no crossings, no
    serialisation): the Python work of each graph alone."""
    ctx = _PureContext()
    no_context = cast(RuntimeContext, None)
    nbbo = views = 0
    with tempfile.TemporaryDirectory(prefix="tickflow-keying-") as stats_dir:
        started = time.perf_counter()
        if graph == "instrument":
            key = InstrumentKey(stats_dir, dict(params.equivalents))
            instrument = InstrumentOperator(stats_dir, params)
            instrument.open(no_context)
            for value in data:
                ctx.key = key.get_key(value)
                for _ in instrument.process_element(value, ctx):
                    nbbo += 1
        elif graph == "book":
            bkey, tkey = BookKey(stats_dir), TouchKey(stats_dir)
            book, nbbo_op = BookOperator(stats_dir, params), NbboOperator(stats_dir, params)
            book.open(no_context)
            nbbo_op.open(no_context)
            touch_ctx = _PureContext()
            for value in data:
                ctx.key = bkey.get_key(value)
                for touch in book.process_element(value, ctx):
                    views += 1
                    touch_ctx.key = tkey.get_key(touch)
                    for _ in nbbo_op.process_element(touch, touch_ctx):
                        nbbo += 1
        else:
            raise ValueError(f"unknown graph {graph!r}")
        seconds = time.perf_counter() - started
    return {
        "graph": graph,
        "frames": len(data),
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(data) / seconds),
        "book_views": views if graph == "book" else None,
        "nbbo_updates": nbbo,
    }


# -- input ---------------------------------------------------------------------------------------


@dataclass
class Input:
    data: list[bytes]
    conditions: dict[str, Any]


def make_input(settings: Settings, frames: int) -> Input:
    """``frames`` Avro-encoded raw envelopes of every exchange (bench.book_pipeline's data)."""
    from bench.book_pipeline import MIXES, SYMBOLS_PER_EXCHANGE, book_settings, generate

    gen_settings = book_settings(settings, MIXES["all"])
    started = time.perf_counter()
    gen = generate(gen_settings, MIXES["all"], frames)
    envelopes = gen.envelopes[:frames]
    seconds = time.perf_counter() - started
    data = [encode_envelope(env) for env in envelopes]
    equivalents = settings.analytics.quote_equivalents
    venues: dict[str, set[tuple[str, str]]] = {}
    for env in envelopes:
        key = nbbo_group(env.instrument, equivalents)
        venues.setdefault(key, set()).add((env.exchange, env.symbol))
    return Input(
        data,
        {
            "frames": len(data),
            "exchanges": list(MIXES["all"]),
            "symbols_per_exchange": SYMBOLS_PER_EXCHANGE,
            "books": sum(len(v) for v in venues.values()),
            "instrument_keys": len(venues),
            "keys_by_venue_count": dict(sorted(Counter(len(v) for v in venues.values()).items())),
            "quote_equivalents": dict(equivalents),
            "per_exchange": dict(Counter(e.exchange for e in envelopes)),
            "per_channel": dict(Counter(e.channel for e in envelopes)),
            "bytes": sum(len(d) for d in data),
            "dead_letters_in_generation": gen.dead_letters,
            "generated_in_s": round(seconds, 1),
        },
    )


# -- main ------------------------------------------------------------------------------------


def median(runs: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(r[field] for r in runs))


def summarize(runs: list[dict[str, Any]], pure: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per graph, the ratio, and what Flink adds per frame over the same functions
    in a plain loop (processing span, so without MiniCluster and worker start-up)."""
    pure_fps = {r["graph"]: r["frames_per_s"] for r in pure}
    by_graph = {g: [r for r in runs if r["graph"] == g] for g in GRAPHS}
    summary: dict[str, Any] = {}
    for graph, rs in by_graph.items():
        summary[graph] = {
            "runs_frames_per_s": [r["frames_per_s"] for r in rs],
            "median_wall_s": round(median(rs, "wall_s"), 3),
            "median_frames_per_s": round(median(rs, "frames_per_s")),
            "median_processing_span_s": round(median(rs, "processing_span_s"), 3),
            "median_frames_per_s_in_span": round(median(rs, "frames_per_s_in_span")),
            "python_calls_per_frame": rs[0]["python_calls_per_frame"],
            "jvm_to_python_per_frame": rs[0]["jvm_to_python_per_frame"],
            "nbbo_updates": rs[0]["nbbo_updates"],
            "pure_python_frames_per_s": pure_fps[graph],
            "flink_us_per_frame": round(1e6 / median(rs, "frames_per_s_in_span"), 1),
            "pure_python_us_per_frame": round(1e6 / pure_fps[graph], 1),
        }
        summary[graph]["flink_overhead_us_per_frame"] = round(
            summary[graph]["flink_us_per_frame"] - summary[graph]["pure_python_us_per_frame"], 1
        )
    summary["cpu_s_other_processes_max"] = max(r["cpu_s_other_processes"] for r in runs)
    a, b = summary["instrument"], summary["book"]
    extra = b["jvm_to_python_per_frame"] - a["jvm_to_python_per_frame"]
    if extra > 0:
        summary["overhead_us_per_extra_jvm_to_python_record"] = round(
            (b["flink_overhead_us_per_frame"] - a["flink_overhead_us_per_frame"]) / extra, 1
        )
    summary["instrument_over_book_throughput"] = round(
        a["median_frames_per_s"] / b["median_frames_per_s"], 3
    )
    summary["instrument_over_book_throughput_in_span"] = round(
        a["median_frames_per_s_in_span"] / b["median_frames_per_s_in_span"], 3
    )
    return summary


def print_run(run: dict[str, Any], label: str = "") -> None:
    print(
        f"  {label}{run['graph']:>10}: {run['frames']} frames in {run['wall_s']:.1f} s "
        f"-> {run['frames_per_s']} frames/s (processing {run['processing_span_s']:.1f} s -> "
        f"{run['frames_per_s_in_span']} frames/s); Python calls/frame "
        f"{run['python_calls_per_frame']}, JVM->Python records/frame "
        f"{run['jvm_to_python_per_frame']}; NBBO updates {run['nbbo_updates']}"
        + (f", book views {run['book_views']}" if run["book_views"] is not None else "")
        + f"; CPU s this/other {run['cpu_s_this_benchmark']}/{run['cpu_s_other_processes']}",
        flush=True,
    )


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\n{'graph':<12}{'frames/s (runs)':>24}{'median':>9}{'in span':>9}"
        f"{'py calls/fr':>13}{'JVM->Py/fr':>12}{'NBBO upd':>10}"
    )
    for graph in GRAPHS:
        s = summary[graph]
        runs = ", ".join(str(v) for v in s["runs_frames_per_s"])
        print(
            f"{graph:<12}{runs:>24}{s['median_frames_per_s']:>9}"
            f"{s['median_frames_per_s_in_span']:>9}{s['python_calls_per_frame']:>13}"
            f"{s['jvm_to_python_per_frame']:>12}{s['nbbo_updates']:>10}"
        )
    for graph in GRAPHS:
        s = summary[graph]
        print(
            f"{graph}: {s['flink_us_per_frame']} us/frame in Flink (processing span), "
            f"{s['pure_python_us_per_frame']} us/frame in a plain Python loop -> Flink adds "
            f"{s['flink_overhead_us_per_frame']} us/frame"
        )
    if "overhead_us_per_extra_jvm_to_python_record" in summary:
        cost = summary["overhead_us_per_extra_jvm_to_python_record"]
        print(
            "each extra record into Python in graph (b) (a touch: pickled, shuffled by "
            f"instrument, one more call) costs {cost} us of Flink overhead"
        )
    print(
        f"CPU used by other processes during a run: at most "
        f"{summary['cpu_s_other_processes_max']} s (near 0: the runs had the machine alone)"
    )
    print(
        f"instrument / book throughput: {summary['instrument_over_book_throughput']}x "
        f"(processing span only: {summary['instrument_over_book_throughput_in_span']}x)"
    )


def session_jobs_running(settings: Settings) -> int | None:
    """Jobs RUNNING on the local session cluster (they would share the cores), if it answers."""
    url = f"http://127.0.0.1:{settings.flink.rest_port}/jobs/overview"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            jobs = json.loads(resp.read()).get("jobs", [])
    except OSError:
        return None
    return sum(1 for job in jobs if job.get("state") == "RUNNING")


def flink_version() -> str:
    from pyflink.version import __version__

    return str(__version__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.keying", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="envelopes per run")
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help="measured runs of each graph"
    )
    parser.add_argument(
        "--warmup-frames", type=int, default=WARMUP_FRAMES, help="unreported first runs; 0: none"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    raw_args = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw_args)
    if args.frames <= 0 or args.repeats <= 0:
        parser.error("--frames and --repeats must be positive")

    wall = time.monotonic()
    settings = load_settings()
    params = BookParams.from_settings(settings)
    data = make_input(settings, max(args.frames, args.warmup_frames))
    frames = data.data[: args.frames]
    conditions = {
        **data.conditions,
        "frames": len(frames),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "flink": flink_version(),
        "python_execution_mode": "thread",
        "parallelism": 1,
        "state_backend": "hashmap (book state in Python dicts in both graphs)",
        "cluster": "in-process MiniCluster, one per run",
        "source": "bounded JVM collection of byte[] (PRIMITIVE_ARRAY(BYTE), as from Kafka)",
        "sink": "DiscardingSink (sink v2), one LONG per NBBO change",
        "watermark": f"emulated: max receive time - {params.watermark_lag_ms} ms",
        "warmup_frames": args.warmup_frames,
        "repeats": args.repeats,
    }
    print(
        f"{len(frames)} envelopes ({conditions['per_exchange']}), {conditions['books']} books, "
        f"{conditions['instrument_keys']} instrument keys, generated in "
        f"{conditions['generated_in_s']} s; {conditions['cpus']} cpus, Flink "
        f"{conditions['flink']}, thread mode, parallelism 1",
        flush=True,
    )
    conditions["session_cluster_jobs_running_at_start"] = session_jobs_running(settings)
    conditions["plans"] = {g: graph_plan(settings, g, frames[:100], params) for g in GRAPHS}
    for graph, plan in conditions["plans"].items():
        print(f"  plan {graph}: {'; '.join(plan)}", flush=True)
    pure = [run_pure(graph, frames, params) for graph in GRAPHS]
    for run in pure:
        print(
            f"  pure Python {run['graph']:>10}: {run['frames']} frames in {run['seconds']:.1f} s "
            f"-> {run['frames_per_s']} frames/s; NBBO updates {run['nbbo_updates']}"
            + (f", book views {run['book_views']}" if run["book_views"] is not None else ""),
            flush=True,
        )
    if args.warmup_frames:
        for graph in GRAPHS:
            run = run_graph(settings, graph, data.data[: args.warmup_frames], params)
            print_run(run, "warm-up ")
    runs = []
    for i in range(args.repeats):
        for graph in GRAPHS:
            run = run_graph(settings, graph, frames, params)
            run["repeat"] = i + 1
            runs.append(run)
            print_run(run, f"run {i + 1} ")
    summary = summarize(runs, pure)
    print_summary(summary)
    result = {
        "command": " ".join(["python -m bench.keying", *raw_args]),
        "conditions": conditions,
        "pure_python": pure,
        "runs": runs,
        "summary": summary,
        "wall_seconds": round(time.monotonic() - wall, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
