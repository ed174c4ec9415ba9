"""Logging for every tickflow process: one call, ``setup_logging``, configures the root logger.

``json``: one JSON object per line on stderr::

    {"ts": "2026-03-01T12:00:00.123Z", "level": "WARNING", "logger": "connectors.base",
     "msg": "binance: no data for 30.0s on connection 5f2c...: reconnecting",
     "exchange": "binance", "connection_id": "5f2c..."}

with ``exc`` (the formatted traceback) when there is one. Fields come from, later winning:
the ``static_fields`` given to ``setup_logging`` (a process's exchange, a job's id), the fields
bound with ``bind_log_fields`` (context variables: per asyncio task, so connectors that share a
process keep theirs apart) and a call's own ``extra={...}``. ``text``: the same message in a
readable line, ``2026-03-01T12:00:00.123Z WARNING connectors.base: binance: no data ...``.

The level is ``monitoring.log_level`` (``config/tickflow.yaml``), the format
``monitoring.log_format``; environment: ``TICKFLOW__MONITORING__LOG_LEVEL``,
``TICKFLOW__MONITORING__LOG_FORMAT``. Inside a Flink job (no Settings at hand)::

    setup_logging("INFO", "json", job_id=job_id)
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from tickflow.config import MonitoringConfig, Settings

LOG_FORMATS = ("json", "text")
# fields a JSON line carries when known, in this order, after ts/level/logger/msg
FIELDS = ("exchange", "symbol", "connection_id", "job_id")
# libraries whose INFO records are connection chatter (kafka-python logs every broker
# connection): they log from WARNING up unless the level is DEBUG
CHATTY_LIBRARIES = ("kafka",)

# the attributes every LogRecord has: anything else on a record came in through ``extra``
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}
_bound: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "tickflow_log_fields", default=None
)


def bind_log_fields(**fields: Any) -> contextvars.Token[Mapping[str, Any] | None]:
    """Add fields to every record logged from this context (this asyncio task and the tasks
    it creates from now on); ``unbind_log_fields(token)`` undoes it."""
    return _bound.set({**bound_log_fields(), **fields})


def unbind_log_fields(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    _bound.reset(token)


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """``bind_log_fields`` for the duration of a ``with`` block."""
    token = bind_log_fields(**fields)
    try:
        yield
    finally:
        _bound.reset(token)


def bound_log_fields() -> Mapping[str, Any]:
    """The fields bound in the current context."""
    return _bound.get() or {}


def _utc_iso(created: float) -> str:
    """2026-03-01T12:00:00.123Z"""
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class _FieldsFilter(logging.Filter):
    """Puts the process's static fields and the context's bound fields on each record (what a
    call passes in ``extra`` wins)."""

    def __init__(self, static_fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.static_fields = dict(static_fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for fields in (bound_log_fields(), self.static_fields):
            for key, value in fields.items():
                if value is not None and key not in record.__dict__:
                    record.__dict__[key] = value
        return True


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's extra fields: ``FIELDS`` first, then any other ``extra`` key; a field
    given as None is left out (``extra={"connection_id": None}`` hides a bound one)."""
    extra = {
        k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and v is not None
    }
    ordered = {k: extra.pop(k) for k in FIELDS if k in extra}
    ordered.update(extra)
    return ordered


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``<ts UTC> <LEVEL> <logger>: <message>`` (and the traceback below, if any)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_iso(record.created)


def _level(value: str | int) -> int:
    if isinstance(value, int):
        return value
    level = logging.getLevelName(value.strip().upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return level


def setup_logging(
    settings_or_level: Settings | MonitoringConfig | str | int,
    fmt: str | None = None,
    *,
    stream: TextIO | None = None,
    **static_fields: Any,
) -> logging.Handler:
    """Configure the root logger: level and format from ``settings.monitoring`` (or a level
    and ``fmt``, default ``text``), a handler on ``stream`` (stderr) and ``static_fields``
    (e.g. ``exchange="binance"``, ``job_id=...``) on every record. Calling it again replaces
    the handler it installed before (handlers installed by others, such as pytest's, stay).
    Returns the handler."""
    if isinstance(settings_or_level, str | int):
        level, default_fmt = _level(settings_or_level), "text"
    else:
        monitoring = (
            settings_or_level.monitoring
            if isinstance(settings_or_level, Settings)
            else settings_or_level
        )
        level, default_fmt = _level(monitoring.log_level), monitoring.log_format
    fmt = fmt or default_fmt
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_FieldsFilter(static_fields))
    handler._tickflow = True  # type: ignore[attr-defined]  # marks the handler as ours
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_tickflow", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in CHATTY_LIBRARIES:
        quieter = level if level <= logging.DEBUG else max(level, logging.WARNING)
        logging.getLogger(name).setLevel(quieter)
    logging.captureWarnings(True)
    return handler
