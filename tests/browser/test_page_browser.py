"""The page in a real browser on the real stack: a reminder reaches Chromium's EventSource, survives a restart
of the web server, and two tabs agree on what is read. Each test saves a screenshot under tests/artifacts/.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from core.db import tenant_transaction
from core.models import Notification
from core.settings import Settings
from tests.browser.conftest import TIMEZONE, PageErrors
from tests.helpers import bearer, new_org, serve_app, wait_until
from tickler import devstack

pytestmark = pytest.mark.browser

USER = "7"


async def sign_in(page: Page, url: str, org: str, user: str = USER, *, live: bool = True) -> None:
    """The development form, as a person fills it; signed in once the stream is live (unless not
    ``live``: once the list shows)."""
    await page.goto(url)
    await page.get_by_label("User id").fill(user)
    await page.get_by_label("Organization id").fill(org)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#live")).to_have_text("Live" if live else re.compile(".+"))
    await expect(page.locator("#tasks")).to_be_visible()


def local_input(when: datetime) -> str:
    """What a person in the browser's time zone types in a datetime-local field for ``when``."""
    return when.astimezone(ZoneInfo(TIMEZONE)).strftime("%Y-%m-%dT%H:%M:%S")


async def create_task(client: httpx.AsyncClient, headers: dict[str, str], title: str, due: datetime) -> str:
    response = await client.post(
        "/v1/tasks", json={"title": title, "due_at": due.isoformat()}, headers=headers
    )
    assert response.status_code == 201, response.text
    task_id: str = response.json()["id"]
    return task_id


async def test_a_task_created_on_the_page_fires_a_toast_and_rings_the_bell(
    web_url: str, settings: Settings, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    org = new_org()
    headers = bearer(settings, USER, org)
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=web_url, timeout=15) as client:
        await create_task(client, headers, "Send Marta the offer letter", now + timedelta(days=1, hours=2))
        await create_task(client, headers, "Prepare the panel for Jun", now + timedelta(hours=3))
        page = page_errors.watch(await context.new_page())
        await sign_in(page, web_url, org)
        await expect(page.locator("#badge")).to_have_text("0")

        # Two to three seconds from now: the field takes whole seconds.
        due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        await page.get_by_label("Title").fill("Call Ana back")
        await page.get_by_label("Due", exact=True).fill(local_input(due))
        await page.get_by_role("button", name="Add task").click()

        rows = page.locator("#task-list > li")
        # Soonest due first.
        await expect(rows).to_have_count(3)
        await expect(rows.locator(".task-title")).to_have_text(
            ["Call Ana back", "Prepare the panel for Jun", "Send Marta the offer letter"]
        )
        # The browser sent the time the person typed, with its own offset.
        listed = (await client.get("/v1/tasks", params={"assignee_id": USER}, headers=headers)).json()
        sent = next(t for t in listed["items"] if t["title"] == "Call Ana back")
        assert datetime.fromisoformat(sent["due_at"]) == due

        toast = page.locator(".toast", has_text="Call Ana back")
        await expect(toast).to_be_visible()
        await expect(toast).to_contain_text("Reminder: Call Ana back")
        await expect(page.locator("#badge")).to_have_text("1")
        await expect(page.get_by_role("button", name="Notifications, 1 unread")).to_be_visible()
        await expect(rows.first).to_have_class(re.compile(r"\boverdue\b"))
        await expect(rows.first).to_contain_text("Overdue")

        await page.screenshot(path=artifacts / "toast-and-badge.png")

        await page.locator("#bell").click()
        await expect(page.locator("#notification-list > li.unread")).to_have_text(
            [re.compile("Call Ana back")]
        )
        await page.screenshot(path=artifacts / "inbox.png")
    assert page_errors.uncaught == []
    assert page_errors.unexpected(401) == []


