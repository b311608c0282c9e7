"""Email escalation end to end (issue 18): the suite's Temporal, PostgreSQL and Redis, a worker and a web app
of the test's own, and a real SMTP server (aiosmtpd) that keeps what it is sent."""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiosmtpd.controller import Controller
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError

from activities.email import EmailActivities
from core.payloads import EmailInput, email_workflow_id
from core.settings import Settings
from tests.helpers import bearer, new_org, run_worker, serve_app, short_grace_key, wait_until
from tickler import devstack

# The reminder's grace step starts the escalation: the tests' tasks take ids whose grace is ~4 s
# (short_grace_key), then 10 s unread is the least.
MAILED_WITHIN = 30.0


@dataclass
class Inbox:
    """aiosmtpd's handler: every message the server accepts."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), devstack.free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
async def mailing(
    settings: Settings, temporal: Client, engine: AsyncEngine, redis: Redis, smtp: tuple[Inbox, int]
) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
    own = settings.model_copy(
        update={
            "temporal_task_queue": f"email-{uuid.uuid4().hex[:8]}",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp[1],
            "smtp_security": "none",
            "email_from": "Tickler <tickler@example.com>",
            "public_url": "http://tickler.example.com/",
        }
    )
    async with (
        run_worker(temporal, own, engine, redis),
        serve_app(own) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=15) as client,
    ):
        yield own, client


async def create(client: httpx.AsyncClient, settings: Settings, org: str, user: str, title: str) -> str:
    """A task due now, its grace step ~4 s after (short_grace_key)."""
    due = datetime.now(UTC).isoformat()
    headers = bearer(settings, user, org) | {"Idempotency-Key": short_grace_key(org, user)}
    response = await client.post("/v1/tasks", json={"title": title, "due_at": due}, headers=headers)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["id"]
    return task_id


async def notification_of(client: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        items = (await client.get("/v1/notifications", headers=headers)).json()["items"]
        return next((n for n in items if n["task_id"] == task_id), None)

    notification: dict[str, Any] = await wait_until(found, what="the reminder's notification")
    return notification


async def test_an_unread_reminder_is_mailed_once_and_a_read_one_never(
    mailing: tuple[Settings, httpx.AsyncClient],
    smtp: tuple[Inbox, int],
    temporal: Client,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    own, client = mailing
    inbox = smtp[0]
    org = new_org()
    headers = bearer(own, "7", org)
    address = f"ana-{org}@example.com"
    body = {"email": address, "email_unread_after_seconds": 10, "timezone": "Europe/Lisbon"}
    saved = await client.put("/v1/me/settings", json=body, headers=headers)
    assert saved.status_code == 200, saved.text
    assert (await client.get("/v1/me/settings", headers=headers)).json() == body | {"quiet_hours": None}

    # A colleague's escalation waits longer: it is read while its workflow waits, and found read.
    other = bearer(own, "8", org)
    later = {"email": f"bo-{org}@example.com", "email_unread_after_seconds": 20}
    assert (await client.put("/v1/me/settings", json=later, headers=other)).status_code == 200

    unread_task = await create(client, own, org, "7", "Call Ana back")
    read_task = await create(client, own, org, "8", "Send Bo the offer")
    unread = await notification_of(client, headers, unread_task)
    read = await notification_of(client, other, read_task)
    waiting = temporal.get_workflow_handle(email_workflow_id(org, read["id"]))

    async def escalation_started() -> bool:
        try:
            return await waiting.query("status") == "waiting"
        except RPCError:
            return False

    await wait_until(escalation_started, within=MAILED_WITHIN, what="the read one's escalation to start")
    marked = await client.post(f"/v1/notifications/{read['id']}/read", headers=other)
    assert marked.status_code == 200, marked.text

    [message] = await wait_until(lambda: inbox.to(address), within=MAILED_WITHIN, what="the email")
    assert message["Subject"] == "Reminder: Call Ana back"
    assert message["From"] == "Tickler <tickler@example.com>"
    assert message["Message-ID"] == f"<notification-{unread['id']}.{org}@example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    due = datetime.fromisoformat(unread["due_at"]).astimezone(ZoneInfo("Europe/Lisbon"))
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    for part in (text.get_content(), html.get_content()):
        assert "Call Ana back" in part
        assert due.strftime("%H:%M") in part
        assert "Europe/Lisbon" in part
        assert "http://tickler.example.com/" in part
    # Mailed after it had been unread 10 s, never before.
    sent_at = email.utils.parsedate_to_datetime(message["Date"])
    assert sent_at >= datetime.fromisoformat(unread["created_at"]).replace(microsecond=0) + timedelta(
        seconds=10
    )

    # The read one's escalation found it read, at send time: nothing sent.
    assert await waiting.result() == "read"
    assert inbox.to(f"bo-{org}@example.com") == []
    assert await temporal.get_workflow_handle(email_workflow_id(org, unread["id"])).result() == "sent"
    # A retry of the sending activity (a worker that died after the send) sends nothing more.
    retry = EmailInput(organization_id=org, notification_id=unread["id"], send_after=datetime.now(UTC))
    assert (await EmailActivities(sessionmaker, own).email_notification(retry)).result == "sent"
    assert len(inbox.to(address)) == 1


async def test_quiet_hours_hold_the_email_back_until_they_end(
    mailing: tuple[Settings, httpx.AsyncClient], smtp: tuple[Inbox, int], temporal: Client
) -> None:
    own, client = mailing
    org = new_org()
    headers = bearer(own, "7", org)
    address = f"bo-{org}@example.com"
    zone = ZoneInfo("America/Sao_Paulo")
    now = datetime.now(zone)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    body = {
        "email": address,
        "email_unread_after_seconds": 10,
        "quiet_hours": {"start": start, "end": end},
        "timezone": "America/Sao_Paulo",
    }
    assert (await client.put("/v1/me/settings", json=body, headers=headers)).status_code == 200
    task_id = await create(client, own, org, "7", "Call Ana back")
    notification = await notification_of(client, headers, task_id)
    handle = temporal.get_workflow_handle(email_workflow_id(org, notification["id"]))

    async def held() -> str | None:
        try:
            status: str = await handle.query("status")
        except RPCError:  # not started yet (the reminder's grace starts it)
            return None
        return status if status.startswith("quiet hours until") else None

    status = await wait_until(held, within=MAILED_WITHIN, what="the email held by the quiet hours")
    until = datetime.fromisoformat(status.removeprefix("quiet hours until "))
    assert until.astimezone(zone).strftime("%H:%M") == end
    assert smtp[0].to(address) == []
    await handle.terminate("test over")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"email": "not an address"}, "email"),
        # No mail reaches a special-use domain (RFC 6761); tests/web/test_fuzz.py excuses this 422.
        ({"email": "a@mail.test"}, "special-use or reserved name"),
        ({"email_unread_after_seconds": 60}, "give `email`"),
        ({"email": "a@example.com", "email_unread_after_seconds": 5}, "greater than or equal to 10"),
        ({"email": "a@example.com", "email_unread_after_seconds": 8 * 86400}, "less than or equal to 604800"),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "20:00"}}, "quiet_hours.end"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"surprise": True}, "surprise"),
    ],
)
async def test_settings_that_cannot_be_used_answer_422_saying_what_to_fix(
    client: httpx.AsyncClient, settings: Settings, body: dict[str, Any], says: str
) -> None:
    headers = bearer(settings, "7", new_org())
    response = await client.put("/v1/me/settings", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert says in response.text
    assert (await client.get("/v1/me/settings", headers=headers)).json()["email"] is None


async def test_quiet_hours_that_end_when_they_start_are_none(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = bearer(settings, "7", new_org())
    body = {"quiet_hours": {"start": "20:00", "end": "20:00"}}
    saved = await client.put("/v1/me/settings", json=body, headers=headers)
    assert saved.status_code == 200, saved.text
    assert saved.json()["quiet_hours"] is None
    assert (await client.get("/v1/me/settings", headers=headers)).json()["quiet_hours"] is None
