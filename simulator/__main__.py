"""``tickflow simulator``: serve the simulated exchanges until SIGINT/SIGTERM.

Host, port, seed and rates come from the configuration (``simulator`` section).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from simulator.replay import ReplayServer
from simulator.server import SimulatorServer
from tickflow.config import Settings, load_settings
from tickflow.logs import setup_logging


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.replay is None:
        await SimulatorServer(settings, paused=args.paused).serve_forever(stop)
        return
    sim = settings.simulator
    replay = ReplayServer(args.replay, args.exchange, sim.host, sim.port, args.speed)
    await replay.start()
    logging.info("replaying %d frames of %s on port %d", len(replay.frames), args.replay, sim.port)
    await stop.wait()
    await replay.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickflow simulator",
        description="Serve simulated exchange protocols (Binance spot under /binance) on loopback.",
    )
    parser.add_argument("--paused", action="store_true", help="start without generating events")
    parser.add_argument(
        "--replay", type=Path, metavar="FILE", help="serve a connector recording instead"
    )
    parser.add_argument("--exchange", default="binance", help="with --replay: its exchange")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="with --replay: time factor (0: no pacing)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="debug logging (instead of monitoring.log_level)",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    level = "DEBUG" if args.verbose else settings.monitoring.log_level
    setup_logging(level, settings.monitoring.log_format)
    # websockets logs every plain HTTP answer as a "rejected" handshake: keep that quiet
    logging.getLogger("simulator.websockets").setLevel(logging.WARNING)
    asyncio.run(_serve(args, settings))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
