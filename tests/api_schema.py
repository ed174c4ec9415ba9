"""Requests generated from the query API's OpenAPI spec (schemathesis) for the unit test (readers
stood in for) and the integration test (the real ClickHouse and Redis): no 5xx, every status
and body one the spec documents."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

# deterministic and bounded: the same requests each run, a few dozen per endpoint
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def schema_of(app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def check(case: Any, key: str) -> None:
    """One generated request with the key, every check of schemathesis on its response; the
    SSE stream is asked for one event at most (it never ends otherwise)."""
    if case.path == "/v1/live/stream":
        case.query = {**(case.query or {}), "events": 1}
    # every check but positive_data_acceptance, which takes any 400 to a schema-valid request
    # for a fault: an unknown instrument or an empty range is schema-valid and rightly a 400
    # (a documented status, which status_code_conformance checks)
    case.call_and_validate(
        headers={"Authorization": f"Bearer {key}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


def _run_one(strategy: Any, name: str, counts: dict[str, int], key: str) -> None:
    @SETTINGS
    @given(case=strategy)
    def one(case: Any) -> None:
        counts[name] += 1
        check(case, key)

    one()


def run_all(app: FastAPI, key: str) -> dict[str, int]:
    """Every operation of the spec, valid and invalid requests (schemathesis' pytest plugin
    does not run on this pytest, so hypothesis drives its strategies directly); the number of
    requests per operation and mode."""
    schema = schema_of(app)
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            name = f"{operation.method.upper()} {operation.path} {mode.value}"
            counts[name] = 0

            try:
                _run_one(operation.as_strategy(generation_mode=mode), name, counts, key)
            except Unsatisfiable:
                # no invalid request exists (an operation without parameters)
                assert mode is GenerationMode.NEGATIVE and counts[name] == 0, name
    return counts
