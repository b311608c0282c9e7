"""Webhook delivery attempts are purged with the notifications' retention (docs/operations.md, "Retention").

Every attempt at every endpoint is a row (issue 18); without a purge they grow for ever. The maintenance
role (2026_11_30_maintenance) may now read and delete them, every organization's, and nothing else of
theirs; the purge walks them oldest first along an index of `attempted_at`, built CONCURRENTLY so that an
upgrade never blocks deliveries.

Revision ID: 2026_12_01_webhook_retention
Revises: 2026_12_01_webhooks
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "2026_12_01_webhook_retention"
down_revision: str | None = "2026_12_01_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "tickler_maintenance"
INDEX = "ix_webhook_deliveries_attempted_at"


def upgrade() -> None:
    op.execute(f"GRANT SELECT, DELETE ON webhook_deliveries TO {ROLE}")
    op.execute(f"CREATE POLICY maintenance_read ON webhook_deliveries FOR SELECT TO {ROLE} USING (true)")
    op.execute(f"CREATE POLICY maintenance_purge ON webhook_deliveries FOR DELETE TO {ROLE} USING (true)")
    with op.get_context().autocommit_block():
        op.create_index(
            INDEX,
            "webhook_deliveries",
            ["attempted_at", "id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, "webhook_deliveries", postgresql_concurrently=True, if_exists=True)
    op.execute("DROP POLICY maintenance_purge ON webhook_deliveries")
    op.execute("DROP POLICY maintenance_read ON webhook_deliveries")
    op.execute(f"REVOKE ALL ON webhook_deliveries FROM {ROLE}")
