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
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = {**pipeline_topics(settings), **(extra or {})}
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap,
        client_id="tickflow-stack-topics",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        missing = sorted(set(wanted) - set(admin.list_topics()))
        created: list[str] = []
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, wanted[name], replication_factor=1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # another creator won the race: fine
        if not wait_until(lambda: set(wanted) <= set(admin.list_topics()), timeout_s):
            absent = sorted(set(wanted) - set(admin.list_topics()))
            raise StackError(f"kafka: topics {absent} not listed {timeout_s:.0f} s after creation")
        return created
    finally:
        admin.close()


def main() -> int:
    """``python -m stack.topics``: create the pipeline's topics on ``kafka.bootstrap`` (the
    docker compose ``kafka-topics`` service; the local stack creates them on ``up``)."""
    from tickflow.config import load_settings

    created = ensure_topics(load_settings())
    print(f"created {', '.join(created) or 'no topics'}; all pipeline topics exist")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
