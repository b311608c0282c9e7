"""End to end: a message published straight to Redis, without the channel key, reaches no browser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from redis.asyncio import Redis

from core.payloads import NotificationEvent
from core.settings import Settings
from tests.helpers import bearer, new_org, open_stream


async def test_a_forged_message_reaches_no_stream_while_a_real_reminder_does(
    client: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    org = new_org()
    me = bearer(settings, "7", org)
    async with open_stream(client, me) as stream:
        await stream.read_past_heartbeat()
        # What any client of Redis can publish: a notification the stream would send as it is (its
        # predecessor is the stream's last id), and an event of another kind.
        forged = [
            NotificationEvent(
                organization_id=org,
                user_id="7",
                event="notification",
                id=2**62,
                data={"id": 2**62, "title": "Sign in again at evil.example"},
                previous_id=0,
            ),
            NotificationEvent(organization_id=org, user_id="7", event="ping", data={"forged": True}),
        ]
        for event in forged:
            await redis.publish(settings.redis_channel, event.model_dump_json())
        due = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        created = await client.post("/v1/tasks", json={"title": "Call Ana", "due_at": due}, headers=me)
        assert created.status_code == 201, created.text
        await stream.read_until(lambda line: line == "event: notification")
        await stream.read_past_heartbeat()
    assert len(stream.notifications) == 1
    assert 2**62 not in stream.notification_ids
    assert not any("evil.example" in line or "forged" in line for line in stream.lines)
    assert "event: ping" not in stream.lines