async def test_what_fired_while_the_web_server_was_down_shows_when_it_is_back(
    settings: Settings,
    worker: Worker,
    temporal: Client,
    sessionmaker: async_sessionmaker[AsyncSession],
    context: BrowserContext,
    page_errors: PageErrors,
    artifacts: Path,
) -> None:
    org = new_org()
    headers = bearer(settings, USER, org)
    port = devstack.free_port()
    page = page_errors.watch(await context.new_page())
    async with serve_app(settings, port=port) as (url, _):
        await sign_in(page, url, org)
        async with httpx.AsyncClient(base_url=url, timeout=15) as client:
            task_id = await create_task(
                client, headers, "Call Bo about the contract", datetime.now(UTC) + timedelta(hours=1)
            )
    # The web server is down; the page says so and keeps trying.
    await expect(page.locator("#live")).to_have_text(re.compile("Reconnecting|Offline"))

    # The worker runs on: a reschedule signal (another service's way in) makes the task fire now.
    await temporal.get_workflow_handle(f"task-{task_id}").signal(
        "reschedule", {"due_at": datetime.now(UTC).isoformat()}
    )

    async def fired() -> bool:
        async with tenant_transaction(sessionmaker, org) as session:
            return (
                await session.scalar(select(Notification.id).where(Notification.organization_id == org))
            ) is not None

    await wait_until(fired, what="the reminder to fire while the web server is down")
    await expect(page.locator(".toast")).to_have_count(0)
    await page.screenshot(path=artifacts / "restart-while-down.png")

    async with serve_app(settings, port=port):
        # EventSource reconnects by itself with Last-Event-ID; the server replays what it missed.
        await expect(page.locator("#live")).to_have_text("Live")
        await expect(page.locator(".toast", has_text="Call Bo about the contract")).to_be_visible()
        await expect(page.locator("#badge")).to_have_text("1")
        await expect(page.locator("#task-list > li").first).to_have_class(re.compile(r"\boverdue\b"))
        await page.screenshot(path=artifacts / "restart-replayed.png")
    assert page_errors.uncaught == []
    # Only the refused connections while the server was down.
    assert [e for e in page_errors.unexpected(401) if "ERR_CONNECTION_REFUSED" not in e] == []


