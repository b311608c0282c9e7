"""Several reminders per task, recurrence in the assignee's time zone, idempotent creation.

Revision ID: 2026_11_28_reminders
Revises: 2026_11_28_initial
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "2026_11_28_reminders"
down_revision: str | None = "2026_11_28_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column("reminder_offsets", postgresql.ARRAY(sa.Integer()), server_default="{0}", nullable=False),
    )
    op.add_column("tasks", sa.Column("recurrence", postgresql.JSONB(), nullable=True))
    op.add_column("tasks", sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False))
    op.add_column("tasks", sa.Column("request_hash", sa.Text(), nullable=True))
    # The task list's order (due_at, id) within an organization, and its status filter.
    op.create_index("ix_tasks_org_due_id", "tasks", ["organization_id", "due_at", "id"])
    op.create_index("ix_tasks_org_status_due_id", "tasks", ["organization_id", "status", "due_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_org_status_due_id", table_name="tasks")
    op.drop_index("ix_tasks_org_due_id", table_name="tasks")
    op.drop_column("tasks", "request_hash")
    op.drop_column("tasks", "timezone")
    op.drop_column("tasks", "recurrence")
    op.drop_column("tasks", "reminder_offsets")
