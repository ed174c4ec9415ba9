"""The pipeline after a code change that keeps every uid, as an upgrade would ship it.

The books operator runs other code (a subclass that marks Redis with the version it runs) and
a new operator with a new uid hangs on its output. test_savepoint resumes a savepoint
taken from the released pipeline with it: Flink maps the state by uid, not by code.
"""

from __future__ import annotations

from pyflink.datastream import RuntimeContext

from jobs import pipeline
from jobs.operators import BundleProcessor
from tickflow.config import load_settings

UPGRADE_KEY = "running-code"  # under the Redis key prefix
UPGRADE_VERSION = "upgraded"
PROBE = "upgrade-probe"  # the new operator's name and uid


class UpgradedBundleProcessor(BundleProcessor):
    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self.redis.set(f"{self.redis_config.key_prefix}:{UPGRADE_KEY}", UPGRADE_VERSION)


def main() -> None:
    settings = load_settings()
    env = pipeline.create_environment(settings)
    pipeline.BundleProcessor = UpgradedBundleProcessor  # type: ignore[misc]
    processed = pipeline.build_pipeline(env, settings)
    (
        processed.filter(lambda _: False)
        .name(PROBE)
        .uid(PROBE)
        .print()
        .name(f"{PROBE}-sink")
        .uid(f"{PROBE}-sink")
    )
    env.execute(pipeline.JOB_NAME)


if __name__ == "__main__":
    main()
