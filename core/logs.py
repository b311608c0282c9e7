"""Logging for every process, set up in one place: JSON lines in production, text in development.

A line's structured fields are the ``extra`` of its call (``task_fields`` for a line about a task) and
whatever is bound to the context it runs in (``bound``: the web binds each request's id). In JSON they
are keys of the line's object; in text they follow the message as ``[key=value ...]``, so that a message
reads the same in both. docs/operations.md ("Logs") lists the fields; docs/decisions.md §22 says why.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from core.settings import Settings

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"
# Renamed from the LogRecord's attribute names to what log stores call them.
JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger"}

# Attributes every LogRecord has (and what formatting adds): anything else on a record is a field.
_STANDARD = frozenset(RESERVED_ATTRS) | {"message", "asctime"}
# The SDK's workflow and activity loggers add their context to the message text as well: in text mode
# it would show twice. (JSON keeps it, as an object.)
_SHOWN_IN_MESSAGE = frozenset({"temporal_workflow", "temporal_activity"})

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("tickler_log_context", default=_EMPTY)


def log_format(settings: Settings) -> LogFormat:
    """TICKLER_LOG_FORMAT, or by default JSON everywhere but in development."""
    if settings.log_format is not None:
        return settings.log_format
    return "text" if settings.env == "dev" else "json"


def task_fields(task_id: uuid.UUID | str, workflow_id: str, organization_id: str) -> dict[str, str]:
    """The fields of every line about a task; never its title or notes (user data, decisions §22)."""
    return {"task_id": str(task_id), "workflow_id": workflow_id, "organization_id": organization_id}


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every line logged in this context: this task and the tasks it starts."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


class ContextFields(logging.Filter):
    """Puts the fields bound to the context on each record that passes; a call's own ``extra`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's fields: what its call and its context added to the standard attributes."""
    return {
        name: value
        for name, value in record.__dict__.items()
        if name not in _STANDARD and name not in _SHOWN_IN_MESSAGE and not name.startswith("_")
    }


def _text_value(value: object) -> str:
    text = str(value)
    # Quoted when it would not read as one token (a space, a quote, an "=" or a line break in it).
    if not text or any(c.isspace() or c in "\"'=[]" for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """The development format, its message unchanged (tests and chaos/ look for its words), then the
    line's fields as ``[key=value ...]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = extra_fields(record)
        if not fields:
            return line
        return f"{line} [{' '.join(f'{name}={_text_value(value)}' for name, value in fields.items())}]"


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, then the fields; a
    traceback or a stack is a string in the same object (``exc_info``, ``stack_info``)."""

    def __init__(self) -> None:
        super().__init__(
            " ".join(f"%({name})s" for name in JSON_FIELDS) + " %(message)s",
            rename_fields=JSON_FIELDS,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def make_handler(format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """The one handler of a process: to ``stream`` (default: stderr), in ``format``, with the context's
    fields."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter() if format == "json" else TextFormatter())
    handler.addFilter(ContextFields())
    return handler


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Every logger of the process goes through one handler on the root logger: ours, the SDK's, Hypercorn's
    (web/server.py gives it no handler of its own) and the libraries'."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        handlers=[make_handler(log_format(settings), stream)],
        force=True,
    )
    # Alembic announces each of its plugins at INFO on every `tickler migrate` and `tickler run`.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
