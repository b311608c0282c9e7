"""A user's own settings: email escalation and quiet hours (issue 18)."""

from __future__ import annotations

from datetime import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

from core.payloads import MAX_EMAIL_DELAY_SECONDS, MIN_EMAIL_DELAY_SECONDS
from web.tasks.schemas import TimeZone

ClockTime = Annotated[
    str,
    StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$"),
    Field(description="A wall-clock time, 24-hour `HH:MM`.", examples=["20:00"]),
]


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: ClockTime
    end: ClockTime = Field(
        description="May be earlier than `start`: the hours then span midnight. Equal to it: no quiet hours."
    )

    def times(self) -> tuple[time, time]:
        return time.fromisoformat(self.start), time.fromisoformat(self.end)


class UserSettingsBody(BaseModel):
    """All your settings at once: `PUT` replaces them, a field left out is reset to its default."""

    # The schema says what the validator below checks: a delay needs an address.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {
                "properties": {"email_unread_after_seconds": {"type": "integer"}},
                "required": ["email_unread_after_seconds"],
            },
            "then": {"properties": {"email": {"type": "string"}}, "required": ["email"]},
        },
    )

    email: EmailStr | None = Field(None, description="Where reminders left unread are mailed.")
    email_unread_after_seconds: (
        Annotated[int, Field(ge=MIN_EMAIL_DELAY_SECONDS, le=MAX_EMAIL_DELAY_SECONDS)] | None
    ) = Field(
        None,
        description="Mail a notification unread this long after it fired (10 s to 7 days); null: never.",
    )
    quiet_hours: QuietHours | None = Field(
        None, description="No email in these hours of `timezone`: one due in them waits for their end."
    )
    timezone: TimeZone = "UTC"

    @model_validator(mode="after")
    def _an_address_to_mail(self) -> UserSettingsBody:
        if self.email_unread_after_seconds is not None and self.email is None:
            raise ValueError("give `email` to have unread notifications mailed")
        if self.quiet_hours is not None and self.quiet_hours.start == self.quiet_hours.end:
            # Hours that start when they end last no time.
            self.quiet_hours = None
        return self
