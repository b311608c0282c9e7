"""Every route, tried with another organization's and another user's credentials: nothing leaks or changes.

The sweep knows every route of the app; a new route fails `test_the_sweep_covers_every_route` until it is
added here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from tests.helpers import bearer, insert_notifications, new_org, open_stream
from web.app import create_app

# Routes anyone may call, and routes about the caller only (they name no id of someone else).
PUBLIC = {
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/redocs",
    "/scalar",
    "/static/<path:filename>",
    "/assets/<path:filename>",
}
SELF_ONLY = {"/v1/session", "/v1/session/dev", "/v1/notifications/stream", "/v1/me/settings"}
# Operators' routes, of no organization: a user's token, of any organization, is refused there with 403
# (tests/web/test_codec.py).
OPERATORS_ONLY = {"/codec/decode", "/codec/encode"}
# An organization's admins' routes: another organization's admin sees and changes none of its endpoints
# (tests/webhooks/test_webhooks.py).
ADMINS_ONLY = {
    "/v1/webhooks",
    "/v1/webhooks/<uuid:endpoint_id>",
    "/v1/webhooks/<uuid:endpoint_id>/deliveries",
}
SWEPT = {
    "/v1/tasks",
    "/v1/tasks/<uuid:task_id>",
    "/v1/tasks/<uuid:task_id>/snooze",
    "/v1/tasks/<uuid:task_id>/complete",
    "/v1/tasks/<uuid:task_id>/reopen",
    "/v1/notifications",
    "/v1/notifications/unread-count",
    "/v1/notifications/<int(max=9223372036854775807):notification_id>/read",
    "/v1/notifications/<int(max=9223372036854775807):notification_id>/unread",
    "/v1/notifications/read-all",
}


def test_the_sweep_covers_every_route(settings: Settings) -> None:
    routes = {rule.rule for rule in create_app(settings).url_map.iter_rules()}
    unswept = routes - SWEPT - PUBLIC - SELF_ONLY - OPERATORS_ONLY - ADMINS_ONLY - {"/"}
    assert unswept == set(), "add these routes to the tenant sweep"


async def test_two_organizations_two_users_each(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org_a, org_b = new_org(), new_org()
    owner = bearer(settings, "1", org_a)
    colleague = bearer(settings, "2", org_a)  # same organization, another user
    outsiders = [bearer(settings, "1", org_b), bearer(settings, "2", org_b)]  # same user ids, other org
    due = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    created = await client.post("/v1/tasks", json={"title": "Call Ana", "due_at": due}, headers=owner)
    task: dict[str, Any] = created.json()
    [notification] = await insert_notifications(sessionmaker, org_a, "1", 1)
    task_url = f"/v1/tasks/{task['id']}"

    for intruder in outsiders:
        # Tasks belong to the organization: another organization sees none of them and changes none.
        for method, path, body in [
            ("GET", task_url, None),
            ("PATCH", task_url, {"title": "mine now"}),
            ("POST", f"{task_url}/snooze", {"minutes": 5}),
            ("POST", f"{task_url}/complete", None),
            ("POST", f"{task_url}/reopen", None),
            ("DELETE", task_url, None),
        ]:
            response = await client.request(method, path, json=body, headers=intruder)
            assert response.status_code == 404, (method, path, response.text)
            assert "organization" in response.json()["detail"] or "No task" in response.json()["detail"]
        listed = (await client.get("/v1/tasks", headers=intruder)).json()
        assert task["id"] not in [t["id"] for t in listed["items"]]

    for intruder in [colleague, *outsiders]:
        # Notifications belong to their user: a colleague sees none of them either.
        for action in ("read", "unread"):
            response = await client.post(f"/v1/notifications/{notification}/{action}", headers=intruder)
            assert response.status_code == 404
        assert (await client.post("/v1/notifications/read-all", headers=intruder)).json()["updated"] == 0
        assert (await client.get("/v1/notifications/unread-count", headers=intruder)).json() == {"count": 0}
        inbox = (await client.get("/v1/notifications", headers=intruder)).json()
        assert notification not in [n["id"] for n in inbox["items"]]
        replay = intruder | {"Last-Event-ID": str(notification - 1)}
        async with open_stream(client, replay) as stream:
            await stream.read_past_heartbeat()
            assert notification not in stream.notification_ids

    # The colleague shares the organization's tasks, not the owner's inbox.
    assert (await client.get(task_url, headers=colleague)).status_code == 200
    # Nothing changed.
    assert (await client.get(task_url, headers=owner)).json() == task
    assert (await client.get("/v1/notifications/unread-count", headers=owner)).json() == {"count": 1}
    async with open_stream(client, owner | {"Last-Event-ID": str(notification - 1)}) as stream:
        await stream.read_past_heartbeat()
        assert stream.notification_ids == [notification]
