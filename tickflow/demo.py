"""``tickflow demo up|down``: the whole pipeline on one box against the simulator.

``up`` starts the local stack, the exchange simulator, the three connectors and the dashboard
(background processes with pid files under ``<state_dir>/apps``), submits the Flink job unless
it is already running, and prints where to look (Flink UI, dashboard, Prometheus, metrics).
``make run`` then shows the live books.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tickflow.config import Settings, load_settings

# app name -> tickflow subcommand; started in this order, stopped in reverse
APPS: dict[str, list[str]] = {
    "simulator": ["simulator"],
    "connector-binance": ["connector", "binance"],
    "connector-coinbase": ["connector", "coinbase"],
    "connector-kraken": ["connector", "kraken"],
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


def up(settings: Settings) -> None:
    from stack import flink
    from stack.cli import main as stack_main

    if stack_main(["up"]) != 0:
        raise SystemExit("stack did not come up: see `tickflow stack status` and its logs")
    for app in APPS:
        print(f"{app}: pid {start_app(settings, app)} (log {settings.state_dir / 'apps'})")
    job_file = settings.state_dir / "apps" / "pipeline.jobid"
    known = job_file.read_text().strip() if job_file.exists() else ""
    states = {j["jid"]: j.get("state") for j in flink.list_jobs(settings)}
    if known and states.get(known) == "RUNNING":
        print(f"job {known} already RUNNING")
    else:
        job_id = flink.submit_python_job(settings, str(settings.root / "jobs" / "pipeline.py"), [])
        job_file.write_text(job_id)
        flink.wait_job_running(settings, job_id, 180)
        print(f"job {job_id} RUNNING")
    mon = settings.monitoring
    print(f"Flink web UI: http://127.0.0.1:{settings.flink.rest_port}")
    print(f"dashboard:    http://127.0.0.1:{mon.dashboard_port}")
    print(f"Prometheus:   http://127.0.0.1:{mon.prometheus_port} (alerts: /alerts)")
    ports = ", ".join(f"{ex} :{port}" for ex, port in mon.connector_metrics_ports.items())
    print(f"metrics:      Flink :{mon.flink_metrics_ports}, connectors {ports}, dashboard"
          f" :{mon.dashboard_port}/metrics")  # fmt: skip
    print(f"jobs:         curl -s localhost:{settings.flink.rest_port}/jobs/overview")


def down(settings: Settings) -> None:
    from stack import flink

    job_file = settings.state_dir / "apps" / "pipeline.jobid"
    if job_file.exists():
        job_id = job_file.read_text().strip()
        try:
            if flink.job_state(settings, job_id) == "RUNNING":
                flink.cancel_job(settings, job_id)
                print(f"job {job_id} cancelled")
        except OSError:
            pass  # the cluster is already down: nothing to cancel
        job_file.unlink()
    for app in reversed(APPS):
        stop_app(settings, app)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tickflow demo", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args(argv)
    settings = load_settings()
    up(settings) if args.command == "up" else down(settings)
    return 0
