"""A cross-venue NBBO dislocation strategy for ``tickflow backtest`` (docs/backtest.md).

When an instrument's NBBO is crossed (one exchange bids above another's offer), buy at the
offering exchange and sell at the bidding one, at market, the size both touches show (at most
``clip``), if the crossing is wider than the fees of both legs. Both legs fill against the
books the backtest has delivered, so the position stays flat but for what a leg could not
fill; the PnL is what the crossings paid after fees.

    tickflow backtest --from 2026-11-30T00:00Z --to 2026-11-30T01:00Z \
        --strategy docs/examples/nbbo_strategy.py:NbboDislocation
"""

from __future__ import annotations

from decimal import Decimal

from jobs.backtest import Context, Event, Nbbo, Order


class NbboDislocation:
    def __init__(self, clip: Decimal = Decimal("1"), fee_bps: Decimal = Decimal("5")) -> None:
        self.clip = clip  # the most bought (and sold) per crossing
        self.fee_bps = fee_bps  # per leg: a crossing must pay both
        self.crossings = 0
        self.traded = 0

    def on_event(self, event: Event, ctx: Context) -> None:
        if not isinstance(event, Nbbo) or not event.crossed:
            return
        if event.bid_price is None or event.ask_price is None:
            return
        self.crossings += 1
        edge_bps = (event.bid_price - event.ask_price) / event.ask_price * 10_000
        if edge_bps <= 2 * self.fee_bps:
            return
        symbols = dict(venue.split(":", 1) for venue in event.venues)  # exchange -> symbol
        buy_at, sell_at = event.ask_venues[0], event.bid_venues[0]
        size = min(self.clip, event.ask_size or Decimal(0), event.bid_size or Decimal(0))
        if size <= 0 or buy_at == sell_at:
            return
        # market orders: each leg takes what its book (as delivered so far) shows
        ctx.submit(Order(buy_at, symbols[buy_at], "buy", size))
        ctx.submit(Order(sell_at, symbols[sell_at], "sell", size))
        self.traded += 1
