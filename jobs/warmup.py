"""A short job that loads the pipeline's Python code into TaskManagers before the pipeline needs
it there.

In thread mode a TaskManager keeps one embedded Python interpreter for its lifetime, and the
first Python operator it runs starts it: PyFlink's runtime (with Beam), the job's modules and
the compiled core, ~7 s on a 2-core machine. The HA profile keeps a spare TaskManager for the
pipeline to restart on when its own is lost; a cold spare spent those seconds while every book
was stale. Its JVM is cold too: the first Kafka clients it opens (the pipeline's source and
sinks, with TLS and SCRAM) load and compile their code, so each subtask also opens a consumer
and a producer with the pipeline's properties (``io.tickflow.flink.KafkaClientWarmup``). The
stack submits this job, with one subtask per free slot, whenever TaskManagers start beside
others (``stack.flink.warm_taskmanagers``): every TaskManager with a free slot runs a subtask,
and the job finishes once each has imported the code and opened the clients.

    flink run -py jobs/warmup.py 3 thread      (subtasks, python.execution-mode)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator

from pyflink.common import Configuration, Types
from pyflink.datastream import (
    DataStream,
    FlatMapFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.java_gateway import get_gateway

from jobs.jvm_ops import java_map
from tickflow.config import KafkaConfig, load_settings
from tickflow.kafka_security import java_client_properties

JOB_NAME = "tickflow-warmup"
# how long each Kafka client of a subtask may take to answer
KAFKA_TIMEOUT_MS = 30_000

# what the pipeline's Python operator imports (jobs/operators.py, and the core it builds)
MODULES = ("jobs.operators", "tickflow_native")


class ImportJobCode(FlatMapFunction):
    """Imports the pipeline's modules as its operator opens; emits nothing."""

    def open(self, runtime_context: RuntimeContext) -> None:
        for module in MODULES:
            importlib.import_module(module)

    def flat_map(self, value: int) -> Iterator[int]:
        return iter(())


def kafka_client_properties(kafka: KafkaConfig) -> dict[str, str]:
    """What the pipeline's Kafka source and sinks are configured with (jobs/pipeline.py)."""
    return {"bootstrap.servers": kafka.bootstrap, **java_client_properties(kafka)}


def build(env: StreamExecutionEnvironment, parallelism: int, kafka: KafkaConfig | None) -> None:
    """``parallelism`` subtasks, each importing the job's code and, given ``kafka``, opening
    its Kafka clients."""
    env.set_parallelism(parallelism)
    numbers = env.from_collection(list(range(parallelism)), Types.INT())
    imported = numbers.flat_map(ImportJobCode(), Types.INT())
    if kafka is not None:
        warmup = get_gateway().jvm.io.tickflow.flink.KafkaClientWarmup(
            java_map(kafka_client_properties(kafka)), kafka.raw_topic, KAFKA_TIMEOUT_MS
        )
        imported = DataStream(imported._j_data_stream.map(warmup))
    imported.print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs.warmup", description=__doc__.split("\n")[0])
    # positional: `flink run` takes options after the program's file for its own (its
    # --parallelism would set the job's and leave the program none)
    parser.add_argument("subtasks", type=int, help="one per free slot")
    parser.add_argument("execution_mode", nargs="?", default="thread", help="python.execution-mode")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    config = Configuration()
    config.set_string("python.execution-mode", args.execution_mode)
    # a subtask lost with its TaskManager fails the job at once, freeing its slots for the
    # pipeline, instead of restarting and waiting for slots beside it
    config.set_string("restart-strategy.type", "none")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    build(env, args.subtasks, load_settings().kafka)
    env.execute(JOB_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
