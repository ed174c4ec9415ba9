"""Cross-exchange best bid and offer (NBBO) of one canonical instrument. Pure, no I/O.

The same function serves two clocks:
- live: each book's age is measured from its last received message to the message being
  processed (arrival order; what Redis shows);
- event time: each book's state as of a trade's time, its age from its last update to that
  time (what a matched trade is compared with).
A book counts only if it is LIVE and younger than the staleness bound; every other book is
listed with the reason it was left out, so a consumer can tell a thin NBBO from a full one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from jobs.book.levels import BookStatus
from tickflow.instruments import nbbo_group  # noqa: F401  (re-exported: the job keys by it)

Level = tuple[Decimal, Decimal]


@dataclass(frozen=True, slots=True)
class VenueTop:
    """One book's touch as an NBBO input."""

    exchange: str
    symbol: str
    status: BookStatus
    version: int
    age_ms: int  # time since the book's last update, on the caller's clock
    bid: Level | None
    ask: Level | None

    @property
    def venue(self) -> str:
        return f"{self.exchange}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class Nbbo:
    instrument: str
    quote: str  # the quote currency (or equivalent set, "USD+USDT") the prices are in
    bid_price: Decimal | None
    bid_size: Decimal | None  # summed over the venues at the best bid
    bid_venues: tuple[str, ...]
    ask_price: Decimal | None
    ask_size: Decimal | None
    ask_venues: tuple[str, ...]
    venues: tuple[str, ...]  # books included, "exchange:symbol", sorted
    venue_versions: tuple[int, ...]  # the book version each included venue was taken at
    excluded: tuple[str, ...]
    excluded_reasons: tuple[str, ...]

    @property
    def locked(self) -> bool:
        return self.bid_price is not None and self.bid_price == self.ask_price

    @property
    def crossed(self) -> bool:
        return (
            self.bid_price is not None
            and self.ask_price is not None
            and self.bid_price > self.ask_price
        )

    def quote_key(self) -> tuple[object, ...]:
        """What a subscriber sees change: prices, sizes, venues, inclusion (not versions, nor
        the age of an excluded book)."""
        return (
            self.bid_price,
            self.bid_size,
            self.bid_venues,
            self.ask_price,
            self.ask_size,
            self.ask_venues,
            self.venues,
            self.excluded,
            tuple(_reason_kind(r) for r in self.excluded_reasons),
        )


STALE_REASON = "no update for"  # + the book's age: "no update for 12034 ms"


def _reason_kind(reason: str) -> str:
    """An exclusion reason without the book's age, which grows with every message: a book
    that stays too old to count does not change what a subscriber sees."""
    return STALE_REASON if reason.startswith(STALE_REASON) else reason


def compute_nbbo(
    instrument: str, quote: str, tops: Iterable[VenueTop], stale_after_ms: int
) -> Nbbo:
    """Best bid/ask over the LIVE, fresh books; O(books)."""
    bid_price: Decimal | None = None
    ask_price: Decimal | None = None
    bid_size = ask_size = Decimal(0)
    bid_venues: list[str] = []
    ask_venues: list[str] = []
    included: list[VenueTop] = []
    excluded: list[tuple[str, str]] = []
    for top in sorted(tops, key=lambda t: (t.exchange, t.symbol)):
        if top.status is not BookStatus.LIVE:
            excluded.append((top.venue, top.status.value))
            continue
        if stale_after_ms and top.age_ms > stale_after_ms:
            excluded.append((top.venue, f"{STALE_REASON} {top.age_ms} ms"))
            continue
        included.append(top)
        if top.bid is not None:
            price, size = top.bid
            if bid_price is None or price > bid_price:
                bid_price, bid_size, bid_venues = price, size, [top.exchange]
            elif price == bid_price:
                bid_size += size
                bid_venues.append(top.exchange)
        if top.ask is not None:
            price, size = top.ask
            if ask_price is None or price < ask_price:
                ask_price, ask_size, ask_venues = price, size, [top.exchange]
            elif price == ask_price:
                ask_size += size
                ask_venues.append(top.exchange)
    return Nbbo(
        instrument=instrument,
        quote=quote,
        bid_price=bid_price,
        bid_size=bid_size if bid_price is not None else None,
        bid_venues=tuple(bid_venues),
        ask_price=ask_price,
        ask_size=ask_size if ask_price is not None else None,
        ask_venues=tuple(ask_venues),
        venues=tuple(t.venue for t in included),
        venue_versions=tuple(t.version for t in included),
        excluded=tuple(v for v, _ in excluded),
        excluded_reasons=tuple(r for _, r in excluded),
    )


def group_quote(group: str, equivalents: Mapping[str, str]) -> str:
    """The quote(s) an NBBO group's prices are in: "USD", or "USD+USDT" when merged."""
    quote = group.rpartition("-")[2]
    merged = sorted({quote, *(q for q, target in equivalents.items() if target == quote)})
    return "+".join(merged)
