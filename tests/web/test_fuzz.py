"""Schemathesis fuzzes every route in /openapi.json on the real stack: no 5xx, no answer off its schema."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from temporalio.worker import Worker

from core.settings import Settings
from tests.helpers import bearer, new_org, serve_app

# The stream never ends by itself; its protocol has tests of its own (tests/web/test_stream.py).
EXCLUDED = ["/v1/notifications/stream"]


@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_error(settings: Settings, worker: Worker, tmp_path: Path) -> None:
    # No rate limit: thousands of requests a minute are the point here.
    fuzzed = settings.model_copy(update={"rate_limit_per_minute": 0})
    auth = bearer(fuzzed, "7", new_org())["Authorization"]
    async with serve_app(fuzzed) as (url, _):
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--header",
            f"Authorization: {auth}",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "20",
            "--no-color",
            *[arg for path in EXCLUDED for arg in ("--exclude-path", path)],
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
        )
        output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
