"""Replay recorded histories with today's workflow code: a non-deterministic change fails here, not in
production. Re-record (`make histories`) only when breaking running workflows is intended and handled.

The recordings are in clear (the time-skipping server runs without a codec), and they replay through the
converter the worker uses, encryption codec included: its decode passes through payloads that were never
encrypted, as it must for every history written before encryption was turned on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.codec import EncryptionCodec, EncryptionKey, data_converter
from core.settings import Settings
from workflows.maintenance import MaintenanceWorkflow
from workflows.task import TaskWorkflow

# Top level: today's recordings. Sub-folders: histories of earlier behaviour that running workflows may
# still have (activity-delivery/: version 1, decisions §12); they replay as long as that branch is kept.
ROOT = Path(__file__).parent / "histories"
HISTORIES = sorted(ROOT.rglob("*.json"))
CONVERTER = data_converter(
    pydantic_data_converter, Settings(encryption_keys=SecretStr(EncryptionKey.generate("replay").entry()))
)


def test_histories_are_recorded() -> None:
    assert len(list(ROOT.glob("*.json"))) >= 3, "run `make histories` to record them"


@pytest.mark.parametrize("path", HISTORIES, ids=[str(p.relative_to(ROOT).with_suffix("")) for p in HISTORIES])
async def test_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(f"task-{path.stem}", await asyncio.to_thread(path.read_text))
    replayer = Replayer(workflows=[TaskWorkflow, MaintenanceWorkflow], data_converter=CONVERTER)
    await replayer.replay_workflow(history)


def test_replay_goes_through_the_codec() -> None:
    assert isinstance(CONVERTER.payload_codec, EncryptionCodec)
