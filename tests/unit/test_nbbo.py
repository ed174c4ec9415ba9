"""The cross-exchange NBBO against a brute-force recomputation written here independently.

A book counts iff it is LIVE and its age is within the staleness bound (0 = no bound); the
best bid is the highest bid over the counted books, its size the sum over the books quoting
that price, and every left-out book is listed with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.book.levels import BookStatus
from jobs.nbbo import Nbbo, VenueTop, compute_nbbo, group_quote, nbbo_group

pytestmark = pytest.mark.unit

PRICES = [Decimal(p) for p in ("99.5", "99.50", "100", "100.25", "100.5", "101")]
SIZES = [Decimal(s) for s in ("0.001", "1", "2.5", "7")]
EXCHANGES = ["binance", "coinbase", "kraken", "okx"]
SYMBOLS = ["BTCUSD", "BTC-USD", "XBT/USD"]
STALE_MS = 1000

level = st.none() | st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES))
# ages around the bound, the bound itself included
age = st.sampled_from([0, 1, STALE_MS - 1, STALE_MS, STALE_MS + 1, 5 * STALE_MS])
status = st.sampled_from([BookStatus.LIVE] * 3 + [BookStatus.RESYNCING, BookStatus.STALE])


@st.composite
def venue_top(draw: st.DrawFn) -> VenueTop:
    return VenueTop(
        draw(st.sampled_from(EXCHANGES)),
        draw(st.sampled_from(SYMBOLS)),
        draw(status),
        draw(st.integers(0, 10**12)),
        draw(age),
        draw(level),
        draw(level),
    )


tops_strategy = st.lists(venue_top(), max_size=8, unique_by=lambda t: (t.exchange, t.symbol))


@dataclass(frozen=True)
class Want:
    bid_price: Decimal | None
    bid_size: Decimal | None
    bid_venues: tuple[str, ...]
    ask_price: Decimal | None
    ask_size: Decimal | None
    ask_venues: tuple[str, ...]
    venues: tuple[str, ...]
    venue_versions: tuple[int, ...]
    excluded: dict[str, str]
    locked: bool
    crossed: bool


def brute_force(tops: list[VenueTop], stale_after_ms: int) -> Want:
    def name(t: VenueTop) -> str:
        return f"{t.exchange}:{t.symbol}"

    counted = sorted(
        (
            t
            for t in tops
            if t.status == BookStatus.LIVE and (stale_after_ms == 0 or t.age_ms <= stale_after_ms)
        ),
        key=name,
    )
    excluded = {}
    for t in tops:
        if t.status != BookStatus.LIVE:
            excluded[name(t)] = t.status.value
        elif t not in counted:
            excluded[name(t)] = f"no update for {t.age_ms} ms"
    bid_prices = [t.bid[0] for t in counted if t.bid is not None]
    ask_prices = [t.ask[0] for t in counted if t.ask is not None]
    best_bid = max(bid_prices) if bid_prices else None
    best_ask = min(ask_prices) if ask_prices else None
    at_bid = [t for t in counted if t.bid is not None and t.bid[0] == best_bid]
    at_ask = [t for t in counted if t.ask is not None and t.ask[0] == best_ask]
    return Want(
        bid_price=best_bid,
        bid_size=sum(t.bid[1] for t in at_bid if t.bid) if at_bid else None,
        bid_venues=tuple(t.exchange for t in at_bid),
        ask_price=best_ask,
        ask_size=sum(t.ask[1] for t in at_ask if t.ask) if at_ask else None,
        ask_venues=tuple(t.exchange for t in at_ask),
        venues=tuple(name(t) for t in counted),
        venue_versions=tuple(t.version for t in counted),
        excluded=excluded,
        locked=best_bid is not None and best_ask is not None and best_bid == best_ask,
        crossed=best_bid is not None and best_ask is not None and best_bid > best_ask,
    )


def check(nbbo: Nbbo, want: Want) -> None:
    assert (nbbo.bid_price, nbbo.bid_size, nbbo.bid_venues) == (
        want.bid_price,
        want.bid_size,
        want.bid_venues,
    )
    assert (nbbo.ask_price, nbbo.ask_size, nbbo.ask_venues) == (
        want.ask_price,
        want.ask_size,
        want.ask_venues,
    )
    assert nbbo.venues == want.venues
    assert list(nbbo.venues) == sorted(nbbo.venues)
    assert nbbo.venue_versions == want.venue_versions
    assert len(nbbo.excluded) == len(nbbo.excluded_reasons)
    assert dict(zip(nbbo.excluded, nbbo.excluded_reasons, strict=True)) == want.excluded
    assert list(nbbo.excluded) == sorted(nbbo.excluded)
    assert set(nbbo.venues).isdisjoint(nbbo.excluded)
    assert (nbbo.locked, nbbo.crossed) == (want.locked, want.crossed)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(tops_strategy, st.sampled_from([0, STALE_MS]))
def test_nbbo_equals_brute_force(tops: list[VenueTop], stale_after_ms: int) -> None:
    nbbo = compute_nbbo("BTC-USD", "USD", tops, stale_after_ms)
    assert (nbbo.instrument, nbbo.quote) == ("BTC-USD", "USD")
    check(nbbo, brute_force(tops, stale_after_ms))
    # the input order does not matter
    again = compute_nbbo("BTC-USD", "USD", list(reversed(tops)), stale_after_ms)
    assert again == nbbo


# --- at every step of a stream of book updates --------------------------------------------

VENUES = [("binance", "BTCUSDT"), ("coinbase", "BTC-USD"), ("kraken", "XBT/USD")]
BOOK_PRICES = [Decimal(p) for p in ("99", "99.5", "100", "100.5", "101", "101.5")]

# one step: a level change on one venue's full book, or a status / age change
book_step = st.one_of(
    st.tuples(
        st.just("level"),
        st.integers(0, 2),
        st.sampled_from(["b", "a"]),
        st.sampled_from(BOOK_PRICES),
        st.sampled_from([Decimal(0), *SIZES]),
    ),
    st.tuples(st.just("status"), st.integers(0, 2), status),
    st.tuples(st.just("age"), st.integers(0, 2), age),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(book_step, min_size=1, max_size=60))
def test_nbbo_at_every_step_equals_brute_force_over_full_books(steps: list) -> None:
    """Full books on 3 venues; after each step the NBBO of their touches must equal a scan of
    every level of every counted book (a venue quoting the best price quotes it at its touch)."""
    levels: list[dict[str, dict[Decimal, Decimal]]] = [{"b": {}, "a": {}} for _ in VENUES]
    statuses = [BookStatus.LIVE] * 3
    ages = [0] * 3
    versions = [0] * 3
    last: Nbbo | None = None
    for step in steps:
        kind, i = step[0], step[1]
        versions[i] += 1
        if kind == "level":
            _, _, side, price, size = step
            if size:
                levels[i][side][price] = size
            else:
                levels[i][side].pop(price, None)
        elif kind == "status":
            statuses[i] = step[2]
        else:
            ages[i] = step[2]
        tops = []
        for j, (exchange, symbol) in enumerate(VENUES):
            bids, asks = levels[j]["b"], levels[j]["a"]
            bid = max(bids.items()) if bids else None
            ask = min(asks.items()) if asks else None
            tops.append(VenueTop(exchange, symbol, statuses[j], versions[j], ages[j], bid, ask))
        nbbo = compute_nbbo("BTC-USD", "USD", tops, STALE_MS)

        counted = [j for j in range(3) if statuses[j] is BookStatus.LIVE and ages[j] <= STALE_MS]
        all_bids = [(p, s, j) for j in counted for p, s in levels[j]["b"].items()]
        all_asks = [(p, s, j) for j in counted for p, s in levels[j]["a"].items()]
        best_bid = max((p for p, _, _ in all_bids), default=None)
        best_ask = min((p for p, _, _ in all_asks), default=None)
        assert nbbo.bid_price == best_bid and nbbo.ask_price == best_ask
        if best_bid is None:
            assert nbbo.bid_size is None and nbbo.bid_venues == ()
        else:
            at = sorted((VENUES[j][0], s) for p, s, j in all_bids if p == best_bid)
            assert nbbo.bid_size == sum(s for _, s in at)
            assert nbbo.bid_venues == tuple(e for e, _ in at)
        if best_ask is None:
            assert nbbo.ask_size is None and nbbo.ask_venues == ()
        else:
            at = sorted((VENUES[j][0], s) for p, s, j in all_asks if p == best_ask)
            assert nbbo.ask_size == sum(s for _, s in at)
            assert nbbo.ask_venues == tuple(e for e, _ in at)
        assert nbbo.venues == tuple(f"{VENUES[j][0]}:{VENUES[j][1]}" for j in counted)
        assert nbbo.venue_versions == tuple(versions[j] for j in counted)
        assert len(nbbo.venues) + len(nbbo.excluded) == 3
        assert nbbo.locked == (best_bid is not None and best_bid == best_ask)
        assert nbbo.crossed == (
            best_bid is not None and best_ask is not None and best_bid > best_ask
        )
        check(nbbo, brute_force(tops, STALE_MS))
        # what a subscriber sees changes iff prices, sizes, venues or inclusion changed
        if last is not None:
            same = (
                last.bid_price, last.bid_size, last.bid_venues, last.ask_price,
                last.ask_size, last.ask_venues, last.venues, last.excluded,
            ) == (
                nbbo.bid_price, nbbo.bid_size, nbbo.bid_venues, nbbo.ask_price,
                nbbo.ask_size, nbbo.ask_venues, nbbo.venues, nbbo.excluded,
            )  # fmt: skip
            reasons_same = [r.split(" ")[0] for r in last.excluded_reasons] == [
                r.split(" ")[0] for r in nbbo.excluded_reasons
            ]
            assert (last.quote_key() == nbbo.quote_key()) == (same and reasons_same)
        last = nbbo


# --- examples ------------------------------------------------------------------------------


def top(
    exchange: str,
    bid: tuple[str, str] | None,
    ask: tuple[str, str] | None,
    status: BookStatus = BookStatus.LIVE,
    age_ms: int = 0,
    symbol: str = "S",
) -> VenueTop:
    def lv(x: tuple[str, str] | None) -> tuple[Decimal, Decimal] | None:
        return None if x is None else (Decimal(x[0]), Decimal(x[1]))

    return VenueTop(exchange, symbol, status, 7, age_ms, lv(bid), lv(ask))


def test_equal_prices_across_venues_sum_sizes_and_list_every_venue() -> None:
    nbbo = compute_nbbo(
        "BTC-USD",
        "USD",
        [
            top("kraken", ("100", "1"), ("101", "1")),
            top("binance", ("100.0", "2"), ("102", "1")),
            top("coinbase", ("99", "5"), ("101", "0.5")),
        ],
        STALE_MS,
    )
    assert (nbbo.bid_price, nbbo.bid_size, nbbo.bid_venues) == (
        Decimal(100),
        Decimal(3),
        ("binance", "kraken"),
    )
    assert (nbbo.ask_price, nbbo.ask_size, nbbo.ask_venues) == (
        Decimal(101),
        Decimal("1.5"),
        ("coinbase", "kraken"),
    )
    assert not nbbo.locked and not nbbo.crossed


def test_locked_crossed_and_one_sided() -> None:
    locked = compute_nbbo("I", "Q", [top("a", ("100", "1"), None), top("b", None, ("100", "2"))], 0)
    assert locked.locked and not locked.crossed
    assert locked.bid_venues == ("a",) and locked.ask_venues == ("b",)
    crossed = compute_nbbo(
        "I", "Q", [top("a", ("101", "1"), None), top("b", None, ("100", "2"))], 0
    )
    assert crossed.crossed and not crossed.locked
    empty = compute_nbbo("I", "Q", [top("a", None, None)], 0)
    assert empty.bid_price is None and empty.bid_size is None and empty.ask_size is None
    assert not empty.locked and not empty.crossed and empty.venues == ("a:S",)


def test_staleness_bound_is_inclusive_and_zero_disables_it() -> None:
    tops = [
        top("a", ("100", "1"), None, age_ms=STALE_MS),
        top("b", ("101", "1"), None, age_ms=STALE_MS + 1),
        top("c", ("102", "1"), None, status=BookStatus.RESYNCING),
        top("d", ("103", "1"), None, status=BookStatus.STALE),
    ]
    nbbo = compute_nbbo("I", "Q", tops, STALE_MS)
    assert nbbo.venues == ("a:S",) and nbbo.bid_price == Decimal(100)
    assert nbbo.excluded == ("b:S", "c:S", "d:S")
    assert nbbo.excluded_reasons == (f"no update for {STALE_MS + 1} ms", "RESYNCING", "STALE")
    unbounded = compute_nbbo("I", "Q", tops, 0)
    assert unbounded.venues == ("a:S", "b:S") and unbounded.bid_price == Decimal(101)


def test_quote_key_ignores_versions_and_the_growing_age_of_an_excluded_book() -> None:
    fresh = top("a", ("100", "1"), ("101", "1"))
    one = compute_nbbo("I", "Q", [fresh, top("b", ("100", "1"), None, age_ms=2000)], STALE_MS)
    two = compute_nbbo("I", "Q", [fresh, top("b", ("100", "1"), None, age_ms=3000)], STALE_MS)
    assert one.excluded_reasons != two.excluded_reasons  # the age is shown...
    assert one.quote_key() == two.quote_key()  # ...but is no change of the quote
    resyncing = compute_nbbo(
        "I", "Q", [fresh, top("b", None, None, status=BookStatus.RESYNCING)], STALE_MS
    )
    assert resyncing.quote_key() != one.quote_key()  # why it is excluded did change
    newer = compute_nbbo("I", "Q", [VenueTop("a", "S", BookStatus.LIVE, 8, 0, fresh.bid,
                                              fresh.ask)], STALE_MS)  # fmt: skip
    older = compute_nbbo("I", "Q", [fresh], STALE_MS)
    assert newer.venue_versions != older.venue_versions
    assert newer.quote_key() == older.quote_key()


# --- groups ---------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("group", "equivalents", "quote"),
    [
        ("BTC-USD", {}, "USD"),
        ("BTC-USDT", {}, "USDT"),
        ("BTC-USD", {"USDT": "USD"}, "USD+USDT"),
        ("BTC-USD", {"USDT": "USD", "USDC": "USD"}, "USD+USDC+USDT"),
        ("ETH-BTC", {"USDT": "USD"}, "BTC"),
    ],
)
def test_group_quote(group: str, equivalents: dict[str, str], quote: str) -> None:
    assert group_quote(group, equivalents) == quote


def test_every_instrument_of_a_group_names_the_groups_quote() -> None:
    equivalents = {"USDT": "USD", "USDC": "USD"}
    for instrument in ("BTC-USD", "BTC-USDT", "BTC-USDC"):
        group = nbbo_group(instrument, equivalents)
        assert group == "BTC-USD"
        assert instrument.rpartition("-")[2] in group_quote(group, equivalents).split("+")
