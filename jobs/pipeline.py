"""The tickflow pipeline job: raw exchange frames from Kafka -> live books and the cross-exchange
NBBO in Redis; trades, book snapshots, touches, NBBO history, matched trades, bars and late
events in ClickHouse; bad input to the dead-letter topic; resync requests to the connectors.

    raw topic ──► frame-bundler (JVM, keyed by instrument) ──► books-per-instrument
        (BundleProcessor: one call per bundle into the compiled core, jobs/native) ──► Redis
        └──► sink blobs ──► ClickHouse (JVM, RowBinary over HTTP)
                       └──► Kafka (JVM splitters): result topics, dead letters, resync requests

Event time: the Kafka record timestamp (the connector's receive time) with a bounded
out-of-orderness watermark (``flink.watermark_out_of_orderness_ms``, 5 s); idle partitions
stop holding it back after ``flink.watermark_idle_timeout_ms``. Trades are matched and
windows closed as it passes.

Submit to a cluster with ``flink run -py jobs/pipeline.py`` (``tickflow job submit`` does it);
run it in-process (Flink MiniCluster) with ``python -m jobs.pipeline``, naming the Kafka
connector and JVM operator jars it needs in ``TICKFLOW__FLINK__JOB_JARS`` (``path;path``; a
cluster has them on its classpath).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.serialization import ByteArraySchema
from pyflink.datastream import CheckpointingMode, DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
    KafkaTopicPartition,
)
from pyflink.java_gateway import get_gateway

from jobs.jvm_ops import bundle_frames, clickhouse_sink, topic_records, topic_serializer
from jobs.operators import RESULT_TABLES, BundleProcessor
from jobs.replay import ReplayPacer
from jobs.sinks.clickhouse import COLUMNS, ensure_schema
from schemas.registry import result_writer_schemas
from tickflow.config import KafkaConfig, Settings, load_settings
from tickflow.kafka_security import java_client_properties

JOB_NAME = "tickflow-pipeline"


def raw_source(settings: Settings) -> KafkaSource:
    """The raw topic. Live: from ``flink.start_offsets`` if set, else the committed offsets
    (committed on checkpoints; first start: everything), unbounded. Replay: the records of
    [replay.from_ms, replay.to_ms), then the job finishes (a restore resumes from the
    checkpointed offsets either way)."""
    kafka, replay = settings.kafka, settings.replay
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(kafka.bootstrap)
        .set_topics(kafka.raw_topic)
        .set_group_id(settings.flink.consumer_group)
        .set_value_only_deserializer(ByteArraySchema())
    )
    for key, value in java_client_properties(kafka).items():
        builder = builder.set_property(key, value)
    if not replay.active:
        explicit = settings.flink.start_offsets_by_partition()
        return (
            builder.set_starting_offsets(
                KafkaOffsetsInitializer.offsets(
                    {KafkaTopicPartition(kafka.raw_topic, p): o for p, o in explicit.items()},
                    KafkaOffsetResetStrategy.EARLIEST,
                )
                if explicit
                else KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)
            )
            .set_property("partition.discovery.interval.ms", "60000")
            .build()
        )
    start = (
        KafkaOffsetsInitializer.timestamp(replay.from_ms)
        if replay.from_ms
        else KafkaOffsetsInitializer.earliest()
    )
    return (
        builder.set_starting_offsets(start)
        .set_bounded(KafkaOffsetsInitializer.timestamp(replay.to_ms))
        .build()
    )


def raw_frames(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """The raw topic with event time = the Kafka record timestamp (the connector's receive
    time); idle partitions must not hold the watermark back. Paced when a replay asks."""
    watermarks = WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(settings.flink.watermark_out_of_orderness_ms)
    )
    if settings.flink.watermark_idle_timeout_ms > 0:  # 0: every partition always counts
        watermarks = watermarks.with_idleness(
            Duration.of_millis(settings.flink.watermark_idle_timeout_ms)
        )
    raw = env.from_source(raw_source(settings), watermarks, "raw-frames").uid("raw-frames-source")
    if settings.replay.active and settings.replay.speed > 0:
        raw = (
            raw.map(
                PacedFrames(settings.replay.speed), output_type=Types.PRIMITIVE_ARRAY(Types.BYTE())
            )
            .name("replay-pacer")
            .uid("replay-pacer")
        )
    return raw


class PacedFrames:
    """A paced replay holds each frame until it is due (backpressure slows the source)."""

    def __init__(self, speed: float) -> None:
        self.pacer = ReplayPacer(speed)

    def __call__(self, data: bytes) -> bytes:
        self.pacer.hold(data)
        return data


def build_pipeline(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """Wire the whole job graph onto ``env``: the JVM bundles each instrument's frames and
    keys them, one Python call per bundle runs the compiled core, its sink blobs are split in
    the JVM. Every operator has a name and a stable uid. Returns the books operator's output
    (a later version of the job can hang more on it)."""
    kafka = settings.kafka
    ensure_schema(settings.clickhouse)
    bundles = bundle_frames(
        raw_frames(env, settings),
        settings.analytics.quote_equivalents,
        settings.flink.bundle_max_frames,
        settings.flink.bundle_max_delay_ms,
    )
    blobs = (
        bundles.process(
            BundleProcessor(
                settings.book,
                settings.redis,
                settings.analytics,
                settings.monitoring,
                settings.flink.python_fault_file,
                settings.registry,
                # looked up here, once: the running job never needs the registry to write
                result_writer_schemas(settings),
            ),
            output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()),
        )
        .name("books-per-instrument")
        .uid("core-per-instrument")
    )
    clickhouse_sink(blobs, settings.clickhouse, COLUMNS)
    result_topics = kafka.result_topics()
    # one sink per delivery guarantee, each for all its topics: a sink per topic meant six
    # transactional producers restored, aborted and opened at every restart, and the books
    # operator stalls once its outputs to sinks not yet running are full
    sinks = [
        ("results-sink", {table: result_topics[table] for table in RESULT_TABLES}, True),
        (
            "dead-letter-and-resync-sink",
            {"deadletter": kafka.deadletter_topic, "control": kafka.control_topic},
            False,
        ),
    ]
    for name, topics, exactly_once in sinks:
        sink = (
            records_sink(
                kafka,
                topics.values(),
                # unique per job and sink: a restore aborts only its own open transactions
                f"{settings.flink.consumer_group}-{name}",
                kafka.transaction_timeout_ms,
            )
            if exactly_once
            else records_sink(kafka, topics.values())
        )
        records = topic_records(blobs, topics, name.removesuffix("-sink") + "-records")
        if not settings.flink.result_sinks_chained:
            records = records.start_new_chain()
        records.sink_to(sink).name(name).uid(name)
    return blobs


def records_sink(
    kafka: KafkaConfig,
    topics: Iterable[str],
    transactional_id_prefix: str | None = None,
    transaction_timeout_ms: int = 0,
) -> KafkaSink:
    """Records as ``topic_records`` emits them, each to its topic (one of ``topics``), its
    bytes as they are (JSON text, or framed Avro). Without a transactional id: at-least-once
    (dead letters and resync requests are idempotent to repeat). With one: in Kafka
    transactions committed with each checkpoint, so a read_committed consumer sees every record
    once, even across restores."""
    builder = KafkaSink.builder().set_bootstrap_servers(kafka.bootstrap)
    builder._j_builder.setRecordSerializer(topic_serializer(sorted(topics)))
    for key, value in java_client_properties(kafka).items():
        builder = builder.set_property(key, value)
    if transactional_id_prefix is None:
        return builder.set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE).build()
    builder = (
        builder.set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix(transactional_id_prefix)
        .set_property("transaction.timeout.ms", str(transaction_timeout_ms))
    )
    # a restored writer finds its lingering transactions with one ListTransactions call
    # (POOLING) instead of opening a producer per id until one is unused (PROBING): with an
    # exactly-once sink per topic that probing was most of a restart (~1 s per sink on a busy box)
    strategies = get_gateway().jvm.org.apache.flink.connector.kafka.sink.TransactionNamingStrategy
    builder._j_builder.setTransactionNamingStrategy(strategies.POOLING)
    return builder.build()


def create_environment(settings: Settings) -> StreamExecutionEnvironment:
    conf = Configuration()
    conf.set_string("python.execution-mode", settings.flink.python_execution_mode)
    conf.set_string("state.backend.type", settings.flink.state_backend)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(settings.flink.parallelism)
    env.set_buffer_timeout(settings.flink.buffer_timeout_ms)
    # chained operators get the same object instead of a copy: each sink blob feeds three
    # chained readers (the two Kafka sinks' and ClickHouse's), and none of them changes its input
    env.get_config().enable_object_reuse()
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    jars = [Path(jar).resolve().as_uri() for jar in settings.flink.job_jars.split(";") if jar]
    if jars:
        env.add_jars(*jars)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--plan", action="store_true", help="print the execution plan and exit")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    env = create_environment(settings)
    build_pipeline(env, settings)
    if args.plan:
        print(env.get_execution_plan())
        return 0
    env.execute(JOB_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
