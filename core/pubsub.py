"""The Redis channel between the delivery activity and the web processes' stream hubs.

Pub/sub is at-most-once: PostgreSQL stays the source of truth, and a message here only wakes streams up.
"""

from __future__ import annotations

from redis.asyncio import Redis

from core.payloads import NotificationEvent
from core.settings import Settings


def make_redis(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, health_check_interval=30, socket_keepalive=True)


async def publish(redis: Redis, channel: str, event: NotificationEvent) -> None:
    await redis.publish(channel, event.model_dump_json())
