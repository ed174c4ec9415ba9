# syntax=docker/dockerfile:1
# Exchange connectors, the exchange simulator and one-shot setup commands (`tickflow ...`,
# `python -m stack.topics`). Build context: the repository root. No PyFlink: nothing here runs
# the job, so the image leaves apache-flink out of the project's dependencies.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TICKFLOW_HOME=/opt/tickflow
WORKDIR /opt/tickflow

COPY setup.cfg pyproject.toml README.md ./
# the dependencies of setup.cfg (its one list) except the Flink runtime
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print('\n'.join(r for r in c['options']['install_requires'].splitlines() \
if r.strip() and not r.startswith(('#', 'apache-flink'))))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY tickflow/ tickflow/
COPY connectors/ connectors/
COPY jobs/ jobs/
COPY schemas/ schemas/
COPY simulator/ simulator/
COPY stack/ stack/
COPY monitoring/ monitoring/
COPY api/ api/
COPY config/ config/
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/tickflow-healthcheck
RUN pip install --no-cache-dir --no-deps -e /opt/tickflow \
    && useradd --system --uid 10001 --home-dir /opt/tickflow tickflow

# tickflow, created above
USER 10001
ENTRYPOINT ["tickflow"]
CMD ["--help"]
