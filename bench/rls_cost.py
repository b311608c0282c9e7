"""What the signed organization costs the hot queries: `python -m bench.rls_cost [--runs N]` (a lever
study, not in `make bench`; its figures are in docs/decisions.md §26).

Starts its own PostgreSQL with two databases, one at the revision before the signature and one at head,
the same rows in each, and times on both in turns, as the app's login (tickler_login taking
tickler_app), one asyncpg connection each:

  list      a tenant transaction (BEGIN, the organization, a page of a user's open tasks, COMMIT)
  replay    the same with a stream's replay (a user's notifications after an id)
  deliver   deliver_notification(), one call in autocommit, as the worker delivers

and prints each one's median and p99 in microseconds, before and after, with the EXPLAIN ANALYZE of the
replay after (the signature's check must be one InitPlan, not a filter per row).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from core.db import organization_signature
from tickler import devstack
from tickler.migrate import upgrade

BEFORE = "2026_11_30_maintenance"
ORGS = 50
TASKS_PER_ORG = 200
NOTIFICATIONS_PER_TASK = 5
USERS = 10

LIST = (
    "SELECT * FROM tasks WHERE organization_id = $1 AND assignee_id = $2 AND status = 'open' "
    "ORDER BY due_at LIMIT 50"
)
REPLAY = (
    "SELECT * FROM notifications WHERE organization_id = $1 AND user_id = $2 AND id > $3 ORDER BY id "
    "LIMIT 100"
)


async def _seed(owner: str) -> list[tuple[str, uuid.UUID]]:
    """As the owner (row-level security is off for it here): ORGS organizations of tasks and notifications;
    one (organization, task) to deliver to per organization."""
    conn = await asyncpg.connect(owner)
    try:
        await conn.execute("ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY")
        await conn.execute("ALTER TABLE notifications NO FORCE ROW LEVEL SECURITY")
        now = datetime.now(UTC)
        targets = []
        for o in range(ORGS):
            org = f"org-{o}"
            tasks = [(uuid.uuid4(), org, str(n % USERS)) for n in range(TASKS_PER_ORG)]
            await conn.executemany(
                "INSERT INTO tasks (id, organization_id, assignee_id, created_by, title, due_at, status, "
                "reminder_offsets, version, timezone, created_at, updated_at) VALUES ($1, $2, $3, $3, "
                "'Call Ana back', $4, 'open', '{0}', 1, 'UTC', $4, $4)",
                [(t, org_, user, now) for t, org_, user in tasks],
            )
            await conn.executemany(
                "INSERT INTO notifications (organization_id, user_id, task_id, dedupe_key, payload, due_at) "
                "VALUES ($1, $2, $3, $4, '{}', $5)",
                [
                    (org_, user, t, f"{t}:{k}", now)
                    for t, org_, user in tasks
                    for k in range(NOTIFICATIONS_PER_TASK)
                ],
            )
            targets.append((org, tasks[0][0]))
        await conn.execute("ALTER TABLE tasks FORCE ROW LEVEL SECURITY")
        await conn.execute("ALTER TABLE notifications FORCE ROW LEVEL SECURITY")
        await conn.execute("ANALYZE")
        return targets
    finally:
        await conn.close()


class Side:
    """One database, at one revision, measured over one connection of the app's login."""

    def __init__(self, conn: asyncpg.Connection, targets: list[tuple[str, uuid.UUID]], key: bytes | None):
        self.conn, self.targets, self.key = conn, targets, key
        self.tag = secrets.token_hex(4)
        self.took: dict[str, list[float]] = {name: [] for name in QUERIES}

    def enter(self, org: str) -> tuple[str, tuple[str, ...]]:
        if self.key is None:
            return "SELECT set_config('tickler.organization_id', $1, true)", (org,)
        return "SELECT tickler_enter($1, $2)", (org, organization_signature(self.key, org))

    async def in_tenant(self, n: int, query: str, *args: object) -> None:
        statement, parameters = self.enter(self.targets[n % len(self.targets)][0])
        async with self.conn.transaction():
            await self.conn.execute(statement, *parameters)
            await self.conn.fetch(query, *args)

    async def run(self, name: str, n: int) -> None:
        org, task = self.targets[n % len(self.targets)]
        if name == "list":
            await self.in_tenant(n, LIST, org, str(n % USERS))
        elif name == "replay":
            await self.in_tenant(n, REPLAY, org, str(n % USERS), 0)
        else:
            signed = () if self.key is None else (organization_signature(self.key, org),)
            placeholders = ", ".join(f"${i}" for i in range(1, 6 + len(signed)))
            await self.conn.fetch(
                f"SELECT * FROM deliver_notification({placeholders})",
                task,
                org,
                *signed,
                f"bench-{self.tag}-{n}",
                0,
                datetime.now(UTC),
            )

    async def timed(self, name: str, n: int) -> None:
        began = time.perf_counter()
        await self.run(name, n)
        self.took[name].append((time.perf_counter() - began) * 1e6)

    async def plan(self) -> str:
        org = self.targets[0][0]
        statement, parameters = self.enter(org)
        async with self.conn.transaction():
            await self.conn.execute(statement, *parameters)
            rows = await self.conn.fetch("EXPLAIN ANALYZE " + REPLAY, org, "0", 0)
        return "\n".join(row[0] for row in rows)


