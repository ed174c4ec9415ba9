"""Per-instrument publication rules: staleness, resync retries, top-of-book changes."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from jobs.book.levels import BookStatus
from jobs.instrument import InstrumentBooks
from jobs.sinks.clickhouse import top_of_book_row
from schemas.codec import RawEnvelope

pytestmark = pytest.mark.unit

T0_NS = 1_700_000_000_000_000_000
BOOK = ("binance", "BNBBTC")


def env(channel: str, frame: dict, rx_ns: int) -> RawEnvelope:
    return RawEnvelope(
        "BNB-BTC", "binance", "BNBBTC", channel, rx_ns, "c1", 0, json.dumps(frame).encode()
    )


def depth(U: int, u: int, bids: list, asks: list) -> dict:
    return {
        "e": "depthUpdate",
        "E": 1_700_000_000_000,
        "s": "BNBBTC",
        "U": U,
        "u": u,
        "b": bids,
        "a": asks,
    }


def live_books() -> InstrumentBooks:
    books = InstrumentBooks("BNB-BTC", 10, 1000, 100, 100)
    books.process(
        env("snapshot", {"lastUpdateId": 10, "bids": [["1.0", "2"]], "asks": [["1.1", "3"]]}, T0_NS)
    )
    return books


def test_live_book_turns_stale_when_silent_and_live_again_on_the_next_message() -> None:
    books = live_books()
    now_ms = T0_NS // 1_000_000
    assert books.mark_stale(now_ms + 500, stale_after_ms=1000) == []
    [view] = books.mark_stale(now_ms + 1500, stale_after_ms=1000)
    assert view.status is BookStatus.STALE and "no message for 1.5 s" in view.reason
    assert view.bids == ((Decimal("1.0"), Decimal("2")),)  # a stale book keeps its levels
    assert books.mark_stale(now_ms + 2500, stale_after_ms=1000) == []  # said once
    out = books.process(env("depth", depth(11, 11, [["1.0", "4"]], []), T0_NS + 3 * 10**9))
    assert [v.status for v in out.book_views] == [BookStatus.LIVE]


def test_resync_is_asked_again_only_after_the_retry_interval() -> None:
    books = InstrumentBooks("BNB-BTC", 10, 1000, 100, 100)
    books.process(env("depth", depth(5, 6, [], []), T0_NS))  # waiting for its first snapshot
    assert books.due_resyncs(1_000, retry_ms=10_000) == []  # the clock starts
    assert books.due_resyncs(5_000, retry_ms=10_000) == []
    [(book_id, reason)] = books.due_resyncs(11_000, retry_ms=10_000)
    assert book_id == BOOK and reason.startswith("still RESYNCING")
    assert books.due_resyncs(12_000, retry_ms=10_000) == []


def test_top_of_book_rows_only_when_the_touch_changes() -> None:
    books = live_books()
    out = books.process(env("depth", depth(11, 11, [["0.9", "1"]], []), T0_NS + 1))
    assert out.book_views and out.top_changes == []  # a deeper level changed
    out = books.process(env("depth", depth(12, 12, [["1.0", "5"]], []), T0_NS + 2))
    [view] = out.top_changes
    row = top_of_book_row(view)
    assert row[1:4] == ("binance", "BNBBTC", "BNB-BTC")
    assert row[7:12] == ("LIVE", Decimal("1.0"), Decimal("5"), Decimal("1.1"), Decimal("3"))
    out = books.process(env("depth", depth(20, 21, [], []), T0_NS + 3))  # a gap
    [view] = out.top_changes
    assert top_of_book_row(view)[7:12] == ("RESYNCING", None, None, None, None)


def test_every_table_has_its_columns() -> None:
    from jobs.sinks.clickhouse import COLUMNS, TABLES

    assert set(COLUMNS) == set(TABLES)
    for table, columns in COLUMNS.items():
        for column in columns:
            assert f"\n    {column} " in TABLES[table], (table, column)
