"""Hot-path benchmark: the job's per-frame cost, this tree against a baseline revision, in one run.

    python -m bench.hot_path [--baseline REV] [--frames 30000] [--repeats 2] [--skip-graph]
                             [--profile DIR]

Input: N raw envelopes of all three exchanges generated offline (``bench.keying.make_input``:
the simulator's venues wrapped by the connectors' code), Avro-encoded, and produced once into a
unique Kafka topic. Two measurements, each run in a subprocess on a source tree (this one, and
``--baseline`` exported with ``git archive`` into a temp dir), interleaved (a, b, a, b, ...):

(a) ``python``: the Python work per frame in a plain loop, no Flink. ``InstrumentBooks.process``
    alone, and the whole ``InstrumentProcessor.process_element`` with in-memory keyed state
    (dicts standing for Flink's MapState/ValueState, values pickled as Flink's pickled-bytes
    serializer does), the real Redis writes (unique key prefix), and every emitted record
    pickled as it is to cross into the JVM; processing time = the frame's receive time and an
    emulated watermark (highest receive time seen - the out-of-orderness), so it is
    deterministic: a digest of every emitted record (main and side outputs, batches flattened)
    and of the final Redis content must be the same on both trees.
(b) ``graph``: the real job graph (``jobs.pipeline.build_pipeline``: Kafka source of the
    pre-loaded topic made bounded, InstrumentProcessor, ClickHouseBatcher, Redis, ClickHouse and
    the Kafka sinks), on an in-process MiniCluster (thread mode, parallelism 1, hashmap state,
    checkpoints as configured), unique consumer group, Redis prefix, ClickHouse database and
    topics. Frames/s over the wall time of ``execute()`` (MiniCluster start included) and over
    the span between the first and the last book update published in Redis (pub/sub).

``--profile DIR``: one more run per tree and measurement, profiled and left out of the
medians: cProfile of the plain loop (``DIR/<tree>.pstats``) and py-spy of the MiniCluster's
embedded interpreter (``DIR/<tree>-graph.pyspy``, raw collapsed stacks).
Results are printed and written to bench/results/hot_path.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "hot_path.json"
DEFAULT_FRAMES = 30_000
DEFAULT_REPEATS = 2
GRAPH_TIMEOUT_S = 900.0
DONE_POLL_S = 0.1
ROWS_WAIT_S = 60.0


# -- in-memory stand-ins for Flink's keyed state and context (plain loop) --------------------


class _Keyed:
    """The current key, shared by every state of one fake runtime context."""

    def __init__(self) -> None:
        self.key = ""


class FakeMapState:
    """MapState per key; values go through pickle as Flink's PICKLED_BYTE_ARRAY does."""

    def __init__(self, keyed: _Keyed, pickled: bool) -> None:
        self.keyed = keyed
        self.pickled = pickled
        self.data: dict[str, dict[Any, Any]] = {}

    def _map(self) -> dict[Any, Any]:
        return self.data.setdefault(self.keyed.key, {})

    def _in(self, value: Any) -> Any:
        return pickle.dumps(value) if self.pickled else value

    def _out(self, value: Any) -> Any:
        return pickle.loads(value) if self.pickled else value

    def get(self, key: Any) -> Any:
        value = self._map().get(key)
        return None if value is None else self._out(value)

    def put(self, key: Any, value: Any) -> None:
        self._map()[key] = self._in(value)

    def put_all(self, items: Any) -> None:
        for key, value in dict(items).items():
            self.put(key, value)

    def remove(self, key: Any) -> None:
        self._map().pop(key, None)

    def contains(self, key: Any) -> bool:
        return key in self._map()

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter([(k, self._out(v)) for k, v in self._map().items()])

    def keys(self) -> Iterator[Any]:
        return iter(list(self._map()))

    def values(self) -> Iterator[Any]:
        return iter([self._out(v) for v in self._map().values()])

    def is_empty(self) -> bool:
        return not self._map()

    def clear(self) -> None:
        self._map().clear()


class FakeValueState:
    def __init__(self, keyed: _Keyed, pickled: bool) -> None:
        self.keyed = keyed
        self.pickled = pickled
        self.data: dict[str, Any] = {}

    def value(self) -> Any:
        value = self.data.get(self.keyed.key)
        return pickle.loads(value) if self.pickled and value is not None else value

    def update(self, value: Any) -> None:
        self.data[self.keyed.key] = pickle.dumps(value) if self.pickled else value

    def clear(self) -> None:
        self.data.pop(self.keyed.key, None)


