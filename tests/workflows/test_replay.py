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
from core.payloads import OLDEST_WORKFLOW_VERSION, TASK_WORKFLOW, WORKFLOW_VERSION, TaskWorkflowInput
from core.settings import Settings
from workflows.email import EmailEscalation
from workflows.maintenance import MaintenanceWorkflow
from workflows.task import TaskWorkflow
from workflows.webhook import WebhookDelivery

# Top level: today's recordings (`make histories`). Sub-folders: the task workflow's older versions that
# running workflows may still have, one folder per version (v<N>/) or patch (pre-<patch id>/), kept
# byte-identical as long as the workflow runs it (decisions §12). None today: version 2 is the only one.
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
    workflows = [TaskWorkflow, MaintenanceWorkflow, EmailEscalation, WebhookDelivery]
    replayer = Replayer(workflows=workflows, data_converter=CONVERTER)
    await replayer.replay_workflow(history)


def test_every_version_the_workflow_runs_has_a_recorded_history() -> None:
    """A version added without a recording, or one dropped while its recordings stay, shows here."""
    versions = set()
    for path in HISTORIES:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        started = history.events[0].workflow_execution_started_event_attributes
        if started.workflow_type.name == TASK_WORKFLOW:
            versions.add(TaskWorkflowInput.model_validate_json(started.input.payloads[0].data).version)
    assert versions == set(range(OLDEST_WORKFLOW_VERSION, WORKFLOW_VERSION + 1))


def test_replay_goes_through_the_codec() -> None:
    assert isinstance(CONVERTER.payload_codec, EncryptionCodec)
