"""Kafka topics of the pipeline, created explicitly (the broker has auto-creation off)."""

from __future__ import annotations

from stack.system import StackError, wait_until
from tickflow.config import Settings


def pipeline_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions for every topic the pipeline uses."""
    kafka = settings.kafka
    return {
        kafka.raw_topic: kafka.raw_partitions,
        kafka.deadletter_topic: 1,
        kafka.control_topic: 1,
        **{topic: 1 for topic in output_topics(settings)},
    }


def output_topics(settings: Settings) -> list[str]:
    """The job's exactly-once result topics."""
    return list(settings.kafka.result_topics().values())


def ensure_topics(
    settings: Settings, extra: dict[str, int] | None = None, timeout_s: float = 60.0
) -> list[str]:
    """Create the pipeline topics (and `extra`: name -> partitions) that do not exist yet.

    Idempotent and safe against concurrent creators. Returns the names it created, after the
    broker lists all of them. Existing topics are not repartitioned.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from tickflow.kafka_security import client_config

    wanted = {**pipeline_topics(settings), **(extra or {})}
    admin = AdminClient(
        client_config(
            settings.kafka,
            **{"client.id": "tickflow-stack-topics", "socket.timeout.ms": int(timeout_s * 1000)},
        )
    )

    def listed() -> set[str]:
        return set(admin.list_topics(timeout=timeout_s).topics)

    missing = sorted(set(wanted) - listed())
    replicas = settings.kafka.replication_factor
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, wanted[name], replication_factor=replicas) for name in missing],
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise  # another creator winning the race is fine, anything else is not
    if not wait_until(lambda: set(wanted) <= listed(), timeout_s):
        absent = sorted(set(wanted) - listed())
        raise StackError(f"kafka: topics {absent} not listed {timeout_s:.0f} s after creation")
    return sorted(created)


def main() -> int:
    """``python -m stack.topics``: create the pipeline's topics on ``kafka.bootstrap`` (the
    docker compose ``kafka-topics`` service; the local stack creates them on ``up``)."""
    from tickflow.config import load_settings

    created = ensure_topics(load_settings())
    print(f"created {', '.join(created) or 'no topics'}; all pipeline topics exist")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
