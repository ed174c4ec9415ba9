"""A faulted day through the batch backfill's core into ClickHouse: its ``gaps`` rows are
stored (once, though inserted twice as a replay would), and the completeness report, as a
function and as ``tickflow completeness``, says what the faults were. And the simulator's faults,
through the connectors and the job's core, give a report of exactly those faults.

Uses a private database on the configured ClickHouse (dropped afterwards); starts only
ClickHouse, and only when it does not answer.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import date

import pytest

from jobs import completeness as report
from jobs.sinks.clickhouse import RowBinaryWriter, connect, ensure_schema
from simulator.testing import running_simulator, wait_until
from stack import manager
from tests.unit.core_driver import core_settings
from tests.unit.test_gaps import (
    DAY_MS,
    DAY_START_MS,
    Pipeline,
    backfill_tables,
    base_settings,
    fault,
    faulted_day,
    run,
)
from tickflow.config import ClickHouseConfig, load_settings

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 30)


@pytest.fixture(scope="module")
def clickhouse() -> Iterator[ClickHouseConfig]:
    """A private database on the configured server, the faulted day's tables in it."""
    settings = load_settings()
    component = manager.components(settings, ["clickhouse"])[0]
    try:
        answers = component.answers()
    except Exception:
        answers = False
    started = [] if answers else manager.up(settings, ["clickhouse"])
    config = dataclasses.replace(settings.clickhouse, database=f"gapstest_{uuid.uuid4().hex[:10]}")
    try:
        ensure_schema(config)
        records, _ = faulted_day()
        tables = backfill_tables(core_settings(), records)
        writer = RowBinaryWriter(config)
        try:
            for _ in range(2):  # the second time as an at-least-once replay
                for table, (data, rows) in tables.items():
                    writer.insert(table, data, rows)
        finally:
            writer.close()
        yield config
    finally:
        client = connect(config)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {config.database}")
        finally:
            client.disconnect()
        if started:
            manager.down(settings, started)


def test_the_gaps_rows_are_stored_once(clickhouse: ClickHouseConfig) -> None:
    client = connect(clickhouse)
    try:
        db = clickhouse.database
        kinds = client.execute(
            f"SELECT symbol, kind, closed, count() FROM {db}.gaps FINAL "
            "GROUP BY symbol, kind, closed ORDER BY symbol, kind, closed"
        )
    finally:
        client.disconnect()
    assert kinds == [
        ("BTCUSDT", "gap", 1, 1),
        ("BTCUSDT", "startup", 1, 1),
        ("BTCUSDT", "sync_lost", 1, 2),
        ("ETHUSDT", "startup", 1, 1),
        ("ETHUSDT", "sync_lost", 0, 1),
    ]


def test_the_completeness_report_is_the_faults(clickhouse: ClickHouseConfig) -> None:
    _, expected = faulted_day()
    books = report.completeness(clickhouse, DAY, now_ms=DAY_START_MS + 3 * DAY_MS)
    assert [(b.exchange, b.symbol) for b in books] == [
        ("binance", "BTCUSDT"),
        ("binance", "ETHUSDT"),
    ]
    got = {
        (b.symbol, kind): (v["gaps"], v["ms"], 0) for b in books for kind, v in b.by_kind.items()
    }
    assert got == {key: (n, ms, 0) for key, (n, ms, _) in expected.items()}
    btc, eth = books
    assert btc.out_of_sync_ms == 600_000 + 90_000 and btc.still_open == 0
    assert btc.covered == pytest.approx(1 - 690_000 / DAY_MS)
    assert eth.still_open == 1 and eth.covered == pytest.approx(0.5)
    # the day after: the interval across midnight and the one still open
    after = report.completeness(clickhouse, date(2026, 12, 1), now_ms=DAY_START_MS + 3 * DAY_MS)
    assert [(b.symbol, b.out_of_sync_ms) for b in after] == [
        ("BTCUSDT", 60_000),
        ("ETHUSDT", DAY_MS),
    ]
    only = report.completeness(clickhouse, DAY, "binance", "ETHUSDT", now_ms=DAY_START_MS)
    assert [(b.symbol, b.out_of_sync_ms) for b in only] == [("ETHUSDT", 0)]  # nothing yet


def test_the_command_prints_the_report(
    clickhouse: ClickHouseConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--day", DAY.isoformat(), "--database", clickhouse.database]
    assert report.main([*args, "--json", "--gaps"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["symbol"] for b in out["books"]] == ["BTCUSDT", "ETHUSDT"]
    assert out["books"][0]["out_of_sync_ms"] == 690_000
    assert len(out["gaps"]) == 6  # BTCUSDT 4 (its first sync, the drop, 2 losses), ETHUSDT 2
    assert report.main([*args, "--symbol", "BTCUSDT"]) == 0
    text = capsys.readouterr().out
    assert "BTCUSDT" in text and "ETHUSDT" not in text
    assert "gap 1 (600.0 s)" in text and "sync_lost 2 (90.0 s)" in text


def test_a_simulated_day_with_faults_reports_the_faults(clickhouse: ClickHouseConfig) -> None:
    """The simulator's faults (a dropped Binance update, a bad Kraken checksum, a Binance
    disconnect) through the connectors and the job's core into ClickHouse: the report of the
    day has one interval per fault and book it hit, of that fault's kind, and no other (the
    books' first sync aside)."""
    settings = base_settings()
    config = dataclasses.replace(clickhouse, database=f"{clickhouse.database}_sim")
    ensure_schema(config)
    pipelines: list[Pipeline] = []

    async def scenario() -> None:
        async with (
            running_simulator(settings, rate_per_symbol=50, depth_levels=40) as sim,
            Pipeline(sim, settings, "binance") as binance,
            Pipeline(sim, settings, "kraken") as kraken,
        ):
            pipelines.extend([binance, kraken])
            await wait_until(lambda: binance.in_sync() and kraken.in_sync(), what="LIVE")
            await fault(sim, "drop?exchange=binance&symbol=BTCUSDT&channel=depth&count=1")
            await fault(sim, "checksum?exchange=kraken&symbol=BTC/USD&count=1")
            await wait_until(
                lambda: len(binance.gaps()) == 3 and len(kraken.gaps()) == 3, what="both faults"
            )
            await wait_until(lambda: binance.in_sync() and kraken.in_sync(), what="resynced")
            await fault(sim, "disconnect?exchange=binance")
            await wait_until(lambda: len(binance.gaps()) == 5 and binance.in_sync(), what="back")

    run(scenario)
    writer = RowBinaryWriter(config)
    try:
        for p in pipelines:
            p.catch_up()
            p.core.finish()
            for table in ("gaps", "top_of_book"):
                data, rows = p.core.tables[table]
                writer.insert(table, data, rows)
    finally:
        writer.close()
    try:
        days = sorted({g["date"] for p in pipelines for g in p.gaps()})
        got: dict[tuple[str, str, str], int] = {}
        for day in days:  # one, unless the run crossed midnight
            for book in report.completeness(config, day):
                for kind, v in book.by_kind.items():
                    if kind != "startup":
                        key = (book.exchange, book.symbol, kind)
                        got[key] = got.get(key, 0) + v["gaps"]
        assert got == {
            ("binance", "BTCUSDT", "gap"): 1,  # the drop
            ("binance", "BTCUSDT", "sync_lost"): 1,  # the disconnect, every book of it
            ("binance", "ETHUSDT", "sync_lost"): 1,
            ("kraken", "BTC/USD", "checksum"): 1,  # the bad checksum
        }
    finally:
        client = connect(config)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {config.database}")
        finally:
            client.disconnect()
