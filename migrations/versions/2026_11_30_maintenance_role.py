"""The maintenance role: what `tickler audit`, `repair`, `purge`, `stats` and the maintenance Schedule
need across organizations, and nothing more; and the index the purge walks.

They compare every organization's tasks with Temporal and delete old read notifications, which the app's
role cannot (its policies show one organization per transaction, decisions §9). Rather than a superuser
or a BYPASSRLS role (which needs a superuser to create, and bypasses every policy there will ever be),
`tickler_maintenance` gets policies of its own: it reads every row of both tables, and deletes read
notifications only; it inserts and updates nothing (the workflows stay the only writers of task rows).
Its sessions SET ROLE to it at connect, as the app's do to `tickler_app` (core/db.py), from the same
login; only tickler/ops/ makes such sessions.

The purge deletes read notifications oldest first, by (created_at, id), a thousand at a time: a partial
index of the read rows makes each batch a short range scan, whatever the order of ids. It is built
CONCURRENTLY, so that an upgrade never blocks deliveries while it builds.

Revision ID: 2026_11_30_maintenance
Revises: 2026_11_30_stopped
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "2026_11_30_maintenance"
down_revision: str | None = "2026_11_30_stopped"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "tickler_maintenance"
INDEX = "ix_notifications_read_created"


def upgrade() -> None:
    # Roles belong to the cluster, not the database: create it once, keep it on downgrade.
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN NOINHERIT NOBYPASSRLS;
            END IF;
        END $$
        """
    )
    op.execute(f"GRANT {ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON tasks, notifications TO {ROLE}")
    op.execute(f"GRANT DELETE ON notifications TO {ROLE}")
    for table in ("tasks", "notifications"):
        op.execute(f"CREATE POLICY maintenance_read ON {table} FOR SELECT TO {ROLE} USING (true)")
    op.execute(
        f"CREATE POLICY maintenance_purge ON notifications FOR DELETE TO {ROLE} USING (read_at IS NOT NULL)"
    )
    with op.get_context().autocommit_block():
        op.create_index(
            INDEX,
            "notifications",
            ["created_at", "id"],
            postgresql_where="read_at IS NOT NULL",
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, "notifications", postgresql_concurrently=True, if_exists=True)
    op.execute("DROP POLICY maintenance_purge ON notifications")
    for table in ("tasks", "notifications"):
        op.execute(f"DROP POLICY maintenance_read ON {table}")
    op.execute(f"REVOKE ALL ON tasks, notifications FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {ROLE}")
