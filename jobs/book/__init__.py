"""Pure book engines: exact levels and each exchange's documented sync rules."""

from __future__ import annotations

from jobs.book.binance import BinanceBook
from jobs.book.coinbase import CoinbaseBook
from jobs.book.engine import SyncedBook
from jobs.book.kraken import KrakenBook

# exchange name -> engine class
ENGINES: dict[str, type[SyncedBook]] = {
    "binance": BinanceBook,
    "coinbase": CoinbaseBook,
    "kraken": KrakenBook,
}
