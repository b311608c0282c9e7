"""core/logs.py: JSON lines in production and text in development, the same fields in both, one handler for
every logger of a process; and the `tickler` command sets it up."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.logs import LogFormat, bound, configure_logging, log_format, make_handler, task_fields
from core.settings import Settings


def emit(format: LogFormat, *lines: tuple[int, str, Mapping[str, object]]) -> str:
    """What a handler of ``format`` writes for ``lines`` (level, message, extra), on a logger of its own."""
    out = io.StringIO()
    logger = logging.getLogger(f"tests.logs.{format}")
    logger.handlers, logger.propagate, logger.level = [make_handler(format, out)], False, logging.DEBUG
    for level, message, extra in lines:
        logger.log(level, message, extra=extra)
    return out.getvalue()


def test_json_in_production_and_text_in_development_unless_told() -> None:
    assert log_format(Settings(env="production")) == "json"
    assert log_format(Settings(env="staging")) == "json"
    assert log_format(Settings(env="dev")) == "text"
    assert log_format(Settings(env="dev", log_format="json")) == "json"
    assert log_format(Settings(env="production", log_format="text")) == "text"
    with pytest.raises(ValidationError):
        Settings(log_format="yaml")


def test_a_json_line_is_one_object_with_the_fields_as_keys() -> None:
    fields = task_fields("3f0c", "task-3f0c", "org-1")
    out = emit("json", (logging.WARNING, "answered 503: it\nbroke", {**fields, "status": 503}))
    assert out.count("\n") == 1, "a message with a line break is still one line"
    line = json.loads(out)
    assert line["level"] == "WARNING"
    assert line["logger"] == "tests.logs.json"
    assert line["message"] == "answered 503: it\nbroke"
    assert line["time"].endswith("+00:00")
    assert {key: line[key] for key in ("task_id", "workflow_id", "organization_id", "status")} == {
        "task_id": "3f0c",
        "workflow_id": "task-3f0c",
        "organization_id": "org-1",
        "status": 503,
    }


def test_a_traceback_stays_in_its_json_line() -> None:
    out = io.StringIO()
    logger = logging.getLogger("tests.logs.traceback")
    logger.handlers, logger.propagate = [make_handler("json", out)], False
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logger.exception("unhandled error")
    assert out.getvalue().count("\n") == 1
    line = json.loads(out.getvalue())
    assert line["message"] == "unhandled error"
    assert "RuntimeError: kaput" in line["exc_info"]


def test_text_keeps_the_message_and_appends_the_fields() -> None:
    # chaos/scenarios.py and tests look for these words in text mode: the message itself must not change.
    extra = {**task_fields("3f0c", "task-3f0c", "org-1"), "stream_end": "client left"}
    out = emit("text", (logging.WARNING, "cut off a stream that took no write in 30 s", extra))
    assert "WARNING tests.logs.text: cut off a stream that took no write in 30 s [" in out
    assert out.rstrip().endswith(
        '[task_id=3f0c workflow_id=task-3f0c organization_id=org-1 stream_end="client left"]'
    )
    assert emit("text", (logging.INFO, "plain", {})).rstrip().endswith("tests.logs.text: plain")


def test_the_sdks_own_context_is_a_json_object_and_not_repeated_in_text() -> None:
    # workflow.logger puts the run's details in the message already, and on the record as temporal_workflow.
    extra: dict[str, object] = {"temporal_workflow": {"workflow_id": "task-1", "attempt": 1}, "task_id": "1"}
    line = json.loads(emit("json", (logging.INFO, "m", extra)))
    assert line["temporal_workflow"]["workflow_id"] == "task-1"
    assert emit("text", (logging.INFO, "m", extra)).rstrip().endswith("m [task_id=1]")


async def test_bound_fields_reach_every_line_of_the_context_and_its_tasks() -> None:
    out = io.StringIO()
    logger = logging.getLogger("tests.logs.bound")
    logger.handlers, logger.propagate, logger.level = [make_handler("json", out)], False, logging.INFO

    async def child() -> None:
        logger.info("in a task started while bound")

    with bound(request_id="r-1"):
        logger.info("bound")
        task = asyncio.create_task(child())
        logger.info("the call's own extra wins", extra={"request_id": "mine"})
    await task
    logger.info("after")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("request_id") for line in lines] == ["r-1", "mine", "r-1", None]


async def test_a_database_error_says_nothing_of_the_values_it_was_sent(engine: AsyncEngine) -> None:
    # The worker's failed save_task is logged with its error: its values are a task's title and notes.
    async with engine.connect() as connection:
        with pytest.raises(DBAPIError) as failed:
            await connection.execute(text("SELECT 1 / 0 WHERE :title <> ''"), {"title": "Call Ana back"})
    assert "division by zero" in str(failed.value)
    assert "Call Ana back" not in str(failed.value)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as pytest set it up."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    plugins = logging.getLogger("alembic.runtime.plugins").level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("alembic.runtime.plugins").setLevel(plugins)


@pytest.mark.usefixtures("root_logging")
def test_every_logger_of_a_process_goes_through_the_one_handler() -> None:
    out = io.StringIO()
    configure_logging(Settings(env="production", log_level="debug"), out)
    assert len(logging.getLogger().handlers) == 1
    for name in ("hypercorn.error", "tickler.access", "temporalio.workflow", "web.tasks.service"):
        logging.getLogger(name).info("from %s", name)
    logging.getLogger("alembic.runtime.plugins").info("setting up plugin")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == [
        "hypercorn.error",
        "tickler.access",
        "temporalio.workflow",
        "web.tasks.service",
    ]


@pytest.mark.parametrize("env", ["production", "dev"])
def test_the_tickler_command_logs_in_the_format_of_its_settings(env: str, tmp_path: Path) -> None:
    # `tickler run` refuses a web port that something answers on, in its first line of log.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TICKLER_")}
        environ |= {"TICKLER_ENV": env, "TICKLER_WEB_HOST": "127.0.0.1", "TICKLER_WEB_PORT": str(port)}
        # In a directory without a .env, so that no developer's settings apply.
        done = subprocess.run(
            [sys.executable, "-m", "tickler", "run"],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    if env == "production":
        record = json.loads(line)
        assert record["level"] == "ERROR"
        assert record["logger"] == "tickler.run"
        assert f"127.0.0.1:{port} is in use" in record["message"]
    else:
        assert f" ERROR tickler.run: 127.0.0.1:{port} is in use" in line
