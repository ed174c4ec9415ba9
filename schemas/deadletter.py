"""The dead-letter record: why an input was rejected, where it came from, and the exact bytes.

One JSON object per Kafka value on ``kafka.deadletter_topic``, written by the connectors (frames
they cannot route) and the job (frames or envelopes it cannot parse); replayable because the
input is kept verbatim (base64).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from schemas.codec import RawEnvelope


def dead_letter_record(
    stage: str, error: str, raw: bytes, env: RawEnvelope | None = None, **meta: Any
) -> str:
    record: dict[str, Any] = {
        "stage": stage,
        "error": error,
        "value_b64": base64.b64encode(raw).decode(),
        **meta,
    }
    if env is not None:
        record.update(
            exchange=env.exchange,
            symbol=env.symbol,
            channel=env.channel,
            connection_id=env.connection_id,
            connection_seq=env.connection_seq,
            receive_time_ns=env.receive_time_ns,
        )
    return json.dumps(record)
