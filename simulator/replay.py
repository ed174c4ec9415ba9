"""Replay a connector recording (``connectors/recorder.py``) as if it were the exchange.

Every WebSocket connection under ``/<exchange>/`` receives the recorded WebSocket frames from
the start, paced by their recorded receive times (divided by ``speed``; 0 sends as fast as
possible), then stays open and quiet. Client messages (subscriptions) are read and ignored:
the recording already holds the exchange's answers. A REST request is answered with the
recorded response for the same path and query, in recorded order (Binance depth snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from pathlib import Path

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connectors.recorder import read_recording

log = logging.getLogger(__name__)


class ReplayServer:
    def __init__(self, recording: Path, exchange: str, host: str, port: int, speed: float) -> None:
        self.exchange = exchange
        self.host, self.port, self.speed = host, port, speed
        self.frames: list[tuple[int, bytes]] = []
        self.rest: dict[str, deque[bytes]] = defaultdict(deque)
        for stamp, frame in read_recording(recording):
            if frame.startswith(b'{"rest":'):
                record = orjson.loads(frame)
                self.rest[record["rest"]].append(orjson.dumps(record["body"]))
            else:
                self.frames.append((stamp, frame))
        self.sent = 0
        self._server: Server | None = None

    async def start(self) -> None:
        self._server = await serve(
            self._handler, self.host, self.port, process_request=self._http, max_size=None
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _http(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = request.path
        prefix = f"/{self.exchange}"
        if path == "/_sim/health":
            return _reply(200, b'{"ok":true}')
        answers = self.rest.get(path[len(prefix) :]) if path.startswith(prefix) else None
        if not answers:
            return _reply(404, orjson.dumps({"error": f"nothing recorded for {path}"}))
        # the next recorded answer; the last one keeps being served once the others are used
        return _reply(200, answers.popleft() if len(answers) > 1 else answers[0])

    async def _handler(self, ws: ServerConnection) -> None:
        reader = asyncio.create_task(self._drain(ws))
        try:
            loop = asyncio.get_running_loop()
            start, first = loop.time(), self.frames[0][0] if self.frames else 0
            for stamp, frame in self.frames:
                if self.speed > 0:
                    delay = start + (stamp - first) / 1e9 / self.speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await ws.send(frame, text=True)
                self.sent += 1
            # stay open and quiet: a close would make the client reconnect and replay it all again
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @staticmethod
    async def _drain(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass


def _reply(status: int, body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status, "OK" if status == 200 else "Not Found", headers, body)
