"""`tickler purge`: delete read notifications, and webhook delivery attempts, older than the retention
(docs/operations.md, "Retention").

Oldest first, ``batch`` rows at a time along the partial index of read rows by (created_at, id), each
batch one statement in its own transaction: a batch holds the row locks of what it deletes for
milliseconds, and the streams' replays (plain reads) never wait for it. Unread notifications stay,
whatever their age: they are what a user has not seen yet. Webhook delivery attempts (an endpoint's log,
issue 18) go the same way along their index of `attempted_at`, whatever their outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.maintenance import PurgeSummary

BATCH = 1_000

# One batch: the next `:size` read rows created before the cutoff, after the last one seen, deleted. The
# delete judges each row as it is when deleted (a row marked unread meanwhile stays); the maintenance
# role's policy allows nothing else (migrations/versions/2026_11_30_maintenance_role.py).
_BATCH = text(
    """
    WITH batch AS (
        SELECT id, created_at FROM notifications
        WHERE read_at IS NOT NULL AND created_at < :cutoff
          AND (created_at, id) > (:after_at, :after_id)
        ORDER BY created_at, id
        LIMIT :size
    ), gone AS (
        DELETE FROM notifications n USING batch b
        WHERE n.id = b.id AND n.read_at IS NOT NULL AND n.created_at < :cutoff
        RETURNING n.id
    ), last AS (
        SELECT created_at, id FROM batch ORDER BY created_at DESC, id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM batch) AS seen,
           (SELECT count(*) FROM gone) AS deleted,
           (SELECT created_at FROM last) AS last_at,
           (SELECT id FROM last) AS last_id
    """
)


# One batch of webhook delivery attempts: the next `:size` made before the cutoff, deleted.
_ATTEMPTS_BATCH = text(
    """
    WITH batch AS (
        SELECT id FROM webhook_deliveries
        WHERE attempted_at < :cutoff
        ORDER BY attempted_at, id
        LIMIT :size
    ), gone AS (
        DELETE FROM webhook_deliveries w USING batch b WHERE w.id = b.id RETURNING w.id
    )
    SELECT count(*) AS deleted FROM gone
    """
)


async def purge(
    engine: AsyncEngine,
    older_than: timedelta,
    *,
    batch: int = BATCH,
    progress: Callable[[Any], None] | None = None,
) -> PurgeSummary:
    """Read notifications, then webhook delivery attempts, older than ``older_than``: the retention's
    whole work. ``engine`` runs as the maintenance role."""
    started = time.monotonic()
    summary = await purge_read_notifications(engine, older_than, batch=batch, progress=progress)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        while True:
            values = {"cutoff": summary.cutoff, "size": batch}
            deleted = (await connection.execute(_ATTEMPTS_BATCH, values)).scalar_one()
            summary.webhook_attempts_deleted += deleted
            if progress is not None:
                progress(
                    {"deleted": summary.deleted, "webhook_attempts_deleted": summary.webhook_attempts_deleted}
                )
            if deleted < batch:
                break
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


async def purge_read_notifications(
    engine: AsyncEngine,
    older_than: timedelta,
    *,
    batch: int = BATCH,
    progress: Callable[[Any], None] | None = None,
) -> PurgeSummary:
    """Delete read notifications created more than ``older_than`` ago; ``engine`` runs as the
    maintenance role."""
    started = time.monotonic()
    cutoff = datetime.now(UTC) - older_than
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    summary = PurgeSummary(cutoff=cutoff)
    after: dict[str, Any] = {"after_at": datetime(1970, 1, 1, tzinfo=UTC), "after_id": 0}
    async with autocommit.connect() as connection:
        while True:
            values = {"cutoff": cutoff, "size": batch} | after
            row = (await connection.execute(_BATCH, values)).one()
            summary.batches += 1
            summary.deleted += row.deleted
            if progress is not None:
                progress({"deleted": summary.deleted, "batches": summary.batches})
            if row.seen < batch:
                break
            after = {"after_at": row.last_at, "after_id": row.last_id}
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
