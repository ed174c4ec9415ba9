"""``tickflow connector <exchange>``: stream an exchange into Kafka until SIGINT/SIGTERM.

Shutdown closes the WebSocket, then flushes the producer; the exit status is 1 when any
envelope was not delivered. The connector's metrics are served on
``http://127.0.0.1:<monitoring.connector_metrics_ports[exchange]>/metrics``; logs are
configured by ``monitoring.log_level`` / ``log_format`` and carry ``exchange``.
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
from connectors.metrics import ConnectorMetrics, MetricsServer
from connectors.producer import KafkaSink, raw_schema_id
from connectors.recorder import Recorder
from tickflow.config import ConfigError, Settings, load_settings
from tickflow.logs import setup_logging

# exchange -> connector class, constructed as cls(settings, sink[, rng[, metrics]])
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
        connector.flush_lost()  # sync_lost + resync for books whose frames were not delivered
        next_report -= 0.1
        if next_report <= 0:
            next_report = STATS_INTERVAL_S
            log.info(
                "%s: %s | kafka sent %d delivered %d failed %d (purged %d, dropped %d)",
                connector.exchange,
                connector.stats,
                sink.sent,
                sink.delivered,
                sink.failed,
                sink.purged,
                sink.dropped,
            )


def metrics_port(settings: Settings, exchange: str) -> int:
    """The port of an exchange's connector ``/metrics``: ``monitoring.connector_metrics_ports``."""
    ports = settings.monitoring.connector_metrics_ports
    try:
        return int(ports[exchange])
    except KeyError:
        raise ConfigError(
            f"monitoring.connector_metrics_ports has no port for {exchange!r}"
        ) from None
    except ValueError:
        raise ConfigError(
            f"monitoring.connector_metrics_ports.{exchange}: {ports[exchange]!r} is not a port"
        ) from None


def serve_metrics(
    metrics: ConnectorMetrics, port: int, host: str = "127.0.0.1"
) -> MetricsServer | None:
    """Serve ``/metrics`` on ``host`` (``monitoring.connector_metrics_host``); a port in use is
    logged, and the connector streams on without metrics (market data matters more than its
    monitoring)."""
    try:
        server = MetricsServer(metrics.registry, port, host)
    except OSError as exc:
        log.error("%s: metrics NOT served, port %d: %s", metrics.exchange, port, exc)
        return None
    log.info("%s: metrics on %s", metrics.exchange, server.url)
    return server


async def _run(
    settings: Settings, exchange: str, sink: KafkaSink, record: Path | None = None
) -> None:
    port = metrics_port(settings, exchange)  # a missing port fails before anything starts
    metrics = ConnectorMetrics(exchange)
    connector = CONNECTORS[exchange](settings, sink, metrics=metrics)
    sink.on_lost = connector.frames_lost
    if record is not None:
        connector.recorder = Recorder(record)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, connector.stop)
    requests: asyncio.Queue[ResyncRequest] = asyncio.Queue()
    control = ControlListener(settings.kafka, exchange)
    control.start(loop, requests)
    server = serve_metrics(metrics, port, settings.monitoring.connector_metrics_host)
    tasks = [
        asyncio.create_task(_poll_and_report(connector, sink)),
        asyncio.create_task(
            serve_resyncs(
                requests, connector.serve_resync_request,
                settings.connectors.resync_min_interval_s,
            )
        ),
    ]
    try:
        await connector.run()
    finally:
        for task in tasks:
            task.cancel()
        control.close()
        if server is not None:
            server.close()
        if connector.recorder is not None:
            connector.recorder.close()
            log.info("recorded %d frames to %s", connector.recorder.lines, record)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickflow connector",
        description="Stream an exchange's market data into Kafka as raw envelopes.",
    )
    parser.add_argument("exchange", choices=sorted(CONNECTORS))
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="debug logging (instead of monitoring.log_level)",
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="also append every received frame to FILE as '<recv_ts>\\t<frame>' lines",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    level = "DEBUG" if args.verbose else settings.monitoring.log_level
    setup_logging(level, settings.monitoring.log_format, exchange=args.exchange)
    sink = KafkaSink(
        settings.kafka,
        quote_equivalents=settings.analytics.quote_equivalents,
        schema_id=raw_schema_id(settings),
    )
    try:
        asyncio.run(_run(settings, args.exchange, sink, args.record))
    finally:
        remaining = sink.close(settings.connectors.flush_timeout_s)
    return 0 if remaining == 0 and sink.failed == 0 else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
