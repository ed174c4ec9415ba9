"""Record what a connector receives, for replay by the simulator (``tickflow simulator
--replay``) and for building test fixtures from real sessions.

One line per frame: ``<receive_time_ns>\\t<frame>``. WebSocket frames are written as received;
a REST response (a Binance depth snapshot) is written as the frame
``{"rest": "<path and query>", "body": <response body>}``. Exchange frames are compact JSON;
a raw newline (only possible as insignificant JSON whitespace) is written as a space so that
every record stays on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import orjson


class Recorder:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out: BinaryIO = path.open("ab")
        self.lines = 0

    def frame(self, receive_time_ns: int, frame: bytes) -> None:
        self._out.write(b"%d\t%s\n" % (receive_time_ns, frame.replace(b"\n", b" ")))
        self.lines += 1

    def rest(self, receive_time_ns: int, path_and_query: str, body: bytes) -> None:
        self.frame(receive_time_ns, b'{"rest":%s,"body":%s}' % (orjson.dumps(path_and_query), body))

    def close(self) -> None:
        self._out.close()


def read_recording(path: Path) -> list[tuple[int, bytes]]:
    """(receive_time_ns, frame) pairs of a recording, in file order."""
    records = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            stamp, sep, frame = line.rstrip(b"\n").partition(b"\t")
            if not sep or not stamp.isdigit():
                raise ValueError(f"{path}:{number}: not a '<recv_ts>\\t<frame>' line")
            records.append((int(stamp), frame))
    return records
