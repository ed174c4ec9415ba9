"""``tickflow demo up|down``: the whole pipeline on one box against the simulator.

``up`` starts the local stack, the exchange simulator, the three connectors, the raw archiver
(``tickflow archive run``) and the dashboard (background processes with pid files under
``<state_dir>/apps``), submits the Flink job unless it is already running, and prints where to
look (Flink UI, dashboard, Prometheus, metrics). ``make run`` then shows the live books.

Restarts. ``down`` stops the job with a savepoint. ``up`` resumes from the newest restore point
it has: that savepoint, or the newest retained checkpoint of a job it started (after a crash or
a cancel). With none, the job starts with empty state, and where it starts reading is decided
and printed: from the consumer group's committed offsets when the backlog behind them is small
(``flink.catch_up_max_records``), else at the end of the raw topic, so the books sync from fresh
snapshots within seconds instead of staying dark behind a backlog that cannot make them live;
the skipped backlog is then stored by a batch backfill of exactly those offsets
(``tickflow job backfill --offsets``, in the background, log under ``<state_dir>/apps``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tickflow.config import Settings, load_settings, patched_environ
from tickflow.kafka_security import client_config

LIVE_WAIT_S = 120.0  # `up` reports how long until every book is LIVE, waiting up to this
# ... and fresh: its last message received this recently (a book restored from a checkpoint
# reads LIVE at once, with the data it had when the job stopped, until the job catches up)
FRESH_NS = 5_000_000_000

# app name -> tickflow subcommand; started in this order, stopped in reverse
APPS: dict[str, list[str]] = {
    "simulator": ["simulator"],
    "connector-binance": ["connector", "binance"],
    "connector-coinbase": ["connector", "coinbase"],
    "connector-kraken": ["connector", "kraken"],
    "archiver": ["archive", "run"],  # the raw topic into Parquet (docs/archive.md)
    "dashboard": ["dashboard"],
}


def _pid_file(settings: Settings, app: str) -> Path:
    return settings.state_dir / "apps" / f"{app}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_pid(settings: Settings, app: str) -> int | None:
    path = _pid_file(settings, app)
    if not path.exists():
        return None
    pid = int(path.read_text())
    return pid if _alive(pid) else None


def start_app(settings: Settings, app: str) -> int:
    pid = running_pid(settings, app)
    if pid:
        return pid
    log = settings.state_dir / "apps" / f"{app}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickflow.cli", *APPS[app]],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the terminal that ran `make run`
        )
    _pid_file(settings, app).write_text(str(proc.pid))
    _wait_healthy(settings, app, proc, log)
    return proc.pid


def _wait_healthy(settings: Settings, app: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The simulator answers /_sim/status; the connector must at least stay up while it connects."""
    url = f"http://{settings.simulator.host}:{settings.simulator.port}/_sim/status"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{app} exited with {proc.returncode} at start; read {log}")
        if app != "simulator":
            return
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{app} did not answer {url} within 30 s; read {log}")


def stop_app(settings: Settings, app: str, timeout: float = 15.0) -> None:
    pid = running_pid(settings, app)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    _pid_file(settings, app).unlink(missing_ok=True)


def _history_file(settings: Settings) -> Path:
    return settings.state_dir / "apps" / "pipeline.history.json"


def _history(settings: Settings) -> dict[str, Any]:
    """The job ids ``up`` started (newest last) and the savepoint ``down`` took, if any."""
    path = _history_file(settings)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"job_ids": [], "savepoint": None}
    return {"job_ids": list(data.get("job_ids", [])), "savepoint": data.get("savepoint")}


def _save_history(settings: Settings, history: dict[str, Any]) -> None:
    path = _history_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    history["job_ids"] = history["job_ids"][-20:]
    path.write_text(json.dumps(history))


def _metadata_mtime(uri: str | None) -> float | None:
    if not uri:
        return None
    # Flink writes file:/path, Path.as_uri() file:///path
    metadata = Path(urllib.parse.urlparse(uri).path) / "_metadata"
    return metadata.stat().st_mtime if metadata.exists() else None


def restore_point(settings: Settings, history: dict[str, Any]) -> str | None:
    """The newest of the savepoint ``down`` took and the retained checkpoints of the jobs ``up``
    started; None when there is neither."""
    from stack.supervisor import latest_checkpoint

    candidates = [history.get("savepoint"), latest_checkpoint(settings, history["job_ids"])]
    dated = [(t, uri) for uri in candidates if uri and (t := _metadata_mtime(uri)) is not None]
    return max(dated)[1] if dated else None


