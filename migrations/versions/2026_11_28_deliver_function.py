"""deliver_notification(): a reminder's whole write in one round trip.

A delivery was five round trips on the reminder's critical path (BEGIN, the organization setting, the
task with its lock, the insert, COMMIT). As one function called outside an explicit transaction it is
one (what that saves is measured in docs/performance.md, decisions §16).
It runs as its caller (`tickler_app`), so row-level security applies as before: it names the
organization first (local to the statement's transaction), then reads the task by id AND organization.

Each statement in a volatile PL/pgSQL function takes a new snapshot, so the insert, which starts after
the user's lock is held, sees every earlier row of that user: the predecessor it returns is final (the
streams' shortcut, web/stream/service.py). Identity ids are drawn at insert, not at commit; the lock
makes one user's rows commit in id order.

Outcomes: 'new' (the row, with the id of the user's row before it), 'existing' (a retried delivery:
the row as it is, no predecessor), 'closed' (the task is done or cancelled: nothing written),
'missing' (no such task in that organization); no row at all if the conflicting row vanished meanwhile
(its task was deleted).

Revision ID: 2026_11_28_deliver_fn
Revises: 2026_11_28_rls
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "2026_11_28_deliver_fn"
down_revision: str | None = "2026_11_28_rls"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "deliver_notification(uuid, text, text, integer, timestamptz)"


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION deliver_notification(
            p_task_id uuid, p_organization_id text, p_dedupe_key text, p_offset_seconds integer,
            p_due_at timestamptz
        ) RETURNS TABLE (
            outcome text, id bigint, organization_id text, user_id text, task_id uuid, kind text,
            payload jsonb, due_at timestamptz, created_at timestamptz, read_at timestamptz,
            previous_id bigint
        ) LANGUAGE plpgsql VOLATILE AS $fn$
        DECLARE
            task record;
        BEGIN
            PERFORM set_config('tickler.organization_id', p_organization_id, true);
            SELECT t.assignee_id, t.title, t.status INTO task
              FROM tasks t WHERE t.id = p_task_id AND t.organization_id = p_organization_id;
            IF NOT FOUND THEN
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
    )
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO tickler_app")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
