"""bench/keying.py without Flink: its key extraction reads the envelope's leading fields, and
its two graphs' logic, run in one Python loop, agree on the NBBO updates they emit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ is not an installed package; tests/unit has no __init__.py to put the root on the path
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.keying import (  # noqa: E402
    BookParams,
    book_key,
    instrument_key,
    make_input,
    run_pure,
)
from schemas.codec import decode_envelope  # noqa: E402
from tickflow.config import load_settings  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def generated() -> tuple[BookParams, list[bytes]]:
    settings = load_settings()
    return BookParams.from_settings(settings), make_input(settings, 1500).data


def test_keys_are_the_envelope_fields(generated: tuple[BookParams, list[bytes]]) -> None:
    _, data = generated
    for value in data:
        env = decode_envelope(value)
        assert instrument_key(value, {}) == env.instrument
        assert book_key(value) == f"{env.exchange}|{env.symbol}"
    assert instrument_key(decode_and_find(data, "BTC-USDT"), {"USDT": "USD"}) == "BTC-USD"


def decode_and_find(data: list[bytes], instrument: str) -> bytes:
    return next(v for v in data if decode_envelope(v).instrument == instrument)


def test_both_graphs_emit_the_same_nbbo_updates(
    generated: tuple[BookParams, list[bytes]],
) -> None:
    params, data = generated
    by_instrument = run_pure("instrument", data, params)
    by_book = run_pure("book", data, params)
    assert by_book["book_views"] > len(data) // 2
    assert by_instrument["nbbo_updates"] > 0
    assert by_instrument["nbbo_updates"] == by_book["nbbo_updates"]
