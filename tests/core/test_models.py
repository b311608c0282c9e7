"""A task's state and its row: one mapping, both ways, for every column (no server needed)."""

from __future__ import annotations

from datetime import timedelta

from core.models import Task, state_of, task_row
from core.payloads import Recurrence, TaskState
from tests.helpers import task_state

# What only the workflow keeps: its schedule, its series' start and the request ids it has seen.
WORKFLOW_ONLY = {"schedule_revision", "done_offsets", "recent_request_ids", "series_start", "reopen_until"}


def test_every_column_is_written_from_the_state() -> None:
    row = task_row(task_state())
    assert set(row) == {column.key for column in Task.__table__.columns}


def test_a_state_survives_its_row() -> None:
    state = task_state(
        notes="about the offer",
        reminder_offsets=(900, 0),
        recurrence=Recurrence(rrule="FREQ=WEEKLY;BYDAY=TU"),
        timezone="Europe/Lisbon",
        recurrence_stopped="the rule yields no occurrence",
        request_hash="abc",
        version=7,
        status="done",
    )
    read = state_of(Task(**task_row(state)))
    assert read.model_dump(exclude=WORKFLOW_ONLY) == state.model_dump(exclude=WORKFLOW_ONLY)
    assert set(TaskState.model_fields) - {"task_id"} - WORKFLOW_ONLY == set(task_row(state)) - {"id"}


def test_every_recurrence_kind_round_trips() -> None:
    for recurrence in (Recurrence(every=2, unit="weeks"), None):
        state = task_state(recurrence=recurrence, due_in=timedelta(days=1))
        assert state_of(Task(**task_row(state))).recurrence == recurrence