class _Counter:
    def inc(self, n: int = 1) -> None:
        pass


class _Group:
    def add_group(self, name: str, extra: str | None = None) -> _Group:
        return self

    def counter(self, name: str) -> _Counter:
        return _Counter()


def _pickled(type_info: Any) -> bool:
    return "Pickled" in type(type_info).__name__


class FakeRuntimeContext:
    """States by name: a function opened again on the same context sees the same state (as
    after a restore)."""

    def __init__(self) -> None:
        self.keyed = _Keyed()
        self.named: dict[str, Any] = {}

    @property
    def states(self) -> list[Any]:
        return list(self.named.values())

    def get_map_state(self, descriptor: Any) -> FakeMapState:
        if descriptor.name not in self.named:
            pickled = _pickled(descriptor.type_info._value_type_info)
            self.named[descriptor.name] = FakeMapState(self.keyed, pickled)
        return self.named[descriptor.name]  # type: ignore[no-any-return,unused-ignore]

    def get_state(self, descriptor: Any) -> FakeValueState:
        if descriptor.name not in self.named:
            pickled = _pickled(descriptor.type_info)
            self.named[descriptor.name] = FakeValueState(self.keyed, pickled)
        return self.named[descriptor.name]  # type: ignore[no-any-return,unused-ignore]

    def get_metrics_group(self) -> _Group:
        return _Group()


class FakeTimerService:
    def __init__(self) -> None:
        self.watermark = -(2**63)
        self.now_ms = 0
        self.timers = 0

    def current_watermark(self) -> int:
        return self.watermark

    def current_processing_time(self) -> int:
        return self.now_ms

    def register_processing_time_timer(self, t: int) -> None:
        self.timers += 1

    def register_event_time_timer(self, t: int) -> None:
        self.timers += 1


class FakeContext:
    def __init__(self, keyed: _Keyed) -> None:
        self.keyed = keyed
        self.timers = FakeTimerService()

    def get_current_key(self) -> str:
        return self.keyed.key

    def timer_service(self) -> FakeTimerService:
        return self.timers


def flatten(record: Any) -> Iterator[tuple[str, Any]]:
    """An emitted record as (output, content) pairs: side outputs by tag id; a main-output
    batch of ``(table, row)`` pairs (if the tree emits batches) as its rows, in order."""
    from pyflink.datastream import OutputTag

    if isinstance(record, tuple) and len(record) == 2 and isinstance(record[0], OutputTag):
        yield record[0].tag_id, record[1]
    elif record[0] == "rows" and isinstance(record[1], list):
        for item in record[1]:
            yield "main", item
    else:
        yield "main", record


def redis_digest(prefix: str) -> tuple[str, int]:
    """Digest of every key under the prefix (hash fields but ``publish_time_ns``)."""
    import redis

    from tickflow.config import load_settings

    cfg = load_settings().redis
    r = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db)
    h = hashlib.sha256()
    keys = sorted(r.scan_iter(f"{prefix}:*"))
    raw_prefix = prefix.encode()
    for key in keys:
        kind = r.type(key)
        # the prefix is unique per run: digest the rest
        h.update(key.removeprefix(raw_prefix) + b"\0" + kind)
        if kind == b"hash":
            fields = r.hgetall(key)
            fields.pop(b"publish_time_ns", None)
            h.update(repr(sorted(fields.items())).encode())
        elif kind == b"set":
            members = sorted(m.removeprefix(raw_prefix) for m in r.smembers(key))
            h.update(repr(members).encode())
    return h.hexdigest(), len(keys)


def redis_clear(prefix: str) -> None:
    import redis

    from tickflow.config import load_settings

    cfg = load_settings().redis
    r = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)


