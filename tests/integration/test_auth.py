"""Secure by default, in the local stack: a client without the generated credentials is refused
by Kafka (no SASL, a wrong password, no client certificate, no TLS), Redis (NOAUTH), ClickHouse
(authentication) and the dashboard's write endpoint, and the same clients with them work; the
secret files are the owner's alone and no log, error or status prints a secret."""

from __future__ import annotations

import json
import logging
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.sinks.redis_books import redis_client
from stack import manager
from stack.cli import main as stack_cli
from stack.secrets import PASSWORD_FILES, secret_paths, secrets_dir
from tickflow.config import Settings
from tickflow.kafka_security import client_config

pytestmark = pytest.mark.integration

class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def settings(stack_settings: Settings) -> Settings:
    if stack_settings.kafka.security_protocol != "SASL_SSL":
        pytest.skip("the stack runs Kafka without SASL_SSL (kafka.security_protocol)")
    return stack_settings


def kafka_answers(conf: dict[str, Any], timeout_s: float = 8.0) -> tuple[bool, list[str]]:
    """Whether a client with ``conf`` gets the topic list; the errors it saw."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # librdkafka's own log lines, kept here instead of printed
    collected = Collected()
    logger = logging.getLogger(f"tests.auth.librdkafka.{id(collected)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(collected)
    admin = AdminClient({
        **conf, "logger": logger, "socket.timeout.ms": 5000, "reconnect.backoff.max.ms": 1000,
    })  # fmt: skip
    try:
        admin.list_topics(timeout=timeout_s)
        return True, collected.messages
    except KafkaException as error:
        admin.poll(0.5)  # serves the queued log lines
        return False, [*collected.messages, str(error)]


def without(conf: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if k not in keys}


# -- Kafka ------------------------------------------------------------------------------------


def test_kafka_with_the_generated_credentials_works(settings: Settings) -> None:
    ok, errors = kafka_answers(client_config(settings.kafka))
    assert ok, errors


def test_kafka_refuses_a_wrong_password(settings: Settings) -> None:
    conf = {**client_config(settings.kafka), "sasl.password": "not-the-password"}
    ok, errors = kafka_answers(conf)
    assert not ok
    assert any("Authentication failed" in e or "invalid credentials" in e for e in errors), errors


def test_kafka_refuses_a_client_without_sasl(settings: Settings) -> None:
    conf = without(client_config(settings.kafka), "sasl.mechanism", "sasl.username",
                   "sasl.password")  # fmt: skip
    ok, _ = kafka_answers({**conf, "security.protocol": "SSL"})
    assert not ok


def test_kafka_refuses_a_client_without_a_certificate(settings: Settings) -> None:
    conf = without(client_config(settings.kafka), "ssl.certificate.location", "ssl.key.location")
    ok, _ = kafka_answers(conf)
    assert not ok


def test_kafka_refuses_plaintext(settings: Settings) -> None:
    ok, _ = kafka_answers({"bootstrap.servers": settings.kafka.bootstrap})
    assert not ok


def test_kafka_refuses_a_broker_certificate_it_cannot_verify(settings: Settings) -> None:
    # the system's CAs do not know the stack's CA: the client does not talk to the broker
    ok, _ = kafka_answers(without(client_config(settings.kafka), "ssl.ca.location"))
    assert not ok


# -- Redis ------------------------------------------------------------------------------------


def test_redis_refuses_without_password(settings: Settings) -> None:
    config = settings.redis
    anonymous = redis.Redis(host=config.host, port=config.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(host=config.host, port=config.port, password="nope", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert redis_client(config, socket_timeout=5).ping()


# -- ClickHouse -------------------------------------------------------------------------------


def test_clickhouse_refuses_without_password(settings: Settings) -> None:
    import dataclasses

    from clickhouse_driver.errors import ServerException

    from jobs.sinks.clickhouse import connect

    config = settings.clickhouse
    for password in ("", "not-the-password"):
        client = connect(dataclasses.replace(config, password=password))
        with pytest.raises(ServerException) as refused:
            client.execute("SELECT 1")
        assert "password" in str(refused.value).lower()
        assert refused.value.code in (192, 193, 194, 516)  # unknown user / wrong / required
        client.disconnect()
    http = f"http://{config.host}:{config.http_port}/?query=SELECT%201"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(http, timeout=5).read()
    client = connect(config)
    try:
        assert client.execute("SELECT 1") == [(1,)]
    finally:
        client.disconnect()


# -- the dashboard ----------------------------------------------------------------------------


@pytest.fixture()
def dashboard_url(settings: Settings) -> Iterator[str]:
    from monitoring.dashboard import Dashboard, DashboardConfig

    token = settings.monitoring.dashboard_token
    assert token, "the stack generates the dashboard's token"
    dashboard = Dashboard(
        DashboardConfig(redis=settings.redis, prometheus_url=None, write_token=token)
    )
    port = dashboard.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}/api/v2/alerts"
    finally:
        dashboard.stop()


def post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps([{"labels": {"alertname": "AuthProbe"}, "startsAt": "2026-01-01T00:00:00Z"}])
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_dashboard_write_endpoint_refuses_without_token(
    settings: Settings, dashboard_url: str
) -> None:
    token = settings.monitoring.dashboard_token
    json_type = {"Content-Type": "application/json"}
    assert post(dashboard_url, json_type) == 401
    assert post(dashboard_url, {**json_type, "Authorization": "Bearer wrong"}) == 401
    good = {**json_type, "Authorization": f"Bearer {token}"}
    assert post(dashboard_url, {**good, "Content-Type": "text/plain"}) == 415
    assert post(dashboard_url, {**good, "Origin": "http://attacker.example"}) == 403
    assert post(dashboard_url, good) == 200


def test_prometheus_sends_alerts_with_the_token_file(settings: Settings) -> None:
    from stack.prometheus import Prometheus

    text = Prometheus(settings).config_file.read_text()
    assert f"credentials_file: {settings.monitoring.dashboard_token_file}" in text
    assert settings.monitoring.dashboard_token not in text


# -- the secrets themselves -------------------------------------------------------------------


def secrets_of(settings: Settings) -> dict[str, str]:
    directory = secrets_dir(settings)
    return {name: (directory / name).read_text().strip() for name in PASSWORD_FILES}


def test_secret_files_are_the_owners_alone(settings: Settings) -> None:
    directory = secrets_dir(settings)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in secret_paths(settings):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _files_to_scan(state_dir: Path) -> Iterator[Path]:
    skip_dirs = {state_dir / "secrets", state_dir / "kafka" / "data",
                 state_dir / "clickhouse" / "data", state_dir / "redis" / "data",
                 state_dir / "prometheus" / "data"}  # fmt: skip
    for path in state_dir.rglob("*"):
        if any(d == path or d in path.parents for d in skip_dirs):
            continue
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 * 1024 * 1024:
            yield path


def test_no_secret_in_state_files_logs_or_status(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = secrets_of(settings)
    # the broker's own configuration (0600) holds its store and SCRAM passwords; the
    # clients' secrets appear nowhere but in their files
    clients = {k: v for k, v in secrets.items() if k not in ("kafka-broker.password",
                                                             "stores.password")}  # fmt: skip
    found = []
    for path in _files_to_scan(settings.state_dir):
        data = path.read_bytes()
        found += [f"{name} in {path}" for name, value in clients.items() if value.encode() in data]
    assert found == []
    broker_config = settings.state_dir / "kafka" / "server.properties"
    assert stat.S_IMODE(broker_config.stat().st_mode) == 0o600
    assert stack_cli(["status"]) == 0
    rows = manager.status(settings)
    shown = capsys.readouterr().out + repr(rows) + repr(settings)
    assert [name for name, value in secrets.items() if value in shown] == []
