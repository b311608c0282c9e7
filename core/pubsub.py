"""The Redis channel between the delivery activity and the web processes' stream hubs.

Pub/sub is at-most-once: PostgreSQL stays the source of truth, and a message here only wakes streams up.
Whoever can publish on Redis is not thereby trusted: every message carries an HMAC-SHA256 of its body
under TICKLER_CHANNEL_KEY, which the publishers (the worker; the web processes, for reads) and the stream
hubs hold and Redis never sees; a hub drops a message whose signature does not match (docs/decisions.md
§26).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from core.payloads import NotificationEvent
from core.settings import DEV_ENV, Settings, dev_secret

# What `tickler run` (TICKLER_ENV=dev) keeps in TICKLER_DATA_DIR when TICKLER_CHANNEL_KEY is unset.
DEV_CHANNEL_KEY_FILE = "channel.key"
# A message is `v1.<hex HMAC of the body>.<body>`; the version names the scheme should it change.
_VERSION = b"v1"
_MAC_HEX_LENGTH = 64
# Far above any event (its largest field is a task's notes); a longer message is dropped before its HMAC
# is computed, so that whoever can publish on Redis cannot make every hub hash megabytes per message.
MAX_MESSAGE_BYTES = 1024 * 1024


class ChannelConfigError(Exception):
    """No channel key is configured, and this is not a development stack."""


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


@dataclass(frozen=True)
class Channel:
    """The notification channel: its name, and the key that signs and checks its messages."""

    name: str
    key: bytes = field(repr=False)

    @classmethod
    def of(cls, settings: Settings) -> Channel:
        return cls(settings.redis_channel, channel_key(settings))

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()

    def encode(self, event: NotificationEvent) -> bytes:
        return self.sign(event.model_dump_json().encode())

    def sign(self, body: bytes) -> bytes:
        """The message that carries ``body`` on this channel."""
        return b".".join((_VERSION, self._mac(body), body))

    def verified_body(self, raw: bytes | str) -> bytes | None:
        """The body of a message signed with this channel's key; None for anything else."""
        data = raw.encode() if isinstance(raw, str) else raw
        if len(data) > MAX_MESSAGE_BYTES:
            return None
        version, _, rest = data.partition(b".")
        mac, body = rest[:_MAC_HEX_LENGTH], rest[_MAC_HEX_LENGTH + 1 :]
        if version != _VERSION or rest[_MAC_HEX_LENGTH : _MAC_HEX_LENGTH + 1] != b".":
            return None
        return body if hmac.compare_digest(mac, self._mac(body)) else None


async def publish(redis: Redis, channel: Channel, event: NotificationEvent) -> None:
    await redis.publish(channel.name, channel.encode(event))


async def publish_many(redis: Redis, channel: Channel, events: Sequence[NotificationEvent]) -> None:
    """Publish ``events`` in order, in one round trip (a pipeline, not a transaction; one event alone
    goes without one: redis-py's pipeline costs ~0.07 ms more, on the instant's path at light load)."""
    if not events:
        return
    if len(events) == 1:
        await publish(redis, channel, events[0])
        return
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.publish(channel.name, channel.encode(event))
        await pipe.execute()


def channel_key(settings: Settings) -> bytes:
    """TICKLER_CHANNEL_KEY; unset, a development stack's generated key (one file in TICKLER_DATA_DIR that
    `tickler run`'s worker and web processes share), else :class:`ChannelConfigError`."""
    if settings.channel_key is not None:
        return settings.channel_key.get_secret_value().encode()
    if settings.env == DEV_ENV:
        return dev_secret(settings.data_dir / DEV_CHANNEL_KEY_FILE)
    raise ChannelConfigError(
        "TICKLER_CHANNEL_KEY is not set: the worker signs what it publishes on Redis with it, and the web "
        "processes drop what it does not sign. Give the worker and every web process the same random "
        "value of 32 bytes or more (`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
    )
