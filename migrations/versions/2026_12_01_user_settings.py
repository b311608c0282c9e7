"""Each user's own settings (issue 18: email escalation), and when a notification was mailed.

`user_settings` holds one row per (organization, user), written by `PUT /v1/me/settings`: the address to
mail, after how long unread a notification is mailed (NULL: never), the quiet hours and the time zone
they are in. Row-level security as on every table: the signed organization of the transaction
(2026_11_30_signed_org). `notifications.emailed_at` is set by the escalation once the SMTP server has
taken the message: the mark that makes a retry send nothing.

Revision ID: 2026_12_01_settings
Revises: 2026_11_30_fenced
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_01_settings"
down_revision: str | None = "2026_11_30_fenced"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORGANIZATION = "(SELECT tickler_organization())"


def upgrade() -> None:
    op.create_table(
        "user_settings",
        sa.Column("organization_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("email_unread_after_seconds", sa.Integer(), nullable=True),
        sa.Column("quiet_start", sa.Time(), nullable=True),
        sa.Column("quiet_end", sa.Time(), nullable=True),
        sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "user_id"),
    )
    op.add_column("notifications", sa.Column("emailed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("GRANT SELECT, INSERT, UPDATE ON user_settings TO tickler_app")
    op.execute("ALTER TABLE user_settings ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE user_settings FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON user_settings "
        f"USING (organization_id = {ORGANIZATION}) WITH CHECK (organization_id = {ORGANIZATION})"
    )


def downgrade() -> None:
    op.drop_column("notifications", "emailed_at")
    op.drop_table("user_settings")
