"""The topics' Avro schemas in the schema registry, and the rules for changing them.

Every topic with a schema has one subject, ``<topic>-value`` (Confluent's TopicNameStrategy):
the raw envelope (``schemas/raw_envelope.avsc``) and the job's result topics
(``schemas/results/<table>.avsc``). Each subject carries ``registry.compatibility``
(FULL_TRANSITIVE; docs/schemas.md says why) and is registered with it, so the registry refuses
a version that breaks it. The same rules are checked without a registry (``check_against_git``,
Apache Avro's own reader/writer compatibility checker) against every committed version of each
file: the unit tests run that check, so CI refuses an incompatible change with no server.

The registry is Apicurio Registry's Confluent-compatible API (``/apis/ccompat/v7``); any
Confluent-compatible registry answers the same requests.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import Schema, parse

from tickflow.config import RegistryConfig, Settings

SCHEMA_DIR = Path(__file__).resolve().parent
CCOMPAT = "/apis/ccompat/v7"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# Confluent's error codes the client tells apart
SUBJECT_NOT_FOUND = 40401
SCHEMA_NOT_FOUND = 40403


class RegistryError(RuntimeError):
    """The registry refused a request or could not be reached; the message is the registry's."""

    def __init__(self, message: str, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class IncompatibleSchema(RegistryError):
    """A schema version the subject's compatibility rule refuses."""


def schema_files(settings: Settings) -> dict[str, Path]:
    """Subject -> the committed ``.avsc`` file of its value schema."""
    kafka = settings.kafka
    files = {f"{kafka.raw_topic}-value": SCHEMA_DIR / "raw_envelope.avsc"}
    for table, topic in kafka.result_topics().items():
        files[f"{topic}-value"] = SCHEMA_DIR / "results" / f"{table}.avsc"
    return files


def canonical_text(text: str) -> str:
    """The schema as one line of JSON (field order kept): whitespace-only edits of a file
    register as the same schema, with the same id."""
    return json.dumps(json.loads(text), separators=(",", ":"))


class RegistryClient:
    """The few requests of the Confluent-compatible API that tickflow makes (stdlib HTTP:
    nothing to install for it)."""

    def __init__(self, config: RegistryConfig, url: str | None = None) -> None:
        self.config = config
        self.base = (url or config.url).rstrip("/") + CCOMPAT

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": CONTENT_TYPE}
        if self.config.password:
            token = f"{self.config.username}:{self.config.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = CONTENT_TYPE
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise _http_error(method, path, error) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RegistryError(f"schema registry {self.base}: {reason}") from None
        return json.loads(text) if text else None

    def subjects(self) -> list[str]:
        return list(self._request("GET", "/subjects"))

    def versions(self, subject: str) -> list[int]:
        """The subject's versions ([] when it has none)."""
        try:
            return list(self._request("GET", f"/subjects/{_quote(subject)}/versions"))
        except RegistryError as error:
            if error.code == SUBJECT_NOT_FOUND or error.status == 404:
                return []
            raise

    def register(self, subject: str, schema: str) -> int:
        """The schema's id, registered as the subject's next version unless it is one already
        (then the same id: registering is idempotent). A version the subject's rule refuses
        raises IncompatibleSchema."""
        body = {"schemaType": "AVRO", "schema": canonical_text(schema)}
        try:
            answer = self._request("POST", f"/subjects/{_quote(subject)}/versions", body)
        except RegistryError as error:
            if error.status == 409:
                raise IncompatibleSchema(
                    f"{subject}: the registry refused the schema ({error})", 409, error.code
                ) from None
            raise
        return int(answer["id"])

    def lookup(self, subject: str, schema: str) -> tuple[int, int] | None:
        """(id, version) of the schema under the subject, or None when it is not one of its
        versions."""
        body = {"schemaType": "AVRO", "schema": canonical_text(schema)}
        try:
            answer = self._request("POST", f"/subjects/{_quote(subject)}", body)
        except RegistryError as error:
            if error.status == 404:
                return None
            raise
        return int(answer["id"]), int(answer["version"])

    def schema(self, schema_id: int) -> str:
        """The writer schema with this id (what a reader resolves a record's id to)."""
        return str(self._request("GET", f"/schemas/ids/{schema_id}")["schema"])

    def latest(self, subject: str) -> tuple[int, str]:
        """(id, schema) of the subject's newest version."""
        answer = self._request("GET", f"/subjects/{_quote(subject)}/versions/latest")
        return int(answer["id"]), str(answer["schema"])

    def compatibility(self, subject: str) -> str:
        answer = self._request("GET", f"/config/{_quote(subject)}")
        return str(answer.get("compatibilityLevel") or answer.get("compatibility"))

    def set_compatibility(self, subject: str, level: str) -> None:
        self._request("PUT", f"/config/{_quote(subject)}", {"compatibility": level})

    def check(self, subject: str, schema: str) -> list[str]:
        """Why the subject's rule would refuse the schema as its next version ([]: it would
        take it; a subject with no versions takes anything)."""
        if not self.versions(subject):
            return []
        body = {"schemaType": "AVRO", "schema": canonical_text(schema)}
        path = f"/compatibility/subjects/{_quote(subject)}/versions/latest?verbose=true"
        answer = self._request("POST", path, body)
        if answer.get("is_compatible"):
            return []
        return [str(m) for m in answer.get("messages") or []] or [
            f"incompatible with {subject}'s versions under {self.compatibility(subject)}"
        ]

    def delete_subject(self, subject: str) -> None:
        """Soft then hard delete (tests and test slices only: a deployment's subjects are never
        deleted)."""
        for suffix in ("", "?permanent=true"):
            try:
                self._request("DELETE", f"/subjects/{_quote(subject)}{suffix}")
            except RegistryError as error:
                if error.status != 404:
                    raise


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _http_error(method: str, path: str, error: urllib.error.HTTPError) -> RegistryError:
    text = error.read().decode(errors="replace")
    try:
        body = json.loads(text)
        message, code = str(body.get("message", text)), int(body.get("error_code", 0))
    except (ValueError, AttributeError):
        message, code = text[:500], 0
    return RegistryError(f"{method} {path}: HTTP {error.code}: {message}", error.code, code)


@dataclass(frozen=True)
class Registered:
    subject: str
    schema_id: int
    version: int
    new: bool  # this call added the version


def register_all(
    client: RegistryClient, settings: Settings, files: dict[str, Path] | None = None
) -> list[Registered]:
    """Every subject's compatibility rule, then its committed schema as its newest version
    (an unchanged schema keeps its id and version). A schema the rule refuses raises
    IncompatibleSchema and the subjects after it are left as they were."""
    out = []
    for subject, path in (files or schema_files(settings)).items():
        text = path.read_text()
        client.set_compatibility(subject, settings.registry.compatibility)
        before = client.lookup(subject, text)
        schema_id = client.register(subject, text)
        found = client.lookup(subject, text)
        version = found[1] if found else 0
        out.append(Registered(subject, schema_id, version, before is None))
    return out


def register_namespace(settings: Settings) -> list[str]:
    """The subjects of the topics written with a schema id registered (with their rule): the
    raw envelope's when the connectors frame it (``kafka.raw_framing: confluent``), the result
    topics' when the job writes Avro (``kafka.result_format: avro``). What a namespace of its
    own (a test slice, a benchmark's topics) needs before its writers start; the subjects."""
    files = {
        subject: path
        for subject, path in schema_files(settings).items()
        if (
            settings.kafka.raw_framing == "confluent"
            if subject == f"{settings.kafka.raw_topic}-value"
            else settings.kafka.result_format == "avro"
        )
    }
    if files:
        register_all(RegistryClient(settings.registry), settings, files)
    return list(files)


def result_writer_schemas(settings: Settings) -> list[tuple[str, int, str]]:
    """``(output, registry id, schema JSON)`` of each result topic the job writes as framed
    Avro (``kafka.result_format: avro``; none for "json"). The job looks them up when it is
    built and refuses to start when a subject does not hold its committed schema: writers
    never register (``tickflow schemas register``, ``stack up`` do)."""
    if settings.kafka.result_format != "avro":
        return []
    client = RegistryClient(settings.registry)
    out = []
    for table, topic in settings.kafka.result_topics().items():
        path = SCHEMA_DIR / "results" / f"{table}.avsc"
        schema_id, _ = registered_id(client, f"{topic}-value", path)
        out.append((table, schema_id, canonical_text(path.read_text())))
    return out


class SchemaNotRegistered(RegistryError):
    """A writer's committed schema is not a version of its subject."""


def registered_id(client: RegistryClient, subject: str, path: Path) -> tuple[int, int]:
    """(id, version) of the committed schema ``path`` under ``subject``, for a writer that
    frames its records with it; SchemaNotRegistered when the subject does not hold it
    (writers never register: ``tickflow schemas register`` and ``stack up`` do)."""
    found = client.lookup(subject, path.read_text())
    if found is None:
        raise SchemaNotRegistered(
            f"{subject}: the committed schema {path.relative_to(SCHEMA_DIR)} is not registered;"
            " register it first (`tickflow schemas register`)"
        )
    return found


def check_against_registry(
    client: RegistryClient, settings: Settings, files: dict[str, Path] | None = None
) -> dict[str, list[str]]:
    """Subject -> why the registry would refuse its committed schema ([]: it would not)."""
    return {
        subject: client.check(subject, path.read_text())
        for subject, path in (files or schema_files(settings)).items()
    }


# --- offline: the same rules, checked with Apache Avro's compatibility checker -------------


def _parse(text: str) -> Schema:
    return parse(text)


def incompatibilities(reader: str, writer: str) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` ([]: it can)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(_parse(reader), _parse(writer))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    messages = sorted(result.messages) or ["incompatible"]
    where = [_named(json.loads(reader), p) for p in sorted(result.locations) if p != "/"]
    return [f"{m} (at {', '.join(where)})" if where else m for m in messages]


def _named(schema: Any, location: str) -> str:
    """A checker location (``/fields/6/type``) with the fields' names (``/fields/6
    (connection_seq)/type``), found in the reader schema's JSON."""
    node, out = schema, []
    for part in location.strip("/").split("/"):
        out.append(part)
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            node = None
        if isinstance(node, dict) and "name" in node and out[-2:-1] == ["fields"]:
            out[-1] = f"{part} ({node['name']})"
    return "/" + "/".join(out)


_why = incompatibilities


def rule_violations(new: str, earlier: Sequence[str], level: str) -> list[str]:
    """Why ``level`` refuses ``new`` as the version after ``earlier`` (oldest first): BACKWARD
    (the new schema reads data of the earlier ones), FORWARD (the earlier read the new one's),
    FULL (both); non-transitive levels compare with the newest earlier version only."""
    if level == "NONE" or not earlier:
        return []
    against = list(earlier) if level.endswith("_TRANSITIVE") else [earlier[-1]]
    kind = level.removesuffix("_TRANSITIVE")
    problems = []
    for index, old in enumerate(against):
        which = f"version {len(earlier) - len(against) + index + 1} of {len(earlier)}"
        if kind in ("BACKWARD", "FULL"):
            problems += [f"the new schema cannot read {which}: {p}" for p in _why(new, old)]
        if kind in ("FORWARD", "FULL"):
            problems += [f"{which} cannot read the new one: {p}" for p in _why(old, new)]
    return problems


def git_versions(path: Path, ref: str, root: Path) -> list[str]:
    """The distinct contents of ``path`` in the history of ``ref``, oldest first ([] when it
    was never committed, or git or the history is not there: a source tarball)."""
    relative = path.resolve().relative_to(root.resolve()).as_posix()
    listed = subprocess.run(
        ["git", "log", "--format=%H", "--reverse", ref, "--", relative],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        return []
    versions: list[str] = []
    for commit in listed.stdout.split():
        shown = subprocess.run(
            ["git", "show", f"{commit}:{relative}"],
            cwd=root, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if shown.returncode != 0:
            continue  # the commit deleted the file
        text = canonical_text(shown.stdout)
        if not versions or versions[-1] != text:
            versions.append(text)
    return versions


def check_against_git(
    settings: Settings, ref: str = "HEAD", files: dict[str, Path] | None = None
) -> dict[str, list[str]]:
    """Subject -> why ``registry.compatibility`` refuses its schema file as it is now, checked
    against the file's versions committed in ``ref``'s history (no registry needed)."""
    out = {}
    for subject, path in (files or schema_files(settings)).items():
        current = canonical_text(path.read_text())
        earlier = [v for v in git_versions(path, ref, settings.root) if v != current]
        out[subject] = rule_violations(current, earlier, settings.registry.compatibility)
    return out


def refusals(results: dict[str, list[str]]) -> Iterable[str]:
    for subject, problems in results.items():
        for problem in problems:
            yield f"{subject}: {problem}"
