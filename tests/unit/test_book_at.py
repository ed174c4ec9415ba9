"""A book as of a time (``jobs.book_at``) over a faulted day of raw frames held in memory (the
``FrameSource`` interface, no Kafka): in sync, inside a gap, right before a dropped update,
after a resync located from the gaps table or found by the bounded scan, and times the frames
do not cover."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.book_at import Interval, Locate, NoFrames, book_at, main, parse_time, render
from tests.memory_frames import MemoryFrames
from tests.unit.core_driver import core_settings
from tests.unit.test_gaps import DAY_MS, DAY_START_MS, HOUR_MS, faulted_day
from tickflow.config import Settings
from tickflow.instruments import UnknownInstrument

pytestmark = pytest.mark.unit

T0 = DAY_START_MS
GAP = Interval(T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS + 600_000, "gap", "gap: expected update 102")


@pytest.fixture
def settings() -> Settings:
    """The day's frames are hours apart: an hour of lookahead, three of bounded scan."""
    base = core_settings()
    replay = dataclasses.replace(
        base.replay, book_at_lookahead_ms=HOUR_MS, book_at_max_scan_ms=3 * HOUR_MS
    )
    return dataclasses.replace(base, replay=replay)


@pytest.fixture
def frames() -> MemoryFrames:
    records, _ = faulted_day()
    # small batches: reading stops at the book's first event after the time
    return MemoryFrames(sorted(records, key=lambda r: r[1]), read_batch=2)


def stored(*intervals: Interval) -> Locate:
    """What the gaps table would say: the latest of these begun by the time."""

    def locate(exchange: str, symbol: str, at_ms: int) -> Interval | None:
        begun = [i for i in intervals if i.start_ms <= at_ms]
        return max(begun, key=lambda i: i.start_ms) if begun else None

    return locate


STARTUP = Interval(T0 + 10_000, T0 + 10_000, "startup", "awaiting snapshot")


