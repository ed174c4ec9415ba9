#!/usr/bin/env python
"""Container health checks that read their ports from the tickflow configuration.

    tickflow-healthcheck connector binance   the connector's /metrics answers
    tickflow-healthcheck simulator           the simulator's /_sim/health answers
    tickflow-healthcheck archive             the archiver's /metrics answers
    tickflow-healthcheck url http://...      any URL answers 2xx
Exit 0 when healthy, 1 otherwise (Docker's HEALTHCHECK contract).
"""

from __future__ import annotations

import sys
import urllib.request

from tickflow.config import load_settings

TIMEOUT_S = 3.0


def target(argv: list[str]) -> str:
    kind, *rest = argv
    if kind == "url":
        return rest[0]
    settings = load_settings()
    if kind == "connector":
        port = settings.monitoring.connector_metrics_ports[rest[0]]
        return f"http://127.0.0.1:{port}/metrics"
    if kind == "simulator":
        return f"http://127.0.0.1:{settings.simulator.port}/_sim/health"
    if kind == "archive":
        return f"http://127.0.0.1:{settings.archive.metrics_port}/metrics"
    raise SystemExit(f"usage: {__doc__}")


def main(argv: list[str]) -> int:
    try:
        with urllib.request.urlopen(target(argv), timeout=TIMEOUT_S) as response:
            return 0 if 200 <= response.status < 300 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