def raw_backlog(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """Per raw-topic partition: the consumer group's committed offset (none: the earliest
    retained) and the end offset."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.kafka.raw_topic
    consumer = Consumer(client_config(
        settings.kafka, **{"group.id": settings.flink.consumer_group, "enable.auto.commit": False}
    ))  # fmt: skip
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}, {}
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed, end = {}, {}
        for tp in _committed(consumer, parts):
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            committed[tp.partition] = min(max(tp.offset, low), high) if tp.offset >= 0 else low
            end[tp.partition] = high
        return committed, end
    finally:
        consumer.close()


def _committed(consumer: Any, parts: list[Any], timeout_s: float = 60.0) -> list[Any]:
    """The group's committed offsets; a broker still electing the group's coordinator (a
    fresh cluster creates its offsets topic on first use) answers retriably: ask again."""
    from confluent_kafka import KafkaError, KafkaException

    electing = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return list(consumer.committed(parts, timeout=30))
        except KafkaException as exc:
            error = exc.args[0]
            retriable = error.retriable() or error.code() in electing
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def start_backlog_backfill(settings: Settings, spec: str) -> subprocess.Popen[bytes]:
    """``tickflow job backfill --offsets SPEC`` in the background (its process)."""
    log = settings.state_dir / "apps" / "backlog-backfill.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickflow.cli", "job", "backfill", "--offsets", spec],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    print(f"backlog: stored by a backfill of {spec} (pid {proc.pid}, log {log})")
    return proc


def submit_job(settings: Settings, history: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Resume from the newest restore point, else start with empty state where ``raw_backlog``
    says (see the module's doc). The job id, and how it started."""
    from jobs.backfill import PartitionRange, format_offset_ranges
    from stack import flink

    pipeline = str(settings.root / "jobs" / "pipeline.py")
    restore = restore_point(settings, history)
    if restore:
        print(f"job: resuming from {restore}")
        job_id = flink.submit_python_job(settings, pipeline, [], from_savepoint=restore)
        return job_id, {"restored_from": restore}
    committed, end = raw_backlog(settings)
    backlog = sum(end[p] - committed[p] for p in end)
    how: dict[str, Any] = {"restored_from": None, "backlog_records": backlog}
    if backlog <= settings.flink.catch_up_max_records:
        at = ",".join(f"{p}:{o}" for p, o in sorted(committed.items())) or "(no topic yet)"
        print(f"job: no state to restore; reading from the committed offsets {at} "
              f"({backlog} records behind the end)")  # fmt: skip
        return flink.submit_python_job(settings, pipeline, []), {**how, "start": "committed"}
    start = ",".join(f"{p}:{o}" for p, o in sorted(end.items()))
    print(f"job: no state to restore and {backlog} records behind the committed offsets (more "
          f"than flink.catch_up_max_records = {settings.flink.catch_up_max_records}): starting "
          f"at the end of the topic, {start}")  # fmt: skip
    with patched_environ({"TICKFLOW__FLINK__START_OFFSETS": start}):
        job_id = flink.submit_python_job(settings, pipeline, [])
    skipped = [PartitionRange(p, committed[p], end[p]) for p in sorted(end)
               if end[p] > committed[p]]
    backfill = start_backlog_backfill(settings, format_offset_ranges(skipped))
    return job_id, {**how, "start": start, "backfill": backfill}


def wait_books_live(settings: Settings, started: float) -> float | None:
    """Print (and return) how long after the command every book in Redis read LIVE with a
    message received in the last ``FRESH_NS`` (books of instruments no longer configured may
    never be: then say which are not)."""
    from jobs.sinks.book_reader import read_all_books

    deadline = time.monotonic() + LIVE_WAIT_S
    books: list[Any] = []

    def live(book: Any) -> bool:
        return bool(book.status == "LIVE" and time.time_ns() - book.receive_time_ns < FRESH_NS)

    while time.monotonic() < deadline:
        books = read_all_books(settings.redis)
        if books and all(live(b) for b in books):
            seconds = time.monotonic() - started
            print(f"books: all {len(books)} LIVE and fresh {seconds:.1f} s after the command")
            return seconds
        time.sleep(0.2)
    now = time.time_ns()
    not_live = [f"{b.exchange}:{b.symbol} {b.status} {(now - b.receive_time_ns) / 1e9:.0f} s old"
                for b in books if not live(b)]  # fmt: skip
    print(f"books: not all LIVE and fresh after {LIVE_WAIT_S:.0f} s: "
          f"{', '.join(not_live) or 'none yet'}")  # fmt: skip
    return None


def up(settings: Settings) -> dict[str, Any]:
    """Everything up; how the job started (``submit_job``'s account, if it did) and
    ``live_after_s``."""
    from stack import flink
    from stack.cli import main as stack_main

    started = time.monotonic()
    if stack_main(["up"]) != 0:
        raise SystemExit("stack did not come up: see `tickflow stack status` and its logs")
    settings = load_settings()  # with the credentials a first `up` generated
    for app in APPS:
        print(f"{app}: pid {start_app(settings, app)} (log {settings.state_dir / 'apps'})")
    job_file = settings.state_dir / "apps" / "pipeline.jobid"
    known = job_file.read_text().strip() if job_file.exists() else ""
    states = {j["jid"]: j.get("state") for j in flink.list_jobs(settings)}
    how: dict[str, Any] = {}
    if known and states.get(known) == "RUNNING":
        print(f"job {known} already RUNNING")
    else:
        history = _history(settings)
        job_id, how = submit_job(settings, history)
        history["job_ids"].append(job_id)
        _save_history(settings, history)
        job_file.write_text(job_id)
        flink.wait_job_running(settings, job_id, 180)
        print(f"job {job_id} RUNNING")
    how["live_after_s"] = wait_books_live(settings, started)
    mon = settings.monitoring
    print(f"Flink web UI: http://127.0.0.1:{settings.flink.rest_port}")
    print(f"dashboard:    http://127.0.0.1:{mon.dashboard_port}")
    print(f"Prometheus:   http://127.0.0.1:{mon.prometheus_port} (alerts: /alerts)")
    ports = ", ".join(f"{ex} :{port}" for ex, port in mon.connector_metrics_ports.items())
    print(f"metrics:      Flink :{mon.flink_metrics_ports}, connectors {ports}, dashboard"
          f" :{mon.dashboard_port}/metrics")  # fmt: skip
    print(f"jobs:         curl -s localhost:{settings.flink.rest_port}/jobs/overview")
    return how


def running_job(settings: Settings) -> str | None:
    """The demo's job id if it is RUNNING."""
    from stack import flink

    job_file = settings.state_dir / "apps" / "pipeline.jobid"
    if not job_file.exists():
        return None
    job_id = job_file.read_text().strip()
    try:
        return job_id if flink.job_state(settings, job_id) == "RUNNING" else None
    except (OSError, flink.StackError):
        return None  # the cluster is down, or forgot the job


def running(settings: Settings) -> bool:
    """Whether any part of the demo runs (its job or one of its processes)."""
    return running_job(settings) is not None or any(running_pid(settings, a) for a in APPS)


def down(settings: Settings) -> None:
    """Stop the job with a savepoint (``up`` resumes from it; if it cannot be taken, the job is
    cancelled and ``up`` resumes from its newest retained checkpoint), then the processes."""
    from stack import flink

    job_file = settings.state_dir / "apps" / "pipeline.jobid"
    job_id = running_job(settings)
    if job_id is not None:
        history = _history(settings)
        try:
            history["savepoint"] = flink.stop_with_savepoint(settings, job_id)
            print(f"job {job_id} stopped; savepoint {history['savepoint']} (make run resumes it)")
        except (OSError, flink.StackError) as e:
            flink.cancel_job(settings, job_id)
            print(f"job {job_id} cancelled (no savepoint: {e}); make run resumes from its newest"
                  " retained checkpoint")  # fmt: skip
        if job_id not in history["job_ids"]:
            history["job_ids"].append(job_id)
        _save_history(settings, history)
    job_file.unlink(missing_ok=True)
    for app in reversed(APPS):
        stop_app(settings, app)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tickflow demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        choices=["up", "down", "yield"],
        help="yield: stop the demo if it runs, saying why (the test suite needs the stack alone)",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.command == "up":
        up(settings)
    elif args.command == "down":
        down(settings)
    elif running(settings):
        print("the demo (make run) is running: stopping it so the test suite has the stack to "
              "itself (its job with a savepoint: make run resumes it)", flush=True)  # fmt: skip
        down(settings)
    return 0
