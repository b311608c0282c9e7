"""The Redis channel between the delivery activity and the web processes' stream hubs.

Pub/sub is at-most-once: PostgreSQL stays the source of truth, and a message here only wakes streams up.
"""

from __future__ import annotations

from redis.asyncio import Redis

from core.payloads import NotificationEvent
from core.settings import Settings


def make_redis(settings: Settings) -> Redis:
    """The process's client. Connects and commands are bounded by the timeout; a pub/sub read that passes
    its own timeout (the stream hub's ``get_message(timeout=...)``) is not, so an idle subscription is
    not dropped, and the PING of ``health_check_interval`` finds a dead one."""
    return Redis.from_url(
        settings.redis_url,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
    )


async def publish(redis: Redis, channel: str, event: NotificationEvent) -> None:
    await redis.publish(channel, event.model_dump_json())
