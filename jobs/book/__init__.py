"""Pure book engines: exact levels and each exchange's documented sync rules."""

from __future__ import annotations

from jobs.book.binance import BinanceBook
from jobs.book.engine import SyncedBook

# exchange name -> engine class
ENGINES: dict[str, type[SyncedBook]] = {
    "binance": BinanceBook,
}
