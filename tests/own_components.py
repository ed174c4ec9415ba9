"""Components of a test's own, beside the stack's: their own ports and state directory, set by
environment overrides, started for the test and stopped afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from stack import manager
from tickflow.config import Settings, load_settings, patched_environ


@contextlib.contextmanager
def own_components(environ: Mapping[str, str], names: Sequence[str]) -> Iterator[Settings]:
    """Starts the components ``names`` as ``environ`` configures them and yields the settings,
    reloaded after ``up`` (with the credentials it generated), while ``environ`` applies;
    stops them afterwards."""
    with patched_environ(environ):
        settings = load_settings()
        manager.up(settings, list(names))
        try:
            yield load_settings()
        finally:
            manager.down(settings, list(names))
