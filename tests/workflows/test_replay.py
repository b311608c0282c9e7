"""Replay recorded histories with today's workflow code: a non-deterministic change fails here, not in
production. Re-record (`make histories`) only when breaking running workflows is intended and handled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.task import TaskWorkflow

# Top level: today's recordings. Sub-folders: histories of earlier behaviour that running workflows may
# still have (activity-delivery/: version 1, decisions §12); they replay as long as that branch is kept.
ROOT = Path(__file__).parent / "histories"
HISTORIES = sorted(ROOT.rglob("*.json"))


def test_histories_are_recorded() -> None:
    assert len(list(ROOT.glob("*.json"))) >= 3, "run `make histories` to record them"


@pytest.mark.parametrize("path", HISTORIES, ids=[str(p.relative_to(ROOT).with_suffix("")) for p in HISTORIES])
async def test_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(f"task-{path.stem}", await asyncio.to_thread(path.read_text))
    replayer = Replayer(workflows=[TaskWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
