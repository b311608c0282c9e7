"""Row-level security: the app's role sees and writes only the rows of the transaction's organization.

The app's sessions run as `tickler_app` (SET ROLE at connect, see core/db.py), which is neither the
tables' owner nor BYPASSRLS, and each transaction names its organization with
`set_config('tickler.organization_id', ..., true)` (SET LOCAL), so nothing leaks through a pooled
connection. FORCE applies the policies to the owner too; only a superuser or a BYPASSRLS role (an
operator, a data migration) reads across organizations.

Revision ID: 2026_11_28_rls
Revises: 2026_11_28_unread
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "2026_11_28_rls"
down_revision: str | None = "2026_11_28_unread"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tasks", "notifications")
# NULL when unset, so that a transaction that names no organization sees no row at all.
CURRENT_ORGANIZATION = "current_setting('tickler.organization_id', true)"


def upgrade() -> None:
    # Roles belong to the cluster, not the database: create it once, keep it on downgrade.
    op.execute(
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tickler_app') THEN
                CREATE ROLE tickler_app NOLOGIN NOINHERIT NOBYPASSRLS;
            END IF;
        END $$
        """
    )
    op.execute("GRANT tickler_app TO CURRENT_USER")
    op.execute("GRANT USAGE ON SCHEMA public TO tickler_app")
    for table in TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO tickler_app")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING (organization_id = {CURRENT_ORGANIZATION}) "
            f"WITH CHECK (organization_id = {CURRENT_ORGANIZATION})"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP POLICY tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"REVOKE ALL ON {table} FROM tickler_app")
    op.execute("REVOKE USAGE ON SCHEMA public FROM tickler_app")
