"""Request rate per user, counted in Redis so that every web process shares the limit."""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.auth import Principal
from core.errors import TooManyRequests

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60


class RateLimiter:
    """A fixed window per user and minute: one INCR per request, the key expiring with its window."""

    def __init__(self, redis: Redis, per_minute: int) -> None:
        self.redis = redis
        self.per_minute = per_minute

    async def check(self, who: Principal) -> None:
        if self.per_minute == 0:
            return
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = f"tickler:rate:{who.organization_id}:{who.user_id}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS + 1)
                count, _ = await pipe.execute()
        except RedisError as exc:
            # Availability over strictness: Redis down must not take the API down with it.
            log.warning("rate limit not checked, Redis failed: %s", exc)
            return
        if count > self.per_minute:
            retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now) + 1)
            raise TooManyRequests(
                f"More than {self.per_minute} requests this minute; retry in {retry_after} s.",
                retry_after=retry_after,
            )
