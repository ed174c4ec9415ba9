"""``tickflow connector <exchange>``: stream an exchange into Kafka until SIGINT/SIGTERM.

Shutdown closes the WebSocket, then flushes the producer; the exit status is 1 when any
envelope was not delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from connectors.base import WsConnector
from connectors.binance import BinanceConnector
from connectors.coinbase import CoinbaseConnector
from connectors.control import ControlListener, ResyncRequest, serve_resyncs
from connectors.kraken import KrakenConnector
from connectors.producer import KafkaSink
from connectors.recorder import Recorder
from tickflow.config import Settings, load_settings

# exchange -> connector class, constructed as cls(settings, sink)
CONNECTORS: dict[str, type[BinanceConnector] | type[CoinbaseConnector] | type[KrakenConnector]] = {
    "binance": BinanceConnector,
    "coinbase": CoinbaseConnector,
    "kraken": KrakenConnector,
}
STATS_INTERVAL_S = 30.0

log = logging.getLogger("connectors")


async def _poll_and_report(connector: WsConnector, sink: KafkaSink) -> None:
    """Serve delivery reports while frames are quiet, and log counters now and then."""
    next_report = STATS_INTERVAL_S
    while True:
        await asyncio.sleep(0.1)
        sink.poll(0)
        next_report -= 0.1
        if next_report <= 0:
            next_report = STATS_INTERVAL_S
            log.info(
                "%s: %s | kafka sent %d delivered %d failed %d",
                connector.exchange,
                connector.stats,
                sink.sent,
                sink.delivered,
                sink.failed,
            )


async def _run(
    settings: Settings, exchange: str, sink: KafkaSink, record: Path | None = None
) -> None:
    connector = CONNECTORS[exchange](settings, sink)
    if record is not None:
        connector.recorder = Recorder(record)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, connector.stop)
    requests: asyncio.Queue[ResyncRequest] = asyncio.Queue()
    control = ControlListener(settings.kafka, exchange)
    control.start(loop, requests)
    tasks = [
        asyncio.create_task(_poll_and_report(connector, sink)),
        asyncio.create_task(
            serve_resyncs(requests, connector.resync, settings.connectors.resync_min_interval_s)
        ),
    ]
    try:
        await connector.run()
    finally:
        for task in tasks:
            task.cancel()
        control.close()
        if connector.recorder is not None:
            connector.recorder.close()
            log.info("recorded %d frames to %s", connector.recorder.lines, record)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickflow connector",
        description="Stream an exchange's market data into Kafka as raw envelopes.",
    )
    parser.add_argument("exchange", choices=sorted(CONNECTORS))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="also append every received frame to FILE as '<recv_ts>\\t<frame>' lines",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings()
    sink = KafkaSink(settings.kafka)
    try:
        asyncio.run(_run(settings, args.exchange, sink, args.record))
    finally:
        remaining = sink.close(settings.connectors.flush_timeout_s)
    return 0 if remaining == 0 and sink.failed == 0 else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