QUERIES = ("list", "replay", "deliver")


async def _measure(before_url: str, after_url: str, key: bytes, runs: int) -> tuple[Side, Side]:
    """Both sides in turns, a query at a time, so that the machine's drift (it is shared) hits both
    alike; warmed first (plans cached, pages in memory)."""
    sides = []
    for url, side_key in ((before_url, None), (after_url, key)):
        targets = await _seed(url.replace("tickler_login", "tickler"))
        conn = await asyncpg.connect(url, server_settings={"role": "tickler_app"})
        sides.append(Side(conn, targets, side_key))
    before, after = sides
    try:
        for name in QUERIES:
            for n in range(200):
                for side in sides:
                    await side.run(name, -n - 1)
        for n in range(runs):
            for name in QUERIES:
                for side in sides if n % 2 else sides[::-1]:
                    await side.timed(name, n)
        return before, after
    finally:
        for side in sides:
            await side.conn.close()


def main(runs: int) -> None:
    """The migrations run outside the event loop (Alembic's env starts one of its own)."""
    with tempfile.TemporaryDirectory(prefix="rls-cost-") as tmp:
        server = devstack.start_postgres(Path(tmp), devstack.free_port())
        try:
            owner = server.address.replace("postgresql+asyncpg://", "postgresql://")
            asyncio.run(_create_database(owner, "tickler_signed"))
            signed_owner = owner.rsplit("/", 1)[0] + "/tickler_signed"
            key = secrets.token_urlsafe(32).encode()
            upgrade(server.address, BEFORE)
            upgrade(signed_owner.replace("postgresql://", "postgresql+asyncpg://"), organization_keys=[key])

            def app(url: str) -> str:
                return url.replace("//tickler@", "//tickler_login@")

            before, after = asyncio.run(_measure(app(owner), app(signed_owner), key, runs))
            plans = asyncio.run(_plans(app(owner), app(signed_owner), key))
        finally:
            server.stop()
    scale = f"{ORGS} organizations x {TASKS_PER_ORG} tasks x {NOTIFICATIONS_PER_TASK} notifications"
    print(f"{scale}; {runs} runs of each query on each side, in turns")
    print(f"{'query':10} {'before p50':>11} {'after p50':>10} {'before p99':>11} {'after p99':>10}  (us)")
    for name in QUERIES:
        b, a = before.took[name], after.took[name]
        print(
            f"{name:10} {statistics.median(b):11.0f} {statistics.median(a):10.0f} "
            f"{statistics.quantiles(b, n=100)[98]:11.0f} {statistics.quantiles(a, n=100)[98]:10.0f}"
        )
    print("\nEXPLAIN ANALYZE of the replay, before:\n" + plans[0])
    print("\nEXPLAIN ANALYZE of the replay, signed:\n" + plans[1])


async def _create_database(owner: str, name: str) -> None:
    admin = await asyncpg.connect(owner.replace("//tickler@", "//postgres@"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER tickler')
    finally:
        await admin.close()


async def _plans(before_url: str, after_url: str, key: bytes) -> tuple[str, str]:
    plans = []
    for url, side_key in ((before_url, None), (after_url, key)):
        conn = await asyncpg.connect(url, server_settings={"role": "tickler_app"})
        try:
            plans.append(await Side(conn, [("org-0", uuid.uuid4())], side_key).plan())
        finally:
            await conn.close()
    return plans[0], plans[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3000)
    main(parser.parse_args().runs)
