"""Frames/s through a thread-mode MiniCluster job: the JVM frame bundler with one Python call per
bundle vs Python key_by with one call per frame (each Python fn only counts).

    python -m bench.bundler_crossing bundled 200000
    python -m bench.bundler_crossing per-record 200000

Run each mode in its own process (a second thread-mode job in one JVM fails in pemja). The
wall time includes ~8 s of job start-up; run with a small count to measure it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Configuration, Types
from pyflink.datastream import DataStream, KeyedProcessFunction, StreamExecutionEnvironment
from pyflink.datastream.functions import RuntimeContext
from pyflink.java_gateway import get_gateway

from jobs import jvm_ops
from schemas.codec import RawEnvelope, encode_envelope, envelope_instrument
from stack.flink import venv_python, worker_pythonpath
from stack.jars import flink_connector_jars
from tickflow.config import load_settings

DISTINCT = 2000
FRAME_BYTES = 300


class Count(KeyedProcessFunction):
    def open(self, runtime_context: RuntimeContext) -> None:
        self.calls = 0

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[bytes]:
        self.calls += 1
        return iter(())


def main(mode: str, total: int) -> dict[str, Any]:
    settings = load_settings()
    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", str(venv_python()))
    conf.set_string("python.pythonpath", worker_pythonpath(settings))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.add_jars(*(jar.as_uri() for jar in flink_connector_jars(settings)))

    gateway = get_gateway()
    distinct = gateway.jvm.java.util.ArrayList()
    for i in range(DISTINCT):
        instrument = f"I{i % 20}-USD"
        value = encode_envelope(
            RawEnvelope(instrument, "coinbase", instrument, "l2_data", i, "c", i, b"")
        )
        distinct.add(bytearray(value + b"x" * (FRAME_BYTES - len(value))))
    values = gateway.jvm.java.util.ArrayList()
    for _ in range(total // DISTINCT):
        values.addAll(distinct)
    byte_array = Types.PRIMITIVE_ARRAY(Types.BYTE())
    raw = DataStream(
        env._j_stream_execution_environment.fromData(values, byte_array.get_java_type_info())
    )
    if mode == "bundled":
        keyed = jvm_ops.bundle_frames(raw, {}, max_frames=50, max_delay_ms=200)
    else:
        keyed = raw.key_by(envelope_instrument, key_type=Types.STRING())
    keyed.process(Count(), output_type=byte_array).print()
    started = time.perf_counter()
    env.execute(f"bundler-crossing-{mode}")
    seconds = time.perf_counter() - started
    frames = values.size()
    return {"mode": mode, "frames": frames, "seconds": round(seconds, 2),
            "frames_per_s": round(frames / seconds)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
