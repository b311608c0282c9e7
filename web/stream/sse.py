"""Server-Sent Events framing (WHATWG HTML, "server-sent events")."""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _field(value: str) -> str:
    # event and id are single-line fields: a line break there would start a new field.
    return _LINE_BREAK.sub(" ", value)


def format_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    lines = []
    if event is not None:
        lines.append(f"event: {_field(event)}")
    if id is not None:
        lines.append(f"id: {_field(id)}")
    # Every line of data is its own data: line, so no text can inject a field or end the event.
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def format_retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"
