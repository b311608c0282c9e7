"""Why a task's series stopped, when its rule could not be used: shown to the task's user.

Revision ID: 2026_11_30_stopped
Revises: 2026_11_28_deliver_fn
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_30_stopped"
down_revision: str | None = "2026_11_28_deliver_fn"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("recurrence_stopped", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "recurrence_stopped")
