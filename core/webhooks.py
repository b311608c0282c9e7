"""Webhooks' parts that need no server (issue 18): the Standard Webhooks signature, the secret's form, and
whether a URL may be called from here at all.

Standard Webhooks (https://www.standardwebhooks.com): each request carries `webhook-id` (the event's
stable id, for receivers to deduplicate), `webhook-timestamp` (Unix seconds of the attempt) and
`webhook-signature`, `v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`; the secret is
`whsec_<base64 of its bytes>`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

# A webhook host's name is resolved (blocking getaddrinfo) in threads of its own: a tenant whose name
# resolves slowly holds these, never the default executor that resolves the database's and Redis's hosts.
_RESOLVERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")
# How long a webhook host's name may take to resolve.
RESOLVE_SECONDS = 5.0

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


class DestinationRefused(ValueError):
    """A URL this server must not call: its host is (or resolves to) a loopback, private, link-local or
    otherwise internal address, or it cannot be resolved."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_destination(url: str, *, allow_internal: bool) -> None:
    """Raise DestinationRefused unless ``url`` is http(s) to a host whose every address is public (any
    host at all with ``allow_internal``, TICKLER_ENV=dev). Blocking (DNS): run it in a thread.

    Checked when an endpoint is created and before each attempt. The connection resolves the name
    again, so a name whose answers change between the two (DNS rebinding) is not stopped here; an
    egress proxy or firewall is the defence in depth (docs/deployment.md)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("the URL must be http or https, with a host")
    if allow_internal:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise DestinationRefused(f"{parts.hostname} cannot be resolved ({exc})") from None
    for info in infos:
        address = str(info[4][0])
        if _internal(address):
            raise DestinationRefused(
                f"{parts.hostname} resolves to {address}, an internal address: webhooks go to public hosts"
            )


async def destination_checked(url: str, *, allow_internal: bool) -> None:
    """check_destination in the webhook resolvers' threads, within RESOLVE_SECONDS (TimeoutError)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_SECONDS):
        await loop.run_in_executor(_RESOLVERS, lambda: check_destination(url, allow_internal=allow_internal))
