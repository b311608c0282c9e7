"""A change clears a field one way, `clear`; the flag it replaced is still read (no server needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.payloads import TaskChange


def test_clear_names_the_fields_to_empty_once_each() -> None:
    change = TaskChange.model_validate({"action": "edit", "clear": ["recurrence", "notes", "notes"]})
    assert change.clear == ("notes", "recurrence")


def test_the_old_flag_is_folded_into_clear() -> None:
    """Recorded histories and older senders carry `clear_recurrence`: it must keep its meaning."""
    old = TaskChange.model_validate({"action": "edit", "clear_recurrence": True, "title": "x"})
    assert old.clear == ("recurrence",)
    assert "clear_recurrence" not in old.model_dump()
    assert TaskChange.model_validate({"action": "edit", "clear_recurrence": False}).clear == ()


@pytest.mark.parametrize(
    "body",
    [
        {"action": "edit", "clear": ["title"]},  # a title cannot be emptied
        {"action": "edit", "clear": ["notes"], "notes": "both"},
        {"action": "edit", "clear": ["recurrence"], "recurrence": {"every": 1, "unit": "days"}},
        {"action": "edit", "clear": "notes"},
    ],
)
def test_a_field_is_given_or_cleared_not_both(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TaskChange.model_validate(body)


@pytest.mark.parametrize("assignee", ["", "two words", "x" * 65, "ana\n", "<script>"])
def test_a_signal_cannot_give_a_task_to_an_id_the_api_would_refuse(assignee: str) -> None:
    """Signals share TaskChange with the API: an assignee id is held to the API's Identifier."""
    with pytest.raises(ValidationError):
        TaskChange.model_validate({"action": "reschedule", "assignee_id": assignee})
    assert TaskChange.model_validate({"action": "edit", "assignee_id": "crm:8@eu"}).assignee_id == "crm:8@eu"
