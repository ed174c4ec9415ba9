"""Client security settings in one place (tickflow.kafka_security), secrets read from files
(tickflow.config), and the local stack's secret files (stack.secrets): no servers."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from tickflow.config import ConfigError, KafkaConfig, load_settings
from tickflow.kafka_security import (
    FLINK_SHADED_PREFIX,
    client_config,
    java_properties,
    java_timeouts,
    librdkafka_config,
    redacted,
)

pytestmark = pytest.mark.unit


def kafka_with(tmp_path: Path, **changes: object) -> KafkaConfig:
    files = {}
    for name in ("ca.pem", "client.pem", "client.key", "client.p12", "truststore.p12"):
        (tmp_path / name).write_text("x")
        files[name] = str(tmp_path / name)
    base = dataclasses.replace(
        load_settings(environ={}).kafka,
        security_protocol="SASL_SSL",
        sasl_username="tickflow",
        sasl_password="s3cr3t",
        ssl_ca_file=files["ca.pem"],
        ssl_cert_file=files["client.pem"],
        ssl_key_file=files["client.key"],
        ssl_keystore_file=files["client.p12"],
        ssl_truststore_file=files["truststore.p12"],
        ssl_store_password="st0re",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_librdkafka_sasl_ssl_with_client_certificate(tmp_path: Path) -> None:
    kafka = kafka_with(tmp_path)
    conf = client_config(kafka, **{"group.id": "g"})
    assert conf == {
        "bootstrap.servers": kafka.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "tickflow",
        "sasl.password": "s3cr3t",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
        "socket.timeout.ms": 30000,
        "topic.metadata.refresh.interval.ms": 300000,
        "metadata.max.age.ms": 900000,
        "group.id": "g",
    }


def test_java_properties_sasl_ssl_with_pkcs12_stores(tmp_path: Path) -> None:
    props = java_properties(kafka_with(tmp_path))
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["sasl.jaas.config"] == (
        f"{FLINK_SHADED_PREFIX}org.apache.kafka.common.security.scram.ScramLoginModule "
        'required username="tickflow" password="s3cr3t";'
    )
    assert props["ssl.truststore.location"] == str(tmp_path / "truststore.p12")
    assert props["ssl.keystore.location"] == str(tmp_path / "client.p12")
    assert props["ssl.truststore.type"] == props["ssl.keystore.type"] == "PKCS12"
    assert props["ssl.keystore.password"] == props["ssl.key.password"] == "st0re"
    unshaded = java_properties(kafka_with(tmp_path), shaded=False)["sasl.jaas.config"]
    assert unshaded.startswith("org.apache.kafka.common.security.scram.ScramLoginModule ")


def test_jaas_values_are_quoted(tmp_path: Path) -> None:
    kafka = kafka_with(tmp_path, sasl_password='a"b\\c', sasl_mechanism="PLAIN")
    jaas = java_properties(kafka)["sasl.jaas.config"]
    assert "PlainLoginModule" in jaas and 'password="a\\"b\\\\c";' in jaas


def test_plaintext_and_ssl_leave_out_what_they_do_not_use(tmp_path: Path) -> None:
    plain = kafka_with(tmp_path, security_protocol="PLAINTEXT")
    assert librdkafka_config(plain) == {"security.protocol": "PLAINTEXT"}
    assert java_properties(plain) == {"security.protocol": "PLAINTEXT"}
    # MSK over TLS without the local stack's files: the system's CAs, no client certificate
    msk = kafka_with(
        tmp_path, security_protocol="SSL", ssl_ca_file=str(tmp_path / "missing.pem"),
        ssl_cert_file="", ssl_keystore_file="", ssl_truststore_file="",
    )  # fmt: skip
    assert librdkafka_config(msk) == {"security.protocol": "SSL"}
    assert java_properties(msk) == {"security.protocol": "SSL"}


def test_sasl_without_a_password_names_the_settings_not_a_value(tmp_path: Path) -> None:
    kafka = kafka_with(tmp_path, sasl_password="", sasl_password_file="/nowhere/kafka.password")
    with pytest.raises(ConfigError, match=r"/nowhere/kafka\.password"):
        librdkafka_config(kafka)
    with pytest.raises(ConfigError, match="sasl"):
        java_properties(kafka)


def test_redacted_and_repr_hide_secrets(tmp_path: Path) -> None:
    kafka = kafka_with(tmp_path)
    shown = str(redacted({**client_config(kafka), **java_properties(kafka)}))
    assert "s3cr3t" not in shown and "st0re" not in shown
    assert "s3cr3t" not in repr(kafka) and "st0re" not in repr(kafka)


def test_secrets_are_read_from_their_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secrets = state / "secrets"
    secrets.mkdir(parents=True)
    for name, value in {
        "kafka.password": "k-pw", "stores.password": "s-pw", "redis.password": "0123",
        "clickhouse.password": "c-pw", "dashboard.token": "d-tok",
    }.items():  # fmt: skip
        (secrets / name).write_text(value + "\n")
    settings = load_settings(environ={"TICKFLOW__STATE_DIR": str(state)})
    assert settings.kafka.sasl_password == "k-pw"
    assert settings.kafka.ssl_store_password == "s-pw"
    assert settings.kafka.ssl_ca_file == str(secrets / "ca.pem")
    assert settings.redis.password == "0123"  # text as written
    assert settings.clickhouse.password == "c-pw"
    assert settings.monitoring.dashboard_token == "d-tok"
    for secret in ("k-pw", "s-pw", "0123", "c-pw", "d-tok"):
        assert secret not in repr(settings)
    # a value set in the environment wins over the file, as typed
    env = {"TICKFLOW__STATE_DIR": str(state), "TICKFLOW__REDIS__PASSWORD": "yes"}
    assert load_settings(environ=env).redis.password == "yes"


def test_missing_secret_files_mean_no_secret(tmp_path: Path) -> None:
    settings = load_settings(environ={"TICKFLOW__STATE_DIR": str(tmp_path / "nothing")})
    assert settings.redis.password == "" and settings.clickhouse.password == ""
    assert settings.kafka.sasl_password == "" and settings.monitoring.dashboard_token == ""


def test_stack_generates_private_secret_files(tmp_path: Path) -> None:
    import shutil

    from stack.secrets import PASSWORD_FILES, ensure_secrets, secret_paths, secrets_dir

    if not shutil.which("openssl") or not shutil.which("keytool"):
        pytest.skip("openssl and keytool are needed")
    base = load_settings(environ={"TICKFLOW__STATE_DIR": str(tmp_path / "state")})
    settings = ensure_secrets(base)
    directory = secrets_dir(settings)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in secret_paths(settings):
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        p.name for p in secret_paths(settings)
    )
    assert settings.kafka.sasl_password == (directory / "kafka.password").read_text().strip()
    passwords = {(directory / name).read_text() for name in PASSWORD_FILES}
    assert len(passwords) == len(PASSWORD_FILES)  # each its own
    # a second run keeps them
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    ensure_secrets(base)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_clients_give_up_on_a_silent_broker_as_configured() -> None:
    """The HA profile's clients drop a broker silent for 2.5 s, ask for leaders every 0.1 s (a
    node cut off the network closes no connection) and retry at most 250 ms apart; both client
    kinds alike."""
    # the profile's timeouts, without its SASL_SSL (whose files only a started stack has)
    profile = load_settings(overlays=[Path("config/ha.yaml")], environ={}).kafka
    ha = dataclasses.replace(profile, security_protocol="PLAINTEXT")
    assert client_config(ha)["socket.timeout.ms"] == 2500
    assert client_config(ha)["topic.metadata.refresh.interval.ms"] == 100
    # librdkafka keeps what it learnt for 3 s, not 3 refresh intervals
    assert client_config(ha)["metadata.max.age.ms"] == 3000
    assert client_config(ha)["retry.backoff.max.ms"] == 250
    assert client_config(ha)["reconnect.backoff.max.ms"] == 250
    assert java_timeouts(ha) == {
        "request.timeout.ms": "2500",
        "metadata.max.age.ms": "100",
        "retry.backoff.max.ms": "250",
        "reconnect.backoff.max.ms": "250",
        # a Java client asks no broker for leaders while it sets a connection up: one to a
        # node cut off the network is given up after 0.5 s, not 10-30 s
        "socket.connection.setup.timeout.ms": "500",
        "socket.connection.setup.timeout.max.ms": "500",
    }
    # by default, the clients' own backoff
    default = load_settings(environ={}).kafka
    assert "retry.backoff.max.ms" not in java_timeouts(default)
    assert "socket.connection.setup.timeout.ms" not in java_timeouts(default)
    assert "retry.backoff.max.ms" not in client_config(default)
    assert client_config(default)["metadata.max.age.ms"] == 3 * default.metadata_max_age_ms
    # an extra option still wins
    assert client_config(ha, **{"socket.timeout.ms": 60000})["socket.timeout.ms"] == 60000


def test_the_nodes_certificate_is_made_again_when_a_node_moves_to_an_address_it_does_not_name(
    tmp_path: Path,
) -> None:
    """Controllers moved to hosts of their own (``kafka.controller_hosts``) are reached at
    addresses the certificate made before did not name, and TLS to them would fail its hostname
    check: the certificates are made again, naming them; the passwords are kept."""
    import shutil

    from stack.secrets import PASSWORD_FILES, certified_hosts, ensure_secrets, secrets_dir

    if not shutil.which("openssl") or not shutil.which("keytool"):
        pytest.skip("openssl and keytool are needed")
    base = load_settings(environ={"TICKFLOW__STATE_DIR": str(tmp_path / "state")})
    directory = secrets_dir(ensure_secrets(base))
    assert certified_hosts(directory) == {"127.0.0.1", "localhost"}
    passwords = {name: (directory / name).read_text() for name in PASSWORD_FILES}
    ca = (directory / "ca.pem").read_bytes()
    moved = dataclasses.replace(
        base,
        kafka=dataclasses.replace(
            base.kafka,
            bootstrap="10.77.0.11:9092,10.77.0.12:9094",
            controller_hosts="10.77.0.21,10.77.0.22",
        ),
    )
    ensure_secrets(moved)
    assert certified_hosts(directory) == {
        "10.77.0.11", "10.77.0.12", "10.77.0.21", "10.77.0.22", "127.0.0.1", "localhost",
    }  # fmt: skip
    assert (directory / "ca.pem").read_bytes() != ca
    assert {name: (directory / name).read_text() for name in PASSWORD_FILES} == passwords
    # unreadable or absent: nothing named, so it is made
    assert certified_hosts(tmp_path) == set()
