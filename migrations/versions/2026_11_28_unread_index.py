"""A partial index for the bell's unread count and the inbox's unread filter.

Revision ID: 2026_11_28_unread
Revises: 2026_11_28_reminders
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_28_unread"
down_revision: str | None = "2026_11_28_reminders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_notifications_unread",
        "notifications",
        ["organization_id", "user_id", "id"],
        postgresql_where=sa.text("read_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_unread", table_name="notifications")
