"""A trivial thread-mode PyFlink job, submitted by test_stack.py to the session cluster.

Two submissions in a row must both succeed: the second thread-mode job on a TaskManager used to
fail with ``NoSuchFieldException: loadedLibraryNames`` (pemja loaded once per job).
"""

from __future__ import annotations

import sys

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment


def main(argv: list[str]) -> None:
    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    env.from_collection([1, 2, 3]).map(lambda x: x * 2).print()
    env.execute(argv[0] if argv else "tickflow-trivial-thread-job")


if __name__ == "__main__":
    main(sys.argv[1:])
