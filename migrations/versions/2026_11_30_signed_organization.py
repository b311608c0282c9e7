"""A signed organization: row-level security trusts the organization a transaction names only if the app
signed it.

The policies compared each row with `tickler.organization_id`, a setting any SQL run by the app's login
can set: whoever got that login (a leaked URL, an injected statement) could name another organization and
read it. Now the app also sets `tickler.organization_sig`, the HMAC-SHA256 of the organization under a key
it holds (TICKLER_ORGANIZATION_KEYS, core/db.py), and the policies compare each row with
`(SELECT tickler_organization())`: the organization if its signature matches one of the keys in
`tickler_organization_keys`, else NULL, which matches no row and lets no row be written. The table is
the owner's alone; the function reads it as the owner (SECURITY DEFINER), and computes the HMAC with the
built-in sha256() from the padded keys (RFC 2104) that `tickler migrate` installs (tickler/migrate.py):
no pgcrypto; PL/pgSQL, whose plan the session keeps. Written as a scalar subquery, the check runs once
per statement (an InitPlan), not per row.

tickler_enter(organization, signature) sets both settings, local to the transaction, and raises if the
database accepts no such signature: a process whose key `tickler migrate` did not install fails loudly
rather than seeing an empty organization. deliver_notification() takes the signature, and checks it
when it finds no task, so a key problem is a retryable error there, never a task reported missing.

Upgrading: the web and the worker of the revision before sign nothing, so they see no row once this runs;
stop them, migrate, start the new ones (nothing has been deployed on the old revision).

Revision ID: 2026_11_30_signed_org
Revises: 2026_11_30_maintenance
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "2026_11_30_signed_org"
down_revision: str | None = "2026_11_30_maintenance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tasks", "notifications")
ROLES = "tickler_app, tickler_maintenance"
KEYS = "tickler_organization_keys"
OLD_DELIVER = "deliver_notification(uuid, text, text, integer, timestamptz)"
NEW_DELIVER = "deliver_notification(uuid, text, text, text, integer, timestamptz)"
SETTING = "current_setting('tickler.organization_id', true)"


def _deliver(signed: bool) -> str:
    """deliver_notification() as 2026_11_28_deliver_fn made it, or taking and checking the signature."""
    parameters = "p_task_id uuid, p_organization_id text, " + ("p_signature text, " if signed else "")
    # Signed, the signature is checked only when the task is not found (a refused one shows no row), so
    # that a wrong key is an error to retry, not a task reported missing; the hot path pays no extra check.
    enter = (
        "PERFORM set_config('tickler.organization_id', p_organization_id, true),\n"
        "                    set_config('tickler.organization_sig', p_signature, true);"
        if signed
        else "PERFORM set_config('tickler.organization_id', p_organization_id, true);"
    )
    refused = (
        "PERFORM tickler_enter(p_organization_id, p_signature);  -- raises if the signature is refused"
        if signed
        else ""
    )
    return f"""
        CREATE FUNCTION deliver_notification(
            {parameters}p_dedupe_key text, p_offset_seconds integer, p_due_at timestamptz
        ) RETURNS TABLE (
            outcome text, id bigint, organization_id text, user_id text, task_id uuid, kind text,
            payload jsonb, due_at timestamptz, created_at timestamptz, read_at timestamptz,
            previous_id bigint
        ) LANGUAGE plpgsql VOLATILE AS $fn$
        DECLARE
            task record;
        BEGIN
            {enter}
            SELECT t.assignee_id, t.title, t.status INTO task
              FROM tasks t WHERE t.id = p_task_id AND t.organization_id = p_organization_id;
            IF NOT FOUND THEN
                {refused}
                outcome := 'missing';
                RETURN NEXT;
                RETURN;
            END IF;
            IF task.status <> 'open' THEN
                outcome := 'closed';
                RETURN NEXT;
                RETURN;
            END IF;
            PERFORM pg_advisory_xact_lock(
                hashtextextended(p_organization_id || '/' || task.assignee_id, 0)
            );
            RETURN QUERY
                INSERT INTO notifications AS n
                    (organization_id, user_id, task_id, dedupe_key, payload, due_at)
                VALUES (
                    p_organization_id, task.assignee_id, p_task_id, p_dedupe_key,
                    jsonb_build_object('title', task.title, 'offset_seconds', p_offset_seconds),
                    p_due_at
                )
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING 'new'::text, n.id, n.organization_id, n.user_id, n.task_id, n.kind,
                    n.payload, n.due_at, n.created_at, n.read_at,
                    (SELECT coalesce(max(e.id), 0) FROM notifications e
                      WHERE e.organization_id = p_organization_id
                        AND e.user_id = task.assignee_id
                        AND e.id < n.id);
            IF NOT FOUND THEN
                RETURN QUERY
                    SELECT 'existing'::text, n.id, n.organization_id, n.user_id, n.task_id, n.kind,
                        n.payload, n.due_at, n.created_at, n.read_at, NULL::bigint
                      FROM notifications n WHERE n.dedupe_key = p_dedupe_key;
            END IF;
        END
        $fn$
        """


def _policies(organization: str) -> None:
    for table in TABLES:
        op.execute(
            f"ALTER POLICY tenant_isolation ON {table} "
            f"USING (organization_id = {organization}) WITH CHECK (organization_id = {organization})"
        )


def upgrade() -> None:
    schema = op.get_bind().scalar(text("SELECT quote_ident(current_schema())"))
    # The padded keys (core/db.py, key_pads); `tickler migrate` replaces the rows with its settings' keys.
    op.execute(
        f"CREATE TABLE {KEYS} (inner_pad bytea NOT NULL, outer_pad bytea NOT NULL, "
        f"installed_at timestamptz NOT NULL DEFAULT now(), CONSTRAINT pk_{KEYS} PRIMARY KEY (inner_pad))"
    )
    op.execute(f"REVOKE ALL ON {KEYS} FROM PUBLIC")
    # Owned by the owner, run as the owner: the only reader of the keys. search_path pinned, every name
    # qualified, as a SECURITY DEFINER function must be.
    # PL/pgSQL, not SQL: it keeps its query's plan for the session, where PostgreSQL before 18 plans
    # a SQL function's query on every statement that calls it (+177 against +59 us per statement).
    op.execute(
        f"""
        CREATE FUNCTION tickler_organization() RETURNS text
        LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $fn$
        DECLARE
            org text := current_setting('tickler.organization_id', true);
        BEGIN
            IF EXISTS (
                SELECT FROM {schema}.{KEYS} k
                 WHERE encode(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(org, 'UTF8'))), 'hex')
                       = current_setting('tickler.organization_sig', true)
            ) THEN
                RETURN org;
            END IF;
            RETURN NULL;
        END
        $fn$
        """
    )
    op.execute(
        """
        CREATE FUNCTION tickler_enter(p_organization_id text, p_signature text) RETURNS void
        LANGUAGE plpgsql VOLATILE AS $fn$
        BEGIN
            PERFORM set_config('tickler.organization_id', p_organization_id, true),
                    set_config('tickler.organization_sig', p_signature, true);
            IF tickler_organization() IS NULL THEN
                RAISE EXCEPTION 'the organization''s signature matches no key installed in the database'
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'run `tickler migrate` with the TICKLER_ORGANIZATION_KEYS of the web and '
                                 'the worker (docs/deployment.md, key rotation)';
            END IF;
        END
        $fn$
        """
    )
    for function in ("tickler_organization()", "tickler_enter(text, text)"):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        # The maintenance role too: the policy applies to every role, and its queries evaluate it.
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {ROLES}")
    _policies("(SELECT tickler_organization())")
    op.execute(f"DROP FUNCTION {OLD_DELIVER}")
    op.execute(_deliver(signed=True))
    op.execute(f"REVOKE ALL ON FUNCTION {NEW_DELIVER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {NEW_DELIVER} TO tickler_app")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {NEW_DELIVER}")
    op.execute(_deliver(signed=False))
    op.execute(f"REVOKE ALL ON FUNCTION {OLD_DELIVER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {OLD_DELIVER} TO tickler_app")
    _policies(SETTING)
    op.execute("DROP FUNCTION tickler_enter(text, text)")
    op.execute("DROP FUNCTION tickler_organization()")
    op.execute(f"DROP TABLE {KEYS}")
