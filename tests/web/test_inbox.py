"""The inbox API, and read-state changes pushed to the user's other tabs."""

from __future__ import annotations

import json

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from tests.helpers import bearer, insert_notifications, new_org, open_stream


async def test_unread_filter_count_read_unread_and_read_all(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    me = bearer(settings, "7", org)
    ids = await insert_notifications(sessionmaker, org, "7", 5)

    async def count() -> int:
        response = await client.get("/v1/notifications/unread-count", headers=me)
        assert response.status_code == 200
        value: int = response.json()["count"]
        return value

    assert await count() == 5
    read = await client.post(f"/v1/notifications/{ids[1]}/read", headers=me)
    assert read.status_code == 200, read.text
    first_read_at = read.json()["read_at"]
    assert first_read_at is not None
    again = await client.post(f"/v1/notifications/{ids[1]}/read", headers=me)
    assert again.json()["read_at"] == first_read_at, "reading twice keeps the first read time"
    assert await count() == 4

    unread = (await client.get("/v1/notifications", params={"unread": "true"}, headers=me)).json()
    assert [n["id"] for n in unread["items"]] == sorted(set(ids) - {ids[1]}, reverse=True)
    read_only = (await client.get("/v1/notifications", params={"unread": "false"}, headers=me)).json()
    assert [n["id"] for n in read_only["items"]] == [ids[1]]

    back = await client.post(f"/v1/notifications/{ids[1]}/unread", headers=me)
    assert back.json()["read_at"] is None
    assert await count() == 5

    everything = await client.post("/v1/notifications/read-all", headers=me)
    assert everything.json() == {"updated": 5, "unread_count": 0}
    assert await count() == 0
    assert (await client.post("/v1/notifications/read-all", headers=me)).json()["updated"] == 0


async def test_pages_of_the_inbox(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    me = bearer(settings, "7", org)
    ids = await insert_notifications(sessionmaker, org, "7", 7)
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/notifications", params=params, headers=me)).json()
        seen += [n["id"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


async def test_another_users_notification_is_404_and_unchanged(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    [mine] = await insert_notifications(sessionmaker, org, "7", 1)
    for intruder in (bearer(settings, "8", org), bearer(settings, "7", new_org())):
        for action in ("read", "unread"):
            response = await client.post(f"/v1/notifications/{mine}/{action}", headers=intruder)
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"
        assert (await client.post("/v1/notifications/read-all", headers=intruder)).json()["updated"] == 0
    owner = bearer(settings, "7", org)
    assert (await client.get("/v1/notifications/unread-count", headers=owner)).json() == {"count": 1}


async def test_a_read_in_one_tab_reaches_the_other(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    me = bearer(settings, "7", org)
    ids = await insert_notifications(sessionmaker, org, "7", 2)
    async with (
        open_stream(client, me) as other_tab,
        open_stream(client, bearer(settings, "8", org)) as stranger,
    ):
        await other_tab.read_past_heartbeat()
        await stranger.read_past_heartbeat()
        await client.post(f"/v1/notifications/{ids[0]}/read", headers=me)
        await other_tab.read_until(lambda line: line.startswith("event: notification.read"))
        await other_tab.read_until(lambda line: line == "")
        [event] = [e for e in other_tab.events if e.event == "notification.read"]
        data = json.loads(event.data)
        assert data["ids"] == [ids[0]]
        assert data["unread_count"] == 1
        assert data["read_at"] is not None
        await client.post("/v1/notifications/read-all", headers=me)
        await other_tab.read_until(lambda line: '"unread_count": 0' in line)
        await stranger.read_past_heartbeat()
        assert not [e for e in stranger.events if e.event == "notification.read"]
