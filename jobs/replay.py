"""Replay pacing: a bounded replay of the raw topic at N x real time, by record time (and the
backtest's delivery of events, by event time: ``hold_until``).

The Kafka source reads as fast as it can; the key function (which sees every record first)
holds each record back until ``(record time - first record time) / speed`` has passed on the
wall clock since the first one. Holding the task thread back is what slows the source down:
Flink's backpressure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from schemas.codec import FRAME_HEADER_BYTES, EnvelopeError, _read_long, framed_id

# the raw envelope's fields before receive_time_ns: instrument, exchange, symbol, channel
STRING_FIELDS_BEFORE_TIME = 4


def envelope_receive_time_ns(data: bytes) -> int:
    """The envelope's ``receive_time_ns`` without decoding the whole record (every version of
    the schema keeps the first five fields in place: ``test_schema_evolution``)."""
    pos = 0 if framed_id(data) is None else FRAME_HEADER_BYTES
    for _ in range(STRING_FIELDS_BEFORE_TIME):
        length, pos = _read_long(data, pos)
        if length < 0 or pos + length > len(data):
            raise EnvelopeError("RawEnvelope too short for its header fields")
        pos += length
    return _read_long(data, pos)[0]


class ReplayPacer:
    def __init__(
        self,
        speed: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self._origin: tuple[int, float] | None = None  # (first record time ns, wall clock s)

    def hold(self, data: bytes) -> None:
        """Wait until this record is due."""
        self.hold_until(envelope_receive_time_ns(data))

    def hold_until(self, record_ns: int) -> None:
        """Wait until a record of this time (ns) is due; the first one sets the origin."""
        if self._origin is None:
            self._origin = (record_ns, self.clock())
            return
        first_ns, started = self._origin
        due = started + (record_ns - first_ns) / 1e9 / self.speed
        ahead = due - self.clock()
        if ahead > 0:
            self.sleep(ahead)
