"""SSE framing: no text in data, event or id can inject a field or event; a real parser reads it back."""

from __future__ import annotations

import pytest
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from web.stream.sse import HEARTBEAT, format_event, format_retry

INJECTION = "\n\nevent: x\ndata: y"

# Strings a title or a note could hold; none contains a CR, which SSE turns into a LF (see below).
NASTY = [
    "",
    "plain",
    " leading and trailing space ",
    "\n",
    "\n\n",
    "trailing newline\n",
    "\nleading newline",
    INJECTION,
    "id: 99\nretry: 1\nevent: close",
    ": a comment\ndata: not data",
    "data:\ndata:",
    "event:message\n\nid:\n",
    "nul \x00 inside",
    "vertical tab \x0b form feed \x0c file sep \x1c next line \x85",
    "line sep \u2028 paragraph sep \u2029",
    "unicode: Ana Müller ✓ 日本 🎉",
    '{"title": "Call Ana", "notes": "line 1\\nline 2"}',
    "x" * 10_000,
]

# Carriage returns are line breaks to SSE; the parser hands each line back joined with LF.
WITH_CR = ["\r", "a\rb", "a\r\nb", "a\r\rb", "\r\n\r\nevent: x\r\ndata: y", "mixed\nline\rbreaks\r\n"]


def parse(raw: bytes) -> list[ServerSentEvent]:
    """The events a browser would see, decoded as httpx_sse decodes a response."""
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    events = []
    for line in [*lines.decode(raw.decode()), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            events.append(event)
    return events


def fields(raw: bytes) -> list[str]:
    """Names of the fields of one framed event, in order (the trailing blank line excluded)."""
    text = raw.decode()
    assert text.endswith("\n\n")
    return [line.partition(":")[0] for line in text[:-2].split("\n")]


def test_each_kind_of_line_break_starts_its_own_data_line() -> None:
    raw = format_event("a\nb\rc\r\nd")
    assert raw == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_an_injected_blank_line_and_fields_stay_data() -> None:
    raw = format_event(INJECTION, event="notification", id="5")
    assert fields(raw) == ["event", "id", "data", "data", "data", "data"]
    [event] = parse(raw)
    assert event.event == "notification"
    assert event.id == "5"
    assert event.data == INJECTION


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\r\nb", "\n\nevent: x\ndata: y", "\r\r", "5\nretry: 1"])
def test_event_and_id_cannot_break_their_line(value: str) -> None:
    raw = format_event("payload", event=value, id=value)
    assert b"\r" not in raw
    assert fields(raw) == ["event", "id", "data"]
    [event] = parse(raw)
    assert event.data == "payload"
    assert event.retry is None
    assert "\n" not in event.event
    assert "\r" not in event.event
    assert "\n" not in event.id
    assert "\r" not in event.id


def test_an_empty_data_is_one_empty_data_line() -> None:
    raw = format_event("")
    assert raw == b"data: \n\n"
    [event] = parse(raw)
    assert event.data == ""
    assert event.event == "message"


def test_event_and_id_are_omitted_when_not_given() -> None:
    assert fields(format_event("x")) == ["data"]


@pytest.mark.parametrize("data", NASTY)
def test_a_real_parser_reads_back_exactly_the_data(data: str) -> None:
    raw = format_event(data, event="notification", id="42")
    assert b"\r" not in raw
    [event] = parse(raw)
    assert event.data == data
    assert event.event == "notification"
    assert event.id == "42"


@pytest.mark.parametrize("data", WITH_CR)
def test_carriage_returns_come_back_as_line_feeds_and_inject_nothing(data: str) -> None:
    raw = format_event(data, event="notification", id="42")
    assert b"\r" not in raw
    [event] = parse(raw)
    assert event.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert event.event == "notification"
    assert event.id == "42"


def test_events_in_a_row_stay_apart() -> None:
    raw = b"".join(format_event(data, event="notification", id=str(i)) for i, data in enumerate(NASTY))
    events = parse(raw)
    assert [e.data for e in events] == NASTY
    assert [e.id for e in events] == [str(i) for i in range(len(NASTY))]


def test_retry_and_heartbeat_frames() -> None:
    [event] = parse(format_retry(2000))
    assert event.retry == 2000
    assert event.data == ""
    # A heartbeat is a comment: the parser dispatches nothing, and it does not disturb the next event.
    assert parse(HEARTBEAT) == []
    [after] = parse(HEARTBEAT + format_event("x", event="notification"))
    assert after.data == "x"
