"""Trade-to-book matching: every trade against its own exchange's book as of the trade's event
time, and against the cross-exchange NBBO at that time. Pure, no I/O.

"As of" = the last book state whose event time is <= the trade time. Where the exchange
numbers trades and book messages in one sequence (Coinbase's per-connection
``sequence_num``), equal times are ordered by it; elsewhere a book update stamped with the
trade's own millisecond counts as before the trade.

Books keep a short history (``BookHistory``) so a trade can be matched when the watermark
says every book update up to its time has arrived, even if the trade itself came late.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from typing import Any

from jobs.book.levels import BookStatus
from jobs.nbbo import Nbbo
from jobs.parse.events import Side, Trade

Level = tuple[Decimal, Decimal]
BPS = Decimal(10_000)


@dataclass(frozen=True, slots=True)
class BookState:
    """One published state of a book (top N levels), kept while trades may still need it."""

    time_ms: int  # event time of the state (the exchange's time of its last update)
    seq: int  # the exchange's sequence / update id of the last applied message (-1: none)
    version: int
    status: BookStatus
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    @property
    def live(self) -> bool:
        return self.status is BookStatus.LIVE

    def __reduce__(self) -> tuple[Any, ...]:
        # saved to state per book change: decimals as their exact text pickle ~2x faster
        return (
            _book_state,
            (
                self.time_ms,
                self.seq,
                self.version,
                self.status.value,
                tuple(f"{p} {s}" for p, s in self.bids),
                tuple(f"{p} {s}" for p, s in self.asks),
            ),
        )


def _levels(texts: tuple[str, ...]) -> tuple[Level, ...]:
    return tuple((Decimal(p), Decimal(s)) for p, s in (t.split(" ") for t in texts))


def _book_state(
    time_ms: int, seq: int, version: int, status: str, bids: tuple[str, ...], asks: tuple[str, ...]
) -> BookState:
    return BookState(time_ms, seq, version, BookStatus(status), _levels(bids), _levels(asks))


class BookHistory:
    """Recent states of one book in arrival order (times are non-decreasing but for resyncs)."""

    def __init__(self, states: list[BookState] | None = None) -> None:
        self.states: list[BookState] = states or []
        # times non-decreasing (nearly always): prune can bisect instead of scanning
        self._ordered = _ordered(self.states)

    def append(self, state: BookState) -> None:
        if self.states and state.time_ms < self.states[-1].time_ms:
            self._ordered = False
        self.states.append(state)

    def as_of(self, time_ms: int, seq: int | None = None) -> BookState | None:
        """The last state at or before ``time_ms`` (ties broken by ``seq`` when given)."""
        for state in reversed(self.states):
            if state.time_ms < time_ms:
                return state
            if state.time_ms == time_ms and (seq is None or state.seq < seq):
                return state
        return None

    def prune(self, watermark_ms: int) -> list[BookState]:
        """Drop states no trade after the watermark can need: keep the last state at or
        before it and everything later. Returns the dropped states."""
        keep_from = 0
        if self._ordered:
            # the last state at or before the watermark, found by bisection
            keep_from = max(bisect_right(self.states, watermark_ms, key=_time_ms) - 1, 0)
        else:
            for i in range(len(self.states) - 1, -1, -1):
                if self.states[i].time_ms <= watermark_ms:
                    keep_from = i
                    break
        if not keep_from:
            return []
        dropped = self.states[:keep_from]
        del self.states[:keep_from]
        if not self._ordered:
            self._ordered = _ordered(self.states)
        return dropped


def _time_ms(state: BookState) -> int:
    return state.time_ms


def _ordered(states: list[BookState]) -> bool:
    return all(a.time_ms <= b.time_ms for a, b in pairwise(states))


@dataclass(frozen=True, slots=True)
class MatchedTrade:
    trade: Trade
    instrument: str
    book_status: str  # LIVE | RESYNCING | STALE | NONE (no state at the trade's time)
    book_time_ms: int
    book_version: int
    book_seq: int
    bid: Level | None
    ask: Level | None
    mid: Decimal | None
    spread: Decimal | None
    touch: str  # at | inside | through | none (vs the own book's opposite best)
    levels_consumed: int  # opposite levels priced at or better than the trade
    size_consumed: Decimal  # trade size covered by those levels (capped by the trade size)
    slippage_mid: Decimal | None  # positive: the taker paid more than the mid
    slippage_mid_bps: float | None
    nbbo: Nbbo | None
    slippage_nbbo: Decimal | None  # positive: worse than the best price across exchanges
    trade_through: bool


def _touch(side: Side, price: Decimal, opposite: Level | None) -> str:
    if opposite is None:
        return "none"
    best = opposite[0]
    if price == best:
        return "at"
    better_than_touch = price < best if side == "buy" else price > best
    return "inside" if better_than_touch else "through"


def _consumed(side: Side, trade: Trade, levels: tuple[Level, ...]) -> tuple[int, Decimal]:
    count = 0
    available = Decimal(0)
    for price, size in levels:  # best first
        if (price > trade.price) if side == "buy" else (price < trade.price):
            break
        count += 1
        available += size
    return count, min(available, trade.size)


def match_trade(
    trade: Trade, instrument: str, state: BookState | None, nbbo: Nbbo | None
) -> MatchedTrade:
    side = trade.taker_side
    live = state is not None and state.live
    bids = state.bids if state is not None and live else ()
    asks = state.asks if state is not None and live else ()
    bid = bids[0] if bids else None
    ask = asks[0] if asks else None
    mid = spread = slip = None
    slip_bps = None
    if bid is not None and ask is not None:
        mid = (bid[0] + ask[0]) / 2
        spread = ask[0] - bid[0]
        slip = trade.price - mid if side == "buy" else mid - trade.price
        slip_bps = float(slip / mid * BPS) if mid else None
    opposite = asks if side == "buy" else bids
    levels, size = _consumed(side, trade, opposite)
    slip_nbbo = None
    if nbbo is not None:
        best = nbbo.ask_price if side == "buy" else nbbo.bid_price
        if best is not None:
            slip_nbbo = trade.price - best if side == "buy" else best - trade.price
    return MatchedTrade(
        trade=trade,
        instrument=instrument,
        book_status=state.status.value if state is not None else "NONE",
        book_time_ms=state.time_ms if state is not None else 0,
        book_version=state.version if state is not None else 0,
        book_seq=max(state.seq, 0) if state is not None else 0,
        bid=bid,
        ask=ask,
        mid=mid,
        spread=spread,
        touch=_touch(side, trade.price, opposite[0] if opposite else None),
        levels_consumed=levels,
        size_consumed=size,
        slippage_mid=slip,
        slippage_mid_bps=slip_bps,
        nbbo=nbbo,
        slippage_nbbo=slip_nbbo,
        trade_through=slip_nbbo is not None and slip_nbbo > 0,
    )
