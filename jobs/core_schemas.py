"""The writer schemas the compiled core reads framed raw records with (docs/schemas.md).

The core keeps a plan per registry id; a bundle or batch naming an id it has not learned is
refused whole (``UnknownWriterSchemas``) before any of it is applied. ``learning`` then fetches
those ids from the registry, teaches the core and makes the call again: every reader of the raw
topic (the live job, the backfill, the backtest, ``book_at``) goes through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from schemas.writers import WriterSchemas

T = TypeVar("T")


def learning(writers: WriterSchemas, call: Callable[[], T]) -> T:
    """``call()`` (a core call fed raw records), after teaching the core the writer schemas of
    ids it had not learned."""
    import tickflow_native

    try:
        return call()
    except tickflow_native.UnknownWriterSchemas as unknown:
        writers.teach(tickflow_native.learn_writer_schema, [int(i) for i in unknown.args[0]])
        return call()
