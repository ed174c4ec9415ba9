"""Runtime properties of AWS Managed Service for Apache Flink -> tickflow settings.

The service writes the application's property groups to ``/etc/flink/application_properties.json``
(a JSON list of ``{"PropertyGroupId": ..., "PropertyMap": {...}}``); elsewhere (a local run of
the zip) the ``application_properties.json`` packed next to the entry script is read instead.
Two groups matter:

``tickflow``
    dotted setting -> value, e.g. ``kafka.bootstrap`` -> ``b-1.msk...:9094``; each becomes the
    ``TICKFLOW__KAFKA__BOOTSTRAP`` override that ``tickflow.config.load_settings`` reads, so the
    one configuration (config/tickflow.yaml) stays the base.
``tickflow.secrets``
    dotted setting -> Secrets Manager secret ARN, e.g. ``clickhouse.password`` -> ``arn:...``;
    resolved at startup with the application role (never stored in the zip or the properties).
    A secret is a plain string, or JSON with a ``password`` key (what RDS-style rotation writes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tickflow.config import ENV_PREFIX, ConfigError

APPLICATION_PROPERTIES = Path("/etc/flink/application_properties.json")
SETTINGS_GROUP = "tickflow"
SECRETS_GROUP = "tickflow.secrets"
# what the zip's runtime always has: the connector comes from the application's jarfile
FIXED_OVERRIDES = {f"{ENV_PREFIX}FLINK__JOB_JARS": ""}
SETTING_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

PropertyGroups = dict[str, dict[str, str]]


def read_property_groups(path: Path, fallback: Path) -> PropertyGroups:
    """Property groups from ``path`` if it exists, else from ``fallback``: group id -> map."""
    source = path if path.exists() else fallback
    try:
        groups: Any = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read runtime properties {source}: {exc}") from None
    if not isinstance(groups, list):
        raise ConfigError(f"{source}: expected a list of property groups")
    return {
        str(group["PropertyGroupId"]): {str(k): str(v) for k, v in group["PropertyMap"].items()}
        for group in groups
    }


def env_name(setting: str) -> str:
    """``kafka.bootstrap`` -> ``TICKFLOW__KAFKA__BOOTSTRAP``."""
    if not SETTING_KEY.match(setting):
        raise ConfigError(
            f"runtime property {setting!r}: expected a dotted setting such as kafka.bootstrap"
        )
    return ENV_PREFIX + "__".join(part.upper() for part in setting.split("."))


def secret_text(secret_string: str) -> str:
    """The value of a secret: the string itself, or the ``password`` of a JSON secret."""
    try:
        value = json.loads(secret_string)
    except ValueError:
        return secret_string
    if isinstance(value, dict) and "password" in value:
        return str(value["password"])
    return secret_string


def secrets_manager_reader(region: str | None = None) -> Callable[[str], str]:
    """Reads a secret's SecretString by ARN with the application's role (boto3)."""
    import boto3  # vendored into the zip; only needed when secrets are configured

    client = boto3.client("secretsmanager", region_name=region)

    def read(arn: str) -> str:
        return str(client.get_secret_value(SecretId=arn)["SecretString"])

    return read


def settings_environ(
    groups: Mapping[str, Mapping[str, str]], read_secret: Callable[[str], str] | None = None
) -> dict[str, str]:
    """The ``TICKFLOW__*`` overrides the property groups stand for (secrets resolved)."""
    environ = dict(FIXED_OVERRIDES)
    for setting, value in groups.get(SETTINGS_GROUP, {}).items():
        environ[env_name(setting)] = value
    secrets = groups.get(SECRETS_GROUP, {})
    if secrets:
        read = read_secret or secrets_manager_reader(_region_of(next(iter(secrets.values()))))
        for setting, arn in secrets.items():
            environ[env_name(setting)] = secret_text(read(arn))
    return environ


def _region_of(arn: str) -> str | None:
    """arn:aws:secretsmanager:<region>:<account>:secret:<name>"""
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None
