#!/usr/bin/env bash
# One-shot job client: submit the pipeline to the JobManager unless it already runs there
# (so `docker compose up` can be repeated). FROM_SAVEPOINT=<path> resumes from a savepoint or a
# retained checkpoint under /flink-data.
set -euo pipefail
rest="http://${FLINK_JOBMANAGER:-jobmanager:8081}"
# the live job runs on the compiled core and the JVM operators: both are in the image
python -c 'import tickflow_native' \
    || { echo "the compiled core (tickflow_native) is not installed" >&2; exit 1; }
compgen -G "/opt/flink/lib/tickflow-flink-ops-*.jar" >/dev/null \
    || { echo "the JVM operators' jar is not in /opt/flink/lib" >&2; exit 1; }
if python - "${rest}" <<'PY'
import json
import sys
import urllib.request

from jobs.pipeline import JOB_NAME

with urllib.request.urlopen(f"{sys.argv[1]}/jobs/overview", timeout=10) as response:
    jobs = json.load(response)["jobs"]
active = ("CREATED", "INITIALIZING", "RUNNING", "RESTARTING")
sys.exit(0 if any(j["name"] == JOB_NAME and j["state"] in active for j in jobs) else 1)
PY
then
    echo "the pipeline already runs on ${rest}"
    exit 0
fi
args=(run --detached --jobmanager "${FLINK_JOBMANAGER:-jobmanager:8081}")
if [[ -n "${FROM_SAVEPOINT:-}" ]]; then
    args+=(--fromSavepoint "${FROM_SAVEPOINT}")
fi
exec flink "${args[@]}" --python /opt/tickflow/jobs/pipeline.py
