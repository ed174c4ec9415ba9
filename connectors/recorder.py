"""Record what a connector receives, for replay by the simulator (``tickflow simulator
--replay``) and for building test fixtures from real sessions.

One line per frame: ``<receive_time_ns>\\t<frame>``. WebSocket frames are written as received;
a REST response (a Binance depth snapshot) is written as the frame
``{"rest": "<path and query>", "body": <response body>}``. Exchange frames are compact JSON;
a raw newline (only possible as insignificant JSON whitespace) is written as a space so that
every record stays on one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

REST_PREFIX = b'{"rest":'  # a recorded REST response: {"rest":<path and query>,"body":<body>}
BODY_SEPARATOR = b',"body":'


class Recorder:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out: BinaryIO = path.open("ab")
        self.lines = 0

    def frame(self, receive_time_ns: int, frame: bytes) -> None:
        self._out.write(b"%d\t%s\n" % (receive_time_ns, frame.replace(b"\n", b" ")))
        self.lines += 1

    def rest(self, receive_time_ns: int, path_and_query: str, body: bytes) -> None:
        self.frame(
            receive_time_ns,
            REST_PREFIX + orjson.dumps(path_and_query) + BODY_SEPARATOR + body + b"}",
        )

    def close(self) -> None:
        self._out.close()


def iter_recording(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, receive_time_ns, frame) of each line of a recording, in file order, read
    as they are consumed (recordings of long sessions do not fit in memory)."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            stamp, sep, frame = line.rstrip(b"\n").partition(b"\t")
            if not sep or not stamp.isdigit():
                raise ValueError(f"{path}:{number}: not a '<recv_ts>\\t<frame>' line")
            yield number, int(stamp), frame


def read_recording(path: Path) -> list[tuple[int, bytes]]:
    """(receive_time_ns, frame) pairs of a recording, in file order."""
    return [(stamp, frame) for _, stamp, frame in iter_recording(path)]


def rest_response(frame: bytes) -> tuple[str, bytes] | None:
    """The path and query and the exact body of a recorded REST response (``Recorder.rest``);
    None for a WebSocket frame. Raises ValueError for a REST record that is not one.

    b'{"rest":"/api/v3/depth?symbol=BTCUSDT&limit=1000","body":{"lastUpdateId":1,...}}'
    -> ("/api/v3/depth?symbol=BTCUSDT&limit=1000", b'{"lastUpdateId":1,...}')
    """
    if not frame.startswith(REST_PREFIX):
        return None
    # a quote inside the path would be escaped: the first ',"body":' ends the path's string
    end = frame.find(BODY_SEPARATOR)
    body = frame[end + len(BODY_SEPARATOR) : -1] if end >= 0 else b""
    try:
        path = orjson.loads(frame[len(REST_PREFIX) : end]) if end >= 0 else None
    except orjson.JSONDecodeError:
        path = None
    if not isinstance(path, str) or not body or not frame.endswith(b"}"):
        raise ValueError(f"not a recorded REST response: {frame[:200]!r}")
    return path, body
