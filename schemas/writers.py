"""Writer schemas by registry id: what a reader of framed records resolves each id to.

An id names one schema forever (the registry never reuses or changes one), so each is fetched
once per process and kept. An id the registry does not know is remembered as such: its records
are dead letters, naming the id. A registry that does not answer raises ``RegistryError``: the
caller fails (the job's task restores from its checkpoint and meets the record again) rather
than dropping a record it could read a moment later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import fastavro

from schemas.codec import SCHEMA_DIR, EnvelopeError, parsed_schema
from schemas.registry import SCHEMA_NOT_FOUND, RegistryClient, RegistryError, canonical_text
from tickflow.config import RegistryConfig

log = logging.getLogger(__name__)

# the registry's text of an id, or None when it has no schema of that id
Fetch = Callable[[int], "str | None"]


def registry_writer_schemas(config: RegistryConfig) -> WriterSchemas:
    """Writer schemas fetched from the configured registry when first needed (a schemaless
    topic never asks it)."""
    return WriterSchemas(registry_fetch(config))


def registry_fetch(config: RegistryConfig) -> Fetch:
    """Fetch writer schemas from the configured registry."""
    client = RegistryClient(config)

    def fetch(schema_id: int) -> str | None:
        try:
            return client.schema(schema_id)
        except RegistryError as error:
            if error.code == SCHEMA_NOT_FOUND or error.status == 404:
                return None
            raise

    return fetch


class WriterSchemas:
    """Writer schemas by id, each fetched once."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._texts: dict[int, str | None] = {}
        self._parsed: dict[int, Any] = {}

    def text(self, schema_id: int) -> str | None:
        """The schema's JSON text, None when the registry has no schema of this id."""
        if schema_id not in self._texts:
            self._texts[schema_id] = self._fetch(schema_id)
        return self._texts[schema_id]

    def parsed(self, schema_id: int) -> Any:
        """The parsed schema (for ``codec.decode_envelope``); EnvelopeError when unknown."""
        if schema_id not in self._parsed:
            text = self.text(schema_id)
            if text is None:
                raise EnvelopeError(f"the schema registry has no schema with id {schema_id}")
            own = (SCHEMA_DIR / "raw_envelope.avsc").read_text()
            # this build's own schema: the codec's parsed one, read without resolution
            self._parsed[schema_id] = (
                parsed_schema("raw_envelope")
                if canonical_text(text) == canonical_text(own)
                else fastavro.parse_schema(json.loads(text))
            )
        return self._parsed[schema_id]

    def teach(self, learn: Callable[[int, str | None], str | None], ids: list[int]) -> None:
        """Give the compiled core (``tickflow_native.learn_writer_schema``) these ids' schemas;
        one it cannot read is logged once (its records become dead letters saying why)."""
        for schema_id in ids:
            refused = learn(schema_id, self.text(schema_id))
            if refused:
                log.warning(
                    "raw records framed with schema id %d are dead letters: %s", schema_id, refused
                )