def test_in_sync_the_book_is_its_snapshot_and_updates_to_the_time(
    settings: Settings, frames: MemoryFrames
) -> None:
    book = book_at(settings, frames, "binance", "BTC-USDT", T0 + HOUR_MS // 2, stored(STARTUP))
    assert (book.symbol, book.instrument, book.status) == ("BTCUSDT", "BTC-USDT", "LIVE")
    assert (book.seq, book.bids, book.asks) == (100, [("100.0", "1")], [("101.0", "1")])
    assert book.next_event_time_ms == T0 + HOUR_MS  # update 101 follows: nothing was missed
    assert book.sync_point == "gaps" and book.scan_from_ms == STARTUP.start_ms - 1_000
    assert book.gap is None


def test_right_before_a_dropped_update_the_book_is_not_known(
    settings: Settings, frames: MemoryFrames
) -> None:
    # update 101 at 1 h, then 105 at 2 h: 102-104 are lost, stamped at some time in between
    at_ms = T0 + 90 * 60_000
    book = book_at(settings, frames, "binance", "BTCUSDT", at_ms, stored(STARTUP, GAP))
    assert book.status == "RESYNCING" and "missing" in book.reason, book.reason
    assert book.bids == [] and book.asks == []
    assert book.gap == GAP  # the interval update 105 began
    assert book.next_event_time_ms == GAP.start_ms


def test_inside_a_gap_the_book_is_not_in_sync_with_the_stored_interval(
    settings: Settings, frames: MemoryFrames
) -> None:
    at_ms = T0 + 2 * HOUR_MS + 300_000
    book = book_at(settings, frames, "binance", "BTCUSDT", at_ms, stored(STARTUP, GAP))
    assert book.status == "RESYNCING" and book.bids == [] and book.asks == []
    assert book.gap == GAP
    assert book.scan_from_ms == GAP.start_ms - 1_000


def test_after_a_resync_the_book_is_the_new_snapshot(
    settings: Settings, frames: MemoryFrames
) -> None:
    at_ms = T0 + 3 * HOUR_MS
    book = book_at(settings, frames, "binance", "BTCUSDT", at_ms, stored(STARTUP, GAP))
    assert (book.status, book.seq) == ("LIVE", 110)
    assert (book.bids, book.asks) == ([("100.0", "1")], [("101.0", "1")])
    assert book.synced_ms == GAP.end_ms
    # quiet after the time: no event of the book within the lookahead, the frames go on
    assert book.next_event_time_ms is None
    # only the frames from the gap's start to the time and its lookahead were read
    read = frames.offset_range(book.partition, GAP.start_ms - 1_000, at_ms + HOUR_MS)
    assert (book.start_offset, book.end_offset) == read and book.frames == read[1] - read[0]


def test_without_stored_intervals_the_scan_is_bounded(
    settings: Settings, frames: MemoryFrames
) -> None:
    def nothing(exchange: str, symbol: str, at_ms: int) -> None:
        return None

    # from the day's start (within the bound: 3 h), through the gap and its resync
    book = book_at(settings, frames, "binance", "BTCUSDT", T0 + 3 * HOUR_MS, nothing)
    assert (book.status, book.seq, book.sync_point) == ("LIVE", 110, "bounded")
    # 5.5 h: from 2.5 h, after the resync at 2 h 10 min: the next one (200, at 5 h 30 s)
    book = book_at(settings, frames, "binance", "BTCUSDT", T0 + 5 * HOUR_MS + HOUR_MS // 2, nothing)
    assert (book.status, book.seq) == ("LIVE", 200)
    # 5 h 10 s with a bound of 1 h: lost at 5 h, its last snapshot (2 h 10 min) out of reach
    replay = dataclasses.replace(settings.replay, book_at_max_scan_ms=HOUR_MS)
    short = dataclasses.replace(settings, replay=replay)
    book = book_at(short, frames, "binance", "BTCUSDT", T0 + 5 * HOUR_MS + 10_000, nothing)
    assert book.status == "RESYNCING" and "no snapshot" in book.reason, book.reason
    assert book.bids == [] and book.asks == []


def test_times_the_frames_do_not_cover_are_refused(
    settings: Settings, frames: MemoryFrames
) -> None:
    # before its first snapshot: the snapshot, received after the time, is not applied
    with pytest.raises(NoFrames, match="no frames of binance:BTCUSDT"):
        book_at(settings, frames, "binance", "BTCUSDT", T0 + 1_000, stored())
    with pytest.raises(NoFrames, match="do not reach"):
        book_at(settings, frames, "binance", "BTCUSDT", T0 + DAY_MS + HOUR_MS, stored(STARTUP))
    with pytest.raises(UnknownInstrument):
        book_at(settings, frames, "binance", "NOPE", T0, stored())
    with pytest.raises(UnknownInstrument):
        book_at(settings, frames, "okx", "BTCUSDT", T0, stored())


def test_times_are_epoch_ms_or_iso_8601_utc() -> None:
    assert parse_time("1796472187250") == 1796472187250
    assert parse_time("2026-12-05T12:03:07.250Z") == 1796472187250
    assert parse_time("2026-12-05T12:03:07.250") == 1796472187250
    assert parse_time("2026-12-05T13:03:07.250+01:00") == 1796472187250
    for bad in ("yesterday", "0", "-5", "1e3", "99999999999999999"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_the_command_prints_the_book_or_why_not(
    settings: Settings, frames: MemoryFrames, capsys: pytest.CaptureFixture[str]
) -> None:
    live = book_at(settings, frames, "binance", "BTCUSDT", T0 + 3 * HOUR_MS, stored(STARTUP, GAP))
    text = render(live, 5)
    assert "binance BTCUSDT (BTC-USDT) as of 2026-11-30T03:00:00.000+00:00: LIVE" in text
    assert "update 110" in text and "100.0 | 101.0" in text
    gap = book_at(settings, frames, "binance", "BTCUSDT", GAP.start_ms + 1, stored(STARTUP, GAP))
    text = render(gap, 5)
    assert "RESYNCING" in text and "interval 2026-11-30T02:00:00.000+00:00 - " in text
    # refused before any server is asked
    assert main(["--exchange", "binance", "--symbol", "BTCUSDT", "--time", "noon"]) == 2
    assert "is not a time" in capsys.readouterr().err
    assert main(["--exchange", "okx", "--symbol", "BTCUSDT", "--time", "1"]) == 2
    assert "unknown exchange 'okx'" in capsys.readouterr().err