async def test_marking_read_in_one_tab_drops_the_badge_in_the_other(
    web_url: str, settings: Settings, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    org = new_org()
    first = page_errors.watch(await context.new_page())
    await sign_in(first, web_url, org)
    # The second tab shares the first one's cookie: it is signed in already.
    second = page_errors.watch(await context.new_page())
    await second.goto(web_url)
    await expect(second.locator("#live")).to_have_text("Live")

    async with httpx.AsyncClient(base_url=web_url, timeout=15) as client:
        await create_task(
            client,
            bearer(settings, USER, org),
            "Check Lena's references",
            datetime.now(UTC) + timedelta(seconds=1),
        )
    for tab in (first, second):
        await expect(tab.locator(".toast", has_text="Check Lena's references")).to_be_visible()
        await expect(tab.locator("#badge")).to_have_text("1")
    await second.locator("#bell").click()
    await expect(second.locator("#notification-list > li.unread")).to_have_count(1)

    # Back to the first tab (a background tab's clicks wait on its throttled frames).
    await first.bring_to_front()
    await first.locator("#bell").click()
    await first.get_by_role("button", name="Mark read: Check Lena's references").click()
    await expect(first.locator("#badge")).to_have_text("0")

    # The other tab hears `event: notification.read` on its own stream.
    await expect(second.locator("#badge")).to_have_text("0")
    await expect(second.locator("#notification-list > li.unread")).to_have_count(0)
    await expect(second.locator(".toast")).to_have_count(0)
    await expect(second.get_by_role("button", name="Notifications, 0 unread")).to_be_visible()
    await first.screenshot(path=artifacts / "two-tabs-first.png")
    await second.bring_to_front()
    await second.screenshot(path=artifacts / "two-tabs-second.png")
    assert page_errors.uncaught == []
    assert page_errors.unexpected(401) == []


async def test_a_phone_and_a_keyboard_can_do_everything(
    web_url: str, settings: Settings, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    org = new_org()
    page = page_errors.watch(await context.new_page())
    await page.set_viewport_size({"width": 375, "height": 740})
    await page.goto(web_url)
    # Keyboard only: the first field has focus after one Tab past the skip link.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("User id")).to_be_focused()
    await page.keyboard.press("ControlOrMeta+a")
    await page.keyboard.type(USER)
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Organization id")).to_be_focused()
    await page.keyboard.press("ControlOrMeta+a")
    await page.keyboard.type(org)
    await page.keyboard.press("Enter")
    await expect(page.locator("#live")).to_have_text("Live")
    await expect(page.get_by_label("Title")).to_be_focused()

    headers = bearer(settings, USER, org)
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=web_url, timeout=15) as client:

        async def task(title: str) -> dict[str, object]:
            listed = (await client.get("/v1/tasks", params={"assignee_id": USER}, headers=headers)).json()
            found: dict[str, object] = next(t for t in listed["items"] if t["title"] == title)
            return found

        for title, hours in (("Snooze me", 2), ("Move me", 3), ("Finish me", 4), ("Drop me", 5)):
            await page.get_by_label("Title").fill(title)
            await page.get_by_label("Due", exact=True).fill(local_input(now + timedelta(hours=hours)))
            await page.keyboard.press("Enter")
            await expect(page.locator("#task-list .task-title", has_text=title)).to_be_visible()
            # The row may show (the stream's task.changed) before the create's answer re-enables the form.
            await expect(page.get_by_role("button", name="Add task")).to_be_enabled()
        await page.screenshot(path=artifacts / "phone.png", full_page=True)
        # Nothing wider than a phone's screen.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375

        row = page.locator("#task-list > li", has_text="Snooze me")
        shown = await row.locator("time").get_attribute("datetime")
        await row.get_by_label("Snooze: Snooze me").press("Enter")
        await row.get_by_role("button", name="1 hour").press("Enter")
        await expect(row.locator("time")).not_to_have_attribute("datetime", shown or "")
        await expect(row.locator("details.snooze")).not_to_have_attribute("open", "")
        snoozed = datetime.fromisoformat(str((await task("Snooze me"))["due_at"]))
        assert now + timedelta(hours=1) <= snoozed < now + timedelta(hours=2)

        row = page.locator("#task-list > li", has_text="Move me")
        await row.get_by_label("Reschedule: Move me").press("Enter")
        await expect(row.get_by_label("New due time")).to_be_focused()
        new_due = (now + timedelta(days=2)).replace(microsecond=0)
        await row.get_by_label("New due time").fill(local_input(new_due))
        await row.get_by_label("New due time").press("Enter")
        # Soonest first: moved two days out, it is last now.
        await expect(page.locator("#task-list > li").last).to_contain_text("Move me")
        assert datetime.fromisoformat(str((await task("Move me"))["due_at"])) == new_due

        await (
            page.locator("#task-list > li", has_text="Finish me")
            .get_by_label("Done: Finish me")
            .press("Enter")
        )
        await expect(page.locator("#task-list > li", has_text="Finish me")).to_have_count(0)

        await (
            page.locator("#task-list > li", has_text="Drop me").get_by_label("Delete: Drop me").press("Enter")
        )
        await expect(page.locator("#task-list > li", has_text="Drop me")).to_have_count(0)

        statuses = {
            t["title"]: t["status"]
            for t in (await client.get("/v1/tasks", params={"assignee_id": USER}, headers=headers)).json()[
                "items"
            ]
        }
        assert statuses == {
            "Snooze me": "open",
            "Move me": "open",
            "Finish me": "done",
            "Drop me": "cancelled",
        }

    # The bell opens the inbox from the keyboard; Escape closes it and gives the focus back.
    await page.locator("#bell").press("Enter")
    await expect(page.locator("#inbox")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.locator("#inbox")).to_be_hidden()
    await expect(page.locator("#bell")).to_be_focused()

    # A refusal from the API is shown as its detail says.
    await page.get_by_label("Title").fill("Too late")
    await page.get_by_label("Due", exact=True).fill(local_input(now - timedelta(days=400)))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("within one year in the past")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("Not connected")
    assert page_errors.uncaught == []
    assert page_errors.unexpected(401, 422) == []


async def test_a_refused_stream_is_retried_with_backoff(
    settings: Settings,
    worker: Worker,
    browser: Browser,
    context: BrowserContext,
    page_errors: PageErrors,
    artifacts: Path,
) -> None:
    org = new_org()
    # One stream per user: a second browser's stream (the tabs of one browser share theirs) is answered
    # 429, which stops an EventSource for good.
    one_stream = settings.model_copy(update={"sse_max_streams_per_user": 1})
    other = await browser.new_context(viewport={"width": 1100, "height": 720}, timezone_id=TIMEZONE)
    async with serve_app(one_stream) as (url, _):
        first = page_errors.watch(await context.new_page())
        await sign_in(first, url, org)
        second = page_errors.watch(await other.new_page())
        await sign_in(second, url, org, live=False)
        await expect(second.locator("#live")).to_have_text(re.compile(r"Offline, retrying in \d+ s"))
        await second.screenshot(path=artifacts / "refused-stream.png")
        # The page retries by itself: once the first browser's tab has gone, its stream is let in.
        await first.close()
        await expect(second.locator("#live")).to_have_text("Live")
    await other.close()
    assert page_errors.uncaught == []
    assert [e for e in page_errors.unexpected(401) if "429" not in e] == []


async def test_when_the_session_expires_the_page_asks_to_sign_in_again(
    web_url: str, settings: Settings, context: BrowserContext, page_errors: PageErrors, artifacts: Path
) -> None:
    # The CRM's token exchanged for the cookie, as the token form does; the browser keeps the cookie.
    token = bearer(settings, USER, new_org(), ttl=3)
    signed_in = await context.request.post(f"{web_url}/v1/session", headers=token)
    assert signed_in.ok, await signed_in.text()
    page = page_errors.watch(await context.new_page())
    await page.goto(web_url)
    await expect(page.locator("#live")).to_have_text("Live")
    # The stream ends with `event: session.expired` when the token does.
    await expect(page.locator("#sign-in-reason")).to_have_text("Your session has ended. Sign in again.")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("Not connected")
    await expect(page.locator("#tasks")).to_be_hidden()
    await page.screenshot(path=artifacts / "session-expired.png")
    assert page_errors.uncaught == []
    assert page_errors.unexpected(401) == []


async def test_a_create_whose_answer_was_lost_is_retried_with_its_key_and_makes_one_task(
    web_url: str, settings: Settings, context: BrowserContext, page_errors: PageErrors
) -> None:
    org = new_org()
    page = page_errors.watch(await context.new_page())
    await sign_in(page, web_url, org)
    keys: list[str | None] = []

    async def creates(route: Route) -> None:
        if route.request.method != "POST":
            await route.fallback()
            return
        keys.append(await route.request.header_value("Idempotency-Key"))
        if len(keys) == 1:
            # The first attempt reaches the server, which creates the task; its answer never comes back.
            await route.fetch()
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route("**/v1/tasks", creates)
    await page.get_by_label("Title").fill("Call Ana back")
    await page.get_by_label("Due", exact=True).fill(local_input(datetime.now(UTC) + timedelta(days=1)))
    add = page.get_by_role("button", name="Add task")
    await add.click()
    await expect(page.locator("#error-text")).to_contain_text("cannot be reached")
    # The person submits the same form again: a retry of the same create.
    await add.click()
    rows = page.locator("#task-list > li")
    await expect(rows.locator(".task-title")).to_have_text(["Call Ana back"])
    assert keys[0]
    assert keys[1] == keys[0]
    async with httpx.AsyncClient(base_url=web_url, timeout=15) as client:
        listed = (await client.get("/v1/tasks", headers=bearer(settings, USER, org))).json()
    assert [t["title"] for t in listed["items"]] == ["Call Ana back"]

    # Another task is another create: a key of its own.
    await page.get_by_label("Title").fill("Send Marta the offer letter")
    await add.click()
    await expect(rows).to_have_count(2)
    assert keys[2] not in (None, keys[0])
    assert page_errors.uncaught == []
    assert [e for e in page_errors.unexpected(401) if "ERR_CONNECTION_RESET" not in e] == []
