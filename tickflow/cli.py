"""The ``tickflow`` command: one entry point that dispatches to each stage's own CLI."""

from __future__ import annotations

import importlib
import sys

from tickflow.config import ConfigError, load_settings
from tickflow.logs import setup_logging

# subcommand -> (module with a ``main(argv: list[str]) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": (
        "stack.cli",
        "local stack: up | down | status | logs (Kafka, Redis, ClickHouse, Flink, registry)",
    ),
    "schemas": (
        "schemas.cli",
        "topics' Avro schemas in the schema registry: register | check | list",
    ),
    "simulator": ("simulator.__main__", "run the exchange simulator on loopback"),
    "connector": (
        "connectors.__main__",
        "run exchange connectors that produce raw frames to Kafka",
    ),
    "job": ("jobs.cli", "submit / list / cancel the Flink pipeline job"),
    "demo": ("tickflow.demo", "whole pipeline on the simulator: demo up | down"),
    "core": (
        "jobs.core_cli",
        "connector recordings through the job's core, no servers: books, NBBO, trades, bars",
    ),
    "backtest": (
        "jobs.backtest",
        "a range of raw frames through the job's core to a strategy, with simulated fills",
    ),
    "export": (
        "jobs.export",
        "a day of the ClickHouse tables as Hive-partitioned Parquet with a manifest",
    ),
    "archive": (
        "jobs.archive.cli",
        "the raw topic as Parquet beyond Kafka's retention: run | status",
    ),
    "completeness": (
        "jobs.completeness",
        "per book, the time of a day it was not in sync, by reason, from the gaps table",
    ),
    "book-at": (
        "jobs.book_at",
        "one exchange's full book as of a time, rebuilt exactly from the raw frames",
    ),
    "api": (
        "api.cli",
        "research query API (history, live books, SSE) with API keys: serve | keys",
    ),
    "book": ("jobs.sinks.book_reader", "print a live order book from Redis"),
    "watch": ("jobs.sinks.book_reader", "live terminal view of every book in Redis"),
    "dashboard": (
        "monitoring.dashboard",
        "live web dashboard (rates, latency, lag, books, NBBO, alerts) and alert receiver",
    ),
}


def usage() -> str:
    lines = ["usage: tickflow <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tickflow: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:  # subcommands with their own logging options (connector, simulator) set it again
        setup_logging(load_settings())
    except ConfigError:
        setup_logging("INFO", "text")  # the subcommand reports the configuration error
    module = importlib.import_module(COMMANDS[name][0])
    if name == "watch":
        rest = ["--watch", *rest]
    return int(module.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())
