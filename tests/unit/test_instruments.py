"""Instrument names: which NBBO group an instrument joins (the connectors partition by it,
the job keys by it), and the group's quote as the core publishes it."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.sinks import book_reader
from tests.unit.core_driver import Core, binance, bn_snapshot, cb_l2, coinbase, core_settings
from tickflow.config import ExchangesConfig, RedisConfig, load_settings
from tickflow.instruments import UnknownInstrument, exchange_symbols, nbbo_group, resolve_symbol

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


# --- what a user types: `tickflow book <name> --exchange <exchange>` ---------------------------


def _configured_exchanges() -> ExchangesConfig:
    return load_settings(environ={}).exchanges


@pytest.mark.parametrize("exchange", [f.name for f in dataclasses.fields(ExchangesConfig)])
def test_every_canonical_instrument_and_exchange_symbol_resolves(exchange: str) -> None:
    symbols = exchange_symbols(_configured_exchanges(), exchange)
    assert symbols
    for symbol, canonical in symbols.items():
        assert resolve_symbol(symbols, canonical) == symbol
        assert resolve_symbol(symbols, symbol) == symbol
        assert resolve_symbol(symbols, canonical.lower()) == symbol


@pytest.mark.parametrize(
    ("exchange", "typed", "symbol"),
    [
        ("kraken", "BTC-USD", "BTC/USD"),
        ("kraken", "BTC/USD", "BTC/USD"),
        ("kraken", "BTC-USDT", "BTC/USDT"),
        ("coinbase", "BTC-USD", "BTC-USD"),
        ("binance", "BTC-USDT", "BTCUSDT"),
        ("binance", "btcusdt", "BTCUSDT"),
    ],
)
def test_book_command_resolves_canonical_names(exchange: str, typed: str, symbol: str) -> None:
    assert resolve_symbol(exchange_symbols(_configured_exchanges(), exchange), typed) == symbol


def test_unknown_names_and_exchanges_are_reported_with_what_is_known() -> None:
    exchanges = _configured_exchanges()
    with pytest.raises(UnknownInstrument, match="BTC-USD \\(BTC/USD\\)"):
        resolve_symbol(exchange_symbols(exchanges, "kraken"), "NOPE-USD")
    with pytest.raises(UnknownInstrument, match="unknown exchange 'okx'"):
        exchange_symbols(exchanges, "okx")


def test_book_command_reads_the_resolved_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tickflow book BTC-USD --exchange kraken` asks Redis for kraken:BTC/USD (no server:
    the reader is replaced)."""
    asked: list[tuple[str, str]] = []

    def fake_read_book(config: RedisConfig, exchange: str, symbol: str) -> None:
        asked.append((exchange, symbol))

    monkeypatch.setattr(book_reader, "read_book", fake_read_book)
    assert book_reader.main(["BTC-USD", "--exchange", "kraken"]) == 1  # no book: exit 1
    assert book_reader.main(["NOPE-USD", "--exchange", "kraken"]) == 2
    assert asked == [("kraken", "BTC/USD")]
