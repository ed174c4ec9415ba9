"""Instrument names: which NBBO group an instrument joins (the connectors partition by it,
the job keys by it), and the group's quote as the core publishes it."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.core_driver import Core, binance, bn_snapshot, cb_l2, coinbase, core_settings
from tickflow.instruments import nbbo_group

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("instrument", "equivalents", "group"),
    [
        ("BTC-USDT", {}, "BTC-USDT"),
        ("BTC-USD", {}, "BTC-USD"),
        ("BTC-USDT", {"USDT": "USD"}, "BTC-USD"),
        ("BTC-USD", {"USDT": "USD"}, "BTC-USD"),
        ("ETH-BTC", {"USDT": "USD"}, "ETH-BTC"),
        ("USDT-EUR", {"USDT": "USD"}, "USDT-EUR"),  # only the quote is mapped
        ("BTCUSDT", {"USDT": "USD"}, "BTCUSDT"),  # no quote to map
        ("WBTC-ETH-USDT", {"USDT": "USD"}, "WBTC-ETH-USD"),
    ],
)
def test_nbbo_group(instrument: str, equivalents: dict[str, str], group: str) -> None:
    assert nbbo_group(instrument, equivalents) == group


def test_an_equivalent_quotes_book_joins_the_groups_nbbo_which_names_both_quotes() -> None:
    settings = core_settings()
    settings = dataclasses.replace(
        settings,
        analytics=dataclasses.replace(settings.analytics, quote_equivalents={"USDT": "USD"}),
    )
    core = Core(nbbo_group("BNB-USDT", {"USDT": "USD"}), settings)
    assert core.key == "BNB-USD"
    core.process(
        binance("snapshot", bn_snapshot(1, [["1.0", "2"]], [["1.2", "1"]]), 1_000, "BNB-USDT")
    )
    out = core.process(
        coinbase("depth", cb_l2(1, 1_001, [["1.1", "1"]], [["1.3", "1"]], "snapshot", "BNB-USD"),
                 1_001, "BNB-USD")
    )  # fmt: skip
    [nbbo] = out.of("nbbo")
    assert (nbbo["instrument"], nbbo["quote"]) == ("BNB-USD", "USD+USDT")
    assert nbbo["venues"] == ["binance:BNBBTC", "coinbase:BNB-USD"]
    assert nbbo["bid_venues"] == ["coinbase"] and nbbo["ask_venues"] == ["binance"]
