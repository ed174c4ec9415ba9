"""Market-quality measures over top-of-book samples (``tickflow.market_quality``), on synthetic
samples whose answers are known, and the simulated venues measured offline as one market
(``simulator.market_check``): rarely crossed, never for long, mids close to the fair value."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from simulator.market import LatentMarket, canonical_instrument
from simulator.market_check import run_offline
from tickflow.config import load_settings
from tickflow.market_quality import (
    Sample,
    Top,
    TradePrint,
    distribution,
    nbbo,
    quality,
    samples_from_redis,
    summary,
)

pytestmark = pytest.mark.unit

D = Decimal


def sample(t: int, a: tuple[str, str], b: tuple[str, str], fair: str | None = None) -> Sample:
    """Venues x and y of BTC-USD at time t: (bid, ask) each."""
    return Sample(
        t, "BTC-USD",
        (Top("x", D(a[0]), D(a[1])), Top("y", D(b[0]), D(b[1]))),
        fair=None if fair is None else D(fair),
    )


def test_fractions_are_of_time_and_the_longest_crossed_spell_is_measured() -> None:
    samples = [
        sample(0, ("100", "101"), ("100", "101")),  # normal for 100 ms
        sample(100, ("102", "103"), ("100", "101")),  # crossed (102 > 101) for 50 ms
        sample(150, ("102", "103"), ("101", "102")),  # locked (102 == 102) for 50 ms
        sample(200, ("100", "101"), ("100", "101")),  # normal; the last holds the median gap
    ]
    q = quality(samples)["BTC-USD"]
    assert q["duration_s"] == 0.25  # 3 gaps + the median one (50 ms)
    assert q["crossed_fraction"] == pytest.approx(50 / 250)
    assert q["locked_fraction"] == pytest.approx(50 / 250)
    assert q["longest_crossed_ms"] == 50
    assert q["venues"] == ["x", "y"]


def test_a_spell_still_crossed_at_the_end_counts_to_the_end() -> None:
    samples = [
        sample(0, ("100", "101"), ("100", "101")),
        sample(100, ("103", "104"), ("100", "101")),
        sample(200, ("103", "104"), ("100", "101")),
    ]
    assert quality(samples)["BTC-USD"]["longest_crossed_ms"] == 200  # 100 .. 200 + 100


def test_published_nbbo_wins_over_the_tops() -> None:
    s = dataclasses.replace(
        sample(0, ("102", "103"), ("100", "101")), nbbo_bid=D("100"), nbbo_ask=D("101")
    )
    assert nbbo(s) == (D("100"), D("101"))
    assert nbbo(sample(0, ("102", "103"), ("100", "101"))) == (D("102"), D("101"))
    assert quality([s])["BTC-USD"]["crossed_fraction"] == 0.0


def test_mid_differences_and_fair_value_distance_in_bps() -> None:
    # mids 100.5 and 100.51 (about 1 bps apart); NBBO 100.01 / 101 -> mid 100.505
    q = quality([sample(0, ("100", "101"), ("100.01", "101.01"), fair="100.505")])["BTC-USD"]
    assert q["mid_diff_bps"]["count"] == 1
    assert q["mid_diff_bps"]["p50"] == pytest.approx(0.995, abs=1e-3)
    assert q["fair_vs_mid_bps"]["mean"] == pytest.approx(0.0, abs=1e-6)
    one_sided = Sample(0, "BTC-USD", (Top("x", D("100"), None), Top("y", None, D("101"))))
    q = quality([one_sided])["BTC-USD"]
    assert q["mid_diff_bps"]["count"] == 0 and q["crossed_fraction"] == 0.0


def test_trade_throughs_are_against_other_venues_touch_at_the_time() -> None:
    samples = [sample(0, ("100", "101"), ("100.5", "100.8")), sample(100, ("100", "101"),
                                                                   ("100", "101"))]
    trades = [
        TradePrint(10, "BTC-USD", "x", D("101"), "buy"),  # y offered 100.8: through
        TradePrint(20, "BTC-USD", "y", D("100.8"), "buy"),  # x offered 101: fine
        TradePrint(30, "BTC-USD", "x", D("100"), "sell"),  # y bid 100.5: through
        TradePrint(110, "BTC-USD", "x", D("101"), "buy"),  # y offers 101 now: fine
        TradePrint(-5, "BTC-USD", "x", D("999"), "buy"),  # before any sample: not counted
    ]
    q = quality(samples, trades)["BTC-USD"]
    assert (q["trades"], q["trade_throughs"], q["trade_through_rate"]) == (4, 2, 0.5)


def test_distribution_and_summary() -> None:
    assert distribution([]) == {
        "count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None
    }
    d = distribution([float(v) for v in range(1, 101)])
    assert (d["p50"], d["p90"], d["p99"], d["max"], d["mean"]) == (50, 90, 99, 100, 50.5)
    single = Sample(0, "ETH-USD", (Top("x", D("10"), D("11")),))
    per = quality([sample(0, ("100", "101"), ("102", "103")), single])
    s = summary(per)
    assert s["multi_venue_instruments"] == ["BTC-USD"]
    assert s["mean_crossed_fraction"] == 1.0


# --- the simulator's venues, offline ---------------------------------------------------------


def test_canonical_instruments_match_the_configured_ones() -> None:
    exchanges = load_settings(environ={}).exchanges
    for name in ("binance", "coinbase", "kraken"):
        for symbol, canonical in getattr(exchanges, name).symbols.items():
            assert canonical_instrument(name, symbol) == canonical


def test_usd_and_usdt_differ_by_a_small_basis_and_cross_rates_are_consistent() -> None:
    latent = LatentMarket(42)
    assert latent.price("BTC-USDT", 5_000) == latent.price("BTC-USDT", 0)  # not started yet
    latent.begin(0)
    bases = []
    for t in range(0, 1_200_000, 60_000):
        usd, usdt = latent.price("BTC-USD", t), latent.price("BTC-USDT", t)
        bases.append(usdt / usd - 1)
        assert 0 < abs(bases[-1]) < 20e-4  # within 20 bps, never equal
        cross = latent.price("ETH-BTC", t)
        assert cross == pytest.approx(latent.price("ETH-USD", t) / usd, rel=1e-12)
    assert len(set(bases)) == len(bases)  # the basis moves


@pytest.mark.slow
def test_simulated_venues_quote_one_market() -> None:
    """Two simulated minutes of every venue: the NBBO of instruments on several venues is
    crossed well under 1% of the time and never for long, and mids stay near the fair value."""
    config = dataclasses.replace(
        load_settings(environ={}).simulator,
        coinbase_products=("BTC-USD", "ETH-USD", "SOL-USD"),
        kraken_symbols=("BTC/USD", "ETH/USD", "SOL/USD", "BTC/USDT"),
    )
    result = run_offline(config, 120)
    s = result["summary"]
    assert s["multi_venue_instruments"] == ["BTC-USD", "BTC-USDT", "ETH-USD", "SOL-USD"]
    assert s["mean_crossed_fraction"] < 0.01
    assert s["longest_crossed_ms"] <= 2_000
    assert s["mean_fair_vs_mid_bps"] < 2.0
    for q in result["instruments"].values():
        assert q["samples"] >= 1000
        assert q["mid_diff_bps"]["p50"] < 3.0  # venues follow the same price
        assert q["trades"] > 100
    # reproducible: the same seed, the same measures
    assert run_offline(config, 20)["instruments"] == run_offline(config, 20)["instruments"]


def test_samples_from_redis_hashes() -> None:
    """What bench.market reads: NBBO hashes, book hashes (LIVE ones count), fair values."""
    nbbos = {
        "BTC-USD": {"bid_price": "100.5", "ask_price": "100.4", "crossed": "1"},
        "ETH-USD": {"bid_price": "", "ask_price": ""},
    }
    books = [
        {"exchange": "coinbase", "symbol": "BTC-USD", "instrument": "BTC-USD",
         "status": "LIVE", "bids": '[["100.1","1"]]', "asks": '[["100.4","2"]]'},
        {"exchange": "kraken", "symbol": "BTC/USD", "instrument": "BTC-USD",
         "status": "LIVE", "bids": '[["100.5","1"],["100.0","3"]]', "asks": '[["100.9","1"]]'},
        {"exchange": "binance", "symbol": "BTCUSDT", "instrument": "BTC-USDT",
         "status": "LIVE", "bids": '[["99","1"]]', "asks": '[["101","1"]]'},
        {"exchange": "kraken", "symbol": "ETH/USD", "instrument": "ETH-USD",
         "status": "RESYNCING", "bids": "[]", "asks": "[]"},
    ]
    fair = {"BTC-USD": "100.45"}

    def group(instrument: str) -> str:  # USDT quotes join USD's NBBO
        return instrument.replace("-USDT", "-USD")

    btc, eth = samples_from_redis(5, nbbos, books, fair, group)
    assert btc == Sample(
        5, "BTC-USD",
        (Top("coinbase:BTC-USD", D("100.1"), D("100.4")),
         Top("kraken:BTC/USD", D("100.5"), D("100.9")),
         Top("binance:BTCUSDT", D("99"), D("101"))),
        D("100.5"), D("100.4"), D("100.45"),
    )
    assert eth == Sample(5, "ETH-USD", (), None, None, None)
    computed, _ = samples_from_redis(5, nbbos, books, fair, group, published=False)
    assert computed.nbbo_bid is None and nbbo(computed) == (D("100.5"), D("100.4"))
