# syntax=docker/dockerfile:1
# Flink JobManager / TaskManager / job client with PyFlink, the Kafka connector and the tickflow
# job. Build context: the repository root (docker compose -f docker/compose.yaml build).
#
# The official Flink 2.2 image runs Ubuntu 24.04, whose Python is 3.12: the interpreter AWS
# Managed Service for Apache Flink 2.2 runs PyFlink jobs with, so both deployments run the same.

# -- the jars of the local stack's pom (one place pins their versions) -------------------------
FROM maven:3.9.11-eclipse-temurin-17 AS jars
COPY stack/maven/flink-jars.pom.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml dependency:copy-dependencies \
        -DoutputDirectory=/build/jars -DexcludeTransitive=true

# -- the project's JVM operators (jobs/jvm): the frame bundler, record splitter, ClickHouse sink -
# Flink itself is provided (the image's); tests run with the repository's, not here
FROM maven:3.9.11-eclipse-temurin-17 AS ops
COPY jobs/jvm/pom.xml /build/ops/pom.xml
COPY jobs/jvm/src/main/ /build/ops/src/main/
RUN mvn -q -B -f /build/ops/pom.xml package -DskipTests=true -Dops.build.dir=/build/ops/target

# -- the compiled core (jobs/native): one abi3 wheel, any CPython >= 3.11 ----------------------
FROM rust:1.95-bookworm AS native
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir "maturin>=1.7,<2"
COPY jobs/native/ /build/native/
RUN /opt/build/bin/maturin build --release --manifest-path /build/native/Cargo.toml \
        --out /build/wheels

# -- Flink + Python + tickflow -------------------------------------------------------------------
FROM flink:2.2.1-scala_2.12-java17

USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libpython3.12-dev: thread mode embeds the interpreter (pemja loads libpython3.12.so)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv libpython3.12-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TICKFLOW_HOME=/opt/tickflow

WORKDIR /opt/tickflow
COPY setup.cfg pyproject.toml README.md ./
COPY tickflow/ tickflow/
COPY connectors/ connectors/
COPY jobs/ jobs/
COPY schemas/ schemas/
COPY simulator/ simulator/
COPY stack/ stack/
COPY monitoring/ monitoring/
COPY config/ config/
COPY flink-conf/ flink-conf/
# the project pins PyFlink (apache-flink==2.2.1, the image's Flink); it is developed on 3.11 and
# runs on 3.12 as on AWS
RUN pip install --no-cache-dir --ignore-requires-python -e /opt/tickflow
# the compiled core: the live job's logic and `tickflow job backfill`'s
COPY --from=native /build/wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels

# the connector and the project's operators on the cluster classpath (jobs do not ship them:
# flink.job_jars is empty); flink-python in lib/ loads pemja once per TaskManager (see
# flink-conf/config.yaml); the Prometheus reporter is the only plugin
COPY --from=jars /build/jars/flink-sql-connector-kafka-*.jar /opt/flink/lib/
COPY --from=ops /build/ops/target/tickflow-flink-ops-1.jar /opt/flink/lib/
COPY --from=jars /build/jars/flink-metrics-prometheus-*.jar /opt/flink/plugins/metrics-prometheus/
RUN cp /opt/flink/opt/flink-python-*.jar /opt/flink/lib/ \
    && mkdir -p /flink-data \
    && chown -R flink:flink /opt/flink/conf /opt/flink/lib /opt/flink/plugins /flink-data

COPY docker/flink-entrypoint.sh docker/submit-job.sh /usr/local/bin/
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/tickflow-healthcheck
# the official image's flink user
USER 9999
# checkpoints and savepoints (a volume shared by the JobManager and the TaskManagers)
VOLUME ["/flink-data"]
EXPOSE 6123 8081 9249
ENTRYPOINT ["/usr/local/bin/flink-entrypoint.sh"]
CMD ["help"]
