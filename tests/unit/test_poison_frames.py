"""Issue 16's poison frames through the compiled core as the job drives it (``NativeStream``
configured from config/tickflow.yaml): each leaves as a dead letter with its reason and its
exact bytes, the book stays as it was (or resyncs), and the core goes on. The Rust side has
the same reproducers and more (jobs/native/tests/poison_frames.rs) and the fuzz campaign
(docs/robustness.md)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.unit.core_driver import (
    Core,
    binance,
    bn_depth,
    bn_snapshot,
    bn_trade,
    cb_l2,
    cb_trade,
    coinbase,
    envelope,
    levels,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
DAY_MS = 86_400_000


def live_binance() -> Core:
    core = Core("BNB-BTC")
    core.process(binance("snapshot", bn_snapshot(100, [["1.0", "2"]], [["1.1", "3"]]), T0))
    book = core.book("binance", "BNBBTC")
    assert book is not None and book["status"] == "LIVE"
    return core


def one_dead_letter(out: Any, reason: str, payload: bytes) -> dict[str, Any]:
    [letter] = out.of("deadletter")
    assert reason in letter["error"], letter
    assert base64.b64decode(letter["value_b64"]) == payload
    return dict(letter)


def raw(frame: Any) -> bytes:
    return json.dumps(frame).encode()


@pytest.mark.parametrize(
    ("level", "reason"),
    [
        (["NaN", "1"], "bad decimal"),
        (["sNaN", "1"], "bad decimal"),
        (["Infinity", "1"], "bad decimal"),
        (["1e999999999", "1"], "bad decimal"),
        (["1.0", "1e-999999999"], "bad decimal"),
        (["1.0", "-1"], "is negative"),
        (["1.0", " 1"], "bad decimal"),
        (["1.0", "\uff11\uff12"], "bad decimal"),  # full-width digits
        (["0", "1"], "is not > 0"),
        (["123456789012345678901", "1"], "does not fit Decimal(38, 18)"),
    ],
)
def test_binance_levels_that_are_not_prices_or_sizes_leave_the_book_as_it_was(
    level: list[str], reason: str
) -> None:
    core = live_binance()
    payload = raw(bn_depth(101, 101, T0, [level], []))
    out = core.process(binance("depth", payload, T0 + 1))
    one_dead_letter(out, reason, payload)
    assert out.books() == [] and out.of("control") == []
    out = core.process(binance("depth", bn_depth(101, 101, T0, [["1.0", "5"]], []), T0 + 2))
    assert out.of("deadletter") == []
    book = core.book("binance", "BNBBTC")
    assert book is not None and book["status"] == "LIVE"
    assert levels(book["bids"]) == [["1.0", "5"]]


def test_binance_update_id_of_2_63_is_a_dead_letter_and_a_huge_jump_a_resync() -> None:
    core = live_binance()
    payload = raw(bn_depth(101, 2**63, T0, [], []))
    one_dead_letter(core.process(binance("depth", payload, T0 + 1)), "64 bits", payload)
    out = core.process(binance("depth", bn_depth(2**62 - 1, 2**62, T0, [], []), T0 + 2))
    [request] = out.of("control")
    assert "implausible sequence jump" in request["reason"]
    # a fresh snapshot heals it, and later updates apply (not IGNORED behind a huge id)
    core.process(binance("snapshot", bn_snapshot(200, [["1.0", "2"]], [["1.1", "3"]]), T0 + 3))
    core.process(binance("depth", bn_depth(201, 201, T0 + 4, [["1.0", "7"]], []), T0 + 4))
    book = core.book("binance", "BNBBTC")
    assert book is not None and book["status"] == "LIVE"
    assert levels(book["bids"]) == [["1.0", "7"]]


@pytest.mark.parametrize(
    ("trade_ms", "reason"),
    [
        (10**17, "outside 1970..2149"),
        (-1, "outside 1970..2149"),
        (T0 + DAY_MS, "after the receive time"),
        (T0 + 30 * DAY_MS, "after the receive time"),
    ],
)
def test_binance_trade_times_the_columns_cannot_hold_are_dead_letters(
    trade_ms: int, reason: str
) -> None:
    core = live_binance()
    payload = raw(bn_trade(1, "1.05", "1", trade_ms))
    started = time.monotonic()
    out = core.process(binance("trade", payload, T0))
    assert time.monotonic() - started < 1.0
    one_dead_letter(out, reason, payload)
    assert out.of("trades") == []


def test_coinbase_zero_price_and_times_before_1970_are_dead_letters() -> None:
    core = Core("BNB-BTC")
    core.process(coinbase("depth", cb_l2(0, T0, [["1.0", "2"]], [["1.1", "3"]], "snapshot"), T0))
    payload = raw(cb_l2(1, T0, [["0", "1"]], []))
    one_dead_letter(core.process(coinbase("depth", payload, T0)), "is not > 0", payload)
    payload = raw(cb_trade(2, "1", "1.05", "1", -1000, "buy"))
    one_dead_letter(core.process(coinbase("trade", payload, T0)), "outside 1970..2149", payload)
    book = core.book("coinbase", "BNB-BTC")
    assert book is not None and book["status"] == "LIVE"


def test_kraken_quantity_1e_minus_999999999_is_rejected_fast() -> None:
    core = Core("BTC-USD")
    payload = (
        b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":1.5,'
        b'"qty":1e-999999999}],"asks":[],"checksum":1,"timestamp":"2023-11-14T22:13:20Z"}]}'
    )
    value = envelope("BTC-USD", "kraken", "BTC/USD", "depth", payload, T0)
    started = time.monotonic()
    out = core.process(value)
    assert time.monotonic() - started < 0.5
    one_dead_letter(out, "kraken", payload)


def test_an_instrument_that_is_not_utf8_is_a_dead_letter_with_the_whole_value() -> None:
    value = bytearray(binance("snapshot", bn_snapshot(1, [], []), T0))
    value[1] = 0xFF  # the instrument's first byte
    core = Core("")  # the JVM bundler's key for a value whose instrument it cannot read
    out = core.process(bytes(value), timestamp_ms=T0)
    one_dead_letter(out, "invalid UTF-8", bytes(value))
