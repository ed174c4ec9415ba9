"""Entry script of the tickflow job on AWS Managed Service for Apache Flink.

``python -m aws.package`` puts this file at the root of the application zip, where the
``kinesis.analytics.flink.run.options`` property group names it (``python: main.py``), next to
``app/`` (the job's packages and config/) and ``dep/`` (vendored dependencies), both listed in
``pyFiles`` for the TaskManagers. Runtime properties become settings overrides (aws/runtime.py);
then the job graph is built exactly as ``jobs/pipeline.py`` builds it everywhere else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the client process that runs main() needs the packed code before pyFiles reaches the workers
for _path in (HERE / "dep", HERE / "app"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("TICKFLOW_HOME", str(HERE / "app"))

from aws.runtime import (  # noqa: E402  (after the path setup above)
    APPLICATION_PROPERTIES,
    read_property_groups,
    settings_environ,
)
from jobs.pipeline import main as run_pipeline  # noqa: E402

LOCAL_PROPERTIES = HERE / "application_properties.json"


def main() -> int:
    groups = read_property_groups(APPLICATION_PROPERTIES, LOCAL_PROPERTIES)
    os.environ.update(settings_environ(groups))
    return run_pipeline([])


if __name__ == "__main__":
    raise SystemExit(main())
