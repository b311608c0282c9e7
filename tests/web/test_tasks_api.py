"""The task lifecycle through REST and through other services' signals, on the real stack."""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus

from core.db import tenant_transaction
from core.models import Task
from core.settings import Settings
from tests.helpers import bearer, new_org, run_worker, serve_app, temporal_cli, wait_until


@pytest.fixture
def alice(settings: Settings) -> dict[str, str]:
    return bearer(settings, "alice", new_org())


def ahead(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("title", "Call Ana")
    body.setdefault("due_at", ahead(days=1))
    response = await client.post("/v1/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_create_with_reminders_recurrence_and_zone(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    task = await create(
        client,
        alice,
        reminder_offsets=[0, 900, 86400],
        recurrence={"rrule": "FREQ=WEEKLY;BYDAY=TU"},
        timezone="Europe/Lisbon",
        assignee_id="bob",
        notes="about the offer",
    )
    assert task["reminder_offsets"] == [86400, 900, 0]
    assert task["recurrence"] == {"rrule": "FREQ=WEEKLY;BYDAY=TU", "every": None, "unit": None}
    assert task["timezone"] == "Europe/Lisbon"
    assert task["assignee_id"] == "bob"
    assert task["created_by"] == "alice"
    fetched = (await client.get(f"/v1/tasks/{task['id']}", headers=alice)).json()
    assert fetched == task


@pytest.mark.parametrize(
    "body",
    [
        {"reminder_offsets": []},
        {"reminder_offsets": [-5]},
        {"recurrence": {"rrule": "FREQ=SECONDLY"}},
        {"recurrence": {"every": 2}},
        {"timezone": "Mars/Olympus"},
        {"due_at": "2026-12-01T10:00:00"},
        {"due_at": "3026-12-01T10:00:00Z"},
    ],
)
async def test_create_refuses_bad_settings(
    client: httpx.AsyncClient, alice: dict[str, str], body: dict[str, Any]
) -> None:
    response = await client.post(
        "/v1/tasks", json={"title": "x", "due_at": ahead(days=1), **body}, headers=alice
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_patch_snooze_complete_and_delete(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    task = await create(client, alice, notes="first")
    url = f"/v1/tasks/{task['id']}"

    new_due = ahead(days=2)
    patched = await client.patch(url, json={"title": "Call Ana again", "due_at": new_due}, headers=alice)
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "Call Ana again"
    assert datetime.fromisoformat(patched.json()["due_at"]) == datetime.fromisoformat(new_due)
    assert (await client.get(url, headers=alice)).json() == patched.json()

    cleared = await client.patch(url, json={"notes": None}, headers=alice)
    assert cleared.json()["notes"] is None
    assert (await client.patch(url, json={}, headers=alice)).status_code == 422
    assert (await client.patch(url, json={"title": None}, headers=alice)).status_code == 422
    assert (await client.patch(url, json={"status": "done"}, headers=alice)).status_code == 422

    snoozed = await client.post(f"{url}/snooze", json={"minutes": 30}, headers=alice)
    assert snoozed.status_code == 200, snoozed.text
    due = datetime.fromisoformat(snoozed.json()["due_at"])
    assert timedelta(minutes=29) < due - datetime.now(UTC) <= timedelta(minutes=30)
    until = ahead(hours=5)
    snoozed = await client.post(f"{url}/snooze", json={"until": until}, headers=alice)
    assert datetime.fromisoformat(snoozed.json()["due_at"]) == datetime.fromisoformat(until)
    assert (await client.post(f"{url}/snooze", json={}, headers=alice)).status_code == 422

    done = await client.post(f"{url}/complete", headers=alice)
    assert done.status_code == 200
    assert done.json()["status"] == "done"
    late = await client.patch(url, json={"title": "too late"}, headers=alice)
    assert late.status_code == 409, late.text
    assert "done" in late.json()["detail"]

    other = await create(client, alice)
    deleted = await client.delete(f"/v1/tasks/{other['id']}", headers=alice)
    assert deleted.status_code == 204
    assert (await client.get(f"/v1/tasks/{other['id']}", headers=alice)).json()["status"] == "cancelled"
    assert (await client.delete(f"/v1/tasks/{other['id']}", headers=alice)).status_code == 409


async def test_another_organization_cannot_change_a_task(
    client: httpx.AsyncClient, alice: dict[str, str], settings: Settings
) -> None:
    task = await create(client, alice)
    mallory = bearer(settings, "alice", new_org())  # same user id, other organization
    url = f"/v1/tasks/{task['id']}"
    for response in [
        await client.get(url, headers=mallory),
        await client.patch(url, json={"title": "mine"}, headers=mallory),
        await client.post(f"{url}/snooze", json={"minutes": 5}, headers=mallory),
        await client.post(f"{url}/complete", headers=mallory),
        await client.delete(url, headers=mallory),
    ]:
        assert response.status_code == 404, response.text
    assert (await client.get(url, headers=alice)).json() == task


async def test_list_filters_and_pages_in_a_stable_order(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    base = datetime.now(UTC) + timedelta(days=3)
    same_time = (base + timedelta(hours=1)).isoformat()
    created = [await create(client, alice, due_at=(base + timedelta(hours=h)).isoformat()) for h in (4, 2, 0)]
    created += [await create(client, alice, due_at=same_time, assignee_id="bob") for _ in range(3)]
    await client.post(f"/v1/tasks/{created[0]['id']}/complete", headers=alice)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/tasks", params=params, headers=alice)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(t["id"] for t in created)
    assert len(seen) == len(set(seen))
    due_of = {t["id"]: datetime.fromisoformat(t["due_at"]) for t in created}
    assert [due_of[i] for i in seen] == sorted(due_of.values())

    async def ids(**params: Any) -> set[str]:
        response = await client.get("/v1/tasks", params=params, headers=alice)
        assert response.status_code == 200, response.text
        return {t["id"] for t in response.json()["items"]}

    assert await ids(status="done") == {created[0]["id"]}
    assert await ids(assignee_id="bob") == {t["id"] for t in created[3:]}
    assert await ids(due_before=same_time) == {created[2]["id"]}
    assert await ids(due_after=(base + timedelta(hours=2)).isoformat()) == {
        created[0]["id"],
        created[1]["id"],
    }
    assert (await client.get("/v1/tasks", params={"cursor": "garbage"}, headers=alice)).status_code == 422
    assert (await client.get("/v1/tasks", params={"status": "nope"}, headers=alice)).status_code == 422
    assert (await client.get("/v1/tasks", params={"limit": 1000}, headers=alice)).status_code == 422


async def test_idempotency_key(client: httpx.AsyncClient, alice: dict[str, str], temporal: Client) -> None:
    body = {"title": "Call Ana", "due_at": ahead(days=1)}
    key = {"Idempotency-Key": f"create-{uuid.uuid4()}"}
    first = await client.post("/v1/tasks", json=body, headers=alice | key)
    assert first.status_code == 201
    again = await client.post("/v1/tasks", json=body, headers=alice | key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = await client.post("/v1/tasks", json=body | {"title": "Another"}, headers=alice | key)
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["detail"]

    concurrent_key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    answers = await asyncio.gather(
        *[client.post("/v1/tasks", json=body, headers=alice | concurrent_key) for _ in range(5)]
    )
    assert {a.status_code for a in answers} <= {201, 409}
    ids = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(ids) == 1
    runs = [w async for w in temporal.list_workflows(f"WorkflowId = 'task-{ids.pop()}'")]
    assert len(runs) <= 1  # visibility may lag; never two runs

    bad = await client.post("/v1/tasks", json=body, headers=alice | {"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422


async def test_signals_from_the_stock_cli(
    client: httpx.AsyncClient, alice: dict[str, str], settings: Settings
) -> None:
    task = await create(client, alice)
    url = f"/v1/tasks/{task['id']}"
    workflow = f"task-{task['id']}"

    def signal(name: str, payload: str | None) -> None:
        args = ["workflow", "signal", "--workflow-id", workflow, "--name", name]
        result = temporal_cli(settings, *args, *(["--input", payload] if payload is not None else []))
        assert result.returncode == 0, result.stderr

    async def row() -> dict[str, Any]:
        response: dict[str, Any] = (await client.get(url, headers=alice)).json()
        return response

    new_due = datetime.now(UTC) + timedelta(days=4)
    await asyncio.to_thread(signal, "reschedule", json.dumps({"due_at": new_due.isoformat()}))
    await wait_until(
        lambda: _due_is(row, new_due), within=5, what="the signalled reschedule in GET /v1/tasks/<id>"
    )
    # Malformed payloads are refused by the workflow and never wedge it.
    await asyncio.to_thread(signal, "reschedule", '{"due_at": "next tuesday"}')
    await asyncio.to_thread(signal, "snooze", '"ten minutes"')
    await asyncio.to_thread(signal, "snooze", '{"minutes": 60}')
    await wait_until(
        lambda: _due_is(row, None, later_than=datetime.now(UTC) + timedelta(minutes=59)),
        within=5,
        what="the snooze after the malformed signals",
    )
    await asyncio.to_thread(signal, "complete", None)
    await wait_until(lambda: _status_is(row, "done"), within=5, what="the signalled completion")


async def _due_is(row: Any, due: datetime | None, later_than: datetime | None = None) -> bool:
    current = datetime.fromisoformat((await row())["due_at"])
    if due is not None:
        return current == due
    assert later_than is not None
    return current > later_than and current < later_than + timedelta(minutes=5)


async def _status_is(row: Any, status: str) -> bool:
    return bool((await row())["status"] == status)


async def test_search_attributes_follow_the_task(
    client: httpx.AsyncClient, settings: Settings, temporal: Client
) -> None:
    org = new_org()
    headers = bearer(settings, "7", org)
    task = await create(client, headers)

    async def listed(status: str) -> list[str]:
        query = f"TaskStatus='{status}' AND OrganizationId='{org}'"
        return [w.id async for w in temporal.list_workflows(query)]

    await wait_until(lambda: listed("open"), within=10, what="the open task in the visibility store")
    result = temporal_cli(
        settings, "workflow", "list", "--query", f"TaskStatus='open' AND OrganizationId='{org}'", "-o", "json"
    )
    assert f"task-{task['id']}" in result.stdout
    await client.post(f"/v1/tasks/{task['id']}/complete", headers=headers)
    await wait_until(lambda: listed("done"), within=10, what="TaskStatus='done' after completion")
    assert "Call Ana" not in result.stdout.split('"searchAttributes"')[-1]


async def test_no_row_without_its_workflow_when_the_worker_is_down(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    temporal: Client,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A create whose worker never answers (it crashed, or the web process died after the start): the
    workflow exists and writes the row as soon as a worker runs; until then there is no row, and the
    retried request returns the same task. The 503 leaves no "never retrieved" error in the log."""
    lonely = settings.model_copy(
        update={"temporal_task_queue": f"unserved-{uuid.uuid4().hex[:8]}", "change_timeout_seconds": 1.0}
    )
    org = new_org()

    async def rows() -> list[Task]:
        async with tenant_transaction(sessionmaker, org) as session:
            return list((await session.scalars(select(Task).where(Task.organization_id == org))).all())

    headers = bearer(settings, "7", org) | {"Idempotency-Key": "crash-1"}
    body = {"title": "Call Ana", "due_at": ahead(days=1)}
    async with serve_app(lonely) as (url, _), httpx.AsyncClient(base_url=url, timeout=20) as client:
        refused = await client.post("/v1/tasks", json=body, headers=headers)
        assert refused.status_code == 503, refused.text
        assert "Idempotency-Key" in refused.json()["detail"]
        gc.collect()  # asyncio reports an unretrieved exception when its future is collected
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        query = f"OrganizationId = '{org}'"
        workflows = await wait_until(lambda: _workflows(temporal, query), within=10, what="the workflow")
        assert len(workflows) == 1
        assert await rows() == []

        async with run_worker(temporal, lonely, engine, redis):
            [row] = await wait_until(rows, within=10, what="the row, written once a worker runs")
            assert f"task-{row.id}" == workflows[0]
            retried = await client.post("/v1/tasks", json=body, headers=headers)
            assert retried.status_code == 201, retried.text
            assert retried.json()["id"] == str(row.id)


async def _workflows(temporal: Client, query: str) -> list[str]:
    return [w.id async for w in temporal.list_workflows(query)]


async def test_a_retried_change_with_its_idempotency_key_applies_once(
    client: httpx.AsyncClient, alice: dict[str, str], temporal: Client, settings: Settings
) -> None:
    task = await create(client, alice)
    url = f"/v1/tasks/{task['id']}"

    def keyed() -> dict[str, str]:
        return alice | {"Idempotency-Key": f"change-{uuid.uuid4()}"}

    rename = keyed()
    first = await client.patch(url, json={"title": "Call Ana again"}, headers=rename)
    assert first.status_code == 200, first.text
    again = await client.patch(url, json={"title": "Call Ana again"}, headers=rename)
    # The same task as the first answer, `updated_at` included: the retry changed nothing.
    assert again.json() == first.json()
    # The same key with another body is another change, not the first one's answer.
    other = await client.patch(url, json={"title": "Call Ana at noon"}, headers=rename)
    assert other.json()["title"] == "Call Ana at noon"

    snooze = keyed()
    snoozed = await client.post(f"{url}/snooze", json={"minutes": 30}, headers=snooze)
    assert snoozed.status_code == 200, snoozed.text
    # Retries, concurrent ones too, snooze from the first attempt, not from their own time.
    retries = await asyncio.gather(
        *[client.post(f"{url}/snooze", json={"minutes": 30}, headers=snooze) for _ in range(3)]
    )
    assert [r.json() for r in retries] == [snoozed.json()] * 3

    complete = keyed()
    done = await client.post(f"{url}/complete", headers=complete)
    assert done.status_code == 200, done.text
    # Once the workflow has closed too, a retry answers the done task; another key is another request.
    workflow = temporal.get_workflow_handle(f"task-{task['id']}")

    async def closed() -> bool:
        return (await workflow.describe()).status == WorkflowExecutionStatus.COMPLETED

    # It closes when the undo window has passed (TICKLER_UNDO_WINDOW_SECONDS, 10 s): a deadline of
    # exactly that raced it.
    await wait_until(
        closed, within=settings.undo_window_seconds + 15, what="the done task's workflow to close"
    )
    repeated = await client.post(f"{url}/complete", headers=complete)
    assert repeated.status_code == 200, repeated.text
    assert repeated.json() == done.json()
    assert (await client.post(f"{url}/complete", headers=keyed())).status_code == 409

    other_task = f"/v1/tasks/{(await create(client, alice))['id']}"
    cancel = keyed()
    assert (await client.delete(other_task, headers=cancel)).status_code == 204
    assert (await client.delete(other_task, headers=cancel)).status_code == 204
    assert (await client.delete(other_task, headers=keyed())).status_code == 409

    too_long = alice | {"Idempotency-Key": "x" * 300}
    assert (await client.patch(url, json={"title": "x"}, headers=too_long)).status_code == 422


async def test_a_change_no_worker_confirmed_says_so_and_its_retry_applies_once(
    settings: Settings, engine: AsyncEngine, temporal: Client, redis: Redis
) -> None:
    """An Update no worker accepted in time may apply later or never (Temporal holds it in memory only):
    the 503 promises neither, and a retry with the same key, once a worker runs, applies the change once
    whichever happened."""
    lonely = settings.model_copy(
        update={"temporal_task_queue": f"unserved-{uuid.uuid4().hex[:8]}", "change_timeout_seconds": 1.0}
    )
    headers = bearer(settings, "7", new_org())
    async with serve_app(lonely) as (url, _), httpx.AsyncClient(base_url=url, timeout=20) as client:
        async with run_worker(temporal, lonely, engine, redis):
            # The 1 s bound is for the change below; a worker just started can take longer than that
            # to confirm its first create on a busy machine, so the create is retried with its key.
            body = {"title": "Call Ana", "due_at": ahead(days=1)}
            creating = headers | {"Idempotency-Key": f"create-{uuid.uuid4().hex}"}

            async def created() -> dict[str, Any] | None:
                response = await client.post("/v1/tasks", json=body, headers=creating)
                return response.json() if response.status_code == 201 else None

            task = await wait_until(created, within=20, what="the task created")
        rename = headers | {"Idempotency-Key": "rename-1"}
        path = f"/v1/tasks/{task['id']}"
        refused = await client.patch(path, json={"title": "Renamed"}, headers=rename)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        detail = refused.json()["detail"]
        assert "will apply" not in detail
        assert "may or may not apply" in detail
        assert "same Idempotency-Key" in detail

        async with run_worker(temporal, lonely, engine, redis):

            async def retried() -> httpx.Response | None:
                # What a client does with the 503: retry with the same key until it is answered.
                response = await client.patch(path, json={"title": "Renamed"}, headers=rename)
                return response if response.status_code == 200 else None

            answer = await wait_until(retried, within=20, what="the retried change, once a worker runs")
            assert answer is not None
            assert answer.json()["title"] == "Renamed"
            again = await client.patch(path, json={"title": "Renamed"}, headers=rename)
            assert again.json() == answer.json()
