"""Session fixture for the tests that need servers: the local stack (Kafka, Redis, ClickHouse,
Flink).

Uses a stack that already answers (or trust ``TICKFLOW_STACK_RUNNING=1``); otherwise runs
``tickflow stack up`` and, at the end of the session, stops only what it started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from stack import manager
from tickflow import demo
from tickflow.config import Settings, load_settings

SIMULATOR_OVERLAY = "config/simulator.yaml"


def _with_simulator_overlay(value: str) -> str:
    overlays = [p for p in value.split(":") if p]
    return ":".join(overlays if SIMULATOR_OVERLAY in overlays else [SIMULATOR_OVERLAY, *overlays])


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    # subprocesses (tickflow CLIs, the PyFlink client) must read the same configuration
    patch = pytest.MonkeyPatch()
    patch.setenv("TICKFLOW_CONFIG", _with_simulator_overlay(os.environ.get("TICKFLOW_CONFIG", "")))
    settings = load_settings()
    if demo.running(settings):
        # the demo's job and connectors would compete with (and be disturbed by) the tests
        demo.main(["yield"])
    started: list[str] = []
    try:
        if os.environ.get("TICKFLOW_STACK_RUNNING") != "1" and not manager.stack_answers(settings):
            ours_before = {c.name for c in manager.components(settings) if c.pids()}
            try:
                # a component that was running but did not answer (e.g. a TaskManager being
                # restarted) and got restarted is not ours to stop at the end
                started = [n for n in manager.up(settings) if n not in ours_before]
            except Exception:
                # leave nothing half-started behind by this session
                ours_now = {c.name for c in manager.components(settings) if c.pids()}
                manager.down(settings, sorted(ours_now - ours_before))
                raise
        # with the credentials `up` generated on a first start
        yield load_settings()
    finally:
        if started:
            manager.down(settings, started)
        patch.undo()
