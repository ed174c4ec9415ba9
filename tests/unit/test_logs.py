"""Structured logs: one JSON object per line with the exchange/symbol/connection/job fields,
a readable text format, the level from the configuration, and connectors' own log lines."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.binance import BinanceConnector
from simulator.testing import ListSink, http_json, pointed_at, running_simulator, wait_until
from tickflow.config import Settings, load_settings
from tickflow.logs import bind_log_fields, log_fields, setup_logging, unbind_log_fields

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """setup_logging configures the process's root logger: put it back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def settings(**monitoring: Any) -> Settings:
    loaded = load_settings(overlays=[ROOT / "config" / "simulator.yaml"], environ={})
    return dataclasses.replace(
        loaded, monitoring=dataclasses.replace(loaded.monitoring, **monitoring)
    )


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out, job_id="job-7")
    log = logging.getLogger("tickflow.test")
    log.info("plain %s", "message")
    with log_fields(exchange="binance", connection_id="c0ffee"):
        log.warning("book %s lost", "BTCUSDT", extra={"symbol": "BTCUSDT"})
    log.debug("not at INFO")
    plain, lost = json_lines(out)
    assert ISO_MS_UTC.match(plain["ts"])
    assert plain == {
        "ts": plain["ts"], "level": "INFO", "logger": "tickflow.test", "msg": "plain message",
        "job_id": "job-7",
    }
    assert lost == {
        "ts": lost["ts"], "level": "WARNING", "logger": "tickflow.test", "msg": "book BTCUSDT lost",
        "exchange": "binance", "symbol": "BTCUSDT", "connection_id": "c0ffee", "job_id": "job-7",
    }


def test_a_calls_extra_wins_over_bound_and_static_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out, exchange="static")
    token = bind_log_fields(exchange="bound", symbol="ETHUSDT")
    try:
        logging.getLogger("t").info("one", extra={"exchange": "call"})
        logging.getLogger("t").info("two")
    finally:
        unbind_log_fields(token)
    logging.getLogger("t").info("three")
    one, two, three = json_lines(out)
    assert (one["exchange"], one["symbol"]) == ("call", "ETHUSDT")
    assert (two["exchange"], two["symbol"]) == ("bound", "ETHUSDT")
    assert three["exchange"] == "static" and "symbol" not in three


def test_exceptions_are_in_the_same_line() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    try:
        raise ValueError("bad frame\nsecond line")
    except ValueError:
        logging.getLogger("t").exception("parse failed")
    (line,) = out.getvalue().splitlines()  # newlines in the traceback are escaped
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["msg"] == "parse failed"
    assert record["exc"].startswith("Traceback")
    assert "ValueError: bad frame\nsecond line" in record["exc"]


def test_text_format_is_readable() -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", stream=out, exchange="binance")
    logging.getLogger("connectors.base").warning("binance: reconnecting in %.2fs", 0.5)
    line = out.getvalue().rstrip("\n")
    ts, rest = line.split(" ", 1)
    assert ISO_MS_UTC.match(ts)
    assert rest == "WARNING connectors.base: binance: reconnecting in 0.50s"


def test_level_and_format_come_from_the_monitoring_section() -> None:
    out = io.StringIO()
    setup_logging(settings(log_level="warning", log_format="json"), stream=out)
    logging.getLogger("t").info("quiet")
    logging.getLogger("t").warning("loud")
    assert [r["msg"] for r in json_lines(out)] == ["loud"]
    with pytest.raises(ValueError, match="log level"):
        setup_logging(settings(log_level="LOUD"))
    with pytest.raises(ValueError, match="log format"):
        setup_logging(settings(log_format="xml"))


def test_setting_up_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "json", stream=first)
    setup_logging("INFO", "text", stream=second)
    logging.getLogger("t").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_connector_log_lines_carry_exchange_connection_and_symbol() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    loaded = settings()
    loaded = dataclasses.replace(
        loaded,
        connectors=dataclasses.replace(
            loaded.connectors, backoff_initial_s=0.02, backoff_max_s=0.2, stale_timeout_s=0.5
        ),
    )

    async def scenario() -> tuple[list[str], BinanceConnector]:
        async with running_simulator(loaded, rate_per_symbol=100, depth_levels=20) as sim:
            sink = ListSink()
            connector = BinanceConnector(pointed_at(loaded, sim), sink, random.Random(1))
            task = asyncio.create_task(connector.run())
            await wait_until(lambda: connector.stats.snapshots == 2, what="snapshots")
            await http_json(f"{sim.http_url}/_sim/faults/silent?exchange=binance", "POST")
            await wait_until(
                lambda: connector.stats.stale_timeouts == 1 and connector.stats.connections == 2,
                what="stale timeout and a new connection",
            )
            connector.stop()
            await asyncio.wait_for(task, 10)
        return sorted({e.connection_id for e in sink.envelopes}), connector

    connection_ids, _ = asyncio.run(asyncio.wait_for(scenario(), 60))
    lines = [r for r in json_lines(out) if r["logger"].startswith("connectors")]
    connected = [r for r in lines if r["msg"].startswith("binance: connected ")]
    assert [r["exchange"] for r in connected] == ["binance", "binance"]
    for r in connected:  # the field is the connection the message names
        assert r["msg"].endswith(f"(connection {r['connection_id']})")
    assert {r["connection_id"] for r in connected} >= set(connection_ids)
    snapshots = [r for r in lines if r["msg"].startswith("binance: snapshot ")]
    assert {r["symbol"] for r in snapshots} == {"BTCUSDT", "ETHUSDT"}
    # each snapshot names the connection it was fetched for (the reconnect fetches new ones)
    assert {r["connection_id"] for r in snapshots} <= {r["connection_id"] for r in connected}
    (stale,) = [r for r in lines if "no data for" in r["msg"]]
    assert stale["level"] == "WARNING"
    assert (stale["exchange"], stale["connection_id"]) == ("binance", connected[0]["connection_id"])
    reconnecting = [r for r in lines if r["msg"].startswith("binance: reconnecting in")]
    assert reconnecting[0]["msg"].endswith("(stale)") and "connection_id" not in reconnecting[0]


def test_a_field_given_as_none_hides_a_bound_one() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    with log_fields(exchange="binance", connection_id="c0ffee"):
        logging.getLogger("t").error("kafka down", extra={"connection_id": None})
    (line,) = json_lines(out)
    assert line["exchange"] == "binance" and "connection_id" not in line
