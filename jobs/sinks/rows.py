"""Results as ClickHouse rows (tables in ``jobs/sinks/clickhouse.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jobs.bars import Bar
from jobs.instrument import LateEvent, NbboUpdate, Outputs
from jobs.matching import MatchedTrade
from jobs.sinks.clickhouse import (
    bar_row,
    late_event_row,
    matched_trade_row,
    nbbo_row,
    snapshot_row,
    top_of_book_row,
    trade_row,
)


def nbbo_to_row(update: NbboUpdate) -> tuple[Any, ...]:
    n = update.nbbo
    return nbbo_row(
        instrument=n.instrument,
        quote=n.quote,
        event_time_ms=update.event_time_ms,
        version=update.version,
        receive_time_ns=update.receive_time_ns,
        bid_price=n.bid_price,
        bid_size=n.bid_size,
        bid_venues=list(n.bid_venues),
        ask_price=n.ask_price,
        ask_size=n.ask_size,
        ask_venues=list(n.ask_venues),
        locked=int(n.locked),
        crossed=int(n.crossed),
        venues=list(n.venues),
        venue_versions=list(n.venue_versions),
        excluded=list(n.excluded),
        excluded_reasons=list(n.excluded_reasons),
    )


def matched_to_row(m: MatchedTrade) -> tuple[Any, ...]:
    t, nbbo = m.trade, m.nbbo
    return matched_trade_row(
        exchange=t.exchange,
        symbol=t.symbol,
        instrument=m.instrument,
        trade_id=t.trade_id,
        trade_time_ms=t.trade_time_ms,
        price=t.price,
        size=t.size,
        taker_side=t.taker_side,
        book_status=m.book_status,
        book_time_ms=m.book_time_ms,
        book_version=m.book_version,
        book_seq=m.book_seq,
        bid_price=m.bid[0] if m.bid else None,
        bid_size=m.bid[1] if m.bid else None,
        ask_price=m.ask[0] if m.ask else None,
        ask_size=m.ask[1] if m.ask else None,
        mid=m.mid,
        spread=m.spread,
        touch=m.touch,
        levels_consumed=m.levels_consumed,
        size_consumed=m.size_consumed,
        slippage_mid=m.slippage_mid,
        slippage_mid_bps=m.slippage_mid_bps,
        nbbo_bid_price=nbbo.bid_price if nbbo else None,
        nbbo_bid_size=nbbo.bid_size if nbbo else None,
        nbbo_ask_price=nbbo.ask_price if nbbo else None,
        nbbo_ask_size=nbbo.ask_size if nbbo else None,
        nbbo_venues=list(nbbo.venues) if nbbo else [],
        slippage_nbbo=m.slippage_nbbo,
        trade_through=int(m.trade_through),
        receive_time_ns=t.receive_time_ns,
    )


def bar_to_row(b: Bar) -> tuple[Any, ...]:
    return bar_row(
        instrument=b.instrument,
        venue=b.venue,
        interval_ms=b.interval_ms,
        window_start_ms=b.window_start_ms,
        open=b.open,
        high=b.high,
        low=b.low,
        close=b.close,
        volume=b.volume,
        notional=b.notional,
        vwap=b.vwap,
        trade_count=b.trade_count,
        buy_volume=b.buy_volume,
        sell_volume=b.sell_volume,
        live_ms=b.live_ms,
        twa_spread=b.twa_spread,
        twa_bid_depth_10bps=b.twa_bid_depth,
        twa_ask_depth_10bps=b.twa_ask_depth,
        ofi=b.ofi,
    )


def late_to_row(e: LateEvent) -> tuple[Any, ...]:
    return late_event_row(
        instrument=e.instrument,
        exchange=e.exchange,
        symbol=e.symbol,
        kind=e.kind,
        event_id=e.event_id,
        event_time_ms=e.event_time_ms,
        watermark_ms=e.watermark_ms,
        lateness_ms=e.watermark_ms - e.event_time_ms,
        receive_time_ns=e.receive_time_ns,
    )


def analytics_rows(out: Outputs) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The ``(table, row)`` pairs of what the analytics produced: NBBO, matches, bars, late."""
    for update in out.nbbo:
        yield "nbbo", nbbo_to_row(update)
    for matched in out.matched:
        yield "matched_trades", matched_to_row(matched)
    for bar in out.bars:
        yield "bars", bar_to_row(bar)
    for late in out.late:
        yield "late_events", late_to_row(late)


def frame_rows(out: Outputs, instrument: str) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The ``(table, row)`` pairs of one frame's outputs (``instrument``: the frame's own):
    trades, book snapshots and top-of-book changes, then the analytics'."""
    for trade in out.trades:
        yield "trades", trade_row(trade, instrument)
    for trade in out.late_trades:
        yield "trades", trade_row(trade, instrument, on_time=False)
    for view in out.snapshots:
        yield "book_snapshots", snapshot_row(view)
    for view in out.top_changes:
        yield "top_of_book", top_of_book_row(view, view.bid_depth, view.ask_depth)
    yield from analytics_rows(out)