def python_run(data: list[bytes], profile: str | None) -> dict[str, Any]:
    """(a): ``InstrumentBooks.process`` alone, then the whole operator, over the frames."""
    import jobs.pipeline as pipeline
    from jobs.operators import InstrumentProcessor
    from schemas.codec import decode_envelope, envelope_instrument
    from tickflow.config import load_settings

    settings = load_settings()
    lag = settings.flink.watermark_out_of_orderness_ms
    equivalents = settings.analytics.quote_equivalents
    # the key function's name in this tree or in an older baseline revision
    names = ("InstrumentKey", "NbboGroupKey")
    key_class = next(getattr(pipeline, name) for name in names if hasattr(pipeline, name))
    key_of = key_class(equivalents) if equivalents else envelope_instrument

    # InstrumentBooks.process alone (decode included), as bench.keying's plain loop
    from bench.keying import BookParams

    params = BookParams.from_settings(settings)
    books: dict[str, Any] = {}
    max_ms: int | None = None
    started = time.perf_counter()
    for value in data:
        env = decode_envelope(value)
        key = key_of(value)
        inst = books.get(key)
        if inst is None:
            inst = books[key] = params.books(key)
        now_ms = env.receive_time_ns // 1_000_000
        watermark = -(2**63) if max_ms is None else max_ms - lag
        max_ms = now_ms if max_ms is None else max(max_ms, now_ms)
        inst.process(env, watermark)
    books_s = time.perf_counter() - started

    # the whole operator: state, Redis, emitted records pickled as they cross to the JVM
    prefix = f"tfhot{uuid.uuid4().hex[:8]}"
    redis_cfg = dataclasses.replace(settings.redis, key_prefix=prefix)
    op = InstrumentProcessor(settings.book, redis_cfg, settings.analytics, settings.monitoring)
    runtime = FakeRuntimeContext()
    op.open(runtime)  # type: ignore[arg-type,unused-ignore]
    ctx = FakeContext(runtime.keyed)
    digests: dict[str, Any] = {}
    counts: dict[str, int] = {}
    records = main_records = 0
    crossing_bytes = 0
    max_ms = None
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    for value in data:
        runtime.keyed.key = key_of(value)
        # processing time and watermark from the frame's receive time: deterministic
        env_ms = _receive_ms(value)
        ctx.timers.now_ms = env_ms
        ctx.timers.watermark = -(2**63) if max_ms is None else max_ms - lag
        max_ms = env_ms if max_ms is None else max(max_ms, env_ms)
        for record in op.process_element(value, ctx):  # type: ignore[arg-type,unused-ignore]
            records += 1
            if not (isinstance(record, tuple) and type(record[0]).__name__ == "OutputTag"):
                main_records += 1
                crossing_bytes += len(pickle.dumps(record))
            # per output stream: the order within each is what must not change
            for output, content in flatten(record):
                digests.setdefault(output, hashlib.sha256()).update(repr(content).encode())
                counts[output] = counts.get(output, 0) + 1
    op_s = time.perf_counter() - started
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    op.close()
    rdigest, rkeys = redis_digest(prefix)
    redis_clear(prefix)
    frames = len(data)
    return {
        "frames": frames,
        "books_process_us_per_frame": round(books_s / frames * 1e6, 1),
        "operator_us_per_frame": round(op_s / frames * 1e6, 1),
        "operator_frames_per_s": round(frames / op_s),
        "records_emitted": records,
        "main_records_into_jvm": main_records,
        "main_records_per_frame": round(main_records / frames, 3),
        "main_bytes_per_frame": round(crossing_bytes / frames, 1),
        "output_digest": hashlib.sha256(
            repr(sorted((k, d.hexdigest()) for k, d in digests.items())).encode()
        ).hexdigest(),
        "outputs": dict(sorted(counts.items())),
        "redis_digest": rdigest,
        "redis_keys": rkeys,
    }


def _receive_ms(value: bytes) -> int:
    from schemas.codec import decode_envelope

    return decode_envelope(value).receive_time_ns // 1_000_000


# -- (b) the real graph on a MiniCluster --------------------------------------------------------


