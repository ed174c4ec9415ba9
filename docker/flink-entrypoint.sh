#!/usr/bin/env bash
# The repository's flink-conf/ (baked in, or mounted read-only at /opt/tickflow/flink-conf)
# becomes Flink's conf/; the official entrypoint then writes the container's addresses and
# paths (JOB_MANAGER_RPC_ADDRESS, FLINK_PROPERTIES) into that copy, never into the mount.
set -euo pipefail
cp /opt/tickflow/flink-conf/* "${FLINK_HOME}/conf/"
exec /docker-entrypoint.sh "$@"
