"""A silent exchange socket is seen by Prometheus within 2 minutes (ConnectorSilent fires), the
alert reaches the configured webhook through the dashboard's receiver, and it clears once the
connector has reconnected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stack.system import port_open
from tickflow.config import Settings, patched_environ
from tickflow.slice import free_port, sim_post, start_slice, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALERT = "ConnectorSilent"
DETECT_WITHIN_S = 120


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received = []
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()


def prometheus_alerts(settings: Settings) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{settings.monitoring.prometheus_port}/api/v1/alerts"
    with urllib.request.urlopen(url, timeout=5) as resp:
        alerts: list[dict[str, Any]] = json.load(resp)["data"]["alerts"]
    return alerts


def silent_alert(settings: Settings, state: str) -> dict[str, Any] | None:
    for alert in prometheus_alerts(settings):
        labels = alert["labels"]
        if (labels.get("alertname"), labels.get("exchange"), alert["state"]) == (
            ALERT,
            "binance",
            state,
        ):
            return alert
    return None


def forwarded(status: str) -> bool:
    return any(
        a.get("status") == status
        and a["labels"].get("alertname") == ALERT
        and a["labels"].get("exchange") == "binance"
        for batch in Hook.received
        for a in batch.get("alerts", [])
    )


def test_a_silent_socket_fires_the_alert_and_it_clears_after_recovery(
    stack_settings: Settings, tmp_path: Path, webhook: str
) -> None:
    settings = stack_settings
    if port_open("127.0.0.1", int(settings.monitoring.connector_metrics_ports["binance"])):
        pytest.skip("a binance connector (make run?) already holds its metrics port")
    dashboard_port = settings.monitoring.dashboard_port
    own_dashboard = not port_open("127.0.0.1", dashboard_port)
    env = {"TICKFLOW__MONITORING__ALERT_WEBHOOK": webhook}
    with (
        patched_environ(env),
        start_slice(tmp_path, exchanges=("binance",), rate_per_symbol=10) as run,
    ):
        dashboard = None
        if own_dashboard:  # Prometheus sends its alerts there; it forwards them to the webhook
            dashboard = subprocess.Popen(
                [sys.executable, "-m", "tickflow.cli", "dashboard"],
                stdout=(tmp_path / "dashboard.log").open("wb"),
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )
        try:
            wait_for("no ConnectorSilent for binance while frames flow",
                     lambda: silent_alert(run.settings, "firing") is None, 60)  # fmt: skip
            # the server stops sending on the connection but keeps it open: only the
            # connector's stale timer (connectors.stale_timeout_s) notices
            sim_post(run.settings, "faults/silent?exchange=binance&count=1")
            silenced = time.monotonic()
            wait_for(f"{ALERT} firing", lambda: silent_alert(run.settings, "firing"),
                     DETECT_WITHIN_S)  # fmt: skip
            detected_s = time.monotonic() - silenced
            assert detected_s < DETECT_WITHIN_S
            print(f"{ALERT} firing {detected_s:.1f} s after the socket went silent")
            # the stale timer reconnects, frames flow again: the alert resolves
            wait_for(f"{ALERT} cleared", lambda: (
                silent_alert(run.settings, "firing") is None
                and silent_alert(run.settings, "pending") is None
            ), 180)  # fmt: skip
            print(f"{ALERT} cleared {time.monotonic() - silenced:.1f} s after the silence began")
            if own_dashboard:
                wait_for("firing alert forwarded to the webhook", lambda: forwarded("firing"), 60)
                wait_for("resolved alert forwarded", lambda: forwarded("resolved"), 120)
        finally:
            if dashboard is not None:
                dashboard.terminate()
                dashboard.wait(10)