def graph_run(
    topic: str, expected_file: str, frames: int, profile: str | None = None
) -> dict[str, Any]:
    """(b): the job graph of this tree over the pre-loaded topic, until every book in Redis
    holds the final version the pure logic computed (then the job is cancelled: a bounded
    source would end with the maximum watermark, and a LIVE book's bars then close windows
    without end)."""
    import redis
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment

    import jobs.pipeline as pipeline
    from jobs.sinks.clickhouse import COLUMNS, connect
    from stack.flink import venv_python, worker_pythonpath
    from stack.jars import flink_connector_jars
    from stack.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    overrides = {
        "TICKFLOW__KAFKA__RAW_TOPIC": topic,
        "TICKFLOW__KAFKA__DEADLETTER_TOPIC": f"tickflow.hot.dead.{tag}",
        "TICKFLOW__KAFKA__CONTROL_TOPIC": f"tickflow.hot.control.{tag}",
        "TICKFLOW__KAFKA__NBBO_TOPIC": f"tickflow.hot.nbbo.{tag}",
        "TICKFLOW__KAFKA__MATCHED_TRADES_TOPIC": f"tickflow.hot.matched.{tag}",
        "TICKFLOW__KAFKA__BARS_TOPIC": f"tickflow.hot.bars.{tag}",
        "TICKFLOW__KAFKA__TOUCHES_TOPIC": f"tickflow.hot.touches.{tag}",
        "TICKFLOW__FLINK__CONSUMER_GROUP": f"tickflow-hot-{tag}",
        "TICKFLOW__REDIS__KEY_PREFIX": f"tfhot{tag}",
        "TICKFLOW__CLICKHOUSE__DATABASE": f"tickflow_hot{tag}",
    }
    os.environ.update(overrides)
    from tickflow.config import load_settings

    settings = load_settings()
    kafka = settings.kafka
    topics = [kafka.deadletter_topic, kafka.control_topic, *kafka.result_topics().values()]
    ensure_topics(settings, extra={t: 1 for t in topics})
    expected_all = json.loads(Path(expected_file).read_text())
    expected: dict[str, str] = expected_all["versions"]

    conf = Configuration()
    conf.set_string("python.executable", str(venv_python()))
    conf.set_string("python.client.executable", str(venv_python()))
    conf.set_string("python.pythonpath", worker_pythonpath(settings))
    conf.set_string("python.execution-mode", settings.flink.python_execution_mode)
    conf.set_string("state.backend.type", settings.flink.state_backend)
    conf.set_string("rest.bind-port", "0")  # never the session cluster's 8081
    # checkpoints to files, as the stack's cluster writes them (the job's state outgrows the
    # default in-memory storage's 5 MB)
    checkpoints = tempfile.mkdtemp(prefix="tickflow-hot-checkpoints-")
    conf.set_string("execution.checkpointing.dir", Path(checkpoints).as_uri())
    # a failure (e.g. a service killed by someone's test) fails the run instead of a restart
    # hiding in its time
    conf.set_string("restart-strategy.type", "disable")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    env.add_jars(*(jar.as_uri() for jar in flink_connector_jars(settings)))
    pipeline.build_pipeline(env, settings)

    # first and last book update published in Redis: the processing span
    prefix = settings.redis.key_prefix
    r = redis.Redis(host=settings.redis.host, port=settings.redis.port, db=settings.redis.db)
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(f"{prefix}:book-updates")
    times: dict[str, float] = {}
    counts = {"book_updates": 0}
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = sub.get_message(timeout=0.2)
            while msg is not None:
                now = time.perf_counter()
                times.setdefault("first", now)
                times["last"] = now
                counts["book_updates"] += 1
                msg = sub.get_message(timeout=0)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    keys = [f"{prefix}:book:{suffix}" for suffix in expected]
    want = [v.encode() for v in expected.values()]
    started = time.perf_counter()
    job = env.execute_async(f"tickflow-hot-path-{tag}")
    spy = None
    jvm = _gateway_pid()
    cpu: dict[str, float] = {"submitted": _cpu_seconds(jvm)}
    try:
        deadline = started + GRAPH_TIMEOUT_S
        while True:
            if "first" in times and "first" not in cpu:
                cpu["first"] = _cpu_seconds(jvm)
            if profile and spy is None and "first" in times:
                # py-spy on the JVM, whose embedded interpreter (loaded by now: a book was
                # published) runs the job's Python in thread mode
                spy = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record",
                     "--pid", str(jvm), "--rate", "100", "--format", "raw",
                     "--nonblocking", "-o", profile],
                    stdout=subprocess.DEVNULL, stderr=open(profile + ".log", "w"),  # noqa: SIM115
                )  # fmt: skip
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "version")
            have = pipe.execute()
            if all(h is not None and h >= w for h, w in zip(have, want, strict=True)):
                break
            status = str(job.get_job_status().result())
            if "FAILED" in status or "CANCELED" in status or "FINISHED" in status:
                raise RuntimeError(f"the job ended ({status}) before every book was final")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not done after {GRAPH_TIMEOUT_S} s")
            time.sleep(DONE_POLL_S)
        wall = time.perf_counter() - started
        done = time.perf_counter()
        cpu["done"] = _cpu_seconds(jvm)
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
            spy.wait(60)
        # the ClickHouse writer flushes every insert_interval_ms: wait for the last rows
        client = connect(settings.clickhouse)
        db = settings.clickhouse.database
        want_rows = {t: expected_all[t] for t in ("trades", "book_snapshots")}
        for _ in range(int(ROWS_WAIT_S / DONE_POLL_S)):
            have_rows = {
                t: client.execute(f"SELECT count() FROM {db}.{t}")[0][0] for t in want_rows
            }
            if have_rows == want_rows:
                break
            time.sleep(DONE_POLL_S)
        client.disconnect()
    finally:
        with contextlib.suppress(Exception):
            job.cancel().result()
        stop.set()
        listener.join()
        sub.close()
    shutil.rmtree(checkpoints, ignore_errors=True)
    client = connect(settings.clickhouse)
    db = settings.clickhouse.database
    rows = {}
    for table in COLUMNS:
        rows[table] = client.execute(f"SELECT count() FROM {db}.{table}")[0][0]
    versions = hashlib.sha256()
    book_keys = sorted(r.scan_iter(f"{prefix}:book:*"))
    for book in book_keys:
        version = r.hget(book, "version") or b""
        versions.update(book.removeprefix(prefix.encode()) + b"=" + version)
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    client.disconnect()
    redis_clear(prefix)
    _delete_kafka(settings, topics, [settings.flink.consumer_group])
    span = times.get("last", 0.0) - times.get("first", 0.0)
    return {
        "frames": frames,
        "wall_s": round(wall, 2),
        "frames_per_s_wall": round(frames / wall),
        "redis_span_s": round(span, 2),
        "frames_per_s_span": round(frames / span) if span > 0 else None,
        "book_updates_published": counts["book_updates"],
        # CPU of the MiniCluster's JVM (the job's Python runs inside it) from the first book
        # published to the last: the work per frame, less sensitive than rates to what else
        # runs on the box
        "jvm_cpu_s_span": round(cpu["done"] - cpu.get("first", cpu["submitted"]), 2),
        "jvm_cpu_us_per_frame": round(
            (cpu["done"] - cpu.get("first", cpu["submitted"])) / frames * 1e6, 1
        ),
        "first_book_after_s": round(times.get("first", started) - started, 2),
        "done_after_last_book_s": round(done - times.get("last", done), 2),
        # rows inserted by the time every book was final (the last batch may still wait)
        "clickhouse_rows": rows,
        "expected_trade_and_snapshot_rows": rows["trades"] == expected_all["trades"]
        and rows["book_snapshots"] == expected_all["book_snapshots"],
        "books_in_redis": len(book_keys),
        "redis_versions_digest": versions.hexdigest(),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway_pid() -> int:
    """The JVM PyFlink started for this process (the MiniCluster runs in it)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if fields[1] == me and "java" in stat[: stat.rindex(")")]:
                    return int(entry)
    raise RuntimeError("no JVM child process")


def expected_versions(data: list[bytes]) -> dict[str, Any]:
    """``<exchange>:<symbol>`` -> the version each book's last publication carries, and the
    trade and book snapshot rows (from the pure logic over the same frames, as the job
    computes them; none of them depends on the watermark or the clock)."""
    from bench.keying import BookParams
    from jobs.sinks.redis_books import VERSION_WIDTH
    from schemas.codec import decode_envelope, envelope_instrument
    from tickflow.config import load_settings

    params = BookParams.from_settings(load_settings())
    books: dict[str, Any] = {}
    final: dict[str, str] = {}
    trades = snapshots = 0
    for value in data:
        env = decode_envelope(value)
        key = envelope_instrument(value)
        inst = books.get(key)
        if inst is None:
            inst = books[key] = params.books(key)
        out = inst.process(env)
        for view in out.book_views:
            final[f"{view.exchange}:{view.symbol}"] = f"{view.version:0{VERSION_WIDTH}d}"
        trades += len(out.trades) + len(out.late_trades)
        snapshots += len(out.snapshots)
    return {"versions": final, "trades": trades, "book_snapshots": snapshots}


def _delete_kafka(settings: Any, topics: list[str], groups: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    futures = list(admin.delete_topics(topics, operation_timeout=30).values()) if topics else []
    if groups:
        futures += list(admin.delete_consumer_groups(groups, request_timeout=30).values())
    for future in futures:
        with contextlib.suppress(Exception):  # already gone (e.g. a group never committed)
            future.result(timeout=60)


# -- driver ---------------------------------------------------------------------------------------


def export_tree(rev: str, into: Path) -> Path:
    """``rev`` of this repository as plain files, with this harness and the jar cache."""
    tree = into / "tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.copy2(Path(__file__), tree / "bench" / "hot_path.py")
    cache = ROOT / ".cache"
    if cache.exists():
        (tree / ".cache").symlink_to(cache.resolve())
    return tree


def run_worker(tree: Path, mode: str, arg: str, frames: int, profile: str | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.hot_path", "--worker", mode, "--worker-arg", arg]
    argv += ["--frames", str(frames)]
    if profile:
        argv += ["--profile", profile]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {mode} on {tree} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def produce_topic(data: list[bytes]) -> str:
    from confluent_kafka import Producer

    from schemas.codec import decode_envelope
    from stack.topics import ensure_topics
    from tickflow.config import load_settings

    settings = load_settings()
    topic = f"tickflow.hot.raw.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, extra={topic: settings.kafka.raw_partitions})
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 50})
    for value in data:
        env = decode_envelope(value)
        # as the connectors produce: keyed by book, timestamped with the receive time
        producer.produce(
            topic, value, key=env.kafka_key, timestamp=env.receive_time_ns // 1_000_000
        )
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("preload not fully delivered")
    return topic


def make_frames(settings: Any, frames: int) -> Any:
    """``bench.keying.make_input``, with every Coinbase message numbered per connection as the
    simulator's server does (``Subscription.stamp``): a generator that hands frames over
    unstamped leaves ``sequence_num`` -1, which the job cannot store."""
    from bench import book_pipeline
    from bench.keying import make_input

    deliver = book_pipeline.Wire.deliver

    def stamped(self: Any, frame: bytes, receive_time_ns: int) -> None:
        stamp = getattr(self.sub, "stamp", None)
        if stamp is not None:
            frame = stamp(frame)  # a no-op on a frame already numbered
        deliver(self, frame, receive_time_ns)

    book_pipeline.Wire.deliver = stamped  # type: ignore[method-assign]
    try:
        return make_input(settings, frames)
    finally:
        book_pipeline.Wire.deliver = deliver  # type: ignore[method-assign]


def ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 3) if new and old else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.hot_path", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--baseline", help="git revision to compare against (default: where HEAD left main)"
    )
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--skip-graph", action="store_true", help="plain loop only")
    parser.add_argument("--skip-python", action="store_true", help="graph only")
    parser.add_argument("--profile", help="directory for cProfile output of the plain loop")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-arg", help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)

    if args.worker == "python":
        data = pickle.loads(Path(args.worker_arg).read_bytes())[: args.frames]
        print("RESULT " + json.dumps(python_run(data, args.profile)), flush=True)
        return 0
    if args.worker == "graph":
        topic, expected_file = args.worker_arg.split(",")
        run = graph_run(topic, expected_file, args.frames, args.profile)
        print("RESULT " + json.dumps(run), flush=True)
        return 0

    from tickflow.config import load_settings

    wall = time.monotonic()
    settings = load_settings()
    if args.baseline is None:
        args.baseline = subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "main", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    base = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", args.baseline],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "jobs", "schemas"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    data = make_frames(settings, args.frames)
    print(
        f"{len(data.data)} envelopes {data.conditions['per_exchange']}; baseline "
        f"{args.baseline} ({base[:10]}) vs this tree (HEAD {head[:10]}"
        f"{', uncommitted changes' if dirty else ''})",
        flush=True,
    )
    results: dict[str, Any] = {"python": [], "graph": [], "profiled": []}
    topic = None
    with tempfile.TemporaryDirectory(prefix="tickflow-hot-") as tmp:
        trees = {"baseline": export_tree(args.baseline, Path(tmp)), "current": ROOT}
        data_file = Path(tmp) / "frames.pickle"
        data_file.write_bytes(pickle.dumps(data.data))
        try:
            if not args.skip_python:
                # with --profile: one more run per tree, profiled, not in the medians
                for i in range(args.repeats + bool(args.profile)):
                    for name, tree in trees.items():
                        profile = None
                        if i == args.repeats:
                            Path(args.profile).mkdir(parents=True, exist_ok=True)
                            profile = str(Path(args.profile).resolve() / f"{name}.pstats")
                        run = run_worker(tree, "python", str(data_file), args.frames, profile)
                        run.update(tree=name, repeat=i + 1)
                        results["profiled" if profile else "python"].append(run)
                        print(
                            f"  python {name:>8} #{i + 1}: books.process "
                            f"{run['books_process_us_per_frame']} us/frame, operator "
                            f"{run['operator_us_per_frame']} us/frame "
                            f"({run['operator_frames_per_s']} frames/s), records into JVM/frame "
                            f"{run['main_records_per_frame']}",
                            flush=True,
                        )
            if not args.skip_graph:
                topic = produce_topic(data.data)
                expected_file = Path(tmp) / "expected.json"
                expected_file.write_text(json.dumps(expected_versions(data.data)))
                for i in range(args.repeats + bool(args.profile)):
                    for name, tree in trees.items():
                        arg = f"{topic},{expected_file}"
                        spy = None
                        if i == args.repeats:
                            Path(args.profile).mkdir(parents=True, exist_ok=True)
                            spy = str(Path(args.profile).resolve() / f"{name}-graph.pyspy")
                        run = run_worker(tree, "graph", arg, args.frames, spy)
                        run.update(tree=name, repeat=i + 1)
                        results["profiled" if spy else "graph"].append(run)
                        print(
                            f"  graph  {name:>8} #{i + 1}: {run['frames_per_s_wall']} frames/s "
                            f"wall ({run['wall_s']} s), {run['frames_per_s_span']} frames/s in "
                            f"the Redis span ({run['redis_span_s']} s), "
                            f"{run['jvm_cpu_us_per_frame']} us JVM CPU/frame; rows "
                            f"{run['clickhouse_rows']}",
                            flush=True,
                        )
        finally:
            if topic is not None:
                _delete_kafka(settings, [topic], [])
    summary: dict[str, Any] = {}
    for mode, fields in (
        (
            "python",
            ("books_process_us_per_frame", "operator_us_per_frame", "operator_frames_per_s"),
        ),
        ("graph", ("frames_per_s_wall", "frames_per_s_span", "jvm_cpu_us_per_frame")),
    ):
        runs = results[mode]
        if not runs:
            continue
        med = {
            name: {
                f: statistics.median(r[f] for r in runs if r["tree"] == name and r[f])
                for f in fields
            }
            for name in ("baseline", "current")
        }
        summary[mode] = {
            "median": med,
            "current_over_baseline": {
                f: ratio(med["current"][f], med["baseline"][f]) for f in fields
            },
        }
    py = results["python"]
    if py:
        same = {k: len({r[k] for r in py}) == 1 for k in ("output_digest", "redis_digest")}
        summary["python"]["identical_outputs"] = same
    gr = results["graph"]
    if gr:
        summary["graph"]["identical_outputs"] = {
            "redis_versions": len({r["redis_versions_digest"] for r in gr}) == 1,
            # as many as the pure logic says, in every run (other tables depend on the
            # watermark and the wall clock)
            "trades_and_snapshot_rows": all(r["expected_trade_and_snapshot_rows"] for r in gr),
        }
    print(json.dumps(summary, indent=2))
    result = {
        "command": " ".join(["python -m bench.hot_path", *raw]),
        "baseline": {"rev": args.baseline, "commit": base},
        "current": {"commit": head, "uncommitted_changes": dirty},
        "conditions": {
            **data.conditions,
            "cpus": os.cpu_count(),
            "load_1m_at_start": os.getloadavg()[0],
            "python": platform.python_version(),
            "python_execution_mode": settings.flink.python_execution_mode,
            "state_backend": settings.flink.state_backend,
            "parallelism": 1,
            "cluster": "in-process MiniCluster per graph run (not the session cluster)",
            "order": "interleaved baseline, current per repeat; each run in a fresh process",
        },
        "runs": results,
        "summary": summary,
        "wall_seconds": round(time.monotonic() - wall, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
