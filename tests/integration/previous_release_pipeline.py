"""A stand-in for the release before the compiled core, for test_savepoint's upgrade test.

That release ran the books on Python operators (uids ``books-per-instrument`` and
``clickhouse-writer``) whose code is gone, so it cannot run any more. Its savepoints had the
same source and Kafka sinks as today's job (same uids) plus keyed state under those two uids,
which no operator of today's job takes. This graph is today's job plus keyed state under
exactly those uids: a drained savepoint of it has the shape of the old release's, and
resuming today's job from it needs ``--allow-non-restored-state``, as ``jobs/cli.py`` says.
"""

from __future__ import annotations

from collections.abc import Iterator

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from jobs import pipeline
from tickflow.config import load_settings

# the uids of the old release's Python operators (their state is what the upgrade drops)
OLD_UIDS = ("books-per-instrument", "clickhouse-writer")
NAME_PREFIX = "previous-release-"  # their stand-ins' names (today's books operator has the
# old one's name, ``books-per-instrument``, under another uid)


class HeldState(KeyedProcessFunction):
    """Keeps a count per key in keyed state (so the savepoint has state under its uid)."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.seen = runtime_context.get_state(ValueStateDescriptor("seen", Types.LONG()))

    def process_element(self, value: bytes, ctx: KeyedProcessFunction.Context) -> Iterator[int]:
        self.seen.update((self.seen.value() or 0) + 1)
        yield from ()


def blob_key(blob: bytes) -> str:
    return str(len(blob) % 4)


def main() -> None:
    settings = load_settings()
    env = pipeline.create_environment(settings)
    blobs = pipeline.build_pipeline(env, settings)
    for uid in OLD_UIDS:
        (
            blobs.key_by(blob_key, key_type=Types.STRING())
            .process(HeldState(), output_type=Types.LONG())
            .name(f"{NAME_PREFIX}{uid}")
            .uid(uid)
            .print()
            .name(f"{NAME_PREFIX}{uid}-sink")
            .uid(f"{uid}-sink")
        )
    env.execute(pipeline.JOB_NAME)


if __name__ == "__main__":
    main()
