"""Environment overrides of the configuration keep what was typed (issue 16): a text setting
is never parsed as YAML, and an error never quotes the value (it may be a secret)."""

from __future__ import annotations

import pytest

from tickflow.config import ConfigError, load_settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("typed", ["0123", "yes", "[abc", "null", "1e3", "~", "'quoted'", " x "])
def test_a_text_setting_stays_as_typed(typed: str) -> None:
    settings = load_settings(environ={"TICKFLOW__CLICKHOUSE__PASSWORD": typed})
    assert settings.clickhouse.password == typed


def test_numbers_flags_and_lists_are_converted_by_the_settings_type() -> None:
    settings = load_settings(
        environ={
            "TICKFLOW__REDIS__PORT": "6390",
            "TICKFLOW__REDIS__TLS": "true",
            "TICKFLOW__ANALYTICS__BAR_INTERVALS_MS": "[1000, 5000]",
            "TICKFLOW__BOOK__MAX_EVENT_AHEAD_MS": "60000",
        }
    )
    assert settings.redis.port == 6390
    assert settings.redis.tls is True
    assert settings.analytics.bar_intervals_ms == (1000, 5000)
    assert settings.book.max_event_ahead_ms == 60000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TICKFLOW__REDIS__PORT", "s3cr3t-port"),
        ("TICKFLOW__REDIS__TLS", "s3cr3t-flag"),
        ("TICKFLOW__ANALYTICS__BAR_INTERVALS_MS", "[s3cr3t"),
    ],
)
def test_a_value_that_does_not_fit_fails_without_quoting_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={name: value})
    assert "s3cr3t" not in str(error.value)


def test_raw_framing_is_one_of_two_and_the_local_stack_frames() -> None:
    assert load_settings(environ={"TICKFLOW_CONFIG": "config/tickflow.yaml"}).kafka.raw_framing == (
        "schemaless"
    )
    framed = load_settings(environ={"TICKFLOW_CONFIG": "config/simulator.yaml"})
    assert framed.kafka.raw_framing == "confluent"
    with pytest.raises(ConfigError, match=r"kafka\.raw_framing must be one of"):
        load_settings(environ={"TICKFLOW__KAFKA__RAW_FRAMING": "avro"})


def test_result_format_is_json_or_avro() -> None:
    assert load_settings().kafka.result_format == "json"
    assert load_settings(
        environ={"TICKFLOW__KAFKA__RESULT_FORMAT": "avro"}
    ).kafka.result_format == ("avro")
    with pytest.raises(ConfigError, match=r"kafka\.result_format must be one of"):
        load_settings(environ={"TICKFLOW__KAFKA__RESULT_FORMAT": "protobuf"})
