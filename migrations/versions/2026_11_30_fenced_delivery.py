"""A delivery fenced by the task's version: what a worker armed ahead of the instant writes nothing once
the task has changed since (docs/decisions.md §29).

A worker now holds each reminder in memory from a lead ahead of its instant and delivers it at the
instant, many in one statement. A change confirmed to its caller before the instant has committed the
task's row with a new version by then: deliver_notification() takes the version the reminder was armed
with and answers 'stale', writing nothing, unless the row still has it. NULL (the default, and every call
of the revision before) checks no version: the workflow's own delivery, from its state of the moment.

Revision ID: 2026_11_30_fenced
Revises: 2026_11_30_signed_org
Create Date: 2026-11-30
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "2026_11_30_fenced"
down_revision: str | None = "2026_11_30_signed_org"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_DELIVER = "deliver_notification(uuid, text, text, text, integer, timestamptz)"
NEW_DELIVER = "deliver_notification(uuid, text, text, text, integer, timestamptz, integer)"

# As 2026_11_30_signed_org made it, with the version read and compared after the status.
DELIVER = """
    CREATE FUNCTION deliver_notification(
        p_task_id uuid, p_organization_id text, p_signature text, p_dedupe_key text,
        p_offset_seconds integer, p_due_at timestamptz, p_version integer DEFAULT NULL
    ) RETURNS TABLE (
        outcome text, id bigint, organization_id text, user_id text, task_id uuid, kind text,
        payload jsonb, due_at timestamptz, created_at timestamptz, read_at timestamptz,
        previous_id bigint
    ) LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        task record;
    BEGIN
        PERFORM set_config('tickler.organization_id', p_organization_id, true),
                set_config('tickler.organization_sig', p_signature, true);
        SELECT t.assignee_id, t.title, t.status, t.version INTO task
          FROM tasks t WHERE t.id = p_task_id AND t.organization_id = p_organization_id;
        IF NOT FOUND THEN
            PERFORM tickler_enter(p_organization_id, p_signature);  -- raises if the signature is refused
            outcome := 'missing';
            RETURN NEXT;
            RETURN;
        END IF;
        IF task.status <> 'open' THEN
            outcome := 'closed';
            RETURN NEXT;
            RETURN;
        END IF;
        IF p_version IS NOT NULL AND task.version <> p_version THEN
            outcome := 'stale';
            RETURN NEXT;
            RETURN;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended(p_organization_id || '/' || task.assignee_id, 0));
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


def _grant(function: str) -> None:
    op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO tickler_app")


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {OLD_DELIVER}")
    op.execute(DELIVER)
    _grant(NEW_DELIVER)


def downgrade() -> None:
    # The function of the revision before, from that revision's own text.
    path = Path(__file__).with_name("2026_11_30_signed_organization.py")
    spec = importlib.util.spec_from_file_location("signed_organization", path)
    assert spec is not None
    assert spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    op.execute(f"DROP FUNCTION {NEW_DELIVER}")
    op.execute(before._deliver(signed=True))
    _grant(OLD_DELIVER)
