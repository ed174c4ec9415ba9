"""How every Kafka client connects: the one place that turns ``kafka.*`` settings into client
configuration.

- ``librdkafka_config(kafka)``: the security part of a confluent-kafka ``Producer`` /
  ``Consumer`` / ``AdminClient`` configuration (connectors, CLI, backfill, topic admin,
  benches, tests); ``client_config(kafka, **extra)`` adds ``bootstrap.servers``, the timeouts
  (``librdkafka_timeouts``) and ``extra``.
- ``java_properties(kafka)``: the same as Java client properties (the Flink job's
  ``KafkaSource`` / ``KafkaSink``): ``sasl.jaas.config`` with the SCRAM (or PLAIN) login
  module, PKCS12 key and trust stores; ``java_timeouts(kafka)``, the timeouts;
  ``java_client_properties(kafka)``, both.

A file setting whose file does not exist is left out (see ``config/tickflow.yaml``); SASL
without a password is an error that names the settings, never a value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tickflow.config import ConfigError, KafkaConfig

# the Flink Kafka connector (flink-sql-connector-kafka) shades the Kafka clients
FLINK_SHADED_PREFIX = "org.apache.flink.kafka.shaded."
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _existing(path: str) -> str:
    return path if path and Path(path).is_file() else ""


def _sasl_credentials(kafka: KafkaConfig) -> tuple[str, str]:
    if not kafka.sasl_username or not kafka.sasl_password:
        where = kafka.sasl_password_file or "kafka.sasl_password"
        raise ConfigError(
            f"kafka.security_protocol {kafka.security_protocol} needs kafka.sasl_username and "
            f"a password (kafka.sasl_password, or the file {where}, which the local stack "
            "writes on `tickflow stack up`)"
        )
    return kafka.sasl_username, kafka.sasl_password


def librdkafka_config(kafka: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings for ``kafka.security_protocol`` (no bootstrap, no client options)."""
    conf: dict[str, Any] = {"security.protocol": kafka.security_protocol}
    if kafka.uses_sasl:
        username, password = _sasl_credentials(kafka)
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = username
        conf["sasl.password"] = password
    if kafka.uses_tls:
        if ca := _existing(kafka.ssl_ca_file):
            conf["ssl.ca.location"] = ca
        cert, key = _existing(kafka.ssl_cert_file), _existing(kafka.ssl_key_file)
        if cert and key:
            conf["ssl.certificate.location"] = cert
            conf["ssl.key.location"] = key
    return conf


METADATA_CACHE_MIN_MS = 3000


def librdkafka_timeouts(kafka: KafkaConfig) -> dict[str, Any]:
    """How long librdkafka waits on a silent broker, how often it asks for leaders, and at most
    between retries (``kafka.request_timeout_ms``, ``metadata_max_age_ms``,
    ``retry_backoff_max_ms``)."""
    conf: dict[str, Any] = {
        "socket.timeout.ms": kafka.request_timeout_ms,
        "topic.metadata.refresh.interval.ms": kafka.metadata_max_age_ms,
        # how long a topic's metadata stays known without an answer (librdkafka: 3 refresh
        # intervals); at least 3 s: a broker taking over a lost node's partitions answered
        # 0.4 s late, and a topic forgotten meanwhile has its queued messages partitioned anew
        "metadata.max.age.ms": max(3 * kafka.metadata_max_age_ms, METADATA_CACHE_MIN_MS),
    }
    if kafka.retry_backoff_max_ms:
        conf["retry.backoff.max.ms"] = kafka.retry_backoff_max_ms
        conf["reconnect.backoff.max.ms"] = kafka.retry_backoff_max_ms
    return conf


def java_timeouts(kafka: KafkaConfig) -> dict[str, str]:
    """The same for the Java clients."""
    props = {
        "request.timeout.ms": str(kafka.request_timeout_ms),
        "metadata.max.age.ms": str(kafka.metadata_max_age_ms),
    }
    if kafka.retry_backoff_max_ms:
        props["retry.backoff.max.ms"] = str(kafka.retry_backoff_max_ms)
        props["reconnect.backoff.max.ms"] = str(kafka.retry_backoff_max_ms)
    if kafka.connect_timeout_ms:
        # a Java client asks no broker for metadata while a connection is being set up: one
        # to a host off the network held its new leaders back for the whole timeout (10 s)
        props["socket.connection.setup.timeout.ms"] = str(kafka.connect_timeout_ms)
        props["socket.connection.setup.timeout.max.ms"] = str(kafka.connect_timeout_ms)
    return props


def client_config(kafka: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """A whole confluent-kafka configuration: bootstrap, security, timeouts, then ``extra``
    (dotted librdkafka names as a mapping: ``client_config(k, **{"group.id": "g"})``)."""
    return {
        "bootstrap.servers": kafka.bootstrap,
        **librdkafka_config(kafka),
        **librdkafka_timeouts(kafka),
        **extra,
    }


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_properties(kafka: KafkaConfig, shaded: bool = True) -> dict[str, str]:
    """Java Kafka client properties for ``kafka.security_protocol`` (no bootstrap).

    ``shaded``: the login module's class as the Flink Kafka connector relocates it.
    """
    props = {"security.protocol": kafka.security_protocol}
    if kafka.uses_sasl:
        username, password = _sasl_credentials(kafka)
        module = (FLINK_SHADED_PREFIX if shaded else "") + _LOGIN_MODULES[kafka.sasl_mechanism]
        props["sasl.mechanism"] = kafka.sasl_mechanism
        props["sasl.jaas.config"] = (
            f"{module} required username={_jaas_quote(username)} "
            f"password={_jaas_quote(password)};"
        )
    if kafka.uses_tls:
        store_password = kafka.ssl_store_password
        if truststore := _existing(kafka.ssl_truststore_file):
            props["ssl.truststore.location"] = truststore
            props["ssl.truststore.type"] = "PKCS12"
            if store_password:
                props["ssl.truststore.password"] = store_password
        if keystore := _existing(kafka.ssl_keystore_file):
            props["ssl.keystore.location"] = keystore
            props["ssl.keystore.type"] = "PKCS12"
            if store_password:
                props["ssl.keystore.password"] = store_password
                props["ssl.key.password"] = store_password
    return props


def java_client_properties(kafka: KafkaConfig) -> dict[str, str]:
    """Every Java client's properties but ``bootstrap.servers``: security, then timeouts (the
    job's Kafka source and sinks, and the warm-up's clients that stand in for them)."""
    return {**java_properties(kafka), **java_timeouts(kafka)}


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """A client configuration fit to print: passwords and JAAS text replaced."""
    return {
        key: "[redacted]" if "password" in key or key.endswith("jaas.config") else value
        for key, value in conf.items()
    }
